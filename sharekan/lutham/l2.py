"""An L2 persisting access-policy window over LUTHAM's arena, through the CUDA runtime (ctypes:
CuPy exposes no stream attribute for it). Best effort: :func:`persist` says what was set, or why not."""

from __future__ import annotations

import ctypes

__all__ = ["persist"]


class _Window(ctypes.Structure):
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hitRatio", ctypes.c_float),
                ("hitProp", ctypes.c_int), ("missProp", ctypes.c_int)]


class _AttrValue(ctypes.Union):
    _fields_ = [("accessPolicyWindow", _Window), ("pad", ctypes.c_char * 64)]


def _cudart():
    with open("/proc/self/maps") as f:  # the runtime CuPy already loaded, so handles agree
        paths = {line.split()[-1] for line in f if "libcudart.so" in line}
    if not paths:
        raise OSError("libcudart is not loaded")
    return ctypes.CDLL(sorted(paths)[0])


def persist(arena, hot: int, total: int, stream) -> str:
    """Ask for an L2 persisting window over the arena's prefix; says what was set, or why not."""
    import cupy as cp

    try:
        dev = cp.cuda.Device().id
        rt = cp.cuda.runtime
        max_window = rt.deviceGetAttribute(109, dev)   # cudaDevAttrMaxAccessPolicyWindowSize
        max_persist = rt.deviceGetAttribute(108, dev)  # cudaDevAttrMaxPersistingL2CacheSize
        if max_window <= 0 or max_persist <= 0:
            return "not set: device has no persisting L2"
        window = min(total, max_window, max_persist)  # the prefix the set-aside holds entirely (hit ratio 1)
        rt.deviceSetLimit(0x06, window)  # cudaLimitPersistingL2CacheSize
        value = _AttrValue()
        value.accessPolicyWindow = _Window(arena.data.ptr, window, 1.0, 2, 1)
        err = _cudart().cudaStreamSetAttribute(ctypes.c_void_p(stream.ptr), 1, ctypes.byref(value))
        if err:
            return f"not set: cudaStreamSetAttribute error {err}"
        return (f"set: {window:,} B window of the {total:,} B arena (hot prefix {hot:,} B), hit ratio 1.00, "
                f"device persisting limit {max_persist:,} B")
    except Exception as e:  # no runtime symbol, unsupported device: the plan says so
        return f"not set: {e}"
