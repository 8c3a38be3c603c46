// The Winograd steps written once over a vector type of Ops::kLanes lanes, the channel block of the layout
// (cpu/winograd.h): 16 or 8. Included inside a namespace by cpu/winograd.cc (scalar lanes, once per block),
// cpu/winograd_avx512.cc (one __m512) and cpu/winograd_avx2.cc (one __m256), after the unit defines `struct Ops`
// with: kLanes, kBlockedInputFilter (the filter's layout, below), V, Zero, Set1, Load, Store (unaligned), Add, Sub, Mul, Fma(a, b, c) = a * b + c rounded once,
// Fnma(a, b, c) = -(a * b) + c rounded once, Max(a, b) = a > b ? a : b, Min(a, b) = a < b ? a : b,
// NegativeTimes(v, alpha) = v >= 0 ? v : v * alpha, and Gemm (below). Both units are built with
// -ffp-contract=off, and no step leaves a multiply for the compiler to fuse: the sequence of roundings is this
// file's, on every instruction set. No std:: templates here (the AVX-512 unit must not instantiate them).

// 1-D input transform B^T d, in place on alpha values. F(4, 3): Lavin & Gray's B^T for the points 0, +-1, +-2:
//   [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1].
template <int M>
inline void InputLine(Ops::V* d) {
  using V = Ops::V;
  if constexpr (M == 4) {
    const V four = Ops::Set1(4.0f), five = Ops::Set1(5.0f), two = Ops::Set1(2.0f);
    const V t0 = Ops::Fnma(five, d[2], Ops::Fma(four, d[0], d[4]));
    const V s12 = Ops::Add(d[1], d[2]), s34 = Ops::Add(d[3], d[4]);
    const V t1 = Ops::Fnma(four, s12, s34);
    const V d12 = Ops::Sub(d[1], d[2]), d43 = Ops::Sub(d[4], d[3]);
    const V t2 = Ops::Fma(four, d12, d43);
    const V d31 = Ops::Sub(d[3], d[1]), d42 = Ops::Sub(d[4], d[2]);
    const V t3 = Ops::Fma(two, d31, d42);
    const V t4 = Ops::Fnma(two, d31, d42);
    const V t5 = Ops::Fnma(five, d[3], Ops::Fma(four, d[1], d[5]));
    d[0] = t0; d[1] = t1; d[2] = t2; d[3] = t3; d[4] = t4; d[5] = t5;
  } else {  // F(2, 3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
    const V t0 = Ops::Sub(d[0], d[2]), t1 = Ops::Add(d[1], d[2]), t2 = Ops::Sub(d[2], d[1]), t3 = Ops::Sub(d[1], d[3]);
    d[0] = t0; d[1] = t1; d[2] = t2; d[3] = t3;
  }
}

// 1-D output transform A^T s: alpha values in, M out. F(4, 3): A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0;
// 0 1 -1 8 -8 1]; F(2, 3): A^T = [1 1 1 0; 0 1 -1 -1].
template <int M>
inline void OutputLine(const Ops::V* s, Ops::V* y) {
  using V = Ops::V;
  if constexpr (M == 4) {
    const V a12 = Ops::Add(s[1], s[2]), d12 = Ops::Sub(s[1], s[2]);
    const V a34 = Ops::Add(s[3], s[4]), d34 = Ops::Sub(s[3], s[4]);
    y[0] = Ops::Add(Ops::Add(s[0], a12), a34);
    y[1] = Ops::Fma(Ops::Set1(2.0f), d34, d12);
    y[2] = Ops::Fma(Ops::Set1(4.0f), a34, a12);
    y[3] = Ops::Add(Ops::Fma(Ops::Set1(8.0f), d34, d12), s[5]);
  } else {
    y[0] = Ops::Add(Ops::Add(s[0], s[1]), s[2]);
    y[1] = Ops::Sub(Ops::Sub(s[1], s[2]), s[3]);
  }
}

// 1-D filter transform G g: 3 values in, alpha out. F(4, 3): G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
// 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]; F(2, 3): G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
template <int M>
inline void FilterLine(const Ops::V* g, Ops::V* u) {
  using V = Ops::V;
  if constexpr (M == 4) {
    const V sixth = Ops::Set1(1.0f / 6.0f), minus_sixth = Ops::Set1(-1.0f / 6.0f);
    const V g2 = Ops::Mul(g[2], sixth);
    u[0] = Ops::Mul(g[0], Ops::Set1(0.25f));
    u[1] = Ops::Mul(Ops::Add(Ops::Add(g[0], g[1]), g[2]), minus_sixth);
    u[2] = Ops::Mul(Ops::Add(Ops::Sub(g[0], g[1]), g[2]), minus_sixth);
    u[3] = Ops::Fma(g[0], Ops::Set1(1.0f / 24.0f), Ops::Fma(g[1], Ops::Set1(1.0f / 12.0f), g2));
    u[4] = Ops::Fma(g[0], Ops::Set1(1.0f / 24.0f), Ops::Fma(g[1], Ops::Set1(-1.0f / 12.0f), g2));
    u[5] = g[2];
  } else {
    const V half = Ops::Set1(0.5f);
    u[0] = g[0];
    u[1] = Ops::Mul(Ops::Add(Ops::Add(g[0], g[1]), g[2]), half);
    u[2] = Ops::Mul(Ops::Add(Ops::Sub(g[0], g[1]), g[2]), half);
    u[3] = g[2];
  }
}

template <int M>
void Weights(const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end, float* u) {
  using V = Ops::V;
  constexpr int A = M + 2;
  constexpr int64_t L = Ops::kLanes;
  const int64_t ob_count = o / L;
  for (int64_t ob = ob_begin; ob < ob_end; ++ob) {
    for (int64_t cc = 0; cc < c; ++cc) {
      // OIHWBo: [O/L][C][3][3][L]; OIHWBiBo (onnxruntime's NCHWc filter): [O/L][C/L][3][3][L][L].
      const float* g = Ops::kBlockedInputFilter ? filter + ((ob * (c / L) + cc / L) * 9 * L + cc % L) * L
                                                : filter + (ob * c + cc) * 9 * L;
      constexpr int64_t tap = Ops::kBlockedInputFilter ? L * L : L;  // floats from one kernel tap to the next
      V rows[3][A];  // G along the kernel's columns, per kernel row
      for (int i = 0; i < 3; ++i) {
        const V line[3] = {Ops::Load(g + (i * 3 + 0) * tap), Ops::Load(g + (i * 3 + 1) * tap),
                           Ops::Load(g + (i * 3 + 2) * tap)};
        FilterLine<M>(line, rows[i]);
      }
      for (int j = 0; j < A; ++j) {  // G along the rows
        const V line[3] = {rows[0][j], rows[1][j], rows[2][j]};
        V out[A];
        FilterLine<M>(line, out);
        for (int i = 0; i < A; ++i) Ops::Store(u + (((i * A + j) * ob_count + ob) * c + cc) * L, out[i]);
      }
    }
  }
}

template <int M>
void InputTransform(const WinogradProblem& p, int64_t t0, int64_t tb, float* v) {
  using V = Ops::V;
  constexpr int A = M + 2;
  const int64_t tiles_h = (p.out_h + M - 1) / M, tiles_w = (p.out_w + M - 1) / M, per_image = tiles_h * tiles_w;
  constexpr int64_t L = Ops::kLanes;
  const int64_t cb_count = p.c / L;
  const V zero = Ops::Zero();
  for (int64_t t = 0; t < tb; ++t) {
    const int64_t tile = t0 + t, image = tile / per_image, rest = tile % per_image;
    const int64_t iy0 = (rest / tiles_w) * M - p.pad_top, ix0 = (rest % tiles_w) * M - p.pad_left;
    const bool inside = iy0 >= 0 && ix0 >= 0 && iy0 + A <= p.h && ix0 + A <= p.w;
    for (int64_t cb = 0; cb < cb_count; ++cb) {
      const float* base = p.x + (image * cb_count + cb) * p.h * p.w * L;
      V d[A][A];
      for (int i = 0; i < A; ++i) {
        const int64_t iy = iy0 + i;
        for (int j = 0; j < A; ++j) {
          const int64_t ix = ix0 + j;
          d[i][j] = inside || (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w) ? Ops::Load(base + (iy * p.w + ix) * L)
                                                                         : zero;
        }
      }
      for (int i = 0; i < A; ++i) InputLine<M>(d[i]);  // along x
      for (int j = 0; j < A; ++j) {                    // along y
        V line[A];
        for (int i = 0; i < A; ++i) line[i] = d[i][j];
        InputLine<M>(line);
        for (int i = 0; i < A; ++i) Ops::Store(v + ((i * A + j) * tb + t) * p.c + cb * L, line[i]);
      }
    }
  }
}

template <int M>
void OutputTransform(const WinogradProblem& p, int64_t t0, int64_t tb, const float* mbuf) {
  using V = Ops::V;
  constexpr int A = M + 2;
  const int64_t tiles_h = (p.out_h + M - 1) / M, tiles_w = (p.out_w + M - 1) / M, per_image = tiles_h * tiles_w;
  constexpr int64_t L = Ops::kLanes;
  const int64_t ob_count = p.o / L;
  const V zero = Ops::Zero();
  const V alpha = Ops::Set1(p.activation_alpha), beta = Ops::Set1(p.activation_beta);
  for (int64_t t = 0; t < tb; ++t) {
    const int64_t tile = t0 + t, image = tile / per_image, rest = tile % per_image;
    const int64_t oy0 = (rest / tiles_w) * M, ox0 = (rest % tiles_w) * M;
    for (int64_t ob = 0; ob < ob_count; ++ob) {
      V r[M][A];  // A^T along the element grid's first index
      for (int j = 0; j < A; ++j) {
        V line[A], out[M];
        for (int i = 0; i < A; ++i) line[i] = Ops::Load(mbuf + ((i * A + j) * tb + t) * p.o + ob * L);
        OutputLine<M>(line, out);
        for (int i = 0; i < M; ++i) r[i][j] = out[i];
      }
      const V b = p.bias ? Ops::Load(p.bias + ob * L) : zero;
      float* base = p.y + (image * ob_count + ob) * p.out_h * p.out_w * L;
      for (int i = 0; i < M && oy0 + i < p.out_h; ++i) {
        V out[M];
        OutputLine<M>(r[i], out);
        for (int j = 0; j < M && ox0 + j < p.out_w; ++j) {
          V value = p.bias ? Ops::Add(out[j], b) : out[j];
          switch (p.activation) {
            case WinogradActivation::kRelu: value = Ops::Max(value, zero); break;
            case WinogradActivation::kLeakyRelu: value = Ops::NegativeTimes(value, alpha); break;
            case WinogradActivation::kClip: value = Ops::Min(Ops::Max(value, alpha), beta); break;
            default: break;
          }
          Ops::Store(base + ((oy0 + i) * p.out_w + ox0 + j) * L, value);
        }
      }
    }
  }
}

template <int M>
void Block(const WinogradProblem& p, int64_t block, float* scratch) {
  constexpr int64_t E = (M + 2) * (M + 2);
  const int64_t t0 = block * p.block_tiles, tiles = p.tiles();
  const int64_t tb = tiles - t0 < p.block_tiles ? tiles - t0 : p.block_tiles;
  float* v = scratch;
  float* mbuf = scratch + (E * p.block_tiles * p.c + 15) / 16 * 16;
  InputTransform<M>(p, t0, tb, v);
  const int64_t ob_count = p.o / Ops::kLanes;
  for (int64_t e = 0; e < E; ++e) {
    Ops::Gemm(v + e * tb * p.c, tb, p.c, p.u + e * ob_count * p.c * Ops::kLanes, ob_count, mbuf + e * tb * p.o, p.o);
  }
  OutputTransform<M>(p, t0, tb, mbuf);
}

void RunBlock(const WinogradProblem& p, int64_t block, float* scratch) {
  if (p.m == 4) {
    Block<4>(p, block, scratch);
  } else {
    Block<2>(p, block, scratch);
  }
}

void RunWeights(int m, const float* filter, int64_t c, int64_t o, int64_t ob_begin, int64_t ob_end, float* u) {
  if (m == 4) {
    Weights<4>(filter, c, o, ob_begin, ob_end, u);
  } else {
    Weights<2>(filter, c, o, ob_begin, ob_end, u);
  }
}
