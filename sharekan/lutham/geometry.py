"""LUTHAM's launch geometry and the kernels' tile constants, in one place.

The constants reach ``kernels/lutham.cu`` as ``-D`` compile options (:func:`defines`; the source
refuses to compile without them), and the launch functions below size grids from the same values,
so a tile size cannot differ between the kernel and its launch. Each function returns
``(grid, block)`` tuples for CuPy's ``RawKernel.__call__``.
"""

from __future__ import annotations

__all__ = ["TM", "TN", "TI", "KS", "MMA_THREADS", "GATHER_STEP", "GATHER_THREADS", "PREP_THREADS", "GATHER_ROWS",
           "MMA_MIN_ROWS", "defines", "prep_launch", "gather_launches", "mma_launch"]

TM = 64            # lutham_mma: rows per tile
TN = 64            # lutham_mma: outputs per tile
TI = 4             # lutham_mma: inputs decoded per step
KS = 16            # lutham_mma: slots per input (13 coefficients + the base weight, padded)
MMA_THREADS = 128  # lutham_mma: 4 warps, 2 x 2 over the tile
GATHER_STEP = 128  # lutham_gather: inputs a warp covers per step (32 lanes x 4 edges)
GATHER_THREADS = 256
PREP_THREADS = 256
GATHER_ROWS = (1, 4, 16)  # the gather kernels' row bounds (register accumulators)
MMA_MIN_ROWS = 16  # from here on the tensor-core path reuses decoded weights across rows
_MMA_CHUNK = 8     # lutham_mma: an input split is a multiple of this
_MMA_MIN_SPLIT = 64  # lutham_mma: inputs per split at least
_GATHER_WARPS_PER_SM = 64
_MMA_BLOCKS_PER_SM = 2


def defines() -> list[str]:
    """The ``-D`` options that give the kernels their tile constants."""
    return [f"-D{k}={v}" for k, v in (("TM", TM), ("TN", TN), ("TI", TI), ("KS", KS), ("MMA_THREADS", MMA_THREADS),
                                      ("GATHER_STEP", GATHER_STEP))]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def prep_launch(rows: int, in_f: int, out_f: int):
    """One thread per (row, input) and per (row, output) (it zeroes the output)."""
    return (_cdiv(rows * max(in_f, out_f), PREP_THREADS),), (PREP_THREADS,)


def gather_launches(rows: int, in_f: int, out_f: int, n_sm: int):
    """``(kernel, first row, rows, chunk, grid, block)`` per launch of the few-rows path: a warp per
    (output, split of the inputs), about 64 warps per SM in all, ≤ 16 rows a launch."""
    splits = max(1, min(_cdiv(_GATHER_WARPS_PER_SM * n_sm, out_f), in_f // GATHER_STEP))
    chunk = _cdiv(_cdiv(in_f, splits), GATHER_STEP) * GATHER_STEP
    splits = _cdiv(in_f, chunk)
    out = []
    for r0 in range(0, rows, GATHER_ROWS[-1]):
        r = min(GATHER_ROWS[-1], rows - r0)
        bound = next(b for b in GATHER_ROWS if r <= b)
        grid = (_cdiv(out_f * splits * 32, GATHER_THREADS),)
        out.append((f"lutham_gather{bound}", r0, r, chunk, grid, (GATHER_THREADS,)))
    return out


def mma_launch(rows: int, in_f: int, out_f: int, n_sm: int):
    """``(chunk, grid, block)`` of the tensor-core path: a block per (64 outputs, 64 rows, split of the
    inputs), about two blocks per SM in all."""
    tiles = _cdiv(out_f, TN) * _cdiv(rows, TM)
    splits = max(1, min(_cdiv(_MMA_BLOCKS_PER_SM * n_sm, tiles), in_f // _MMA_MIN_SPLIT))
    chunk = _cdiv(_cdiv(in_f, splits), _MMA_CHUNK) * _MMA_CHUNK
    splits = _cdiv(in_f, chunk)
    return chunk, (_cdiv(out_f, TN), _cdiv(rows, TM), splits), (MMA_THREADS,)
