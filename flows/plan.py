"""The form resolved into typed stage specs, checked once, before any service starts.

:func:`plan_pipeline` turns :class:`~flows.params.PipelineParams` into a :class:`PipelinePlan`:
every stage's spec (data, backbone, features per split, head, evaluation, a codebook and an
assignment per K, an encoding per (K, side-data width), the fine-tunings, the compression table)
and which encoded head LUTHAM runs. Every rule across fields is checked here and nowhere else in
the flows; a broken rule raises :class:`PlanError` naming each field at fault. The CLI plans
before it starts services, the flows plan as their first step (a run from the UI fails at once),
and the stage flows and study flows walk plans instead of building specs of their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sharekan.codebook_size import default_ks
from sharekan.detection.compare import Variant
from storage.store import location_problem
from tasks.specs import (AssignmentSpec, CodebookSpec, CompressionSpec, EncodeSpec, EvaluationSpec, FeaturesSpec,
                         FinetuneSpec, HeadSpec, PretrainSpec, SplinesSpec)

from .params import CompressParams, PipelineParams, TrainParams

__all__ = ["PlanError", "TrainPlan", "CompressPlan", "PipelinePlan", "plan_train", "plan_compress", "plan_pipeline",
           "head_edges"]


class PlanError(ValueError):
    """Parameters that cannot work, found before any stage runs; the message names each field."""


class _Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class TrainPlan(_Plan):
    """Backbone (pretrained when no weights exist), features per split, head and its evaluation."""

    pretrain: PretrainSpec | None
    features: dict[str, FeaturesSpec]
    head: HeadSpec
    evaluation: EvaluationSpec


class CompressPlan(_Plan):
    """Per K a codebook and an assignment; per (K, side-data width) an encoded head; the fine-tuned
    ones (each from the encoding of its K and width); the compression table."""

    splines: SplinesSpec = SplinesSpec()
    codebooks: dict[int, CodebookSpec]
    assignments: dict[int, AssignmentSpec]
    encodings: tuple[EncodeSpec, ...]
    finetunes: tuple[FinetuneSpec, ...]
    compression: CompressionSpec
    kmeans_backend: str

    def encoding(self, finetune: FinetuneSpec) -> EncodeSpec:
        """The encoding a fine-tuning starts from."""
        return next(e for e in self.encodings if (e.k, e.side_dtype) == (finetune.k, finetune.side_dtype))


class PipelinePlan(_Plan):
    """One pipeline run: its form, the stage plans, and the encoded head LUTHAM runs (``None``:
    LUTHAM off; a variant with ``k=None``: the best post-training fp16 one the table finds)."""

    params: PipelineParams
    data_seed: int
    edges: int
    train: TrainPlan
    compress: CompressPlan
    lutham: Variant | None


def head_edges(train: TrainParams) -> int:
    """KAN edges of the head ``train`` describes: what a codebook compresses."""
    from sharekan.detection.backbone import backbone_channels
    from sharekan.detection.head import HeadConfig

    return HeadConfig(in_channels=backbone_channels(train.backbone_name(), train.layer), hidden=train.hidden).edges


def plan_train(train: TrainParams, splits: tuple[str, ...]) -> TrainPlan:
    """The training stages' specs, features for each of ``splits``."""
    return TrainPlan(pretrain=train.pretrain(), features={s: train.features(s) for s in splits}, head=train.head(),
                     evaluation=train.evaluation())


def plan_compress(compress: CompressParams, edges: int, problems: list[str] | None = None) -> CompressPlan:
    """The compression stages' specs for a head of ``edges`` edges. Broken rules are appended to
    ``problems`` when given (the caller reports them with others), else raised."""
    own = problems is None
    problems = [] if own else problems
    ks = list(compress.ks) if compress.ks else default_ks(edges)
    if too_big := [k for k in ks if k > edges]:
        problems.append(f"compress.ks: {too_big} exceed the head's {edges:,} edges")
    if len(set(ks)) != len(ks):
        problems.append(f"compress.ks: {sorted({k for k in ks if ks.count(k) > 1})} listed more than once")
    widths = list(compress.side_dtypes)
    if len(set(widths)) != len(widths):
        problems.append(f"compress.side_dtypes: {widths} lists a width more than once")
    tuned = list(compress.finetune_side_dtypes) if compress.finetune_epochs else []
    if missing := [d for d in tuned if d not in widths]:
        problems.append(f"compress.finetune_side_dtypes {missing} are not among compress.side_dtypes {widths}")
    if own and problems:
        raise PlanError("; ".join(problems))
    ks = sorted(set(ks))
    return CompressPlan(
        codebooks={k: CodebookSpec(k=k, seed=compress.seed, niter=compress.kmeans_niter, mode=compress.kmeans_mode)
                   for k in ks},
        assignments={k: AssignmentSpec(k=k) for k in ks},
        encodings=tuple(EncodeSpec(k=k, side_dtype=d, codebook_dtype=compress.codebook_dtype) for k in ks for d in widths),
        finetunes=tuple(FinetuneSpec(k=k, side_dtype=d, epochs=compress.finetune_epochs, lr=compress.finetune_lr,
                                     train_codebook=compress.finetune_codebook, seed=compress.seed)
                        for k in ks for d in tuned),
        compression=CompressionSpec(), kmeans_backend=compress.kmeans_backend)


def plan_pipeline(params: PipelineParams) -> PipelinePlan:
    """The plan of one pipeline run, every rule checked (see the module)."""
    t, problems = params.train, []
    if params.data.root and not (Path(params.data.root) / "VOCdevkit").is_dir():
        problems.append(f"data.root: {params.data.root} has no VOCdevkit folder")
    if params.data.root and params.data.shifted:
        problems.append("data.shifted: draws the synthetic data set in another style; data.root gives VOC images")
    if Path(params.out).exists() and not Path(params.out).is_dir():
        problems.append(f"out: {params.out} is a file, not a folder")
    if (store := location_problem(params.store)) is not None:
        problems.append(f"store: {store}")
    edges = head_edges(t)
    compress = plan_compress(params.compress, edges, problems)
    lutham = None
    if params.lutham:
        if params.lutham_k is not None and params.lutham_k not in compress.codebooks:
            problems.append(f"lutham_k: {params.lutham_k} is not among the codebook sizes fitted "
                            f"({sorted(compress.codebooks)})")
        width, tuned = params.lutham_side_dtype, params.lutham_finetuned
        if width not in params.compress.side_dtypes:
            problems.append(f"lutham_side_dtype: {width} is not among compress.side_dtypes "
                            f"{list(params.compress.side_dtypes)}; add it or set lutham to false")
        elif tuned and not any(f.side_dtype == width for f in compress.finetunes):
            problems.append(f"lutham_finetuned: no fine-tuned {width} head is planned (compress.finetune_side_dtypes "
                            f"{list(params.compress.finetune_side_dtypes)}, finetune_epochs "
                            f"{params.compress.finetune_epochs})")
        lutham = Variant("vq", k=params.lutham_k, dtype=width, finetuned=tuned)
    if problems:
        raise PlanError("; ".join(problems))
    d = params.data
    has_ood = bool(d.ood_splits if d.root else d.n_ood)
    splits = ("train", "test", "ood") if has_ood else ("train", "test")
    return PipelinePlan(params=params, data_seed=t.seed if d.seed is None else d.seed, edges=edges,
                        train=plan_train(t, splits), compress=compress, lutham=lutham)
