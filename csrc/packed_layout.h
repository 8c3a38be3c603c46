// The packed fixed-width index layouts the kernels keep after decoding a record (docs/ops.md, "Working
// form"), pinned in one place for host and device code: no ORT types, no STL, no exceptions.
//
// Slots: every index takes a slot of 4, 8 or 16 bits (index bits 1..4, 5..8, 9..16; 3-bit indices use
// 4-bit slots). Two layouts:
//
// * Linear: element i of the row-major tensor in slot i. 4-bit slots: byte i/2, low nibble for even i,
//   high nibble for odd i. 16-bit slots are little-endian. Used by CodebookDecode and CodebookGather.
//
// * Panels (CodebookMatMul's W [K, N]): the columns are cut into panels of kPanelColumns (the last one
//   padded with index 0); a panel stores its K rows one after the other, kPanelColumns slots each, so a
//   kernel sweeping k over one panel reads contiguous memory. Inside a row, 4-bit slots come in groups of
//   32 columns held in 16 bytes: byte j holds column j in its low nibble and column j + 16 in its high
//   nibble. Widening 16 bytes to 32-bit lanes then gives columns 0..15 in the low nibbles and, after one
//   shift, columns 16..31 in the same lane order: no shuffles to undo. 8- and 16-bit slots are in column
//   order.
#ifndef ONNXCOMP_PACKED_LAYOUT_H_
#define ONNXCOMP_PACKED_LAYOUT_H_

#include <stdint.h>

#include "huffman.h"  // ONNXCOMP_HD
#include "record_format.h"

namespace onnxcomp {
namespace packed {

ONNXCOMP_HD constexpr uint32_t slot_bits(uint32_t index_bits) { return index_bits <= 4 ? 4u : index_bits <= 8 ? 8u : 16u; }

inline constexpr uint32_t kPanelColumns = 64;
inline constexpr uint32_t kGroupColumns = 32;  // columns per nibble group (and per SIMD work unit)
inline constexpr uint32_t kGroupsPerPanel = kPanelColumns / kGroupColumns;
// Codebooks are padded with 0.0 to at least this many entries, so a 16-entry (4-bit) or 32-entry
// (two-register) SIMD table lookup never reads past the table.
inline constexpr uint32_t kMinTableEntries = 32;

ONNXCOMP_HD constexpr uint32_t group_bytes(uint32_t slot) { return kGroupColumns * slot / 8; }
ONNXCOMP_HD constexpr uint32_t panel_row_bytes(uint32_t slot) { return kPanelColumns * slot / 8; }
ONNXCOMP_HD constexpr uint64_t panel_count(uint64_t columns) { return (columns + kPanelColumns - 1) / kPanelColumns; }
ONNXCOMP_HD constexpr uint64_t panel_bytes(uint64_t rows, uint32_t slot) { return rows * panel_row_bytes(slot); }
ONNXCOMP_HD constexpr uint64_t panels_total_bytes(uint64_t rows, uint64_t columns, uint32_t slot) {
  return panel_count(columns) * panel_bytes(rows, slot);
}
ONNXCOMP_HD constexpr uint64_t linear_bytes(uint64_t count, uint32_t slot) { return (count * slot + 7) / 8; }
ONNXCOMP_HD constexpr uint32_t table_entries(uint32_t codebook_size) {
  return codebook_size < kMinTableEntries ? kMinTableEntries : codebook_size;
}

static_assert(slot_bits(1) == 4 && slot_bits(3) == 4 && slot_bits(4) == 4, "1..4-bit indices take nibbles");
static_assert(slot_bits(5) == 8 && slot_bits(8) == 8, "5..8-bit indices take bytes");
static_assert(slot_bits(9) == 16 && slot_bits(record::kMaxIndexBits) == 16, "9..16-bit indices take two bytes");
static_assert(group_bytes(4) == 16 && group_bytes(8) == 32 && group_bytes(16) == 64, "group sizes");
static_assert(panel_row_bytes(4) == 32 && panel_row_bytes(8) == 64 && panel_row_bytes(16) == 128, "panel rows");
static_assert(kPanelColumns % kGroupColumns == 0 && kGroupColumns == 32, "a nibble group is 16 bytes, 32 columns");
static_assert(panels_total_bytes(3, 65, 4) == 2 * 3 * 32, "a partial panel is padded to full width");
static_assert(linear_bytes(3, 4) == 2 && linear_bytes(3, 8) == 3 && linear_bytes(3, 16) == 6, "linear sizes");
static_assert(table_entries(8) == 32 && table_entries(256) == 256, "table padding");

// ---- Linear layout ------------------------------------------------------------------------------------

ONNXCOMP_HD uint32_t linear_load(const uint8_t* data, uint32_t slot, uint64_t i) {
  if (slot == 4) return (data[i >> 1] >> ((i & 1) * 4)) & 0xFu;
  if (slot == 8) return data[i];
  return uint32_t{data[2 * i]} | (uint32_t{data[2 * i + 1]} << 8);
}

// Requires the destination zeroed beforehand (4-bit slots OR their nibble in).
ONNXCOMP_HD void linear_store(uint8_t* data, uint32_t slot, uint64_t i, uint32_t index) {
  if (slot == 4) {
    data[i >> 1] = static_cast<uint8_t>(data[i >> 1] | ((index & 0xFu) << ((i & 1) * 4)));
  } else if (slot == 8) {
    data[i] = static_cast<uint8_t>(index);
  } else {
    data[2 * i] = static_cast<uint8_t>(index);
    data[2 * i + 1] = static_cast<uint8_t>(index >> 8);
  }
}

// ---- Panel layout -------------------------------------------------------------------------------------

// Byte offset and bit shift of column `c` (0..kPanelColumns-1) inside one panel row.
struct SlotPosition {
  uint32_t byte;
  uint32_t shift;
};

ONNXCOMP_HD SlotPosition panel_slot(uint32_t slot, uint32_t c) {
  if (slot == 4) {
    const uint32_t group = c / kGroupColumns, j = c % kGroupColumns;
    return SlotPosition{group * group_bytes(4) + j % 16, (j / 16) * 4};
  }
  return SlotPosition{c * (slot / 8), 0};
}

// Index of W[k, n] in the panels of a matrix with `rows` = K.
ONNXCOMP_HD uint32_t panel_load(const uint8_t* panels, uint64_t rows, uint32_t slot, uint64_t k, uint64_t n) {
  const uint8_t* row = panels + (n / kPanelColumns) * panel_bytes(rows, slot) + k * panel_row_bytes(slot);
  const SlotPosition at = panel_slot(slot, static_cast<uint32_t>(n % kPanelColumns));
  if (slot == 4) return (row[at.byte] >> at.shift) & 0xFu;
  if (slot == 8) return row[at.byte];
  return uint32_t{row[at.byte]} | (uint32_t{row[at.byte + 1]} << 8);
}

// Requires the destination zeroed beforehand.
ONNXCOMP_HD void panel_store(uint8_t* panels, uint64_t rows, uint32_t slot, uint64_t k, uint64_t n, uint32_t index) {
  uint8_t* row = panels + (n / kPanelColumns) * panel_bytes(rows, slot) + k * panel_row_bytes(slot);
  const SlotPosition at = panel_slot(slot, static_cast<uint32_t>(n % kPanelColumns));
  if (slot == 4) {
    row[at.byte] = static_cast<uint8_t>(row[at.byte] | ((index & 0xFu) << at.shift));
  } else if (slot == 8) {
    row[at.byte] = static_cast<uint8_t>(index);
  } else {
    row[at.byte] = static_cast<uint8_t>(index);
    row[at.byte + 1] = static_cast<uint8_t>(index >> 8);
  }
}

// The weight value: one codebook lookup (the only decode math a kernel does per element of an unscaled record).
ONNXCOMP_HD float lookup(const float* codebook, uint32_t index) { return codebook[index]; }

// Channel-scaled records (versions 3, 4; docs/format.md): element `position` (row-major) belongs to channel
// (position / stride) % count of the scale axis, stride = the product of the dims after it, and decodes to
// the codebook value times that channel's scale in one binary32 multiply (round to nearest; no FMA contraction
// can apply: the product is stored). Every reader (CPU decode_range, CUDA kernels, the numpy reference) does this.
ONNXCOMP_HD uint64_t scale_channel(uint64_t position, uint64_t stride, uint64_t count) {
  return (position / stride) % count;
}
ONNXCOMP_HD float scaled(float codebook_value, float scale) { return codebook_value * scale; }

}  // namespace packed
}  // namespace onnxcomp

#endif  // ONNXCOMP_PACKED_LAYOUT_H_
