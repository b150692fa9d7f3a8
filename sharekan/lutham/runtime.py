"""Running a compressed head with LUTHAM: the arena on the GPU, kernels launched from it.

:class:`LuthamHead` copies a :class:`~sharekan.vq_kan.VQKAN` (one shared codebook, uniform knots)
into the planned arena once — the codebook as float32 4-coefficient windows, each edge as one 8-byte
record (uint16 index, fp16 gain, bias and base weight) in 16-output tiles, per-output scales — and
runs each layer as one kernel for one row (``lutham_row1``), as ``lutham_bases_p*`` (the rows' B
fragments, into a bounded scratch) then ``lutham_tc*`` on tensor cores per slab of inputs for more
(launch sizes from ``geometry``), preceded by a memset of the layer's output where the inputs are
split across blocks or slabs (fp32 atomics: the only nondeterministic sums), or — from
``geometry.SLAB_FROM_ROWS`` rows — as slabs of inputs, each expanded into the arena's fp16
workspace by ``lutham_slab_p*`` and multiplied by cuBLAS GEMMs over its hi/lo sections (fp32
accumulate, each added into the output by the GEMM's beta in a fixed order: deterministic). The
launches for a row count are captured once as a CUDA graph and replayed. Where the CUDA runtime
allows, an L2 persisting access-policy window (``l2``) covers as much of the arena's start as the
device's persisting limit holds (codebook, constants, then edge records); the plan records what was
set.
"""

from __future__ import annotations

import numpy as np
import torch

from ..bspline import compact_grid
from .blas import Blas
from .compile import load_module
from .geometry import (BASES_BYTES, BLAS_BYTES, KERNELS, SLAB_BYTES, TILE_O, bases_scratch, fragment_bytes,
                       launches, products, slab_launches, slab_sections, slab_slots, slab_workspace, tc_slabs,
                       uses_slab)
from .l2 import persist
from .plan import LayerSpec, Plan, n_windows, plan_arena, window_slot

__all__ = ["LuthamHead"]


def codebook_windows(cb: np.ndarray, n_coef: int) -> np.ndarray:
    """``[K, n_windows, 4]`` float32: window ``p`` (coefficients ``p-3 … p``, zero outside the codeword)
    at :func:`~sharekan.lutham.plan.window_slot` ``(p)``."""
    k = cb.shape[0]
    padded = np.zeros((k, 3 + n_windows(n_coef) + 1), np.float32)
    padded[:, 3:3 + n_coef] = cb
    out = np.zeros((k, n_windows(n_coef), 4), np.float32)
    for p in range(n_windows(n_coef)):
        out[:, window_slot(p)] = padded[:, p:p + 4]
    return out


def edge_records(indices: np.ndarray, gain: np.ndarray, bias: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``[tiles, in, 16, 4]`` uint16 records {index, gain, bias, base} (fp16 bits) from ``[out, in]``
    arrays; outputs padded to whole tiles with zero records."""
    out_f, in_f = indices.shape
    tiles = -(-out_f // TILE_O)
    rec = np.zeros((tiles * TILE_O, in_f, 4), np.uint16)
    rec[:out_f, :, 0] = indices
    for j, a in enumerate((gain, bias, base), start=1):
        rec[:out_f, :, j] = a.astype(np.float16).view(np.uint16)
    return np.ascontiguousarray(rec.reshape(tiles, TILE_O, in_f, 4).transpose(0, 2, 1, 3))


class ArenaHead:
    """What every LUTHAM head shares: the planned arena on its own stream, its blocks as views, one
    host copy and one CUDA graph launch a call (``_launch(rows)`` is the format's kernels)."""

    plan: Plan

    def _allocate(self, plan: Plan, use_graphs: bool) -> None:
        import cupy as cp

        self.plan = plan
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.arena = cp.zeros(plan.total, dtype=cp.uint8)
        self._views = {b.name: self.arena[b.offset:b.offset + b.nbytes].view(cp.dtype(b.dtype)).reshape(b.shape)
                       for b in plan.blocks}
        self._outputs: dict[int, object] = {}
        self._sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        self._graphs: dict[int, object] = {}
        self.use_graphs, self.graph_error = use_graphs, None
        self._blas = None

    def view(self, name: str):
        """The arena block ``name`` as a CuPy array of its planned shape and dtype."""
        return self._views[name]

    def _put(self, name: str, array: np.ndarray) -> None:
        view = self.view(name)
        if view.shape != array.shape:
            raise ValueError(f"arena block {name} has shape {view.shape}, got {array.shape}")
        view.set(np.ascontiguousarray(array, dtype=view.dtype))

    def run_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Any number of rows (in chunks of ``max_rows``), torch in and out, on the input's device."""
        import cupy as cp

        torch.cuda.current_stream().synchronize()
        out = torch.empty(x.shape[0], self.plan.layers[-1].out_features, device=x.device)
        for r0 in range(0, x.shape[0], self.plan.max_rows):
            chunk = x[r0:r0 + self.plan.max_rows].contiguous().float()
            y = self.forward(chunk)
            self.stream.synchronize()
            out[r0:r0 + chunk.shape[0]] = torch.as_tensor(cp.ascontiguousarray(y), device=x.device)
        return out

    def forward(self, x):
        """``x [rows, in]`` (a CUDA torch tensor or CuPy array) → a CuPy ``[rows, out]`` float32 array
        (a view of the arena's last activation buffer, valid until the next call). The host work is
        one copy into the arena and one graph launch: the call is short at small batches."""
        import cupy as cp

        rows, layers = int(x.shape[0]), self.plan.layers
        if not 1 <= rows <= self.plan.max_rows:
            raise ValueError(f"LUTHAM arena was planned for ≤ {self.plan.max_rows} rows, got {rows}")
        if x.ndim != 2 or x.shape[1] != layers[0].in_features:
            raise ValueError(f"head expects [rows, {layers[0].in_features}] inputs, got shape {tuple(x.shape)}")
        act0 = self._views["act0"]
        if isinstance(x, torch.Tensor) and x.is_cuda and x.dtype == torch.float32 and x.is_contiguous():
            src = x.data_ptr()
        elif isinstance(x, cp.ndarray) and x.dtype == cp.float32 and x.flags.c_contiguous:
            src = x.data.ptr
        else:
            src = None
        if src is not None:  # device to device, no kernel
            cp.cuda.runtime.memcpyAsync(act0.data.ptr, src, rows * layers[0].in_features * 4, 3, self.stream.ptr)
        else:
            with self.stream:
                act0[:rows] = cp.asarray(x, dtype=cp.float32)
        graph = self._graphs.get(rows)
        if graph is None and self.use_graphs:
            try:  # the launches for this row count, captured once and replayed (one launch per call)
                self.stream.begin_capture()
                with self.stream:
                    self._launch(rows)
                graph = self._graphs[rows] = self.stream.end_capture()
            except Exception as e:  # run without graphs from now on, and say why
                self.use_graphs, self.graph_error = False, f"{type(e).__name__}: {e}"
                if self.stream.is_capturing():
                    self.stream.end_capture()
        if graph is not None:
            graph.launch(self.stream)
        else:
            with self.stream:
                self._launch(rows)
        out = self._outputs.get(rows)
        if out is None:
            out = self._outputs[rows] = self._views[f"act{len(layers)}"][:rows]
        return out

    __call__ = forward

    def _slabs(self, rows: int, lay: LayerSpec, kernel, yout, before: tuple, after: tuple) -> None:
        """One layer as slabs of inputs: each expanded into the workspace by ``kernel(*before, i0,
        n_pad, slots, *after, W, Bm, wblocks)``, then y (+)= bases · weightsᵀ over its pairs of hi/lo
        sections (``geometry.slab_sections``), in a fixed order."""
        p, n_coef, ws = self.products, self.plan.n_coef, self.view("workspace")[:-BLAS_BYTES]
        i_f, o_f, slots = lay.in_features, lay.out_features, slab_slots(n_coef)
        sw, sb = slab_sections(p)
        pairs = ((0, 0), (0, 1), (1, 0))[:p]  # (bases section, weights section): hi·hi, hi·lo (, lo·hi)
        for k, (i0, n_pad, wblocks, grid, b_off) in enumerate(slab_launches(rows, i_f, o_f, p, n_coef, ws.nbytes)):
            w, b, sec = ws[:b_off], ws[b_off:], n_pad * slots
            kernel(grid, (256,), (*before, np.int32(i0), np.int32(n_pad), np.int32(slots), *after, w, b,
                                  np.int32(wblocks)))
            for j, (bs, wsec) in enumerate(pairs):
                self._blas.gemm_nt(rows, o_f, sec, b.data.ptr + 2 * bs * sec, w.data.ptr + 2 * wsec * sec,
                                   yout.data.ptr, k > 0 or j > 0, lda=sb * sec, ldb=sw * sec)


class LuthamHead(ArenaHead):
    """A VQ-compressed KAN head in one GPU arena, for batches of up to ``max_rows`` rows.

    ``precision`` (a key of ``geometry.PRECISIONS``) sets the tensor-core operands: ``"high"``
    (default) weights and bases as fp16 hi + lo parts (near fp32), ``"medium"`` single fp16 bases,
    ``"low"`` fp16 weights and bases (a dense fp16 head's rounding). ``slab_from`` overrides the
    row count from which layers run as cuBLAS slabs (``None``: ``geometry.SLAB_FROM_ROWS``),
    ``slab_bytes`` bounds their workspace, and ``bases_bytes`` the tensor-core kernels' B-fragment
    scratch (at least 8 inputs' worth)."""

    def __init__(self, model, max_rows: int, persist_l2: bool = True, use_graphs: bool = True,
                 precision: str = "high", slab_from: int | None = None, slab_bytes: int = SLAB_BYTES,
                 bases_bytes: int = BASES_BYTES, module=None):
        import cupy as cp

        layers = list(model.layers)
        cb = layers[0].codebook
        if any(lay.codebook is not cb and not torch.equal(lay.codebook, cb) for lay in layers):
            raise ValueError("LUTHAM runs heads with one shared codebook (scope='head')")
        self.precision, self.products, self.slab_from = precision, products(precision), slab_from
        n_coef = layers[0].n_coef
        workspace = 0
        if uses_slab(max_rows, self.products, slab_from):
            workspace = BLAS_BYTES + slab_workspace([(lay.in_features, lay.out_features) for lay in layers], max_rows,
                                                    self.products, n_coef, slab_bytes)
        bases = bases_scratch([lay.in_features for lay in layers], max_rows, self.products, slab_from, bases_bytes)
        shared = 0
        if workspace and bases:  # a call runs slabs or tensor cores: the B fragments use the workspace's start
            workspace, shared, bases = max(workspace, bases + BLAS_BYTES), bases, 0
        plan = plan_arena([LayerSpec(lay.in_features, lay.out_features, lay.grid.shape[1])
                                      for lay in layers], cb.shape[0], max_rows, workspace, bases)
        self._allocate(plan, use_graphs)
        self._put("codebook", codebook_windows(cb.detach().float().cpu().numpy(), n_coef))
        for n, lay in enumerate(layers):
            grid = lay.grid.detach().float().cpu()
            pair = compact_grid(grid)
            if pair is None:
                raise ValueError(f"layer {n}: LUTHAM needs uniform knots per input (lo + j·h); this grid is not")
            self._put(f"L{n}.t0", grid[:, 0].numpy())
            self._put(f"L{n}.h", pair[1].expand(lay.in_features).numpy())
            vals, scales = [], []
            for q in ("gain", "bias", "base"):
                data, scale = lay.stored_values(q), getattr(lay, q + "_scale")  # int8/int4 rows keep their scale
                vals.append(data.detach().float().cpu().numpy())
                scales.append(np.ones(lay.out_features, np.float32) if scale is None
                              else scale.detach().float().cpu().numpy().reshape(-1))
            self._put(f"L{n}.edges", edge_records(lay.indices.cpu().numpy().astype(np.uint16), *vals))
            self._put(f"L{n}.scales", np.stack(scales))
        self.module = module or load_module()
        self.kernels = {k: self.module.get_function(k) for k in KERNELS}
        self._frags = self.view("bases") if bases else None
        if workspace:
            ws = self.view("workspace")
            self._blas = Blas(self.stream.ptr, ws.data.ptr + ws.nbytes - BLAS_BYTES, BLAS_BYTES)
            if shared:
                self._frags = ws[:shared].view(cp.uint32)
        if persist_l2:
            self.plan.l2_persisting = persist(self.arena, self.plan.hot_bytes(), self.plan.total, self.stream)

    def _launch(self, rows: int) -> None:
        import cupy as cp

        cb = self.view("codebook")
        nwin = np.int32(cb.shape[1])
        for n, lay in enumerate(self.plan.layers):
            xin, yout = self.view(f"act{n}"), self.view(f"act{n + 1}")
            i_f, o_f = lay.in_features, lay.out_features
            knots = (self.view(f"L{n}.t0"), self.view(f"L{n}.h"), np.int32(lay.n_knots), np.int32(self.plan.n_coef))
            arrays = (cb, nwin, self.view(f"L{n}.edges"), self.view(f"L{n}.scales"))
            if uses_slab(rows, self.products, self.slab_from):
                self._slabs(rows, lay, self.kernels[f"lutham_slab_p{self.products}"], yout,
                            (xin, np.int32(rows), np.int32(i_f), np.int32(o_f)), (*knots, *arrays))
            elif rows == 1:
                (kernel, _, _, chunk, grid, block), = launches(1, i_f, o_f, self._sms)
                if grid[2] > 1:  # split inputs add into the output
                    cp.cuda.runtime.memsetAsync(yout.data.ptr, 0, o_f * 4, self.stream.ptr)
                self.kernels[kernel](grid, block, (xin, np.int32(i_f), np.int32(o_f), np.int32(chunk), *knots, *arrays,
                                                   yout))
            else:
                self._fused(rows, lay, xin, yout, knots, arrays)

    def _fused(self, rows: int, lay: LayerSpec, xin, yout, knots, arrays) -> None:
        """One layer on tensor cores: per slab of inputs, its rows' B fragments into the scratch, then
        the MMAs (added into the output where the inputs are split over slabs or blocks)."""
        import cupy as cp

        p, i_f, o_f = self.products, lay.in_features, lay.out_features
        frags, n_nt, words = self._frags, -(-rows // 8), fragment_bytes(8, p) // 4  # uint32 an n-tile
        slabs = tc_slabs(rows, i_f, p, frags.nbytes)
        plans = [launches(rows, n, o_f, self._sms, p) for _, n in slabs]
        atomic = len(slabs) > 1 or any(grid[2] > 1 for plan in plans for *_, grid, _ in plan)
        if atomic:
            cp.cuda.runtime.memsetAsync(yout.data.ptr, 0, rows * o_f * 4, self.stream.ptr)
        cb, nwin, edges, scales = arrays
        for (i0, n), plan in zip(slabs, plans):
            self.kernels[f"lutham_bases_p{p}"]((-(-n * n_nt * 32 // 256),), (256,),
                                               (xin, np.int32(rows), np.int32(i_f), np.int32(i0), np.int32(n),
                                                np.int32(n_nt), *knots, frags))
            for kernel, r0, r, chunk, grid, block in plan:
                self.kernels[kernel](grid, block, (frags[r0 // 8 * words:], np.int32(n_nt), np.int32(r), np.int32(i_f),
                                                   np.int32(o_f), np.int32(i0), np.int32(n), np.int32(chunk), cb,
                                                   nwin, edges, scales, yout[r0:], np.int32(atomic)))

