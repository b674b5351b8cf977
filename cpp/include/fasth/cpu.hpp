// The CPU backend: BLAS through a table of function pointers, so that nothing is linked at
// build time. The Python package fills it from SciPy's BLAS; a C++ program fills it from any
// BLAS it links (Fortran ABI, 32-bit integers), e.g. with CMake's FindBLAS:
//
//   extern "C" void sgemm_(...); extern "C" void dgemm_(...);
//   fasth::cpu::set_blas({&sgemm_, &dgemm_});
#pragma once

#include "fasth/backend.hpp"

namespace fasth::cpu {

template <class T>
using gemm_fn = void(const char* transa, const char* transb, const int* m, const int* n,
                     const int* k, const T* alpha, const T* a, const int* lda, const T* b,
                     const int* ldb, const T* beta, T* c, const int* ldc);

template <class T>
using syrk_fn = void(const char* uplo, const char* trans, const int* n, const int* k,
                     const T* alpha, const T* a, const int* lda, const T* beta, T* c,
                     const int* ldc);

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
  syrk_fn<float>* ssyrk = nullptr;  // optional: the Gram matrices then cost half
  syrk_fn<double>* dsyrk = nullptr;
  // Optional: sets this thread's BLAS thread count and returns the previous setting (MKL's
  // C-ABI MKL_Set_Num_Threads_Local). Products too small to gain from threads then run on one:
  // on 2 cores MKL spent 4-10x longer on the 12..64-sized products of a small U than with
  // one thread. BLAS libraries that keep small calls serial themselves need none.
  int (*set_threads_local)(int) = nullptr;
  // Optional: a batch in one call, which MKL spreads over its threads by entry. On 2 cores
  // the thin products of two d = 256 frames ran 1.3-1.6x faster that way than in turn.
  gemm_batch_fn<float>* sgemm_batch = nullptr;
  gemm_batch_fn<double>* dgemm_batch = nullptr;
};

void set_blas(const Blas& blas);
const Blas& blas();  // throws std::runtime_error while unset

template <class T>
class CpuBackend final : public Backend<T> {
 public:
  void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
            index_t lda, index_t sa, const T* b, index_t ldb, index_t sb, T beta, T* c,
            index_t ldc, index_t sc, index_t batch) const override;
  void copy(bool trans_a, index_t m, index_t n, const T* a, index_t lda, index_t sa, T* b,
            index_t ldb, index_t sb, index_t batch) const override;
  void set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
           index_t batch) const override;
  void larft(index_t count, index_t m, T* f) const override;
  // larft is a scalar loop of m^3 / 3 steps: wider blocks merge leaves of 32 with gemm.
  index_t larft_max() const override { return 32; }
  void mirror_upper(index_t m, T* a, index_t lda, index_t sa, index_t batch) const override;
  void gram(bool trans_a, index_t n, index_t k, const T* a, index_t lda, index_t sa, T* c,
            index_t ldc, index_t sc, index_t batch) const override;
};

}  // namespace fasth::cpu
