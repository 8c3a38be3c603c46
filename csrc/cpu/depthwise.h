// Direct convolutions writing onnxruntime's NCHWc layout with blocks of 16 channels (the rule: docs/ops.md, "How it
// runs"): CodebookConv's path 1b for depthwise layers (group = C = O, one filter per channel, blocked X), and path 1c
// for layers with group 1 and fewer than 16 input channels read as NCHW (a network's first convolution on an image).
//
// Each output vector (16 channels of one position) is one fixed sequence: per input channel a chain of fused
// multiply-adds from 0.0 over its in-bounds taps in (kernel row, kernel column) order (taps in the padding are
// skipped), the channels' chains added in order (chain_0, then chain_c + total; a depthwise output has one), then
// + bias, then the activation (path 1c: each tap's input value broadcast to the 16 lanes). The same sequence in the AVX-512 and the scalar kernels (both units built with
// -ffp-contract=off): **bit-identical** results under every ONNXCOMP_ISA cap and thread count. Interior positions
// run 8 at a time with the tap's filter vector loaded once for all 8. Both units include cpu/depthwise_impl.h
// inside an unnamed namespace (the same units as cpu/winograd_impl.h, sharing their vector operations).
#ifndef ONNXCOMP_CPU_DEPTHWISE_H_
#define ONNXCOMP_CPU_DEPTHWISE_H_

#include <stdint.h>

namespace onnxcomp {

constexpr int64_t kDepthwiseBlock = 16;     // channels per block of the layout (onnxruntime's NCHWc16)
constexpr int64_t kDepthwiseBlockAvx2 = 8;  // the same where onnxruntime's NCHWc block is 8 (AVX2, no AVX-512F)

// The activations the depthwise kernels apply after the bias (docs/ops.md; the others stay with onnxruntime).
enum class DepthwiseActivation { kNone = 0, kRelu, kLeakyRelu, kClip, kHardSigmoid, kHardSwish };

struct DepthwiseProblem {
  // B below: the kernel's block, 16 or 8 (the *8 and *Avx2 kernels).
  const float* x;                // depthwise: [N][blocks][H][W][B]; NCHW input (channels > 0): [N][channels][H][W]
  int64_t n, blocks, h, w;       // blocks: the padded channel count / B
  int64_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int64_t out_h, out_w;
  int64_t channels;              // 0: depthwise; else the NCHW input's channels (< B), path 1c
  const float* filter;           // [blocks][max(channels, 1)][kernel_h][kernel_w][B] (onnxruntime's OIHWBo)
  const float* bias;             // [blocks * B] or null
  DepthwiseActivation activation;
  float alpha, beta;             // LeakyRelu: alpha; Clip: min, max; HardSigmoid: alpha, beta
  float* y;                      // [N][blocks][out_h][out_w][B]
  int64_t rows_per_task;         // output rows per task (of one image and channel block)

  int64_t row_chunks() const { return (out_h + rows_per_task - 1) / rows_per_task; }
  // The interior output columns [interior_begin(), interior_end()): every tap inside the row, i.e.
  // ox * stride_w - pad_left >= 0 and ox * stride_w - pad_left + (kernel_w - 1) * dilation_w < w.
  int64_t interior_begin() const {
    const int64_t first = (pad_left + stride_w - 1) / stride_w;
    return first < out_w ? first : out_w;
  }
  int64_t interior_end() const {
    const int64_t last = w - 1 - (kernel_w - 1) * dilation_w + pad_left;  // the largest ox * stride_w allowed
    const int64_t begin = interior_begin(), end = last < 0 ? begin : last / stride_w + 1;
    return end < begin ? begin : (end < out_w ? end : out_w);
  }
  int64_t tasks() const { return n * blocks * row_chunks(); }
};

// Task `task` of p: rows [chunk * rows_per_task, ...) of one image and channel block.
using DepthwiseKernel = void (*)(const DepthwiseProblem& p, int64_t task);

void DepthwiseScalar(const DepthwiseProblem& p, int64_t task);
void NchwInputScalar(const DepthwiseProblem& p, int64_t task);
void DepthwiseScalar8(const DepthwiseProblem& p, int64_t task);
void NchwInputScalar8(const DepthwiseProblem& p, int64_t task);
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
void DepthwiseAvx2(const DepthwiseProblem& p, int64_t task);
void NchwInputAvx2(const DepthwiseProblem& p, int64_t task);
#endif
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
void DepthwiseAvx512(const DepthwiseProblem& p, int64_t task);
void NchwInputAvx512(const DepthwiseProblem& p, int64_t task);
#endif

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_DEPTHWISE_H_
