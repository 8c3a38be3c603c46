#include "cpu/ops.h"

namespace onnxcomp {

namespace {
std::string AnyRecord(const DecodedRecord&) { return {}; }
}  // namespace

CodebookDecodeKernel::CodebookDecodeKernel() : RecordKernel(CodebookDecodeOp::kName, 0, AnyRecord) {}

OrtStatus* CodebookDecodeKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;
    float* out = context.GetOutput(0, record->dims).GetTensorMutableData<float>();
    record->decode_range(0, static_cast<uint64_t>(record->num_elements), out);
    return nullptr;
  });
}

}  // namespace onnxcomp
