#include <algorithm>

#include "cpu/ops.h"

namespace onnxcomp {

namespace {

std::string MatMulRecord(const DecodedRecord& record) {
  if (record.dims.size() != 2) return "the record must be 2-D [K, N], got dims " + ShapeToString(record.dims);
  return {};
}

// Rows of X updated together from one dequantized strip of W (register blocking).
constexpr int64_t kRowBlock = 4;
// Columns per tile: the dequantized strip (one row of W) and kRowsPerTask output rows of this width stay
// in L1/L2 while K is swept.
constexpr int64_t kColumnTile = 256;
// Rows per parallel task: each dequantized strip is reused across them.
constexpr int64_t kRowsPerTask = 32;
// Below this many multiply-adds a single thread is faster than dispatching work.
constexpr int64_t kParallelWork = int64_t{1} << 18;

struct MatMulArgs {
  const float* x;
  const float* codebook;
  const float* bias;  // may be null
  float* y;
  int64_t m, k, n;
};

// y[m0:m1, n0:n1] = x[m0:m1, :] @ W[:, n0:n1] + bias[n0:n1]. W is never materialised: for each k, only
// the strip W[k, n0:n1] is looked up from the codebook into a small buffer, then applied to every row
// with a loop the compiler vectorizes.
template <typename Index>
void MatMulTile(const MatMulArgs& a, const Index* indices, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const float* codebook = a.codebook;
  const int64_t width = n1 - n0;
  for (int64_t m = m0; m < m1; ++m) {
    float* y = a.y + m * a.n + n0;
    if (a.bias) {
      std::copy(a.bias + n0, a.bias + n1, y);
    } else {
      std::fill(y, y + width, 0.0f);
    }
  }
  float strip[kColumnTile];
  for (int64_t kk = 0; kk < a.k; ++kk) {
    const Index* w = indices + kk * a.n + n0;
    for (int64_t j = 0; j < width; ++j) strip[j] = codebook[w[j]];
    const float* x = a.x + kk;
    int64_t m = m0;
    for (; m + kRowBlock <= m1; m += kRowBlock) {
      const float x0 = x[m * a.k], x1 = x[(m + 1) * a.k], x2 = x[(m + 2) * a.k], x3 = x[(m + 3) * a.k];
      float* __restrict y0 = a.y + m * a.n + n0;
      float* __restrict y1 = y0 + a.n;
      float* __restrict y2 = y1 + a.n;
      float* __restrict y3 = y2 + a.n;
      for (int64_t j = 0; j < width; ++j) {
        const float c = strip[j];
        y0[j] += x0 * c;
        y1[j] += x1 * c;
        y2[j] += x2 * c;
        y3[j] += x3 * c;
      }
    }
    for (; m < m1; ++m) {
      const float xm = x[m * a.k];
      float* __restrict y = a.y + m * a.n + n0;
      for (int64_t j = 0; j < width; ++j) y[j] += xm * strip[j];
    }
  }
}

struct ParallelTask {
  const MatMulArgs* args;
  const DecodedRecord* record;
  int64_t column_tiles;
};

void RunTask(void* data, size_t task) {
  const ParallelTask& t = *static_cast<const ParallelTask*>(data);
  const MatMulArgs& a = *t.args;
  const int64_t row_task = static_cast<int64_t>(task) / t.column_tiles;
  const int64_t column_tile = static_cast<int64_t>(task) % t.column_tiles;
  const int64_t m0 = row_task * kRowsPerTask, m1 = std::min(a.m, m0 + kRowsPerTask);
  const int64_t n0 = column_tile * kColumnTile, n1 = std::min(a.n, n0 + kColumnTile);
  t.record->with_indices([&](const auto* indices) { MatMulTile(a, indices, m0, m1, n0, n1); });
}

}  // namespace

CodebookMatMulKernel::CodebookMatMulKernel() : RecordKernel(CodebookMatMulOp::kName, 1, MatMulRecord) {}

OrtStatus* CodebookMatMulKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;
    const int64_t k = record->dims[0], n = record->dims[1];

    Ort::ConstValue x = context.GetInput(0);
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != k) {
      return Error("X shape " + ShapeToString(shape) + " does not end in K = " + std::to_string(k) +
                   " of the record dims " + ShapeToString(record->dims));
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
    MatMulArgs args{x.GetTensorData<float>(), record->codebook.data(), bias,
                    context.GetOutput(0, shape).GetTensorMutableData<float>(), m, k, n};
    if (m == 0 || n == 0) return nullptr;

    const int64_t column_tiles = (n + kColumnTile - 1) / kColumnTile;
    const int64_t tasks = (m + kRowsPerTask - 1) / kRowsPerTask * column_tiles;
    ParallelTask task{&args, record, column_tiles};
    if (tasks > 1 && static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n) >= kParallelWork) {
      context.ParallelFor(RunTask, static_cast<size_t>(tasks), 0, &task);
    } else {
      for (int64_t t = 0; t < tasks; ++t) RunTask(&task, static_cast<size_t>(t));
    }
    return nullptr;
  });
}

}  // namespace onnxcomp
