"""The distributed data source of ``sharekan.clustering.kmeans``: one Ray actor per stored shard.

:class:`RayShards` implements the library's ``Source`` protocol: each step every
:class:`ShardActor` assigns its points to the nearest centroid (FAISS) and returns only
per-centroid sums, counts and its objective; the source adds them in shard order (so the result
does not depend on scheduling). The k-means loop itself is the library's, the same for one array
and for shards. An actor whose process dies is restarted and re-reads its shard; the retried call
returns the same statistics, so the run ends with the same codebook. The actors stay for a final
pass that writes every row's index, gain and bias back to the store, each actor its own shard.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from sharekan.clustering import InMemory, fine_centroids, sample_rows
from sharekan.kmeans_steps import cap_gpu_memory, check_backend, init_centroids
from sharekan.vq import index_dtype
from storage.shards import read_shard
from storage.store import ArtifactStore, CorruptArtifact, open_artifact_group, version_id

from .runner import node_name

__all__ = ["ShardActor", "RayShards", "ShardError", "check_shard_memory"]

_RETRIES = 3  # restarts of a dying actor (a killed process) before the run fails naming the shard


class ShardError(RuntimeError):
    """A shard could not be read or its worker died (e.g. out of memory); names the shard."""


@ray.remote(num_cpus=1, max_restarts=_RETRIES, max_task_retries=_RETRIES)
class ShardActor:
    """Shard ``index`` of array ``name`` of artifact ``version`` as the library's in-memory source
    (``sharekan.clustering.InMemory``), assigning on ``backend`` (``sharekan.kmeans_steps.BACKENDS``,
    or "auto": this worker's GPU if Ray gave it one), plus the shard's final write-back. An actor
    given a fraction of a GPU caps torch's CUDA allocations at that fraction of its memory, so the
    actors sharing a GPU fit on it together (the CUDA context, ~0.5 GB, comes on top)."""

    def __init__(self, location, version: str, name: str, index: int, backend: str = "cpu"):
        import faiss
        import torch

        faiss.omp_set_num_threads(1)  # one core per actor: its CPU claim is ≤ 1
        torch.set_num_threads(1)
        self.where = (location, version, name, index)
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
        self.gpu_memory_fraction = cap_gpu_memory(share, backend)  # before the shard reaches the GPU
        self.step_seconds: list[float] = []
        try:
            art = ArtifactStore(location, create=False).get(version)
            points = read_shard(art, name, index)
        except CorruptArtifact as e:
            raise ShardError(f"shard {index} of {version}/{name} in {location} is corrupt: {e}") from e
        except Exception as e:
            raise ShardError(f"cannot read shard {index} of {version}/{name} from {location}: {e}") from e
        self.src = InMemory(points, backend)

    def size(self) -> int:
        return self.src.rows

    def sample(self, n: int, seed: int) -> np.ndarray:
        return sample_rows(self.src.points, n, seed)

    def step(self, centroids: np.ndarray):
        t = time.perf_counter()
        out = self.src.stats(centroids)
        self.step_seconds.append(time.perf_counter() - t)
        return out

    def batch(self, centroids: np.ndarray, n: int, seed: int):
        """Statistics of ``n`` points of this shard drawn with ``seed`` (mini-batch mode)."""
        return self.src.batch(centroids, n, seed)

    def split(self, coarse: np.ndarray) -> np.ndarray:
        """Assign to the coarse centroids (two-level mode), keep the labels, return counts."""
        return self.src.split(coarse)

    def members(self, cluster: int) -> np.ndarray:
        return self.src.members(cluster)

    def fine(self, k: int, seed: int, niter: int, tol: float, spherical: bool, *parts: np.ndarray) -> np.ndarray:
        """Fit one coarse cluster's fine centroids from its members gathered from every shard
        (the actors share the fine fits, so no extra processes or CPU claims are needed)."""
        return fine_centroids(np.concatenate(parts), k, seed, niter, tol, spherical, self.src.backend)

    def write(self, session, version: str, start: int, centroids: np.ndarray, extra: tuple):
        """Final pass: this shard's nearest-codeword indices (and the ``extra`` row arrays of the
        source artifact, e.g. gains and biases) into the artifact being written; returns the fork."""
        location, source, _, index = self.where
        group = open_artifact_group(session, version)
        labels = self.src.nearest(centroids)
        stop = start + len(labels)
        group["indices"][start:stop] = labels.astype(_np_index_dtype(len(centroids)))
        art = ArtifactStore(location, create=False).get(source)
        for name in extra:
            group[name][start:stop] = read_shard(art, name, index)
        return session

    def pid(self) -> int:
        return os.getpid()

    def which_backend(self) -> str:
        return self.src.backend

    def node(self) -> str:
        return node_name()

    def memory_cap(self) -> float | None:
        """The fraction of its GPU's memory torch may allocate here (``None``: no cap)."""
        return self.gpu_memory_fraction

    def timings(self) -> list[float]:
        """Seconds of each :meth:`step` (its compute, without Ray's transport)."""
        return self.step_seconds


def _np_index_dtype(k: int) -> np.dtype:
    return np.dtype(str(index_dtype(k)).removeprefix("torch."))


def check_shard_memory(shard_bytes: list[int], node_bytes: float, what: str) -> None:
    """Refuse, before any actor starts, a shard whose working set exceeds the largest node's memory."""
    for i, b in enumerate(shard_bytes):
        if b > node_bytes:
            raise ShardError(f"shard {i} of {what} needs ~{b / 2**30:.2f} GiB but the largest Ray node has "
                             f"{node_bytes / 2**30:.2f} GiB of memory; re-shard with fewer rows per shard")


def _placed(share: dict, n: int, what: str):
    """A placement group of ``n`` bundles of ``share``, once Ray has reserved all of them: a fit's
    actors are placed together or not at all, so concurrent fits queue instead of each holding part
    of its actors and waiting on the others for ever. Spread over the nodes where they can hold a
    bundle (SPREAD: best effort, so a fit whose node dies is re-placed on the nodes left), packed
    otherwise."""
    bundle = {"CPU": share["num_cpus"]} | ({"GPU": share["num_gpus"]} if "num_gpus" in share else {})
    able = [nd for nd in ray.nodes() if nd.get("Alive")
            and all(nd["Resources"].get(r, 0) >= amount for r, amount in bundle.items())]
    group = placement_group([bundle] * n, strategy="SPREAD" if 1 < n and len(able) > 1 else "PACK")
    ready, _ = ray.wait([group.ready()], timeout=5)
    if not ready:
        print(f"k-means over {what}: waiting for {n} × {bundle} (held by other work) ...", flush=True)
        ray.get(group.ready())
    return group


class RayShards:
    """One restartable actor per shard of ``version/name`` (or of several artifacts' ``name``,
    pooled, e.g. the spline shapes of many heads): a ``sharekan.clustering.Source``; use as a
    context manager (the actors stop on exit).

    ``backend``: "auto" assigns on GPUs when the cluster has any (each actor then claims an equal
    share of them) and on CPUs otherwise; "cpu", "cuda" or "faiss-gpu" force one (a GPU backend on
    a cluster without GPUs is refused before any actor starts). The actors are placed together, in
    one placement group (:func:`_placed`). :attr:`backend` is what ran."""

    def __init__(self, location, version: str | list[str], name: str, backend: str = "auto"):
        check_backend(backend)
        versions = [version] if isinstance(version, str) else list(version)
        self.location, self.name = location, name
        self.version = versions[0] if len(versions) == 1 else None  # several: pooled, for fitting only
        self.what = " + ".join(f"{v}/{name}" for v in versions)
        shards = []  # (version, index, rows): every shard of every artifact, in order
        for v in versions:
            arr = ArtifactStore(location, create=False).get(v).array(name)
            self.dim, self.shard_rows = int(np.prod(arr.shape[1:])), (arr.shards or arr.chunks)[0]
            shards += [(v, i, min(self.shard_rows, arr.shape[0] - i * self.shard_rows))
                       for i in range(-(-arr.shape[0] // self.shard_rows))]
        self.rows, n = sum(r for _, _, r in shards), len(shards)
        # points, labels and FAISS's distance block: ~3× the float32 shard, plus the interpreter
        need = [3 * rows * self.dim * 4 + (200 << 20) for _, _, rows in shards]
        nodes = [nd["Resources"].get("memory", 0) for nd in ray.nodes() if nd.get("Alive")]
        check_shard_memory(need, max(nodes, default=0), self.what)
        # explicit CPU (and GPU) shares: every shard gets an actor even when shards outnumber them
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if backend in ("cuda", "faiss-gpu") and gpus < 1:
            raise ShardError(f"k-means backend {backend!r} needs a GPU but the Ray cluster has none")
        if backend == "auto" and gpus < 1:
            backend = "cpu"
        share = {"num_cpus": min(1.0, resources.get("CPU", 1.0) / n)}
        if backend != "cpu":
            share["num_gpus"] = min(1.0, gpus / n)
        self.group = _placed(share, n, self.what)
        self.actors = [ShardActor.options(**share, scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=b)).remote(location, v, name, i, backend)
            for b, (v, i, _) in enumerate(shards)]
        try:
            self.sizes = self.gather([a.size.remote() for a in self.actors])
            self.backend = ",".join(sorted(set(self.gather([a.which_backend.remote() for a in self.actors]))))
            self.nodes = sorted(set(self.gather([a.node.remote() for a in self.actors])))  # where they were placed
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RayShards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:  # free their CPU shares now, not when the handles are collected
            ray.kill(a)
        self.actors = []
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None

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
                # an actor whose creation failed dies: Ray's message carries its ShardError's text
                said = re.findall(r"ShardError: (.+)", str(e))
                raise ShardError(said[-1] if said else f"shard {i} of {self.what} failed: {e}") from e
        return out

    def step_seconds(self) -> np.ndarray:
        """``[shards, steps]`` compute seconds of each actor's steps (for overhead accounting)."""
        return np.array(self.gather([a.timings.remote() for a in self.actors]))

    def stats(self, centroids: np.ndarray):
        ref = ray.put(np.ascontiguousarray(centroids, dtype=np.float32))
        parts = self.gather([a.step.remote(ref) for a in self.actors])
        return tuple(sum(p[j] for p in parts) for j in range(4))

    def initial(self, k: int, seed: int) -> np.ndarray:
        """``k`` points sampled across shards in proportion to their size (seeded)."""
        quota = [max(1, -(-k * s // self.rows)) for s in self.sizes]
        parts = self.gather([a.sample.remote(q, seed + i) for i, (a, q) in enumerate(zip(self.actors, quota))])
        return init_centroids(np.concatenate(parts), k, seed)

    def batch(self, centroids: np.ndarray, n: int, seed: int):
        """``n`` points split across shards by size; shard ``i`` draws with ``seed + i``."""
        ref = ray.put(np.ascontiguousarray(centroids, dtype=np.float32))
        per_shard = [max(1, round(n * s / self.rows)) for s in self.sizes]
        parts = self.gather([a.batch.remote(ref, m, seed + i)
                             for i, (a, m) in enumerate(zip(self.actors, per_shard))])
        return tuple(sum(p[j] for p in parts) for j in range(3))

    def split(self, coarse: np.ndarray) -> np.ndarray:
        ref = ray.put(np.ascontiguousarray(coarse, dtype=np.float32))
        return sum(self.gather([a.split.remote(ref) for a in self.actors]))

    def fine(self, jobs, niter, tol, spherical, done):
        """The fine fits run on the actors, round robin; every members call is queued before any
        fit, so no fit waits on a busy actor."""
        members = {c: [a.members.remote(c) for a in self.actors] for c, _, _ in jobs}
        refs = [self.actors[i % len(self.actors)].fine.remote(k, seed, niter, tol, spherical, *members[c])
                for i, (c, k, seed) in enumerate(jobs)]
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done(len(ready))
        return self.gather(refs)

    def write_assignment(self, store: ArtifactStore, stage: str, params: dict, inputs: list[str], code: str,
                         centroids: np.ndarray, extra: tuple[str, ...] = ("gains", "biases"),
                         meta: dict | None = None):
        """Store ``indices`` (nearest codeword per row) and the ``extra`` row arrays of the source
        as a new artifact with the source's shard layout; every actor writes its own shard."""
        if self.version is None:
            raise ValueError(f"an assignment is written back to one artifact, not to the pooled {self.what}")
        src = ArtifactStore(self.location, create=False).get(self.version)
        layout = {"indices": ((), _np_index_dtype(len(centroids)).str)}
        layout |= {n: (src.array(n).shape[1:], src.array(n).dtype.str) for n in extra}
        ref = ray.put(np.ascontiguousarray(centroids, dtype=np.float32))

        version = version_id(stage, params, inputs, code)

        def write_shards(session, ranges):
            return self.gather([a.write.remote(session.fork(), version, start, ref, extra)
                                for a, (start, _) in zip(self.actors, ranges)])

        return store.put_sharded(stage, params, inputs, code, layout, self.rows, self.shard_rows, 1,
                                 write_shards, meta)

