"""VQ-aware fine-tuning: train a compressed head's per-edge scalars with its codebook indices fixed.

Post-training VQ moves every edge to its nearest codeword and rounds its gain, bias and base weight
to the storage width; both errors add up across the head. Fine-tuning trains, on the training
data and the task's own loss, what the compressed form keeps free: per-edge gains, biases and base
weights (and optionally the codewords themselves, MetaCluster-style), with the indices fixed.
The forward rounds those scalars exactly as storage will (:func:`fake_quant`: the very
:func:`~sharekan.quant.quantize` of the stored form, per-row scales recomputed each step) and
passes gradients straight through the rounding, so what is trained is what is stored:
:meth:`FinetunedVQLayer.encoded` gives back a :class:`~sharekan.vq_kan.VQKANLinear` whose forward
equals the trained module's.

The trainable forward decodes ``ĉ = g·S[idx] + b`` ``[out, in, C]`` and runs the dense spline
product: the same cost as training the dense head, and differentiable in every stored value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bspline import bases, uniform_grid_params
from .quant import quantize
from .vq_kan import VQKAN, VQKANLinear

__all__ = ["fake_quant", "FinetunedVQLayer", "trainable"]


def fake_quant(name: str, t: torch.Tensor, dtype: str) -> torch.Tensor:
    """``t`` rounded as ``dtype`` storage would round it, with the identity as its gradient."""
    if dtype == "fp32":
        return t
    return t + (quantize(name, t.detach(), dtype).dequantize() - t).detach()


class FinetunedVQLayer(nn.Module):
    """A :class:`VQKANLinear` whose stored values are parameters (indices and grid fixed)."""

    def __init__(self, layer: VQKANLinear, codebook: nn.Parameter | torch.Tensor):
        super().__init__()
        rows = slice(None)
        self.gain = nn.Parameter(layer._q("gain", rows).clone())
        self.bias = nn.Parameter(layer._q("bias", rows).clone())
        self.base = nn.Parameter(layer._q("base", rows).clone())
        self.dtypes = {n: getattr(layer, n + "_dtype") for n in ("gain", "bias", "base")}
        self.codebook = codebook
        self.register_buffer("indices", layer.indices.clone())
        self.register_buffer("grid", layer.grid.clone())
        self.uniform = uniform_grid_params(self.grid)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def stored(self, name: str) -> torch.Tensor:
        return fake_quant(name, getattr(self, name), self.dtypes[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        shapes = self.codebook.to(torch.float32)[self.indices.to(torch.int64)]        # [out, in, C]
        coef = self.stored("gain").unsqueeze(-1) * shapes + self.stored("bias").unsqueeze(-1)
        spline = bases(x, self.grid, 3, self.uniform).reshape(x.shape[0], -1) @ coef.reshape(self.out_features, -1).T
        return (F.silu(x) @ self.stored("base").T + spline).reshape(*lead, self.out_features)

    @torch.no_grad()
    def encoded(self, codebook: torch.Tensor) -> VQKANLinear:
        """The stored form of the trained values (``codebook``: the stored codebook tensor)."""
        return VQKANLinear(codebook, self.indices, *(quantize(n, getattr(self, n), self.dtypes[n])
                                                     for n in ("gain", "bias", "base")), self.grid)


class _Trainable(nn.Module):
    def __init__(self, vq: VQKAN, train_codebook: bool):
        super().__init__()
        books = vq.codebooks()
        if len(books) != 1:
            raise ValueError(f"fine-tuning needs one head-shared codebook, this head has {len(books)}")
        self.book_dtype = books[0].dtype
        cb = books[0].detach().to(torch.float32).clone()
        self.codebook = nn.Parameter(cb) if train_codebook else None
        self.layers = nn.ModuleList(FinetunedVQLayer(lay, self.codebook if train_codebook else cb) for lay in vq.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def encoded(self) -> VQKAN:
        book = self.layers[0].codebook.detach().to(self.book_dtype).clone()
        return VQKAN([layer.encoded(book) for layer in self.layers])


def trainable(vq: VQKAN, train_codebook: bool = False) -> nn.Module:
    """A module computing ``vq``'s forward from trainable stored values; its ``encoded()`` returns
    the :class:`VQKAN` that stores them (same indices, dtypes and codebook dtype)."""
    return _Trainable(vq, train_codebook)
