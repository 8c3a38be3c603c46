// Unit test of simd_lookup.h: the lookup (NEON when built with ONNXCOMP_NEON=1) equals the scalar reference
// bit for bit, for every codebook size 1..256 and lengths that exercise the 16-wide body and the tail.
// Run natively it checks the portable path; built for aarch64 and run under qemu-user, the NEON path.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <limits>
#include <random>
#include <vector>

#include "simd_lookup.h"

using namespace onnxcomp;

static int g_failures = 0;
static long g_checks = 0;

static void check_equal(uint32_t size, size_t n, const std::vector<float>& got, const std::vector<float>& want) {
  ++g_checks;
  if (memcmp(got.data(), want.data(), n * sizeof(float)) != 0) {
    ++g_failures;
    for (size_t i = 0; i < n; ++i) {
      if (memcmp(&got[i], &want[i], 4) != 0) {
        fprintf(stderr, "codebook size %u, n %zu: element %zu is %a, scalar gives %a\n", size, n, i, got[i], want[i]);
        break;
      }
    }
  }
}

int main() {
  std::mt19937 rng(20240611);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Values whose bytes differ in every plane, plus the special ones a byte shuffle must keep exactly.
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::max(), 1.0f, -1.0f};
  const size_t lengths[] = {0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, 4099};
  for (uint32_t size = 1; size <= 256; ++size) {
    std::vector<float> codebook(size);
    for (uint32_t e = 0; e < size; ++e) codebook[e] = e < 7 ? specials[e] : normal(rng);
    LookupTable table;
    prepare_lookup_table(codebook.data(), size, &table);
    std::uniform_int_distribution<uint32_t> pick(0, size - 1);
    for (size_t n : lengths) {
      std::vector<uint8_t> indices(n + 1);  // +1: a zero-length vector may hand out a null pointer
      for (size_t i = 0; i < n; ++i) indices[i] = static_cast<uint8_t>(pick(rng));
      std::vector<float> got(n + 1, NAN), want(n + 1, NAN);
      lookup(table, indices.data(), got.data(), n);
      lookup_scalar(table, indices.data(), want.data(), n);
      check_equal(size, n, got, want);
      for (size_t i = 0; i < n; ++i) {  // and the reference itself
        ++g_checks;
        if (memcmp(&want[i], &codebook[indices[i]], 4) != 0) ++g_failures;
      }
      ++g_checks;  // nothing written past n
      if (!isnan(got[n])) ++g_failures;
    }
  }
  printf("lookup path: %s\n", ONNXCOMP_HAVE_NEON_LOOKUP ? "NEON (vqtbl1q/2q/4q_u8 for <= 16/32/64 entries)" : "scalar");
  printf("%ld checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
