// Winograd minimal filtering F(m x m, 3 x 3), m = 2 or 4 (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016), on onnxruntime's NCHWc layout with blocks of 16 channels: CodebookConv's third path for
// 3x3, stride-1, dilation-1, group-1 layers (the rule: docs/ops.md, "How it runs").
//
// Per block of output tiles (m x m outputs each, alpha = m + 2 inputs per side):
//   1. input transform V = B^T d B of each tile's alpha x alpha patch, per 16-channel block, into V[xi][t][C];
//   2. for each of the alpha^2 elements xi, M_xi = V_xi U_xi ([tiles x C] x [C x O]), each output an in-order
//      chain of fused multiply-adds over c from 0.0;
//   3. output transform Y = A^T M A per tile and 16-channel block, then the bias, then the activation.
// U = G g G^T per (o, c) is computed in every run into scratch (WinogradWeights), from the filter kept in
// onnxruntime's OIHWBo layout. Every step is one fixed sequence of adds, subtracts, multiplies and fused
// multiply-adds, the same in the AVX-512 and the scalar kernels: **bit-identical** results under every
// ONNXCOMP_ISA cap and thread count. Both units include cpu/winograd_impl.h inside an unnamed namespace.
#ifndef ONNXCOMP_CPU_WINOGRAD_H_
#define ONNXCOMP_CPU_WINOGRAD_H_

#include <stdint.h>

namespace onnxcomp {

constexpr int64_t kWinogradBlock = 16;  // channels per block of the layout (onnxruntime's NCHWc16)

enum class WinogradActivation { kNone = 0, kRelu = 1, kLeakyRelu = 2, kClip = 3 };

struct WinogradProblem {
  int m;                      // outputs per tile side: 2 or 4
  const float* x;             // [N][C/16][H][W][16]
  int64_t n, c, h, w, o;      // C and O multiples of 16
  int64_t pad_top, pad_left;  // the other pads follow from out_h, out_w
  int64_t out_h, out_w;
  const float* u;             // [alpha^2][O/16][C][16] (WinogradWeights)
  const float* bias;          // [O] or null
  WinogradActivation activation;
  float activation_alpha, activation_beta;  // LeakyRelu: alpha; Clip: min, max
  float* y;                   // [N][O/16][OH][OW][16]
  int64_t block_tiles;        // tiles per block (one task)

  int64_t alpha() const { return m + 2; }
  int64_t tiles() const { return n * ((out_h + m - 1) / m) * ((out_w + m - 1) / m); }
  int64_t blocks() const { return (tiles() + block_tiles - 1) / block_tiles; }
  // Scratch floats one block needs: V and M, each 64-byte aligned within.
  int64_t scratch_floats() const { return alpha() * alpha() * block_tiles * (c + o) + 16; }
};

// Tile block `block` of p (tiles [block * block_tiles, ...)), with `scratch` (scratch_floats(), 64-byte aligned).
using WinogradBlockKernel = void (*)(const WinogradProblem& p, int64_t block, float* scratch);
// U for output-channel blocks [ob_begin, ob_end) from `filter` ([O/16][C][3][3][16], OIHWBo) into u.
using WinogradWeightsKernel = void (*)(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin,
                                       int64_t ob_end, float* u);

void WinogradBlockScalar(const WinogradProblem& p, int64_t block, float* scratch);
void WinogradWeightsScalar(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u);
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
void WinogradBlockAvx512(const WinogradProblem& p, int64_t block, float* scratch);
void WinogradWeightsAvx512(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u);
#endif

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_WINOGRAD_H_
