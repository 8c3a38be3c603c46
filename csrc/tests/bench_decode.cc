// Decode throughput of decode.h on synthetic k-means-like index streams: MB/s of decoded indices
// (one byte each up to 8 index bits). Usage: bench_decode [million elements, default 16].
// bench_decode --records FILE...: the given record files instead (e.g. a model's record initializers written out),
// decoded one after the other, best of 15 passes of process CPU time: total ms and ns per index (parse excluded).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <random>

#include "decode.h"
#include "tests/test_encoder.h"

using namespace onnxcomp;
using namespace onnxcomp_test;

static void bench(const char* label, const Bytes& record) {
  RecordInfo info;
  if (!parse_record(record.data(), record.size(), &info).ok()) { puts("parse failed"); exit(1); }
  const uint32_t width = record::index_width(info.index_bits);
  std::vector<uint8_t> indices(info.num_elements * width);
  std::vector<float> codebook(info.codebook_size);
  std::vector<uint32_t> workspace(decode_workspace_bytes(info) / 4);
  double best = 1e30, best_parse = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    DecodeStatus s = parse_record(record.data(), record.size(), &info);  // includes the CRC
    auto t1 = std::chrono::steady_clock::now();
    s = decode_record(record.data(), info, codebook.data(), indices.data(), workspace.data(), workspace.size() * 4);
    auto t2 = std::chrono::steady_clock::now();
    if (!s.ok()) { printf("decode failed: %s\n", s.message); exit(1); }
    best_parse = std::min(best_parse, std::chrono::duration<double>(t1 - t0).count());
    best = std::min(best, std::chrono::duration<double>(t2 - t1).count());
  }
  const double mb = double(indices.size()) / 1e6;
  printf("%-34s record %7.2f MB  bits/elem %5.2f  decode %7.0f MB/s of indices (%6.0f M idx/s)  parse+CRC %6.0f MB/s of record\n",
         label, record.size() / 1e6, 8.0 * record.size() / info.num_elements, mb / best,
         info.num_elements / best / 1e6, record.size() / 1e6 / best_parse);
}

static double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

static int bench_records(int count, char** paths) {
  std::vector<Bytes> records;
  std::vector<RecordInfo> infos;
  std::vector<std::vector<uint8_t>> indices;
  std::vector<std::vector<float>> codebooks;
  std::vector<std::vector<uint32_t>> workspaces;
  uint64_t total = 0;
  for (int i = 0; i < count; ++i) {
    std::ifstream file(paths[i], std::ios::binary);
    records.emplace_back(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    RecordInfo info;
    if (!parse_record(records.back().data(), records.back().size(), &info).ok()) {
      printf("%s: parse failed\n", paths[i]);
      return 1;
    }
    infos.push_back(info);
    indices.emplace_back(info.num_elements * record::index_width(info.index_bits), uint8_t{1});
    codebooks.emplace_back(info.codebook_size, 1.0f);
    workspaces.emplace_back(decode_workspace_bytes(info) / 4 + 1, 1u);
    total += info.num_elements;
  }
  double best = 1e30;
  for (int pass = 0; pass < 15; ++pass) {
    const double t0 = cpu_seconds();
    for (size_t i = 0; i < records.size(); ++i) {
      DecodeStatus s = decode_record(records[i].data(), infos[i], codebooks[i].data(), indices[i].data(),
                                     workspaces[i].data(), workspaces[i].size() * 4);
      if (!s.ok()) { printf("%s: decode failed: %s\n", paths[i], s.message); return 1; }
    }
    best = std::min(best, cpu_seconds() - t0);
  }
  printf("%zu records, %llu indices: best %.2f ms CPU, %.2f ns per index\n", records.size(),
         static_cast<unsigned long long>(total), best * 1e3, best * 1e9 / double(total));
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 2 && strcmp(argv[1], "--records") == 0) return bench_records(argc - 2, argv + 2);
  const size_t n = size_t((argc > 1 ? atof(argv[1]) : 16.0) * 1e6);
  std::mt19937 rng(42);
  for (int bits : {2, 4, 5, 8}) {
    const uint32_t k = 1u << bits;
    // Weights ~ N(0, 1) quantized to k uniform bins over [-3, 3]: a peaked index distribution like k-means.
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<uint32_t> idx(n);
    for (auto& x : idx) {
      double v = std::min(2.999, std::max(-2.999, normal(rng)));
      x = uint32_t((v + 3.0) / 6.0 * k);
    }
    std::vector<float> codebook(k);
    for (uint32_t i = 0; i < k; ++i) codebook[i] = float(i);
    char label[64];
    snprintf(label, sizeof label, "dense %d-bit gaussian", bits);
    bench(label, serialize(dense_spec(codebook, idx, {n}, uint8_t(bits))));
  }
  // Pruned layer: 90% zeros, 4-bit values, sparse coding with 4-bit gaps.
  std::vector<uint32_t> idx(n);
  for (auto& x : idx) x = rng() % 10 == 0 ? 1 + rng() % 15 : 0;
  std::vector<float> codebook(16, 1.0f);
  codebook[0] = 0.0f;
  bench("sparse 90% zeros, 4-bit gaps", serialize(sparse_spec(codebook, idx, {n}, 4, 4)));
  bench("dense 90% zeros", serialize(dense_spec(codebook, idx, {n}, 4)));
  return 0;
}
