// Canonical Huffman decoding over an MSB-first bit stream (docs/format.md, "Huffman tables", "Bit stream").
// Pure math for host and device code: no ORT types, no STL, no exceptions, no allocation (the caller
// hands in the memory for the lookup tables).
#ifndef ONNXCOMP_HUFFMAN_H_
#define ONNXCOMP_HUFFMAN_H_

#include <stdint.h>
#include <string.h>

#include "record_format.h"

#if defined(__CUDACC__)
#define ONNXCOMP_HD __host__ __device__ inline
#else
#define ONNXCOMP_HD inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ONNXCOMP_LIKELY(x) __builtin_expect(!!(x), 1)
#define ONNXCOMP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ONNXCOMP_LIKELY(x) (x)
#define ONNXCOMP_UNLIKELY(x) (x)
#endif

namespace onnxcomp {

// Error codes of the record decoder; every failure also carries a static message naming the problem.
enum class DecodeError : uint8_t {
  kOk = 0,
  kTruncated,          // shorter than its fields imply
  kTrailingBytes,      // longer than its fields imply
  kBadHeader,          // magic, version, value type, rank, bits, coding, reserved
  kBadCodebookSize,    // K outside 1..2^b
  kBadDims,            // dims product differs from N, overflows, or N too large
  kBadCrc,
  kBadCodebook,        // non-finite value, or sparse codebook[0] != +0.0
  kBadSparseHeader,    // gap bits or M out of range
  kBadHuffmanTable,    // code length > 24, Kraft sum not 1, sparse value table codes symbol 0
  kNoCode,             // the stream holds a bit string that is no code
  kStreamEndsEarly,
  kStreamHasBitsLeft,  // payload_bits not consumed exactly, or non-zero padding bits
  kBadValueIndex,      // sparse value index 0 or >= K
  kGapPassesN,
  kBadOutliers,        // outlier section: count, value format, Rice bits, positions or values out of range
  kBadScales,          // scale section: axis, value format, count or values out of range
  kBadArgument,        // caller error: workspace too small or misaligned
};

struct DecodeStatus {
  DecodeError error;
  const char* message;  // static string, never null
  ONNXCOMP_HD bool ok() const { return error == DecodeError::kOk; }
};

ONNXCOMP_HD DecodeStatus decode_ok() { return DecodeStatus{DecodeError::kOk, "ok"}; }
ONNXCOMP_HD DecodeStatus decode_fail(DecodeError error, const char* message) { return DecodeStatus{error, message}; }

// ---- Bit stream ---------------------------------------------------------------------------------------

// Reads codes MSB first. Never touches a byte at or beyond `size_bytes`: reads past the end see zeros,
// and callers compare the bit position against `size_bits` to detect a stream that ends early.
// Invariant: position <= size_bits <= 8 * size_bytes.
struct BitReader {
  const uint8_t* data;
  uint64_t size_bytes;
  uint64_t size_bits;
  uint64_t position;  // in bits from the start of data

  // Whether the next kWordValidBits bits are all stream bits: then an 8-byte load at (position >> 3) is in
  // bounds (the stream lies within size_bytes) and no code decoded from it runs past the stream's end.
  ONNXCOMP_HD bool fast_ok() const;

  // The 64 bits at byte (position >> 3), big-endian, shifted so the first stream bit is the MSB: at least
  // 57 valid bits. Requires (position >> 3) + 8 <= size_bytes.
  ONNXCOMP_HD uint64_t peek64_fast() const {
    const uint8_t* p = data + (position >> 3);
    uint64_t word;
#if defined(__CUDA_ARCH__)
    word = 0;
    for (int i = 0; i < 8; ++i) word = (word << 8) | p[i];
#else
    memcpy(&word, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    word = __builtin_bswap64(word);
#endif
#endif
    return word << (position & 7);
  }

  // The 32 bits from `position` on, first stream bit in the MSB. Requires (position >> 3) + 8 <= size_bytes.
  ONNXCOMP_HD uint32_t peek32_fast() const { return static_cast<uint32_t>(peek64_fast() >> 32); }

  // Same, for any position: bytes past the end read as zero.
  ONNXCOMP_HD uint32_t peek32_safe() const {
    uint64_t byte = position >> 3;
    uint64_t word = 0;
    for (int i = 0; i < 5; ++i) {
      word <<= 8;
      if (byte + i < size_bytes) word |= data[byte + i];
    }
    // word holds 40 bits; drop the bits before `position` and keep the next 32.
    return static_cast<uint32_t>((word << (24 + (position & 7))) >> 32);
  }
};

// Valid bits in a peek64_fast() word, and how many may be consumed from it while another code of the
// maximum length still fits inside the valid bits.
inline constexpr uint32_t kWordValidBits = 57;
inline constexpr uint32_t kWordRefillAt = kWordValidBits - record::kMaxCodeLength;

ONNXCOMP_HD bool BitReader::fast_ok() const { return size_bits - position >= kWordValidBits; }

// ---- Canonical Huffman decoder --------------------------------------------------------------------------

// First-level table width: codes up to this length decode with one lookup; longer codes take a slow path.
inline constexpr uint32_t kLookupBits = 11;
static_assert(kLookupBits <= record::kMaxCodeLength, "lookup covers at most the longest code");

// Lookup entry: symbol << 8 | code length; 0 = no code of length <= lookup bits starts with this prefix.
inline constexpr uint32_t kLookupLengthMask = 0xFF;

struct HuffmanDecoder {
  uint32_t count[record::kMaxCodeLength + 1];        // codes of each length
  uint32_t first_code[record::kMaxCodeLength + 1];   // canonical first code of each length
  uint32_t first_index[record::kMaxCodeLength + 1];  // its position in `symbols`
  uint32_t num_present;
  uint32_t max_length;
  uint32_t lookup_bits;  // <= kLookupBits; smaller for short codes so tiny tables stay cheap to build
  uint32_t* lookup;      // 1 << lookup_bits entries
  uint16_t* symbols;     // present symbols sorted by (length, symbol)
};

// Workspace one decoder needs for an alphabet of `num_symbols`, rounded up to keep 4-byte alignment.
ONNXCOMP_HD uint64_t huffman_workspace_bytes(uint32_t num_symbols) {
  uint64_t bytes = (uint64_t{1} << kLookupBits) * sizeof(uint32_t) + uint64_t{num_symbols} * sizeof(uint16_t);
  return (bytes + 3) & ~uint64_t{3};
}

// Validates a table of `num_symbols` code lengths and builds the decoder in `workspace`
// (huffman_workspace_bytes(num_symbols) bytes, 4-byte aligned). num_symbols <= 65536.
ONNXCOMP_HD DecodeStatus huffman_build(const uint8_t* lengths, uint32_t num_symbols, void* workspace,
                                       HuffmanDecoder* decoder) {
  HuffmanDecoder& d = *decoder;
  for (uint32_t l = 0; l <= record::kMaxCodeLength; ++l) d.count[l] = 0;
  d.num_present = 0;
  d.max_length = 0;
  for (uint32_t s = 0; s < num_symbols; ++s) {
    uint32_t l = lengths[s];
    if (l > record::kMaxCodeLength) return decode_fail(DecodeError::kBadHuffmanTable, "Huffman code length above 24");
    d.count[l]++;
    if (l > d.max_length) d.max_length = l;
  }
  d.num_present = num_symbols - d.count[0];
  d.count[0] = 0;
  if (d.num_present == 1) {
    if (d.max_length != 1) {
      return decode_fail(DecodeError::kBadHuffmanTable, "Huffman table with one symbol must give it length 1");
    }
  } else if (d.num_present > 1) {
    // Kraft sum with equality, in units of 2^-24: a complete prefix code.
    uint64_t kraft = 0;
    for (uint32_t l = 1; l <= record::kMaxCodeLength; ++l) kraft += uint64_t{d.count[l]} << (record::kMaxCodeLength - l);
    if (kraft > (uint64_t{1} << record::kMaxCodeLength)) {
      return decode_fail(DecodeError::kBadHuffmanTable, "Huffman table over-subscribed (Kraft sum above 1)");
    }
    if (kraft < (uint64_t{1} << record::kMaxCodeLength)) {
      return decode_fail(DecodeError::kBadHuffmanTable, "Huffman table incomplete (Kraft sum below 1)");
    }
  }

  uint32_t code = 0;
  uint32_t index = 0;
  for (uint32_t l = 1; l <= record::kMaxCodeLength; ++l) {
    code = (code + d.count[l - 1]) << 1;
    d.first_code[l] = code;
    d.first_index[l] = index;
    index += d.count[l];
  }
  d.first_code[0] = 0;
  d.first_index[0] = 0;

  d.lookup = static_cast<uint32_t*>(workspace);
  d.symbols = reinterpret_cast<uint16_t*>(static_cast<uint8_t*>(workspace) +
                                          (uint64_t{1} << kLookupBits) * sizeof(uint32_t));
  // Counting sort by length: positions per length start at first_index; reuse `lookup` as scratch.
  uint32_t* next = d.lookup;
  for (uint32_t l = 0; l <= record::kMaxCodeLength; ++l) next[l] = d.first_index[l];
  for (uint32_t s = 0; s < num_symbols; ++s) {
    uint32_t l = lengths[s];
    if (l) d.symbols[next[l]++] = static_cast<uint16_t>(s);
  }

  d.lookup_bits = d.max_length < kLookupBits ? (d.max_length ? d.max_length : 1) : kLookupBits;
  uint32_t entries = 1u << d.lookup_bits;
  for (uint32_t i = 0; i < entries; ++i) d.lookup[i] = 0;
  uint32_t short_max = d.max_length < d.lookup_bits ? d.max_length : d.lookup_bits;
  for (uint32_t l = 1; l <= short_max; ++l) {
    uint32_t shift = d.lookup_bits - l;
    for (uint32_t i = 0; i < d.count[l]; ++i) {
      uint32_t c = d.first_code[l] + i;
      uint32_t entry = (uint32_t{d.symbols[d.first_index[l] + i]} << 8) | l;
      for (uint32_t j = c << shift, end = (c + 1) << shift; j < end; ++j) d.lookup[j] = entry;
    }
  }
  return decode_ok();
}

// Decodes one symbol from the 32-bit window `bits` (first stream bit in the MSB).
// Returns the code length (0 if the bits start no code) and stores the symbol.
ONNXCOMP_HD uint32_t huffman_decode_window(const HuffmanDecoder& d, uint32_t bits, uint32_t* symbol) {
  uint32_t entry = d.lookup[bits >> (32 - d.lookup_bits)];
  if (ONNXCOMP_LIKELY(entry != 0)) {
    *symbol = entry >> 8;
    return entry & kLookupLengthMask;
  }
  // Longer codes: canonical codes of length l are first_code[l] .. first_code[l] + count[l] - 1.
  for (uint32_t l = d.lookup_bits + 1; l <= d.max_length; ++l) {
    uint32_t offset = (bits >> (32 - l)) - d.first_code[l];  // wraps above count when below first_code
    if (offset < d.count[l]) {
      *symbol = d.symbols[d.first_index[l] + offset];
      return l;
    }
  }
  return 0;
}

// Multi-code table: for alphabets of at most 256 symbols, one lookup of the next kPairBits stream bits yields the
// code that starts there and up to two codes after it, as many as fit whole in those bits. Entry: bits taken (bits
// 0-5, so a 64-bit shift by the entry takes them without a mask) | codes in it (1 to 3) << 6 | first symbol << 8 |
// second << 16 | third << 24; 0 when the first code is longer than kPairBits (or no code: the single-code path then
// decides). Symbols past the entry's count are 0. 2^11 entries: 8 KiB, in L1 beside the single-code table.
inline constexpr uint32_t kPairBits = 11;
inline constexpr uint32_t kPairSymbols = 256;
inline constexpr uint32_t kPairMaxCodes = 3;
inline constexpr uint64_t kPairTableBytes = (uint64_t{1} << kPairBits) * sizeof(uint32_t);

// Built from the single-code table alone (a code longer than its lookup bits never fits in kPairBits bits), so each
// entry costs at most kPairMaxCodes table reads.
ONNXCOMP_HD void huffman_build_pairs(const HuffmanDecoder& d, uint32_t* pairs) {
  static_assert(kPairBits <= kLookupBits, "a code that fits the pair bits is in the single-code table");
  const uint32_t shift = 32 - d.lookup_bits;
  for (uint32_t prefix = 0; prefix < (1u << kPairBits); ++prefix) {
    const uint32_t window = prefix << (32 - kPairBits);  // the bits after the prefix read as 0: codes within it only
    uint32_t entry = 0, taken = 0, codes = 0;
    while (codes < kPairMaxCodes) {
      const uint32_t code = d.lookup[(window << taken) >> shift];  // symbol << 8 | length, or 0
      const uint32_t length = code & kLookupLengthMask;
      if (length == 0 || taken + length > kPairBits) break;
      entry |= (code >> 8) << (8 * (codes + 1));
      taken += length;
      ++codes;
    }
    pairs[prefix] = codes ? entry | taken | (codes << 6) : 0;
  }
}

// Decodes one symbol at any position (bounds-checked against the stream length).
ONNXCOMP_HD DecodeStatus huffman_decode_one(const HuffmanDecoder& d, BitReader& reader, uint32_t* symbol) {
  uint32_t window = reader.fast_ok() ? reader.peek32_fast() : reader.peek32_safe();
  uint32_t length = huffman_decode_window(d, window, symbol);
  if (length == 0) {
    if (reader.position >= reader.size_bits) {
      return decode_fail(DecodeError::kStreamEndsEarly, "payload ends before all codes are read");
    }
    return decode_fail(DecodeError::kNoCode, "payload holds a bit string that is no Huffman code");
  }
  if (reader.size_bits - reader.position < length) {
    return decode_fail(DecodeError::kStreamEndsEarly, "payload ends before all codes are read");
  }
  reader.position += length;
  return decode_ok();
}

}  // namespace onnxcomp

#endif  // ONNXCOMP_HUFFMAN_H_
