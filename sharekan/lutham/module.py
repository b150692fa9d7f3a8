"""LUTHAM as a drop-in ``torch.nn.Module``: use it wherever a ``KAN`` or ``VQKAN`` is used.

``LuthamKAN(vq_kan, max_rows)`` copies the compressed head into its GPU arena once — as v12's 8-byte
records (:class:`~sharekan.lutham.runtime.LuthamHead`) or, with ``records="packed"``, as packed
planes (:class:`~sharekan.lutham.packed_head.PackedHead`, LUTHAM v3: the bytes storage keeps; side
data int4, int8 or fp16 at one width); ``"auto"`` takes packed planes where the head allows.
:data:`DEFAULT_RECORDS` is ``"v12"`` until the packed kernels have passed the GPU tests and the
benchmark (``bench/NOTES.md``). ``forward`` takes ``[..., in_features]`` on any
device, runs the kernels on the GPU in chunks of ``max_rows`` rows and returns
``[..., out_features]`` on the input's device and dtype, like ``VQKAN.forward``.
``LuthamKAN.from_file(path)`` runs a head that ``sharekan export`` wrote.
"""

from __future__ import annotations

import torch
from torch import nn

from .packed_head import PackedHead, packable
from .runtime import LuthamHead

__all__ = ["LuthamKAN", "DEFAULT_RECORDS", "resolve_records"]

RECORDS = ("auto", "packed", "v12")
DEFAULT_RECORDS = "v12"


def resolve_records(model, records: str = DEFAULT_RECORDS) -> str:
    """The record format a head runs in: ``"packed"`` or ``"v12"`` (``"auto"``: packed where it can)."""
    if records not in RECORDS:
        raise ValueError(f"records must be one of {RECORDS}, got {records!r}")
    if records == "auto":
        return "v12" if packable(model) else "packed"
    return records


class LuthamKAN(nn.Module):
    """A VQ-compressed KAN (one shared codebook) run by the LUTHAM kernels."""

    def __init__(self, model, max_rows: int = 4096, records: str = DEFAULT_RECORDS, **runtime_kw):
        super().__init__()
        self.records = records = resolve_records(model, records)
        self.lut = (PackedHead if records == "packed" else LuthamHead)(model, max_rows=max_rows, **runtime_kw)
        self.in_features = self.lut.plan.layers[0].in_features
        self.out_features = self.lut.plan.layers[-1].out_features

    @classmethod
    def from_file(cls, path, max_rows: int = 4096, **runtime_kw) -> LuthamKAN:
        """LUTHAM over a compressed head exported by ``sharekan export`` (see :func:`sharekan.load`)."""
        from ..encoded import load

        return cls(load(path).kan, max_rows=max_rows, **runtime_kw)

    @property
    def plan(self):
        return self.lut.plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"LUTHAM head expects [..., {self.in_features}] inputs, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:
            return x.new_zeros(*lead, self.out_features)
        y = self.lut.run_torch(flat.to("cuda", non_blocking=True))
        return y.reshape(*lead, self.out_features).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"codebook={self.lut.plan.codebook_size}, max_rows={self.lut.plan.max_rows}, records={self.records}")
