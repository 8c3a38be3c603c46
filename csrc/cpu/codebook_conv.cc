// CodebookConv: the record (or a dense float32 / float16 weight) is read once, at kernel creation, into a working
// weight (one dense float copy of the layer, per-output-channel scale folded in), and the convolution itself runs in onnxruntime's own kernels,
// invoked through the C API (CreateOp/InvokeOp): its blocked-layout NCHWc convolution where the layer qualifies,
// else its Conv (or FusedConv when an activation is fused). The rule is documented in docs/ops.md.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <optional>

#include "cpu/ops.h"

namespace onnxcomp {

// The channel block of onnxruntime's NCHWc kernels on this CPU (MLAS: 16 with AVX-512F, else 8 on x86-64), or
// 1 where this library does not use them (other CPUs, or ONNXCOMP_CONV=ort).
int64_t NchwcBlockSize() {
  const char* mode = getenv("ONNXCOMP_CONV");
  if (mode && strcmp(mode, "ort") == 0) return 1;
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") ? 16 : 8;
#else
  return 1;
#endif
}

int64_t RoundUp(int64_t value, int64_t block) { return (value + block - 1) / block * block; }

namespace {

// Extra floats the blocked working weight carries so that it can start at a 64-byte boundary, and that boundary.
constexpr size_t kWeightAlignFloats = 16;
float* AlignedWeight(float* buffer) {
  const uintptr_t misaligned = reinterpret_cast<uintptr_t>(buffer) % (kWeightAlignFloats * sizeof(float));
  return misaligned == 0 ? buffer : buffer + (kWeightAlignFloats * sizeof(float) - misaligned) / sizeof(float);
}

constexpr const char kNchwcDomain[] = "com.microsoft.nchwc";
// WinogradPlan::m when F(2x2) or F(4x4) is chosen in each run (RunWinograd), and the tiles of 4x4 outputs per run
// from which it is F(4x4) (bench/winograd_layers.py, docs/benchmarks.md).
constexpr int kWinogradByRule = 1;
constexpr int64_t kWinogradLargeTiles = 64;
constexpr double kWinogradLargeU = double(8 << 20);
// Multiply-adds from which a Winograd layer splits its work over onnxruntime's thread pool.
constexpr double kConvParallelWork = double(1 << 18);
constexpr const char kMicrosoftDomain[] = "com.microsoft";
// A Conv (group 1) with at least a block of input channels, not a multiple of the block but of this, still takes
// the NCHWc path: ReorderInput pads X's channels with zeros to the block (as onnxruntime does for such a dense Conv).
constexpr int64_t kNchwcChannelAlignment = 4;

std::string ConvRecord(const DecodedRecord& record) {
  if (record.dims.size() < 3) {
    return "the record must have rank >= 3 (dims [O, I/group, k...]), got dims " + ShapeToString(record.dims);
  }
  return {};
}

bool IsKnownActivation(const std::string& name) {
  return name == "Relu" || name == "Tanh" || name == "Sigmoid" || name == "LeakyRelu" || name == "Clip" ||
         name == "HardSigmoid" || name == "HardSwish";
}


// OIHW -> the NCHWc filter layouts of onnxruntime's blocked convolution, output channels padded with zeros to a
// multiple of `block`: with `blocked_input`, [O/B][I/B][k][bi][bo] (OIHWBiBo; input channels padded with zeros to a
// multiple of B too), else [O/B][I][k][bo] (OIHWBo: depthwise, or an NCHW input with fewer than B channels).
void ReorderFilter(const float* w, int64_t o_count, int64_t i_count, int64_t kernel, int64_t block,
                   bool blocked_input, float* out) {
  const int64_t o_blocks = RoundUp(o_count, block) / block;
  const int64_t i_stride = i_count * kernel;
  // One row of `block` output channels at input channel i and kernel position k: a strided copy of the valid
  // channels, zeros after them (no test per element: session creation reorders every filter of the model).
  auto row = [&](int64_t ob, int64_t i, int64_t k) {
    const int64_t o_valid = std::min(block, o_count - ob * block);
    if (i >= i_count) {
      std::fill(out, out + block, 0.0f);
    } else {
      const float* source = w + ob * block * i_stride + i * kernel + k;
      for (int64_t bo = 0; bo < o_valid; ++bo) out[bo] = source[bo * i_stride];
      std::fill(out + o_valid, out + block, 0.0f);
    }
    out += block;
  };
  if (blocked_input) {
    const int64_t i_blocks = RoundUp(i_count, block) / block;
    for (int64_t ob = 0; ob < o_blocks; ++ob)
      for (int64_t ib = 0; ib < i_blocks; ++ib)
        for (int64_t k = 0; k < kernel; ++k)
          for (int64_t bi = 0; bi < block; ++bi) row(ob, ib * block + bi, k);
  } else {
    for (int64_t ob = 0; ob < o_blocks; ++ob)
      for (int64_t i = 0; i < i_count; ++i)
        for (int64_t k = 0; k < kernel; ++k) row(ob, i, k);
  }
}

// Multiplies each output channel's values (rows of `weight`, [O, ...] row-major) by scale[o]; empty: none.
void ScaleChannels(const std::vector<float>& scale, int64_t o_count, std::vector<float>* weight) {
  if (scale.empty() || o_count == 0) return;
  const int64_t per_channel = static_cast<int64_t>(weight->size()) / o_count;
  for (int64_t o = 0; o < o_count; ++o) {
    float* row = weight->data() + o * per_channel;
    for (int64_t j = 0; j < per_channel; ++j) row[j] *= scale[static_cast<size_t>(o)];
  }
}

// Dense working weight: record values times scale[o] (scale may be empty).
void DenseWeight(const DecodedRecord& record, const std::vector<float>& scale, std::vector<float>* out) {
  out->resize(static_cast<size_t>(record.num_elements));
  record.decode_range(0, static_cast<uint64_t>(record.num_elements), out->data());
  if (record.dims[0] != 0) ScaleChannels(scale, record.dims[0], out);
}

// IEEE-754 binary16 -> binary32, exact for every value, infinities and NaNs included (a dense weight is the
// model's own tensor: it is widened as it is, as onnxruntime's Cast would).
float HalfToFloat(uint16_t h) {
  if (((h >> 10) & 0x1Fu) != 0x1Fu) return half_bits_to_float(h);
  return bits_to_float((uint32_t{h & 0x8000u} << 16) | 0x7F800000u | (uint32_t{h & 0x3FFu} << 13));
}

template <typename T>
void OptionalAttributes(const Ort::ConstKernelInfo& info, const char* name, std::vector<T>* value) {
  try {
    *value = info.GetAttributes<T>(name);
  } catch (const Ort::Exception&) {
  }
}

// A float tensor input of shape [count] given at kernel creation, or absent.
struct ChannelVector {
  bool present = false, constant = false;
  std::vector<float> values;
};

// With `broadcast`, a constant of shape [1] is also accepted and repeated `count` times (a scale that is one
// number for every channel, as a folded scalar Mul writes it).
OrtStatus* ReadChannelVector(const RecordKernel& kernel, const Ort::ConstKernelInfo& info, size_t index,
                             const char* what, int64_t count, ChannelVector* out, bool broadcast = false) {
  if (info.GetInputCount() <= index || info.GetInputName(index).empty()) return nullptr;
  out->present = true;
  int is_constant = 0;
  Ort::ConstValue value = info.GetTensorConstantInput(index, &is_constant);
  if (!is_constant || value == nullptr) return nullptr;
  out->constant = true;
  auto shape = value.GetTensorTypeAndShapeInfo().GetShape();
  const float* data = value.GetTensorData<float>();
  if (broadcast && shape == std::vector<int64_t>{1}) {
    out->values.assign(static_cast<size_t>(count), data[0]);
    return nullptr;
  }
  if (shape != std::vector<int64_t>{count}) {
    return kernel.Error(std::string(what) + " shape " + ShapeToString(shape) + " is not [O] = [" +
                        std::to_string(count) + "]" + (broadcast ? " or [1]" : ""));
  }
  out->values.assign(data, data + count);
  return nullptr;
}

}  // namespace

CodebookConvKernel::CodebookConvKernel() : RecordKernel(CodebookConvOp::kName, 1, ConvRecord) {}

OrtStatus* CodebookConvKernel::ReadDenseWeight(const Ort::ConstKernelInfo& info, ONNXTensorElementDataType type,
                                               std::vector<float>* dense) {
  int is_constant = 0;
  Ort::ConstValue value = info.GetTensorConstantInput(1, &is_constant);
  if (!is_constant || value == nullptr) {
    return Error("a float32 or float16 weight input must be a constant initializer (else use Conv)");
  }
  auto shape_info = value.GetTensorTypeAndShapeInfo();
  weight_dims_ = shape_info.GetShape();
  if (weight_dims_.size() < 3) {
    return Error("the weight must have rank >= 3 (dims [O, I/group, k...]), got dims " + ShapeToString(weight_dims_));
  }
  const size_t count = shape_info.GetElementCount();
  dense->resize(count);
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    const float* data = value.GetTensorData<float>();
    std::copy(data, data + count, dense->data());
  } else {
    const uint16_t* data = reinterpret_cast<const uint16_t*>(value.GetTensorRawData());
    for (size_t i = 0; i < count; ++i) (*dense)[i] = HalfToFloat(data[i]);
  }
  return nullptr;
}

OrtStatus* CodebookConvKernel::ReadAttributes(const Ort::ConstKernelInfo& info) {
  ConvAttributes& a = attributes_;
  OptionalAttribute(info, "auto_pad", &a.auto_pad);
  OptionalAttribute(info, "group", &a.group);
  OptionalAttribute(info, "activation", &a.activation);
  OptionalAttributes(info, "dilations", &a.dilations);
  OptionalAttributes(info, "kernel_shape", &a.kernel_shape);
  OptionalAttributes(info, "pads", &a.pads);
  OptionalAttributes(info, "strides", &a.strides);
  OptionalAttributes(info, "activation_params", &a.activation_params);
  OptionalAttribute(info, "nchwc_input", &a.nchwc_input);
  OptionalAttribute(info, "nchwc_output", &a.nchwc_output);
  if (a.auto_pad != "NOTSET" && a.auto_pad != "VALID" && a.auto_pad != "SAME_UPPER" && a.auto_pad != "SAME_LOWER") {
    return Error("auto_pad '" + a.auto_pad + "' is not NOTSET, VALID, SAME_UPPER or SAME_LOWER");
  }
  if (a.group < 1) return Error("group must be >= 1, got " + std::to_string(a.group));
  if (a.nchwc_input < 0 || a.nchwc_input > 2 || a.nchwc_output < 0 || a.nchwc_output > 2) {
    return Error("nchwc_input and nchwc_output must be 0, 1 or 2, got " + std::to_string(a.nchwc_input) + " and " +
                 std::to_string(a.nchwc_output));
  }
  // The layout on this CPU: 1 = blocked under every channel block, 2 = blocked only under blocks of 8 (docs/ops.md).
  const int64_t block = NchwcBlockSize();
  auto blocked = [block](int64_t value) -> int64_t { return block > 1 && (value == 1 || (value == 2 && block == 8)); };
  a.nchwc_input = blocked(a.nchwc_input);
  a.nchwc_output = blocked(a.nchwc_output);
  if (!a.activation.empty() && !IsKnownActivation(a.activation)) {
    return Error("activation '" + a.activation + "' is not Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid or HardSwish");
  }
  return nullptr;
}

OrtStatus* CodebookConvKernel::CheckWeight(const std::vector<int64_t>& w) const {
  const ConvAttributes& a = attributes_;
  const size_t spatial = w.size() - 2;
  if (w[0] % a.group != 0) {
    return Error("output channels " + std::to_string(w[0]) + " are not a multiple of group " + std::to_string(a.group));
  }
  if ((!a.kernel_shape.empty() && (a.kernel_shape.size() != spatial ||
                                   !std::equal(a.kernel_shape.begin(), a.kernel_shape.end(), w.begin() + 2))) ||
      (!a.dilations.empty() && a.dilations.size() != spatial) || (!a.strides.empty() && a.strides.size() != spatial) ||
      (!a.pads.empty() && a.pads.size() != 2 * spatial)) {
    return Error("kernel_shape, dilations, strides or pads do not fit the weight dims " + ShapeToString(w));
  }
  for (size_t i = 0; i < spatial; ++i) {
    if ((!a.dilations.empty() && a.dilations[i] < 1) || (!a.strides.empty() && a.strides[i] < 1) ||
        (!a.pads.empty() && (a.pads[i] < 0 || a.pads[i + spatial] < 0))) {
      return Error("dilations and strides must be >= 1 and pads >= 0");
    }
  }
  return nullptr;
}

OrtStatus* CodebookConvKernel::OutputShape(const std::vector<int64_t>& weight_dims, const std::vector<int64_t>& x,
                                           std::vector<int64_t>* y) const {
  const size_t spatial = weight_dims.size() - 2;
  const ConvAttributes& a = attributes_;
  if (x.size() != spatial + 2 || x[1] != weight_dims[1] * a.group) {
    return Error("X shape " + ShapeToString(x) + " does not fit the weight dims " + ShapeToString(weight_dims) +
                 " with group " + std::to_string(a.group) + " (expected [N, " +
                 std::to_string(weight_dims[1] * a.group) + ", " + std::to_string(spatial) + " spatial dims])");
  }
  y->assign({x[0], weight_dims[0]});
  for (size_t i = 0; i < spatial; ++i) {
    const int64_t kernel = weight_dims[2 + i];
    const int64_t dilation = a.dilations.empty() ? 1 : a.dilations[i];
    const int64_t stride = a.strides.empty() ? 1 : a.strides[i];
    const int64_t extent = (kernel - 1) * dilation + 1;
    int64_t out;
    if (a.auto_pad == "SAME_UPPER" || a.auto_pad == "SAME_LOWER") {
      out = (x[2 + i] + stride - 1) / stride;
    } else {
      const int64_t pad = (a.auto_pad == "VALID" || a.pads.empty()) ? 0 : a.pads[i] + a.pads[i + spatial];
      const int64_t span = x[2 + i] + pad - extent;
      out = span < 0 ? 0 : span / stride + 1;
    }
    if (out <= 0 && x[2 + i] > 0) {
      return Error("X shape " + ShapeToString(x) + " is too small for the kernel " + ShapeToString(weight_dims));
    }
    y->push_back(out);
  }
  return nullptr;
}

OrtStatus* CodebookConvKernel::CreateOps(const OrtKernelInfo* info) {
  const ConvAttributes& a = attributes_;
  std::vector<Ort::OpAttr> attrs;
  attrs.emplace_back("auto_pad", a.auto_pad.c_str(), static_cast<int>(a.auto_pad.size()), OrtOpAttrType::ORT_OP_ATTR_STRING);
  attrs.emplace_back("group", path_ == ConvPath::kNchwc ? &nchwc_group_ : &a.group, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
  const std::pair<const char*, const std::vector<int64_t>*> lists[] = {
      {"dilations", &a.dilations}, {"kernel_shape", &a.kernel_shape}, {"pads", &a.pads}, {"strides", &a.strides}};
  for (const auto& [name, values] : lists) {
    if (!values->empty()) {
      attrs.emplace_back(name, values->data(), static_cast<int>(values->size()), OrtOpAttrType::ORT_OP_ATTR_INTS);
    }
  }
  if (!a.activation.empty()) {
    attrs.emplace_back("activation", a.activation.c_str(), static_cast<int>(a.activation.size()),
                       OrtOpAttrType::ORT_OP_ATTR_STRING);
    if (!a.activation_params.empty()) {
      attrs.emplace_back("activation_params", a.activation_params.data(), static_cast<int>(a.activation_params.size()),
                         OrtOpAttrType::ORT_OP_ATTR_FLOATS);
    }
  }
  const char* type_names[] = {"T"};
  const ONNXTensorElementDataType type_values[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  if (path_ == ConvPath::kNchwc) {
    try {
      conv_op_ = Ort::Op::Create(info, "Conv", kNchwcDomain, 1, type_names, type_values, 1, attrs.data(), attrs.size(),
                                 static_cast<size_t>(conv_inputs_), 1);
      const int64_t zero = 0, channels = weight_dims_[0];
      Ort::OpAttr input_attrs[] = {Ort::OpAttr("channels_last", &zero, 1, OrtOpAttrType::ORT_OP_ATTR_INT)};
      if (reorder_input_) {
        reorder_input_op_ = Ort::Op::Create(info, "ReorderInput", kNchwcDomain, 1, type_names, type_values, 1,
                                            input_attrs, 1, 1, 1);
      }
      Ort::OpAttr output_attrs[] = {Ort::OpAttr("channels", &channels, 1, OrtOpAttrType::ORT_OP_ATTR_INT),
                                    Ort::OpAttr("channels_last", &zero, 1, OrtOpAttrType::ORT_OP_ATTR_INT)};
      reorder_output_op_ = Ort::Op::Create(info, "ReorderOutput", kNchwcDomain, 1, type_names, type_values, 1,
                                           output_attrs, 2, 1, 1);
      return nullptr;
    } catch (const Ort::Exception&) {
      return nullptr;  // this onnxruntime has no NCHWc kernels: the caller falls back to the dense path
    }
  }
  try {
    if (a.activation.empty()) {
      conv_op_ = Ort::Op::Create(info, "Conv", "", 11, type_names, type_values, 1, attrs.data(), attrs.size(),
                                 static_cast<size_t>(conv_inputs_), 1);
    } else {
      conv_op_ = Ort::Op::Create(info, "FusedConv", kMicrosoftDomain, 1, type_names, type_values, 1, attrs.data(),
                                 attrs.size(), static_cast<size_t>(conv_inputs_), 1);
    }
  } catch (const Ort::Exception& e) {
    return Error(std::string("this onnxruntime cannot run its own ") + (a.activation.empty() ? "Conv" : "FusedConv") +
                 " for the layer (CreateOp failed: " + e.what() + ")");
  }
  return nullptr;
}

OrtStatus* CodebookConvKernel::Init(const OrtKernelInfo* info) {
  ONNXTensorElementDataType weight_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  try {
    weight_type = Ort::ConstKernelInfo(info).GetInputTypeInfo(1).GetTensorTypeAndShapeInfo().GetElementType();
  } catch (const Ort::Exception&) {
  }
  const bool dense_weight = weight_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  if (dense_weight) NoRecordInput();
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::ConstKernelInfo kernel_info(info);
    if (OrtStatus* status = ReadAttributes(kernel_info)) return status;
    if (dense_weight && weight_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT &&
        weight_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
      return Error("the weight input must be a uint8 record or a float32 or float16 tensor");
    }
    std::vector<float> dense;
    std::unique_ptr<const DecodedRecord> record;
    if (dense_weight) {
      if (OrtStatus* status = ReadDenseWeight(kernel_info, weight_type, &dense)) return status;
    } else {
      record = TakeConstant();
    }
    const bool blocked_edges = attributes_.nchwc_input == 1 || attributes_.nchwc_output == 1;
    if (!record && !dense_weight) {
      if (blocked_edges) {
        return Error("nchwc_input and nchwc_output need a constant record input");
      }
      // The record is not a constant: every run decodes it and runs onnxruntime's Conv (kOrt) on the result.
      if (kernel_info.GetInputCount() > 3 && !kernel_info.GetInputName(3).empty()) {
        return Error("the scale input needs a constant record input");
      }
      bias_is_constant_ = false;
      conv_inputs_ = kernel_info.GetInputCount() > 2 && !kernel_info.GetInputName(2).empty() ? 3 : 2;
      path_ = ConvPath::kOrt;
      return CreateOps(info);
    }
    if (record) weight_dims_ = record->dims;
    if (OrtStatus* status = CheckWeight(weight_dims_)) return status;
    const int64_t o_count = weight_dims_[0], i_count = weight_dims_[1];
    const ConvAttributes& a = attributes_;
    const size_t spatial = weight_dims_.size() - 2;
    ChannelVector bias, scale;
    if (OrtStatus* status = ReadChannelVector(*this, kernel_info, 2, "bias", o_count, &bias)) return status;
    if (OrtStatus* status = ReadChannelVector(*this, kernel_info, 3, "scale", o_count, &scale, true)) return status;
    if (scale.present && !scale.constant) return Error("the scale input must be a constant initializer");
    scale_ = scale.values;
    bias_is_constant_ = !bias.present || bias.constant;
    conv_inputs_ = bias.present ? 3 : 2;

    if (record) {
      DenseWeight(*record, scale_, &dense);
      record.reset();  // the working weight replaces the decoded indices
    } else {
      ScaleChannels(scale_, o_count, &dense);
    }

    // The rule: the NCHWc path when onnxruntime's graph optimiser would use it for the same dense Conv
    // (2-D, channel counts fitting its blocks, constant bias), else onnxruntime's Conv/FusedConv.
    const int64_t block = NchwcBlockSize();
    bool nchwc = block > 1 && spatial == 2 && bias_is_constant_;
    bool blocked_input = true;
    const bool depthwise = a.group > 1 && i_count == 1 && o_count == a.group;
    if (nchwc && depthwise) {
      // Depthwise: channels off the block (a multiple of 4, as ReorderInput pads X) are padded to it, the filter
      // and the group alike, as onnxruntime's NCHWc transformer pads such a dense Conv (ppocr-cls's 24- to
      // 200-channel layers under blocks of 16); the padded channels read zeros and are dropped by ReorderOutput.
      blocked_input = false;
      if (o_count % block != 0 && (o_count % kNchwcChannelAlignment != 0 || a.nchwc_input == 1)) nchwc = false;
    } else if (nchwc && a.group > 1) {
      if (o_count % block != 0 || i_count % block != 0 || (o_count / a.group) % block != 0) nchwc = false;
    } else if (nchwc) {
      if (i_count < block) {
        blocked_input = false;
      } else if (i_count % block != 0 && i_count % kNchwcChannelAlignment != 0) {
        nchwc = false;  // else ReorderInput pads X's channels with zeros to the block, the filter alike
      }
    }
    if (blocked_edges) {
      // The pass marks only layers that take the NCHWc path under the block sizes it marks them for (channel
      // counts multiples of 16, or of 8 for value 2); anything else cannot read or write the blocked layout.
      const bool input_ok = attributes_.nchwc_input != 1 ||
                            (nchwc && (a.group > 1 || (blocked_input && i_count % block == 0)));
      if (!nchwc || !input_ok || (attributes_.nchwc_output == 1 && o_count % block != 0)) {
        return Error("nchwc_input/nchwc_output set on a layer that cannot run onnxruntime's NCHWc convolution "
                     "with blocked input and output (weight dims " + ShapeToString(weight_dims_) + ", group " +
                     std::to_string(a.group) + ", channel block " + std::to_string(block) + ")");
      }
    }
    if (nchwc) {
      const int64_t kernel = weight_dims_[2] * weight_dims_[3];
      path_ = ConvPath::kNchwc;
      block_ = block;
      reorder_input_ = blocked_input || a.group > 1;
      const int64_t o_padded = RoundUp(o_count, block);
      i_padded_ = a.group == 1 && blocked_input ? RoundUp(i_count, block) : i_count;
      nchwc_group_ = depthwise ? o_padded : a.group;
      // The blocked filter starts at a 64-byte boundary, as onnxruntime's own reordered filters do: a large
      // std::vector comes from mmap 16 bytes past a page, so every 64-byte filter vector the NCHWc kernel loads
      // would straddle two cache lines.
      weight_count_ = static_cast<size_t>(o_padded * i_padded_ * kernel);
      weight_.assign(weight_count_ + kWeightAlignFloats, 0.0f);
      weight_data_ = AlignedWeight(weight_.data());
      if (blocked_input && a.group == 1) PlanWinograd(o_count, i_count);
      if (depthwise || (a.group == 1 && !blocked_input)) PlanDepthwise(depthwise);
      // Winograd keeps the filter as OIHWBo ([O/16][C][3][3][16]), which its per-run transform reads.
      // (Blocks of 8 keep onnxruntime's OIHWBiBo for both: a run with few tiles takes the direct convolution.)
      ReorderFilter(dense.data(), o_count, i_count, kernel, block,
                    blocked_input && (winograd_.m == 0 || block == kWinogradBlockAvx2), weight_data_);
      if (bias.present) {
        bias_ = bias.values;
        bias_.resize(static_cast<size_t>(o_padded), 0.0f);
      }
      if (OrtStatus* status = CreateOps(info)) return status;
      if (!conv_op_ || !reorder_output_op_ || (reorder_input_ && !reorder_input_op_)) {
        path_ = ConvPath::kOrt;  // no NCHWc kernels in this onnxruntime
        winograd_ = WinogradPlan();
        conv_op_ = Ort::Op(nullptr);
        reorder_input_op_ = Ort::Op(nullptr);
        reorder_output_op_ = Ort::Op(nullptr);
      }
    }
    if (path_ == ConvPath::kOrt) {
      weight_ = std::move(dense);
      weight_data_ = weight_.data();
      weight_count_ = weight_.size();
      if (bias.constant) bias_ = bias.values;
      if (OrtStatus* status = CreateOps(info)) return status;
      const char* direct = getenv("ONNXCOMP_CONV_DIRECT");  // "0": never (read at kernel creation)
      if (spatial == 1 && a.group == 1 && bias_is_constant_ && (a.auto_pad == "NOTSET" || a.auto_pad == "VALID") &&
          (a.activation.empty() || a.activation == "Relu") && !(direct && strcmp(direct, "0") == 0)) {
        dot_kernel_ = DotKernelFor(SelectIsa());
      }
    }
    std::vector<float>().swap(dense);
    std::vector<int64_t> stored_dims = weight_dims_;
    if (path_ == ConvPath::kNchwc) {
      stored_dims[0] = RoundUp(o_count, block_);
      stored_dims[1] = i_padded_;
    }
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    weight_value_ = Ort::Value::CreateTensor<float>(memory, weight_data_, weight_count_, stored_dims.data(),
                                                    stored_dims.size());
    if (!bias_.empty()) {
      const int64_t bias_dims[] = {static_cast<int64_t>(bias_.size())};
      bias_value_ = Ort::Value::CreateTensor<float>(memory, bias_.data(), bias_.size(), bias_dims, 1);
    }
    return nullptr;
  });
}

OrtStatus* CodebookConvKernel::ComputeDirect(const float* x, const std::vector<int64_t>& x_shape,
                                             const std::vector<int64_t>& y_shape, float* y) const {
  const ConvAttributes& a = attributes_;
  const int64_t channels = x_shape[1], length = x_shape[2], outputs = y_shape[1], positions = y_shape[2];
  const int64_t kernel = weight_dims_[2], taps = channels * kernel;
  const int64_t dilation = a.dilations.empty() ? 1 : a.dilations[0];
  const int64_t stride = a.strides.empty() ? 1 : a.strides[0];
  const int64_t pad = a.auto_pad == "VALID" || a.pads.empty() ? 0 : a.pads[0];
  const int64_t stride_cols = RoundUp(taps, 16);
  // cols[t][c * kernel + k] = X[n, c, t * stride + k * dilation - pad] (0 in the padding): the row of W[o] it meets
  std::vector<float> cols(static_cast<size_t>(positions * stride_cols), 0.0f);
  for (int64_t n = 0; n < y_shape[0]; ++n) {
    const float* xn = x + n * channels * length;
    for (int64_t t = 0; t < positions; ++t) {
      float* col = cols.data() + t * stride_cols;
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t k = 0; k < kernel; ++k) {
          const int64_t at = t * stride + k * dilation - pad;
          col[c * kernel + k] = at >= 0 && at < length ? xn[c * length + at] : 0.0f;
        }
      }
    }
    float* yn = y + n * outputs * positions;
    dot_kernel_(DotProblem{weight_data_, outputs, taps, cols.data(), positions, stride_cols, yn, positions});
    const bool relu = a.activation == "Relu";
    for (int64_t o = 0; o < outputs; ++o) {
      const float b = bias_.empty() ? 0.0f : bias_[static_cast<size_t>(o)];
      for (int64_t t = 0; t < positions; ++t) {
        float v = yn[o * positions + t];
        if (!bias_.empty()) v += b;
        yn[o * positions + t] = relu && v < 0.0f ? 0.0f : v;
      }
    }
  }
  return nullptr;
}

OrtStatus* CodebookConvKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> x_shape = x.GetTensorTypeAndShapeInfo().GetShape();

    // A record that is not a constant: decode it in this run.
    const OrtValue* weight = weight_value_;
    if (!weight) {
      DecodedRecord decoded;
      const DecodedRecord* record;
      if (OrtStatus* status = GetRecord(context, decoded, &record)) return status;
      if (OrtStatus* status = CheckWeight(record->dims)) return status;
      std::vector<float> run_weight;
      DenseWeight(*record, {}, &run_weight);
      Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
      Ort::Value run_weight_value = Ort::Value::CreateTensor<float>(memory, run_weight.data(), run_weight.size(),
                                                         record->dims.data(), record->dims.size());
      std::vector<int64_t> y_shape;
      if (OrtStatus* status = OutputShape(record->dims, x_shape, &y_shape)) return status;
      Ort::UnownedValue y = context.GetOutput(0, y_shape);
      for (int64_t d : y_shape) {
        if (d == 0) return nullptr;
      }
      const OrtValue* inputs[] = {x, run_weight_value, context.GetInput(2)};
      OrtValue* outputs[] = {y};
      conv_op_.Invoke(raw_context, inputs, static_cast<size_t>(conv_inputs_), outputs, 1);
      return nullptr;
    }

    std::vector<int64_t> y_shape;
    if (OrtStatus* status = OutputShape(weight_dims_, x_shape, &y_shape)) return status;
    Ort::UnownedValue y = context.GetOutput(0, y_shape);
    for (int64_t d : y_shape) {
      if (d == 0) return nullptr;
    }
    const OrtValue* bias = bias_value_;
    if (!bias_is_constant_) bias = context.GetInput(2);

    if (dot_kernel_ && y_shape[0] * y_shape[2] <= kDirectPositions) {
      return ComputeDirect(x.GetTensorData<float>(), x_shape, y_shape, y.GetTensorMutableData<float>());
    }
    if (path_ == ConvPath::kOrt) {
      const OrtValue* inputs[] = {x, weight, bias};
      OrtValue* outputs[] = {y};
      conv_op_.Invoke(raw_context, inputs, static_cast<size_t>(conv_inputs_), outputs, 1);
      return nullptr;
    }
    (void)weight;
    const bool reorder_input = reorder_input_ && attributes_.nchwc_input != 1;
    std::optional<RunAllocator> allocator;  // only when a scratch tensor is needed
    if (reorder_input || attributes_.nchwc_output != 1) allocator.emplace(context);
    Ort::Value blocked_x{nullptr};
    const OrtValue* conv_input = x;
    if (reorder_input) {
      std::vector<int64_t> shape = x_shape;
      shape[1] = RoundUp(shape[1], block_);
      blocked_x = Ort::Value::CreateTensor<float>(allocator->get(), shape.data(), shape.size());
      const OrtValue* in[] = {x};
      OrtValue* out[] = {blocked_x};
      reorder_input_op_.Invoke(raw_context, in, 1, out, 1);
      conv_input = blocked_x;
    }
    if (attributes_.nchwc_output == 1) {  // Y is blocked already (O is a multiple of the block)
      BlockedConv(raw_context, conv_input, bias, y, x_shape, y_shape);
      return nullptr;
    }
    std::vector<int64_t> blocked_y_shape = y_shape;
    blocked_y_shape[1] = RoundUp(y_shape[1], block_);
    Ort::Value blocked_y =
        Ort::Value::CreateTensor<float>(allocator->get(), blocked_y_shape.data(), blocked_y_shape.size());
    BlockedConv(raw_context, conv_input, bias, blocked_y, x_shape, y_shape);
    const OrtValue* in[] = {blocked_y};
    OrtValue* out[] = {y};
    reorder_output_op_.Invoke(raw_context, in, 1, out, 1);
    return nullptr;
  });
}

void CodebookConvKernel::BlockedConv(OrtKernelContext* context, const OrtValue* x, const OrtValue* bias,
                                     OrtValue* y, const std::vector<int64_t>& x_shape,
                                     const std::vector<int64_t>& y_shape) {
  if (winograd_.m != 0 && (block_ == kWinogradBlock || winograd_.m != kWinogradByRule || WinogradTilesPay(y_shape))) {
    return RunWinograd(context, x, y);
  }
  if (depthwise_ && RunDepthwise(context, x, y, x_shape, y_shape)) return;
  const OrtValue* inputs[] = {x, weight_value_, bias};
  OrtValue* outputs[] = {y};
  conv_op_.Invoke(context, inputs, static_cast<size_t>(conv_inputs_), outputs, 1);
}

namespace {

// The Winograd layers (docs/ops.md, "How it runs"): ONNXCOMP_WINOGRAD=0 turns them off, =2 or =4 forces F(2x2) or
// F(4x4) on every layer that qualifies; ONNXCOMP_WINOGRAD_TILES=T sets the tiles per block (for timing).
int WinogradSetting() {
  const char* value = getenv("ONNXCOMP_WINOGRAD");
  if (!value || !*value) return -1;
  if (strcmp(value, "0") == 0) return 0;
  if (strcmp(value, "2") == 0) return 2;
  if (strcmp(value, "4") == 0) return 4;
  return -1;
}

// Tiles per block: 12 (one register tile of rows) while U = alpha^2 * C * O floats fits in 8 MiB, then 12 more per
// 8 MiB, so that each pass over U (which streams from L3 or memory) serves enough tiles.
int64_t WinogradTilesSetting() {
  const char* value = getenv("ONNXCOMP_WINOGRAD_TILES");
  const long tiles = value ? strtol(value, nullptr, 10) : 0;
  return tiles >= 1 && tiles <= 4096 ? tiles : 0;
}

int64_t WinogradBlockTiles(int m, int64_t c, int64_t o, int64_t setting) {
  if (setting > 0) return setting;
  const double u_bytes = 4.0 * (m + 2) * (m + 2) * double(c) * double(o);
  return 12 * std::max<int64_t>(1, static_cast<int64_t>(ceil(u_bytes / double(8 << 20))));
}

struct WinogradWeightsTask {
  const WinogradPlan* plan;
  int m;
  const float* filter;
  int64_t c, o;
  float* u;
};

void RunWinogradWeights(void* data, size_t ob) {
  const WinogradWeightsTask& t = *static_cast<const WinogradWeightsTask*>(data);
  t.plan->weights(t.m, t.filter, t.c, t.o, static_cast<int64_t>(ob), static_cast<int64_t>(ob) + 1, t.u);
}

struct WinogradBlocksTask {
  const WinogradPlan* plan;
  const WinogradProblem* problem;
};

// Each pool thread keeps its block scratch (V and M of one block) between runs: at most a few MiB per thread.
float* WinogradScratch(int64_t floats) {
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(floats) + kWeightAlignFloats) {
    std::vector<float>().swap(scratch);  // the old buffer first: never both at once
    scratch.assign(static_cast<size_t>(floats) + kWeightAlignFloats, 0.0f);
  }
  return AlignedWeight(scratch.data());
}

void RunWinogradBlock(void* data, size_t block) {
  const WinogradBlocksTask& t = *static_cast<const WinogradBlocksTask*>(data);
  t.plan->block(*t.problem, static_cast<int64_t>(block), WinogradScratch(t.problem->scratch_floats()));
}

}  // namespace

void CodebookConvKernel::PlanWinograd(int64_t o_count, int64_t i_count) {
  const ConvAttributes& a = attributes_;
  const int setting = WinogradSetting();
  // Blocks of 16 (AVX-512F CPUs) or of 8 (AVX2 CPUs, onnxruntime's NCHWc block there): the same arithmetic per
  // output channel, so the same bits either way.
  if (setting == 0 || (block_ != kWinogradBlock && block_ != kWinogradBlockAvx2) || weight_dims_.size() != 4 ||
      weight_dims_[2] != 3 || weight_dims_[3] != 3 || a.group != 1 || i_count % block_ != 0 || o_count % block_ != 0 ||
      (a.auto_pad != "NOTSET" && a.auto_pad != "VALID")) {
    return;
  }
  for (int64_t s : a.strides) {
    if (s != 1) return;
  }
  for (int64_t d : a.dilations) {
    if (d != 1) return;
  }
  WinogradPlan plan;
  if (a.activation == "Relu") {
    plan.activation = WinogradActivation::kRelu;
  } else if (a.activation == "LeakyRelu" && a.activation_params.size() == 1) {
    plan.activation = WinogradActivation::kLeakyRelu;
    plan.alpha = a.activation_params[0];
  } else if (a.activation == "Clip" && a.activation_params.size() == 2) {
    plan.activation = WinogradActivation::kClip;
    plan.alpha = a.activation_params[0];
    plan.beta = a.activation_params[1];
  } else if (!a.activation.empty()) {
    return;  // the others stay with onnxruntime's fused activations
  }
  plan.m = setting > 0 ? setting : kWinogradByRule;
  plan.block_tiles = WinogradTilesSetting();
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
  if (block_ == kWinogradBlock && SelectIsa() == Isa::kAvx512) {
    plan.block = WinogradBlockAvx512;
    plan.weights = WinogradWeightsAvx512;
  }
#endif
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
  if (block_ == kWinogradBlockAvx2 && SelectIsa() == Isa::kAvx2) {
    plan.block = WinogradBlockAvx2;
    plan.weights = WinogradWeightsAvx2;
  }
#endif
  if (!plan.block) {
    plan.block = block_ == kWinogradBlock ? WinogradBlockScalar : WinogradBlockScalar8;
    plan.weights = block_ == kWinogradBlock ? WinogradWeightsScalar : WinogradWeightsScalar8;
  }
  winograd_ = plan;
}

// Blocks of 8 (AVX2 CPUs), m by the rule (not forced by ONNXCOMP_WINOGRAD): the Winograd convolution in a run of at
// least kWinogradLargeTiles tiles of 4x4 outputs, else onnxruntime's direct one. With 8-lane vectors the transforms
// and U's passes through memory weigh more against the saved multiply-adds than with 16: on a 512-channel 15 x 15
// layer (vgg16's last, 16 tiles at batch 1, U of 36 MiB) the Winograd layer measured 1.6x onnxruntime's time; from
// 64 tiles on it was faster on every synthetic layer tried (docs/benchmarks.md, branch `avx2speed`).
bool CodebookConvKernel::WinogradTilesPay(const std::vector<int64_t>& y_shape) const {
  return y_shape[0] * ((y_shape[2] + 3) / 4) * ((y_shape[3] + 3) / 4) >= kWinogradLargeTiles;
}

void CodebookConvKernel::RunWinograd(OrtKernelContext* raw_context, const OrtValue* x_value,
                                     OrtValue* y_value) {
  Ort::KernelContext context(raw_context);
  Ort::ConstValue x(x_value);
  Ort::UnownedValue y(y_value);
  const std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> ys = y.GetTensorTypeAndShapeInfo().GetShape();
  const int64_t o = weight_dims_[0], c = weight_dims_[1];
  // F(4x4) from kWinogradLargeTiles tiles of 4x4 outputs per run, else F(2x2): U is transformed in every run, and
  // F(4x4)'s costs 36 / 16 of F(2x2)'s, which its fewer products repay only over enough tiles; but also where
  // F(2x2)'s U exceeds kWinogradLargeU bytes: both then stream U from L3 or memory, F(2x2) in more passes (more
  // blocks of tiles) than F(4x4) (vgg16's 512-channel layers at 15 x 15: 16 tiles).
  int m = winograd_.m;
  if (m == kWinogradByRule) {
    const bool many_tiles = xs[0] * ((ys[2] + 3) / 4) * ((ys[3] + 3) / 4) >= kWinogradLargeTiles;
    m = many_tiles || 16.0 * 4.0 * double(c) * double(o) > kWinogradLargeU ? 4 : 2;
  }
  const int64_t alpha = m + 2;
  const bool valid = attributes_.auto_pad == "VALID" || attributes_.pads.empty();
  WinogradProblem p{};
  p.m = m;
  p.x = x.GetTensorData<float>();
  p.n = xs[0];
  p.c = c;
  p.h = xs[2];
  p.w = xs[3];
  p.o = o;
  p.pad_top = valid ? 0 : attributes_.pads[0];
  p.pad_left = valid ? 0 : attributes_.pads[1];
  p.out_h = ys[2];
  p.out_w = ys[3];
  p.bias = bias_.empty() ? nullptr : bias_.data();
  p.activation = winograd_.activation;
  p.activation_alpha = winograd_.alpha;
  p.activation_beta = winograd_.beta;
  p.y = y.GetTensorMutableData<float>();
  p.block_tiles = WinogradBlockTiles(m, c, o, winograd_.block_tiles);

  // U, transformed from the filter in this run (alpha^2 / 9 of the filter's floats) into the calling thread's
  // buffer, which keeps the largest U of the session's layers between runs (a fresh allocation of megabytes
  // would fault its pages in again in every run).
  thread_local std::vector<float> u_buffer;
  const size_t u_floats = static_cast<size_t>(alpha * alpha * o * c) + kWeightAlignFloats;
  if (u_buffer.size() < u_floats) {
    std::vector<float>().swap(u_buffer);  // the old buffer first: never both at once
    u_buffer.assign(u_floats, 0.0f);
  }
  float* u_data = AlignedWeight(u_buffer.data());
  p.u = u_data;
  const double work = double(alpha * alpha) * double(p.tiles()) * double(c) * double(o);
  const bool parallel = work >= kConvParallelWork;
  WinogradWeightsTask weights{&winograd_, m, weight_data_, c, o, u_data};
  const int64_t o_blocks = o / block_;
  if (parallel && o_blocks > 1) {
    context.ParallelFor(RunWinogradWeights, static_cast<size_t>(o_blocks), 0, &weights);
  } else {
    for (int64_t ob = 0; ob < o_blocks; ++ob) RunWinogradWeights(&weights, static_cast<size_t>(ob));
  }
  WinogradBlocksTask blocks{&winograd_, &p};
  const int64_t count = p.blocks();
  if (parallel && count > 1) {
    context.ParallelFor(RunWinogradBlock, static_cast<size_t>(count), 0, &blocks);
  } else {
    for (int64_t b = 0; b < count; ++b) RunWinogradBlock(&blocks, static_cast<size_t>(b));
  }
}

// Paths 1b and 1c (docs/ops.md, "How it runs"): a depthwise layer of the NCHWc path (or, 1c, one with group 1 and
// an NCHW input of fewer channels than the block) with blocks of 16 or 8 (1c: 8 only under ONNXCOMP_NCHW_INPUT=1),
// explicit pads and no activation or one the kernels apply runs the library's kernel (cpu/depthwise.h) on the same X
// and blocked Y; ONNXCOMP_DEPTHWISE=0 and ONNXCOMP_NCHW_INPUT=0 (read at kernel creation) leave them to
// onnxruntime's NCHWc Conv.
void CodebookConvKernel::PlanDepthwise(bool depthwise) {
  const ConvAttributes& a = attributes_;
  const char* setting = getenv(depthwise ? "ONNXCOMP_DEPTHWISE" : "ONNXCOMP_NCHW_INPUT");
  if ((setting && strcmp(setting, "0") == 0) || (block_ != kDepthwiseBlock && block_ != kDepthwiseBlockAvx2) ||
      weight_dims_.size() != 4 || (a.auto_pad != "NOTSET" && a.auto_pad != "VALID")) {
    return;
  }
  // Path 1c with blocks of 8 (AVX2 CPUs) only under ONNXCOMP_NCHW_INPUT=1: its kernel measured slower there than
  // onnxruntime's (pplcnet-orientation's first layer, 3 -> 16 channels at stride 2: 615 us against 454; branch
  // `avx2speed`), while the depthwise kernel on blocks of 8 was faster.
  if (!depthwise && block_ == kDepthwiseBlockAvx2 && !(setting && strcmp(setting, "1") == 0)) return;
  const std::vector<float>& params = a.activation_params;
  if (a.activation.empty()) {
    depthwise_activation_ = DepthwiseActivation::kNone;
  } else if (a.activation == "Relu") {
    depthwise_activation_ = DepthwiseActivation::kRelu;
  } else if (a.activation == "LeakyRelu" && params.size() == 1) {
    depthwise_activation_ = DepthwiseActivation::kLeakyRelu;
  } else if (a.activation == "Clip" && params.size() == 2) {
    depthwise_activation_ = DepthwiseActivation::kClip;
  } else if (a.activation == "HardSigmoid" && params.size() == 2) {
    depthwise_activation_ = DepthwiseActivation::kHardSigmoid;
  } else if (a.activation == "HardSwish") {
    depthwise_activation_ = DepthwiseActivation::kHardSwish;
  } else {
    return;  // Tanh, Sigmoid and forms without their parameters stay with onnxruntime's fused activations
  }
  depthwise_alpha_ = params.size() > 0 ? params[0] : 0.0f;
  depthwise_beta_ = params.size() > 1 ? params[1] : 0.0f;
  nchw_input_ = !depthwise;
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
  if (block_ == kDepthwiseBlock && SelectIsa() == Isa::kAvx512) {
    depthwise_ = depthwise ? DepthwiseAvx512 : NchwInputAvx512;
  }
#endif
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
  if (block_ == kDepthwiseBlockAvx2 && SelectIsa() == Isa::kAvx2) {
    depthwise_ = depthwise ? DepthwiseAvx2 : NchwInputAvx2;
  }
#endif
  if (!depthwise_ && block_ == kDepthwiseBlock) depthwise_ = depthwise ? DepthwiseScalar : NchwInputScalar;
  if (!depthwise_) depthwise_ = depthwise ? DepthwiseScalar8 : NchwInputScalar8;
}

namespace {

// Interior output positions a row needs for the library's depthwise kernel (one group of its interior loop).
constexpr int64_t kDepthwiseMinInterior = 8;

struct DepthwiseTask {
  DepthwiseKernel kernel;
  const DepthwiseProblem* problem;
};

void RunDepthwiseTask(void* data, size_t task) {
  const DepthwiseTask& t = *static_cast<const DepthwiseTask*>(data);
  t.kernel(*t.problem, static_cast<int64_t>(task));
}

}  // namespace

bool CodebookConvKernel::RunDepthwise(OrtKernelContext* raw_context, const OrtValue* x_value, OrtValue* y_value,
                                      const std::vector<int64_t>& xs, const std::vector<int64_t>& ys) {
  Ort::KernelContext context(raw_context);
  Ort::ConstValue x(x_value);
  Ort::UnownedValue y(y_value);
  const ConvAttributes& a = attributes_;
  const bool valid = a.auto_pad == "VALID" || a.pads.empty();
  DepthwiseProblem p{};
  p.x = x.GetTensorData<float>();
  p.n = xs[0];
  p.blocks = RoundUp(ys[1], block_) / block_;  // X and Y padded to the block
  p.channels = nchw_input_ ? xs[1] : 0;
  p.h = xs[2];
  p.w = xs[3];
  p.kernel_h = weight_dims_[2];
  p.kernel_w = weight_dims_[3];
  p.stride_h = a.strides.empty() ? 1 : a.strides[0];
  p.stride_w = a.strides.empty() ? 1 : a.strides[1];
  p.dilation_h = a.dilations.empty() ? 1 : a.dilations[0];
  p.dilation_w = a.dilations.empty() ? 1 : a.dilations[1];
  p.pad_top = valid ? 0 : a.pads[0];
  p.pad_left = valid ? 0 : a.pads[1];
  p.out_h = ys[2];
  p.out_w = ys[3];
  // Only rows with a whole group of kDepthwiseMinInterior interior positions (all taps inside the row): on narrower
  // rows (pplcnet's 5x5 layers at 7 x 7) the per-position edge chains measured slower than onnxruntime's kernel.
  if (p.interior_end() - p.interior_begin() < kDepthwiseMinInterior) return false;
  p.filter = weight_data_;
  p.bias = bias_.empty() ? nullptr : bias_.data();
  p.activation = depthwise_activation_;
  p.alpha = depthwise_alpha_;
  p.beta = depthwise_beta_;
  p.y = y.GetTensorMutableData<float>();
  // Tasks of about 2^14 multiply-adds' worth of rows (at least one row) once the layer is worth splitting.
  const double row_work =
      double(p.out_w) * double(p.kernel_h * p.kernel_w * std::max<int64_t>(1, p.channels)) * double(block_);
  const double work = row_work * double(p.out_h) * double(p.n * p.blocks);
  const bool parallel = work >= kConvParallelWork;
  p.rows_per_task = parallel ? std::max<int64_t>(1, static_cast<int64_t>(double(1 << 14) / row_work)) : p.out_h;
  DepthwiseTask task{depthwise_, &p};
  const int64_t count = p.tasks();
  if (parallel && count > 1) {
    context.ParallelFor(RunDepthwiseTask, static_cast<size_t>(count), 0, &task);
  } else {
    for (int64_t t = 0; t < count; ++t) RunDepthwiseTask(&task, static_cast<size_t>(t));
  }
  return true;
}

}  // namespace onnxcomp
