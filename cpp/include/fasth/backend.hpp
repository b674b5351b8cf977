// The backend interface: the few BLAS-like operations that the algorithm is written over.
// A backend (the CPU through BLAS, CUDA through cuBLAS and a few kernels) implements these
// and nothing else; blocking, T factors, forward, transpose and backward live in the core
// (cpp/src). Every call is one BLAS call or one kernel launch on a batch (one backend call),
// which is what fasth::backend_op_count() counts.
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

// LAPACK's reflectors on the small-d path (Backend::small_matrix; r == nullptr: fasth's).
// tau_i of entry b at tau + b * tau_bs + i * tau_rs (read by the forward); R_b, row i the
// product v_i^T (H_{i+1} ... H_k E) (k x cols, column-major, entries rs apart), which the
// forward writes and the backward reads to walk back through reflectors that need not be
// orthogonal; dtau_i of entry b at dtau + b * dtau_bs + i * dtau_rs (written by the backward).
template <class T>
struct SmallTaus {
  const T* tau = nullptr;
  index_t tau_rs = 1, tau_bs = 0;
  T* r = nullptr;
  index_t rs = 0;
  T* dtau = nullptr;
  index_t dtau_rs = 1, dtau_bs = 0;
};

// Entries a backend's small-d path may work on at once, and the scratch of one call (elements):
// per entry Y and its gradient, taus, norms and dtau, two d x cols matrices, and R.
constexpr index_t kSmallLanes = 16;
inline index_t small_workspace(index_t d, index_t k, index_t cols) {
  return kSmallLanes * (2 * d * k + 3 * k + 2 * d * cols + k * cols);
}

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;

  // C_b = alpha op(A_b) op(B_b) + beta C_b, op(A) m x k, op(B) k x n, for b < batch.
  // sc != 0 when batch > 1: outputs never alias (the algorithm loops for reductions).
  virtual void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                    const T* a, index_t lda, index_t sa, const T* b, index_t ldb, index_t sb,
                    T beta, T* c, index_t ldc, index_t sc, index_t batch) const = 0;

  // C_b = alpha op(R_b) B_b (left) or alpha B_b op(R_b) (right), for R m x m upper
  // triangular with zeros below its diagonal, B and C m x n (left) or n x m (right), C
  // distinct from B. By default a gemm over the whole of R; a BLAS trmm does half the work.
  virtual void trmm(bool right, bool trans, index_t m, index_t n, T alpha, const T* r,
                    index_t ldr, index_t sr, const T* b, index_t ldb, index_t sb, T* c,
                    index_t ldc, index_t sc, index_t batch) const {
    if (right)
      gemm(false, trans, n, m, m, alpha, b, ldb, sb, r, ldr, sr, T(0), c, ldc, sc, batch);
    else
      gemm(trans, false, m, n, m, alpha, r, ldr, sr, b, ldb, sb, T(0), c, ldc, sc, batch);
  }

  // C_b = alpha R_b^-1 C_b in place, R m x m upper triangular (its upper triangle read), C
  // m x n. Only plans that build T by a solve call it (Layout::solve_t); a backend without a
  // triangular solve cannot run them.
  virtual void trsm(index_t m, index_t n, T alpha, const T* r, index_t ldr, index_t sr, T* c,
                    index_t ldc, index_t sc, index_t batch) const {
    (void)m, (void)n, (void)alpha, (void)r, (void)ldr, (void)sr, (void)c, (void)ldc, (void)sc,
        (void)batch;
    throw std::logic_error("fasth: this backend has no triangular solve");
  }

  // C_b = op(A_b)^T op(A_b) (n x n, full), op(A) k x n: the Gram matrices of the blocks. By
  // default a gemm; a backend with a symmetric rank-k update (syrk) does half the work.
  virtual void gram(bool trans_a, index_t n, index_t k, const T* a, index_t lda, index_t sa,
                    T* c, index_t ldc, index_t sc, index_t batch) const {
    gemm(!trans_a, trans_a, n, n, k, T(1), a, lda, sa, a, lda, sa, T(0), c, ldc, sc, batch);
  }

  // B_b = A_b, m x n, any element strides on either side.
  virtual void copy(index_t m, index_t n, Strided<const T> a, Strided<T> b,
                    index_t batch) const = 0;

  // A_b = offdiag everywhere except diag on the diagonal (LAPACK's laset), A m x n.
  virtual void set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
                   index_t batch) const = 0;

  // T factors of `count` blocks of m reflectors (LAPACK's larft on a Gram matrix): T_b
  // (m x m, upper triangular, written whole: zeros below) from G_b = Y_b^T Y_b and the
  // reflectors' tau_b[i] (at tau + b * stau + i; tau == nullptr: tau_i = 2 / G_ii, 0 where
  // G_ii == 0):  T_ii = tau_i,  T[0:i, i] = -tau_i T[0:i, 0:i] G[0:i, i].
  virtual void larft(index_t count, index_t m, const T* g, index_t ldg, index_t sg,
                     const T* tau, index_t stau, T* t, index_t ldt, index_t st) const = 0;
  // The widest block larft handles well. The algorithm builds the T of wider blocks from
  // leaves of at most this width, merged with gemm:
  //   T = [[T_1, -T_1 (Y_1^T Y_2) T_2], [0, T_2]] for Y = [Y_1, Y_2].
  virtual index_t larft_max() const { return INT64_MAX; }

  // A_b = striu(A_b) + striu(A_b)^T + diag(A_b): the upper triangle mirrored, m x m.
  virtual void mirror_upper(index_t m, T* a, index_t lda, index_t sa, index_t batch) const = 0;

  // Y_b = V_b with unit columns and norms_b[j] = |v_j|, computed without overflow or
  // underflow for any finite column; a zero column stays zero, with norm 0. V and Y d x k
  // (any strides; Y as the algorithm lays it out, like V on the CPU; y.p null: the norms
  // alone); norms ns apart.
  virtual void normalize(index_t batch, index_t d, index_t k, Strided<const T> v, Strided<T> y,
                         T* norms, index_t ns) const = 0;
  // The gradient through normalize: dV_b = (dY_b - Y_b diag(Y_b^T dY_b)) / norms_b, column
  // by column (zero where the norm is zero).
  virtual void normalize_backward(index_t batch, index_t d, index_t k, Strided<const T> y,
                                  const T* norms, index_t ns, Strided<const T> dy,
                                  Strided<T> dv) const = 0;
  // B_b = the strictly lower part of A_b (d x k), `diag` on the diagonal and zeros above:
  // LAPACK's unit lower reflectors (diag 1), or the gradient of A from theirs (diag 0).
  virtual void lower(index_t batch, index_t d, index_t k, Strided<const T> a, Strided<T> b,
                     T diag) const = 0;

  // Optional fast path for small d (where per-entry calls, or launches, cost more than the
  // work): U and its backward built reflector by reflector, each step for the whole batch at
  // once, without T factors, and with the normalisation inside. small_path says whether this
  // backend takes it for V of d x k, with fasth's reflectors or (taus) LAPACK's; the
  // algorithm then calls the two functions below for the single block of a plan that allows
  // it (Layout::small: matrix, and U of the materialised apply). A backend that says yes must
  // accept every batch, layout and cols <= d (taus: k <= cols) for that (d, k).
  virtual bool small_path(index_t d, index_t k, bool taus) const {
    (void)d, (void)k, (void)taus;
    return false;
  }
  // U_b = (H_1 ... H_k)[:, :cols] (d x cols) from V_b (V.bs == 0: one V for all), and what
  // the backward reads: the unit vectors Y_b and norms_b as normalize leaves them (taus: Y_b
  // the unit lower part of V_b's first k columns, and norms_b receives tau_b), and, when u2
  // is not null, U_b again (column-major, leading dimension d, entries u2s apart). `ws`:
  // small_workspace(d, k, cols) elements of scratch (null where the backend needs none).
  virtual void small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                            Strided<const T> V, Strided<T> U, T* y, index_t ys, T* norms,
                            index_t ns, T* u2, index_t u2s, const SmallTaus<T>& taus,
                            T* ws) const {
    (void)batch, (void)d, (void)k, (void)cols, (void)V, (void)U, (void)y, (void)ys, (void)norms,
        (void)ns, (void)u2, (void)u2s, (void)taus, (void)ws;
    throw std::logic_error("fasth: this backend has no small-d path");
  }
  // dV_b from what small_matrix left (Y, norms or taus, U column-major with leading dimension
  // d, and taus.r) and G_b = dL/dU_b (d x cols); taus: dV_b is the gradient of V's first k
  // columns' strictly lower part (zeros on and above the diagonal), and dtau_b is written.
  virtual void small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                                     const T* y, index_t ys, const T* norms, index_t ns,
                                     const T* u, index_t us, Strided<const T> G,
                                     Strided<T> dV, const SmallTaus<T>& taus, T* ws) const {
    (void)batch, (void)d, (void)k, (void)cols, (void)y, (void)ys, (void)norms, (void)ns, (void)u,
        (void)us, (void)G, (void)dV, (void)taus, (void)ws;
    throw std::logic_error("fasth: this backend has no small-d path");
  }
};

}  // namespace fasth
