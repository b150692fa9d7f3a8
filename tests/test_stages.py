"""The stage runner and the stages' code versions: an edit re-runs only the stages it touches."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage.store import ArtifactStore
from tasks.runner import stage
from tasks.specs import CodebookSpec, Spec

ROOT = Path(__file__).resolve().parents[1]


class ToySpec(Spec):
    n: int = 3


calls = []


@stage("toy", {"num_cpus": 1})
def toy(run, spec: ToySpec, *inputs: str, fail: bool = False):
    calls.append(spec.n)
    if fail:
        raise RuntimeError("toy failed")
    return run.put({"x": np.arange(spec.n)}, meta={"n": spec.n})


def test_runner_reuses_a_stored_version_and_stores_nothing_on_failure(tmp_path):
    calls.clear()
    first = toy(tmp_path, ToySpec())
    again = toy(tmp_path, ToySpec())
    assert first.created and not again.created and again.version == first.version == toy.stage.version(ToySpec(), [])
    assert calls == [3] and again.meta == {"n": 3}  # reused: not computed again
    other = toy(tmp_path, ToySpec(n=4), first.version)  # another spec, an input: another version
    assert other.created and other.version != first.version
    assert ArtifactStore(tmp_path).get(other.version).params == {"n": 4}  # the hashed parameters: the spec's dump
    with pytest.raises(RuntimeError, match="toy failed"):
        toy(tmp_path, ToySpec(n=5), fail=True)
    assert [a.params["n"] for a in ArtifactStore(tmp_path).ls("toy")] == [3, 4]


def test_specs_are_strict_and_frozen():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mode"):
        CodebookSpec(k=16, mode="kmeans++")
    with pytest.raises(ValidationError, match="k"):
        CodebookSpec(k=70_000)
    with pytest.raises(ValidationError):
        CodebookSpec(k="16")
    with pytest.raises(ValidationError, match="frozen"):
        CodebookSpec(k=16).k = 8


CODES = """
import json
from tasks import compress, data, head, lutham
stages = (data.dataset, data.features, head.train, head.evaluate, compress.splines, compress.codebook,
          compress.assignment, compress.encode, compress.finetune, compress.compression, lutham.lutham)
print(json.dumps({f.stage.name: f.stage.code for f in stages}))
"""


def _codes(tasks_dir: Path) -> dict:
    env = {"PYTHONPATH": f"{tasks_dir.parent}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CODES], env=env, cwd=tasks_dir.parent, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_an_edit_changes_the_code_version_of_the_stages_it_touches_only(tmp_path):
    """Edit the compression stage's function, then a helper the head stages share: only the stages
    whose code includes the edit get a new code version (so only they re-run)."""
    copy = tmp_path / "edited" / "tasks"
    shutil.copytree(ROOT / "tasks", copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = _codes(copy)
    assert len(set(before.values())) == len(before)  # every stage hashes its own code

    src = (copy / "compress.py").read_text()
    marker = '    head = load_head(run.store.get(head_version))\n    variants ='
    assert marker in src
    (copy / "compress.py").write_text(src.replace(marker, "    # an edit\n" + marker))
    after = _codes(copy)
    assert {n for n in before if before[n] != after[n]} == {"compression"}

    src = (copy / "head.py").read_text()
    marker = "def load_head(art: Artifact) -> KANDetectionHead:\n"
    (copy / "head.py").write_text(src.replace(marker, marker + "    # an edit\n"))
    again = _codes(copy)
    assert {n for n in after if after[n] != again[n]} == {"evaluation", "splines", "encoded", "finetune", "compression",
                                                          "lutham"}


def test_importing_the_flows_starts_nothing_and_changes_no_environment(tmp_path):
    """Our modules have no import-time side effects (the libraries' own, e.g. Ray's, happen first)."""
    code = ("import os, json, prefect, prefect_ray, ray, torch, torchvision; before = dict(os.environ); "
            "import flows.pipeline, cli.main, cli.services, tasks.cluster; "
            "print(json.dumps([ray.is_initialized(), {k: v for k, v in os.environ.items() if before.get(k) != v}]))")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    initialised, changed = json.loads(out.stdout.splitlines()[-1])
    assert not initialised and changed == {}


def test_the_cli_offers_the_library_s_modes_and_backends():
    from cli.main import run
    from sharekan.clustering import MODES
    from sharekan.kmeans_steps import BACKENDS

    options = {p.name: p for p in run.params}
    assert tuple(options["kmeans_mode"].type.choices) == MODES
    assert tuple(options["kmeans_backend"].type.choices) == ("auto", *BACKENDS)
