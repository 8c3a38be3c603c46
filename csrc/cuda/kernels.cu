// CUDA kernels of the ai.onnxcomp ops. Built only when nvcc is found (ONNXCOMP_CUDA); never run on the
// machines this was written on (no GPU): it compiles and links, nothing more is claimed.
// The decode math (slot loads, panel positions, codebook lookup) is packed_layout.h, shared with the CPU.
#include <cuda_runtime.h>

#include "cuda/kernels.h"
#include "packed_layout.h"

namespace {

using namespace onnxcomp;

constexpr int kThreads = 256;
constexpr int kMatMulColumns = 64;  // threads along N per block
constexpr int kMatMulRows = 4;      // threads along M per block

// Element `position`'s weight value: the codebook lookup, times its channel's scale in a scaled record.
__device__ float Weight(const float* __restrict__ table, uint32_t index, const OnnxcompScales& scales, uint64_t position) {
  const float value = packed::lookup(table, index);
  if (!scales.values) return value;
  return packed::scaled(value, scales.values[packed::scale_channel(position, scales.stride, scales.count)]);
}

// One thread per output element; the threads of a warp read neighbouring columns of one panel row.
// Sums in order over k with fmaf, as the CPU kernels do.
__global__ void CodebookMatMulKernel(const float* __restrict__ x, int64_t m, int64_t k, int64_t n,
                                     const uint8_t* __restrict__ panels, uint32_t slot, const float* __restrict__ table,
                                     OnnxcompScales scales, const float* __restrict__ bias, const int64_t* __restrict__ correction_start,
                                     const int64_t* __restrict__ correction_row,
                                     const float* __restrict__ correction_delta, float* __restrict__ y) {
  const int64_t column = int64_t{blockIdx.x} * kMatMulColumns + threadIdx.x;
  const int64_t row = int64_t{blockIdx.y} * kMatMulRows + threadIdx.y;
  if (column >= n || row >= m) return;
  const float* xr = x + row * k;
  float acc = 0.0f;
  for (int64_t kk = 0; kk < k; ++kk) {
    const uint32_t index = packed::panel_load(panels, static_cast<uint64_t>(k), slot, kk, column);
    acc = fmaf(xr[kk], Weight(table, index, scales, static_cast<uint64_t>(kk * n + column)), acc);
  }
  float out = bias ? acc + bias[column] : acc;
  if (correction_start) {  // outliers, after the bias, in order of k: as the CPU kernels do
    for (int64_t j = correction_start[column]; j < correction_start[column + 1]; ++j) {
      out = fmaf(xr[correction_row[j]], correction_delta[j], out);
    }
  }
  y[row * n + column] = out;
}

__global__ void CodebookDecodeKernel(const uint8_t* __restrict__ indices, uint32_t slot, const float* __restrict__ table,
                                     OnnxcompScales scales, int64_t count, float* __restrict__ out) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t element = static_cast<uint64_t>(i);
    out[i] = Weight(table, packed::linear_load(indices, slot, element), scales, element);
  }
}

__global__ void ScatterOutliersKernel(const uint64_t* __restrict__ positions, const float* __restrict__ values,
                                      int64_t count, float* __restrict__ out) {
  for (int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < count; j += int64_t{gridDim.x} * blockDim.x) {
    out[positions[j]] = values[j];
  }
}

__global__ void CodebookGatherKernel(const uint8_t* __restrict__ indices, uint32_t slot, const float* __restrict__ table,
                                     OnnxcompScales scales, const int64_t* __restrict__ rows, int64_t count, int64_t row_size,
                                     const int64_t* __restrict__ outlier_row_start,
                                     const uint64_t* __restrict__ outlier_positions,
                                     const float* __restrict__ outlier_values, int plus_zero,
                                     float* __restrict__ out) {
  const int64_t total = count * row_size;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t position = i / row_size, column = i % row_size;
    if (rows[position] < 0) {  // a one-hot lookup's index outside the table: a row of zeros
      out[i] = 0.0f;
      continue;
    }
    const uint64_t element = static_cast<uint64_t>(rows[position] * row_size + column);
    float value = Weight(table, packed::linear_load(indices, slot, element), scales, element);
    if (outlier_row_start) {  // binary search among this row's outliers
      int64_t low = outlier_row_start[rows[position]], high = outlier_row_start[rows[position] + 1];
      while (low < high) {
        const int64_t middle = low + (high - low) / 2;
        if (outlier_positions[middle] < element) low = middle + 1; else high = middle;
      }
      if (low < outlier_row_start[rows[position] + 1] && outlier_positions[low] == element) value = outlier_values[low];
    }
    out[i] = plus_zero ? value + 0.0f : value;
  }
}

unsigned int GridFor(int64_t work) {
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;  // grid-stride loops cover the rest
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

}  // namespace

extern "C" {

const char* onnxcomp_cuda_error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

int onnxcomp_cuda_malloc(void** pointer, uint64_t bytes) { return cudaMalloc(pointer, bytes ? bytes : 1); }

int onnxcomp_cuda_free(void* pointer) { return pointer ? cudaFree(pointer) : cudaSuccess; }

int onnxcomp_cuda_copy_to_device(void* device, const void* host, uint64_t bytes) {
  return bytes ? cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice) : cudaSuccess;
}

int onnxcomp_cuda_codebook_matmul(void* stream, const float* x, int64_t m, int64_t k, int64_t n, const uint8_t* panels,
                                  uint32_t slot_bits, const float* table, OnnxcompScales scales, const float* bias,
                                  const int64_t* correction_start, const int64_t* correction_row,
                                  const float* correction_delta, float* y) {
  if (m == 0 || n == 0) return cudaSuccess;
  const int64_t row_blocks = (m + kMatMulRows - 1) / kMatMulRows;
  if (row_blocks > 65535) return cudaErrorInvalidValue;  // grid.y limit; such batches are not expected here
  const dim3 grid(static_cast<unsigned int>((n + kMatMulColumns - 1) / kMatMulColumns),
                  static_cast<unsigned int>(row_blocks));
  const dim3 block(kMatMulColumns, kMatMulRows);
  CodebookMatMulKernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(x, m, k, n, panels, slot_bits, table,
                                                                               scales, bias, correction_start, correction_row,
                                                                               correction_delta, y);
  return cudaGetLastError();
}

int onnxcomp_cuda_codebook_decode(void* stream, const uint8_t* indices, uint32_t slot_bits, const float* table,
                                  OnnxcompScales scales, int64_t count, const uint64_t* outlier_positions, const float* outlier_values,
                                  int64_t outlier_count, float* out) {
  if (count == 0) return cudaSuccess;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  CodebookDecodeKernel<<<GridFor(count), kThreads, 0, s>>>(indices, slot_bits, table, scales, count, out);
  if (outlier_count > 0) {  // same stream: runs after the lookup
    ScatterOutliersKernel<<<GridFor(outlier_count), kThreads, 0, s>>>(outlier_positions, outlier_values,
                                                                      outlier_count, out);
  }
  return cudaGetLastError();
}

int onnxcomp_cuda_codebook_gather(void* stream, const uint8_t* indices, uint32_t slot_bits, const float* table,
                                  OnnxcompScales scales, const int64_t* host_rows, int64_t count, int64_t row_size,
                                  const int64_t* outlier_row_start, const uint64_t* outlier_positions,
                                  const float* outlier_values, int plus_zero, float* out) {
  if (count == 0 || row_size == 0) return cudaSuccess;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int64_t* rows = nullptr;
  const size_t bytes = static_cast<size_t>(count) * sizeof(int64_t);
  cudaError_t error = cudaMallocAsync(reinterpret_cast<void**>(&rows), bytes, s);
  if (error != cudaSuccess) return error;
  // From pageable memory: returns once the rows are staged, so the caller may free them afterwards.
  error = cudaMemcpyAsync(rows, host_rows, bytes, cudaMemcpyHostToDevice, s);
  if (error == cudaSuccess) {
    CodebookGatherKernel<<<GridFor(count * row_size), kThreads, 0, s>>>(indices, slot_bits, table, scales, rows, count,
                                                                          row_size, outlier_row_start,
                                                                          outlier_positions, outlier_values, plus_zero,
                                                                          out);
    error = cudaGetLastError();
  }
  const cudaError_t freed = cudaFreeAsync(rows, s);
  return error != cudaSuccess ? error : freed;
}

}  // extern "C"
