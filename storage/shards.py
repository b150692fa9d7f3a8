"""Row-sharded artifacts written by parallel processes, read back one shard at a time.

Spline grids are per-edge rows (coefficients ``[E, C]``, shapes ``[E, C]``, gains and biases
``[E]``): :func:`put_rows` lays them out chunked along the edge axis with several chunks per
shard file, hands each worker process a forked Icechunk session and whole shards (so no two
workers touch one shard file), merges their sessions and commits once. :func:`read_shard` gives a
k-means worker its rows without reading the rest.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import numpy as np

from .store import Artifact, ArtifactStore, open_artifact_group, version_id

__all__ = ["put_rows", "read_shard"]


def _write(job):
    fork, version, pieces, source = job
    group = open_artifact_group(fork, version)
    for (start, stop), arrays in pieces:
        for name, block in (arrays if arrays is not None else source(start, stop)).items():
            group[name][start:stop] = block
    return fork


def put_rows(store: ArtifactStore, stage: str, params: dict, inputs: list[str], code: str,
             arrays: dict[str, np.ndarray] | None = None, *,
             source: Callable[[int, int], dict[str, np.ndarray]] | None = None, rows: int | None = None,
             layout: dict[str, tuple[tuple[int, ...], str]] | None = None, chunk_rows: int = 65_536,
             chunks_per_shard: int = 1, workers: int = 2, meta: dict | None = None) -> tuple[Artifact, bool]:
    """Store row arrays sharded along rows, written by ``workers`` processes.

    Either ``arrays`` (same first dimension; each worker is sent only its rows), or a picklable
    ``source(start, stop) -> {name: rows}`` with ``rows`` and ``layout`` (name → (trailing shape,
    dtype)), so each worker produces its own shards and nothing large crosses processes.
    """
    if (arrays is None) == (source is None):
        raise ValueError("give either arrays or source (with rows and layout), not both")
    if arrays is not None:
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays of stage {stage!r} must share their first dimension, got "
                             f"{ {n: a.shape for n, a in arrays.items()} }")
        rows = sizes.pop()
        layout = {n: (a.shape[1:], a.dtype.str) for n, a in arrays.items()}
    elif rows is None or layout is None:
        raise ValueError("source needs rows and layout")
    if workers < 1 or chunk_rows < 1 or chunks_per_shard < 1:
        raise ValueError("workers, chunk_rows and chunks_per_shard must be ≥ 1")
    version = version_id(stage, params, inputs, code)

    def write_shards(session, ranges):
        per_worker = [ranges[i::workers] for i in range(workers) if ranges[i::workers]]
        jobs = [(session.fork(), version,
                 [((a, b), None if arrays is None else {n: arr[a:b] for n, arr in arrays.items()})
                  for a, b in mine], source)
                for mine in per_worker]
        if len(jobs) == 1:
            return [_write(jobs[0])]
        with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_write, jobs))

    return store.put_sharded(stage, params, inputs, code, layout, rows, chunk_rows, chunks_per_shard,
                             write_shards, meta)


def read_shard(artifact: Artifact, name: str, index: int) -> np.ndarray:
    """Rows of shard ``index`` of array ``name`` (reads that shard's file only)."""
    arr = artifact.array(name)
    shard_rows = (arr.shards or arr.chunks)[0]
    n = -(-arr.shape[0] // shard_rows)
    if not 0 <= index < n:
        raise IndexError(f"{artifact.version}/{name} has {n} shards, no shard {index}")
    return arr[index * shard_rows:(index + 1) * shard_rows]
