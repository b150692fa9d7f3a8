"""Studies past the paper, as flows on the pipeline's stages (every stage reused when stored).

``pareto_sweep``: heads at several grid sizes G and seeds, each compressed at K from 64 up to the
largest power-of-4 ladder step below its edge count, with int8/int4 side data, with and without
VQ-aware fine-tuning; the seed-averaged table, the Pareto front and its chart.

``shared_codebook``: N heads on one frozen backbone (different seeds), one codebook fitted on all
their spline shapes, each head compressed with it (and, for comparison, with a codebook of its
own); total storage of the N heads against N dense heads; then the same codebook, unchanged, on a
head it never saw (transfer) and on a head of another domain (the shifted synthetic style's
images through the same frozen backbone).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, get_run_logger

from sharekan.detection.compare import VariantRow
from sharekan.studies import interval95, pareto_front, seed_averaged, shared_storage
from storage.store import parse_location
from tasks import compress, data, head
from tasks.specs import CompressionSpec

from .params import ParetoParams, SharedParams
from .pipeline import _logged, _submit, compress_stages, dataset_stage, feature_stages, sharekan_pipeline
from .ray_runner import ClusterTaskRunner
from .study_plan import other_domain_plan, pareto_plans, shared_plan
from .study_report import publish_pareto, publish_shared

__all__ = ["pareto_sweep", "shared_codebook"]

OTHER = "other domain"  # the shared study's unseen head of the shifted synthetic domain


def _command(which: str, params) -> str:
    """The command line that runs this study with these parameters (defaults left out)."""
    return f"sharekan study {which} --params '{params.model_dump_json(exclude_defaults=True)}'"


def _in_threads(fn, jobs: list, parallel: int) -> list:
    """``fn(*job)`` for every job, ``parallel`` at a time, each in a copy of this flow's context."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, *job) for job in jobs]
        return [f.result() for f in futures]


@flow(name="pareto-sweep", task_runner=ClusterTaskRunner(), log_prints=True)
def pareto_sweep(params: ParetoParams = ParetoParams()) -> dict:
    """Pipeline runs over grid sizes × seeds; the seed-averaged rows, their Pareto front (storage
    against mAP) and a chart, written to ``params.out`` and as Prefect artifacts."""
    plans = pareto_plans(params)
    # what the runs of a data seed share first (data set, backbone, features): then they reuse it, at once
    for w in params.data_seeds:
        one = next(p for (_, d, _), p in plans.items() if d == w)
        feature_stages(parse_location(one.params.store), one.train, dataset_stage(one).version)
    jobs = list(plans)
    reports = _in_threads(lambda g, w, s: sharekan_pipeline(plans[g, w, s].params), jobs, params.parallel)
    rows = seed_averaged([(g, f"{w}/{s}", [v.model_dump() for v in rep.variants])
                          for (g, w, s), rep in zip(jobs, reports)])
    front = pareto_front(rows)
    for r in rows:
        r["pareto"] = any(r is f for f in front)
    result = {"command": _command("pareto", params), "rows": rows,
              "front": [r["variant"] + f" G={r['grid_size']}" for r in front], "edges": one.edges,
              "ks": sorted(one.compress.codebooks), "parameters": params.model_dump(),
              "runs": {f"G{g}-data{w}-seed{s}": rep.stages["compression"].model_dump()
                       for (g, w, s), rep in zip(jobs, reports)}}
    publish_pareto(result, Path(params.out))
    get_run_logger().info(f"Pareto front: {', '.join(result['front'])}")
    return result


@flow(name="shared-codebook", task_runner=ClusterTaskRunner(), log_prints=True)
def shared_codebook(params: SharedParams = SharedParams()) -> dict:
    """N heads, one codebook fitted on all their shapes; each head's mAP with it against a codebook of
    its own; total storage for N heads; the codebook applied unchanged to an unseen head, and to an
    unseen head of another domain (``other_domain``)."""
    plan = shared_plan(params)
    loc = parse_location(plan.params.store)
    ds = dataset_stage(plan)
    seeds = [*params.head_seeds, params.transfer_seed]
    backbone, feats = feature_stages(loc, plan.train, ds.version)
    sources = {s: (feats["train"].version, feats["test"].version, ds.version) for s in seeds}
    if params.other_domain:  # its images through the same frozen backbone
        other = dataset_stage(other_domain_plan(plan))
        inputs = [backbone.version] if backbone else []
        fb = {split: _submit(data.features, loc, plan.train.features[split], other.version, *inputs)
              for split in ("train", "test")}
        fb = {split: _logged(f.result()).version for split, f in fb.items()}
        sources[OTHER] = (fb["train"], fb["test"], other.version)
    heads = {key: _submit(head.train, loc, plan.train.head.model_copy(update={"seed": params.transfer_seed
                                                                               if key == OTHER else key}),
                          train, dsv) for key, (train, _, dsv) in sources.items()}
    heads = {key: _logged(h.result()).version for key, h in heads.items()}
    splines = {s: _submit(compress.splines, loc, plan.compress.splines, heads[s]) for s in params.head_seeds}
    shared_books = [_logged(splines[s].result()).version for s in params.head_seeds]
    table = plan.compress.model_copy(update={"compression": CompressionSpec(sparsities=())})
    def compressed(key, which: str):
        train, test, dsv = sources[key]
        return compress_stages(loc, table, heads[key], train, dsv, {"test": test},
                               shared_books if which == "shared" else None)

    jobs = [(key, which) for key in sources for which in ("shared", "own")]
    first = compressed(*jobs[0])  # fits the shared codebook once; then every head at once (fits queue)
    outs = dict(zip(jobs, [first, *_in_threads(compressed, jobs[1:], len(jobs) - 1)]))
    result = _shared_result(params, {key: outs[key, "shared"].rows() for key in sources},
                            {key: outs[key, "own"].rows() for key in sources},
                            outs[seeds[0], "shared"].codebooks[params.k].version)
    publish_shared(result, Path(params.out))
    return result


def _shared_result(params: SharedParams, with_shared: dict[int | str, list[VariantRow]],
                   with_own: dict[int | str, list[VariantRow]], codebook: str) -> dict:
    seen = params.head_seeds
    table = []
    for v in (r.variant for r in with_shared[seen[0]] if r.variant.kind == "vq"):
        def pick(rows: list[VariantRow]) -> VariantRow:
            return next(r for r in rows if r.variant == v)  # noqa: B023 (used at once)
        totals = shared_storage([with_shared[s][0].to_dict() for s in seen],
                                [pick(with_shared[s]).to_dict() for s in seen])
        shared_d = [pick(with_shared[s]).delta_map50 for s in seen]
        own_d = [pick(with_own[s]).delta_map50 for s in seen]
        table.append({"variant": v.name, "k": v.k, "dtype": v.dtype, "finetuned": v.finetuned,
                      **totals, "delta_map_mean": sum(shared_d) / len(seen), "delta_map_ci95": interval95(shared_d),
                      "delta_map_own_mean": sum(own_d) / len(seen), "delta_map_own_ci95": interval95(own_d),
                      "shared_minus_own_ci95": interval95([a - b for a, b in zip(shared_d, own_d)]),
                      "per_head_delta": dict(zip(map(str, seen), shared_d)),
                      "per_head_own_delta": dict(zip(map(str, seen), own_d)), "seeds": list(seen),
                      "transfer_delta": pick(with_shared[params.transfer_seed]).delta_map50,
                      "transfer_own_delta": pick(with_own[params.transfer_seed]).delta_map50,
                      **({"other_domain_delta": pick(with_shared[OTHER]).delta_map50,
                          "other_domain_own_delta": pick(with_own[OTHER]).delta_map50} if OTHER in with_shared else {})})
    return {"command": _command("shared", params), "rows": table, "codebook": codebook, "parameters": params.model_dump(),
            "dense_map50": {str(s): with_shared[s][0].map50 for s in with_shared}}
