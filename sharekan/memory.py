"""Memory accounting: storage bytes per component, and runtime bytes measured during a forward.

*Storage* is what a file or a device arena must hold for inference. Dense and pruned KANs are
counted with the spline scaler folded into the coefficients (``C + 1`` fp32 per edge: the
smallest dense form, so ratios are not flattered). Every variant counts its grids, a uniform grid
as ``(lo, h)`` (``bspline.grid_bytes``: what VQ layers store; dense ones are counted the same); pruning
counts a 1-bit mask per edge; int8 counts its scales; VQ counts its codebook(s) once.

*Runtime* is measured, not derived: the bytes of the module's resident tensors plus the peak of
the tensors a forward allocates, tracked allocation by allocation with a dispatch mode (any
device); on CUDA the allocator's own peak is reported beside it.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .bspline import grid_bytes
from .kan import KAN

__all__ = ["storage_components", "storage_bytes", "resident_bytes", "runtime_bytes", "PeakTracker"]


def storage_components(model: nn.Module) -> dict[str, int]:
    """Bytes per stored component of a dense :class:`KAN` or any compressed variant."""
    if hasattr(model, "storage_components"):
        return model.storage_components()
    if isinstance(model, KAN):
        out = {"base_weights": 0, "spline_coefficients": 0, "grid": 0}
        for layer in model.layers:
            out["base_weights"] += layer.base_weight.numel() * 4
            out["spline_coefficients"] += layer.spline_weight.numel() * 4
            out["grid"] += grid_bytes(layer.grid)
        return out
    raise TypeError(f"no storage accounting for {type(model).__name__}")


def storage_bytes(model: nn.Module) -> int:
    return sum(storage_components(model).values())


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages behind the module's parameters and buffers."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


class PeakTracker(TorchDispatchMode):
    """Counts bytes of storages allocated inside the ``with`` block and their peak while live."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}

    def _free(self, key: int, n: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: no new storage
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key, n = st.data_ptr(), st.nbytes()
                if n == 0 or key in self._seen:
                    continue
                self._seen[key] = n
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._free, key, n)
        return out


def runtime_bytes(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Measured runtime memory of one forward of ``model`` on ``x``.

    ``resident``: weights held by the module; ``peak_transient``: peak of tensors allocated by
    the forward (activations, dequantised or gathered weights); ``total``: their sum; on CUDA also
    ``cuda_peak``: the allocator's peak above what was allocated before the call.
    """
    resident = resident_bytes(model)
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
    with torch.no_grad(), PeakTracker() as tracker:
        y = model(x)
        del y
    out = {"resident": resident, "peak_transient": tracker.peak, "total": resident + tracker.peak}
    if cuda:
        torch.cuda.synchronize(x.device)
        out["cuda_peak"] = torch.cuda.max_memory_allocated(x.device) - before + resident
    return out
