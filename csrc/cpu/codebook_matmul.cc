#include <stdlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>

#include "cpu/ops.h"

namespace onnxcomp {

namespace {

std::string MatMulRecord(const DecodedRecord& record) {
  if (record.dims.size() != 2) return "the record must be 2-D [K, N], got dims " + ShapeToString(record.dims);
  return {};
}

// Panels per parallel task: two, so a batch-1 task can run the four-group GEMV tile.
constexpr int64_t kPanelsPerTask = 2;
// Rows per parallel task at larger batches (multiples of the 6-row tiles): at most kRowsPerTask where there are
// few column-panel tasks to spread over threads, else at most kRowsPerWideTask, the rows split evenly over the
// row tasks. Each task decodes its columns once for all its rows (AVX2 row tiles), so fewer, larger row tasks
// decode less: 49 rows as one task instead of 48 + 1 (which decoded every column twice).
constexpr int64_t kRowsPerTask = 48;
constexpr int64_t kRowsPerWideTask = 192;
constexpr int64_t kWidePanelTasks = 4;
// At most this many floats of X are transposed once per run for the outlier corrections of all tasks (16 MiB).
constexpr int64_t kSharedTransposeFloats = int64_t{1} << 22;
// Below this many multiply-adds a single thread is faster than dispatching work.
constexpr double kParallelWork = double(1 << 18);

struct ParallelTask {
  const MatMulProblem* problem;
  const PackedMatrix* matrix;
  MatMulKernel kernel;
  int64_t panels, panel_tasks, rows_per_task;
  const TransposedRows* xt;  // X transposed for the corrections, or null
};

void RunTask(void* data, size_t task) {
  const ParallelTask& t = *static_cast<const ParallelTask*>(data);
  const MatMulProblem& p = *t.problem;
  const int64_t row_task = static_cast<int64_t>(task) / t.panel_tasks;
  const int64_t panel_task = static_cast<int64_t>(task) % t.panel_tasks;
  const int64_t m0 = row_task * t.rows_per_task, m1 = std::min(p.m, m0 + t.rows_per_task);
  const int64_t p0 = panel_task * kPanelsPerTask, p1 = std::min(t.panels, p0 + kPanelsPerTask);
  t.kernel(p, p0, p1, m0, m1);
  if (!t.matrix->correction_start.empty()) {
    ApplyCorrections(*t.matrix, p.x, p.y, m0, m1, p0 * packed::kPanelColumns,
                     std::min<int64_t>(p.n, p1 * packed::kPanelColumns), t.xt);
  }
}

}  // namespace

namespace {

// One loop per slot width so the slot positions and loads compile to constants (this runs at session creation
// over every weight).
template <uint32_t kSlot>
void PackPanels(const DecodedRecord& record, uint64_t k, uint64_t n, uint8_t* panels) {
  packed::SlotPosition position[packed::kPanelColumns];
  for (uint32_t c = 0; c < packed::kPanelColumns; ++c) position[c] = packed::panel_slot(kSlot, c);
  const uint8_t* source = record.indices.data();
  const uint64_t panel_stride = packed::panel_bytes(k, kSlot);
  for (uint64_t kk = 0; kk < k; ++kk) {
    for (uint64_t n0 = 0; n0 < n; n0 += packed::kPanelColumns) {
      uint8_t* row = panels + (n0 / packed::kPanelColumns) * panel_stride + kk * packed::panel_row_bytes(kSlot);
      const uint32_t width = static_cast<uint32_t>(std::min<uint64_t>(packed::kPanelColumns, n - n0));
      for (uint32_t c = 0; c < width; ++c) {
        const uint32_t index = packed::linear_load(source, kSlot, kk * n + n0 + c);
        if (kSlot == 4) {
          row[position[c].byte] = static_cast<uint8_t>(row[position[c].byte] | (index << position[c].shift));
        } else if (kSlot == 8) {
          row[c] = static_cast<uint8_t>(index);
        } else {
          row[2 * c] = static_cast<uint8_t>(index);
          row[2 * c + 1] = static_cast<uint8_t>(index >> 8);
        }
      }
    }
  }
}

}  // namespace

namespace {

// The corrections of rows [row_begin, row_end) and columns [column_begin, column_end), four columns at a time so
// their chains of fused multiply-adds interleave (each column's chain is sequential in k). Inlined into the
// entry points below: one compiled for hardware FMA, one portable.
__attribute__((always_inline)) inline void CorrectionsBody(const PackedMatrix& w, const float* x, float* y,
                                                           int64_t row_begin, int64_t row_end, int64_t column_begin,
                                                           int64_t column_end) {
  const int64_t* start = w.correction_start.data();
  const int64_t* rows = w.correction_row.data();
  const float* delta = w.correction_delta.data();
  for (int64_t m = row_begin; m < row_end; ++m) {
    const float* xm = x + m * w.k;
    float* ym = y + m * w.n;
    int64_t c = column_begin;
    for (; c + 4 <= column_end; c += 4) {
      float acc[4] = {ym[c], ym[c + 1], ym[c + 2], ym[c + 3]};
      int64_t j[4] = {start[c], start[c + 1], start[c + 2], start[c + 3]};
      const int64_t end[4] = {start[c + 1], start[c + 2], start[c + 3], start[c + 4]};
      while (j[0] < end[0] && j[1] < end[1] && j[2] < end[2] && j[3] < end[3]) {
        for (int q = 0; q < 4; ++q) {
          acc[q] = std::fma(xm[rows[j[q]]], delta[j[q]], acc[q]);
          ++j[q];
        }
      }
      for (int q = 0; q < 4; ++q) {
        for (; j[q] < end[q]; ++j[q]) acc[q] = std::fma(xm[rows[j[q]]], delta[j[q]], acc[q]);
        ym[c + q] = acc[q];
      }
    }
    for (; c < column_end; ++c) {
      float acc = ym[c];
      for (int64_t q = start[c]; q < start[c + 1]; ++q) acc = std::fma(xm[rows[q]], delta[q], acc);
      ym[c] = acc;
    }
  }
}

#if defined(__x86_64__)
// std::fma without the FMA instruction set is a call into libm per correction (4-5x slower on a 1 %-outlier
// weight); with it, one vfmadd (and the lanes version one vector vfmadd per 8 rows). All round once, so the
// results are the same bits.
__attribute__((target("fma"))) void CorrectionsFma(const PackedMatrix& w, const float* x, float* y, int64_t row_begin,
                                                   int64_t row_end, int64_t column_begin, int64_t column_end) {
  CorrectionsBody(w, x, y, row_begin, row_end, column_begin, column_end);
}

// The same corrections with rows as vector lanes: for each column, up to kCorrectionLanes rows at a time hold their
// y[m, c] in four 8-float vectors, and each correction (k, delta) is one fused multiply-add per vector, reading
// x[m .. m + 32, k] contiguously from X transposed. Every y[m, c] gets the same fma chain, in the same order, as in
// CorrectionsBody (fma(x, delta, acc), correctly rounded), so the bits are the same; only independent chains run
// side by side. `xt` holds the columns of X in w.correction_used_rows, transposed, for rows [xt_row0, ...):
// xt[slot * stride + (m - xt_row0)], zeros past the last row (at least kCorrectionLanes - 1 of them). Written with
// intrinsics: as a plain loop over the lanes the compiler interchanged the loops and ran each lane's chain serially.
__attribute__((target("avx,fma"))) void CorrectionsLanesFma(const PackedMatrix& w, const float* xt, int64_t stride,
                                                            int64_t xt_row0, float* y, int64_t row_begin,
                                                            int64_t row_end, int64_t column_begin,
                                                            int64_t column_end) {
  static_assert(kCorrectionLanes == 32, "four vectors of 8 lanes");
  const int64_t* start = w.correction_start.data();
  const int32_t* slots = w.correction_slot.data();
  const float* delta = w.correction_delta.data();
  for (int64_t m0 = row_begin; m0 < row_end; m0 += kCorrectionLanes) {
    const int64_t count = std::min(kCorrectionLanes, row_end - m0);
    const int64_t vectors = (count + 7) / 8;
    const float* base = xt + (m0 - xt_row0);
    for (int64_t c = column_begin; c < column_end; ++c) {
      const int64_t begin = start[c], end = start[c + 1];
      if (begin == end) continue;
      // y[m0 .. m0 + count, c] into the lanes: whole vectors built from their 8 values in registers (stored to
      // memory one by one and reloaded as a vector, they would stall the load on store forwarding), the last
      // partial one through memory.
      const float* yc = y + m0 * w.n + c;
      const int64_t n = w.n;
      __m256 lane[4];
      for (int v = 0; v < 4; ++v) {
        const float* yv = yc + 8 * v * n;
        if (8 * (v + 1) <= count) {
          lane[v] = _mm256_set_ps(yv[7 * n], yv[6 * n], yv[5 * n], yv[4 * n], yv[3 * n], yv[2 * n], yv[n], yv[0]);
        } else {
          alignas(32) float tail[8] = {};
          for (int64_t i = 0; i < count - 8 * v; ++i) tail[i] = yv[i * n];
          lane[v] = _mm256_load_ps(tail);
        }
      }
      __m256 a0 = lane[0], a1 = lane[1], a2 = lane[2], a3 = lane[3];
      alignas(32) float lanes[kCorrectionLanes];
      if (vectors <= 2) {
        for (int64_t q = begin; q < end; ++q) {
          const __m256 d = _mm256_broadcast_ss(delta + q);
          const float* xr = base + slots[q] * stride;
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr), d, a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), d, a1);
        }
      } else {
        for (int64_t q = begin; q < end; ++q) {
          const __m256 d = _mm256_broadcast_ss(delta + q);
          const float* xr = base + slots[q] * stride;
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr), d, a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), d, a1);
          a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 16), d, a2);
          a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 24), d, a3);
        }
      }
      _mm256_store_ps(lanes, a0);
      _mm256_store_ps(lanes + 8, a1);
      _mm256_store_ps(lanes + 16, a2);
      _mm256_store_ps(lanes + 24, a3);
      for (int64_t i = 0; i < count; ++i) y[(m0 + i) * w.n + c] = lanes[i];
    }
  }
}

bool CpuHasFma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx");
}
#endif

// Whether this CPU runs the lanes version (x86-64 with FMA; elsewhere the per-row chains, unmeasured there).
bool LanesCorrections() {
#if defined(__x86_64__)
  static const bool has_fma = CpuHasFma();
  return has_fma;
#else
  return false;
#endif
}

}  // namespace

void TransposeForCorrections(const PackedMatrix& w, const float* x, int64_t row_begin, int64_t row_end,
                             TransposedRows* out) {
  const int64_t rows = row_end - row_begin;
  const int64_t used = static_cast<int64_t>(w.correction_used_rows.size());
  out->row0 = row_begin;
  out->stride = (rows + kCorrectionLanes - 1) / 8 * 8 + 8;  // room for a full set of lanes from any row
  out->data.assign(static_cast<size_t>(used * out->stride), 0.0f);
  for (int64_t m = 0; m < rows; ++m) {
    const float* xm = x + (row_begin + m) * w.k;
    for (int64_t slot = 0; slot < used; ++slot) {
      out->data[static_cast<size_t>(slot * out->stride + m)] = xm[w.correction_used_rows[static_cast<size_t>(slot)]];
    }
  }
}

void ApplyCorrections(const PackedMatrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end,
                      int64_t column_begin, int64_t column_end, const TransposedRows* xt) {
#if defined(__x86_64__)
  if (row_end - row_begin >= 2 && LanesCorrections()) {
    if (xt && xt->row0 <= row_begin && !xt->data.empty()) {
      CorrectionsLanesFma(w, xt->data.data(), xt->stride, xt->row0, y, row_begin, row_end, column_begin, column_end);
      return;
    }
    // X transposed here, kCorrectionLanes rows at a time.
    TransposedRows block;
    for (int64_t m0 = row_begin; m0 < row_end; m0 += kCorrectionLanes) {
      const int64_t m1 = std::min(row_end, m0 + kCorrectionLanes);
      TransposeForCorrections(w, x, m0, m1, &block);
      CorrectionsLanesFma(w, block.data.data(), block.stride, block.row0, y, m0, m1, column_begin, column_end);
    }
    return;
  }
  if (LanesCorrections()) {
    CorrectionsFma(w, x, y, row_begin, row_end, column_begin, column_end);
    return;
  }
#else
  (void)xt;
#endif
  CorrectionsBody(w, x, y, row_begin, row_end, column_begin, column_end);
}

namespace {

// Groups the outliers of a [K, N] record by column (a counting sort keeps rows increasing inside a column).
void PackCorrections(const DecodedRecord& record, PackedMatrix* w) {
  const size_t count = record.outlier_positions.size();
  w->correction_start.assign(static_cast<size_t>(w->n) + 1, 0);
  w->correction_row.assign(count, 0);
  w->correction_delta.assign(count, 0.0f);
  const uint64_t n = static_cast<uint64_t>(w->n);
  for (uint64_t position : record.outlier_positions) ++w->correction_start[position % n + 1];
  for (int64_t c = 0; c < w->n; ++c) w->correction_start[c + 1] += w->correction_start[c];
  std::vector<int64_t> next(w->correction_start.begin(), w->correction_start.end() - 1);
  for (size_t j = 0; j < count; ++j) {
    const uint64_t position = record.outlier_positions[j];
    const int64_t at = next[position % n]++;
    w->correction_row[at] = static_cast<int64_t>(position / n);
    w->correction_delta[at] = record.outlier_values[j] - record.coded_value(position);
  }
  // The rows in use and each correction's slot among them (record positions are increasing, so their rows are too).
  w->correction_used_rows.clear();
  std::vector<int32_t> slot_of_row(static_cast<size_t>(w->k), -1);
  for (uint64_t position : record.outlier_positions) {
    const int64_t row = static_cast<int64_t>(position / n);
    if (slot_of_row[static_cast<size_t>(row)] < 0) {
      slot_of_row[static_cast<size_t>(row)] = static_cast<int32_t>(w->correction_used_rows.size());
      w->correction_used_rows.push_back(row);
    }
  }
  w->correction_slot.resize(count);
  for (size_t at = 0; at < count; ++at) {
    w->correction_slot[at] = slot_of_row[static_cast<size_t>(w->correction_row[at])];
  }
}

}  // namespace

namespace {

// Dense panels of W with n columns (DenseProblem's layout): ceil(n / kDensePanelColumns).
int64_t DensePanelCount(int64_t n) { return (n + kDensePanelColumns - 1) / kDensePanelColumns; }

// Extra floats a buffer for dense panels carries so that they can start at a 64-byte boundary (the AVX2 kernel
// loads aligned vectors; the AVX-512 kernel's 64-byte rows then never straddle two cache lines), and that boundary
// within it.
constexpr int64_t kAlignFloats = 16;
float* AlignedPanels(float* buffer) {
  while (reinterpret_cast<uintptr_t>(buffer) % (kAlignFloats * sizeof(float)) != 0) ++buffer;
  return buffer;
}

// Packed panels [panel_begin, panel_end) of W (codebook values, no outliers) into `out` in DenseProblem's panel
// layout; one loop per slot width, like PackPanels. Dense columns past N are written as zeros.
template <uint32_t kSlot>
void UnpackPanels(const PackedMatrix& w, int64_t panel_begin, int64_t panel_end, float* out) {
  static_assert(packed::kPanelColumns % kDensePanelColumns == 0, "a packed panel holds whole dense panels");
  packed::SlotPosition position[packed::kPanelColumns];
  for (uint32_t c = 0; c < packed::kPanelColumns; ++c) position[c] = packed::panel_slot(kSlot, c);
  const uint64_t k = static_cast<uint64_t>(w.k);
  const uint64_t panel_stride = packed::panel_bytes(k, kSlot);
  const uint32_t row_bytes = packed::panel_row_bytes(kSlot);
  const float* table = w.table.data();
  const int64_t dense_columns = DensePanelCount(w.n) * kDensePanelColumns;
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const int64_t n0 = panel * packed::kPanelColumns;
    const uint32_t width = static_cast<uint32_t>(std::min<int64_t>(packed::kPanelColumns, w.n - n0));
    const uint32_t padded = static_cast<uint32_t>(std::min<int64_t>(packed::kPanelColumns, dense_columns - n0));
    const uint8_t* data = w.panels.data() + static_cast<uint64_t>(panel) * panel_stride;
    float* target = out + n0 * w.k;  // dense panel n0 / 16 onwards
    for (uint64_t kk = 0; kk < k; ++kk) {
      const uint8_t* row = data + kk * row_bytes;
      for (uint32_t c = 0; c < padded; ++c) {
        uint32_t index;
        if (kSlot == 4) {
          index = (row[position[c].byte] >> position[c].shift) & 0xFu;
        } else if (kSlot == 8) {
          index = row[c];
        } else {
          index = uint32_t{row[2 * c]} | (uint32_t{row[2 * c + 1]} << 8);
        }
        const uint64_t at = (c / kDensePanelColumns * k + kk) * kDensePanelColumns + c % kDensePanelColumns;
        target[at] = c < width ? packed::lookup(table, index) : 0.0f;
      }
    }
  }
}

void UnpackPanelRange(const PackedMatrix& w, int64_t panel_begin, int64_t panel_end, float* out) {
  switch (w.slot_bits) {
    case 4: return UnpackPanels<4>(w, panel_begin, panel_end, out);
    case 8: return UnpackPanels<8>(w, panel_begin, panel_end, out);
    default: return UnpackPanels<16>(w, panel_begin, panel_end, out);
  }
}

struct UnpackTask {
  const PackedMatrix* w;
  float* out;
  UnpackKernel simd;  // null: UnpackPanelRange
  const MatMulProblem* problem;  // W's layout, for `simd`
};

void RunUnpackTask(void* data, size_t panel) {
  const UnpackTask& t = *static_cast<const UnpackTask*>(data);
  const int64_t begin = static_cast<int64_t>(panel);
  if (t.simd) {
    t.simd(*t.problem, begin, begin + 1, t.out);
  } else {
    UnpackPanelRange(*t.w, begin, begin + 1, t.out);
  }
}

}  // namespace

int64_t DenseGemmRows() {
  // Measured crossover (docs/benchmarks.md, bench/matmul_rows.py): with the fused kernels' decode-once row tiles,
  // the dense-panel GEMM on a weight decoded for the run only wins from several hundred rows.
  constexpr int64_t kDefaultRows = 512;
  const char* text = getenv("ONNXCOMP_GEMM_ROWS");
  if (!text || !*text) return kDefaultRows;
  char* end = nullptr;
  const long long rows = strtoll(text, &end, 10);
  return (end && *end == 0 && rows >= 0) ? static_cast<int64_t>(rows) : kDefaultRows;
}

namespace {
// ONNXCOMP_SPARSE_ROWS=0 (read at kernel creation) turns the sparse-row path off, for timing and tests.
bool SparseRowsEnabled() {
  const char* text = getenv("ONNXCOMP_SPARSE_ROWS");
  return !(text && text[0] == '0' && text[1] == 0);
}
}  // namespace

// Columns past N keep index 0.
void PackMatrix(const DecodedRecord& record, PackedMatrix* out) {
  PackedMatrix& w = *out;
  w.k = record.dims[0];
  w.n = record.dims[1];
  w.slot_bits = record.slot_bits;
  w.codebook_size = record.codebook_size;
  w.table = record.codebook;
  const uint64_t k = static_cast<uint64_t>(w.k), n = static_cast<uint64_t>(w.n);
  w.panels.assign(packed::panels_total_bytes(k, n, w.slot_bits), 0);
  w.correction_start.clear();
  w.correction_row.clear();
  w.correction_delta.clear();
  if (!record.outlier_positions.empty()) PackCorrections(record, &w);
  switch (w.slot_bits) {
    case 4: return PackPanels<4>(record, k, n, w.panels.data());
    case 8: return PackPanels<8>(record, k, n, w.panels.data());
    default: return PackPanels<16>(record, k, n, w.panels.data());
  }
}

namespace {

// The decode-once working form: the record's exact values (outliers included) in DenseProblem's panel layout,
// decoded one row of W at a time (so the first run holds one extra row, not a second copy of W).
void DecodeDensePanels(const DecodedRecord& record, std::vector<float>* storage, const float** panels) {
  const int64_t k = record.dims[0], n = record.dims[1];
  const int64_t panel_count = DensePanelCount(n);
  storage->assign(static_cast<size_t>(panel_count * k * kDensePanelColumns + kAlignFloats), 0.0f);
  float* base = AlignedPanels(storage->data());
  std::vector<float> row(static_cast<size_t>(n));
  for (int64_t kk = 0; kk < k; ++kk) {
    record.decode_range(static_cast<uint64_t>(kk * n), static_cast<uint64_t>(n), row.data());
    for (int64_t panel = 0; panel < panel_count; ++panel) {
      const int64_t n0 = panel * kDensePanelColumns;
      const int64_t width = std::min(kDensePanelColumns, n - n0);
      std::copy(row.data() + n0, row.data() + n0 + width, base + (panel * k + kk) * kDensePanelColumns);
    }
  }
  *panels = base;
}

// Parallel tasks of the dense-panel GEMM: a block of rows (about kDenseRowBytes of X, so it stays in L2 while
// the task's panels stream past it) times a block of kDensePanelsPerTask panels.
constexpr int64_t kDenseRowBytes = 192 * 1024;
constexpr int64_t kDensePanelsPerTask = 8;

struct DenseTask {
  const DenseProblem* problem;
  DenseKernel kernel;
  int64_t panels, panel_tasks, rows_per_task;
};

void RunDenseTask(void* data, size_t task) {
  const DenseTask& t = *static_cast<const DenseTask*>(data);
  const int64_t row_task = static_cast<int64_t>(task) / t.panel_tasks;
  const int64_t panel_task = static_cast<int64_t>(task) % t.panel_tasks;
  const int64_t m0 = row_task * t.rows_per_task, m1 = std::min(t.problem->m, m0 + t.rows_per_task);
  const int64_t p0 = panel_task * kDensePanelsPerTask, p1 = std::min(t.panels, p0 + kDensePanelsPerTask);
  t.kernel(*t.problem, p0, p1, m0, m1);
}

}  // namespace

namespace {

// ---- Sparse rows of X (one-hot inputs and the like) on dense panels ----------------------------------------------
//
// A row of X with few nonzeros (an embedding lookup exported as a one-hot row times a MatMul) needs only those rows
// of W. Each output is computed as the chain of fused multiply-adds over the row's nonzero k, in increasing k, from
// 0.0, then the bias. That equals the dense kernels' chain over every k bit for bit whenever W's values are finite
// (the decoder rejects a record with a codebook, outlier or scaled value that is not) and the result is not zero: a skipped term fma(0, w, acc) adds a zero, which leaves any nonzero acc unchanged, and
// while acc is zero the next nonzero term's product rounds the same whatever the sign of that zero. Only the sign
// of a zero result can differ, so an output that comes out zero is recomputed with the full chain over K.

// At most this many nonzeros make a row sparse: one in 16 of K (at least one), where the dense kernel does 16
// times the multiply-adds.
int64_t SparseRowLimit(int64_t k) { return std::max<int64_t>(1, k / 16); }

// The nonzero positions of row x [k] into `at` (NaN counts as nonzero), or -1 once there are more than `limit`.
__attribute__((always_inline)) inline int64_t NonzerosScalar(const float* x, int64_t k, int64_t limit, int32_t* at) {
  int64_t count = 0;
  for (int64_t kk = 0; kk < k; ++kk) {
    if (x[kk] != 0.0f) {
      if (count == limit) return -1;
      at[count++] = static_cast<int32_t>(kk);
    }
  }
  return count;
}

// One output, the full chain over K (dense panel column `c` of `w`, the panel's K rows of kDensePanelColumns).
__attribute__((always_inline)) inline float FullChain(const float* x, const float* w, int64_t k, int64_t c) {
  float acc = 0.0f;
  for (int64_t kk = 0; kk < k; ++kk) acc = std::fma(x[kk], w[kk * kDensePanelColumns + c], acc);
  return acc;
}

// Writes a panel's outputs for one row from their sparse chains `acc`, zeros recomputed, bias added.
__attribute__((always_inline)) inline void StoreSparse(const DenseProblem& p, const float* xm, const float* w,
                                                       int64_t n0, const float* acc, float* ym) {
  const int64_t width = std::min(kDensePanelColumns, p.n - n0);
  for (int64_t c = 0; c < width; ++c) {
    const float value = acc[c] == 0.0f ? FullChain(xm, w, p.k, c) : acc[c];
    ym[n0 + c] = p.bias ? value + p.bias[n0 + c] : value;
  }
}

// Rows from `row_begin` on while they are sparse; returns the first row not computed (p.m when all were).
__attribute__((always_inline)) inline int64_t SparseRowsBody(const DenseProblem& p, int64_t row_begin,
                                                              int32_t* at) {
  const int64_t limit = SparseRowLimit(p.k);
  const int64_t panels = DensePanelCount(p.n);
  for (int64_t m = row_begin; m < p.m; ++m) {
    const float* xm = p.x + m * p.k;
    const int64_t count = NonzerosScalar(xm, p.k, limit, at);
    if (count < 0) return m;
    for (int64_t panel = 0; panel < panels; ++panel) {
      const float* w = p.panels + panel * p.k * kDensePanelColumns;
      float acc[kDensePanelColumns] = {};
      for (int64_t j = 0; j < count; ++j) {
        const float xv = xm[at[j]];
        const float* wr = w + int64_t{at[j]} * kDensePanelColumns;
        for (int64_t c = 0; c < kDensePanelColumns; ++c) acc[c] = std::fma(xv, wr[c], acc[c]);
      }
      StoreSparse(p, xm, w, panel * kDensePanelColumns, acc, p.y + m * p.n);
    }
  }
  return p.m;
}

#if defined(__x86_64__)
// The same with AVX2 + FMA: the nonzeros found 8 at a time (vcmpps + movemask), each panel's 16 outputs as two
// vectors of fused multiply-adds (each lane the same correctly rounded chain as the portable loop).
__attribute__((target("avx2,fma"))) int64_t SparseRowsAvx2(const DenseProblem& p, int64_t row_begin, int32_t* at) {
  static_assert(kDensePanelColumns == 16, "two vectors of 8 per panel");
  const int64_t limit = SparseRowLimit(p.k);
  const int64_t panels = DensePanelCount(p.n);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t m = row_begin; m < p.m; ++m) {
    const float* xm = p.x + m * p.k;
    int64_t count = 0;
    int64_t kk = 0;
    for (; kk + 8 <= p.k && count >= 0; kk += 8) {
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(xm + kk), zero, _CMP_NEQ_UQ)));
      while (mask) {
        if (count == limit) {
          count = -1;
          break;
        }
        at[count++] = static_cast<int32_t>(kk + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
    if (count >= 0 && kk < p.k) {
      const int64_t tail = NonzerosScalar(xm + kk, p.k - kk, limit - count, at + count);
      if (tail < 0) {
        count = -1;
      } else {
        for (int64_t j = count; j < count + tail; ++j) at[j] += static_cast<int32_t>(kk);
        count += tail;
      }
    }
    if (count < 0) return m;
    for (int64_t panel = 0; panel < panels; ++panel) {
      const float* w = p.panels + panel * p.k * kDensePanelColumns;
      __m256 a0 = zero, a1 = zero;
      for (int64_t j = 0; j < count; ++j) {
        const __m256 xv = _mm256_broadcast_ss(xm + at[j]);
        const float* wr = w + int64_t{at[j]} * kDensePanelColumns;
        a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wr), a0);
        a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wr + 8), a1);
      }
      const int64_t n0 = panel * kDensePanelColumns;
      const __m256 zeros = _mm256_or_ps(_mm256_cmp_ps(a0, zero, _CMP_EQ_OQ), _mm256_cmp_ps(a1, zero, _CMP_EQ_OQ));
      if (n0 + kDensePanelColumns <= p.n && _mm256_movemask_ps(zeros) == 0) {  // a whole panel, no zero: stored here
        float* ym = p.y + m * p.n + n0;
        if (p.bias) {
          a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p.bias + n0));
          a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p.bias + n0 + 8));
        }
        _mm256_storeu_ps(ym, a0);
        _mm256_storeu_ps(ym + 8, a1);
        continue;
      }
      alignas(32) float acc[kDensePanelColumns];
      _mm256_store_ps(acc, a0);
      _mm256_store_ps(acc + 8, a1);
      StoreSparse(p, xm, w, n0, acc, p.y + m * p.n);
    }
  }
  return p.m;
}
#endif

// Computes the leading sparse rows of p, returns the first row left for the dense kernel. The AVX2 form runs where the kernel's instruction set is AVX2 or AVX-512; the results
// are the same bits either way.
int64_t SparseRows(const DenseProblem& p, Isa isa) {
  std::vector<int32_t> at(static_cast<size_t>(SparseRowLimit(p.k)) + 1);
#if defined(__x86_64__)
  if (isa == Isa::kAvx2 || isa == Isa::kAvx512) return SparseRowsAvx2(p, 0, at.data());
#else
  (void)isa;
#endif
  return SparseRowsBody(p, 0, at.data());
}

}  // namespace

void CodebookMatMulKernel::RunDensePanels(OrtKernelContext* raw_context, const float* w, int64_t k, int64_t n,
                                          const float* x, const float* bias, float* y, int64_t m) {
  if (sparse_rows_) {  // leading sparse rows computed from their nonzeros; the dense kernel takes the rest
    const int64_t first = SparseRows(DenseProblem{x, m, k, n, w, bias, y}, isa_);
    if (first == m) return;
    x += first * k;
    y += first * n;
    m -= first;
  }
  const DenseProblem problem{x, m, k, n, w, bias, y};
  const int64_t panels = DensePanelCount(n);
  const int64_t panel_tasks = (panels + kDensePanelsPerTask - 1) / kDensePanelsPerTask;
  // Rows per task: a multiple of the 6-row tiles, at least one tile.
  const int64_t rows_per_task = std::max<int64_t>(6, kDenseRowBytes / (4 * std::max<int64_t>(k, 1)) / 6 * 6);
  const int64_t row_tasks = (m + rows_per_task - 1) / rows_per_task;
  const int64_t tasks = row_tasks * panel_tasks;
  DenseTask task{&problem, dense_kernel_, panels, panel_tasks, rows_per_task};
  if (tasks > 1 && double(m) * double(k) * double(n) >= kParallelWork) {
    Ort::KernelContext(raw_context).ParallelFor(RunDenseTask, static_cast<size_t>(tasks), 0, &task);
  } else {
    for (int64_t t = 0; t < tasks; ++t) RunDenseTask(&task, static_cast<size_t>(t));
  }
}

CodebookMatMulKernel::CodebookMatMulKernel() : RecordKernel(CodebookMatMulOp::kName, 1, MatMulRecord) {}

OrtStatus* CodebookMatMulKernel::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    isa_ = SelectIsa();
    kernel_ = MatMulKernelFor(isa_);
    dense_kernel_ = DenseKernelFor(isa_);
    unpack_kernel_ = UnpackKernelFor(isa_);
    dense_rows_ = DenseGemmRows();
    sparse_rows_ = SparseRowsEnabled();
    int64_t decode_once = 0;
    OptionalAttribute(Ort::ConstKernelInfo(info), "decode_once", &decode_once);
    std::unique_ptr<const DecodedRecord> record = TakeConstant();
    if (record && (decode_once == 1 || record->scaled())) {
      // The decode-once working form: W exactly as decoded (outliers included) in dense panels; decoded by the
      // first run, so a session that is only created holds the record alone. A channel-scaled record always
      // takes it (the fused lookup has one table per matrix; the onnxcomp writer scales Conv weights only).
      dense_k_ = record->dims[0];
      dense_n_ = record->dims[1];
      once_record_ = std::move(record);
      decode_once_ = true;
      return nullptr;
    }
    if (record) {
      auto matrix = std::make_unique<PackedMatrix>();
      PackMatrix(*record, matrix.get());
      constant_matrix_ = std::move(matrix);
    }
    return nullptr;
  });
}

OrtStatus* CodebookMatMulKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    PackedMatrix scratch;
    const PackedMatrix* w = constant_matrix_.get();
    const bool decoded_once = decode_once_;
    if (decoded_once) {
      std::call_once(once_, [&] {
        DecodeDensePanels(*once_record_, &dense_storage_, &dense_panels_);
        once_record_.reset();
      });
    }
    DecodedRecord decoded;
    std::vector<float> run_storage;      // a non-constant channel-scaled record's dense panels, for this run
    const float* run_panels = nullptr;
    if (!w && !decoded_once) {  // the record is not a constant: decode and pack it in this run
      const DecodedRecord* record;
      if (OrtStatus* status = GetRecord(context, decoded, &record)) return status;
      if (record->scaled()) {
        DecodeDensePanels(*record, &run_storage, &run_panels);
      } else {
        PackMatrix(*record, &scratch);
        w = &scratch;
      }
    }
    const bool dense_run = decoded_once || run_panels;
    const int64_t k = decoded_once ? dense_k_ : run_panels ? decoded.dims[0] : w->k;
    const int64_t n = decoded_once ? dense_n_ : run_panels ? decoded.dims[1] : w->n;

    Ort::ConstValue x = context.GetInput(0);
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != k) {
      return Error("X shape " + ShapeToString(shape) + " does not end in K = " + std::to_string(k) +
                   " of the record dims " + ShapeToString({k, n}));
    }
    const float* bias = nullptr;
    if (context.GetInputCount() > 2) {
      Ort::ConstValue bias_value = context.GetInput(2);
      if (bias_value != nullptr) {
        std::vector<int64_t> bias_shape = bias_value.GetTensorTypeAndShapeInfo().GetShape();
        if (bias_shape != std::vector<int64_t>{n}) {
          return Error("bias shape " + ShapeToString(bias_shape) + " is not [N] = [" + std::to_string(n) + "]");
        }
        bias = bias_value.GetTensorData<float>();
      }
    }
    int64_t m = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) m *= shape[i];
    shape.back() = n;
    float* y = context.GetOutput(0, shape).GetTensorMutableData<float>();
    if (m == 0 || n == 0) return nullptr;

    if (dense_run) {
      RunDensePanels(raw_context, decoded_once ? dense_panels_ : run_panels, k, n, x.GetTensorData<float>(), bias, y, m);
      return nullptr;
    }
    if (dense_rows_ > 0 && m >= dense_rows_) {
      RunDense(raw_context, *w, x.GetTensorData<float>(), bias, y, m);
      return nullptr;
    }

    const uint32_t slot = w->slot_bits;
    MatMulProblem problem{x.GetTensorData<float>(), m, k, n, w->panels.data(), slot, w->codebook_size,
                          w->table.data(), bias, y, packed::panel_bytes(static_cast<uint64_t>(k), slot),
                          packed::panel_row_bytes(slot), packed::group_bytes(slot)};
    const int64_t panels = static_cast<int64_t>(packed::panel_count(static_cast<uint64_t>(n)));
    const int64_t panel_tasks = (panels + kPanelsPerTask - 1) / kPanelsPerTask;
    const int64_t row_limit = panel_tasks >= kWidePanelTasks ? kRowsPerWideTask : kRowsPerTask;
    const int64_t row_tasks = (m + row_limit - 1) / row_limit;
    const int64_t rows_per_task = ((m + row_tasks - 1) / row_tasks + 5) / 6 * 6;
    const int64_t tasks = (m + rows_per_task - 1) / rows_per_task * panel_tasks;
    // Several tasks share rows: X transposed once for all their corrections (bounded: a task's own blocks else).
    TransposedRows xt;
    const int64_t used_rows = static_cast<int64_t>(w->correction_used_rows.size());
    const bool shared_xt =
        LanesCorrections() && used_rows > 0 && m >= 2 && panel_tasks > 1 && m * used_rows <= kSharedTransposeFloats;
    if (shared_xt) TransposeForCorrections(*w, x.GetTensorData<float>(), 0, m, &xt);
    ParallelTask task{&problem, w, kernel_, panels, panel_tasks, rows_per_task, shared_xt ? &xt : nullptr};
    // ORT's intra-op thread pool (session option intra_op_num_threads) runs the tasks.
    if (tasks > 1 && double(m) * double(k) * double(n) >= kParallelWork) {
      context.ParallelFor(RunTask, static_cast<size_t>(tasks), 0, &task);
    } else {
      for (int64_t t = 0; t < tasks; ++t) RunTask(&task, static_cast<size_t>(t));
    }
    return nullptr;
  });
}

void CodebookMatMulKernel::RunDense(OrtKernelContext* raw_context, const PackedMatrix& w, const float* x,
                                    const float* bias, float* y, int64_t m) {
  Ort::KernelContext context(raw_context);
  RunAllocator allocator(context);
  const int64_t dims[] = {DensePanelCount(w.n) * kDensePanelColumns * w.k + kAlignFloats};
  Ort::Value buffer = Ort::Value::CreateTensor<float>(allocator.get(), dims, 1);
  float* panels = AlignedPanels(buffer.GetTensorMutableData<float>());
  const MatMulProblem layout{x, m, w.k, w.n, w.panels.data(), w.slot_bits, w.codebook_size, w.table.data(), nullptr,
                             y, packed::panel_bytes(static_cast<uint64_t>(w.k), w.slot_bits),
                             packed::panel_row_bytes(w.slot_bits), packed::group_bytes(w.slot_bits)};
  UnpackTask unpack{&w, panels, unpack_kernel_, &layout};
  const size_t packed_panels = packed::panel_count(static_cast<uint64_t>(w.n));
  if (packed_panels > 1 && double(w.k) * double(w.n) >= kParallelWork) {
    context.ParallelFor(RunUnpackTask, packed_panels, 0, &unpack);
  } else {
    for (size_t panel = 0; panel < packed_panels; ++panel) RunUnpackTask(&unpack, panel);
  }
  RunDensePanels(raw_context, panels, w.k, w.n, x, bias, y, m);
  // The outliers, as after the fused kernel (the panels hold the codebook values only): the same bits as it.
  if (!w.correction_start.empty()) ApplyCorrections(w, x, y, 0, m, 0, w.n);
}

}  // namespace onnxcomp
