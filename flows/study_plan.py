"""The studies' pipeline runs, planned and checked before anything starts (``flows.plan``): the
K×G sweep's one run per (G, data seed, seed), the shared-codebook study's plan and its other
domain's. Imports neither Prefect nor Ray, so ``sharekan study`` refuses a bad study before any
service starts (and before Prefect reads its settings)."""

from __future__ import annotations

from pathlib import Path

from sharekan.codebook_size import ladder_ks

from .params import ParetoParams, PipelineParams, SharedParams
from .plan import PipelinePlan, PlanError, plan_pipeline

__all__ = ["pareto_plans", "shared_plan", "other_domain_plan"]


def _sweep_run(p: ParetoParams, grid_size: int, data_seed: int, seed: int, ks: list[int]) -> PipelineParams:
    b = p.base
    compress_update = {"ks": ks, "side_dtypes": list(p.side_dtypes), "seed": seed,
                       "finetune_side_dtypes": list(p.side_dtypes) if p.finetune else [],
                       "finetune_epochs": b.compress.finetune_epochs if p.finetune else 0}
    return b.model_copy(update={
        "data": b.data.model_copy(update={"seed": data_seed}),
        "train": b.train.model_copy(update={"seed": seed, "grid_size": grid_size, "backbone_seed": data_seed}),
        "compress": b.compress.model_copy(update=compress_update),
        "lutham": False, "out": str(Path(p.out) / f"G{grid_size}-data{data_seed}-seed{seed}")})


def pareto_plans(params: ParetoParams) -> dict[tuple[int, int, int], PipelinePlan]:
    """The sweep's pipeline runs, one plan per (G, data seed, seed), each checked (``flows.plan``)."""
    ks = params.ks or ladder_ks(plan_pipeline(params.base.model_copy(update={"lutham": False})).edges)
    return {(g, w, s): plan_pipeline(_sweep_run(params, g, w, s, ks))
            for w in params.data_seeds for s in params.seeds for g in params.grid_sizes}


def shared_plan(params: SharedParams) -> PipelinePlan:
    """The plan every head of the shared-codebook study follows (its base, at the study's K and
    side-data widths, fine-tuned as the base says when ``finetune``); heads differ by seed."""
    b = params.base
    if params.other_domain and b.data.root:
        raise PlanError("other_domain: the other domain is the synthetic data's shifted style; data.root gives "
                        "VOC images (set other_domain to false)")
    widths = list(params.side_dtypes)
    compress = b.compress.model_copy(update={"ks": [params.k], "side_dtypes": widths,
                                             "finetune_side_dtypes": widths if params.finetune else [],
                                             "finetune_epochs": b.compress.finetune_epochs if params.finetune else 0})
    return plan_pipeline(b.model_copy(update={"compress": compress, "lutham": False}))


def other_domain_plan(plan: PipelinePlan) -> PipelinePlan:
    """The same plan on the shifted synthetic domain (its training and test images; no shifted split)."""
    data = plan.params.data.model_copy(update={"shifted": True, "n_ood": 0})
    return plan_pipeline(plan.params.model_copy(update={"data": data}))
