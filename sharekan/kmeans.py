"""Codebook fitting: FAISS k-means in one process, and the maths of distributed k-means.

Shapes are unit vectors, so the codebook is fitted by spherical k-means (centroids renormalised
each iteration): a codeword then has the norm of the shapes it stands for and ``g = ‖c − b‖``
keeps its meaning. FAISS is imported lazily so the rest of ``sharekan`` runs where it is absent.
Every point is used: FAISS's silent subsampling above 256 points per centroid is switched off.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import check_finite, check_positive_int

__all__ = ["MAX_K", "fit_codebook", "check_k", "assign_stats", "update_centroids", "reseed_empty",
           "init_centroids", "minibatch_update", "lloyd", "split_k"]

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


# -- the maths of distributed k-means: shards return sums, the driver updates ---------------------

def assign_stats(points: np.ndarray, centroids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Assign ``points [n, d]`` to their nearest centroid; return the per-centroid ``sums`` (float64),
    ``counts``, the objective (sum of squared distances) and the labels."""
    from .vq import nearest

    pts = np.ascontiguousarray(points, dtype=np.float32)
    cb = np.ascontiguousarray(centroids, dtype=np.float32)
    labels = nearest(torch.from_numpy(pts), torch.from_numpy(cb)).numpy()
    k, d = cb.shape
    sums = np.stack([np.bincount(labels, weights=pts[:, j], minlength=k) for j in range(d)], axis=1)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    diff = pts.astype(np.float64) - cb[labels].astype(np.float64)
    return sums, counts, float(np.einsum("ij,ij->", diff, diff)), labels


def update_centroids(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray,
                     spherical: bool = True) -> np.ndarray:
    """Means of the assigned points (renormalised when ``spherical``); an empty cluster keeps its
    previous centroid until :func:`reseed_empty` moves it."""
    out = previous.astype(np.float64).copy()
    live = counts > 0
    out[live] = sums[live] / counts[live, None]
    if spherical:
        norms = np.linalg.norm(out[live], axis=1, keepdims=True)
        out[live] = out[live] / np.where(norms > 0, norms, 1.0)
    return out.astype(np.float32)


def reseed_empty(centroids: np.ndarray, counts: np.ndarray, seed: int, iteration: int
                 ) -> tuple[np.ndarray, int]:
    """Split the largest cluster for each empty one (FAISS's rule): the two halves move apart by a
    tiny seeded perturbation. Deterministic in ``(seed, iteration)``; returns how many were reseeded."""
    counts = counts.astype(np.float64).copy()
    out = centroids.copy()
    empty = np.flatnonzero(counts == 0)
    rng = np.random.default_rng([seed, iteration])
    for j in empty:
        big = int(np.argmax(counts))
        eps = rng.standard_normal(out.shape[1]).astype(np.float32) * 1e-4
        out[j] = out[big] + eps
        out[big] = out[big] - eps
        counts[j] = counts[big] / 2
        counts[big] /= 2
    return out, len(empty)


def init_centroids(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` distinct points drawn at random (seeded) as the initial centroids."""
    check_k(k, len(points), "points")
    idx = np.sort(np.random.default_rng(seed).choice(len(points), size=k, replace=False))
    return np.ascontiguousarray(points[idx], dtype=np.float32)


def minibatch_update(centroids: np.ndarray, totals: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                     spherical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sculley's mini-batch step (the paper's algorithm): each centroid moves toward its batch
    mean with rate ``n_batch / n_seen``; ``totals`` counts points seen per centroid so far."""
    totals = totals + counts
    out = centroids.astype(np.float64).copy()
    live = counts > 0
    rate = counts[live] / totals[live]
    out[live] = (1 - rate)[:, None] * out[live] + rate[:, None] * (sums[live] / counts[live, None])
    if spherical:
        out[live] /= np.linalg.norm(out[live], axis=1, keepdims=True).clip(min=1e-12)
    return out.astype(np.float32), totals


def lloyd(stats, init: np.ndarray, niter: int = 25, tol: float = 1e-4, seed: int = 0,
          spherical: bool = True, progress=None) -> tuple[np.ndarray, list[dict]]:
    """Full-batch k-means driven by ``stats(centroids) -> (sums, counts, objective, moved)``: a
    single array's :func:`assign_stats`, or per-shard statistics gathered from workers.

    Stops after ``niter`` iterations or when the objective improves by less than ``tol``
    (relative). Empty clusters are reseeded each iteration. Returns the centroids and a history
    of ``{iteration, objective, moved, reseeded}`` (the objective of the centroids going in).
    """
    check_positive_int("niter", niter)
    centroids = np.ascontiguousarray(init, dtype=np.float32)
    history: list[dict] = []
    for it in range(niter):
        sums, counts, objective, moved = stats(centroids)
        new = update_centroids(sums, counts, centroids, spherical)
        new, reseeded = reseed_empty(new, counts, seed, it)
        history.append({"iteration": it, "objective": objective, "moved": int(moved),
                        "reseeded": reseeded})
        if progress is not None:
            progress(history[-1])
        centroids = new
        if it and history[-2]["objective"] - objective <= tol * abs(history[-2]["objective"]):
            break
    return centroids, history


def split_k(counts: np.ndarray, k: int) -> np.ndarray:
    """Share ``k`` fine centroids among coarse clusters of ``counts`` points (two-level k-means):
    proportional by largest remainder, at least one per non-empty cluster and never more than its
    points; sums to ``k`` (requires ``k ≤ counts.sum()``)."""
    counts = np.asarray(counts, dtype=np.int64)
    check_k(k, int(counts.sum()), "points")
    if k < int((counts > 0).sum()):
        raise ValueError(f"K = {k} is smaller than the {int((counts > 0).sum())} non-empty coarse clusters")
    exact = k * counts / counts.sum()
    out = np.minimum(np.maximum(np.floor(exact).astype(np.int64), (counts > 0).astype(np.int64)), counts)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while out.sum() != k:  # hand out (or take back) the remainder, largest fraction first
        step = 1 if out.sum() < k else -1
        for j in order if step == 1 else order[::-1]:
            if out.sum() == k:
                break
            if (step == 1 and out[j] < counts[j]) or (step == -1 and out[j] > 1):
                out[j] += step
    return out
