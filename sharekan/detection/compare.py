"""Compression of a trained detection head, variant by variant, scored on the detector.

Variants: dense fp32; int8 PTQ; magnitude pruning (global, by edge norm); Gain-Shape-Bias VQ
heads encoded elsewhere (one head-shared codebook, side data at some width, fine-tuned or not). For each:
mAP@0.5 (VOC all-points), Δ vs dense, storage bytes (the KAN's components plus the head's small
non-KAN tensors, the same for every variant), compression ratio, and runtime memory measured
during a head forward on the locations of 1 and of 8 images.

mAP of a VQ variant is computed through its decoded dense form, which equals the compressed
forward to float32 rounding (checked here on the first images, and in the tests); runtime
memory is measured on the compressed forward itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
from torch import nn

from ..baselines import Int8KAN, prune_edges
from ..memory import runtime_bytes, storage_components
from ..vq_kan import VQKAN
from .evaluate import voc_ap
from .head import KANDetectionHead
from .train import ground_truth, predict
from .voc import Sample

__all__ = ["Variant", "VariantRow", "baseline_variants", "compare_variants", "runtime_variant"]


@dataclass(frozen=True)
class Variant:
    """What a compressed head is: ``kind`` and, for VQ, codebook size ``k``, gain ``dtype`` and
    whether it was ``finetuned`` after compression; for pruning, the ``sparsity``. ``name`` is for
    people (tables, charts), never parsed."""

    kind: Literal["dense", "int8", "pruned", "vq"]
    k: int | None = None
    dtype: str | None = None
    sparsity: float | None = None
    finetuned: bool = False

    @property
    def name(self) -> str:
        if self.kind == "vq":
            return f"VQ K={self.k} {self.dtype}" + (" fine-tuned" if self.finetuned else "")
        if self.kind == "pruned":
            return f"pruned {round(self.sparsity * 100)}%"
        return {"dense": "dense fp32", "int8": "int8 PTQ"}[self.kind]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VariantRow:
    """One row of the compression table: the variant and what was measured of it."""

    variant: Variant
    map50: float
    delta_map50: float
    storage_bytes: int
    compression: float
    runtime_bytes_1img: int
    runtime_bytes_8img: int
    components: dict[str, int]
    vq_forward_rel_diff: float | None = None

    def to_dict(self) -> dict:
        """Flat, for JSON: ``variant`` (the name), the variant's fields, then the measurements."""
        out = {"variant": self.variant.name, **self.variant.to_dict()}
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "variant"})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> VariantRow:
        variant = Variant(**{f.name: d[f.name] for f in fields(Variant)})
        return cls(variant, **{f.name: d[f.name] for f in fields(cls) if f.name != "variant"})


def runtime_variant(rows: list[VariantRow], min_compression: float = 2.0, dtype: str = "fp16",
                    finetuned: bool = False) -> Variant:
    """The encoded head to run (LUTHAM): the best-mAP VQ variant with ``dtype`` side data
    (fine-tuned or not) among those ≥ ``min_compression``× smaller than dense (ties: the smaller K),
    else the most compressed one. The largest K is not the default: at K near the edge count the
    codebook is as big as the splines it replaces (K = 65,536 on a 67k-edge head compresses 1.0×)."""
    vq = [r for r in rows if r.variant.kind == "vq" and r.variant.dtype == dtype and r.variant.finetuned == finetuned]
    if not vq:
        raise ValueError(f"no {'fine-tuned' if finetuned else 'post-training'} VQ variant with {dtype} side data "
                         "among the compression rows")
    small = [r for r in vq if r.compression >= min_compression]
    if small:
        return min(small, key=lambda r: (-r.map50, r.variant.k)).variant
    return max(vq, key=lambda r: (r.compression, -r.variant.k)).variant


def baseline_variants(kan: nn.Module, sparsities=(0.1, 0.3, 0.5)) -> list[tuple[Variant, nn.Module]]:
    """Dense fp32, int8 PTQ and magnitude pruning (global, by edge norm) at ``sparsities``."""
    return ([(Variant("dense"), kan), (Variant("int8"), Int8KAN(kan))]
            + [(Variant("pruned", sparsity=s), prune_edges(kan, s)) for s in sparsities])


@torch.no_grad()
def compare_variants(head: KANDetectionHead, feats: torch.Tensor, samples: list[Sample], size: int,
                     variants: list[tuple[Variant, nn.Module]], progress: bool = True) -> list[VariantRow]:
    """One row per variant (see the module docstring); the first variant is the reference."""
    gts = ground_truth(samples)
    n, c, h, w = feats.shape
    rows_1 = head.standardise(feats[:1].permute(0, 2, 3, 1).reshape(-1, c))
    rows_8 = head.standardise(feats[:8].permute(0, 2, 3, 1).reshape(-1, c))
    extra = head.extra_bytes()
    rows = []
    ref_map = ref_bytes = None
    for v, variant in variants:
        scoring = variant.decoded() if isinstance(variant, VQKAN) else variant
        check = None
        if isinstance(variant, VQKAN):
            ref = scoring(rows_1)
            check = float((variant(rows_1) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        result = voc_ap(predict(head, feats, samples, size, kan=scoring), gts, head.cfg.num_classes)
        comps = storage_components(variant)
        stored = sum(comps.values()) + extra
        if ref_map is None:
            ref_map, ref_bytes = result["map"], stored
        rows.append(VariantRow(v, map50=result["map"], delta_map50=result["map"] - ref_map, storage_bytes=stored,
                               compression=ref_bytes / stored,
                               runtime_bytes_1img=runtime_bytes(variant, rows_1)["total"],
                               runtime_bytes_8img=runtime_bytes(variant, rows_8)["total"],
                               components=comps, vq_forward_rel_diff=check))
        if progress:
            print(f"  {v.name}: mAP@0.5 {result['map']:.4f}, {stored:,} B", flush=True)
    return rows
