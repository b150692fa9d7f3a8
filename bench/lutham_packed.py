"""Question: how fast and how small is LUTHAM v3 (packed planes) at the issue's operating points,
against the best dense KAN measured in the same run?

Heads: mid 4,096→1,024→256 and large 12,544→1,024→1,024 (random splines), the trained head
(``--trained``, from ``bench/export_trained.py``) and, where no export is at hand, a head of its
shape 1,024→64→24 with random splines (``trained-shape``: timings depend on shapes, K and width,
not on the weights' values). Operating points: K = 256 int4, K = 256 int8,
K = 4,096 int8, K = 65,536 fp16 (codebooks by the library's k-means, ``--kmeans-iters`` GPU
iterations; side data quantized by ``quantize`` as the pipeline stores it). Rows: 1, 49, 392, 3,136.
Dense variants (``bench/lutham_gpu.dense_variants``: eager fp32, ``DenseKAN`` and closed-form bases
compiled, our sparse-basis kernel) are timed once per head and row count; every ratio is against the
fastest fp16 one ("best dense"). LUTHAM v3 is timed warm (repeated inference on one arena: L2 holds
what fits) and cold (a 256 MB write flushes L2 before every call): at one row on each one-row path;
from 2 rows on the tensor-core path at ``high`` and ``low`` precision (``low``: a dense fp16 head's
rounding) whatever the row count, on the slab path at ``low``, and below the slabs' threshold on the
lookup-table (or gather) kernels.
Per row: ``head``, ``k``, ``side_dtype``, ``rows``, ``variant``, ``precision``, ``us`` (warm median),
``us_cold``, ``peak_bytes`` (arena + what construction and the first call took), ``bytes_read``
(records + codebook + scales), ``vs_best_dense``, ``max_rel_error`` (LUTHAM: against the fp32 VQ
head it runs; dense fp16: against eager fp32) and the device name.

    python bench/lutham_packed.py --json bench/results/lutham_packed.json [--trained out/lutham/trained.pt]
    ncu --clock-control none -k regex:packed --metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,smsp__inst_executed_pipe_tensor_op_hmma.sum python bench/lutham_packed.py --profile --heads large --points 256:int4 --rows 1 49
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lutham_gpu import (SIZES as GPU_SIZES, built, copy_bandwidth, dense_variants, random_kan, rel_err,  # noqa: E402
                        timed, timed_cupy)
from sharekan.clustering import fit_codebook  # noqa: E402
from sharekan.kan import KAN  # noqa: E402
from sharekan.lutham.geometry import LUT_MAX_K, PACKED_SLAB_FROM  # noqa: E402
from sharekan.lutham.packed_head import PackedHead  # noqa: E402
from sharekan.table import format_table  # noqa: E402
from sharekan.vq_kan import VQKAN, edge_shapes, encode_layer  # noqa: E402

SIZES = {**GPU_SIZES, "trained-shape": [1024, 64, 24]}
POINTS = ((256, "int4"), (256, "int8"), (4096, "int8"), (65_536, "fp16"))
ROWS = (1, 49, 392, 3136)


def heads(names, trained, iters, points=POINTS):
    """(name, dense KAN, {(K, width): VQ head}) per head, at ``points``."""
    for name in names:
        if name == "trained":
            if not trained or not Path(trained).is_file():
                print("no --trained export; skipping the trained head")
                continue
            blob = torch.load(trained, map_location="cuda")
            kan = KAN(blob["sizes"], grid_size=10).cuda()
            kan.load_state_dict(blob["kan"])
        else:
            kan = random_kan(SIZES[name])
        shapes = torch.cat(edge_shapes(kan))
        books = {k: fit_codebook(shapes, min(k, shapes.shape[0]), niter=iters, backend="cuda").cuda()
                 for k in sorted({k for k, _ in points})}
        yield name, kan, {(k, w): VQKAN([encode_layer(lay, books[k], w) for lay in kan.layers]).eval()
                          for k, w in points}


def one_row_paths(k: int) -> list[str]:
    """The one-row paths worth timing: the default kernel a layer, and the general lookup-table kernel
    where K allows tables."""
    return ["row1"] + (["lut"] if k <= LUT_MAX_K else [])


def profile(vqs: dict, rows_list, calls: int) -> None:
    """Only LUTHAM v3, ``calls`` forwards on one arena per point and row count (for ncu: is a
    repeated inference served from L2?)."""
    import cupy as cp

    for (k, width), vq in vqs.items():
        for rows in rows_list:
            for one_row, prec in ([(p, "high") for p in one_row_paths(k)] if rows == 1 else
                                  [("row1", "high"), ("row1", "low")]):  # from 2 rows: tensor cores
                head = PackedHead(vq, max_rows=rows, one_row=one_row, precision=prec, slab_from=1 << 30)
                x = cp.asarray(torch.rand(rows, head.plan.layers[0].in_features, device="cuda") * 2 - 1)
                for _ in range(calls):
                    head.forward(x)
                head.stream.synchronize()
                print(f"K={k} {width} rows {rows} ({one_row}, {prec}): arena {head.plan.total:,} B; "
                      f"L2 window {head.plan.l2_persisting}")
                del head


def bench(name, kan, vqs, rows_list, modes, device, out: list, save):
    """Time every variant of one head at each row count into ``out`` (``save()`` after each count)."""
    for rows in rows_list:
        torch._dynamo.reset()
        inputs = [torch.rand(rows, kan.layers[0].in_features, device="cuda") * 2 - 1 for _ in range(8)]
        dense = dense_variants(kan, rows, modes)
        with torch.no_grad():
            exact = kan(inputs[0])
            for vname, (fn, weights, _) in dense.items():
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                us = timed(fn, inputs)
                own = sum(t.numel() * t.element_size() for t in (weights or fn).state_dict().values())
                out.append({"head": name, "k": None, "side_dtype": None, "rows": rows, "variant": vname,
                            "precision": "fp32" if "fp32" in vname else "fp16", "us": us, "us_cold": None,
                            "peak_bytes": torch.cuda.max_memory_allocated() - base + own,
                            "max_rel_error": 0.0 if "fp32" in vname else rel_err(fn(inputs[0]), exact)})
                print(f"{name:7s} rows {rows:5d} {vname:60s} {us:10.1f} µs", flush=True)
        del dense
        for (k, width), vq in vqs.items():
            with torch.no_grad():
                ref = vq.decoded().eval()(inputs[0])
            # from 2 rows: tensor cores at every row count (slabs never), at hi/lo and fp16 products; slabs at fp16;
            # below the slabs' threshold the lookup tables too
            paths = ([("high", None, p, "tc") for p in one_row_paths(k)] if rows == 1 else
                     [("high", 1 << 30, "row1", "tc"), ("low", 1 << 30, "row1", "tc"), ("low", 2, "row1", "tc")] +
                     ([("high", None, "row1", "lut")] if rows < PACKED_SLAB_FROM else []))
            for prec, slab_from, one_row, few_rows in paths:
                head, took = built(PackedHead, vq, rows, precision=prec, slab_from=slab_from, one_row=one_row,
                                   few_rows=few_rows)
                path = ("slabs" if rows >= head.slab_from else "one-row kernel" if rows == 1 and one_row != "lut" else
                        "tensor cores" if rows > 1 and head.tc else "gather" if k > LUT_MAX_K else "lookup tables")
                vname = f"LUTHAM v3 K={k} {width} ({path}, {prec})"
                us, cold = timed_cupy(head, inputs), timed_cupy(head, inputs, cold=True)
                read = sum(head.plan.by_component[c] for c in ("codebook", "edges", "scales"))
                out.append({"head": name, "k": k, "side_dtype": width, "rows": rows, "variant": vname,
                            "precision": prec, "us": us, "us_cold": cold, "peak_bytes": max(head.plan.total, took),
                            "arena_bytes": head.plan.total, "bytes_read": read, "edge_bytes": head.plan.edge_bytes(),
                            "max_rel_error": rel_err(head.run_torch(inputs[0]), ref)})
                print(f"{name:7s} rows {rows:5d} {vname:60s} {us:10.1f} µs warm {cold:10.1f} cold "
                      f"err {out[-1]['max_rel_error']:.1e}", flush=True)
                del head
        mine = [r for r in out if r["rows"] == rows and r["head"] == name]
        best = min((r for r in mine if r["variant"].startswith("dense fp16")), key=lambda r: r["us"])
        for r in mine:
            r["best_dense"], r["vs_best_dense"], r["device"] = best["variant"], best["us"] / r["us"], device
        torch.cuda.empty_cache()
        save()


def _point(text: str) -> tuple[int, str]:
    k, _, width = text.partition(":")
    if not k.isdigit() or width not in {w for _, w in POINTS}:
        raise argparse.ArgumentTypeError(f"an operating point is K:width (width one of int4, int8, fp16), got {text!r}")
    return int(k), width


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench/results/lutham_packed.json")
    p.add_argument("--trained", help="exported trained head (bench/export_trained.py)")
    p.add_argument("--heads", nargs="+", default=["trained", "trained-shape", "mid", "large"])
    p.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    p.add_argument("--kmeans-iters", type=int, default=2)
    p.add_argument("--modes", nargs="*", default=["max-autotune-no-cudagraphs"],
                   help="torch.compile modes of the compiled dense forms")
    p.add_argument("--points", nargs="+", type=_point, default=list(POINTS), help="operating points, K:width")
    p.add_argument("--profile", action="store_true", help="only run LUTHAM v3, --profile-calls times a point (ncu)")
    p.add_argument("--profile-calls", type=int, default=3)
    a = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    if a.profile:
        for _, _, vqs in heads(a.heads, a.trained, a.kmeans_iters, a.points):
            profile(vqs, a.rows, a.profile_calls)
        return
    device = torch.cuda.get_device_name(0)
    bw = copy_bandwidth()
    print(f"{device}: copy {bw:.0f} GB/s; L2 {torch.cuda.get_device_properties(0).L2_cache_size / 2**20:.0f} MiB")
    results = []

    def save():  # after every row count: a run stopped early keeps what it measured
        for r in results:
            if r.get("bytes_read"):
                r["copy_fraction"] = r["bytes_read"] / r["us"] / 1e3 / bw
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"device": device, "copy_gbps": bw, "results": results}, indent=1))

    for name, kan, vqs in heads(a.heads, a.trained, a.kmeans_iters, a.points):
        t = time.perf_counter()
        bench(name, kan, vqs, a.rows, a.modes, device, results, save)
        print(f"{name}: {time.perf_counter() - t:.0f} s")
    print(format_table([{**r, "us_cold": r["us_cold"] or float("nan")} for r in results], [("head", "head", "s"), ("rows", "rows", "d"), ("variant", "variant", "s"),
                                 ("us", "µs warm", ".1f"), ("us_cold", "µs cold", ".1f"),
                                 ("vs_best_dense", "vs best dense", ".2f"), ("max_rel_error", "error", ".1e"),
                                 ("peak_bytes", "peak B", ",d")]))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
