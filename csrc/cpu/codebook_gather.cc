#include "cpu/ops.h"

namespace onnxcomp {

CodebookGatherKernel::CodebookGatherKernel() : RecordKernel(CodebookGatherOp::kName, 0, GatherableRecord) {}

OrtStatus* CodebookGatherKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;

    return GatherAxis0<float>(*this, context, record->dims, [record](int64_t row, int64_t row_size, float* out) {
      record->decode_range(static_cast<uint64_t>(row * row_size), static_cast<uint64_t>(row_size), out);
    });
  });
}

}  // namespace onnxcomp
