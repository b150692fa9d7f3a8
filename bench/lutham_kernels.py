"""Where a LUTHAM forward's GPU time goes, kernel by kernel (device machine).

Builds a synthetic head (``bench/lutham_gpu.py``'s ``random_head``, K = 65,536), runs LUTHAM
without CUDA graphs at each row count and precision, and records every kernel a forward launches
with ``torch.profiler`` (CUPTI sees CuPy's and cuBLAS's kernels too): GPU µs a forward and
launches a forward, per kernel name. Prints a table per case and writes JSON.

    python bench/lutham_kernels.py --head large --rows 392 3136 --precisions low medium high [--slab-mb 64 16]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lutham_gpu import SIZES, random_head  # noqa: E402
from sharekan.lutham.geometry import PRECISIONS, SLAB_BYTES  # noqa: E402
from sharekan.lutham.runtime import LuthamHead  # noqa: E402


def breakdown(vq, in_f: int, rows: int, precision: str, slab_from: int | None, slab_mb: int,
              calls: int = 5) -> dict:
    """GPU µs a forward and launches a forward, per kernel, over ``calls`` forwards after 3 warm-ups."""
    import cupy as cp

    lut = LuthamHead(vq, max_rows=rows, precision=precision, use_graphs=False, slab_from=slab_from,
                     slab_bytes=slab_mb << 20)
    x = cp.asarray(torch.rand(rows, in_f, device="cuda") * 2 - 1)
    for _ in range(3):
        lut.forward(x)
    lut.stream.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            lut.forward(x)
        lut.stream.synchronize()
        torch.cuda.synchronize()
    kernels = sorted(((e.key, e.count // calls, e.device_time_total / calls) for e in prof.key_averages()
                      if e.device_time_total > 0), key=lambda k: -k[2])
    return {"rows": rows, "precision": precision, "slab_from": slab_from, "slab_mb": slab_mb,
            "arena_bytes": lut.plan.total,
            "gpu_us": sum(k[2] for k in kernels),
            "kernels": [{"name": n, "launches": c, "us": round(t, 1)} for n, c, t in kernels]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head", choices=list(SIZES), default="large")
    p.add_argument("--rows", type=int, nargs="+", default=[49, 392, 3136])
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--slab-from", type=int, help="rows from which layers run as cuBLAS slabs [geometry's]")
    p.add_argument("--slab-mb", type=int, nargs="+", default=[SLAB_BYTES >> 20],
                   help="slab workspace bounds to run (MB) [geometry's]")
    p.add_argument("--json", default="bench/results/lutham_kernels.json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device (run it on the device machine)")
    _, vq = random_head(SIZES[a.head], 65_536, 1)
    cases = []
    for rows in a.rows:
        for prec in a.precisions:
            for mb in a.slab_mb:
                case = breakdown(vq, SIZES[a.head][0], rows, prec, a.slab_from, mb)
                cases.append(case)
                print(f"\n{a.head}, {rows} rows, {prec}, slabs ≤ {mb} MB: {case['gpu_us']:.1f} µs of kernels a "
                      f"forward, arena {case['arena_bytes']:,} B")
                for k in case["kernels"][:8]:
                    print(f"  {k['us']:9.1f} µs  x{k['launches']:<3d} {k['name'][:90]}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"head": a.head, "sizes": SIZES[a.head], "device": torch.cuda.get_device_name(),
                                        "cases": cases}, indent=1))
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
