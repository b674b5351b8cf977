// The CPU backend's small-d path (Backend::small_matrix): a batch of small U built, and
// differentiated, reflector by reflector with the batch as the wide dimension. Tiles of P
// entries are interleaved innermost in the workspace, (i, j) of lane p at (i + j ld) P + p,
// so that every step is a loop over rows of P-wide vector operations, the same instructions
// for every entry, where per-entry BLAS calls on d x d blocks would cost more than their
// flops. LAPACK's reflectors (unit lower v_i) touch only the trailing block, as orgqr does:
// U is built backwards from the identity, reflector i on rows and columns i.. (4/3 d^3 flops
// for k = d = cols, where fasth's dense reflectors take 4 d^2 k).
#include <algorithm>
#include <cmath>

#include "detail/dtypes.hpp"
#include "fasth/cpu.hpp"

namespace fasth::cpu {
namespace {

#define FASTH_INLINE inline __attribute__((always_inline))

// The sizes of one call, and where it reads and writes (see Backend::small_matrix).
template <class T>
struct Job {
  index_t d, k, c;
  bool lapack;
};

// s[p] += sum over rows r0 <= r < d of v[r] u[r] per lane (P = 1: one reduction over rows).
template <class T, int P>
FASTH_INLINE void dot(const T* __restrict v, const T* __restrict u, index_t r0, index_t d,
                      T* __restrict s) {
  if constexpr (P == 1) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (index_t r = r0; r < d; ++r) acc += v[r] * u[r];
    s[0] += acc;
  } else {
    T acc[P] = {};  // in registers: s may not be
    for (index_t r = r0; r < d; ++r)
#pragma omp simd
      for (int p = 0; p < P; ++p) acc[p] += v[r * P + p] * u[r * P + p];
    for (int p = 0; p < P; ++p) s[p] += acc[p];
  }
}

// Tile views into the workspace (small_workspace): Y (d x k), taus, norms and dtau (k), U or
// A (d x c), G (d x c), R (k x c), dY (d x k).
template <class T, int P>
struct Tile {
  T *y, *tau, *nrm, *dtau, *u, *g, *r, *dy;
  Tile(const Job<T>& j, T* ws) {
    const index_t d = j.d, k = j.k, c = j.c;
    T* w = ws;
    y = w, w += d * k * P;
    tau = w, w += k * P;
    nrm = w, w += k * P;
    dtau = w, w += k * P;
    u = w, w += d * c * P;
    g = w, w += d * c * P;
    r = w, w += k * c * P;
    dy = w;
  }
};

// Y and taus of lanes [0, n) from entry e0 on (lanes past n: zero reflectors, tau 0).
template <class T, int P>
FASTH_INLINE void load_y(const Job<T>& J, const Tile<T, P>& t, index_t e0, index_t n,
                         Strided<const T> V, const SmallTaus<T>& taus) {
  const index_t d = J.d, k = J.k;
  for (int p = 0; p < P; ++p) {
    const T* ve = V.p + (e0 + p) * V.bs;
    for (index_t j = 0; j < k; ++j)
      for (index_t r = 0; r < d; ++r) {
        T x = p < n ? ve[r * V.rs + j * V.cs] : T(0);
        if (J.lapack) x = r < j ? T(0) : r == j ? T(1) : x;
        t.y[(r + j * d) * P + p] = x;
      }
  }
  if (J.lapack) {
    for (index_t j = 0; j < k; ++j)
      for (int p = 0; p < P; ++p)
        t.tau[j * P + p] = t.nrm[j * P + p] =
            p < n ? taus.tau[(e0 + p) * taus.tau_bs + j * taus.tau_rs] : T(0);
    return;
  }
  // Unit columns as the backend's normalize makes them: amax, then the scaled sum of squares,
  // so that no finite column overflows or underflows; a zero column stays zero (tau 0).
  for (index_t j = 0; j < k; ++j) {
    T* col = t.y + j * d * P;
    T amax[P] = {}, sum[P] = {}, nan[P] = {};
    for (index_t r = 0; r < d; ++r)
#pragma omp simd
      for (int p = 0; p < P; ++p) {
        const T a = std::abs(col[r * P + p]);
        amax[p] = a > amax[p] ? a : amax[p];
        nan[p] += a - a;  // NaN where the column holds a NaN or an infinity
      }
    T inv[P];
    for (int p = 0; p < P; ++p) {
      amax[p] += nan[p];
      inv[p] = amax[p] == T(0) ? T(0) : T(1) / amax[p];
    }
    for (index_t r = 0; r < d; ++r)
#pragma omp simd
      for (int p = 0; p < P; ++p) {
        const T x = col[r * P + p] * inv[p];
        sum[p] += x * x;
      }
    for (int p = 0; p < P; ++p) {
      const T rt = std::sqrt(sum[p]);
      t.nrm[j * P + p] = amax[p] == T(0) ? T(0) : amax[p] * rt;
      t.tau[j * P + p] = amax[p] == T(0) ? T(0) : T(2);
      inv[p] = amax[p] == T(0) ? T(0) : inv[p] / rt;  // y = v / amax / rt
    }
    for (index_t r = 0; r < d; ++r)
#pragma omp simd
      for (int p = 0; p < P; ++p) col[r * P + p] *= inv[p];
  }
}

// Rows and columns that reflector i touches: LAPACK's (zeros above its unit diagonal, on U
// built from the identity) only the trailing block.
template <class T>
FASTH_INLINE index_t first_row(const Job<T>& J, index_t i) { return J.lapack ? i : 0; }
template <class T>
FASTH_INLINE index_t first_col(const Job<T>& J, index_t i) { return J.lapack ? std::min(i, J.c) : 0; }

// Columns col .. col + NC - 1 of U <- H_i U (rows r0..): NC columns at once, so that their
// dot products are independent chains (one chain waits on each FMA's latency) and v is loaded
// once for all of them.
template <class T, int P, int NC>
FASTH_INLINE void reflect(const Job<T>& J, const Tile<T, P>& t, index_t i, index_t col,
                          index_t r0) {
  const index_t d = J.d, k = J.k, n = d - r0;
  const T* __restrict v = t.y + (i * d + r0) * P;
  const T* tv = t.tau + i * P;
  T* __restrict u[NC];
  for (int q = 0; q < NC; ++q) u[q] = t.u + ((col + q) * d + r0) * P;
  T s[NC][P] = {};
  for (index_t r = 0; r < n; ++r)
    for (int q = 0; q < NC; ++q)
#pragma omp simd
      for (int p = 0; p < P; ++p) s[q][p] += v[r * P + p] * u[q][r * P + p];
  for (int q = 0; q < NC; ++q) {
    if (J.lapack)
      for (int p = 0; p < P; ++p) t.r[(i + (col + q) * k) * P + p] = s[q][p];
    for (int p = 0; p < P; ++p) s[q][p] *= tv[p];
  }
  for (index_t r = 0; r < n; ++r)
    for (int q = 0; q < NC; ++q)
#pragma omp simd
      for (int p = 0; p < P; ++p) u[q][r * P + p] -= s[q][p] * v[r * P + p];
}

// U = E, then U <- H_i U for i = k-1 .. 0 (and R's rows, LAPACK's reflectors).
template <class T, int P>
FASTH_INLINE void build(const Job<T>& J, const Tile<T, P>& t) {
  const index_t d = J.d, k = J.k, c = J.c;
  for (index_t col = 0; col < c; ++col)
    for (index_t r = 0; r < d; ++r)
      for (int p = 0; p < P; ++p) t.u[(r + col * d) * P + p] = r == col ? T(1) : T(0);
  for (index_t i = k - 1; i >= 0; --i) {
    const index_t r0 = first_row(J, i), c0 = first_col(J, i);
    if (J.lapack)
      for (index_t col = 0; col < c0; ++col)
        for (int p = 0; p < P; ++p) t.r[(i + col * k) * P + p] = T(0);
    index_t col = c0;
    for (; col + 4 <= c; col += 4) reflect<T, P, 4>(J, t, i, col, r0);
    switch (c - col) {
      case 3: reflect<T, P, 3>(J, t, i, col, r0); break;
      case 2: reflect<T, P, 2>(J, t, i, col, r0); break;
      case 1: reflect<T, P, 1>(J, t, i, col, r0); break;
      default: break;
    }
  }
}

// The backward's step i on columns col .. col + NC - 1 (see unbuild), NC at once as in
// reflect; `nn` = |v|^2, `sgr` accumulates g . r, dv the gradient in v.
template <class T, int P, int NC>
FASTH_INLINE void unreflect(const Job<T>& J, const Tile<T, P>& t, index_t i, index_t col,
                            index_t r0, const T* nn, T* sgr) {
  const index_t d = J.d, k = J.k, n = d - r0;
  const T* __restrict v = t.y + (i * d + r0) * P;
  T* __restrict dv = t.dy + (i * d + r0) * P;
  const T* tv = t.tau + i * P;
  T* __restrict a[NC];
  T* __restrict g[NC];
  for (int q = 0; q < NC; ++q) a[q] = t.u + ((col + q) * d + r0) * P, g[q] = t.g + ((col + q) * d + r0) * P;
  T va[NC][P] = {}, vg[NC][P] = {}, rr[NC][P], coef[NC][P];
  for (index_t r = 0; r < n; ++r)
    for (int q = 0; q < NC; ++q)
#pragma omp simd
      for (int p = 0; p < P; ++p) {
        va[q][p] += v[r * P + p] * a[q][r * P + p];
        vg[q][p] += v[r * P + p] * g[q][r * P + p];
      }
  for (int q = 0; q < NC; ++q)
    for (int p = 0; p < P; ++p) {
      if (J.lapack) {
        rr[q][p] = t.r[(i + (col + q) * k) * P + p];
        coef[q][p] = tv[p] * rr[q][p];
      } else {
        rr[q][p] = va[q][p] - tv[p] * nn[p] * va[q][p];
        coef[q][p] = -tv[p] * va[q][p];
      }
      sgr[p] += vg[q][p] * rr[q][p];
    }
  for (index_t r = 0; r < n; ++r) {
    T acc[P] = {};
    for (int q = 0; q < NC; ++q)
#pragma omp simd
      for (int p = 0; p < P; ++p) {
        const index_t x = r * P + p;
        const T ain = a[q][x] + coef[q][p] * v[x];
        a[q][x] = ain;
        acc[p] += g[q][x] * rr[q][p] + ain * vg[q][p];
        g[q][x] -= tv[p] * vg[q][p] * v[x];
      }
#pragma omp simd
    for (int p = 0; p < P; ++p) dv[r * P + p] += acc[p];
  }
}

// The backward, i = 0 .. k-1, from A = U and G = dL/dU (docs/math.md): with r = v^T A_in
// (A_in = H_i^-1 A: H_i A for fasth's orthogonal reflectors, A + tau v R_i for LAPACK's) and
// g = G^T v:  dv = -tau (G r + A_in g),  dtau = -g . r,  then G <- H_i G, A <- A_in. fasth's
// tau = 2 / |v|^2 adds tau^2 (g . r) v; the gradient in v is then dy / |v| (orthogonal to y).
template <class T, int P>
FASTH_INLINE void unbuild(const Job<T>& J, const Tile<T, P>& t) {
  const index_t d = J.d, k = J.k, c = J.c;
  std::fill(t.dy, t.dy + d * k * P, T(0));
  for (index_t i = 0; i < k; ++i) {
    const T* __restrict v = t.y + i * d * P;
    const T* tv = t.tau + i * P;
    T* __restrict dv = t.dy + i * d * P;
    const index_t r0 = first_row(J, i), c0 = first_col(J, i);
    T nn[P] = {}, sgr[P] = {}, inv[P];
    if (!J.lapack) dot<T, P>(v, v, 0, d, nn);
    for (int p = 0; p < P; ++p) {  // through y = v / |v| (fasth's)
      const T nv = t.nrm[i * P + p];
      inv[p] = J.lapack ? T(1) : nv == T(0) ? T(0) : T(1) / nv;
    }
    index_t col = c0;
    for (; col + 2 <= c; col += 2) unreflect<T, P, 2>(J, t, i, col, r0, nn, sgr);
    if (col < c) unreflect<T, P, 1>(J, t, i, col, r0, nn, sgr);
    for (index_t r = 0; r < d; ++r)
      for (int p = 0; p < P; ++p) {
        const index_t x = r * P + p;
        const T hh = J.lapack ? T(0) : tv[p] * tv[p] * sgr[p] * v[x];
        dv[x] = r < r0 || (J.lapack && r == i) ? T(0) : (hh - tv[p] * dv[x]) * inv[p];
      }
    for (int p = 0; p < P; ++p) t.dtau[i * P + p] = -sgr[p];
  }
}

// dst (rows x cols at element strides rs, cs) = one lane of a tile's matrix (src: its
// element (0, 0) in that lane).
template <class T, int P>
FASTH_INLINE void put(const T* __restrict src, index_t rows, index_t cols, T* __restrict dst,
                      index_t rs, index_t cs) {
  if (rs == 1) {
    for (index_t col = 0; col < cols; ++col)
      for (index_t r = 0; r < rows; ++r) dst[r + col * cs] = src[(r + col * rows) * P];
  } else {
    for (index_t col = 0; col < cols; ++col)
      for (index_t r = 0; r < rows; ++r) dst[r * rs + col * cs] = src[(r + col * rows) * P];
  }
}

// One lane of a tile's matrix (dst: its element (0, 0) in that lane) = src (rows x cols at
// element strides rs, cs), or zeros where src is null.
template <class T, int P>
FASTH_INLINE void get(T* __restrict dst, index_t rows, index_t cols, const T* __restrict src,
                      index_t rs, index_t cs) {
  if (!src) {
    for (index_t x = 0; x < rows * cols; ++x) dst[x * P] = T(0);
  } else if (rs == 1) {
    for (index_t col = 0; col < cols; ++col)
      for (index_t r = 0; r < rows; ++r) dst[(r + col * rows) * P] = src[r + col * cs];
  } else {
    for (index_t col = 0; col < cols; ++col)
      for (index_t r = 0; r < rows; ++r) dst[(r + col * rows) * P] = src[r * rs + col * cs];
  }
}

template <class T, int P>
FASTH_INLINE void forward_tiles(const Job<T>& J, index_t batch, Strided<const T> V,
                                Strided<T> U, T* y, index_t ys, T* norms, index_t ns, T* u2,
                                index_t u2s, const SmallTaus<T>& taus, T* ws) {
  const index_t d = J.d, k = J.k, c = J.c;
  const Tile<T, P> t(J, ws);
  for (index_t e0 = 0; e0 < batch; e0 += P) {
    const index_t n = std::min<index_t>(P, batch - e0);
    load_y<T, P>(J, t, e0, n, V, taus);
    build<T, P>(J, t);
    for (index_t p = 0; p < n; ++p) {
      const index_t e = e0 + p;
      put<T, P>(t.u + p, d, c, U.p + e * U.bs, U.rs, U.cs);
      if (u2) put<T, P>(t.u + p, d, c, u2 + e * u2s, 1, d);
      put<T, P>(t.y + p, d, k, y + e * ys, 1, d);
      for (index_t j = 0; j < k; ++j) norms[e * ns + j] = t.nrm[j * P + p];
      if (J.lapack)
        for (index_t x = 0; x < k * c; ++x) taus.r[e * taus.rs + x] = t.r[x * P + p];
    }
  }
}

template <class T, int P>
FASTH_INLINE void backward_tiles(const Job<T>& J, index_t batch, const T* y, index_t ys,
                                 const T* norms, index_t ns, const T* u, index_t us,
                                 Strided<const T> G, Strided<T> dV, const SmallTaus<T>& taus,
                                 T* ws) {
  const index_t d = J.d, k = J.k, c = J.c;
  const Tile<T, P> t(J, ws);
  for (index_t e0 = 0; e0 < batch; e0 += P) {
    const index_t n = std::min<index_t>(P, batch - e0);
    for (int p = 0; p < P; ++p) {  // lanes past n: zero reflectors on zero matrices
      const bool on = p < n;
      const index_t e = e0 + p;
      get<T, P>(t.y + p, d, k, on ? y + e * ys : nullptr, 1, d);
      get<T, P>(t.u + p, d, c, on ? u + e * us : nullptr, 1, d);
      get<T, P>(t.g + p, d, c, on ? G.p + e * G.bs : nullptr, G.rs, G.cs);
      if (J.lapack) get<T, P>(t.r + p, k, c, on ? taus.r + e * taus.rs : nullptr, 1, k);
      for (index_t j = 0; j < k; ++j) {
        const T nv = on ? norms[e * ns + j] : T(0);
        t.nrm[j * P + p] = nv;
        t.tau[j * P + p] = J.lapack ? nv : nv == T(0) ? T(0) : T(2);
      }
    }
    unbuild<T, P>(J, t);
    for (index_t p = 0; p < n; ++p) {
      const index_t e = e0 + p;
      put<T, P>(t.dy + p, d, k, dV.p + e * dV.bs, dV.rs, dV.cs);
      if (J.lapack)
        for (index_t j = 0; j < k; ++j) taus.dtau[e * taus.dtau_bs + j * taus.dtau_rs] = t.dtau[j * P + p];
    }
  }
}

// Each kernel compiled twice, for the baseline ISA and for AVX2 with FMA, chosen at run time:
// the library is built for any x86-64, and the batch loops are where vector width pays.
#define FASTH_SMALL_KERNELS(ISA, ATTR)                                                         \
  struct ISA {                                                                                 \
    template <class T, int P>                                                                  \
    ATTR static void forward(const Job<T>& J, index_t batch, Strided<const T> V, Strided<T> U, \
                             T* y, index_t ys, T* norms, index_t ns, T* u2, index_t u2s,      \
                             const SmallTaus<T>& taus, T* ws) {                               \
      forward_tiles<T, P>(J, batch, V, U, y, ys, norms, ns, u2, u2s, taus, ws);               \
    }                                                                                          \
    template <class T, int P>                                                                  \
    ATTR static void backward(const Job<T>& J, index_t batch, const T* y, index_t ys,         \
                              const T* norms, index_t ns, const T* u, index_t us,             \
                              Strided<const T> G, Strided<T> dV, const SmallTaus<T>& taus,    \
                              T* ws) {                                                         \
      backward_tiles<T, P>(J, batch, y, ys, norms, ns, u, us, G, dV, taus, ws);               \
    }                                                                                          \
  };
FASTH_SMALL_KERNELS(Base, )
#if defined(__x86_64__) && defined(__GNUC__)
FASTH_SMALL_KERNELS(Avx2, __attribute__((target("avx2,fma"))))
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#define FASTH_SMALL_AVX2 1
#endif
#undef FASTH_SMALL_KERNELS

// Lanes per tile: 16 float / 8 double lanes (two AVX2 vectors) where a tile's U fits in L2,
// fewer for a small batch (lanes past it are wasted work) and for wider U.
template <class T>
int lanes(index_t batch, index_t d, index_t c) {
  const int wide = static_cast<int>(32 / sizeof(T)) * 2;  // 16 float, 8 double
  int p = d * c <= 256 ? wide : wide / 2;
  while (p > 1 && batch <= p / 2) p /= 2;
  return p < 4 ? 1 : p;
}

// f(P, Isa{}): the lanes this batch fills, the kernels of the widest ISA this CPU runs.
template <class T, class F>
void with_kernels(index_t batch, index_t d, index_t cols, F&& f) {
  auto isa = [&](auto P) {
#ifdef FASTH_SMALL_AVX2
    if (has_avx2()) return f(P, Avx2{});
#endif
    f(P, Base{});
  };
  if constexpr (!is_complex_v<T>) {  // the path takes real types only
    switch (lanes<T>(batch, d, cols)) {
      case 16: return isa(std::integral_constant<int, 16>{});
      case 8: return isa(std::integral_constant<int, 8>{});
      case 4: return isa(std::integral_constant<int, 4>{});
      default: return isa(std::integral_constant<int, 1>{});
    }
  }
}

}  // namespace

// The sizes the path takes (d x d tiles of up to 16 entries stay within L2); real types only.
template <class T>
bool CpuBackend<T>::small_path(index_t d, index_t k, bool taus) const {
  constexpr index_t kMaxD = 128, kMaxK = 256;
  return !is_complex_v<T> && d >= 1 && d <= kMaxD && k >= 1 && k <= kMaxK && (!taus || k <= d);
}

template <class T>
void CpuBackend<T>::small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                                 Strided<const T> V, Strided<T> U, T* y, index_t ys, T* norms,
                                 index_t ns, T* u2, index_t u2s, const SmallTaus<T>& taus,
                                 T* ws) const {
  if (batch <= 0 || d <= 0 || cols <= 0 || k <= 0) return;
  if (!small_path(d, k, taus.r != nullptr) || cols > d || !ws)
    throw std::logic_error("fasth: small_matrix: sizes outside the CPU's small path");
  const Job<T> J{d, k, cols, taus.r != nullptr};
  with_kernels<T>(batch, d, cols, [&](auto P, auto isa) {
    decltype(isa)::template forward<T, P()>(J, batch, V, U, y, ys, norms, ns, u2, u2s, taus, ws);
  });
}

template <class T>
void CpuBackend<T>::small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                                          const T* y, index_t ys, const T* norms, index_t ns,
                                          const T* u, index_t us, Strided<const T> G,
                                          Strided<T> dV, const SmallTaus<T>& taus,
                                          T* ws) const {
  if (batch <= 0 || d <= 0 || k <= 0) return;
  if (!small_path(d, k, taus.r != nullptr) || cols < 1 || cols > d || !ws)
    throw std::logic_error("fasth: small_matrix_backward: sizes outside the CPU's small path");
  const Job<T> J{d, k, cols, taus.r != nullptr};
  with_kernels<T>(batch, d, cols, [&](auto P, auto isa) {
    decltype(isa)::template backward<T, P()>(J, batch, y, ys, norms, ns, u, us, G, dV, taus, ws);
  });
}

#define FASTH_INSTANTIATE(T)                                                                  \
  template bool CpuBackend<T>::small_path(index_t, index_t, bool) const;                      \
  template void CpuBackend<T>::small_matrix(index_t, index_t, index_t, index_t,               \
                                            Strided<const T>, Strided<T>, T*, index_t, T*,    \
                                            index_t, T*, index_t, const SmallTaus<T>&, T*)    \
      const;                                                                                  \
  template void CpuBackend<T>::small_matrix_backward(                                         \
      index_t, index_t, index_t, index_t, const T*, index_t, const T*, index_t, const T*,     \
      index_t, Strided<const T>, Strided<T>, const SmallTaus<T>&, T*) const;
FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)  // (complex: no path)
#undef FASTH_INSTANTIATE

}  // namespace fasth::cpu
