// Test-only weight-record encoder (docs/format.md), written independently of the decoder so tests can
// build valid records and then break them field by field.
#ifndef ONNXCOMP_TESTS_TEST_ENCODER_H_
#define ONNXCOMP_TESTS_TEST_ENCODER_H_

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

#include "decode.h"

namespace onnxcomp_test {

using Bytes = std::vector<uint8_t>;

inline void put_u16(Bytes& b, uint16_t v) { for (int i = 0; i < 2; ++i) b.push_back(uint8_t(v >> (8 * i))); }
inline void put_u32(Bytes& b, uint32_t v) { for (int i = 0; i < 4; ++i) b.push_back(uint8_t(v >> (8 * i))); }
inline void put_u64(Bytes& b, uint64_t v) { for (int i = 0; i < 8; ++i) b.push_back(uint8_t(v >> (8 * i))); }
inline void set_u32(Bytes& b, size_t at, uint32_t v) { for (int i = 0; i < 4; ++i) b[at + i] = uint8_t(v >> (8 * i)); }
inline void set_u64(Bytes& b, size_t at, uint64_t v) { for (int i = 0; i < 8; ++i) b[at + i] = uint8_t(v >> (8 * i)); }

// Bitwise CRC-32, independent of the decoder's table-driven one.
inline uint32_t reference_crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
  }
  return ~c;
}

// Rewrites the trailing CRC so a deliberately broken record passes the CRC check.
inline void fix_crc(Bytes& record) { set_u32(record, record.size() - 4, reference_crc32(record.data(), record.size() - 4)); }

// Huffman code lengths from symbol counts (absent symbols: length 0; one present symbol: length 1).
inline Bytes huffman_lengths(const std::vector<uint64_t>& counts) {
  Bytes lengths(counts.size(), 0);
  using Node = std::pair<uint64_t, int>;  // weight, node id
  std::priority_queue<Node, std::vector<Node>, std::greater<Node>> heap;
  std::vector<int> parent;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (counts[s]) {
      heap.push({counts[s], int(parent.size())});
      parent.push_back(-1);
    }
  }
  size_t leaves = parent.size();
  if (leaves == 1) {
    for (size_t s = 0; s < counts.size(); ++s) if (counts[s]) lengths[s] = 1;
    return lengths;
  }
  while (heap.size() > 1) {
    Node a = heap.top(); heap.pop();
    Node b = heap.top(); heap.pop();
    int id = int(parent.size());
    parent.push_back(-1);
    parent[a.second] = id;
    parent[b.second] = id;
    heap.push({a.first + b.first, id});
  }
  size_t leaf = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    int depth = 0;
    for (int n = int(leaf); parent[n] != -1; n = parent[n]) ++depth;
    lengths[s] = uint8_t(depth);
    ++leaf;
  }
  return lengths;
}

// Canonical codes for the lengths, as the spec defines them.
inline std::vector<uint32_t> canonical_codes(const Bytes& lengths) {
  std::vector<std::pair<int, int>> order;
  for (size_t s = 0; s < lengths.size(); ++s) if (lengths[s]) order.push_back({lengths[s], int(s)});
  std::sort(order.begin(), order.end());
  std::vector<uint32_t> codes(lengths.size(), 0);
  uint32_t code = 0;
  int previous = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i) code = (code + 1) << (order[i].first - previous);
    else code <<= order[i].first;  // first code is 0 at its length
    codes[order[i].second] = code;
    previous = order[i].first;
  }
  return codes;
}

struct BitWriter {
  Bytes bytes;
  uint64_t bits = 0;
  void write(uint32_t code, int length) {
    for (int i = length - 1; i >= 0; --i) {
      if (bits % 8 == 0) bytes.push_back(0);
      if ((code >> i) & 1) bytes.back() |= uint8_t(0x80 >> (bits % 8));
      ++bits;
    }
  }
};

// Everything a record holds; tests fill it, optionally break a field, then serialize.
struct RecordSpec {
  uint16_t version = 1;
  uint8_t value_type = 1;
  uint8_t index_bits = 4;
  uint8_t coding = 0;
  uint16_t reserved = 0;
  std::vector<uint64_t> dims;
  uint64_t num_elements = 0;  // filled from dims by the builders
  std::vector<float> codebook;
  uint8_t gap_bits = 0;
  uint64_t nonzero_count = 0;
  Bytes gap_lengths;
  Bytes value_lengths;
  uint64_t payload_bits = 0;
  Bytes payload;
  int rank_override = -1;  // to write a rank that differs from dims.size()
  // Outlier section, written when version == 2 (see with_outliers).
  uint64_t outlier_count = 0;
  uint8_t outlier_format = 0;
  uint8_t rice_bits = 0;
  uint64_t positions_bits = 0;
  Bytes positions;
  Bytes outlier_values;
};

inline Bytes serialize(const RecordSpec& s) {
  Bytes b{'O', 'C', 'W', 'R'};
  put_u16(b, s.version);
  b.push_back(s.value_type);
  b.push_back(uint8_t(s.rank_override >= 0 ? s.rank_override : int(s.dims.size())));
  b.push_back(s.index_bits);
  b.push_back(s.coding);
  put_u16(b, s.reserved);
  put_u32(b, uint32_t(s.codebook.size()));
  put_u64(b, s.num_elements);
  for (uint64_t d : s.dims) put_u64(b, d);
  for (float f : s.codebook) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(b, u);
  }
  if (s.coding == 1) {
    b.push_back(s.gap_bits);
    put_u64(b, s.nonzero_count);
    b.insert(b.end(), s.gap_lengths.begin(), s.gap_lengths.end());
  }
  b.insert(b.end(), s.value_lengths.begin(), s.value_lengths.end());
  put_u64(b, s.payload_bits);
  b.insert(b.end(), s.payload.begin(), s.payload.end());
  if (s.version == 2) {
    put_u64(b, s.outlier_count);
    b.push_back(s.outlier_format);
    b.push_back(s.rice_bits);
    put_u64(b, s.positions_bits);
    b.insert(b.end(), s.positions.begin(), s.positions.end());
    b.insert(b.end(), s.outlier_values.begin(), s.outlier_values.end());
  }
  put_u32(b, 0);
  fix_crc(b);
  return b;
}

inline uint64_t product(const std::vector<uint64_t>& dims) {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

inline RecordSpec dense_spec(const std::vector<float>& codebook, const std::vector<uint32_t>& indices,
                             const std::vector<uint64_t>& dims, uint8_t bits) {
  RecordSpec s;
  s.index_bits = bits;
  s.dims = dims;
  s.num_elements = product(dims);
  s.codebook = codebook;
  std::vector<uint64_t> counts(codebook.size(), 0);
  for (uint32_t i : indices) counts[i]++;
  s.value_lengths = huffman_lengths(counts);
  std::vector<uint32_t> codes = canonical_codes(s.value_lengths);
  BitWriter w;
  for (uint32_t i : indices) w.write(codes[i], s.value_lengths[i]);
  s.payload = w.bytes;
  s.payload_bits = w.bits;
  return s;
}

inline RecordSpec sparse_spec(const std::vector<float>& codebook, const std::vector<uint32_t>& indices,
                              const std::vector<uint64_t>& dims, uint8_t bits, uint8_t gap_bits) {
  RecordSpec s;
  s.index_bits = bits;
  s.coding = 1;
  s.dims = dims;
  s.num_elements = product(dims);
  s.codebook = codebook;
  s.gap_bits = gap_bits;
  const uint32_t escape = (1u << gap_bits) - 1;
  // Items: (gap symbol, value or -1 for escape).
  std::vector<std::pair<uint32_t, int64_t>> items;
  uint64_t run = 0;
  for (uint32_t i : indices) {
    if (i == 0) { ++run; continue; }
    while (run >= escape) { items.push_back({escape, -1}); run -= escape; }
    items.push_back({uint32_t(run), int64_t(i)});
    run = 0;
  }
  std::vector<uint64_t> gap_counts(size_t(1) << gap_bits, 0), value_counts(codebook.size(), 0);
  for (auto& item : items) {
    gap_counts[item.first]++;
    if (item.second >= 0) { value_counts[size_t(item.second)]++; s.nonzero_count++; }
  }
  s.gap_lengths = huffman_lengths(gap_counts);
  s.value_lengths = huffman_lengths(value_counts);
  std::vector<uint32_t> gap_codes = canonical_codes(s.gap_lengths), value_codes = canonical_codes(s.value_lengths);
  BitWriter w;
  for (auto& item : items) {
    w.write(gap_codes[item.first], s.gap_lengths[item.first]);
    if (item.second >= 0) w.write(value_codes[size_t(item.second)], s.value_lengths[size_t(item.second)]);
  }
  s.payload = w.bytes;
  s.payload_bits = w.bits;
  return s;
}

// Adds an outlier section (version 2): Golomb-Rice coded gaps with parameter `rice_bits`, values as binary32
// (format 1) or, format 0, as the binary16 bit patterns in `half_bits`.
inline void with_outliers(RecordSpec& s, const std::vector<uint64_t>& positions, const std::vector<float>& values,
                          uint8_t rice_bits, uint8_t format = 1, const std::vector<uint16_t>& half_bits = {}) {
  s.version = 2;
  s.outlier_count = positions.size();
  s.outlier_format = format;
  s.rice_bits = rice_bits;
  BitWriter w;
  uint64_t next = 0;
  for (uint64_t p : positions) {
    const uint64_t gap = p - next;
    for (uint64_t q = gap >> rice_bits; q; --q) w.write(1, 1);
    w.write(0, 1);
    for (int b = rice_bits - 1; b >= 0; --b) w.write(uint32_t(gap >> b) & 1u, 1);
    next = p + 1;
  }
  s.positions = w.bytes;
  s.positions_bits = w.bits;
  s.outlier_values.clear();
  if (format == 1) {
    for (float f : values) {
      uint32_t u;
      memcpy(&u, &f, 4);
      put_u32(s.outlier_values, u);
    }
  } else {
    for (uint16_t h : half_bits) put_u16(s.outlier_values, h);
  }
}

}  // namespace onnxcomp_test

#endif  // ONNXCOMP_TESTS_TEST_ENCODER_H_
