"""A dense KAN that reads only the weights an input needs: the strongest dense baseline at small batch.

For a cubic spline on a uniform grid only 4 of an input's ``C`` bases are non-zero, so a row's
output needs, per input, the SiLU weight row and 4 coefficient rows: 5 of ``C + 1``. The layer
keeps its weights as ``W [in, C + 1, out]`` in fp16 (row 0 the base weight, rows ``1 + j`` the
folded coefficients ``j``); a Triton kernel computes each input's interval and closed-form bases,
loads those 5 rows (contiguous along ``out``) and accumulates in fp32, split over inputs and added
atomically into the output. It reads ``5 · out · 2`` bytes an input a row: at one row about 10 B
an edge, against ``2 · (C + 1)`` = 28 B for a dense GEMV. Rows go to separate programs, so the
kernel pays off at a few rows; a dense GEMM (``sharekan.baselines.DenseKAN``) wins beyond.

Needs a CUDA device and Triton (torch's own dependency on Linux); with ``TRITON_INTERPRET=1`` set
before Triton is imported, the same kernel runs on CPU tensors in Triton's interpreter (the CPU tests).
"""

from __future__ import annotations

import torch
from torch import nn

from .kan import KAN

__all__ = ["SparseBasisKAN", "sparse_basis_layer", "BLOCK_I", "BLOCK_O", "PROGRAMS_PER_SM", "NUM_WARPS"]

BLOCK_I, BLOCK_O, PROGRAMS_PER_SM, NUM_WARPS = 64, 64, 16, 4  # launch shape: bench/sparse_dense.py


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sparse_basis_rows(x_ptr, w_ptr, t0_ptr, h_ptr, y_ptr, n_in, n_out, n_knots, n_coef, per_prog,
                          BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
        row, pid_o, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        mo = offs_o < n_out
        acc = tl.zeros([BLOCK_O], dtype=tl.float32)
        start = pid_k * per_prog
        stride_i = (n_coef + 1) * n_out
        for i0 in range(start, start + per_prog, BLOCK_I):
            offs_i = i0 + tl.arange(0, BLOCK_I)
            mi = offs_i < n_in
            x = tl.load(x_ptr + row * n_in + offs_i, mask=mi, other=0.0)
            t0 = tl.load(t0_ptr + offs_i, mask=mi, other=0.0)
            h = tl.load(h_ptr + offs_i, mask=mi, other=1.0)
            u = (x - t0) / h
            m = tl.floor(u)
            inside = (u >= 0) & (u < n_knots - 1) & mi
            f = u - m
            f2 = f * f
            f3 = f2 * f
            first = tl.where(inside, m, 0.0).to(tl.int32) - 3
            rows = w_ptr + offs_i[:, None].to(tl.int64) * stride_i + offs_o[None, :]
            both = mi[:, None] & mo[None, :]
            silu = x / (1.0 + tl.exp(-x))
            acc += tl.sum(silu[:, None] * tl.load(rows, mask=both, other=0.0).to(tl.float32), axis=0)
            for r in tl.static_range(4):
                if r == 0:
                    wr = (1.0 - f) * (1.0 - f) * (1.0 - f) / 6.0
                elif r == 1:
                    wr = (3.0 * f3 - 6.0 * f2 + 4.0) / 6.0
                elif r == 2:
                    wr = (-3.0 * f3 + 3.0 * f2 + 3.0 * f + 1.0) / 6.0
                else:
                    wr = f3 / 6.0
                j = first + r
                ok = inside & (j >= 0) & (j < n_coef)
                coef = tl.load(rows + (1 + j)[:, None].to(tl.int64) * n_out, mask=ok[:, None] & mo[None, :],
                               other=0.0)
                acc += tl.sum(tl.where(ok, wr, 0.0)[:, None] * coef.to(tl.float32), axis=0)
        tl.atomic_add(y_ptr + row * n_out + offs_o, acc, mask=mo, sem="relaxed")

    return sparse_basis_rows


_KERNEL = None


class _Layer(nn.Module):
    def __init__(self, weight: torch.Tensor, t0: torch.Tensor, h: torch.Tensor, n_knots: int, shape: dict):
        super().__init__()
        self.in_features, self.n_rows, self.out_features = weight.shape
        self.n_knots, self.shape = n_knots, {"block_i": BLOCK_I, "block_o": BLOCK_O,
                                             "programs_per_sm": PROGRAMS_PER_SM, "num_warps": NUM_WARPS, **shape}
        self.register_buffer("weight", weight)
        self.register_buffer("t0", t0)
        self.register_buffer("h", h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global _KERNEL
        if _KERNEL is None:
            _KERNEL = _kernel()
        x = x.contiguous().float()
        rows = x.shape[0]
        y = torch.zeros(rows, self.out_features, dtype=torch.float32, device=x.device)
        bi, bo = self.shape["block_i"], self.shape["block_o"]
        o_tiles = -(-self.out_features // bo)
        # enough programs to fill the GPU at one row: split the inputs over ``programs_per_sm`` an SM
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1  # CPU: the interpreter
        splits = max(1, min(-(-self.in_features // bi), (self.shape["programs_per_sm"] * sms) // max(1, rows * o_tiles)))
        per = -(-self.in_features // (splits * bi)) * bi
        splits = -(-self.in_features // per)
        _KERNEL[(rows, o_tiles, splits)](x, self.weight, self.t0, self.h, y, self.in_features, self.out_features,
                                         self.n_knots, self.n_rows - 1, per, BLOCK_I=bi, BLOCK_O=bo,
                                         num_warps=self.shape["num_warps"])
        return y


def sparse_basis_layer(layer, dtype: torch.dtype = torch.float16, **shape) -> _Layer:
    """One cubic KAN layer on a uniform grid as ``W [in, C + 1, out]`` (see the module); ``shape``
    overrides the launch shape (``block_i``, ``block_o``, ``programs_per_sm``, ``num_warps``)."""
    uniform = layer.uniform_params()
    if layer.spline_order != 3 or uniform is None:
        raise ValueError("the sparse-basis kernel needs cubic splines on a uniform grid")
    fused = torch.cat([layer.base_weight.detach().unsqueeze(-1), layer.scaled_spline_weight().detach()], dim=-1)
    weight = fused.permute(1, 2, 0).to(dtype).contiguous()  # [in, C + 1, out]
    t0, h = (t.detach().float().contiguous() for t in uniform)
    return _Layer(weight, t0, h, layer.grid.shape[1], shape)


class SparseBasisKAN(nn.Module):
    """A dense :class:`~sharekan.kan.KAN` run by the sparse-basis kernel, layer after layer."""

    def __init__(self, model: KAN, dtype: torch.dtype = torch.float16, **shape):
        super().__init__()
        self.layers = nn.ModuleList(sparse_basis_layer(lay, dtype, **shape) for lay in model.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for layer in self.layers:
            h = layer(h)
        return h.reshape(*lead, h.shape[-1])
