// Depthwise convolution on onnxruntime's NCHWc layout with blocks of 16 channels: CodebookConv's path 1b for
// depthwise layers (group = C = O, one filter per channel; the rule: docs/ops.md, "How it runs").
//
// Each output vector (16 channels of one position) is one fixed sequence: a chain of fused multiply-adds from 0.0
// over the in-bounds taps in (kernel row, kernel column) order (taps in the padding are skipped), then + bias, then
// the activation. The same sequence in the AVX-512 and the scalar kernels (both units built with
// -ffp-contract=off): **bit-identical** results under every ONNXCOMP_ISA cap and thread count. Interior positions
// run 8 at a time with the tap's filter vector loaded once for all 8. Both units include cpu/depthwise_impl.h
// inside an unnamed namespace (the same units as cpu/winograd_impl.h, sharing their vector operations).
#ifndef ONNXCOMP_CPU_DEPTHWISE_H_
#define ONNXCOMP_CPU_DEPTHWISE_H_

#include <stdint.h>

namespace onnxcomp {

constexpr int64_t kDepthwiseBlock = 16;  // channels per block of the layout (onnxruntime's NCHWc16)

// The activations the depthwise kernels apply after the bias (docs/ops.md; the others stay with onnxruntime).
enum class DepthwiseActivation { kNone = 0, kRelu, kLeakyRelu, kClip, kHardSigmoid, kHardSwish };

struct DepthwiseProblem {
  const float* x;                // [N][blocks][H][W][16]
  int64_t n, blocks, h, w;       // blocks: the padded channel count / 16
  int64_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int64_t out_h, out_w;
  const float* filter;           // [blocks][kernel_h][kernel_w][16] (onnxruntime's OIHWBo for depthwise)
  const float* bias;             // [blocks * 16] or null
  DepthwiseActivation activation;
  float alpha, beta;             // LeakyRelu: alpha; Clip: min, max; HardSigmoid: alpha, beta
  float* y;                      // [N][blocks][out_h][out_w][16]
  int64_t rows_per_task;         // output rows per task (of one image and channel block)

  int64_t row_chunks() const { return (out_h + rows_per_task - 1) / rows_per_task; }
  int64_t tasks() const { return n * blocks * row_chunks(); }
};

// Task `task` of p: rows [chunk * rows_per_task, ...) of one image and channel block.
using DepthwiseKernel = void (*)(const DepthwiseProblem& p, int64_t task);

void DepthwiseScalar(const DepthwiseProblem& p, int64_t task);
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
void DepthwiseAvx512(const DepthwiseProblem& p, int64_t task);
#endif

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_DEPTHWISE_H_
