"""Quick timings of head forwards on the GPU, for the LUTHAM stage's report.

Each forward is timed end to end as a caller sees it (wall clock from the call until the GPU is
idle again, median of ``repeats`` after ``warmup`` calls), so LUTHAM's own stream, graph launch
and copy back count. The full benchmark, with compiled dense baselines and CUDA-event timings,
is ``bench/lutham_gpu.py``.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["median_us", "compare"]


def median_us(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, warmup: int = 3,
              repeats: int = 20) -> float:
    """Median wall-clock µs of ``fn(x)`` with the device synchronised after each call."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def compare(models: dict[str, Callable], n_in: int, rows: tuple[int, ...], seed: int = 0) -> list[dict]:
    """``[{"rows", name: µs, ...}]`` for every row count, the same standard-normal inputs for all
    (each model gets them in the dtype of its first parameter, fp32 when it has none). A model
    that cannot run a row count (out of memory, an unsupported dtype) gets ``None`` there."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    table = []
    for r in rows:
        x = torch.randn(r, n_in, generator=g).cuda()
        row = {"rows": r}
        for name, m in models.items():
            p = next(iter(m.parameters()), None) if isinstance(m, torch.nn.Module) else None
            try:
                row[name] = median_us(m, x.to(p.dtype) if p is not None and p.is_floating_point() else x)
            except (RuntimeError, ValueError):
                row[name] = None
        table.append(row)
    return table
