// MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool and nearest Resize of domain ai.onnxcomp: the ONNX ops
// whose input and output may be in onnxruntime's NCHWc layout, so that PackWeightsPass can keep a pool or an
// upsampling between CodebookConv nodes inside the blocked region (onnxruntime's NCHWc transformer converts these
// ops for a dense model, but cannot look through the custom CodebookConv). The pools run onnxruntime's own kernels
// (CreateOp/InvokeOp): its NCHWc pools on blocked tensors, its ONNX pools otherwise; Resize copies values (nearest
// neighbour with integer scales), so every path gives the same values. The rule is documented in docs/ops.md.
#include <string.h>

#include <algorithm>
#include <cmath>

#include "cpu/ops.h"

namespace onnxcomp {

namespace {

constexpr const char kNchwcDomain[] = "com.microsoft.nchwc";
const int64_t kStorageOrder = 0;  // MaxPool's (row-major Indices; no Indices output here)

const char* KindName(SpatialKind kind) {
  switch (kind) {
    case SpatialKind::kMaxPool: return "MaxPool";
    case SpatialKind::kAveragePool: return "AveragePool";
    case SpatialKind::kGlobalMaxPool: return "GlobalMaxPool";
    case SpatialKind::kGlobalAveragePool: return "GlobalAveragePool";
    case SpatialKind::kResize: return "Resize";
  }
  return "";
}

bool Global(SpatialKind kind) {
  return kind == SpatialKind::kGlobalMaxPool || kind == SpatialKind::kGlobalAveragePool;
}

}  // namespace

template <SpatialKind kKind>
const char* const BlockedSpatialOp<kKind>::kName = KindName(kKind);
template struct BlockedSpatialOp<SpatialKind::kMaxPool>;
template struct BlockedSpatialOp<SpatialKind::kAveragePool>;
template struct BlockedSpatialOp<SpatialKind::kGlobalMaxPool>;
template struct BlockedSpatialOp<SpatialKind::kGlobalAveragePool>;
template struct BlockedSpatialOp<SpatialKind::kResize>;

BlockedSpatialKernel::BlockedSpatialKernel(SpatialKind kind)
    : RecordKernel(KindName(kind), kNoRecordInput, nullptr), kind_(kind) {}

OrtStatus* BlockedSpatialKernel::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::ConstKernelInfo kernel_info(info);
    int64_t storage_order = 0;
    OptionalAttribute(kernel_info, "auto_pad", &auto_pad_);
    OptionalAttribute(kernel_info, "ceil_mode", &ceil_mode_);
    OptionalAttribute(kernel_info, "count_include_pad", &count_include_pad_);
    OptionalAttribute(kernel_info, "storage_order", &storage_order);
    OptionalAttribute(kernel_info, "nchwc_input", &nchwc_input_);
    OptionalAttribute(kernel_info, "nchwc_output", &nchwc_output_);
    const std::pair<const char*, std::vector<int64_t>*> lists[] = {
        {"dilations", &dilations_}, {"kernel_shape", &kernel_shape_}, {"pads", &pads_}, {"strides", &strides_}};
    for (const auto& [name, values] : lists) {
      try {
        *values = kernel_info.GetAttributes<int64_t>(name);
      } catch (const Ort::Exception&) {
      }
    }
    if (nchwc_input_ < 0 || nchwc_input_ > 2 || nchwc_output_ < 0 || nchwc_output_ > 2) {
      return Error("nchwc_input and nchwc_output must be 0, 1 or 2, got " + std::to_string(nchwc_input_) + " and " +
                   std::to_string(nchwc_output_));
    }
    if (kind_ == SpatialKind::kResize && nchwc_input_ != nchwc_output_) {
      return Error("nchwc_input and nchwc_output must agree for Resize");
    }
    const int64_t block = NchwcBlockSize();
    auto blocked = [block](int64_t value) -> int64_t { return block > 1 && (value == 1 || (value == 2 && block == 8)); };
    nchwc_input_ = blocked(nchwc_input_);
    nchwc_output_ = blocked(nchwc_output_);

    if (kind_ == SpatialKind::kResize) {
      std::string mode = "nearest", transform = "half_pixel", nearest = "round_prefer_floor";
      OptionalAttribute(kernel_info, "mode", &mode);
      OptionalAttribute(kernel_info, "coordinate_transformation_mode", &transform);
      OptionalAttribute(kernel_info, "nearest_mode", &nearest);
      if (mode != "nearest" || transform != "asymmetric" || nearest != "floor") {
        return Error("only mode 'nearest' with coordinate_transformation_mode 'asymmetric' and nearest_mode 'floor' "
                     "is supported");
      }
      const size_t count = kernel_info.GetInputCount();
      if (count < 3 || kernel_info.GetInputName(2).empty() || (count > 3 && !kernel_info.GetInputName(3).empty())) {
        return Error("needs a constant scales input (input 2) and no sizes input");
      }
      int is_constant = 0;
      Ort::ConstValue value = kernel_info.GetTensorConstantInput(2, &is_constant);
      if (!is_constant) return Error("the scales input must be a constant initializer");
      auto shape_info = value.GetTensorTypeAndShapeInfo();
      if (shape_info.GetElementCount() != 4) return Error("scales must hold 4 values (N, C, H, W)");
      const float* scales = value.GetTensorData<float>();
      for (size_t i = 0; i < 4; ++i) {
        const float s = scales[i];
        if (!(s >= 1.0f && s <= 65536.0f) || static_cast<float>(static_cast<int64_t>(s)) != s || (i < 2 && s != 1.0f)) {
          return Error("scales must be integers >= 1, and 1 for N and C");
        }
        scales_.push_back(static_cast<int64_t>(s));
      }
      block_ = nchwc_input_ ? block : 1;
      return nullptr;
    }

    if (storage_order != 0) return Error("storage_order must be 0");
    if (!Global(kind_)) {
      if (auto_pad_ != "NOTSET") return Error("auto_pad must be NOTSET (explicit pads), got '" + auto_pad_ + "'");
      if (kernel_shape_.size() != 2 || (!pads_.empty() && pads_.size() != 4) ||
          (!strides_.empty() && strides_.size() != 2) || (!dilations_.empty() && dilations_.size() != 2)) {
        return Error("a 2-D pool needs kernel_shape of 2 values and pads, strides, dilations of 4, 2, 2 if given");
      }
      for (size_t i = 0; i < 2; ++i) {
        if (kernel_shape_[i] < 1 || (!strides_.empty() && strides_[i] < 1) ||
            (!dilations_.empty() && dilations_[i] < 1) || (!pads_.empty() && (pads_[i] < 0 || pads_[i + 2] < 0))) {
          return Error("kernel_shape, strides and dilations must be >= 1 and pads >= 0");
        }
      }
    }
    std::vector<Ort::OpAttr> attrs;
    if (!Global(kind_)) {
      attrs.emplace_back("auto_pad", auto_pad_.c_str(), static_cast<int>(auto_pad_.size()),
                         OrtOpAttrType::ORT_OP_ATTR_STRING);
      attrs.emplace_back("ceil_mode", &ceil_mode_, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
      if (kind_ == SpatialKind::kAveragePool) {
        attrs.emplace_back("count_include_pad", &count_include_pad_, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
      } else {
        attrs.emplace_back("storage_order", &kStorageOrder, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
      }
      for (const auto& [name, values] : lists) {
        if (!values->empty()) {
          attrs.emplace_back(name, values->data(), static_cast<int>(values->size()), OrtOpAttrType::ORT_OP_ATTR_INTS);
        }
      }
    }
    const char* type_names[] = {"T"};
    const ONNXTensorElementDataType type_values[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    const int version = kind_ == SpatialKind::kMaxPool ? 12
                        : kind_ == SpatialKind::kAveragePool ? (dilations_.empty() ? 11 : 19) : 1;
    try {
      standard_op_ = Ort::Op::Create(info, KindName(kind_), "", version, type_names, type_values, 1, attrs.data(),
                                     attrs.size(), 1, 1);
    } catch (const Ort::Exception& e) {
      return Error(std::string("this onnxruntime cannot run its own ") + KindName(kind_) + " (CreateOp failed: " +
                   e.what() + ")");
    }
    if (block > 1 && (nchwc_input_ || nchwc_output_)) {
      try {
        blocked_op_ = Ort::Op::Create(info, KindName(kind_), kNchwcDomain, 1, type_names, type_values, 1,
                                      attrs.data(), attrs.size(), 1, 1);
        const int64_t zero = 0;
        Ort::OpAttr input_attrs[] = {Ort::OpAttr("channels_last", &zero, 1, OrtOpAttrType::ORT_OP_ATTR_INT)};
        reorder_input_op_ = Ort::Op::Create(info, "ReorderInput", kNchwcDomain, 1, type_names, type_values, 1,
                                            input_attrs, 1, 1, 1);
      } catch (const Ort::Exception& e) {
        return Error(std::string("nchwc_input/nchwc_output need onnxruntime's NCHWc ") + KindName(kind_) +
                     " (CreateOp failed: " + e.what() + ")");
      }
      block_ = block;
    }
    return nullptr;
  });
}

OrtStatus* BlockedSpatialKernel::OutputShape(const std::vector<int64_t>& x, std::vector<int64_t>* y) const {
  if (x.size() != 4) return Error("X must have rank 4 ([N, C, H, W]), got shape " + ShapeToString(x));
  for (int64_t d : x) {
    if (d < 0) return Error("X has a negative dim: " + ShapeToString(x));
  }
  *y = x;
  if (kind_ == SpatialKind::kResize) {
    for (size_t i = 2; i < 4; ++i) (*y)[i] = x[i] * scales_[i];
    return nullptr;
  }
  if (Global(kind_)) {
    (*y)[2] = (*y)[3] = 1;
    return nullptr;
  }
  for (size_t i = 0; i < 2; ++i) {
    const int64_t stride = strides_.empty() ? 1 : strides_[i];
    const int64_t dilation = dilations_.empty() ? 1 : dilations_[i];
    const int64_t pad_begin = pads_.empty() ? 0 : pads_[i], pad_end = pads_.empty() ? 0 : pads_[i + 2];
    // onnxruntime's rule (PoolAttributes): the division truncates toward zero, so a window a little larger than
    // the padded input still gives one output; ceil_mode rounds up, but the last window must start inside the
    // input or its leading padding.
    const int64_t span = x[i + 2] + pad_begin + pad_end - dilation * (kernel_shape_[i] - 1) - 1;
    int64_t out;
    if (ceil_mode_) {
      out = static_cast<int64_t>(std::ceil(static_cast<double>(span) / static_cast<double>(stride))) + 1;
      if ((out - 1) * stride >= x[i + 2] + pad_begin) --out;
    } else {
      out = span / stride + 1;
    }
    if (out < 0) return Error("the pooling window is larger than the padded input " + ShapeToString(x));
    (*y)[i + 2] = out;
  }
  return nullptr;
}

void BlockedSpatialKernel::Upsample(const float* x, const std::vector<int64_t>& x_shape, int64_t b, float* y) const {
  const int64_t planes = x_shape[0] * x_shape[1] / b, h = x_shape[2], w = x_shape[3];
  const int64_t sh = scales_[2], sw = scales_[3], out_w = w * sw;
  for (int64_t p = 0; p < planes; ++p) {
    const float* plane = x + p * h * w * b;
    float* out = y + p * h * sh * out_w * b;
    for (int64_t row = 0; row < h; ++row) {
      float* first = out + row * sh * out_w * b;
      const float* source = plane + row * w * b;
      for (int64_t col = 0; col < w; ++col) {
        for (int64_t k = 0; k < sw; ++k) memcpy(first + (col * sw + k) * b, source + col * b, sizeof(float) * b);
      }
      for (int64_t k = 1; k < sh; ++k) memcpy(first + k * out_w * b, first, sizeof(float) * out_w * b);
    }
  }
}

void BlockedSpatialKernel::ReorderOutput(const float* x, const std::vector<int64_t>& shape, float* y) const {
  const int64_t b = block_, blocks = shape[1] / b, area = shape[2] * shape[3];
  for (int64_t n = 0; n < shape[0]; ++n) {
    for (int64_t cb = 0; cb < blocks; ++cb) {
      const float* source = x + (n * blocks + cb) * area * b;
      float* target = y + (n * shape[1] + cb * b) * area;
      for (int64_t i = 0; i < area; ++i) {
        for (int64_t k = 0; k < b; ++k) target[k * area + i] = source[i * b + k];
      }
    }
  }
}

OrtStatus* BlockedSpatialKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> x_shape = x.GetTensorTypeAndShapeInfo().GetShape();
    std::vector<int64_t> y_shape;
    if (OrtStatus* status = OutputShape(x_shape, &y_shape)) return status;
    Ort::UnownedValue y = context.GetOutput(0, y_shape);
    for (int64_t d : y_shape) {
      if (d == 0) return nullptr;
    }
    const bool blocked = nchwc_input_ || nchwc_output_;
    if (blocked && x_shape[1] % (block_ > 1 ? block_ : 1) != 0) {
      return Error("a blocked X needs a multiple of " + std::to_string(block_) + " channels, got shape " +
                   ShapeToString(x_shape));
    }
    if (kind_ == SpatialKind::kResize) {
      Upsample(x.GetTensorData<float>(), x_shape, block_, y.GetTensorMutableData<float>());
      return nullptr;
    }
    if (!blocked || block_ == 1) {
      const OrtValue* in[] = {x};
      OrtValue* out[] = {y};
      standard_op_.Invoke(raw_context, in, 1, out, 1);
      return nullptr;
    }
    RunAllocator allocator(context);
    Ort::Value blocked_x{nullptr};
    const OrtValue* pool_input = x;
    if (!nchwc_input_) {
      blocked_x = Ort::Value::CreateTensor<float>(allocator.get(), x_shape.data(), x_shape.size());
      const OrtValue* in[] = {x};
      OrtValue* out[] = {blocked_x};
      reorder_input_op_.Invoke(raw_context, in, 1, out, 1);
      pool_input = blocked_x;
    }
    if (nchwc_output_) {
      const OrtValue* in[] = {pool_input};
      OrtValue* out[] = {y};
      blocked_op_.Invoke(raw_context, in, 1, out, 1);
      return nullptr;
    }
    Ort::Value blocked_y = Ort::Value::CreateTensor<float>(allocator.get(), y_shape.data(), y_shape.size());
    {
      const OrtValue* in[] = {pool_input};
      OrtValue* out[] = {blocked_y};
      blocked_op_.Invoke(raw_context, in, 1, out, 1);
    }
    ReorderOutput(blocked_y.GetTensorData<float>(), y_shape, y.GetTensorMutableData<float>());
    return nullptr;
  });
}

}  // namespace onnxcomp
