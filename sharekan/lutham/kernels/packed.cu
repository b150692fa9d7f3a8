// LUTHAM v3: the forward of a layer read from its packed planes (sharekan/lutham/packed.py): per
// input i and group g of 8 outputs, an index word (8 x uint8 or 8 x uint16) and a gain, bias and
// base word each (8 int4 nibbles, 8 int8 or 8 fp16), stored values unscaled; per output the gain
// scale s_g and the ratios s_b/s_g, s_w/s_g. The codebook is coefficient-major, cb[c * kp + k].
//
//   y[r][o] = s_g[o] * sum_i ( q_g * T[r][i][idx] + (s_b/s_g) q_b * sumB(x_ri) + (s_w/s_g) q_w * silu(x_ri) )
//   T[r][i][k] = sum_j B_j(x_ri) * cb[first_ri + j][k]   (the 4 active cubic bases of x_ri)
//
// packed_lut<IB, SB, NR> (K <= LUT_MAX_K): a block takes a chunk of inputs (blockIdx.y), a run of
// output groups (a thread each, blockIdx.x) and NR rows (blockIdx.z). Per phase of S inputs it issues
// the loads of its threads' records, builds the phase's lookup tables T (S x NR x K floats, one
// codeword a thread: coalesced codebook reads) in shared memory -- LUT-GEMM's trick: a table is
// shared by every output -- and then each edge is one shared-memory read and three FMAs a row.
// packed_gather<IB, SB, NR> (larger K): the same loop, each edge reading the one 16-byte codebook
// window its input's interval needs (cbw: [K][nwin] float4, plan.window_slot order) instead of a
// table. Inputs split over blocks add into the output with fp32 atomics (the runtime zeroes it).
// packed_slab<IB, SB, P>: common.cuh's large-batch expansion with these planes' weights.
#include "common.cuh"

#if !defined(LUT_FLOATS) || !defined(LUT_STEP)
#error "compile with the -D options of sharekan.lutham.geometry.defines()"
#endif

// the 8-output words of each plane, by index bytes IB (1, 2) and side bits SB (4, 8, 16)
template <int IB> struct IdxWord { using T = uint2; };
template <> struct IdxWord<2> { using T = uint4; };
template <int SB> struct SideWord { using T = unsigned; };
template <> struct SideWord<8> { using T = uint2; };
template <> struct SideWord<16> { using T = uint4; };

__device__ __forceinline__ unsigned word(uint2 w, int j) { return j == 0 ? w.x : w.y; }
__device__ __forceinline__ unsigned word(uint4 w, int j) { return j == 0 ? w.x : j == 1 ? w.y : j == 2 ? w.z : w.w; }
__device__ __forceinline__ int index_of(uint2 w, int j) { return (word(w, j >> 2) >> (8 * (j & 3))) & 0xff; }
__device__ __forceinline__ int index_of(uint4 w, int j) { return (word(w, j >> 1) >> (16 * (j & 1))) & 0xffff; }
__device__ __forceinline__ float side_of(unsigned w, int j) { return (float)((int)((w >> (4 * j)) & 15u) - 8); }
__device__ __forceinline__ float side_of(uint2 w, int j) {
    return (float)(signed char)((word(w, j >> 2) >> (8 * (j & 3))) & 0xffu);
}
__device__ __forceinline__ float side_of(uint4 w, int j) {
    const unsigned v = word(w, j >> 1);
    return j & 1 ? hi_half(v) : lo_half(v);
}

template <int IB, int SB>
struct Rec {
    typename IdxWord<IB>::T i;
    typename SideWord<SB>::T g, b, w;
};

template <class T>
__device__ __forceinline__ T zero_word() { T t; memset(&t, 0, sizeof(T)); return t; }
template <int SB>
__device__ __forceinline__ typename SideWord<SB>::T zero_side() { return zero_word<typename SideWord<SB>::T>(); }
template <>
__device__ __forceinline__ unsigned zero_side<4>() { return 0x88888888u; }  // int4 stores value + 8

// records a thread keeps in flight a phase: about 40 registers of them
template <int IB, int SB>
__device__ constexpr int steps() {
    constexpr int s = 160 / (8 * IB + 3 * SB);  // a record is (8 IB + 3 SB) / 4 words
    return s < 1 ? 1 : s > LUT_STEP ? LUT_STEP : s;
}

template <int IB, int SB>
__device__ __forceinline__ Rec<IB, SB> record(const void* idx, const void* gp, const void* bp, const void* wp,
                                              long at, bool valid) {
    using I = typename IdxWord<IB>::T;
    using S = typename SideWord<SB>::T;
    Rec<IB, SB> r;
    if (valid) {
        r.i = __ldg(reinterpret_cast<const I*>(idx) + at);
        r.g = __ldg(reinterpret_cast<const S*>(gp) + at);
        r.b = __ldg(reinterpret_cast<const S*>(bp) + at);
        r.w = __ldg(reinterpret_cast<const S*>(wp) + at);
    } else {  // the codes of zero: an absent edge adds nothing
        r.i = zero_word<I>();
        r.g = r.b = r.w = zero_side<SB>();
    }
    return r;
}

// one layer (or NR rows of it), LUT (GATHER false) or window gather (GATHER true)
template <int IB, int SB, int NR, bool GATHER>
__device__ __forceinline__ void packed_rows(const float* __restrict__ x, int rows, int in_f, int out_f, int groups,
                                            int chunk, const float* __restrict__ t0, const float* __restrict__ hh,
                                            int nk, int n_coef, const float* __restrict__ cb, int k, int kp,
                                            const float4* __restrict__ cbw, int nwin, const void* idx, const void* gp,
                                            const void* bp, const void* wp, const float* __restrict__ scales,
                                            float* __restrict__ y) {
    __shared__ float lut[GATHER ? 1 : LUT_FLOATS];
    __shared__ float4 bw[LUT_STEP * NR];  // the 4 bases of (input s, row r)
    __shared__ float4 meta[LUT_STEP * NR];  // first basis (as int), sum, silu, window slot (as int)
    const int grp = blockIdx.x * blockDim.x + threadIdx.x, r0 = blockIdx.z * NR, nr = min(NR, rows - r0);
    const bool active = grp < groups;
    const int i_lo = blockIdx.y * chunk, n = min(in_f, i_lo + chunk) - i_lo;
    constexpr int STEPS = steps<IB, SB>();
    const int step = GATHER ? STEPS : max(1, min(STEPS, LUT_FLOATS / (NR * k)));
    const int out_pad = groups * 8;
    float acc[NR][8], rb[8], rw[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int o = min(8 * grp + j, out_pad - 1);
        rb[j] = scales[out_pad + o];
        rw[j] = scales[2 * out_pad + o];
#pragma unroll
        for (int r = 0; r < NR; ++r) acc[r][j] = 0.f;
    }
    for (int s0 = 0; s0 < n; s0 += step) {
        const int ns = min(step, n - s0);
        Rec<IB, SB> rec[STEPS];
#pragma unroll
        for (int u = 0; u < STEPS; ++u)  // in flight while the bases and tables are built
            rec[u] = record<IB, SB>(idx, gp, bp, wp, (long)(i_lo + s0 + u) * groups + grp, active && u < ns);
        for (int e = threadIdx.x; e < ns * NR; e += blockDim.x) {
            const int s = e / NR, r = e % NR, i = i_lo + s0 + s;
            Basis b = basis_of(r < nr ? x[(long)(r0 + r) * in_f + i] : 0.f, t0[i], hh[i], nk, n_coef);
            if (r >= nr) b.w[0] = b.w[1] = b.w[2] = b.w[3] = b.sum = b.silu = 0.f;
            bw[e] = make_float4(b.w[0], b.w[1], b.w[2], b.w[3]);
            meta[e] = make_float4(__int_as_float(b.first), b.sum, b.silu, __int_as_float(window_slot(b.first + 3)));
        }
        __syncthreads();
        if (!GATHER) {
            for (int e = threadIdx.x; e < ns * NR * k; e += blockDim.x) {
                const int c = e % k, sr = e / k, first = __float_as_int(meta[sr].x);
                const float4 w = bw[sr];
                const float wj[4] = {w.x, w.y, w.z, w.w};
                float t = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j)  // a basis that does not exist has weight 0: clamp its row
                    t = fmaf(wj[j], __ldg(cb + (long)min(max(first + j, 0), n_coef - 1) * kp + c), t);
                lut[e] = t;
            }
            __syncthreads();
        }
#pragma unroll
        for (int u = 0; u < STEPS; ++u) {
            if (u < ns) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int c = index_of(rec[u].i, j);
                    const float g = side_of(rec[u].g, j), b = rb[j] * side_of(rec[u].b, j),
                                w = rw[j] * side_of(rec[u].w, j);
#pragma unroll
                    for (int r = 0; r < NR; ++r) {
                        const float4 m = meta[u * NR + r];
                        float t;
                        if (GATHER) {
                            const float4 bb = bw[u * NR + r];
                            const float4 win = __ldg(cbw + (long)c * nwin + __float_as_int(m.w));
                            t = bb.x * win.x + bb.y * win.y + bb.z * win.z + bb.w * win.w;
                        } else {
                            t = lut[(u * NR + r) * k + c];
                        }
                        acc[r][j] = fmaf(g, t, fmaf(b, m.y, fmaf(w, m.z, acc[r][j])));
                    }
                }
            }
        }
        __syncthreads();  // before the next phase overwrites the tables
    }
    if (!active) return;
    const bool atomic = gridDim.y > 1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int o = 8 * grp + j;
        const float s = scales[min(o, out_pad - 1)];
#pragma unroll
        for (int r = 0; r < NR; ++r)
            if (r < nr) put(y, r0 + r, o, rows, out_f, s * acc[r][j], atomic);
    }
}

#define PACKED_ROWS(NAME, IB, SB, NR, GATHER)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                      \
        const float* __restrict__ x, int rows, int in_f, int out_f, int groups, int chunk,                       \
        const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,                          \
        const float* __restrict__ cb, int k, int kp, const float4* __restrict__ cbw, int nwin, const void* idx,   \
        const void* gp, const void* bp, const void* wp, const float* __restrict__ scales, float* __restrict__ y) { \
        packed_rows<IB, SB, NR, GATHER>(x, rows, in_f, out_f, groups, chunk, t0, hh, nk, n_coef, cb, k, kp, cbw, \
                                        nwin, idx, gp, bp, wp, scales, y);                                       \
    }
#define PACKED_MODE(MODE, IB, SB, GATHER)                                                                       \
    PACKED_ROWS(packed_##MODE##_i##IB##_s##SB##_r1, IB, SB, 1, GATHER)                                           \
    PACKED_ROWS(packed_##MODE##_i##IB##_s##SB##_r4, IB, SB, 4, GATHER)                                           \
    PACKED_ROWS(packed_##MODE##_i##IB##_s##SB##_r8, IB, SB, 8, GATHER)

// ---- one row: packed_row1<IB, SB> (K <= LUT_MAX_K) ----------------------------------------------------------
// A block is blockDim.x threads over output groups (a thread a group) by blockDim.y threads that share
// out each phase's inputs; blockIdx.y is a chunk of inputs. The first phase's records load before
// anything else; the chunk's bases are computed once; a phase's lookup tables (us * blockDim.y inputs,
// codebook rows read through L1) are built into one of two buffers while the other is read, and the
// next phase's records load while this one's are used: one barrier a phase. Side data decode with
// integer ops and one FADD (no int-to-float conversions, which run at a quarter rate), table reads use
// 32-bit shared addresses. The bias term is folded: scales' fourth row holds sum_i q_b per output, and
// only inputs without their four bases (near or outside the grid's ends: sum B < 1) correct it, so an
// edge inside the grid is one table read and two FMAs. Dynamic shared memory (geometry.row1_launch):
// bases float4[chunk], first int[chunk], 1 - sum B and silu float[chunk], then max(2 S k, 8 threads)
// floats of tables (at the end, the threads' partial sums).

template <int IB, int SB>
__device__ constexpr int row1_steps() {  // records a thread holds a phase: about 20 words of them
    constexpr int words = 2 * IB + 3 * SB / 4;
    return words >= 20 ? 1 : 20 / words;
}

// the 8 side values of a word as floats: magic-number conversions (2^23 + v, less 2^23 + offset)
__device__ __forceinline__ void decode8(unsigned w, float* v) {  // int4 stored as value + 8
    const unsigned lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
#pragma unroll
    for (int j = 0; j < 8; ++j)
        v[j] = __int_as_float(__byte_perm(j & 1 ? hi : lo, 0x4Bu, 0x4550 | (j >> 1))) - 8388616.f;
}
__device__ __forceinline__ void decode8(uint2 w, float* v) {  // int8: value + 128 after xor 0x80
    const unsigned a = w.x ^ 0x80808080u, b = w.y ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 8; ++j)
        v[j] = __int_as_float(__byte_perm(j < 4 ? a : b, 0x4Bu, 0x4550 | (j & 3))) - 8388736.f;
}
__device__ __forceinline__ void decode8(uint4 w, float* v) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = side_of(w, j);
}
// the table offset in bytes (4 * index) of output j
__device__ __forceinline__ unsigned offset_of(uint2 w, int j) { return (unsigned)__byte_perm(word(w, j >> 2), 0, 0x4440 | (j & 3)) << 2; }
__device__ __forceinline__ unsigned offset_of(uint4 w, int j) { return (unsigned)index_of(w, j) << 2; }
__device__ __forceinline__ float lds(unsigned at) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(at));
    return v;
}

template <int IB, int SB>
__device__ __forceinline__ void packed_row1(const float* __restrict__ x, int in_f, int out_f, int groups, int chunk,
                                            int us, const float* __restrict__ t0, const float* __restrict__ hh, int nk,
                                            int n_coef, const float* __restrict__ cb, int k, int kp, const void* idx,
                                            const void* gp, const void* bp, const void* wp,
                                            const float* __restrict__ scales, float* __restrict__ y) {
    extern __shared__ float4 dyn[];
    constexpr int U = row1_steps<IB, SB>();
    using R = Rec<IB, SB>;
    const int bx = blockDim.x, hy = blockDim.y, ty = threadIdx.y, nt = bx * hy, tid = ty * bx + threadIdx.x;
    const int grp = blockIdx.x * bx + threadIdx.x;
    const bool active = grp < groups;
    const int i_lo = blockIdx.y * chunk, n = min(in_f, i_lo + chunk) - i_lo;
    const int S = min(us, U) * hy;  // inputs a phase
    float4* bw = dyn;
    int* first = reinterpret_cast<int*>(bw + chunk);
    float* corr = reinterpret_cast<float*>(first + chunk);  // 1 - sum B: 0 where all four bases exist
    float* silu = corr + chunk;
    float* tab = silu + chunk;

    R cur[U], nxt[U];
    auto load = [&](int ph, R* rec) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int s = ph * S + ty + hy * u;
            rec[u] = record<IB, SB>(idx, gp, bp, wp, (long)(i_lo + s) * groups + grp, active && u < us && s < n);
        }
    };
    load(0, cur);  // in flight while the bases and the first tables are made
    for (int s = tid; s < n; s += nt) {
        const int i = i_lo + s;
        const Basis b = basis_of(x[i], t0[i], hh[i], nk, n_coef);
        bw[s] = make_float4(b.w[0], b.w[1], b.w[2], b.w[3]);
        first[s] = b.first;
        corr[s] = (b.first >= 0 && b.first + 3 < n_coef) ? 0.f : 1.f - b.sum;
        silu[s] = b.silu;
    }
    __syncthreads();

    float ag[8], ab[8], aw[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) ag[j] = ab[j] = aw[j] = 0.f;
    // the tables of phase ph into T: a thread a codeword, an input of the phase at a time
    auto build = [&](int ph, float* T) {
        const int s0 = ph * S, ns = min(S, n - s0);
        for (int sl = 0; sl < ns; ++sl) {
            const float4 w = bw[s0 + sl];
            const int f = first[s0 + sl];
            const float wj[4] = {w.x, w.y, w.z, w.w};
            const float* rows[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)  // a basis that does not exist has weight 0: clamp its row
                rows[j] = cb + (long)min(max(f + j, 0), n_coef - 1) * kp;
            for (int c = tid; c < k; c += nt) {
                float t = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) t = fmaf(wj[j], __ldg(rows[j] + c), t);
                T[sl * k + c] = t;
            }
        }
    };
    const int phases = (n + S - 1) / S;
    build(0, tab);
    __syncthreads();
    const unsigned tab_at = (unsigned)__cvta_generic_to_shared(tab);
    for (int ph = 0; ph < phases; ++ph) {
        const bool more = ph + 1 < phases;
        if (more) load(ph + 1, nxt);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int sl = ty + hy * u, s = ph * S + sl;
            if (u < us && s < n) {
                const unsigned t = tab_at + 4u * (unsigned)(((ph & 1) * S + sl) * k);
                const float sw = silu[s], cr = corr[s];
                float g[8], w[8];
                decode8(cur[u].g, g);
                decode8(cur[u].w, w);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    ag[j] = fmaf(g[j], lds(t + offset_of(cur[u].i, j)), ag[j]);
                    aw[j] = fmaf(w[j], sw, aw[j]);
                }
                if (cr != 0.f) {  // an input without all four bases: its bias term is q_b * sum B, not q_b
                    float b[8];
                    decode8(cur[u].b, b);
#pragma unroll
                    for (int j = 0; j < 8; ++j) ab[j] = fmaf(b[j], cr, ab[j]);
                }
            }
        }
        if (more) build(ph + 1, tab + ((ph + 1) & 1) * S * k);
        __syncthreads();
#pragma unroll
        for (int u = 0; u < U; ++u) cur[u] = nxt[u];
    }
    const int out_pad = groups * 8;
    const bool once = blockIdx.y == 0 && ty == 0;  // the folded bias sum goes in once an output
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int o = min(8 * grp + j, out_pad - 1);
        v[j] = ag[j] + scales[out_pad + o] * ((once ? scales[3 * out_pad + o] : 0.f) - ab[j]) +
               scales[2 * out_pad + o] * aw[j];
    }
    if (hy > 1) {  // the block's rows of threads add up through shared memory (the loop ended on a barrier)
#pragma unroll
        for (int j = 0; j < 8; ++j) tab[j * nt + tid] = v[j];
        __syncthreads();
        if (ty > 0) return;
        for (int h = 1; h < hy; ++h)
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] += tab[j * nt + h * bx + threadIdx.x];
    }
    if (!active) return;
    const bool atomic = gridDim.y > 1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int o = 8 * grp + j;
        put(y, 0, o, 1, out_f, scales[min(o, out_pad - 1)] * v[j], atomic);
    }
}

#define PACKED_ROW1(IB, SB)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256, 3) packed_row1_i##IB##_s##SB(                             \
        const float* __restrict__ x, int in_f, int out_f, int groups, int chunk, int us,                         \
        const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,                          \
        const float* __restrict__ cb, int k, int kp, const void* idx, const void* gp, const void* bp,             \
        const void* wp, const float* __restrict__ scales, float* __restrict__ y) {                              \
        packed_row1<IB, SB>(x, in_f, out_f, groups, chunk, us, t0, hh, nk, n_coef, cb, k, kp, idx, gp, bp, wp,   \
                            scales, y);                                                                          \
    }

// one stored value of output o, input i from a plane of 8-output words
template <int SB>
__device__ __forceinline__ float side_at(const void* plane, long i, int o, int groups) {
    const long w = i * groups + (o >> 3);
    if (SB == 4) return side_of(__ldg(reinterpret_cast<const unsigned*>(plane) + w), o & 7);
    if (SB == 8) return (float)__ldg(reinterpret_cast<const signed char*>(plane) + 8 * w + (o & 7));
    return __half2float(__ldg(reinterpret_cast<const __half*>(plane) + 8 * w + (o & 7)));
}

template <int IB>
__device__ __forceinline__ int index_at(const void* plane, long i, int o, int groups) {
    const long at = (i * groups + (o >> 3)) * 8 + (o & 7);
    return IB == 1 ? __ldg(reinterpret_cast<const unsigned char*>(plane) + at)
                   : __ldg(reinterpret_cast<const unsigned short*>(plane) + at);
}

// the weights of a slab block: 16 outputs x SLAB_IN inputs, a thread an (input, output) pair per pass
template <int IB, int SB, int P>
__device__ __forceinline__ void packed_weights(__half* st, int tile, int ii0, int n_in, int line, int in_f, int out_f,
                                               int groups, int i0, int slots, int n_coef, const float* __restrict__ cb,
                                               int kp, const void* idx, const void* gp, const void* bp, const void* wp,
                                               const float* __restrict__ scales) {
    constexpr int PASSES = TILE_O * SLAB_IN / 256;
    const int ol = threadIdx.x & 15, o = min(tile * TILE_O + ol, groups * 8 - 1), out_pad = groups * 8;
    const float gs = scales[o], bs = gs * scales[out_pad + o], ws = gs * scales[2 * out_pad + o];
#pragma unroll
    for (int u = 0; u < PASSES; ++u) {
        const int il = (threadIdx.x >> 4) + 16 * u, i = i0 + ii0 + il;
        const bool valid = il < n_in && i < in_f && tile * TILE_O + ol < out_f;
        const int c = valid ? index_at<IB>(idx, i, o, groups) : 0;
        const float g = valid ? gs * side_at<SB>(gp, i, o, groups) : 0.f;
        const float b = valid ? bs * side_at<SB>(bp, i, o, groups) : 0.f;
        const float w = valid ? ws * side_at<SB>(wp, i, o, groups) : 0.f;
        const int at = ol * line + il * slots;
        for (int s = 0; s < slots; s += 2) {
            float v[2];
#pragma unroll
            for (int d = 0; d < 2; ++d)
                v[d] = s + d < n_coef ? fmaf(g, __ldg(cb + (long)(s + d) * kp + c), b) : (s + d == n_coef ? w : 0.f);
            stage_pair(st, at + s, v[0], v[1], P != 1);
        }
    }
}

#define PACKED_SLAB(IB, SB, P)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256, 4) packed_slab_i##IB##_s##SB##_p##P(                      \
        const float* __restrict__ x, int rows, int in_f, int out_f, int groups, int i0, int n_pad, int slots,    \
        const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,                          \
        const float* __restrict__ cb, int kp, const void* idx, const void* gp, const void* bp, const void* wp,   \
        const float* __restrict__ scales, __half* __restrict__ W, __half* __restrict__ Bm, int wblocks) {        \
        slab_expand<P>(x, rows, in_f, out_f, i0, n_pad, slots, t0, hh, nk, n_coef, W, Bm, wblocks,               \
                       [&](__half* st, int tile, int ii0, int n_in, int line) {                                  \
                           packed_weights<IB, SB, P>(st, tile, ii0, n_in, line, in_f, out_f, groups, i0, slots,  \
                                                     n_coef, cb, kp, idx, gp, bp, wp, scales);                  \
                       });                                                                                       \
    }
#define PACKED_SLABS(IB, SB) PACKED_SLAB(IB, SB, 1) PACKED_SLAB(IB, SB, 2) PACKED_SLAB(IB, SB, 3)

PACKED_MODE(lut, 1, 4, false) PACKED_MODE(lut, 1, 8, false) PACKED_MODE(lut, 1, 16, false)
PACKED_MODE(lut, 2, 4, false) PACKED_MODE(lut, 2, 8, false) PACKED_MODE(lut, 2, 16, false)
PACKED_MODE(gather, 2, 4, true) PACKED_MODE(gather, 2, 8, true) PACKED_MODE(gather, 2, 16, true)
PACKED_ROW1(1, 4) PACKED_ROW1(1, 8) PACKED_ROW1(1, 16)
PACKED_ROW1(2, 4) PACKED_ROW1(2, 8) PACKED_ROW1(2, 16)
PACKED_SLABS(1, 4) PACKED_SLABS(1, 8) PACKED_SLABS(1, 16)
PACKED_SLABS(2, 4) PACKED_SLABS(2, 8) PACKED_SLABS(2, 16)
