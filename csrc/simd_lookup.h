// Codebook lookup of one-byte indices, out[i] = codebook[indices[i]], with a NEON path (ONNXCOMP_NEON=1, set by
// CMake for aarch64 targets) whose results are bit-identical to the scalar path.
//
// NEON has byte table lookups (TBL: vqtbl1q_u8/vqtbl2q_u8/vqtbl4q_u8 look up 16 indices in a table of 16, 32 or
// 64 bytes), not float gathers. So a codebook of up to 64 floats is stored as four byte planes (plane p holds
// byte p of every entry); a lookup is one TBL per plane and two rounds of zips to put the bytes of each float
// back together. Only bytes move, so the result equals the scalar lookup bit for bit (signed zeros, denormals).
// Codebooks of more than 64 entries (index bits 7 and 8) use the scalar loop.
//
// No ORT types, no STL, no exceptions, like decode.h: usable from the kernels and from plain unit tests.
// Indices must be smaller than the codebook size (decode_record guarantees it).
#ifndef ONNXCOMP_SIMD_LOOKUP_H_
#define ONNXCOMP_SIMD_LOOKUP_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(ONNXCOMP_NEON) && ONNXCOMP_NEON
#if !defined(__aarch64__)
#error "ONNXCOMP_NEON=1 needs an aarch64 target"
#endif
#include <arm_neon.h>
#define ONNXCOMP_HAVE_NEON_LOOKUP 1
#else
#define ONNXCOMP_HAVE_NEON_LOOKUP 0
#endif

namespace onnxcomp {

// Largest codebook the byte-plane tables hold (four 16-byte TBL registers).
constexpr uint32_t kLookupTableMaxEntries = 64;

// A codebook prepared for lookup: the floats, and for codebooks of up to 64 entries their byte planes.
struct LookupTable {
  const float* codebook;
  uint32_t size;
  uint8_t planes[4][kLookupTableMaxEntries];  // planes[p][e] = byte p (little-endian) of codebook[e]; zero-padded
};
static_assert(sizeof(float) == 4, "byte planes assume 4-byte floats");

// Prepares `table` for `codebook` (which must outlive it). Done once per weight, at kernel creation.
inline void prepare_lookup_table(const float* codebook, uint32_t size, LookupTable* table) {
  table->codebook = codebook;
  table->size = size;
  memset(table->planes, 0, sizeof(table->planes));
  if (size > kLookupTableMaxEntries) return;
  for (uint32_t e = 0; e < size; ++e) {
    uint32_t bits;
    memcpy(&bits, &codebook[e], 4);
    for (int p = 0; p < 4; ++p) table->planes[p][e] = static_cast<uint8_t>(bits >> (8 * p));
  }
}

// The reference: out[i] = codebook[indices[i]] for i < n.
inline void lookup_scalar(const LookupTable& table, const uint8_t* indices, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = table.codebook[indices[i]];
}

#if ONNXCOMP_HAVE_NEON_LOOKUP
namespace neon_detail {

// Reassembles 16 floats from their four byte planes and stores them.
inline void store_planes(uint8x16_t b0, uint8x16_t b1, uint8x16_t b2, uint8x16_t b3, float* out) {
  const uint16x8_t lo01 = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), hi01 = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
  const uint16x8_t lo23 = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), hi23 = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
  vst1q_f32(out, vreinterpretq_f32_u16(vzip1q_u16(lo01, lo23)));
  vst1q_f32(out + 4, vreinterpretq_f32_u16(vzip2q_u16(lo01, lo23)));
  vst1q_f32(out + 8, vreinterpretq_f32_u16(vzip1q_u16(hi01, hi23)));
  vst1q_f32(out + 12, vreinterpretq_f32_u16(vzip2q_u16(hi01, hi23)));
}

}  // namespace neon_detail
#endif

// out[i] = codebook[indices[i]] for i < n; NEON when built with it and the codebook has <= 64 entries.
inline void lookup(const LookupTable& table, const uint8_t* indices, float* out, size_t n) {
  size_t i = 0;
#if ONNXCOMP_HAVE_NEON_LOOKUP
  if (table.size <= 16) {
    uint8x16_t t[4];
    for (int p = 0; p < 4; ++p) t[p] = vld1q_u8(table.planes[p]);
    for (; i + 16 <= n; i += 16) {
      const uint8x16_t idx = vld1q_u8(indices + i);
      neon_detail::store_planes(vqtbl1q_u8(t[0], idx), vqtbl1q_u8(t[1], idx), vqtbl1q_u8(t[2], idx),
                                vqtbl1q_u8(t[3], idx), out + i);
    }
  } else if (table.size <= 32) {
    uint8x16x2_t t[4];
    for (int p = 0; p < 4; ++p) t[p] = vld1q_u8_x2(table.planes[p]);
    for (; i + 16 <= n; i += 16) {
      const uint8x16_t idx = vld1q_u8(indices + i);
      neon_detail::store_planes(vqtbl2q_u8(t[0], idx), vqtbl2q_u8(t[1], idx), vqtbl2q_u8(t[2], idx),
                                vqtbl2q_u8(t[3], idx), out + i);
    }
  } else if (table.size <= kLookupTableMaxEntries) {
    uint8x16x4_t t[4];
    for (int p = 0; p < 4; ++p) t[p] = vld1q_u8_x4(table.planes[p]);
    for (; i + 16 <= n; i += 16) {
      const uint8x16_t idx = vld1q_u8(indices + i);
      neon_detail::store_planes(vqtbl4q_u8(t[0], idx), vqtbl4q_u8(t[1], idx), vqtbl4q_u8(t[2], idx),
                                vqtbl4q_u8(t[3], idx), out + i);
    }
  }
#endif
  lookup_scalar(table, indices + i, out + i, n - i);
}

}  // namespace onnxcomp

#endif  // ONNXCOMP_SIMD_LOOKUP_H_
