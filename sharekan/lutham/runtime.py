"""Running a compressed head with LUTHAM: the arena on the GPU, kernels launched from it.

:class:`LuthamHead` copies a :class:`~sharekan.vq_kan.VQKAN` (one shared codebook) into the
planned arena once — codebook rows padded to 16-byte-aligned ``plan.codebook_width`` floats,
indices as uint16, gains, biases and base weights as fp16 — and runs each layer as
``lutham_prep`` then ``lutham_gather`` (< 16 rows) or ``lutham_mma`` (≥ 16 rows), both splitting
the inputs so small layers fill the GPU (launch sizes from ``geometry``); the launches for a row
count are captured once as a CUDA graph and replayed. Where the CUDA runtime allows, an L2
persisting access-policy window (``l2``) covers the arena's hot prefix (codebook first); the plan
records whether it was set.
"""

from __future__ import annotations

import numpy as np
import torch

from .compile import KERNELS, load_module
from .geometry import MMA_MIN_ROWS, gather_launches, mma_launch, prep_launch
from .l2 import persist
from .plan import LayerSpec, Plan, codebook_width, plan_arena

__all__ = ["LuthamHead"]


class LuthamHead:
    """A VQ-compressed KAN head in one GPU arena, for batches of up to ``max_rows`` rows."""

    def __init__(self, model, max_rows: int, persist_l2: bool = True, use_graphs: bool = True,
                 mma_min_rows: int = MMA_MIN_ROWS, module=None):
        import cupy as cp

        layers = list(model.layers)
        cb = layers[0].codebook
        if any(lay.codebook is not cb and not torch.equal(lay.codebook, cb) for lay in layers):
            raise ValueError("LUTHAM runs heads with one shared codebook (scope='head')")
        self.plan: Plan = plan_arena([LayerSpec(lay.in_features, lay.out_features, lay.grid.shape[1])
                                      for lay in layers], cb.shape[0], max_rows)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.arena = cp.zeros(self.plan.total, dtype=cp.uint8)
        n_coef = self.plan.n_coef
        self._put("codebook", np.pad(cb.detach().float().cpu().numpy(),
                                     ((0, 0), (3, codebook_width(n_coef) - n_coef - 3))))
        for n, lay in enumerate(layers):
            grid = lay.grid.detach().float().cpu()
            self._put(f"L{n}.grid", grid.numpy())
            self._put(f"L{n}.t0", grid[:, 0].numpy())
            self._put(f"L{n}.h", ((grid[:, -1] - grid[:, 0]) / (grid.shape[1] - 1)).numpy())
            self._put(f"L{n}.indices", lay.indices.cpu().numpy().astype(np.uint16))
            scales = []
            for name, q in (("gains", "gain"), ("biases", "bias"), ("base", "base")):
                data, scale = lay.stored_values(q), getattr(lay, q + "_scale")  # int8/int4 rows keep their scale
                self._put(f"L{n}.{name}", data.detach().cpu().numpy().astype(np.float16))
                scales.append(np.ones(lay.out_features, np.float32) if scale is None
                              else scale.detach().float().cpu().numpy().reshape(-1))
            self._put(f"L{n}.scales", np.stack(scales))
        assert n_coef == layers[0].n_coef
        self.module = module or load_module()
        self.kernels = {k: self.module.get_function(k) for k in KERNELS}
        self._sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        self._graphs: dict[int, object] = {}
        self.use_graphs = use_graphs
        self.mma_min_rows = mma_min_rows
        if persist_l2:
            self.plan.l2_persisting = persist(self.arena, self.plan.hot_bytes(), self.plan.total, self.stream)

    def view(self, name: str):
        import cupy as cp

        b = self.plan.block(name)
        return self.arena[b.offset:b.offset + b.nbytes].view(cp.dtype(b.dtype)).reshape(b.shape)

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
        (a view of the arena's last activation buffer, valid until the next call)."""
        import cupy as cp

        rows = int(x.shape[0])
        if not 1 <= rows <= self.plan.max_rows:
            raise ValueError(f"LUTHAM arena was planned for ≤ {self.plan.max_rows} rows, got {rows}")
        layers = self.plan.layers
        if x.shape[1] != layers[0].in_features:
            raise ValueError(f"head expects {layers[0].in_features} inputs, got {x.shape[1]}")
        with self.stream:  # kernels launch on the current stream
            self.view("act0")[:rows] = cp.asarray(x, dtype=cp.float32)
            graph = self._graphs.get(rows)
            if graph is None and self.use_graphs:
                try:  # the launches for this row count, captured once and replayed (one launch per call)
                    self.stream.begin_capture()
                    self._launch(rows)
                    graph = self._graphs[rows] = self.stream.end_capture()
                except Exception:
                    self.use_graphs = False
                    if self.stream.is_capturing():
                        self.stream.end_capture()
            if graph is not None:
                graph.launch(self.stream)
            else:
                self._launch(rows)
        return self.view(f"act{len(layers)}")[:rows]

    __call__ = forward

    def _launch(self, rows: int) -> None:
        prep, cb = self.view("prep"), self.view("codebook")
        width = np.int32(cb.shape[1])
        for n, lay in enumerate(self.plan.layers):
            xin, yout = self.view(f"act{n}"), self.view(f"act{n + 1}")
            i_f, o_f = lay.in_features, lay.out_features
            self.kernels["lutham_prep"](*prep_launch(rows, i_f, o_f), (
                xin, np.int32(rows), np.int32(i_f), self.view(f"L{n}.grid"), self.view(f"L{n}.t0"),
                self.view(f"L{n}.h"), np.int32(lay.n_knots), np.int32(self.plan.n_coef), prep, yout, np.int32(o_f)))
            edge = (self.view(f"L{n}.indices"), self.view(f"L{n}.gains"), self.view(f"L{n}.biases"),
                    self.view(f"L{n}.base"), self.view(f"L{n}.scales"))
            if rows < self.mma_min_rows:
                for kernel, r0, r, chunk, grid, block in gather_launches(rows, i_f, o_f, self._sms):
                    self.kernels[kernel](grid, block, (prep[r0:], np.int32(r), np.int32(i_f), np.int32(o_f),
                                                       np.int32(chunk), cb, width, *edge, yout[r0:]))
            else:
                chunk, grid, block = mma_launch(rows, i_f, o_f, self._sms)
                self.kernels["lutham_mma"](grid, block, (
                    prep, np.int32(rows), np.int32(i_f), np.int32(o_f), np.int32(chunk), cb, width,
                    np.int32(self.plan.n_coef), *edge, yout))
