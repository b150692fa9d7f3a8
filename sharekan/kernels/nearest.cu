// The nearest centroid of each point, fused: distances ||c||^2 - 2 p.c in fp32 and their argmin,
// without writing the distance matrix (sharekan.nearest launches it).
//
// A block takes 128 points and walks every centroid in tiles of 128; each of its 256 threads keeps
// an 8 x 8 register tile of distances (8 points x 8 centroids), built as ||c||^2 + sum_d p_d (-2 c_d)
// by KM_D fused multiply-adds, then folds it into a running best per point. Centroid tiles are
// double-buffered in shared memory (the next tile's loads in flight while this one is used). Ties
// go to the smaller index (argmin's rule), so the labels do not depend on the schedule.
#ifndef KM_D
#error "compile with -DKM_D=<dimension of the points>"
#endif

#define KM_TP 128      // points a block
#define KM_TC 128      // centroids a tile
#define KM_THREADS 256 // 16 x 16 threads, 8 x 8 a thread

// point / centroid j (0..7) of the thread with coordinate q (0..15) within a 128-wide tile
__device__ __forceinline__ int km_slot(int q, int j) { return (j < 4 ? 0 : 60) + q * 4 + j; }

extern "C" __global__ void __launch_bounds__(KM_THREADS, 2)
nearest_fused(const float* __restrict__ pts, long n,           // [n, KM_D]
              const float* __restrict__ cent, int k_pad,       // [KM_D + 1, k_pad]: -2c by dimension, then ||c||^2
              int* __restrict__ labels, float* __restrict__ best_out)  // [n]; best_out may be null
{
    __shared__ __align__(16) float ps[KM_D][KM_TP];
    __shared__ __align__(16) float cs[2][KM_D + 1][KM_TC];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const long p0 = (long)blockIdx.x * KM_TP;

    for (int e = tid; e < KM_TP * KM_D; e += KM_THREADS) {  // coalesced rows, stored transposed
        const int i = e / KM_D, d = e - i * KM_D;
        ps[d][i] = p0 + i < n ? pts[p0 * KM_D + e] : 0.f;
    }

    constexpr int CV = (KM_D + 1) * (KM_TC / 4);  // float4 a centroid tile
    constexpr int CL = (CV + KM_THREADS - 1) / KM_THREADS;
    float4 pre[CL];
    auto fetch = [&](int c0) {
#pragma unroll
        for (int m = 0; m < CL; ++m) {
            const int q = tid + m * KM_THREADS;
            if (q < CV) pre[m] = *reinterpret_cast<const float4*>(cent + (long)(q >> 5) * k_pad + c0 + (q & 31) * 4);
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int m = 0; m < CL; ++m) {
            const int q = tid + m * KM_THREADS;
            if (q < CV) *reinterpret_cast<float4*>(&cs[buf][q >> 5][(q & 31) * 4]) = pre[m];
        }
    };

    float best[8];
    int bidx[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) { best[i] = __int_as_float(0x7f800000); bidx[i] = 0; }

    fetch(0);
    stash(0);
    __syncthreads();
    const int tiles = k_pad / KM_TC;
    for (int t = 0; t < tiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < tiles) fetch((t + 1) * KM_TC);

        float acc[8][8], b[8];
        {
            const float4 n0 = *reinterpret_cast<const float4*>(&cs[buf][KM_D][tx * 4]);
            const float4 n1 = *reinterpret_cast<const float4*>(&cs[buf][KM_D][64 + tx * 4]);
            b[0] = n0.x; b[1] = n0.y; b[2] = n0.z; b[3] = n0.w; b[4] = n1.x; b[5] = n1.y; b[6] = n1.z; b[7] = n1.w;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = b[j];
#pragma unroll
        for (int d = 0; d < KM_D; ++d) {
            const float4 a0 = *reinterpret_cast<const float4*>(&ps[d][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4*>(&ps[d][64 + ty * 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&cs[buf][d][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4*>(&cs[buf][d][64 + tx * 4]);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w; b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }

        const int c0 = t * KM_TC;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float m = acc[i][0];
#pragma unroll
            for (int j = 1; j < 8; ++j) m = fminf(m, acc[i][j]);
            if (m < best[i]) {  // rare after the first tiles: find the first centroid at the minimum
                int jj = 7;
#pragma unroll
                for (int j = 6; j >= 0; --j) if (acc[i][j] == m) jj = j;
                best[i] = m;
                bidx[i] = c0 + km_slot(tx, jj);
            }
        }
        if (t + 1 < tiles) stash(buf ^ 1);  // buf ^ 1 was last read before the previous barrier
        __syncthreads();
    }

    // the 16 threads of a row of points (16 neighbouring lanes) agree: least distance, then least index
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best[i], off);
            const int oi = __shfl_xor_sync(0xffffffffu, bidx[i], off);
            if (ov < best[i] || (ov == best[i] && oi < bidx[i])) { best[i] = ov; bidx[i] = oi; }
        }
        const long p = p0 + km_slot(ty, i);
        if (tx == 0 && p < n) {
            labels[p] = bidx[i];
            if (best_out) best_out[p] = best[i];
        }
    }
}
