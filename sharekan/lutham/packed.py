"""LUTHAM v3's packed records: each edge in the bytes its stored head keeps, laid out for the kernels.

A layer of a :class:`~sharekan.vq_kan.VQKAN` becomes four planes over ``[in, groups]``, a group being
8 consecutive outputs (outputs padded to whole groups with zero edges):

- ``idx``: the codeword index, uint8 where ``K ≤ 256``, uint16 otherwise (8 or 16 bytes a group);
- ``gain``, ``bias``, ``base``: the stored values at the stored width, unscaled — int4 as one uint32
  a group (output ``8g + j`` in nibble ``j``, value + 8: storage's code), int8 (8 bytes), fp16 (16 bytes).

The per-output scales of the stored form stay per output: ``scales [4, out_pad]`` float32 holds the
gain scale ``s_g`` and the ratios ``s_b / s_g`` and ``s_w / s_g`` (1 for fp16 side data), so a kernel
sums ``Σ_i q_g·T + (s_b/s_g)·q_b·ΣB + (s_w/s_g)·q_w·silu`` in one accumulator and multiplies by
``s_g`` once; its fourth row is ``Σ_i q_b`` per output, the bias term of a row whose inputs all have
their four bases (``ΣB = 1``): a kernel adds it once and corrects only for inputs near or outside
the grid's ends (``Σ_i q_b·ΣB = Σ_i q_b − Σ_i q_b·(1 − ΣB)``). LUTHAM computes exactly the stored (and fine-tuned) values: the same ``quantize``
output, never re-quantized. Bytes an edge: 2.5 at K ≤ 256 with int4 side data, 4 with int8, 7 with
fp16; one more with uint16 indices.

The codebook goes to the arena coefficient-major, ``[C, K_pad]`` float32 (``K_pad`` a multiple of 32),
so the threads building a lookup table for consecutive codewords read consecutive words.
:func:`reference_forward` is the kernels' arithmetic in torch (CPU or GPU): the check that the format
holds the stored head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..bspline import compact_grid, cubic_active
from ..vq_kan import VQKANLinear

__all__ = ["GROUP", "SIDE_BYTES", "PackedLayer", "pack_layer", "unpack_layer", "codebook_major", "edge_bytes",
           "reference_forward"]

GROUP = 8  # outputs a thread owns: one uint32 of int4 nibbles, 8 index bytes
SIDE_BYTES = {"int4": 4, "int8": 8, "fp16": 16}  # bytes a group of 8 outputs takes, per side quantity
SIDES = ("gain", "bias", "base")


@dataclass
class PackedLayer:
    """One layer's planes (numpy, C-contiguous) and what the kernels need besides."""

    in_features: int
    out_features: int
    n_knots: int
    k: int
    side_dtype: str  # one width for gain, bias and base (the pipeline stores them alike)
    idx: np.ndarray  # [in, groups, 8] uint8 | uint16
    gain: np.ndarray  # [in, groups] uint32 (int4) | [in, groups, 8] int8 | float16
    bias: np.ndarray
    base: np.ndarray
    scales: np.ndarray  # [4, out_pad] float32: s_g, s_b/s_g, s_w/s_g, Σ_i q_b
    t0: np.ndarray  # [in] float32: the first knot
    h: np.ndarray  # [in] float32: the knot spacing

    @property
    def groups(self) -> int:
        return self.idx.shape[1]

    @property
    def index_bytes(self) -> int:
        return self.idx.itemsize

    def planes(self) -> dict[str, np.ndarray]:
        return {"idx": self.idx, "gain": self.gain, "bias": self.bias, "base": self.base}

    @property
    def record_bytes(self) -> int:
        """Bytes of the edge planes (padded outputs included)."""
        return sum(p.nbytes for p in self.planes().values())


def edge_bytes(k: int, side_dtype: str) -> float:
    """Bytes an edge takes in the packed planes for a ``k``-entry codebook and ``side_dtype`` side data."""
    if side_dtype not in SIDE_BYTES:
        raise ValueError(f"packed side data must be one of {sorted(SIDE_BYTES)}, got {side_dtype!r}")
    return (1 if k <= 256 else 2) + 3 * SIDE_BYTES[side_dtype] / GROUP


def _side_dtype(layer: VQKANLinear) -> str:
    widths = {getattr(layer, q + "_dtype") for q in SIDES}
    if len(widths) != 1 or (w := widths.pop()) not in SIDE_BYTES:
        raise ValueError("LUTHAM packs heads whose gain, bias and base weight share one width of "
                         f"{sorted(SIDE_BYTES)}; this layer stores " +
                         ", ".join(f"{q} as {getattr(layer, q + '_dtype')}" for q in SIDES))
    return w


def _grouped(a: np.ndarray, out_pad: int) -> np.ndarray:
    """``[out, in]`` → ``[in, groups, 8]`` with padded outputs zero."""
    out_f, in_f = a.shape
    full = np.zeros((out_pad, in_f), a.dtype)
    full[:out_f] = a
    return np.ascontiguousarray(full.T.reshape(in_f, out_pad // GROUP, GROUP))


def _nibbles(q: np.ndarray) -> np.ndarray:
    """int values in [-8, 7] ``[in, groups, 8]`` → uint32 ``[in, groups]``, output ``j`` in nibble ``j``."""
    codes = (q.astype(np.int32) + 8).astype(np.uint32)
    return np.bitwise_or.reduce(codes << (4 * np.arange(GROUP, dtype=np.uint32)), axis=-1).astype(np.uint32)


def _from_nibbles(words: np.ndarray) -> np.ndarray:
    return ((words[..., None] >> (4 * np.arange(GROUP, dtype=np.uint32))) & 0xF).astype(np.int8) - 8


def pack_layer(layer: VQKANLinear) -> PackedLayer:
    """``layer``'s stored tensors as packed planes (a ``ValueError`` names what LUTHAM cannot run)."""
    side = _side_dtype(layer)
    pair = compact_grid(layer.grid.detach().float().cpu())
    if pair is None:
        raise ValueError("LUTHAM needs uniform knots per input (lo + j·h); this layer's grid is not")
    k, out_f, in_f = layer.codebook.shape[0], layer.out_features, layer.in_features
    if k > 65_536:
        raise ValueError(f"LUTHAM indexes codebooks of at most 65,536 entries (uint16); this one has {k:,}")
    out_pad = -(-out_f // GROUP) * GROUP
    idx = _grouped(layer.indices.cpu().numpy().astype(np.uint8 if k <= 256 else np.uint16), out_pad)
    planes, scales, sums = {}, [], {}
    for q in SIDES:
        values = layer.stored_values(q).cpu().numpy()  # [out, in], unscaled stored values
        sums[q] = values.astype(np.float64).sum(1)
        scale = getattr(layer, q + "_scale")
        scales.append(np.ones(out_f, np.float32) if scale is None else scale.detach().float().cpu().numpy().ravel())
        if side == "int4":
            planes[q] = _nibbles(_grouped(values.astype(np.int8), out_pad))
        else:
            planes[q] = _grouped(values.astype(np.int8 if side == "int8" else np.float16), out_pad)
    s = np.ones((4, out_pad), np.float32)
    s[0, :out_f] = scales[0]
    s[1, :out_f] = scales[1] / scales[0]
    s[2, :out_f] = scales[2] / scales[0]
    s[3] = 0.0
    s[3, :out_f] = sums["bias"]
    return PackedLayer(in_f, out_f, layer.grid.shape[1], k, side, idx, planes["gain"], planes["bias"],
                       planes["base"], s, layer.grid[:, 0].detach().float().cpu().numpy().copy(),
                       pair[1].expand(in_f).numpy().astype(np.float32).copy())


def unpack_layer(p: PackedLayer) -> dict[str, np.ndarray]:
    """The ``[out, in]`` indices and stored side values, and the ``[out]`` per-output scales (gain,
    bias, base), read back from ``p``'s planes: what :func:`pack_layer` was given."""
    def values(plane: np.ndarray) -> np.ndarray:
        v = _from_nibbles(plane) if p.side_dtype == "int4" else plane
        return v.reshape(p.in_features, -1)[:, :p.out_features].T.astype(np.float32)

    out = {"indices": p.idx.reshape(p.in_features, -1)[:, :p.out_features].T.astype(np.int64)}
    out.update({q: values(plane) for q, plane in zip(SIDES, (p.gain, p.bias, p.base))})
    gs = p.scales[0, :p.out_features]
    out.update(gain_scale=gs, bias_scale=p.scales[1, :p.out_features] * gs, base_scale=p.scales[2, :p.out_features] * gs)
    return out


def codebook_major(codebook: torch.Tensor) -> np.ndarray:
    """``[K, C]`` → ``[C, K_pad]`` float32, codewords past ``K`` zero."""
    k, c = codebook.shape
    out = np.zeros((c, -(-k // 32) * 32), np.float32)
    out[:, :k] = codebook.detach().float().cpu().numpy().T
    return out


def reference_forward(p: PackedLayer, codebook: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The packed layer's forward, ``x [rows, in]`` → ``[rows, out]`` float32, by the kernels' sum:
    per row and input the lookup table ``T[c] = Σ_r B_r(x)·cb[c, first + r]`` over the 4 active
    bases, then ``y = s_g·Σ_i (q_g·T[idx] + ρ_b·q_b·ΣB + ρ_w·q_w·silu)``, the bias term folded as the
    one-row kernel sums it (``Σ_i q_b`` less ``q_b·(1 − ΣB)`` of inputs without all four bases). It holds a
    ``[rows, in, out, 4]`` gather: a check for small heads, not a runtime."""
    dev = x.device
    u = {k: torch.as_tensor(v, device=dev) for k, v in unpack_layer(p).items()}
    x = x.to(torch.float32)
    t0, h = torch.as_tensor(p.t0, device=dev), torch.as_tensor(p.h, device=dev)
    first, w = cubic_active(x, t0, h, p.n_knots)  # first: [rows, in] in -3 … C-1
    cb = F.pad(codebook.to(dev, torch.float32), (3, 3))  # [K, C + 6]
    pos = (first + 3).unsqueeze(-1) + torch.arange(4, device=dev)  # [rows, in, 4]
    windows = cb[u["indices"].T[None, :, :, None], pos.unsqueeze(2)]  # [rows, in, out, 4]
    lut = (windows * w.unsqueeze(2)).sum(-1)  # T[idx]: [rows, in, out]
    ratio_b, ratio_w, bias_sum = (torch.as_tensor(p.scales[j, :p.out_features], device=dev) for j in (1, 2, 3))
    full = (first >= 0) & (first + 3 < codebook.shape[1])  # all four bases exist: ΣB = 1
    corr = torch.where(full, torch.zeros_like(x), 1 - w.sum(-1))  # the folded bias term's correction
    acc = torch.einsum("rio,oi->ro", lut, u["gain"])
    acc = acc + ratio_b * (bias_sum - corr @ u["bias"].T) + ratio_w * (F.silu(x) @ u["base"].T)
    return acc * u["gain_scale"]
