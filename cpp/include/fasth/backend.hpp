// The backend interface: the few BLAS-like operations that the algorithm is written over.
// A backend (CPU through BLAS, CUDA through cuBLAS and a few kernels) implements these and
// nothing else; blocking, T factors, forward, transpose and backward live in algorithm.cpp.
//
// Conventions: column-major, strides and leading dimensions in elements, `batch` entries
// at stride s* apart (stride 0: the same matrix for every entry). Calls are asynchronous
// with respect to the host where the device is (the CUDA backend enqueues on its stream).
#pragma once

#include <cstdint>
#include <stdexcept>

namespace fasth {

using index_t = std::int64_t;

// A batch of matrices by element strides: (i, j) of entry b at p[b * bs + i * rs + j * cs].
template <class T>
struct Strided {
  T* p;
  index_t rs, cs, bs;
};

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;

  // C_b = alpha op(A_b) op(B_b) + beta C_b, op(A) m x k, op(B) k x n, for b < batch.
  // sc != 0 when batch > 1: outputs never alias (the algorithm loops for reductions).
  virtual void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                    const T* a, index_t lda, index_t sa, const T* b, index_t ldb, index_t sb,
                    T beta, T* c, index_t ldc, index_t sc, index_t batch) const = 0;

  // B_b = op(A_b), B m x n (A is n x m when transposed).
  virtual void copy(bool trans_a, index_t m, index_t n, const T* a, index_t lda, index_t sa,
                    T* b, index_t ldb, index_t sb, index_t batch) const = 0;

  // A_b = offdiag everywhere except diag on the diagonal (LAPACK's laset), A m x n.
  virtual void set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
                   index_t batch) const = 0;

  // T factors of `count` blocks of m reflectors. Block b occupies f + b * 2*m*m: its
  // m x m T (output, upper triangular) followed by its Gram matrix Y^T Y (input; zero rows
  // and columns past a short block). T is LAPACK's larft recurrence on the Gram matrix:
  //   tau_i = 2 / G_ii (0 when G_ii == 0), T_ii = tau_i,
  //   T[0:i, i] = -tau_i T[0:i, 0:i] G[0:i, i].
  virtual void larft(index_t count, index_t m, T* f) const = 0;
  // The widest block larft handles well. The algorithm builds the T of wider blocks from
  // leaves of at most this width, merged with gemm:
  //   T = [[T_1, -T_1 (Y_1^T Y_2) T_2], [0, T_2]] for Y = [Y_1, Y_2].
  virtual index_t larft_max() const { return INT64_MAX; }

  // A_b = striu(A_b) + striu(A_b)^T + diag(A_b): the upper triangle mirrored, m x m.
  virtual void mirror_upper(index_t m, T* a, index_t lda, index_t sa, index_t batch) const = 0;

  // C_b = op(A_b)^T op(A_b) (n x n, full), op(A) k x n: the Gram matrices of the blocks. By
  // default a gemm; a backend with a symmetric rank-k update (syrk) does half the work.
  virtual void gram(bool trans_a, index_t n, index_t k, const T* a, index_t lda, index_t sa,
                    T* c, index_t ldc, index_t sc, index_t batch) const {
    gemm(!trans_a, trans_a, n, n, k, T(1), a, lda, sa, a, lda, sa, T(0), c, ldc, sc, batch);
  }

  // Optional fast path for small d (launch-bound sizes): U and its backward built reflector
  // by reflector, each in one step for the whole batch, without the T factors. small_path
  // says whether this backend takes it for V of d x k; the algorithm then calls the two
  // functions below for matrix, matrix_backward and the materialize strategy, and factors()
  // skips its work for materialize shapes. A backend that says yes must accept every batch,
  // layout and cols <= d for that (d, k).
  virtual bool small_path(index_t d, index_t k) const {
    (void)d, (void)k;
    return false;
  }
  // U_b = (H_1 ... H_k)[:, :cols] (d x cols) for b < batch; V.bs == 0: one V for all.
  virtual void small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                            Strided<const T> V, Strided<T> U) const {
    (void)batch, (void)d, (void)k, (void)cols, (void)V, (void)U;
    throw std::logic_error("fasth: this backend has no small-d path");
  }
  // dV_b from U_b = small_matrix(V_b) and G_b = dL/dU_b (d x cols). dV.bs == 0 with
  // batch > 1: dV is the sum over the batch.
  virtual void small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                                     Strided<const T> V, Strided<const T> U,
                                     Strided<const T> G, Strided<T> dV) const {
    (void)batch, (void)d, (void)k, (void)cols, (void)V, (void)U, (void)G, (void)dV;
    throw std::logic_error("fasth: this backend has no small-d path");
  }
};

}  // namespace fasth
