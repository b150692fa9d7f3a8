// LUTHAM: the forward of a Gain-Shape-Bias compressed KAN layer, read straight from the arena.
//
// Edge (o, i) holds a codeword index, a gain g, a bias b and a SiLU base weight w (fp16, times a
// per-output-row scale: exact for int8-quantised gains); the
// codebook is float32 [K, W] (each codeword: 3 zeros, C coefficients, zeros up to W, a multiple of 4:
// codewords are 16-byte aligned and read with float4 loads; plan.codebook_width). For input x_i only
// the 4 cubic bases starting at m_i are non-zero, so
//   y[r, o] = sum_i  g * sum_j B_j(x_ri) * cb[idx, m_ri + j]  +  b * sum_j B_j(x_ri)  +  w * silu(x_ri).
// lutham_prep    : per (row, input): the 4 basis values (non-existent bases zeroed), the padded
//                  codeword position, their sum and silu(x) -> prep [rows, in, 8] floats.
// lutham_gather  : few rows (memory-bound): a warp per (output, split of the inputs), lanes over
//                  inputs with 8-byte loads, up to 16 rows accumulated in registers so each edge is
//                  read once; fp32 throughout; partial sums added into y (zeroed by lutham_prep).
// lutham_mma     : >= 16 rows: a 64-row x 64-output tile per block; each step decodes the weights of
//                  4 inputs (13 coefficients + the base weight, 16 slots) into shared memory, builds
//                  the matching basis rows, and multiplies on tensor cores (fp16 hi/lo split, fp32
//                  accumulate),
//                  so a decoded weight serves all 64 rows and dense weights never exist in memory;
//                  blockIdx.z splits the inputs so small layers still fill the GPU.
#include <cuda_fp16.h>
#include <mma.h>

// Tile and launch constants come from sharekan/lutham/geometry.py as -D options (one source for the
// kernels and the launches); the code below is written for these values.
#if !defined(TM) || !defined(TN) || !defined(TI) || !defined(KS) || !defined(MMA_THREADS) || !defined(GATHER_STEP)
#error "compile with the -D options of sharekan.lutham.geometry.defines()"
#endif
static_assert(TM == 64 && TN == 64 && MMA_THREADS == 128, "lutham_mma: a 2x2 grid of warps, 32x32 each");
static_assert(GATHER_STEP == 32 * 4, "lutham_gather: 32 lanes x 4 edges (one 8-byte index load) a step");

using namespace nvcuda;

extern "C" __global__ void lutham_prep(const float* __restrict__ x, int rows, int in_f,
                                       const float* __restrict__ grid, const float* __restrict__ t0,
                                       const float* __restrict__ hh, int nk, int n_coef,
                                       float* __restrict__ prep, float* __restrict__ y, int out_f) {
    long e = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (e < (long)rows * out_f) y[e] = 0.f;  // the layer's output: split-K partial sums add into it
    if (e >= (long)rows * in_f) return;
    int i = (int)(e % in_f);
    float v = x[e];
    float u = (v - t0[i]) / hh[i];
    float m = floorf(u);
    float w0 = 0.f, w1 = 0.f, w2 = 0.f, w3 = 0.f;
    int first = -3;
    if (u >= 0.f && u < (float)(nk - 1)) {
        int mi = min(max((int)m, 0), nk - 2);
        float left = grid[(long)i * nk + mi], right = grid[(long)i * nk + mi + 1];
        float f = fminf(fmaxf((v - left) / (right - left), 0.f), 1.f);
        float f2 = f * f, f3 = f2 * f;
        first = (int)m - 3;
        w0 = (first >= 0 && first < n_coef) ? (1.f - f) * (1.f - f) * (1.f - f) / 6.f : 0.f;
        w1 = (first + 1 >= 0 && first + 1 < n_coef) ? (3.f * f3 - 6.f * f2 + 4.f) / 6.f : 0.f;
        w2 = (first + 2 >= 0 && first + 2 < n_coef) ? (-3.f * f3 + 3.f * f2 + 3.f * f + 1.f) / 6.f : 0.f;
        w3 = (first + 3 >= 0 && first + 3 < n_coef) ? f3 / 6.f : 0.f;
    }
    float4* p = reinterpret_cast<float4*>(prep + e * 8);
    p[0] = make_float4(w0, w1, w2, w3);
    p[1] = make_float4(__int_as_float(first + 3), w0 + w1 + w2 + w3, v / (1.f + expf(-v)), 0.f);
}

template <int R>
__device__ __forceinline__ void edge_term(const float* __restrict__ prep, int rows, int in_f, int i,
                                          const float* __restrict__ c, float g, float b, float w, float* acc) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            const float4* p = reinterpret_cast<const float4*>(prep + ((long)r * in_f + i) * 8);
            float4 bv = p[0], mv = p[1];
            int pos = __float_as_int(mv.x);
            // the window c[pos .. pos + 3] from two aligned 16-byte loads (one request each, not four)
            const float4* c4 = reinterpret_cast<const float4*>(c) + (pos >> 2);
            float4 a = __ldg(c4), n = __ldg(c4 + 1);
            int s = pos & 3;
            float c0 = s == 0 ? a.x : s == 1 ? a.y : s == 2 ? a.z : a.w;
            float c1 = s == 0 ? a.y : s == 1 ? a.z : s == 2 ? a.w : n.x;
            float c2 = s == 0 ? a.z : s == 1 ? a.w : s == 2 ? n.x : n.y;
            float c3 = s == 0 ? a.w : s == 1 ? n.x : s == 2 ? n.y : n.z;
            float dot = bv.x * c0 + bv.y * c1 + bv.z * c2 + bv.w * c3;
            acc[r] += g * dot + b * mv.y + w * mv.z;
        }
    }
}

// grid: out_f * splits warps; warp (o, s) sums inputs [s * chunk, (s + 1) * chunk) (chunk a multiple
// of GATHER_STEP) with 8-byte loads of 4 edges per lane, then adds its partial sums into y. R (1, 4 or 16)
// bounds the rows of one launch: a small R keeps registers few and occupancy high at batch 1.
template <int R>
__device__ __forceinline__ void gather(const float* __restrict__ prep, int rows, int in_f, int out_f, int chunk,
                                       const float* __restrict__ cb, int width, const unsigned short* __restrict__ idx,
                                       const __half* __restrict__ gain, const __half* __restrict__ bias,
                                       const __half* __restrict__ base, const float* __restrict__ scales,
                                       float* __restrict__ y) {
    int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    int o = wid % out_f, split = wid / out_f;
    int i_begin = split * chunk;
    if (o >= out_f || i_begin >= in_f) return;
    int i_end = min(in_f, i_begin + chunk);
    const float gs = scales[o], bs = scales[out_f + o], ws = scales[2 * out_f + o];
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    const long row0 = (long)o * in_f;
    int vec_end = (in_f % 4 == 0) ? i_end : i_begin;  // 8-byte loads need 4-aligned rows
    // two groups of 4 edges per lane per step: all 8 index loads issue before any codeword load
    for (int i = i_begin + lane * 4; i + 3 < vec_end; i += 2 * GATHER_STEP) {
        const bool second = i + GATHER_STEP + 3 < vec_end;
        ushort4 k4[2];
        uint2 g2[2], b2[2], w2[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            if (u == 0 || second) {
                long at = row0 + i + u * GATHER_STEP;
                k4[u] = __ldg(reinterpret_cast<const ushort4*>(idx + at));
                g2[u] = __ldg(reinterpret_cast<const uint2*>(gain + at));
                b2[u] = __ldg(reinterpret_cast<const uint2*>(bias + at));
                w2[u] = __ldg(reinterpret_cast<const uint2*>(base + at));
            }
        }
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            if (u == 1 && !second) break;
            const __half* g = reinterpret_cast<const __half*>(&g2[u]);
            const __half* b = reinterpret_cast<const __half*>(&b2[u]);
            const __half* w = reinterpret_cast<const __half*>(&w2[u]);
            unsigned short ks[4] = {k4[u].x, k4[u].y, k4[u].z, k4[u].w};
#pragma unroll
            for (int j = 0; j < 4; ++j)
                edge_term<R>(prep, rows, in_f, i + u * GATHER_STEP + j, cb + (long)ks[j] * width, gs * __half2float(g[j]),
                             bs * __half2float(b[j]), ws * __half2float(w[j]), acc);
        }
    }
    for (int i = max(vec_end, i_begin) + lane; i < i_end; i += 32)  // rows not 4-aligned: scalar
        edge_term<R>(prep, rows, in_f, i, cb + (long)idx[row0 + i] * width, gs * __half2float(gain[row0 + i]),
                  bs * __half2float(bias[row0 + i]), ws * __half2float(base[row0 + i]), acc);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            float v = acc[r];
            for (int s = 16; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
            if (lane == 0) atomicAdd(y + (long)r * out_f + o, v);
        }
    }
}

#define GATHER(R)                                                                                           \
    extern "C" __global__ void lutham_gather##R(                                                            \
        const float* __restrict__ prep, int rows, int in_f, int out_f, int chunk, const float* __restrict__ cb, \
        int width, const unsigned short* __restrict__ idx, const __half* __restrict__ gain,                 \
        const __half* __restrict__ bias, const __half* __restrict__ base, const float* __restrict__ scales,  \
        float* __restrict__ y) {                                                                            \
        gather<R>(prep, rows, in_f, out_f, chunk, cb, width, idx, gain, bias, base, scales, y);              \
    }
GATHER(1)
GATHER(4)
GATHER(16)

#define KT (TI * KS)
#define LD (KT + 8)

__device__ __forceinline__ void split_store(__half* hi, __half* lo, float v) {
    __half h = __float2half(v);
    *hi = h;
    *lo = __float2half(v - __half2float(h));
}

// Each operand is split into fp16 hi + lo parts and the tile product is hi*hi + hi*lo + lo*hi
// (fp32 accumulate): near-fp32 accuracy from fp16 tensor cores.
extern "C" __global__ void __launch_bounds__(MMA_THREADS)
lutham_mma(const float* __restrict__ prep, int rows, int in_f, int out_f, int chunk, const float* __restrict__ cb,
           int width, int n_coef, const unsigned short* __restrict__ idx, const __half* __restrict__ gain,
           const __half* __restrict__ bias, const __half* __restrict__ base, const float* __restrict__ scales,
           float* __restrict__ y) {
    __shared__ __align__(128) unsigned char smem[4 * TM * LD * sizeof(__half)];
    __half* Ah = reinterpret_cast<__half*>(smem);              // [TM rows][LD]: basis rows, hi and lo
    __half* Al = Ah + TM * LD;
    __half* Bh = Al + TM * LD;                                 // [TN outputs][LD]: decoded weights
    __half* Bl = Bh + TN * LD;
    const int r0 = blockIdx.y * TM, o0 = blockIdx.x * TN;
    const int warp = threadIdx.x >> 5, wm = warp >> 1, wn = warp & 1;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.f);

    const int i_lo = blockIdx.z * chunk, i_hi = min(in_f, i_lo + chunk);  // this block's split of inputs
    for (int i0 = i_lo; i0 < i_hi; i0 += TI) {
        for (int e = threadIdx.x; e < TM * TI; e += blockDim.x) {
            int r = e / TI, ii = e % TI, gr = r0 + r, gi = i0 + ii;
            float4 bv = make_float4(0.f, 0.f, 0.f, 0.f);
            int first = 0;
            float silu = 0.f;
            if (gr < rows && gi < i_hi) {
                const float4* p = reinterpret_cast<const float4*>(prep + ((long)gr * in_f + gi) * 8);
                bv = p[0];
                float4 mv = p[1];
                first = __float_as_int(mv.x) - 3;
                silu = mv.z;
            }
            int at = r * LD + ii * KS;
#pragma unroll
            for (int s = 0; s < KS; ++s) {
                int d = s - first;
                float v = d == 0 ? bv.x : d == 1 ? bv.y : d == 2 ? bv.z : d == 3 ? bv.w : 0.f;
                split_store(Ah + at + s, Al + at + s, s < n_coef ? v : (s == n_coef ? silu : 0.f));
            }
        }
        for (int e = threadIdx.x; e < TN * TI; e += blockDim.x) {
            int n = e / TI, ii = e % TI, go = o0 + n, gi = i0 + ii;
            int at = n * LD + ii * KS;
            if (go < out_f && gi < i_hi) {
                long k = (long)go * in_f + gi;
                // the codeword in 16-byte loads (c[3 + s] is coefficient s): 4 or 5 requests, not 13
                const float4* c4 = reinterpret_cast<const float4*>(cb + (long)idx[k] * width);
                float c[KS + 4];
#pragma unroll
                for (int q = 0; q < KS / 4 + 1; ++q) {
                    float4 v = q * 4 < width ? __ldg(c4 + q) : make_float4(0.f, 0.f, 0.f, 0.f);
                    c[4 * q] = v.x; c[4 * q + 1] = v.y; c[4 * q + 2] = v.z; c[4 * q + 3] = v.w;
                }
                float g = scales[go] * __half2float(gain[k]), b = scales[out_f + go] * __half2float(bias[k]);
                float w = scales[2 * out_f + go] * __half2float(base[k]);
#pragma unroll
                for (int s = 0; s < KS; ++s)
                    split_store(Bh + at + s, Bl + at + s, s < n_coef ? g * c[3 + s] + b : (s == n_coef ? w : 0.f));
            } else {
#pragma unroll
                for (int s = 0; s < KS; ++s) Bh[at + s] = Bl[at + s] = __float2half(0.f);
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < KT; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fah[2], fal[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fbh[2], fbl[2];
#pragma unroll
            for (int a = 0; a < 2; ++a) {
                wmma::load_matrix_sync(fah[a], Ah + (wm * 32 + a * 16) * LD + kk, LD);
                wmma::load_matrix_sync(fal[a], Al + (wm * 32 + a * 16) * LD + kk, LD);
            }
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                wmma::load_matrix_sync(fbh[b], Bh + (wn * 32 + b * 16) * LD + kk, LD);
                wmma::load_matrix_sync(fbl[b], Bl + (wn * 32 + b * 16) * LD + kk, LD);
            }
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    wmma::mma_sync(acc[a][b], fal[a], fbh[b], acc[a][b]);
                    wmma::mma_sync(acc[a][b], fah[a], fbl[b], acc[a][b]);
                    wmma::mma_sync(acc[a][b], fah[a], fbh[b], acc[a][b]);
                }
        }
        __syncthreads();
    }
    float* Cs = reinterpret_cast<float*>(smem);                // [TM][TN], reusing the tiles
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b)
            wmma::store_matrix_sync(Cs + (wm * 32 + a * 16) * TN + wn * 32 + b * 16, acc[a][b], TN,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < TM * TN; e += blockDim.x) {
        int r = e / TN, n = e % TN;
        if (r0 + r < rows && o0 + n < out_f) atomicAdd(y + (long)(r0 + r) * out_f + o0 + n, Cs[e]);
    }
}
