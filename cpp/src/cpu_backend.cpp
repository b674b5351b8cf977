#include "fasth/cpu.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace fasth::cpu {
namespace {

int to_int(index_t v) {
  if (v > INT_MAX) throw std::invalid_argument("fasth: a dimension exceeds the 32-bit BLAS range");
  return static_cast<int>(v);
}

// Below about a 64^3 product, waking a BLAS's threads costs more than they give: such
// products run on this thread alone.
constexpr double kSerialBelowFlops = 6e5;

// One BLAS thread while alive, for a product of `flops` below kSerialBelowFlops.
class SerialIfSmall {
 public:
  SerialIfSmall(const Blas& blas, double flops) : blas_(blas) {
    if (flops < kSerialBelowFlops && blas.set_threads_local) {
      previous_ = blas.set_threads_local(1);
      set_ = true;
    }
  }
  ~SerialIfSmall() {
    if (set_) blas_.set_threads_local(previous_);
  }
  SerialIfSmall(const SerialIfSmall&) = delete;
  SerialIfSmall& operator=(const SerialIfSmall&) = delete;

 private:
  const Blas& blas_;
  int previous_ = 0;
  bool set_ = false;
};

// A dtype's functions in the table, named by the members that hold them.
template <class T, gemm_fn<T>* Blas::*Gemm, trmm_fn<T>* Blas::*Trmm, trsm_fn<T>* Blas::*Trsm,
          gemm_batch_fn<T>* Blas::*GemmBatch>
struct Members {
  static gemm_fn<T>* gemm(const Blas& b) { return b.*Gemm; }
  static trmm_fn<T>* trmm(const Blas& b) { return b.*Trmm; }
  static trsm_fn<T>* trsm(const Blas& b) { return b.*Trsm; }
  static gemm_batch_fn<T>* gemm_batch(const Blas& b) { return b.*GemmBatch; }
};
template <class T>
struct Fns;
template <>
struct Fns<float> : Members<float, &Blas::sgemm, &Blas::strmm, &Blas::strsm, &Blas::sgemm_batch> {};
template <>
struct Fns<double>
    : Members<double, &Blas::dgemm, &Blas::dtrmm, &Blas::dtrsm, &Blas::dgemm_batch> {};
template <>
struct Fns<std::complex<float>> : Members<std::complex<float>, &Blas::cgemm, &Blas::ctrmm,
                                          &Blas::ctrsm, &Blas::cgemm_batch> {};
template <>
struct Fns<std::complex<double>> : Members<std::complex<double>, &Blas::zgemm, &Blas::ztrmm,
                                           &Blas::ztrsm, &Blas::zgemm_batch> {};

// Entries of a gemm batch handed to ?gemm_batch per call (their addresses live on the stack).
constexpr index_t kBatchChunk = 64;

}  // namespace

template <class T>
CpuBackend<T>::CpuBackend(const Blas& blas) : blas_(blas) {
  if (!Fns<T>::gemm(blas)) throw std::runtime_error("fasth: the BLAS table has no gemm for this dtype");
}

template <class T>
void CpuBackend<T>::gemm(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha,
                         const T* a, index_t lda, index_t sa, const T* b, index_t ldb,
                         index_t sb, T beta, T* c, index_t ldc, index_t sc,
                         index_t batch) const {
  if (m == 0 || n == 0 || batch == 0) return;
  auto* f = Fns<T>::gemm(blas_);
  const char ca = ta ? Scalar<T>::trans : 'N', cb = tb ? Scalar<T>::trans : 'N';
  const int im = to_int(m), in = to_int(n), ik = to_int(k);
  const int ia = to_int(std::max<index_t>(lda, 1)), ib = to_int(std::max<index_t>(ldb, 1)),
            ic = to_int(std::max<index_t>(ldc, 1));
  const double flops = (is_complex_v<T> ? 8.0 : 2.0) * double(m) * double(n) * double(k);
  auto* fb = Fns<T>::gemm_batch(blas_);
  if (batch == 1 || !fb) {
    const SerialIfSmall serial(blas_, flops);
    for (index_t i = 0; i < batch; ++i)
      f(&ca, &cb, &im, &in, &ik, &alpha, a + i * sa, &ia, b + i * sb, &ib, &beta, c + i * sc,
        &ic);
    return;
  }
  const T* pa[kBatchChunk];
  const T* pb[kBatchChunk];
  T* pc[kBatchChunk];
  const int groups = 1;
  for (index_t i0 = 0; i0 < batch; i0 += kBatchChunk) {
    const index_t len = std::min(kBatchChunk, batch - i0);
    for (index_t i = 0; i < len; ++i)
      pa[i] = a + (i0 + i) * sa, pb[i] = b + (i0 + i) * sb, pc[i] = c + (i0 + i) * sc;
    const int size = static_cast<int>(len);
    const SerialIfSmall serial(blas_, flops * double(len));
    fb(&ca, &cb, &im, &in, &ik, &alpha, pa, &ia, pb, &ib, &beta, pc, &ic, &groups, &size);
  }
}

template <class T>
void CpuBackend<T>::trmm(bool right, bool trans, index_t m, index_t n, T alpha, const T* r,
                         index_t ldr, index_t sr, const T* b, index_t ldb, index_t sb, T* c,
                         index_t ldc, index_t sc, index_t batch) const {
  auto* f = Fns<T>::trmm(blas_);
  if (!f) return Backend<T>::trmm(right, trans, m, n, alpha, r, ldr, sr, b, ldb, sb, c, ldc, sc, batch);
  if (m == 0 || n == 0 || batch == 0) return;
  const index_t rows = right ? n : m, cols = right ? m : n;  // of B and C
  const char side = right ? 'R' : 'L', uplo = 'U', ct = trans ? Scalar<T>::trans : 'N', diag = 'N';
  const int irows = to_int(rows), icols = to_int(cols), ir = to_int(std::max<index_t>(ldr, 1)),
            ic = to_int(std::max<index_t>(ldc, 1));
  const SerialIfSmall serial(blas_, double(m) * double(m) * double(n) * double(batch));
  for (index_t i = 0; i < batch; ++i) {  // C = B, then C = op(R) C in place
    copy(rows, cols, Strided<const T>{b + i * sb, 1, ldb, 0}, Strided<T>{c + i * sc, 1, ldc, 0}, 1);
    f(&side, &uplo, &ct, &diag, &irows, &icols, &alpha, r + i * sr, &ir, c + i * sc, &ic);
  }
}

template <class T>
void CpuBackend<T>::gram(bool ta, index_t n, index_t k, const T* a, index_t lda, index_t sa,
                         T* c, index_t ldc, index_t sc, index_t batch) const {
  // One full gemm per Gram matrix: BLAS runs these small products faster as gemm than as
  // syrk or a batched gemm, twice the flops notwithstanding (docs/benchmarks.md).
  for (index_t i = 0; i < batch; ++i)
    gemm(!ta, ta, n, n, k, T(1), a + i * sa, lda, 0, a + i * sa, lda, 0, T(0), c + i * sc, ldc, 0, 1);
}

template <class T>
void CpuBackend<T>::copy(index_t m, index_t n, Strided<const T> a, Strided<T> b,
                         index_t batch) const {
  for (index_t e = 0; e < batch; ++e) {
    const T* ae = a.p + e * a.bs;
    T* be = b.p + e * b.bs;
    if (a.rs == 1 && b.rs == 1) {  // columns contiguous on both sides
      for (index_t j = 0; j < n; ++j) std::memcpy(be + j * b.cs, ae + j * a.cs, sizeof(T) * m);
    } else if (a.cs == 1 && b.cs == 1) {  // rows contiguous on both sides
      for (index_t i = 0; i < m; ++i) std::memcpy(be + i * b.rs, ae + i * a.rs, sizeof(T) * n);
    } else if (b.rs == 1) {  // write columns, in tiles so that the reads stay in cache
      constexpr index_t kTile = 32;
      for (index_t j0 = 0; j0 < n; j0 += kTile)
        for (index_t i0 = 0; i0 < m; i0 += kTile)
          for (index_t j = j0; j < std::min(n, j0 + kTile); ++j)
            for (index_t i = i0; i < std::min(m, i0 + kTile); ++i)
              be[i + j * b.cs] = ae[i * a.rs + j * a.cs];
    } else {
      constexpr index_t kTile = 32;
      for (index_t i0 = 0; i0 < m; i0 += kTile)
        for (index_t j0 = 0; j0 < n; j0 += kTile)
          for (index_t i = i0; i < std::min(m, i0 + kTile); ++i)
            for (index_t j = j0; j < std::min(n, j0 + kTile); ++j)
              be[i * b.rs + j * b.cs] = ae[i * a.rs + j * a.cs];
    }
  }
}

template <class T>
void CpuBackend<T>::set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
                        index_t batch) const {
  for (index_t i = 0; i < batch; ++i)
    for (index_t j = 0; j < n; ++j) {
      T* col = a + i * sa + j * lda;
      std::fill(col, col + m, offdiag);
      if (j < m) col[j] = diag;
    }
}

template <class T>
void CpuBackend<T>::larft(index_t count, index_t m, const T* g0, index_t ldg, index_t sg,
                          const T* tau, index_t stau, T* t0, index_t ldt, index_t st) const {
  for (index_t b = 0; b < count; ++b) {
    const T* g = g0 + b * sg;
    T* t = t0 + b * st;
    for (index_t i = 0; i < m; ++i) {
      const real_t<T> gii = real_of(g[i + i * ldg]);  // |y_i|^2
      const T ti = tau ? tau[b * stau + i] : gii == 0 ? T(0) : T(2 / gii);
      // T[0:i, i] = -tau_i T[0:i, 0:i] G[0:i, i], T upper triangular.
      for (index_t r = 0; r < i; ++r) {
        T acc = 0;
        for (index_t c = r; c < i; ++c) acc += t[r + c * ldt] * g[c + i * ldg];
        t[r + i * ldt] = -ti * acc;
      }
      t[i + i * ldt] = ti;
      for (index_t r = i + 1; r < m; ++r) t[r + i * ldt] = 0;
    }
  }
}

// Complex: the Hermitian mirror, striu(A) + striu(A)^H + Re diag(A).
template <class T>
void CpuBackend<T>::mirror_upper(index_t m, T* a, index_t lda, index_t sa, index_t batch) const {
  for (index_t i = 0; i < batch; ++i)
    for (index_t j = 0; j < m; ++j) {
      if constexpr (is_complex_v<T>) a[i * sa + j + j * lda] = real_of(a[i * sa + j + j * lda]);
      for (index_t r = j + 1; r < m; ++r) a[i * sa + r + j * lda] = conj_of(a[i * sa + j + r * lda]);
    }
}

// Column reductions over contiguous memory with eight independent accumulators (they
// pipeline; floating-point sums do not vectorise without reassociating them).
template <class R, class T, class F>
R reduce8(const T* p, index_t n, F&& step) {
  R acc[8] = {};
  index_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] = step(acc[u], p[i + u]);
  for (; i < n; ++i) acc[0] = step(acc[0], p[i]);
  R r = acc[0];
  for (int u = 1; u < 8; ++u) r += acc[u];  // every step adds to its accumulator
  return r;
}

// Row-contiguous data: kColumnTile columns at a time, rows outer, so that each row's slice
// is contiguous and the columns' accumulators vectorise side by side. Column-contiguous
// data: a column at a time, its reductions by reduce8.
constexpr index_t kColumnTile = 32;

// amax, then the scaled sum of squares, of a column (|v| = amax sqrt(sum)), NaN-aware.
// Complex: amax of the moduli, the sum of |v_i / amax|^2 (real, R).
template <class T, class R = real_t<T>>
void column_norm(const T* c, index_t d, index_t rs, R& amax, R& sum) {
  amax = 0, sum = 0;
  for (index_t i = 0; i < d; ++i) {
    const R x = std::abs(c[i * rs]);
    amax = x > amax || x != x ? x : amax;
  }
  if (amax == R(0) || amax != amax) return;
  const R s = R(1) / amax;
  if (std::isfinite(s)) {
    if (rs == 1) sum = reduce8<R>(c, d, [s](R a, T x) { return a + abs2(x * s); });
    else for (index_t i = 0; i < d; ++i) sum += abs2(c[i * rs] * s);
  } else {  // a subnormal amax: divide
    for (index_t i = 0; i < d; ++i) sum += abs2(c[i * rs] / amax);
  }
}

// Column j of y = column j of v / |v| (norm = amax * rt), zero for a zero column.
template <class T, class R = real_t<T>>
void scale_column(const T* c, index_t rs, T* o, index_t ors, index_t d, R amax, R rt) {
  const R sc = amax == R(0) ? R(0) : R(1) / amax / rt;
  if (amax == R(0)) for (index_t i = 0; i < d; ++i) o[i * ors] = T(0);
  else if (std::isfinite(sc)) for (index_t i = 0; i < d; ++i) o[i * ors] = c[i * rs] * sc;
  else for (index_t i = 0; i < d; ++i) o[i * ors] = c[i * rs] / amax / rt;
}

template <class T>
void CpuBackend<T>::trsm(index_t m, index_t n, T alpha, const T* r, index_t ldr, index_t sr, T* c,
                         index_t ldc, index_t sc, index_t batch) const {
  auto* f = Fns<T>::trsm(blas_);
  if (!f) return Backend<T>::trsm(m, n, alpha, r, ldr, sr, c, ldc, sc, batch);
  if (m == 0 || n == 0 || batch == 0) return;
  const char side = 'L', uplo = 'U', ct = 'N', diag = 'N';
  const int im = to_int(m), in = to_int(n), ir = to_int(std::max<index_t>(ldr, 1)),
            ic = to_int(std::max<index_t>(ldc, 1));
  const SerialIfSmall serial(blas_, double(m) * double(m) * double(n) * double(batch));
  for (index_t i = 0; i < batch; ++i)
    f(&side, &uplo, &ct, &diag, &im, &in, &alpha, r + i * sr, &ir, c + i * sc, &ic);
}

template <class T>
void CpuBackend<T>::normalize(index_t batch, index_t d, index_t k, Strided<const T> v,
                              Strided<T> y, T* norms, index_t ns) const {
  using R = real_t<T>;  // the norms are real (stored in T)
  alignas(64) R amax[kColumnTile], scale[kColumnTile], sum[kColumnTile];
  const bool write = y.p != nullptr;  // else the norms alone
  for (index_t e = 0; e < batch; ++e) {
    const T* ve = v.p + e * v.bs;
    T* ye = write ? y.p + e * y.bs : nullptr;
    // Columns of V strided: a column at a time. Rows of V contiguous: tiles of columns, Y
    // written alike or (a complex Y, column-major) transposed within the tile.
    if (v.cs != 1) {
      for (index_t j = 0; j < k; ++j) {
        R a, q;
        column_norm(ve + j * v.cs, d, v.rs, a, q);
        const R rt = std::sqrt(q);
        norms[e * ns + j] = T(a == R(0) ? R(0) : a * rt);
        if (write) scale_column(ve + j * v.cs, v.rs, ye + j * y.cs, y.rs, d, a, rt);
      }
      continue;
    }
    for (index_t j0 = 0; j0 < k; j0 += kColumnTile) {
      const index_t w = std::min(kColumnTile, k - j0), vr = v.rs, yr = y.rs, yc = y.cs;
      const T* vt = ve + j0;
      T* yt = write ? ye + j0 * yc : nullptr;
      std::fill(amax, amax + w, R(0));
      std::fill(sum, sum + w, R(0));
      for (index_t i = 0; i < d; ++i)
        for (index_t j = 0; j < w; ++j) amax[j] = std::max(amax[j], std::abs(vt[i * vr + j]));
      bool special = false;  // a zero or NaN column (std::max drops NaNs), or 1 / amax overflowing
      for (index_t j = 0; j < w; ++j) {
        scale[j] = amax[j] == R(0) ? R(0) : R(1) / amax[j];
        special |= amax[j] == R(0) || !std::isfinite(scale[j]);
      }
      if (special) {  // the rare case, column by column
        for (index_t j = 0; j < w; ++j) {
          R a, q;
          column_norm(vt + j, d, vr, a, q);
          const R rt = std::sqrt(q);
          norms[e * ns + j0 + j] = T(a == R(0) ? R(0) : a * rt);
          if (write) scale_column(vt + j, vr, yt + j * yc, yr, d, a, rt);
        }
        continue;
      }
      for (index_t i = 0; i < d; ++i)
        for (index_t j = 0; j < w; ++j) sum[j] += abs2(vt[i * vr + j] * scale[j]);
      for (index_t j = 0; j < w; ++j) {
        const R rt = std::sqrt(sum[j]);
        norms[e * ns + j0 + j] = T(amax[j] * rt);
        scale[j] /= rt;  // y = v * scale
      }
      if (write && yc == 1)
        for (index_t i = 0; i < d; ++i)
          for (index_t j = 0; j < w; ++j) yt[i * yr + j] = vt[i * vr + j] * scale[j];
      else if (write)
        for (index_t i = 0; i < d; ++i)
          for (index_t j = 0; j < w; ++j) yt[i * yr + j * yc] = vt[i * vr + j] * scale[j];
    }
  }
}

template <class T>
void CpuBackend<T>::normalize_backward(index_t batch, index_t d, index_t k, Strided<const T> y,
                                       const T* norms, index_t ns, Strided<const T> dy,
                                       Strided<T> dv) const {
  // Complex: dv = (dy - y Re(y^H dy)) / |v| (the norm is real).
  using R = real_t<T>;
  alignas(64) R dot[kColumnTile], inv[kColumnTile];
  for (index_t e = 0; e < batch; ++e) {
    const T* ye = y.p + e * y.bs;
    const T* de = dy.p + e * dy.bs;
    T* ve = dv.p + e * dv.bs;
    const bool rows = y.cs == 1 && dy.cs == 1 && dv.cs == 1;
    for (index_t j0 = 0; j0 < k; j0 += kColumnTile) {
      const index_t w = std::min(kColumnTile, k - j0);
      std::fill(dot, dot + w, R(0));
      if (rows) {
        for (index_t i = 0; i < d; ++i)
          for (index_t j = 0; j < w; ++j) dot[j] += re_dot(ye[i * y.rs + j0 + j], de[i * dy.rs + j0 + j]);
      } else {
        for (index_t j = 0; j < w; ++j) {
          const T* yc = ye + (j0 + j) * y.cs;
          const T* dc = de + (j0 + j) * dy.cs;
          if (y.rs == 1 && dy.rs == 1) {
            R acc[8] = {};
            index_t i = 0;
            for (; i + 8 <= d; i += 8)
              for (int u = 0; u < 8; ++u) acc[u] += re_dot(yc[i + u], dc[i + u]);
            for (; i < d; ++i) acc[0] += re_dot(yc[i], dc[i]);
            dot[j] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
          } else {
            for (index_t i = 0; i < d; ++i) dot[j] += re_dot(yc[i * y.rs], dc[i * dy.rs]);
          }
        }
      }
      bool subnormal = false;  // 1 / |v| overflows: the gradient does too; divide
      for (index_t j = 0; j < w; ++j) {
        const R nrm = real_of(norms[e * ns + j0 + j]);
        inv[j] = nrm == R(0) ? R(0) : R(1) / nrm;
        subnormal |= !std::isfinite(inv[j]);
      }
      auto grad = [&](index_t i, index_t j) {
        const T g = de[i * dy.rs + (j0 + j) * dy.cs] - ye[i * y.rs + (j0 + j) * y.cs] * dot[j];
        const R nrm = real_of(norms[e * ns + j0 + j]);
        return nrm == R(0) ? T(0) : subnormal ? g / nrm : g * inv[j];
      };
      if (rows && !subnormal) {
        for (index_t i = 0; i < d; ++i)
          for (index_t j = 0; j < w; ++j)
            ve[i * dv.rs + j0 + j] = (de[i * dy.rs + j0 + j] - ye[i * y.rs + j0 + j] * dot[j]) * inv[j];
      } else {
        for (index_t j = 0; j < w; ++j)
          for (index_t i = 0; i < d; ++i) ve[i * dv.rs + (j0 + j) * dv.cs] = grad(i, j);
      }
    }
  }
}

template <class T>
void CpuBackend<T>::lower(index_t batch, index_t d, index_t k, Strided<const T> a, Strided<T> b,
                          T diag) const {
  for (index_t e = 0; e < batch; ++e)
    for (index_t j = 0; j < k; ++j) {
      const T* ac = a.p + e * a.bs + j * a.cs;
      T* bc = b.p + e * b.bs + j * b.cs;
      for (index_t i = 0; i < d; ++i)
        bc[i * b.rs] = i > j ? ac[i * a.rs] : i == j ? diag : T(0);
    }
}

template class CpuBackend<float>;
template class CpuBackend<double>;
template class CpuBackend<std::complex<float>>;
template class CpuBackend<std::complex<double>>;

}  // namespace fasth::cpu
