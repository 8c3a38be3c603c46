#include "cuda/cuda_ops.h"

#include "cuda/kernels.h"

namespace onnxcomp {

namespace {

std::string AnyRecord(const DecodedRecord&) { return {}; }
std::string MatrixRecord(const DecodedRecord& record) {
  if (record.dims.size() != 2) return "the record must be 2-D [K, N], got dims " + ShapeToString(record.dims);
  return {};
}
std::string TableRecord(const DecodedRecord& record) {
  if (record.dims.empty()) return "the record must have rank >= 1 (dims [V, D...]), got a scalar";
  return {};
}

}  // namespace

DeviceBuffer::~DeviceBuffer() { onnxcomp_cuda_free(pointer_); }  // nothing useful to do with an error here

int DeviceBuffer::Upload(const void* host, uint64_t bytes) {
  if (int error = onnxcomp_cuda_malloc(&pointer_, bytes)) return error;
  return onnxcomp_cuda_copy_to_device(pointer_, host, bytes);
}

OrtStatus* CudaRecordKernel::CudaError(int error, const char* what) const {
  return Error(std::string("CUDA error in ") + what + ": " + onnxcomp_cuda_error_string(error));
}

OrtStatus* CudaRecordKernel::InitRecord(const OrtKernelInfo* info, std::unique_ptr<const DecodedRecord>* record) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  *record = TakeConstant();
  if (!*record) return Error("the CUDA kernel needs the record as a constant initializer (not a graph input)");
  const DecodedRecord& r = **record;
  if (int error = table_.Upload(r.codebook.data(), r.codebook.size() * sizeof(float))) {
    return CudaError(error, "uploading the codebook");
  }
  if (r.scaled()) {
    if (int error = scales_.UploadVector(r.scales)) return CudaError(error, "uploading the channel scales");
    scale_stride_ = r.scale_stride;
    scale_count_ = r.scales.size();
  }
  return nullptr;
}

// ---- CodebookDecode ---------------------------------------------------------------------------------------

CudaCodebookDecodeKernel::CudaCodebookDecodeKernel() : CudaRecordKernel(CodebookDecodeOp::kName, 0, AnyRecord) {}

OrtStatus* CudaCodebookDecodeKernel::Init(const OrtKernelInfo* info) {
  return GuardStatus(this, [&]() -> OrtStatus* {
    std::unique_ptr<const DecodedRecord> record;
    if (OrtStatus* status = InitRecord(info, &record)) return status;
    dims_ = record->dims;
    count_ = record->num_elements;
    slot_ = record->slot_bits;
    if (int error = indices_.Upload(record->indices.data(), record->indices.size())) {
      return CudaError(error, "uploading the indices");
    }
    outlier_count_ = static_cast<int64_t>(record->outlier_positions.size());
    if (int error = outlier_positions_.UploadVector(record->outlier_positions)) return CudaError(error, "uploading outliers");
    if (int error = outlier_values_.UploadVector(record->outlier_values)) return CudaError(error, "uploading outliers");
    return nullptr;
  });
}

OrtStatus* CudaCodebookDecodeKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    float* out = context.GetOutput(0, dims_).GetTensorMutableData<float>();
    int error = onnxcomp_cuda_codebook_decode(context.GetGPUComputeStream(), indices_.get<uint8_t>(), slot_,
                                              table_.get<float>(), scales(), count_, outlier_positions_.get<uint64_t>(),
                                              outlier_values_.get<float>(), outlier_count_, out);
    return error ? CudaError(error, "CodebookDecode launch") : nullptr;
  });
}

// ---- CodebookMatMul ---------------------------------------------------------------------------------------

CudaCodebookMatMulKernel::CudaCodebookMatMulKernel() : CudaRecordKernel(CodebookMatMulOp::kName, 1, MatrixRecord) {}

OrtStatus* CudaCodebookMatMulKernel::Init(const OrtKernelInfo* info) {
  return GuardStatus(this, [&]() -> OrtStatus* {
    std::unique_ptr<const DecodedRecord> record;
    if (OrtStatus* status = InitRecord(info, &record)) return status;
    PackedMatrix matrix;
    PackMatrix(*record, &matrix);
    record.reset();
    k_ = matrix.k;
    n_ = matrix.n;
    slot_ = matrix.slot_bits;
    if (int error = panels_.Upload(matrix.panels.data(), matrix.panels.size())) {
      return CudaError(error, "uploading the packed weight");
    }
    for (int error : {correction_start_.UploadVector(matrix.correction_start),
                      correction_row_.UploadVector(matrix.correction_row),
                      correction_delta_.UploadVector(matrix.correction_delta)}) {
      if (error) return CudaError(error, "uploading the outlier corrections");
    }
    return nullptr;
  });
}

OrtStatus* CudaCodebookMatMulKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue x = context.GetInput(0);
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != k_) {
      return Error("X shape " + ShapeToString(shape) + " does not end in K = " + std::to_string(k_));
    }
    const float* bias = nullptr;
    if (context.GetInputCount() > 2) {
      Ort::ConstValue bias_value = context.GetInput(2);
      if (bias_value != nullptr) {
        if (bias_value.GetTensorTypeAndShapeInfo().GetShape() != std::vector<int64_t>{n_}) {
          return Error("bias shape is not [N] = [" + std::to_string(n_) + "]");
        }
        bias = bias_value.GetTensorData<float>();
      }
    }
    int64_t m = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) m *= shape[i];
    shape.back() = n_;
    float* y = context.GetOutput(0, shape).GetTensorMutableData<float>();
    int error = onnxcomp_cuda_codebook_matmul(context.GetGPUComputeStream(), x.GetTensorData<float>(), m, k_, n_,
                                              panels_.get<uint8_t>(), slot_, table_.get<float>(), scales(), bias,
                                              correction_start_.get<int64_t>(), correction_row_.get<int64_t>(),
                                              correction_delta_.get<float>(), y);
    return error ? CudaError(error, "CodebookMatMul launch") : nullptr;
  });
}

// ---- CodebookGather ---------------------------------------------------------------------------------------

CudaCodebookGatherKernel::CudaCodebookGatherKernel() : CudaRecordKernel(CodebookGatherOp::kName, 0, TableRecord) {}

OrtStatus* CudaCodebookGatherKernel::Init(const OrtKernelInfo* info) {
  return GuardStatus(this, [&]() -> OrtStatus* {
    std::unique_ptr<const DecodedRecord> record;
    if (OrtStatus* status = InitRecord(info, &record)) return status;
    dims_ = record->dims;
    slot_ = record->slot_bits;
    int64_t one_hot = 0;
    OptionalAttribute(Ort::ConstKernelInfo(info), "one_hot", &one_hot);
    if (one_hot < 0 || one_hot > 2) return Error("attribute one_hot must be 0, 1 or 2, got " + std::to_string(one_hot));
    outside_ = static_cast<OutsideRows>(one_hot);
    if (int error = indices_.Upload(record->indices.data(), record->indices.size())) {
      return CudaError(error, "uploading the indices");
    }
    if (!record->outlier_positions.empty()) {
      // Row r's outliers start at the first position >= r * row_size (positions are sorted).
      const uint64_t rows = static_cast<uint64_t>(dims_[0]);
      const uint64_t row_size = rows ? static_cast<uint64_t>(record->num_elements) / rows : 0;
      std::vector<int64_t> row_start(rows + 1, 0);
      size_t j = 0;
      for (uint64_t r = 0; r <= rows; ++r) {
        while (j < record->outlier_positions.size() && record->outlier_positions[j] < r * row_size) ++j;
        row_start[r] = static_cast<int64_t>(j);
      }
      row_start[rows] = static_cast<int64_t>(record->outlier_positions.size());
      for (int error : {outlier_row_start_.UploadVector(row_start), outlier_positions_.UploadVector(record->outlier_positions),
                        outlier_values_.UploadVector(record->outlier_values)}) {
        if (error) return CudaError(error, "uploading outliers");
      }
    }
    return nullptr;
  });
}

OrtStatus* CudaCodebookGatherKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue positions = context.GetInput(1);  // host memory (GetInputMemoryType)
    auto positions_info = positions.GetTensorTypeAndShapeInfo();
    const ONNXTensorElementDataType type = positions_info.GetElementType();
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      return Error("indices must be int32 or int64");
    }
    const int64_t count = static_cast<int64_t>(positions_info.GetElementCount());
    const int64_t rows = dims_[0];
    std::vector<int64_t> shape = positions_info.GetShape();
    int64_t row_size = 1;
    for (size_t i = 1; i < dims_.size(); ++i) {
      row_size *= dims_[i];
      shape.push_back(dims_[i]);
    }
    std::vector<int64_t> checked(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      int64_t row = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ? positions.GetTensorData<int32_t>()[i]
                                                                : positions.GetTensorData<int64_t>()[i];
      if (outside_ != OutsideRows::kError &&
          (row >= rows || row < (outside_ == OutsideRows::kZeroEqual ? int64_t{0} : -rows))) {
        checked[static_cast<size_t>(i)] = -1;  // a row of zeros
        continue;
      }
      if (row < -rows || row >= rows) {
        return Error("index " + std::to_string(row) + " at position " + std::to_string(i) + " outside [" +
                     std::to_string(-rows) + ", " + std::to_string(rows) + ")");
      }
      checked[static_cast<size_t>(i)] = row < 0 ? row + rows : row;
    }
    float* out = context.GetOutput(0, shape).GetTensorMutableData<float>();
    int error = onnxcomp_cuda_codebook_gather(context.GetGPUComputeStream(), indices_.get<uint8_t>(), slot_,
                                              table_.get<float>(), scales(), checked.data(), count, row_size,
                                              outlier_row_start_.get<int64_t>(), outlier_positions_.get<uint64_t>(),
                                              outlier_values_.get<float>(), outside_ != OutsideRows::kError, out);
    return error ? CudaError(error, "CodebookGather launch") : nullptr;
  });
}

}  // namespace onnxcomp
