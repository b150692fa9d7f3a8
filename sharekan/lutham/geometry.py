"""LUTHAM's launch geometry and the kernels' tile constants, in one place.

The constants reach ``kernels/lutham.cu`` as ``-D`` compile options (:func:`defines`; the source
refuses to compile without them), and the launch functions below size grids from the same values,
so a tile size cannot differ between the kernel and its launch. :func:`launches` returns, per layer
and row count, ``(kernel, first row, rows, chunk, grid, block)`` tuples for CuPy's
``RawKernel.__call__``.

Paths: one row runs ``lutham_row1`` (a window gather, fp32 FMAs); more rows run ``lutham_tc{NT}``
(tensor cores, ``NT`` n-tiles of 8 rows a block: the smallest power of two that holds the rows, up
to 128 rows a block; above that the rows go in 128-row blocks plus one tail launch). ``split``
(default) picks the ``s`` kernels: the bases as fp16 hi + lo parts too (3 MMAs, near fp32), not
single fp16 values (2 MMAs; the weights are hi + lo parts either way).
"""

from __future__ import annotations

__all__ = ["TILE_O", "BASE_SLOT", "THREADS", "ROW1_UNROLL", "ROW1_MAX_CHUNK", "STAGE_BYTES", "TC_TILES",
           "KERNELS", "defines", "launches"]

TILE_O = 16          # outputs a warp covers: the M of mma.m16n8k16
BASE_SLOT = 15       # the K slot holding the SiLU base weight (coefficients take slots 0 .. C-1)
THREADS = 256        # threads a block at most (8 warps: 8 output tiles)
ROW1_UNROLL = 4      # lutham_row1: warp steps (2 inputs each) whose loads issue together
ROW1_MAX_CHUNK = 512  # lutham_row1: inputs a block stages in shared memory
STAGE_BYTES = 32_768  # lutham_tc: the double-buffered basis fragments of one block
TC_TILES = (1, 2, 4, 8, 16)  # n-tiles (8 rows each) of the lutham_tc kernels
KERNELS = ("lutham_row1", *(f"lutham_tc{n}{s}" for s in ("s", "") for n in TC_TILES))
_WARPS_PER_SM = 48   # lutham_row1: warps in flight to aim for
_BLOCKS_PER_SM = 2   # lutham_tc: blocks to aim for
_MIN_SPLIT = 16      # inputs a split holds at least
_STEP = 8            # a split is a multiple of this many inputs (every kernel's step divides it)


def defines() -> list[str]:
    """The ``-D`` options that give the kernels their tile constants."""
    return [f"-D{k}={v}" for k, v in (("TILE_O", TILE_O), ("BASE_SLOT", BASE_SLOT), ("ROW1_UNROLL", ROW1_UNROLL),
                                      ("ROW1_MAX_CHUNK", ROW1_MAX_CHUNK), ("STAGE_BYTES", STAGE_BYTES))]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _splits(in_f: int, units: int, target: int, max_chunk: int | None = None) -> int:
    """Input chunk (a multiple of ``_STEP``) so that ``units`` × splits reaches ``target``."""
    splits = max(1, min(_cdiv(target, units), in_f // _MIN_SPLIT))
    chunk = _cdiv(_cdiv(in_f, splits), _STEP) * _STEP
    if max_chunk is not None:
        chunk = min(chunk, max_chunk)
    return chunk


def _tiles_for(rows: int) -> int:
    return next(t for t in TC_TILES if t * 8 >= rows)


def launches(rows: int, in_f: int, out_f: int, n_sm: int, split: bool = True):
    """The kernel launches of one layer for ``rows`` rows: ``(kernel, first row, rows, chunk, grid, block)``."""
    if rows < 1:
        raise ValueError(f"rows must be ≥ 1, got {rows}")
    tiles = _cdiv(out_f, TILE_O)
    if rows == 1:
        warps = min(THREADS // 32, tiles)
        bx = _cdiv(tiles, warps)
        chunk = _splits(in_f, bx * warps, _WARPS_PER_SM * n_sm, ROW1_MAX_CHUNK)
        return [("lutham_row1", 0, 1, chunk, (bx, 1, _cdiv(in_f, chunk)), (warps * 32,))]
    bx = _cdiv(tiles, THREADS // 32)  # lutham_tc: every block has all its threads (they build the bases)
    suffix = "s" if split else ""
    out, r0 = [], 0
    full = rows // (8 * TC_TILES[-1]) if rows > 8 * TC_TILES[-1] else 0
    parts = ([(TC_TILES[-1], full, full * 8 * TC_TILES[-1])] if full else [])
    if rows - full * 8 * TC_TILES[-1]:
        tail = rows - full * 8 * TC_TILES[-1]
        parts.append((_tiles_for(tail), 1, tail))
    for nt, by, r in parts:
        chunk = _splits(in_f, bx * by, _BLOCKS_PER_SM * n_sm)
        out.append((f"lutham_tc{nt}{suffix}", r0, r, chunk, (bx, by, _cdiv(in_f, chunk)), (THREADS,)))
        r0 += r
    return out
