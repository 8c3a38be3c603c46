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

}  // namespace

template <typename T, bool kGather>
CodebookDecodeIntegerKernel<T, kGather>::CodebookDecodeIntegerKernel()
    : RecordKernel(CodebookDecodeIntegerOp<T, kGather>::kName, 0, kGather ? GatherableRecord : IntegerRecord,
                   CodebookDecodeIntegerOp<T, kGather>::kValueType) {}

template <typename T, bool kGather>
OrtStatus* CodebookDecodeIntegerKernel<T, kGather>::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    std::unique_ptr<const DecodedRecord> record = TakeConstant();
    if (!record) return nullptr;  // not a constant: decoded in every run
    dims_ = record->dims;
    const size_t count = static_cast<size_t>(record->num_elements);
    if (record->slot_bits == 8 && record->indices.size() >= count) {
      // One byte per index and per value: look the values up in place and keep that buffer as the working copy,
      // so session creation never holds the indices and the values side by side (peak memory).
      // The record was allocated non-const by RecordKernel::Init and is owned here alone.
      std::vector<uint8_t>& bytes = const_cast<DecodedRecord&>(*record).indices;
      uint8_t table[256] = {};
      for (uint32_t i = 0; i < record->codebook_size && i < 256; ++i) {
        const T value = static_cast<T>(static_cast<int32_t>(record->codebook[i]));
        memcpy(&table[i], &value, 1);
      }
      for (size_t i = 0; i < count; ++i) bytes[i] = table[bytes[i]];
      bytes.resize(count);
      decoded_ = std::move(bytes);
    } else {
      decoded_.resize(count);
      DecodeIntegers(*record, reinterpret_cast<T*>(decoded_.data()));
    }
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
    const T* values = reinterpret_cast<const T*>(decoded_.data());
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
    return GatherAxis0<T>(*this, context, dims, [values](int64_t row, int64_t row_size, T* out) {
      if (row_size) memcpy(out, values + row * row_size, static_cast<size_t>(row_size) * sizeof(T));
    });
  });
}

template struct CodebookDecodeIntegerKernel<uint8_t, false>;
template struct CodebookDecodeIntegerKernel<int8_t, false>;
template struct CodebookDecodeIntegerKernel<uint8_t, true>;
template struct CodebookDecodeIntegerKernel<int8_t, true>;

}  // namespace onnxcomp
