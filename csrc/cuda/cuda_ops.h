// CUDA variants of the ai.onnxcomp ops (docs/ops.md), registered for CUDAExecutionProvider next to the CPU
// ones. The record input stays in host memory (decoded and repacked on the host once, at kernel creation,
// then uploaded); X, bias and outputs live on the device; kernels run on onnxruntime's compute stream.
#ifndef ONNXCOMP_CUDA_CUDA_OPS_H_
#define ONNXCOMP_CUDA_CUDA_OPS_H_

#include "cpu/ops.h"
#include "cuda/kernels.h"

namespace onnxcomp {

inline constexpr const char kCudaProvider[] = "CUDAExecutionProvider";

// Device memory owned by a kernel, freed with it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  // Allocates `bytes` and copies `host` in; returns a cudaError_t as int.
  int Upload(const void* host, uint64_t bytes);
  // Uploads a host vector; an empty one leaves the buffer null (get() == nullptr).
  template <typename T>
  int UploadVector(const std::vector<T>& host) { return host.empty() ? 0 : Upload(host.data(), host.size() * sizeof(T)); }
  template <typename T>
  const T* get() const { return static_cast<const T*>(pointer_); }

 private:
  void* pointer_ = nullptr;
};

// Decodes the constant record at creation and uploads the codebook table and the packed indices.
class CudaRecordKernel : public RecordKernel {
 public:
  using RecordKernel::RecordKernel;
  OrtStatus* CudaError(int error, const char* what) const;

 protected:
  // The record decoded at creation; fails when the record input is not a constant initializer.
  OrtStatus* InitRecord(const OrtKernelInfo* info, std::unique_ptr<const DecodedRecord>* record);
  // The record's channel scales on the device (values null for an unscaled record).
  OnnxcompScales scales() const { return {scales_.get<float>(), scale_stride_, scale_count_}; }
  DeviceBuffer table_;
  DeviceBuffer scales_;
  uint64_t scale_stride_ = 1, scale_count_ = 0;
};

struct CudaCodebookDecodeKernel : CudaRecordKernel {
  CudaCodebookDecodeKernel();
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;
  std::vector<int64_t> dims_;
  int64_t count_ = 0;
  uint32_t slot_ = 0;
  DeviceBuffer indices_;
  int64_t outlier_count_ = 0;
  DeviceBuffer outlier_positions_, outlier_values_;
};

struct CudaCodebookMatMulKernel : CudaRecordKernel {
  CudaCodebookMatMulKernel();
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;
  int64_t k_ = 0, n_ = 0;
  uint32_t slot_ = 0;
  DeviceBuffer panels_;
  DeviceBuffer correction_start_, correction_row_, correction_delta_;  // null without outliers
};

struct CudaCodebookGatherKernel : CudaRecordKernel {
  CudaCodebookGatherKernel();
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;
  std::vector<int64_t> dims_;
  uint32_t slot_ = 0;
  OutsideRows outside_ = OutsideRows::kError;  // attribute one_hot
  DeviceBuffer indices_;
  DeviceBuffer outlier_row_start_, outlier_positions_, outlier_values_;  // null without outliers
};

// The CPU op's signature with the CUDA provider and the record input (and Gather's positions) in host memory.
template <typename CpuOp, typename Kernel, size_t kRecordInput, int kHostInput2>
struct CudaOp : Ort::CustomOpBase<CudaOp<CpuOp, Kernel, kRecordInput, kHostInput2>, Kernel, true> {
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<Kernel>(info, kernel);
  }
  const char* GetName() const { return CpuOp::kName; }
  const char* GetExecutionProviderType() const { return kCudaProvider; }
  size_t GetInputTypeCount() const { return cpu_.GetInputTypeCount(); }
  ONNXTensorElementDataType GetInputType(size_t index) const { return cpu_.GetInputType(index); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return cpu_.GetInputCharacteristic(index);
  }
  OrtMemType GetInputMemoryType(size_t index) const {
    return index == kRecordInput || static_cast<int>(index) == kHostInput2 ? OrtMemTypeCPUInput : OrtMemTypeDefault;
  }
  size_t GetOutputTypeCount() const { return cpu_.GetOutputTypeCount(); }
  ONNXTensorElementDataType GetOutputType(size_t index) const { return cpu_.GetOutputType(index); }

 private:
  CpuOp cpu_;
};

using CudaCodebookDecodeOp = CudaOp<CodebookDecodeOp, CudaCodebookDecodeKernel, 0, -1>;
using CudaCodebookMatMulOp = CudaOp<CodebookMatMulOp, CudaCodebookMatMulKernel, 1, -1>;
using CudaCodebookGatherOp = CudaOp<CodebookGatherOp, CudaCodebookGatherKernel, 0, 1>;

}  // namespace onnxcomp

#endif  // ONNXCOMP_CUDA_CUDA_OPS_H_
