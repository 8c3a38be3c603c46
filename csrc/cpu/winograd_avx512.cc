// The AVX-512F Winograd and depthwise kernels (cpu/winograd.h, cpu/depthwise.h): one __m512 per 16-channel vector; the element-wise products as
// GEMMs with a 12-row x 32-column register tile modelled on matmul_avx512.cc's dense-panel kernel (24 zmm
// accumulators, two panels of 16 output channels, one broadcast per tile row and k).
#include <immintrin.h>

#include "cpu/winograd.h"
#include "cpu/depthwise.h"

namespace onnxcomp {
namespace {

template <int MR, int NP>
inline void GemmTile(const float* x, int64_t k, const float* const* panel, float* y, int64_t ldy) {
  __m512 acc[MR][NP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    __m512 wv[NP];
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) wv[j] = _mm512_loadu_ps(panel[j] + kk * 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * k + kk]);
#pragma GCC unroll 2
      for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) _mm512_storeu_ps(y + r * ldy + 16 * j, acc[r][j]);
  }
}

template <int NP>
void GemmRows(const float* x, int64_t rows, int64_t k, const float* const* panel, float* y, int64_t ldy) {
  int64_t r = 0;
  for (; r + 12 <= rows; r += 12) GemmTile<12, NP>(x + r * k, k, panel, y + r * ldy, ldy);
  x += r * k;
  y += r * ldy;
  switch (rows - r) {
    case 11: return GemmTile<11, NP>(x, k, panel, y, ldy);
    case 10: return GemmTile<10, NP>(x, k, panel, y, ldy);
    case 9: return GemmTile<9, NP>(x, k, panel, y, ldy);
    case 8: return GemmTile<8, NP>(x, k, panel, y, ldy);
    case 7: return GemmTile<7, NP>(x, k, panel, y, ldy);
    case 6: return GemmTile<6, NP>(x, k, panel, y, ldy);
    case 5: return GemmTile<5, NP>(x, k, panel, y, ldy);
    case 4: return GemmTile<4, NP>(x, k, panel, y, ldy);
    case 3: return GemmTile<3, NP>(x, k, panel, y, ldy);
    case 2: return GemmTile<2, NP>(x, k, panel, y, ldy);
    case 1: return GemmTile<1, NP>(x, k, panel, y, ldy);
    default: return;
  }
}

struct Ops {
  static constexpr int64_t kLanes = 16;  // channels per block
  static constexpr bool kBlockedInputFilter = false;  // the filter in OIHWBo (cpu/winograd.h)
  using V = __m512;
  static V Zero() { return _mm512_setzero_ps(); }
  static V Set1(float value) { return _mm512_set1_ps(value); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V Max(V a, V b) { return _mm512_max_ps(a, b); }
  static V Min(V a, V b) { return _mm512_min_ps(a, b); }
  static V NegativeTimes(V v, V alpha) {
    const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NGE_UQ);  // not (v >= 0)
    return _mm512_mask_mul_ps(v, negative, v, alpha);
  }
  static void Gemm(const float* v, int64_t rows, int64_t k, const float* u, int64_t ob_count, float* out,
                   int64_t ldo) {
    for (int64_t ob = 0; ob < ob_count; ob += 2) {
      const float* pair[2] = {u + ob * k * 16, u + (ob + 1) * k * 16};
      if (ob + 1 < ob_count) {
        GemmRows<2>(v, rows, k, pair, out + ob * 16, ldo);
      } else {
        GemmRows<1>(v, rows, k, pair, out + ob * 16, ldo);
      }
    }
  }
};

#include "cpu/winograd_impl.h"
#include "cpu/depthwise_impl.h"

}  // namespace

void WinogradBlockAvx512(const WinogradProblem& p, int64_t block, float* scratch) { RunBlock(p, block, scratch); }

void WinogradWeightsAvx512(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u) {
  RunWeights(m, filter, c, o, ob_begin, ob_end, u);
}

void DepthwiseAvx512(const DepthwiseProblem& p, int64_t task) { RunDepthwise(p, task); }
void NchwInputAvx512(const DepthwiseProblem& p, int64_t task) { RunNchwInput(p, task); }

}  // namespace onnxcomp
