"""Checking LUTHAM against the torch reference (``VQKANLinear``'s forward) on the GPU.

Before every run the output buffer is poisoned with NaN, so an element the kernels never wrote
fails the check. Inputs are drawn inside the grid range and well outside it (where only the
SiLU term and the boundary bases remain), for row counts that exercise both kernel paths and
partial tiles.
"""

from __future__ import annotations

import torch

from .runtime import LuthamHead

__all__ = ["ROWS", "check", "validate"]

ROWS = (1, 5, 16, 17, 49, 100)


def check(head: LuthamHead, model, x: torch.Tensor) -> dict:
    """One poisoned run; ``max_rel_error`` is max |LUTHAM − reference| / max |reference|."""
    import cupy as cp

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
    written = bool(torch.isfinite(y).all())
    err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12)) if written else float("inf")
    return {"rows": int(x.shape[0]), "all_written": written, "max_rel_error": err}


def validate(head: LuthamHead, model, seed: int = 0, real: torch.Tensor | None = None) -> dict:
    """Random inputs inside and outside the grid range (and ``real`` rows when given)."""
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
