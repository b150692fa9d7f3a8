"""cuBLAS GEMMs for LUTHAM's slab path, called through ctypes on the libcublas CuPy loaded.

CuPy's own binding refuses cuBLAS calls while a stream is being captured (LUTHAM captures each row
count's launches as one CUDA graph), sets the handle's stream to CuPy's current stream on every
call, and has no ``cublasSetWorkspace``. A :class:`Blas` handle gets its stream and a workspace
(in the arena) once, so a GEMM allocates nothing and is captured like a kernel launch.
"""

from __future__ import annotations

import ctypes
import weakref

__all__ = ["Blas"]

_OP_N, _OP_T = 0, 1
_R_16F, _R_32F = 2, 0  # cudaDataType
_COMPUTE_32F, _ALGO_DEFAULT = 68, -1


def _library() -> ctypes.CDLL:
    import cupy_backends.cuda.libs.cublas  # noqa: F401  (loads CuPy's libcublas)

    with open("/proc/self/maps") as maps:
        path = next((ln.split()[-1] for ln in maps if "/libcublas.so" in ln), None)
    if path is None:
        raise RuntimeError("LUTHAM's slab path needs libcublas, and CuPy did not load one in this process")
    return ctypes.CDLL(path)


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} failed with cuBLAS status {status}")


class Blas:
    """One cuBLAS handle bound to ``stream`` with ``nbytes`` of workspace at device pointer ``workspace``."""

    def __init__(self, stream: int, workspace: int, nbytes: int):
        self._lib = lib = _library()
        self._handle = ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(self._handle)), "cublasCreate")
        weakref.finalize(self, lib.cublasDestroy_v2, self._handle)
        _check(lib.cublasSetStream_v2(self._handle, ctypes.c_void_p(stream)), "cublasSetStream")
        _check(lib.cublasSetWorkspace_v2(self._handle, ctypes.c_void_p(workspace), ctypes.c_size_t(nbytes)),
               "cublasSetWorkspace")
        self._one, self._zero = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def gemm_nt(self, rows: int, cols: int, k: int, a: int, b: int, y: int, accumulate: bool,
                lda: int | None = None, ldb: int | None = None) -> None:
        """``y [rows, cols]`` fp32, row-major, = (or += with ``accumulate``) ``a [rows, k] · b [cols, k]ᵀ``
        with ``a`` and ``b`` fp16 row-major, their rows ``lda`` and ``ldb`` elements apart (default
        ``k``); fp32 accumulation."""
        # column-major view: yᵀ [cols × rows] = op(b)ᵀ [cols × k] · aᵀ [k × rows]
        _check(self._lib.cublasGemmEx(self._handle, _OP_T, _OP_N, cols, rows, k, ctypes.byref(self._one),
                                      ctypes.c_void_p(b), _R_16F, ldb or k, ctypes.c_void_p(a), _R_16F, lda or k,
                                      ctypes.byref(self._one if accumulate else self._zero), ctypes.c_void_p(y),
                                      _R_32F, cols, _COMPUTE_32F, _ALGO_DEFAULT), "cublasGemmEx")
