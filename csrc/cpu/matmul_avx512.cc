// CodebookMatMul with AVX-512F (compiled with -mavx512f -mfma; called only when the CPU has it).
//
// The weights are never written out: each step of k widens one panel row of packed indices to 32-bit
// lanes and looks the codebook up in registers. 4-bit: the 16-entry table sits in one register and
// vpermps takes the low 4 bits of each lane as the entry; byte indices into up to 32 entries: vpermi2ps over two
// registers; up to 256 entries: one vpermi2ps per 32 entries and a tree of masked blends (BytePairs); 16-bit
// indices: a gather from the table in L1. Each looked-up vector is reused for MR rows of X (outer
// product, accumulators in registers, no horizontal sums), so the lookup cost is shared at batch > 1.
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/matmul_kernels.h"

namespace onnxcomp {
namespace {

constexpr int kGroupColumns = 32;  // packed::kGroupColumns, restated: this unit includes no inline code
constexpr int kVectors = 2;        // zmm vectors per group

// kDecodeOnce: whether a task of 6 or more rows decodes each group once for all its rows (RunDecodedOnce) rather
// than inside every 6-row tile: worth it where a lookup costs more than the one vpermps / vpermi2ps per vector.
struct Nibble16 {
  static constexpr bool kDecodeOnce = false;
  __m512 table;
  void decode(const uint8_t* group, __m512* w) const {
    const __m512i lanes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group)));
    w[0] = _mm512_permutexvar_ps(lanes, table);                         // low nibbles: columns 0..15
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(lanes, 4), table);   // high nibbles: columns 16..31
  }
};

struct Byte32 {
  static constexpr bool kDecodeOnce = false;
  __m512 low, high;  // table entries 0..15 and 16..31
  void decode(const uint8_t* group, __m512* w) const {
    for (int i = 0; i < 2; ++i) {
      const __m512i lanes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group + 16 * i)));
      w[i] = _mm512_permutex2var_ps(low, lanes, high);
    }
  }
};

// Byte indices into up to 32 * kPairs entries (kPairs = 2, 4 or 8) held in registers: one vpermi2ps per 32-entry
// pair of tables (index bits 0..4), then a tree of masked blends on index bits 5, 6 and 7. Only data moves, so the
// values equal the gather's bit for bit; vgatherdps is slow on AMD cores (Zen 4: magika's 64-entry 512 x 214 product
// at one row 4.4x the dense MatMul with it, docs/benchmarks.md branch speed7).
template <int kPairs>
struct BytePairs {
  static constexpr bool kDecodeOnce = true;
  __m512 table[2 * kPairs];
  BytePairs(const float* codebook, uint32_t size) {  // entries from `size` on are never looked up: zeros
    float padded[32 * kPairs] = {};
    memcpy(padded, codebook, sizeof(float) * (size < 32 * kPairs ? size : 32 * kPairs));
    for (int t = 0; t < 2 * kPairs; ++t) table[t] = _mm512_loadu_ps(padded + 16 * t);
  }
  __m512 lookup(__m512i index) const {
    __m512 level[kPairs];
    for (int t = 0; t < kPairs; ++t) level[t] = _mm512_permutex2var_ps(table[2 * t], index, table[2 * t + 1]);
    int count = kPairs;
    for (int bit = 5; count > 1; ++bit, count /= 2) {
      const __mmask16 pick = _mm512_test_epi32_mask(index, _mm512_set1_epi32(1 << bit));
      for (int t = 0; t < count / 2; ++t) level[t] = _mm512_mask_blend_ps(pick, level[2 * t], level[2 * t + 1]);
    }
    return level[0];
  }
  void decode(const uint8_t* group, __m512* w) const {
    for (int i = 0; i < 2; ++i) {
      w[i] = lookup(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group + 16 * i))));
    }
  }
};

struct ByteGather {
  static constexpr bool kDecodeOnce = true;
  const float* table;
  void decode(const uint8_t* group, __m512* w) const {
    for (int i = 0; i < 2; ++i) {
      const __m512i lanes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group + 16 * i)));
      w[i] = _mm512_i32gather_ps(lanes, table, 4);
    }
  }
};

struct WordGather {
  static constexpr bool kDecodeOnce = true;
  const float* table;
  void decode(const uint8_t* group, __m512* w) const {
    for (int i = 0; i < 2; ++i) {
      const __m512i lanes =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 32 * i)));
      w[i] = _mm512_i32gather_ps(lanes, table, 4);
    }
  }
};

// out[MR][NG * 32] = X[MR rows] @ W[:, NG groups]; group[g] points at row 0 of group g.
template <int MR, int NG, class Decoder>
void Tile(const Decoder& decoder, const float* x, int64_t ldx, int64_t k, const uint8_t* const* group,
          uint32_t row_bytes, float* out) {
  __m512 acc[MR][NG * kVectors];
#pragma GCC unroll 64
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 64
    for (int j = 0; j < NG * kVectors; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const uint8_t* g[NG];
  for (int i = 0; i < NG; ++i) g[i] = group[i];
  for (int64_t kk = 0; kk < k; ++kk) {
    __m512 w[NG * kVectors];
#pragma GCC unroll 8
    for (int i = 0; i < NG; ++i) {
      decoder.decode(g[i], w + kVectors * i);
      g[i] += row_bytes;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + kk]);
#pragma GCC unroll 16
      for (int j = 0; j < NG * kVectors; ++j) acc[r][j] = _mm512_fmadd_ps(xv, w[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NG * kVectors; ++j) _mm512_storeu_ps(out + r * NG * kGroupColumns + 16 * j, acc[r][j]);
  }
}

// Y[m0 .. m0+rows, columns of groups g0 .. g0+ng) = out (+ bias), clipped to N.
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

// Dense panels (DenseProblem) with 32 registers: an MR x 32 tile of Y (two panels, one zmm per row each) held over
// the whole K, 2 * MR accumulators, two weight vectors and a broadcast of X per k. MR = 12: 24 accumulators, 27 of
// the 32 registers. While a pair's tiles run, each prefetches the next pair (one cache line of each panel per k),
// as the AVX2 kernel does. Zen 4 issues a 512-bit FMA at half the 256-bit rate, so the gain over the AVX2 6 x 16
// tile is in loads and instructions per multiply-add, not in peak FMA (docs/benchmarks.md, branch speed9: tiles of
// 14 x 32, 8 x 48 and 6 x 64, and K blocks of 128 or 256 with the partial sums kept in Y, measured no faster).
// Each output is the in-order chain fma(x[k], w[k], acc) over k = 0..K-1 from 0.0, then the bias: the bits of every
// other kernel (matmul_kernels.h).
constexpr int kDenseRows = 12;

// Rows [m0, m0 + MR) of Y's columns n0 .. n0 + 16 * NP (clipped to N); panel j's row kk at panel[j] + 16 * kk.
template <int MR, int NP>
void DenseTile(const DenseProblem& p, const float* const* panel, const char* next, int64_t m0, int64_t n0) {
  __m512 acc[MR][NP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const float* x = p.x + m0 * p.k;
  const float* w[NP];
#pragma GCC unroll 2
  for (int j = 0; j < NP; ++j) w[j] = panel[j];
  for (int64_t kk = 0; kk < p.k; ++kk) {
    __m512 wv[NP];
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) wv[j] = _mm512_loadu_ps(w[j] + kk * 16);  // 64-byte aligned from the op
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) _mm_prefetch(next + j * p.k * 64 + kk * 64, _MM_HINT_T0);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * p.k + kk]);
#pragma GCC unroll 2
      for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  __mmask16 mask[NP];
  __m512 bias[NP];
#pragma GCC unroll 2
  for (int j = 0; j < NP; ++j) {
    const int64_t width = p.n - (n0 + 16 * j);
    mask[j] = width >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << width) - 1u);
    bias[j] = p.bias ? _mm512_maskz_loadu_ps(mask[j], p.bias + n0 + 16 * j) : _mm512_setzero_ps();
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* y = p.y + (m0 + r) * p.n + n0;
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) {
      // acc + 0.0f would turn -0.0 into +0.0: add only a real bias, as the scalar kernel does.
      _mm512_mask_storeu_ps(y + 16 * j, mask[j], p.bias ? _mm512_add_ps(acc[r][j], bias[j]) : acc[r][j]);
    }
  }
}

// Rows [row_begin, row_end) as ceil(rows / 12) tiles of balanced heights (ForBalancedTiles: 25 rows as 9 + 8 + 8,
// not 12 + 12 + 1). The tiling does not change any output's chain.
struct DenseRowsContext {
  const DenseProblem* p;
  const float* const* panel;
  const char* next;
  int64_t n0;
};

template <int NP>
void DenseRowTile(void* context, int64_t m, int64_t height) {
  const DenseRowsContext& c = *static_cast<const DenseRowsContext*>(context);
  switch (height) {
    case 12: return DenseTile<12, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 11: return DenseTile<11, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 10: return DenseTile<10, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 9: return DenseTile<9, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 8: return DenseTile<8, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 7: return DenseTile<7, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 6: return DenseTile<6, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 5: return DenseTile<5, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 4: return DenseTile<4, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 3: return DenseTile<3, NP>(*c.p, c.panel, c.next, m, c.n0);
    case 2: return DenseTile<2, NP>(*c.p, c.panel, c.next, m, c.n0);
    default: return DenseTile<1, NP>(*c.p, c.panel, c.next, m, c.n0);
  }
}

template <int NP>
void DenseRows(const DenseProblem& p, const float* const* panel, const char* next, int64_t row_begin,
               int64_t row_end, int64_t n0) {
  DenseRowsContext context{&p, panel, next, n0};
  ForBalancedTiles(row_begin, row_end, kDenseRows, DenseRowTile<NP>, &context);
}

// Rows [row_begin, row_end) of Y's columns from n0 for `count` dense panels, panel i at panels + i * K * 16 (columns
// n0 + 16 i ..): pairs of panels, an odd last one alone. `next`: what the last pair's tiles prefetch (2 panels).
void DenseBlock(const DenseProblem& p, const float* panels, int64_t count, const float* next, int64_t n0,
                int64_t row_begin, int64_t row_end) {
  for (int64_t i = 0; i < count; i += 2) {
    const float* pair[2] = {panels + i * p.k * 16, panels + (i + 1) * p.k * 16};
    const char* ahead = reinterpret_cast<const char*>(i + 2 < count ? panels + (i + 2) * p.k * 16 : next);
    if (count - i >= 2) {
      DenseRows<2>(p, pair, ahead, row_begin, row_end, n0 + 16 * i);
    } else {
      DenseRows<1>(p, pair, ahead, row_begin, row_end, n0 + 16 * i);
    }
  }
}

// Rows from which a task decodes each 32-column group once (all K rows) into two dense panels of 16 columns and runs
// the dense-panel tiles (DenseBlock) on them, as the AVX2 kernel does: the lookups are then shared by all the
// task's rows. Each output is the same in-order chain of FMAs from 0.0, then the bias: the same bits as Tile.
constexpr int64_t kDecodeOnceRows = 6;

template <class Decoder>
bool RunDecodedOnce(const Decoder& d, const MatMulProblem& p, int64_t panel_begin, int64_t panel_end,
                    int64_t row_begin, int64_t row_end) {
  // malloc, not std::vector: this unit must not instantiate std:: templates (see cpu/matmul_kernels.h).
  const size_t bytes = (static_cast<size_t>(p.k) * kGroupColumns * sizeof(float) + 63) / 64 * 64;
  float* w = static_cast<float*>(aligned_alloc(64, bytes == 0 ? 64 : bytes));
  if (!w) return false;
  const DenseProblem dense{p.x, p.m, p.k, p.n, w, p.bias, p.y};
  float* second = w + p.k * 16;
  for (int64_t g = panel_begin * 2; g < panel_end * 2; ++g) {
    if (g * kGroupColumns >= p.n) break;  // a padding group of the last panel
    const uint8_t* group = p.panels + (g / 2) * p.panel_bytes + (g % 2) * p.group_bytes;
    for (int64_t kk = 0; kk < p.k; ++kk) {
      __m512 v[kVectors];
      d.decode(group + kk * p.row_bytes, v);
      _mm512_store_ps(w + kk * 16, v[0]);
      _mm512_store_ps(second + kk * 16, v[1]);
    }
    DenseBlock(dense, w, g * kGroupColumns + 16 < p.n ? 2 : 1, w, g * kGroupColumns, row_begin, row_end);
  }
  free(w);
  return true;
}

template <class Decoder>
void Run(const Decoder& d, const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin,
         int64_t row_end) {
  if (Decoder::kDecodeOnce && row_end - row_begin >= kDecodeOnceRows &&
      RunDecodedOnce(d, p, panel_begin, panel_end, row_begin, row_end)) {
    return;
  }
  alignas(64) float out[6 * 2 * kGroupColumns];
  const int64_t g_end = panel_end * 2;
  for (int64_t g = panel_begin * 2; g < g_end;) {
    if (row_end - row_begin == 1 && g_end - g >= 4) {
      // GEMV: four groups (128 columns) give eight independent accumulator chains per row.
      TileAndStore<1, 4>(d, p, row_begin, g, out);
      g += 4;
      continue;
    }
    int64_t m = row_begin;
    for (; m + 6 <= row_end; m += 6) TileAndStore<6, 2>(d, p, m, g, out);
    switch (row_end - m) {
      case 5: TileAndStore<5, 2>(d, p, m, g, out); break;
      case 4: TileAndStore<4, 2>(d, p, m, g, out); break;
      case 3: TileAndStore<3, 2>(d, p, m, g, out); break;
      case 2: TileAndStore<2, 2>(d, p, m, g, out); break;
      case 1: TileAndStore<1, 2>(d, p, m, g, out); break;
      default: break;
    }
    g += 2;
  }
}

// ONNXCOMP_LOOKUP=gather512 (read once): byte indices into more than 128 entries take the gather, for timing.
bool GatherAbove128() {
  static const bool gather = [] {
    const char* lookup = getenv("ONNXCOMP_LOOKUP");
    return lookup && strcmp(lookup, "gather512") == 0;
  }();
  return gather;
}

}  // namespace

void DenseAvx512(const DenseProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  if (panel_end > panel_begin) {
    const float* panels = p.panels + panel_begin * p.k * 16;
    DenseBlock(p, panels, panel_end - panel_begin, panels, panel_begin * 16, row_begin, row_end);
  }
}

void MatMulAvx512(const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  if (p.slot_bits == 4) {
    Run(Nibble16{_mm512_loadu_ps(p.table)}, p, panel_begin, panel_end, row_begin, row_end);
  } else if (p.slot_bits == 8 && p.codebook_size <= 32) {
    Run(Byte32{_mm512_loadu_ps(p.table), _mm512_loadu_ps(p.table + 16)}, p, panel_begin, panel_end, row_begin,
        row_end);
  } else if (p.slot_bits == 8 && p.codebook_size <= 64) {
    Run(BytePairs<2>(p.table, p.codebook_size), p, panel_begin, panel_end, row_begin, row_end);
  } else if (p.slot_bits == 8 && p.codebook_size <= 128) {
    Run(BytePairs<4>(p.table, p.codebook_size), p, panel_begin, panel_end, row_begin, row_end);
  } else if (p.slot_bits == 8 && !GatherAbove128()) {
    Run(BytePairs<8>(p.table, p.codebook_size), p, panel_begin, panel_end, row_begin, row_end);
  } else if (p.slot_bits == 8) {
    Run(ByteGather{p.table}, p, panel_begin, panel_end, row_begin, row_end);
  } else {
    Run(WordGather{p.table}, p, panel_begin, panel_end, row_begin, row_end);
  }
}

namespace {
// Lanes l and l + 8, then l + 4, l + 2, l + 1 added (DotProblem's order).
float Reduce16(__m512 v) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// kCount positions of one row: the row's weights loaded once per 16 for all of them.
template <int kCount>
void DotRow(const DotProblem& p, const float* w, int64_t t0, __mmask16 tail, int64_t full, float* out) {
  __m512 acc[kCount];
  for (int i = 0; i < kCount; ++i) acc[i] = _mm512_setzero_ps();
  const float* cols = p.cols + t0 * p.col_stride;
  for (int64_t j = 0; j < full; j += 16) {
    const __m512 wv = _mm512_loadu_ps(w + j);
    for (int i = 0; i < kCount; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(cols + i * p.col_stride + j), acc[i]);
  }
  if (tail) {  // lanes past length load zeros: fma(0, 0, acc) leaves acc (never -0.0: a chain from +0.0) as it is
    const __m512 wv = _mm512_maskz_loadu_ps(tail, w + full);
    for (int i = 0; i < kCount; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(cols + i * p.col_stride + full), acc[i]);
  }
  for (int i = 0; i < kCount; ++i) out[t0 + i] = Reduce16(acc[i]);
}
}  // namespace

void DotsAvx512(const DotProblem& p) {
  const int64_t full = p.length / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (p.length - full)) - 1u);
  for (int64_t o = 0; o < p.rows; ++o) {
    const float* w = p.w + o * p.length;
    float* out = p.out + o * p.out_stride;
    int64_t t = 0;
    for (; t + 4 <= p.count; t += 4) DotRow<4>(p, w, t, tail, full, out);
    switch (p.count - t) {
      case 3: DotRow<3>(p, w, t, tail, full, out); break;
      case 2: DotRow<2>(p, w, t, tail, full, out); break;
      case 1: DotRow<1>(p, w, t, tail, full, out); break;
      default: break;
    }
  }
}

}  // namespace onnxcomp
