// libFuzzer target for the record decoder: any bytes must give a status, never a crash or an overrun.
// Inputs are taken as-is (they mostly die at the CRC) and, from the second byte on, with the CRC
// recomputed, so mutations reach the structural checks and the Huffman decoders.
#include <stddef.h>
#include <stdint.h>

#include <memory>
#include <vector>

#include "decode.h"

namespace {

void DecodeOnce(const uint8_t* data, size_t size) {
  using namespace onnxcomp;
  RecordInfo info;
  if (!parse_record(data, size, &info).ok()) return;
  // Keep memory bounded: a valid sparse record may describe a huge all-zero tensor in a few bytes.
  if (info.num_elements > (uint64_t{1} << 24)) return;
  const uint64_t width = record::index_width(info.index_bits);
  std::unique_ptr<float[]> codebook(new float[info.codebook_size]);
  std::unique_ptr<uint8_t[]> indices(new uint8_t[info.num_elements * width + 1]);
  const uint64_t workspace_bytes = decode_workspace_bytes(info);
  std::unique_ptr<uint32_t[]> workspace(new uint32_t[workspace_bytes / 4]);
  DecodeStatus status = decode_record(data, info, codebook.get(), indices.get(), workspace.get(), workspace_bytes);
  if (!status.ok() && status.message == nullptr) __builtin_trap();
  if (status.ok()) {
    for (uint64_t i = 0; i < info.num_elements; ++i) {
      uint32_t index = width == 1 ? indices[i] : reinterpret_cast<const uint16_t*>(indices.get())[i];
      if (index >= info.codebook_size) __builtin_trap();  // every index must address the codebook
    }
  }
  if (status.ok() && info.scale_count) {  // finite, positive, and no decoded value overflows
    std::unique_ptr<float[]> scales(new float[info.scale_count]);
    decode_scales(data, info, scales.get());
    if (info.scale_count != info.dims[info.scale_axis] || info.scale_stride == 0) __builtin_trap();
    float largest = 0.0f;
    for (uint64_t c = 0; c < info.scale_count; ++c) {
      if (!(scales[c] > 0.0f) || !(scales[c] - scales[c] == 0.0f)) __builtin_trap();
      if (scales[c] > largest) largest = scales[c];
    }
    for (uint32_t i = 0; i < info.codebook_size; ++i) {  // the largest product of each entry stays finite
      const float value = packed::scaled(codebook[i], largest);
      if (!(value - value == 0.0f)) __builtin_trap();
    }
  }
  if (status.ok() && info.outlier_count) {
    std::unique_ptr<uint64_t[]> positions(new uint64_t[info.outlier_count]);
    std::unique_ptr<float[]> values(new float[info.outlier_count]);
    status = decode_outliers(data, info, positions.get(), values.get());
    if (!status.ok() && status.message == nullptr) __builtin_trap();
    if (status.ok()) {
      for (uint64_t j = 0; j < info.outlier_count; ++j) {  // strictly increasing, below N, finite
        if (positions[j] >= info.num_elements || (j && positions[j] <= positions[j - 1])) __builtin_trap();
        if (!(values[j] - values[j] == 0.0f)) __builtin_trap();
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Exact-size copies so the sanitizer sees any read past the record.
  std::vector<uint8_t> raw(data, data + size);
  DecodeOnce(raw.data(), raw.size());
  if (size >= 8) {
    std::vector<uint8_t> fixed(data, data + size);
    const uint32_t crc = onnxcomp::crc32(fixed.data(), size - 4);
    for (int i = 0; i < 4; ++i) fixed[size - 4 + i] = uint8_t(crc >> (8 * i));
    DecodeOnce(fixed.data(), fixed.size());
  }
  return 0;
}
