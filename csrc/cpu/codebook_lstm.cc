// CodebookLSTM: ONNX LSTM whose W, R (and optionally B) inputs are weight records. Each constant record is
// decoded once, at kernel creation, into a dense float32 working copy (outliers included, through
// DecodedRecord::decode_range), and every run invokes onnxruntime's own LSTM kernel on those copies through the
// C API (CreateOp/InvokeOp), so its outputs are exactly onnxruntime's LSTM on the decoded weights. What it
// replaces: a CodebookDecode per weight feeding a standard LSTM, which copied the weights out in every run and
// kept the constant-folding of any Slice/Concat chain in between from happening (docs/ops.md).
#include <string.h>

#include "cpu/ops.h"

namespace onnxcomp {

namespace {

constexpr const char* kWeightNames[] = {"W", "R", "B"};

std::string AnyRecord(const DecodedRecord&) { return {}; }  // dims are checked per input (CheckDims)

// True when the node carries attribute `name` (of any type): reading it as one string either succeeds or fails
// with a type mismatch rather than "not found". Used for the string-list attribute `activations`, which the C
// API cannot read.
bool HasAttribute(const Ort::ConstKernelInfo& info, const char* name) {
  try {
    info.GetAttribute<std::string>(name);
    return true;
  } catch (const Ort::Exception& e) {
    const std::string message = e.what();
    return message.find("No attribute") == std::string::npos && message.find("not found") == std::string::npos;
  }
}

}  // namespace

CodebookLstmKernel::CodebookLstmKernel() : RecordKernel(CodebookLstmOp::kName, kNoRecordInput, AnyRecord) {}

OrtStatus* CodebookLstmKernel::CheckDims(size_t input, const std::vector<int64_t>& dims) const {
  const int64_t rows = (input == 3 ? 8 : 4) * hidden_size_;
  const size_t rank = input == 3 ? 2 : 3;
  bool ok = dims.size() == rank && dims[0] == directions_ && dims[1] == rows;
  if (ok && input == 2) ok = dims[2] == hidden_size_;
  if (ok) return nullptr;
  std::string expected = "[" + std::to_string(directions_) + ", " + std::to_string(rows);
  expected += input == 1 ? ", input_size]" : input == 2 ? ", " + std::to_string(hidden_size_) + "]" : "]";
  return Error(std::string(kWeightNames[input - 1]) + " has dims " + ShapeToString(dims) + ", expected " + expected +
               " (directions " + std::to_string(directions_) + ", hidden_size " + std::to_string(hidden_size_) + ")");
}

OrtStatus* CodebookLstmKernel::Decode(size_t input, const Ort::ConstValue& value, LstmWeight* weight) const {
  DecodedRecord record;
  if (OrtStatus* status = DecodeInput(value, record)) return status;
  if (OrtStatus* status = CheckDims(input, record.dims)) return status;
  weight->dims = record.dims;
  weight->working.resize(static_cast<size_t>(record.num_elements));
  record.decode_range(0, static_cast<uint64_t>(record.num_elements), weight->working.data());
  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
  weight->value = Ort::Value::CreateTensor<float>(memory, weight->working.data(), weight->working.size(),
                                                  weight->dims.data(), weight->dims.size());
  return nullptr;
}

OrtStatus* CodebookLstmKernel::Init(const OrtKernelInfo* info) {
  if (OrtStatus* status = RecordKernel::Init(info)) return status;
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::ConstKernelInfo kernel_info(info);
    std::string direction = "forward";
    float clip = 0.0f;
    bool has_clip = false;
    int64_t input_forget = 0;
    OptionalAttribute(kernel_info, "hidden_size", &hidden_size_);
    OptionalAttribute(kernel_info, "direction", &direction);
    OptionalAttribute(kernel_info, "input_forget", &input_forget);
    OptionalAttribute(kernel_info, "layout", &layout_);
    try {
      clip = kernel_info.GetAttribute<float>("clip");
      has_clip = true;
    } catch (const Ort::Exception&) {
    }
    if (hidden_size_ < 1) return Error("attribute hidden_size must be given and >= 1");
    if (direction != "forward" && direction != "reverse" && direction != "bidirectional") {
      return Error("direction '" + direction + "' is not forward, reverse or bidirectional");
    }
    if (layout_ != 0) {  // onnxruntime's CPU LSTM, which every run invokes, has no batch-major layout
      return Error("layout " + std::to_string(layout_) + " is not supported (layout 0 only, as onnxruntime's LSTM)");
    }
    for (const char* name : {"activations", "activation_alpha", "activation_beta"}) {
      if (HasAttribute(kernel_info, name)) {
        return Error(std::string("attribute ") + name + " is not supported (the default activations only)");
      }
    }
    directions_ = direction == "bidirectional" ? 2 : 1;

    const size_t inputs = kernel_info.GetInputCount();
    input_count_ = 3;
    for (size_t i = 3; i < inputs && i < 8; ++i) {
      if (!kernel_info.GetInputName(i).empty()) input_count_ = i + 1;
    }
    for (size_t i = 1; i <= 3; ++i) {
      LstmWeight& weight = weights_[i - 1];
      weight.present = i < inputs && !kernel_info.GetInputName(i).empty();
      if (!weight.present) continue;
      const ONNXTensorElementDataType type =
          kernel_info.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
      if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        return Error(std::string(kWeightNames[i - 1]) + " must be a uint8 record or float32");
      }
      weight.record = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      int is_constant = 0;
      Ort::ConstValue value = kernel_info.GetTensorConstantInput(i, &is_constant);
      weight.constant = is_constant && value != nullptr;
      if (weight.record && weight.constant) {
        if (OrtStatus* status = Decode(i, value, &weight)) return status;
      }
    }
    for (size_t i = 0; i < 3; ++i) {
      output_present_[i] = i < kernel_info.GetOutputCount() && !kernel_info.GetOutputName(i).empty();
    }

    std::vector<Ort::OpAttr> attrs;
    attrs.emplace_back("hidden_size", &hidden_size_, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("direction", direction.c_str(), static_cast<int>(direction.size()), OrtOpAttrType::ORT_OP_ATTR_STRING);
    attrs.emplace_back("input_forget", &input_forget, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("layout", &layout_, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    if (has_clip) attrs.emplace_back("clip", &clip, 1, OrtOpAttrType::ORT_OP_ATTR_FLOAT);
    const char* type_names[] = {"T", "T1"};
    const ONNXTensorElementDataType type_values[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                     ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    try {
      lstm_op_ = Ort::Op::Create(info, "LSTM", "", 14, type_names, type_values, 2, attrs.data(), attrs.size(),
                                 input_count_, 3);
    } catch (const Ort::Exception& e) {
      return Error(std::string("this onnxruntime cannot run its own LSTM for the node (CreateOp failed: ") + e.what() + ")");
    }
    return nullptr;
  });
}

OrtStatus* CodebookLstmKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> x_shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (x_shape.size() != 3) return Error("X must have rank 3, got shape " + ShapeToString(x_shape));
    const int64_t seq = layout_ == 0 ? x_shape[0] : x_shape[1];
    const int64_t batch = layout_ == 0 ? x_shape[1] : x_shape[0];

    const OrtValue* inputs[8] = {x, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    LstmWeight run_weights[3];  // records that are not constants, decoded in this run
    for (size_t i = 1; i <= 3; ++i) {
      const LstmWeight& weight = weights_[i - 1];
      if (!weight.present) continue;
      if (weight.record && weight.constant) {
        inputs[i] = weight.value;
      } else if (weight.record) {
        if (OrtStatus* status = Decode(i, context.GetInput(i), &run_weights[i - 1])) return status;
        inputs[i] = run_weights[i - 1].value;
      } else {
        inputs[i] = context.GetInput(i);
      }
    }
    for (size_t i = 4; i < input_count_; ++i) inputs[i] = context.GetInput(i);

    const std::vector<int64_t> shapes[3] = {
        layout_ == 0 ? std::vector<int64_t>{seq, directions_, batch, hidden_size_}
                     : std::vector<int64_t>{batch, seq, directions_, hidden_size_},
        layout_ == 0 ? std::vector<int64_t>{directions_, batch, hidden_size_}
                     : std::vector<int64_t>{batch, directions_, hidden_size_},
        layout_ == 0 ? std::vector<int64_t>{directions_, batch, hidden_size_}
                     : std::vector<int64_t>{batch, directions_, hidden_size_}};
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    OrtAllocator* allocator = context.GetAllocator(*memory.GetConst());
    Ort::Value scratch[3] = {Ort::Value(nullptr), Ort::Value(nullptr), Ort::Value(nullptr)};
    OrtValue* outputs[3] = {nullptr, nullptr, nullptr};
    for (size_t i = 0; i < 3; ++i) {
      if (output_present_[i]) {
        outputs[i] = context.GetOutput(i, shapes[i]);
      } else {  // onnxruntime's LSTM is given all three outputs; the node's absent ones go to scratch
        scratch[i] = Ort::Value::CreateTensor<float>(allocator, shapes[i].data(), shapes[i].size());
        outputs[i] = scratch[i];
      }
    }
    if (batch == 0) return nullptr;
    lstm_op_.Invoke(raw_context, inputs, input_count_, outputs, 3);
    return nullptr;
  });
}

}  // namespace onnxcomp
