#include <string.h>

#include "cpu/ops.h"

namespace onnxcomp {

namespace {
std::string AnyRecord(const DecodedRecord&) { return {}; }
}  // namespace

CodebookDecodeKernel::CodebookDecodeKernel() : RecordKernel(CodebookDecodeOp::kName, 0, AnyRecord) {}

OrtStatus* CodebookDecodeKernel::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    int64_t decode_once = 0;
    OptionalAttribute(Ort::ConstKernelInfo(info), "decode_once", &decode_once);
    decode_once_ = decode_once == 1;  // applies to a constant record only (GetRecord tells in the run)
    return nullptr;
  });
}

OrtStatus* CodebookDecodeKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;
    float* out = context.GetOutput(0, record->dims).GetTensorMutableData<float>();
    const size_t count = static_cast<size_t>(record->num_elements);
    if (decode_once_ && record != &scratch) {  // a constant record: decode it once, copy it out in every run
      std::call_once(once_, [&] {
        decoded_.resize(count);
        record->decode_range(0, count, decoded_.data());
      });
      if (count) memcpy(out, decoded_.data(), count * sizeof(float));
      return nullptr;
    }
    record->decode_range(0, count, out);
    return nullptr;
  });
}

template <>
const char* const CodebookDecodeIntegerOp<uint8_t, false>::kName = "CodebookDecodeUInt8";
template <>
const char* const CodebookDecodeIntegerOp<int8_t, false>::kName = "CodebookDecodeInt8";
template <>
const char* const CodebookDecodeIntegerOp<uint8_t, true>::kName = "CodebookGatherUInt8";
template <>
const char* const CodebookDecodeIntegerOp<int8_t, true>::kName = "CodebookGatherInt8";

namespace {
// Writes the record's N exact integers to `out` (parse_record checked every codebook value is an integer of T's
// range, so each conversion is exact).
template <typename T>
void DecodeIntegers(const DecodedRecord& record, T* out) {
  std::vector<T> table(record.codebook_size);
  for (uint32_t i = 0; i < record.codebook_size; ++i) table[i] = static_cast<T>(static_cast<int32_t>(record.codebook[i]));
  const int64_t count = record.num_elements;
  for (int64_t i = 0; i < count; ++i) out[i] = table[record.index(i)];
}

std::string IntegerRecord(const DecodedRecord&) { return {}; }
std::string GatherableIntegerRecord(const DecodedRecord& record) {
  if (record.dims.empty()) return "the record must have rank >= 1 (dims [V, D...]), got a scalar";
  return {};
}

// Copies rows `positions` of `table` ([rows, row_size]); returns the position of the first out-of-range index, or -1.
template <typename T, typename Position>
int64_t CopyRows(const Position* positions, int64_t count, const T* table, int64_t rows, int64_t row_size, T* out) {
  for (int64_t i = 0; i < count; ++i) {
    int64_t row = static_cast<int64_t>(positions[i]);
    if (row < -rows || row >= rows) return i;
    if (row < 0) row += rows;
    if (row_size) memcpy(out + i * row_size, table + row * row_size, static_cast<size_t>(row_size) * sizeof(T));
  }
  return -1;
}
}  // namespace

template <typename T, bool kGather>
CodebookDecodeIntegerKernel<T, kGather>::CodebookDecodeIntegerKernel()
    : RecordKernel(CodebookDecodeIntegerOp<T, kGather>::kName, 0, kGather ? GatherableIntegerRecord : IntegerRecord,
                   CodebookDecodeIntegerOp<T, kGather>::kValueType) {}

template <typename T, bool kGather>
OrtStatus* CodebookDecodeIntegerKernel<T, kGather>::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    std::unique_ptr<const DecodedRecord> record = TakeConstant();
    if (!record) return nullptr;  // not a constant: decoded in every run
    dims_ = record->dims;
    decoded_.resize(static_cast<size_t>(record->num_elements));
    DecodeIntegers(*record, decoded_.data());
    constant_ = true;
    return nullptr;
  });
}

template <typename T, bool kGather>
OrtStatus* CodebookDecodeIntegerKernel<T, kGather>::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    std::vector<T> per_run;  // a non-constant record's integers, decoded for this run
    std::vector<int64_t> dims = dims_;
    const T* values = decoded_.data();
    size_t count = decoded_.size();
    if (!constant_) {
      DecodedRecord scratch;
      if (OrtStatus* status = DecodeInput(context.GetInput(0), scratch)) return status;
      dims = scratch.dims;
      count = static_cast<size_t>(scratch.num_elements);
      if (!kGather) {
        DecodeIntegers(scratch, context.GetOutput(0, dims).template GetTensorMutableData<T>());
        return nullptr;
      }
      per_run.resize(count);
      DecodeIntegers(scratch, per_run.data());
      values = per_run.data();
    }
    if (!kGather) {
      T* out = context.GetOutput(0, dims).template GetTensorMutableData<T>();
      if (count) memcpy(out, values, count * sizeof(T));
      return nullptr;
    }
    Ort::ConstValue positions = context.GetInput(1);
    auto positions_info = positions.GetTensorTypeAndShapeInfo();
    const ONNXTensorElementDataType type = positions_info.GetElementType();
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      return Error("indices must be int32 or int64");
    }
    std::vector<int64_t> shape = positions_info.GetShape();
    const int64_t n = static_cast<int64_t>(positions_info.GetElementCount());
    const int64_t rows = dims[0];
    int64_t row_size = 1;
    for (size_t i = 1; i < dims.size(); ++i) {
      row_size *= dims[i];
      shape.push_back(dims[i]);
    }
    T* out = context.GetOutput(0, shape).template GetTensorMutableData<T>();
    const bool narrow = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    const int64_t bad = narrow ? CopyRows(positions.GetTensorData<int32_t>(), n, values, rows, row_size, out)
                               : CopyRows(positions.GetTensorData<int64_t>(), n, values, rows, row_size, out);
    if (bad >= 0) {
      const int64_t value = narrow ? positions.GetTensorData<int32_t>()[bad] : positions.GetTensorData<int64_t>()[bad];
      return Error("index " + std::to_string(value) + " at position " + std::to_string(bad) + " outside [" +
                   std::to_string(-rows) + ", " + std::to_string(rows) + ")");
    }
    return nullptr;
  });
}

template struct CodebookDecodeIntegerKernel<uint8_t, false>;
template struct CodebookDecodeIntegerKernel<int8_t, false>;
template struct CodebookDecodeIntegerKernel<uint8_t, true>;
template struct CodebookDecodeIntegerKernel<int8_t, true>;

}  // namespace onnxcomp
