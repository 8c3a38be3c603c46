// The weight-record layout of docs/format.md (record versions 1 to 4), pinned in one place.
// Shared by host and device code: constants only, no ORT types, no STL.
#ifndef ONNXCOMP_RECORD_FORMAT_H_
#define ONNXCOMP_RECORD_FORMAT_H_

#include <stdint.h>

namespace onnxcomp {

// The op domain, once for C++ (onnxcomp/runtime.py holds the Python twin; a test checks they agree).
#define ONNXCOMP_DOMAIN "ai.onnxcomp"
inline constexpr const char kDomain[] = ONNXCOMP_DOMAIN;
inline constexpr int kOpsetVersion = 1;

namespace record {

inline constexpr uint8_t kMagic[4] = {'O', 'C', 'W', 'R'};
inline constexpr uint32_t kMagicLE = 0x5257434Fu;  // kMagic read as a little-endian u32 (device-friendly)
// Version 1: codebook + coded indices. Version 2: the same followed by an outlier section (exact values at
// listed positions). Writers use version 1 whenever a record has no outliers, so older readers keep reading it.
// Version 3: version 1 followed by a channel-scale section; version 4: version 3 followed by an outlier section.
// So (version - 1) bit 0 = outlier section, bit 1 = scale section; writers use the lowest version that fits.
inline constexpr uint16_t kVersion = 1;
inline constexpr uint16_t kVersionOutliers = 2;
inline constexpr uint16_t kVersionScales = 3;
inline constexpr uint16_t kVersionScalesOutliers = 4;
inline constexpr uint16_t kMaxVersion = 4;
inline constexpr bool version_has_outliers(uint32_t version) { return ((version - 1) & 1u) != 0; }
inline constexpr bool version_has_scales(uint32_t version) { return ((version - 1) & 2u) != 0; }
inline constexpr uint8_t kValueTypeFloat32 = 1;  // ONNX TensorProto.FLOAT
// Integer records (lossless coding of 8-bit integer weights): the codebook's float32 values are integers of the
// type's range, the decoded tensor has that type; version 1 only (no scales, no outliers).
inline constexpr uint8_t kValueTypeUInt8 = 2;  // ONNX TensorProto.UINT8: codebook values in [0, 255]
inline constexpr uint8_t kValueTypeInt8 = 3;   // ONNX TensorProto.INT8: codebook values in [-128, 127]
inline constexpr uint8_t kCodingDense = 0;
inline constexpr uint8_t kCodingSparse = 1;

inline constexpr uint32_t kMaxRank = 8;
inline constexpr uint32_t kMinIndexBits = 1;
inline constexpr uint32_t kMaxIndexBits = 16;
inline constexpr uint32_t kMinGapBits = 1;
inline constexpr uint32_t kMaxGapBits = 16;
inline constexpr uint32_t kMaxCodeLength = 24;
inline constexpr uint64_t kMaxElements = uint64_t{1} << 40;  // N must be strictly below this
// Outlier section: value format and the Golomb-Rice parameter of the position gaps.
inline constexpr uint8_t kOutlierFloat16 = 0;  // IEEE-754 binary16, little-endian
inline constexpr uint8_t kOutlierFloat32 = 1;  // IEEE-754 binary32, little-endian
inline constexpr uint32_t kMaxRiceBits = 39;    // gaps are below N < 2^40
// Scale section (versions 3, 4): axis, value format (as the outlier values), channel count C = dims[axis].
inline constexpr uint8_t kScaleFloat16 = 0;
inline constexpr uint8_t kScaleFloat32 = 1;
inline constexpr uint32_t kScaleHeaderSize = 1 + 1 + 8;  // axis, value format, count C

// Fixed header: byte offsets of each field.
inline constexpr uint32_t kOffsetMagic = 0;
inline constexpr uint32_t kOffsetVersion = 4;
inline constexpr uint32_t kOffsetValueType = 6;
inline constexpr uint32_t kOffsetRank = 7;
inline constexpr uint32_t kOffsetIndexBits = 8;
inline constexpr uint32_t kOffsetCoding = 9;
inline constexpr uint32_t kOffsetReserved = 10;
inline constexpr uint32_t kOffsetCodebookSize = 12;
inline constexpr uint32_t kOffsetNumElements = 16;
inline constexpr uint32_t kOffsetDims = 24;
inline constexpr uint32_t kFixedHeaderSize = 24;
inline constexpr uint32_t kDimSize = 8;
inline constexpr uint32_t kCodebookEntrySize = 4;
inline constexpr uint32_t kCrcSize = 4;
inline constexpr uint32_t kPayloadBitsSize = 8;
inline constexpr uint32_t kSparseHeaderSize = 1 + 8;  // gap bits, M
inline constexpr uint32_t kOutlierHeaderSize = 8 + 1 + 1 + 8;  // count L, value format, Rice bits, position_bits
inline constexpr uint32_t outlier_value_size(uint32_t format) { return format == kOutlierFloat16 ? 2u : 4u; }

// The smallest possible record: rank 0, K = 1, dense, empty payload.
inline constexpr uint32_t kMinRecordSize =
    kFixedHeaderSize + kCodebookEntrySize + 1 /*table*/ + kPayloadBitsSize + kCrcSize;

static_assert(kMagicLE == (uint32_t{kMagic[0]} | uint32_t{kMagic[1]} << 8 | uint32_t{kMagic[2]} << 16 |
                           uint32_t{kMagic[3]} << 24), "magic as u32");
static_assert(kOffsetDims == kFixedHeaderSize, "dims follow the fixed header");
static_assert(kOffsetNumElements + 8 == kFixedHeaderSize, "N is the last fixed field");
static_assert(kOffsetCodebookSize + 4 == kOffsetNumElements, "K is a u32 before N");
static_assert(kOffsetReserved + 2 == kOffsetCodebookSize, "reserved is a u16");
static_assert(kMinRecordSize == 41, "rank-0, K=1 dense record size");
static_assert(kMaxCodeLength < 32, "codes are peeked from a 32-bit window");
static_assert(kMaxIndexBits <= 16, "indices are held in at most two bytes");
static_assert(kMaxGapBits <= 16, "gap symbols are held in at most two bytes");
static_assert(outlier_value_size(kOutlierFloat16) == 2 && outlier_value_size(kOutlierFloat32) == 4, "outlier values");
static_assert((uint64_t{1} << (kMaxRiceBits + 1)) >= kMaxElements, "a Rice parameter can cover any gap below N");
static_assert(version_has_outliers(kVersionOutliers) && !version_has_scales(kVersionOutliers) &&
                  version_has_scales(kVersionScales) && !version_has_outliers(kVersionScales) &&
                  version_has_scales(kVersionScalesOutliers) && version_has_outliers(kVersionScalesOutliers) &&
                  !version_has_scales(kVersion) && !version_has_outliers(kVersion), "version bits");
static_assert(kMaxRank * kDimSize + kFixedHeaderSize < 256, "header fits in a small buffer");

// Working form of the indices: one byte each up to 8 index bits, two bytes otherwise.
inline constexpr uint32_t index_width(uint32_t index_bits) { return index_bits <= 8 ? 1u : 2u; }
static_assert(index_width(8) == sizeof(uint8_t) && index_width(9) == sizeof(uint16_t), "index widths");

}  // namespace record
}  // namespace onnxcomp

#endif  // ONNXCOMP_RECORD_FORMAT_H_
