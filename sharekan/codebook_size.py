"""Codebook sizes K: the largest a uint16 index allows, the sizes fitted by default, a sweep's K axis,
and the one check of a K against the points it clusters."""

from __future__ import annotations

__all__ = ["MAX_K", "DEFAULT_KS", "default_ks", "ladder_ks", "check_k"]

MAX_K = 65_536  # uint16 indices
DEFAULT_KS = (256, 4096, MAX_K)  # the last stands for min(edges, MAX_K) of a given head


def default_ks(edges: int) -> list[int]:
    """The codebook sizes fitted when none are given: 256, 4,096 and the largest K the edge count
    supports (≤ 65,536), those above the edge count left out."""
    return sorted({k for k in (*DEFAULT_KS[:-1], min(edges, MAX_K)) if k <= edges})


def ladder_ks(edges: int, start: int = 64, factor: int = 4) -> list[int]:
    """Codebook sizes ``start · factor^j`` below the edge count (and ≤ 65,536): a sweep's K axis."""
    out, k = [], start
    while k < edges and k <= MAX_K:
        out.append(k)
        k *= factor
    return out


def check_k(k: int, n_points: int, what: str = "edges") -> None:
    """K must be in ``[1, min(MAX_K, n_points)]``: a clear error, never a silent clamp."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"K (codebook size) must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise ValueError(f"K (codebook size) = {k} exceeds the maximum {MAX_K} (uint16 indices)")
    if k > n_points:
        raise ValueError(f"K (codebook size) = {k} is larger than the number of {what} ({n_points}); "
                         f"choose K ≤ {n_points}")
