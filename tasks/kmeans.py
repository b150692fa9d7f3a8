"""Distributed k-means on Ray: one actor per shard of shape vectors, read from the artifact store.

Each iteration every :class:`ShardActor` assigns its points to the nearest centroid (FAISS) and
returns only per-centroid sums, counts and its objective; the driver adds them in shard order
(so the result does not depend on scheduling) and updates the centroids with
``sharekan.kmeans.lloyd``, the same code the single-process path runs. An actor whose process
dies is restarted and re-reads its shard; the retried call returns the same statistics, so the
run ends with the same codebook.
"""

from __future__ import annotations

import time

import numpy as np
import ray

from sharekan.kmeans import assign_stats, check_k, init_centroids, lloyd, minibatch_update
from storage.shards import read_shard
from storage.store import ArtifactStore

__all__ = ["ShardActor", "distributed_kmeans"]


@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)
class ShardActor:
    """Holds shard ``index`` of array ``name`` of artifact ``version``."""

    def __init__(self, location, version: str, name: str, index: int):
        try:
            art = ArtifactStore(location, create=False).get(version)
            self.points = np.ascontiguousarray(read_shard(art, name, index), dtype=np.float32)
        except Exception as e:
            raise RuntimeError(f"cannot read shard {index} of {version}/{name} from {location}: {e}") from e
        self.labels = None

    def size(self) -> int:
        return len(self.points)

    def sample(self, n: int, seed: int) -> np.ndarray:
        idx = np.sort(np.random.default_rng(seed).choice(len(self.points), size=min(n, len(self.points)),
                                                         replace=False))
        return self.points[idx]

    def step(self, centroids: np.ndarray):
        sums, counts, objective, labels = assign_stats(self.points, centroids)
        moved = len(labels) if self.labels is None else int((labels != self.labels).sum())
        self.labels = labels
        return sums, counts, objective, moved

    def batch(self, centroids: np.ndarray, n: int, seed: int):
        """Statistics of ``n`` points of this shard drawn with ``seed`` (mini-batch mode)."""
        sums, counts, objective, _ = assign_stats(self.sample(n, seed), centroids)
        return sums, counts, objective

    def assign(self, centroids: np.ndarray) -> np.ndarray:
        return assign_stats(self.points, centroids)[3]

    def pid(self) -> int:
        import os
        return os.getpid()


def distributed_kmeans(location, version: str, name: str, k: int, seed: int = 0, niter: int = 25,
                       tol: float = 1e-4, init: np.ndarray | None = None, mode: str = "full",
                       batch_size: int = 4096, progress: bool = True):
    """Fit ``k`` centroids to the rows of ``version/name``, one actor per shard.

    ``mode="full"`` is Lloyd over all points (default); ``"minibatch"`` is the paper's
    mini-batch k-means (``batch_size`` points per iteration, split across shards by size; the
    objective reported is the batch's). Returns ``(centroids, history)``; ``init`` overrides the
    seeded initialisation (``k`` points sampled across shards in proportion to their size)."""
    if mode not in ("full", "minibatch"):
        raise ValueError(f"mode must be 'full' or 'minibatch', got {mode!r}")
    art = ArtifactStore(location, create=False).get(version)
    arr = art.array(name)
    shard_rows = (arr.shards or arr.chunks)[0]
    n_shards = -(-arr.shape[0] // shard_rows)
    check_k(k, arr.shape[0], f"rows of {version}/{name}")
    # explicit CPU share: every shard gets an actor even when shards outnumber CPUs
    cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0) / n_shards)
    actors = [ShardActor.options(num_cpus=cpus).remote(location, version, name, i) for i in range(n_shards)]
    try:
        sizes = ray.get([a.size.remote() for a in actors])
    except Exception:
        for a in actors:
            ray.kill(a)
        raise
    if init is None:
        quota = [max(1, -(-k * s // sum(sizes))) for s in sizes]
        sample = np.concatenate(ray.get([a.sample.remote(q, seed + i) for i, (a, q) in enumerate(zip(actors, quota))]))
        init = init_centroids(sample, k, seed)

    def stats(centroids):
        ref = ray.put(centroids)
        parts = ray.get([a.step.remote(ref) for a in actors])  # in shard order
        return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts),
                sum(p[3] for p in parts))

    started = time.perf_counter()

    def report(h):
        h["seconds"] = time.perf_counter() - started
        if progress:
            print(f"k-means iter {h['iteration'] + 1}: objective {h['objective']:.6g}, "
                  f"moved {h['moved'] / arr.shape[0]:.2%}, reseeded {h['reseeded']}, {h['seconds']:.1f}s",
                  flush=True)

    try:
        if mode == "full":
            centroids, history = lloyd(stats, init, niter=niter, tol=tol, seed=seed, progress=report)
        else:
            centroids, history = _minibatch(actors, sizes, init, niter, batch_size, seed, report)
    finally:
        for a in actors:  # free their CPU shares now, not when the handles are collected
            ray.kill(a)
    return centroids, history


def _minibatch(actors, sizes, init, niter, batch_size, seed, report):
    centroids = np.ascontiguousarray(init, dtype=np.float32)
    totals = np.zeros(len(centroids), dtype=np.int64)
    per_shard = [max(1, round(batch_size * s / sum(sizes))) for s in sizes]
    history = []
    for it in range(niter):
        ref = ray.put(centroids)
        parts = ray.get([a.batch.remote(ref, n, seed * 1_000_003 + it * 1_009 + i)
                         for i, (a, n) in enumerate(zip(actors, per_shard))])
        sums, counts = sum(p[0] for p in parts), sum(p[1] for p in parts)
        centroids, totals = minibatch_update(centroids, totals, sums, counts)
        history.append({"iteration": it, "objective": sum(p[2] for p in parts), "moved": 0, "reseeded": 0})
        report(history[-1])
    return centroids, history
