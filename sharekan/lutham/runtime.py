"""Running a compressed head with LUTHAM: the arena on the GPU, kernels launched from it.

:class:`LuthamHead` copies a :class:`~sharekan.vq_kan.VQKAN` (one shared codebook) into the
planned arena once — codebook rows padded to 16-byte-aligned ``plan.codebook_width`` floats,
indices as uint16, gains, biases and base weights as fp16 — and runs each layer as
``lutham_prep`` then ``lutham_gather`` (< 16 rows) or ``lutham_mma`` (≥ 16 rows), both splitting
the inputs so small layers fill the GPU; the launches for a row count are captured once as a
CUDA graph and replayed. Where the CUDA runtime allows, an L2 persisting access-policy window
covers the arena's hot prefix (codebook first); the plan records whether it was set.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from .compile import KERNELS, load_module
from .plan import LayerSpec, Plan, codebook_width, plan_arena

__all__ = ["LuthamHead", "MMA_MIN_ROWS"]

MMA_MIN_ROWS = 16  # from here on the tensor-core path reuses decoded weights across rows
_GATHER_ROWS = 16  # rows per gather launch (its register accumulators)


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
                data, scale = getattr(lay, q), getattr(lay, q + "_scale")  # int8 rows keep their scale
                self._put(f"L{n}.{name}", data.detach().float().cpu().numpy().astype(np.float16))
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
            self.plan.l2_persisting = _persist(self.arena, self.plan.hot_bytes(), self.plan.total, self.stream)

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
        n_sm = self._sms
        for n, lay in enumerate(self.plan.layers):
            xin, yout = self.view(f"act{n}"), self.view(f"act{n + 1}")
            i_f, o_f = lay.in_features, lay.out_features
            total = rows * max(i_f, o_f)
            self.kernels["lutham_prep"]((-(-total // 256),), (256,), (
                xin, np.int32(rows), np.int32(i_f), self.view(f"L{n}.grid"), self.view(f"L{n}.t0"),
                self.view(f"L{n}.h"), np.int32(lay.n_knots), np.int32(self.plan.n_coef), prep, yout, np.int32(o_f)))
            edge = (self.view(f"L{n}.indices"), self.view(f"L{n}.gains"), self.view(f"L{n}.biases"),
                    self.view(f"L{n}.base"), self.view(f"L{n}.scales"))
            if rows < self.mma_min_rows:
                splits = max(1, min(-(-64 * n_sm // o_f), i_f // 128))      # ~64 warps per SM in all
                chunk = -(-(-(-i_f // splits)) // 128) * 128
                splits = -(-i_f // chunk)
                for r0 in range(0, rows, _GATHER_ROWS):
                    r = min(_GATHER_ROWS, rows - r0)
                    self.kernels[f"lutham_gather{1 if r == 1 else 4 if r <= 4 else 16}"]((-(-o_f * splits * 32 // 256),), (256,), (
                        prep[r0:], np.int32(r), np.int32(i_f), np.int32(o_f), np.int32(chunk), cb, width, *edge,
                        yout[r0:]))
            else:
                tiles = -(-o_f // 64) * -(-rows // 64)
                splits = max(1, min(-(-2 * n_sm // tiles), i_f // 64))      # ~2 blocks per SM in all
                chunk = -(-(-(-i_f // splits)) // 8) * 8
                splits = -(-i_f // chunk)
                self.kernels["lutham_mma"]((-(-o_f // 64), -(-rows // 64), splits), (128,), (
                    prep, np.int32(rows), np.int32(i_f), np.int32(o_f), np.int32(chunk), cb, width,
                    np.int32(self.plan.n_coef), *edge, yout))


class _Window(ctypes.Structure):
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hitRatio", ctypes.c_float),
                ("hitProp", ctypes.c_int), ("missProp", ctypes.c_int)]


class _AttrValue(ctypes.Union):
    _fields_ = [("accessPolicyWindow", _Window), ("pad", ctypes.c_char * 64)]


def _cudart():
    with open("/proc/self/maps") as f:  # the runtime CuPy already loaded, so handles agree
        paths = {line.split()[-1] for line in f if "libcudart.so" in line}
    if not paths:
        raise OSError("libcudart is not loaded")
    return ctypes.CDLL(sorted(paths)[0])


def _persist(arena, hot: int, total: int, stream) -> str:
    """Ask for an L2 persisting window over the arena's prefix; says what was set, or why not."""
    import cupy as cp

    try:
        dev = cp.cuda.Device().id
        rt = cp.cuda.runtime
        max_window = rt.deviceGetAttribute(109, dev)   # cudaDevAttrMaxAccessPolicyWindowSize
        max_persist = rt.deviceGetAttribute(108, dev)  # cudaDevAttrMaxPersistingL2CacheSize
        if max_window <= 0 or max_persist <= 0:
            return "not set: device has no persisting L2"
        window = min(total, max_window)
        rt.deviceSetLimit(0x06, min(max_persist, window))  # cudaLimitPersistingL2CacheSize
        value = _AttrValue()
        value.accessPolicyWindow = _Window(arena.data.ptr, window, min(1.0, max_persist / window), 2, 1)
        err = _cudart().cudaStreamSetAttribute(ctypes.c_void_p(stream.ptr), 1, ctypes.byref(value))
        if err:
            return f"not set: cudaStreamSetAttribute error {err}"
        return (f"set: {window:,} B window (hot prefix {hot:,} B), hit ratio {min(1.0, max_persist / window):.2f}, "
                f"persisting limit {min(max_persist, window):,} B")
    except Exception as e:  # no runtime symbol, unsupported device: the plan says so
        return f"not set: {e}"
