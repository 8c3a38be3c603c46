// Winograd minimal filtering F(m x m, 3 x 3), m = 2 or 4 (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016), on onnxruntime's NCHWc layout with blocks of B = 16 channels (AVX-512F CPUs) or 8 (AVX2):
// CodebookConv's third path for 3x3, stride-1, dilation-1, group-1 layers (the rule: docs/ops.md, "How it runs").
//
// Per block of output tiles (m x m outputs each, alpha = m + 2 inputs per side):
//   1. input transform V = B^T d B of each tile's alpha x alpha patch, per B-channel block, into V[xi][t][C];
//   2. for each of the alpha^2 elements xi, M_xi = V_xi U_xi ([tiles x C] x [C x O]), each output an in-order
//      chain of fused multiply-adds over c from 0.0;
//   3. output transform Y = A^T M A per tile and B-channel block, then the bias, then the activation.
// U = G g G^T per (o, c) is computed in every run into scratch (WinogradWeights), from the filter kept in
// onnxruntime's OIHWBo layout. Every step is one fixed sequence of adds, subtracts, multiplies and fused
// multiply-adds, the same in the AVX-512, AVX2 and scalar kernels and for either block (each output channel's
// arithmetic does not depend on B): **bit-identical** results under every ONNXCOMP_ISA cap, block and thread count.
// Every unit includes cpu/winograd_impl.h inside an unnamed namespace.
#ifndef ONNXCOMP_CPU_WINOGRAD_H_
#define ONNXCOMP_CPU_WINOGRAD_H_

#include <stdint.h>

namespace onnxcomp {

constexpr int64_t kWinogradBlock = 16;      // channels per block of the layout (onnxruntime's NCHWc16)
constexpr int64_t kWinogradBlockAvx2 = 8;   // the same where onnxruntime's NCHWc block is 8 (AVX2, no AVX-512F)

enum class WinogradActivation { kNone = 0, kRelu = 1, kLeakyRelu = 2, kClip = 3 };

struct WinogradProblem {
  int m;                      // outputs per tile side: 2 or 4
  const float* x;             // [N][C/B][H][W][B], B the kernel's block (16 or 8)
  int64_t n, c, h, w, o;      // C and O multiples of B
  int64_t pad_top, pad_left;  // the other pads follow from out_h, out_w
  int64_t out_h, out_w;
  const float* u;             // [alpha^2][O/B][C][B] (WinogradWeights)
  const float* bias;          // [O] or null
  WinogradActivation activation;
  float activation_alpha, activation_beta;  // LeakyRelu: alpha; Clip: min, max
  float* y;                   // [N][O/B][OH][OW][B]
  int64_t block_tiles;        // tiles per block (one task)

  int64_t alpha() const { return m + 2; }
  int64_t tiles() const { return n * ((out_h + m - 1) / m) * ((out_w + m - 1) / m); }
  int64_t blocks() const { return (tiles() + block_tiles - 1) / block_tiles; }
  // Scratch floats one block needs: V and M, each 64-byte aligned within.
  int64_t scratch_floats() const { return alpha() * alpha() * block_tiles * (c + o) + 16; }
};

// Tile block `block` of p (tiles [block * block_tiles, ...)), with `scratch` (scratch_floats(), 64-byte aligned).
using WinogradBlockKernel = void (*)(const WinogradProblem& p, int64_t block, float* scratch);
// U for output-channel blocks [ob_begin, ob_end) from `filter` into u. Blocks of 16: `filter` in OIHWBo
// ([O/16][C][3][3][16]); blocks of 8: in onnxruntime's NCHWc filter layout OIHWBiBo ([O/8][C/8][3][3][8][8]), so
// that a layer can run either the Winograd or onnxruntime's direct convolution on the one reordered filter.
using WinogradWeightsKernel = void (*)(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin,
                                       int64_t ob_end, float* u);

// Blocks of 16 channels: the portable and AVX-512F kernels; of 8: the portable and AVX2 + FMA kernels.
void WinogradBlockScalar(const WinogradProblem& p, int64_t block, float* scratch);
void WinogradWeightsScalar(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u);
void WinogradBlockScalar8(const WinogradProblem& p, int64_t block, float* scratch);
void WinogradWeightsScalar8(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                            float* u);
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
void WinogradBlockAvx2(const WinogradProblem& p, int64_t block, float* scratch);
void WinogradWeightsAvx2(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                         float* u);
#endif
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
void WinogradBlockAvx512(const WinogradProblem& p, int64_t block, float* scratch);
void WinogradWeightsAvx512(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end,
                           float* u);
#endif

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_WINOGRAD_H_
