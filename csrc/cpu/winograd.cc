// The portable Winograd and depthwise kernels (cpu/winograd.h, cpu/depthwise.h): 16 scalar lanes per vector,
// each operation rounded as the AVX-512 kernel's (fmaf for its fused multiply-adds), so the two give the same bits.
#include "cpu/winograd.h"
#include "cpu/depthwise.h"

#include <math.h>

namespace onnxcomp {
namespace {

struct Ops {
  struct V {
    float f[16];
  };
  static V Zero() { return Set1(0.0f); }
  static V Set1(float value) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = value;
    return r;
  }
  static V Load(const float* p) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = p[l];
    return r;
  }
  static void Store(float* p, const V& v) {
    for (int l = 0; l < 16; ++l) p[l] = v.f[l];
  }
  static V Add(const V& a, const V& b) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = a.f[l] + b.f[l];
    return r;
  }
  static V Sub(const V& a, const V& b) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = a.f[l] - b.f[l];
    return r;
  }
  static V Mul(const V& a, const V& b) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = a.f[l] * b.f[l];
    return r;
  }
  static V Fma(const V& a, const V& b, const V& c) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = fmaf(a.f[l], b.f[l], c.f[l]);
    return r;
  }
  static V Fnma(const V& a, const V& b, const V& c) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = fmaf(-a.f[l], b.f[l], c.f[l]);
    return r;
  }
  static V Max(const V& a, const V& b) {  // as MAXPS: a > b ? a : b
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = a.f[l] > b.f[l] ? a.f[l] : b.f[l];
    return r;
  }
  static V Min(const V& a, const V& b) {  // as MINPS: a < b ? a : b
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = a.f[l] < b.f[l] ? a.f[l] : b.f[l];
    return r;
  }
  static V NegativeTimes(const V& v, const V& alpha) {
    V r;
    for (int l = 0; l < 16; ++l) r.f[l] = v.f[l] >= 0.0f ? v.f[l] : v.f[l] * alpha.f[l];
    return r;
  }
  // out[t][16 ob + l] = chain over kk of fmaf(v[t][kk], u[ob][kk][l], .) from 0.0: rows x (16 * ob_count).
  static void Gemm(const float* v, int64_t rows, int64_t k, const float* u, int64_t ob_count, float* out,
                   int64_t ldo) {
    for (int64_t ob = 0; ob < ob_count; ++ob) {
      const float* panel = u + ob * k * 16;
      for (int64_t t = 0; t < rows; ++t) {
        float acc[16] = {};
        const float* row = v + t * k;
        for (int64_t kk = 0; kk < k; ++kk) {
          for (int l = 0; l < 16; ++l) acc[l] = fmaf(row[kk], panel[kk * 16 + l], acc[l]);
        }
        for (int l = 0; l < 16; ++l) out[t * ldo + ob * 16 + l] = acc[l];
      }
    }
  }
};

#include "cpu/winograd_impl.h"
#include "cpu/depthwise_impl.h"

}  // namespace

void WinogradBlockScalar(const WinogradProblem& p, int64_t block, float* scratch) { RunBlock(p, block, scratch); }

void WinogradWeightsScalar(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u) {
  RunWeights(m, filter, c, o, ob_begin, ob_end, u);
}

void DepthwiseScalar(const DepthwiseProblem& p, int64_t task) { RunDepthwise(p, task); }
void NchwInputScalar(const DepthwiseProblem& p, int64_t task) { RunNchwInput(p, task); }

}  // namespace onnxcomp
