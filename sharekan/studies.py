"""Aggregates of compression studies: seed-averaged variant rows, the Pareto front, and the storage of
many heads that share one codebook.

Rows are the compression table's (``sharekan.detection.compare.compare_variants``): ``kind``,
``k``, ``dtype``, ``finetuned``, ``map50``, ``delta_map50``, ``storage_bytes``, ``compression``,
``components``; optionally ``map50_ood`` / ``delta_map50_ood``.
"""

from __future__ import annotations

import statistics

__all__ = ["SIDE_BITS", "REFERENCE", "t95", "interval95", "summary_interval95", "seed_averaged", "pareto_front", "shared_storage"]

SIDE_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
REFERENCE = "dense head of the same G and seeds"  # what a study row's delta is paired against
# two-sided 95 % quantiles of Student's t, by degrees of freedom 1 … 30 (then the normal's 1.960)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs ≥ 1 degree of freedom (≥ 2 paired values), got {df}")
    return _T95[df - 1] if df <= len(_T95) else 1.960


def interval95(values: list[float]) -> list[float] | None:
    """The 95 % t-interval ``[low, high]`` of the mean of ``values`` (paired per-seed deltas);
    ``None`` for fewer than two values: one seed says nothing about spread."""
    if len(values) < 2:
        return None
    return summary_interval95(statistics.fmean(values), statistics.stdev(values), len(values))


def summary_interval95(mean: float, std: float, n: int) -> list[float] | None:
    """The same interval from a mean, sample standard deviation and count (result files that kept
    only those)."""
    if n < 2:
        return None
    half = t95(n - 1) * std / n ** 0.5
    return [mean - half, mean + half]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_averaged(runs: list[tuple[int, int | str, list[dict]]]) -> list[dict]:
    """``runs``: ``(grid_size, seed, rows)`` (a seed may be a label, e.g. "data seed/head seed"); one row per (grid size, variant) with mean, spread and
    95 % t-interval over the seeds of ``delta_map50`` — each seed's delta paired against the dense
    head of its own run (:data:`REFERENCE`), every paired value kept in ``per_seed`` — and the means
    of ``map50`` and the storage ratio (and out of distribution where scored). Variants missing from
    a seed's run are averaged over the seeds that have them."""
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
               "delta_map_mean": delta, "delta_map_std": delta_std,
               "delta_map_ci95": interval95([r["delta_map50"] for r in rows]), "reference": REFERENCE,
               "per_seed": {s: r["delta_map50"] for s, r in members},
               "per_seed_map": {s: r["map50"] for s, r in members}, "seeds": sorted((s for s, _ in members), key=str)}
        if all("delta_map50_ood" in r for r in rows):
            ood = [r["delta_map50_ood"] for r in rows]
            row["delta_map_ood_mean"], row["delta_map_ood_std"] = _mean_std(ood)
            row["delta_map_ood_ci95"] = interval95(ood)
            row["per_seed_ood"] = {s: r["delta_map50_ood"] for s, r in members}
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
