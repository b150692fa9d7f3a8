"""Gain-Shape-Bias decomposition of spline-coefficient vectors, and encoding against a codebook.

For an edge's coefficient vector ``c ∈ R^C`` (``spline_weight · spline_scaler``):
``b = mean(c)``, ``g = ‖c − b‖``, shape ``s = (c − b)/g`` (unit norm, zero mean). An edge whose
``g`` is below ``eps`` is flat: its shape is the zero vector and its gain 0, so it decodes to
``b`` exactly and never produces NaN. Decoding: ``ĉ = g·codebook[idx] + b``.
"""

from __future__ import annotations

import torch

from .checks import check_finite

__all__ = ["decompose", "nearest", "index_dtype", "decode"]

FLAT_EPS = 1e-12


def decompose(coeffs: torch.Tensor, eps: float = FLAT_EPS
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``coeffs [..., C]`` → ``(shapes [..., C], gains [...], biases [...])``."""
    check_finite("spline coefficients", coeffs)
    c = coeffs.detach().to(torch.float32)
    bias = c.mean(dim=-1)
    centred = c - bias.unsqueeze(-1)
    gain = torch.linalg.vector_norm(centred, dim=-1)
    flat = gain <= eps
    safe = torch.where(flat, torch.ones_like(gain), gain)
    shapes = torch.where(flat.unsqueeze(-1), torch.zeros_like(centred), centred / safe.unsqueeze(-1))
    return shapes, torch.where(flat, torch.zeros_like(gain), gain), bias


def nearest(points: torch.Tensor, codebook: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Index (int64) of the nearest codeword (L2) for each row of ``points``; first index on ties.

    On CPU, FAISS's exact ``IndexFlatL2`` does the search when it is installed; otherwise (and on
    GPU) points go in chunks so the distance block stays near 2^24 entries whatever K is."""
    if points.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"points have dimension {points.shape[-1]} but the codebook has "
                         f"{codebook.shape[-1]}")
    check_finite("codebook", codebook)
    if points.device.type == "cpu" and chunk is None:
        try:
            import faiss  # much faster than the torch path on CPU
        except ImportError:
            pass
        else:
            index = faiss.IndexFlatL2(codebook.shape[1])
            index.add(codebook.detach().to(torch.float32).contiguous().numpy())
            _, idx = index.search(points.detach().to(torch.float32).contiguous().numpy(), 1)
            return torch.from_numpy(idx[:, 0].astype("int64"))
    cb = codebook.to(points.device, torch.float32)
    cb_sq = (cb * cb).sum(dim=1)
    chunk = chunk or max(1, (1 << 24) // cb.shape[0])
    out = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    for start in range(0, points.shape[0], chunk):
        p = points[start:start + chunk].to(torch.float32)
        d = cb_sq[None, :] - 2.0 * (p @ cb.T)
        out[start:start + chunk] = d.argmin(dim=1)
    return out


def index_dtype(k: int) -> torch.dtype:
    """Smallest unsigned integer type for ``k`` codewords (uint8, uint16, else int32)."""
    if k <= 256:
        return torch.uint8
    if k <= 65_536:
        return torch.uint16
    return torch.int32


def decode(codebook: torch.Tensor, indices: torch.Tensor, gains: torch.Tensor,
           biases: torch.Tensor) -> torch.Tensor:
    """``ĉ = g·codebook[idx] + b``: ``[..., C]`` from per-edge index, gain and bias."""
    shapes = codebook.to(torch.float32)[indices.to(torch.int64)]
    return gains.unsqueeze(-1) * shapes + biases.unsqueeze(-1)
