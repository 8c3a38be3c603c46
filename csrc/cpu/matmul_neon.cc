// CodebookMatMul with NEON (aarch64 only; compiled when ONNXCOMP_NEON is on). NEON is part of every ARMv8-A
// CPU, so this unit needs no -m flags and the kernel needs no run-time CPU check.
//
// NEON has byte table lookups (TBL), not float permutes or gathers. As in simd_lookup.h, a codebook of up to
// 64 entries is held as four byte planes (plane b: byte b of every entry), and 16 indices are looked up with
// one TBL per plane (vqtbl1q_u8 / vqtbl2q_u8 / vqtbl4q_u8 for <= 16 / 32 / 64 entries) and two rounds of zips
// that put the bytes of each float back together. Only bytes move, so the weights equal the scalar lookup bit
// for bit. Larger codebooks (7- and 8-bit, and 16-bit slots) load the entries one by one from the table in L1.
//
// The accumulation mirrors matmul_scalar.cc: each output is fma(x[k], w[k], acc) over k = 0..K-1 in order,
// from 0.0, then + bias. vfmaq_f32 is a fused multiply-add like fmaf, so the results are bit-identical to the
// scalar kernel (and to the x86 ones) whatever the tiling.
#include <arm_neon.h>
#include <string.h>

#include "cpu/matmul_kernels.h"
#include "simd_lookup.h"

namespace onnxcomp {
namespace {

constexpr int kGroupColumns = 32;  // packed::kGroupColumns
constexpr int kVectors = 8;        // float32x4 vectors per group

// 16 floats, in index order, from the looked-up byte planes b0 (lowest byte) .. b3.
inline void Assemble(uint8x16_t b0, uint8x16_t b1, uint8x16_t b2, uint8x16_t b3, float32x4_t* w) {
  const uint16x8_t lo01 = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), hi01 = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
  const uint16x8_t lo23 = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), hi23 = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
  w[0] = vreinterpretq_f32_u16(vzip1q_u16(lo01, lo23));
  w[1] = vreinterpretq_f32_u16(vzip2q_u16(lo01, lo23));
  w[2] = vreinterpretq_f32_u16(vzip1q_u16(hi01, hi23));
  w[3] = vreinterpretq_f32_u16(vzip2q_u16(hi01, hi23));
}

// Table lookups of 16 one-byte indices into the byte planes of a codebook of <= 16, 32 or 64 entries.
struct Planes16 {
  uint8x16_t plane[4];
  explicit Planes16(const LookupTable& t) {
    for (int b = 0; b < 4; ++b) plane[b] = vld1q_u8(t.planes[b]);
  }
  void lookup(uint8x16_t idx, float32x4_t* w) const {
    Assemble(vqtbl1q_u8(plane[0], idx), vqtbl1q_u8(plane[1], idx), vqtbl1q_u8(plane[2], idx),
             vqtbl1q_u8(plane[3], idx), w);
  }
};

struct Planes32 {
  uint8x16x2_t plane[4];
  explicit Planes32(const LookupTable& t) {
    for (int b = 0; b < 4; ++b) plane[b] = vld1q_u8_x2(t.planes[b]);
  }
  void lookup(uint8x16_t idx, float32x4_t* w) const {
    Assemble(vqtbl2q_u8(plane[0], idx), vqtbl2q_u8(plane[1], idx), vqtbl2q_u8(plane[2], idx),
             vqtbl2q_u8(plane[3], idx), w);
  }
};

struct Planes64 {
  uint8x16x4_t plane[4];
  explicit Planes64(const LookupTable& t) {
    for (int b = 0; b < 4; ++b) plane[b] = vld1q_u8_x4(t.planes[b]);
  }
  void lookup(uint8x16_t idx, float32x4_t* w) const {
    Assemble(vqtbl4q_u8(plane[0], idx), vqtbl4q_u8(plane[1], idx), vqtbl4q_u8(plane[2], idx),
             vqtbl4q_u8(plane[3], idx), w);
  }
};

// A 16-byte nibble group: byte j holds column j (low nibble) and column j + 16 (high nibble).
struct Nibbles {
  Planes16 table;
  void decode(const uint8_t* group, float32x4_t* w) const {
    const uint8x16_t bytes = vld1q_u8(group);
    table.lookup(vandq_u8(bytes, vdupq_n_u8(0x0F)), w);  // columns 0..15
    table.lookup(vshrq_n_u8(bytes, 4), w + 4);           // columns 16..31
  }
};

// A 32-byte group of one-byte indices in column order, codebook of <= 32 or <= 64 entries.
template <class Planes>
struct Bytes {
  Planes table;
  void decode(const uint8_t* group, float32x4_t* w) const {
    table.lookup(vld1q_u8(group), w);
    table.lookup(vld1q_u8(group + 16), w + 4);
  }
};

// Codebooks of more than 64 entries: one load per entry (no vector gather on NEON).
struct ByteGather {
  const float* table;
  void decode(const uint8_t* group, float32x4_t* w) const {
    float v[kGroupColumns];
    for (int c = 0; c < kGroupColumns; ++c) v[c] = table[group[c]];
    for (int i = 0; i < kVectors; ++i) w[i] = vld1q_f32(v + 4 * i);
  }
};

struct WordGather {
  const float* table;
  void decode(const uint8_t* group, float32x4_t* w) const {
    float v[kGroupColumns];
    for (int c = 0; c < kGroupColumns; ++c) v[c] = table[uint32_t{group[2 * c]} | (uint32_t{group[2 * c + 1]} << 8)];
    for (int i = 0; i < kVectors; ++i) w[i] = vld1q_f32(v + 4 * i);
  }
};

// MR rows of X times NG groups of W: 8 * MR * NG accumulators. Each group is decoded and used at once, so
// only its 8 weight vectors are live (32 NEON registers: 16 accumulators, 8 weights, the table, x).
template <int MR, int NG, class Decoder>
void Tile(const Decoder& decoder, const float* x, int64_t ldx, int64_t k, const uint8_t* const* group,
          uint32_t row_bytes, float* out) {
  float32x4_t acc[MR][NG * kVectors];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NG * kVectors; ++j) acc[r][j] = vdupq_n_f32(0.0f);
  }
  const uint8_t* g[NG];
  for (int i = 0; i < NG; ++i) g[i] = group[i];
  for (int64_t kk = 0; kk < k; ++kk) {
    float32x4_t xv[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) xv[r] = vdupq_n_f32(x[r * ldx + kk]);
#pragma GCC unroll 8
    for (int i = 0; i < NG; ++i) {
      float32x4_t w[kVectors];
      decoder.decode(g[i], w);
      g[i] += row_bytes;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
        for (int j = 0; j < kVectors; ++j) acc[r][i * kVectors + j] = vfmaq_f32(acc[r][i * kVectors + j], xv[r], w[j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NG * kVectors; ++j) vst1q_f32(out + r * NG * kGroupColumns + 4 * j, acc[r][j]);
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

template <class Decoder>
void Run(const Decoder& d, const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin,
         int64_t row_end) {
  alignas(16) float out[2 * 2 * kGroupColumns];
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

// Dense panels (DenseProblem): an MR x 16 tile of Y, 4 * MR accumulators held over the whole K (24 of the 32
// registers at MR = 6), each output the same in-order chain of fused multiply-adds from 0.0 as in DenseScalar.
constexpr int kDenseRows = 6;

template <int MR>
void DenseTile(const DenseProblem& p, const float* w, int64_t m0, int64_t n0) {
  float32x4_t acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) acc[r][j] = vdupq_n_f32(0.0f);
  }
  const float* x = p.x + m0 * p.k;
  for (int64_t kk = 0; kk < p.k; ++kk) {
    float32x4_t wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = vld1q_f32(w + kk * 16 + 4 * j);
    for (int r = 0; r < MR; ++r) {
      const float32x4_t xv = vdupq_n_f32(x[r * p.k + kk]);
      for (int j = 0; j < 4; ++j) acc[r][j] = vfmaq_f32(acc[r][j], xv, wv[j]);
    }
  }
  const int64_t width = p.n - n0 < 16 ? p.n - n0 : 16;
  float out[16];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) vst1q_f32(out + 4 * j, acc[r][j]);
    float* y = p.y + (m0 + r) * p.n + n0;
    for (int64_t c = 0; c < width; ++c) y[c] = p.bias ? out[c] + p.bias[n0 + c] : out[c];
  }
}

}  // namespace

void DenseNeon(const DenseProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const float* w = p.panels + panel * p.k * 16;
    const int64_t n0 = panel * 16;
    int64_t m = row_begin;
    for (; m + kDenseRows <= row_end; m += kDenseRows) DenseTile<kDenseRows>(p, w, m, n0);
    switch (row_end - m) {
      case 5: DenseTile<5>(p, w, m, n0); break;
      case 4: DenseTile<4>(p, w, m, n0); break;
      case 3: DenseTile<3>(p, w, m, n0); break;
      case 2: DenseTile<2>(p, w, m, n0); break;
      case 1: DenseTile<1>(p, w, m, n0); break;
      default: break;
    }
  }
}

void MatMulNeon(const MatMulProblem& p, int64_t panel_begin, int64_t panel_end, int64_t row_begin, int64_t row_end) {
  if (p.slot_bits == 16) return Run(WordGather{p.table}, p, panel_begin, panel_end, row_begin, row_end);
  if (p.codebook_size > kLookupTableMaxEntries) return Run(ByteGather{p.table}, p, panel_begin, panel_end, row_begin, row_end);
  // Byte planes of the (at most 64-entry) codebook: 256 bytes, cheap next to one panel sweep.
  LookupTable planes;
  prepare_lookup_table(p.table, p.codebook_size, &planes);
  if (p.slot_bits == 4) return Run(Nibbles{Planes16(planes)}, p, panel_begin, panel_end, row_begin, row_end);
  if (p.codebook_size <= 16) return Run(Bytes<Planes16>{Planes16(planes)}, p, panel_begin, panel_end, row_begin, row_end);
  if (p.codebook_size <= 32) return Run(Bytes<Planes32>{Planes32(planes)}, p, panel_begin, panel_end, row_begin, row_end);
  Run(Bytes<Planes64>{Planes64(planes)}, p, panel_begin, panel_end, row_begin, row_end);
}

}  // namespace onnxcomp
