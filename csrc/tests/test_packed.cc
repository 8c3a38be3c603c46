// Unit tests of the packed index layouts (packed_layout.h) and of the scalar CodebookMatMul kernel on them:
// plain C++, no ORT, run under ASan + UBSan by ctest.
#include <math.h>
#include <stdio.h>

#include <random>
#include <vector>

#include "cpu/matmul_kernels.h"
#include "packed_layout.h"

using namespace onnxcomp;

#include "tests/check.h"

// Linear layout: round trip, and the documented nibble order (even element in the low nibble).
static void test_linear() {
  std::mt19937 rng(1);
  for (uint32_t slot : {4u, 8u, 16u}) {
    for (uint64_t n : {0ull, 1ull, 2ull, 7ull, 64ull, 1001ull}) {
      std::vector<uint32_t> values(n);
      for (auto& v : values) v = static_cast<uint32_t>(rng()) & ((1u << slot) - 1);
      std::vector<uint8_t> data(packed::linear_bytes(n, slot), 0);
      for (uint64_t i = 0; i < n; ++i) packed::linear_store(data.data(), slot, i, values[i]);
      bool same = true;
      for (uint64_t i = 0; i < n; ++i) same = same && packed::linear_load(data.data(), slot, i) == values[i];
      CHECK(same);
    }
  }
  uint8_t nibbles[1] = {0};
  packed::linear_store(nibbles, 4, 0, 0x3);
  packed::linear_store(nibbles, 4, 1, 0xA);
  CHECK(nibbles[0] == 0xA3);
  uint8_t words[2] = {0, 0};
  packed::linear_store(words, 16, 0, 0x1234);
  CHECK(words[0] == 0x34 && words[1] == 0x12);  // little-endian
}

// Panel layout: the documented positions, every slot of a panel used exactly once, and a round trip.
static void test_panels() {
  // Column j and j + 16 of a 32-column group share byte j; the second group starts 16 bytes on.
  CHECK(packed::panel_slot(4, 0).byte == 0 && packed::panel_slot(4, 0).shift == 0);
  CHECK(packed::panel_slot(4, 16).byte == 0 && packed::panel_slot(4, 16).shift == 4);
  CHECK(packed::panel_slot(4, 15).byte == 15 && packed::panel_slot(4, 31).byte == 15);
  CHECK(packed::panel_slot(4, 32).byte == 16 && packed::panel_slot(4, 63).byte == 31);
  CHECK(packed::panel_slot(8, 63).byte == 63 && packed::panel_slot(16, 63).byte == 126);
  for (uint32_t slot : {4u, 8u, 16u}) {
    std::vector<int> used(packed::panel_row_bytes(slot) * 8, 0);
    for (uint32_t c = 0; c < packed::kPanelColumns; ++c) {
      packed::SlotPosition at = packed::panel_slot(slot, c);
      for (uint32_t b = 0; b < slot; ++b) used[at.byte * 8 + at.shift + b]++;
    }
    bool once = true;
    for (int u : used) once = once && u == 1;
    CHECK(once);
  }
  std::mt19937 rng(2);
  for (uint32_t slot : {4u, 8u, 16u}) {
    const uint64_t k = 5, n = 130;  // three panels, the last holding 2 columns
    std::vector<uint8_t> panels(packed::panels_total_bytes(k, n, slot), 0);
    CHECK(panels.size() == 3 * k * packed::panel_row_bytes(slot));
    std::vector<uint32_t> values(k * n);
    for (auto& v : values) v = static_cast<uint32_t>(rng()) & ((1u << slot) - 1);
    for (uint64_t r = 0; r < k; ++r)
      for (uint64_t c = 0; c < n; ++c) packed::panel_store(panels.data(), k, slot, r, c, values[r * n + c]);
    bool same = true;
    for (uint64_t r = 0; r < k; ++r)
      for (uint64_t c = 0; c < n; ++c) same = same && packed::panel_load(panels.data(), k, slot, r, c) == values[r * n + c];
    CHECK(same);
    // padding columns of the last panel stay index 0
    CHECK(packed::panel_load(panels.data(), k, slot, k - 1, 3 * packed::kPanelColumns - 1) == 0);
  }
}

// The scalar kernel on a panel-packed matrix against a double-precision reference.
static void test_scalar_matmul() {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (uint32_t bits : {3u, 4u, 5u, 9u}) {
    const int64_t m = 3, k = 37, n = 71;
    const uint32_t slot = packed::slot_bits(bits), size = 1u << bits;
    std::vector<float> table(packed::table_entries(size), 0.0f);
    for (uint32_t i = 0; i < size; ++i) table[i] = normal(rng);
    std::vector<uint32_t> idx(k * n);
    for (auto& v : idx) v = static_cast<uint32_t>(rng()) % size;
    std::vector<uint8_t> panels(packed::panels_total_bytes(k, n, slot), 0);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < n; ++c) packed::panel_store(panels.data(), k, slot, r, c, idx[r * n + c]);
    std::vector<float> x(m * k), bias(n), y(m * n, NAN);
    for (auto& v : x) v = normal(rng);
    for (auto& v : bias) v = normal(rng);
    MatMulProblem p{x.data(), m, k, n, panels.data(), slot, size, table.data(), bias.data(), y.data(),
                    packed::panel_bytes(k, slot), packed::panel_row_bytes(slot), packed::group_bytes(slot)};
    MatMulScalar(p, 0, static_cast<int64_t>(packed::panel_count(n)), 0, m);
    bool close = true;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double ref = bias[j], magnitude = fabs(bias[j]);
        for (int64_t r = 0; r < k; ++r) {
          ref += double(x[i * k + r]) * table[idx[r * n + j]];
          magnitude += fabs(double(x[i * k + r]) * table[idx[r * n + j]]);
        }
        close = close && fabs(y[i * n + j] - ref) <= (k + 1) * 0x1p-24 * magnitude;
      }
    }
    CHECK(close);
  }
}

int main() {
  test_linear();
  test_panels();
  test_scalar_matmul();
  printf("%ld checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
