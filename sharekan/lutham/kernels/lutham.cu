// LUTHAM v12: the forward of a Gain-Shape-Bias compressed KAN layer, read straight from the arena.
//
// Edge (o, i) is one 8-byte record {index, gain, bias, base weight} (uint16 + 3 x fp16, each fp16
// times a per-output scale: exact for int8/int4 values), stored tile-major: [out/16][in][16], so a
// warp on one 16-output tile streams its records contiguously. The codebook is float32 windows:
// codeword k holds NWIN 4-coefficient windows (coefficients c[p-3 .. p], zero outside [0, C)) of
// 16 bytes, the four aligned ones (p = 3, 7, 11, 15: the whole codeword c[0 .. 15]) first, so
//   * one row (lutham_row1): an edge reads the single window its input's basis needs (16 bytes, one
//     L2 sector) -- y[o] = gs*sum g*dot(B, window) + bs*sum b*S + ws*sum w*silu, fp32 throughout;
//   * several rows (lutham_tc<NT>p<P>): an edge reads its whole codeword (64 bytes, 16 a lane) and
//     decodes w_s = gain*c_s + bias (slot 15: the base weight) in fp32 straight into mma.m16n8k16 A
//     fragments (16 outputs x 16 slots of one input), reused across NT 8-row n-tiles whose B
//     fragments (the basis and SiLU of each row) lutham_bases_p<P> built once per call, for a slab
//     of inputs, into a bounded scratch in fragment order; fp32 accumulate. P is the number of
//     fp16 products a weight-basis product takes: 3 (weights and bases as hi + lo parts: hi*hi +
//     lo*hi + hi*lo, near fp32), 2 (single fp16 bases), 1 (fp16 weights and bases: the rounding of a
//     dense fp16 head). Records are loaded two steps and codewords one step ahead of their use;
//   * large batches (lutham_slab_p<P>, then a cuBLAS GEMM the runtime issues): a slab of inputs is
//     expanded into two dense fp16 operands in a bounded workspace -- the weights decoded as above
//     and the rows' bases -- with the P products as sections along K.
#include "common.cuh"

// Tile and launch constants come from sharekan/lutham/geometry.py as -D options (one source for the
// kernels and the launches).
#if !defined(TILE_O) || !defined(BASE_SLOT) || !defined(ROW1_UNROLL) || !defined(ROW1_MAX_CHUNK) \
    || !defined(SLAB_IN) || !defined(SLAB_ROWS)
#error "compile with the -D options of sharekan.lutham.geometry.defines()"
#endif
static_assert(TILE_O == 16 && BASE_SLOT == 15, "an output tile is the M = 16 of mma.m16n8k16, 16 slots its K");


// ---------------------------------------------------------------------------------------------
// One row. Block: warps over 16-output tiles, one input chunk (blockIdx.z) whose bases are staged
// in shared memory once. A warp step covers 2 inputs x 16 outputs (lane = input half x output);
// ROW1_UNROLL steps issue their record loads, then their window loads, then the FMAs.
extern "C" __global__ void __launch_bounds__(256)
lutham_row1(const float* __restrict__ x, int in_f, int out_f, int chunk, const float* __restrict__ t0,
            const float* __restrict__ hh, int nk, int n_coef, const float4* __restrict__ cb, int nwin,
            const uint2* __restrict__ edges, const float* __restrict__ scales, float* __restrict__ y) {
    __shared__ float4 stage[2 * ROW1_MAX_CHUNK];  // per input: the 4 bases; (window slot, sum, silu, -)
    const int i_lo = blockIdx.z * chunk, n = min(in_f, i_lo + chunk) - i_lo;
    for (int k = threadIdx.x; k < n; k += blockDim.x) {
        const int i = i_lo + k;
        const Basis b = basis_of(x[i], t0[i], hh[i], nk, n_coef);
        stage[2 * k] = make_float4(b.w[0], b.w[1], b.w[2], b.w[3]);
        stage[2 * k + 1] = make_float4(__int_as_float(window_slot(b.first + 3)), b.sum, b.silu, 0.f);
    }
    const int lane = threadIdx.x & 31, half = lane >> 4;
    const int tile = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool active = tile < (out_f + TILE_O - 1) / TILE_O;
    const uint2* e = edges + ((long)tile * in_f + i_lo) * TILE_O + lane;  // input i_lo + half, output lane & 15
    uint2 rec[ROW1_UNROLL];
    auto records = [&](int k) {  // the records of inputs k .. k + 2 * ROW1_UNROLL (zero past the chunk)
#pragma unroll
        for (int u = 0; u < ROW1_UNROLL; ++u)
            rec[u] = active && k + 2 * u + half < n ? __ldg(e + (long)(k + 2 * u) * TILE_O) : make_uint2(0u, 0u);
    };
    records(0);  // in flight while the bases are staged
    __syncthreads();
    if (!active) return;
    float ag = 0.f, ab = 0.f, aw = 0.f;
    for (int k = 0; k < n; k += 2 * ROW1_UNROLL) {
        float4 win[ROW1_UNROLL];
        uint2 cur[ROW1_UNROLL];
#pragma unroll
        for (int u = 0; u < ROW1_UNROLL; ++u) {
            const int kk = min(k + 2 * u + half, n - 1);
            win[u] = __ldg(cb + (long)(rec[u].x & 0xffffu) * nwin + __float_as_int(stage[2 * kk + 1].x));
            cur[u] = rec[u];
        }
        records(k + 2 * ROW1_UNROLL);  // the next records load while these windows arrive
#pragma unroll
        for (int u = 0; u < ROW1_UNROLL; ++u) {
            const int kk = min(k + 2 * u + half, n - 1);
            const float4 bw = stage[2 * kk], m = stage[2 * kk + 1];
            const float dot = bw.x * win[u].x + bw.y * win[u].y + bw.z * win[u].z + bw.w * win[u].w;
            ag += hi_half(cur[u].x) * dot;  // a padded record is all zero: it adds nothing
            ab += lo_half(cur[u].y) * m.y;
            aw += hi_half(cur[u].y) * m.z;
        }
    }
    const int o = tile * TILE_O + (lane & 15);
    float v = o < out_f ? scales[o] * ag + scales[out_f + o] * ab + scales[2 * out_f + o] * aw : 0.f;
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    if (half == 0) put(y, 0, o, 1, out_f, v, gridDim.z > 1);
}

// ---------------------------------------------------------------------------------------------
// Several rows: tensor cores (lutham_bases_p<P> builds the B fragments, lutham_tc<NT>p<P> multiplies).
// mma.m16n8k16 fragment slots: thread (g = lane / 4, q = lane % 4) holds K columns 2q, 2q+1, 2q+8, 2q+9;
// here those are slots 4q .. 4q+3 of the input (K's order is ours to choose), so a lane's weights are one
// 4-coefficient window (8 bytes) and its basis values one group of four (common.cuh: mma16816).

// the weights of slots 4q .. 4q+3 of one edge from its record and codeword window q (fp32), as
// fp16 hi/lo pairs: (slots 4q, 4q+1) and (4q+2, 4q+3). Slots C .. 14 keep gain*0 + bias unmasked:
// every basis there is zero (lutham_bases_p<P>); slot 15 is the SiLU base weight.
__device__ __forceinline__ void decode(uint2 rec, float4 c, float gs, float bs, float ws, int q,
                                       unsigned (&hi)[2], unsigned (&lo)[2]) {
    const float g = gs * hi_half(rec.x), b = bs * lo_half(rec.y);
    float w[4] = {fmaf(g, c.x, b), fmaf(g, c.y, b), fmaf(g, c.z, b), fmaf(g, c.w, b)};
    if (q == 3) w[3] = ws * hi_half(rec.y);
    pack_split(w[0], w[1], hi[0], lo[0]);
    pack_split(w[2], w[3], hi[1], lo[1]);
}

__device__ __forceinline__ void slots_of(const Basis& b, int silu_slot, float (&v)[16]) {
#pragma unroll
    for (int s = 0; s < 16; ++s) v[s] = slot_value(b, s, silu_slot);
}

// The B fragments of the tensor-core kernels, built once per call (not once per output block):
// rows [0, rows) padded to n_nt n-tiles of 8 (padding rows zero) x inputs [i0, i0 + n), into
// F[i - i0][nt][lane][LB] (uint2; LB = 2 at P = 3: hi, lo), lane (g, q) of n-tile nt holding row
// 8 nt + g's slots 4q .. 4q+3 as two fp16 pairs. A thread per (input, n-tile, lane): a warp writes
// one contiguous run of 256 (or 512) bytes.
template <int P>
__device__ __forceinline__ void bases(const float* __restrict__ x, int rows, int in_f, int i0, int n, int n_nt,
                                      const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,
                                      uint2* __restrict__ F) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // < 2^31: the scratch is bounded (BASES_BYTES)
    if (t >= n * n_nt * 32) return;
    const int lane = t & 31, il = t / (32 * n_nt), r = (t / 32 - il * n_nt) * 8 + (lane >> 2);
    const int i = i0 + il, q = lane & 3;
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (r < rows) {
        const Basis b = basis_of(x[(long)r * in_f + i], t0[i], hh[i], nk, n_coef);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = slot_value(b, 4 * q + j, BASE_SLOT);
    }
    if (P == 3) {
        uint4 f;
        pack_split(v[0], v[1], f.x, f.z);
        pack_split(v[2], v[3], f.y, f.w);
        reinterpret_cast<uint4*>(F)[t] = f;  // {hi, lo} of this lane
    } else {
        F[t] = make_uint2(pack(v[0], v[1]), pack(v[2], v[3]));
    }
}

#define BASES(P)                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256) lutham_bases_p##P(                                          \
        const float* __restrict__ x, int rows, int in_f, int i0, int n, int n_nt, const float* __restrict__ t0,    \
        const float* __restrict__ hh, int nk, int n_coef, uint2* __restrict__ F) {                                 \
        bases<P>(x, rows, in_f, i0, n, n_nt, t0, hh, nk, n_coef, F);                                              \
    }
BASES(1) BASES(2) BASES(3)

// Block: warps over 16-output tiles (each warp on its own: no shared memory, no barrier), n-tiles
// [blockIdx.y * NT, + NT) of F, inputs [i0 + lo, i0 + hi) with [lo, hi) split blockIdx.z of the
// slab's n, in steps of TI inputs. The warps of a block read the same B fragments: L1 serves the
// repeats while the warps keep pace (57 % of B reads at 49 rows, ncu).
template <int NT, int P>
__device__ __forceinline__ void tc(const uint2* __restrict__ F, int n_nt, int rows, int in_f, int out_f, int i0, int n,
                                   int chunk, const float4* __restrict__ cb, int nwin,
                                   const uint2* __restrict__ edges, const float* __restrict__ scales,
                                   float* __restrict__ y, int atomic) {
    static_assert(P >= 1 && P <= 3, "P: 1, 2 or 3 fp16 products a weight-basis product");
    constexpr int TI = 2;  // inputs per step (registers hold 3 record and 2 codeword sets)
    constexpr int LB = P == 3 ? 2 : 1;
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int n_tiles = (out_f + TILE_O - 1) / TILE_O;
    const int tile = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (tile >= n_tiles) return;
    const int r0 = blockIdx.y * NT * 8;
    const int lo = blockIdx.z * chunk, hi = min(n, lo + chunk);
    const uint2* e = edges + ((long)tile * in_f + i0) * TILE_O;
    const uint2* fb = F + ((long)blockIdx.y * NT * 32 + lane) * LB;  // + (input * n_nt + n-tile) * 32 * LB
    const int oa = tile * TILE_O + g, ob = oa + 8;
    const float gsa = oa < out_f ? scales[oa] : 0.f, bsa = oa < out_f ? scales[out_f + oa] : 0.f,
                wsa = oa < out_f ? scales[2 * out_f + oa] : 0.f;
    const float gsb = ob < out_f ? scales[ob] : 0.f, bsb = ob < out_f ? scales[out_f + ob] : 0.f,
                wsb = ob < out_f ? scales[2 * out_f + ob] : 0.f;

    auto records = [&](int k, uint2 (&rec)[TI][2]) {  // zero records past the split: their weights are 0
#pragma unroll
        for (int ii = 0; ii < TI; ++ii) {
            const bool ok = k + ii < hi;
            rec[ii][0] = ok ? __ldg(e + (long)(k + ii) * TILE_O + g) : make_uint2(0u, 0u);
            rec[ii][1] = ok ? __ldg(e + (long)(k + ii) * TILE_O + g + 8) : make_uint2(0u, 0u);
        }
    };
    auto codewords = [&](const uint2 (&rec)[TI][2], float4 (&cw)[TI][2]) {
#pragma unroll
        for (int ii = 0; ii < TI; ++ii)
#pragma unroll
            for (int h = 0; h < 2; ++h) cw[ii][h] = __ldg(cb + (long)(rec[ii][h].x & 0xffffu) * nwin + q);
    };

    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    uint2 rec0[TI][2], rec1[TI][2];
    float4 cw0[TI][2];
    records(lo, rec0);
    records(lo + TI, rec1);
    codewords(rec0, cw0);
    for (int k = lo; k < hi; k += TI) {
        float4 cw1[TI][2];
        uint2 rec2[TI][2];
        codewords(rec1, cw1);        // the next step's codewords,
        records(k + 2 * TI, rec2);   // the records two steps ahead
        unsigned ahi[TI][4], alo[TI][4];  // A fragments: rows g (regs 0, 2) and g + 8 (regs 1, 3), hi and lo parts
        const uint2* src[TI];
#pragma unroll
        for (int ii = 0; ii < TI; ++ii) {
            unsigned ha[2], la[2], hb[2], lb[2];
            decode(rec0[ii][0], cw0[ii][0], gsa, bsa, wsa, q, ha, la);
            decode(rec0[ii][1], cw0[ii][1], gsb, bsb, wsb, q, hb, lb);
            ahi[ii][0] = ha[0], ahi[ii][1] = hb[0], ahi[ii][2] = ha[1], ahi[ii][3] = hb[1];
            alo[ii][0] = la[0], alo[ii][1] = lb[0], alo[ii][2] = la[1], alo[ii][3] = lb[1];
            src[ii] = fb + (long)min(k + ii, hi - 1) * n_nt * 32 * LB;  // past the split: weights 0, any B
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            // P = 3: this step's products start from zero and are added to the sum in fp32 (round to
            // nearest): the tensor cores' accumulation does not round to nearest, and over a long chain
            // of MMAs on one accumulator it drifts (3.6e-3 over 6,272 inputs, v6) far above P = 3's
            // rounding; with fp16 bases (P <= 2) a chain of one split's inputs drifts far below theirs
            auto products = [&](float (&to)[4]) {
#pragma unroll
                for (int ii = 0; ii < TI; ++ii) {
                    const uint2 bh = __ldg(src[ii] + nt * 32 * LB);
                    mma16816(to, ahi[ii], bh.x, bh.y);
                    if (P >= 2) mma16816(to, alo[ii], bh.x, bh.y);
                    if (P == 3) {
                        const uint2 bl = __ldg(src[ii] + nt * 32 * LB + 1);
                        mma16816(to, ahi[ii], bl.x, bl.y);
                    }
                }
            };
            if (P == 3) {
                float d[4] = {0.f, 0.f, 0.f, 0.f};
                products(d);
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[nt][j] += d[j];
            } else {
                products(acc[nt]);
            }
        }
#pragma unroll
        for (int ii = 0; ii < TI; ++ii)
#pragma unroll
            for (int h = 0; h < 2; ++h) rec0[ii][h] = rec1[ii][h], rec1[ii][h] = rec2[ii][h], cw0[ii][h] = cw1[ii][h];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int r = r0 + nt * 8 + 2 * q;
        put(y, r, oa, rows, out_f, acc[nt][0], atomic);
        put(y, r + 1, oa, rows, out_f, acc[nt][1], atomic);
        put(y, r, ob, rows, out_f, acc[nt][2], atomic);
        put(y, r + 1, ob, rows, out_f, acc[nt][3], atomic);
    }
}

#define TC(NT, P, BLOCKS)                                                                                        \
    extern "C" __global__ void __launch_bounds__(256, BLOCKS) lutham_tc##NT##p##P(                              \
        const uint2* __restrict__ F, int n_nt, int rows, int in_f, int out_f, int i0, int n, int chunk,            \
        const float4* __restrict__ cb, int nwin, const uint2* __restrict__ edges, const float* __restrict__ scales,  \
        float* __restrict__ y, int atomic) {                                                                      \
        tc<NT, P>(F, n_nt, rows, in_f, out_f, i0, n, chunk, cb, nwin, edges, scales, y, atomic);                   \
    }
TC(1, 3, 2) TC(2, 3, 2) TC(4, 3, 2) TC(8, 3, 2) TC(16, 3, 1)
TC(1, 2, 2) TC(2, 2, 2) TC(4, 2, 2) TC(8, 2, 2) TC(16, 2, 1)
TC(1, 1, 2) TC(2, 1, 2) TC(4, 1, 2) TC(8, 1, 2) TC(16, 1, 1)

// ---------------------------------------------------------------------------------------------
// Large batches (lutham_slab_p<P>): common.cuh's slab_expand with this format's weights -- the 16
// outputs of one tile x SLAB_IN inputs, four lanes an edge (lane q of the four decodes slots 4q ..
// 4q+3 from its 16 bytes of the codeword, so a warp instruction reads 8 whole codewords: one L2
// request an edge), all of a thread's records and then all its codeword quarters in flight at once.
#define SLAB(P)                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256, 4) lutham_slab_p##P(                                        \
        const float* __restrict__ x, int rows, int in_f, int out_f, int i0, int n_pad, int slots,                  \
        const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,                            \
        const float4* __restrict__ cb, int nwin, const uint2* __restrict__ edges, const float* __restrict__ scales, \
        __half* __restrict__ W, __half* __restrict__ Bm, int wblocks) {                                           \
        slab_expand<P>(x, rows, in_f, out_f, i0, n_pad, slots, t0, hh, nk, n_coef, W, Bm, wblocks,                        \
                       [&](__half* st, int tile, int ii0, int n_in, int line) {                                    \
                           v12_weights<P>(st, tile, ii0, n_in, line, in_f, out_f, i0, slots, n_coef, cb, nwin,     \
                                          edges, scales);                                                          \
                       });                                                                                         \
    }

template <int P>
__device__ __forceinline__ void v12_weights(__half* st, int tile, int ii0, int n_in, int line, int in_f, int out_f,
                                            int i0, int slots, int n_coef, const float4* __restrict__ cb, int nwin,
                                            const uint2* __restrict__ edges, const float* __restrict__ scales) {
    constexpr int SW = P == 1 ? 1 : 2;
    constexpr int PASSES = TILE_O * SLAB_IN / 64;  // 256 threads, four an edge
    const int q = threadIdx.x & 3, ol = (threadIdx.x >> 2) & 15;
    const int o = min(tile * TILE_O + ol, out_f - 1);
    uint2 rec[PASSES];
    float4 c[PASSES];
#pragma unroll
    for (int u = 0; u < PASSES; ++u) {  // edge (input il, output ol): records [tile][in][16]
        const int il = (threadIdx.x >> 6) + 4 * u, i = i0 + ii0 + il;
        rec[u] = il < n_in && i < in_f ? __ldg(edges + ((long)tile * in_f + i) * TILE_O + ol)
                                       : make_uint2(0u, 0u);  // a zero record decodes to zero weights
    }
#pragma unroll
    for (int u = 0; u < PASSES; ++u) c[u] = __ldg(cb + (long)(rec[u].x & 0xffffu) * nwin + q);
    const float gs = scales[o], bs = scales[out_f + o], wsc = scales[2 * out_f + o];
#pragma unroll
    for (int u = 0; u < PASSES; ++u) {
        const float g = gs * hi_half(rec[u].x), bb = bs * lo_half(rec[u].y), ws = wsc * hi_half(rec[u].y);
        const float cc[4] = {c[u].x, c[u].y, c[u].z, c[u].w};
        float v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int s = 4 * q + j;
            v[j] = s < n_coef ? fmaf(g, cc[j], bb) : (s == n_coef ? ws : 0.f);
        }
        const int at = ol * line + ((threadIdx.x >> 6) + 4 * u) * slots + 4 * q;
#pragma unroll
        for (int j = 0; j < 4; j += 2)
            if (4 * q + j < slots) stage_pair(st, at + j, v[j], v[j + 1], SW == 2);
    }
}

SLAB(1) SLAB(2) SLAB(3)
