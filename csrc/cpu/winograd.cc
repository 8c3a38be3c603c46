// The portable Winograd and depthwise kernels (cpu/winograd.h, cpu/depthwise.h): 16 scalar lanes per vector (8 for
// the kernels on blocks of 8), each operation rounded as the AVX-512 and AVX2 kernels' (fmaf for their
// fused multiply-adds), so they all give the same bits.
#include "cpu/winograd.h"
#include "cpu/depthwise.h"

#include <math.h>

namespace onnxcomp {
namespace {

template <int kBlock>
struct ScalarOps {
  static constexpr int64_t kLanes = kBlock;  // channels per block
  static constexpr bool kBlockedInputFilter = kBlock == 8;  // as the AVX-512 (16) and AVX2 (8) kernels
  struct V {
    float f[kBlock];
  };
  static V Zero() { return Set1(0.0f); }
  static V Set1(float value) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = value;
    return r;
  }
  static V Load(const float* p) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = p[l];
    return r;
  }
  static void Store(float* p, const V& v) {
    for (int l = 0; l < kBlock; ++l) p[l] = v.f[l];
  }
  static V Add(const V& a, const V& b) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = a.f[l] + b.f[l];
    return r;
  }
  static V Sub(const V& a, const V& b) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = a.f[l] - b.f[l];
    return r;
  }
  static V Mul(const V& a, const V& b) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = a.f[l] * b.f[l];
    return r;
  }
  static V Fma(const V& a, const V& b, const V& c) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = fmaf(a.f[l], b.f[l], c.f[l]);
    return r;
  }
  static V Fnma(const V& a, const V& b, const V& c) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = fmaf(-a.f[l], b.f[l], c.f[l]);
    return r;
  }
  static V Max(const V& a, const V& b) {  // as MAXPS: a > b ? a : b
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = a.f[l] > b.f[l] ? a.f[l] : b.f[l];
    return r;
  }
  static V Min(const V& a, const V& b) {  // as MINPS: a < b ? a : b
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = a.f[l] < b.f[l] ? a.f[l] : b.f[l];
    return r;
  }
  static V NegativeTimes(const V& v, const V& alpha) {
    V r;
    for (int l = 0; l < kBlock; ++l) r.f[l] = v.f[l] >= 0.0f ? v.f[l] : v.f[l] * alpha.f[l];
    return r;
  }
  // out[t][kBlock ob + l] = chain over kk of fmaf(v[t][kk], u[ob][kk][l], .) from 0.0: rows x (kBlock * ob_count).
  static void Gemm(const float* v, int64_t rows, int64_t k, const float* u, int64_t ob_count, float* out,
                   int64_t ldo) {
    for (int64_t ob = 0; ob < ob_count; ++ob) {
      const float* panel = u + ob * k * kBlock;
      for (int64_t t = 0; t < rows; ++t) {
        float acc[kBlock] = {};
        const float* row = v + t * k;
        for (int64_t kk = 0; kk < k; ++kk) {
          for (int l = 0; l < kBlock; ++l) acc[l] = fmaf(row[kk], panel[kk * kBlock + l], acc[l]);
        }
        for (int l = 0; l < kBlock; ++l) out[t * ldo + ob * kBlock + l] = acc[l];
      }
    }
  }
};

}  // namespace

namespace block16 {
namespace {
using Ops = ScalarOps<16>;
#include "cpu/winograd_impl.h"
#include "cpu/depthwise_impl.h"
}  // namespace
}  // namespace block16

namespace block8 {
namespace {
using Ops = ScalarOps<8>;
#include "cpu/winograd_impl.h"
#include "cpu/depthwise_impl.h"
}  // namespace
}  // namespace block8

void WinogradBlockScalar(const WinogradProblem& p, int64_t block, float* scratch) {
  block16::RunBlock(p, block, scratch);
}

void WinogradWeightsScalar(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u) {
  block16::RunWeights(m, filter, c, o, ob_begin, ob_end, u);
}

void WinogradBlockScalar8(const WinogradProblem& p, int64_t block, float* scratch) {
  block8::RunBlock(p, block, scratch);
}

void WinogradWeightsScalar8(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                            float* u) {
  block8::RunWeights(m, filter, c, o, ob_begin, ob_end, u);
}

void DepthwiseScalar(const DepthwiseProblem& p, int64_t task) { block16::RunDepthwise(p, task); }
void NchwInputScalar(const DepthwiseProblem& p, int64_t task) { block16::RunNchwInput(p, task); }
void DepthwiseScalar8(const DepthwiseProblem& p, int64_t task) { block8::RunDepthwise(p, task); }
void NchwInputScalar8(const DepthwiseProblem& p, int64_t task) { block8::RunNchwInput(p, task); }

}  // namespace onnxcomp
