"""Distributed k-means on Ray: one actor per shard of shape vectors, read from the artifact store.

Each iteration every :class:`ShardActor` assigns its points to the nearest centroid (FAISS) and
returns only per-centroid sums, counts and its objective; the driver adds them in shard order
(so the result does not depend on scheduling) and updates the centroids with
``sharekan.kmeans.lloyd``, the same code the single-process path runs. An actor whose process
dies is restarted and re-reads its shard; the retried call returns the same statistics, so the
run ends with the same codebook. :class:`ShardPool` keeps the actors for a final pass that
writes every row's index, gain and bias back to the store, each actor writing its own shard.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import ray

from sharekan.kmeans import assign_stats, check_k, init_centroids, lloyd, minibatch_update, split_k
from sharekan.vq import index_dtype
from storage.shards import read_shard
from storage.store import ArtifactStore, open_artifact_group, version_id

__all__ = ["ShardActor", "ShardPool", "ShardError", "distributed_kmeans", "check_shard_memory", "MODES"]

MODES = ("full", "minibatch", "two-level")
_RETRIES = 3  # restarts of a dying actor (a killed process) before the run fails naming the shard


class ShardError(RuntimeError):
    """A shard could not be read or its worker died (e.g. out of memory); names the shard."""


@ray.remote(num_cpus=1, max_restarts=_RETRIES, max_task_retries=_RETRIES)
class ShardActor:
    """Holds shard ``index`` of array ``name`` of artifact ``version``."""

    def __init__(self, location, version: str, name: str, index: int):
        import faiss
        import torch

        faiss.omp_set_num_threads(1)  # one core per actor: its CPU claim is ≤ 1
        torch.set_num_threads(1)
        self.where = (location, version, name, index)
        self.step_seconds: list[float] = []
        try:
            art = ArtifactStore(location, create=False).get(version)
            self.points = np.ascontiguousarray(read_shard(art, name, index), dtype=np.float32)
        except Exception as e:
            raise ShardError(f"cannot read shard {index} of {version}/{name} from {location}: {e}") from e
        self.labels = None
        self.coarse = None

    def size(self) -> int:
        return len(self.points)

    def sample(self, n: int, seed: int) -> np.ndarray:
        idx = np.sort(np.random.default_rng(seed).choice(len(self.points), size=min(n, len(self.points)),
                                                         replace=False))
        return self.points[idx]

    def step(self, centroids: np.ndarray):
        t = time.perf_counter()
        sums, counts, objective, labels = assign_stats(self.points, centroids)
        self.step_seconds.append(time.perf_counter() - t)
        moved = len(labels) if self.labels is None else int((labels != self.labels).sum())
        self.labels = labels
        return sums, counts, objective, moved

    def batch(self, centroids: np.ndarray, n: int, seed: int):
        """Statistics of ``n`` points of this shard drawn with ``seed`` (mini-batch mode)."""
        sums, counts, objective, _ = assign_stats(self.sample(n, seed), centroids)
        return sums, counts, objective

    def split(self, coarse: np.ndarray) -> np.ndarray:
        """Assign to the coarse centroids (two-level mode), keep the labels, return counts."""
        self.coarse = assign_stats(self.points, coarse)[3]
        return np.bincount(self.coarse, minlength=len(coarse))

    def members(self, cluster: int) -> np.ndarray:
        return self.points[self.coarse == cluster]

    def fine(self, k: int, seed: int, niter: int, tol: float, spherical: bool, *parts: np.ndarray) -> np.ndarray:
        """Fit one coarse cluster's fine centroids from its members gathered from every shard
        (the actors share the fine fits, so no extra processes or CPU claims are needed)."""
        return _fine(k, seed, niter, tol, spherical, list(parts))

    def write(self, session, stage: str, version: str, start: int, centroids: np.ndarray, extra: tuple):
        """Final pass: this shard's nearest-codeword indices (and the ``extra`` row arrays of the
        source artifact, e.g. gains and biases) into the artifact being written; returns the fork."""
        location, source, _, index = self.where
        group = open_artifact_group(session, stage, version)
        labels = assign_stats(self.points, centroids)[3]
        stop = start + len(labels)
        group["indices"][start:stop] = labels.astype(_np_index_dtype(len(centroids)))
        art = ArtifactStore(location, create=False).get(source)
        for name in extra:
            group[name][start:stop] = read_shard(art, name, index)
        return session

    def pid(self) -> int:
        return os.getpid()

    def timings(self) -> list[float]:
        """Seconds of each :meth:`step` (its compute, without Ray's transport)."""
        return self.step_seconds


def _np_index_dtype(k: int) -> np.dtype:
    return np.dtype(str(index_dtype(k)).removeprefix("torch."))


def _fine(k: int, seed: int, niter: int, tol: float, spherical: bool, parts: list[np.ndarray]) -> np.ndarray:
    """Fine centroids of one coarse cluster (two-level mode): Lloyd on its gathered members."""
    pts = np.concatenate(parts)

    def stats(c):
        sums, counts, objective, _ = assign_stats(pts, c)
        return sums, counts, objective, 0

    return lloyd(stats, init_centroids(pts, k, seed), niter=niter, tol=tol, seed=seed, spherical=spherical)[0]


def check_shard_memory(shard_bytes: list[int], node_bytes: float, what: str) -> None:
    """Refuse, before any actor starts, a shard whose working set exceeds the largest node's memory."""
    for i, b in enumerate(shard_bytes):
        if b > node_bytes:
            raise ShardError(f"shard {i} of {what} needs ~{b / 2**30:.2f} GiB but the largest Ray node has "
                             f"{node_bytes / 2**30:.2f} GiB of memory; re-shard with fewer rows per shard")


class ShardPool:
    """One restartable actor per shard of ``version/name``; use as a context manager."""

    def __init__(self, location, version: str, name: str):
        self.location, self.version, self.name = location, version, name
        self.what = f"{version}/{name}"
        arr = ArtifactStore(location, create=False).get(version).array(name)
        self.rows, self.dim = arr.shape[0], int(np.prod(arr.shape[1:]))
        self.shard_rows = (arr.shards or arr.chunks)[0]
        n = -(-self.rows // self.shard_rows)
        # points, labels and FAISS's distance block: ~3× the float32 shard, plus the interpreter
        need = [3 * min(self.shard_rows, self.rows - i * self.shard_rows) * self.dim * 4 + (200 << 20)
                for i in range(n)]
        nodes = [nd["Resources"].get("memory", 0) for nd in ray.nodes() if nd.get("Alive")]
        check_shard_memory(need, max(nodes, default=0), self.what)
        # explicit CPU share: every shard gets an actor even when shards outnumber CPUs
        cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0) / n)
        self.actors = [ShardActor.options(num_cpus=cpus).remote(location, version, name, i) for i in range(n)]
        try:
            self.sizes = self.gather([a.size.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:  # free their CPU shares now, not when the handles are collected
            ray.kill(a)
        self.actors = []

    def gather(self, refs: list) -> list:
        """Results in shard order; a failure names its shard."""
        out = []
        for i, ref in enumerate(refs):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.OutOfMemoryError as e:
                raise ShardError(f"shard {i} of {self.what}: worker ran out of memory; "
                                 f"re-shard with fewer rows per shard or add memory ({e})") from e
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, ShardError):
                    raise cause from e
                raise ShardError(f"shard {i} of {self.what} failed: {e}") from e
        return out

    def step_seconds(self) -> np.ndarray:
        """``[shards, steps]`` compute seconds of each actor's steps (for overhead accounting)."""
        return np.array(self.gather([a.timings.remote() for a in self.actors]))

    def stats(self, centroids: np.ndarray):
        ref = ray.put(centroids)
        parts = self.gather([a.step.remote(ref) for a in self.actors])
        return tuple(sum(p[j] for p in parts) for j in range(4))

    def initial(self, k: int, seed: int) -> np.ndarray:
        """``k`` points sampled across shards in proportion to their size (seeded)."""
        quota = [max(1, -(-k * s // self.rows)) for s in self.sizes]
        parts = self.gather([a.sample.remote(q, seed + i) for i, (a, q) in enumerate(zip(self.actors, quota))])
        return init_centroids(np.concatenate(parts), k, seed)

    def fit(self, k: int, seed: int = 0, niter: int = 25, tol: float = 1e-4, init: np.ndarray | None = None,
            mode: str = "full", batch_size: int = 4096, coarse_k: int | None = None, progress: bool = True,
            spherical: bool = True):
        """Fit ``k`` centroids; returns ``(centroids, history)`` (see :func:`distributed_kmeans`)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_k(k, self.rows, f"rows of {self.what}")
        started = time.perf_counter()

        def report(h):
            h["seconds"] = time.perf_counter() - started
            if progress:
                print(f"k-means {h.get('phase', mode)} iter {h['iteration'] + 1}: objective {h['objective']:.6g}, "
                      f"moved {h['moved'] / self.rows:.2%}, reseeded {h['reseeded']}, {h['seconds']:.1f}s", flush=True)

        if mode == "two-level":
            return self._two_level(k, seed, niter, tol, coarse_k, report, progress, spherical)
        if init is None:
            init = self.initial(k, seed)
        if mode == "full":
            return lloyd(self.stats, init, niter=niter, tol=tol, seed=seed, spherical=spherical, progress=report)
        return self._minibatch(init, niter, batch_size, seed, report, spherical)

    def _minibatch(self, init, niter, batch_size, seed, report, spherical):
        centroids = np.ascontiguousarray(init, dtype=np.float32)
        totals = np.zeros(len(centroids), dtype=np.int64)
        per_shard = [max(1, round(batch_size * s / self.rows)) for s in self.sizes]
        history = []
        for it in range(niter):
            ref = ray.put(centroids)
            parts = self.gather([a.batch.remote(ref, n, seed * 1_000_003 + it * 1_009 + i)
                                 for i, (a, n) in enumerate(zip(self.actors, per_shard))])
            sums, counts = sum(p[0] for p in parts), sum(p[1] for p in parts)
            centroids, totals = minibatch_update(centroids, totals, sums, counts, spherical)
            history.append({"iteration": it, "objective": sum(p[2] for p in parts), "moved": 0, "reseeded": 0})
            report(history[-1])
        return centroids, history

    def _two_level(self, k, seed, niter, tol, coarse_k, report, progress, spherical):
        """Coarse k-means over all shards (``coarse_k`` ≈ √K centroids), then each coarse cluster's
        share of the K fine centroids fitted in parallel on that cluster's members, by the actors."""
        kc = coarse_k or max(1, min(k, round(math.sqrt(k))))
        check_k(kc, k, "fine centroids")

        def coarse_report(h):
            h["phase"] = "coarse"
            report(h)

        coarse, history = lloyd(self.stats, self.initial(kc, seed), niter=niter, tol=tol, seed=seed,
                                spherical=spherical, progress=coarse_report)
        ref = ray.put(coarse)
        counts = sum(self.gather([a.split.remote(ref) for a in self.actors]))
        ks = split_k(counts, k)
        live = [c for c in range(kc) if ks[c] > 0]
        # every actor's members calls are queued before any fine fit, so no fit waits on a busy actor
        members = {c: [a.members.remote(c) for a in self.actors] for c in live}
        jobs = {c: self.actors[i % len(self.actors)].fine.remote(int(ks[c]), seed * 65_537 + c, niter, tol,
                                                                 spherical, *members[c])
                for i, c in enumerate(live)}
        pending, done = list(jobs.values()), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += len(ready)
            if progress and (done % max(1, len(jobs) // 10) == 0 or not pending):
                print(f"k-means fine clusters {done}/{len(jobs)}", flush=True)
        centroids = np.concatenate(self.gather([jobs[c] for c in live]))  # coarse-cluster order
        sums, counts, objective, _ = self.stats(centroids)
        history.append({"iteration": len(history), "phase": "fine", "objective": objective,
                        "moved": 0, "reseeded": 0})
        report(history[-1])
        return centroids, history

    def write_assignment(self, store: ArtifactStore, stage: str, params: dict, inputs: list[str], code: str,
                         centroids: np.ndarray, extra: tuple[str, ...] = ("gains", "biases"),
                         meta: dict | None = None):
        """Store ``indices`` (nearest codeword per row) and the ``extra`` row arrays of the source
        as a new artifact with the source's shard layout; every actor writes its own shard."""
        src = ArtifactStore(self.location, create=False).get(self.version)
        layout = {"indices": ((), _np_index_dtype(len(centroids)).str)}
        layout |= {n: (src.array(n).shape[1:], src.array(n).dtype.str) for n in extra}
        ref = ray.put(np.ascontiguousarray(centroids, dtype=np.float32))

        version = version_id(stage, params, inputs, code)

        def write_shards(session, ranges):
            return self.gather([a.write.remote(session.fork(), stage, version, start, ref, extra)
                                for a, (start, _) in zip(self.actors, ranges)])

        return store.put_sharded(stage, params, inputs, code, layout, self.rows, self.shard_rows, 1,
                                 write_shards, meta)


def distributed_kmeans(location, version: str, name: str, k: int, seed: int = 0, niter: int = 25,
                       tol: float = 1e-4, init: np.ndarray | None = None, mode: str = "full",
                       batch_size: int = 4096, coarse_k: int | None = None, progress: bool = True,
                       spherical: bool = True):
    """Fit ``k`` centroids to the rows of ``version/name``, one actor per shard.

    ``mode="full"`` is Lloyd over all points (default); ``"minibatch"`` is the paper's
    mini-batch k-means (``batch_size`` points per iteration, split across shards by size; the
    objective reported is the batch's); ``"two-level"`` fits ``coarse_k`` (≈ √K) coarse clusters,
    then the fine centroids of each as parallel tasks. Returns ``(centroids, history)``; ``init``
    overrides the seeded initialisation (``k`` points sampled across shards by size).
    ``spherical`` (default, for unit shapes) renormalises the centroids each update; ``False`` is
    plain Euclidean k-means, the objective scikit-learn's ``MiniBatchKMeans`` minimises."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    with ShardPool(location, version, name) as pool:
        return pool.fit(k, seed, niter, tol, init, mode, batch_size, coarse_k, progress, spherical)
