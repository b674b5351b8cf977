// The CPU backend: BLAS through a table of function pointers, so that nothing is linked at
// build time. Each backend object uses the table it is made with (a property of the call,
// not of the process). A C++ program fills one from any BLAS it links (Fortran ABI, 32-bit
// integers), e.g. with CMake's FindBLAS, through fasth/fortran_blas.hpp:
//
//   const fasth::cpu::Blas blas = fasth::cpu::fortran_blas();
//   fasth::cpu::CpuBackend<float> be(blas);
#pragma once

#include <complex>

#include "fasth/backend.hpp"
#include "fasth/scalar.hpp"

namespace fasth::cpu {

template <class T>
using gemm_fn = void(const char* transa, const char* transb, const int* m, const int* n,
                     const int* k, const T* alpha, const T* a, const int* lda, const T* b,
                     const int* ldb, const T* beta, T* c, const int* ldc);

template <class T>
using trmm_fn = void(const char* side, const char* uplo, const char* transa, const char* diag,
                     const int* m, const int* n, const T* alpha, const T* a, const int* lda,
                     T* b, const int* ldb);

template <class T>
using trsm_fn = trmm_fn<T>;  // the same arguments

// MKL's ?gemm_batch (Fortran ABI, group interface): group_count groups of group_size
// products, each group with one set of the scalar arguments.
template <class T>
using gemm_batch_fn = void(const char* transa, const char* transb, const int* m, const int* n,
                           const int* k, const T* alpha, const T** a, const int* lda,
                           const T** b, const int* ldb, const T* beta, T** c, const int* ldc,
                           const int* group_count, const int* group_size);

struct Blas {
  gemm_fn<float>* sgemm = nullptr;
  gemm_fn<double>* dgemm = nullptr;
  trmm_fn<float>* strmm = nullptr;  // optional: triangular products then cost half
  trmm_fn<double>* dtrmm = nullptr;
  trsm_fn<float>* strsm = nullptr;  // optional: only CUDA's plans solve for T (Layout::solve_t)
  trsm_fn<double>* dtrsm = nullptr;
  // Optional: sets this thread's BLAS thread count and returns the previous setting (MKL's
  // C-ABI MKL_Set_Num_Threads_Local). Products too small to gain from threads then run on
  // one, as waking threads costs them more than it gives. BLAS libraries that keep small
  // calls serial themselves need none.
  int (*set_threads_local)(int) = nullptr;
  // Optional: a batch in one call, which MKL spreads over its threads by entry (faster than
  // products in turn where each is too thin to thread).
  gemm_batch_fn<float>* sgemm_batch = nullptr;
  gemm_batch_fn<double>* dgemm_batch = nullptr;
  // Complex (optional: complex64 / complex128 runs need their gemm), alike; 'C' for the
  // conjugate transposes.
  gemm_fn<std::complex<float>>* cgemm = nullptr;
  gemm_fn<std::complex<double>>* zgemm = nullptr;
  trmm_fn<std::complex<float>>* ctrmm = nullptr;
  trmm_fn<std::complex<double>>* ztrmm = nullptr;
  trsm_fn<std::complex<float>>* ctrsm = nullptr;
  trsm_fn<std::complex<double>>* ztrsm = nullptr;
  gemm_batch_fn<std::complex<float>>* cgemm_batch = nullptr;
  gemm_batch_fn<std::complex<double>>* zgemm_batch = nullptr;
};

template <class T>
class CpuBackend final : public Backend<T> {
 public:
  // `blas` must outlive the backend; it needs at least the gemm of T.
  explicit CpuBackend(const Blas& blas);

  // The operations every backend implements, declared once for all (a copy per header would
  // drift). small_path: d <= 128, k <= 256 (cpu_small.cpp: entries interleaved in the
  // workspace so that each reflector step runs for a tile of entries in vector lanes).
#include "fasth/backend_overrides.inc"
  void gram(bool trans_a, index_t n, index_t k, const T* a, index_t lda, index_t sa, T* c,
            index_t ldc, index_t sc, index_t batch) const override;
  // larft is a scalar loop of m^3 / 3 steps: wider blocks merge leaves of 32 with trmm.
  index_t larft_max() const override { return 32; }

 private:
  const Blas& blas_;
};

}  // namespace fasth::cpu
