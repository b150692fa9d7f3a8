"""Deployments for real: ``prefect server start``, a process work pool and worker, ``sharekan
deploy`` of deployments/prefect.yaml, ``prefect deployment run`` with parameters, and the pipeline
submitted to a ``ray start --head`` cluster with ``ray job submit``; all on 127.0.0.1."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.services import bin_path, free_port, prefect_env, prefect_server, ray_head, worker
from storage.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp: Path, name: str) -> dict:
    return {"data": {"n_train": 16, "n_test": 6, "n_ood": 0},
            "train": {"size": 64, "backbone": "resnet18", "pretrain_epochs": 1, "hidden": 8, "epochs": 1,
                      "batch_size": 256},
            "compress": {"ks": [16], "kmeans_niter": 3, "finetune_epochs": 0},
            "store": str(tmp / "store"), "out": str(tmp / name), "lutham": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect")
    with prefect_server(home=str(tmp / "home"), log=tmp / "server.log") as url:
        yield url, tmp


def prefect(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([bin_path("prefect"), *args], env=prefect_env(url), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_deploy_trigger_and_inspect_through_the_api(server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    url, tmp = server
    with worker(url, log=tmp / "worker.log"):
        deployed = subprocess.run([sys.executable, "-m", "cli.main", "deploy"], env=prefect_env(url), cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        listed = prefect(url, "deployment", "ls").stdout
        for name in ("sharekan-pipeline/pipeline", "kmeans-mode-sweep/sweep", "train/train", "compress/compress",
                     "compile/compile"):
            assert name in listed
        bad = prefect(url, "deployment", "run", "sharekan-pipeline/pipeline", "--params",
                      json.dumps({"params": {"train": {"epochs": 0}}}), check=False)
        assert bad.returncode != 0 and "epochs" in (bad.stdout + bad.stderr)
        started = prefect(url, "deployment", "run", "sharekan-pipeline/pipeline", "--flow-run-name", "baseline 3",
                          "--params", json.dumps({"params": tiny(tmp, "deployed")})).stdout
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)

        async def wait_and_read():
            async with get_client() as client:
                deadline = time.time() + 600
                while True:
                    fr = await client.read_flow_run(run_id)
                    if fr.state.is_final() or time.time() > deadline:
                        break
                    time.sleep(2)
                subs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id={"any_": [run_id]}))
                ids = [run_id] + [s.id for s in subs]
                tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}))
                arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
                deployments = await client.read_deployments()
                return fr, tasks, arts, deployments

        with temporary_settings({PREFECT_API_URL: url}):
            fr, tasks, arts, deployments = run_coro_as_sync(wait_and_read())
    assert fr.state.is_completed(), (tmp / "worker.log").read_text()[-4000:]
    assert fr.name == "baseline 3"  # the user's run name is kept
    assert fr.parameters["params"]["train"]["epochs"] == 1
    assert {t.name.split("-")[0] for t in tasks} >= {"dataset", "features", "train", "evaluate", "splines",
                                                   "codebook", "compression"}
    assert all(t.state.is_completed() for t in tasks)
    assert {a.key for a in arts} >= {"sharekan-report", "sharekan-compression"}
    schedules = {d.name: d.schedules for d in deployments}
    assert schedules["pipeline"] and not any(s.active for s in schedules["pipeline"])
    assert schedules["sweep"] and not any(s.active for s in schedules["sweep"])
    assert {"pareto", "shared-codebook"} <= set(schedules)  # the study flows, runnable from the UI
    report = json.loads((tmp / "deployed" / "report.json").read_text())
    assert ArtifactStore(tmp / "store", create=False).has(report["stages"]["compression"]["version"])


def test_ray_job_submit_runs_the_pipeline_on_a_started_cluster(server):
    url, tmp = server
    dash = free_port()
    env = prefect_env(url)
    with ray_head(port=free_port(), num_cpus=2, env=env, dashboard_port=dash):
        cmd = [bin_path("ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
               "--runtime-env-json", json.dumps({"env_vars": {"PREFECT_API_URL": url}}),
               "--", sys.executable, "-m", "cli.main", "run", "--address", "auto",
               "--params", json.dumps(tiny(tmp, "job"))]
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    report = json.loads((tmp / "job" / "report.json").read_text())
    store = ArtifactStore(tmp / "store", create=False)
    assert all(store.has(s["version"]) for s in report["stages"].values() if s.get("version"))
