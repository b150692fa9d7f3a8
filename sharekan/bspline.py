"""B-spline bases on efficient-kan knot grids.

A grid row holds the knots ``t_0 … t_{G+2k}`` of one input feature; an edge has ``C = G + k``
coefficients. Two evaluators:

* :func:`cox_de_boor` — the recursion, any order, any (sorted) knots.
* :func:`cubic_active` — the closed form on a uniform grid: the 4 non-zero cubic bases of each
  input and the index of the first one. Inputs outside ``[t_0, t_last)`` get all-zero weights,
  exactly as the recursion gives.
"""

from __future__ import annotations

import torch

__all__ = [
    "make_grid",
    "compact_grid",
    "expand_grid",
    "grid_bytes",
    "cox_de_boor",
    "cubic_active",
    "scatter_active",
    "uniform_grid_params",
    "bases",
]


def make_grid(in_features: int, grid_size: int, spline_order: int,
              grid_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """efficient-kan's uniform knot grid: ``[in_features, grid_size + 2*spline_order + 1]``."""
    lo, hi = float(grid_range[0]), float(grid_range[1])
    if not hi > lo:
        raise ValueError(f"grid_range must be increasing, got {grid_range}")
    h = (hi - lo) / grid_size
    knots = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) * h + lo
    return knots.expand(in_features, -1).contiguous()


def compact_grid(grid: torch.Tensor, spline_order: int = 3) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(lo, h)`` with :func:`expand_grid` giving back ``grid`` bit for bit — one value each when
    every input shares its knots (``[1]``), else one per input — or ``None`` when no such pair
    exists (a non-uniform grid, or rounding that the formula cannot reproduce)."""
    n = grid.shape[1]
    if grid.dtype != torch.float32 or n < 2 * spline_order + 2:
        return None
    d = grid.to(torch.float64)
    lo = grid[:, spline_order]
    for h in ((d[:, -1] - d[:, 0]) / (n - 1), (d[:, n - 1 - spline_order] - lo.double()) / (n - 1 - 2 * spline_order)):
        h = h.to(torch.float32)
        pair = (lo[:1], h[:1]) if torch.equal(lo, lo[:1].expand_as(lo)) and torch.equal(h, h[:1].expand_as(h)) \
            else (lo, h)
        if torch.equal(expand_grid(*pair, grid.shape[0], n, spline_order), grid):
            return pair[0].clone(), pair[1].clone()
    return None


def expand_grid(lo: torch.Tensor, h: torch.Tensor, in_features: int, n_knots: int, spline_order: int = 3
                ) -> torch.Tensor:
    """The knots ``lo + j·h``, ``j = -spline_order … n_knots - spline_order - 1``: ``[in_features, n_knots]``
    (:func:`make_grid`'s formula, so its grids come back bit for bit)."""
    j = torch.arange(-spline_order, n_knots - spline_order, dtype=torch.float32, device=lo.device)
    return (j[None, :] * h[:, None] + lo[:, None]).expand(in_features, -1).contiguous()


def grid_bytes(grid: torch.Tensor, spline_order: int = 3) -> int:
    """Bytes a grid takes stored in its smallest exact form (see :func:`compact_grid`)."""
    pair = compact_grid(grid, spline_order)
    return grid.numel() * grid.element_size() if pair is None else sum(t.numel() * 4 for t in pair)


def cox_de_boor(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Bases ``[batch, in, G + k]`` of ``x [batch, in]`` by the Cox–de Boor recursion."""
    g = grid.to(x.dtype)
    xe = x.unsqueeze(-1)
    bases = ((xe >= g[:, :-1]) & (xe < g[:, 1:])).to(x.dtype)
    for k in range(1, spline_order + 1):
        left = (xe - g[:, : -(k + 1)]) / (g[:, k:-1] - g[:, : -(k + 1)]) * bases[:, :, :-1]
        right = (g[:, k + 1:] - xe) / (g[:, k + 1:] - g[:, 1:(-k)]) * bases[:, :, 1:]
        bases = left + right
    return bases


def uniform_grid_params(grid: torch.Tensor, rtol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(t0 [in], h [in])`` when every row of ``grid`` is uniformly spaced, else ``None``."""
    steps = grid[:, 1:] - grid[:, :-1]
    h = steps.mean(dim=1)
    if not bool(torch.all(h > 0)):
        return None
    if not bool(torch.all((steps - h[:, None]).abs() <= rtol * h.abs()[:, None] + 1e-7)):
        return None
    return grid[:, 0].contiguous(), h.contiguous()


def cubic_active(x: torch.Tensor, t0: torch.Tensor, h: torch.Tensor, n_knots: int,
                 grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form cubic bases on a uniform grid.

    Returns ``(first, w)``: ``first [batch, in]`` (int64) is the index of the first of the four
    active bases, and ``w [batch, in, 4]`` their values. Near the ends some of the four lie
    outside ``[0, C)``: such bases do not exist and their weights are 0, so ``w.sum(-1)`` is
    ``ΣB(x)``. Outside every knot all four weights are zero. Given ``grid``, the fractional
    position is taken from the stored knots (float32 error ~1e-7 instead of ~1e-6).
    """
    u = (x - t0) / h
    m = torch.floor(u)
    if grid is None:
        f = u - m
    else:  # fractional part from the stored knots: as precise as the recursion in float32
        mi = m.clamp(0, n_knots - 2).to(torch.int64).T
        left = grid.to(x.dtype).gather(1, mi).T
        right = grid.to(x.dtype).gather(1, mi + 1).T
        f = ((x - left) / (right - left)).clamp(0, 1)
    f2 = f * f
    f3 = f2 * f
    w = torch.stack(
        [
            (1 - f) ** 3 / 6,
            (3 * f3 - 6 * f2 + 4) / 6,
            (-3 * f3 + 3 * f2 + 3 * f + 1) / 6,
            f3 / 6,
        ],
        dim=-1,
    )
    inside = (u >= 0) & (u < n_knots - 1)
    first = torch.where(inside, m, torch.zeros((), dtype=m.dtype)).to(torch.int64) - 3
    basis = first.unsqueeze(-1) + torch.arange(4, device=x.device)
    exists = inside.unsqueeze(-1) & (basis >= 0) & (basis < n_knots - 4)
    return first, torch.where(exists, w, torch.zeros((), dtype=w.dtype))


def cardinal_cubic(x: torch.Tensor, t0: torch.Tensor, h: torch.Tensor, n_coef: int) -> torch.Tensor:
    """Dense cubic bases ``[batch, in, n_coef]`` on a uniform grid, elementwise: basis ``j`` is the
    cardinal cubic B-spline at ``s = (x − t0)/h − j`` (support ``[0, 4)``), evaluated through its
    symmetry ``t = min(s, 4 − s)`` as ``t³/6`` or ``(−3t³ + 12t² − 12t + 4)/6``. No gather or
    scatter, so a compiler fuses it into one pointwise kernel; equals :func:`cubic_active`'s bases."""
    s = ((x - t0) / h).unsqueeze(-1) - torch.arange(n_coef, device=x.device, dtype=x.dtype)
    t = torch.minimum(s, 4 - s)
    t2 = t * t
    t3 = t2 * t
    b = torch.where(t < 1, t3, -3 * t3 + 12 * t2 - 12 * t + 4) / 6
    return torch.where(t >= 0, b, torch.zeros((), dtype=b.dtype, device=b.device))


def scatter_active(first: torch.Tensor, w: torch.Tensor, n_coef: int) -> torch.Tensor:
    """Dense bases ``[batch, in, n_coef]`` from the 4 active ones (out-of-range bases dropped)."""
    pad = 3
    dense = torch.zeros(*first.shape, n_coef + 2 * pad, dtype=w.dtype, device=w.device)
    idx = (first + pad).clamp(0, n_coef + pad - 1).unsqueeze(-1) + torch.arange(4, device=w.device)
    dense.scatter_(-1, idx, w)
    return dense[..., pad: pad + n_coef]


def bases(x: torch.Tensor, grid: torch.Tensor, spline_order: int,
          uniform: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Dense bases ``[batch, in, G + k]``: closed form for cubic splines on a uniform grid
    (``uniform = (t0, h)`` from :func:`uniform_grid_params`), the recursion otherwise."""
    if spline_order != 3 or uniform is None:
        return cox_de_boor(x, grid, spline_order)
    t0, h = uniform
    first, w = cubic_active(x, t0.to(x.dtype), h.to(x.dtype), grid.shape[1], grid)
    return scatter_active(first, w, grid.shape[1] - 4)
