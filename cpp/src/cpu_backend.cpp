#include "fasth/cpu.hpp"

#include <algorithm>
#include <climits>
#include <stdexcept>

namespace fasth::cpu {
namespace {

Blas g_blas;

int to_int(index_t v) {
  if (v > INT_MAX) throw std::invalid_argument("fasth: a dimension exceeds the 32-bit BLAS range");
  return static_cast<int>(v);
}

template <class T>
gemm_batch_fn<T>* gemm_batch_of() {
  if constexpr (sizeof(T) == 4) return blas().sgemm_batch; else return blas().dgemm_batch;
}

template <class T>
gemm_fn<T>* gemm_of() {
  gemm_fn<T>* f;
  if constexpr (sizeof(T) == 4) f = blas().sgemm; else f = blas().dgemm;
  if (!f) throw std::runtime_error("fasth: BLAS gemm not set (fasth::cpu::set_blas)");
  return f;
}

// One BLAS thread while alive, for a product of `flops` below what threads pay off at
// (about a 64^3 product, measured with MKL on 2 cores).
class SerialIfSmall {
 public:
  explicit SerialIfSmall(double flops) {
    if (flops < 6e5 && blas().set_threads_local) {
      previous_ = blas().set_threads_local(1);
      set_ = true;
    }
  }
  ~SerialIfSmall() {
    if (set_) blas().set_threads_local(previous_);
  }
  SerialIfSmall(const SerialIfSmall&) = delete;
  SerialIfSmall& operator=(const SerialIfSmall&) = delete;

 private:
  int previous_ = 0;
  bool set_ = false;
};

}  // namespace

void set_blas(const Blas& b) { g_blas = b; }

const Blas& blas() {
  if (!g_blas.sgemm && !g_blas.dgemm)
    throw std::runtime_error("fasth: no BLAS set; call fasth::cpu::set_blas first");
  return g_blas;
}

template <class T>
void CpuBackend<T>::gemm(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha,
                         const T* a, index_t lda, index_t sa, const T* b, index_t ldb,
                         index_t sb, T beta, T* c, index_t ldc, index_t sc,
                         index_t batch) const {
  if (m == 0 || n == 0 || batch == 0) return;
  auto* f = gemm_of<T>();
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  const int im = to_int(m), in = to_int(n), ik = to_int(k);
  const int ia = to_int(lda), ib = to_int(ldb), ic = to_int(ldc);
  const double flops = 2.0 * double(m) * double(n) * double(k);
  auto* fb = gemm_batch_of<T>();
  if (batch == 1 || !fb) {
    const SerialIfSmall serial(flops);
    for (index_t i = 0; i < batch; ++i)
      f(&ca, &cb, &im, &in, &ik, &alpha, a + i * sa, &ia, b + i * sb, &ib, &beta, c + i * sc,
        &ic);
    return;
  }
  // One call per chunk of entries, their addresses in arrays on the stack.
  constexpr index_t kChunk = 64;
  const T* pa[kChunk];
  const T* pb[kChunk];
  T* pc[kChunk];
  const int groups = 1;
  for (index_t i0 = 0; i0 < batch; i0 += kChunk) {
    const index_t len = std::min(kChunk, batch - i0);
    for (index_t i = 0; i < len; ++i)
      pa[i] = a + (i0 + i) * sa, pb[i] = b + (i0 + i) * sb, pc[i] = c + (i0 + i) * sc;
    const int size = static_cast<int>(len);
    const SerialIfSmall serial(flops * double(len));
    fb(&ca, &cb, &im, &in, &ik, &alpha, pa, &ia, pb, &ib, &beta, pc, &ic, &groups, &size);
  }
}

template <class T>
void CpuBackend<T>::copy(bool ta, index_t m, index_t n, const T* a, index_t lda, index_t sa,
                         T* b, index_t ldb, index_t sb, index_t batch) const {
  for (index_t i = 0; i < batch; ++i) {
    const T* ai = a + i * sa;
    T* bi = b + i * sb;
    for (index_t j = 0; j < n; ++j)
      for (index_t r = 0; r < m; ++r) bi[r + j * ldb] = ta ? ai[j + r * lda] : ai[r + j * lda];
  }
}

template <class T>
void CpuBackend<T>::set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
                        index_t batch) const {
  for (index_t i = 0; i < batch; ++i)
    for (index_t j = 0; j < n; ++j)
      for (index_t r = 0; r < m; ++r) a[i * sa + r + j * lda] = r == j ? diag : offdiag;
}

template <class T>
void CpuBackend<T>::larft(index_t count, index_t m, T* f) const {
  for (index_t b = 0; b < count; ++b) {
    T* t = f + b * 2 * m * m;
    const T* g = t + m * m;
    for (index_t i = 0; i < m; ++i) {
      const T gii = g[i + i * m];
      const T tau = gii == T(0) ? T(0) : T(2) / gii;
      // T[0:i, i] = -tau T[0:i, 0:i] G[0:i, i], T upper triangular.
      for (index_t r = 0; r < i; ++r) {
        T acc = 0;
        for (index_t c = r; c < i; ++c) acc += t[r + c * m] * g[c + i * m];
        t[r + i * m] = -tau * acc;
      }
      t[i + i * m] = tau;
      for (index_t r = i + 1; r < m; ++r) t[r + i * m] = 0;
    }
  }
}

template <class T>
void CpuBackend<T>::mirror_upper(index_t m, T* a, index_t lda, index_t sa, index_t batch) const {
  for (index_t i = 0; i < batch; ++i)
    for (index_t j = 0; j < m; ++j)
      for (index_t r = j + 1; r < m; ++r) a[i * sa + r + j * lda] = a[i * sa + j + r * lda];
}

template <class T>
void CpuBackend<T>::gram(bool ta, index_t n, index_t k, const T* a, index_t lda, index_t sa,
                         T* c, index_t ldc, index_t sc, index_t batch) const {
  syrk_fn<T>* f;
  if constexpr (sizeof(T) == 4) f = blas().ssyrk; else f = blas().dsyrk;
  if (!f || n == 0 || k == 0) return Backend<T>::gram(ta, n, k, a, lda, sa, c, ldc, sc, batch);
  const char uplo = 'U', trans = ta ? 'N' : 'T';  // storage is op(A)^T when transposed
  const int in = to_int(n), ik = to_int(k), ia = to_int(lda), ic = to_int(ldc);
  const T one = 1, zero = 0;
  const SerialIfSmall serial(double(n) * double(n) * double(k));
  for (index_t i = 0; i < batch; ++i)
    f(&uplo, &trans, &in, &ik, &one, a + i * sa, &ia, &zero, c + i * sc, &ic);
  mirror_upper(n, c, ldc, sc, batch);
}

template class CpuBackend<float>;
template class CpuBackend<double>;

}  // namespace fasth::cpu
