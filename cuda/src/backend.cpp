// The CUDA backend's methods: cuBLAS for the products, the kernels of kernels.hpp for the
// rest, each on the caller's device and stream. Plain C++.
#include <algorithm>
#include <climits>
#include <complex>
#include <string>
#include <type_traits>

#include "fasth/cuda.hpp"
#include "kernels.hpp"
#include "runtime.hpp"

namespace fasth::cuda {

using namespace detail;

namespace {

// cuBLAS wants a leading dimension >= the stored rows (and >= 1) even when there is one
// column and it is never used; fix that case up and leave real errors to cuBLAS.
index_t fix_ld(index_t ld, index_t rows, index_t cols) {
  return cols <= 1 ? std::max<index_t>({ld, rows, 1}) : ld;
}

int to_int(index_t v, const char* what) {
  if (v > INT_MAX) fail(std::string(what) + " = " + std::to_string(v) + " exceeds cuBLAS's int");
  return static_cast<int>(v);
}

// The cuBLAS entry points and their names, by element type (another type: one more line),
// and cuBLAS's type for it (cuComplex for std::complex<float>: the same layout). A macro, so
// that each routine and the name its errors give are spelled by one token.
template <class T>
struct Cublas;
#define FASTH_CUBLAS(T, TYPE, L)                                                              \
  template <>                                                                                 \
  struct Cublas<T> {                                                                          \
    using type = TYPE;                                                                        \
    static constexpr auto gemm = &cublas##L##gemm, gemm_batched = &cublas##L##gemmStridedBatched; \
    static constexpr auto trmm = &cublas##L##trmm, trsm = &cublas##L##trsm;                   \
    static constexpr const char *gemm_name = "cublas" #L "gemm", *trmm_name = "cublas" #L "trmm", \
                                *trsm_name = "cublas" #L "trsm";                              \
  };
FASTH_CUBLAS(float, float, S)
FASTH_CUBLAS(double, double, D)
FASTH_CUBLAS(std::complex<float>, cuComplex, C)
FASTH_CUBLAS(std::complex<double>, cuDoubleComplex, Z)
#undef FASTH_CUBLAS

// Pointers as cuBLAS's type for T.
template <class T>
auto cb(T* p) {
  return reinterpret_cast<typename Cublas<T>::type*>(p);
}
template <class T>
auto cb(const T* p) {
  return reinterpret_cast<const typename Cublas<T>::type*>(p);
}

// cuBLAS's op for the backend's "trans": the conjugate transpose for complex types.
template <class T>
cublasOperation_t op_of(bool trans) {
  return !trans ? CUBLAS_OP_N : is_complex_v<T> ? CUBLAS_OP_C : CUBLAS_OP_T;
}

}  // namespace

template <class T>
CudaBackend<T>::CudaBackend(int device, cudaStream_t stream, bool allow_tf32)
    : device_(device),
      stream_(stream),
      tf32_(allow_tf32 && std::is_same_v<T, float>),
      handle_(handle_for(device)) {}

template <class T>
void CudaBackend<T>::gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                          T alpha, const T* a, index_t lda, index_t sa, const T* b,
                          index_t ldb, index_t sb, T beta, T* c, index_t ldc, index_t sc,
                          index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  ldc = fix_ld(ldc, m, n);
  if (k <= 0) {  // C = beta C, as BLAS does
    if (beta == T(1)) return;
    kernels::scale(m, n, beta, c, ldc, sc, batch, stream_);
    check(cudaGetLastError(), "scale_kernel launch");
    return;
  }
  lda = trans_a ? fix_ld(lda, k, m) : fix_ld(lda, m, k);
  ldb = trans_b ? fix_ld(ldb, n, k) : fix_ld(ldb, k, n);
  const int im = to_int(m, "m"), in = to_int(n, "n"), ik = to_int(k, "k");
  const int ilda = to_int(lda, "lda"), ildb = to_int(ldb, "ldb"), ildc = to_int(ldc, "ldc");
  const cublasOperation_t op_a = op_of<T>(trans_a), op_b = op_of<T>(trans_b);

  const BoundHandle bound(device_, handle_, stream_, tf32_);
  for (index_t b0 = 0; b0 < batch; b0 += INT_MAX) {
    const int nb = static_cast<int>(std::min<index_t>(batch - b0, INT_MAX));
    const T *ab = a + b0 * sa, *bb = b + b0 * sb;
    T* cp = c + b0 * sc;
    check(nb == 1 ? Cublas<T>::gemm(handle_, op_a, op_b, im, in, ik, cb(&alpha), cb(ab), ilda,
                                    cb(bb), ildb, cb(&beta), cb(cp), ildc)
                  : Cublas<T>::gemm_batched(handle_, op_a, op_b, im, in, ik, cb(&alpha), cb(ab),
                                            ilda, sa, cb(bb), ildb, sb, cb(&beta), cb(cp), ildc,
                                            sc, nb),
          Cublas<T>::gemm_name);
  }
}

template <class T>
void CudaBackend<T>::copy(index_t m, index_t n, Strided<const T> a, Strided<T> b,
                          index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  // The tiled kernel for B column-major (the transpose through shared memory when A is
  // row-major); B row-major is the transposed problem.
  if (b.rs == 1 && (a.rs == 1 || a.cs == 1)) {
    const bool trans = a.rs != 1;
    kernels::copy_tiles(trans, false, m, n, a.p, trans ? a.rs : a.cs, a.bs, b.p, b.cs, b.bs,
                        batch, stream_);
  } else if (b.cs == 1 && (a.rs == 1 || a.cs == 1)) {
    const bool trans = a.cs != 1;
    kernels::copy_tiles(trans, false, n, m, a.p, trans ? a.cs : a.rs, a.bs, b.p, b.rs, b.bs,
                        batch, stream_);
  } else {
    kernels::copy_strided(m, n, a, b, batch, stream_);
  }
  check(cudaGetLastError(), "copy launch");
}

template <class T>
void CudaBackend<T>::set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda,
                         index_t sa, index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  kernels::set(m, n, offdiag, diag, a, lda, sa, batch, stream_);
  check(cudaGetLastError(), "set_kernel launch");
}

template <class T>
void CudaBackend<T>::mirror_upper(index_t m, T* a, index_t lda, index_t sa,
                                  index_t batch) const {
  if (m <= 0 || (m == 1 && !is_complex_v<T>) || batch <= 0) return;  // (complex: Re diag)
  DeviceGuard guard(device_);
  kernels::copy_tiles<T>(true, true, m, m, a, lda, sa, a, lda, sa, batch, stream_);
  check(cudaGetLastError(), "mirror_upper launch");
}

template <class T>
void CudaBackend<T>::larft(index_t count, index_t m, const T* g, index_t ldg, index_t sg,
                           const T* tau, index_t stau, T* t, index_t ldt, index_t st) const {
  if (count <= 0 || m <= 0) return;
  DeviceGuard guard(device_);
  kernels::larft(device_, count, m, g, ldg, sg, tau, stau, t, ldt, st, stream_);
  check(cudaGetLastError(), "larft_kernel launch");
}

template <class T>
void CudaBackend<T>::trmm(bool right, bool trans, index_t m, index_t n, T alpha, const T* r,
                          index_t ldr, index_t sr, const T* b, index_t ldb, index_t sb, T* c,
                          index_t ldc, index_t sc, index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  if (batch > 1) return Backend<T>::trmm(right, trans, m, n, alpha, r, ldr, sr, b, ldb, sb, c, ldc, sc, batch);
  DeviceGuard guard(device_);
  const index_t rows = right ? n : m, cols = right ? m : n;
  const int irows = to_int(rows, "m"), icols = to_int(cols, "n"), ir = to_int(fix_ld(ldr, m, m), "ldr");
  const int ib = to_int(fix_ld(ldb, rows, cols), "ldb"), ic = to_int(fix_ld(ldc, rows, cols), "ldc");
  const BoundHandle bound(device_, handle_, stream_, tf32_);
  const cublasSideMode_t side = right ? CUBLAS_SIDE_RIGHT : CUBLAS_SIDE_LEFT;
  check(Cublas<T>::trmm(handle_, side, CUBLAS_FILL_MODE_UPPER, op_of<T>(trans),
                        CUBLAS_DIAG_NON_UNIT, irows, icols, cb(&alpha), cb(r), ir, cb(b), ib,
                        cb(c), ic),
        Cublas<T>::trmm_name);
}

template <class T>
void CudaBackend<T>::trsm(index_t m, index_t n, T alpha, const T* r, index_t ldr, index_t sr,
                          T* c, index_t ldc, index_t sc, index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  const int im = to_int(m, "m"), in = to_int(n, "n"), ir = to_int(fix_ld(ldr, m, m), "ldr");
  const int ic = to_int(fix_ld(ldc, m, n), "ldc");
  const BoundHandle bound(device_, handle_, stream_, tf32_);
  for (index_t i = 0; i < batch; ++i) {
    check(Cublas<T>::trsm(handle_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                          CUBLAS_DIAG_NON_UNIT, im, in, cb(&alpha), cb(r + i * sr), ir,
                          cb(c + i * sc), ic),
          Cublas<T>::trsm_name);
  }
}

template <class T>
void CudaBackend<T>::normalize(index_t batch, index_t d, index_t k, Strided<const T> v,
                               Strided<T> y, T* norms, index_t ns) const {
  if (batch <= 0 || k <= 0) return;
  DeviceGuard guard(device_);
  kernels::normalize(batch, d, k, v, y, norms, ns, stream_);
  check(cudaGetLastError(), "normalize_kernel launch");
}

template <class T>
void CudaBackend<T>::normalize_backward(index_t batch, index_t d, index_t k, Strided<const T> y,
                                        const T* norms, index_t ns, Strided<const T> dy,
                                        Strided<T> dv) const {
  if (batch <= 0 || k <= 0 || d <= 0) return;
  DeviceGuard guard(device_);
  kernels::normalize_backward(batch, d, k, y, norms, ns, dy, dv, stream_);
  check(cudaGetLastError(), "normalize_backward_kernel launch");
}

template <class T>
void CudaBackend<T>::lower(index_t batch, index_t d, index_t k, Strided<const T> a, Strided<T> b,
                           T diag) const {
  if (batch <= 0 || k <= 0 || d <= 0) return;
  DeviceGuard guard(device_);
  kernels::lower(d, k, a, b, diag, batch, stream_);
  check(cudaGetLastError(), "lower_kernel launch");
}

template <class T>
bool CudaBackend<T>::small_path(index_t d, index_t k, bool taus) const {
  if constexpr (is_complex_v<T>) {  // the small-d path is real; complex takes the blocks
    (void)d, (void)k, (void)taus;
    return false;
  } else {
    return !taus && d >= 1 && d <= kernels::kSmallD && k <= 4 * kernels::kSmallD &&
           kernels::small_fits<T>(device_, d, k);
  }
}

template <class T>
void CudaBackend<T>::small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                                  Strided<const T> V, Strided<T> U, T* y, index_t ys, T* norms,
                                  index_t ns, T* u2, index_t u2s, const SmallTaus<T>& taus,
                                  T* ws) const {
  (void)ws;
  if (batch <= 0 || d <= 0 || cols <= 0) return;
  if (d > kernels::kSmallD || cols > d || taus.r) fail("small_matrix: sizes outside the small path");
  DeviceGuard guard(device_);
  if constexpr (is_complex_v<T>) fail("small_matrix: the small-d path is real");
  else kernels::small_matrix(batch, d, k, cols, V, U, y, ys, norms, ns, u2, u2s, stream_);
  check(cudaGetLastError(), "small_matrix_kernel launch");
}

template <class T>
void CudaBackend<T>::small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                                           const T* y, index_t ys, const T* norms, index_t ns,
                                           const T* u, index_t us, Strided<const T> G,
                                           Strided<T> dV, const SmallTaus<T>& taus,
                                           T* ws) const {
  (void)ws;
  if (batch <= 0 || d <= 0 || k <= 0) return;
  if (d > kernels::kSmallD || cols < 1 || cols > d || taus.r)
    fail("small_matrix_backward: sizes outside the small path");
  DeviceGuard guard(device_);
  if constexpr (is_complex_v<T>) fail("small_matrix_backward: the small-d path is real");
  else kernels::small_matrix_backward(batch, d, k, cols, y, ys, norms, ns, u, us, G, dV, stream_);
  check(cudaGetLastError(), "small_matrix_backward_kernel launch");
}

template class CudaBackend<float>;
template class CudaBackend<double>;
template class CudaBackend<std::complex<float>>;
template class CudaBackend<std::complex<double>>;

}  // namespace fasth::cuda
