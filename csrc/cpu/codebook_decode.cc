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

}  // namespace onnxcomp
