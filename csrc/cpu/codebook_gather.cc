#include "cpu/ops.h"

namespace onnxcomp {

namespace {

std::string GatherableRecord(const DecodedRecord& record) {
  if (record.dims.empty()) return "the record must have rank >= 1 (dims [V, D...]), got a scalar";
  return {};
}

// Copies rows; returns the position of the first out-of-range index, or -1.
template <typename Position>
int64_t GatherRows(const Position* positions, int64_t count, const DecodedRecord& record, int64_t rows,
                   int64_t row_size, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    int64_t row = static_cast<int64_t>(positions[i]);
    if (row < -rows || row >= rows) return i;
    if (row < 0) row += rows;
    record.decode_range(static_cast<uint64_t>(row * row_size), static_cast<uint64_t>(row_size), out + i * row_size);
  }
  return -1;
}

}  // namespace

CodebookGatherKernel::CodebookGatherKernel() : RecordKernel(CodebookGatherOp::kName, 0, GatherableRecord) {}

OrtStatus* CodebookGatherKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;

    Ort::ConstValue positions = context.GetInput(1);
    auto positions_info = positions.GetTensorTypeAndShapeInfo();
    const ONNXTensorElementDataType type = positions_info.GetElementType();
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      return Error("indices must be int32 or int64");
    }
    std::vector<int64_t> shape = positions_info.GetShape();
    const int64_t count = static_cast<int64_t>(positions_info.GetElementCount());
    const int64_t rows = record->dims[0];
    int64_t row_size = 1;
    for (size_t i = 1; i < record->dims.size(); ++i) {
      row_size *= record->dims[i];
      shape.push_back(record->dims[i]);
    }
    float* out = context.GetOutput(0, shape).GetTensorMutableData<float>();
    const int64_t bad = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                            ? GatherRows(positions.GetTensorData<int32_t>(), count, *record, rows, row_size, out)
                            : GatherRows(positions.GetTensorData<int64_t>(), count, *record, rows, row_size, out);
    if (bad >= 0) {
      const int64_t value = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ? positions.GetTensorData<int32_t>()[bad]
                                                                        : positions.GetTensorData<int64_t>()[bad];
      return Error("index " + std::to_string(value) + " at position " + std::to_string(bad) + " outside [" +
                   std::to_string(-rows) + ", " + std::to_string(rows) + ")");
    }
    return nullptr;
  });
}

}  // namespace onnxcomp
