#include "cpu/record_kernel.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21  // Linux 5.4 (older C libraries lack the name)
#endif
#endif

namespace onnxcomp {

void ReleaseRecordPages(const uint8_t* data, size_t size) {
#if defined(__linux__)
  const long page_size = sysconf(_SC_PAGESIZE);
  if (page_size <= 0 || data == nullptr) return;
  const uintptr_t page = static_cast<uintptr_t>(page_size);
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + size) / page * page;
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);  // a hint: errors ignored
#else
  (void)data;
  (void)size;
#endif
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

OrtStatus* RecordKernel::Error(const std::string& problem) const {
  std::string message = "onnxcomp: node '" + node_name_ + "' (" + op_name_ + "): " + problem;
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
}

OrtStatus* RecordKernel::DecodeInput(const Ort::ConstValue& value, DecodedRecord& out) const {
  auto info = value.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || info.GetShape().size() != 1) {
    return Error("the record input must be a 1-D uint8 tensor, got shape " + ShapeToString(info.GetShape()));
  }
  DecodeStatus status = decode_record_bytes(value.GetTensorData<uint8_t>(), info.GetElementCount(), &out);
  if (!status.ok()) return Error(std::string("corrupt weight record: ") + status.message);
  if (out.value_type != value_type_) {
    return Error("the record has value type " + std::to_string(out.value_type) + ", this op reads value type " +
                 std::to_string(value_type_) + " records (1 float32: CodebookDecode and the fused ops; 2 uint8: "
                 "CodebookDecodeUInt8; 3 int8: CodebookDecodeInt8)");
  }
  std::string problem = check_(out);
  if (!problem.empty()) return Error(problem);
  return nullptr;
}

OrtStatus* RecordKernel::Init(const OrtKernelInfo* info) {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::ConstKernelInfo kernel_info(info);
    node_name_ = kernel_info.GetNodeName();
    if (record_input_ == kNoRecordInput) return nullptr;
    int is_constant = 0;
    Ort::ConstValue value = kernel_info.GetTensorConstantInput(record_input_, &is_constant);
    if (!is_constant || value == nullptr) return nullptr;  // decoded in every run instead
    auto decoded = std::make_unique<DecodedRecord>();
    if (OrtStatus* status = DecodeInput(value, *decoded)) return status;
    constant_ = std::move(decoded);
    ReleaseRecordPages(value.GetTensorData<uint8_t>(), value.GetTensorTypeAndShapeInfo().GetElementCount());
    return nullptr;
  });
}

OrtStatus* RecordKernel::GetRecord(const Ort::KernelContext& context, DecodedRecord& scratch,
                                   const DecodedRecord** record) const {
  if (constant_) {
    *record = constant_.get();
    return nullptr;
  }
  if (OrtStatus* status = DecodeInput(context.GetInput(record_input_), scratch)) return status;
  *record = &scratch;
  return nullptr;
}

}  // namespace onnxcomp
