"""What the flows hand each other and the user: typed stage outputs and the run report.

Stage outputs are dataclasses of :class:`~tasks.runner.StageResult` keyed by what they are
(K as ``int``, encoded heads by their :class:`~sharekan.detection.compare.Variant`); the run
report is a pydantic model, written as ``report.json`` and read back with
:meth:`RunReport.model_validate_json` (K keys come back as ints). Rows join on ``Variant``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from sharekan.detection.compare import Variant, VariantRow
from tasks.runner import StageResult

__all__ = ["TrainOutputs", "CompressOutputs", "StageSummary", "ReportRow", "LuthamReport", "RunReport"]


@dataclass(frozen=True)
class TrainOutputs:
    """The train flow's stages: backbone (``None`` when weights were given), features per split,
    head, evaluation."""

    backbone: StageResult | None
    features: dict[str, StageResult]
    head: StageResult
    evaluation: StageResult


@dataclass(frozen=True)
class CompressOutputs:
    """The compress flow's stages: splines; codebook and assignment per K; every encoded head by its
    variant (post-training, then fine-tuned: the table's order); a compression table per split."""

    splines: StageResult
    codebooks: dict[int, StageResult]
    assignments: dict[int, StageResult]
    encoded: dict[Variant, StageResult]
    tables: dict[str, StageResult]

    def rows(self, split: str = "test") -> list[VariantRow]:
        return [VariantRow.from_dict(r) for r in self.tables[split].meta["rows"]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSummary(_Model):
    """A stage as the report shows it: its version, new or reused, seconds, or why it was skipped."""

    stage: str
    version: str | None
    created: bool
    seconds: float
    skipped: str | None = None
    node: str = ""  # the Ray node it ran on

    @classmethod
    def of(cls, result: StageResult) -> StageSummary:
        return cls(**result.summary())

    @property
    def state(self) -> str:
        return self.skipped or ("new" if self.created else "reused")


class ReportRow(_Model):
    """A variant of the run's table: what it is, its mAP (and on the shifted split), its bytes."""

    variant: str
    kind: str
    k: int | None
    dtype: str | None
    sparsity: float | None
    finetuned: bool
    map50: float
    delta_map50: float
    storage_bytes: int
    compression: float
    runtime_bytes_1img: int
    runtime_bytes_8img: int
    map50_ood: float | None = None
    delta_map50_ood: float | None = None

    @classmethod
    def of(cls, row: VariantRow, ood: VariantRow | None) -> ReportRow:
        d = {k: v for k, v in row.to_dict().items() if k in cls.model_fields}
        if ood is not None:
            d.update(map50_ood=ood.map50, delta_map50_ood=ood.delta_map50)
        return cls(**d)


class LuthamReport(_Model):
    """The LUTHAM stage: the encoded head it ran, and its validation and timings (or why skipped)."""

    variant: str
    k: int
    side_dtype: str
    stage: StageSummary
    arch: str | None = None
    device: str | None = None
    validated: bool = False
    max_rel_error: float | None = None
    all_written: bool | None = None
    cases: list[dict] = []
    map50_reference: float | None = None
    map50_lutham: float | None = None
    timings_us: list[dict] = []
    plan_summary: str = ""
    arena_bytes: int | None = None
    edge_bytes: float | None = None
    dense_fp32_peak_bytes: int | None = None


class RunReport(_Model):
    """A pipeline run's report (``report.json``)."""

    run_name: str
    parameters: dict
    seconds: float
    map50: float
    metric: str
    torchmetrics_map50: float
    per_class_ap: dict[str, float]
    variants: list[ReportRow]
    compression: list[dict]
    codebooks: dict[int, str]
    stages: dict[str, StageSummary]
    skipped_samples: list[str] = []
    lutham: LuthamReport | None = None
    lost_nodes: list[str] = []  # Ray nodes alive at the start that died during the run
