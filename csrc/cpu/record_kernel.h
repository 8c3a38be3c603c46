// What the three CPU kernels share: decoding the record input once at kernel creation (or per run when
// it is not a constant), error statuses that name the node, and keeping exceptions inside the library.
#ifndef ONNXCOMP_CPU_RECORD_KERNEL_H_
#define ONNXCOMP_CPU_RECORD_KERNEL_H_

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cpu/decoded_record.h"

namespace onnxcomp {

// Asks the OS to reclaim the whole memory pages inside a constant record once it is decoded (Linux: madvise
// MADV_PAGEOUT, a hint that never changes the contents; errors, such as kernels before 5.4, are ignored; elsewhere
// nothing). onnxruntime maps the sidecar, so those pages are clean file pages that a later read faults in again;
// they then no longer count in the session's resident memory beside the working copy decoded from them.
void ReleaseRecordPages(const uint8_t* data, size_t size);

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

// Why a record cannot be a Gather table along axis 0 (empty string: it can): it needs rank >= 1.
inline std::string GatherableRecord(const DecodedRecord& record) {
  if (record.dims.empty()) return "the record must have rank >= 1 (dims [V, D...]), got a scalar";
  return {};
}

// What a row lookup does with an index outside the table (CodebookGather's attribute `one_hot`, docs/ops.md).
enum class OutsideRows : int64_t {
  kError = 0,     // ONNX Gather: a negative index counts from the end; one outside [-V, V) is an error
  kZeroEqual = 1,  // the product of a one-hot row Cast(Equal(index, arange(V))) with the table: an index outside
                   // [0, V) (negative ones included) gives a row of zeros
  kZeroOneHot = 2,  // the product of ONNX OneHot(index, V) with the table: a negative index counts from the end; one
                    // outside [-V, V) gives a row of zeros
};

// ONNX Gather along axis 0 of a table with dims `dims` ([V, D...]), shared by the float and integer gather
// kernels: reads the indices (input 1, int32 or int64; a negative index counts from the end), allocates output 0
// (the indices' shape + [D...], element type T) and calls copy_row(row, row_size, out) for each index, row in
// [0, V), out the row_size values of T where that index's row goes. An index outside [-V, V) stops the copy
// with an error naming it and its position; with `outside` kZeroEqual or kZeroOneHot, it (and under kZeroEqual a
// negative index) gets row_size zeros T{} instead.
template <typename T, typename CopyRow>
OrtStatus* GatherAxis0(const RecordKernel& kernel, Ort::KernelContext& context, const std::vector<int64_t>& dims,
                       CopyRow&& copy_row, OutsideRows outside = OutsideRows::kError) {
  Ort::ConstValue positions = context.GetInput(1);
  auto positions_info = positions.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType type = positions_info.GetElementType();
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
    return kernel.Error("indices must be int32 or int64");
  }
  std::vector<int64_t> shape = positions_info.GetShape();
  const int64_t count = static_cast<int64_t>(positions_info.GetElementCount());
  const int64_t rows = dims[0];
  int64_t row_size = 1;
  for (size_t i = 1; i < dims.size(); ++i) {
    row_size *= dims[i];
    shape.push_back(dims[i]);
  }
  T* out = context.GetOutput(0, shape).template GetTensorMutableData<T>();
  const bool narrow = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  const int32_t* narrow_positions = narrow ? positions.GetTensorData<int32_t>() : nullptr;
  const int64_t* wide_positions = narrow ? nullptr : positions.GetTensorData<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    int64_t row = narrow ? static_cast<int64_t>(narrow_positions[i]) : wide_positions[i];
    if (outside != OutsideRows::kError &&
        (row >= rows || row < (outside == OutsideRows::kZeroEqual ? int64_t{0} : -rows))) {
      std::fill(out + i * row_size, out + (i + 1) * row_size, T{});
      continue;
    }
    if (row < -rows || row >= rows) {
      return kernel.Error("index " + std::to_string(row) + " at position " + std::to_string(i) + " outside [" +
                          std::to_string(-rows) + ", " + std::to_string(rows) + ")");
    }
    if (row < 0) row += rows;
    copy_row(row, row_size, out + i * row_size);
  }
  return nullptr;
}

// The CPU allocator of a run's kernel context, for scratch tensors of that run. KernelContext_GetAllocator hands
// out a new wrapper that the caller must release (ReleaseAllocator, onnxruntime_c_api.h); the wrapper holds a
// reference to the session's allocator, so one left unreleased per run leaks a few hundred bytes each run and keeps
// the session's whole arena alive after the session is released. Declare it before the tensors it allocates: they
// free their buffers through it when they are destroyed.
class RunAllocator {
 public:
  explicit RunAllocator(Ort::KernelContext& context) {
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    allocator_ = context.GetAllocator(*memory.GetConst());
  }
  ~RunAllocator() {
    if (allocator_) Ort::GetApi().ReleaseAllocator(allocator_);
  }
  RunAllocator(const RunAllocator&) = delete;
  RunAllocator& operator=(const RunAllocator&) = delete;
  OrtAllocator* get() const { return allocator_; }

 private:
  OrtAllocator* allocator_ = nullptr;
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
