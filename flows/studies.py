"""Studies past the paper, as flows on the pipeline's stages (every stage reused when stored).

``pareto_sweep``: heads at several grid sizes G and seeds, each compressed at K from 64 up to the
largest power-of-4 ladder step below its edge count, with int8/int4 side data, with and without
VQ-aware fine-tuning; the seed-averaged table, the Pareto front and its chart.

``shared_codebook``: N heads on one frozen backbone (different seeds), one codebook fitted on all
their spline shapes, each head compressed with it (and, for comparison, with a codebook of its
own); total storage of the N heads against N dense heads; then the same codebook, unchanged, on a
head it never saw (transfer).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, get_run_logger

from sharekan.kmeans import ladder_ks
from sharekan.studies import pareto_front, seed_averaged, shared_storage
from storage.store import parse_location
from tasks import compress, head
from tasks.specs import CodebookSpec, CompressionSpec, FinetuneSpec, SplinesSpec

from .params import PipelineParams, SharedParams, SweepParams
from .pipeline import _logged, _run, _submit, dataset_stage, features_stages, sharekan_pipeline
from .preflight import preflight
from .runner import ClusterTaskRunner

__all__ = ["pareto_sweep", "shared_codebook"]


def _sweep_run(p: SweepParams, grid_size: int, seed: int, ks: list[int]) -> PipelineParams:
    b = p.base
    data_seed = b.data.seed if b.data.seed is not None else b.train.seed
    backbone_seed = b.train.backbone_seed if b.train.backbone_seed is not None else b.train.seed
    compress_update = {"ks": ks, "gain_dtypes": list(p.side_dtypes), "seed": seed,
                       "finetune_dtypes": list(p.side_dtypes) if p.finetune else [],
                       "finetune_epochs": b.compress.finetune_epochs if p.finetune else 0}
    return b.model_copy(update={
        "data": b.data.model_copy(update={"seed": data_seed}),
        "train": b.train.model_copy(update={"seed": seed, "grid_size": grid_size, "backbone_seed": backbone_seed}),
        "compress": b.compress.model_copy(update=compress_update),
        "lutham": False, "out": str(Path(p.out) / f"G{grid_size}-seed{seed}")})


def _command(which: str, params) -> str:
    """The command line that runs this study with these parameters (defaults left out)."""
    return f"sharekan study {which} --params '{params.model_dump_json(exclude_defaults=True)}'"


def _in_threads(fn, jobs: list, parallel: int) -> list:
    """``fn(*job)`` for every job, ``parallel`` at a time, each in a copy of this flow's context."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, *job) for job in jobs]
        return [f.result() for f in futures]


@flow(name="pareto-sweep", task_runner=ClusterTaskRunner(), log_prints=True)
def pareto_sweep(params: SweepParams = SweepParams()) -> dict:
    """Pipeline runs over grid sizes × seeds; the seed-averaged rows, their Pareto front (storage
    against mAP) and a chart, written to ``params.out`` and as Prefect artifacts."""
    edges = preflight(params.base)
    ks = params.ks or ladder_ks(edges)
    runs = {(g, s): _sweep_run(params, g, s, ks) for s in params.seeds for g in params.grid_sizes}
    # what every run shares first (data set, backbone, features): then the runs reuse it, at once
    one = next(iter(runs.values()))
    features_stages(parse_location(one.store), one.train, dataset_stage(one).version)
    jobs = list(runs)
    reports = _in_threads(lambda g, s: sharekan_pipeline(runs[g, s]), jobs, params.parallel)
    rows = seed_averaged([(g, s, rep["variants"]) for (g, s), rep in zip(jobs, reports)])
    front = pareto_front(rows)
    for r in rows:
        r["pareto"] = any(r is f for f in front)
    result = {"command": _command("pareto", params), "rows": rows, "front": [r["variant"] + f" G={r['grid_size']}" for r in front], "edges": edges,
              "ks": ks, "parameters": params.model_dump(), "runs": {f"G{g}-seed{s}": rep["stages"]["compression"]
                                                                     for (g, s), rep in zip(jobs, reports)}}
    from .report import publish_study

    publish_study("pareto", result, Path(params.out))
    get_run_logger().info(f"Pareto front: {', '.join(result['front'])}")
    return result


@flow(name="shared-codebook", task_runner=ClusterTaskRunner(), log_prints=True)
def shared_codebook(params: SharedParams = SharedParams()) -> dict:
    """N heads, one codebook fitted on all their shapes; each head's mAP with it against a codebook of
    its own; total storage for N heads; the codebook applied unchanged to an unseen head."""
    edges = preflight(params.base)
    if params.k > edges:
        raise ValueError(f"k: {params.k} exceeds the {edges:,} edges of one head")
    b, loc = params.base, parse_location(params.base.store)
    ds = dataset_stage(b)
    first = features_stages(loc, b.train, ds.version)
    seeds = [*params.head_seeds, params.transfer_seed]
    specs = {s: b.train.head().model_copy(update={"seed": s}) for s in seeds}
    heads = {s: _submit(head.train, loc, specs[s], first["features_train"].version, ds.version) for s in seeds}
    heads = {s: _logged(h.result()) for s, h in heads.items()}
    splines = {s: _submit(compress.splines, loc, SplinesSpec(), heads[s].version) for s in seeds}
    splines = {s: _logged(f.result()) for s, f in splines.items()}
    cb = CodebookSpec(k=params.k, seed=b.compress.seed, niter=b.compress.kmeans_niter, mode=b.compress.kmeans_mode)
    backend = b.compress.kmeans_backend
    shared = _run(compress.codebook, loc, cb, *(splines[s].version for s in params.head_seeds), backend=backend)
    own = {s: _run(compress.codebook, loc, cb, splines[s].version, backend=backend) for s in seeds}  # one at a time
    dtypes = list(params.side_dtypes) if params.finetune else []
    spec = CompressionSpec(ks=(params.k,), gain_dtypes=tuple(params.side_dtypes), sparsities=(),
                           finetuned=tuple((params.k, dt) for dt in dtypes))
    feats_train, feats_test = first["features_train"].version, first["features_test"].version

    ft = {dt: FinetuneSpec(k=params.k, gain_dtype=dt, epochs=b.compress.finetune_epochs, lr=b.compress.finetune_lr,
                           seed=b.compress.seed) for dt in dtypes}
    books = {(s, which): (shared if which == "shared" else own[s]).version for s in seeds for which in ("shared", "own")}
    tuned = {key: [_submit(compress.finetune, loc, ft[dt], heads[key[0]].version, feats_train, ds.version, book)
                   for dt in dtypes] for key, book in books.items()}  # every fine-tuning at once, then every table
    tables = {key: _submit(compress.compression, loc, spec, heads[key[0]].version, feats_test, ds.version, book,
                           *(_logged(t.result()).version for t in tuned[key])) for key, book in books.items()}
    rows = {key: _logged(t.result()).meta["rows"] for key, t in tables.items()}
    with_shared = {s: rows[s, "shared"] for s in seeds}
    with_own = {s: rows[s, "own"] for s in seeds}
    result = _shared_result(params, with_shared, with_own, shared.version)
    from .report import publish_study

    publish_study("shared", result, Path(params.out))
    return result


def _shared_result(params: SharedParams, with_shared: dict, with_own: dict, codebook: str) -> dict:
    seen = params.head_seeds
    variants = [r for r in with_shared[seen[0]] if r["kind"] == "vq"]
    table = []
    for v in variants:
        pick = lambda rows: next(r for r in rows if r["variant"] == v["variant"])  # noqa: E731
        totals = shared_storage([with_shared[s][0] for s in seen], [pick(with_shared[s]) for s in seen])
        shared_d = [pick(with_shared[s])["delta_map50"] for s in seen]
        own_d = [pick(with_own[s])["delta_map50"] for s in seen]
        table.append({"variant": v["variant"], "k": v["k"], "dtype": v["dtype"], "finetuned": v["finetuned"],
                      **totals, "delta_map_mean": sum(shared_d) / len(seen),
                      "delta_map_own_mean": sum(own_d) / len(seen), "per_head_delta": dict(zip(map(str, seen), shared_d)),
                      "transfer_delta": pick(with_shared[params.transfer_seed])["delta_map50"],
                      "transfer_own_delta": pick(with_own[params.transfer_seed])["delta_map50"]})
    return {"command": _command("shared", params), "rows": table, "codebook": codebook, "parameters": params.model_dump(),
            "dense_map50": {str(s): with_shared[s][0]["map50"] for s in with_shared}}
