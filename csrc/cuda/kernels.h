// The CUDA side of the library as plain C functions: the .cu file holds every CUDA call, and the op
// classes (cuda_ops.cc) hold every ORT type, so neither sees the other's headers.
// Every function returns a cudaError_t as int (0 = success); onnxcomp_cuda_error_string names it.
#ifndef ONNXCOMP_CUDA_KERNELS_H_
#define ONNXCOMP_CUDA_KERNELS_H_

#include <stdint.h>

extern "C" {

// The channel scales of a scaled record (versions 3, 4) on the device: element p's codebook value is multiplied
// by values[(p / stride) % count] (packed::scale_channel, packed::scaled). values null: an unscaled record.
struct OnnxcompScales {
  const float* values;
  uint64_t stride;
  uint64_t count;
};

const char* onnxcomp_cuda_error_string(int error);

// Device memory for the kernels' persistent working form (allocated at kernel creation).
int onnxcomp_cuda_malloc(void** pointer, uint64_t bytes);
int onnxcomp_cuda_free(void* pointer);
int onnxcomp_cuda_copy_to_device(void* device, const void* host, uint64_t bytes);

// Y[m, n] = X[m, k] @ W (+ bias) with W in the panel layout (packed_layout.h), then the outlier corrections
// (PackedMatrix in cpu/ops.h; correction_start null when there are none); all pointers on the device.
int onnxcomp_cuda_codebook_matmul(void* stream, const float* x, int64_t m, int64_t k, int64_t n, const uint8_t* panels,
                                  uint32_t slot_bits, const float* table, OnnxcompScales scales, const float* bias,
                                  const int64_t* correction_start, const int64_t* correction_row,
                                  const float* correction_delta, float* y);

// out[i] = table[index i] for the `count` indices in the linear layout, then out[positions[j]] = values[j] for
// the `outlier_count` outliers.
int onnxcomp_cuda_codebook_decode(void* stream, const uint8_t* indices, uint32_t slot_bits, const float* table,
                                  OnnxcompScales scales, int64_t count, const uint64_t* outlier_positions, const float* outlier_values,
                                  int64_t outlier_count, float* out);

// out[i, :] = W[rows[i], :]; `host_rows` (host memory, already checked: each in [0, V), or -1 for a row of zeros)
// is copied in. Outliers of row r are entries outlier_row_start[r] .. outlier_row_start[r + 1] - 1 of the sorted
// positions (outlier_row_start null when the record has none). `plus_zero` non-zero: each value read gets + 0.0f
// (-0.0 reads +0.0: a one-hot row's product, CodebookGather's one_hot attribute).
int onnxcomp_cuda_codebook_gather(void* stream, const uint8_t* indices, uint32_t slot_bits, const float* table,
                                  OnnxcompScales scales, const int64_t* host_rows, int64_t count, int64_t row_size,
                                  const int64_t* outlier_row_start, const uint64_t* outlier_positions,
                                  const float* outlier_values, int plus_zero, float* out);
}

#endif  // ONNXCOMP_CUDA_KERNELS_H_
