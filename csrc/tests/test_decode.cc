// Unit tests of the record decoder (decode.h): plain C++, no ORT, run under ASan + UBSan by ctest.
#include <math.h>
#include <stdio.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>

#include "decode.h"
#include "tests/test_encoder.h"

using namespace onnxcomp;
using namespace onnxcomp_test;

#include "tests/check.h"

struct Decoded {
  DecodeStatus status{DecodeError::kOk, "ok"};
  RecordInfo info{};
  std::vector<float> codebook;
  std::vector<uint32_t> indices;
  std::vector<uint64_t> outlier_positions;
  std::vector<float> outlier_values;
};

// Decodes into exactly-sized heap buffers (so the sanitizer sees any overrun), copying the record
// into its own allocation so reads past its end are caught too.
static Decoded decode(const Bytes& record) {
  Decoded d;
  std::unique_ptr<uint8_t[]> data(new uint8_t[record.size() ? record.size() : 1]);
  if (!record.empty()) memcpy(data.get(), record.data(), record.size());
  d.status = parse_record(data.get(), record.size(), &d.info);
  if (!d.status.ok()) return d;
  const uint64_t n = d.info.num_elements;
  const uint32_t width = record::index_width(d.info.index_bits);
  std::unique_ptr<float[]> codebook(new float[d.info.codebook_size]);
  std::unique_ptr<uint8_t[]> indices(new uint8_t[n * width + 1]);
  const uint64_t workspace_bytes = decode_workspace_bytes(d.info);
  std::unique_ptr<uint32_t[]> workspace(new uint32_t[workspace_bytes / 4]);
  d.status = decode_record(data.get(), d.info, codebook.get(), indices.get(), workspace.get(), workspace_bytes);
  if (!d.status.ok()) return d;
  d.codebook.assign(codebook.get(), codebook.get() + d.info.codebook_size);
  d.indices.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    d.indices[i] = width == 1 ? indices[i] : reinterpret_cast<const uint16_t*>(indices.get())[i];
  }
  const uint64_t count = d.info.outlier_count;
  std::unique_ptr<uint64_t[]> positions(new uint64_t[count ? count : 1]);
  std::unique_ptr<float[]> values(new float[count ? count : 1]);
  if (count) d.status = decode_outliers(data.get(), d.info, positions.get(), values.get());
  if (!d.status.ok()) return d;
  d.outlier_positions.assign(positions.get(), positions.get() + count);
  d.outlier_values.assign(values.get(), values.get() + count);
  return d;
}

static bool decodes_to(const Bytes& record, const std::vector<float>& codebook, const std::vector<uint32_t>& indices) {
  Decoded d = decode(record);
  if (!d.status.ok()) {
    fprintf(stderr, "  unexpected error: %s\n", d.status.message);
    return false;
  }
  return d.codebook == codebook && d.indices == indices;
}

static bool fails_with(const Bytes& record, DecodeError error) {
  Decoded d = decode(record);
  if (d.status.error != error) {
    fprintf(stderr, "  expected error %d, got %d (%s)\n", int(error), int(d.status.error), d.status.message);
    return false;
  }
  return d.status.message != nullptr && d.status.message[0] != '\0';
}

static std::vector<float> make_codebook(uint32_t k, bool zero_first) {
  std::vector<float> c(k);
  for (uint32_t i = 0; i < k; ++i) c[i] = float(i) * 0.25f - 1.0f;
  if (zero_first) c[0] = 0.0f;
  return c;
}

// Indices with a skewed distribution (as k-means clusters give), `zeros` the fraction of index 0.
static std::vector<uint32_t> make_indices(size_t n, uint32_t k, double zeros, uint32_t seed) {
  std::mt19937 rng(seed);
  std::geometric_distribution<uint32_t> skewed(0.3);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<uint32_t> v(n);
  for (auto& x : v) {
    if (k == 1 || unit(rng) < zeros) { x = 0; continue; }
    x = 1 + skewed(rng) % (k - 1);
  }
  return v;
}

// Every valid record a test builds, collected for the corruption sweeps.
static std::vector<Bytes> g_valid;

static void test_dense_roundtrip() {
  for (uint8_t bits : {uint8_t{1}, uint8_t{2}, uint8_t{4}, uint8_t{8}}) {
    uint32_t k = 1u << bits;
    auto codebook = make_codebook(k, false);
    for (size_t n : {size_t(1), size_t(7), size_t(64), size_t(1000), size_t(5000)}) {
      auto indices = make_indices(n, k, 0.2, uint32_t(n * 31 + bits));
      Bytes r = serialize(dense_spec(codebook, indices, {n}, bits));
      CHECK(decodes_to(r, codebook, indices));
      if (n <= 64) g_valid.push_back(r);
    }
  }
  // 2-D dims, K smaller than 2^b.
  auto codebook = make_codebook(11, false);
  auto indices = make_indices(6 * 9, 11, 0.1, 5);
  CHECK(decodes_to(serialize(dense_spec(codebook, indices, {6, 9}, 4)), codebook, indices));
}

static void test_sparse_roundtrip() {
  for (int gap_bits : {1, 2, 3, 5, 8, 12, 16}) {
    for (double zeros : {0.0, 0.5, 0.9, 0.999}) {
      auto codebook = make_codebook(16, true);
      auto indices = make_indices(3000, 16, zeros, uint32_t(gap_bits * 100 + zeros * 10));
      Bytes r = serialize(sparse_spec(codebook, indices, {30, 100}, 4, uint8_t(gap_bits)));
      CHECK(decodes_to(r, codebook, indices));
    }
  }
  // Runs exactly a multiple of the escape length, zeros at the end, a non-zero last element.
  auto codebook = make_codebook(4, true);
  std::vector<uint32_t> indices(40, 0);
  indices[3] = 1;   // run of 3 = escape length at gap_bits 2
  indices[10] = 2;  // run of 6 = two escapes
  indices[39] = 3;
  Bytes r = serialize(sparse_spec(codebook, indices, {40}, 2, 2));
  CHECK(decodes_to(r, codebook, indices));
  g_valid.push_back(r);
  std::vector<uint32_t> small{0, 0, 1, 0, 2, 0, 0, 0};
  r = serialize(sparse_spec(codebook, small, {2, 4}, 2, 1));
  CHECK(decodes_to(r, codebook, small));
  g_valid.push_back(r);
}

static void test_edge_shapes() {
  // K = 1: a one-symbol alphabet, code "0", one bit per element.
  std::vector<float> one{0.5f};
  std::vector<uint32_t> zeros5(5, 0);
  Bytes r = serialize(dense_spec(one, zeros5, {5}, 1));
  CHECK(decodes_to(r, one, zeros5));
  g_valid.push_back(r);
  // One symbol used out of several.
  auto codebook = make_codebook(16, false);
  std::vector<uint32_t> sevens(9, 7);
  r = serialize(dense_spec(codebook, sevens, {3, 3}, 4));
  CHECK(decodes_to(r, codebook, sevens));
  g_valid.push_back(r);
  // Rank 0: a scalar, N = 1.
  r = serialize(dense_spec(codebook, {3}, {}, 4));
  CHECK(decodes_to(r, codebook, {3}));
  CHECK(decode(r).info.rank == 0);
  g_valid.push_back(r);
  // N = 0 with K = 1: an empty table and an empty payload.
  RecordSpec empty = dense_spec(one, {}, {0}, 1);
  CHECK(empty.payload_bits == 0 && empty.value_lengths[0] == 0);
  r = serialize(empty);
  CHECK(decodes_to(r, one, {}));
  g_valid.push_back(r);
  // Empty tensor with a zero dim and large other dims.
  r = serialize(dense_spec(codebook, {}, {0, 1u << 20, 3}, 4));
  CHECK(decodes_to(r, codebook, {}));
  // Sparse, all zero: M = 0, empty tables, empty payload; and a zero-size sparse tensor.
  auto zero_codebook = make_codebook(4, true);
  std::vector<uint32_t> all_zero(1000, 0);
  r = serialize(sparse_spec(zero_codebook, all_zero, {10, 100}, 2, 3));
  CHECK(decodes_to(r, zero_codebook, all_zero));
  g_valid.push_back(r);
  r = serialize(sparse_spec(zero_codebook, {}, {0}, 2, 1));
  CHECK(decodes_to(r, zero_codebook, {}));
  // Sparse with K = 1: only zeros are possible.
  std::vector<float> only_zero{0.0f};
  r = serialize(sparse_spec(only_zero, std::vector<uint32_t>(17, 0), {17}, 1, 4));
  CHECK(decodes_to(r, only_zero, std::vector<uint32_t>(17, 0)));
  // Rank 8.
  auto idx = make_indices(256, 16, 0.3, 8);
  r = serialize(dense_spec(codebook, idx, {2, 2, 2, 2, 2, 2, 2, 2}, 4));
  CHECK(decodes_to(r, codebook, idx));
}

static void test_wide_indices() {
  // 12-bit and 16-bit indices in two-byte working form, with codes long enough for the slow path.
  for (uint8_t bits : {uint8_t{9}, uint8_t{12}, uint8_t{16}}) {
    uint32_t k = bits == 16 ? 40000 : (1u << bits);
    auto codebook = make_codebook(k, true);
    std::mt19937 rng(bits);
    std::vector<uint32_t> indices(20000);
    for (auto& x : indices) x = uint32_t(rng() % 8 == 0 ? rng() % k : rng() % 4);  // a few hot, many rare symbols
    indices[5] = k - 1;
    Bytes r = serialize(dense_spec(codebook, indices, {100, 200}, bits));
    Decoded d = decode(r);
    CHECK(d.status.ok());
    CHECK(d.indices == indices);
    uint8_t longest = 0;
    for (uint8_t l : dense_spec(codebook, indices, {100, 200}, bits).value_lengths) longest = std::max(longest, l);
    CHECK(longest > kLookupBits);
    r = serialize(sparse_spec(codebook, indices, {20000}, bits, 6));
    CHECK(decodes_to(r, codebook, indices));
  }
}

static void test_max_code_length() {
  // Lengths 1, 2, ..., 23, 24, 24: a complete code that reaches the 24-bit limit.
  RecordSpec s;
  s.index_bits = 5;
  s.codebook = make_codebook(25, false);
  s.value_lengths.resize(25);
  for (int i = 0; i < 24; ++i) s.value_lengths[i] = uint8_t(i + 1);
  s.value_lengths[24] = 24;
  std::vector<uint32_t> codes = canonical_codes(s.value_lengths);
  std::vector<uint32_t> indices{24, 0, 23, 11, 12, 1, 22, 24, 5};
  BitWriter w;
  for (uint32_t i : indices) w.write(codes[i], s.value_lengths[i]);
  s.payload = w.bytes;
  s.payload_bits = w.bits;
  s.dims = {indices.size()};
  s.num_elements = indices.size();
  Bytes r = serialize(s);
  CHECK(decodes_to(r, s.codebook, indices));
  g_valid.push_back(r);
  // Length 25 is rejected.
  s.value_lengths[23] = 25;
  CHECK(fails_with(serialize(s), DecodeError::kBadHuffmanTable));
}

// A dense record of `indices` coded with the given code lengths (a complete prefix code over the codebook).
static RecordSpec dense_with_lengths(const Bytes& lengths, const std::vector<uint32_t>& indices, uint8_t bits) {
  RecordSpec s;
  s.index_bits = bits;
  s.codebook = make_codebook(uint32_t(lengths.size()), false);
  s.value_lengths = lengths;
  std::vector<uint32_t> codes = canonical_codes(lengths);
  BitWriter w;
  for (uint32_t i : indices) w.write(codes[i], lengths[i]);
  s.payload = w.bytes;
  s.payload_bits = w.bits;
  s.dims = {indices.size()};
  s.num_elements = indices.size();
  return s;
}

// Records of at least kPairMinElements one-byte indices decode up to three codes per lookup where they fit in
// kPairBits bits: the same indices as one code at a time, codes longer than the table (and than the bits left in a
// word: reloaded first) included, counts of each remainder modulo three, and the same errors at the end of the
// stream.
static void test_pair_decoding() {
  std::mt19937 rng(77);
  // Lengths 1..24, 24: short codes pair, codes above 11 bits take the single-code path.
  Bytes long_tail(25);
  for (int i = 0; i < 24; ++i) long_tail[i] = uint8_t(i + 1);
  long_tail[24] = 24;
  // 2 symbols of 1 bit (up to 11 codes fit the table, three are taken), 8 of 3 bits (always three), 16 of 4 bits
  // (always two), and 256 symbols of 8 bits (always one).
  const Bytes halves(2, 1), threes(8, 3), fours(16, 4), bytes(256, 8);
  const Bytes* tables[] = {&long_tail, &halves, &threes, &fours, &bytes};
  for (const Bytes* lengths : tables) {
    const uint32_t k = uint32_t(lengths->size());
    for (size_t n : {kPairMinElements, kPairMinElements + 1, kPairMinElements + 2, size_t(9001)}) {
      std::vector<uint32_t> indices(n);
      // Geometric-like draws so the short codes dominate, as k-means indices do; every symbol appears somewhere.
      for (size_t i = 0; i < n; ++i) indices[i] = i < k ? uint32_t(i) : std::min<uint32_t>(k - 1, uint32_t(__builtin_ctz(uint32_t(rng()) | (1u << 30))));
      RecordSpec s = dense_with_lengths(*lengths, indices, k > 32 ? 8 : (k > 2 ? 5 : 1));
      CHECK(decodes_to(serialize(s), s.codebook, indices));
      // The payload ends before the last code.
      RecordSpec short_stream = dense_with_lengths(*lengths, std::vector<uint32_t>(indices.begin(), indices.end() - 1), s.index_bits);
      short_stream.num_elements = n;
      short_stream.dims = {n};
      CHECK(fails_with(serialize(short_stream), DecodeError::kStreamEndsEarly));
      RecordSpec long_stream = s;  // one more code than N
      long_stream.num_elements -= 1;
      long_stream.dims = {n - 1};
      CHECK(fails_with(serialize(long_stream), DecodeError::kStreamHasBitsLeft));
    }
  }
  // One symbol (code "0"): a 1 bit in the middle of the payload is no code.
  std::vector<uint32_t> zeros(6000, 0);
  RecordSpec one = dense_with_lengths(Bytes{1}, zeros, 1);
  CHECK(decodes_to(serialize(one), one.codebook, zeros));
  one.payload[300] = 0x10;
  CHECK(fails_with(serialize(one), DecodeError::kNoCode));
}

static RecordSpec small_dense() {
  return dense_spec(make_codebook(4, false), {0, 1, 2, 3, 0, 0, 1, 1, 3, 0}, {2, 5}, 2);
}

static void test_header_fields() {
  CHECK(fails_with(Bytes{}, DecodeError::kTruncated));
  Bytes r = serialize(small_dense());
  Bytes bad = r;
  bad[0] = 'X';
  CHECK(fails_with(bad, DecodeError::kBadHeader));  // magic is checked before the CRC
  RecordSpec s = small_dense();
  s.version = 5;  // versions 1 to 4 exist (3 and 4 since the channel scales)
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  s = small_dense();
  s.value_type = 10;
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  s = small_dense();
  s.reserved = 1;
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  s = small_dense();
  s.coding = 2;
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  s = small_dense();
  s.index_bits = 0;
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  s.index_bits = 17;
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  s = small_dense();
  s.rank_override = 9;
  CHECK(fails_with(serialize(s), DecodeError::kBadHeader));
  // K > 2^b, K = 0.
  s = small_dense();
  s.index_bits = 1;
  CHECK(fails_with(serialize(s), DecodeError::kBadCodebookSize));
  s = small_dense();
  s.codebook.clear();
  s.value_lengths.clear();
  CHECK(fails_with(serialize(s), DecodeError::kBadCodebookSize));
  // Lying N and dims.
  s = small_dense();
  s.num_elements = 11;
  CHECK(fails_with(serialize(s), DecodeError::kBadDims));
  s.num_elements = uint64_t{1} << 40;
  CHECK(fails_with(serialize(s), DecodeError::kBadDims));
  s = small_dense();
  s.dims = {uint64_t{1} << 32, uint64_t{1} << 32, 0};  // product of non-zero dims overflows
  s.num_elements = 0;
  CHECK(fails_with(serialize(s), DecodeError::kBadDims));
  s.dims = {uint64_t{1} << 20, uint64_t{1} << 20};  // exactly 2^40
  s.num_elements = uint64_t{1} << 40;
  CHECK(fails_with(serialize(s), DecodeError::kBadDims));
  s = small_dense();
  s.rank_override = 3;  // claims a third dim the record does not hold: it eats into the codebook
  CHECK(!decode(serialize(s)).status.ok());
  // Codebook values.
  s = small_dense();
  s.codebook[2] = INFINITY;
  CHECK(fails_with(serialize(s), DecodeError::kBadCodebook));
  s.codebook[2] = NAN;
  CHECK(fails_with(serialize(s), DecodeError::kBadCodebook));
}

static void test_lengths_and_payload() {
  RecordSpec s = small_dense();
  // payload_bits lying both ways (bytes kept consistent with the claim where possible).
  s.payload_bits += 1;
  CHECK(!decode(serialize(s)).status.ok());
  s = small_dense();
  s.payload_bits -= 1;
  CHECK(!decode(serialize(s)).status.ok());
  s = small_dense();
  s.payload_bits = ~uint64_t{0};
  CHECK(fails_with(serialize(s), DecodeError::kTruncated));
  s = small_dense();
  s.payload_bits = 8 * s.payload.size();  // covers the padding: bits left over after the last code
  if (s.payload_bits != small_dense().payload_bits) CHECK(fails_with(serialize(s), DecodeError::kStreamHasBitsLeft));
  s = small_dense();
  s.payload.push_back(0);  // a trailing byte not covered by payload_bits
  CHECK(fails_with(serialize(s), DecodeError::kTrailingBytes));
  s = small_dense();
  s.payload.push_back(0);
  s.payload_bits += 8;  // eight zero bits left over after the last code
  CHECK(fails_with(serialize(s), DecodeError::kStreamHasBitsLeft));
  s = small_dense();
  if (s.payload_bits % 8) {
    s.payload.back() |= 1;  // non-zero padding bit
    CHECK(fails_with(serialize(s), DecodeError::kStreamHasBitsLeft));
  }
  // Stream ends early: more elements than codes.
  s = small_dense();
  s.dims = {11};
  s.num_elements = 11;
  CHECK(fails_with(serialize(s), DecodeError::kStreamEndsEarly));
  // A one-symbol table only has the code "0": a 1 bit is no code.
  s = dense_spec({0.5f}, {0, 0, 0}, {3}, 1);
  s.payload[0] = 0x20;  // bits 001
  CHECK(fails_with(serialize(s), DecodeError::kNoCode));
  // Non-empty tensor with an empty table.
  s = dense_spec({0.5f}, {0, 0, 0}, {3}, 1);
  s.value_lengths[0] = 0;
  CHECK(fails_with(serialize(s), DecodeError::kNoCode));
}

static void test_huffman_tables() {
  RecordSpec s = small_dense();
  s.value_lengths = {1, 1, 1, 0};  // over-subscribed
  CHECK(fails_with(serialize(s), DecodeError::kBadHuffmanTable));
  s.value_lengths = {1, 2, 0, 0};  // incomplete
  CHECK(fails_with(serialize(s), DecodeError::kBadHuffmanTable));
  s.value_lengths = {2, 0, 0, 0};  // a lone symbol must have length 1
  CHECK(fails_with(serialize(s), DecodeError::kBadHuffmanTable));
  s.value_lengths = {1, 2, 3, 30};
  CHECK(fails_with(serialize(s), DecodeError::kBadHuffmanTable));
  // Sparse tables: over-subscribed gap table, value table coding symbol 0.
  auto codebook = make_codebook(4, true);
  std::vector<uint32_t> idx{0, 1, 0, 0, 2, 3, 0, 1};
  RecordSpec sp = sparse_spec(codebook, idx, {8}, 2, 2);
  RecordSpec bad = sp;
  bad.gap_lengths = {1, 1, 1, 1};
  CHECK(fails_with(serialize(bad), DecodeError::kBadHuffmanTable));
  bad = sp;
  bad.value_lengths[0] = 1;
  CHECK(fails_with(serialize(bad), DecodeError::kBadHuffmanTable));
}

static void test_sparse_violations() {
  auto codebook = make_codebook(4, true);
  std::vector<uint32_t> idx{0, 1, 0, 0, 2, 3, 0, 1, 0, 0};
  RecordSpec sp = sparse_spec(codebook, idx, {10}, 2, 2);
  CHECK(decodes_to(serialize(sp), codebook, idx));
  // codebook[0] must be +0.0 exactly (not -0.0).
  RecordSpec bad = sp;
  bad.codebook[0] = -0.0f;
  CHECK(fails_with(serialize(bad), DecodeError::kBadCodebook));
  bad = sp;
  bad.gap_bits = 0;
  CHECK(!decode(serialize(bad)).status.ok());
  bad = sp;
  bad.gap_bits = 17;
  CHECK(!decode(serialize(bad)).status.ok());
  bad = sp;
  bad.nonzero_count = 11;  // M > N
  CHECK(fails_with(serialize(bad), DecodeError::kBadSparseHeader));
  bad = sp;
  bad.nonzero_count += 1;  // claims one more non-zero than the stream holds
  CHECK(!decode(serialize(bad)).status.ok());
  bad = sp;
  bad.nonzero_count -= 1;  // stops early: bits left over
  CHECK(fails_with(serialize(bad), DecodeError::kStreamHasBitsLeft));
  // Gap decoding passes N: the same stream read as a shorter tensor.
  bad = sp;
  bad.dims = {7};  // the last non-zero sits at position 7
  bad.num_elements = 7;
  CHECK(fails_with(serialize(bad), DecodeError::kGapPassesN));
  // Escape passing N: gap bits 1 (escape skips 1), a run longer than the tensor.
  std::vector<uint32_t> late(12, 0);
  late[11] = 1;
  bad = sparse_spec(codebook, late, {12}, 2, 1);
  bad.dims = {6};
  bad.num_elements = 6;
  CHECK(fails_with(serialize(bad), DecodeError::kGapPassesN));
  // Decoding passing N exactly at the end: last element non-zero at position N.
  bad = sparse_spec(codebook, late, {12}, 2, 1);
  bad.dims = {11};
  bad.num_elements = 11;
  CHECK(fails_with(serialize(bad), DecodeError::kGapPassesN));
}

// Every truncation of a valid record fails cleanly, with the CRC left as is or recomputed.
static void test_truncations() {
  for (const Bytes& r : g_valid) {
    for (size_t cut = 0; cut < r.size(); ++cut) {
      Bytes prefix(r.begin(), r.begin() + cut);
      CHECK(!decode(prefix).status.ok());
      if (cut >= 4) {
        fix_crc(prefix);
        CHECK(!decode(prefix).status.ok());
      }
    }
  }
}

// Every single-bit flip of a valid record is caught (by the CRC, or the magic check).
static void test_bit_flips() {
  for (const Bytes& r : g_valid) {
    for (size_t byte = 0; byte < r.size(); ++byte) {
      for (int bit = 0; bit < 8; ++bit) {
        Bytes flipped = r;
        flipped[byte] ^= uint8_t(1u << bit);
        CHECK(!decode(flipped).status.ok());
      }
    }
  }
}

// Random byte changes with the CRC recomputed reach the structural checks: never a crash or overrun.
static void test_random_corruption() {
  std::mt19937 rng(1234);
  int accepted = 0;
  for (const Bytes& r : g_valid) {
    for (int trial = 0; trial < 2000; ++trial) {
      Bytes b = r;
      int changes = 1 + int(rng() % 3);
      for (int c = 0; c < changes; ++c) b[4 + rng() % (b.size() - 8)] = uint8_t(rng());
      fix_crc(b);
      accepted += decode(b).status.ok();
    }
  }
  printf("random corruption: %d of %zu changed records still decode (valid by chance)\n", accepted, g_valid.size() * 2000);
}


// ---- Outlier section (record version 2) ----------------------------------------------------------------

static bool decodes_with_outliers(const Bytes& record, const std::vector<uint64_t>& positions,
                                  const std::vector<float>& values) {
  Decoded d = decode(record);
  if (!d.status.ok()) {
    fprintf(stderr, "  unexpected error: %s\n", d.status.message);
    return false;
  }
  return d.outlier_positions == positions && d.outlier_values == values;
}

static void test_outlier_roundtrip() {
  std::mt19937 rng(99);
  for (uint64_t n : {1ull, 2ull, 37ull, 1000ull, 70000ull}) {
    for (uint32_t count : {1u, 3u, 50u}) {
      if (count > n) continue;
      std::vector<uint64_t> positions;
      std::vector<bool> taken(n, false);
      while (positions.size() < count) {
        uint64_t p = rng() % n;
        if (!taken[p]) { taken[p] = true; positions.push_back(p); }
      }
      std::sort(positions.begin(), positions.end());
      std::vector<float> values;
      for (uint32_t j = 0; j < count; ++j) values.push_back(float(int(rng() % 2001) - 1000) * 0.37f);
      for (int rice : {0, 3, 9, 20, 39}) {
        const uint8_t r = uint8_t(rice);
        if (r == 0 && n > 1000) continue;  // unary codes of long gaps: fine, but slow to write bit by bit
        std::vector<uint32_t> indices = make_indices(n, 8, 0.6, uint32_t(n + count + r));
        RecordSpec dense = dense_spec(make_codebook(8, true), indices, {n}, 3);
        with_outliers(dense, positions, values, r);
        Bytes record = serialize(dense);
        CHECK(decodes_to(record, make_codebook(8, true), indices));
        CHECK(decodes_with_outliers(record, positions, values));
        if (n <= 1000 && r == 3) g_valid.push_back(record);  // the corruption sweeps below are quadratic in size
        RecordSpec sparse = sparse_spec(make_codebook(8, true), indices, {n}, 3, 4);
        with_outliers(sparse, positions, values, r);
        CHECK(decodes_with_outliers(serialize(sparse), positions, values));
      }
    }
  }
  // Every element an outlier, and binary16 values (normal, subnormal, negative zero, the largest finite).
  RecordSpec s = dense_spec(make_codebook(2, false), {0, 1, 0, 1}, {2, 2}, 1);
  with_outliers(s, {0, 1, 2, 3}, {}, 0, 0, {0x3C00, 0x0001, 0x8000, 0x7BFF});
  Bytes half = serialize(s);
  CHECK(decodes_with_outliers(half, {0, 1, 2, 3}, {1.0f, 5.9604644775390625e-8f, -0.0f, 65504.0f}));
  Decoded d = decode(half);
  CHECK(d.status.ok() && signbit(d.outlier_values[2]));
  g_valid.push_back(half);
}

static void test_outlier_violations() {
  const std::vector<uint32_t> indices = {0, 1, 2, 3, 0, 0, 1, 1, 3, 0};
  auto base = [&]() {
    RecordSpec s = dense_spec(make_codebook(4, false), indices, {2, 5}, 2);
    with_outliers(s, {1, 4, 9}, {7.0f, -8.0f, 9.0f}, 1);
    return s;
  };
  CHECK(decode(serialize(base())).status.ok());
  RecordSpec s = base();
  s.outlier_count = 0;
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  s = base();
  s.outlier_count = 11;  // above N
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  s = base();
  s.outlier_format = 2;
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  s = base();
  s.rice_bits = 40;
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  s = base();
  s.positions_bits = 5;  // fewer bits than L codes of r + 1 bits
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  s = base();
  s.positions_bits += 8;  // claims a byte the record does not hold: the values shift into it
  CHECK(!decode(serialize(s)).status.ok());
  s = base();
  s.outlier_values.pop_back();
  CHECK(fails_with(serialize(s), DecodeError::kTruncated));
  s = base();
  s.outlier_values.push_back(0);
  CHECK(fails_with(serialize(s), DecodeError::kTrailingBytes));
  s = base();
  s.positions.back() |= 1;  // a padding bit set
  CHECK(fails_with(serialize(s), DecodeError::kStreamHasBitsLeft));
  s = base();
  s.outlier_values[3] = 0x7F;
  s.outlier_values[2] = 0x80;  // 7.0f -> 0x7F80.... : +inf's exponent
  s.outlier_values[1] = 0;
  s.outlier_values[0] = 0;
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  s = dense_spec(make_codebook(4, false), indices, {2, 5}, 2);
  with_outliers(s, {0}, {}, 0, 0, {0x7C00});  // binary16 infinity
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  // A position at N: gap 10 after nothing, in a 10-element tensor.
  s = dense_spec(make_codebook(4, false), indices, {2, 5}, 2);
  with_outliers(s, {10}, {1.0f}, 2);
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  // Positions that pass N only through the sum of gaps.
  s = dense_spec(make_codebook(4, false), indices, {2, 5}, 2);
  with_outliers(s, {6, 12}, {1.0f, 2.0f}, 2);
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  // A huge unary run: the quotient bound stops it before any overflow.
  s = dense_spec(make_codebook(4, false), indices, {2, 5}, 2);
  with_outliers(s, {0}, {1.0f}, 39);
  s.positions.assign(64, 0xFF);
  s.positions_bits = 64 * 8;
  CHECK(fails_with(serialize(s), DecodeError::kBadOutliers));
  // A unary run with no terminating zero.
  s = dense_spec(make_codebook(4, false), std::vector<uint32_t>(200, 1), {200}, 2);
  with_outliers(s, {0}, {1.0f}, 0);
  s.positions = {0xFF};
  s.positions_bits = 8;
  CHECK(fails_with(serialize(s), DecodeError::kStreamEndsEarly));
  // Bits left after L codes.
  s = dense_spec(make_codebook(4, false), indices, {2, 5}, 2);
  with_outliers(s, {3}, {1.0f}, 1);
  s.positions_bits += 1;
  CHECK(fails_with(serialize(s), DecodeError::kStreamHasBitsLeft));
  // Version 1 records never carry the section: the same bytes read as trailing bytes.
  s = base();
  Bytes v1 = serialize(s);
  v1[4] = 1;
  fix_crc(v1);
  CHECK(fails_with(v1, DecodeError::kTrailingBytes));
}

static void test_crc() {
  const char* text = "123456789";
  CHECK(crc32(reinterpret_cast<const uint8_t*>(text), 9) == 0xCBF43926u);  // the standard check value
  std::mt19937 rng(7);
  Bytes data(1000);
  for (auto& x : data) x = uint8_t(rng());
  for (size_t n : {0, 1, 7, 8, 9, 63, 64, 999, 1000}) CHECK(crc32(data.data(), n) == reference_crc32(data.data(), n));
}

static void test_workspace_checks() {
  Bytes r = serialize(small_dense());
  RecordInfo info;
  CHECK(parse_record(r.data(), r.size(), &info).ok());
  std::vector<uint32_t> workspace(decode_workspace_bytes(info) / 4);
  float codebook[4];
  uint8_t indices[10];
  CHECK(decode_record(r.data(), info, codebook, indices, workspace.data(), workspace.size() * 4 - 4).error ==
        DecodeError::kBadArgument);
  CHECK(decode_record(r.data(), info, codebook, indices, reinterpret_cast<uint8_t*>(workspace.data()) + 1,
                      workspace.size() * 4).error == DecodeError::kBadArgument);
  CHECK(decode_record(r.data(), info, codebook, indices, workspace.data(), workspace.size() * 4).ok());
}

int main() {
  test_crc();
  test_dense_roundtrip();
  test_sparse_roundtrip();
  test_edge_shapes();
  test_wide_indices();
  test_max_code_length();
  test_pair_decoding();
  test_header_fields();
  test_lengths_and_payload();
  test_huffman_tables();
  test_sparse_violations();
  test_workspace_checks();
  test_outlier_roundtrip();
  test_outlier_violations();
  test_truncations();
  test_bit_flips();
  test_random_corruption();
  printf("%ld checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
