// What the three CPU kernels share: decoding the record input once at kernel creation (or per run when
// it is not a constant), error statuses that name the node, and keeping exceptions inside the library.
#ifndef ONNXCOMP_CPU_RECORD_KERNEL_H_
#define ONNXCOMP_CPU_RECORD_KERNEL_H_

#include <onnxruntime_cxx_api.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cpu/decoded_record.h"

namespace onnxcomp {

// Returns why a decoded record cannot serve this op (empty string: it can).
using RecordCheck = std::string (*)(const DecodedRecord&);

class RecordKernel {
 public:
  // record_input = kNoRecordInput: the kernel has several weight inputs and decodes them itself (DecodeInput).
  static constexpr size_t kNoRecordInput = static_cast<size_t>(-1);
  // value_type: the record value type the op reads (record::kValueType*); a record of another type is refused.
  RecordKernel(const char* op_name, size_t record_input, RecordCheck check,
               uint32_t value_type = record::kValueTypeFloat32)
      : op_name_(op_name), record_input_(record_input), check_(check), value_type_(value_type) {}

  // Reads the node name and, when the record input is a constant initializer, decodes and checks it now,
  // so a corrupt record fails session creation.
  OrtStatus* Init(const OrtKernelInfo* info);

  // "onnxcomp: node 'name' (Op): problem" as an INVALID_ARGUMENT status.
  OrtStatus* Error(const std::string& problem) const;

 protected:
  // The record decoded at creation, or this run's record input decoded into `scratch`.
  OrtStatus* GetRecord(const Ort::KernelContext& context, DecodedRecord& scratch, const DecodedRecord** record) const;

  // Hands the record decoded at creation (null if the input is not constant) to a kernel that keeps its own
  // working form instead; GetRecord must not be called afterwards.
  std::unique_ptr<const DecodedRecord> TakeConstant() { return std::move(constant_); }

  // Validates and decodes a record input (1-D uint8) into `out`, then applies the kernel's check.
  OrtStatus* DecodeInput(const Ort::ConstValue& value, DecodedRecord& out) const;

  // Before Init: this node's weight input is not a record (CodebookConv with a dense float weight), so Init
  // decodes nothing and GetRecord/TakeConstant must not be used.
  void NoRecordInput() { record_input_ = kNoRecordInput; }

 private:

  const char* op_name_;
  size_t record_input_;
  RecordCheck check_;
  uint32_t value_type_;
  std::string node_name_;
  std::unique_ptr<const DecodedRecord> constant_;
};

// Runs `body` (returning OrtStatus*) and turns any exception into a status, so none crosses into ORT.
template <typename Body>
OrtStatus* GuardStatus(const RecordKernel* kernel, Body&& body) noexcept {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    if (kernel) return kernel->Error(e.what());
    return Ort::Status(e).release();
  } catch (const std::bad_alloc&) {
    if (kernel) return kernel->Error("out of memory");
    return Ort::Status("onnxcomp: out of memory", ORT_FAIL).release();
  } catch (const std::exception& e) {
    if (kernel) return kernel->Error(e.what());
    return Ort::Status(e).release();
  }
}

// Creates kernel type K (constructible from nothing, with Init(info)) for CustomOpBase::CreateKernelV2.
template <typename K>
OrtStatus* CreateRecordKernel(const OrtKernelInfo* info, void** op_kernel) noexcept {
  *op_kernel = nullptr;
  return GuardStatus(nullptr, [&]() -> OrtStatus* {
    auto kernel = std::make_unique<K>();
    if (OrtStatus* status = kernel->Init(info)) return status;
    *op_kernel = kernel.release();
    return nullptr;
  });
}

std::string ShapeToString(const std::vector<int64_t>& shape);

// Reads an optional attribute; absent leaves `value` as it is.
template <typename T>
void OptionalAttribute(const Ort::ConstKernelInfo& info, const char* name, T* value) {
  try {
    *value = info.GetAttribute<T>(name);
  } catch (const Ort::Exception&) {
  }
}

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_RECORD_KERNEL_H_
