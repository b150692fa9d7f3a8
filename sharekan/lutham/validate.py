"""Checking LUTHAM against the torch reference (``VQKANLinear``'s forward) on the GPU.

Before every run the output buffer is poisoned with NaN, so an element the kernels never wrote
fails the check. Inputs are drawn inside the grid range and well outside it (where only the
SiLU term and the boundary bases remain), for row counts that exercise every kernel path (one
row, each tensor-core tile height, 128-row blocks plus a tail, the cuBLAS slabs from their row
threshold at each precision) and partial tiles. :func:`detector_map` scores the detector with LUTHAM in place of the head's KAN
against the torch VQ reference; :func:`failures` turns both into one message per failing case.
"""

from __future__ import annotations

import torch

from .module import LuthamKAN
from .runtime import LuthamHead

__all__ = ["ROWS", "check", "validate", "detector_map", "failures"]

ROWS = (1, 2, 4, 5, 8, 9, 17, 49, 63, 64, 65, 128, 129, 200, 300)  # every kernel path and its boundaries


def check(head: LuthamHead, model, x: torch.Tensor) -> dict:
    """One poisoned run; ``max_rel_error`` is max |LUTHAM − reference| / max |reference| over the
    elements written, ``unwritten`` counts output elements still NaN after the run."""
    import cupy as cp

    head = head.lut if isinstance(head, LuthamKAN) else head
    out = head.view(f"act{len(head.plan.layers)}")
    with head.stream:
        out[...] = cp.nan
    y = head.forward(x)
    head.stream.synchronize()
    y = torch.as_tensor(cp.ascontiguousarray(y), device=x.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    try:
        with torch.no_grad():
            ref = model(x.float())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    finite = torch.isfinite(y)
    unwritten = int((~finite).sum())
    diff = torch.where(finite, (y - ref).abs(), torch.zeros_like(y))
    err = float(diff.max() / ref.abs().max().clamp_min(1e-12))
    return {"rows": int(x.shape[0]), "all_written": unwritten == 0, "unwritten": unwritten, "max_rel_error": err}


def validate(head: LuthamHead, model, seed: int = 0, real: torch.Tensor | None = None) -> dict:
    """Random inputs inside and outside the grid range (and ``real`` rows when given)."""
    head = head.lut if isinstance(head, LuthamKAN) else head
    g = torch.Generator(device="cpu").manual_seed(seed)
    grid = model.layers[0].grid
    lo, hi = float(grid[:, 3].min()), float(grid[:, -4].max())
    n_in = head.plan.layers[0].in_features
    cases = []
    for rows in (r for r in ROWS if r <= head.plan.max_rows):
        inside = lo + (hi - lo) * torch.rand(rows, n_in, generator=g)
        outside = (torch.rand(rows, n_in, generator=g) * 2 - 1) * 4 * max(abs(lo), abs(hi))
        for name, x in (("inside", inside), ("outside", outside)):
            cases.append({"inputs": name, **check(head, model, x.to(grid.device))})
    if real is not None:
        cases.append({"inputs": "real", **check(head, model, real[:head.plan.max_rows].to(grid.device))})
    worst = max(c["max_rel_error"] for c in cases)
    return {"cases": cases, "max_rel_error": worst, "all_written": all(c["all_written"] for c in cases)}


def detector_map(head, vq, lut: LuthamKAN, feats: torch.Tensor, samples, size: int) -> dict:
    """mAP@0.5 (VOC all-points) of ``head`` on ``feats`` with the torch VQ KAN ``vq`` and with
    LUTHAM ``lut`` in its place (same rows, same decoding). ``head`` and ``vq`` live on the CPU,
    where the detector decodes its boxes; LUTHAM's rows go to the GPU and back."""
    from ..detection.evaluate import voc_ap
    from ..detection.train import ground_truth, predict

    for name, module in (("head", head), ("vq", vq)):
        if any(p.is_cuda for p in module.parameters()) or any(b.is_cuda for b in module.buffers()):
            raise ValueError(f"detector_map: {name} must be on the CPU (the detector decodes there)")
    gts, n_cls, feats = ground_truth(samples), head.cfg.num_classes, feats.cpu()
    with torch.no_grad():
        ref = voc_ap(predict(head, feats, samples, size, kan=vq), gts, n_cls)["map"]
        mine = voc_ap(predict(head, feats, samples, size, kan=lut), gts, n_cls)["map"]
    return {"map50_reference": ref, "map50_lutham": mine}


def failures(report: dict, maps: dict | None, max_rel_error: float, max_map_delta: float) -> list[str]:
    """One message per case that breaks a bound: relative error, unwritten outputs, detector mAP."""
    out = []
    for c in report["cases"]:
        case = f"case rows={c['rows']} inputs={c['inputs']}"
        if c["unwritten"]:
            out.append(f"{case}: {c['unwritten']} output elements never written")
        if c["max_rel_error"] > max_rel_error:
            out.append(f"{case}: max relative error {c['max_rel_error']:.2e} > {max_rel_error:.0e}")
    if maps is not None:
        delta = abs(maps["map50_lutham"] - maps["map50_reference"])
        if not delta <= max_map_delta:
            out.append(f"detector mAP@0.5 with LUTHAM {maps['map50_lutham']:.4f} vs torch reference "
                       f"{maps['map50_reference']:.4f}: off by {delta:.4f} > {max_map_delta}")
    return out
