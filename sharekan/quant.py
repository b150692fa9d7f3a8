"""Storage dtypes for per-edge scalars and weights: fp32, fp16, or int8 with per-row scales.

int8 is symmetric: ``q = round(t / s)`` with ``s = max|row| / 127`` per row of the leading axis
(per output channel), so ``|t − s·q| ≤ s/2`` element-wise. An all-zero row gets scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_choice, check_finite

__all__ = ["STORAGE_DTYPES", "QuantizedTensor", "quantize"]

STORAGE_DTYPES = ("fp32", "fp16", "int8")
_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor kept in a storage dtype; ``scale`` (fp32, one per row) only for int8."""

    data: torch.Tensor
    dtype: str
    scale: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        if self.dtype == "int8":
            shape = (-1,) + (1,) * (self.data.dim() - 1)
            return self.data.to(torch.float32) * self.scale.reshape(shape)
        return self.data.to(torch.float32)

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
    if dtype != "int8":
        return QuantizedTensor(t.to(_TORCH[dtype]).contiguous(), dtype)
    rows = t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)
    amax = rows.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
    return QuantizedTensor(q.contiguous(), dtype, scale.contiguous())
