"""The steps of k-means (assignment statistics, centroid updates, reseeding, initialisation);
``sharekan.clustering.kmeans`` runs them as a loop over a data source.

Statistics are sums and counts, so shards computed apart add up to the statistics of the whole.
The assignment runs on one of :data:`BACKENDS`: ``"cpu"`` (FAISS's exact ``IndexFlatL2``, else
torch), ``"cuda"`` (the GPU: fp32 ``‖c‖² − 2 p·c`` and argmin fused in one kernel, :mod:`sharekan.nearest`,
else blocked torch ``addmm``; float64 sums) or
``"faiss-gpu"`` (``GpuIndexFlatL2``, with the ``faiss-gpu`` package); :func:`pick_backend` chooses
the fastest one present. All give the same assignments up to exact distance ties.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from . import nearest
from .checks import check_positive_int
from .codebook_size import check_k
from .kmeans_options import BACKENDS

__all__ = ["BACKENDS", "check_backend", "pick_backend", "assign_stats", "update_centroids", "reseed_empty",
           "init_centroids", "minibatch_update", "lloyd", "split_k", "gpu_nearest",
           "cap_gpu_memory"]

_BLOCK = 1 << 28  # distances per GPU block of the torch path (1 GiB of fp32)
_STATS_ROWS = 1 << 21  # points per block of the float64 sums (~200 MB at d = 13)


# -- the maths of distributed k-means: shards return sums, the driver updates ---------------------

def faiss_gpus() -> int:
    """GPUs FAISS can use here (0 without ``faiss-gpu``)."""
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def cap_gpu_memory(share: float, backend: str) -> float | None:
    """Cap torch's CUDA allocations in this process at ``share`` of its GPU's memory when it holds a
    fraction of one (0 < share < 1) and assigns there, so the processes sharing a GPU fit on it
    together (each one's CUDA context, ~0.5 GB, comes on top). Returns the cap set, or ``None``."""
    if not (0 < share < 1 and backend != "cpu" and torch.cuda.is_available()):
        return None
    torch.cuda.set_per_process_memory_fraction(share)
    return share


def check_backend(requested: str) -> None:
    """``requested`` must be ``"auto"`` or one of :data:`BACKENDS`: an error naming it otherwise."""
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"k-means backend must be 'auto' or one of {BACKENDS}, got {requested!r}")


def pick_backend(requested: str = "auto") -> str:
    """The assignment backend: ``requested`` if it is available here (an error naming what is
    missing otherwise), or for ``"auto"`` FAISS GPU, else torch CUDA, else CPU."""
    check_backend(requested)
    if requested == "faiss-gpu" and not faiss_gpus():
        raise RuntimeError("k-means backend 'faiss-gpu' needs the faiss-gpu package and a GPU "
                           "(pip install 'sharekan[gpu]'); use 'cuda' or 'auto'")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("k-means backend 'cuda' needs a CUDA GPU visible to this process")
    if requested != "auto":
        return requested
    return "faiss-gpu" if faiss_gpus() else "cuda" if torch.cuda.is_available() else "cpu"


def assign_stats(points: np.ndarray | torch.Tensor, centroids: np.ndarray, backend: str = "cpu",
                 kernel: str = "auto") -> tuple[np.ndarray, np.ndarray, float, np.ndarray | torch.Tensor]:
    """Assign ``points [n, d]`` to their nearest centroid; return the per-centroid ``sums`` (float64),
    ``counts``, the objective (sum of squared distances) and the labels (a CUDA tensor with the
    ``"cuda"`` backend, where ``points`` may already live on the GPU; ``kernel`` as in
    :func:`gpu_nearest`)."""
    if backend == "cuda":
        return _assign_cuda(points, centroids, kernel)
    pts = np.ascontiguousarray(points, dtype=np.float32)
    cb = np.ascontiguousarray(centroids, dtype=np.float32)
    if backend == "faiss-gpu":
        labels = _nearest_faiss_gpu(pts, cb)
    else:
        from .vq import nearest

        with warnings.catch_warnings():  # a shard from Ray's object store is read-only; torch only reads it here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            labels = nearest(torch.from_numpy(pts), torch.from_numpy(cb)).numpy()
    k, d = cb.shape
    sums = np.stack([np.bincount(labels, weights=pts[:, j], minlength=k) for j in range(d)], axis=1)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    diff = pts.astype(np.float64) - cb[labels].astype(np.float64)
    return sums, counts, float(np.einsum("ij,ij->", diff, diff)), labels


def _nearest_faiss_gpu(pts: np.ndarray, cb: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), cb.shape[1])
    index.add(cb)
    return index.search(pts, 1)[1][:, 0].astype(np.int64)


@torch.no_grad()
def gpu_nearest(points: torch.Tensor, centroids: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """Labels of the nearest centroid on the GPU: ``"fused"`` (``sharekan.nearest``: one kernel, no
    distance matrix), ``"torch"`` (blocked fp32 ``addmm`` then ``argmin``, the distances written and
    re-read), or ``"auto"``: fused where it runs (CuPy, d ≤ ``nearest.MAX_DIM``). Both in fp32, first
    index on ties."""
    if kernel not in ("auto", "fused", "torch"):
        raise ValueError(f"nearest-centroid kernel must be 'auto', 'fused' or 'torch', got {kernel!r}")
    d = centroids.shape[1]
    if kernel == "fused" or (kernel == "auto" and nearest.available(d)):
        return nearest.nearest(points, nearest.prepare(centroids))
    cb_sq = (centroids * centroids).sum(dim=1)
    labels = torch.empty(len(points), dtype=torch.int64, device=points.device)
    step = max(1, _BLOCK // len(centroids))
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # full fp32
    try:
        for s in range(0, len(points), step):  # ‖c‖² − 2 p·c, first index on ties
            labels[s:s + step] = torch.addmm(cb_sq, points[s:s + step], centroids.T, alpha=-2.0).argmin(dim=1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return labels


@torch.no_grad()
def _assign_cuda(points, centroids, kernel="auto"):
    pts = torch.as_tensor(points, device="cuda", dtype=torch.float32)
    cb = torch.as_tensor(np.ascontiguousarray(centroids, dtype=np.float32), device="cuda")
    labels = gpu_nearest(pts, cb, kernel)
    k, d = cb.shape
    cb64 = cb.double()
    sums = torch.zeros(k, d, dtype=torch.float64, device="cuda")
    objective = torch.zeros((), dtype=torch.float64, device="cuda")
    for s in range(0, len(pts), _STATS_ROWS):
        p64, lab = pts[s:s + _STATS_ROWS].double(), labels[s:s + _STATS_ROWS]
        sums.index_add_(0, lab, p64)
        objective += (p64 - cb64[lab]).square().sum()
    counts = torch.bincount(labels, minlength=k)
    return sums.cpu().numpy(), counts.cpu().numpy().astype(np.int64), float(objective), labels


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
