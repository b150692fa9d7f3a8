"""The SHARe-KAN pipeline as Prefect flows whose tasks run on Ray (``prefect-ray``).

``sharekan_pipeline``: data → backbone (pretrained when no weights exist) → features → train →
evaluate → spline shards → k-means → assignment → encoded heads → fine-tuned heads → compression
table → LUTHAM compile/validate (of one encoded head) → report. The stage flows ``train``,
``compress`` and ``compile`` run alone on artifact versions. Each flow resolves its form into a
plan (``flows.plan``: typed specs, checked once) and walks it: every task is a stage of ``tasks``
called with its spec and input versions, run as a Ray task with the stage's resources; a stage
whose version is stored returns at once, so a re-run with the same parameters takes seconds and
a failed run resumes after its last committed stage.
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
from sharekan.detection.compare import Variant, runtime_variant
from sharekan.detection.head import HeadConfig
from storage.leases import hold
from storage.store import ArtifactStore, StoreError, parse_location
from tasks import compress, data, head, lutham
from tasks.cluster import alive_nodes
from tasks.retry import RETRIES, retry_transient
from tasks.runner import StageResult, clamped
from tasks.specs import Mode

from .params import CompressParams, PipelineParams, TrainParams
from .plan import CompressPlan, PipelinePlan, TrainPlan, plan_compress, plan_pipeline, plan_train
from .ray_runner import ClusterTaskRunner
from .results import CompressOutputs, LuthamReport, ReportRow, RunReport, StageSummary, TrainOutputs
from .run_report import publish

__all__ = ["sharekan_pipeline", "train_flow", "compress_flow", "compile_flow", "kmeans_mode_sweep", "dataset_stage",
           "feature_stages", "train_stages", "compress_stages"]

_TASKS = {fn: task(fn, name=fn.__name__, retries=RETRIES, retry_delay_seconds=2, retry_condition_fn=retry_transient,
                   log_prints=True)
          for fn in (data.dataset, data.pretrain, data.features, head.train, head.evaluate, compress.splines,
                     compress.codebook, compress.assignment, compress.encode, compress.finetune, compress.compression,
                     lutham.compile_and_validate)}


def _submit(fn, loc, *args, **kwargs):
    """Submit stage ``fn`` against the store at ``loc``; the first stage a process submits to a
    store takes the process's lease on it (``storage.leases``: gc leaves a live run's store alone)."""
    _hold(loc)
    resources = fn.stage.resources if hasattr(fn, "stage") else fn.resources
    with remote_options(**clamped(resources)):
        return _TASKS[fn].submit(loc, *args, **kwargs)


_HELD: set = set()


def _hold(loc) -> None:
    """This process's lease on the store at ``loc``, once it exists (before, gc has nothing to take)."""
    if loc not in _HELD:
        try:
            store = ArtifactStore(loc, create=False)
        except StoreError:
            return  # not created yet: the first stage creates it, the next submission takes the lease
        hold(store)
        _HELD.add(loc)


def _run(fn, loc, *args, **kwargs) -> StageResult:
    out = _logged(_submit(fn, loc, *args, **kwargs).result())
    _hold(loc)  # the first stage creates the store: hold it before the run goes on
    return out


def _logged(out: StageResult) -> StageResult:
    get_run_logger().info(f"[{out.stage}] {out.version} ({'new' if out.created else 'reused'}, {out.seconds:.1f}s)")
    return out


def _param(name: str):
    from prefect.runtime import flow_run

    return flow_run.parameters.get(name)


def _named(described: str) -> str:
    """A run name a user gave is kept; a generated one (Prefect's two-word slug, e.g.
    ``crimson-lemur``) gets the run's parameters appended, so runs stay distinct and say what they ran."""
    from prefect.runtime import flow_run

    name = flow_run.name or ""
    if name and not re.fullmatch(r"[a-z]+-[a-z]+", name):
        return name
    return f"{name} · {described}" if name else described


def _pipeline_run_name() -> str:
    p = _param("params")
    p = PipelineParams.model_validate(p) if isinstance(p, dict) else (p or PipelineParams())
    source = Path(p.data.root).name if p.data.root else "synthetic"
    ks = ",".join(map(str, p.compress.ks)) if p.compress.ks else "default"
    return _named(f"pipeline {source} G={p.train.grid_size} K={ks} seed={p.train.seed}")


def _train_run_name() -> str:
    p = _param("params")
    p = TrainParams.model_validate(p) if isinstance(p, dict) else (p or TrainParams())
    return _named(f"train {p.backbone_name()} hidden={p.hidden} G={p.grid_size} epochs={p.epochs}")


def _report_folder_name() -> str:
    """This run's report folder: UTC time, then the flow run's name."""
    from prefect.runtime import flow_run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(r"[^A-Za-z0-9=.,_-]+", "-", flow_run.name or "").strip("-")
    return f"{stamp}-{name}" if name else stamp


def _splits(loc, dataset_version: str) -> tuple[str, ...]:
    ds = ArtifactStore(loc, create=False).get(dataset_version)  # names a missing version before any work
    return ("train", "test", "ood") if ds.params["ood_splits"] else ("train", "test")


@flow(name="train", flow_run_name=_train_run_name, task_runner=ClusterTaskRunner(), log_prints=True)
def train_flow(dataset_version: str, params: TrainParams = TrainParams(), store: str | None = None,
               out: str = "artifacts/detection") -> TrainOutputs:
    """Backbone (pretrained on the training split when no weights exist) → features → head → dense
    evaluation (COCO JSON exported into ``out``), from a stored data set."""
    loc = parse_location(store)
    return train_stages(loc, plan_train(params, _splits(loc, dataset_version)), dataset_version, out)


def train_stages(loc, plan: TrainPlan, dataset_version: str, out: str) -> TrainOutputs:
    """The train plan's stages; the head checkpoints into ``out`` and the evaluation's COCO files
    are exported there."""
    backbone, feats = feature_stages(loc, plan, dataset_version)
    trained = _run(head.train, loc, plan.head, feats["train"].version, dataset_version,
                   checkpoint=str(Path(out) / "checkpoints" / "head.safetensors"))
    ev = _run(head.evaluate, loc, plan.evaluation, trained.version, feats["test"].version, dataset_version)
    head.export_coco(loc, ev.version, out)
    return TrainOutputs(backbone, feats, trained, ev)


def feature_stages(loc, plan: TrainPlan, dataset_version: str) -> tuple[StageResult | None, dict[str, StageResult]]:
    """The backbone (pretrained when the plan says so) and the features of every planned split."""
    backbone = _run(data.pretrain, loc, plan.pretrain, dataset_version) if plan.pretrain else None
    inputs = [backbone.version] if backbone else []
    feats = {split: _submit(data.features, loc, spec, dataset_version, *inputs)
             for split, spec in plan.features.items()}
    feats = {split: _logged(f.result()) for split, f in feats.items()}
    if not feats["train"].meta["backbone"]["pretrained"]:
        get_run_logger().warning("backbone has RANDOM INITIALISATION (no weights given or cached, pretraining off)")
    return backbone, feats


def dataset_stage(plan: PipelinePlan) -> StageResult:
    """The data set of ``plan`` as a stage (the embedded synthetic set generated first when no VOC
    root is given, next to the report folder)."""
    params = plan.params
    loc, d = parse_location(params.store), params.data
    root = d.root or str(data.synthetic_root(Path(params.out).parent / "data", plan.data_seed, d.n_train, d.n_test,
                                             d.n_ood, d.shifted))
    ood = d.ood_splits if d.root else ("2007:ood" if d.n_ood else "")
    spec = data.describe(root, d.root or "synthetic", d.train_splits, d.test_splits, d.skip_bad, ood)
    return _run(data.dataset, loc, spec, root=root)


@flow(name="compress", flow_run_name="compress {head_version}", task_runner=ClusterTaskRunner(), log_prints=True)
def compress_flow(head_version: str, features_version: str, dataset_version: str,
                  params: CompressParams = CompressParams(), store: str | None = None,
                  ood_features_version: str | None = None) -> CompressOutputs:
    """Spline shards → a codebook (distributed k-means) and per-edge assignment for each K → an
    encoded head per (K, side-data width) → the fine-tuned ones (on the head's own training
    features) → the compression table (and on the shifted split when its features are given)."""
    loc = parse_location(store)
    art = ArtifactStore(loc, create=False).get(head_version)
    edges = HeadConfig(**art.meta["config"]).edges
    features = {"test": features_version} | ({"ood": ood_features_version} if ood_features_version else {})
    return compress_stages(loc, plan_compress(params, edges), head_version, art.inputs[0], dataset_version, features)


def compress_stages(loc, plan: CompressPlan, head_version: str, train_features: str, dataset_version: str,
                    features: dict[str, str], splines_versions: list[str] | None = None) -> CompressOutputs:
    """The compress plan's stages for one head. ``train_features``: what it was trained on (the
    fine-tunings use them); ``features``: a table for each split given. ``splines_versions``:
    fit the codebooks on these heads' shapes instead of this head's (a codebook shared by heads)."""
    spl = _run(compress.splines, loc, plan.splines, head_version)
    backend = plan.kmeans_backend
    # every K's fit at once: each fit's shard actors are placed together (a placement group), so
    # fits queue for the cluster's CPUs instead of waiting on each other
    books = {k: _submit(compress.codebook, loc, spec, *(splines_versions or [spl.version]), backend=backend)
             for k, spec in plan.codebooks.items()}
    books = {k: _logged(f.result()) for k, f in books.items()}
    assigned = {k: _submit(compress.assignment, loc, spec, books[k].version, spl.version, backend=backend)
                for k, spec in plan.assignments.items()}
    assigned = {k: _logged(f.result()) for k, f in assigned.items()}
    encoded = {e: _submit(compress.encode, loc, e, head_version, books[e.k].version, assigned[e.k].version)
               for e in plan.encodings}
    encoded = {e: _logged(f.result()) for e, f in encoded.items()}
    tuned = {f: _submit(compress.finetune, loc, f, head_version, encoded[plan.encoding(f)].version, train_features,
                        dataset_version) for f in plan.finetunes}
    out = {Variant("vq", k=e.k, dtype=e.side_dtype): r for e, r in encoded.items()}
    out |= {Variant("vq", k=f.k, dtype=f.side_dtype, finetuned=True): _logged(t.result()) for f, t in tuned.items()}
    versions = [r.version for r in out.values()]
    tables = {split: _submit(compress.compression, loc, plan.compression.model_copy(update={"split": split}),
                             head_version, version, dataset_version, *versions)
              for split, version in features.items()}
    return CompressOutputs(spl, books, assigned, out, {split: _logged(t.result()) for split, t in tables.items()})


@flow(name="compile", flow_run_name="compile LUTHAM {encoded_version}", task_runner=ClusterTaskRunner(),
      log_prints=True)
def compile_flow(head_version: str, encoded_version: str, features_version: str, dataset_version: str,
                 store: str | None = None) -> StageResult | None:
    """LUTHAM plan, compile and validate an encoded head on a GPU worker; a state named "Skipped"
    (result ``None``) without one."""
    if not lutham.gpu_available():  # a named state in the UI, not a green "Completed"
        get_run_logger().warning(lutham.NO_GPU)
        return Completed(name="Skipped", message=lutham.NO_GPU, data=None)
    return _run(lutham.compile_and_validate, parse_location(store), head_version, encoded_version, features_version,
                dataset_version)


@flow(name="sharekan-pipeline", flow_run_name=_pipeline_run_name, task_runner=ClusterTaskRunner(), log_prints=True)
def sharekan_pipeline(params: PipelineParams = PipelineParams()) -> RunReport:
    """The whole pipeline on one set of parameters; writes ``report.json`` and Prefect artifacts."""
    t0 = time.perf_counter()
    plan = plan_pipeline(params)
    nodes = alive_nodes()
    ds = dataset_stage(plan)
    tr = train_flow(ds.version, params.train, params.store, params.out)
    feats = {split: r.version for split, r in tr.features.items() if split != "train"}
    comp = compress_flow(tr.head.version, feats["test"], ds.version, params.compress, params.store, feats.get("ood"))
    lut = None
    if plan.lutham is not None:
        want = plan.lutham
        variant = want if want.k is not None else runtime_variant(comp.rows(), dtype=want.dtype,
                                                                  finetuned=want.finetuned)
        get_run_logger().info(f"LUTHAM runs {variant.name}")
        built = compile_flow(tr.head.version, comp.encoded[variant].version, feats["test"], ds.version, params.store)
        lut = _lutham_report(variant, built)
    report = _report(params, ds, tr, comp, lut, time.perf_counter() - t0, _report_folder_name())
    if lost := sorted(nodes - alive_nodes()):
        get_run_logger().warning(f"Ray node(s) {', '.join(lost)} died during the run; their stages were retried and "
                                 "their k-means actors restarted on the nodes left")
        report = report.model_copy(update={"lost_nodes": lost})
    run_dir = publish(report, Path(params.out))
    get_run_logger().info(f"report: {run_dir / 'report.json'} (latest run also in {params.out})")
    return report


def _lutham_report(variant: Variant, built: StageResult | None) -> LuthamReport:
    head = {"variant": variant.name, "k": variant.k, "side_dtype": variant.dtype}
    if built is None:
        return LuthamReport(**head, stage=StageSummary(stage="lutham", version=None, created=False, seconds=0.0,
                                                       skipped=lutham.NO_GPU))
    summary = {k: v for k, v in built.meta["summary"].items() if k in LuthamReport.model_fields and k not in head}
    return LuthamReport(**head, stage=StageSummary.of(built), **summary)


def _report(params: PipelineParams, ds: StageResult, tr: TrainOutputs, comp: CompressOutputs,
            lut: LuthamReport | None, seconds: float, run_name: str) -> RunReport:
    stages = {"dataset": ds} | ({"backbone": tr.backbone} if tr.backbone else {})
    stages |= {f"features_{split}": r for split, r in tr.features.items()}
    stages |= {"head": tr.head, "evaluation": tr.evaluation, "splines": comp.splines}
    for k in comp.codebooks:
        stages |= {f"codebook K={k}": comp.codebooks[k], f"assignment K={k}": comp.assignments[k]}
    stages |= {f"{'finetune' if v.finetuned else 'encoded'} K={v.k} {v.dtype}": r for v, r in comp.encoded.items()}
    stages |= {"compression" if split == "test" else f"compression_{split}": r for split, r in comp.tables.items()}
    summaries = {name: StageSummary.of(r) for name, r in stages.items()}
    if lut is not None:
        summaries["lutham"] = lut.stage
    ood = {r.variant: r for r in comp.rows("ood")} if "ood" in comp.tables else {}
    ev = tr.evaluation.meta
    return RunReport(run_name=run_name, parameters=params.model_dump(), seconds=seconds, map50=ev["map50"],
                     metric=ev["metric"], torchmetrics_map50=ev["torchmetrics_map50"],
                     per_class_ap=ev["per_class_ap"],
                     variants=[ReportRow.of(r, ood.get(r.variant)) for r in comp.rows()],
                     compression=comp.tables["test"].meta["rows"],
                     codebooks={k: s.version for k, s in comp.codebooks.items()}, stages=summaries,
                     skipped_samples=ds.meta.get("skipped", []), lutham=lut)


@flow(name="kmeans-mode-sweep", task_runner=ClusterTaskRunner(), log_prints=True)
def kmeans_mode_sweep(params: PipelineParams = PipelineParams(), modes: list[Mode] = list(MODES)) -> list[dict]:
    """One pipeline run per k-means mode (stages the modes share are reused), and a table comparing
    their VQ variants."""
    rows = []
    for mode in modes:
        run = params.model_copy(update={"compress": params.compress.model_copy(update={"kmeans_mode": mode}),
                                        "out": str(Path(params.out) / f"sweep-{mode}")})
        report = sharekan_pipeline(run)
        rows += [{"kmeans_mode": mode, **v.model_dump()} for v in report.variants if v.kind == "vq"]
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="sharekan-sweep", table=rows, description="VQ variants per k-means mode")
    return rows
