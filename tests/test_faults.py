"""Fault injection with real processes: a corrupt image, two runs at once into one store, a run
whose Ray head dies, a run SIGKILLed at a stage and resumed, a Ray worker SIGKILLed mid-training, the CLI run many times
concurrently, and inputs a person mistypes. Each `sharekan run` here is the real CLI with its own
temporary Prefect server and local Ray cluster, on a tiny synthetic data set."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from cli.main import main as cli
from sharekan.detection.synthetic import generate_voc
from storage.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": {"n_train": 16, "n_test": 6, "n_ood": 0},
        "train": {"size": 64, "backbone": "resnet18", "pretrain_epochs": 1, "hidden": 8, "epochs": 2,
                  "batch_size": 256},
        "compress": {"ks": [16], "kmeans_niter": 3, "finetune_epochs": 0}, "lutham": False}
BAD_IMAGE = "000003.jpg"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _start(tmp: Path, name: str, data: Path, store: Path, skip_bad: bool) -> subprocess.Popen:
    params = {**TINY, "data": {**TINY["data"], "skip_bad": skip_bad}}
    cmd = [sys.executable, "-m", "cli.main", "run", "--data", str(data), "--store", str(store),
           "--out", str(tmp / name), "--params", json.dumps(params)]
    return subprocess.Popen(cmd, cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _versions(out: str) -> dict[str, str]:
    return dict(re.findall(r"^  (\w+)\s+((?:dataset|features|head|evaluation|splines|codebook|compression)-\w+)",
                           out, re.M))


@pytest.fixture(scope="module")
def corrupt_data(tmp_path_factory) -> Path:
    """The tiny synthetic set with one training JPEG cut in half (its header still reads)."""
    root = tmp_path_factory.mktemp("corrupt")
    generate_voc(root, n_train=16, n_test=6, seed=0)
    jpg = root / "VOCdevkit" / "VOC2007" / "JPEGImages" / BAD_IMAGE
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    return root


def test_a_truncated_image_fails_once_before_any_work_naming_the_file(tmp_path, corrupt_data):
    code, out = _finish(_start(tmp_path, "fail", corrupt_data, tmp_path / "store", skip_bad=False))
    assert code == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("Error: the run failed: BadSampleError:") and BAD_IMAGE in last, last
    assert "AwaitingRetry" not in out and "Retrying" not in out  # deterministic: not retried
    assert "Error logging to API" not in out  # logs reached the server before it stopped
    assert out.count("Traceback") <= 1
    assert not (tmp_path / "store").exists()  # the dataset stage failed before writing anything


@pytest.fixture(scope="module")
def two_runs_at_once(tmp_path_factory, corrupt_data):
    """Two `sharekan run`s started together into one store, skipping the bad image."""
    tmp = tmp_path_factory.mktemp("concurrent")
    procs = [_start(tmp, name, corrupt_data, tmp / "store", skip_bad=True) for name in ("a", "b")]
    return tmp, [_finish(p) for p in procs]


def test_two_runs_into_one_store_both_succeed_without_retries(two_runs_at_once):
    tmp, results = two_runs_at_once
    for code, out in results:
        assert code == 0, out[-3000:]
        assert "AwaitingRetry" not in out and "conflicts with a concurrent writer" not in out
        assert "skipped 1 bad samples" in out and BAD_IMAGE in out  # counted, named, no crash
    first, second = (_versions(out) for _, out in results)
    assert first == second and {"dataset", "features_train", "head", "compression"} <= set(first)
    store = ArtifactStore(tmp / "store", create=False)
    assert len(store.ls("head")) == 1 and len(store.ls("features")) == 2  # one of each, shared
    report = json.loads((tmp / "a" / "report.json").read_text())
    assert len(report["skipped_samples"]) == 1 and BAD_IMAGE in report["skipped_samples"][0]
    assert "## Skipped samples (1)" in (tmp / "a" / "report.md").read_text()


def _when_stored(proc: subprocess.Popen, store: Path, stage: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ((store / "refs").is_dir() and ArtifactStore(store, create=False).ls(stage)):
        assert proc.poll() is None and time.time() < deadline, f"the run ended before a {stage} artifact was stored"
        time.sleep(0.5)


def test_a_lost_ray_head_ends_the_run_in_one_line_and_a_killed_run_resumes_to_the_same_artifacts(
        tmp_path, corrupt_data, two_runs_at_once):
    store = tmp_path / "store"
    # the run's Ray head (its GCS) dies once the features are stored: one Error line within 30 s
    proc = _start(tmp_path, "headless", corrupt_data, store, skip_bad=True)
    _when_stored(proc, store, "features")
    children = psutil.Process(proc.pid).children(recursive=True)
    gcs = [p for p in children if "gcs_server" in " ".join(p.cmdline())]
    assert len(gcs) == 1, [p.cmdline()[:2] for p in children]
    gcs[0].kill()
    lost = time.time()
    code, out = _finish(proc, timeout=120)
    assert code == 1 and time.time() - lost <= 30, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: lost the Ray cluster's head at ") and \
        errors[0].endswith("start the cluster again and re-run to resume"), out[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, "processes of the run outlived it"
    assert not any(ArtifactStore(store, create=False).verify().values())  # what was stored is whole

    # the re-run resumes; SIGKILLed (its process group: driver, Ray) once a codebook is stored
    proc = _start(tmp_path, "killed", corrupt_data, store, skip_bad=True)
    _when_stored(proc, store, "codebook")
    servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "server" in p.cmdline() and "start" in p.cmdline()]  # in a session of its own
    assert servers, "no temporary Prefect server found"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    gone, alive = psutil.wait_procs(servers, timeout=60)
    for p in alive:
        p.kill()
    assert not alive, "the killed run's temporary Prefect server outlived it"

    code, out = _finish(_start(tmp_path, "resumed", corrupt_data, store, skip_bad=True))
    assert code == 0, out[-3000:]
    _, first = two_runs_at_once[1][0]
    assert _versions(out) == _versions(first)  # same inputs, same parameters: the same versions
    assert json.loads((tmp_path / "resumed" / "report.json").read_text())["variants"] == \
        json.loads((two_runs_at_once[0] / "a" / "report.json").read_text())["variants"]


def test_a_lost_prefect_api_ends_the_run_within_30_s_with_one_error_line_and_gc_waits_for_runs(tmp_path, corrupt_data):
    store = tmp_path / "store"
    proc = _start(tmp_path, "lost", corrupt_data, store, skip_bad=True)
    _when_stored(proc, store, "features")
    busy = CliRunner().invoke(cli, ["artifacts", "gc", "--store", str(store)])  # the run holds the store
    assert busy.exit_code == 1 and f"process {proc.pid} on" in busy.output, busy.output
    children = psutil.Process(proc.pid).children(recursive=True)
    server = next(p for p in children if "server" in p.cmdline() and "start" in p.cmdline())
    os.killpg(server.pid, signal.SIGKILL)  # the API goes away mid-run
    lost = time.time()
    code, out = _finish(proc, timeout=120)
    assert code == 1 and time.time() - lost <= 30, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: lost the Prefect API at http://127.0.0.1:"), out[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, "processes of the run outlived it"
    assert not any(ArtifactStore(store, create=False).verify().values())  # what was stored is whole
    homes = [f for f in Path(tempfile.gettempdir()).glob("sharekan-prefect-*/owner.pid") if f.read_text() == str(proc.pid)]
    assert not homes, "the run's temporary Prefect home outlived it"
    assert CliRunner().invoke(cli, ["artifacts", "gc", "--store", str(store)]).exit_code == 0  # its lease lapsed


def test_an_unreachable_prefect_api_is_named_before_anything_starts(tmp_path, corrupt_data):
    from cli.services import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    cmd = [sys.executable, "-m", "cli.main", "run", "--data", str(corrupt_data), "--store", str(tmp_path / "store"),
           "--out", str(tmp_path / "out"), "--params", json.dumps(TINY)]
    out = subprocess.run(cmd, cwd=tmp_path, env={**_env(), "PREFECT_API_URL": url}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        f"Error: cannot reach the Prefect API at {url} (PREFECT_API_URL): "), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "store").exists()


def test_a_worker_killed_mid_training_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL the Ray worker running `train` after a few epochs: Ray retries the task, the retry
    continues from the last epoch's checkpoint, and the head equals one trained without a kill."""
    import ray

    from tasks import data, head
    from tasks.cluster import connect
    from tasks.runner import submit
    from tasks.specs import FeaturesSpec, HeadSpec

    generate_voc(tmp_path / "data", n_train=16, n_test=6, seed=0)
    store = tmp_path / "store"
    connect(num_cpus=2)
    try:
        spec = data.describe(tmp_path / "data", "synthetic", "2007:train", "2007:val", False)
        ds = ray.get(submit(data.dataset, str(store), spec, root=str(tmp_path / "data")))
        feats = ray.get(submit(data.features, str(store), FeaturesSpec(size=64, backbone="resnet18", split="train"),
                               ds.version))
        shutil.copytree(store, tmp_path / "reference")
        args = (HeadSpec(hidden=8, epochs=200, batch_size=16), feats.version, ds.version)
        ckpt = tmp_path / "ckpt" / "head.safetensors"
        run = submit(head.train, str(store), *args, checkpoint=str(ckpt), progress=False)
        deadline = time.time() + 240
        while not list(ckpt.parent.glob("*.resume.pt")):  # a few epochs done
            assert time.time() < deadline, "training wrote no checkpoint"
            time.sleep(0.2)
        time.sleep(1.0)
        workers = [p for p in psutil.process_iter(["cmdline"]) if "ray::train" in " ".join(p.info["cmdline"] or [])]
        assert workers, "no Ray worker is running the train task"
        for w in workers:
            w.send_signal(signal.SIGKILL)
        killed = ray.get(run)
        clean = ray.get(submit(head.train, str(tmp_path / "reference"), *args, progress=False))
    finally:
        ray.shutdown()
    assert 1 <= killed.meta["resumed_from"] < 200, killed  # the retry continued, it did not start again
    assert clean.meta["resumed_from"] == 0 and killed.version == clean.version
    a = ArtifactStore(store, create=False).get(killed.version).arrays()
    b = ArtifactStore(tmp_path / "reference", create=False).get(clean.version).arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(ckpt.parent.glob("*.resume.pt"))  # removed once the head was stored


def test_the_cli_survives_many_concurrent_invocations(tmp_path):
    """`sharekan artifacts` exited 134 (a native abort at interpreter exit) in ~10 % of runs under load."""
    store = ArtifactStore(tmp_path / "store")
    for i in range(4):
        store.put("x", {"i": i}, [], "c", {"a": np.arange(10)})
    version = store.ls()[0].version
    cmds = [[sys.executable, "-m", "cli.main", "artifacts", "--store", str(tmp_path / "store"), *args]
            for args in [["ls"], ["show", version], ["lineage", version]] * 12]

    def one(cmd):
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
        return done.returncode, done.stderr[-500:]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, cmds))
    assert [r for r in results if r[0] != 0] == []


@pytest.mark.parametrize("args,match", [
    (["--params", "not json"], "'not json' is neither a JSON object nor an existing file"),
    (["--params", '{"train": {"epochs": 2'], "the --params text is not valid JSON"),
    (["--params", "[1, 2]"], "neither a JSON object"),
    (["--params", '{"train": {"epochs": true}}'], "train.epochs"),
    (["--params", '{"data": {"skip_bad": "yes"}}'], "data.skip_bad"),
    (["--params", '{"train": {"hidden": 8}, "compress": {"ks": [16, 65536]}}'], "compress.ks: \\[65536\\] exceed"),
    (["--params", '{"train": {"hidden": 8}, "lutham_k": 65536}'], "lutham_k: 65536 is not among"),
    (["--data", "NOWHERE"], "data.root: NOWHERE has no VOCdevkit folder"),
])
def test_mistyped_inputs_are_refused_naming_the_field(tmp_path, args, match):
    result = CliRunner().invoke(cli, ["run", "--store", str(tmp_path / "s"), *args])
    assert result.exit_code == 2 and re.search(match, result.output), result.output
    assert not (tmp_path / "s").exists() and "Traceback" not in result.output


@pytest.mark.parametrize("store,match", [
    ("a-file", r"store: artifact store .*a-file is a file, not a store folder"),
    ("a-folder", r"store: .*a-folder is not an artifact store \(no Icechunk repository there\)"),
    ("a-file/below", r"store: cannot create artifact store .*below: .*a-file is a file"),
    ("s3:///prefix", r"store: store location 's3:///prefix' names no bucket"),
])
def test_a_store_that_cannot_work_is_refused_before_anything_starts(tmp_path, store, match):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-folder" / "notes.txt").write_text("mine")
    location = store if store.startswith("s3:") else str(tmp_path / store)
    result = CliRunner().invoke(cli, ["run", "--store", location, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and re.search(match, result.output), result.output
    assert "Traceback" not in result.output and (tmp_path / "a-folder" / "notes.txt").read_text() == "mine"


def test_params_file_and_out_file_are_checked(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"train": ')
    result = CliRunner().invoke(cli, ["run", "--params", str(bad)])
    assert result.exit_code == 2 and f"{bad} is not valid JSON" in result.output
    afile = tmp_path / "out"
    afile.write_text("")
    result = CliRunner().invoke(cli, ["run", "--out", str(afile), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and "out: " in result.output and "is a file, not a folder" in result.output


def test_only_failures_that_can_pass_on_retry_are_retried():
    import ray.exceptions

    from storage.store import CommitConflict, StoreError
    from tasks.retry import is_transient

    assert is_transient(ray.exceptions.WorkerCrashedError())
    assert is_transient(CommitConflict("lost a commit race"))
    assert is_transient(ray.exceptions.RayTaskError("f", "tb", ray.exceptions.NodeDiedError("n")))
    for deterministic in (ValueError("K too large"), StoreError("store is a file"), FileNotFoundError("no data"),
                          ray.exceptions.RayTaskError("f", "tb", ValueError("bad")), None):
        assert not is_transient(deterministic), deterministic


def test_a_ray_address_where_nothing_listens_is_named_at_once(tmp_path, corrupt_data):
    from cli.services import free_port

    address = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "cli.main", "run", "--data", str(corrupt_data), "--store", str(tmp_path / "store"),
           "--out", str(tmp_path / "out"), "--params", json.dumps(TINY), "--address", address]
    started = time.time()
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        f"Error: no Ray cluster answers at {address} ("), out.stderr[-2000:]
    assert time.time() - started < 60 and not (tmp_path / "out" / "prefect-server.log").exists()  # nothing started
