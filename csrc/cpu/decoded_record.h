// A decoded weight record in working form (codebook + indices), as the CPU kernels keep it.
#ifndef ONNXCOMP_CPU_DECODED_RECORD_H_
#define ONNXCOMP_CPU_DECODED_RECORD_H_

#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "decode.h"

namespace onnxcomp {

struct DecodedRecord {
  std::vector<int64_t> dims;
  int64_t num_elements = 0;
  uint32_t index_bits = 0;
  std::vector<float> codebook;
  // Exactly one of these holds the N indices: one byte each up to 8 index bits, two bytes above.
  std::vector<uint8_t> indices8;
  std::vector<uint16_t> indices16;

  bool wide() const { return record::index_width(index_bits) == 2; }

  // Calls fn(const Index* indices) with the working-form index array, so loops compile for each width.
  template <typename Fn>
  decltype(auto) with_indices(Fn&& fn) const {
    return wide() ? fn(indices16.data()) : fn(indices8.data());
  }
};

// Validates and decodes `size` bytes. Never throws; allocation failure is reported as a status.
DecodeStatus decode_record_bytes(const uint8_t* data, size_t size, DecodedRecord* out);

}  // namespace onnxcomp

#endif  // ONNXCOMP_CPU_DECODED_RECORD_H_
