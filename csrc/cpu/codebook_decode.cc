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
    if (decode_once != 1) return nullptr;
    std::unique_ptr<const DecodedRecord> record = TakeConstant();
    if (!record) return nullptr;  // not a constant: decoded in every run
    dims_ = record->dims;
    decoded_.resize(static_cast<size_t>(record->num_elements));
    record->decode_range(0, static_cast<uint64_t>(record->num_elements), decoded_.data());
    decoded_once_ = true;
    return nullptr;
  });
}

OrtStatus* CodebookDecodeKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    if (decoded_once_) {
      float* out = context.GetOutput(0, dims_).GetTensorMutableData<float>();
      if (!decoded_.empty()) memcpy(out, decoded_.data(), decoded_.size() * sizeof(float));
      return nullptr;
    }
    DecodedRecord scratch;
    const DecodedRecord* record;
    if (OrtStatus* status = GetRecord(context, scratch, &record)) return status;
    float* out = context.GetOutput(0, record->dims).GetTensorMutableData<float>();
    record->decode_range(0, static_cast<uint64_t>(record->num_elements), out);
    return nullptr;
  });
}

}  // namespace onnxcomp
