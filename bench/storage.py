"""Question: how fast do spline shards go through the artifact store, against plain numpy files?

Writes and reads ``--edges`` rows × 13 coefficients (float32 and float16) through the Icechunk
store (``storage.shards.put_rows``: sharded along edges, forked sessions, one commit) and through
``numpy.save``/``numpy.load``, with 1 and 2 parallel writers. "store" keeps one 65,536-row chunk
per file; "codec" packs 8 chunks per shard file with Zarr's sharding codec. Each writer produces its own rows
from a seed (nothing large crosses processes, for either side); a 2-writer numpy run writes one
``.npy`` file per writer. Reads are whole-array reads by the coordinator. Prints a table and
writes JSON.

    python bench/storage.py --edges 10000000 --json bench/results/storage.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.table import format_table  # noqa: E402
from storage.shards import put_rows  # noqa: E402
from storage.store import ArtifactStore  # noqa: E402

C = 13


def make_rows(start: int, stop: int, dtype: str = "float32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(start)
    return {"coefficients": rng.standard_normal((stop - start, C), dtype=np.float32).astype(dtype)}


def _np_write(args) -> None:
    path, start, stop, dtype = args
    np.save(path, make_rows(start, stop, dtype)["coefficients"])


def numpy_roundtrip(folder: Path, edges: int, dtype: str, writers: int) -> tuple[float, float]:
    bounds = np.linspace(0, edges, writers + 1, dtype=np.int64)
    jobs = [(folder / f"part{i}.npy", int(bounds[i]), int(bounds[i + 1]), dtype) for i in range(writers)]
    t = time.perf_counter()
    if writers == 1:
        _np_write(jobs[0])
    else:
        with ProcessPoolExecutor(writers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_np_write, jobs))
    os.sync()
    write = time.perf_counter() - t
    t = time.perf_counter()
    parts = [np.load(j[0]) for j in jobs]
    assert sum(len(p) for p in parts) == edges
    return write, time.perf_counter() - t


def store_roundtrip(folder: Path, edges: int, dtype: str, writers: int,
                    chunks_per_shard: int) -> tuple[float, float]:
    store = ArtifactStore(folder / "store")
    t = time.perf_counter()
    art, created = put_rows(store, "splines", {"edges": edges, "dtype": dtype}, [], "bench",
                            source=partial(make_rows, dtype=dtype), rows=edges,
                            layout={"coefficients": ((C,), np.dtype(dtype).str)},
                            chunk_rows=65_536, chunks_per_shard=chunks_per_shard, workers=writers)
    os.sync()
    write = time.perf_counter() - t
    assert created
    t = time.perf_counter()
    data = art.array("coefficients")[...]
    read = time.perf_counter() - t
    assert data.shape == (edges, C)
    return write, read


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", type=int, default=10_000_000)
    p.add_argument("--dir", help="scratch folder (default: a temporary folder)")
    p.add_argument("--json", default="bench/results/storage.json")
    a = p.parse_args(argv)
    rows = []
    for dtype in ("float32", "float16"):
        mb = a.edges * C * np.dtype(dtype).itemsize / 1e6
        for writers in (1, 2):
            result = {"dtype": dtype, "writers": writers, "MB": mb}
            for name, fn in (("numpy", numpy_roundtrip), ("store", partial(store_roundtrip, chunks_per_shard=1)),
                             ("codec", partial(store_roundtrip, chunks_per_shard=8))):
                scratch = Path(tempfile.mkdtemp(dir=a.dir))
                try:
                    w, r = fn(scratch, a.edges, dtype, writers)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                result[f"{name}_write_MBps"] = mb / w
                result[f"{name}_read_MBps"] = mb / r
            result["codec_read_ratio"] = result["codec_read_MBps"] / result["numpy_read_MBps"]
            result["write_ratio"] = result["store_write_MBps"] / result["numpy_write_MBps"]
            result["read_ratio"] = result["store_read_MBps"] / result["numpy_read_MBps"]
            rows.append(result)
            print(f"{dtype} x{writers}: store write {result['store_write_MBps']:.0f} MB/s, "
                  f"numpy write {result['numpy_write_MBps']:.0f} MB/s", flush=True)
    print(format_table(rows, [("dtype", "dtype", "s"), ("writers", "writers", "d"), ("MB", "MB", ".0f"),
                              ("numpy_write_MBps", "numpy write MB/s", ".0f"),
                              ("store_write_MBps", "store write MB/s", ".0f"),
                              ("write_ratio", "store/numpy write", ".2f"),
                              ("numpy_read_MBps", "numpy read MB/s", ".0f"),
                              ("store_read_MBps", "store read MB/s", ".0f"),
                              ("read_ratio", "store/numpy read", ".2f"),
                              ("codec_write_MBps", "codec write MB/s", ".0f"),
                              ("codec_read_MBps", "codec read MB/s", ".0f")]))
    for dtype in ("float32", "float16"):
        one, two = (r for r in rows if r["dtype"] == dtype)
        print(f"{dtype}: store write scaling 1→2 writers {two['store_write_MBps'] / one['store_write_MBps']:.2f}x")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"edges": a.edges, "coefficients": C, "cpus": os.cpu_count(), "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
