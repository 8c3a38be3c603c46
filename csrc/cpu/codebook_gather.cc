#include <string.h>

#include "cpu/ops.h"

namespace onnxcomp {

CodebookGatherKernel::CodebookGatherKernel() : RecordKernel(CodebookGatherOp::kName, 0, GatherableRecord) {}

OrtStatus* CodebookGatherKernel::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    int64_t one_hot = 0;
    OptionalAttribute(Ort::ConstKernelInfo(info), "one_hot", &one_hot);
    if (one_hot < 0 || one_hot > 2) return Error("attribute one_hot must be 0, 1 or 2, got " + std::to_string(one_hot));
    outside_ = static_cast<OutsideRows>(one_hot);
    return nullptr;
  });
}

OrtStatus* CodebookGatherKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;

    if (outside_ == OutsideRows::kError) {
      return GatherAxis0<float>(*this, context, record->dims, [record](int64_t row, int64_t row_size, float* out) {
        record->decode_range(static_cast<uint64_t>(row * row_size), static_cast<uint64_t>(row_size), out);
      });
    }
    // A one-hot row times the table: the fused multiply-add chain from 0.0 over the row (CodebookMatMul's, and
    // onnxruntime's MatMul on the decoded table) adds w + 0.0 and zeros (0 * w, exact: records hold finite values
    // only) that leave it unchanged, so each output is the looked-up value plus 0.0: the same, but -0.0 reads +0.0.
    if (record != &scratch && record->num_elements <= kOneHotTableElements) {
      std::call_once(once_, [&] {
        const size_t count = static_cast<size_t>(record->num_elements);
        table_.resize(count);
        record->decode_range(0, count, table_.data());
        for (float& value : table_) value += 0.0f;
      });
      const float* table = table_.data();
      return GatherAxis0<float>(
          *this, context, record->dims,
          [table](int64_t row, int64_t row_size, float* out) {
            if (row_size) memcpy(out, table + row * row_size, static_cast<size_t>(row_size) * sizeof(float));
          },
          outside_);
    }
    return GatherAxis0<float>(
        *this, context, record->dims,
        [record](int64_t row, int64_t row_size, float* out) {
          record->decode_range(static_cast<uint64_t>(row * row_size), static_cast<uint64_t>(row_size), out);
          for (int64_t j = 0; j < row_size; ++j) out[j] += 0.0f;
        },
        outside_);
  });
}

}  // namespace onnxcomp
