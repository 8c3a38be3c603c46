// Portable CodebookMatMul kernel (any CPU), and the run-time choice of instruction set.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/matmul_kernels.h"
#include "packed_layout.h"

namespace onnxcomp {

namespace {

// One output row of one panel: acc[c] = fma(x[k], W[k, c], acc[c]) for k in order, as the SIMD kernels do.
template <uint32_t kSlot>
void PanelRow(const float* x, int64_t k, const uint8_t* panel, uint32_t row_bytes, const float* table,
              float* acc) {
  for (uint32_t c = 0; c < packed::kPanelColumns; ++c) acc[c] = 0.0f;
  uint32_t byte[packed::kPanelColumns], shift[packed::kPanelColumns];
  for (uint32_t c = 0; c < packed::kPanelColumns; ++c) {
    const packed::SlotPosition at = packed::panel_slot(kSlot, c);
    byte[c] = at.byte;
    shift[c] = at.shift;
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const float xk = x[kk];
    const uint8_t* row = panel + kk * row_bytes;
    for (uint32_t c = 0; c < packed::kPanelColumns; ++c) {
      uint32_t index;
      if (kSlot == 4) {
        index = (row[byte[c]] >> shift[c]) & 0xFu;
      } else if (kSlot == 8) {
        index = row[c];
      } else {
        index = uint32_t{row[2 * c]} | (uint32_t{row[2 * c + 1]} << 8);
      }
      acc[c] = fmaf(xk, packed::lookup(table, index), acc[c]);
    }
  }
}

template <uint32_t kSlot>
void Run(const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  float acc[packed::kPanelColumns];
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const uint8_t* data = p.panels + panel * p.panel_bytes;
    const int64_t n0 = panel * packed::kPanelColumns;
    const int64_t width = p.n - n0 < int64_t{packed::kPanelColumns} ? p.n - n0 : int64_t{packed::kPanelColumns};
    for (int64_t m = row_begin; m < row_end; ++m) {
      PanelRow<kSlot>(p.x + m * p.k, p.k, data, p.row_bytes, p.table, acc);
      float* y = p.y + m * p.n + n0;
      if (p.bias) {
        for (int64_t c = 0; c < width; ++c) y[c] = acc[c] + p.bias[n0 + c];
      } else {
        memcpy(y, acc, sizeof(float) * static_cast<size_t>(width));
      }
    }
  }
}

}  // namespace

// Shared by the SIMD kernels; defined here, in a unit compiled without ISA flags (see matmul_kernels.h).
void StoreTile(const MatMulProblem& p, const float* out, int64_t m0, int rows, int64_t g0, int ng) {
  const int64_t n0 = g0 * packed::kGroupColumns;
  int64_t width = p.n - n0;
  if (width > int64_t{ng} * packed::kGroupColumns) width = int64_t{ng} * packed::kGroupColumns;
  for (int r = 0; r < rows; ++r) {
    const float* source = out + r * ng * packed::kGroupColumns;
    float* y = p.y + (m0 + r) * p.n + n0;
    if (p.bias) {
      for (int64_t c = 0; c < width; ++c) y[c] = source[c] + p.bias[n0 + c];
    } else {
      memcpy(y, source, sizeof(float) * static_cast<size_t>(width));
    }
  }
}

void ForBalancedTiles(int64_t row_begin, int64_t row_end, int64_t max_height,
                      void (*tile)(void* context, int64_t m, int64_t height), void* context) {
  const int64_t rows = row_end - row_begin;
  if (rows <= 0) return;
  const int64_t tiles = (rows + max_height - 1) / max_height;
  const int64_t base = rows / tiles, extra = rows % tiles;
  int64_t m = row_begin;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t height = base + (t < extra ? 1 : 0);
    tile(context, m, height);
    m += height;
  }
}

void MatMulScalar(const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  switch (p.slot_bits) {
    case 4: return Run<4>(p, panel_begin, panel_end, row_begin, row_end);
    case 8: return Run<8>(p, panel_begin, panel_end, row_begin, row_end);
    default: return Run<16>(p, panel_begin, panel_end, row_begin, row_end);
  }
}

void DenseScalar(const DenseProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const float* w = p.panels + panel * p.k * kDensePanelColumns;
    const int64_t n0 = panel * kDensePanelColumns;
    const int64_t width = p.n - n0 < kDensePanelColumns ? p.n - n0 : kDensePanelColumns;
    for (int64_t m = row_begin; m < row_end; ++m) {
      const float* x = p.x + m * p.k;
      float acc[kDensePanelColumns] = {};
      for (int64_t kk = 0; kk < p.k; ++kk) {
        for (int64_t c = 0; c < kDensePanelColumns; ++c) acc[c] = fmaf(x[kk], w[kk * kDensePanelColumns + c], acc[c]);
      }
      float* y = p.y + m * p.n + n0;
      for (int64_t c = 0; c < width; ++c) y[c] = p.bias ? acc[c] + p.bias[n0 + c] : acc[c];
    }
  }
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kNeon: return "neon";
    default: return "scalar";
  }
}

Isa SelectIsa() {
  Isa best = Isa::kScalar;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
#endif
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
#endif
#endif
#if defined(ONNXCOMP_HAVE_NEON_KERNELS)
  best = Isa::kNeon;
#endif
  const char* force_scalar = getenv("ONNXCOMP_FORCE_SCALAR");
  if (force_scalar && strcmp(force_scalar, "") != 0 && strcmp(force_scalar, "0") != 0) return Isa::kScalar;
  const char* cap = getenv("ONNXCOMP_ISA");
  if (cap) {
    Isa wanted = best;
    if (strcmp(cap, "scalar") == 0) wanted = Isa::kScalar;
#if defined(__x86_64__) || defined(__i386__)
    if (strcmp(cap, "avx2") == 0) wanted = Isa::kAvx2;
    if (strcmp(cap, "avx512") == 0) wanted = Isa::kAvx512;
#endif
    if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
  }
  return best;
}

MatMulKernel MatMulKernelFor(Isa isa) {
  switch (isa) {
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
    case Isa::kAvx512: return MatMulAvx512;
#endif
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
    case Isa::kAvx2: return MatMulAvx2;
#endif
#if defined(ONNXCOMP_HAVE_NEON_KERNELS)
    case Isa::kNeon: return MatMulNeon;
#endif
    default: return MatMulScalar;
  }
}

DenseKernel DenseKernelFor(Isa isa) {
  switch (isa) {
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
    case Isa::kAvx512: return DenseAvx512;
#endif
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
    case Isa::kAvx2: return DenseAvx2;
#endif
#if defined(ONNXCOMP_HAVE_NEON_KERNELS)
    case Isa::kNeon: return DenseNeon;
#endif
    default: return DenseScalar;
  }
}

void DotsScalar(const DotProblem& p) {
  for (int64_t o = 0; o < p.rows; ++o) {
    const float* w = p.w + o * p.length;
    for (int64_t t = 0; t < p.count; ++t) {
      const float* c = p.cols + t * p.col_stride;
      float lane[16] = {};
      for (int64_t j = 0; j < p.length; ++j) lane[j & 15] = fmaf(w[j], c[j], lane[j & 15]);
      for (int width = 8; width >= 1; width /= 2) {
        for (int l = 0; l < width; ++l) lane[l] = lane[l] + lane[l + width];
      }
      p.out[o * p.out_stride + t] = lane[0];
    }
  }
}

DotKernel DotKernelFor(Isa isa) {
  switch (isa) {
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
    case Isa::kAvx512: return DotsAvx512;
#endif
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
    case Isa::kAvx2: return DotsAvx2;
#endif
    default: return DotsScalar;
  }
}

UnpackKernel UnpackKernelFor(Isa isa) {
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
  if (isa == Isa::kAvx2 || isa == Isa::kAvx512) return UnpackAvx2;
#endif
  (void)isa;
  return nullptr;
}

}  // namespace onnxcomp
