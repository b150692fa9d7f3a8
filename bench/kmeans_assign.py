"""Question: how close to the GPU's fp32 peak is the k-means assignment, fused or through torch?

On ``--points`` unit shape vectors (d = 13, ``shapes_data``) and K centroids drawn from them, the two
GPU assignment kernels of ``sharekan.kmeans_steps.gpu_nearest`` side by side in one run:

* ``fused``: ``sharekan.nearest`` — fp32 ‖c‖² − 2 p·c and the argmin in one kernel, no distance matrix;
* ``torch``: blocked fp32 ``addmm`` (cuBLAS SGEMM, TF32 off) then ``argmin``, the distances written
  and re-read — the path before the fused kernel.

Reported per K: seconds for the labels (median of ``--reps`` after a warm-up), the rate at 2·n·K·d
flops, its share of the card's fp32 (non-tensor) peak (SMs × 128 lanes × 2 × boost clock), the whole
k-means step (labels, then float64 sums, counts and objective: ``assign_stats``), the speed-up, and
how the two kernels' labels agree: points labelled differently and the largest gap between their
two distances (near-ties of fp32 rounding), and the relative difference of the objectives.

    python bench/kmeans_assign.py --points 10000000 --ks 4096 65536 --json bench/results/kmeans_assign.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.kmeans_steps import assign_stats, gpu_nearest  # noqa: E402
from sharekan.table import format_table  # noqa: E402

from shapes_data import D, shapes  # noqa: E402

KERNELS = ("fused", "torch")


def fp32_peak() -> float:
    """FLOP/s of the current card's fp32 FMA units at boost clock."""
    import cupy

    rt = cupy.cuda.runtime
    dev = torch.cuda.current_device()
    sms = rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, dev)
    khz = rt.deviceGetAttribute(rt.cudaDevAttrClockRate, dev)
    return sms * 128 * 2 * khz * 1e3


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=10_000_000)
    p.add_argument("--ks", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default="bench/results/kmeans_assign.json")
    a = p.parse_args(argv)

    x = shapes(a.points)
    pts = torch.from_numpy(x).cuda()
    peak = fp32_peak()
    results = []
    for k in a.ks:
        cb_np = x[np.random.default_rng(1).choice(len(x), k, replace=False)]
        cb = torch.from_numpy(cb_np).cuda()
        flops = 2.0 * len(x) * k * D
        out = {}
        for kernel in KERNELS:
            print(f"K={k}: {kernel} ...", flush=True)
            labels = gpu_nearest(pts, cb, kernel)
            sec = timed(lambda: gpu_nearest(pts, cb, kernel), a.reps)
            step = timed(lambda: assign_stats(pts, cb_np, "cuda", kernel), a.reps)
            objective = assign_stats(pts, cb_np, "cuda", kernel)[2]
            out[kernel] = {"k": k, "kernel": kernel, "points": len(x), "labels_s": sec, "tflops": flops / sec / 1e12,
                           "peak_share": flops / sec / peak, "step_s": step, "objective": objective,
                           "labels": labels}
        f, t = out["fused"], out["torch"]
        diff = (f["labels"] != t["labels"]).nonzero().flatten()
        gap = 0.0
        if len(diff):
            p_ = pts[diff].double()
            da = (p_ - cb[f["labels"][diff]].double()).square().sum(1)
            db = (p_ - cb[t["labels"][diff]].double()).square().sum(1)
            gap = float((da - db).abs().max())
        for r in out.values():
            r.pop("labels")
            r["speedup_vs_torch"] = t["labels_s"] / r["labels_s"]
            r["labels_differing"] = int(len(diff))
            r["max_distance_gap_where_differing"] = gap
            r["objective_rel_diff"] = abs(r["objective"] - t["objective"]) / t["objective"]
            results.append(r)
        print(f"K={k}: fused {f['labels_s']:.3f} s ({f['peak_share']:.0%} of peak), torch {t['labels_s']:.3f} s",
              flush=True)
    print(format_table(results, [("k", "K", "d"), ("kernel", "kernel", "s"), ("labels_s", "labels s", ".3f"),
                                 ("tflops", "TFLOP/s", ".1f"), ("peak_share", "of fp32 peak", ".0%"),
                                 ("step_s", "k-means step s", ".3f"), ("speedup_vs_torch", "vs torch", ".2f"),
                                 ("labels_differing", "labels differ", "d"),
                                 ("objective_rel_diff", "objective rel. diff", ".1e")]))
    meta = {"points": a.points, "dim": D, "gpu": torch.cuda.get_device_name(), "fp32_peak_tflops": peak / 1e12,
            "reps": a.reps, "command": "python bench/kmeans_assign.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
