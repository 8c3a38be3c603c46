// C entry points for bench/winograd_proto.py: the library's AVX-512 Winograd kernel (csrc/cpu/winograd_avx512.cc,
// compiled with this file) on a pre-blocked input, without the CodebookConv node around it (no reorders, one
// thread). Step 1 of branch speed13 first timed a standalone copy of these steps; it became that kernel.
#include <stdlib.h>

#include "cpu/winograd.h"

extern "C" {

// U [alpha^2][O/16][C][16] from the OIHWBo filter [O/16][C][3][3][16].
void winograd_weights(int m, const float* filter, int64_t c, int64_t o, float* u) {
  onnxcomp::WinogradWeightsAvx512(m, filter, c, o, 0, o / 16, u);
}

// Y (NCHWc16) = conv(X (NCHWc16), W) + bias, ReLU if relu; 0, or 1 when the scratch cannot be allocated.
int winograd_conv(int m, const float* x, int64_t n, int64_t c, int64_t h, int64_t w, const float* u, int64_t o,
                  const float* bias, int64_t pad_top, int64_t pad_left, int64_t pad_bottom, int64_t pad_right,
                  int relu, int64_t block_tiles, float* y) {
  onnxcomp::WinogradProblem p{};
  p.m = m;
  p.x = x;
  p.n = n;
  p.c = c;
  p.h = h;
  p.w = w;
  p.o = o;
  p.pad_top = pad_top;
  p.pad_left = pad_left;
  p.out_h = h + pad_top + pad_bottom - 2;
  p.out_w = w + pad_left + pad_right - 2;
  p.u = u;
  p.bias = bias;
  p.activation = relu ? onnxcomp::WinogradActivation::kRelu : onnxcomp::WinogradActivation::kNone;
  p.y = y;
  p.block_tiles = block_tiles;
  float* scratch = static_cast<float*>(aligned_alloc(64, (p.scratch_floats() * 4 + 63) / 64 * 64));
  if (!scratch) return 1;
  for (int64_t b = 0; b < p.blocks(); ++b) onnxcomp::WinogradBlockAvx512(p, b, scratch);
  free(scratch);
  return 0;
}

}  // extern "C"
