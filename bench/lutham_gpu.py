"""Question: how fast and how small is LUTHAM against dense KAN inference on one GPU?

Heads: (a) the trained detection head with its K=4,096 codebook (``--trained``, exported by
``bench/export_trained.py``), (b) a mid head 4,096→1,024→256 and (c) a large head
12,544→1,024→1,024, both with random splines and a K=65,536 codebook from Lloyd k-means on their
own shapes (a few GPU iterations). Rows per call: 1, 49, 392, 3,136. Variants: eager dense fp32
(efficient-kan style ``KAN``: the accuracy reference), the dense head as a user deploys it at its
best (``sharekan.baselines.DenseKAN``: fp16 weights, one GEMM a layer) eager and compiled per row
count with static shapes in ``max-autotune-no-cudagraphs`` and ``max-autotune`` (CUDA graphs,
as LUTHAM itself uses graphs; ``fullgraph=True`` and the graph-break count recorded), the torch
``VQKANLinear`` reference and LUTHAM at each precision (``high``: near fp32, the default;
``medium``: fp16 bases; ``low``: fp16 weights and bases, a dense fp16 head's rounding) on the path
its row count picks, and with ``--paths`` on the other path too (fused kernels against cuBLAS
slabs; ``--slab-mb`` adds slab variants with other workspace bounds). Every ratio is against the fastest fp16 dense variant of
the same head and row count in this run ("best dense"). Reported: median µs (CUDA events around each call, which waits behind a blocking kernel so the GPU
runs it back to back — GPU time, not host launch latency; warm, inputs rotated over 8 buffers), GB/s of the
variant's weight bytes against the copy bandwidth measured in the same run, peak device memory
(torch allocator; LUTHAM: its arena, and the device memory its construction and first call took,
cuBLAS's own workspace included), and LUTHAM's max relative error against the reference.
Needs only torch, cupy and numpy (runs on the device machine).

    python bench/lutham_gpu.py --json bench/results/lutham_gpu.json [--trained out/lutham/trained.pt]
    ncu --clock-control none -k regex:lutham --metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,smsp__inst_executed_pipe_tensor_op_hmma.sum python bench/lutham_gpu.py --profile large
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.table import format_table  # noqa: E402
from sharekan.baselines import DenseKAN  # noqa: E402
from sharekan.clustering import fit_codebook  # noqa: E402
from sharekan.kan import KAN  # noqa: E402
from sharekan.lutham.geometry import PRECISIONS, SLAB_BYTES, uses_slab  # noqa: E402
from sharekan.lutham.runtime import LuthamHead  # noqa: E402
from sharekan.lutham.validate import ROWS as ROWS_CHECKED, validate  # noqa: E402
from sharekan.vq_kan import VQKAN, edge_shapes, encode_layer  # noqa: E402

ROWS = (1, 49, 392, 3136)
SIZES = {"mid": [4096, 1024, 256], "large": [12_544, 1024, 1024]}  # the synthetic heads


def random_kan(sizes) -> KAN:
    """A dense KAN of ``sizes`` with random splines (seed 0), on the GPU."""
    torch.manual_seed(0)
    kan = KAN(sizes, grid_size=10).cuda()
    with torch.no_grad():
        for lay in kan.layers:
            lay.spline_weight.normal_(0, 0.5)
            lay.base_weight.normal_(0, 1 / lay.in_features ** 0.5)
            lay.spline_scaler.uniform_(0.5, 1.5)
    return kan


def random_head(sizes, k, iters):
    kan = random_kan(sizes)
    shapes = torch.cat(edge_shapes(kan))
    cb = fit_codebook(shapes, k, niter=iters, backend="cuda").cuda()  # the library's k-means, assigned on the GPU
    return kan, VQKAN([encode_layer(lay, cb, "fp16") for lay in kan.layers]).eval()


def trained_head(path):
    blob = torch.load(path, map_location="cuda")
    kan = KAN(blob["sizes"], grid_size=10).cuda()
    kan.load_state_dict(blob["kan"])
    return kan, VQKAN([encode_layer(lay, blob["codebook"].cuda(), "fp16") for lay in kan.layers]).eval(), blob["rows"]


HOLD_US = 1000  # the blocking kernel before each timed call
_HOLD = None


def hold(stream_ptr: int, us: float = HOLD_US) -> None:
    """Keep the GPU busy ``us`` µs on a stream (a one-thread spin kernel), so what the host enqueues
    behind it meanwhile runs back to back: the events around a call then time the GPU's work, not
    the host's launch latency (nvbench's blocking kernel). A call whose host side takes longer than
    ``us`` is still timed with its launch gaps."""
    import cupy as cp

    global _HOLD
    if _HOLD is None:
        _HOLD = cp.RawKernel("extern \"C\" __global__ void hold(long long n) "
                             "{ const long long t = clock64(); while (clock64() - t < n) {} }", "hold")
    cycles = int(us * 2000)  # clocks of at most 2 GHz: at least ``us`` µs
    with cp.cuda.ExternalStream(stream_ptr):
        _HOLD((1,), (1,), (cp.int64(cycles),))


def timed(fn, inputs, reps=50):
    """Median µs of ``fn`` on torch's current stream (warm), each call behind :func:`hold`."""
    for x in inputs[:3]:
        fn(x)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        hold(torch.cuda.current_stream().cuda_stream)
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


DENSE_MODES = ("max-autotune-no-cudagraphs", "max-autotune")


def cuda_graphed(module, rows: int, in_features: int):
    """``module``'s forward on ``[rows, in_features]`` captured once as a CUDA graph (its launches
    replayed together, as LUTHAM's are); the input is copied into the graph's buffer."""
    static_x = torch.zeros(rows, in_features, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # compile (Triton) and warm up outside the capture
            module(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_y = module(static_x)

    def run(x):
        static_x.copy_(x)
        graph.replay()
        return static_y
    return run


def dense_variants(kan, rows: int, modes=DENSE_MODES):
    """The dense head as a user runs it, every form we can build: eager fp32 (efficient-kan style,
    the reference); fp16 ``DenseKAN`` eager and ``torch.compile``d per row count with static shapes
    in each of ``modes``, with the Cox–de Boor bases and with closed-form cubic bases; and our
    sparse-basis kernel (``sharekan.sparse_dense``: only the 5 weight rows an input needs), CUDA
    graphed. Values: (callable, module holding the weights, compile seconds)."""
    from sharekan.sparse_dense import SparseBasisKAN

    fp16 = DenseKAN(kan, torch.float16).eval()
    out = {"dense fp32 eager": (kan, None, 0.0), "dense fp16 eager": (fp16, None, 0.0)}
    for closed in (False, True):
        for mode in modes:
            t = time.perf_counter()
            fn = torch.compile(DenseKAN(kan, torch.float16, closed_form=closed).eval(), mode=mode, dynamic=False,
                               fullgraph=True)
            x = torch.rand(rows, kan.layers[0].in_features, device="cuda")
            with torch.no_grad():
                fn(x)  # compile (and autotune) for this shape now, not inside the timing
            torch.cuda.synchronize()
            form = "closed-form bases, " if closed else ""
            out[f"dense fp16 compiled ({form}{mode})"] = (fn, fp16, time.perf_counter() - t)
    sparse = SparseBasisKAN(kan).eval()
    t = time.perf_counter()
    out["dense fp16 sparse-basis kernel"] = (cuda_graphed(sparse, rows, kan.layers[0].in_features), sparse,
                                             time.perf_counter() - t)
    return out


def graph_breaks(kan, rows: int) -> int:
    torch._dynamo.reset()
    x = torch.rand(rows, kan.layers[0].in_features, device="cuda")
    with torch.no_grad():
        return torch._dynamo.explain(DenseKAN(kan, torch.float16).eval())(x).graph_break_count


def rel_err(y, ref) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def built(head_cls, vq, rows: int, **kw):
    """A LUTHAM head of ``head_cls`` planned for ``rows`` rows, and the device bytes its
    construction and first call took."""
    import cupy as cp

    cp.get_default_memory_pool().free_all_blocks()
    torch.cuda.synchronize()
    free = cp.cuda.runtime.memGetInfo()[0]
    head = head_cls(vq, max_rows=rows, **kw)
    head.forward(torch.zeros(rows, head.plan.layers[0].in_features, device="cuda"))
    head.stream.synchronize()
    return head, free - cp.cuda.runtime.memGetInfo()[0]


LABELS = {"high": "LUTHAM", "medium": "LUTHAM fp16 bases", "low": "LUTHAM fp16"}


def lutham_variants(vq, rows: int, paths: bool, slab_mb=(), precisions=tuple(PRECISIONS)):
    """LUTHAM heads planned for ``rows`` rows: each precision on its default path; with ``paths``
    the other path too; per ``slab_mb`` budget, slab variants with that workspace bound. Values:
    (head, device bytes its construction and first call took)."""
    def made(**kw):
        return built(LuthamHead, vq, rows, **kw)

    out = {}
    for prec, label in LABELS.items():
        if prec not in precisions or rows == 1 and prec != "high":
            continue  # one row runs the fp32 gather whatever the precision
        out[label] = made(precision=prec)
        if rows > 1 and paths:
            slab = uses_slab(rows, PRECISIONS[prec])
            other = "tensor-core kernels" if slab else "cuBLAS slabs"
            out[f"{label} ({other})"] = made(precision=prec, slab_from=rows + 1 if slab else 2)
        for mb in slab_mb if rows > 1 else ():
            if mb << 20 != SLAB_BYTES:
                out[f"{label} (cuBLAS slabs, {mb} MB)"] = made(precision=prec, slab_from=2, slab_bytes=mb << 20)
    return out


def bench_head(name, kan, vq, real=None, rows_list=ROWS, modes=DENSE_MODES, torch_vq=True, paths=False, slab_mb=(),
               precisions=tuple(PRECISIONS)):
    edges = sum(lay.in_features * lay.out_features for lay in kan.layers)
    check_head = LuthamHead(vq, max_rows=max(ROWS_CHECKED))
    check = validate(check_head, vq, real=real)
    plan = check_head.plan.summary()
    del check_head
    decoded = vq.decoded().eval()  # the fp32 VQ reference as a dense fp32 head (fast at any row count)
    breaks = graph_breaks(kan, rows_list[0])
    out = []
    for rows in rows_list:
        torch._dynamo.reset()
        dense = dense_variants(kan, rows, modes)
        made = lutham_variants(vq, rows, paths, slab_mb, precisions)  # arenas planned for this batch
        luts = {k: lut for k, (lut, _) in made.items()}
        moved = sum(next(iter(luts.values())).plan.by_component[c] for c in ("codebook", "edges"))
        inputs = [torch.rand(rows, kan.layers[0].in_features, device="cuda") * 2 - 1 for _ in range(8)]
        with torch.no_grad():
            # the accuracy rule: LUTHAM against the fp32 VQ head it compresses, the fp16 dense head
            # against the fp32 dense head, on the same inputs
            exact = kan(inputs[0])
            err = {v: rel_err(dense[v][0](inputs[0]), exact) for v in dense if v.startswith("dense fp16")}
            ref = decoded(inputs[0])
            # the rule's other side for LUTHAM: the dense fp16 head of the same (VQ-decoded) weights
            same = rel_err(DenseKAN(decoded, torch.float16).eval()(inputs[0]), ref)
            for vname, lut in luts.items():
                err[vname] = rel_err(lut.run_torch(inputs[0]), ref)
        names = [*dense, "torch VQ reference", *luts]
        for vname in names:
            if vname == "torch VQ reference" and (not torch_vq or rows * edges > 4e9):
                continue  # its chunked gather takes seconds here; the reference is for correctness
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.no_grad():
                if vname in luts:
                    us = timed_cupy(luts[vname], inputs)
                    peak, read = luts[vname].plan.total, moved
                    device_bytes = made[vname][1]
                else:
                    module = vq if vname == "torch VQ reference" else dense[vname][0]
                    us = timed(module, inputs)
                    weights = vq if vname == "torch VQ reference" else dense[vname][1] or dense[vname][0]
                    own = sum(t.numel() * t.element_size() for t in weights.state_dict().values())
                    peak = torch.cuda.max_memory_allocated() - base + own
                    read = moved if vname == "torch VQ reference" else edges * 15 * (4 if "fp32" in vname else 2)
                    if "sparse-basis" in vname:  # per row and input 5 of the 14 weight rows (base, 13 coefficients)
                        read = min(rows * edges * 5, edges * 14) * 2
            row = {"head": name, "rows": rows, "variant": vname, "us": us, "gbps": read / us / 1e3, "peak_bytes": peak,
                   "l2_window": luts[vname].plan.l2_persisting if vname in luts else None}
            if vname in luts:
                row |= {"device_bytes": device_bytes, "dense_fp16_err_same_weights": same, "precision": luts[vname].precision,
                        "slab_from": luts[vname].slab_from}
            if "compiled" in vname:
                row |= {"graph_breaks": breaks, "compile_s": dense[vname][2]}
            if vname in err:
                row["rel_err_vs_fp32"] = err[vname]
            out.append(row)
            e = f"  err {err[vname]:.1e}" if vname in err else ""
            e += f" (dense fp16 of these weights {same:.1e})" if vname in luts else ""
            print(f"{name:7s} rows {rows:5d} {vname:48s} {us:10.1f} µs{e}", flush=True)
        best = min((r for r in out if r["rows"] == rows and r["head"] == name and r["variant"].startswith("dense fp16")),
                   key=lambda r: r["us"])
        for r in out:
            if r["rows"] == rows and r["head"] == name:
                r["best_dense"], r["vs_best_dense"] = best["variant"], best["us"] / r["us"]
        del luts, made, dense
        torch.cuda.empty_cache()
    return out, check, plan


def timed_cupy(lut, inputs, reps=50, cold: bool = False):
    """Median µs of ``lut.forward`` (warm: repeated inference; ``cold``: a 256 MB write on the head's
    stream before each call evicts L2), each call behind :func:`hold`."""
    import cupy as cp

    xs = [cp.asarray(x) for x in inputs]
    flush = cp.empty(256 << 20, dtype=cp.uint8) if cold else None
    for x in xs[:3]:
        lut.forward(x)
    lut.stream.synchronize()
    times = []
    for i in range(reps):
        if cold:
            with lut.stream:
                flush.fill(i & 0xFF)
        hold(lut.stream.ptr)
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
    p.add_argument("--modes", nargs="*", default=list(DENSE_MODES), help="torch.compile modes of the dense baseline")
    p.add_argument("--no-torch-vq", action="store_true", help="skip timing the torch VQ reference (slow)")
    p.add_argument("--paths", action="store_true", help="time LUTHAM on the path its row count does not pick too")
    p.add_argument("--slab-mb", type=int, nargs="*", default=[], help="more slab workspace bounds to time (MB)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                   help="LUTHAM precisions to time (1 row runs `high` whatever is chosen)")
    p.add_argument("--profile-calls", type=int, default=3, help="forward calls a head makes under --profile")
    p.add_argument("--profile", help="only run LUTHAM on this head repeatedly, at --rows and --precisions (for ncu)")
    a = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    if a.profile:
        import cupy as cp

        _, vq = random_head(SIZES[a.profile], 65_536, 1)
        for rows in a.rows:  # repeated inference on one arena: is it served from L2?
            for prec in a.precisions if rows > 1 else ["high"]:
                lut = LuthamHead(vq, max_rows=rows, precision=prec)
                x = cp.asarray(torch.rand(rows, SIZES[a.profile][0], device="cuda") * 2 - 1)
                for _ in range(a.profile_calls):
                    lut.forward(x)
                lut.stream.synchronize()
                print(f"rows {rows} {prec}: arena {lut.plan.total:,} B; L2 window {lut.plan.l2_persisting}")
                del lut
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
            kan, vq = random_head(SIZES[name], 65_536, a.kmeans_iters)
            real = None
        rows, checks[name], plans[name] = bench_head(name, kan, vq, real, a.rows, a.modes, not a.no_torch_vq,
                                                        a.paths, a.slab_mb, a.precisions)
        results += rows
        del kan, vq
        torch.cuda.empty_cache()
        for r in results:
            r["copy_fraction"] = r["gbps"] / bw
        _write(a.json, bw, results, checks, plans)  # after every head: a run stopped early keeps what it measured
    print(format_table(results, [("head", "head", "s"), ("rows", "rows", "d"), ("variant", "variant", "s"),
                          ("us", "µs", ".1f"), ("vs_best_dense", "vs best dense", ".2f"), ("gbps", "GB/s", ".0f"),
                          ("copy_fraction", "of copy", ".2f"), ("peak_bytes", "peak B", ",d")]))
    for r in results:
        if "rel_err_vs_fp32" in r:
            ref = "the fp32 VQ reference" if r["variant"].startswith("LUTHAM") else "eager dense fp32"
            print(f"{r['head']} rows {r['rows']}: {r['variant']} max rel. error vs {ref} {r['rel_err_vs_fp32']:.2e}")
    for name, c in checks.items():
        print(f"{name}: LUTHAM max rel. error {c['max_rel_error']:.2e}, all written {c['all_written']}; "
              f"arena {plans[name]['total_bytes']:,} B, L2 window {plans[name]['l2_persisting']}")
    print(f"wrote {a.json}")


def _write(path, bw, results, checks, plans):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"copy_gbps": bw, "device": torch.cuda.get_device_name(0), "results": results,
                                      "validation": checks, "plans": {k: {kk: vv for kk, vv in v.items() if kk != "blocks"}
                                                                      for k, v in plans.items()}}, indent=1))


if __name__ == "__main__":
    main()
