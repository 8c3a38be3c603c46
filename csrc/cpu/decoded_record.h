// A decoded weight record in working form (codebook + packed fixed-width indices), as the CPU kernels keep it.
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
  int64_t num_elements = 0;
  uint32_t index_bits = 0;
  uint32_t slot_bits = 0;       // packed::slot_bits(index_bits)
  uint32_t codebook_size = 0;   // K of the record
  std::vector<float> codebook;  // padded with 0.0 to packed::table_entries(K) entries
  std::vector<uint8_t> indices;  // the N indices in the linear packed layout (packed_layout.h)

  uint32_t index(int64_t i) const { return packed::linear_load(indices.data(), slot_bits, static_cast<uint64_t>(i)); }

  // Writes elements [first, first + count) of the decoded tensor (row-major) to `out`: the codebook value of
  // each index. The one function every kernel uses for dense values (CodebookDecode, CodebookConv's working form).
  // Requires first + count <= N.
  void decode_range(uint64_t first, uint64_t count, float* out) const;
};

// Validates and decodes `size` bytes. Never throws; allocation failure is reported as a status.
DecodeStatus decode_record_bytes(const uint8_t* data, size_t size, DecodedRecord* out);

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_DECODED_RECORD_H_
