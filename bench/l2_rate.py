"""Question: how fast can this GPU serve LUTHAM's memory access patterns, with no arithmetic?

Each pattern is a bare kernel over the large head's shapes (13.9 M edges of 8-byte records streamed
from HBM, a K = 65,536 codebook of 256-byte rows, 16.8 MB, that stays in L2):

* ``records``: the records alone, coalesced (what a 1-row pass must read from DRAM);
* ``windows``: one random 16-byte codebook window per edge at an index not read from memory (the
  L2's random-sector rate);
* ``records+window``: the record, then the window its index names (``lutham_row1``'s pattern);
* ``records+32B`` / ``records+64B``: the record, then 32 or 64 bytes of its codeword read by 2 or 4
  lanes (a one-sector codeword, and the tensor-core kernels' fp32 codeword).

Printed: µs (median of 20 CUDA-event timings), GB/s of DRAM bytes (records) and the rate of
32-byte L2 sectors requested. Needs cupy and numpy only (runs on the device machine).

    python bench/l2_rate.py --json bench/results/l2_rate.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharekan.table import format_table  # noqa: E402

SOURCE = r"""
__device__ __forceinline__ unsigned mix(unsigned v) {  // an index not loaded from memory
    v ^= v >> 16; v *= 0x7feb352du; v ^= v >> 15; v *= 0x846ca68bu; v ^= v >> 16; return v;
}
// LANES = 0: records only; -1: hashed windows only; else a group of LANES lanes reads, for each of
// its LANES edges in turn, LANES * 16 bytes of that edge's codeword (16 bytes a lane)
template <int LANES>
__device__ void pattern(const uint2* __restrict__ rec, long n, const float4* __restrict__ cb, int kmask,
                        float* __restrict__ sink) {
    float acc = 0.f;
    const long threads = (long)gridDim.x * blockDim.x;
    const int lane = threadIdx.x & 31;
    for (long base = (long)blockIdx.x * blockDim.x + (threadIdx.x & ~31); base < n; base += 4 * threads) {
        uint2 r[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long j = base + lane + u * threads;
            r[u] = LANES >= 0 && j < n ? __ldg(rec + j) : make_uint2(mix((unsigned)j), 0u);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if (LANES == 0) {
                acc += __uint_as_float(r[u].x ^ r[u].y);
            } else if (LANES < 0) {
                const float4 c = __ldg(cb + (long)(r[u].x & kmask) * 16 + ((r[u].x >> 16) & 15));
                acc += c.x + c.y + c.z + c.w;
            } else {
#pragma unroll
                for (int t = 0; t < LANES; ++t) {
                    const unsigned k = __shfl_sync(0xffffffffu, r[u].x, (lane & ~(LANES - 1)) + t) & kmask;
                    const float4 c = __ldg(cb + (long)k * 16 + (lane & (LANES - 1)));
                    acc += c.x + c.y + c.z + c.w;
                }
            }
        }
    }
    if (acc == 12345.f) sink[0] = acc;  // keeps the loads
}
#define PATTERN(NAME, LANES) \
    extern "C" __global__ void NAME(const uint2* r, long n, const float4* cb, int m, float* s) { \
        pattern<LANES>(r, n, cb, m, s);                                                          \
    }
PATTERN(p_records, 0) PATTERN(p_windows, -1) PATTERN(p_window, 1) PATTERN(p_cw32, 2) PATTERN(p_cw64, 4)
"""

# kernel, label, 32-byte L2 sectors requested per edge beyond the records
PATTERNS = (("p_records", "records", 0.0), ("p_windows", "windows", 1.0), ("p_window", "records+window", 1.0),
            ("p_cw32", "records+32B", 1.0), ("p_cw64", "records+64B", 2.0))


def main(argv=None):
    import cupy as cp
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench/results/l2_rate.json")
    p.add_argument("--edges", type=int, default=12_544 * 1024 + 1024 * 1024)
    p.add_argument("--codewords", type=int, default=65_536)
    a = p.parse_args(argv)
    mod = cp.RawModule(code=SOURCE, options=("-std=c++17",))
    rng = np.random.default_rng(0)
    rec = cp.asarray(rng.integers(0, 2**32, size=(a.edges, 2), dtype=np.uint32))
    cb = cp.asarray(rng.standard_normal((a.codewords, 16, 4), dtype=np.float32))
    sink = cp.zeros(1, cp.float32)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    rows = []
    for kernel, label, sectors in PATTERNS:
        fn = mod.get_function(kernel)
        for blocks_per_sm in (4, 8):
            grid = (sms * blocks_per_sm,)
            args = (rec, np.int64(a.edges), cb, np.int32(a.codewords - 1), sink)
            for _ in range(3):
                fn(grid, (256,), args)
            times = []
            for _ in range(20):
                s, e = cp.cuda.Event(), cp.cuda.Event()
                s.record()
                fn(grid, (256,), args)
                e.record()
                e.synchronize()
                times.append(cp.cuda.get_elapsed_time(s, e) * 1000)
            us = statistics.median(times)
            dram = 0 if kernel == "p_windows" else a.edges * 8
            req = a.edges * (sectors + (0 if kernel == "p_windows" else 0.25))
            rows.append({"pattern": label, "blocks_per_sm": blocks_per_sm, "us": us, "dram_gbps": dram / us / 1e3,
                         "gsectors_per_s": req / us / 1e3, "l2_tbps": req * 32 / us / 1e6})
            print(f"{label:16s} {blocks_per_sm} blocks/SM {us:9.1f} µs", flush=True)
    print(format_table(rows, [("pattern", "pattern", "s"), ("blocks_per_sm", "blocks/SM", "d"), ("us", "µs", ".1f"),
                              ("dram_gbps", "records GB/s", ".0f"), ("gsectors_per_s", "G sectors/s", ".1f"),
                              ("l2_tbps", "L2 TB/s (sectors×32 B)", ".2f")]))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                                        "edges": a.edges, "codewords": a.codewords, "results": rows}, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
