"""Compression of a trained detection head, variant by variant, scored on the detector.

Variants: dense fp32; int8 PTQ; magnitude pruning (global, by edge norm); Gain-Shape-Bias VQ
with one head-shared codebook at several K, fp16 and int8 gains/biases/base weights. For each:
mAP@0.5 (VOC all-points), Δ vs dense, storage bytes (the KAN's components plus the head's small
non-KAN tensors, the same for every variant), compression ratio, and runtime memory measured
during a head forward on the locations of 1 and of 8 images.

mAP of a VQ variant is computed through its decoded dense form, which equals the compressed
forward to float32 rounding (checked here on the first images, and in the tests); runtime
memory is measured on the compressed forward itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from ..baselines import Int8KAN, prune_edges
from ..memory import runtime_bytes, storage_components
from ..vq_kan import GAIN_DTYPES, VQKAN, compress_kan
from .evaluate import voc_ap
from .head import KANDetectionHead
from .train import ground_truth, predict
from .voc import Sample

__all__ = ["Variant", "baseline_variants", "vq_variants", "compare_variants", "runtime_k"]


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


def runtime_k(rows: list[dict], min_compression: float = 2.0) -> int:
    """The codebook size to run (LUTHAM, fp16 gains): the best-mAP ``VQ K=… fp16`` variant among
    those stored ≥ ``min_compression``× smaller than dense (ties: the smaller K), else the most
    compressed one. The largest K is not the default: at K near the edge count the codebook is as
    big as the splines it replaces (K = 65,536 on a 67k-edge head compresses 1.0×)."""
    vq = [(r["k"], r) for r in rows if r["kind"] == "vq" and r["dtype"] == "fp16" and not r.get("finetuned")]
    if not vq:
        raise ValueError("no VQ variant with fp16 gains among the compression rows")
    small = [(k, r) for k, r in vq if r["compression"] >= min_compression]
    if small:
        return min(small, key=lambda kr: (-kr[1]["map50"], kr[0]))[0]
    return max(vq, key=lambda kr: (kr[1]["compression"], -kr[0]))[0]


def baseline_variants(kan: nn.Module, sparsities=(0.1, 0.3, 0.5)) -> list[tuple[Variant, nn.Module]]:
    """Dense fp32, int8 PTQ and magnitude pruning (global, by edge norm) at ``sparsities``."""
    return ([(Variant("dense"), kan), (Variant("int8"), Int8KAN(kan))]
            + [(Variant("pruned", sparsity=s), prune_edges(kan, s)) for s in sparsities])


def vq_variants(kan: nn.Module, codebooks: dict[int, torch.Tensor],
                gain_dtypes=GAIN_DTYPES) -> list[tuple[Variant, VQKAN]]:
    """A head-shared VQ variant per (K, gain dtype) from fitted ``codebooks`` ``{K: [K, C]}``."""
    n_layers = len(kan.layers)
    return [(Variant("vq", k=k, dtype=dt), compress_kan(kan, k, gain_dtype=dt, codebooks=[cb] * n_layers))
            for k, cb in sorted(codebooks.items()) for dt in gain_dtypes]


@torch.no_grad()
def compare_variants(head: KANDetectionHead, feats: torch.Tensor, samples: list[Sample], size: int,
                     variants: list[tuple[Variant, nn.Module]], progress: bool = True) -> list[dict]:
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
        rows.append({
            "variant": v.name, **v.to_dict(), "map50": result["map"], "delta_map50": result["map"] - ref_map,
            "storage_bytes": stored, "compression": ref_bytes / stored,
            "runtime_bytes_1img": runtime_bytes(variant, rows_1)["total"],
            "runtime_bytes_8img": runtime_bytes(variant, rows_8)["total"],
            "components": comps, "vq_forward_rel_diff": check,
        })
        if progress:
            print(f"  {v.name}: mAP@0.5 {result['map']:.4f}, {stored:,} B", flush=True)
    return rows
