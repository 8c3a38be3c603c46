// CPU custom ops of domain ai.onnxcomp (docs/ops.md). Kernels decode the record once, at creation.
#ifndef ONNXCOMP_CPU_OPS_H_
#define ONNXCOMP_CPU_OPS_H_

#include "cpu/matmul_kernels.h"
#include "cpu/record_kernel.h"
#include "cpu/depthwise.h"
#include "cpu/winograd.h"

#include <mutex>
#include <type_traits>
#include <string>
#include <vector>

namespace onnxcomp {

// ---- CodebookDecode: record -> dense weight --------------------------------------------------------------

struct CodebookDecodeKernel : RecordKernel {
  CodebookDecodeKernel();
  // With attribute decode_once = 1 and a constant record, the first run decodes it into the working copy that
  // every run copies out (docs/ops.md); else each run decodes the record.
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

 private:
  bool decode_once_ = false;
  std::once_flag once_;
  std::vector<float> decoded_;  // the working copy, filled by the first run (decode_once)
};

struct CodebookDecodeOp : Ort::CustomOpBase<CodebookDecodeOp, CodebookDecodeKernel, true> {
  static constexpr const char* kName = "CodebookDecode";
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<CodebookDecodeKernel>(info, kernel);
  }
  const char* GetName() const { return kName; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// ---- CodebookDecodeUInt8 / Int8: integer record -> uint8 / int8 tensor; CodebookGatherUInt8 / Int8: its rows -----

// Decodes an integer record (value type 2 or 3, docs/format.md) to its exact integers. A constant record is decoded
// once, at kernel creation, into a working copy in the integer type (as many bytes as the original initializer),
// which every run copies out (kGather: the rows the indices ask for, ONNX Gather on axis 0); the decoded indices are
// not kept. A non-constant record is decoded in every run.
template <typename T, bool kGather>
struct CodebookDecodeIntegerKernel : RecordKernel {
  CodebookDecodeIntegerKernel();
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

 private:
  std::vector<int64_t> dims_;
  // The working copy of a constant record: its integers as bytes (T is int8_t or uint8_t, read through T*).
  static_assert(sizeof(T) == 1, "integer records hold 8-bit integers");
  std::vector<uint8_t> decoded_;
  bool constant_ = false;
};

template <typename T, bool kGather>
struct CodebookDecodeIntegerOp
    : Ort::CustomOpBase<CodebookDecodeIntegerOp<T, kGather>, CodebookDecodeIntegerKernel<T, kGather>, true> {
  static const char* const kName;
  static constexpr uint32_t kValueType = std::is_signed<T>::value ? record::kValueTypeInt8 : record::kValueTypeUInt8;
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<CodebookDecodeIntegerKernel<T, kGather>>(info, kernel);
  }
  const char* GetName() const { return kName; }
  size_t GetInputTypeCount() const { return kGather ? 2 : 1; }  // record[, indices (int32 or int64)]
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return Ort::TypeToTensorType<T>::type; }
};
using CodebookDecodeUInt8Op = CodebookDecodeIntegerOp<uint8_t, false>;
using CodebookDecodeInt8Op = CodebookDecodeIntegerOp<int8_t, false>;
using CodebookGatherUInt8Op = CodebookDecodeIntegerOp<uint8_t, true>;
using CodebookGatherInt8Op = CodebookDecodeIntegerOp<int8_t, true>;

// ---- CodebookMatMul: Y = X @ W (+ bias), W [K, N] from the record ------------------------------------------

// W [K, N] in the panel layout of packed_layout.h: what CodebookMatMul keeps (no dense copy of W).
struct PackedMatrix {
  int64_t k = 0, n = 0;
  uint32_t slot_bits = 0;
  uint32_t codebook_size = 0;
  std::vector<float> table;      // the codebook padded with zeros (packed::table_entries)
  std::vector<uint8_t> panels;
  // The record's outliers as a sparse correction, by column (compressed sparse columns): for column c, entries
  // correction_start[c] .. correction_start[c + 1] - 1 hold row k and delta = outlier - table[index of W[k, c]],
  // rows increasing. Empty when the record has no outliers.
  std::vector<int64_t> correction_start;  // n + 1 offsets
  std::vector<int64_t> correction_row;
  std::vector<float> correction_delta;
  // The rows k that hold any outlier, increasing, and each correction's position in that list: the rows of X^T
  // the vector-lane corrections read (ApplyCorrections).
  std::vector<int64_t> correction_used_rows;
  std::vector<int32_t> correction_slot;
};

// Repacks the linear indices of a decoded [K, N] record into panels and its outliers into per-column corrections
// (shared by the CPU and CUDA kernels).
void PackMatrix(const DecodedRecord& record, PackedMatrix* out);

// Rows of X from which CodebookMatMul decodes W for the run into dense panels and multiplies with the dense-panel
// kernel instead of the fused kernel (docs/ops.md); ONNXCOMP_GEMM_ROWS overrides it (0: never), read at kernel creation.
int64_t DenseGemmRows();

// Rows of Y the outlier corrections run side by side (as vector lanes) on x86-64 with FMA.
constexpr int64_t kCorrectionLanes = 32;

// The columns of X [M, K] the corrections of w read (w.correction_used_rows), rows [row0, row0 + rows), transposed:
// data[slot * stride + (m - row0)] = x[m, w.correction_used_rows[slot]], zeros past the last row (stride >= rows +
// kCorrectionLanes - 1, so every set of lanes reads inside `data`).
struct TransposedRows {
  std::vector<float> data;
  int64_t stride = 0, row0 = 0;
};
void TransposeForCorrections(const PackedMatrix& w, const float* x, int64_t row_begin, int64_t row_end,
                             TransposedRows* out);

// Adds the outlier corrections to Y rows [row_begin, row_end), columns [column_begin, column_end), after the
// panel kernel (and its bias): y[m, c] = fma(x[m, k], delta, y[m, c]) for each correction of column c in order
// of k. The same chains follow every instruction set's kernel, so their outputs stay bit-identical. With 2+ rows
// and hardware FMA the rows run as vector lanes, on `xt` (X transposed, covering the rows) when given, else on
// X transposed here in blocks of kCorrectionLanes rows.
void ApplyCorrections(const PackedMatrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end,
                      int64_t column_begin, int64_t column_end, const TransposedRows* xt = nullptr);

struct CodebookMatMulKernel : RecordKernel {
  CodebookMatMulKernel();
  // Decodes the record (RecordKernel::Init), repacks it into panels and drops the decoded form.
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

 private:
  // Y = X @ W (+ bias), W unpacked into dense panels for this run, then its outlier corrections: the fused
  // kernel's bits (same chain of fused multiply-adds over the same values, then the bias, then the corrections).
  void RunDense(OrtKernelContext* context, const PackedMatrix& w, const float* x, const float* bias, float* y,
                int64_t m);
  // Y = X @ W (+ bias) with dense_kernel_ on W [K, N] in dense panels, on onnxruntime's thread pool.
  // Leading rows of X with at most K / 16 nonzeros are computed from those alone (the same bits,
  // codebook_matmul.cc), up to the first denser row, unless ONNXCOMP_SPARSE_ROWS=0.
  void RunDensePanels(OrtKernelContext* context, const float* w, int64_t k, int64_t n, const float* x,
                      const float* bias, float* y, int64_t m);

  Isa isa_ = Isa::kScalar;
  MatMulKernel kernel_ = nullptr;
  DenseKernel dense_kernel_ = nullptr;
  UnpackKernel unpack_kernel_ = nullptr;  // null: the portable unpacking
  // decode_once = 1: W [K, N] decoded once into dense float panels (DenseProblem's layout, the exact values with
  // the outliers), multiplied by dense_kernel_ in every run (no packed form kept).
  // Filled by the first run (so a session that never runs holds only the record), under once_.
  bool decode_once_ = false;
  std::unique_ptr<const DecodedRecord> once_record_;  // released once decoded
  std::once_flag once_;
  std::vector<float> dense_storage_;  // the panels, from the first 64-byte aligned float on
  const float* dense_panels_ = nullptr;
  int64_t dense_k_ = 0, dense_n_ = 0;
  std::unique_ptr<const PackedMatrix> constant_matrix_;
  int64_t dense_rows_ = 0;  // 0: the fused kernel always
  bool sparse_rows_ = true;  // ONNXCOMP_SPARSE_ROWS=0 at creation: the dense-panel kernel on every row
};

struct CodebookMatMulOp : Ort::CustomOpBase<CodebookMatMulOp, CodebookMatMulKernel, true> {
  static constexpr const char* kName = "CodebookMatMul";
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<CodebookMatMulKernel>(info, kernel);
  }
  const char* GetName() const { return kName; }
  size_t GetInputTypeCount() const { return 3; }  // X, record, bias
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 2 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// ---- CodebookGather: Gather(W, indices, axis=0) ------------------------------------------------------------

struct CodebookGatherKernel : RecordKernel {
  CodebookGatherKernel();
  // Reads the attribute `one_hot` (0, 1 or 2: OutsideRows; docs/ops.md).
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

  // one_hot != 0 with a constant record of at most this many elements: the first run decodes the whole table once
  // (each value + 0.0f) into a working copy that every run copies rows out of.
  static constexpr int64_t kOneHotTableElements = int64_t{1} << 20;

 private:
  OutsideRows outside_ = OutsideRows::kError;
  std::once_flag once_;
  std::vector<float> table_;  // the working copy (one_hot != 0, small constant record), filled by the first run
};

struct CodebookGatherOp : Ort::CustomOpBase<CodebookGatherOp, CodebookGatherKernel, true> {
  static constexpr const char* kName = "CodebookGather";
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<CodebookGatherKernel>(info, kernel);
  }
  const char* GetName() const { return kName; }
  size_t GetInputTypeCount() const { return 2; }  // record, indices
  // Indices may be int32 or int64: UNDEFINED lets ORT accept any type; compute checks which.
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// The channel block of onnxruntime's NCHWc kernels on this CPU (MLAS: 16 with AVX-512F, else 8 on x86-64), or 1
// where this library does not use them (other CPUs, or ONNXCOMP_CONV=ort).
int64_t NchwcBlockSize();
// `value` rounded up to a multiple of `block`.
int64_t RoundUp(int64_t value, int64_t block);

// ---- CodebookConv: Conv(X, W * scale, B) (+ activation), W [O, I/group, k...] from a record or dense --------

// The convolution's attributes (ONNX Conv, plus FusedConv's activation), read once at kernel creation.
struct ConvAttributes {
  std::string auto_pad = "NOTSET";
  std::vector<int64_t> dilations, kernel_shape, pads, strides;  // empty: not given (ONNX defaults)
  int64_t group = 1;
  std::string activation;  // empty: none; else Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid or HardSwish
  std::vector<float> activation_params;
  // X / Y in onnxruntime's NCHWc layout of this CPU instead of NCHW (PackWeightsPass sets them on a tensor between
  // two CodebookConv nodes); no-ops where the library runs no NCHWc convolution (the layouts then coincide).
  int64_t nchwc_input = 0, nchwc_output = 0;
};

// How a CodebookConv kernel runs its convolution (docs/ops.md, "CodebookConv: the rule").
enum class ConvPath {
  kNchwc,  // onnxruntime's blocked-layout (NCHWc) convolution on a reordered working weight
  kOrt,    // onnxruntime's Conv / FusedConv on the dense working weight
};

// The Winograd variant of the kNchwc path (cpu/winograd.h), chosen per layer at kernel creation (docs/ops.md,
// "How it runs"): m = 0 off (onnxruntime's blocked Conv), 2 or 4 F(m x m, 3 x 3) always (ONNXCOMP_WINOGRAD), 1 the
// rule's choice between the two in each run.
struct WinogradPlan {
  int m = 0;
  int64_t block_tiles = 0;  // tiles per block; 0: the rule's (ONNXCOMP_WINOGRAD_TILES sets it, for timing)
  WinogradBlockKernel block = nullptr;
  WinogradWeightsKernel weights = nullptr;
  WinogradActivation activation = WinogradActivation::kNone;
  float alpha = 0.0f, beta = 0.0f;
};

struct CodebookConvKernel : RecordKernel {
  CodebookConvKernel();
  // Decodes the record (RecordKernel::Init) into the working weight, folds the scale and bias in, picks the
  // path and creates the onnxruntime ops it invokes.
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

 private:
  OrtStatus* ReadAttributes(const Ort::ConstKernelInfo& info);
  OrtStatus* CreateOps(const OrtKernelInfo* info);
  // Checks the attributes against the weight dims [O, I/group, k...].
  OrtStatus* CheckWeight(const std::vector<int64_t>& weight_dims) const;
  // A constant float32 / float16 weight input (no record) widened into `dense`, its dims into weight_dims_.
  OrtStatus* ReadDenseWeight(const Ort::ConstKernelInfo& info, ONNXTensorElementDataType type,
                             std::vector<float>* dense);
  // Y's shape for input shape `x` (ONNX Conv shape rules), or an error.
  OrtStatus* OutputShape(const std::vector<int64_t>& weight_dims, const std::vector<int64_t>& x,
                         std::vector<int64_t>* y) const;
  // Picks the Winograd plan for a kNchwc layer with blocked input (leaves winograd_.m = 0 where the rule says no).
  void PlanWinograd(int64_t o_count, int64_t i_count);
  // The blocked convolution of the kNchwc path, X blocked [N, C, H, W] into blocked Y: onnxruntime's or Winograd.
  // x_shape, y_shape: X's and Y's NCHW shapes (the blocked tensors hold their channels padded to the block).
  void BlockedConv(OrtKernelContext* context, const OrtValue* x, const OrtValue* bias, OrtValue* y,
                   const std::vector<int64_t>& x_shape, const std::vector<int64_t>& y_shape);
  void RunWinograd(OrtKernelContext* context, const OrtValue* x, OrtValue* y);
  // Blocks of 8: whether a run with Y of NCHW shape y_shape takes the planned Winograd convolution (codebook_conv.cc).
  bool WinogradTilesPay(const std::vector<int64_t>& y_shape) const;
  // Picks the library's depthwise kernel for a kNchwc depthwise layer, or (depthwise false) its NCHW-input kernel for
  // a group-1 layer with fewer channels than the block (leaves depthwise_ null where the rule says no).
  void PlanDepthwise(bool depthwise);
  // false: X's rows are too narrow for it (the caller then invokes onnxruntime's kernel).
  bool RunDepthwise(OrtKernelContext* context, const OrtValue* x, OrtValue* y, const std::vector<int64_t>& x_shape,
                    const std::vector<int64_t>& y_shape);

  ConvAttributes attributes_;
  ConvPath path_ = ConvPath::kOrt;
  int64_t block_ = 1;              // NCHWc block size (channels per block) on the kNchwc path
  bool reorder_input_ = false;     // kNchwc: X is reordered to NCHWc first (else read as NCHW)
  int64_t i_padded_ = 0;           // kNchwc: the working weight's input channels per group (padded to the block)
  int64_t nchwc_group_ = 1;        // kNchwc: the blocked Conv's group (a depthwise layer's O padded to the block)
  std::vector<int64_t> weight_dims_;  // the weight's dims [O, I/group, k...]
  std::vector<float> weight_;      // storage of the working weight (kNchwc: kWeightAlignFloats more, for alignment)
  float* weight_data_ = nullptr;   // working weight: dense (kOrt) or NCHWc-reordered and padded, 64-byte aligned (kNchwc)
  size_t weight_count_ = 0;        // its floats
  std::vector<float> bias_;        // effective bias (padded on kNchwc), empty when none
  std::vector<float> scale_;       // per-output-channel scale (empty: none); folded into weight_ when constant
  bool bias_is_constant_ = true;
  Ort::Value weight_value_{nullptr}, bias_value_{nullptr};
  Ort::Op conv_op_{nullptr}, reorder_input_op_{nullptr}, reorder_output_op_{nullptr};
  int conv_inputs_ = 2;
  // The direct path (docs/ops.md, CodebookConv): a 1-D convolution with group 1, explicit pads, no activation or
  // Relu and a constant weight and bias, on the kOrt path, computes runs of at most kDirectPositions output
  // positions (batch times length) itself with dot_kernel_, reading the kOrt working weight.
  static constexpr int64_t kDirectPositions = 16;
  OrtStatus* ComputeDirect(const float* x, const std::vector<int64_t>& x_shape, const std::vector<int64_t>& y_shape,
                           float* y) const;
  DotKernel dot_kernel_ = nullptr;  // null: no direct path for this node
  WinogradPlan winograd_;
  DepthwiseKernel depthwise_ = nullptr;  // paths 1b and 1c: the library's kernel (null: onnxruntime's)
  bool nchw_input_ = false;               // path 1c: X is NCHW with fewer channels than the block
  DepthwiseActivation depthwise_activation_ = DepthwiseActivation::kNone;
  float depthwise_alpha_ = 0.0f, depthwise_beta_ = 0.0f;
};

struct CodebookConvOp : Ort::CustomOpBase<CodebookConvOp, CodebookConvKernel, true> {
  static constexpr const char* kName = "CodebookConv";
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<CodebookConvKernel>(info, kernel);
  }
  const char* GetName() const { return kName; }
  // X, W, bias, scale; W is a uint8 record or a constant float32 / float16 weight [O, I/group, k...] (UNDEFINED
  // lets onnxruntime accept any of them; the kernel checks which).
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= 2 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// ---- MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool, Resize of domain ai.onnxcomp --------------------

// The ONNX op of the same name (2-D, float32; Resize: nearest, asymmetric, floor, integer scales) whose input and
// output may be in onnxruntime's NCHWc layout (attributes nchwc_input / nchwc_output, as CodebookConv's), so a pool
// or an upsampling between CodebookConv nodes stays inside the blocked region (docs/ops.md).
enum class SpatialKind { kMaxPool, kAveragePool, kGlobalMaxPool, kGlobalAveragePool, kResize };

struct BlockedSpatialKernel : RecordKernel {
  explicit BlockedSpatialKernel(SpatialKind kind);
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

 private:
  // Y's shape for X's shape (ONNX pooling / Resize shape rules), or an error.
  OrtStatus* OutputShape(const std::vector<int64_t>& x, std::vector<int64_t>* y) const;
  // Nearest upsampling by the integer scales, within one layout (B channels interleaved: 1 for NCHW).
  void Upsample(const float* x, const std::vector<int64_t>& x_shape, int64_t b, float* y) const;
  // NCHWc (blocks of block_ channels; C a multiple of it) -> NCHW, the values copied.
  void ReorderOutput(const float* x, const std::vector<int64_t>& shape, float* y) const;

  SpatialKind kind_;
  std::string auto_pad_ = "NOTSET";
  int64_t ceil_mode_ = 0, count_include_pad_ = 0;
  std::vector<int64_t> dilations_, kernel_shape_, pads_, strides_;
  std::vector<int64_t> scales_;           // kResize: the integer scales of the four dims
  int64_t nchwc_input_ = 0, nchwc_output_ = 0;  // resolved for this CPU: 1 = blocked
  int64_t block_ = 1;                      // NCHWc block of this CPU, 1 when no NCHWc kernel is used
  Ort::Op standard_op_{nullptr}, blocked_op_{nullptr}, reorder_input_op_{nullptr};
};

template <SpatialKind kKind>
struct BlockedSpatialKernelOf : BlockedSpatialKernel {
  BlockedSpatialKernelOf() : BlockedSpatialKernel(kKind) {}
};

template <SpatialKind kKind>
struct BlockedSpatialOp : Ort::CustomOpBase<BlockedSpatialOp<kKind>, BlockedSpatialKernelOf<kKind>, true> {
  static const char* const kName;
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<BlockedSpatialKernelOf<kKind>>(info, kernel);
  }
  const char* GetName() const { return kName; }
  // Resize: X, roi, scales, sizes (roi ignored: asymmetric; scales a constant; no sizes); the pools: X.
  size_t GetInputTypeCount() const { return kKind == SpatialKind::kResize ? 4 : 1; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= 1 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};
using BlockedMaxPoolOp = BlockedSpatialOp<SpatialKind::kMaxPool>;
using BlockedAveragePoolOp = BlockedSpatialOp<SpatialKind::kAveragePool>;
using BlockedGlobalMaxPoolOp = BlockedSpatialOp<SpatialKind::kGlobalMaxPool>;
using BlockedGlobalAveragePoolOp = BlockedSpatialOp<SpatialKind::kGlobalAveragePool>;
using BlockedResizeOp = BlockedSpatialOp<SpatialKind::kResize>;

// ---- CodebookLSTM: ONNX LSTM with W, R (and B) from records ------------------------------------------------

// One of LSTM's weight inputs (W, R or B): a record decoded once into a dense working copy, or a float tensor
// passed through as it is.
struct LstmWeight {
  bool present = false;
  bool record = false;         // a uint8 record (else float32)
  bool constant = false;       // a constant initializer (then a record is decoded into `working` at creation)
  std::vector<float> working;  // the decoded values (record and constant)
  std::vector<int64_t> dims;
  Ort::Value value{nullptr};   // wraps `working`
  const OrtValue* constant_value = nullptr;  // a constant float32 input (not a record): the session's own value
};

struct CodebookLstmKernel : RecordKernel {
  CodebookLstmKernel();
  // Reads the attributes, decodes each constant record input into its working copy and creates onnxruntime's
  // LSTM that every run invokes.
  OrtStatus* Init(const OrtKernelInfo* info);
  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept;

 private:
  // Checks a weight's dims against [directions, rows, ...]: W [D, 4H, input], R [D, 4H, H], B [D, 8H].
  OrtStatus* CheckDims(size_t input, const std::vector<int64_t>& dims) const;
  // Decodes a record (the constant one, or this run's input) into `weight`'s working copy and wraps it.
  OrtStatus* Decode(size_t input, const Ort::ConstValue& value, LstmWeight* weight) const;
  // For an LSTM with constant W, R (and B) of at least PrepackedWeightsThreshold() weights: a one-node onnxruntime
  // session whose initializers are the working copies (AddInitializer), so that onnxruntime prepacks them once.
  // Leaves inner_session_ empty where it does not apply or cannot be created.
  void CreateInnerSession(const std::string& direction, int64_t input_forget, bool has_clip, float clip);
  // For a small LSTM (below PrepackedWeightsThreshold()) with constant W, R (records) and B, no sequence_lens, no
  // peepholes, no clip and input_forget 0: builds the direct path's weights (below) and sets direct_.
  void PrepareDirect(bool has_clip, int64_t input_forget);
  // One run on the direct path: the ONNX LSTM equations step by step, the gates of each step one product of
  // [x_t, h_{t-1}] with the transposed [W; R] (LstmGates), then the bias.
  // outputs: Y, Y_h, Y_c (null: absent).
  OrtStatus* RunDirect(Ort::KernelContext& context, const std::vector<int64_t>& x_shape, float* const outputs[3]) const;

  int64_t hidden_size_ = 0;
  int64_t directions_ = 1;
  int64_t layout_ = 0;
  LstmWeight weights_[3];            // W, R, B (inputs 1, 2, 3)
  bool output_present_[3] = {false, false, false};
  size_t input_count_ = 3;           // inputs given to onnxruntime's LSTM (trailing absent ones dropped)
  bool optional_present_[8] = {};    // inputs 4..7 (sequence_lens, initial_h, initial_c, P) given to the node
  Ort::Op lstm_op_{nullptr};
  Ort::Env inner_env_{nullptr};
  Ort::Session inner_session_{nullptr};
  std::vector<size_t> inner_inputs_;  // the node inputs the inner session takes: 0 (X) and the present optional ones
  // The direct path (PrepareDirect): per direction, [W; R] transposed into input + hidden rows of gate_columns_
  // floats (the 4 * hidden gate columns, zero-padded to a multiple of 16), and B's two halves summed.
  bool direct_ = false;
  bool reverse_ = false;  // direction "reverse" (bidirectional: the second direction is)
  Isa isa_ = Isa::kScalar;
  int64_t input_size_ = 0;
  int64_t gate_columns_ = 0;
  std::vector<float> direct_weights_;  // [directions][input + hidden][gate_columns_]
  std::vector<float> direct_bias_;     // [directions][gate_columns_]
};

struct CodebookLstmOp : Ort::CustomOpBase<CodebookLstmOp, CodebookLstmKernel, true> {
  static constexpr const char* kName = "CodebookLSTM";
  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return CreateRecordKernel<CodebookLstmKernel>(info, kernel);
  }
  const char* GetName() const { return kName; }
  // X, W, R, B, sequence_lens, initial_h, initial_c, P (ONNX LSTM's inputs); W, R and B may be a uint8 record or
  // float32 (UNDEFINED lets onnxruntime accept either; the kernel checks which).
  size_t GetInputTypeCount() const { return 8; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    if (index >= 1 && index <= 3) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    return index == 4 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 3; }  // Y, Y_h, Y_c
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_OPTIONAL; }
};

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_OPS_H_
