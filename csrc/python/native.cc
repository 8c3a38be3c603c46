// onnxcomp._native: the compressor's hot loops (1-D k-means, nearest-centroid assignment, the radix sort of a
// weight's values, magnitude masks, the outlier search's largest magnitudes and per-channel errors, Huffman tree
// depths, Huffman and gap coding, the decode of a record's indices; and a digest of an array's bytes for the
// compressor's in-process cache keys), compiled. A CPython
// extension module built by the same CMake as the custom-op library but separate from it: no onnxruntime type
// appears here.
//
// Every function reproduces, bit for bit, a straightforward numpy reference kept in the Python package
// (onnxcomp/core/codebook.py, pruning.py, outliers.py, huffman.py, sidecar.py, pipeline/inspection.py);
// tests/test_native.py and tests/test_fast_paths.py compare the two on random and edge-case inputs. Floating-point steps are done in the same order and precision as the reference:
// prefix sums are sequential float64 additions (what numpy.cumsum does), midpoints are float64.
// Every function releases the GIL while it works, so a Python thread pool over weights uses all cores.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "decode.h"

namespace py = pybind11;

// The value-by-value loops are compiled twice on x86-64 (AVX2 and baseline) and picked at load time; they
// compute integers from exact comparisons, so both give the same result.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ONNXCOMP_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define ONNXCOMP_MULTIVERSION
#endif

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using U32Array = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;
using BoolArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

// Prefix sums P[i] = v[0] + ... + v[i-1] (P[0] = 0, P[1] = v[0] exactly, then sequential float64 adds, as
// numpy.concatenate([[0.0], numpy.cumsum(v)]) computes them). Up to kFullPrefix values every P[i] is stored
// (8 bytes a value; a Lloyd iteration then reads each sum at once); beyond, only every kStride-th, and the few
// additions past a checkpoint are redone on demand, giving the same float64 value as the full sequential sum
// (memory n / kStride doubles).
class CheckpointedPrefix {
 public:
  static constexpr unsigned kStrideShift = 6;  // a checkpoint every 64 values (shifts, not divisions: a Lloyd
  static constexpr size_t kStride = size_t{1} << kStrideShift;  // iteration reads k + 1 sums)
  static constexpr size_t kFullPrefix = size_t{1} << 20;

  // term(i) gives the i-th summand in float64.
  template <typename Term>
  void build(size_t n, Term term) {
    n_ = n;
    shift_ = n <= kFullPrefix ? 0 : kStrideShift;
    checkpoints_.assign((n >> shift_) + 1, 0.0);
    double sum = 0.0;
    if (shift_ == 0) {
      for (size_t i = 0; i < n; ++i) {
        checkpoints_[i] = sum;
        sum = i == 0 ? term(0) : sum + term(i);
      }
      checkpoints_[n] = sum;
      return;
    }
    for (size_t i = 0; i < n; ++i) {
      if (i % kStride == 0) checkpoints_[i / kStride] = sum;
      sum = i == 0 ? term(0) : sum + term(i);
    }
    if (n % kStride == 0) checkpoints_[n / kStride] = sum;
  }

  template <typename Term>
  double at(size_t i, Term term) const {
    if (shift_ == 0) return checkpoints_[i];  // every P[i] stored
    size_t block = i >> shift_;
    size_t k = block << shift_;
    double sum = checkpoints_[block];
    if (k == 0 && i > 0) {
      sum = term(0);
      k = 1;
    }
    for (; k < i; ++k) sum += term(k);
    return sum;
  }

  // P[i] from a known P[j] = sum_j (j <= i): the same sequential additions at() would redo past a checkpoint,
  // when j lies in i's block past its first position (so at() would add exactly terms j .. i-1 after P[j]).
  template <typename Term>
  double from(size_t j, double sum_j, size_t i, Term term) const {
    if (shift_ == 0 || j == 0 || j > i || (j >> shift_) != (i >> shift_)) return at(i, term);
    double sum = sum_j;
    for (size_t k = j; k < i; ++k) sum += term(k);
    return sum;
  }

 private:
  size_t n_ = 0;
  unsigned shift_ = kStrideShift;
  std::vector<double> checkpoints_;
};

// Runs body(begin, end) on ``threads`` contiguous parts of [0, n) at once (the calling thread takes the first),
// fewer when a part would hold under ``min_part`` items. Each caller's parts write disjoint outputs and each
// output is computed as one thread alone would, so the result does not depend on ``threads``.
template <typename Body>
void split_range(size_t n, size_t threads, size_t min_part, Body body) {
  const size_t parts = std::max<size_t>(1, std::min(threads, n / std::max<size_t>(min_part, 1)));
  if (parts <= 1) {
    body(size_t{0}, n);
    return;
  }
  std::vector<std::thread> helpers;
  helpers.reserve(parts - 1);
  for (size_t part = 1; part < parts; ++part) {
    auto run_part = [&body, n, parts, part] { body(n * part / parts, n * (part + 1) / parts); };
    try {
      helpers.emplace_back(run_part);
    } catch (const std::system_error&) {  // no thread to be had: this one does the part
      run_part();
    }
  }
  body(size_t{0}, n / parts);
  for (auto& helper : helpers) helper.join();
}

constexpr size_t kMinThreadPart = size_t{1} << 18;  // values a helper thread takes at least (assign, channel errors)

std::vector<float> sorted_distinct(std::vector<float> values) {
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  return values;
}

// The first position in sorted ``v`` whose value exceeds ``m`` (std::upper_bound), found by galloping out from
// ``hint`` (any position; a good one is the answer of the previous Lloyd iteration, which moves little).
size_t upper_bound_from(const float* v, size_t n, double m, size_t hint) {
  auto above = [v, m](size_t i) { return static_cast<double>(v[i]) > m; };
  size_t lo = 0, hi = n;  // the answer lies in [lo, hi]
  if (hint < n && !above(hint)) {
    lo = hint + 1;
    for (size_t step = 1;; step <<= 1) {
      const size_t probe = lo + step - 1;
      if (probe >= n) break;
      if (above(probe)) {
        hi = probe;
        break;
      }
      lo = probe + 1;
    }
  } else {
    hi = std::min(hint, n);
    for (size_t step = 1;; step <<= 1) {
      if (hi < step) {
        lo = 0;
        break;
      }
      const size_t probe = hi - step;
      if (!above(probe)) {
        lo = probe + 1;
        break;
      }
      hi = probe;
    }
  }
  return static_cast<size_t>(std::upper_bound(v + lo, v + hi, m, [](double x, float y) { return x < static_cast<double>(y); }) - v);
}

// Lloyd iterations of 1-D k-means on sorted values to a fixed point (see onnxcomp.codebook.refine_reference).
py::array_t<float> lloyd_1d(FloatArray sorted_values, py::object weights_object, FloatArray centroids_in,
                            int max_iterations) {
  const size_t n = static_cast<size_t>(sorted_values.size());
  const float* v = sorted_values.data();
  FloatArray weights_array;
  const bool weighted = !weights_object.is_none();
  if (weighted) {
    weights_array = weights_object.cast<FloatArray>();
    if (static_cast<size_t>(weights_array.size()) != n) throw std::invalid_argument("weights and values differ in length");
  }
  const float* w = weighted ? weights_array.data() : nullptr;
  std::vector<float> centroids(centroids_in.data(), centroids_in.data() + centroids_in.size());
  {
    py::gil_scoped_release release;
    centroids = sorted_distinct(std::move(centroids));
    auto value_term = [v](size_t i) { return static_cast<double>(v[i]); };
    auto weight_term = [w](size_t i) { return static_cast<double>(w[i]); };
    auto moment_term = [v, w](size_t i) { return static_cast<double>(w[i]) * static_cast<double>(v[i]); };
    CheckpointedPrefix sums, weight_sums;
    if (weighted) {
      sums.build(n, moment_term);
      weight_sums.build(n, weight_term);
    } else {
      sums.build(n, value_term);
    }
    // Near the fixed point most centroids stay put from one iteration to the next: a midpoint between two
    // unchanged centroids is unchanged, so its bound is the previous iteration's (no search), and a prefix sum
    // at an unchanged bound is the previous one (no re-summing past a checkpoint). Same values as recomputing
    // them, so the same centroids as the straightforward loop (codebook.refine_reference), only faster; a bound
    // that moved a little up within its checkpoint block extends the previous sum by the values it passed.
    std::vector<size_t> bounds, previous;
    std::vector<double> sum_at, previous_sum_at, mass_at, previous_mass_at;
    std::vector<float> updated, used;  // used: the centroids the previous iteration started from
    for (int iteration = 0; iteration < max_iterations && !centroids.empty(); ++iteration) {
      const size_t k = centroids.size();
      const bool comparable = used.size() == k && previous.size() == k + 1;
      bounds.assign(k + 1, 0);
      bounds[k] = n;
      for (size_t j = 0; j + 1 < k; ++j) {
        if (comparable && centroids[j] == used[j] && centroids[j + 1] == used[j + 1]) {
          bounds[j + 1] = previous[j + 1];
          continue;
        }
        const double midpoint = (static_cast<double>(centroids[j]) + static_cast<double>(centroids[j + 1])) / 2;
        // values up to and including the midpoint go to centroid j (ties to the lower one, as assign does)
        const size_t hint = j + 1 < previous.size() ? previous[j + 1] : n * (j + 1) / k;
        bounds[j + 1] = upper_bound_from(v, n, midpoint, hint);
      }
      sum_at.assign(k + 1, 0.0);
      mass_at.assign(weighted ? k + 1 : 0, 0.0);
      for (size_t i = 0; i <= k; ++i) {
        if (!comparable) {
          sum_at[i] = weighted ? sums.at(bounds[i], moment_term) : sums.at(bounds[i], value_term);
          if (weighted) mass_at[i] = weight_sums.at(bounds[i], weight_term);
        } else if (weighted) {
          sum_at[i] = sums.from(previous[i], previous_sum_at[i], bounds[i], moment_term);
          mass_at[i] = weight_sums.from(previous[i], previous_mass_at[i], bounds[i], weight_term);
        } else {
          sum_at[i] = sums.from(previous[i], previous_sum_at[i], bounds[i], value_term);
        }
      }
      updated.clear();
      for (size_t j = 0; j < k; ++j) {
        const size_t lo = bounds[j], hi = bounds[j + 1];
        if (hi <= lo) continue;
        if (weighted) {
          const double mass = mass_at[j + 1] - mass_at[j];
          if (!(mass > 0)) continue;
          updated.push_back(static_cast<float>((sum_at[j + 1] - sum_at[j]) / mass));
        } else {
          updated.push_back(static_cast<float>((sum_at[j + 1] - sum_at[j]) / static_cast<double>(hi - lo)));
        }
      }
      // The means of consecutive runs of sorted values are already in order (unweighted); sorting is then a check.
      if (!std::is_sorted(updated.begin(), updated.end())) std::sort(updated.begin(), updated.end());
      updated.erase(std::unique(updated.begin(), updated.end()), updated.end());
      previous.swap(bounds);
      previous_sum_at.swap(sum_at);
      previous_mass_at.swap(mass_at);
      if (updated == centroids) break;
      used.swap(centroids);
      centroids.swap(updated);
    }
  }
  py::array_t<float> out(static_cast<py::ssize_t>(centroids.size()));
  std::copy(centroids.begin(), centroids.end(), out.mutable_data());
  return out;
}

// Index of the nearest centroid for each value: the number of float64 midpoints strictly below it (ties go
// to the lower centroid), as numpy.searchsorted(midpoints, values, side="left"). With ``keep``, pruned
// values get index 0 and kept ones 1 + their centroid's index (the pruned 0.0 entry leads the codebook).
//
// Exact in float32: for a float x and a double m, x > m exactly when x > t, t = m rounded down to a float
// (if m is a float, t = m; otherwise no float lies in (t, m]). So each midpoint becomes a float threshold
// and a value's index is the count of thresholds below it: a branch-free count over a block of values for
// up to kLinearThresholds midpoints (vectorised), a binary search beyond.
constexpr size_t kLinearThresholds = 64;
constexpr size_t kBlock = 512;

float round_down_to_float(double m) {
  float t = static_cast<float>(m);
  if (static_cast<double>(t) > m) t = std::nextafter(t, -std::numeric_limits<float>::infinity());
  return t;
}

template <typename Index>
inline __attribute__((always_inline)) void assign_into(const float* values, size_t n, const bool* keep, const std::vector<float>& thresholds,
                                       Index* out) {
  const size_t m = thresholds.size();
  const float* t = thresholds.data();
  uint32_t count[kBlock];
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t len = std::min(kBlock, n - start);
    const float* x = values + start;
    if (m <= kLinearThresholds) {
      for (size_t i = 0; i < len; ++i) count[i] = 0;
      for (size_t j = 0; j < m; ++j) {
        const float tj = t[j];
        for (size_t i = 0; i < len; ++i) count[i] += x[i] > tj ? 1u : 0u;
      }
    } else {
      for (size_t i = 0; i < len; ++i) {  // branch-free lower bound: thresholds below x
        const float xi = x[i];
        const float* base = t;
        size_t size = m;
        while (size > 1) {
          const size_t half = size / 2;
          base = base[half - 1] < xi ? base + half : base;
          size -= half;
        }
        count[i] = static_cast<uint32_t>(base - t) + (*base < xi ? 1u : 0u);
      }
    }
    Index* o = out + start;
    if (keep) {
      const bool* kp = keep + start;
      for (size_t i = 0; i < len; ++i) o[i] = kp[i] ? static_cast<Index>(count[i] + 1) : Index{0};
    } else {
      for (size_t i = 0; i < len; ++i) o[i] = static_cast<Index>(count[i]);
    }
  }
}

// Assignment through a bucket table: the top 16 bits of a float's order-preserving key (sign set for
// non-negatives, all bits flipped for negatives) name one of 65536 buckets, a run of floats in increasing
// order. For x in a bucket of finite floats, the count of thresholds below x (what assign_into computes) lies
// between the counts at the bucket's first and last float, lo and hi, since that count grows with x: thresholds
// [0, lo) are below every x of the bucket and thresholds from hi on below none. Most buckets hold no threshold
// (lo == hi: one table read per value); the others compare x with thresholds [lo, hi) only. Buckets that hold
// an infinity or NaN bit patterns compare x with every threshold. Same counts as assign_into for every input.
constexpr size_t kTableMinValues = size_t{1} << 16;  // below this the table's construction costs more than it saves
constexpr size_t kTableMinThresholds = 48;  // measured: fewer thresholds compare faster one by one (bench in docs/benchmarks.md)

inline uint32_t order_key(uint32_t bits) { return bits ^ (static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u); }

inline float key_value(uint32_t key) {
  const uint32_t bits = key ^ ((key >> 31) ? 0x80000000u : 0xFFFFFFFFu);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// entry b: lo | hi << 16 (thresholds.size() <= 65535)
std::vector<uint32_t> bucket_table(const std::vector<float>& t) {
  std::vector<uint32_t> table(size_t{1} << 16);
  const uint32_t m = static_cast<uint32_t>(t.size());
  auto below = [&t](float x) { return static_cast<uint32_t>(std::lower_bound(t.begin(), t.end(), x) - t.begin()); };
  for (uint32_t b = 0; b < (1u << 16); ++b) {
    const bool finite = b > 0x007Fu && b < 0xFF80u;  // keys of -inf, +inf and NaNs lie in the others
    const uint32_t lo = finite ? below(key_value(b << 16)) : 0;
    const uint32_t hi = finite ? below(key_value((b << 16) | 0xFFFFu)) : m;
    table[b] = lo | (hi << 16);
  }
  return table;
}

template <typename Index>
inline __attribute__((always_inline)) void assign_by_table(const float* values, size_t n, const bool* keep, const float* t,
                                                           const uint32_t* table, Index* out) {
  for (size_t i = 0; i < n; ++i) {
    const float x = values[i];
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const uint32_t entry = table[order_key(bits) >> 16];
    const uint32_t lo = entry & 0xFFFFu, hi = entry >> 16;
    uint32_t count = lo;
    for (uint32_t j = lo; j < hi; ++j) count += t[j] < x ? 1u : 0u;
    out[i] = keep ? (keep[i] ? static_cast<Index>(count + 1) : Index{0}) : static_cast<Index>(count);
  }
}

ONNXCOMP_MULTIVERSION void assign_table_u8(const float* values, size_t n, const bool* keep, const float* t, const uint32_t* table,
                                           uint8_t* out) {
  assign_by_table(values, n, keep, t, table, out);
}

ONNXCOMP_MULTIVERSION void assign_table_u16(const float* values, size_t n, const bool* keep, const float* t, const uint32_t* table,
                                            uint16_t* out) {
  assign_by_table(values, n, keep, t, table, out);
}

ONNXCOMP_MULTIVERSION void assign_u8(const float* values, size_t n, const bool* keep, const std::vector<float>& t, uint8_t* out) {
  assign_into(values, n, keep, t, out);
}

ONNXCOMP_MULTIVERSION void assign_u16(const float* values, size_t n, const bool* keep, const std::vector<float>& t, uint16_t* out) {
  assign_into(values, n, keep, t, out);
}

py::array assign(FloatArray values, FloatArray centroids, py::object keep_object, size_t threads, bool use_table) {
  const size_t n = static_cast<size_t>(values.size());
  const size_t k = static_cast<size_t>(centroids.size());
  if (k == 0) throw std::invalid_argument("assign needs at least one centroid");
  BoolArray keep_array;
  const bool masked = !keep_object.is_none();
  if (masked) {
    keep_array = keep_object.cast<BoolArray>();
    if (static_cast<size_t>(keep_array.size()) != n) throw std::invalid_argument("keep and values differ in length");
  }
  std::vector<float> midpoints(k - 1);  // as float thresholds (see assign_into)
  const float* c = centroids.data();
  for (size_t j = 0; j + 1 < k; ++j)
    midpoints[j] = round_down_to_float((static_cast<double>(c[j]) + static_cast<double>(c[j + 1])) / 2);
  const bool* keep = masked ? keep_array.data() : nullptr;
  const float* v = values.data();
  const size_t largest = k - 1 + (masked ? 1 : 0);
  if (largest > 0xFFFF) throw std::invalid_argument("more than 65536 centroids");
  const bool by_table = use_table && n >= kTableMinValues && midpoints.size() >= kTableMinThresholds;
  auto run = [&](auto* o) {
    py::gil_scoped_release release;
    const std::vector<uint32_t> table = by_table ? bucket_table(midpoints) : std::vector<uint32_t>();
    split_range(n, threads, kMinThreadPart, [&](size_t begin, size_t end) {
      const bool* kp = keep ? keep + begin : nullptr;
      if (by_table) {
        if constexpr (sizeof(*o) == 1) assign_table_u8(v + begin, end - begin, kp, midpoints.data(), table.data(), o + begin);
        else assign_table_u16(v + begin, end - begin, kp, midpoints.data(), table.data(), o + begin);
      } else {
        if constexpr (sizeof(*o) == 1) assign_u8(v + begin, end - begin, kp, midpoints, o + begin);
        else assign_u16(v + begin, end - begin, kp, midpoints, o + begin);
      }
    });
  };
  if (largest <= 0xFF) {
    py::array_t<uint8_t> out(static_cast<py::ssize_t>(n));
    run(out.mutable_data());
    return std::move(out);
  }
  py::array_t<uint16_t> out(static_cast<py::ssize_t>(n));
  run(out.mutable_data());
  return std::move(out);
}

// Magnitude pruning's mask: False for the ``pruned`` values of smallest |w|, ties at the threshold pruned in
// position order, which is what onnxcomp.pruning.keep_mask(numpy.abs(w), s) (a stable argsort) gives. For
// finite floats with the sign bit cleared, the bit patterns order as the values do, so the threshold is
// found by a two-level radix select (16 bits, then 16 bits) in three passes and no copy of the weight.
py::array_t<bool> magnitude_keep_mask(FloatArray values, size_t pruned) {
  const size_t n = static_cast<size_t>(values.size());
  const float* v = values.data();
  py::array_t<bool> out(static_cast<py::ssize_t>(n));
  bool* keep = out.mutable_data();
  py::gil_scoped_release release;
  auto key = [v](size_t i) {
    uint32_t bits;
    std::memcpy(&bits, v + i, sizeof bits);
    return bits & 0x7FFFFFFFu;
  };
  if (pruned == 0 || pruned >= n) {
    std::fill(keep, keep + n, pruned == 0);
    return out;
  }
  std::vector<size_t> high(1u << 15, 0), low(1u << 16, 0);
  for (size_t i = 0; i < n; ++i) ++high[key(i) >> 16];
  size_t below = 0, bin = 0;
  while (below + high[bin] < pruned) below += high[bin++];
  for (size_t i = 0; i < n; ++i) {
    const uint32_t k = key(i);
    if ((k >> 16) == bin) ++low[k & 0xFFFFu];
  }
  size_t part = 0;
  while (below + low[part] < pruned) below += low[part++];
  const uint32_t threshold = static_cast<uint32_t>(bin << 16 | part);
  size_t ties = pruned - below;  // values equal to the threshold still to prune, first ones first
  for (size_t i = 0; i < n; ++i) {
    const uint32_t k = key(i);
    bool kept = k > threshold;
    if (k == threshold) {
      kept = ties == 0;
      if (ties) --ties;
    }
    keep[i] = kept;
  }
  return out;
}

// The ``count`` positions of largest |w| among the kept values (all values without ``keep``), ordered by
// decreasing magnitude, ties by increasing position: what onnxcomp.core.outliers.largest_first (a stable argsort
// of -|w| over the kept positions) gives. As in magnitude_keep_mask, the magnitude order is the order of the
// bit patterns with the sign cleared (finite values), so the count-th largest is found by a two-level radix
// select; only the chosen positions are sorted. ``threads`` split each pass over the values into runs: the
// runs' histograms are summed, the ties at the threshold are taken from the runs in position order, and the
// chosen positions sorted whole, so the result does not depend on the thread count.
//
// First (``candidate_limit`` permitting) a shorter way to the same positions: one histogram of the keys' top 12 bits
// (4,096 bins of 1/16 octave: small enough to stay in the L1 cache), which finds the bin holding the count-th
// largest key, then one pass that collects every kept value in that bin or above with its position, and those few
// ordered by (magnitude descending, position ascending) with nth_element and a sort. Two passes over the values
// instead of three, and no 2^15-bin histogram. When the bins from there up hold more than ``candidate_limit``
// values (ties or a narrow spread: a constant tensor puts every value in one bin) the two-level select below runs
// instead. Both give the top ``count`` of the same total order, so the same array (tests/test_native.py forces
// each path).
constexpr unsigned kTopShift = 19;  // a 31-bit magnitude key's top 12 bits: sign cleared, 8 exponent, 4 mantissa
constexpr size_t kTopBins = size_t{1} << (31 - kTopShift);

py::array_t<int64_t> largest_magnitudes(FloatArray values, py::object keep_object, size_t count, size_t threads,
                                        int64_t candidate_limit) {
  const size_t n = static_cast<size_t>(values.size());
  BoolArray keep_array;
  const bool masked = !keep_object.is_none();
  if (masked) {
    keep_array = keep_object.cast<BoolArray>();
    if (static_cast<size_t>(keep_array.size()) != n) throw std::invalid_argument("keep and values differ in length");
  }
  const float* v = values.data();
  const bool* keep = masked ? keep_array.data() : nullptr;
  std::vector<std::pair<uint32_t, int64_t>> chosen;
  {
    py::gil_scoped_release release;
    auto key = [v](size_t i) {
      uint32_t bits;
      std::memcpy(&bits, v + i, sizeof bits);
      return bits & 0x7FFFFFFFu;
    };
    const size_t parts = std::max<size_t>(1, std::min(threads, n / kMinThreadPart));
    auto part_begin = [n, parts](size_t part) { return n * part / parts; };
    auto each_part = [parts](auto body) {  // body(part) for every run of the values, the runs at once
      split_range(parts, parts, 1, [&body](size_t first, size_t last) {
        for (size_t part = first; part < last; ++part) body(part);
      });
    };
    // out[key >> shift] += 1 for every kept value in [begin, end), in four interleaved 32-bit histograms (repeated
    // increments of one bin do not wait on each other) added to ``out`` every 2^30 values
    auto count_bins = [&key, keep](size_t* out, size_t bins, unsigned shift, size_t begin, size_t end) {
      std::vector<uint32_t> lanes(4 * bins);
      for (size_t chunk = begin; chunk < end; chunk += size_t{1} << 30) {
        const size_t stop = std::min(end, chunk + (size_t{1} << 30));
        std::fill(lanes.begin(), lanes.end(), 0u);
        size_t i = chunk;
        for (; i + 4 <= stop; i += 4)
          for (size_t l = 0; l < 4; ++l) lanes[l * bins + (key(i + l) >> shift)] += keep ? keep[i + l] : 1u;
        for (; i < stop; ++i) lanes[key(i) >> shift] += keep ? keep[i] : 1u;
        for (size_t b = 0; b < bins; ++b)
          for (size_t l = 0; l < 4; ++l) out[b] += lanes[l * bins + b];
      }
    };
    size_t kept = masked ? static_cast<size_t>(std::count(keep, keep + n, true)) : n;
    count = std::min(count, kept);
    // (the default bounds the candidates' memory to 1.5x the chosen pairs the two-level select holds, plus 1 MB)
    const size_t limit = candidate_limit < 0 ? count + std::max<size_t>(count / 2, size_t{1} << 16)
                                             : static_cast<size_t>(candidate_limit);
    bool selected = false;
    if (count > 0 && limit >= count) {
      std::vector<size_t> top_parts(parts * kTopBins, 0);
      each_part([&](size_t part) {
        count_bins(top_parts.data() + part * kTopBins, kTopBins, kTopShift, part_begin(part), part_begin(part + 1));
      });
      std::vector<size_t> top(kTopBins, 0);
      for (size_t part = 0; part < parts; ++part)
        for (size_t b = 0; b < kTopBins; ++b) top[b] += top_parts[part * kTopBins + b];
      size_t above = 0, bin = kTopBins - 1;  // values in bins above ``bin``
      while (above + top[bin] < count) above += top[bin--];
      if (above + top[bin] <= limit) {
        std::vector<size_t> part_start(parts + 1, 0);  // where each part's candidates go, in part (position) order
        for (size_t part = 0; part < parts; ++part) {
          size_t found = 0;
          for (size_t b = bin; b < kTopBins; ++b) found += top_parts[part * kTopBins + b];
          part_start[part + 1] = part_start[part] + found;
        }
        chosen.resize(part_start[parts]);
        const uint32_t lowest = static_cast<uint32_t>(bin) << kTopShift;
        each_part([&](size_t part) {
          auto* out = chosen.data() + part_start[part];
          const size_t end = part_begin(part + 1);
          for (size_t i = part_begin(part); i < end; ++i) {
            const uint32_t k = key(i);
            if (k >= lowest && (!keep || keep[i])) *out++ = {k, static_cast<int64_t>(i)};
          }
        });
        auto first = [](const std::pair<uint32_t, int64_t>& a, const std::pair<uint32_t, int64_t>& b) {
          return a.first != b.first ? a.first > b.first : a.second < b.second;
        };
        if (chosen.size() > count) std::nth_element(chosen.begin(), chosen.begin() + count, chosen.end(), first);
        chosen.resize(count);
        std::sort(chosen.begin(), chosen.end(), first);
        selected = true;
      }
    }
    if (count > 0 && !selected) {
      constexpr size_t kHigh = size_t{1} << 15, kLow = size_t{1} << 16;
      std::vector<size_t> high_parts(parts * kHigh, 0), low_parts(parts * kLow, 0);
      each_part([&](size_t part) {
        count_bins(high_parts.data() + part * kHigh, kHigh, 16, part_begin(part), part_begin(part + 1));
      });
      std::vector<size_t> high(kHigh, 0);
      for (size_t part = 0; part < parts; ++part)
        for (size_t b = 0; b < kHigh; ++b) high[b] += high_parts[part * kHigh + b];
      size_t above = 0, bin = kHigh - 1;  // values in bins above ``bin``
      while (above + high[bin] < count) above += high[bin--];
      each_part([&](size_t part) {
        size_t* low = low_parts.data() + part * kLow;
        for (size_t i = part_begin(part); i < part_begin(part + 1); ++i) {
          if (keep && !keep[i]) continue;
          const uint32_t k = key(i);
          if ((k >> 16) == bin) ++low[k & 0xFFFFu];
        }
      });
      std::vector<size_t> low(kLow, 0);
      for (size_t part = 0; part < parts; ++part)
        for (size_t b = 0; b < kLow; ++b) low[b] += low_parts[part * kLow + b];
      size_t slot = kLow - 1;
      while (above + low[slot] < count) above += low[slot--];
      const uint32_t threshold = static_cast<uint32_t>(bin << 16 | slot);
      size_t ties = count - above;  // values equal to the threshold to take, first ones first: run by run
      std::vector<size_t> part_ties(parts, 0);
      for (size_t part = 0; part < parts; ++part) {
        part_ties[part] = std::min(ties, low_parts[part * kLow + slot]);
        ties -= part_ties[part];
      }
      std::vector<std::vector<std::pair<uint32_t, int64_t>>> found(parts);
      each_part([&](size_t part) {
        size_t take = part_ties[part];
        auto& out = found[part];
        for (size_t i = part_begin(part); i < part_begin(part + 1); ++i) {
          if (keep && !keep[i]) continue;
          const uint32_t k = key(i);
          if (k > threshold || (k == threshold && take > 0)) {
            if (k == threshold) --take;
            out.emplace_back(k, static_cast<int64_t>(i));
          }
        }
      });
      chosen.reserve(count);
      for (auto& part : found) chosen.insert(chosen.end(), part.begin(), part.end());
      std::sort(chosen.begin(), chosen.end(), [](const std::pair<uint32_t, int64_t>& a, const std::pair<uint32_t, int64_t>& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
      });
    }
  }
  py::array_t<int64_t> out(static_cast<py::ssize_t>(chosen.size()));
  int64_t* o = out.mutable_data();
  for (size_t i = 0; i < chosen.size(); ++i) o[i] = chosen[i].second;
  return out;
}

// Sorts float32 ``values`` in place in the total order of onnxcomp.core.codebook.sort_values: each bit pattern
// mapped to its order key (order_key: negatives all bits flipped, others the sign bit set), the keys sorted as
// unsigned integers, mapped back. A least-significant-digit radix sort of the keys in two passes of 16-bit
// digits (a digit every key shares is skipped) with one scratch array of the same size; the key mapping is done
// while the first digits are counted, the mapping back in the last scatter. Sorted unsigned integers are one
// and the same array however they were sorted, so the result is byte for byte that of the reference (numpy's
// sort of the keys; tests/test_fast_paths.py). ``threads`` split each pass: every part counts its digits, the
// parts' runs of each digit are laid out in part order and each part scatters its keys in order (stable), so the
// result does not depend on the thread count either.
constexpr unsigned kRadixBits = 16;
constexpr size_t kMinSortPart = size_t{1} << 20;  // keys a helper thread of sort_floats takes at least

inline uint32_t key_bits(uint32_t key) { return key ^ ((key >> 31) ? 0x80000000u : 0xFFFFFFFFu); }  // order_key's inverse

void sort_floats(py::array values, size_t threads) {
  // in place: no converted copy of another dtype or layout, which would be sorted and dropped
  if (values.ndim() != 1 || !values.dtype().is(py::dtype::of<float>()) || !(values.flags() & py::array::c_style) ||
      !values.writeable())
    throw std::invalid_argument("sort_floats sorts a writable contiguous 1-D float32 array in place");
  const size_t n = static_cast<size_t>(values.size());
  if (n < 2) return;
  uint32_t* data = static_cast<uint32_t*>(values.mutable_data());
  // The scratch is a numpy array: numpy asks the kernel for huge pages for its large buffers, and the first touch
  // of fresh 4 KiB pages cost 33 ms per 64 MB here (a 16.8M-value weight) against 7 ms for 2 MiB ones.
  // (not zeroed: every element is written before it is read)
  py::array_t<uint32_t> scratch_array(static_cast<py::ssize_t>(n));
  py::gil_scoped_release release;
  const size_t parts = std::max<size_t>(1, std::min(threads, n / kMinSortPart));
  constexpr size_t buckets = size_t{1} << kRadixBits;
  constexpr uint32_t mask = static_cast<uint32_t>(buckets - 1);
  auto part_begin = [n, parts](size_t part) { return n * part / parts; };
  auto each_part = [parts](auto body) {  // body(part) for every part, the parts at once
    split_range(parts, parts, 1, [&body](size_t first, size_t last) {
      for (size_t part = first; part < last; ++part) body(part);
    });
  };
  std::vector<size_t> offsets(parts * buckets);  // part p's count of digit d, then where its run starts
  each_part([&](size_t part) {  // the keys, in place, and their low digits counted
    size_t* count = offsets.data() + part * buckets;
    for (size_t i = part_begin(part); i < part_begin(part + 1); ++i) {
      data[i] = order_key(data[i]);
      ++count[data[i] & mask];
    }
  });
  uint32_t* source = data;
  uint32_t* target = scratch_array.mutable_data();
  bool mapped_back = false;
  for (unsigned shift = 0; shift < 32; shift += kRadixBits) {
    if (shift) {
      std::fill(offsets.begin(), offsets.end(), 0);
      each_part([&](size_t part) {
        size_t* count = offsets.data() + part * buckets;
        for (size_t i = part_begin(part); i < part_begin(part + 1); ++i) ++count[(source[i] >> shift) & mask];
      });
    }
    size_t start = 0;
    bool constant = false;
    for (size_t digit = 0; digit < buckets; ++digit) {
      const size_t before = start;
      for (size_t part = 0; part < parts; ++part) {
        const size_t count = offsets[part * buckets + digit];
        offsets[part * buckets + digit] = start;
        start += count;
      }
      constant = constant || start - before == n;
    }
    if (constant) continue;  // every key has this digit: already in order
    const bool last = shift + kRadixBits >= 32 && target == data;  // the final scatter maps the keys back
    each_part([&](size_t part) {
      size_t* next = offsets.data() + part * buckets;
      for (size_t i = part_begin(part); i < part_begin(part + 1); ++i) {
        const uint32_t key = source[i];
        target[next[(key >> shift) & mask]++] = last ? key_bits(key) : key;
      }
    });
    mapped_back = last;
    std::swap(source, target);
  }
  if (!mapped_back) {  // the sorted keys are in ``source``: back to float bits, into ``values``
    split_range(n, parts, 1, [source, data](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) data[i] = key_bits(source[i]);
    });
  }
}

// A 64-bit digest of a contiguous array's bytes, for the compressor's in-process cache keys (a weight's values and
// mask between compress's rounds, a decoded weight's measured error): four interleaved lanes of 8-byte words, each
// word xored in and multiplied by an odd constant, the lanes, the tail and the length mixed at the end (MurmurHash3's
// 64-bit finaliser). Not a checksum of any file format, never written anywhere; about four times the speed of
// zlib.crc32 here (a 64 MB weight in ~5 ms against ~18 ms), with 64 bits instead of 32.
inline uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 33;
  return h;
}

uint64_t digest(py::array array) {
  if (!(array.flags() & py::array::c_style)) throw std::invalid_argument("digest takes a C-contiguous array");
  const auto* bytes = static_cast<const uint8_t*>(array.data());
  const size_t n = static_cast<size_t>(array.nbytes());
  py::gil_scoped_release release;
  constexpr uint64_t kOdd = 0x9E3779B97F4A7C15ull;
  uint64_t lanes[4] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull, 0xA4093822299F31D0ull, 0x082EFA98EC4E6C89ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (size_t l = 0; l < 4; ++l) {
      uint64_t word;
      std::memcpy(&word, bytes + i + 8 * l, 8);
      lanes[l] = (lanes[l] ^ word) * kOdd;
      lanes[l] ^= lanes[l] >> 29;
    }
  }
  uint64_t tail = 0;
  for (size_t shift = 0; i < n; ++i, shift += 8) tail |= static_cast<uint64_t>(bytes[i]) << shift;
  uint64_t h = mix64(static_cast<uint64_t>(n) ^ kOdd);
  for (uint64_t lane : lanes) h = mix64(h ^ mix64(lane));
  return mix64(h ^ tail);
}

// Per output channel c, the (optionally weighted) squared error of a decoded weight against its reference,
// E_c = sum_j u_j (q_cj - r_cj)^2 in float64, added in increasing input order j (the order of
// numpy.cumsum along the row: onnxcomp.core.outliers.channel_errors_reference). The weight is flat float32 of
// channels x inputs elements, element (c, j) at c * inputs + j, or with ``transposed`` at j * channels + c
// (a MatMul B). q = codebook[indices[i]], except at the sorted flat ``positions``, where it is the matching
// ``stored`` value; without indices q = 0 (E_c is then the channel's energy).
// e[c] += (q_c - r[c])^2 (times w when weighted) for q_c = book[idx[c]] (0 without idx), vectorised across
// channels (each e[c] still adds its terms in input order).
template <typename Index>
inline __attribute__((always_inline)) void add_squares_into(const Index* idx, const float* book, const float* r, size_t count,
                                                            double w, bool weighted, double* e) {
  if (!idx) {
    for (size_t c = 0; c < count; ++c) {
      const double d = 0.0 - static_cast<double>(r[c]);
      e[c] += weighted ? d * d * w : d * d;
    }
  } else if (weighted) {
    for (size_t c = 0; c < count; ++c) {
      const double d = static_cast<double>(book[idx[c]]) - static_cast<double>(r[c]);
      e[c] += d * d * w;
    }
  } else {
    for (size_t c = 0; c < count; ++c) {
      const double d = static_cast<double>(book[idx[c]]) - static_cast<double>(r[c]);
      e[c] += d * d;
    }
  }
}

ONNXCOMP_MULTIVERSION void add_squares(const uint8_t* idx, const float* book, const float* r, size_t count, double w, bool weighted, double* e) {
  add_squares_into(idx, book, r, count, w, weighted, e);
}

ONNXCOMP_MULTIVERSION void add_squares(const uint16_t* idx, const float* book, const float* r, size_t count, double w, bool weighted, double* e) {
  add_squares_into(idx, book, r, count, w, weighted, e);
}

// Channels [c_begin, c_end) only (each channel's sum is the same whichever range computes it).
template <typename Index>
void accumulate_errors(const float* r, const Index* idx, const float* book, size_t book_size, const int64_t* pos,
                       const float* stored, size_t outliers, size_t channels, size_t inputs, bool transposed,
                       const double* u, double* e, bool& bad, size_t c_begin, size_t c_end) {
  // the first outlier at or after flat position i (positions are increasing)
  auto first_outlier = [&](size_t from, size_t i) {
    return static_cast<size_t>(std::lower_bound(pos + from, pos + outliers, static_cast<int64_t>(i)) - pos);
  };
  size_t p = transposed ? 0 : first_outlier(0, c_begin * inputs);
  auto decoded = [&](size_t i) -> double {
    if (p < outliers && static_cast<size_t>(pos[p]) == i) return static_cast<double>(stored[p++]);
    if (!idx) return 0.0;
    const size_t k = idx[i];
    if (k >= book_size) {
      bad = true;
      return 0.0;
    }
    return static_cast<double>(book[k]);
  };
  if (transposed) {  // one stored row (input j) at a time, added to every channel; split at the outliers in it
    for (size_t j = 0; j < inputs; ++j) {
      const size_t row = j * channels;
      const double w = u ? u[j] : 1.0;
      p = first_outlier(p, row + c_begin);
      size_t c = c_begin;
      while (c < c_end) {
        const size_t stop = p < outliers && static_cast<size_t>(pos[p]) < row + c_end ? static_cast<size_t>(pos[p]) - row : c_end;
        if (idx) {
          for (size_t i = c; i < stop; ++i)
            if (idx[row + i] >= book_size) bad = true;
          if (bad) return;
          add_squares(idx + row + c, book, r + row + c, stop - c, w, u != nullptr, e + c);
        } else {
          add_squares(static_cast<const Index*>(nullptr), book, r + row + c, stop - c, w, u != nullptr, e + c);
        }
        if (stop < c_end) {  // the outlier's stored value
          const double d = static_cast<double>(stored[p++]) - static_cast<double>(r[row + stop]);
          e[stop] += u ? d * d * w : d * d;
        }
        c = stop + 1;
      }
    }
  } else {
    for (size_t c = c_begin; c < c_end; ++c) {
      double sum = 0.0;
      const size_t row = c * inputs;
      for (size_t j = 0; j < inputs; ++j) {
        const double d = decoded(row + j) - static_cast<double>(r[row + j]);
        sum += u ? d * d * u[j] : d * d;
      }
      e[c] = sum;
    }
  }
}

py::array_t<double> channel_errors(FloatArray reference, py::object indices_object, FloatArray codebook,
                                   py::array_t<int64_t, py::array::c_style | py::array::forcecast> positions,
                                   FloatArray stored, size_t channels, size_t inputs, bool transposed,
                                   py::object importance_object, size_t threads) {
  const size_t n = static_cast<size_t>(reference.size());
  if (channels * inputs != n) throw std::invalid_argument("channels x inputs differs from the reference's size");
  const size_t outliers = static_cast<size_t>(positions.size());
  if (static_cast<size_t>(stored.size()) != outliers) throw std::invalid_argument("positions and stored values differ in length");
  const int64_t* pos = positions.data();
  for (size_t p = 0; p < outliers; ++p)
    if (pos[p] < 0 || static_cast<size_t>(pos[p]) >= n || (p && pos[p] <= pos[p - 1]))
      throw std::invalid_argument("outlier positions must be increasing and below N");
  py::array_t<double, py::array::c_style | py::array::forcecast> importance;
  if (!importance_object.is_none()) {
    importance = importance_object.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
    if (static_cast<size_t>(importance.size()) != inputs) throw std::invalid_argument("importance needs one entry per input");
  }
  const double* u = importance_object.is_none() ? nullptr : importance.data();
  py::array indices;
  int width = 0;
  if (!indices_object.is_none()) {
    indices = py::array::ensure(indices_object, py::array::c_style);
    if (!indices || static_cast<size_t>(indices.size()) != n) throw std::invalid_argument("indices must have one entry per value");
    if (indices.dtype().is(py::dtype::of<uint8_t>())) width = 1;
    else if (indices.dtype().is(py::dtype::of<uint16_t>())) width = 2;
    else throw std::invalid_argument("indices must be uint8 or uint16");
  }
  py::array_t<double> out(static_cast<py::ssize_t>(channels));
  double* e = out.mutable_data();
  std::fill(e, e + channels, 0.0);
  const float* r = reference.data();
  const float* book = codebook.data();
  const size_t book_size = static_cast<size_t>(codebook.size());
  const float* s = stored.data();
  const void* data = width ? indices.data() : nullptr;
  std::atomic<bool> bad_any{false};
  {
    py::gil_scoped_release release;
    const size_t parts = std::max<size_t>(1, std::min(threads, n / kMinThreadPart));
    split_range(channels, parts, 1, [&](size_t c_begin, size_t c_end) {
      bool bad = false;
      if (width == 2)
        accumulate_errors(r, static_cast<const uint16_t*>(data), book, book_size, pos, s, outliers, channels, inputs, transposed, u, e, bad,
                          c_begin, c_end);
      else
        accumulate_errors(r, static_cast<const uint8_t*>(data), book, book_size, pos, s, outliers, channels, inputs, transposed, u, e, bad,
                          c_begin, c_end);
      if (bad) bad_any = true;
    });
  }
  if (bad_any) throw std::invalid_argument("index outside the codebook");
  return out;
}

// Reads a 1-D array of non-negative integer symbols (uint8, uint16, int32 or int64) as uint64.
struct Symbols {
  py::array array;
  int width = 0;
  bool is_signed = false;
  size_t n = 0;

  explicit Symbols(py::array a) : array(py::array::ensure(a, py::array::c_style)) {
    if (!array) throw std::invalid_argument("symbols must be an array");
    const char kind = array.dtype().kind();
    if (kind != 'u' && kind != 'i') throw std::invalid_argument("symbols must be integers");
    width = static_cast<int>(array.itemsize());
    if (width != 1 && width != 2 && width != 4 && width != 8) throw std::invalid_argument("unsupported symbol width");
    is_signed = kind == 'i';
    n = static_cast<size_t>(array.size());
  }

  template <typename F>
  void each(F f) const { each_in(0, n, f); }

  // f(i, symbol i) for i in [begin, end), in order
  template <typename F>
  void each_in(size_t begin, size_t end, F f) const {
    const void* data = array.data();
    switch (width * (is_signed ? -1 : 1)) {
      case 1: for (size_t i = begin; i < end; ++i) f(i, static_cast<const uint8_t*>(data)[i]); break;
      case 2: for (size_t i = begin; i < end; ++i) f(i, static_cast<const uint16_t*>(data)[i]); break;
      case 4: for (size_t i = begin; i < end; ++i) f(i, static_cast<const uint32_t*>(data)[i]); break;
      case 8: for (size_t i = begin; i < end; ++i) f(i, static_cast<const uint64_t*>(data)[i]); break;
      case -1: for (size_t i = begin; i < end; ++i) f(i, static_cast<uint64_t>(static_cast<const int8_t*>(data)[i])); break;
      case -2: for (size_t i = begin; i < end; ++i) f(i, static_cast<uint64_t>(static_cast<const int16_t*>(data)[i])); break;
      case -4: for (size_t i = begin; i < end; ++i) f(i, static_cast<uint64_t>(static_cast<const int32_t*>(data)[i])); break;
      case -8: for (size_t i = begin; i < end; ++i) f(i, static_cast<uint64_t>(static_cast<const int64_t*>(data)[i])); break;
      default: throw std::invalid_argument("unsupported symbol width");
    }
  }
};

// counts[min(s, size)] += 1 for every uint8 or uint16 symbol s, in four interleaved histograms (a run of one
// symbol then does not wait on its own increments), summed at the end.
void count_small(const void* data, size_t n, int width, size_t size, std::vector<int64_t>& counts) {
  const size_t range = width == 1 ? size_t{1} << 8 : size_t{1} << 16;
  std::vector<int64_t> part(4 * range, 0);
  auto run = [&](auto* s) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      ++part[s[i]];
      ++part[range + s[i + 1]];
      ++part[2 * range + s[i + 2]];
      ++part[3 * range + s[i + 3]];
    }
    for (; i < n; ++i) ++part[s[i]];
  };
  if (width == 1) run(static_cast<const uint8_t*>(data)); else run(static_cast<const uint16_t*>(data));
  for (size_t v = 0; v < range; ++v) {
    const int64_t total = part[v] + part[range + v] + part[2 * range + v] + part[3 * range + v];
    counts[v < size ? v : size] += total;
  }
}

// The gap histogram of ``statistics`` from the zero runs alone (for uint8/uint16 symbols, ``zeros`` of them 0):
// each maximal run of zeros followed by a non-zero symbol is that symbol's gap (its length); every other non-zero
// symbol has gap 0; trailing zeros count nowhere. The same histogram and list (in stream order) as the
// per-symbol loop of ``statistics`` (tests/test_native.py compares them), with memchr finding the zeros of
// uint8 symbols, so a stream with few zeros costs little more than its count.
void zero_runs(const void* data, size_t n, int width, int64_t zeros, size_t gap_limit, std::vector<int64_t>& gaps,
               std::vector<int64_t>& large) {
  int64_t runs = 0;
  auto scan = [&](auto* s, auto next_zero) {
    size_t i = 0;
    while (i < n) {
      const size_t start = next_zero(s, i);
      if (start >= n) break;
      size_t end = start;
      while (end < n && s[end] == 0) ++end;
      if (end >= n) break;  // trailing zeros: no symbol follows
      const size_t gap = end - start;
      if (gap >= gap_limit) large.push_back(static_cast<int64_t>(gap)); else ++gaps[gap];
      ++runs;
      i = end + 1;
    }
  };
  if (zeros > 0 && width == 1) {
    scan(static_cast<const uint8_t*>(data), [n](const uint8_t* s, size_t i) {
      const void* found = std::memchr(s + i, 0, n - i);
      return found ? static_cast<size_t>(static_cast<const uint8_t*>(found) - s) : n;
    });
  } else if (zeros > 0) {
    scan(static_cast<const uint16_t*>(data), [n](const uint16_t* s, size_t i) {
      while (i < n && s[i] != 0) ++i;
      return i;
    });
  }
  const int64_t nonzero = static_cast<int64_t>(n) - zeros;
  gaps[0] += nonzero - runs;  // the non-zero symbols right after another (or first in the stream)
}

// One pass over an index stream: numpy.bincount(symbols, minlength=size) (a symbol >= size raises
// ValueError) and, with gap_limit > 0, the gaps (zeros skipped) before each non-zero symbol: a histogram of
// those below gap_limit and the list of the others, from which any gap alphabet's symbol counts follow.
py::tuple statistics(py::array symbols_array, size_t size, size_t gap_limit) {
  Symbols symbols(symbols_array);
  std::vector<int64_t> counts(size + 1, 0);  // the last slot catches symbols out of range
  std::vector<int64_t> gaps(gap_limit + 1, 0);  // the last slot catches zeros (and large gaps, listed apart)
  std::vector<int64_t> large;
  {
    py::gil_scoped_release release;
    if ((symbols.width == 1 || symbols.width == 2) && !symbols.is_signed) {
      count_small(symbols.array.data(), symbols.n, symbols.width, size, counts);
      if (gap_limit) zero_runs(symbols.array.data(), symbols.n, symbols.width, counts[0], gap_limit, gaps, large);
    } else if (gap_limit == 0) {
      symbols.each([&](size_t, uint64_t s) { ++counts[s < size ? s : size]; });
    } else {
      uint64_t previous = ~uint64_t{0};  // position of the last non-zero symbol, -1 before the first
      symbols.each([&](size_t i, uint64_t s) {
        ++counts[s < size ? s : size];
        const uint64_t gap = i - previous - 1;
        const bool nonzero = s != 0;
        if (nonzero && gap >= gap_limit) large.push_back(static_cast<int64_t>(gap));
        ++gaps[nonzero && gap < gap_limit ? gap : gap_limit];
        previous = nonzero ? i : previous;
      });
    }
  }
  if (counts[size]) throw std::invalid_argument("index outside the codebook");
  py::array_t<int64_t> value_counts(static_cast<py::ssize_t>(size));
  std::copy(counts.begin(), counts.begin() + static_cast<std::ptrdiff_t>(size), value_counts.mutable_data());
  py::array_t<int64_t> hist(static_cast<py::ssize_t>(gap_limit));
  std::copy(gaps.begin(), gaps.begin() + static_cast<std::ptrdiff_t>(gap_limit), hist.mutable_data());
  py::array_t<int64_t> rest(static_cast<py::ssize_t>(large.size()));
  std::copy(large.begin(), large.end(), rest.mutable_data());
  return py::make_tuple(value_counts, hist, rest);
}

// MSB-first bit writer: codes gather in a 64-bit accumulator and leave it 32 bits at a time.
class BitWriter {
 public:
  explicit BitWriter(uint64_t expected_bits) : bytes_(static_cast<size_t>(expected_bits / 8) + 16, '\0') {}

  // ``code`` < 2^length, length <= 32
  inline void put(uint32_t code, unsigned length) {
    accumulator_ = (accumulator_ << length) | code;
    pending_ += length;
    bits_ += length;
    if (pending_ >= 32) {
      pending_ -= 32;
      if (position_ + 4 > bytes_.size()) bytes_.resize(bytes_.size() * 2 + 16);
      const uint32_t word = static_cast<uint32_t>(accumulator_ >> pending_);
      char* out = &bytes_[position_];
      out[0] = static_cast<char>(word >> 24);
      out[1] = static_cast<char>(word >> 16);
      out[2] = static_cast<char>(word >> 8);
      out[3] = static_cast<char>(word);
      position_ += 4;
    }
  }

  std::string finish() {
    bytes_.resize(position_ + 8);
    while (pending_ >= 8) {
      pending_ -= 8;
      bytes_[position_++] = static_cast<char>((accumulator_ >> pending_) & 0xFF);
    }
    if (pending_) bytes_[position_++] = static_cast<char>((accumulator_ << (8 - pending_)) & 0xFF);
    pending_ = 0;
    bytes_.resize(position_);
    return std::move(bytes_);
  }

  uint64_t bits() const { return bits_; }

 private:
  std::string bytes_;
  size_t position_ = 0;
  uint64_t accumulator_ = 0;  // fewer than 32 pending bits, plus the code being added
  unsigned pending_ = 0;
  uint64_t bits_ = 0;
};

// Codes (masked to their lengths) and lengths, checked: no code longer than 32 bits.
struct CodeTable {
  std::vector<uint32_t> codes;
  std::vector<uint8_t> lengths;
  size_t size;
  CodeTable(const U32Array& c, const U8Array& l) : size(static_cast<size_t>(c.size())) {
    if (static_cast<size_t>(l.size()) != size) throw std::invalid_argument("codes and lengths differ in length");
    codes.assign(c.data(), c.data() + size);
    lengths.assign(l.data(), l.data() + size);
    for (size_t i = 0; i < size; ++i) {
      if (lengths[i] > 32) throw std::invalid_argument("code longer than 32 bits");
      if (lengths[i] < 32) codes[i] &= (uint32_t{1} << lengths[i]) - 1;
    }
  }
};

// Depth of each leaf in the Huffman tree over ``weights`` (n >= 1), as onnxcomp.core.huffman._huffman_depths
// builds it: leaves are nodes 0..n-1, each merge pops the two smallest (weight, node) pairs (ties by node
// number, so the pops are the same whatever heap holds them) and makes node n, n+1, ... of their summed weight.
py::array_t<int64_t> huffman_depths(py::array_t<int64_t, py::array::c_style | py::array::forcecast> weights_array) {
  const size_t n = static_cast<size_t>(weights_array.size());
  if (n == 0) throw std::invalid_argument("huffman_depths needs at least one weight");
  const int64_t* weights = weights_array.data();
  py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
  int64_t* depth_out = out.mutable_data();
  {
    py::gil_scoped_release release;
    using Item = std::pair<int64_t, int64_t>;  // (weight, node)
    std::vector<Item> heap;
    heap.reserve(n);
    for (size_t i = 0; i < n; ++i) heap.emplace_back(weights[i], static_cast<int64_t>(i));
    auto later = [](const Item& a, const Item& b) { return a > b; };  // a min-heap of (weight, node)
    std::make_heap(heap.begin(), heap.end(), later);
    std::vector<int64_t> parent(2 * n - 1, 0);
    int64_t next_node = static_cast<int64_t>(n);
    while (heap.size() > 1) {
      std::pop_heap(heap.begin(), heap.end(), later);
      const Item a = heap.back();
      heap.pop_back();
      std::pop_heap(heap.begin(), heap.end(), later);
      const Item b = heap.back();
      heap.pop_back();
      parent[static_cast<size_t>(a.second)] = next_node;
      parent[static_cast<size_t>(b.second)] = next_node;
      heap.emplace_back(a.first + b.first, next_node);
      std::push_heap(heap.begin(), heap.end(), later);
      ++next_node;
    }
    std::vector<int64_t> depth(2 * n - 1, 0);
    for (int64_t node = next_node - 2; node >= 0; --node)  // parents have larger numbers than their children
      depth[static_cast<size_t>(node)] = depth[static_cast<size_t>(parent[static_cast<size_t>(node)])] + 1;
    std::copy(depth.begin(), depth.begin() + static_cast<std::ptrdiff_t>(n), depth_out);
  }
  return out;
}

// Appends the first ``bits`` bits of the MSB-first stream ``part`` to the MSB-first stream ``out`` of ``out_bits``
// bits (its unused low bits 0): the bytes of one writer's output over the concatenated symbols.
void append_bits(std::string& out, uint64_t out_bits, const std::string& part, uint64_t bits) {
  const unsigned shift = static_cast<unsigned>(out_bits % 8);
  out.resize(static_cast<size_t>((out_bits + bits + 7) / 8), '\0');
  const size_t bytes = static_cast<size_t>((bits + 7) / 8);
  char* o = &out[static_cast<size_t>(out_bits / 8)];
  if (shift == 0) {
    std::memcpy(o, part.data(), bytes);
    return;
  }
  for (size_t i = 0; i < bytes; ++i) {
    const unsigned byte = static_cast<unsigned char>(part[i]);
    o[i] = static_cast<char>(static_cast<unsigned char>(o[i]) | (byte >> shift));
    if (i + 1 < static_cast<size_t>(out.size() - out_bits / 8)) o[i + 1] = static_cast<char>((byte << (8 - shift)) & 0xFF);
  }
}

constexpr size_t kMinEncodePart = size_t{1} << 21;  // symbols a helper thread of encode_dense codes at least

// Canonical-Huffman coding of every symbol in order (as onnxcomp.huffman.encode): (payload, bits). With
// ``threads`` > 1 a long stream is cut into that many runs, each coded by its own writer, and the runs' bits
// appended in order: the same bits, so the same bytes, as one writer's.
py::tuple encode_dense(py::array symbols_array, U32Array codes, U8Array lengths, size_t threads) {
  Symbols symbols(symbols_array);
  CodeTable table(codes, lengths);
  const uint32_t* c = table.codes.data();
  const uint8_t* l = table.lengths.data();
  bool bad = false;
  std::string payload;
  uint64_t bits = 0;
  {
    py::gil_scoped_release release;
    const size_t parts = std::max<size_t>(1, std::min(threads, symbols.n / kMinEncodePart));
    std::vector<std::string> streams(parts);
    std::vector<uint64_t> stream_bits(parts, 0);
    std::vector<char> part_bad(parts, 0);
    split_range(parts, parts, 1, [&](size_t first, size_t last) {
      for (size_t part = first; part < last; ++part) {
        const size_t begin = symbols.n * part / parts, end = symbols.n * (part + 1) / parts;
        BitWriter writer((end - begin) * 2);
        symbols.each_in(begin, end, [&](size_t, uint64_t s) {
          if (s < table.size) writer.put(c[s], l[s]); else part_bad[part] = 1;
        });
        stream_bits[part] = writer.bits();
        streams[part] = writer.finish();
      }
    });
    payload = std::move(streams[0]);
    bits = stream_bits[0];
    bad = part_bad[0] != 0;
    for (size_t part = 1; part < parts; ++part) {
      append_bits(payload, bits, streams[part], stream_bits[part]);
      bits += stream_bits[part];
      bad = bad || part_bad[part] != 0;
    }
  }
  if (bad) throw std::invalid_argument("symbol outside the code table");
  return py::make_tuple(py::bytes(payload), bits);
}

// Sparse (gap) coding of an index stream whose 0 is the pruned value (docs/format.md): before each non-zero
// index, its gap (the zeros skipped) as escape codes, one per whole (2^gap_bits - 1) zeros, then the
// remainder's code, then the index's value code; trailing zeros are not coded. Returns (payload, bits).
py::tuple encode_sparse(py::array symbols_array, int gap_bits, U32Array gap_codes, U8Array gap_lengths,
                        U32Array value_codes, U8Array value_lengths) {
  Symbols symbols(symbols_array);
  if (gap_bits < 1 || gap_bits > 16) throw std::invalid_argument("gap_bits out of range");
  CodeTable gaps(gap_codes, gap_lengths);
  CodeTable values(value_codes, value_lengths);
  if (gaps.size != (size_t{1} << gap_bits)) throw std::invalid_argument("gap table size must be 2^gap_bits");
  const uint64_t escape = (uint64_t{1} << gap_bits) - 1;
  const uint32_t* gc = gaps.codes.data();
  const uint8_t* gl = gaps.lengths.data();
  const uint32_t* vc = values.codes.data();
  const uint8_t* vl = values.lengths.data();
  bool bad = false;
  std::string payload;
  uint64_t bits = 0;
  {
    py::gil_scoped_release release;
    BitWriter writer(symbols.n);
    uint64_t run = 0;
    symbols.each([&](size_t, uint64_t s) {
      if (s == 0) {
        ++run;
        return;
      }
      if (s >= values.size) {
        bad = true;
        return;
      }
      for (uint64_t e = run / escape; e > 0; --e) writer.put(gc[escape], gl[escape]);
      const uint64_t rest = run % escape;
      writer.put(gc[rest], gl[rest]);
      writer.put(vc[s], vl[s]);
      run = 0;
    });
    bits = writer.bits();
    payload = writer.finish();
  }
  if (bad) throw std::invalid_argument("symbol outside the code table");
  return py::make_tuple(py::bytes(payload), bits);
}

// out[i] = book[idx[i]] for i < n (index 0 where idx[i] >= k); whether some idx[i] >= k. Compiled for AVX2 too (a
// vector gather; the same values).
template <typename Index>
inline __attribute__((always_inline)) bool gather_run_into(const float* book, size_t k, const Index* idx, size_t n, float* out) {
  bool bad = false;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t j = idx[i];
    bad |= j >= k;
    out[i] = book[j < k ? j : 0];
  }
  return bad;
}
ONNXCOMP_MULTIVERSION bool gather_run(const float* book, size_t k, const uint8_t* idx, size_t n, float* out) {
  return gather_run_into(book, k, idx, n, out);
}
ONNXCOMP_MULTIVERSION bool gather_run(const float* book, size_t k, const uint16_t* idx, size_t n, float* out) {
  return gather_run_into(book, k, idx, n, out);
}

// A decoded weight: out = codebook[indices] (float32, the indices' shape), or with ``transpose`` the transpose of
// a decoded [rows, cols] weight, out[c, r] = codebook[indices[r, c]] (float32 [cols, rows]), as
// numpy.ascontiguousarray(codebook[indices].T) gives it (onnxcomp.pipeline.inspection.StoredWeight.dense). On up to
// ``threads`` threads (runs of positions; for the transpose, bands of output rows in 64 x 64 tiles, since the
// float32 transpose of a whole matrix misses the cache on every write). Each tile is gathered in row order into a
// buffer, then written out one output row (64 consecutive floats) at a time: writing it straight in column order
// put the tile's 64 writes of each step ``rows`` floats apart, which for a power-of-two ``rows`` fall in the same
// L1 sets and evicted each other (fc1 of mlp25m, 4096 x 4096: 87 ms against 21 ms untransposed, one thread; the
// same values, only another order of writes). An index outside the codebook raises ValueError.
template <typename Index>
bool gather_codebook(const float* book, size_t k, const Index* idx, size_t rows, size_t cols, bool transpose, float* out,
                     size_t threads) {
  constexpr size_t kTile = 64;
  std::atomic<bool> bad{false};
  if (!transpose) {
    split_range(rows * cols, threads, kMinThreadPart, [&](size_t begin, size_t end) {
      if (gather_run(book, k, idx + begin, end - begin, out + begin)) bad = true;
    });
    return !bad;
  }
  split_range(cols, threads, kTile * 4, [&](size_t c_begin, size_t c_end) {
    bool part_bad = false;
    alignas(64) float tile[kTile][kTile];  // tile[r - r0][c - c0]
    for (size_t r0 = 0; r0 < rows; r0 += kTile) {
      const size_t r1 = std::min(rows, r0 + kTile);
      for (size_t c0 = c_begin; c0 < c_end; c0 += kTile) {
        const size_t c1 = std::min(c_end, c0 + kTile);
        for (size_t r = r0; r < r1; ++r) {
          part_bad |= gather_run(book, k, idx + r * cols + c0, c1 - c0, tile[r - r0]);
        }
        for (size_t c = c0; c < c1; ++c) {
          float* column = out + c * rows + r0;
          for (size_t r = r0; r < r1; ++r) column[r - r0] = tile[r - r0][c - c0];
        }
      }
    }
    if (part_bad) bad = true;
  });
  return !bad;
}

py::array_t<float> decode_indices(FloatArray codebook, py::array indices_array, bool transpose, size_t threads) {
  py::array indices = py::array::ensure(indices_array, py::array::c_style);
  if (!indices || (transpose && indices.ndim() != 2)) throw std::invalid_argument("decode_indices transposes 2-D indices only");
  const char kind = indices.dtype().kind();
  const size_t width = static_cast<size_t>(indices.itemsize());
  if (kind != 'u' || (width != 1 && width != 2)) throw std::invalid_argument("decode_indices takes uint8 or uint16 indices");
  const size_t k = static_cast<size_t>(codebook.size());
  if (k == 0) throw std::invalid_argument("decode_indices needs a codebook");
  std::vector<py::ssize_t> shape(indices.shape(), indices.shape() + indices.ndim());
  size_t rows = 1, cols = static_cast<size_t>(indices.size());
  if (transpose) {
    rows = static_cast<size_t>(shape[0]);
    cols = static_cast<size_t>(shape[1]);
    std::swap(shape[0], shape[1]);
  }
  py::array_t<float> out(shape);
  float* o = out.mutable_data();
  const float* book = codebook.data();
  bool ok;
  {
    py::gil_scoped_release release;
    ok = width == 1 ? gather_codebook(book, k, static_cast<const uint8_t*>(indices.data()), rows, cols, transpose, o, threads)
                    : gather_codebook(book, k, static_cast<const uint16_t*>(indices.data()), rows, cols, transpose, o, threads);
  }
  if (!ok) throw std::invalid_argument("index outside the codebook");
  return out;
}

// Decodes one weight record with the bounds-checked decoder the custom-op library uses (csrc/decode.h), for the
// compressor's own reads of records it wrote (fidelity attribution, inspect, verify). Returns
// (dims, codebook float32 [K], indices uint8/uint16 [N], bits, coding, outlier positions int64 [L],
// outlier values float32 [L], offset where the outlier section starts (after the payload and the scale section),
// scale axis, scales float32 [C] (empty without a scale section)); raises ValueError with the decoder's message on a corrupt record.
py::tuple decode_record_native(py::bytes record) {
  const std::string data = record;
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  onnxcomp::RecordInfo info;
  onnxcomp::DecodeStatus status = onnxcomp::parse_record(bytes, data.size(), &info);
  if (!status.ok()) throw py::value_error(status.message);
  py::array_t<float> codebook(static_cast<py::ssize_t>(info.codebook_size));
  const bool wide = onnxcomp::record::index_width(info.index_bits) == 2;
  py::array indices = wide ? py::array(py::array_t<uint16_t>(static_cast<py::ssize_t>(info.num_elements)))
                           : py::array(py::array_t<uint8_t>(static_cast<py::ssize_t>(info.num_elements)));
  std::vector<uint32_t> workspace((onnxcomp::decode_workspace_bytes(info) + 3) / 4 + 1);
  {
    py::gil_scoped_release release;
    status = onnxcomp::decode_record(bytes, info, codebook.mutable_data(), indices.mutable_data(), workspace.data(),
                                     workspace.size() * 4);
  }
  if (!status.ok()) throw py::value_error(status.message);
  py::array_t<int64_t> positions(static_cast<py::ssize_t>(info.outlier_count));
  py::array_t<float> values(static_cast<py::ssize_t>(info.outlier_count));
  if (info.outlier_count) {
    std::vector<uint64_t> wide_positions(info.outlier_count);
    status = onnxcomp::decode_outliers(bytes, info, wide_positions.data(), values.mutable_data());
    if (!status.ok()) throw py::value_error(status.message);
    int64_t* out = positions.mutable_data();
    for (uint64_t j = 0; j < info.outlier_count; ++j) out[j] = static_cast<int64_t>(wide_positions[j]);
  }
  py::tuple dims(info.rank);
  for (uint32_t i = 0; i < info.rank; ++i) dims[i] = py::int_(info.dims[i]);
  py::array_t<float> scales(static_cast<py::ssize_t>(info.scale_count));
  if (info.scale_count) onnxcomp::decode_scales(bytes, info, scales.mutable_data());
  uint64_t sections_end = info.payload_offset + onnxcomp::stream_bytes(info.payload_bits);
  if (info.scale_count) {
    sections_end = info.scales_offset + info.scale_count * (info.scale_format == onnxcomp::record::kScaleFloat16 ? 2 : 4);
  }
  return py::make_tuple(dims, codebook, indices, info.index_bits, info.coding, positions, values, sections_end,
                        info.scale_axis, scales);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.def("decode_record", &decode_record_native, py::arg("record"),
        "Decode one weight record (csrc/decode.h); ValueError on a corrupt record.");
  m.doc() = "onnxcomp's compiled compression loops (k-means, assignment, Huffman/gap coding); see csrc/python/native.cc";
  m.def("lloyd_1d", &lloyd_1d, py::arg("sorted_values"), py::arg("weights"), py::arg("centroids"), py::arg("max_iterations"),
        "Lloyd iterations of 1-D k-means on ascending float32 values (optional float32 weights in the same order) "
        "from float32 centroids, to a fixed point; returns the sorted distinct non-empty centroids (float32).");
  m.def("assign", &assign, py::arg("values"), py::arg("centroids"), py::arg("keep") = py::none(), py::arg("threads") = 1,
        py::arg("use_table") = true,
        "Nearest-centroid index (uint8 or uint16) for each float32 value; ties to the lower centroid. With a "
        "bool keep mask: 0 for pruned values, 1 + centroid index for kept ones. `threads` splits the values "
        "across that many threads; `use_table` looks large inputs up in a bucket table of the float keys instead of "
        "comparing with every threshold (same result either way).");
  m.def("sort_floats", &sort_floats, py::arg("values"), py::arg("threads") = 1,
        "Sort a 1-D float32 array in place, -0.0 before +0.0 (the total order of the bit patterns' order keys), by "
        "a radix sort on up to `threads` threads; the same bytes as numpy's sort of the keys.");
  m.def("magnitude_keep_mask", &magnitude_keep_mask, py::arg("values"), py::arg("pruned"),
        "Bool mask keeping all but the `pruned` float32 values of smallest magnitude (ties pruned in position order).");
  m.def("largest_magnitudes", &largest_magnitudes, py::arg("values"), py::arg("keep"), py::arg("count"),
        py::arg("threads") = 1, py::arg("candidate_limit") = -1,
        "int64 positions of the `count` kept float32 values of largest magnitude, largest first (ties: earlier first); "
        "`threads` split the passes over the values (same result); `candidate_limit`: how many values the one-histogram "
        "path may collect (-1: its default; 0: always the two-level select), the same result either way.");
  m.def("digest", &digest, py::arg("array"),
        "64-bit digest of a C-contiguous array's bytes (in-process cache keys only; never stored).");
  m.def("channel_errors", &channel_errors, py::arg("reference"), py::arg("indices"), py::arg("codebook"), py::arg("positions"),
        py::arg("stored"), py::arg("channels"), py::arg("inputs"), py::arg("transposed"), py::arg("importance"),
        py::arg("threads") = 1,
        "float64 [channels]: per output channel, the importance-weighted squared error of the decoded weight "
        "(codebook[indices], outliers at positions) against reference, summed in input order. `threads` splits the "
        "channels across that many threads (same result).");
  m.def("statistics", &statistics, py::arg("symbols"), py::arg("size"), py::arg("gap_limit"),
        "(numpy.bincount(symbols, minlength=size), counts of the zero runs before each non-zero symbol that are "
        "below gap_limit, int64 array of the longer runs), in one pass; gap_limit 0 skips the gaps.");
  m.def("encode_dense", &encode_dense, py::arg("symbols"), py::arg("codes"), py::arg("lengths"), py::arg("threads") = 1,
        "MSB-first Huffman coding of symbols with the given codes; returns (payload bytes, bit length). `threads` "
        "codes runs of a long stream at once (the same bytes).");
  m.def("decode_indices", &decode_indices, py::arg("codebook"), py::arg("indices"), py::arg("transpose") = false,
        py::arg("threads") = 1,
        "float32 codebook[indices] of uint8/uint16 indices (any shape), or with `transpose` codebook[indices].T of 2-D "
        "ones, C-contiguous, on up to `threads` threads; ValueError for an index outside the codebook.");
  m.def("huffman_depths", &huffman_depths, py::arg("weights"),
        "int64 depth of each leaf of the Huffman tree over int64 weights, ties broken by node number (as "
        "onnxcomp.core.huffman._huffman_depths_reference).");
  m.def("encode_sparse", &encode_sparse, py::arg("symbols"), py::arg("gap_bits"), py::arg("gap_codes"), py::arg("gap_lengths"),
        py::arg("value_codes"), py::arg("value_lengths"),
        "Gap coding of the non-zero symbols (escape codes, gap remainder, value) MSB first; returns (payload, bit length).");
}
