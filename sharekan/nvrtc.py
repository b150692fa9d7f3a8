"""NVRTC straight (CuPy's bindings): CUDA source to a cubin on any machine, no GPU needed — how CI
checks that the kernels compile, and how LUTHAM's stage builds the binary it stores."""

from __future__ import annotations

__all__ = ["cubin"]


def cubin(source: str, filename: str, options: list[str], headers: dict[str, bytes] | None = None) -> bytes:
    """``source`` compiled with ``options`` (``--gpu-architecture=sm_XX`` among them); ``headers`` maps
    include names to their text. A compile error raises naming ``filename`` with NVRTC's log."""
    from cupy_backends.cuda.libs import nvrtc

    headers = headers or {}
    prog = nvrtc.createProgram(source, filename, list(headers.values()), [h.encode() for h in headers])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            arch = next((o.split("=", 1)[1] for o in options if o.startswith("--gpu-architecture=")), "?")
            raise RuntimeError(f"{filename} does not compile for {arch}:\n{nvrtc.getProgramLog(prog)}") from e
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
