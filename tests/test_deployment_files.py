"""The image and the cluster definitions, checked against the real tools and schemas: hadolint on
the Dockerfile; the KubeRay definitions against the CRDs of the KubeRay release the README names
(``tests/data/kuberay``: RayJob and RayCluster, v1.7.0), strictly (an unknown field is an error,
as ``kubectl apply --validate=strict`` makes it); the cluster launcher's YAML against Ray's own
schema; and every command the definitions run against the CLI itself."""

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deployments"
KUBERAY = Path(__file__).parent / "data" / "kuberay"
KUBE_FILES = {"rayjob.yaml": "RayJob", "raycluster.yaml": "RayCluster"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
RAY = next(d.split("==")[1] for d in PROJECT["dependencies"] if d.startswith("ray["))


def _crd_schema(kind: str) -> dict:
    crd = yaml.safe_load(gzip.open(KUBERAY / f"ray.io_{kind.lower()}s.yaml.gz"))
    assert crd["spec"]["names"]["kind"] == kind
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def _unknown_fields(doc, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (Kubernetes would drop them silently without strict validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            if key in schema["properties"]:
                out += _unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                out.append(f"{path}.{key}")
    elif isinstance(doc, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in doc.items():
            out += _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(doc, list) and "items" in schema:
        for i, value in enumerate(doc):
            out += _unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


def _check_kube(doc: dict, kind: str) -> list[str]:
    schema = _crd_schema(kind)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    problems = errors + [f"unknown field {p}" for p in _unknown_fields(doc, schema)]
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != kind:
        problems.append(f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}, expected ray.io/v1/{kind}")
    return problems


def _cluster_specs(name: str, doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if name == "rayjob.yaml" else doc["spec"]


@pytest.mark.parametrize("name", KUBE_FILES)
def test_kuberay_definitions_match_the_release_crds(name):
    doc = yaml.safe_load((DEPLOY / name).read_text())
    assert _check_kube(doc, KUBE_FILES[name]) == []


def test_the_strict_check_catches_what_kubernetes_would_drop_or_refuse():
    doc = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    container = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    container["imagee"] = container.pop("image")  # a typo Kubernetes would prune without a word
    doc["spec"]["shutdownAfterJobFinishes"] = "yes"  # a wrong type
    problems = _check_kube(doc, "RayJob")
    assert any("unknown field .spec.rayClusterSpec.workerGroupSpecs[1].template.spec.containers[0].imagee" in p
               for p in problems), problems
    assert any("shutdownAfterJobFinishes" in p and "not of type 'boolean'" in p for p in problems), problems


@pytest.mark.parametrize("name", KUBE_FILES)
def test_the_definitions_run_the_project_s_images_ray_version_and_token_secret(name):
    spec = _cluster_specs(name, yaml.safe_load((DEPLOY / name).read_text()))
    assert spec["rayVersion"] == RAY
    assert spec["authOptions"] == {"mode": "token", "secretName": "sharekan-ray-token"}  # the token: a Secret
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for group, g in groups:
        pod = g["template"]["spec"]
        for c in pod["containers"]:
            gpu = "nvidia.com/gpu" in c["resources"]["limits"]
            assert c["image"] == f"ghcr.io/sharekan/sharekan:{VERSION}-{'gpu' if gpu else 'cpu'}", (group, c["image"])
            assert not any(e.get("name", "").startswith("RAY_AUTH_TOKEN") for e in c.get("env", []))
            if gpu:
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert any(g["groupName"] == "gpu" for _, g in groups[1:])


def test_the_cluster_launcher_definition_matches_ray_s_schema():
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    doc = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    jsonschema.validate(doc, schema)
    assert doc["docker"]["image"] == f"ghcr.io/sharekan/sharekan:{VERSION}-gpu"
    with pytest.raises(jsonschema.ValidationError, match="'imagee' was unexpected"):
        jsonschema.validate({**doc, "docker": {**doc["docker"], "imagee": "x"}}, schema)


def _commands() -> list[tuple[str, list[str]]]:
    """Every ``sharekan …`` command line the definitions run or tell a user to run."""
    out = []
    for path in [*DEPLOY.glob("ray*.yaml"), ROOT / "Dockerfile"]:
        text = path.read_text()
        for line in re.findall(r"(?:entrypoint:|-- )\s*(sharekan [^\n'\"]*)", text):
            out.append((path.name, shlex.split(line)))
        for cmd in re.findall(r"^CMD (\[.*\])$", text, flags=re.M):
            out.append((path.name, json.loads(cmd)))
    return out


def test_every_command_the_definitions_run_is_one_the_cli_accepts():
    from cli.main import main

    commands = _commands()
    assert {name for name, _ in commands} == {"rayjob.yaml", "raycluster.yaml", "ray-cluster.yaml", "Dockerfile"}
    for name, argv in commands:
        assert argv[0] == "sharekan", (name, argv)
        args = [a for a in argv[1:] if a != "--help"] + ["--help"]  # parse every option, run nothing
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (name, argv, result.output)
    assert CliRunner().invoke(main, ["run", "--adress", "auto", "--help"]).exit_code == 2  # a typo would fail


def test_the_dockerfile_passes_hadolint_and_bakes_in_no_secret():
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert {"FROM ${PYTHON_IMAGE} AS cpu", "FROM ${CUDA_IMAGE} AS gpu"} <= set(text.splitlines())
    assert re.search(r"^USER 1000:1000$", text, flags=re.M) and "pip install -e" not in text
    assert not re.search(r"(?i)^(ENV|ARG)\b.*(TOKEN|SECRET|PASSWORD|ACCESS_KEY)\s*=", text, flags=re.M)


def test_the_package_ships_every_kernel_source_it_compiles_at_run_time():
    """A pip-installed sharekan (the image, a user's environment) compiles its CUDA kernels from
    sources inside the package: the package data must name every one."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sharekan"]
    sources = {p.relative_to(ROOT / "sharekan") for ext in ("cu", "cuh") for p in (ROOT / "sharekan").rglob(f"*.{ext}")}
    shipped = {p.relative_to(ROOT / "sharekan") for g in globs for p in (ROOT / "sharekan").glob(g)}
    assert sources and sources <= shipped, sorted(map(str, sources - shipped))
