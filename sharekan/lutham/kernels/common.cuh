// Device helpers LUTHAM's kernel sources share (lutham.cu: v12's 8-byte records; packed.cu: v3's packed
// planes): the closed-form cubic bases of an input, fp16 packing, and the large-batch slab expansion.
#pragma once
#include <cuda_fp16.h>

#if !defined(TILE_O) || !defined(SLAB_IN) || !defined(SLAB_ROWS)
#error "compile with the -D options of sharekan.lutham.geometry.defines()"
#endif

struct Basis {
    float w[4];   // the 4 cubic bases starting at coefficient `first` (0 where that coefficient does not exist)
    int first;    // -3 .. C - 1
    float sum;    // sum of w: what a per-edge bias multiplies
    float silu;
};

__device__ __forceinline__ Basis basis_of(float v, float t0, float h, int nk, int n_coef) {
    Basis b;
    b.w[0] = b.w[1] = b.w[2] = b.w[3] = 0.f;
    b.first = -3;
    b.silu = v / (1.f + __expf(-v));
    const float u = (v - t0) / h;
    if (u >= 0.f && u < (float)(nk - 1)) {  // inside the knots (a NaN input leaves only silu)
        const float m = floorf(u), f = u - m, f2 = f * f, f3 = f2 * f, g = 1.f - f;
        b.first = (int)m - 3;
        const float c[4] = {g * g * g / 6.f, (3.f * f3 - 6.f * f2 + 4.f) / 6.f,
                            (-3.f * f3 + 3.f * f2 + 3.f * f + 1.f) / 6.f, f3 / 6.f};
#pragma unroll
        for (int j = 0; j < 4; ++j) b.w[j] = (b.first + j >= 0 && b.first + j < n_coef) ? c[j] : 0.f;
    }
    b.sum = b.w[0] + b.w[1] + b.w[2] + b.w[3];
    return b;
}

// slot s of a basis as K slots: the 4 cubic bases at their coefficients, SiLU at `silu_slot`, else 0
__device__ __forceinline__ float slot_value(const Basis& b, int s, int silu_slot) {
    const int d = s - b.first;
    return s == silu_slot ? b.silu : d == 0 ? b.w[0] : d == 1 ? b.w[1] : d == 2 ? b.w[2] : d == 3 ? b.w[3] : 0.f;
}

// where window p (its coefficients c[p-3 .. p]) sits in a codeword: the aligned windows 3, 7, 11, 15
// first, then the others in order (plan.window_slot, the host side, is the same function)
__device__ __forceinline__ int window_slot(int p) {
    return (p < 16 && (p & 3) == 3) ? (p >> 2) : 4 + p - min((p + 1) >> 2, 4);
}

__device__ __forceinline__ float lo_half(unsigned v) { return __half2float(__ushort_as_half((unsigned short)(v & 0xffffu))); }
__device__ __forceinline__ float hi_half(unsigned v) { return __half2float(__ushort_as_half((unsigned short)(v >> 16))); }

__device__ __forceinline__ void put(float* y, int r, int o, int rows, int out_f, float v, bool atomic) {
    if (r < rows && o < out_f) {
        if (atomic) atomicAdd(y + (long)r * out_f + o, v);
        else y[(long)r * out_f + o] = v;
    }
}

__device__ __forceinline__ unsigned pack(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<unsigned*>(&h);
}

// fp16 hi + lo parts of (a, b): hi + lo carries ~22 bits of each
__device__ __forceinline__ void pack_split(float a, float b, unsigned& hi, unsigned& lo) {
    const __half2 h = __floats2half2_rn(a, b);
    const float2 f = __half22float2(h);
    hi = *reinterpret_cast<const unsigned*>(&h);
    lo = pack(a - f.x, b - f.y);
}

// D += A.B on the tensor cores: A 16 x 16 fp16 (row), B 16 x 8 fp16 (col), D fp32
__device__ __forceinline__ void mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static_assert(SLAB_IN % 16 == 0 && SLAB_IN * SLAB_ROWS == 256 && SLAB_ROWS <= 16, "slab block shape");
constexpr int SLAB_LINE = SLAB_IN * 16 + 16;  // halves a staged line spans at most: padded by 16, so the lanes of a
                                              // weight block's warp (8 lines) write 2, not 8, words a bank
constexpr int SLAB_STAGE = 16 * SLAB_LINE;    // halves of one staged section (16 lines)

// values (a, b) at `at` of the hi section and, with lo, their rounding residues in the lo section
__device__ __forceinline__ void stage_pair(__half* st, int at, float a, float b, bool lo) {
    if (!lo) {
        *reinterpret_cast<unsigned*>(st + at) = pack(a, b);
        return;
    }
    unsigned h, l;
    pack_split(a, b, h, l);
    *reinterpret_cast<unsigned*>(st + at) = h;
    *reinterpret_cast<unsigned*>(st + SLAB_STAGE + at) = l;
}

// value v at `at` of the hi section and, with lo, its rounding residue in the lo section
__device__ __forceinline__ void stage_one(__half* st, int at, float v, bool lo) {
    const __half h = __float2half_rn(v);
    st[at] = h;
    if (lo) st[SLAB_STAGE + at] = __float2half_rn(v - __half2float(h));
}

// Large batches: the inputs [i0, i0 + n_pad) of one layer as the fp16 operands of the GEMMs the
// runtime issues to cuBLAS next (y [rows][out] (+)= Bm . W^T over pairs of sections, fp32 accumulate):
//   W  [out_f][SW][n_pad][slots]: each edge's slots gain*c_s + bias (s < C), base weight (s = C), 0;
//   Bm [rows][SB][n_pad][slots]:  each row's bases of each input (4 non-zero), SiLU (s = C), 0.
// Sections are hi (, lo): W = [hi | lo] from 2 products, Bm = [hi | lo] at 3 (hi.hi + lo.hi + hi.lo),
// single sections otherwise. Inputs past in_f are zero. Blocks [0, wblocks) decode the weights of the
// 16 outputs of one tile x SLAB_IN inputs (`weights(st, tile, ii0, n_in, line)` stages them: the
// record format's part); the others build bases: SLAB_ROWS rows x SLAB_IN inputs, a thread per (row,
// input) zeroing its slots in shared memory and placing its 4 bases and SiLU there (x read
// coalesced). Both stage the fp16 values of every section in shared memory, then a warp a line
// writes the line's run of SLAB_IN x slots values with 16-byte stores (n_pad is a multiple of 8,
// slots even: every run is whole 16-byte words).
template <int P, class Weights>
__device__ __forceinline__ void slab_expand(const float* __restrict__ x, int rows, int in_f, int out_f, int i0, int n_pad,
                                            int slots, const float* __restrict__ t0, const float* __restrict__ hh,
                                            int nk, int n_coef, __half* __restrict__ W, __half* __restrict__ Bm,
                                            int wblocks, Weights weights) {
    __shared__ __align__(16) __half st[2 * SLAB_STAGE];  // the hi section, then the lo section
    constexpr int SW = P == 1 ? 1 : 2, SB = P == 3 ? 2 : 1;  // sections of W and Bm (hi, lo)
    const long sec = (long)n_pad * slots;
    const int ib = (n_pad + SLAB_IN - 1) / SLAB_IN, line = SLAB_IN * slots + 16;  // halves a staged line spans
    const bool is_w = (int)blockIdx.x < wblocks;
    const int b = is_w ? blockIdx.x : blockIdx.x - wblocks, ii0 = (b % ib) * SLAB_IN;
    const int n_in = min(SLAB_IN, n_pad - ii0), words = n_in * slots / 8;  // 16-byte words a line writes
    int lines, sections;
    __half* dst;
    if (is_w) {
        const int tile = b / ib;
        lines = min(TILE_O, out_f - tile * TILE_O), sections = SW;
        dst = W + (long)tile * TILE_O * SW * sec + (long)ii0 * slots;
        weights(st, tile, ii0, n_in, line);
    } else {
        const int r0 = (b / ib) * SLAB_ROWS, il = threadIdx.x % SLAB_IN, rl = threadIdx.x / SLAB_IN;
        const int i = i0 + ii0 + il, at = rl * line + il * slots;
        lines = min(SLAB_ROWS, rows - r0), sections = SB;
        dst = Bm + (long)r0 * SB * sec + (long)ii0 * slots;
#pragma unroll
        for (int s = 0; s < 16; s += 2)
            if (s < slots) stage_pair(st, at + s, 0.f, 0.f, SB == 2);
        if (rl < lines && il < n_in && i < in_f) {
            const Basis bs = basis_of(x[(long)(r0 + rl) * in_f + i], t0[i], hh[i], nk, n_coef);
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (bs.first + j >= 0 && bs.first + j < n_coef) stage_one(st, at + bs.first + j, bs.w[j], SB == 2);
            stage_one(st, at + n_coef, bs.silu, SB == 2);
        }
    }
    __syncthreads();
    const long g = sections * sec / 8;  // a line's 16-byte words in global memory: section 0 hi, 1 lo
    for (int sl = threadIdx.x >> 5; sl < sections * lines; sl += blockDim.x >> 5) {  // a warp a line
        const int sn = sl >= lines, l = sl - sn * lines;
        const uint4* from = reinterpret_cast<const uint4*>(st + sn * SLAB_STAGE + l * line);
        uint4* to = reinterpret_cast<uint4*>(dst + sn * sec) + l * g;
        for (int w = threadIdx.x & 31; w < words; w += 32) to[w] = from[w];
    }
}
