"""Question: how close to copy bandwidth does the sparse-basis dense kernel get at small row counts,
and with which launch shape?

The dense baseline of ``bench/lutham_gpu.py`` at one row is our own kernel
(``sharekan.sparse_dense``): per row and input it reads the 5 weight rows of the input's interval.
This sweeps its launch shape (inputs a program step ``block_i``, outputs a program ``block_o``,
programs an SM, warps a program) on the large head 12,544→1,024→1,024 at 1, 2 and 8 rows, each
CUDA-graphed, and reports median µs, the GB/s of the weight bytes it must read (``5·out·2`` B an
input a row, at most all ``14·out·2``) and that as a fraction of the copy bandwidth measured in the
same run, plus its error against eager fp32 and the fp16 ``DenseKAN``'s. Needs torch and Triton.

    python bench/sparse_dense.py --json bench/results/sparse_dense.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lutham_gpu import SIZES, copy_bandwidth, cuda_graphed, rel_err, timed  # noqa: E402
from sharekan.baselines import DenseKAN  # noqa: E402
from sharekan.kan import KAN  # noqa: E402
from sharekan.sparse_dense import SparseBasisKAN  # noqa: E402
from sharekan.table import format_table  # noqa: E402

SHAPES = {"block_i": (16, 32, 64), "block_o": (64, 128, 256), "programs_per_sm": (8, 16, 32), "num_warps": (4, 8)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench/results/sparse_dense.json")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8])
    a = p.parse_args(argv)
    torch.manual_seed(0)
    kan = KAN(SIZES["large"], grid_size=10).cuda()
    with torch.no_grad():
        for lay in kan.layers:
            lay.spline_weight.normal_(0, 0.5)
    bw = copy_bandwidth()
    edges = sum(lay.in_features * lay.out_features for lay in kan.layers)
    results = []
    for rows in a.rows:
        inputs = [torch.rand(rows, SIZES["large"][0], device="cuda") * 2 - 1 for _ in range(8)]
        with torch.no_grad():
            ref = kan(inputs[0])
            dense_err = rel_err(DenseKAN(kan, torch.float16)(inputs[0]), ref)
        read = min(rows * 5, 14) * edges * 2
        for values in itertools.product(*SHAPES.values()):
            shape = dict(zip(SHAPES, values))
            run = cuda_graphed(SparseBasisKAN(kan, **shape).eval(), rows, SIZES["large"][0])
            us = timed(run, inputs)
            with torch.no_grad():
                err = rel_err(run(inputs[0]), ref)
            gbps = read / us / 1e3
            results.append({"rows": rows, **shape, "us": us, "gbps": gbps, "copy_fraction": gbps / bw,
                            "rel_err_vs_fp32": err, "dense_fp16_err": dense_err})
            print(f"rows {rows} {shape}: {us:8.1f} µs, {read / us / 1e3:6.0f} GB/s, err {err:.1e}", flush=True)
    best = {r: min((x for x in results if x["rows"] == r), key=lambda x: x["us"]) for r in a.rows}
    print(format_table(list(best.values()), [("rows", "rows", "d"), ("block_i", "block_i", "d"),
                                             ("block_o", "block_o", "d"), ("programs_per_sm", "per SM", "d"),
                                             ("num_warps", "warps", "d"), ("us", "µs", ".1f"), ("gbps", "GB/s", ".0f"),
                                             ("copy_fraction", "of copy", ".2f")]))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "copy_gbps": bw,
                                        "head": SIZES["large"], "results": results,
                                        "best": {str(r): b for r, b in best.items()}}, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
