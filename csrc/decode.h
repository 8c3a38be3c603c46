// Weight-record parsing and decoding (docs/format.md), written once for host and device code.
// No ORT types, no STL, no exceptions, no allocation: the caller sizes and hands in every buffer.
//
// Use:
//   RecordInfo info;  DecodeStatus s = parse_record(data, size, &info);   // bounds, header, CRC
//   codebook: info.codebook_size floats; indices: info.num_elements * record::index_width(info.index_bits) bytes;
//   workspace: decode_workspace_bytes(info) bytes, 4-byte aligned;
//   s = decode_record(data, info, codebook, indices, workspace, workspace_bytes);
//   version 2 only (info.outlier_count > 0): positions: outlier_count u64, values: outlier_count floats;
//   s = decode_outliers(data, info, positions, values);   // the decoded tensor takes values[j] at positions[j]
//   versions 3, 4 only (info.scale_count > 0): scales: scale_count floats;
//   decode_scales(data, info, scales);   // element i: packed::scaled(codebook[index i], scales[packed::scale_channel(i, ...)])
#ifndef ONNXCOMP_DECODE_H_
#define ONNXCOMP_DECODE_H_

#include <stdint.h>
#include <string.h>

#include "huffman.h"
#include "packed_layout.h"
#include "record_format.h"

namespace onnxcomp {

// ---- Little-endian loads (records have no alignment inside an ORT buffer) -----------------------------

ONNXCOMP_HD uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
ONNXCOMP_HD uint32_t load_u32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
ONNXCOMP_HD uint64_t load_u64(const uint8_t* p) { return uint64_t{load_u32(p)} | (uint64_t{load_u32(p + 4)} << 32); }
ONNXCOMP_HD float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// ---- CRC-32 (IEEE 802.3, reflected, as zlib.crc32) ----------------------------------------------------

inline constexpr uint32_t kCrc32Polynomial = 0xEDB88320u;

struct Crc32Tables {
  uint32_t t[8][256];
};

// Slice-by-8 tables, built at compile time.
constexpr Crc32Tables make_crc32_tables() {
  Crc32Tables tables{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCrc32Polynomial : c >> 1;
    tables.t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (int s = 1; s < 8; ++s) tables.t[s][i] = (tables.t[s - 1][i] >> 8) ^ tables.t[0][tables.t[s - 1][i] & 0xFF];
  }
  return tables;
}
#if !defined(__CUDA_ARCH__)
inline constexpr Crc32Tables kCrc32Tables = make_crc32_tables();
#endif

ONNXCOMP_HD uint32_t crc32(const uint8_t* p, uint64_t n) {
  uint32_t c = 0xFFFFFFFFu;
#if defined(__CUDA_ARCH__)
  // Device code cannot read the host constexpr tables; the bitwise form is fine for the rare device use.
  for (uint64_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kCrc32Polynomial & (0u - (c & 1)));
  }
#else
  const auto& t = kCrc32Tables.t;
  for (; n >= 8; n -= 8, p += 8) {
    uint32_t lo = load_u32(p) ^ c;
    uint32_t hi = load_u32(p + 4);
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^
        t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
  }
  for (; n; --n, ++p) c = (c >> 8) ^ t[0][(c ^ *p) & 0xFF];
#endif
  return ~c;
}

// ---- Record header ------------------------------------------------------------------------------------

// Everything parse_record learned: field values and the byte offsets of the variable-size sections.
struct RecordInfo {
  uint32_t value_type;  // record::kValueTypeFloat32, kValueTypeUInt8 or kValueTypeInt8
  uint32_t rank;
  uint32_t index_bits;
  uint32_t coding;
  uint32_t codebook_size;  // K
  uint64_t num_elements;   // N
  uint64_t dims[record::kMaxRank];
  uint64_t codebook_offset;
  // Sparse coding only (gap_bits = 0, nonzero_count = 0 for dense).
  uint32_t gap_bits;
  uint64_t nonzero_count;  // M
  uint64_t gap_table_offset;
  // Both codings.
  uint64_t value_table_offset;  // dense: the index table
  uint64_t payload_offset;
  uint64_t payload_bits;
  // Outlier section (version 2; outlier_count = 0 for version 1).
  uint64_t outlier_count;  // L
  uint32_t outlier_format;  // record::kOutlierFloat16 or kOutlierFloat32
  uint32_t rice_bits;
  uint64_t positions_offset;
  uint64_t positions_bits;
  uint64_t outlier_values_offset;
  // Scale section (versions 3, 4; scale_count = 0 otherwise): element i belongs to channel
  // (i / scale_stride) % scale_count of axis scale_axis, scale_stride = the product of the dims after it.
  uint32_t scale_axis;
  uint32_t scale_format;  // record::kScaleFloat16 or kScaleFloat32
  uint64_t scale_count;   // C = dims[scale_axis]
  uint64_t scale_stride;
  uint64_t scales_offset;
};

// A bounds-checked forward cursor over [0, end): every field is taken through it.
struct Cursor {
  uint64_t position;
  uint64_t end;
  // Claims `n` bytes; on success stores their offset. Overflow-safe: never computes position + n first.
  ONNXCOMP_HD bool take(uint64_t n, uint64_t* offset) {
    if (n > end - position) return false;
    *offset = position;
    position += n;
    return true;
  }
};

ONNXCOMP_HD bool float_is_finite_bits(uint32_t bits) { return (bits & 0x7F800000u) != 0x7F800000u; }
ONNXCOMP_HD bool half_is_finite_bits(uint16_t bits) { return (bits & 0x7C00u) != 0x7C00u; }

// IEEE-754 binary16 -> binary32, exact (every finite half is a float). Non-finite inputs are rejected by
// parse_record before this is called.
ONNXCOMP_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in binary32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Bytes of a bit stream of `bits` bits, and whether its unused low bits in the last byte are all 0.
ONNXCOMP_HD uint64_t stream_bytes(uint64_t bits) { return bits / 8 + (bits % 8 != 0); }
ONNXCOMP_HD bool stream_padding_is_zero(const uint8_t* stream, uint64_t bits) {
  const uint32_t spare = static_cast<uint32_t>(stream_bytes(bits) * 8 - bits);
  return spare == 0 || (stream[stream_bytes(bits) - 1] & ((1u << spare) - 1)) == 0;
}

// Outlier section (version 2): header, position stream and values; the positions themselves are checked
// when decode_outliers reads them.
ONNXCOMP_HD DecodeStatus parse_outlier_section(const uint8_t* data, Cursor& cursor, RecordInfo* out) {
  using namespace record;
  RecordInfo& info = *out;
  uint64_t offset;
  if (!cursor.take(kOutlierHeaderSize, &offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in outlier header");
  }
  info.outlier_count = load_u64(data + offset);
  info.outlier_format = data[offset + 8];
  info.rice_bits = data[offset + 9];
  info.positions_bits = load_u64(data + offset + 10);
  if (info.outlier_count < 1 || info.outlier_count > info.num_elements) {
    return decode_fail(DecodeError::kBadOutliers, "outlier count L outside 1..N");
  }
  if (info.outlier_format != kOutlierFloat16 && info.outlier_format != kOutlierFloat32) {
    return decode_fail(DecodeError::kBadOutliers, "outlier value format not 0 (float16) or 1 (float32)");
  }
  if (info.rice_bits > kMaxRiceBits) return decode_fail(DecodeError::kBadOutliers, "outlier Rice bits above 39");
  // Every gap code is at least rice_bits + 1 bits: a cheap bound before anything is decoded.
  if (info.positions_bits / (info.rice_bits + 1) < info.outlier_count) {
    return decode_fail(DecodeError::kBadOutliers, "outlier position stream shorter than L codes");
  }
  if (!cursor.take(stream_bytes(info.positions_bits), &info.positions_offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in outlier positions (shorter than position_bits)");
  }
  if (!stream_padding_is_zero(data + info.positions_offset, info.positions_bits)) {
    return decode_fail(DecodeError::kStreamHasBitsLeft, "outlier position padding bits not 0");
  }
  const uint32_t value_size = outlier_value_size(info.outlier_format);
  if (info.outlier_count > (cursor.end - cursor.position) / value_size ||
      !cursor.take(info.outlier_count * value_size, &info.outlier_values_offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in outlier values");
  }
  for (uint64_t j = 0; j < info.outlier_count; ++j) {
    const uint8_t* value = data + info.outlier_values_offset + j * value_size;
    if (value_size == 2 ? !half_is_finite_bits(load_u16(value)) : !float_is_finite_bits(load_u32(value))) {
      return decode_fail(DecodeError::kBadOutliers, "outlier value not finite");
    }
  }
  return decode_ok();
}

ONNXCOMP_HD float scale_value_at(const uint8_t* data, const RecordInfo& info, uint64_t c) {
  const uint8_t* value = data + info.scales_offset + c * (info.scale_format == record::kScaleFloat16 ? 2u : 4u);
  return info.scale_format == record::kScaleFloat16 ? half_bits_to_float(load_u16(value)) : bits_to_float(load_u32(value));
}

// Scale section (versions 3, 4): axis, value format, count C = dims[axis], then C finite positive values whose
// largest, times the largest |codebook| value, stays finite in binary32 (so no decoded value overflows).
ONNXCOMP_HD DecodeStatus parse_scale_section(const uint8_t* data, Cursor& cursor, float largest_codebook,
                                             RecordInfo* out) {
  using namespace record;
  RecordInfo& info = *out;
  uint64_t offset;
  if (!cursor.take(kScaleHeaderSize, &offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in scale header");
  }
  info.scale_axis = data[offset];
  info.scale_format = data[offset + 1];
  info.scale_count = load_u64(data + offset + 2);
  if (info.scale_axis >= info.rank) return decode_fail(DecodeError::kBadScales, "scale axis not below rank");
  if (info.scale_format != kScaleFloat16 && info.scale_format != kScaleFloat32) {
    return decode_fail(DecodeError::kBadScales, "scale value format not 0 (float16) or 1 (float32)");
  }
  if (info.scale_count != info.dims[info.scale_axis] || info.scale_count == 0) {
    return decode_fail(DecodeError::kBadScales, "scale count C differs from dims[axis] (or is 0)");
  }
  info.scale_stride = 1;
  for (uint32_t i = info.scale_axis + 1; i < info.rank; ++i) info.scale_stride *= info.dims[i];
  if (info.scale_stride == 0) info.scale_stride = 1;  // an empty tensor: no element reads a scale
  const uint32_t value_size = info.scale_format == kScaleFloat16 ? 2u : 4u;
  if (info.scale_count > (cursor.end - cursor.position) / value_size ||
      !cursor.take(info.scale_count * value_size, &info.scales_offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in scale values");
  }
  float largest = 0.0f;
  for (uint64_t c = 0; c < info.scale_count; ++c) {
    const uint8_t* value = data + info.scales_offset + c * value_size;
    if (value_size == 2 ? !half_is_finite_bits(load_u16(value)) : !float_is_finite_bits(load_u32(value))) {
      return decode_fail(DecodeError::kBadScales, "scale value not finite");
    }
    const float scale = scale_value_at(data, info, c);
    if (!(scale > 0.0f)) return decode_fail(DecodeError::kBadScales, "scale value not above 0");
    if (scale > largest) largest = scale;
  }
  const float product = packed::scaled(largest_codebook, largest);
  uint32_t product_bits;
  memcpy(&product_bits, &product, sizeof product_bits);
  if (!float_is_finite_bits(product_bits)) {
    return decode_fail(DecodeError::kBadScales, "largest scale times largest |codebook| value not finite");
  }
  return decode_ok();
}

// Validates everything that can be checked without decoding the payload: sizes against `size`,
// header fields, the CRC (before anything else is trusted beyond the magic), dims, codebook values,
// sparse parameters and the stream's padding bits.
ONNXCOMP_HD DecodeStatus parse_record(const uint8_t* data, uint64_t size, RecordInfo* out) {
  using namespace record;
  RecordInfo& info = *out;
  if (size < kFixedHeaderSize + kCrcSize) {
    return decode_fail(DecodeError::kTruncated, "record shorter than its fixed header");
  }
  if (load_u32(data + kOffsetMagic) != kMagicLE) {
    return decode_fail(DecodeError::kBadHeader, "bad record magic (expected OCWR)");
  }
  uint64_t body = size - kCrcSize;
  if (crc32(data, body) != load_u32(data + body)) {
    return decode_fail(DecodeError::kBadCrc, "record CRC-32 mismatch (corrupt or truncated record)");
  }
  const uint16_t version = load_u16(data + kOffsetVersion);
  if (version < kVersion || version > kMaxVersion) {
    return decode_fail(DecodeError::kBadHeader, "unsupported record version (expected 1 to 4)");
  }
  info.value_type = data[kOffsetValueType];
  if (info.value_type != kValueTypeFloat32 && info.value_type != kValueTypeUInt8 && info.value_type != kValueTypeInt8) {
    return decode_fail(DecodeError::kBadHeader, "unsupported value type (expected 1 float32, 2 uint8 or 3 int8)");
  }
  const bool integer = info.value_type != kValueTypeFloat32;
  if (integer && version != kVersion) {
    return decode_fail(DecodeError::kBadHeader, "an integer record (value type 2 or 3) must be version 1");
  }
  info.rank = data[kOffsetRank];
  if (info.rank > kMaxRank) return decode_fail(DecodeError::kBadHeader, "rank above 8");
  info.index_bits = data[kOffsetIndexBits];
  if (info.index_bits < kMinIndexBits || info.index_bits > kMaxIndexBits) {
    return decode_fail(DecodeError::kBadHeader, "index bits outside 1..16");
  }
  info.coding = data[kOffsetCoding];
  if (info.coding != kCodingDense && info.coding != kCodingSparse) {
    return decode_fail(DecodeError::kBadHeader, "unknown coding (expected 0 dense or 1 sparse)");
  }
  if (load_u16(data + kOffsetReserved) != 0) return decode_fail(DecodeError::kBadHeader, "reserved field not 0");
  info.codebook_size = load_u32(data + kOffsetCodebookSize);
  if (info.codebook_size < 1 || info.codebook_size > (uint32_t{1} << info.index_bits)) {
    return decode_fail(DecodeError::kBadCodebookSize, "codebook size K outside 1..2^bits");
  }
  info.num_elements = load_u64(data + kOffsetNumElements);
  if (info.num_elements >= kMaxElements) return decode_fail(DecodeError::kBadDims, "element count N not below 2^40");

  Cursor cursor{kFixedHeaderSize, body};
  uint64_t offset;
  if (!cursor.take(uint64_t{kDimSize} * info.rank, &offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in dims");
  }
  // Product of the non-zero dims stays below 2^40 (so no dim is absurd even when another is 0).
  uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (uint32_t i = 0; i < info.rank; ++i) {
    uint64_t dim = load_u64(data + offset + uint64_t{kDimSize} * i);
    info.dims[i] = dim;
    if (dim == 0) {
      has_zero = true;
      continue;
    }
    if (dim >= kMaxElements || nonzero_product >= kMaxElements / dim) {
      return decode_fail(DecodeError::kBadDims, "dims product overflows (not below 2^40)");
    }
    nonzero_product *= dim;
  }
  for (uint32_t i = info.rank; i < kMaxRank; ++i) info.dims[i] = 0;
  if ((has_zero ? 0 : nonzero_product) != info.num_elements) {
    return decode_fail(DecodeError::kBadDims, "dims product differs from element count N");
  }

  if (!cursor.take(uint64_t{kCodebookEntrySize} * info.codebook_size, &info.codebook_offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in codebook");
  }
  float largest_codebook = 0.0f;
  for (uint32_t i = 0; i < info.codebook_size; ++i) {
    const uint32_t bits = load_u32(data + info.codebook_offset + uint64_t{kCodebookEntrySize} * i);
    if (!float_is_finite_bits(bits)) return decode_fail(DecodeError::kBadCodebook, "codebook value not finite");
    const float magnitude = bits_to_float(bits & 0x7FFFFFFFu);
    if (magnitude > largest_codebook) largest_codebook = magnitude;
    if (integer) {  // an integer of the type's range, so the conversion to it is exact and defined
      const float value = bits_to_float(bits);
      const float low = info.value_type == kValueTypeInt8 ? -128.0f : 0.0f;
      const float high = info.value_type == kValueTypeInt8 ? 127.0f : 255.0f;
      if (!(value >= low && value <= high) || value != static_cast<float>(static_cast<int32_t>(value))) {
        return decode_fail(DecodeError::kBadCodebook, "integer record codebook value not an integer of its type's range");
      }
    }
  }

  info.gap_bits = 0;
  info.nonzero_count = 0;
  info.gap_table_offset = 0;
  if (info.coding == kCodingSparse) {
    if (load_u32(data + info.codebook_offset) != 0) {
      return decode_fail(DecodeError::kBadCodebook, "sparse coding needs codebook[0] == 0.0");
    }
    if (!cursor.take(kSparseHeaderSize, &offset)) {
      return decode_fail(DecodeError::kTruncated, "record truncated in sparse header");
    }
    info.gap_bits = data[offset];
    if (info.gap_bits < kMinGapBits || info.gap_bits > kMaxGapBits) {
      return decode_fail(DecodeError::kBadSparseHeader, "gap bits outside 1..16");
    }
    info.nonzero_count = load_u64(data + offset + 1);
    if (info.nonzero_count > info.num_elements) {
      return decode_fail(DecodeError::kBadSparseHeader, "non-zero count M above element count N");
    }
    if (!cursor.take(uint64_t{1} << info.gap_bits, &info.gap_table_offset)) {
      return decode_fail(DecodeError::kTruncated, "record truncated in gap Huffman table");
    }
  }
  if (!cursor.take(info.codebook_size, &info.value_table_offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in index Huffman table");
  }
  if (info.coding == kCodingSparse && data[info.value_table_offset] != 0) {
    return decode_fail(DecodeError::kBadHuffmanTable, "sparse value Huffman table codes symbol 0");
  }
  if (!cursor.take(kPayloadBitsSize, &offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated before payload_bits");
  }
  info.payload_bits = load_u64(data + offset);
  if (!cursor.take(stream_bytes(info.payload_bits), &info.payload_offset)) {
    return decode_fail(DecodeError::kTruncated, "record truncated in payload (shorter than payload_bits)");
  }
  if (!stream_padding_is_zero(data + info.payload_offset, info.payload_bits)) {
    return decode_fail(DecodeError::kStreamHasBitsLeft, "payload padding bits after payload_bits not 0");
  }
  info.outlier_count = 0;
  info.outlier_format = 0;
  info.rice_bits = 0;
  info.positions_offset = info.positions_bits = info.outlier_values_offset = 0;
  info.scale_axis = info.scale_format = 0;
  info.scale_count = info.scale_stride = info.scales_offset = 0;
  if (version_has_scales(version)) {
    DecodeStatus s = parse_scale_section(data, cursor, largest_codebook, &info);
    if (!s.ok()) return s;
  }
  if (version_has_outliers(version)) {
    DecodeStatus s = parse_outlier_section(data, cursor, &info);
    if (!s.ok()) return s;
  }
  if (cursor.position != body) {
    return decode_fail(DecodeError::kTrailingBytes, "record has bytes between its last section and its CRC");
  }
  return decode_ok();
}

// ---- Payload decoding ---------------------------------------------------------------------------------

// Dense records with one-byte indices and at least this many codes decode through the pair table (building it
// costs 2^kPairBits lookups).
inline constexpr uint64_t kPairMinElements = 4096;

ONNXCOMP_HD bool decodes_in_pairs(const RecordInfo& info) {
  return info.coding == record::kCodingDense && record::index_width(info.index_bits) == 1 &&
         info.codebook_size <= kPairSymbols && info.num_elements >= kPairMinElements;
}

ONNXCOMP_HD uint64_t decode_workspace_bytes(const RecordInfo& info) {
  uint64_t bytes = huffman_workspace_bytes(info.codebook_size);
  if (info.coding == record::kCodingSparse) bytes += huffman_workspace_bytes(uint32_t{1} << info.gap_bits);
  if (decodes_in_pairs(info)) bytes += kPairTableBytes;
  return bytes;
}

ONNXCOMP_HD BitReader payload_reader(const uint8_t* data, const RecordInfo& info) {
  return BitReader{data + info.payload_offset, info.payload_bits / 8 + (info.payload_bits % 8 != 0), info.payload_bits,
                   0};
}

// Dense coding: N codes, one per element.
template <typename Index>
ONNXCOMP_HD DecodeStatus decode_dense(const HuffmanDecoder& table, BitReader reader, uint64_t n, Index* indices) {
  uint64_t i = 0;
  // Fast path while 57 stream bits remain: several codes are taken from each 8-byte load, so the serial
  // chain per code is one table lookup and one shift, not a reload; no bounds checks are needed.
  while (i < n && reader.fast_ok()) {
    uint64_t word = reader.peek64_fast();
    uint32_t used = 0;
    do {
      uint32_t symbol;
      uint32_t length = huffman_decode_window(table, static_cast<uint32_t>(word >> 32), &symbol);
      if (ONNXCOMP_UNLIKELY(length == 0)) {
        return decode_fail(DecodeError::kNoCode, "payload holds a bit string that is no Huffman code");
      }
      word <<= length;
      used += length;
      indices[i++] = static_cast<Index>(symbol);
    } while (used <= kWordRefillAt && i < n);
    reader.position += used;
  }
  for (; i < n; ++i) {
    uint32_t symbol;
    DecodeStatus s = huffman_decode_one(table, reader, &symbol);
    if (!s.ok()) return s;
    indices[i] = static_cast<Index>(symbol);
  }
  if (reader.position != reader.size_bits) {
    return decode_fail(DecodeError::kStreamHasBitsLeft, "payload has bits left after the last code");
  }
  return decode_ok();
}

// Dense coding of at most 256 symbols (one-byte indices), up to three codes per lookup where they fit in kPairBits
// bits (huffman_build_pairs), the rest through decode_dense: the same indices and the same errors (one serial table
// lookup per one to three codes). A word is reloaded once fewer than kPairBits valid bits remain, or before a code
// longer than the table when fewer than the longest code's bits remain.
ONNXCOMP_HD DecodeStatus decode_dense_pairs(const HuffmanDecoder& table, const uint32_t* pairs, BitReader reader,
                                            uint64_t n, uint8_t* indices) {
  uint64_t i = 0;
  while (i + kPairMaxCodes <= n && reader.fast_ok()) {
    uint64_t word = reader.peek64_fast();
    uint32_t used = 0;
    do {
      const uint32_t entry = pairs[word >> (64 - kPairBits)];
      uint32_t length;
      if (ONNXCOMP_LIKELY(entry != 0)) {
        // All three bytes are written; those past the entry's count are overwritten by the next codes.
        indices[i] = static_cast<uint8_t>(entry >> 8);
        indices[i + 1] = static_cast<uint8_t>(entry >> 16);
        indices[i + 2] = static_cast<uint8_t>(entry >> 24);
        length = entry & 63;  // a shift count of 0..63 (x86-64 shifts mask theirs to that: no instruction)
        i += (entry >> 6) & 3;
      } else {
        if (used > kWordRefillAt) break;  // a code of up to 24 bits may not be whole in this word: reload first
        uint32_t symbol;
        length = huffman_decode_window(table, static_cast<uint32_t>(word >> 32), &symbol);
        if (ONNXCOMP_UNLIKELY(length == 0)) {
          return decode_fail(DecodeError::kNoCode, "payload holds a bit string that is no Huffman code");
        }
        indices[i++] = static_cast<uint8_t>(symbol);
      }
      word <<= length;
      used += length;
    } while (used <= kWordValidBits - kPairBits && i + kPairMaxCodes <= n);
    reader.position += used;
  }
  return decode_dense(table, reader, n - i, indices + i);
}

// Sparse (gap) coding: items of (gap, value) or escape, until M non-zero elements; the rest are index 0.
template <typename Index>
ONNXCOMP_HD DecodeStatus decode_sparse(const HuffmanDecoder& gaps, const HuffmanDecoder& values, BitReader reader,
                                       const RecordInfo& info, Index* indices) {
  const uint64_t n = info.num_elements;
  for (uint64_t i = 0; i < n; ++i) indices[i] = 0;
  const uint32_t escape = (uint32_t{1} << info.gap_bits) - 1;
  uint64_t position = 0;
  for (uint64_t produced = 0; produced < info.nonzero_count;) {
    uint32_t gap;
    DecodeStatus s = huffman_decode_one(gaps, reader, &gap);
    if (!s.ok()) return s;
    if (gap == escape) {
      if (escape > n - position) return decode_fail(DecodeError::kGapPassesN, "gap decoding passes element count N");
      position += escape;
      continue;
    }
    if (gap >= n - position) return decode_fail(DecodeError::kGapPassesN, "gap decoding passes element count N");
    position += gap;
    uint32_t value;
    s = huffman_decode_one(values, reader, &value);
    if (!s.ok()) return s;
    if (value == 0 || value >= info.codebook_size) {
      return decode_fail(DecodeError::kBadValueIndex, "sparse value index 0 or not below K");
    }
    indices[position++] = static_cast<Index>(value);
    ++produced;
  }
  if (reader.position != reader.size_bits) {
    return decode_fail(DecodeError::kStreamHasBitsLeft, "payload has bits left after the last code");
  }
  return decode_ok();
}

// Reads `count` (<= 32) bits MSB first; the caller has checked that they lie inside the stream.
ONNXCOMP_HD uint64_t read_bits(BitReader& reader, uint32_t count) {
  if (count == 0) return 0;
  const uint32_t window = reader.peek32_safe();
  reader.position += count;
  return window >> (32 - count);
}

// Decodes the outlier positions (Golomb-Rice coded gaps, docs/format.md) and values of a record
// parse_record accepted: `positions` and `values` hold info.outlier_count entries each. Positions come out
// strictly increasing and below N, or the record is rejected.
ONNXCOMP_HD DecodeStatus decode_outliers(const uint8_t* data, const RecordInfo& info, uint64_t* positions,
                                         float* values) {
  BitReader reader{data + info.positions_offset, stream_bytes(info.positions_bits), info.positions_bits, 0};
  const uint64_t n = info.num_elements;
  const uint32_t r = info.rice_bits;
  const uint64_t max_quotient = n >> r;  // a larger quotient alone puts the gap at or past N
  uint64_t next = 0;                     // the smallest position the next outlier may take
  for (uint64_t j = 0; j < info.outlier_count; ++j) {
    uint64_t quotient = 0;
    for (;;) {  // unary part: quotient one-bits, then a zero bit
      const uint64_t left = reader.size_bits - reader.position;
      if (left == 0) return decode_fail(DecodeError::kStreamEndsEarly, "outlier position stream ends early");
      const uint32_t window = reader.peek32_safe();
      uint32_t ones = 0;
      while (ones < 32 && (window >> (31 - ones)) & 1u) ++ones;
      if (ones >= left) return decode_fail(DecodeError::kStreamEndsEarly, "outlier position stream ends early");
      quotient += ones;
      if (quotient > max_quotient) return decode_fail(DecodeError::kBadOutliers, "outlier position not below N");
      reader.position += ones;
      if (ones < 32) {
        reader.position += 1;  // the terminating zero
        break;
      }
    }
    if (reader.size_bits - reader.position < r) {
      return decode_fail(DecodeError::kStreamEndsEarly, "outlier position stream ends early");
    }
    uint64_t remainder = r > 20 ? read_bits(reader, r - 20) << 20 : 0;
    remainder |= read_bits(reader, r > 20 ? 20 : r);
    const uint64_t gap = (quotient << r) | remainder;
    if (next >= n || gap >= n - next) return decode_fail(DecodeError::kBadOutliers, "outlier position not below N");
    positions[j] = next + gap;
    next = positions[j] + 1;
  }
  if (reader.position != reader.size_bits) {
    return decode_fail(DecodeError::kStreamHasBitsLeft, "outlier position stream has bits left after L codes");
  }
  const uint32_t value_size = record::outlier_value_size(info.outlier_format);
  for (uint64_t j = 0; j < info.outlier_count; ++j) {
    const uint8_t* value = data + info.outlier_values_offset + j * value_size;
    values[j] = value_size == 2 ? half_bits_to_float(load_u16(value)) : bits_to_float(load_u32(value));
  }
  return decode_ok();
}

// The C scales of a record parse_record accepted (info.scale_count > 0), as binary32.
ONNXCOMP_HD void decode_scales(const uint8_t* data, const RecordInfo& info, float* scales) {
  for (uint64_t c = 0; c < info.scale_count; ++c) scales[c] = scale_value_at(data, info, c);
}

// Decodes a record parse_record accepted: K floats into `codebook`, N indices in working form
// (uint8 when index_bits <= 8, else uint16) into `indices`.
ONNXCOMP_HD DecodeStatus decode_record(const uint8_t* data, const RecordInfo& info, float* codebook, void* indices,
                                       void* workspace, uint64_t workspace_bytes) {
  if (workspace_bytes < decode_workspace_bytes(info) || (reinterpret_cast<uintptr_t>(workspace) & 3) != 0) {
    return decode_fail(DecodeError::kBadArgument, "decode workspace too small or not 4-byte aligned");
  }
  for (uint32_t i = 0; i < info.codebook_size; ++i) {
    codebook[i] = bits_to_float(load_u32(data + info.codebook_offset + uint64_t{record::kCodebookEntrySize} * i));
  }
  HuffmanDecoder values;
  DecodeStatus s = huffman_build(data + info.value_table_offset, info.codebook_size, workspace, &values);
  if (!s.ok()) return s;
  BitReader reader = payload_reader(data, info);
  const bool wide = record::index_width(info.index_bits) == 2;
  if (decodes_in_pairs(info)) {
    uint32_t* pairs = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(workspace) +
                                                  huffman_workspace_bytes(info.codebook_size));
    huffman_build_pairs(values, pairs);
    return decode_dense_pairs(values, pairs, reader, info.num_elements, static_cast<uint8_t*>(indices));
  }
  if (info.coding == record::kCodingDense) {
    return wide ? decode_dense(values, reader, info.num_elements, static_cast<uint16_t*>(indices))
                : decode_dense(values, reader, info.num_elements, static_cast<uint8_t*>(indices));
  }
  HuffmanDecoder gaps;
  void* gap_workspace = static_cast<uint8_t*>(workspace) + huffman_workspace_bytes(info.codebook_size);
  s = huffman_build(data + info.gap_table_offset, uint32_t{1} << info.gap_bits, gap_workspace, &gaps);
  if (!s.ok()) return s;
  return wide ? decode_sparse(gaps, values, reader, info, static_cast<uint16_t*>(indices))
              : decode_sparse(gaps, values, reader, info, static_cast<uint8_t*>(indices));
}

}  // namespace onnxcomp

#endif  // ONNXCOMP_DECODE_H_
