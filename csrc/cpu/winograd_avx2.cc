// The AVX2 + FMA Winograd and depthwise kernels (cpu/winograd.h, cpu/depthwise.h) on onnxruntime's NCHWc layout
// with blocks of 8 channels (its block on CPUs without AVX-512F): one __m256 per 8-channel vector; the element-wise products as GEMMs with a 6-row x
// 16-column register tile (12 ymm accumulators, two panels of 8 output channels, one broadcast per tile row and k),
// as matmul_avx2.cc's dense-panel kernel. Compiled with -mavx2 -mfma -ffp-contract=off; called only when the CPU
// has both.
#include <immintrin.h>

#include "cpu/winograd.h"
#include "cpu/depthwise.h"

namespace onnxcomp {
namespace {

// y[r][8 j + l] = chain over kk of fma(x[r][kk], panel[j][kk][l], .) from 0.0, for r < MR and j < NP. One pointer
// per row (its broadcast indexed by the shared kk), so the loop is its loads, broadcasts and FMAs, unrolled by two.
template <int MR, int NP>
inline void GemmTile(const float* x, int64_t k, const float* const* panel, float* y, int64_t ldy) {
  __m256 acc[MR][NP];
  const float* row[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    row[r] = x + r * k;
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) acc[r][j] = _mm256_setzero_ps();
  }
  const float* p0 = panel[0];
  const float* p1 = panel[NP - 1];
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 w0 = _mm256_loadu_ps(p0 + kk * 8);
    const __m256 w1 = NP > 1 ? _mm256_loadu_ps(p1 + kk * 8) : w0;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_broadcast_ss(row[r] + kk);
      acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
      if (NP > 1) acc[r][NP - 1] = _mm256_fmadd_ps(xv, w1, acc[r][NP - 1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) _mm256_storeu_ps(y + r * ldy + 8 * j, acc[r][j]);
  }
}

template <int NP>
void GemmRows(const float* x, int64_t rows, int64_t k, const float* const* panel, float* y, int64_t ldy) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) GemmTile<6, NP>(x + r * k, k, panel, y + r * ldy, ldy);
  x += r * k;
  y += r * ldy;
  switch (rows - r) {
    case 5: return GemmTile<5, NP>(x, k, panel, y, ldy);
    case 4: return GemmTile<4, NP>(x, k, panel, y, ldy);
    case 3: return GemmTile<3, NP>(x, k, panel, y, ldy);
    case 2: return GemmTile<2, NP>(x, k, panel, y, ldy);
    case 1: return GemmTile<1, NP>(x, k, panel, y, ldy);
    default: return;
  }
}

struct Ops {
  static constexpr int64_t kLanes = 8;  // channels per block
  // The filter in onnxruntime's NCHWc layout (OIHWBiBo, cpu/winograd.h), which its direct convolution runs on too.
  static constexpr bool kBlockedInputFilter = true;
  using V = __m256;
  static V Zero() { return _mm256_setzero_ps(); }
  static V Set1(float value) { return _mm256_set1_ps(value); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V Max(V a, V b) { return _mm256_max_ps(a, b); }  // MAXPS: a > b ? a : b
  static V Min(V a, V b) { return _mm256_min_ps(a, b); }  // MINPS: a < b ? a : b
  static V NegativeTimes(V v, V alpha) {
    const __m256 negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NGE_UQ);  // not (v >= 0)
    return _mm256_blendv_ps(v, _mm256_mul_ps(v, alpha), negative);
  }
  static void Gemm(const float* v, int64_t rows, int64_t k, const float* u, int64_t ob_count, float* out,
                   int64_t ldo) {
    for (int64_t ob = 0; ob < ob_count; ob += 2) {
      const float* pair[2] = {u + ob * k * 8, u + (ob + 1) * k * 8};
      if (ob + 1 < ob_count) {
        GemmRows<2>(v, rows, k, pair, out + ob * 8, ldo);
      } else {
        GemmRows<1>(v, rows, k, pair, out + ob * 8, ldo);
      }
    }
  }
};

#include "cpu/winograd_impl.h"
#include "cpu/depthwise_impl.h"

}  // namespace

void WinogradBlockAvx2(const WinogradProblem& p, int64_t block, float* scratch) { RunBlock(p, block, scratch); }

void WinogradWeightsAvx2(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                         float* u) {
  RunWeights(m, filter, c, o, ob_begin, ob_end, u);
}

void DepthwiseAvx2(const DepthwiseProblem& p, int64_t task) { RunDepthwise(p, task); }
void NchwInputAvx2(const DepthwiseProblem& p, int64_t task) { RunNchwInput(p, task); }

}  // namespace onnxcomp
