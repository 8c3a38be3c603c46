// The dense-panel kernels (DenseKernel, cpu/matmul_kernels.h) of every instruction set this CPU runs, on one shape,
// in one process, alternating run by run so all see the same load: median process CPU time per product with the
// op's task split (rows of about 192 KiB of X by 8 panels, as CodebookMatMulKernel::RunDensePanels), each ISA's
// ratio to the first, and whether each output is bit-identical to DenseScalar's.
// Usage: bench_dense M K N [repeats, default 15]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <random>
#include <vector>

#include "cpu/matmul_kernels.h"

using namespace onnxcomp;

static double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

static void run(DenseKernel kernel, const DenseProblem& p) {
  const int64_t panels = (p.n + kDensePanelColumns - 1) / kDensePanelColumns;
  const int64_t rows = std::max<int64_t>(6, 192 * 1024 / (4 * std::max<int64_t>(p.k, 1)) / 6 * 6);
  for (int64_t m0 = 0; m0 < p.m; m0 += rows)
    for (int64_t p0 = 0; p0 < panels; p0 += 8) kernel(p, p0, std::min(panels, p0 + 8), m0, std::min(p.m, m0 + rows));
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench_dense M K N [repeats]\n");
    return 2;
  }
  const int64_t m = atoll(argv[1]), k = atoll(argv[2]), n = atoll(argv[3]);
  const int repeats = argc > 4 ? atoi(argv[4]) : 15;
  if (m <= 0 || k <= 0 || n <= 0 || repeats <= 0) {
    fprintf(stderr, "M, K, N and repeats must be positive\n");
    return 2;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  const int64_t panels = (n + kDensePanelColumns - 1) / kDensePanelColumns;
  std::vector<float> storage(static_cast<size_t>(panels * k * kDensePanelColumns + 16));
  float* w = storage.data();
  while (reinterpret_cast<uintptr_t>(w) % 64 != 0) ++w;  // as the op aligns its panels
  for (int64_t i = 0; i < panels * k * kDensePanelColumns; ++i) w[i] = normal(rng);
  std::vector<float> x(static_cast<size_t>(m * k)), bias(static_cast<size_t>(n));
  std::vector<float> want(static_cast<size_t>(m * n)), got(static_cast<size_t>(m * n));
  for (auto& v : x) v = normal(rng);
  for (auto& v : bias) v = normal(rng);
  DenseProblem p{x.data(), m, k, n, w, bias.data(), want.data()};
  run(DenseScalar, p);
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (static_cast<int>(isa) <= static_cast<int>(SelectIsa()) && DenseKernelFor(isa) != DenseScalar &&
        std::find_if(isas.begin(), isas.end(), [&](Isa o) { return DenseKernelFor(o) == DenseKernelFor(isa); }) ==
            isas.end()) {
      isas.push_back(isa);
    }
  }
  if (isas.empty()) isas.push_back(Isa::kScalar);
  std::vector<std::vector<double>> times(isas.size());
  std::vector<bool> same(isas.size(), true);
  p.y = got.data();
  for (int r = 0; r <= repeats; ++r) {
    for (size_t i = 0; i < isas.size(); ++i) {
      const double start = cpu_seconds();
      run(DenseKernelFor(isas[i]), p);
      if (r > 0) times[i].push_back(cpu_seconds() - start);  // the first round warms up
      same[i] = same[i] && memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0;
    }
  }
  printf("M=%lld K=%lld N=%lld, %d repeats:", (long long)m, (long long)k, (long long)n, repeats);
  double first = 0;
  for (size_t i = 0; i < isas.size(); ++i) {
    std::sort(times[i].begin(), times[i].end());
    const double median = times[i][times[i].size() / 2];
    if (i == 0) first = median;
    printf(" %s %.3f ms (%.0f GFLOP/s, %.3f of %s)%s", IsaName(isas[i]), median * 1e3,
           2.0 * double(m) * double(k) * double(n) / median * 1e-9, median / first, IsaName(isas[0]),
           same[i] ? "" : " DIFFERS FROM SCALAR");
  }
  printf("\n");
  for (bool s : same) {
    if (!s) return 1;
  }
  return 0;
}
