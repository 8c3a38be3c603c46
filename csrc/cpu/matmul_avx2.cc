// CodebookMatMul with AVX2 + FMA (compiled with -mavx2 -mfma; called only when the CPU has both).
//
// Same scheme as matmul_avx512.cc with 8-lane registers. The lookups: 4-bit slots and byte indices into up to 128
// entries as byte planes (vpshufb, 32 indices at a time); wider indices gather from the table in L1. The vpermps
// lookups (up to 8-entry codebooks one permute, 16-entry ones two plus a blend on bit 3 of the index, byte indices
// into up to 64 entries 4 or 8 permutes and a tree of blends) remain for ONNXCOMP_LOOKUP=permute. 16 registers
// allow 8 accumulators per tile.
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/matmul_kernels.h"

namespace onnxcomp {
namespace {

constexpr int kGroupColumns = 32;  // packed::kGroupColumns, restated: this unit includes no inline code
constexpr int kVectors = 4;        // ymm vectors per group

// A 16-byte nibble group: byte j holds column j (low nibble) and column j + 16 (high nibble).
template <class Lookup>
void DecodeNibbles(const Lookup& lookup, const uint8_t* group, __m256* w) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(group));
  const __m256i first = _mm256_cvtepu8_epi32(bytes);                         // bytes 0..7
  const __m256i second = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(bytes, bytes));  // bytes 8..15
  w[0] = lookup(first);                              // columns 0..7
  w[1] = lookup(second);                             // columns 8..15
  w[2] = lookup(_mm256_srli_epi32(first, 4));        // columns 16..23
  w[3] = lookup(_mm256_srli_epi32(second, 4));       // columns 24..31
}

struct Nibble8 {
  __m256 table;
  __m256 operator()(__m256i index) const { return _mm256_permutevar8x32_ps(table, index); }
  void decode(const uint8_t* group, __m256* w) const { DecodeNibbles(*this, group, w); }
};

struct Nibble16 {
  __m256 low, high;  // entries 0..7 and 8..15
  __m256 operator()(__m256i index) const {
    // vpermps reads bits 0..2; bit 3 (moved to the sign bit) picks the half.
    const __m256 pick = _mm256_castsi256_ps(_mm256_slli_epi32(index, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, index), _mm256_permutevar8x32_ps(high, index), pick);
  }
  void decode(const uint8_t* group, __m256* w) const { DecodeNibbles(*this, group, w); }
};

// Byte indices into a codebook of up to 8 * kTables entries (32 or 64) held in registers: one vpermps per 8-entry
// table, then a tree of blends on index bits 3, 4 (and 5). Only data moves, so the values equal the gather's bit
// for bit; on this machine it is several times faster than vgatherdps.
template <int kTables>
struct BytePermute {
  __m256 table[kTables];
  BytePermute(const float* codebook, uint32_t size) {  // entries from `size` on are never looked up: zeros
    float padded[8 * kTables] = {};
    memcpy(padded, codebook, sizeof(float) * (size < 8 * kTables ? size : 8 * kTables));
    for (int t = 0; t < kTables; ++t) table[t] = _mm256_loadu_ps(padded + 8 * t);
  }
  __m256 operator()(__m256i index) const {
    __m256 level[kTables];
    for (int t = 0; t < kTables; ++t) level[t] = _mm256_permutevar8x32_ps(table[t], index);
    int count = kTables;
    for (int bit = 3; count > 1; ++bit, count /= 2) {
      const __m256 pick = _mm256_castsi256_ps(_mm256_slli_epi32(index, 31 - bit));  // index bit -> sign bit
      for (int t = 0; t < count / 2; ++t) level[t] = _mm256_blendv_ps(level[2 * t], level[2 * t + 1], pick);
    }
    return level[0];
  }
  void decode(const uint8_t* group, __m256* w) const {
    for (int i = 0; i < 4; ++i) {
      const __m256i lanes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(group + 8 * i)));
      w[i] = (*this)(lanes);
    }
  }
};

// Indices into up to 16 * kTables entries (kTables = 1, 2, 4 or 8) as byte planes: byte b of every entry in 16-byte
// tables of 16 entries, looked up 32 indices at a time with vpshufb and picked by a tree of byte blends on index
// bits 4, 5 and 6, then the four planes interleaved back into floats. Only bytes move, so the values equal the
// permute and gather lookups' bit for bit, in fewer instructions per value (vpermps looks up 8 at a time, and
// vgatherdps is slow on AMD cores). Byte slots, or 4-bit slots (kNibbles) spread into bytes first.
template <int kTables, bool kNibbles>
struct BytePlanes {
  __m256i plane_table[4][kTables];  // plane b of entries 16t..16t + 15, repeated in both 128-bit lanes
  BytePlanes(const float* codebook, uint32_t size) {  // entries from `size` on are never looked up: zeros
    float padded[16 * kTables] = {};
    memcpy(padded, codebook, sizeof(float) * (size < 16 * kTables ? size : 16 * kTables));
    alignas(16) uint8_t planes[4][16 * kTables];
    for (int e = 0; e < 16 * kTables; ++e) {
      uint32_t bits;
      memcpy(&bits, padded + e, sizeof bits);
      for (int b = 0; b < 4; ++b) planes[b][e] = static_cast<uint8_t>(bits >> (8 * b));
    }
    for (int b = 0; b < 4; ++b) {
      for (int t = 0; t < kTables; ++t) {
        plane_table[b][t] =
            _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(planes[b] + 16 * t)));
      }
    }
  }
  void decode(const uint8_t* group, __m256* w) const {
    __m256i index;  // bytes: columns 0..15 | 16..31
    if (kNibbles) {  // byte j holds column j (low nibble) and column j + 16 (high nibble)
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(group));
      const __m128i nibble = _mm_set1_epi8(0x0F);
      index = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), nibble), _mm_and_si128(bytes, nibble));
    } else {
      index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group));
    }
    __m256i plane[4];
    for (int b = 0; b < 4; ++b) {
      __m256i level[kTables];
      for (int t = 0; t < kTables; ++t) level[t] = _mm256_shuffle_epi8(plane_table[b][t], index);
      int count = kTables;
      for (int bit = 4; count > 1; ++bit, count /= 2) {
        const __m256i pick = _mm256_slli_epi16(index, 7 - bit);  // index bit -> bit 7 of its byte
        for (int t = 0; t < count / 2; ++t) level[t] = _mm256_blendv_epi8(level[2 * t], level[2 * t + 1], pick);
      }
      plane[b] = level[0];
    }
    // Bytes 0, 1 and 2, 3 of each value as 16-bit halves, then the halves as 32-bit values; the unpacks work
    // within 128-bit lanes, hence the lane swaps at the end.
    const __m256i low01 = _mm256_unpacklo_epi8(plane[0], plane[1]);   // columns 0..7 | 16..23
    const __m256i high01 = _mm256_unpackhi_epi8(plane[0], plane[1]);  // columns 8..15 | 24..31
    const __m256i low23 = _mm256_unpacklo_epi8(plane[2], plane[3]);
    const __m256i high23 = _mm256_unpackhi_epi8(plane[2], plane[3]);
    const __m256i v0 = _mm256_unpacklo_epi16(low01, low23);    // columns 0..3 | 16..19
    const __m256i v1 = _mm256_unpackhi_epi16(low01, low23);    // columns 4..7 | 20..23
    const __m256i v2 = _mm256_unpacklo_epi16(high01, high23);  // columns 8..11 | 24..27
    const __m256i v3 = _mm256_unpackhi_epi16(high01, high23);  // columns 12..15 | 28..31
    w[0] = _mm256_castsi256_ps(_mm256_permute2x128_si256(v0, v1, 0x20));
    w[1] = _mm256_castsi256_ps(_mm256_permute2x128_si256(v2, v3, 0x20));
    w[2] = _mm256_castsi256_ps(_mm256_permute2x128_si256(v0, v1, 0x31));
    w[3] = _mm256_castsi256_ps(_mm256_permute2x128_si256(v2, v3, 0x31));
  }
};

struct ByteGather {
  const float* table;
  void decode(const uint8_t* group, __m256* w) const {
    for (int i = 0; i < 4; ++i) {
      const __m256i lanes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(group + 8 * i)));
      w[i] = _mm256_i32gather_ps(table, lanes, 4);
    }
  }
};

struct WordGather {
  const float* table;
  void decode(const uint8_t* group, __m256* w) const {
    for (int i = 0; i < 4; ++i) {
      const __m256i lanes = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group + 16 * i)));
      w[i] = _mm256_i32gather_ps(table, lanes, 4);
    }
  }
};

template <int MR, int NG, class Decoder>
void Tile(const Decoder& decoder, const float* x, int64_t ldx, int64_t k, const uint8_t* const* group,
          uint32_t row_bytes, float* out) {
  __m256 acc[MR][NG * kVectors];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NG * kVectors; ++j) acc[r][j] = _mm256_setzero_ps();
  }
  const uint8_t* g[NG];
  for (int i = 0; i < NG; ++i) g[i] = group[i];
  for (int64_t kk = 0; kk < k; ++kk) {
    __m256 w[NG * kVectors];
#pragma GCC unroll 8
    for (int i = 0; i < NG; ++i) {
      decoder.decode(g[i], w + kVectors * i);
      g[i] += row_bytes;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_set1_ps(x[r * ldx + kk]);
#pragma GCC unroll 16
      for (int j = 0; j < NG * kVectors; ++j) acc[r][j] = _mm256_fmadd_ps(xv, w[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NG * kVectors; ++j) _mm256_storeu_ps(out + r * NG * kGroupColumns + 8 * j, acc[r][j]);
  }
}

template <int MR, int NG, class Decoder>
void TileAndStore(const Decoder& decoder, const MatMulProblem& p, int64_t m0, int64_t g0, float* out) {
  const uint8_t* group[NG];
  for (int i = 0; i < NG; ++i) {
    const int64_t gi = g0 + i;
    group[i] = p.panels + (gi / 2) * p.panel_bytes + (gi % 2) * p.group_bytes;
  }
  if (g0 * kGroupColumns >= p.n) return;  // a padding group of the last panel
  Tile<MR, NG>(decoder, p.x + m0 * p.k, p.k, p.k, group, p.row_bytes, out);
  StoreTile(p, out, m0, MR, g0, NG);
}

// Dense panels (DenseProblem): an MR x 16 tile of Y, 2 * MR accumulators held over the whole K, W read as two
// vectors per k and X broadcast per row. MR = 6 keeps 12 accumulators, 2 weights and a broadcast in the 16 registers.
constexpr int kDenseRows = 6;

template <int MR>
void DenseTile(const DenseProblem& p, const float* w, const char* next, int64_t m0, int64_t n0) {
  __m256 acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  // One pointer per row and K in a local: the loop is then its loads, broadcasts and FMAs (each row's broadcast
  // indexed from its own pointer by one shared k), not one address computation per row and a reload of p.k per k.
  const int64_t k = p.k;
  const float* x[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) x[r] = p.x + (m0 + r) * k;
  // The tile's output lines are written once, after the loop: fetched now, the stores do not wait for them.
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) _mm_prefetch(reinterpret_cast<const char*>(p.y + (m0 + r) * p.n + n0), _MM_HINT_T0);
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 w0 = _mm256_load_ps(w + kk * 16);
    const __m256 w1 = _mm256_load_ps(w + kk * 16 + 8);
    _mm_prefetch(next + kk * 64, _MM_HINT_T0);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x[r] + kk);
      acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  const int64_t width = p.n - n0 < 16 ? p.n - n0 : 16;
  if (width == 16) {
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    if (p.bias) {
      b0 = _mm256_loadu_ps(p.bias + n0);
      b1 = _mm256_loadu_ps(p.bias + n0 + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float* y = p.y + (m0 + r) * p.n + n0;
      // acc + 0.0f would turn -0.0 into +0.0: add only a real bias, as the scalar kernel does.
      _mm256_storeu_ps(y, p.bias ? _mm256_add_ps(acc[r][0], b0) : acc[r][0]);
      _mm256_storeu_ps(y + 8, p.bias ? _mm256_add_ps(acc[r][1], b1) : acc[r][1]);
    }
    return;
  }
  alignas(32) float out[16];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_store_ps(out, acc[r][0]);
    _mm256_store_ps(out + 8, acc[r][1]);
    float* y = p.y + (m0 + r) * p.n + n0;
    for (int64_t c = 0; c < width; ++c) y[c] = p.bias ? out[c] + p.bias[n0 + c] : out[c];
  }
}

// Rows [row_begin, row_end) of one dense panel as ceil(rows / 6) tiles of balanced heights (ForBalancedTiles). The
// tiling does not change any output's chain.
struct DenseRowsContext {
  const DenseProblem* p;
  const float* w;
  const char* next;
  int64_t n0;
};

void DenseRowTile(void* context, int64_t m, int64_t height) {
  const DenseRowsContext& c = *static_cast<const DenseRowsContext*>(context);
  switch (height) {
    case 6: return DenseTile<6>(*c.p, c.w, c.next, m, c.n0);
    case 5: return DenseTile<5>(*c.p, c.w, c.next, m, c.n0);
    case 4: return DenseTile<4>(*c.p, c.w, c.next, m, c.n0);
    case 3: return DenseTile<3>(*c.p, c.w, c.next, m, c.n0);
    case 2: return DenseTile<2>(*c.p, c.w, c.next, m, c.n0);
    default: return DenseTile<1>(*c.p, c.w, c.next, m, c.n0);
  }
}

void DenseRows(const DenseProblem& p, const float* w, const char* next, int64_t row_begin, int64_t row_end,
               int64_t n0) {
  DenseRowsContext context{&p, w, next, n0};
  ForBalancedTiles(row_begin, row_end, kDenseRows, DenseRowTile, &context);
}

// Rows from which a task decodes each 32-column group once into a buffer (all K rows) and sweeps 6-row tiles over
// it, instead of decoding inside every 2-row tile: the lookups are then shared by all the task's rows.
constexpr int64_t kDecodeOnceRows = 6;

template <class Decoder>
bool RunDecodedOnce(const Decoder& d, const MatMulProblem& p, int64_t panel_begin, int64_t panel_end,
                    int64_t row_begin, int64_t row_end) {
  // The group decoded into two dense panels of 16 columns (DenseProblem's layout), so the dense-panel tiles run
  // on it: each output the same in-order chain of FMAs from 0.0, then the bias, as in Tile.
  // malloc, not std::vector: this unit must not instantiate std:: templates (see cpu/matmul_kernels.h).
  float* w = static_cast<float*>(aligned_alloc(32, static_cast<size_t>(p.k) * kGroupColumns * sizeof(float) + 32));
  if (!w) return false;
  const DenseProblem dense{p.x, p.m, p.k, p.n, w, p.bias, p.y};
  float* second = w + p.k * 16;
  for (int64_t g = panel_begin * 2; g < panel_end * 2; ++g) {
    if (g * kGroupColumns >= p.n) break;  // a padding group of the last panel
    const uint8_t* group = p.panels + (g / 2) * p.panel_bytes + (g % 2) * p.group_bytes;
    for (int64_t kk = 0; kk < p.k; ++kk) {
      __m256 v[kVectors];
      d.decode(group + kk * p.row_bytes, v);
      _mm256_store_ps(w + kk * 16, v[0]);
      _mm256_store_ps(w + kk * 16 + 8, v[1]);
      _mm256_store_ps(second + kk * 16, v[2]);
      _mm256_store_ps(second + kk * 16 + 8, v[3]);
    }
    const int64_t halves = g * kGroupColumns + 16 < p.n ? 2 : 1;
    for (int64_t half = 0; half < halves; ++half) {
      const float* panel = w + half * p.k * 16;
      const char* next = reinterpret_cast<const char*>(second);
      const int64_t n0 = g * kGroupColumns + half * 16;
      DenseRows(dense, panel, next, row_begin, row_end, n0);
    }
  }
  free(w);
  return true;
}

template <class Decoder>
void Run(const Decoder& d, const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin,
         int64_t row_end) {
  if (row_end - row_begin >= kDecodeOnceRows && RunDecodedOnce(d, p, panel_begin, panel_end, row_begin, row_end)) {
    return;
  }
  alignas(32) float out[2 * 2 * kGroupColumns];
  const int64_t g_end = panel_end * 2;
  for (int64_t g = panel_begin * 2; g < g_end; g += 2) {
    if (row_end - row_begin == 1) {
      TileAndStore<1, 2>(d, p, row_begin, g, out);
      continue;
    }
    for (int64_t h = g; h < g + 2; ++h) {
      int64_t m = row_begin;
      for (; m + 2 <= row_end; m += 2) TileAndStore<2, 1>(d, p, m, h, out);
      if (m < row_end) TileAndStore<1, 1>(d, p, m, h, out);
    }
  }
}

}  // namespace

void DenseAvx2(const DenseProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const float* w = p.panels + panel * p.k * 16;
    // While this panel's tiles run, each prefetches the next panel (one cache line per k; a weight used by one
    // run streams from memory, and the loads of a 6-row tile alone cannot hide that).
    const char* next = reinterpret_cast<const char*>(panel + 1 < panel_end ? w + p.k * 16 : w);
    const int64_t n0 = panel * 16;
    DenseRows(p, w, next, row_begin, row_end, n0);
  }
}

namespace {

// Calls f(decoder) with the decoder of p's slot width and codebook size.
template <class F>
void WithDecoder(const MatMulProblem& p, const F& f) {
  // ONNXCOMP_LOOKUP=permute: the vpermps lookups and the gather from 65 entries (for timing the two; read once).
  static const bool planes = [] {
    const char* lookup = getenv("ONNXCOMP_LOOKUP");
    return !(lookup && strcmp(lookup, "permute") == 0);
  }();
  if (p.slot_bits == 4 && p.codebook_size <= 8 && !planes) {
    f(Nibble8{_mm256_loadu_ps(p.table)});
  } else if (p.slot_bits == 4 && !planes) {
    f(Nibble16{_mm256_loadu_ps(p.table), _mm256_loadu_ps(p.table + 8)});
  } else if (p.slot_bits == 4) {
    f(BytePlanes<1, true>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8 && p.codebook_size <= 32 && !planes) {
    f(BytePermute<4>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8 && p.codebook_size <= 64 && !planes) {
    f(BytePermute<8>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8 && p.codebook_size <= 16) {
    f(BytePlanes<1, false>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8 && p.codebook_size <= 32) {
    f(BytePlanes<2, false>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8 && p.codebook_size <= 64) {
    f(BytePlanes<4, false>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8 && p.codebook_size <= 128 && planes) {
    f(BytePlanes<8, false>(p.table, p.codebook_size));
  } else if (p.slot_bits == 8) {
    f(ByteGather{p.table});
  } else {
    f(WordGather{p.table});
  }
}

}  // namespace

void MatMulAvx2(const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  WithDecoder(p, [&](const auto& d) { Run(d, p, panel_begin, panel_end, row_begin, row_end); });
}

void UnpackAvx2(const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, float* out) {
  WithDecoder(p, [&](const auto& d) {
    for (int64_t g = panel_begin * 2; g < panel_end * 2 && g * kGroupColumns < p.n; ++g) {
      const uint8_t* group = p.panels + (g / 2) * p.panel_bytes + (g % 2) * p.group_bytes;
      float* first = out + 2 * g * p.k * 16;
      float* second = g * kGroupColumns + 16 < p.n ? first + p.k * 16 : nullptr;  // past N: no such dense panel
      for (int64_t kk = 0; kk < p.k; ++kk) {
        __m256 v[kVectors];
        d.decode(group + kk * p.row_bytes, v);
        _mm256_storeu_ps(first + kk * 16, v[0]);
        _mm256_storeu_ps(first + kk * 16 + 8, v[1]);
        if (second) {
          _mm256_storeu_ps(second + kk * 16, v[2]);
          _mm256_storeu_ps(second + kk * 16 + 8, v[3]);
        }
      }
    }
  });
}

namespace {
// Lanes l (of lo) and l + 8 (hi), then l + 4, l + 2, l + 1 added (DotProblem's order).
float Reduce16(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

template <int kCount>
void DotRow(const DotProblem& p, const float* w, int64_t t0, __m256i mask_lo, __m256i mask_hi, int64_t full,
            bool tail, float* out) {
  __m256 lo[kCount], hi[kCount];
  for (int i = 0; i < kCount; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
  const float* cols = p.cols + t0 * p.col_stride;
  for (int64_t j = 0; j < full; j += 16) {
    const __m256 w0 = _mm256_loadu_ps(w + j), w1 = _mm256_loadu_ps(w + j + 8);
    for (int i = 0; i < kCount; ++i) {
      lo[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(cols + i * p.col_stride + j), lo[i]);
      hi[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(cols + i * p.col_stride + j + 8), hi[i]);
    }
  }
  if (tail) {  // lanes past length load zeros: fma(0, 0, acc) leaves acc as it is
    const __m256 w0 = _mm256_maskload_ps(w + full, mask_lo), w1 = _mm256_maskload_ps(w + full + 8, mask_hi);
    for (int i = 0; i < kCount; ++i) {
      lo[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(cols + i * p.col_stride + full), lo[i]);
      hi[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(cols + i * p.col_stride + full + 8), hi[i]);
    }
  }
  for (int i = 0; i < kCount; ++i) out[t0 + i] = Reduce16(lo[i], hi[i]);
}
}  // namespace

void DotsAvx2(const DotProblem& p) {
  const int64_t full = p.length / 16 * 16;
  const int rest = static_cast<int>(p.length - full);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest), lanes);
  const __m256i mask_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest - 8), lanes);
  for (int64_t o = 0; o < p.rows; ++o) {
    const float* w = p.w + o * p.length;
    float* out = p.out + o * p.out_stride;
    int64_t t = 0;
    for (; t + 4 <= p.count; t += 4) DotRow<4>(p, w, t, mask_lo, mask_hi, full, rest > 0, out);
    switch (p.count - t) {
      case 3: DotRow<3>(p, w, t, mask_lo, mask_hi, full, rest > 0, out); break;
      case 2: DotRow<2>(p, w, t, mask_lo, mask_hi, full, rest > 0, out); break;
      case 1: DotRow<1>(p, w, t, mask_lo, mask_hi, full, rest > 0, out); break;
      default: break;
    }
  }
}

}  // namespace onnxcomp
