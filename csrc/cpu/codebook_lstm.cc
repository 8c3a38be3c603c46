// CodebookLSTM: ONNX LSTM whose W, R (and optionally B) inputs are weight records. Each constant record is
// decoded once, at kernel creation, into a dense float32 working copy (outliers included, through
// DecodedRecord::decode_range), and every run invokes onnxruntime's own LSTM kernel on those copies through the
// C API (CreateOp/InvokeOp), so its outputs are exactly onnxruntime's LSTM on the decoded weights. What it
// replaces: a CodebookDecode per weight feeding a standard LSTM, which copied the weights out in every run and
// kept the constant-folding of any Slice/Concat chain in between from happening (docs/ops.md).
// A large LSTM (PrepackedWeightsThreshold) instead runs in a one-node onnxruntime session created with the working
// copies as its initializers, so that onnxruntime prepacks W and R once, as it does for a dense model's LSTM.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"

#if defined(ONNXCOMP_HAVE_AVX2_KERNELS) || defined(ONNXCOMP_HAVE_AVX512_KERNELS)
#include <immintrin.h>
#endif

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


// ---- A minimal ONNX ModelProto writer (protobuf wire format), for the one-node inner session ----------------
// Field numbers from onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto,
// TypeProto, SparseTensorProto, TensorProto, OperatorSetIdProto).

void PutVarint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

void PutVarintField(std::string* out, uint32_t field, uint64_t value) {
  PutVarint(out, uint64_t{field} << 3);  // wire type 0
  PutVarint(out, value);
}

void PutBytesField(std::string* out, uint32_t field, const std::string& bytes) {
  PutVarint(out, (uint64_t{field} << 3) | 2);  // wire type 2: length-delimited
  PutVarint(out, bytes.size());
  out->append(bytes);
}

void PutFloatField(std::string* out, uint32_t field, float value) {
  PutVarint(out, (uint64_t{field} << 3) | 5);  // wire type 5: 32-bit
  char bytes[4];
  memcpy(bytes, &value, 4);
  out->append(bytes, 4);
}

// ValueInfoProto {name, type {tensor_type {elem_type}}} (no shape: onnxruntime infers it).
std::string TensorValueInfo(const std::string& name, int32_t elem_type) {
  std::string tensor, type, info;
  PutVarintField(&tensor, 1, static_cast<uint64_t>(elem_type));
  PutBytesField(&type, 1, tensor);
  PutBytesField(&info, 1, name);
  PutBytesField(&info, 2, type);
  return info;
}

// SparseTensorProto with no values: a placeholder of the initializer's name and dims, which the session's
// AddInitializer replaces (a dense placeholder would have to hold every value; an external-data one must exist
// on disk).
std::string EmptySparseInitializer(const std::string& name, const std::vector<int64_t>& dims) {
  std::string values, indices, sparse;
  PutVarintField(&values, 1, 0);                                        // dims [0]
  PutVarintField(&values, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);      // data_type
  PutBytesField(&values, 8, name);                                      // name
  PutVarintField(&indices, 1, 0);
  PutVarintField(&indices, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  PutBytesField(&indices, 8, name + ".indices");
  PutBytesField(&sparse, 1, values);
  PutBytesField(&sparse, 2, indices);
  for (int64_t d : dims) PutVarintField(&sparse, 3, static_cast<uint64_t>(d));
  return sparse;
}

std::string IntAttribute(const char* name, int64_t value) {
  std::string a;
  PutBytesField(&a, 1, name);
  PutVarintField(&a, 3, static_cast<uint64_t>(value));
  PutVarintField(&a, 20, 2);  // AttributeProto.INT
  return a;
}

// Weights (W and R elements together) from which an LSTM runs in the inner session: ONNXCOMP_LSTM_PREPACK_WEIGHTS
// (read at kernel creation; 0 = always), else 2^18. Below it the inner session's Run costs more than prepacking
// saves (docs/benchmarks.md, branch speed7).
int64_t PrepackedWeightsThreshold() {
  constexpr int64_t kDefault = int64_t{1} << 18;
  const char* text = getenv("ONNXCOMP_LSTM_PREPACK_WEIGHTS");
  if (!text || !*text) return kDefault;
  char* end = nullptr;
  const long long value = strtoll(text, &end, 10);
  return (end && *end == 0 && value >= 0) ? static_cast<int64_t>(value) : kDefault;
}

// ---- The direct path (small LSTMs) ------------------------------------------------------------------------
// y[n] = bias[n] + sum over k of z[k] * w[k * columns + n] for n < columns (a multiple of 16): each sum an fma
// chain over k = 0..K-1 in order from 0.0, the bias added after it (the contract of the MatMul kernels,
// matmul_kernels.h), so every instruction set gives the same bits.
using GatesKernel = void (*)(const float* z, int64_t k, const float* w, int64_t columns, const float* bias, float* y);

void LstmGatesScalar(const float* z, int64_t k, const float* w, int64_t columns, const float* bias, float* y) {
  for (int64_t n = 0; n < columns; ++n) y[n] = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    const float zi = z[i];
    const float* row = w + i * columns;
    for (int64_t n = 0; n < columns; ++n) y[n] = fmaf(zi, row[n], y[n]);
  }
  for (int64_t n = 0; n < columns; ++n) y[n] += bias[n];
}

#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
// Tiles of kTiles registers of 8 columns, the whole of k per tile (independent chains hide the fma latency).
template <int kTiles>
__attribute__((target("avx2,fma"))) void LstmGatesAvx2Tile(const float* z, int64_t k, const float* w, int64_t columns,
                                                          const float* bias, float* y) {
  __m256 acc[kTiles];
  for (int j = 0; j < kTiles; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const __m256 zi = _mm256_broadcast_ss(z + i);
    const float* row = w + i * columns;
    for (int j = 0; j < kTiles; ++j) acc[j] = _mm256_fmadd_ps(zi, _mm256_loadu_ps(row + 8 * j), acc[j]);
  }
  for (int j = 0; j < kTiles; ++j) _mm256_storeu_ps(y + 8 * j, _mm256_add_ps(acc[j], _mm256_loadu_ps(bias + 8 * j)));
}

__attribute__((target("avx2,fma"))) void LstmGatesAvx2(const float* z, int64_t k, const float* w, int64_t columns,
                                                      const float* bias, float* y) {
  int64_t n = 0;
  for (; n + 64 <= columns; n += 64) LstmGatesAvx2Tile<8>(z, k, w + n, columns, bias + n, y + n);
  for (; n < columns; n += 16) LstmGatesAvx2Tile<2>(z, k, w + n, columns, bias + n, y + n);
}
#endif

#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
template <int kTiles>
__attribute__((target("avx512f"))) void LstmGatesAvx512Tile(const float* z, int64_t k, const float* w, int64_t columns,
                                                            const float* bias, float* y) {
  __m512 acc[kTiles];
  for (int j = 0; j < kTiles; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const __m512 zi = _mm512_set1_ps(z[i]);
    const float* row = w + i * columns;
    for (int j = 0; j < kTiles; ++j) acc[j] = _mm512_fmadd_ps(zi, _mm512_loadu_ps(row + 16 * j), acc[j]);
  }
  for (int j = 0; j < kTiles; ++j) _mm512_storeu_ps(y + 16 * j, _mm512_add_ps(acc[j], _mm512_loadu_ps(bias + 16 * j)));
}

__attribute__((target("avx512f"))) void LstmGatesAvx512(const float* z, int64_t k, const float* w, int64_t columns,
                                                       const float* bias, float* y) {
  int64_t n = 0;
  for (; n + 128 <= columns; n += 128) LstmGatesAvx512Tile<8>(z, k, w + n, columns, bias + n, y + n);
  for (; n < columns; n += 16) LstmGatesAvx512Tile<1>(z, k, w + n, columns, bias + n, y + n);
}
#endif

GatesKernel GatesKernelFor(Isa isa) {
#if defined(ONNXCOMP_HAVE_AVX512_KERNELS)
  if (isa == Isa::kAvx512) return LstmGatesAvx512;
#endif
#if defined(ONNXCOMP_HAVE_AVX2_KERNELS)
  if (isa == Isa::kAvx2 || isa == Isa::kAvx512) return LstmGatesAvx2;
#endif
  (void)isa;
  return LstmGatesScalar;
}

float Sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

// tanh from expf (libm's tanhf goes through expm1f, 3x the time here): (1 - e) / (1 + e) with e = exp(-2|v|), the
// sign of v. Within 1.2e-7 of tanh in absolute terms (the rounding of 1 - e near v = 0).
float Tanh(float v) {
  const float e = expf(-2.0f * fabsf(v));
  return copysignf((1.0f - e) / (1.0f + e), v);
}

// ONNXCOMP_LSTM_DIRECT=0 keeps every LSTM on onnxruntime's kernel (read at kernel creation; for A/B timing).
bool DirectPathAllowed() {
  const char* text = getenv("ONNXCOMP_LSTM_DIRECT");
  return !(text && strcmp(text, "0") == 0);
}

constexpr const char* kInnerInputNames[] = {"X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"};
constexpr const char* kInnerOutputNames[] = {"Y", "Y_h", "Y_c"};

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
      optional_present_[i] = !kernel_info.GetInputName(i).empty();
      if (optional_present_[i]) input_count_ = i + 1;
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
      } else if (weight.constant) {
        weight.constant_value = value;
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
    CreateInnerSession(direction, input_forget, has_clip, clip);
    reverse_ = direction == "reverse";
    PrepareDirect(has_clip, input_forget);
    return nullptr;
  });
}

void CodebookLstmKernel::CreateInnerSession(const std::string& direction, int64_t input_forget, bool has_clip,
                                            float clip) {
  const LstmWeight& w = weights_[0];
  const LstmWeight& r = weights_[1];
  const LstmWeight& b = weights_[2];
  if (!w.constant || !r.constant || (b.present && !b.constant)) return;
  auto dims_of = [](const LstmWeight& weight) {
    return weight.record ? weight.dims : Ort::ConstValue(weight.constant_value).GetTensorTypeAndShapeInfo().GetShape();
  };
  auto elements = [](const std::vector<int64_t>& dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  };
  if (elements(dims_of(w)) + elements(dims_of(r)) < PrepackedWeightsThreshold()) return;

  // The one-node model: LSTM with this node's attributes; X and the node's optional run-time inputs as graph
  // inputs; W, R (and B) as initializers that AddInitializer supplies.
  std::string node;
  for (size_t i = 0; i < input_count_; ++i) {
    const bool present = i <= 3 ? (i == 0 || weights_[i - 1].present) : optional_present_[i];
    PutBytesField(&node, 1, present ? kInnerInputNames[i] : "");
  }
  for (const char* name : kInnerOutputNames) PutBytesField(&node, 2, name);
  PutBytesField(&node, 3, "lstm");
  PutBytesField(&node, 4, "LSTM");
  PutBytesField(&node, 5, IntAttribute("hidden_size", hidden_size_));
  PutBytesField(&node, 5, IntAttribute("input_forget", input_forget));
  PutBytesField(&node, 5, IntAttribute("layout", layout_));
  {
    std::string a;
    PutBytesField(&a, 1, "direction");
    PutBytesField(&a, 4, direction);
    PutVarintField(&a, 20, 3);  // AttributeProto.STRING
    PutBytesField(&node, 5, a);
  }
  if (has_clip) {
    std::string a;
    PutBytesField(&a, 1, "clip");
    PutFloatField(&a, 2, clip);
    PutVarintField(&a, 20, 1);  // AttributeProto.FLOAT
    PutBytesField(&node, 5, a);
  }
  std::string graph;
  PutBytesField(&graph, 1, node);
  PutBytesField(&graph, 2, "codebook_lstm");
  inner_inputs_.assign(1, 0);
  PutBytesField(&graph, 11, TensorValueInfo("X", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  for (size_t i = 4; i < input_count_; ++i) {
    if (!optional_present_[i]) continue;
    inner_inputs_.push_back(i);
    PutBytesField(&graph, 11, TensorValueInfo(kInnerInputNames[i], i == 4 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
                                                                            : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  }
  for (size_t i = 0; i < 3; ++i) {
    if (output_present_[i]) PutBytesField(&graph, 12, TensorValueInfo(kInnerOutputNames[i], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  }
  for (size_t i = 0; i < 3; ++i) {
    if (weights_[i].present) PutBytesField(&graph, 15, EmptySparseInitializer(kInnerInputNames[i + 1], dims_of(weights_[i])));
  }
  std::string opset, model;
  PutBytesField(&opset, 1, "");
  PutVarintField(&opset, 2, 14);
  PutVarintField(&model, 1, 8);  // ir_version
  PutBytesField(&model, 7, graph);
  PutBytesField(&model, 8, opset);

  try {
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1);  // the outer session's count is not visible to a kernel (docs/ops.md)
    options.SetInterOpNumThreads(1);
    options.SetExecutionMode(ORT_SEQUENTIAL);
    options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_BASIC);
    options.SetLogSeverityLevel(3);
    options.AddConfigEntry("session.intra_op.allow_spinning", "0");
    for (size_t i = 0; i < 3; ++i) {
      const LstmWeight& weight = weights_[i];
      if (!weight.present) continue;
      options.AddInitializer(kInnerInputNames[i + 1], weight.record ? static_cast<const OrtValue*>(weight.value)
                                                                    : weight.constant_value);
    }
    inner_env_ = Ort::Env(ORT_LOGGING_LEVEL_ERROR, "onnxcomp");
    inner_session_ = Ort::Session(inner_env_, model.data(), model.size(), options);
  } catch (const Ort::Exception&) {
    // This onnxruntime cannot build the session: every run invokes its LSTM on the working copies instead.
    inner_session_ = Ort::Session(nullptr);
  }
}

void CodebookLstmKernel::PrepareDirect(bool has_clip, int64_t input_forget) {
  LstmWeight& w = weights_[0];
  LstmWeight& r = weights_[1];
  const LstmWeight& b = weights_[2];
  if (!w.record || !w.constant || !r.record || !r.constant || (b.present && !b.constant)) return;
  if (has_clip || input_forget != 0 || optional_present_[4] || optional_present_[7] || inner_session_ ||
      !DirectPathAllowed()) {
    return;
  }
  const int64_t hidden = hidden_size_;
  const int64_t input = w.dims[2];
  const int64_t gates = 4 * hidden;
  const int64_t rows = input + hidden;
  gate_columns_ = (gates + 15) / 16 * 16;
  input_size_ = input;
  direct_weights_.assign(static_cast<size_t>(directions_ * rows * gate_columns_), 0.0f);
  direct_bias_.assign(static_cast<size_t>(directions_ * gate_columns_), 0.0f);
  const float* bias = nullptr;
  if (b.present) bias = b.record ? b.working.data() : Ort::ConstValue(b.constant_value).GetTensorData<float>();
  for (int64_t d = 0; d < directions_; ++d) {
    float* out = direct_weights_.data() + d * rows * gate_columns_;
    for (int64_t n = 0; n < gates; ++n) {
      const float* w_row = w.working.data() + (d * gates + n) * input;
      const float* r_row = r.working.data() + (d * gates + n) * hidden;
      for (int64_t k = 0; k < input; ++k) out[k * gate_columns_ + n] = w_row[k];
      for (int64_t k = 0; k < hidden; ++k) out[(input + k) * gate_columns_ + n] = r_row[k];
      if (bias) direct_bias_[d * gate_columns_ + n] = bias[d * 2 * gates + n] + bias[d * 2 * gates + gates + n];
    }
  }
  // The transposed copy replaces W's and R's working copies (the same bytes but for the padding).
  for (LstmWeight* weight : {&w, &r}) {
    weight->value = Ort::Value(nullptr);
    std::vector<float>().swap(weight->working);
  }
  isa_ = SelectIsa();
  direct_ = true;
}

OrtStatus* CodebookLstmKernel::RunDirect(Ort::KernelContext& context, const std::vector<int64_t>& x_shape,
                                         float* const outputs[3]) const {
  const int64_t seq = x_shape[0];
  const int64_t batch = x_shape[1];
  const int64_t hidden = hidden_size_;
  if (x_shape[2] != input_size_) {
    return Error("X has shape " + ShapeToString(x_shape) + ", expected [seq, batch, " + std::to_string(input_size_) + "]");
  }
  const float* initial[2] = {nullptr, nullptr};  // initial_h, initial_c: [directions, batch, hidden]
  for (size_t i = 5; i <= 6; ++i) {
    if (!optional_present_[i]) continue;
    Ort::ConstValue value = context.GetInput(i);
    if (!value) continue;
    const std::vector<int64_t> shape = value.GetTensorTypeAndShapeInfo().GetShape();
    if (shape != std::vector<int64_t>{directions_, batch, hidden}) {
      return Error(std::string(i == 5 ? "initial_h" : "initial_c") + " has shape " + ShapeToString(shape) +
                   ", expected [" + std::to_string(directions_) + ", " + std::to_string(batch) + ", " +
                   std::to_string(hidden) + "]");
    }
    initial[i - 5] = value.GetTensorData<float>();
  }
  const float* x = context.GetInput(0).GetTensorData<float>();
  const GatesKernel gates_kernel = GatesKernelFor(isa_);
  const int64_t rows = input_size_ + hidden;
  std::vector<float> z(static_cast<size_t>(rows)), g(static_cast<size_t>(gate_columns_)), c(static_cast<size_t>(hidden));
  float* h = z.data() + input_size_;  // h_{t-1} is the second part of the product's row [x_t, h_{t-1}]
  for (int64_t d = 0; d < directions_; ++d) {
    const bool reverse = reverse_ || d == 1;
    const float* weights = direct_weights_.data() + d * rows * gate_columns_;
    const float* bias = direct_bias_.data() + d * gate_columns_;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t state = (d * batch + b) * hidden;
      for (int64_t j = 0; j < hidden; ++j) {
        h[j] = initial[0] ? initial[0][state + j] : 0.0f;
        c[j] = initial[1] ? initial[1][state + j] : 0.0f;
      }
      for (int64_t step = 0; step < seq; ++step) {
        const int64_t t = reverse ? seq - 1 - step : step;
        memcpy(z.data(), x + (t * batch + b) * input_size_, static_cast<size_t>(input_size_) * sizeof(float));
        gates_kernel(z.data(), rows, weights, gate_columns_, bias, g.data());
        // ONNX LSTM, gates in the order i, o, f, c: c_t = f * c_{t-1} + i * tanh(g_c), h_t = o * tanh(c_t).
        for (int64_t j = 0; j < hidden; ++j) {
          const float in = Sigmoid(g[j]);
          const float out = Sigmoid(g[hidden + j]);
          const float forget = Sigmoid(g[2 * hidden + j]);
          const float cell = Tanh(g[3 * hidden + j]);
          const float kept = forget * c[j];
          const float added = in * cell;
          c[j] = kept + added;
          h[j] = out * Tanh(c[j]);
        }
        if (outputs[0]) memcpy(outputs[0] + ((t * directions_ + d) * batch + b) * hidden, h,
                                static_cast<size_t>(hidden) * sizeof(float));
      }
      if (outputs[1]) memcpy(outputs[1] + state, h, static_cast<size_t>(hidden) * sizeof(float));
      if (outputs[2]) memcpy(outputs[2] + state, c.data(), static_cast<size_t>(hidden) * sizeof(float));
    }
  }
  return nullptr;
}

OrtStatus* CodebookLstmKernel::ComputeV2(OrtKernelContext* raw_context) noexcept {
  return GuardStatus(this, [&]() -> OrtStatus* {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> x_shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (x_shape.size() != 3) return Error("X must have rank 3, got shape " + ShapeToString(x_shape));
    const int64_t seq = layout_ == 0 ? x_shape[0] : x_shape[1];
    const int64_t batch = layout_ == 0 ? x_shape[1] : x_shape[0];

    if (direct_) {
      const std::vector<int64_t> shapes[3] = {{seq, directions_, batch, hidden_size_},
                                              {directions_, batch, hidden_size_},
                                              {directions_, batch, hidden_size_}};
      float* outputs[3] = {nullptr, nullptr, nullptr};
      for (size_t i = 0; i < 3; ++i) {
        if (output_present_[i]) outputs[i] = context.GetOutput(i, shapes[i]).GetTensorMutableData<float>();
      }
      return RunDirect(context, x_shape, outputs);
    }
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
    RunAllocator allocator(context);
    Ort::Value scratch[3] = {Ort::Value(nullptr), Ort::Value(nullptr), Ort::Value(nullptr)};
    OrtValue* outputs[3] = {nullptr, nullptr, nullptr};
    for (size_t i = 0; i < 3; ++i) {
      if (output_present_[i]) {
        outputs[i] = context.GetOutput(i, shapes[i]);
      } else {  // onnxruntime's LSTM is given all three outputs; the node's absent ones go to scratch
        scratch[i] = Ort::Value::CreateTensor<float>(allocator.get(), shapes[i].data(), shapes[i].size());
        outputs[i] = scratch[i];
      }
    }
    if (batch == 0) return nullptr;
    if (inner_session_) {
      const char* input_names[8];
      const OrtValue* input_values[8];
      size_t input_count = 0;
      for (size_t i : inner_inputs_) {
        input_names[input_count] = kInnerInputNames[i];
        input_values[input_count++] = inputs[i];
      }
      const char* output_names[3];
      OrtValue* output_values[3];
      size_t output_count = 0;
      for (size_t i = 0; i < 3; ++i) {
        if (!output_present_[i]) continue;
        output_names[output_count] = kInnerOutputNames[i];
        output_values[output_count++] = outputs[i];
      }
      Ort::ThrowOnError(Ort::GetApi().Run(inner_session_, nullptr, input_names, input_values, input_count, output_names,
                                          output_count, output_values));
      return nullptr;
    }
    lstm_op_.Invoke(raw_context, inputs, input_count_, outputs, 3);
    return nullptr;
  });
}

}  // namespace onnxcomp
