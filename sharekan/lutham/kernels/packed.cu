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
// packed_row1 (one row) and packed_tc (tensor cores, from 2 rows): their own sections below.
// packed_slab<IB, SB, P>: common.cuh's large-batch expansion with these planes' weights.
#include "common.cuh"

#if !defined(LUT_FLOATS) || !defined(LUT_STEP) || !defined(ROW1_CLUSTER) || \
    !defined(TC_WARPS) || !defined(TC_STEP) || !defined(TC_STAGES)
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

// ---- one row: packed_row1_{lut,gather}<IB, SB> -----------------------------------------------------------------
// A block is blockDim.x threads over output groups (a thread a group) by blockDim.y threads that share
// out each phase's inputs (a warp's lanes take the same input: its table address is uniform);
// blockIdx.y is a chunk of inputs. The first phase's records load before anything else; the chunk's
// bases are computed once, with each input's four codebook rows (clamped) as float4 offsets; a phase's
// lookup tables are built four codewords a thread (float4 codebook reads through L1, 16 FMAs, one
// 16-byte store) into one of two buffers while the other is read, and the next phase's records load
// while this one's are used: one barrier a phase. An edge is one index PRMT, one LEA, one table read
// and two decodes and FMAs (magic-number decode: no int-to-float conversions, which run at a quarter
// rate). The bias term is folded: scales' fourth row holds sum_i q_b per output, and only inputs
// without their four bases (near or outside the grid's ends: sum B < 1) read their bias word and
// correct it -- the bias plane is not read for inputs inside the grid. Where inputs are split over
// blocks, each chunk writes its partial sums and packed_sum adds them in a fixed order (no atomics:
// they queue at the L2 slices holding the output; the sum is deterministic); on sm_90 a split table
// layer runs packed_row1_lutc, clusters of ROW1_CLUSTER chunks that first add their sums through
// distributed shared memory, so a partial row is written a cluster (a cluster alone writes the output).
// Dynamic shared memory
// (geometry.row1_launch): bases float4[chunk], row offsets int4[chunk], then max(2 S kq, 2 threads)
// float4 of tables (at the end, the threads' partial sums), then 1 - sum B and silu float[chunk].
// GATHER (layers with fewer outputs than codewords, where a table would serve fewer edges than it
// has entries, and K > LUT_MAX_K): no tables and no barrier a phase -- each edge reads the one
// 16-byte codebook window its input's interval needs (cbw: [K][nwin] float4, plan.window_slot order).

template <int IB, int SB>
struct Rec1 {  // what a phase prefetches of an edge group: index, gain and base weight (bias: on demand)
    typename IdxWord<IB>::T i;
    typename SideWord<SB>::T g, w;
};

template <int IB, int SB>
__device__ constexpr int row1_steps() {  // records a thread holds a phase: about 16 words of them
    constexpr int words = 2 * IB + 2 * (SB / 4);
    return words >= 16 ? 1 : 16 / words;
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
__device__ __forceinline__ unsigned opaque(unsigned v) {  // keeps a table's base out of the per-edge arithmetic
    asm("mov.b32 %0, %0;" : "+r"(v));
    return v;
}
__device__ __forceinline__ float4 fma4(float w, float4 a, float4 t) {
    return make_float4(fmaf(w, a.x, t.x), fmaf(w, a.y, t.y), fmaf(w, a.z, t.z), fmaf(w, a.w, t.w));
}

// thread-block clusters (sm_90): a barrier of the cluster, the block's rank, a read of a float in
// another block's shared memory
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ float ld_cluster(const float* p, unsigned rank) {  // p in block `rank`'s shared memory
    unsigned at;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(at) : "r"((unsigned)__cvta_generic_to_shared(p)), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(at) : "memory");
    return v;
}

template <int IB, int SB, bool GATHER, int CL>
__device__ __forceinline__ void packed_row1(const float* __restrict__ x, int in_f, int out_f, int groups, int chunk,
                                            int us, const float* __restrict__ t0, const float* __restrict__ hh, int nk,
                                            int n_coef, const float* __restrict__ cb, int kp,
                                            const float4* __restrict__ cbw, int nwin, const void* idx,
                                            const void* gp, const void* bp, const void* wp,
                                            const float* __restrict__ scales, float* __restrict__ y,
                                            float* __restrict__ part) {
    extern __shared__ float4 dyn[];
    constexpr int U = row1_steps<IB, SB>();
    using R = Rec1<IB, SB>;
    using I = typename IdxWord<IB>::T;
    using W = typename SideWord<SB>::T;
    const int bx = blockDim.x, hy = blockDim.y, ty = threadIdx.y, nt = bx * hy, tid = ty * bx + threadIdx.x;
    const int grp = blockIdx.x * bx + threadIdx.x, out_pad = groups * 8;
    const bool active = grp < groups;
    const int i_lo = blockIdx.y * chunk, n = min(in_f, i_lo + chunk) - i_lo;
    const int S = min(us, U) * hy, kq = kp >> 2;  // inputs a phase; float4 columns of the codebook
    const unsigned magic = 0xFFFFFFFFu / (unsigned)kq + 1u;  // e / kq = umulhi(e, magic) for e < 2^16
    float4* bw = dyn;
    int4* rows = reinterpret_cast<int4*>(bw + chunk);  // each input's 4 codebook rows, as float4 offsets
    float4* tab = reinterpret_cast<float4*>(rows + chunk);
    const int tab4 = max(GATHER ? 0 : 2 * S * kq, 2 * nt);
    float* corr = reinterpret_cast<float*>(tab + tab4);  // 1 - sum B: 0 where all four bases exist
    float* silu = corr + chunk;
    const float4* cb4 = reinterpret_cast<const float4*>(cb);

    R cur[U], nxt[U];
    // this thread's column of each plane; a record's word is at (input) * groups from it (32-bit: planes < 4 G words)
    const I* pi = reinterpret_cast<const I*>(idx) + grp;
    const W *pg = reinterpret_cast<const W*>(gp) + grp, *pw = reinterpret_cast<const W*>(wp) + grp;
    auto load = [&](int ph, R* rec) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int s = ph * S + ty + hy * u;
            const unsigned at = (unsigned)(i_lo + s) * (unsigned)groups;
            if (active && u < us && s < n) {
                rec[u].i = __ldg(pi + at);
                rec[u].g = __ldg(pg + at);
                rec[u].w = __ldg(pw + at);
            }
        }
    };
    load(0, cur);  // in flight while the bases and the first tables are made
    for (int s = tid; s < n; s += nt) {
        const int i = i_lo + s;
        const Basis b = basis_of(x[i], t0[i], hh[i], nk, n_coef);
        bw[s] = make_float4(b.w[0], b.w[1], b.w[2], b.w[3]);
        int r[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) r[j] = min(max(b.first + j, 0), n_coef - 1) * kq;  // a missing basis weighs 0
        rows[s] = GATHER ? make_int4(window_slot(b.first + 3), 0, 0, 0) : make_int4(r[0], r[1], r[2], r[3]);
        corr[s] = (b.first >= 0 && b.first + 3 < n_coef) ? 0.f : 1.f - b.sum;
        silu[s] = b.silu;
    }
    __syncthreads();

    // the tables of phase ph into T: four codewords (one float4 column) a thread an iteration
    auto build = [&](int ph, float4* T) {
        const int s0 = ph * S, total = min(S, n - s0) * kq;
        for (int e = tid; e < total; e += nt) {
            const int sl = __umulhi((unsigned)e, magic), c = e - sl * kq;
            const float4 w = bw[s0 + sl];
            const int4 r = rows[s0 + sl];
            float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
            t = fma4(w.x, __ldg(cb4 + (unsigned)(r.x + c)), t);
            t = fma4(w.y, __ldg(cb4 + (unsigned)(r.y + c)), t);
            t = fma4(w.z, __ldg(cb4 + (unsigned)(r.z + c)), t);
            t = fma4(w.w, __ldg(cb4 + (unsigned)(r.w + c)), t);
            T[e] = t;
        }
    };
    float ag[8], aw[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) ag[j] = aw[j] = 0.f;
    const int phases = (n + S - 1) / S;
    if (!GATHER) {
        build(0, tab);
        __syncthreads();
    }
    const unsigned tab_at = (unsigned)__cvta_generic_to_shared(tab);
    for (int ph = 0; ph < phases; ++ph) {
        const bool more = ph + 1 < phases;
        if (more) load(ph + 1, nxt);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int sl = ty + hy * u, s = ph * S + sl;
            if (active && u < us && s < n) {
                const float sw = silu[s], cr = corr[s];
                float g[8], w[8];
                decode8(cur[u].g, g);
                decode8(cur[u].w, w);
                if (GATHER) {
                    const float4 bb = bw[s];
                    const float4* win = cbw + rows[s].x;
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const float4 c = __ldg(win + (long)index_of(cur[u].i, j) * nwin);
                        ag[j] = fmaf(g[j], bb.x * c.x + bb.y * c.y + bb.z * c.z + bb.w * c.w, ag[j]);
                        aw[j] = fmaf(w[j], sw, aw[j]);
                    }
                } else {
                    const unsigned t = opaque(tab_at + 16u * (unsigned)(((ph & 1) * S + sl) * kq));
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        ag[j] = fmaf(g[j], lds(t + offset_of(cur[u].i, j)), ag[j]);
                        aw[j] = fmaf(w[j], sw, aw[j]);
                    }
                }
                if (cr != 0.f) {  // an input without all four bases: its bias term is q_b * sum B, not q_b
                    float b[8];
                    decode8(__ldg(reinterpret_cast<const W*>(bp) + (long)(i_lo + s) * groups + grp), b);
#pragma unroll
                    for (int j = 0; j < 8; ++j) ag[j] = fmaf(-scales[out_pad + 8 * grp + j] * cr, b[j], ag[j]);
                }
            }
        }
        if (!GATHER) {
            if (more) build(ph + 1, tab + ((ph + 1) & 1) * S * kq);
            __syncthreads();
        }
#pragma unroll
        for (int u = 0; u < U; ++u) cur[u] = nxt[u];
    }
    const bool once = blockIdx.y == 0 && ty == 0;  // the folded bias sum goes in once an output
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int o = min(8 * grp + j, out_pad - 1);
        v[j] = ag[j] + scales[2 * out_pad + o] * aw[j] + (once ? scales[out_pad + o] * scales[3 * out_pad + o] : 0.f);
    }
    float* red = reinterpret_cast<float*>(tab);
    if (hy > 1) {  // the block's rows of threads add up through shared memory (after the tables' last reads)
        if (GATHER) __syncthreads();
#pragma unroll
        for (int j = 0; j < 8; ++j) red[j * nt + tid] = v[j];
        __syncthreads();
        if (CL == 1 && ty > 0) return;
        if (ty == 0)
            for (int h = 1; h < hy; ++h)
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] += red[j * nt + h * bx + threadIdx.x];
    }
    if (CL > 1) {  // a cluster of CL chunks: their sums added through distributed shared memory, in rank order
        const int gs = min(grp, groups - 1);
        const float4 s0 = reinterpret_cast<const float4*>(scales)[2 * gs], s1 = reinterpret_cast<const float4*>(scales)[2 * gs + 1];
        const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
        __syncthreads();  // the rows' sums are read: red is this block's 8 bx outputs now
        if (ty == 0)
#pragma unroll
            for (int j = 0; j < 8; ++j) red[8 * threadIdx.x + j] = active ? s[j] * v[j] : 0.f;
        cluster_sync();
        const int per = 8 * bx / CL, at = (int)cluster_rank() * per + tid;  // rank q adds outputs q per ... of the 8 bx
        const int o = blockIdx.x * 8 * bx + at;
        float t = 0.f;
        if (tid < per)
            for (int r = 0; r < CL; ++r) t += ld_cluster(red + at, r);
        cluster_sync();  // every block has read the others' sums: now each may leave
        if (tid < per && o < out_pad) {
            if (gridDim.y == CL) {
                if (o < out_f) y[o] = t;
            } else {
                part[(long)(blockIdx.y / CL) * out_pad + o] = t;
            }
        }
        return;
    }
    if (!active) return;
    const float4 s0 = reinterpret_cast<const float4*>(scales)[2 * grp], s1 = reinterpret_cast<const float4*>(scales)[2 * grp + 1];
    if (gridDim.y > 1) {  // a chunk's partial sums, added by packed_sum
        float4* to = reinterpret_cast<float4*>(part + (long)blockIdx.y * out_pad + 8 * grp);
        to[0] = make_float4(s0.x * v[0], s0.y * v[1], s0.z * v[2], s0.w * v[3]);
        to[1] = make_float4(s1.x * v[4], s1.y * v[5], s1.z * v[6], s1.w * v[7]);
        return;
    }
    const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) put(y, 0, 8 * grp + j, 1, out_f, s[j] * v[j], false);
}

// y[o] = sum over the chunks of packed_row1's partial sums: 32 outputs a block (x) by 32 lanes over the
// chunks (y), 8 loads a lane in flight, then the lanes' sums added in shared memory in a fixed order
extern "C" __global__ void __launch_bounds__(1024) packed_sum(const float* __restrict__ part, int chunks, int out_pad,
                                                              int out_f, float* __restrict__ y) {
    __shared__ float red[32][33];
    const int o = blockIdx.x * 32 + threadIdx.x;
    float s = 0.f;
    if (o < out_pad) {
#pragma unroll 8
        for (int c = threadIdx.y; c < chunks; c += 32) s += part[(long)c * out_pad + o];
    }
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && o < out_f) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < 32; ++w) t += red[w][threadIdx.x];
        y[o] = t;
    }
}

#define PACKED_ROW1_MODE(MODE, IB, SB, GATHER, CL, ATTRS)                                                       \
    extern "C" __global__ void ATTRS __launch_bounds__(256, 3) packed_row1_##MODE##_i##IB##_s##SB(                \
        const float* __restrict__ x, int in_f, int out_f, int groups, int chunk, int us,                         \
        const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,                          \
        const float* __restrict__ cb, int kp, const float4* __restrict__ cbw, int nwin, const void* idx,           \
        const void* gp, const void* bp, const void* wp, const float* __restrict__ scales, float* __restrict__ y,  \
        float* __restrict__ part) {                                                                              \
        packed_row1<IB, SB, GATHER, CL>(x, in_f, out_f, groups, chunk, us, t0, hh, nk, n_coef, cb, kp, cbw, nwin, idx, \
                                    gp, bp, wp, scales, y, part);                                                \
    }
#define PACKED_ROW1(IB, SB) PACKED_ROW1_MODE(lut, IB, SB, false, 1, ) PACKED_ROW1_MODE(gather, IB, SB, true, 1, )
// split layers on sm_90: clusters of ROW1_CLUSTER chunks (the grid's y a multiple of it)
#define PACKED_ROW1C(IB, SB) PACKED_ROW1_MODE(lutc, IB, SB, false, ROW1_CLUSTER, __cluster_dims__(1, ROW1_CLUSTER, 1))

#if __CUDA_ARCH__ >= 900
PACKED_ROW1C(1, 4) PACKED_ROW1C(1, 8) PACKED_ROW1C(1, 16)
PACKED_ROW1C(2, 4) PACKED_ROW1C(2, 8) PACKED_ROW1C(2, 16)
#endif

// ---- several rows: packed_tc<IB, SB, P> (tensor cores) ------------------------------------------------------
// mma.m16n8k16 (common.cuh: mma16816) with K = the 16 slots of one input: lane (g = lane / 4, q = lane % 4)
// of a warp holds the A values of outputs g and g + 8 of its 16-output tile (groups 2t and 2t + 1: value g
// of each group's words) at slots 4q .. 4q+3, and the B values of row g of an n-tile (8 rows) at those
// slots. A block is TC_WARPS warps on consecutive output tiles (blockIdx.x) over a chunk of inputs
// (blockIdx.y, a multiple of TC_STEP) for up to 8 n-tiles of rows from row 64 blockIdx.z. A phase is
// TC_STEP inputs: the block's words of every plane (2 TC_WARPS groups) and the rows' inputs arrive by
// cp.async TC_STAGES - 1 phases ahead into a ring in shared memory (no registers held: Marlin's
// pipeline), and while one phase is multiplied the next phase's B fragments are built, a thread per
// (input, row), into the other of two buffers: one barrier a phase. An edge's weights, w_s = q_g c_s +
// (s_b/s_g) q_b (s < 15: slots past C meet zero bases) and w_15 = (s_w/s_g) q_w, come from its
// codeword's aligned window q (cbw, through L1) straight into A fragments used by every n-tile; P
// products as v12's (1: fp16; 2: weights hi + lo; 3: bases hi + lo too, each input's products added in
// fp32). y = s_g * the sum; chunks write partial rows that packed_sum adds in a fixed order. Dynamic
// shared memory (geometry.packed_tc_launch): TC_STAGES stages of (TC_STEP inputs' words, then the rows'
// inputs), then the two fragment buffers.
__device__ __forceinline__ void cp_async(void* to, const void* from, int bytes, bool valid) {
    const unsigned at = (unsigned)__cvta_generic_to_shared(to);
    if (bytes == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(at), "l"(from), "r"(valid ? 16 : 0) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(at), "l"(from), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

template <int IB, int SB>
struct TcWords {  // bytes of one input's words a block holds: 2 TC_WARPS groups of each plane
    static constexpr int GROUPS = 2 * TC_WARPS, IDX = GROUPS * 8 * IB, SIDE = GROUPS * SB, ALL = IDX + 3 * SIDE;
};

// value g of group h's word in a staged side plane (stored unscaled: int4 as value + 8)
template <int SB>
__device__ __forceinline__ float staged_side(const unsigned char* plane, int h, int g) {
    if (SB == 4) {
        const unsigned w = *reinterpret_cast<const unsigned*>(plane + 4 * h);
        return __int_as_float(0x4B000000u | ((w >> (4 * g)) & 15u)) - 8388616.f;
    }
    if (SB == 8) return (float)reinterpret_cast<const signed char*>(plane)[8 * h + g];
    return __half2float(reinterpret_cast<const __half*>(plane)[8 * h + g]);
}

template <int IB, int SB, int P>
__device__ __forceinline__ void packed_tc(const float* __restrict__ x, int rows, int in_f, int out_f, int groups,
                                          int chunk, int wide, const float* __restrict__ t0,
                                          const float* __restrict__ hh, int nk, int n_coef,
                                          const float4* __restrict__ cbw, int nwin, const void* idx, const void* gp,
                                          const void* bp, const void* wp, const float* __restrict__ scales,
                                          float* __restrict__ y) {
    extern __shared__ __align__(16) unsigned char smem[];
    using Wd = TcWords<IB, SB>;
    constexpr int LB = P == 3 ? 2 : 1;  // uint2 a lane's B fragment takes (hi, lo)
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
    const int r0 = blockIdx.z * 64, nts = min(8, (rows - r0 + 7) >> 3), nrow = min(64, rows - r0);
    const int i_lo = blockIdx.y * chunk, n = min(in_f, i_lo + chunk) - i_lo, phases = (n + TC_STEP - 1) / TC_STEP;
    const int gx0 = blockIdx.x * Wd::GROUPS, tile = blockIdx.x * TC_WARPS + warp;
    const bool live = 16 * tile < out_f;
    constexpr int WORDS = TC_STEP * Wd::ALL;  // bytes of a stage's words; then the rows' inputs
    const int stage = WORDS + TC_STEP * 64 * 4;
    uint2* F = reinterpret_cast<uint2*>(smem + TC_STAGES * stage);  // [2][TC_STEP][nts][32] x LB
    const int fbuf = TC_STEP * nts * 32 * LB;

    // a phase's words and inputs into stage ph % TC_STAGES (zero past the chunk, the groups, the rows)
    auto fetch = [&](int ph) {
        if (ph >= phases) return;
        unsigned char* st = smem + (ph % TC_STAGES) * stage;
        const int s0 = ph * TC_STEP, unit = wide ? 16 : 4;
        for (int e = tid; e < WORDS / unit; e += blockDim.x) {
            const int s = e / (Wd::ALL / unit), off = (e - s * (Wd::ALL / unit)) * unit;
            const int pl = off < Wd::IDX ? 0 : 1 + (off - Wd::IDX) / Wd::SIDE;
            const int within = pl == 0 ? off : (off - Wd::IDX) - (pl - 1) * Wd::SIDE;
            const int wb = pl == 0 ? 8 * IB : SB;  // bytes of a group's word in this plane
            const void* base = pl == 0 ? idx : pl == 1 ? gp : pl == 2 ? bp : wp;
            const bool valid = s0 + s < n && gx0 + within / wb < groups;
            const unsigned char* from = reinterpret_cast<const unsigned char*>(base) +
                                        ((long)(i_lo + s0 + s) * groups + gx0) * wb + within;
            cp_async(st + s * Wd::ALL + off, valid ? from : base, unit, valid);
        }
        float* xs = reinterpret_cast<float*>(st + WORDS);
        for (int e = tid; e < TC_STEP * nrow; e += blockDim.x) {
            const int rl = e / TC_STEP, s = e - rl * TC_STEP;
            const bool valid = s0 + s < n;
            cp_async(xs + e, valid ? x + (long)(r0 + rl) * in_f + i_lo + s0 + s : x, 4, valid);
        }
    };
    // the B fragments of phase ph into buffer ph & 1: a thread per (input, row); zero past the chunk, rows
    auto build = [&](int ph) {
        if (ph >= phases) return;
        const float* xs = reinterpret_cast<const float*>(smem + (ph % TC_STAGES) * stage + WORDS);
        uint2* fb = F + (ph & 1) * fbuf;
        const int s0 = ph * TC_STEP;
        for (int e = tid; e < TC_STEP * nts * 8; e += blockDim.x) {
            const int rl = e / TC_STEP, s = e - rl * TC_STEP, i = i_lo + s0 + s;
            float v[16];
#pragma unroll
            for (int k = 0; k < 16; ++k) v[k] = 0.f;
            if (s0 + s < n && rl < nrow) {
                const Basis b = basis_of(xs[e], t0[i], hh[i], nk, n_coef);
#pragma unroll
                for (int k = 0; k < 16; ++k) v[k] = slot_value(b, k, BASE_SLOT);
            }
            uint2* at = fb + ((s * nts + (rl >> 3)) * 32 + (rl & 7) * 4) * LB;  // lanes 4 (row % 8) + q
#pragma unroll
            for (int qq = 0; qq < 4; ++qq) {
                if (P == 3) {
                    uint4 f;
                    pack_split(v[4 * qq], v[4 * qq + 1], f.x, f.z);
                    pack_split(v[4 * qq + 2], v[4 * qq + 3], f.y, f.w);
                    reinterpret_cast<uint4*>(at)[qq] = f;
                } else {
                    at[qq] = make_uint2(pack(v[4 * qq], v[4 * qq + 1]), pack(v[4 * qq + 2], v[4 * qq + 3]));
                }
            }
        }
    };

    const int out_pad = groups * 8, oa = min(16 * tile + g, out_pad - 1), ob = min(16 * tile + 8 + g, out_pad - 1);
    const float rba = scales[out_pad + oa], rwa = scales[2 * out_pad + oa];
    const float rbb = scales[out_pad + ob], rwb = scales[2 * out_pad + ob];
    float acc[8][4];
#pragma unroll
    for (int t = 0; t < 8; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

#pragma unroll
    for (int ph = 0; ph < TC_STAGES - 1; ++ph) {
        fetch(ph);
        cp_commit();
    }
    cp_wait<TC_STAGES - 2>();  // phase 0 is in
    __syncthreads();
    build(0);
    for (int ph = 0; ph < phases; ++ph) {
        cp_wait<TC_STAGES - 3>();  // phase ph + 1 is in (this thread's copies)
        __syncthreads();  // ... everyone's; phase ph - 1 is done with: its stage and buffer may be reused
        fetch(ph + TC_STAGES - 1);
        cp_commit();
        build(ph + 1);
        if (!live) continue;
        const unsigned char* st = smem + (ph % TC_STAGES) * stage;
        const uint2* fb = F + (ph & 1) * fbuf + lane * LB;
#pragma unroll
        for (int s = 0; s < TC_STEP; ++s) {
            const unsigned char* w = st + s * Wd::ALL;
            int ia, ibx;
            if (IB == 1) {
                ia = w[(2 * warp) * 8 + g];
                ibx = w[(2 * warp + 1) * 8 + g];
            } else {
                ia = reinterpret_cast<const unsigned short*>(w)[(2 * warp) * 8 + g];
                ibx = reinterpret_cast<const unsigned short*>(w)[(2 * warp + 1) * 8 + g];
            }
            const float4 ca = __ldg(cbw + (long)ia * nwin + q), cbv = __ldg(cbw + (long)ibx * nwin + q);
            const unsigned char* sg = w + Wd::IDX + 2 * warp * SB;
            const float ga = staged_side<SB>(sg, 0, g), gb = staged_side<SB>(sg, 1, g);
            const float ba = rba * staged_side<SB>(sg + Wd::SIDE, 0, g), bb = rbb * staged_side<SB>(sg + Wd::SIDE, 1, g);
            float wa[4] = {fmaf(ga, ca.x, ba), fmaf(ga, ca.y, ba), fmaf(ga, ca.z, ba), fmaf(ga, ca.w, ba)};
            float wv[4] = {fmaf(gb, cbv.x, bb), fmaf(gb, cbv.y, bb), fmaf(gb, cbv.z, bb), fmaf(gb, cbv.w, bb)};
            if (q == 3) {
                wa[3] = rwa * staged_side<SB>(sg + 2 * Wd::SIDE, 0, g);
                wv[3] = rwb * staged_side<SB>(sg + 2 * Wd::SIDE, 1, g);
            }
            unsigned ahi[4], alo[4];  // rows g (regs 0, 2) and g + 8 (regs 1, 3)
            pack_split(wa[0], wa[1], ahi[0], alo[0]);
            pack_split(wv[0], wv[1], ahi[1], alo[1]);
            pack_split(wa[2], wa[3], ahi[2], alo[2]);
            pack_split(wv[2], wv[3], ahi[3], alo[3]);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                if (t < nts) {
                    const uint2* src = fb + (s * nts + t) * 32 * LB;
                    const uint2 bh = src[0];
                    if (P == 3) {
                        const uint2 bl = src[1];
                        float d[4] = {0.f, 0.f, 0.f, 0.f};
                        mma16816(d, ahi, bh.x, bh.y);
                        mma16816(d, alo, bh.x, bh.y);
                        mma16816(d, ahi, bl.x, bl.y);
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[t][j] += d[j];
                    } else {
                        mma16816(acc[t], ahi, bh.x, bh.y);
                        if (P == 2) mma16816(acc[t], alo, bh.x, bh.y);
                    }
                }
            }
        }
    }
    if (!live) return;
    const float sa = scales[oa], sb = scales[ob];
    float* to = gridDim.y > 1 ? y + (long)blockIdx.y * rows * out_f : y;  // a chunk's partial rows
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        if (t >= nts) break;
        const int r = r0 + 8 * t + 2 * q, o = 16 * tile + g;
        put(to, r, o, rows, out_f, sa * acc[t][0], false);
        put(to, r + 1, o, rows, out_f, sa * acc[t][1], false);
        put(to, r, o + 8, rows, out_f, sb * acc[t][2], false);
        put(to, r + 1, o + 8, rows, out_f, sb * acc[t][3], false);
    }
}

#define PACKED_TC(IB, SB, P)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256, 2) packed_tc_i##IB##_s##SB##_p##P(                        \
        const float* __restrict__ x, int rows, int in_f, int out_f, int groups, int chunk, int wide,             \
        const float* __restrict__ t0, const float* __restrict__ hh, int nk, int n_coef,                          \
        const float4* __restrict__ cbw, int nwin, const void* idx, const void* gp, const void* bp, const void* wp, \
        const float* __restrict__ scales, float* __restrict__ y) {                                               \
        packed_tc<IB, SB, P>(x, rows, in_f, out_f, groups, chunk, wide, t0, hh, nk, n_coef, cbw, nwin, idx, gp,  \
                             bp, wp, scales, y);                                                                 \
    }
#define PACKED_TCS(IB, SB) PACKED_TC(IB, SB, 1) PACKED_TC(IB, SB, 2) PACKED_TC(IB, SB, 3)

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
PACKED_TCS(1, 4) PACKED_TCS(1, 8) PACKED_TCS(1, 16)
PACKED_TCS(2, 4) PACKED_TCS(2, 8) PACKED_TCS(2, 16)
