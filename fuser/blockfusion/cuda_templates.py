"""CUDA source of the block-fusion kernels (fuser.blockfusion.cuda fills in the parameters).

``COMMON`` holds the device functions and the three block bodies, templated on a
parameter struct P (the numbers of a BlockSchedule); an emitted kernel is COMMON
plus one ``struct`` of constants and a thin ``extern "C" __global__`` wrapper.
Tensors are NHWC fp16 in global memory; shared-memory tiles are [pixel][channel]
fp16 rows of P::*_LD halves; accumulation is fp32.
"""

COMMON = r"""
#ifndef FUSER_BLOCKFUSION_COMMON
#define FUSER_BLOCKFUSION_COMMON
#include <cuda_fp16.h>
#include <stdint.h>

namespace fbf {

enum Act { ACT_NONE = 0, ACT_RELU = 1, ACT_RELU6 = 2, ACT_SILU = 3, ACT_HARDSWISH = 4 };

template <int ACT>
__device__ __forceinline__ float activate(float v) {
  if constexpr (ACT == ACT_RELU) return fmaxf(v, 0.f);
  else if constexpr (ACT == ACT_RELU6) return fminf(fmaxf(v, 0.f), 6.f);
  else if constexpr (ACT == ACT_SILU) return v / (1.f + __expf(-v));  // e^-v = inf gives -0 for v << 0
  else if constexpr (ACT == ACT_HARDSWISH) return v * fminf(fmaxf(v + 3.f, 0.f), 6.f) * (1.f / 6.f);
  else return v;
}

__device__ __forceinline__ uint32_t lds32(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t ldg32(const __half* p) {
  return __ldg(reinterpret_cast<const unsigned int*>(p));  // weights: read-only path, L1/L2 resident
}

// D += A·B on tensor cores, one 16x8x16 step (fp16 inputs, fp32 accumulators).
// Lane l (group g = l/4, quad q = l%4) holds A rows g, g+8 at columns 2q, 2q+1 (a0, a1) and
// 2q+8, 2q+9 (a2, a3); B column g at rows 2q, 2q+1 (b0) and 2q+8, 2q+9 (b1); D rows g (d0, d1)
// and g+8 (d2, d3) at columns 2q, 2q+1 (PTX ISA, "Matrix fragments for mma.m16n8k16").
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Copy image rows [y0, y0+h) x cols [x0, x0+w) (NHWC, C channels, C % 8 == 0) into shared
// memory as [h*w][ld]; pixels outside the image and channels in [C, c_pad) become zeros
// (the convs' zero padding; padded channels must be 0, not garbage: 0 * NaN is NaN).
__device__ __forceinline__ void load_region(const __half* __restrict__ img, int H, int W, int C,
                                            int y0, int x0, int h, int w, __half* dst, int ld, int c_pad) {
  const int vecs = c_pad / 8;  // 16-byte vectors per pixel
  for (int i = threadIdx.x; i < h * w * vecs; i += blockDim.x) {
    const int pix = i / vecs, c = (i % vecs) * 8;
    const int gy = y0 + pix / w, gx = x0 + pix % w;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (gy >= 0 && gy < H && gx >= 0 && gx < W && c < C)
      v = *reinterpret_cast<const uint4*>(img + ((size_t)gy * W + gx) * C + c);
    *reinterpret_cast<uint4*>(dst + pix * ld + c) = v;
  }
}

// One warp job of a convolution as an implicit GEMM on tensor cores:
//   acc[j] += sum over taps (ky, kx) and channels c of A(m, tap, c) * B(tap, c, n)
// for output pixels m0..m0+15 (m < m_count; pixel m = (m / out_w, m % out_w)) and output
// channels n0 + 8j .. n0 + 8j + 7, with
//   A(m, tap, c) = a[(origin + (py*S + ky)*a_w + px*S + kx)*lda + c]   (shared memory)
//   B(tap, c, n) = w[n*ldw + tap*cin + c]                               (packed weights)
// Rows m >= m_count read pixel 0 instead; their results are never stored.
template <int KS, int S, int NFW>
__device__ __forceinline__ void conv_mma_job(float (&acc)[NFW][4], const __half* a, int lda, int a_w,
                                             int origin, int out_w, int m_count, int m0,
                                             const __half* __restrict__ w, int ldw, int cin, int n0) {
  const int lane = threadIdx.x & 31, group = lane >> 2, quad = lane & 3;
  int pix[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int m = m0 + group + 8 * r;
    m = m < m_count ? m : 0;
    pix[r] = origin + (m / out_w) * S * a_w + (m % out_w) * S;
  }
  for (int tap = 0; tap < KS * KS; ++tap) {  // not unrolled: 49 copies of the body for k = 7
    const int tap_offset = (tap / KS) * a_w + tap % KS;
    const __half* row0 = a + (pix[0] + tap_offset) * lda + 2 * quad;
    const __half* row1 = a + (pix[1] + tap_offset) * lda + 2 * quad;
    const __half* w_tap = w + (size_t)(n0 + group) * ldw + tap * cin + 2 * quad;
#pragma unroll 2  // enough loads in flight; full unrolling of 512 channels spills at 128 registers
    for (int c = 0; c < cin; c += 16) {
      const uint32_t af[4] = {lds32(row0 + c), lds32(row1 + c), lds32(row0 + c + 8), lds32(row1 + c + 8)};
#pragma unroll
      for (int j = 0; j < NFW; ++j) {
        const __half* w_row = w_tap + (size_t)8 * j * ldw + c;
        const uint32_t bf[2] = {ldg32(w_row), ldg32(w_row + 8)};
        mma_16x8x16(acc[j], af, bf);
      }
    }
  }
}

// One warp job of a grouped conv on tensor cores: output pixels m0..m0+15 x the 8 output channels
// n0..n0+7, which lie in one group reading input channels c0..c0+GW_IN-1. The reduction index
// k = tap*GW_IN + j (tap = ky*K + kx, j < GW_IN, GW_IN even so a k pair never straddles taps) runs to
// K*K*GW_IN, padded to KPAD (a multiple of 16) with zero weights; padded columns read a real element.
//   A(m, k) = a[(pixel(m) + ky*a_w + kx)*lda + c0 + j],  B(k, n) = w[n*KPAD + k]
template <int K, int S, int GW_IN, int KPAD>
__device__ __forceinline__ void grouped_conv_mma_job(float (&acc)[1][4], const __half* a, int lda, int a_w,
                                                     int out_w, int m_count, int m0,
                                                     const __half* __restrict__ w, int n0, int c0) {
  constexpr int K_REAL = K * K * GW_IN;
  const int lane = threadIdx.x & 31, group = lane >> 2, quad = lane & 3;
  int pix[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int m = m0 + group + 8 * r;
    m = m < m_count ? m : 0;  // rows past the tile read pixel 0; their results are never stored
    pix[r] = (m / out_w) * S * a_w + (m % out_w) * S;
  }
  const __half* w_row = w + (size_t)(n0 + group) * KPAD + 2 * quad;
#pragma unroll
  for (int kb = 0; kb < KPAD; kb += 16) {
    uint32_t af[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // columns kb + 2q, kb + 2q + 1 (a0, a1) and 8 further (a2, a3)
      int k = kb + 8 * h + 2 * quad;
      k = k < K_REAL ? k : K_REAL - 2;
      const int tap = k / GW_IN;
      const int offset = ((tap / K) * a_w + tap % K) * lda + c0 + k % GW_IN;
      af[2 * h] = lds32(a + pix[0] * lda + offset);
      af[2 * h + 1] = lds32(a + pix[1] * lda + offset);
    }
    const uint32_t bf[2] = {ldg32(w_row + kb), ldg32(w_row + kb + 8)};
    mma_16x8x16(acc[0], af, bf);
  }
}

// Warp job t of a GEMM with n_groups column groups of 8*NFW: its first row and column.
template <int NFW>
__device__ __forceinline__ void job_origin(int t, int n_groups, int& m0, int& n0) {
  m0 = 16 * (t / n_groups);
  n0 = 8 * NFW * (t % n_groups);
}

// Write a job's accumulators to a shared-memory map [m][ld] as act(acc + bias[n]) in fp16.
// Map pixel m is image pixel (ry0 + m / rw, rx0 + m % rw); outside the H x W image, and for
// channels n >= n_valid, it is stored as 0: the zero padding a later k x k conv reads.
template <int NFW, int ACT>
__device__ __forceinline__ void store_map(const float (&acc)[NFW][4], int m0, int n0, int m_count,
                                          __half* out, int ld, const float* __restrict__ bias, int n_valid,
                                          int rw, int ry0, int rx0, int H, int W) {
  const int lane = threadIdx.x & 31, group = lane >> 2, quad = lane & 3;
#pragma unroll
  for (int j = 0; j < NFW; ++j) {
#pragma unroll
    for (int half_row = 0; half_row < 2; ++half_row) {
      const int m = m0 + group + 8 * half_row, n = n0 + 8 * j + 2 * quad;
      if (m >= m_count) continue;
      const int gy = ry0 + m / rw, gx = rx0 + m % rw;
      const bool inside = gy >= 0 && gy < H && gx >= 0 && gx < W;
      const float v0 = inside && n < n_valid ? activate<ACT>(acc[j][2 * half_row] + bias[n]) : 0.f;
      const float v1 = inside && n + 1 < n_valid ? activate<ACT>(acc[j][2 * half_row + 1] + bias[n + 1]) : 0.f;
      *reinterpret_cast<__half2*>(out + m * ld + n) = __floats2half2_rn(v0, v1);
    }
  }
}

// Write a job's accumulators to the block output y (NHWC, C channels):
//   y = act(acc + bias[n] + residual), residual = res[(res_origin + py*RS*res_w + px*RS)*res_ld + n]
// (the block input, still in shared memory) when res != nullptr; pixels past HO x WO are skipped.
template <int NFW, int ACT, int RS>
__device__ __forceinline__ void store_output(const float (&acc)[NFW][4], int m0, int n0, int m_count,
                                             int tile_w, int oy0, int ox0, int HO, int WO, int C,
                                             __half* __restrict__ y, const float* __restrict__ bias,
                                             const __half* res, int res_ld, int res_w, int res_origin) {
  const int lane = threadIdx.x & 31, group = lane >> 2, quad = lane & 3;
#pragma unroll
  for (int j = 0; j < NFW; ++j) {
#pragma unroll
    for (int half_row = 0; half_row < 2; ++half_row) {
      const int m = m0 + group + 8 * half_row, n = n0 + 8 * j + 2 * quad;
      const int py = m / tile_w, px = m % tile_w, oy = oy0 + py, ox = ox0 + px;
      if (m >= m_count || oy >= HO || ox >= WO || n >= C) continue;
      float v0 = acc[j][2 * half_row] + bias[n], v1 = acc[j][2 * half_row + 1] + bias[n + 1];
      if (res != nullptr) {
        const __half* r_pix = res + (res_origin + py * RS * res_w + px * RS) * res_ld;
        const __half2 r = *reinterpret_cast<const __half2*>(r_pix + n);
        v0 += __low2float(r);
        v1 += __high2float(r);
      }
      *reinterpret_cast<__half2*>(y + ((size_t)oy * WO + ox) * C + n) =
          __floats2half2_rn(activate<ACT>(v0), activate<ACT>(v1));
    }
  }
}

// Grouped / depthwise k x k conv on CUDA cores (fp32 FMAs):
//   out[m*out_ld + c] = act(bias[c] + sum_{ky,kx,j} in[(pixel(m) + ky*in_w + kx)*in_ld + (c / GW_OUT)*GW_IN + j]
//                                                    * w[(c*K*K + ky*K + kx)*GW_IN + j])
// pixel(m) = (m / out_w)*S*in_w + (m % out_w)*S, for m < m_count and c < c_count; channels
// c >= c_valid are stored as 0.
template <int K, int S, int GW_IN, int GW_OUT, int ACT>
__device__ __forceinline__ void grouped_conv_fma(const __half* in, int in_ld, int in_w, __half* out, int out_ld,
                                                 int out_w, int m_count, int c_count, int c_valid,
                                                 const __half* __restrict__ w, const float* __restrict__ bias) {
  for (int i = threadIdx.x; i < m_count * c_count; i += blockDim.x) {
    const int m = i / c_count, c = i % c_count;
    float v = 0.f;
    if (c < c_valid) {
      v = bias[c];
      const __half* src = in + ((m / out_w) * S * in_w + (m % out_w) * S) * in_ld + (c / GW_OUT) * GW_IN;
      const __half* wc = w + c * K * K * GW_IN;
#pragma unroll
      for (int ky = 0; ky < K; ++ky)
#pragma unroll
        for (int kx = 0; kx < K; ++kx)
#pragma unroll
          for (int j = 0; j < GW_IN; ++j)
            v = fmaf(__half2float(src[(ky * in_w + kx) * in_ld + j]), __half2float(wc[(ky * K + kx) * GW_IN + j]), v);
      v = activate<ACT>(v);
    }
    out[m * out_ld + c] = __float2half_rn(v);
  }
}

// CUDA block -> (image n, output tile origin oy0, ox0); the schedule's tile_of() in Python.
template <class P>
__device__ __forceinline__ void tile_origin(int& n, int& oy0, int& ox0) {
  const int b = blockIdx.x;
  n = b / (P::TILES_X * P::TILES_Y);
  oy0 = (b / P::TILES_X) % P::TILES_Y * P::TILE_H;
  ox0 = b % P::TILES_X * P::TILE_W;
}

// 1x1 projection of one chunk of HC hidden channels (src [M][HC_LD]) into the output accumulators
template <class P>
__device__ __forceinline__ void project_chunk(float (&acc)[P::OUT_JOBS_PER_WARP][P::NFW_OUT][4],
                                              const __half* src, const __half* w_project, int h0, int warp) {
#pragma unroll
  for (int j = 0; j < P::OUT_JOBS_PER_WARP; ++j) {
    const int t = warp + j * P::WARPS;
    if (t >= P::OUT_JOBS) break;
    int m0, n0;
    job_origin<P::NFW_OUT>(t, P::C_OUT_P / (8 * P::NFW_OUT), m0, n0);
    conv_mma_job<1, 1, P::NFW_OUT>(acc[j], src, P::HC_LD, P::TILE_W, 0, P::TILE_W, P::M, m0,
                                    w_project + h0, P::HID_P, P::HC, n0);
  }
}

// the projected tile + bias (+ the block input x_tile as residual), activated, to y
template <class P>
__device__ __forceinline__ void store_projection(float (&acc)[P::OUT_JOBS_PER_WARP][P::NFW_OUT][4], int warp,
                                                 int n, int oy0, int ox0, __half* __restrict__ y,
                                                 const float* __restrict__ b_project, const __half* x_tile) {
#pragma unroll
  for (int j = 0; j < P::OUT_JOBS_PER_WARP; ++j) {
    const int t = warp + j * P::WARPS;
    if (t >= P::OUT_JOBS) break;
    int m0, n0;
    job_origin<P::NFW_OUT>(t, P::C_OUT_P / (8 * P::NFW_OUT), m0, n0);
    store_output<P::NFW_OUT, P::ACT_FINAL, 1>(acc[j], m0, n0, P::M, P::TILE_W, oy0, ox0, P::HO, P::WO, P::C_OUT,
                                              y + (size_t)n * P::HO * P::WO * P::C_OUT, b_project,
                                              P::RESIDUAL ? x_tile : nullptr, P::X_LD, P::X_W, P::RES_ORIGIN);
  }
}

// ---- convfirst: k x k grouped conv -> 1x1 expand + act -> 1x1 project (+ x) ------------------
template <class P>
__device__ __forceinline__ void convfirst_block(
    const __half* __restrict__ x, __half* __restrict__ y,
    const __half* __restrict__ w_spatial, const float* __restrict__ b_spatial,
    const __half* __restrict__ w_expand, const float* __restrict__ b_expand,
    const __half* __restrict__ w_project, const float* __restrict__ b_project) {
  extern __shared__ __align__(16) unsigned char smem[];
  __half* x_tile = reinterpret_cast<__half*>(smem);           // [X_H*X_W][X_LD]  input + halo
  __half* spatial = x_tile + P::X_H * P::X_W * P::X_LD;       // [M][X_LD]        grouped conv output
  __half* hidden = spatial + P::M * P::X_LD;                  // [M][HC_LD]       one expand chunk
  const int warp = threadIdx.x / 32;
  int n, oy0, ox0;
  tile_origin<P>(n, oy0, ox0);
  const int y0 = oy0 + P::X_OFF_Y, x0 = ox0 + P::X_OFF_X;
  load_region(x + (size_t)n * P::H * P::W * P::C_IN, P::H, P::W, P::C_IN, y0, x0, P::X_H, P::X_W,
              x_tile, P::X_LD, P::C_IN_P);
  __syncthreads();
  if constexpr (P::SPATIAL_MMA) {
    for (int t = warp; t < P::SPATIAL_JOBS; t += P::WARPS) {
      float a[1][4] = {};
      int m0, n0;
      job_origin<1>(t, P::C_IN_P / 8, m0, n0);
      grouped_conv_mma_job<P::K, 1, P::GW, P::SPATIAL_KPAD>(a, x_tile, P::X_LD, P::X_W, P::TILE_W, P::M, m0,
                                                            w_spatial, n0, n0 / P::GW * P::GW);
      // no masking (bounds 1 << 30): pixels past the image are computed and never stored
      store_map<1, P::ACT_SPATIAL>(a, m0, n0, P::M, spatial, P::X_LD, b_spatial, P::C_IN, P::TILE_W, 0, 0,
                                   1 << 30, 1 << 30);
    }
  } else {
    grouped_conv_fma<P::K, 1, P::GW, P::GW, P::ACT_SPATIAL>(x_tile, P::X_LD, P::X_W, spatial, P::X_LD,
                                                            P::TILE_W, P::M, P::C_IN_P, P::C_IN, w_spatial,
                                                            b_spatial);
  }
  __syncthreads();
  float acc[P::OUT_JOBS_PER_WARP][P::NFW_OUT][4] = {};  // the output tile, accumulated over chunks
  for (int h0 = 0; h0 < P::HID_P; h0 += P::HC) {
    for (int t = warp; t < P::EXP_JOBS; t += P::WARPS) {
      float e[P::NFW_EXP][4] = {};
      int m0, n0;
      job_origin<P::NFW_EXP>(t, P::HC / (8 * P::NFW_EXP), m0, n0);
      conv_mma_job<1, 1, P::NFW_EXP>(e, spatial, P::X_LD, P::TILE_W, 0, P::TILE_W, P::M, m0,
                                      w_expand + (size_t)h0 * P::C_IN_P, P::C_IN_P, P::C_IN_P, n0);
      store_map<P::NFW_EXP, P::ACT_EXPAND>(e, m0, n0, P::M, hidden, P::HC_LD, b_expand + h0, P::HID - h0,
                                           P::TILE_W, oy0, ox0, P::HO, P::WO);
    }
    __syncthreads();
    project_chunk<P>(acc, hidden, w_project, h0, warp);
    __syncthreads();  // the next chunk overwrites hidden
  }
  store_projection<P>(acc, warp, n, oy0, ox0, y, b_project, x_tile);
}

// ---- mbconv: [1x1 expand + act] -> k x k depthwise (stride S) + act -> 1x1 project (+ x) ----------
template <class P>
__device__ __forceinline__ void mbconv_block(
    const __half* __restrict__ x, __half* __restrict__ y,
    const __half* __restrict__ w_expand, const float* __restrict__ b_expand,
    const __half* __restrict__ w_dw, const float* __restrict__ b_dw,
    const __half* __restrict__ w_project, const float* __restrict__ b_project) {
  extern __shared__ __align__(16) unsigned char smem[];
  __half* x_tile = reinterpret_cast<__half*>(smem);               // [X_H*X_W][X_LD]   input + halo
  __half* hidden = x_tile + P::X_H * P::X_W * P::X_LD;            // [X_H*X_W][HC_LD]  expand chunk
  __half* dw_out = hidden + (P::HAS_EXPAND ? P::X_H * P::X_W * P::HC_LD : 0);  // [M][HC_LD]
  const int warp = threadIdx.x / 32;
  int n, oy0, ox0;
  tile_origin<P>(n, oy0, ox0);
  const int y0 = oy0 * P::S + P::X_OFF_Y, x0 = ox0 * P::S + P::X_OFF_X;
  load_region(x + (size_t)n * P::H * P::W * P::C_IN, P::H, P::W, P::C_IN, y0, x0, P::X_H, P::X_W,
              x_tile, P::X_LD, P::C_IN_P);
  __syncthreads();
  float acc[P::OUT_JOBS_PER_WARP][P::NFW_OUT][4] = {};
  for (int h0 = 0; h0 < P::HID_P; h0 += P::HC) {
    if constexpr (P::HAS_EXPAND) {
      // expand the whole region (halo included); zero it outside the image for the depthwise conv
      for (int t = warp; t < P::EXP_JOBS; t += P::WARPS) {
        float e[P::NFW_EXP][4] = {};
        int m0, n0;
        job_origin<P::NFW_EXP>(t, P::HC / (8 * P::NFW_EXP), m0, n0);
        conv_mma_job<1, 1, P::NFW_EXP>(e, x_tile, P::X_LD, P::X_W, 0, P::X_W, P::X_H * P::X_W, m0,
                                        w_expand + (size_t)h0 * P::C_IN_P, P::C_IN_P, P::C_IN_P, n0);
        store_map<P::NFW_EXP, P::ACT_EXPAND>(e, m0, n0, P::X_H * P::X_W, hidden, P::HC_LD, b_expand + h0,
                                             P::HID - h0, P::X_W, y0, x0, P::H, P::W);
      }
      __syncthreads();
    }
    const __half* dw_in = P::HAS_EXPAND ? hidden : x_tile + h0;
    grouped_conv_fma<P::K, P::S, 1, 1, P::ACT_DW>(dw_in, P::HAS_EXPAND ? P::HC_LD : P::X_LD, P::X_W, dw_out,
                                                  P::HC_LD, P::TILE_W, P::M, P::HC, P::HID - h0,
                                                  w_dw + h0 * P::K * P::K, b_dw + h0);
    __syncthreads();
    project_chunk<P>(acc, dw_out, w_project, h0, warp);
    __syncthreads();  // the next chunk overwrites hidden and dw_out
  }
  store_projection<P>(acc, warp, n, oy0, ox0, y, b_project, x_tile);
}

// ---- resnet_basic: k x k conv (stride S) + act -> k x k conv, + x or + 1x1 projection(x), act ------
template <class P>
__device__ __forceinline__ void resnet_basic_block(
    const __half* __restrict__ x, __half* __restrict__ y,
    const __half* __restrict__ w_conv1, const float* __restrict__ b_conv1,
    const __half* __restrict__ w_conv2, const float* __restrict__ b_conv2,
    const __half* __restrict__ w_shortcut) {
  extern __shared__ __align__(16) unsigned char smem[];
  __half* x_tile = reinterpret_cast<__half*>(smem);               // [X_H*X_W][X_LD]     input + halo
  __half* mid = x_tile + P::X_H * P::X_W * P::X_LD;               // [MID_H*MID_W][MID_LD] conv1 output + halo
  const int warp = threadIdx.x / 32;
  int n, oy0, ox0;
  tile_origin<P>(n, oy0, ox0);
  const int my0 = oy0 + P::MID_OFF_Y, mx0 = ox0 + P::MID_OFF_X;
  const int y0 = oy0 * P::S + P::X_OFF_Y, x0 = ox0 * P::S + P::X_OFF_X;
  load_region(x + (size_t)n * P::H * P::W * P::C_IN, P::H, P::W, P::C_IN, y0, x0, P::X_H, P::X_W,
              x_tile, P::X_LD, P::C_IN_P);
  __syncthreads();
  for (int t = warp; t < P::CONV1_JOBS; t += P::WARPS) {
    float a[P::NFW1][4] = {};
    int m0, n0;
    job_origin<P::NFW1>(t, P::C_MID_P / (8 * P::NFW1), m0, n0);
    conv_mma_job<P::K1, P::S, P::NFW1>(a, x_tile, P::X_LD, P::X_W, 0, P::MID_W, P::MID_H * P::MID_W, m0,
                                        w_conv1, P::K1 * P::K1 * P::C_IN_P, P::C_IN_P, n0);
    // conv1's output outside the image is conv2's zero padding
    store_map<P::NFW1, P::ACT1>(a, m0, n0, P::MID_H * P::MID_W, mid, P::MID_LD, b_conv1, P::C_MID,
                                P::MID_W, my0, mx0, P::HO, P::WO);
  }
  __syncthreads();
  for (int t = warp; t < P::CONV2_JOBS; t += P::WARPS) {
    float a[P::NFW2][4] = {};
    int m0, n0;
    job_origin<P::NFW2>(t, P::C_OUT_P / (8 * P::NFW2), m0, n0);
    conv_mma_job<P::K2, 1, P::NFW2>(a, mid, P::MID_LD, P::MID_W, 0, P::TILE_W, P::M, m0,
                                     w_conv2, P::K2 * P::K2 * P::C_MID_P, P::C_MID_P, n0);
    if constexpr (P::PROJECTION)  // the 1x1 stride-S shortcut, summed into the same accumulators
      conv_mma_job<1, P::S, P::NFW2>(a, x_tile, P::X_LD, P::X_W, P::RES_ORIGIN, P::TILE_W, P::M, m0,
                                      w_shortcut, P::C_IN_P, P::C_IN_P, n0);
    store_output<P::NFW2, P::ACT_FINAL, P::S>(a, m0, n0, P::M, P::TILE_W, oy0, ox0, P::HO, P::WO, P::C_OUT,
                                              y + (size_t)n * P::HO * P::WO * P::C_OUT, b_conv2,
                                              P::PROJECTION ? nullptr : x_tile, P::X_LD, P::X_W, P::RES_ORIGIN);
  }
}

}  // namespace fbf
#endif  // FUSER_BLOCKFUSION_COMMON
"""

# One emitted kernel: its parameters and the __global__ entry point. {params} are
# "  static constexpr int NAME = value;" lines; {args} the typed pointer arguments.
KERNEL = r"""
// ---- {name}: {title}
// schedule: {schedule}
// launch: {name}<<<{grid}, {threads}, {smem_bytes}>>>(x, y, {arg_names}); x, y NHWC fp16
struct {name}_params {{
{params}
}};

extern "C" __global__ void __launch_bounds__({threads}, {min_blocks}) {name}({args}) {{
  fbf::{body}<{name}_params>({call});
}}
"""
