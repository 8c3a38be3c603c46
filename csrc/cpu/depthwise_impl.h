// The depthwise kernel (cpu/depthwise.h) written once over a vector type of Ops::kLanes lanes, the channel block (16
// or 8): included inside an unnamed namespace by cpu/winograd.cc (scalar lanes, once per block),
// cpu/winograd_avx512.cc (one __m512) and cpu/winograd_avx2.cc (one __m256) after their `struct Ops`
// (cpu/winograd_impl.h lists its operations). Both units are built with -ffp-contract=off. No std:: templates here
// (the AVX-512 unit must not instantiate them).

constexpr int kLanes = static_cast<int>(Ops::kLanes);  // channels per block of X, Y and the filter

inline int64_t MinIndex(int64_t a, int64_t b) { return a < b ? a : b; }

// The taps [begin, end) of a kernel axis (kernel taps, dilation) whose input index start + k * dilation lies in
// [0, extent).
inline void InsideTaps(int64_t start, int64_t kernel, int64_t dilation, int64_t extent, int64_t* begin, int64_t* end) {
  *begin = 0;
  *end = kernel;
  while (*begin < *end && start + *begin * dilation < 0) ++*begin;
  while (*end > *begin && start + (*end - 1) * dilation >= extent) --*end;
}

// The activation after the bias, each a fixed sequence of Ops (onnxruntime's definitions: HardSigmoid
// max(0, min(1, alpha * v + beta)), HardSwish v * max(0, min(1, v / 6 + 0.5))).
inline Ops::V Activate(const DepthwiseProblem& p, Ops::V v) {
  using V = Ops::V;
  switch (p.activation) {
    case DepthwiseActivation::kRelu: return Ops::Max(v, Ops::Zero());
    case DepthwiseActivation::kLeakyRelu: return Ops::NegativeTimes(v, Ops::Set1(p.alpha));
    case DepthwiseActivation::kClip: return Ops::Min(Ops::Max(v, Ops::Set1(p.alpha)), Ops::Set1(p.beta));
    case DepthwiseActivation::kHardSigmoid: {
      const V t = Ops::Add(Ops::Mul(v, Ops::Set1(p.alpha)), Ops::Set1(p.beta));
      return Ops::Min(Ops::Max(t, Ops::Zero()), Ops::Set1(1.0f));
    }
    case DepthwiseActivation::kHardSwish: {
      const V t = Ops::Add(Ops::Mul(v, Ops::Set1(1.0f / 6.0f)), Ops::Set1(0.5f));
      return Ops::Mul(v, Ops::Min(Ops::Max(t, Ops::Zero()), Ops::Set1(1.0f)));
    }
    default: return v;
  }
}

// G adjacent output vectors: sums[j] + bias, the activation, stored at out + kLanes * j.
template <int G>
inline void StoreOutputs(const DepthwiseProblem& p, const Ops::V* sums, float* out) {
  using V = Ops::V;
  const V b = p.bias ? Ops::Load(p.bias) : Ops::Zero();
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) Ops::Store(out + j * kLanes, Activate(p, p.bias ? Ops::Add(sums[j], b) : sums[j]));
}

// G adjacent output positions [ox, ox + G) of one row whose taps all lie inside the row (columns), over the
// kernel rows [ky_begin, ky_end) that lie inside the image: the filter vector of each tap is loaded once for all G.
template <int G>
inline void InteriorGroup(const DepthwiseProblem& p, const float* image, const float* filter, int64_t iy0,
                          int64_t ky_begin, int64_t ky_end, int64_t ox, float* out) {
  using V = Ops::V;
  V acc[G];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) acc[j] = Ops::Zero();
  const int64_t step = p.stride_w * kLanes;
  for (int64_t ky = ky_begin; ky < ky_end; ++ky) {
    const float* row = image + (iy0 + ky * p.dilation_h) * p.w * kLanes + (ox * p.stride_w - p.pad_left) * kLanes;
    const float* taps = filter + ky * p.kernel_w * kLanes;
    for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
      const V wv = Ops::Load(taps + kx * kLanes);
      const float* at = row + kx * p.dilation_w * kLanes;
#pragma GCC unroll 8
      for (int j = 0; j < G; ++j) acc[j] = Ops::Fma(Ops::Load(at + j * step), wv, acc[j]);
    }
  }
  StoreOutputs<G>(p, acc, out);
}

// One output position with some taps in the padding: the same chain over the in-bounds taps only (the kernel
// columns [kx_begin, kx_end) whose input column lies inside the row).
inline void EdgePosition(const DepthwiseProblem& p, const float* image, const float* filter, int64_t iy0,
                         int64_t ky_begin, int64_t ky_end, int64_t ox, float* out) {
  using V = Ops::V;
  V acc = Ops::Zero();
  const int64_t ix0 = ox * p.stride_w - p.pad_left;
  int64_t kx_begin, kx_end;
  InsideTaps(ix0, p.kernel_w, p.dilation_w, p.w, &kx_begin, &kx_end);
  for (int64_t ky = ky_begin; ky < ky_end; ++ky) {
    const float* row = image + (iy0 + ky * p.dilation_h) * p.w * kLanes + ix0 * kLanes;
    const float* taps = filter + ky * p.kernel_w * kLanes;
    for (int64_t kx = kx_begin; kx < kx_end; ++kx) {
      acc = Ops::Fma(Ops::Load(row + kx * p.dilation_w * kLanes), Ops::Load(taps + kx * kLanes), acc);
    }
  }
  StoreOutputs<1>(p, &acc, out);
}

// Path 1c's counterparts of the two above: X is NCHW ([channels][H][W] per image), each tap's value broadcast. Each
// input channel's taps are one chain from 0.0, added to the running total channel by channel (onnxruntime's NCHW-input
// kernel runs its channels so, accumulating in the output): total = chain_0, then chain_c + total.
template <int G>
inline void NchwInteriorGroup(const DepthwiseProblem& p, const float* image, const float* filter, int64_t iy0,
                              int64_t ky_begin, int64_t ky_end, int64_t ox, float* out) {
  using V = Ops::V;
  V total[G];
  for (int64_t c = 0; c < p.channels; ++c) {
    V acc[G];
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) acc[j] = Ops::Zero();
    const float* plane = image + c * p.h * p.w;
    const float* taps_c = filter + c * p.kernel_h * p.kernel_w * kLanes;
    for (int64_t ky = ky_begin; ky < ky_end; ++ky) {
      const float* row = plane + (iy0 + ky * p.dilation_h) * p.w + ox * p.stride_w - p.pad_left;
      const float* taps = taps_c + ky * p.kernel_w * kLanes;
      for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
        const V wv = Ops::Load(taps + kx * kLanes);
        const float* at = row + kx * p.dilation_w;
#pragma GCC unroll 8
        for (int j = 0; j < G; ++j) acc[j] = Ops::Fma(Ops::Set1(at[j * p.stride_w]), wv, acc[j]);
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) total[j] = c == 0 ? acc[j] : Ops::Add(acc[j], total[j]);
  }
  StoreOutputs<G>(p, total, out);
}

inline void NchwEdgePosition(const DepthwiseProblem& p, const float* image, const float* filter, int64_t iy0,
                             int64_t ky_begin, int64_t ky_end, int64_t ox, float* out) {
  using V = Ops::V;
  V total = Ops::Zero();
  const int64_t ix0 = ox * p.stride_w - p.pad_left;
  int64_t kx_begin, kx_end;
  InsideTaps(ix0, p.kernel_w, p.dilation_w, p.w, &kx_begin, &kx_end);
  for (int64_t c = 0; c < p.channels; ++c) {
    V acc = Ops::Zero();
    for (int64_t ky = ky_begin; ky < ky_end; ++ky) {
      const float* row = image + (c * p.h + iy0 + ky * p.dilation_h) * p.w + ix0;
      const float* taps = filter + (c * p.kernel_h + ky) * p.kernel_w * kLanes;
      for (int64_t kx = kx_begin; kx < kx_end; ++kx) {
        acc = Ops::Fma(Ops::Set1(row[kx * p.dilation_w]), Ops::Load(taps + kx * kLanes), acc);
      }
    }
    total = c == 0 ? acc : Ops::Add(acc, total);
  }
  StoreOutputs<1>(p, &total, out);
}

// The rows of task `task` (one image, channel block and chunk of rows): edge positions one at a time, interior
// ones 8, 4 and 1 at a time. kNchw: path 1c (X NCHW), else depthwise (X blocked).
template <bool kNchw>
void RunRows(const DepthwiseProblem& p, int64_t task) {
  const int64_t chunks = p.row_chunks();
  const int64_t image_block = task / chunks, chunk = task % chunks;
  const int64_t image_index = image_block / p.blocks, block = image_block % p.blocks;
  const float* image = kNchw ? p.x + image_index * p.channels * p.h * p.w : p.x + image_block * p.h * p.w * kLanes;
  const float* filter = p.filter + block * (kNchw ? p.channels : 1) * p.kernel_h * p.kernel_w * kLanes;
  DepthwiseProblem q = p;
  q.bias = p.bias ? p.bias + block * kLanes : nullptr;
  float* y = p.y + image_block * p.out_h * p.out_w * kLanes;
  const int64_t lo = p.interior_begin(), hi = p.interior_end();
  const int64_t oy_end = MinIndex(p.out_h, (chunk + 1) * p.rows_per_task);
  for (int64_t oy = chunk * p.rows_per_task; oy < oy_end; ++oy) {
    const int64_t iy0 = oy * p.stride_h - p.pad_top;
    int64_t ky_begin, ky_end;
    InsideTaps(iy0, p.kernel_h, p.dilation_h, p.h, &ky_begin, &ky_end);
    float* out = y + oy * p.out_w * kLanes;
    int64_t ox = 0;
    if constexpr (kNchw) {
      for (; ox < lo; ++ox) NchwEdgePosition(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox + 8 <= hi; ox += 8) NchwInteriorGroup<8>(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox + 4 <= hi; ox += 4) NchwInteriorGroup<4>(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox < hi; ++ox) NchwInteriorGroup<1>(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox < p.out_w; ++ox) NchwEdgePosition(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
    } else {
      for (; ox < lo; ++ox) EdgePosition(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox + 8 <= hi; ox += 8) InteriorGroup<8>(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox + 4 <= hi; ox += 4) InteriorGroup<4>(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox < hi; ++ox) InteriorGroup<1>(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
      for (; ox < p.out_w; ++ox) EdgePosition(q, image, filter, iy0, ky_begin, ky_end, ox, out + ox * kLanes);
    }
  }
}

void RunDepthwise(const DepthwiseProblem& p, int64_t task) { RunRows<false>(p, task); }
void RunNchwInput(const DepthwiseProblem& p, int64_t task) { RunRows<true>(p, task); }
