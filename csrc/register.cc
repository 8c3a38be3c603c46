// The library's one entry point: registers every op of domain ai.onnxcomp with a session.
#include <onnxruntime_cxx_api.h>


#include "cpu/ops.h"
#include "record_format.h"
#if defined(ONNXCOMP_WITH_CUDA)
#include "cuda/cuda_ops.h"
#endif

namespace onnxcomp {
namespace {

// Ops and the domain must outlive every session that uses them: they are created once and never freed
// (freeing them at exit could race the runtime's own teardown).
Ort::CustomOpDomain& Domain() {
  static CodebookDecodeOp decode_op;
  static CodebookMatMulOp matmul_op;
  static CodebookGatherOp gather_op;
  static CodebookConvOp conv_op;
  static CodebookLstmOp lstm_op;
  static CodebookDecodeUInt8Op decode_uint8_op;
  static CodebookDecodeInt8Op decode_int8_op;
  static CodebookGatherUInt8Op gather_uint8_op;
  static CodebookGatherInt8Op gather_int8_op;
  static BlockedMaxPoolOp max_pool_op;
  static BlockedAveragePoolOp average_pool_op;
  static BlockedGlobalMaxPoolOp global_max_pool_op;
  static BlockedGlobalAveragePoolOp global_average_pool_op;
  static BlockedResizeOp resize_op;
#if defined(ONNXCOMP_WITH_CUDA)
  // CUDA variants next to the CPU ones: a CPU-only runtime still finds the CPU kernels.
  static CudaCodebookDecodeOp cuda_decode_op;
  static CudaCodebookMatMulOp cuda_matmul_op;
  static CudaCodebookGatherOp cuda_gather_op;
#endif
  static OrtCustomOp* const kOps[] = {  // the registration table
      &decode_op, &matmul_op, &gather_op, &conv_op, &lstm_op, &decode_uint8_op, &decode_int8_op,
      &gather_uint8_op, &gather_int8_op, &max_pool_op, &average_pool_op, &global_max_pool_op,
      &global_average_pool_op, &resize_op,
#if defined(ONNXCOMP_WITH_CUDA)
      &cuda_decode_op, &cuda_matmul_op, &cuda_gather_op,
#endif
  };

  static Ort::CustomOpDomain* domain = [] {
    auto* d = new Ort::CustomOpDomain(kDomain);
    for (OrtCustomOp* op : kOps) d->Add(op);
    return d;
  }();
  return *domain;
}

}  // namespace
}  // namespace onnxcomp

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // The C++ wrapper reads the function table of the version it was compiled against; an older runtime
  // returns nullptr for it. Version 1 always exists and is enough to report the problem.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    return api_base->GetApi(1)->CreateStatus(
        ORT_FAIL, "onnxcomp: this onnxruntime is too old for the onnxcomp custom-op library (needs onnxruntime >= 1.21)");
  }
  Ort::InitApi(api);
  try {
    Ort::UnownedSessionOptions(options).Add(onnxcomp::Domain());
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  } catch (const std::exception& e) {
    return Ort::Status(e).release();
  }
}
