#include "cpu/decoded_record.h"

#include <algorithm>
#include <new>
#include <stdexcept>

namespace onnxcomp {

namespace {

// Packs indices from the decoder's byte-per-index (or u16) form into fixed-width slots.
template <typename Index>
void pack_linear(const Index* source, uint64_t n, uint32_t slot, uint8_t* target) {
  if (slot == 4) {
    for (uint64_t i = 0; i + 1 < n; i += 2) target[i / 2] = static_cast<uint8_t>(source[i] | (source[i + 1] << 4));
    if (n & 1) target[n / 2] = static_cast<uint8_t>(source[n - 1]);
  } else {
    for (uint64_t i = 0; i < n; ++i) packed::linear_store(target, slot, i, source[i]);
  }
}

}  // namespace

void DecodedRecord::decode_range(uint64_t first, uint64_t count, float* out) const {
  const float* table = codebook.data();
  const uint8_t* data = indices.data();
  switch (slot_bits) {  // one loop per slot width, so each compiles without a per-element branch
    case 4:
      for (uint64_t i = 0; i < count; ++i) out[i] = packed::lookup(table, packed::linear_load(data, 4, first + i));
      break;
    case 8:
      for (uint64_t i = 0; i < count; ++i) out[i] = packed::lookup(table, packed::linear_load(data, 8, first + i));
      break;
    default:
      for (uint64_t i = 0; i < count; ++i) out[i] = packed::lookup(table, packed::linear_load(data, 16, first + i));
  }
  if (!scales.empty()) {  // one run of elements per channel: packed::scaled, as every reader
    const uint64_t channels = scales.size();
    uint64_t i = 0;
    while (i < count) {
      const uint64_t position = first + i;
      const uint64_t run = std::min<uint64_t>(count - i, scale_stride - position % scale_stride);
      const float scale = scales[static_cast<size_t>(packed::scale_channel(position, scale_stride, channels))];
      for (uint64_t j = i; j < i + run; ++j) out[j] = packed::scaled(out[j], scale);
      i += run;
    }
  }
  auto begin = std::lower_bound(outlier_positions.begin(), outlier_positions.end(), first);
  for (auto it = begin; it != outlier_positions.end() && *it < first + count; ++it) {
    out[*it - first] = outlier_values[static_cast<size_t>(it - outlier_positions.begin())];
  }
}

DecodeStatus decode_record_bytes(const uint8_t* data, size_t size, DecodedRecord* out) {
  RecordInfo info;
  DecodeStatus status = parse_record(data, size, &info);
  if (!status.ok()) return status;
  try {
    DecodedRecord& r = *out;
    r.dims.assign(info.dims, info.dims + info.rank);
    r.value_type = info.value_type;
    r.num_elements = static_cast<int64_t>(info.num_elements);
    r.index_bits = info.index_bits;
    r.slot_bits = packed::slot_bits(info.index_bits);
    r.codebook_size = info.codebook_size;
    r.codebook.assign(packed::table_entries(info.codebook_size), 0.0f);
    // The decoder writes one byte (or u16) per index; that transient form is packed and dropped here.
    const uint32_t width = record::index_width(info.index_bits);
    std::vector<uint8_t> wide(info.num_elements * width + 1);
    const uint64_t workspace_bytes = decode_workspace_bytes(info);
    std::vector<uint32_t> workspace((workspace_bytes + 3) / 4);
    status = decode_record(data, info, r.codebook.data(), wide.data(), workspace.data(), workspace.size() * 4);
    if (!status.ok()) return status;
    if (width == 1 && r.slot_bits == 8) {
      // One byte per decoded index is already the linear layout of 8-bit slots: keep that buffer, so the decode
      // never holds two N-byte buffers (peak memory at session creation).
      wide.resize(packed::linear_bytes(info.num_elements, r.slot_bits));
      r.indices = std::move(wide);
    } else {
      r.indices.assign(packed::linear_bytes(info.num_elements, r.slot_bits), 0);
      if (width == 2) {
        pack_linear(reinterpret_cast<const uint16_t*>(wide.data()), info.num_elements, r.slot_bits, r.indices.data());
      } else {
        pack_linear(wide.data(), info.num_elements, r.slot_bits, r.indices.data());
      }
    }
    r.scales.assign(info.scale_count, 0.0f);
    r.scale_axis = info.scale_axis;
    r.scale_stride = info.scale_count ? info.scale_stride : 1;
    if (info.scale_count) decode_scales(data, info, r.scales.data());
    r.outlier_positions.assign(info.outlier_count, 0);
    r.outlier_values.assign(info.outlier_count, 0.0f);
    if (info.outlier_count) return decode_outliers(data, info, r.outlier_positions.data(), r.outlier_values.data());
    return decode_ok();
  } catch (const std::bad_alloc&) {
    return decode_fail(DecodeError::kBadArgument, "not enough memory to hold the decoded indices");
  } catch (const std::length_error&) {
    return decode_fail(DecodeError::kBadArgument, "not enough memory to hold the decoded indices");
  }
}

}  // namespace onnxcomp
