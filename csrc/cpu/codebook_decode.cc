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
    const float* codebook = record->codebook.data();
    const int64_t n = record->num_elements;
    const uint8_t* indices = record->indices.data();
    switch (record->slot_bits) {  // one loop per slot width, so each compiles without a per-element branch
      case 4:
        for (int64_t i = 0; i < n; ++i) out[i] = packed::lookup(codebook, packed::linear_load(indices, 4, i));
        break;
      case 8:
        for (int64_t i = 0; i < n; ++i) out[i] = packed::lookup(codebook, packed::linear_load(indices, 8, i));
        break;
      default:
        for (int64_t i = 0; i < n; ++i) out[i] = packed::lookup(codebook, packed::linear_load(indices, 16, i));
    }
    return nullptr;
  });
}

}  // namespace onnxcomp
