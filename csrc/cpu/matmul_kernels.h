// The fused CodebookMatMul kernels, one per instruction set, and the choice between them.
//
// Each instruction set lives in its own translation unit compiled with its own -m flags (matmul_avx2.cc,
// matmul_avx512.cc) and is called only after a run-time CPU check. Those units include this header only:
// plain structs and declarations, no inline functions. An inline function (or std:: template) compiled in
// an AVX-512 unit could be the copy the linker keeps for every unit, and then crash older CPUs.
// On aarch64 the NEON kernel (matmul_neon.cc) is chosen whenever the build has it: NEON is baseline ARMv8-A.
#ifndef ONNXCOMP_CPU_MATMUL_KERNELS_H_
#define ONNXCOMP_CPU_MATMUL_KERNELS_H_

#include <stdint.h>

namespace onnxcomp {

// Y[M, N] = X[M, K] @ W[K, N] (+ bias), W in the panel layout of packed_layout.h.
struct MatMulProblem {
  const float* x;  // [m, k] row-major
  int64_t m, k, n;
  const uint8_t* panels;
  uint32_t slot_bits;      // 4, 8 or 16
  uint32_t codebook_size;  // K of the record: every index is below it
  const float* table;      // codebook padded with zeros to packed::table_entries(codebook_size)
  const float* bias;       // [n] or null
  float* y;                // [m, n] row-major
  // Layout sizes, precomputed by the caller (see the note above about inline functions).
  uint64_t panel_bytes;    // bytes of one panel: k rows
  uint32_t row_bytes;      // bytes of one panel row
  uint32_t group_bytes;    // bytes of one 32-column group inside a row
};

// Computes rows [row_begin, row_end) of Y for the columns of panels [panel_begin, panel_end).
// Every kernel computes each output as fma(x[k], w[k], acc) over k = 0..K-1 in order from 0.0, then adds
// the bias: all instruction sets give bit-identical results, whatever the split into tasks.
using MatMulKernel = void (*)(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin,
                              int64_t row_end);

void MatMulScalar(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
void MatMulAvx2(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#endif
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
void MatMulAvx512(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#endif
#if defined(ONNXCOMP_HAVE_NEON_KERNELS)
void MatMulNeon(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#endif

// Writes a tile of `rows` x `ng` column groups (computed into `out`) to p.y from row m0 and group g0, adding
// the bias and cutting the last group at p.n. Shared by the SIMD kernels, compiled without ISA flags.
void StoreTile(const MatMulProblem& p, const float* out, int64_t m0, int rows, int64_t g0, int ng);

// Calls tile(context, m, height) for rows [row_begin, row_end) cut into ceil(rows / max_height) row tiles of balanced
// heights, in order (49 rows at most 6 high: 4 of 6 and 5 of 5, not 8 of 6 and a 1-row tile, which is bound by its
// weight loads, not its multiply-adds). Shared by the SIMD dense-panel kernels, compiled without ISA flags.
void ForBalancedTiles(int64_t row_begin, int64_t row_end, int64_t max_height,
                      void (*tile)(void* context, int64_t m, int64_t height), void* context);

// Y[M, N] = X[M, K] @ W[K, N] (+ bias) with W dense float32 in column panels: CodebookMatMul's decode-once
// working form. Panel p holds columns [kDensePanelColumns * p, kDensePanelColumns * (p + 1)) of W, its K rows one
// after the other (kDensePanelColumns floats each, columns past N zero), panels one after the other.
constexpr int64_t kDensePanelColumns = 16;

struct DenseProblem {
  const float* x;  // [m, k] row-major
  int64_t m, k, n;
  const float* panels;  // ceil(n / kDensePanelColumns) panels of k * kDensePanelColumns floats, 32-byte aligned
                        // (64 from the op)
  const float* bias;    // [n] or null
  float* y;             // [m, n] row-major
};

// Computes rows [row_begin, row_end) of Y for the columns of panels [panel_begin, panel_end). Every kernel computes
// each output as fma(x[k], w[k], acc) over k = 0..K-1 in order from 0.0, then adds the bias (the contract of
// MatMulKernel): all instruction sets give bit-identical results, whatever the split into tasks.
using DenseKernel = void (*)(const DenseProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin,
                             int64_t row_end);

void DenseScalar(const DenseProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
void DenseAvx2(const DenseProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#endif
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
// 12-row x 32-column tiles over K blocks of at most 128 (matmul_avx512.cc).
void DenseAvx512(const DenseProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#endif
#if defined(ONNXCOMP_HAVE_NEON_KERNELS)
void DenseNeon(const DenseProblem&, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end);
#endif

// Writes the weights of packed panels [panel_begin, panel_end) of p (codebook values, no outliers) into `out` in
// DenseProblem's panel layout (dense panels 4 * panel_begin onwards, those below ceil(p.n / kDensePanelColumns));
// columns past N hold unspecified finite values. Only data moves: the values are the lookups' bits.
using UnpackKernel = void (*)(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, float* out);
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
void UnpackAvx2(const MatMulProblem&, int64_t panel_begin, int64_t panel_end, float* out);
#endif

// out[o * out_stride + t] = the dot product of w[o * length .. + length) and cols[t * col_stride .. + length), for o in
// [0, rows) and t in [0, count): CodebookConv's direct path for short 1-D convolutions (codebook_conv.cc, docs/ops.md).
// Every kernel sums in one order: 16 lanes, lane l the fused multiply-add chain from 0.0 over j = l, l + 16, l + 32,
// ... below length, in increasing j; then lanes l and l + 8 added (l < 8), then l and l + 4, l and l + 2, and the
// last two: all instruction sets give bit-identical results. cols holds col_stride >= length rounded up to 16
// floats per position, zeros past length.
struct DotProblem {
  const float* w;
  int64_t rows, length;
  const float* cols;
  int64_t count, col_stride;
  float* out;
  int64_t out_stride;
};
using DotKernel = void (*)(const DotProblem&);
void DotsScalar(const DotProblem&);
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
void DotsAvx2(const DotProblem&);
#endif
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
void DotsAvx512(const DotProblem&);
#endif

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

// The best instruction set this CPU and this build support, lowered by the environment variable
// ONNXCOMP_ISA=scalar|avx2|avx512 (a cap, never raised above what the CPU has) or ONNXCOMP_FORCE_SCALAR=1.
// On aarch64 only "scalar" lowers it (from NEON); the x86 names are ignored there.
// Read when a kernel is created.
Isa SelectIsa();
const char* IsaName(Isa isa);
MatMulKernel MatMulKernelFor(Isa isa);
// The dense-panel kernel of an instruction set (same results for all, by the contract above).
DenseKernel DenseKernelFor(Isa isa);
// The SIMD unpacking of an instruction set, or null (the caller's portable loop then serves).
UnpackKernel UnpackKernelFor(Isa isa);
// The dot-product kernel of an instruction set (NEON: the scalar one; same results for all).
DotKernel DotKernelFor(Isa isa);

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_MATMUL_KERNELS_H_
