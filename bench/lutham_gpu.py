"""Question: how fast and how small is LUTHAM against dense KAN inference on one GPU?

Heads: (a) the trained detection head with its K=4,096 codebook (``--trained``, exported by
``bench/export_trained.py``), (b) a mid head 4,096→1,024→256 and (c) a large head
12,544→1,024→1,024, both with random splines and a K=65,536 codebook from Lloyd k-means on their
own shapes (a few GPU iterations). Rows per call: 1, 49, 392, 3,136. Variants: eager dense fp32
(efficient-kan style ``KAN``), ``torch.compile`` dense fp16, the torch ``VQKANLinear`` reference
and LUTHAM. Reported: median µs (CUDA events, warm, inputs rotated over 8 buffers), GB/s of the
variant's weight bytes against the copy bandwidth measured in the same run, peak device memory
(torch allocator; LUTHAM: its arena), and LUTHAM's max relative error against the reference.
Needs only torch, cupy and numpy (runs on the device machine).

    python bench/lutham_gpu.py --json bench/results/lutham_gpu.json [--trained out/lutham/trained.pt]
    ncu --clock-control none -k regex:lutham --metrics lts__t_sector_hit_rate.pct python bench/lutham_gpu.py --profile mid
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.demo import format_table  # noqa: E402
from sharekan.kan import KAN  # noqa: E402
from sharekan.lutham.runtime import LuthamHead  # noqa: E402
from sharekan.lutham.validate import validate  # noqa: E402
from sharekan.vq_kan import VQKAN, edge_shapes, encode_layer  # noqa: E402

ROWS = (1, 49, 392, 3136)


def gpu_kmeans(x: torch.Tensor, k: int, iters: int, seed: int = 0) -> torch.Tensor:
    """Spherical Lloyd on the GPU (no FAISS on the device machine)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k].to(x.device)].clone()
    for _ in range(iters):
        lab = torch.empty(len(x), dtype=torch.int64, device=x.device)
        step = max(1, (1 << 28) // k)  # ~1 GiB distance block
        for s in range(0, len(x), step):
            lab[s:s + step] = torch.cdist(x[s:s + step], c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        cnt = torch.bincount(lab, minlength=k)
        live = cnt > 0
        c[live] = torch.nn.functional.normalize(sums[live] / cnt[live, None], dim=1)
    return c


def random_head(sizes, k, iters):
    torch.manual_seed(0)
    kan = KAN(sizes, grid_size=10).cuda()
    with torch.no_grad():
        for lay in kan.layers:
            lay.spline_weight.normal_(0, 0.5)
            lay.base_weight.normal_(0, 1 / lay.in_features ** 0.5)
            lay.spline_scaler.uniform_(0.5, 1.5)
    shapes = torch.cat(edge_shapes(kan))
    cb = gpu_kmeans(shapes, k, iters)
    return kan, VQKAN([encode_layer(lay, cb, "fp16") for lay in kan.layers]).eval()


def trained_head(path):
    blob = torch.load(path, map_location="cuda")
    kan = KAN(blob["sizes"], grid_size=10).cuda()
    kan.load_state_dict(blob["kan"])
    return kan, VQKAN([encode_layer(lay, blob["codebook"].cuda(), "fp16") for lay in kan.layers]).eval(), blob["rows"]


def timed(fn, inputs, reps=50):
    for x in inputs[:3]:
        fn(x)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(inputs[i % len(inputs)])
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return statistics.median(times)


def copy_bandwidth() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = timed(lambda _: dst.copy_(src), [None], reps=20)
    return 2 * src.numel() / us / 1e3  # GB/s, bytes read + written


def bench_head(name, kan, vq, real=None, rows_list=ROWS):
    edges = sum(lay.in_features * lay.out_features for lay in kan.layers)
    check_head = LuthamHead(vq, max_rows=100)
    check = validate(check_head, vq, real=real)
    plan = check_head.plan.summary()
    del check_head
    fp16 = KAN([kan.layers[0].in_features] + [lay.out_features for lay in kan.layers], grid_size=10).cuda()
    fp16.load_state_dict(kan.state_dict())
    fp16 = fp16.half()
    compiled = torch.compile(fp16, dynamic=True)
    weights = {"eager dense fp32": kan, "compiled dense fp16": fp16, "torch VQ reference": vq}
    out = []
    for rows in rows_list:
        lut = LuthamHead(vq, max_rows=rows)  # arena planned for this batch: scratch stays small
        moved = sum(lut.plan.by_component[c] for c in ("codebook", "indices", "gains", "biases", "base"))
        read = {"eager dense fp32": edges * 15 * 4, "compiled dense fp16": edges * 15 * 2,
                "torch VQ reference": moved, "LUTHAM": moved, "LUTHAM gather only": moved}
        inputs = [torch.rand(rows, kan.layers[0].in_features, device="cuda") * 2 - 1 for _ in range(8)]
        variants = {"eager dense fp32": lambda x: kan(x), "compiled dense fp16": lambda x: compiled(x.half()),
                    "torch VQ reference": lambda x: vq(x)}
        gather_only = LuthamHead(vq, max_rows=rows, mma_min_rows=1 << 30) if rows >= 16 else None
        for vname in (*variants, "LUTHAM", "LUTHAM gather only"):
            if vname == "LUTHAM gather only" and gather_only is None:
                continue
            if vname == "torch VQ reference" and rows * edges > 4e9:
                continue  # its chunked gather takes seconds here; the reference is for correctness
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.no_grad():
                us = (_timed_cupy(lut, inputs) if vname == "LUTHAM" else _timed_cupy(gather_only, inputs)
                      if vname == "LUTHAM gather only" else timed(variants[vname], inputs))
            if vname.startswith("LUTHAM"):
                peak = lut.plan.total
            else:
                own = sum(t.numel() * t.element_size() for t in weights[vname].state_dict().values())
                peak = torch.cuda.max_memory_allocated() - base + own
            out.append({"head": name, "rows": rows, "variant": vname, "us": us, "gbps": read[vname] / us / 1e3,
                        "peak_bytes": peak, "l2_window": lut.plan.l2_persisting if vname.startswith("LUTHAM") else None})
            print(f"{name:7s} rows {rows:5d} {vname:20s} {us:10.1f} µs", flush=True)
        del lut, gather_only
    return out, check, plan


def _timed_cupy(lut, inputs, reps=50):
    import cupy as cp

    xs = [cp.asarray(x) for x in inputs]
    for x in xs[:3]:
        lut.forward(x)
    lut.stream.synchronize()
    times = []
    for i in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(lut.stream)
        lut.forward(xs[i % len(xs)])
        b.record(lut.stream)
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b) * 1000)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench/results/lutham_gpu.json")
    p.add_argument("--trained", help="exported trained head (bench/export_trained.py)")
    p.add_argument("--kmeans-iters", type=int, default=4)
    p.add_argument("--heads", nargs="+", default=["trained", "mid", "large"])
    p.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    p.add_argument("--profile", help="only run LUTHAM on this head repeatedly (for ncu)")
    a = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = {"mid": [4096, 1024, 256], "large": [12_544, 1024, 1024]}
    if a.profile:
        import cupy as cp

        _, vq = random_head(sizes[a.profile], 65_536, 1)
        for rows in (1, 49):  # repeated inference on one arena: is it served from L2?
            lut = LuthamHead(vq, max_rows=rows)
            x = cp.asarray(torch.rand(rows, sizes[a.profile][0], device="cuda") * 2 - 1)
            for _ in range(10):
                lut.forward(x)
            lut.stream.synchronize()
            print(f"rows {rows}: arena {lut.plan.total:,} B; L2 window {lut.plan.l2_persisting}")
        return
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw:.0f} GB/s; L2 {torch.cuda.get_device_properties(0).L2_cache_size / 2**20:.0f} MiB")
    results, checks, plans = [], {}, {}
    for name in a.heads:
        if name == "trained":
            if not a.trained or not Path(a.trained).is_file():
                print("no --trained export; skipping head (a)")
                continue
            kan, vq, real = trained_head(a.trained)
        else:
            kan, vq = random_head(sizes[name], 65_536, a.kmeans_iters)
            real = None
        rows, checks[name], plans[name] = bench_head(name, kan, vq, real, a.rows)
        results += rows
        del kan, vq
        torch.cuda.empty_cache()
    for r in results:
        r["copy_fraction"] = r["gbps"] / bw
    print(format_table(results, [("head", "head", "s"), ("rows", "rows", "d"), ("variant", "variant", "s"),
                          ("us", "µs", ".1f"), ("gbps", "GB/s", ".0f"), ("copy_fraction", "of copy", ".2f"),
                          ("peak_bytes", "peak B", ",d")]))
    for name, c in checks.items():
        print(f"{name}: LUTHAM max rel. error {c['max_rel_error']:.2e}, all written {c['all_written']}; "
              f"arena {plans[name]['total_bytes']:,} B, L2 window {plans[name]['l2_persisting']}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"copy_gbps": bw, "device": torch.cuda.get_device_name(0), "results": results,
                                        "validation": checks, "plans": {k: {kk: vv for kk, vv in v.items() if kk != "blocks"}
                                                                        for k, v in plans.items()}}, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
