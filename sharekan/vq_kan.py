"""Compressed KAN layers that compute straight from (codebook, index, gain, bias).

For an input value ``x_i`` only 4 cubic bases are non-zero, starting at ``m_i``; edge ``(o, i)``
contributes ``g_oi·Σ_r B_r(x_i)·S[idx_oi, m_i + r] + b_oi·ΣB(x_i)`` plus the SiLU base term.
:class:`VQKANLinear` gathers those 4 codebook entries per edge in chunks of output rows, so no
dense ``[out, in, C]`` tensor is ever built; it equals decode-then-dense to float32 rounding.

:func:`compress_kan` turns a trained :class:`~sharekan.kan.KAN` into a :class:`VQKAN` with one
codebook for the whole head (``scope="head"``) or one per layer (``scope="layer"``);
:func:`encode_kan` encodes against codebooks fitted elsewhere (the pipeline's distributed k-means).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bspline import compact_grid, cubic_active, expand_grid
from .checks import check_choice
from .kan import KAN, KANLinear
from .clustering import fit_codebook
from .codebook_size import check_k
from .quant import STORAGE_DTYPES, QuantizedTensor, quantize, unpack_int4
from .vq import decode, decompose, index_dtype, nearest

__all__ = ["DTYPES", "SIDE_DTYPES", "VQKANLinear", "VQKAN", "encode_layer", "encode_kan", "edge_shapes", "fit_codebooks",
           "compress_kan"]

DTYPES = STORAGE_DTYPES  # what gains, biases and base weights may be stored as
SIDE_DTYPES = ("fp16", "int8", "int4")  # the side-data widths the pipeline encodes by default

_CHUNK_ELEMENTS = 1 << 20  # transient [rows, out_chunk, in] elements per step


def _register_q(module: nn.Module, name: str, q: QuantizedTensor) -> None:
    module.register_buffer(name, q.data)
    module.register_buffer(name + "_scale", q.scale)
    setattr(module, name + "_dtype", q.dtype)


class VQKANLinear(nn.Module):
    """A KAN layer stored as a shared codebook plus per-edge index, gain and bias."""

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, gains: QuantizedTensor,
                 biases: QuantizedTensor, base_weight: QuantizedTensor, grid: torch.Tensor):
        super().__init__()
        out_f, in_f = indices.shape
        if grid.shape[0] != in_f:
            raise ValueError(f"grid has {grid.shape[0]} rows but indices have {in_f} inputs")
        n_coef = grid.shape[1] - 4  # cubic: G + 2k + 1 knots, G + k coefficients
        if codebook.shape[1] != n_coef:
            raise ValueError(f"codebook has {codebook.shape[1]} coefficients per codeword, "
                             f"the grid implies {n_coef}")
        for name, q in (("gains", gains), ("biases", biases), ("base_weight", base_weight)):
            want = (out_f, -(-in_f // 2)) if q.dtype == "int4" else (out_f, in_f)  # int4: two a byte
            if tuple(q.data.shape) != want:
                raise ValueError(f"{name} has shape {tuple(q.data.shape)}, expected {want}")
        self.in_features, self.out_features, self.n_coef = in_f, out_f, n_coef
        self.register_buffer("codebook", codebook)
        self.register_buffer("indices", indices.to(index_dtype(codebook.shape[0])))
        _register_q(self, "gain", gains)
        _register_q(self, "bias", biases)
        _register_q(self, "base", base_weight)
        grid = grid.to(torch.float32)
        pair = compact_grid(grid)  # a uniform grid is stored as (lo, h): 8 bytes a layer, not 4·in·(G+7)
        if pair is None:
            self.register_buffer("grid", grid.clone())
        else:
            self.register_buffer("grid_lo", pair[0])
            self.register_buffer("grid_h", pair[1])
            self.register_buffer("grid", expand_grid(*pair, in_f, grid.shape[1]), persistent=False)
        h = (grid[:, -1] - grid[:, 0]) / (grid.shape[1] - 1)
        self.register_buffer("t0", grid[:, 0].to(torch.float32).contiguous(), persistent=False)
        self.register_buffer("h", h.to(torch.float32).contiguous(), persistent=False)

    def stored_values(self, name: str, rows: slice = slice(None)) -> torch.Tensor:
        """``name``'s ("gain", "bias" or "base") stored values ``[out, in]`` as float32, unpacked and
        unscaled (the per-row scale is ``<name>_scale``, or ``None``)."""
        data = getattr(self, name)[rows]
        if getattr(self, name + "_dtype") == "int4":
            return unpack_int4(data, self.in_features).to(torch.float32)
        return data.to(torch.float32)

    def _q(self, name: str, rows: slice) -> torch.Tensor:
        data = self.stored_values(name, rows)
        scale = getattr(self, name + "_scale")
        return data if scale is None else data * scale[rows, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"VQKANLinear expects input with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features).to(torch.float32)
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.float32, device=x.device)
        block = max(1, _CHUNK_ELEMENTS // (4 * self.in_features))  # rows per block
        for r0 in range(0, x.shape[0], block):
            out[r0:r0 + block] = self._forward_rows(x[r0:r0 + block])
        return out.reshape(*lead, self.out_features)

    def _forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        first, w = cubic_active(x, self.t0, self.h, self.grid.shape[1], self.grid)
        wsum = w.sum(dim=-1)                                   # ΣB(x): [rows, in]
        silu = F.silu(x)
        width = self.n_coef + 6                                # codewords padded by 3 zeros each side
        flat_cb = F.pad(self.codebook.to(torch.float32), (3, 3)).reshape(-1)
        pos = first + 3                                        # [rows, in], in [0, C + 2]
        rows = x.shape[0]
        step = max(1, _CHUNK_ELEMENTS // max(1, rows * self.in_features))
        out = torch.empty(rows, self.out_features, dtype=torch.float32, device=x.device)
        for o0 in range(0, self.out_features, step):
            sl = slice(o0, min(o0 + step, self.out_features))
            base_idx = (self.indices[sl].to(torch.int64) * width).unsqueeze(0) + pos.unsqueeze(1)
            dot = torch.zeros(rows, base_idx.shape[1], self.in_features, device=x.device)
            for r in range(4):                                 # ⟨s, B(x)⟩ over the 4 active bases
                dot.addcmul_(flat_cb[base_idx + r], w[:, None, :, r])
            y = (dot * self._q("gain", sl).unsqueeze(0)).sum(dim=-1)
            y += wsum @ self._q("bias", sl).T + silu @ self._q("base", sl).T
            out[:, sl] = y
        return out

    def coefficients(self) -> torch.Tensor:
        """Reconstructed coefficients ``ĉ [out, in, C]`` (for metrics and the dense reference)."""
        rows = slice(None)
        return decode(self.codebook, self.indices, self._q("gain", rows), self._q("bias", rows))

    def decoded(self) -> KANLinear:
        """The dense :class:`KANLinear` this layer stands for (scaler folded to 1)."""
        grid = self.grid
        g = grid.shape[1] - 7
        layer = KANLinear(self.in_features, self.out_features, grid_size=g, spline_order=3,
                          grid_range=(float(grid[0, 3]), float(grid[0, 3 + g])))
        with torch.no_grad():
            layer.grid.copy_(grid)
            layer.base_weight.copy_(self._q("base", slice(None)))
            layer.spline_weight.copy_(self.coefficients())
            layer.spline_scaler.fill_(1.0)
        return layer.to(self.codebook.device)

    def storage_components(self) -> dict[str, int]:
        """Bytes per stored component (the codebook is reported separately by :class:`VQKAN`)."""
        def nbytes(*names):
            return sum(t.numel() * t.element_size() for n in names
                       if (t := getattr(self, n)) is not None)
        grid = ("grid",) if "grid" in self.state_dict() else ("grid_lo", "grid_h")
        return {"indices": nbytes("indices"), "gains": nbytes("gain", "gain_scale"),
                "biases": nbytes("bias", "bias_scale"), "base_weights": nbytes("base", "base_scale"),
                "grid": nbytes(*grid)}


class VQKAN(nn.Module):
    """A compressed KAN head: a stack of :class:`VQKANLinear` sharing one or more codebooks."""

    def __init__(self, layers: Sequence[VQKANLinear]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def codebooks(self) -> list[torch.Tensor]:
        """Distinct codebooks (a head-shared codebook counts once)."""
        seen: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            seen.setdefault(layer.codebook.data_ptr(), layer.codebook)
        return list(seen.values())

    def storage_components(self) -> dict[str, int]:
        total = {"codebook": sum(c.numel() * c.element_size() for c in self.codebooks())}
        for layer in self.layers:
            for key, value in layer.storage_components().items():
                total[key] = total.get(key, 0) + value
        return total

    def decoded(self) -> KAN:
        """The dense :class:`KAN` the compressed head decodes to."""
        dense = KAN.__new__(KAN)
        nn.Module.__init__(dense)
        dense.layers = nn.ModuleList(layer.decoded() for layer in self.layers)
        return dense


def encode_layer(layer: KANLinear, codebook: torch.Tensor, gain_dtype: str = "fp16",
                 base_dtype: str | None = None, indices: torch.Tensor | None = None) -> VQKANLinear:
    """Encode one dense layer against ``codebook [K, C]``: each edge's nearest codeword, or the
    given ``indices [out, in]`` (e.g. a distributed assignment's)."""
    if layer.spline_order != 3 or layer.uniform_params() is None:
        raise ValueError("VQ encoding needs a cubic spline layer on a uniform grid "
                         f"(got spline_order={layer.spline_order})")
    shapes, gains, biases = decompose(layer.scaled_spline_weight())
    if indices is None:
        idx = nearest(shapes.reshape(-1, layer.n_coef), codebook).reshape(gains.shape)
    elif tuple(indices.shape) != tuple(gains.shape):
        raise ValueError(f"indices have shape {tuple(indices.shape)}, the layer has {tuple(gains.shape)} edges")
    elif indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codebook.shape[0]):
        raise ValueError(f"indices must lie in [0, {codebook.shape[0]}) for a {codebook.shape[0]}-entry codebook")
    else:
        idx = indices
    base_dtype = base_dtype or gain_dtype
    return VQKANLinear(codebook, idx, quantize("gains", gains, gain_dtype),
                       quantize("biases", biases, gain_dtype),
                       quantize("base_weight", layer.base_weight, base_dtype), layer.grid.detach().clone())


def edge_shapes(model: KAN) -> list[torch.Tensor]:
    """Per layer, the unit shape of every edge's spline coefficients ``[out * in, C]``."""
    return [decompose(layer.scaled_spline_weight())[0].reshape(-1, layer.n_coef) for layer in model.layers]


def fit_codebooks(model: KAN, k: int, scope: str = "head", seed: int = 0, niter: int = 25
                  ) -> list[torch.Tensor]:
    """One codebook of ``k`` shapes per layer of ``model`` (the same tensor for ``scope="head"``)."""
    check_choice("scope", scope, ("head", "layer"))
    layers = list(model.layers)
    shapes = edge_shapes(model)
    if scope == "head":
        check_k(k, sum(s.shape[0] for s in shapes), "edges in the head")
        return [fit_codebook(torch.cat(shapes), k, seed=seed, niter=niter)] * len(layers)
    for n, s in enumerate(shapes):
        check_k(k, s.shape[0], f"edges in layer {n}")
    return [fit_codebook(s, k, seed=seed + n, niter=niter) for n, s in enumerate(shapes)]


def _check_dtypes(gain_dtype: str, base_dtype: str | None) -> None:
    for dtype_name, value in (("gain_dtype", gain_dtype), ("base_dtype", base_dtype or gain_dtype)):
        check_choice(dtype_name, value, DTYPES)


def encode_kan(model: KAN, codebooks: Sequence[torch.Tensor], gain_dtype: str = "fp16",
               base_dtype: str | None = None, indices: Sequence[torch.Tensor] | None = None) -> VQKAN:
    """Encode every layer of ``model`` against its codebook (one per layer; the same tensor for a
    head-shared codebook), with each edge's nearest codeword or the given per-layer ``indices``."""
    _check_dtypes(gain_dtype, base_dtype)
    if len(codebooks) != len(model.layers):
        raise ValueError(f"{len(codebooks)} codebooks for {len(model.layers)} layers")
    if indices is not None and len(indices) != len(model.layers):
        raise ValueError(f"{len(indices)} index arrays for {len(model.layers)} layers")
    return VQKAN([encode_layer(layer, book, gain_dtype, base_dtype, None if indices is None else indices[n])
                  for n, (layer, book) in enumerate(zip(model.layers, codebooks))])


def compress_kan(model: KAN, k: int, scope: str = "head", gain_dtype: str = "fp16",
                 base_dtype: str | None = None, codebook_dtype: str = "fp32", seed: int = 0,
                 niter: int = 25) -> VQKAN:
    """Fit codebooks of ``k`` shapes to ``model`` by k-means (:func:`fit_codebooks`) and encode every
    layer against them (:func:`encode_kan`)."""
    check_choice("codebook_dtype", codebook_dtype, ("fp32", "fp16"))
    _check_dtypes(gain_dtype, base_dtype)  # before the fit
    books = fit_codebooks(model, k, scope, seed, niter)
    if codebook_dtype == "fp16":
        cache: dict[int, torch.Tensor] = {}
        books = [cache.setdefault(id(b), b.to(torch.float16)) for b in books]
    return encode_kan(model, books, gain_dtype, base_dtype)
