"""Aggregates of compression studies: seed-averaged variant rows, the Pareto front, and the storage of
many heads that share one codebook.

Rows are the compression table's (``sharekan.detection.compare.compare_variants``): ``kind``,
``k``, ``dtype``, ``finetuned``, ``map50``, ``delta_map50``, ``storage_bytes``, ``compression``,
``components``; optionally ``map50_ood`` / ``delta_map50_ood``.
"""

from __future__ import annotations

import statistics

__all__ = ["SIDE_BITS", "seed_averaged", "pareto_front", "shared_storage"]

SIDE_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_averaged(runs: list[tuple[int, int, list[dict]]]) -> list[dict]:
    """``runs``: ``(grid_size, seed, rows)``; one row per (grid size, variant) with mean and spread
    over the seeds of ``delta_map50`` (and ``map50``, the storage ratio, and out of distribution
    where scored). Variants missing from a seed's run are averaged over the seeds that have them."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for grid_size, seed, rows in runs:
        for r in rows:
            key = (grid_size, r["kind"], r.get("k"), r.get("dtype"), r.get("sparsity"), bool(r.get("finetuned")))
            groups.setdefault(key, []).append((seed, r))
    out = []
    for (grid_size, kind, k, dtype, sparsity, finetuned), members in groups.items():
        rows = [r for _, r in members]
        delta, delta_std = _mean_std([r["delta_map50"] for r in rows])
        row = {"variant": rows[0]["variant"], "kind": kind, "k": k, "grid_size": grid_size,
               "side_bits": SIDE_BITS.get(dtype) if kind == "vq" else None, "dtype": dtype, "sparsity": sparsity,
               "finetuned": finetuned, "heads": 1,
               "ratio": statistics.fmean(r["compression"] for r in rows),
               "storage_bytes": statistics.fmean(r["storage_bytes"] for r in rows),
               "map50_mean": statistics.fmean(r["map50"] for r in rows),
               "delta_map_mean": delta, "delta_map_std": delta_std, "seeds": sorted(s for s, _ in members)}
        if all("delta_map50_ood" in r for r in rows):
            row["delta_map_ood_mean"], row["delta_map_ood_std"] = _mean_std([r["delta_map50_ood"] for r in rows])
        out.append(row)
    return out


def pareto_front(rows: list[dict], size: str = "storage_bytes", quality: str = "map50_mean") -> list[dict]:
    """The rows no other row beats on both counts (smaller ``size`` and higher ``quality``; ties
    kept), in order of size."""
    front = [r for r in rows if not any(o[size] <= r[size] and o[quality] >= r[quality]
                                        and (o[size] < r[size] or o[quality] > r[quality]) for o in rows)]
    return sorted(front, key=lambda r: r[size])


def shared_storage(dense_rows: list[dict], shared_rows: list[dict]) -> dict:
    """Storage of N heads that share one codebook against N dense heads: the codebook counted once,
    each head's own part (indices, side data, grids, its small non-KAN tensors) N times.
    ``dense_rows[i]`` and ``shared_rows[i]`` are head i's dense and shared-codebook rows."""
    if len(dense_rows) != len(shared_rows) or not dense_rows:
        raise ValueError(f"need one dense and one shared row per head, got {len(dense_rows)} and {len(shared_rows)}")
    books = {r["components"]["codebook"] for r in shared_rows}
    if len(books) != 1:
        raise ValueError(f"the heads' codebooks differ in size ({sorted(books)}): not one shared codebook")
    book = books.pop()
    dense = sum(r["storage_bytes"] for r in dense_rows)
    shared = book + sum(r["storage_bytes"] - book for r in shared_rows)
    return {"heads": len(shared_rows), "dense_bytes": dense, "shared_bytes": shared, "codebook_bytes": book,
            "ratio": dense / shared, "separate_ratio": dense / sum(r["storage_bytes"] for r in shared_rows)}
