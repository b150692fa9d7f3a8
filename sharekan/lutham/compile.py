"""Compiling the LUTHAM kernels: NVRTC straight (any machine, no GPU needed: CI's check) or a CuPy
``RawModule`` for the GPU in hand. Returns the binary so it can be stored as an artifact.

Two sources share ``kernels/common.cuh``: ``lutham.cu`` (v12: 8-byte records, :data:`KERNELS`) and
``packed.cu`` (v3: packed planes, :data:`PACKED_KERNELS`); ``source`` picks one by name."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from .geometry import CLUSTER_KERNELS, KERNELS, PACKED_KERNELS, defines

__all__ = ["SOURCES", "KERNELS", "PACKED_KERNELS", "ARCHS", "source", "include_dirs", "nvrtc_compile", "load_module",
           "load_cubin", "source_hash", "kernel_names"]

_DIR = Path(__file__).with_name("kernels")
SOURCES = {"lutham": _DIR / "lutham.cu", "packed": _DIR / "packed.cu"}
HEADER = _DIR / "common.cuh"
ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
OPTIONS = ("-std=c++17", "--use_fast_math", *defines())


def _path(name: str) -> Path:
    if name not in SOURCES:
        raise ValueError(f"kernel source must be one of {sorted(SOURCES)}, got {name!r}")
    return SOURCES[name]


def source(name: str = "lutham") -> str:
    return _path(name).read_text()


def source_hash() -> str:
    """What the binaries are built from: every kernel source, the shared header and the compile
    options (tile constants)."""
    data = b"".join(p.read_bytes() for p in (*SOURCES.values(), HEADER)) + " ".join(OPTIONS).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def kernel_names(name: str, arch: str) -> tuple[str, ...]:
    """The kernels of source ``name`` compiled for ``arch`` (``packed_row1_lutc`` needs sm_90's clusters)."""
    if name == "lutham":
        return KERNELS
    return PACKED_KERNELS + (CLUSTER_KERNELS if int(arch.removeprefix("sm_")) >= 90 else ())


def include_dirs() -> list[str]:
    """Folders holding ``cuda_fp16.h`` and ``mma.h``: $CUDA_PATH, CuPy's CUDA, pip's nvidia headers."""
    cands = [os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    try:
        import cupy

        cands.append(cupy.cuda.get_cuda_path() or "")
    except Exception:  # cupy without a CUDA install still imports; its path may be None
        pass
    roots = [Path(c) / "include" for c in cands if c]
    for sp in map(Path, sys.path):
        roots += [sp / "nvidia" / "cu13" / "include", sp / "nvidia" / "cuda_runtime" / "include"]
    return list(dict.fromkeys(str(r) for r in roots if (r / "cuda_fp16.h").is_file() and (r / "mma.h").is_file()))


def nvrtc_compile(arch: str, name: str = "lutham") -> bytes:
    """The kernels of source ``name`` compiled by NVRTC for ``arch`` (e.g. "sm_90"); a compile error
    raises with NVRTC's log."""
    from ..nvrtc import cubin

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    incs = include_dirs()
    if not incs:
        raise RuntimeError("no CUDA headers (cuda_fp16.h, mma.h) found: set CUDA_PATH")
    return cubin(source(name), _path(name).name, [f"--gpu-architecture={arch}", *OPTIONS, *(f"-I{d}" for d in incs)],
                 {HEADER.name: HEADER.read_bytes()})


def load_module(name: str = "lutham"):
    """A CuPy ``RawModule`` of source ``name``'s kernels for the current GPU (compiled by NVRTC, cached
    by CuPy)."""
    import cupy

    return cupy.RawModule(code=source(name), options=(*OPTIONS, f"-I{_DIR}", *(f"-I{d}" for d in include_dirs())),
                          name_expressions=None)


def load_cubin(cubin: bytes, name: str = "lutham"):
    """A CuPy ``RawModule`` of a stored binary of source ``name`` (from :func:`nvrtc_compile`), for the
    GPU in hand."""
    import tempfile

    import cupy

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        module = cupy.RawModule(path=f.name)
        for kernel in kernel_names(name, f"sm_{cupy.cuda.Device().compute_capability}"):  # now, while the file exists
            module.get_function(kernel)
    return module
