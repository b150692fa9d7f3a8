"""Storage dtypes for per-edge scalars and weights: fp32, fp16, or int8 / int4 with per-row scales.

Integer forms are symmetric: ``q = round(t / s)`` with ``s = max|row| / Q`` per row of the leading
axis (per output channel; ``Q`` = 127 for int8, 7 for int4), so ``|t − s·q| ≤ s/2`` element-wise.
An all-zero row gets scale 1. int4 packs two values a byte along the last axis (low nibble first,
stored as ``q + 8``; an odd last axis is padded with a zero): half of int8's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_choice, check_finite

__all__ = ["STORAGE_DTYPES", "QuantizedTensor", "quantize", "pack_int4", "unpack_int4"]

STORAGE_DTYPES = ("fp32", "fp16", "int8", "int4")
_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
_QMAX = {"int8": 127, "int4": 7}


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor kept in a storage dtype; ``scale`` (fp32, one per row) only for int8 and int4, whose
    ``data`` is packed (``columns``: the unpacked last dimension)."""

    data: torch.Tensor
    dtype: str
    scale: torch.Tensor | None = None
    columns: int | None = None

    def values(self) -> torch.Tensor:
        """The stored values as float32, unpacked and unscaled."""
        if self.dtype == "int4":
            return unpack_int4(self.data, self.columns).to(torch.float32)
        return self.data.to(torch.float32)

    def dequantize(self) -> torch.Tensor:
        v = self.values()
        if self.scale is None:
            return v
        return v * self.scale.reshape((-1,) + (1,) * (v.dim() - 1))

    @property
    def nbytes(self) -> int:
        extra = self.scale.numel() * self.scale.element_size() if self.scale is not None else 0
        return self.data.numel() * self.data.element_size() + extra

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that must be stored (for state dicts and memory accounting)."""
        return {"data": self.data} if self.scale is None else {"data": self.data, "scale": self.scale}


def quantize(name: str, tensor: torch.Tensor, dtype: str) -> QuantizedTensor:
    """Store ``tensor`` as ``dtype`` (``fp32``, ``fp16`` or ``int8`` per-row); ``name`` is for errors."""
    check_choice(f"{name} dtype", dtype, STORAGE_DTYPES)
    check_finite(name, tensor)
    t = tensor.detach().to(torch.float32)
    if dtype not in _QMAX:
        return QuantizedTensor(t.to(_TORCH[dtype]).contiguous(), dtype)
    qmax = _QMAX[dtype]
    rows = t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)
    amax = rows.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.round(rows / scale[:, None]).clamp(-qmax, qmax).to(torch.int8).reshape(t.shape)
    if dtype == "int4":
        if t.dim() == 0:
            raise ValueError(f"{name}: int4 needs at least one axis to pack along")
        return QuantizedTensor(pack_int4(q), dtype, scale.contiguous(), columns=t.shape[-1])
    return QuantizedTensor(q.contiguous(), dtype, scale.contiguous())


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] ``[..., n]`` → uint8 ``[..., ceil(n/2)]``, low nibble first."""
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.cat([u, torch.full_like(u[..., :1], 8)], dim=-1)  # pad with the code of 0
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, columns: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 ``[..., columns]``."""
    low = (packed & 0x0F).to(torch.int16) - 8
    high = (packed >> 4).to(torch.int16) - 8
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)[..., :columns].to(torch.int8)
