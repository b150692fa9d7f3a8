"""Running a compressed head from packed planes (LUTHAM v3): the arena holds what storage keeps.

:class:`PackedHead` packs each layer of a :class:`~sharekan.vq_kan.VQKAN` as it was stored
(:func:`~sharekan.lutham.packed.pack_layer`: uint8 indices where K ≤ 256, int4/int8/fp16 side data
with the storage's per-output scales) into the planned arena (:func:`~sharekan.lutham.plan.plan_packed`)
and runs each layer below ``slab_from`` rows as: at one row ``packed_row1_*`` — per-input lookup
tables double-buffered in shared memory, or codebook windows gathered from L1/L2 where a layer has
fewer outputs than codewords or K > ``geometry.LUT_MAX_K`` (``geometry.row1_gathers``); a folded bias
term; where inputs are split over blocks each chunk (on sm_90 each cluster of ``ROW1_CLUSTER`` chunks,
``packed_row1_lutc``) writes partial sums that ``packed_sum`` adds in a fixed order; from 2 rows
``packed_tc_*`` — tensor cores, each edge's weights decoded from its words and codeword window
straight into A fragments, the rows' bases built a phase at a time in shared memory, the planes
streamed by cp.async; split inputs write partial rows for ``packed_sum`` — or, with
``few_rows="lut"``, ``packed_lut_*`` (the same tables for 1–8 rows a block) or ``packed_gather_*``
(K > ``LUT_MAX_K``), preceded by a memset of the output where inputs are split over blocks (fp32
atomics); from ``slab_from`` rows as slabs expanded from the planes by ``packed_slab_*`` and multiplied by cuBLAS
(fixed order: deterministic). The launches for a row count are one CUDA graph.
"""

from __future__ import annotations

import numpy as np
import torch

from .blas import Blas
from .compile import kernel_names, load_module
from .geometry import (BASE_SLOT, BLAS_BYTES, LUT_MAX_K, PACKED_SLAB_FROM, ROW1_CLUSTER, SLAB_BYTES, packed_launch,
                       packed_tc_launch, packed_tc_partials, products, row1_gathers, row1_launch, row1_partials,
                       slab_workspace)
from .l2 import persist
from .packed import SIDE_BYTES, codebook_major, pack_layer
from .plan import LayerSpec, plan_packed
from .runtime import ArenaHead, codebook_windows

__all__ = ["PackedHead", "packable", "ONE_ROW", "FEW_ROWS"]

ONE_ROW = ("row1", "lut")  # the one-row paths (PackedHead's one_row)
FEW_ROWS = ("tc", "lut")  # the paths from 2 rows to the slabs (PackedHead's few_rows)


def packable(model) -> str | None:
    """Why ``model`` cannot run from packed planes (``None``: it can)."""
    layers = list(model.layers)
    cb = layers[0].codebook
    if any(lay.codebook is not cb and not torch.equal(lay.codebook, cb) for lay in layers):
        return "LUTHAM runs heads with one shared codebook (scope='head')"
    widths = {getattr(lay, q + "_dtype") for lay in layers for q in ("gain", "bias", "base")}
    if len(widths) != 1 or not widths <= set(SIDE_BYTES):
        return (f"packed records hold gain, bias and base weight at one width of {sorted(SIDE_BYTES)}; "
                f"this head stores {sorted(widths)}")
    return None


class PackedHead(ArenaHead):
    """A VQ-compressed KAN head in one GPU arena of packed planes, for batches of up to ``max_rows``
    rows. ``precision`` and ``slab_bytes`` are the slab path's (as :class:`~sharekan.lutham.runtime.LuthamHead`);
    ``slab_from`` the row count from which it is taken (``None``: ``geometry.PACKED_SLAB_FROM``);
    ``one_row`` the one-row path: ``"row1"`` (``packed_row1`` a layer) or ``"lut"`` (``packed_lut`` at
    one row, for comparison).
    ``few_rows`` the path from 2 rows up to the slabs: ``"tc"`` (``packed_tc``, tensor cores, where the
    codewords leave slot ``BASE_SLOT`` free) or ``"lut"`` (``packed_lut`` / ``packed_gather``)."""

    def __init__(self, model, max_rows: int, persist_l2: bool = True, use_graphs: bool = True,
                 precision: str = "high", slab_from: int | None = None, slab_bytes: int = SLAB_BYTES,
                 module=None, one_row: str = "row1", few_rows: str = "tc"):
        why = packable(model)
        if why:
            raise ValueError(why)
        if one_row not in ONE_ROW:
            raise ValueError(f"one_row must be one of {ONE_ROW}, got {one_row!r}")
        if few_rows not in FEW_ROWS:
            raise ValueError(f"few_rows must be one of {FEW_ROWS}, got {few_rows!r}")
        self.one_row = one_row
        layers = list(model.layers)
        cb = layers[0].codebook
        self.packed = [pack_layer(lay) for lay in layers]
        self.k, self.side_dtype = cb.shape[0], self.packed[0].side_dtype
        # the kernels' names: index bytes, and side bits (= the bytes a group of 8 outputs takes)
        self.ib, self.sb = (1 if self.k <= 256 else 2), SIDE_BYTES[self.side_dtype]
        shapes = [(lay.in_features, lay.out_features) for lay in layers]
        import cupy as cp

        device = cp.cuda.Device()
        self.arch = f"sm_{device.compute_capability}"
        capability = divmod(int(device.compute_capability), 10)
        self.cluster = ROW1_CLUSTER if capability >= (9, 0) else 1  # packed_row1's split table layers
        self.precision, self.products = precision, products(precision)
        self.slab_from = max(2, PACKED_SLAB_FROM if slab_from is None else slab_from)
        # 2 rows up to the slabs on tensor cores (the aligned codebook windows as A values); the largest such count
        self.tc = few_rows == "tc" and layers[0].n_coef <= BASE_SLOT and max_rows >= 2 and self.slab_from > 2
        tc_rows = min(max_rows, self.slab_from - 1) if self.tc else 0
        # codebook windows in the arena: for gathers (K too large for tables, one-row layers narrower than
        # K) and the tensor cores' A values
        self.windows = self.k > LUT_MAX_K or self.tc or (one_row != "lut" and
                                                         any(row1_gathers(o, self.k) for _, o in shapes))
        specs = [LayerSpec(lay.in_features, lay.out_features, lay.grid.shape[1]) for lay in layers]
        workspace = 0
        if max_rows >= self.slab_from:
            workspace = BLAS_BYTES + slab_workspace([(s.in_features, s.out_features) for s in specs], max_rows,
                                                    self.products, layers[0].n_coef, slab_bytes)
        sms = device.attributes["MultiProcessorCount"]
        partials = (row1_partials(shapes, sms, self.k, self.ib, self.sb, self.cluster)
                    if one_row != "lut" else 0)
        for rows in sorted({tc_rows, *range(64, tc_rows, 64)} - {0}):  # the most rows of each 64-row band (its chunks)
            partials = max(partials, packed_tc_partials(shapes, rows, sms, self.ib, self.sb, self.products))
        self._allocate(plan_packed(specs, self.k, SIDE_BYTES[self.side_dtype], max_rows, self.windows, workspace,
                                   partials), use_graphs)
        self._put("codebook", codebook_major(cb))
        if self.windows:
            self._put("windows", codebook_windows(cb.detach().float().cpu().numpy(), layers[0].n_coef))
        for n, p in enumerate(self.packed):
            self._put(f"L{n}.t0", p.t0)
            self._put(f"L{n}.h", p.h)
            self._put(f"L{n}.scales", p.scales)
            for q, plane in p.planes().items():
                self._put(f"L{n}.{q}", plane.view(np.uint8).reshape(p.in_features, -1))
        self.module = module or load_module("packed")
        self.kernels = {k: self.module.get_function(k) for k in kernel_names("packed", self.arch)}
        if workspace:
            ws = self.view("workspace")
            self._blas = Blas(self.stream.ptr, ws.data.ptr + ws.nbytes - BLAS_BYTES, BLAS_BYTES)
        if persist_l2:
            self.plan.l2_persisting = persist(self.arena, self.plan.hot_bytes(), self.plan.total, self.stream)

    def _launch(self, rows: int) -> None:
        import cupy as cp

        cb = self.view("codebook")
        cbw = self.view("windows") if self.windows else cb
        for n, lay in enumerate(self.plan.layers):
            xin, yout = self.view(f"act{n}"), self.view(f"act{n + 1}")
            i_f, o_f, groups = lay.in_features, lay.out_features, self.packed[n].groups
            knots = (self.view(f"L{n}.t0"), self.view(f"L{n}.h"), np.int32(lay.n_knots), np.int32(self.plan.n_coef))
            planes = tuple(self.view(f"L{n}.{q}") for q in ("idx", "gain", "bias", "base"))
            scales, widths = self.view(f"L{n}.scales"), f"i{self.ib}_s{self.sb}"
            if rows >= self.slab_from:
                self._slabs(rows, lay, self.kernels[f"packed_slab_{widths}_p{self.products}"], yout,
                            (xin, np.int32(rows), np.int32(i_f), np.int32(o_f), np.int32(groups)),
                            (*knots, cb, np.int32(cb.shape[1]), *planes, scales))
                continue
            if rows == 1 and self.one_row != "lut":
                chunk, us, grid, block, smem, gather, cl = row1_launch(i_f, o_f, self._sms, self.k, self.ib, self.sb,
                                                                       self.cluster)
                part = self.view("partials") if grid[1] > cl else yout
                kernel = self.kernels[f"packed_row1_{'gather' if gather else 'lutc' if cl > 1 else 'lut'}_{widths}"]
                if smem > 48 << 10:
                    kernel.max_dynamic_shared_size_bytes = smem
                kernel(grid, block, (xin, np.int32(i_f), np.int32(o_f), np.int32(groups), np.int32(chunk), np.int32(us),
                                     *knots, cb, np.int32(cb.shape[1]), cbw, np.int32(cbw.shape[1] if gather else 0),
                                     *planes, scales, yout, part), shared_mem=smem)
                if grid[1] > cl:  # the chunks' (or clusters') partial sums, added in a fixed order
                    self.kernels["packed_sum"]((-(-o_f // 32),), (32, 32), (part, np.int32(grid[1] // cl),
                                                                         np.int32(groups * 8), np.int32(o_f), yout))
                continue
            if self.tc:
                chunk, grid, block, smem, wide = packed_tc_launch(rows, i_f, o_f, self._sms, self.ib, self.sb,
                                                                  self.products)
                kernel = self.kernels[f"packed_tc_{widths}_p{self.products}"]
                if smem > 48 << 10:
                    kernel.max_dynamic_shared_size_bytes = smem
                part = self.view("partials") if grid[1] > 1 else yout
                kernel(grid, block, (xin, np.int32(rows), np.int32(i_f), np.int32(o_f), np.int32(groups),
                                     np.int32(chunk), np.int32(wide), *knots, cbw, np.int32(cbw.shape[1]), *planes,
                                     scales, part), shared_mem=smem)
                if grid[1] > 1:  # the chunks' partial rows, added in a fixed order
                    n_out = rows * o_f
                    self.kernels["packed_sum"]((-(-n_out // 32),), (32, 32), (part, np.int32(grid[1]), np.int32(n_out),
                                                                           np.int32(n_out), yout))
                continue
            nr, chunk, grid, block = packed_launch(rows, i_f, o_f, self._sms)
            if grid[1] > 1:  # split inputs add into the output
                cp.cuda.runtime.memsetAsync(yout.data.ptr, 0, rows * o_f * 4, self.stream.ptr)
            mode = "gather" if self.k > LUT_MAX_K else "lut"
            self.kernels[f"packed_{mode}_{widths}_r{nr}"](
                grid, block, (xin, np.int32(rows), np.int32(i_f), np.int32(o_f), np.int32(groups), np.int32(chunk),
                              *knots, cb, np.int32(self.k), np.int32(cb.shape[1]), cbw,
                              np.int32(cbw.shape[1] if self.windows else 0), *planes, scales, yout))
