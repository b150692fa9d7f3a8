"""The nearest centroid of each point on the GPU in one fused kernel (``kernels/nearest.cu``, CuPy):
fp32 distances ``‖c‖² − 2 p·c`` and their argmin, tile by tile, the ``[n, K]`` distance matrix never
written. Ties go to the smaller index, as with ``torch.argmin``. Dimensions up to :data:`MAX_DIM`.

The k-means ``"cuda"`` backend (``sharekan.kmeans_steps``) assigns with it; :func:`nvrtc_compile`
builds it without a GPU (CI's check that it compiles)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["MAX_DIM", "TILE", "available", "prepare", "nearest", "nvrtc_compile"]

SOURCE = Path(__file__).with_name("kernels") / "nearest.cu"
MAX_DIM = 31  # static shared memory (48 KB): 128 points and two 128-centroid tiles of d (+1) floats
TILE = 128    # points a block, centroids a tile (kernels/nearest.cu)
THREADS = 256
_OPTIONS = ("-std=c++17",)  # no fast-math: distances are IEEE fp32


def _options(d: int) -> tuple[str, ...]:
    if not 1 <= d <= MAX_DIM:
        raise ValueError(f"the fused nearest-centroid kernel takes dimensions 1..{MAX_DIM}, got {d}")
    return (*_OPTIONS, f"-DKM_D={d}")


def available(d: int) -> bool:
    """Whether the fused kernel can assign ``d``-dimensional points here (CUDA, CuPy, ``d`` ≤ MAX_DIM)."""
    if not (torch.cuda.is_available() and 1 <= d <= MAX_DIM):
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel(d: int, device: int):
    import cupy

    with cupy.cuda.Device(device):
        return cupy.RawModule(code=SOURCE.read_text(), options=_options(d)).get_function("nearest_fused")


def prepare(centroids: torch.Tensor) -> torch.Tensor:
    """``[d + 1, K_pad]`` fp32 on the centroids' GPU: ``−2c`` by dimension, then ``‖c‖²``; K padded to
    whole tiles with centroids at +inf (never nearest). Build once per centroid set."""
    k, d = centroids.shape
    c = centroids.to(torch.float32)
    k_pad = -(-k // TILE) * TILE
    out = torch.zeros(d + 1, k_pad, dtype=torch.float32, device=c.device)
    out[:d, :k] = -2.0 * c.T  # exact: a power of two
    out[d, :k] = (c * c).sum(dim=1)
    out[d, k:] = float("inf")
    return out


def nearest(points: torch.Tensor, prepared: torch.Tensor, distances: bool = False
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Labels (int64) of the nearest centroid of each row of ``points [n, d]`` (fp32, on the GPU) given
    :func:`prepare` ``(centroids)``; with ``distances``, also ``‖c‖² − 2 p·c`` at that centroid."""
    import cupy

    n, d = points.shape
    if prepared.shape[0] != d + 1 or prepared.device != points.device:
        raise ValueError(f"points are {d}-dimensional on {points.device}; the prepared centroids are "
                         f"{prepared.shape[0] - 1}-dimensional on {prepared.device}")
    pts = points.to(torch.float32).contiguous()
    labels = torch.empty(n, dtype=torch.int32, device=pts.device)
    best = torch.empty(n if distances else 0, dtype=torch.float32, device=pts.device)
    if n:
        dev = pts.device.index if pts.device.index is not None else torch.cuda.current_device()
        stream = cupy.cuda.Stream.from_external(torch.cuda.current_stream(pts.device))  # torch's, shared
        with cupy.cuda.Device(dev), stream:
            _kernel(d, dev)(((n + TILE - 1) // TILE,), (THREADS,),
                            (cupy.asarray(pts), cupy.int64(n), cupy.asarray(prepared), cupy.int32(prepared.shape[1]),
                             cupy.asarray(labels), cupy.asarray(best) if distances else cupy.uint64(0)))
    return (labels.long(), best) if distances else labels.long()


def nvrtc_compile(arch: str, d: int) -> bytes:
    """The kernel for ``d``-dimensional points compiled by NVRTC for ``arch`` (e.g. "sm_90"), no GPU
    needed; a compile error raises with NVRTC's log."""
    from .nvrtc import cubin

    return cubin(SOURCE.read_text(), SOURCE.name, [f"--gpu-architecture={arch}", *_options(d)])
