// A decoded weight record in working form (codebook + packed fixed-width indices + outliers), as the CPU kernels
// keep it. Every kernel reads weight values through decode_range (dense values) or, for the fused product,
// PackMatrix (cpu/ops.h), so each applies the outliers the same way.
#ifndef ONNXCOMP_CPU_DECODED_RECORD_H_
#define ONNXCOMP_CPU_DECODED_RECORD_H_

#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "decode.h"
#include "packed_layout.h"

namespace onnxcomp {

struct DecodedRecord {
  std::vector<int64_t> dims;
  uint32_t value_type = record::kValueTypeFloat32;  // the decoded tensor's type (integer records: exact integers)
  int64_t num_elements = 0;
  uint32_t index_bits = 0;
  uint32_t slot_bits = 0;       // packed::slot_bits(index_bits)
  uint32_t codebook_size = 0;   // K of the record
  std::vector<float> codebook;  // padded with 0.0 to packed::table_entries(K) entries
  std::vector<uint8_t> indices;  // the N indices in the linear packed layout (packed_layout.h)
  // Outliers (record version 2): element outlier_positions[j] is outlier_values[j], whatever its index says.
  std::vector<uint64_t> outlier_positions;  // strictly increasing, below N
  std::vector<float> outlier_values;
  // Channel scales (record versions 3, 4; empty otherwise): element i's codebook value is multiplied by
  // scales[(i / scale_stride) % scales.size()] (packed::scale_channel, packed::scaled); outliers are not scaled.
  std::vector<float> scales;
  uint32_t scale_axis = 0;
  uint64_t scale_stride = 1;

  bool scaled() const { return !scales.empty(); }

  uint32_t index(int64_t i) const { return packed::linear_load(indices.data(), slot_bits, static_cast<uint64_t>(i)); }

  // Element i's coded value (before outliers): its codebook value, times its channel's scale when scaled.
  float coded_value(uint64_t i) const {
    const float value = packed::lookup(codebook.data(), index(static_cast<int64_t>(i)));
    return scales.empty() ? value : packed::scaled(value, scales[packed::scale_channel(i, scale_stride, scales.size())]);
  }

  // Writes elements [first, first + count) of the decoded tensor (row-major) to `out`: the codebook value of
  // each index (times its channel's scale in a scaled record), then the outliers inside the range. The one function every kernel uses for dense values
  // (CodebookDecode, CodebookConv's working form). Requires first + count <= N.
  void decode_range(uint64_t first, uint64_t count, float* out) const;
};

// Validates and decodes `size` bytes. Never throws; allocation failure is reported as a status.
DecodeStatus decode_record_bytes(const uint8_t* data, size_t size, DecodedRecord* out);

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_DECODED_RECORD_H_
