"""k-means over a data source: one loop for full Lloyd, the paper's mini-batch and two-level k-means.

The loop (:func:`kmeans`) never touches the points; it asks a :class:`Source` for per-centroid
statistics, in the spirit of FAISS's ``contrib/clustering.py``. :class:`InMemory` is the source of
one array (the library, the demo, tests, a GPU bench); ``tasks.kmeans.RayShards`` is the
distributed source (one Ray actor per stored shard). The same initialisation gives the same
codebook from either, up to float rounding of the summed statistics.

Shapes are unit vectors, so the default is spherical k-means (centroids renormalised after each
update): a codeword then has the norm of the shapes it stands for; ``spherical=False`` is plain
Euclidean k-means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from .checks import check_finite, check_positive_int
from .codebook_size import check_k
from .kmeans_options import MODES
from .kmeans_steps import assign_stats, init_centroids, lloyd, minibatch_update, pick_backend, split_k

__all__ = ["MODES", "Source", "InMemory", "kmeans", "fit_codebook", "fine_centroids", "minibatch_seed", "check_mode"]


Stats = tuple[np.ndarray, np.ndarray, float, int]  # sums [k, d] float64, counts [k], objective, moved


class Source(Protocol):
    """What :func:`kmeans` needs from the points (``rows`` of them, in shards or not)."""

    rows: int

    def initial(self, k: int, seed: int) -> np.ndarray:
        """``k`` distinct points drawn with ``seed``: the initial centroids."""

    def stats(self, centroids: np.ndarray) -> Stats:
        """Assign every point; per-centroid sums and counts, the objective, how many labels moved."""

    def batch(self, centroids: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Statistics of ``n`` points drawn with ``seed`` (mini-batch mode)."""

    def split(self, coarse: np.ndarray) -> np.ndarray:
        """Assign to coarse centroids and remember the labels (two-level mode); counts per cluster."""

    def fine(self, jobs: list[tuple[int, int, int]], niter: int, tol: float, spherical: bool,
             done: Callable[[int], None]) -> list[np.ndarray]:
        """For each ``(cluster, k, seed)``, :func:`fine_centroids` of that coarse cluster's members."""


def minibatch_seed(seed: int, iteration: int) -> int:
    """The seed of the draw at mini-batch ``iteration`` (a sharded source derives each shard's from it)."""
    return seed * 1_000_003 + iteration * 1_009


def check_mode(mode: str) -> None:
    """``mode`` must be one of :data:`MODES`: an error naming it otherwise."""
    if mode not in MODES:
        raise ValueError(f"k-means mode must be one of {MODES}, got {mode!r}")


def sample_rows(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``min(n, rows)`` rows drawn without replacement with ``seed``, in row order."""
    idx = np.sort(np.random.default_rng(seed).choice(len(points), size=min(n, len(points)), replace=False))
    return points[idx]


def fine_centroids(points: np.ndarray, k: int, seed: int, niter: int, tol: float, spherical: bool,
                   backend: str = "cpu") -> np.ndarray:
    """One coarse cluster's ``k`` fine centroids: Lloyd on its members (two-level mode)."""
    return lloyd(InMemory(points, backend).stats, init_centroids(points, k, seed), niter=niter, tol=tol, seed=seed,
                 spherical=spherical)[0]


class InMemory:
    """One array of points ``[n, d]`` as a :class:`Source`; ``backend`` (see ``sharekan.kmeans_steps``)
    chooses where the assignment runs: ``"auto"`` takes a GPU where there is one."""

    def __init__(self, points: np.ndarray | torch.Tensor, backend: str = "cpu"):
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        if self.points.ndim != 2:
            raise ValueError(f"points must be 2-D [n, d], got shape {self.points.shape}")
        self.backend = pick_backend(backend)
        self.data = torch.from_numpy(self.points).cuda() if self.backend == "cuda" else self.points
        self.rows = len(self.points)
        self.labels = None
        self.coarse: np.ndarray | None = None

    def initial(self, k: int, seed: int) -> np.ndarray:
        return init_centroids(self.points, k, seed)

    def stats(self, centroids: np.ndarray) -> Stats:
        sums, counts, objective, labels = assign_stats(self.data, centroids, self.backend)
        moved = len(labels) if self.labels is None else int((labels != self.labels).sum())
        self.labels = labels
        return sums, counts, objective, moved

    def batch(self, centroids: np.ndarray, n: int, seed: int):
        return assign_stats(sample_rows(self.points, n, seed), centroids, self.backend)[:3]

    def nearest(self, centroids: np.ndarray) -> np.ndarray:
        """Every point's nearest centroid (the final assignment)."""
        labels = assign_stats(self.data, centroids, self.backend)[3]
        return labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels

    def split(self, coarse: np.ndarray) -> np.ndarray:
        self.coarse = self.nearest(coarse)
        return np.bincount(self.coarse, minlength=len(coarse))

    def members(self, cluster: int) -> np.ndarray:
        """The points of coarse ``cluster`` (after :meth:`split`)."""
        return self.points[self.coarse == cluster]

    def fine(self, jobs, niter, tol, spherical, done):
        out = []
        for cluster, k, seed in jobs:
            out.append(fine_centroids(self.members(cluster), k, seed, niter, tol, spherical, self.backend))
            done(1)
        return out


def kmeans(source: Source, k: int, *, mode: str = "full", seed: int = 0, niter: int = 25, tol: float = 1e-4,
           init: np.ndarray | None = None, batch_size: int = 4096, coarse_k: int | None = None,
           spherical: bool = True, progress: bool | Callable[[dict], None] = False) -> tuple[np.ndarray, list[dict]]:
    """Fit ``k`` centroids to the source's points; returns ``(centroids [k, d] float32, history)``.

    ``mode="full"``: Lloyd over every point until ``niter`` iterations or a relative objective gain
    below ``tol``. ``"minibatch"``: Sculley's mini-batch k-means (``batch_size`` points an
    iteration; the objective recorded is the batch's). ``"two-level"``: ``coarse_k`` (≈ √K) coarse
    clusters, then each coarse cluster's share of the K fine centroids fitted on its members (in
    parallel where the source can). ``init`` replaces the seeded initialisation (full and
    mini-batch). ``progress``: ``True`` prints a line an iteration, or a callable gets each
    history entry."""
    check_mode(mode)
    check_k(k, source.rows, "points")
    started = time.perf_counter()

    def report(h: dict) -> None:
        h["seconds"] = time.perf_counter() - started
        if callable(progress):
            progress(h)
        elif progress:
            print(f"k-means {h.get('phase', mode)} iter {h['iteration'] + 1}: objective {h['objective']:.6g}, "
                  f"moved {h['moved'] / source.rows:.2%}, reseeded {h['reseeded']}, {h['seconds']:.1f}s", flush=True)

    if mode == "two-level":
        return _two_level(source, k, seed, niter, tol, coarse_k, spherical, report, bool(progress))
    start = source.initial(k, seed) if init is None else init
    if mode == "full":
        return lloyd(source.stats, start, niter=niter, tol=tol, seed=seed, spherical=spherical, progress=report)
    return _minibatch(source, start, niter, batch_size, seed, spherical, report)


def _minibatch(source, init, niter, batch_size, seed, spherical, report):
    centroids = np.ascontiguousarray(init, dtype=np.float32)
    totals = np.zeros(len(centroids), dtype=np.int64)
    history = []
    for it in range(niter):
        sums, counts, objective = source.batch(centroids, batch_size, minibatch_seed(seed, it))
        centroids, totals = minibatch_update(centroids, totals, sums, counts, spherical)
        history.append({"iteration": it, "objective": objective, "moved": 0, "reseeded": 0})
        report(history[-1])
    return centroids, history


def _two_level(source, k, seed, niter, tol, coarse_k, spherical, report, verbose):
    kc = coarse_k or max(1, min(k, round(math.sqrt(k))))
    check_k(kc, k, "fine centroids")

    def coarse_report(h):
        h["phase"] = "coarse"
        report(h)

    coarse, history = lloyd(source.stats, source.initial(kc, seed), niter=niter, tol=tol, seed=seed,
                            spherical=spherical, progress=coarse_report)
    ks = split_k(source.split(coarse), k)
    jobs = [(c, int(ks[c]), seed * 65_537 + c) for c in range(kc) if ks[c] > 0]
    finished = [0]

    def done(n: int) -> None:
        finished[0] += n
        if verbose and (finished[0] % max(1, len(jobs) // 10) == 0 or finished[0] == len(jobs)):
            print(f"k-means fine clusters {finished[0]}/{len(jobs)}", flush=True)

    centroids = np.concatenate(source.fine(jobs, niter, tol, spherical, done))  # coarse-cluster order
    history.append({"iteration": len(history), "phase": "fine", "objective": source.stats(centroids)[2],
                    "moved": 0, "reseeded": 0})
    report(history[-1])
    return centroids, history


def fit_codebook(points: torch.Tensor | np.ndarray, k: int, seed: int = 0, niter: int = 25,
                 spherical: bool = True, mode: str = "full", backend: str = "cpu") -> torch.Tensor:
    """``k`` centroids ``[k, d]`` (float32) of ``points [n, d]`` by :func:`kmeans` on one array: the
    same algorithm as the pipeline's distributed codebook stage; deterministic given ``seed``
    (``backend="cuda"``: up to the last bits of the GPU's float64 sums)."""
    x = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if x.ndim != 2:
        raise ValueError(f"points must be 2-D [n, d], got shape {x.shape}")
    check_finite("points", torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    check_k(k, x.shape[0])
    check_positive_int("niter", niter)
    source = InMemory(x, backend)
    return torch.from_numpy(kmeans(source, k, mode=mode, seed=seed, niter=niter, spherical=spherical)[0])
