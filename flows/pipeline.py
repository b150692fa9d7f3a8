"""The SHARe-KAN pipeline as Prefect flows whose tasks run on Ray (``prefect-ray``).

``sharekan_pipeline``: data → features → train → evaluate → spline shards → k-means → encode →
compression table → LUTHAM compile/validate → report. The stage flows ``train``, ``compress``
and ``compile`` run alone on artifact versions. Every task is a ``tasks.stages`` function run as a
Ray task with that stage's resources; a stage whose version is already stored returns at once, so
a re-run with the same parameters takes seconds and a failed run resumes after its last committed
stage. Ray must be initialised (``tasks.cluster.connect``) before a flow starts, with the Prefect
API URL in the workers' environment, so task runs report to the flow's API.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.states import Completed
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from sharekan.detection.compare import runtime_k
from storage.store import ArtifactStore, parse_location
from tasks import lutham as lutham_tasks
from tasks import stages
from tasks.cluster import init_kwargs
from tasks.retry import RETRIES, ray_options, retry_transient

from .params import CompressParams, PipelineParams, TrainParams
from .preflight import preflight
from .report import publish

__all__ = ["sharekan_pipeline", "train_flow", "compress_flow", "compile_flow", "parameter_sweep"]

_TASKS = {name: task(fn, name=name, retries=RETRIES, retry_delay_seconds=2, retry_condition_fn=retry_transient,
                     log_prints=True)
          for name, fn in [*((n, getattr(stages, n)) for n in ("dataset", "features", "train", "evaluate", "splines",
                                                                 "codebook", "compression")),
                           ("lutham", lutham_tasks.compile_and_validate)]}


def _runner() -> RayTaskRunner:
    """Uses the Ray cluster initialised before the flow; a deployment run (no Ray yet) starts one
    from ``$SHAREKAN_RAY_ADDRESS`` or locally, with the Prefect API URL in its workers' env."""
    kw = init_kwargs()
    remote = kw.pop("address") if kw["address"] != "local" else None  # "local" stays an ray.init argument
    return RayTaskRunner(address=remote, init_kwargs=kw)


def _submit(name: str, *args, **kwargs):
    with remote_options(**ray_options(**stages.RESOURCES[name])):
        return _TASKS[name].submit(*args, **kwargs)


def _run(name: str, *args, **kwargs) -> dict:
    out = _submit(name, *args, **kwargs).result()
    get_run_logger().info(f"[{name}] {out['version']} ({'new' if out['created'] else 'reused'}, "
                          f"{out['seconds']:.1f}s)")
    return out


def _loc(store: str | None):
    return parse_location(store)


def _report_folder_name() -> str:
    """This run's report folder: UTC time, then the flow run's name."""
    from prefect.runtime import flow_run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9=.,_-]+", "-", flow_run.name or "").strip("-")
    return f"{stamp}-{name}" if name else stamp


def _param(name: str):
    from prefect.runtime import flow_run

    return flow_run.parameters.get(name)


def _pipeline_run_name() -> str:
    p = _param("params")
    p = PipelineParams.model_validate(p) if isinstance(p, dict) else (p or PipelineParams())
    data = Path(p.data.root).name if p.data.root else "synthetic"
    ks = ",".join(map(str, p.compress.ks)) if p.compress.ks else "default"
    return f"pipeline {data} G={p.train.grid_size} K={ks} seed={p.train.seed}"


def _train_run_name() -> str:
    p = _param("params")
    p = TrainParams.model_validate(p) if isinstance(p, dict) else (p or TrainParams())
    return f"train {p.backbone} hidden={p.hidden} G={p.grid_size} epochs={p.epochs}"


@flow(name="train", flow_run_name=_train_run_name, task_runner=_runner(), log_prints=True)
def train_flow(dataset_version: str, params: TrainParams = TrainParams(), store: str | None = None,
               out: str = "artifacts/detection") -> dict:
    """Features → head → dense evaluation, from a stored data set version."""
    loc = _loc(store)
    ArtifactStore(loc, create=False).get(dataset_version)  # names a missing version before any work
    backbone = {"name": params.backbone, "layer": params.layer, "weights": params.weights, "seed": params.seed}
    f_train = _submit("features", loc, dataset_version, backbone, params.size, "train")
    f_test = _submit("features", loc, dataset_version, backbone, params.size, "test")
    f_train, f_test = f_train.result(), f_test.result()
    if f_train["backbone"]["pretrained"] is False:
        get_run_logger().warning("backbone has RANDOM INITIALISATION (no weights given or cached)")
    head = _run("train", loc, f_train["version"], dataset_version, params.size, params.hidden, params.grid_size,
                params.epochs, params.lr, params.batch_size, params.seed, checkpoint=str(Path(out) / "checkpoints" / "head.safetensors"))
    ev = _run("evaluate", loc, head["version"], f_test["version"], dataset_version, params.size, params.use_07,
              out=out)
    return {"stages": {"features_train": f_train, "features_test": f_test, "head": head, "evaluation": ev}}


@flow(name="compress", flow_run_name="compress {head_version}", task_runner=_runner(), log_prints=True)
def compress_flow(head_version: str, features_version: str, dataset_version: str,
                  params: CompressParams = CompressParams(), store: str | None = None) -> dict:
    """Spline shards → codebooks (distributed k-means) and per-edge assignments → the compression table."""
    from sharekan.detection.compare import default_ks

    loc = _loc(store)
    size = ArtifactStore(loc, create=False).get(head_version).meta["size"]
    spl = _run("splines", loc, head_version)
    ks = params.ks or default_ks(spl["edges"])
    too_big = [k for k in ks if k > spl["edges"]]
    if too_big:
        raise ValueError(f"codebook sizes {too_big} exceed the head's {spl['edges']} edges")
    cbs = {f"codebook_K{k}": _run("codebook", loc, spl["version"], k, params.seed, params.kmeans_niter,
                                  params.kmeans_mode) for k in ks}
    comp = _run("compression", loc, head_version, features_version, dataset_version,
                {k: cbs[f"codebook_K{k}"]["version"] for k in ks}, size)
    return {"stages": {"splines": spl, **cbs, "compression": comp}}


@flow(name="compile", flow_run_name="compile LUTHAM {codebook_version}", task_runner=_runner(), log_prints=True)
def compile_flow(head_version: str, codebook_version: str, features_version: str, dataset_version: str,
                 store: str | None = None) -> dict:
    """LUTHAM plan, compile and validate on a GPU worker; "skipped: no GPU worker" without one."""
    loc = _loc(store)
    if not lutham_tasks.gpu_available():  # a named state in the UI, not a green "Completed"
        get_run_logger().warning(lutham_tasks.NO_GPU)
        return Completed(name="Skipped", message=lutham_tasks.NO_GPU, data={"stages": {"lutham": {
            "version": None, "created": False, "seconds": 0.0, "skipped": lutham_tasks.NO_GPU}}})
    with remote_options(**ray_options(num_gpus=1, num_cpus=1)):
        out = _TASKS["lutham"].submit(loc, head_version, codebook_version, features_version,
                                      dataset_version).result()
    return {"stages": {"lutham": out}}


@flow(name="sharekan-pipeline", flow_run_name=_pipeline_run_name, task_runner=_runner(), log_prints=True)
def sharekan_pipeline(params: PipelineParams = PipelineParams()) -> dict:
    """The whole pipeline on one set of parameters; writes ``report.json`` and Prefect artifacts."""
    t0 = time.perf_counter()
    preflight(params)
    loc, out, d = _loc(params.store), Path(params.out), params.data
    if d.root:
        root, label = d.root, d.root
    else:
        root, label = str(stages.synthetic_root(Path(params.out).parent / "data", params.train.seed,
                                                d.n_train, d.n_test)), "synthetic"
    ds = _run("dataset", loc, root, d.train_splits, d.test_splits, d.skip_bad, label)
    tr = train_flow(ds["version"], params.train, params.store, params.out)["stages"]
    result = {"dataset": ds, **tr}
    comp = compress_flow(tr["head"]["version"], tr["features_test"]["version"], ds["version"],
                         params.compress, params.store)["stages"]
    result |= comp
    rows = comp["compression"]["rows"]
    if params.lutham:
        k = params.lutham_k or runtime_k(rows)
        if f"codebook_K{k}" not in comp:
            raise ValueError(f"lutham_k={k}: no codebook of that size was fitted "
                             f"(have {sorted(int(c[10:]) for c in comp if c.startswith('codebook_K'))})")
        get_run_logger().info(f"LUTHAM runs the K={k} codebook")
        result |= compile_flow(tr["head"]["version"], comp[f"codebook_K{k}"]["version"],
                               tr["features_test"]["version"], ds["version"], params.store)["stages"]
        result["lutham"]["codebook_k"] = k
    report = _report(params, result, rows, time.perf_counter() - t0, _report_folder_name())
    run_dir = publish(report, out)
    print(f"report: {run_dir / 'report.json'} (latest run also in {out})")
    return report


def _report(params: PipelineParams, stages_: dict, rows: list[dict], seconds: float, run_name: str) -> dict:
    ev = stages_["evaluation"]
    keep = ("version", "created", "seconds", "skipped")
    return {
        "run_name": run_name, "parameters": params.model_dump(), "seconds": seconds,
        "map50": ev["map50"], "metric": ev["metric"], "torchmetrics_map50": ev["torchmetrics_map50"],
        "per_class_ap": ev["per_class_ap"],
        "variants": [{k: r[k] for k in ("variant", "map50", "delta_map50", "storage_bytes", "runtime_bytes_1img",
                                        "runtime_bytes_8img", "compression")} for r in rows],
        "compression": rows,
        "stages": {name: {k: s[k] for k in keep if k in s} for name, s in stages_.items()},
        "skipped_samples": stages_["dataset"].get("skipped_samples", []),
        "lutham": stages_.get("lutham"),
    }


@flow(name="parameter-sweep", task_runner=_runner(), log_prints=True)
def parameter_sweep(params: PipelineParams = PipelineParams(),
                    modes: list[Literal["full", "minibatch", "two-level"]] = ["full", "minibatch", "two-level"]
                    ) -> list[dict]:
    """One pipeline run per k-means mode (stages the modes share are reused), and a table comparing them."""
    rows = []
    for mode in modes:
        run = params.model_copy(update={"compress": params.compress.model_copy(update={"kmeans_mode": mode}),
                                        "out": str(Path(params.out) / f"sweep-{mode}")})
        report = sharekan_pipeline(run)
        rows += [{"kmeans_mode": mode, **v} for v in report["variants"] if v["variant"].startswith("VQ")]
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="sharekan-sweep", table=rows, description="VQ variants per k-means mode")
    return rows
