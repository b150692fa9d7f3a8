"""Codebook fitting on FAISS k-means (single process).

Shapes are unit vectors, so the codebook is fitted by spherical k-means (centroids renormalised
each iteration): a codeword then has the norm of the shapes it stands for and ``g = ‖c − b‖``
keeps its meaning. FAISS is imported lazily so the rest of ``sharekan`` runs where it is absent.
Every point is used: FAISS's silent subsampling above 256 points per centroid is switched off.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import check_finite, check_positive_int

__all__ = ["MAX_K", "fit_codebook", "check_k"]

MAX_K = 65_536


def check_k(k: int, n_points: int, what: str = "edges") -> None:
    """K must be in ``[1, min(MAX_K, n_points)]``: a clear error, never a silent clamp."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"K (codebook size) must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise ValueError(f"K (codebook size) = {k} exceeds the maximum {MAX_K} (uint16 indices)")
    if k > n_points:
        raise ValueError(f"K (codebook size) = {k} is larger than the number of {what} ({n_points}); "
                         f"choose K ≤ {n_points}")


def fit_codebook(points: torch.Tensor | np.ndarray, k: int, seed: int = 0, niter: int = 25,
                 spherical: bool = True) -> torch.Tensor:
    """Fit ``k`` centroids ``[k, d]`` (float32) to ``points [n, d]``; deterministic given ``seed``."""
    import faiss  # lazy: absent on GPU workers that only run kernels

    x = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if x.ndim != 2:
        raise ValueError(f"points must be 2-D [n, d], got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_finite("points", torch.from_numpy(x))
    check_k(k, x.shape[0])
    check_positive_int("niter", niter)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), spherical=spherical,
                      max_points_per_centroid=max(256, -(-x.shape[0] // k)),
                      min_points_per_centroid=1, verbose=False)
    km.train(x)
    return torch.from_numpy(np.array(km.centroids, dtype=np.float32, copy=True))
