"""The SHARe-KAN pipeline as Prefect flows whose tasks run on Ray (``prefect-ray``).

``sharekan_pipeline``: data → backbone (pretrained when no weights exist) → features → train → evaluate → spline shards → k-means → assignment →
compression table → LUTHAM compile/validate → report. The stage flows ``train``, ``compress`` and
``compile`` run alone on artifact versions. Every task is a stage of ``tasks`` called with its typed
spec (from the form, ``flows.params``) and input versions, run as a Ray task with the stage's
resources; a stage whose version is stored returns at once, so a re-run with the same parameters
takes seconds and a failed run resumes after its last committed stage.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed
from prefect_ray.context import remote_options

from sharekan.clustering import MODES
from sharekan.detection.compare import runtime_k
from sharekan.kmeans import default_ks
from storage.store import ArtifactStore, parse_location
from tasks import compress, data, head, lutham
from tasks.retry import RETRIES, retry_transient
from tasks.runner import StageResult, clamped
from tasks.specs import Mode, SplinesSpec

from .params import CompressParams, PipelineParams, TrainParams
from .preflight import preflight
from .report import publish
from .runner import ClusterTaskRunner

__all__ = ["sharekan_pipeline", "train_flow", "compress_flow", "compile_flow", "parameter_sweep", "dataset_stage",
           "features_stages"]

_TASKS = {fn: task(fn, name=fn.__name__, retries=RETRIES, retry_delay_seconds=2, retry_condition_fn=retry_transient,
                   log_prints=True)
          for fn in (data.dataset, data.pretrain, data.features, head.train, head.evaluate, compress.splines, compress.codebook,
                     compress.assignment, compress.finetune, compress.compression, lutham.compile_and_validate)}


def _submit(fn, *args, **kwargs):
    resources = fn.stage.resources if hasattr(fn, "stage") else fn.resources
    with remote_options(**clamped(resources)):
        return _TASKS[fn].submit(*args, **kwargs)


def _run(fn, *args, **kwargs) -> StageResult:
    return _logged(_submit(fn, *args, **kwargs).result())


def _logged(out: StageResult) -> StageResult:
    get_run_logger().info(f"[{out.stage}] {out.version} ({'new' if out.created else 'reused'}, {out.seconds:.1f}s)")
    return out


def _param(name: str):
    from prefect.runtime import flow_run

    return flow_run.parameters.get(name)


def _pipeline_run_name() -> str:
    p = _param("params")
    p = PipelineParams.model_validate(p) if isinstance(p, dict) else (p or PipelineParams())
    source = Path(p.data.root).name if p.data.root else "synthetic"
    ks = ",".join(map(str, p.compress.ks)) if p.compress.ks else "default"
    return f"pipeline {source} G={p.train.grid_size} K={ks} seed={p.train.seed}"


def _train_run_name() -> str:
    p = _param("params")
    p = TrainParams.model_validate(p) if isinstance(p, dict) else (p or TrainParams())
    return f"train {p.backbone_name()} hidden={p.hidden} G={p.grid_size} epochs={p.epochs}"


def _report_folder_name() -> str:
    """This run's report folder: UTC time, then the flow run's name."""
    from prefect.runtime import flow_run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9=.,_-]+", "-", flow_run.name or "").strip("-")
    return f"{stamp}-{name}" if name else stamp


@flow(name="train", flow_run_name=_train_run_name, task_runner=ClusterTaskRunner(), log_prints=True)
def train_flow(dataset_version: str, params: TrainParams = TrainParams(), store: str | None = None,
               out: str = "artifacts/detection") -> dict[str, StageResult]:
    """Backbone (pretrained on the training split when no weights exist) → features → head → dense
    evaluation (COCO JSON exported into ``out``), from a stored data set."""
    loc = parse_location(store)
    first = features_stages(loc, params, dataset_version)
    f_train, f_test = first["features_train"], first["features_test"]
    if not f_train.meta["backbone"]["pretrained"]:
        get_run_logger().warning("backbone has RANDOM INITIALISATION (no weights given or cached, pretraining off)")
    trained = _run(head.train, loc, params.head(), f_train.version, dataset_version,
                   checkpoint=str(Path(out) / "checkpoints" / "head.safetensors"))
    ev = _run(head.evaluate, loc, params.evaluation(), trained.version, f_test.version, dataset_version)
    head.export_coco(loc, ev.version, out)
    return {**first, "head": trained, "evaluation": ev}


def dataset_stage(params: PipelineParams) -> StageResult:
    """The data set of ``params`` as a stage (the embedded synthetic set generated first when no VOC
    root is given, next to the report folder)."""
    loc, d = parse_location(params.store), params.data
    data_seed = params.train.seed if d.seed is None else d.seed
    root = d.root or str(data.synthetic_root(Path(params.out).parent / "data", data_seed, d.n_train, d.n_test, d.n_ood))
    ood = d.ood_splits if d.root else ("2007:ood" if d.n_ood else "")
    spec = data.describe(root, d.root or "synthetic", d.train_splits, d.test_splits, d.skip_bad, ood)
    return _run(data.dataset, loc, spec, root=root)


def features_stages(loc, params: TrainParams, dataset_version: str) -> dict[str, StageResult]:
    """``backbone`` (pretrained on the training split when no weights exist) and ``features_<split>``
    for every split of the data set (train, test, and ood when it has one)."""
    ds = ArtifactStore(loc, create=False).get(dataset_version)  # names a missing version before any work
    out, backbone = {}, []
    if (spec := params.pretrain()) is not None:
        out["backbone"] = _run(data.pretrain, loc, spec, dataset_version)
        backbone = [out["backbone"].version]
    splits = ["train", "test"] + (["ood"] if ds.params["ood_splits"] else [])
    feats = {split: _submit(data.features, loc, params.features(split), dataset_version, *backbone) for split in splits}
    return out | {f"features_{split}": _logged(f.result()) for split, f in feats.items()}


@flow(name="compress", flow_run_name="compress {head_version}", task_runner=ClusterTaskRunner(), log_prints=True)
def compress_flow(head_version: str, features_version: str, dataset_version: str,
                  params: CompressParams = CompressParams(), store: str | None = None,
                  ood_features_version: str | None = None) -> dict:
    """Spline shards → a codebook (distributed k-means) and per-edge assignment for each K → the
    fine-tuned variants (on the head's own training features) → the compression table. Returns
    ``{"splines", "codebooks": {k: …}, "assignments": {k: …}, "finetuned": {"K=k dtype": …}, "compression"}``."""
    loc = parse_location(store)
    train_features = ArtifactStore(loc, create=False).get(head_version).inputs[0]  # what the head was trained on
    spl = _run(compress.splines, loc, SplinesSpec(), head_version)
    edges = spl.meta["edges"]
    ks = params.ks or default_ks(edges)
    if any(k > edges for k in ks):
        raise ValueError(f"compress.ks: {[k for k in ks if k > edges]} exceed the head's {edges:,} edges")
    backend = params.kmeans_backend
    # one k-means at a time: its shard actors must all be placed at once, and two half-placed
    # fits on a small cluster would wait on each other's CPUs for ever
    books = {k: _run(compress.codebook, loc, params.codebook(k), spl.version, backend=backend) for k in ks}
    assigned = {k: _run(compress.assignment, loc, params.assignment(k), books[k].version, spl.version, backend=backend)
                for k in ks}
    tuned = {f"K={f.k} {f.gain_dtype}": _submit(compress.finetune, loc, f, head_version, train_features, dataset_version,
                                          books[f.k].version) for f in params.finetunes(ks)}
    tuned = {key: _logged(t.result()) for key, t in tuned.items()}
    models = [*(books[k].version for k in ks), *(t.version for t in tuned.values())]
    spec = params.compression(ks)
    table = _run(compress.compression, loc, spec, head_version, features_version, dataset_version, *models)
    out = {"splines": spl, "codebooks": books, "assignments": assigned, "finetuned": tuned, "compression": table}
    if ood_features_version is not None:  # every variant scored again on the shifted split
        out["compression_ood"] = _run(compress.compression, loc, spec.model_copy(update={"split": "ood"}), head_version,
                                      ood_features_version, dataset_version, *models)
    return out


@flow(name="compile", flow_run_name="compile LUTHAM {codebook_version}", task_runner=ClusterTaskRunner(),
      log_prints=True)
def compile_flow(head_version: str, codebook_version: str, features_version: str, dataset_version: str,
                 store: str | None = None) -> dict:
    """LUTHAM plan, compile and validate on a GPU worker; "skipped: no GPU worker" without one."""
    if not lutham.gpu_available():  # a named state in the UI, not a green "Completed"
        get_run_logger().warning(lutham.NO_GPU)
        return Completed(name="Skipped", message=lutham.NO_GPU, data={
            "version": None, "created": False, "seconds": 0.0, "skipped": lutham.NO_GPU})
    out = _run(lutham.compile_and_validate, parse_location(store), head_version, codebook_version, features_version,
               dataset_version)
    return {**out.summary(), **out.meta["summary"]}


@flow(name="sharekan-pipeline", flow_run_name=_pipeline_run_name, task_runner=ClusterTaskRunner(), log_prints=True)
def sharekan_pipeline(params: PipelineParams = PipelineParams()) -> dict:
    """The whole pipeline on one set of parameters; writes ``report.json`` and Prefect artifacts."""
    t0 = time.perf_counter()
    preflight(params)
    ds = dataset_stage(params)
    tr = train_flow(ds.version, params.train, params.store, params.out)
    comp = compress_flow(tr["head"].version, tr["features_test"].version, ds.version, params.compress, params.store,
                         tr["features_ood"].version if "features_ood" in tr else None)
    rows = comp["compression"].meta["rows"]
    lut = None
    if params.lutham:
        k = params.lutham_k or runtime_k(rows)
        if k not in comp["codebooks"]:
            raise ValueError(f"lutham_k={k}: no codebook of that size was fitted (have {sorted(comp['codebooks'])})")
        get_run_logger().info(f"LUTHAM runs the K={k} codebook")
        lut = {**compile_flow(tr["head"].version, comp["codebooks"][k].version, tr["features_test"].version,
                              ds.version, params.store), "codebook_k": k}
    report = _report(params, {"dataset": ds, **tr}, comp, lut, time.perf_counter() - t0, _report_folder_name())
    run_dir = publish(report, Path(params.out))
    print(f"report: {run_dir / 'report.json'} (latest run also in {params.out})")
    return report


def _report(params: PipelineParams, first: dict[str, StageResult], comp: dict, lut: dict | None, seconds: float,
            run_name: str) -> dict:
    rows, ev = comp["compression"].meta["rows"], first["evaluation"].meta
    stages = {name: s.summary() for name, s in first.items()}
    stages["splines"] = comp["splines"].summary()
    for k in comp["codebooks"]:
        stages[f"codebook K={k}"] = comp["codebooks"][k].summary()
        stages[f"assignment K={k}"] = comp["assignments"][k].summary()
    for name, s in comp["finetuned"].items():
        stages[f"finetune {name}"] = s.summary()
    stages["compression"] = comp["compression"].summary()
    ood = {r["variant"]: r for r in comp["compression_ood"].meta["rows"]} if "compression_ood" in comp else {}
    if ood:
        stages["compression_ood"] = comp["compression_ood"].summary()
    if lut is not None:
        stages["lutham"] = {key: lut[key] for key in ("stage", "version", "created", "seconds", "skipped") if key in lut}
    return {
        "run_name": run_name, "parameters": params.model_dump(), "seconds": seconds,
        "map50": ev["map50"], "metric": ev["metric"], "torchmetrics_map50": ev["torchmetrics_map50"],
        "per_class_ap": ev["per_class_ap"],
        "variants": [{**{k: r[k] for k in ("variant", "kind", "k", "dtype", "sparsity", "finetuned", "map50",
                                           "delta_map50", "storage_bytes", "runtime_bytes_1img", "runtime_bytes_8img",
                                           "compression")},
                      **({"map50_ood": ood[r["variant"]]["map50"], "delta_map50_ood": ood[r["variant"]]["delta_map50"]}
                         if ood else {})}
                     for r in rows],
        "compression": rows,
        "codebooks": {str(k): s.version for k, s in comp["codebooks"].items()},
        "stages": stages,
        "skipped_samples": first["dataset"].meta.get("skipped", []),
        "lutham": lut,
    }


@flow(name="parameter-sweep", task_runner=ClusterTaskRunner(), log_prints=True)
def parameter_sweep(params: PipelineParams = PipelineParams(),
                    modes: list[Mode] = list(MODES)) -> list[dict]:
    """One pipeline run per k-means mode (stages the modes share are reused), and a table comparing them."""
    rows = []
    for mode in modes:
        run = params.model_copy(update={"compress": params.compress.model_copy(update={"kmeans_mode": mode}),
                                        "out": str(Path(params.out) / f"sweep-{mode}")})
        report = sharekan_pipeline(run)
        rows += [{"kmeans_mode": mode, **v} for v in report["variants"] if v["kind"] == "vq"]
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="sharekan-sweep", table=rows, description="VQ variants per k-means mode")
    return rows
