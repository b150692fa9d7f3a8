"""LUTHAM's launch geometry and the kernels' tile constants, in one place.

The constants reach ``kernels/lutham.cu`` as ``-D`` compile options (:func:`defines`; the source
refuses to compile without them), and the launch functions below size grids from the same values,
so a tile size cannot differ between the kernel and its launch. :func:`launches` returns, per layer
and row count, ``(kernel, first row, rows, chunk, grid, block)`` tuples for CuPy's
``RawKernel.__call__``.

Paths: one row runs ``lutham_row1`` (a window gather, fp32 FMAs); more rows run, per slab of inputs
(:func:`tc_slabs`: as many as the bases scratch holds), ``lutham_bases_p{P}`` (the rows' B
fragments into the scratch) then ``lutham_tc{NT}p{P}`` (tensor cores, ``NT`` n-tiles of 8 rows a
block: the smallest power of two that holds the rows, up to 128 rows a block; above that the rows go
in 128-row blocks plus one tail launch); from
``SLAB_FROM_ROWS`` rows a layer runs as slabs of inputs (:func:`slab_launches`): ``lutham_slab_p{P}``
expands a slab's weights and bases into a bounded fp16 workspace and cuBLAS multiplies them.
``P`` (:data:`PRECISIONS`) is how many fp16 products one weight-basis product takes: 3 (``high``,
the default: weights and bases as fp16 hi + lo parts, near fp32), 2 (``medium``: single fp16
bases), 1 (``low``: fp16 weights and bases, the rounding of a dense fp16 head).
"""

from __future__ import annotations

__all__ = ["TILE_O", "BASE_SLOT", "THREADS", "ROW1_UNROLL", "ROW1_MAX_CHUNK", "TC_TILES", "BASES_BYTES",
           "PRECISIONS", "SLAB_FROM_ROWS", "SLAB_BYTES", "SLAB_IN", "SLAB_ROWS", "BLAS_BYTES", "LUT_FLOATS", "LUT_STEP", "LUT_MAX_K", "PACKED_NR", "PACKED_SLAB_FROM", "KERNELS",
           "PACKED_KERNELS", "CLUSTER_KERNELS", "PACKED_TC_STEP", "PACKED_TC_STAGES", "packed_launch", "packed_tc_launch",
           "packed_tc_partials", "row1_gathers", "row1_launch", "row1_partials",
           "defines", "launches", "products", "uses_slab", "fragment_bytes", "bases_scratch", "tc_slabs",
           "slab_slots", "slab_sections", "slab_workspace", "slab_launches"]

TILE_O = 16          # outputs a warp covers: the M of mma.m16n8k16
BASE_SLOT = 15       # the K slot holding the SiLU base weight (coefficients take slots 0 .. C-1)
THREADS = 256        # threads a block at most (8 warps: 8 output tiles)
ROW1_UNROLL = 4      # lutham_row1: warp steps (2 inputs each) whose loads issue together
ROW1_MAX_CHUNK = 512  # lutham_row1: inputs a block stages in shared memory
TC_TILES = (1, 2, 4, 8, 16)  # n-tiles (8 rows each) of the lutham_tc kernels
BASES_BYTES = 16 << 20  # lutham_tc: the B-fragment scratch at most (the inputs of one slab, every row)
PRECISIONS = {"high": 3, "medium": 2, "low": 1}  # fp16 products a weight-basis product takes
SLAB_FROM_ROWS = {3: 256, 2: 512, 1: 128}  # by products: rows from which layers run as cuBLAS slabs
SLAB_BYTES = 64 << 20  # the slab workspace at most (weights and bases of one slab of inputs)
SLAB_IN = 32         # lutham_slab: inputs a block covers (16 outputs or SLAB_ROWS rows by these)
SLAB_ROWS = 8        # lutham_slab: rows a bases block covers
BLAS_BYTES = 8 << 20  # cuBLAS's own workspace, in the arena (set, so the GEMMs allocate nothing: graphs)
LUT_FLOATS = 8192    # packed_lut: lookup-table entries a block holds (32 KB of shared memory)
LUT_STEP = 8         # packed_*: inputs a phase covers at most
LUT_MAX_K = 1024     # packed heads with larger codebooks gather codebook windows instead of tables
PACKED_NR = (1, 4, 8)  # rows a packed_lut / packed_gather block covers
PACKED_SLAB_FROM = 64  # rows from which packed heads run as cuBLAS slabs
PACKED_TC_STEP = 8    # packed_tc: inputs a phase
PACKED_TC_STAGES = 4  # packed_tc: phases in the cp.async ring (TC_STAGES - 1 in flight)
_PACKED_TC_BLOCKS_PER_SM = 2  # packed_tc: blocks in flight to aim for (its __launch_bounds__)
_PACKED_WARPS_PER_SM = 32  # packed_lut / packed_gather: warps in flight to aim for
_ROW1_BLOCKS_PER_SM = 3  # packed_row1: blocks in flight to aim for (its __launch_bounds__)
ROW1_CLUSTER = 8       # packed_row1_lutc (sm_90): chunks a cluster adds up before one partial row is written
KERNELS = ("lutham_row1", *(f"lutham_bases_p{p}" for p in (3, 2, 1)),
           *(f"lutham_tc{n}p{p}" for p in (3, 2, 1) for n in TC_TILES),
           *(f"lutham_slab_p{p}" for p in (3, 2, 1)))
CLUSTER_KERNELS = tuple(f"packed_row1_lutc_i{i}_s{s}" for i in (1, 2) for s in (4, 8, 16))  # sm_90+
PACKED_KERNELS = (*(f"packed_row1_{m}_i{i}_s{s}" for m in ("lut", "gather") for i in (1, 2) for s in (4, 8, 16)),
                  "packed_sum",
                  *(f"packed_lut_i{i}_s{s}_r{r}" for i in (1, 2) for s in (4, 8, 16) for r in PACKED_NR),
                  *(f"packed_gather_i2_s{s}_r{r}" for s in (4, 8, 16) for r in PACKED_NR),
                  *(f"packed_slab_i{i}_s{s}_p{p}" for i in (1, 2) for s in (4, 8, 16) for p in (1, 2, 3)),
                  *(f"packed_tc_i{i}_s{s}_p{p}" for i in (1, 2) for s in (4, 8, 16) for p in (1, 2, 3)))
_WARPS_PER_SM = 48   # lutham_row1: warps in flight to aim for
_TC_WARPS_PER_SM = 16  # lutham_tc: warps in flight to aim for (2 blocks of 8 at 128 registers)
_MIN_SPLIT = 16      # inputs a split holds at least
_STEP = 8            # a split is a multiple of this many inputs (every kernel's step divides it)


def defines() -> list[str]:
    """The ``-D`` options that give the kernels their tile constants."""
    return [f"-D{k}={v}" for k, v in (("TILE_O", TILE_O), ("BASE_SLOT", BASE_SLOT), ("ROW1_UNROLL", ROW1_UNROLL),
                                      ("ROW1_MAX_CHUNK", ROW1_MAX_CHUNK), ("SLAB_IN", SLAB_IN),
                                      ("SLAB_ROWS", SLAB_ROWS), ("LUT_FLOATS", LUT_FLOATS),
                                      ("LUT_STEP", LUT_STEP),
                                      ("ROW1_CLUSTER", ROW1_CLUSTER),
                                      ("TC_WARPS", THREADS // 32), ("TC_STEP", PACKED_TC_STEP),
                                      ("TC_STAGES", PACKED_TC_STAGES))]


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


def products(precision: str) -> int:
    """fp16 products a weight-basis product takes at ``precision`` (a key of :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def uses_slab(rows: int, p: int, slab_from: int | None = None) -> bool:
    """Whether ``rows`` rows at ``p`` products run as cuBLAS slabs: from ``slab_from`` rows where
    given, else from :data:`SLAB_FROM_ROWS` rows; one row never does."""
    return rows > 1 and rows >= (SLAB_FROM_ROWS[p] if slab_from is None else slab_from)


def fragment_bytes(rows: int, p: int) -> int:
    """Bytes of B fragments one input takes for ``rows`` rows (whole n-tiles of 8) at ``p`` products."""
    return _cdiv(rows, 8) * 256 * (2 if p == 3 else 1)


def bases_scratch(in_features, max_rows: int, p: int, slab_from: int | None = None,
                  budget: int = BASES_BYTES) -> int:
    """Bytes of the tensor-core kernels' B-fragment scratch for layers of ``in_features`` inputs at up
    to ``max_rows`` rows: 0 where no row count runs them (one row; every batch as slabs), else the
    widest layer's fragments for the most rows they run, bounded by ``budget`` (at least 8 inputs)."""
    top = min(max_rows, (SLAB_FROM_ROWS[p] if slab_from is None else slab_from) - 1)
    if top < 2:
        return 0
    per, budget = fragment_bytes(top, p), min(budget, 1 << 30)  # lutham_bases_p* indexes threads in int32
    need = max(in_features) * per
    return need if need <= budget else max(budget // per // _STEP, 1) * _STEP * per


def tc_slabs(rows: int, in_f: int, p: int, scratch: int) -> list[tuple[int, int]]:
    """``(first input, inputs)`` of the slabs one layer runs in for ``rows`` rows: as few as a
    ``scratch``-byte bases scratch allows, as equal as multiples of 8 inputs allow."""
    per = fragment_bytes(rows, p)
    if scratch // per >= in_f:
        return [(0, in_f)]
    fit = scratch // per // _STEP * _STEP
    if fit < _STEP:
        raise ValueError(f"{rows} rows need {per * _STEP:,} B of bases scratch for 8 inputs; it holds "
                         f"{scratch:,} B (plan the head for ≥ {rows} rows)")
    n = _cdiv(_cdiv(in_f, _cdiv(in_f, fit)), _STEP) * _STEP
    return [(i0, min(n, in_f - i0)) for i0 in range(0, in_f, n)]


def slab_slots(n_coef: int) -> int:
    """K slots an input takes in a slab: its coefficients and the base (SiLU) term, rounded up to even."""
    return (n_coef + 2) // 2 * 2


def slab_sections(p: int) -> tuple[int, int]:
    """fp16 sections of a slab's weights and of its bases at ``p`` products: hi (, lo) each. The
    products are GEMMs over pairs of them — hi·hi (1), + lo·hi (2), + hi·lo (3) — so no section
    is written twice."""
    return (1 if p == 1 else 2), (2 if p == 3 else 1)


def _slab_parts(n_pad: int, out_f: int, rows: int, p: int, n_coef: int) -> tuple[int, int]:
    """Bytes of a slab's weight operand (aligned) and bases operand for ``n_pad`` inputs."""
    k, (sw, sb) = n_pad * slab_slots(n_coef), slab_sections(p)
    return _cdiv(out_f * sw * k * 2, 256) * 256, rows * sb * k * 2


def slab_workspace(layers, max_rows: int, p: int, n_coef: int, budget: int = SLAB_BYTES) -> int:
    """Workspace bytes for the slabs of ``layers`` (``(in, out)`` pairs) at ``max_rows`` rows: a whole
    layer where that is under ``budget``, else ``budget`` (at least one 8-input slab)."""
    need = 0
    for in_f, out_f in layers:
        whole = sum(_slab_parts(_cdiv(in_f, _STEP) * _STEP, out_f, max_rows, p, n_coef))
        need = max(need, min(whole, max(budget, sum(_slab_parts(_STEP, out_f, max_rows, p, n_coef)) + 256)))
    return _cdiv(need, 256) * 256


def slab_launches(rows: int, in_f: int, out_f: int, p: int, n_coef: int, workspace: int):
    """One layer as slabs of inputs in ``workspace`` bytes: ``(first input, padded inputs, weight
    blocks, grid, bases offset)`` per slab, the slabs as equal as multiples of 8 inputs allow."""
    per = _slab_parts(_STEP, out_f, rows, p, n_coef)
    fit = max(1, (workspace - 256) // sum(per)) * _STEP
    slabs = _cdiv(in_f, min(fit, _cdiv(in_f, _STEP) * _STEP))
    n_pad = _cdiv(_cdiv(in_f, slabs), _STEP) * _STEP
    w_bytes, b_bytes = _slab_parts(n_pad, out_f, rows, p, n_coef)
    if w_bytes + b_bytes > workspace:
        raise ValueError(f"a slab of {n_pad} inputs × {rows} rows needs {w_bytes + b_bytes:,} B; "
                         f"the workspace holds {workspace:,} B (plan it for ≥ {rows} rows)")
    wblocks = _cdiv(out_f, TILE_O) * _cdiv(n_pad, SLAB_IN)
    grid = (wblocks + _cdiv(rows, SLAB_ROWS) * _cdiv(n_pad, SLAB_IN),)
    return [(i0, n_pad, wblocks, grid, w_bytes) for i0 in range(0, in_f, n_pad)]


def launches(rows: int, in_f: int, out_f: int, n_sm: int, p: int = 3):
    """The fused kernel launches of one layer (or one slab of ``in_f`` of its inputs) for ``rows``
    rows at ``p`` products: ``(kernel, first row, rows, chunk, grid, block)``."""
    if rows < 1:
        raise ValueError(f"rows must be ≥ 1, got {rows}")
    if p not in PRECISIONS.values():
        raise ValueError(f"products must be one of {sorted(PRECISIONS.values())}, got {p}")
    tiles = _cdiv(out_f, TILE_O)
    if rows == 1:
        warps = min(THREADS // 32, tiles)
        bx = _cdiv(tiles, warps)
        chunk = _splits(in_f, bx * warps, _WARPS_PER_SM * n_sm, ROW1_MAX_CHUNK)
        return [("lutham_row1", 0, 1, chunk, (bx, 1, _cdiv(in_f, chunk)), (warps * 32,))]
    warps = min(THREADS // 32, tiles)  # lutham_tc: a warp per output tile, each on its own
    bx = _cdiv(tiles, warps)
    suffix = f"p{p}"
    out, r0 = [], 0
    full = rows // (8 * TC_TILES[-1]) if rows > 8 * TC_TILES[-1] else 0
    parts = ([(TC_TILES[-1], full, full * 8 * TC_TILES[-1])] if full else [])
    if rows - full * 8 * TC_TILES[-1]:
        tail = rows - full * 8 * TC_TILES[-1]
        parts.append((_tiles_for(tail), 1, tail))
    for nt, by, r in parts:
        chunk = _splits(in_f, bx * by * warps, _TC_WARPS_PER_SM * n_sm)
        out.append((f"lutham_tc{nt}{suffix}", r0, r, chunk, (bx, by, _cdiv(in_f, chunk)), (warps * 32,)))
        r0 += r
    return out


def packed_launch(rows: int, in_f: int, out_f: int, n_sm: int) -> tuple[int, int, tuple[int, int, int], tuple[int]]:
    """``(rows a block, chunk, grid, block)`` of the ``packed_lut`` / ``packed_gather`` launch of one
    layer: a thread per group of 8 outputs (blockIdx.x), chunks of inputs (y: added into the output
    where there are several), blocks of 1, 4 or 8 rows (z)."""
    if rows < 1:
        raise ValueError(f"rows must be ≥ 1, got {rows}")
    nr = next(r for r in PACKED_NR if r >= rows) if rows <= PACKED_NR[-1] else PACKED_NR[-1]
    groups = _cdiv(out_f, 8)
    threads = min(THREADS, _cdiv(groups, 32) * 32)
    gx, gz = _cdiv(groups, threads), _cdiv(rows, nr)
    chunk = _splits(in_f, gx * gz * threads // 32, _PACKED_WARPS_PER_SM * n_sm)
    return nr, chunk, (gx, _cdiv(in_f, chunk), gz), (threads,)


def packed_tc_launch(rows: int, in_f: int, out_f: int, n_sm: int, ib: int, sb: int, p: int):
    """``(chunk, grid, block, shared bytes, wide)`` of the ``packed_tc`` launch of one layer at ``rows``
    rows and ``p`` products: 8 warps a block on consecutive 16-output tiles (x), chunks of inputs, a
    multiple of ``PACKED_TC_STEP``, over about ``_PACKED_TC_BLOCKS_PER_SM`` blocks an SM (y: partial
    rows for ``packed_sum`` where there are several), 64-row blocks (z). Shared memory: the cp.async
    ring (a phase's words of 16 groups of every plane and its inputs of 64 rows a stage), then two
    buffers of a phase's B fragments. ``wide``: every block's run of words is 16-byte aligned (16-byte
    copies; else 4-byte)."""
    if rows < 1:
        raise ValueError(f"rows must be ≥ 1, got {rows}")
    if p not in PRECISIONS.values():
        raise ValueError(f"products must be one of {sorted(PRECISIONS.values())}, got {p}")
    warps, groups = THREADS // 32, _cdiv(out_f, 8)
    gx, gz = _cdiv(_cdiv(out_f, TILE_O), warps), _cdiv(rows, 64)
    chunk = _splits(in_f, gx * gz, _PACKED_TC_BLOCKS_PER_SM * n_sm)
    stage = PACKED_TC_STEP * (2 * warps * (8 * ib + 3 * sb) + 64 * 4)
    smem = PACKED_TC_STAGES * stage + 2 * PACKED_TC_STEP * min(8, _cdiv(rows, 8)) * 32 * 8 * (2 if p == 3 else 1)
    wide = groups * sb % 16 == 0 and groups * 8 * ib % 16 == 0
    return chunk, (gx, _cdiv(in_f, chunk), gz), (THREADS,), smem, wide


def packed_tc_partials(layers, rows: int, n_sm: int, ib: int, sb: int, p: int) -> int:
    """Floats of the partial rows ``packed_tc`` writes for ``packed_sum`` at ``rows`` rows (chunks ×
    rows × outputs) for the layer (``(in, out)`` pairs) that needs the most; 0 where none is split."""
    need = 0
    for in_f, out_f in layers:
        grid = packed_tc_launch(rows, in_f, out_f, n_sm, ib, sb, p)[1]
        if grid[1] > 1:
            need = max(need, grid[1] * rows * out_f)
    return need


def _row1_steps(ib: int, sb: int) -> int:
    """Records a ``packed_row1`` thread holds a phase (the kernel's ``row1_steps``): about 16 words of
    index, gain and base weight (the bias is read on demand)."""
    words = 2 * ib + 2 * (sb // 4)
    return 1 if words >= 16 else 16 // words


def row1_gathers(out_f: int, k: int) -> bool:
    """Whether ``packed_row1`` gathers codebook windows for a layer of ``out_f`` outputs at ``K = k``
    rather than build lookup tables: where tables would not fit (``K > LUT_MAX_K``) or a table (``K``
    entries an input) would serve fewer edges (``out_f`` an input) than it has entries."""
    return k > LUT_MAX_K or out_f < k


def row1_launch(in_f: int, out_f: int, n_sm: int, k: int, ib: int, sb: int, cluster: int = 1):
    """``(chunk, us, grid, block, shared bytes, gather, cluster)`` of the ``packed_row1`` launch of one
    layer at one row: threads over the output groups (x, a power of two up to 256) by threads sharing
    out each phase's inputs (y, filling the block to 256 while a phase's tables fit ``LUT_FLOATS``),
    ``us`` inputs a thread a phase (fewer where the layer has too few inputs to give about
    ``_ROW1_BLOCKS_PER_SM`` blocks an SM), and chunks of inputs, a multiple of the phase, over about
    that many blocks. Tables span the codebook's padded width (``K`` rounded up to 32, as the arena
    holds it); ``gather`` (:func:`row1_gathers`) runs ``packed_row1_gather`` instead, with no tables.
    ``cluster`` (``ROW1_CLUSTER`` on sm_90, else 1): a table layer split into chunks runs
    ``packed_row1_lutc``, clusters of that many chunks (the grid's y rounded up to a multiple; the
    extra chunks are empty) whose sums are added before one partial row a cluster is written; the
    last element is the cluster size taken (1: none)."""
    gather = row1_gathers(out_f, k)
    groups, kp = _cdiv(out_f, 8), _cdiv(k, 32) * 32
    bx = min(THREADS, 1 << (groups - 1).bit_length())
    hy = max(1, THREADS // bx if gather else min(THREADS // bx, LUT_FLOATS // kp))
    gx = _cdiv(groups, bx)
    blocks = max(1, _ROW1_BLOCKS_PER_SM * n_sm // gx)
    us = max(1, min(_row1_steps(ib, sb), _cdiv(in_f, blocks * hy), *(() if gather else (LUT_FLOATS // (hy * kp),))))
    phase = us * hy
    chunk = _cdiv(_cdiv(in_f, blocks), phase) * phase
    smem = chunk * 40 + 16 * max(0 if gather else 2 * phase * kp // 4, 2 * bx * hy)
    chunks = _cdiv(in_f, chunk)
    cl = cluster if cluster > 1 and not gather and chunks > 1 else 1
    return chunk, us, (gx, _cdiv(chunks, cl) * cl, 1), (bx, hy), smem, gather, cl


def row1_partials(layers, n_sm: int, k: int, ib: int, sb: int, cluster: int = 1) -> int:
    """Floats of the partial sums ``packed_row1`` writes for ``packed_sum`` (partial rows × padded
    outputs: a row a chunk, or a cluster of chunks), for the layer (``(in, out)`` pairs) that needs the
    most; 0 where no layer writes more than one row."""
    need = 0
    for in_f, out_f in layers:
        launch = row1_launch(in_f, out_f, n_sm, k, ib, sb, cluster)
        grid, cl = launch[2], launch[6]
        if grid[1] > cl:
            need = max(need, grid[1] // cl * _cdiv(out_f, 8) * 8)
    return need
