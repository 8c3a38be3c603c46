// Unit test of the SIMD CodebookMatMul kernels (matmul_kernels.h) against the scalar kernel: every output must
// be bit-identical (all kernels sum fma(x[k], w[k], acc) over k in order from 0.0, then add the bias), for
// random shapes (odd K, N not a multiple of the vector width or the panel width, batch 1/3/8), index bits
// 2..9, codebooks of every table path (<= 16, 32, 64 entries and larger, sizes not powers of two), with and
// without bias, and with the work split into tasks as the op does. Built for aarch64 (run under qemu-user)
// it checks the NEON kernel; built natively on x86-64 the AVX2 and AVX-512 kernels this CPU runs.
// The dense-panel kernels (DenseKernel, the decode-once working form) are checked the same way against
// DenseScalar, on large and odd row counts too. Plain C++, no ORT.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

#include "cpu/matmul_kernels.h"
#include "packed_layout.h"

using namespace onnxcomp;

static int g_failures = 0;
static long g_checks = 0;

struct Case {
  int64_t m, k, n;
  uint32_t bits, codebook_size;
  bool bias;
};

// Runs `kernel` over the whole problem, in tasks of `panels_per_task` x `rows_per_task` (0: one task).
static void run_tasks(MatMulKernel kernel, const MatMulProblem& p, int64_t panels_per_task, int64_t rows_per_task) {
  const int64_t panels = static_cast<int64_t>(packed::panel_count(static_cast<uint64_t>(p.n)));
  if (panels_per_task == 0) panels_per_task = panels;
  if (rows_per_task == 0) rows_per_task = p.m;
  for (int64_t m0 = 0; m0 < p.m; m0 += rows_per_task) {
    for (int64_t p0 = 0; p0 < panels; p0 += panels_per_task) {
      kernel(p, p0, p0 + panels_per_task < panels ? p0 + panels_per_task : panels, m0,
             m0 + rows_per_task < p.m ? m0 + rows_per_task : p.m);
    }
  }
}

static void check_case(Isa isa, const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const uint32_t slot = packed::slot_bits(c.bits);
  // Values a lookup must keep exactly, and that make FMA and separate multiply-add differ.
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::min(),
                            1.0f + 0x1p-23f, -1.0f};
  std::vector<float> table(packed::table_entries(c.codebook_size), 0.0f);
  for (uint32_t i = 0; i < c.codebook_size; ++i) table[i] = i < 6 ? specials[i] : normal(rng);
  std::vector<uint8_t> panels(packed::panels_total_bytes(c.k, c.n, slot), 0);
  for (int64_t r = 0; r < c.k; ++r)
    for (int64_t j = 0; j < c.n; ++j)
      packed::panel_store(panels.data(), c.k, slot, r, j, static_cast<uint32_t>(rng()) % c.codebook_size);
  std::vector<float> x(c.m * c.k), bias(c.n);
  for (auto& v : x) v = normal(rng);
  if (!x.empty()) x[0] = 1.0f - 0x1p-24f;
  for (auto& v : bias) v = normal(rng);
  // +1: nothing is written past the end.
  std::vector<float> want(c.m * c.n + 1, NAN), got(c.m * c.n + 1, NAN);
  MatMulProblem p{x.data(), c.m, c.k, c.n, panels.data(), slot, c.codebook_size, table.data(),
                  c.bias ? bias.data() : nullptr, want.data(), packed::panel_bytes(c.k, slot),
                  packed::panel_row_bytes(slot), packed::group_bytes(slot)};
  run_tasks(MatMulScalar, p, 0, 0);
  if (UnpackKernel unpack = UnpackKernelFor(isa)) {  // W into dense panels: every column below N is its lookup
    const int64_t dense_panels = (c.n + kDensePanelColumns - 1) / kDensePanelColumns;
    std::vector<float> dense(static_cast<size_t>(dense_panels * c.k * kDensePanelColumns) + 1, NAN);
    const int64_t packed_panels = static_cast<int64_t>(packed::panel_count(static_cast<uint64_t>(c.n)));
    for (int64_t panel = 0; panel < packed_panels; ++panel) unpack(p, panel, panel + 1, dense.data());
    ++g_checks;
    bool same = isnan(dense.back());
    for (int64_t r = 0; r < c.k && same; ++r) {
      for (int64_t j = 0; j < c.n && same; ++j) {
        const float want_w = table[packed::panel_load(panels.data(), c.k, slot, r, j)];
        const float got_w = dense[static_cast<size_t>(((j / kDensePanelColumns) * c.k + r) * kDensePanelColumns +
                                                      j % kDensePanelColumns)];
        same = memcmp(&want_w, &got_w, 4) == 0;
      }
    }
    if (!same) {
      ++g_failures;
      fprintf(stderr, "%s unpack k=%lld n=%lld bits=%u size=%u: dense panels differ from the lookups\n", IsaName(isa),
              (long long)c.k, (long long)c.n, c.bits, c.codebook_size);
    }
  }
  // The op's split (2 panels, 48 rows), single tasks, and odd splits (1 panel x 1 row, 3 panels x 5 rows).
  const int64_t splits[][2] = {{0, 0}, {2, 48}, {1, 1}, {3, 5}};
  for (const auto& split : splits) {
    std::fill(got.begin(), got.end(), NAN);
    p.y = got.data();
    run_tasks(MatMulKernelFor(isa), p, split[0], split[1]);
    ++g_checks;
    const bool tail_untouched = isnan(got[c.m * c.n]);
    if (memcmp(got.data(), want.data(), sizeof(float) * static_cast<size_t>(c.m * c.n)) != 0 || !tail_untouched) {
      ++g_failures;
      for (int64_t i = 0; i < c.m * c.n; ++i) {
        if (memcmp(&got[i], &want[i], 4) != 0) {
          fprintf(stderr, "%s m=%lld k=%lld n=%lld bits=%u size=%u bias=%d split=%lldx%lld: y[%lld, %lld] is %a, "
                  "scalar gives %a\n", IsaName(isa), (long long)c.m, (long long)c.k, (long long)c.n, c.bits,
                  c.codebook_size, c.bias, (long long)split[0], (long long)split[1], (long long)(i / c.n),
                  (long long)(i % c.n), got[i], want[i]);
          break;
        }
      }
      if (!tail_untouched) fprintf(stderr, "%s: wrote past the output\n", IsaName(isa));
    }
  }
}

// The dense-panel kernel of `isa` against DenseScalar on one shape, whole and split into tasks.
static void check_dense_case(Isa isa, int64_t m, int64_t k, int64_t n, bool with_bias, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int64_t panels = (n + kDensePanelColumns - 1) / kDensePanelColumns;
  std::vector<float> storage(static_cast<size_t>(panels * k * kDensePanelColumns) + 8, 0.0f);
  float* w = storage.data();
  while (reinterpret_cast<uintptr_t>(w) % 32 != 0) ++w;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < kDensePanelColumns && p * kDensePanelColumns + c < n; ++c)
        w[(p * k + r) * kDensePanelColumns + c] = (rng() % 7 == 0) ? -0.0f : normal(rng);
  std::vector<float> x(static_cast<size_t>(m * k)), bias(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  if (!x.empty()) x[0] = 1.0f - 0x1p-24f;
  for (auto& v : bias) v = normal(rng);
  std::vector<float> want(static_cast<size_t>(m * n) + 1, NAN), got(static_cast<size_t>(m * n) + 1, NAN);
  DenseProblem p{x.data(), m, k, n, w, with_bias ? bias.data() : nullptr, want.data()};
  DenseScalar(p, 0, panels, 0, m);
  const int64_t splits[][2] = {{0, 0}, {8, 126}, {1, 1}, {3, 5}};  // panels x rows per task (0: all)
  for (const auto& split : splits) {
    std::fill(got.begin(), got.end(), NAN);
    p.y = got.data();
    const int64_t panel_step = split[0] ? split[0] : panels, row_step = split[1] ? split[1] : m;
    for (int64_t m0 = 0; m0 < m; m0 += row_step)
      for (int64_t p0 = 0; p0 < panels; p0 += panel_step)
        DenseKernelFor(isa)(p, p0, std::min(panels, p0 + panel_step), m0, std::min(m, m0 + row_step));
    ++g_checks;
    if (memcmp(got.data(), want.data(), sizeof(float) * static_cast<size_t>(m * n)) != 0 || !isnan(got[m * n])) {
      ++g_failures;
      fprintf(stderr, "%s dense m=%lld k=%lld n=%lld bias=%d split=%lldx%lld differs from DenseScalar\n",
              IsaName(isa), (long long)m, (long long)k, (long long)n, with_bias, (long long)split[0],
              (long long)split[1]);
    }
  }
}

static void check_dense(Isa isa, std::mt19937& rng) {
  const long checks_before = g_checks;
  const int failures_before = g_failures;
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 7, 13}, {5, 1, 16}, {6, 33, 17}, {7, 64, 31}, {13, 17, 67},
                               {49, 96, 48}, {200, 37, 70}, {601, 9, 33},
                               {12, 5, 32}, {25, 129, 47}, {600, 77, 33}, {13, 3, 80}};
  int count = 0;
  for (const auto& s : shapes) {
    check_dense_case(isa, s[0], s[1], s[2], true, rng);
    check_dense_case(isa, s[0], s[1], s[2], false, rng);
    count += 2;
  }
  std::uniform_int_distribution<int> rows(1, 300), depth(1, 200), width(1, 150), coin(0, 1);
  for (int i = 0; i < 30; ++i, ++count) check_dense_case(isa, rows(rng), depth(rng), width(rng), coin(rng) == 1, rng);
  printf("%s dense panels against scalar: %d shapes, %ld checks, %d failures\n", IsaName(isa), count,
         g_checks - checks_before, g_failures - failures_before);
}

static int check_isa(Isa isa) {
  std::mt19937 rng(20240612u + static_cast<unsigned>(isa));
  const long checks_before = g_checks;
  const int failures_before = g_failures;
  // Fixed edge shapes, then random ones.
  std::vector<Case> cases;
  for (uint32_t bits = 2; bits <= 9; ++bits) {
    const uint32_t full = 1u << bits;
    for (uint32_t size : {full, full - full / 4 + 1}) {  // a power of two and one that is not
      cases.push_back({1, 1, 1, bits, size, true});
      cases.push_back({3, 7, 33, bits, size, false});
      cases.push_back({8, 31, 65, bits, size, true});
      cases.push_back({1, 17, 129, bits, size, false});
    }
  }
  for (uint32_t size : {16u, 17u, 32u, 33u, 64u, 65u, 100u}) cases.push_back({3, 9, 45, 8, size, true});
  std::uniform_int_distribution<int> batch(0, 2), bits_of(2, 9), odd_k(0, 40), width(1, 200), coin(0, 1);
  const int64_t batches[] = {1, 3, 8};
  for (int i = 0; i < 60; ++i) {
    const uint32_t bits = static_cast<uint32_t>(bits_of(rng));
    const uint32_t full = 1u << bits;
    const uint32_t size = full / 2 + 1 + static_cast<uint32_t>(rng()) % (full / 2);  // needs all `bits` bits
    int64_t n = width(rng);
    if (n % 4 == 0) ++n;  // never a multiple of the 4-lane vector
    cases.push_back({batches[batch(rng)], 2 * odd_k(rng) + 1, n, bits, size, coin(rng) == 1});
  }
  for (const Case& c : cases) check_case(isa, c, rng);
  check_dense(isa, rng);
  printf("%s against scalar: %zu shapes, %ld checks, %d failures\n", IsaName(isa), cases.size(),
         g_checks - checks_before, g_failures - failures_before);
  return 1;
}

int main() {
  const Isa best = SelectIsa();
  int tested = 0;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    // Kernels of this build (MatMulKernelFor falls back to scalar otherwise) that this CPU runs.
    if (static_cast<int>(isa) > static_cast<int>(best) || MatMulKernelFor(isa) == MatMulScalar) continue;
    tested += check_isa(isa);
  }
#if defined(ONNXCOMP_HAVE_NEON_KERNELS)
  if (!getenv("ONNXCOMP_ISA") && !getenv("ONNXCOMP_FORCE_SCALAR")) {
    ++g_checks;  // a NEON build picks NEON unless the environment lowers it
    if (best != Isa::kNeon) {
      fprintf(stderr, "NEON build but SelectIsa() gave %s\n", IsaName(best));
      ++g_failures;
    }
  }
#endif
  if (tested == 0) {
    printf("SKIPPED: no SIMD CodebookMatMul kernel in this build that this CPU runs (best: %s)\n", IsaName(best));
    return g_failures ? 1 : 77;
  }
  printf("%ld checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
