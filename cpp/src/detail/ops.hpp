// The counted backend: the Backend's operations on logical matrices (views.hpp), each one
// backend call, counted by operation (op_counts.cpp) while counting is on.
#pragma once

#include <utility>

#include "detail/views.hpp"
#include "fasth/backend.hpp"

namespace fasth::detail {

// One more call of `op`, where counting is on.
void count_op(BackendOp op);

template <class T>
struct Ops {
  const Backend<T>& be;

  // A complex operand stored transposed would need BLAS's missing conjugate-only op (see
  // view): the runs never pass one.
  template <class P>
  static void column_major(const M<P>& a) {
    if (is_complex_v<T> && a.t) throw std::logic_error("fasth: a complex operand stored transposed");
  }

  // C = alpha op(A) op(B) + beta C, op(A) m x k, for `batch` entries. A C shared across the
  // batch (bs == 0) receives the sum over the batch.
  void mm(index_t batch, index_t m, index_t n, index_t k, T alpha, M<const T> a, bool ta,
          M<const T> b, bool tb, T beta, M<T> c) const {
    if (m == 0 || n == 0 || batch == 0) return;
    if (k == 0) {
      if (beta == T(1)) return;
      // C = beta C: only ever beta == 0 here (fresh outputs).
      return set(c.bs == 0 ? 1 : batch, m, n, T(0), T(0), c);
    }
    if (c.bs == 0 && batch > 1) {
      for (index_t i = 0; i < batch; ++i) {
        M<const T> ai{a.p + i * a.bs, a.ld, a.t, 0}, bi{b.p + i * b.bs, b.ld, b.t, 0};
        mm(1, m, n, k, alpha, ai, ta, bi, tb, i == 0 ? beta : T(1), c);
      }
      return;
    }
    count_op(BackendOp::gemm);
    column_major(a), column_major(b), column_major(c);
    const bool ea = a.t != ta, eb = b.t != tb;  // transposes relative to the storage
    if (!c.t)
      be.gemm(ea, eb, m, n, k, alpha, a.p, a.ld, a.bs, b.p, b.ld, b.bs, beta, c.p, c.ld, c.bs,
              batch);
    else  // C^T = op(B)^T op(A)^T
      be.gemm(!eb, !ea, n, m, k, alpha, b.p, b.ld, b.bs, a.p, a.ld, a.bs, beta, c.p, c.ld,
              c.bs, batch);
  }

  // C = alpha op(R) B (left, B w x n) or alpha B op(R) (right, B n x w), R w x w upper
  // triangular in a factors block; B and C stored alike (both transposed: the product is
  // taken on the other side, C^T = B^T op(R)^T).
  void tr(index_t batch, bool right, bool trans, index_t w, index_t n, T alpha, M<const T> r,
          M<const T> b, M<T> c) const {
    if (w == 0 || n == 0 || batch == 0) return;
    if (b.t != c.t) throw std::logic_error("fasth: trmm operands stored differently");
    column_major(r), column_major(b);
    if (c.t) right = !right, trans = !trans;
    count_op(BackendOp::trmm);
    be.trmm(right, trans, w, n, alpha, r.p, r.ld, r.bs, b.p, b.ld, b.bs, c.p, c.ld, c.bs, batch);
  }

  void solve(index_t batch, index_t w, index_t n, M<const T> r, M<T> c) const {  // C = R^-1 C
    if (w == 0 || n == 0 || batch == 0) return;
    count_op(BackendOp::trsm);
    be.trsm(w, n, T(1), r.p, r.ld, r.bs, c.p, c.ld, c.bs, batch);
  }

  void gram(index_t batch, index_t w, index_t d, M<const T> y, M<T> c) const {
    if (w == 0 || batch == 0) return;
    if (d == 0) return set(batch, w, w, T(0), T(0), c);
    count_op(BackendOp::gram);
    column_major(y);
    be.gram(y.t, w, d, y.p, y.ld, y.bs, c.p, c.ld, c.bs, batch);
  }

  void copy(index_t batch, index_t rows, index_t cols, Strided<const T> a, Strided<T> b) const {
    if (rows == 0 || cols == 0 || batch == 0) return;
    count_op(BackendOp::copy);
    be.copy(rows, cols, a, b, batch);
  }

  void set(index_t batch, index_t rows, index_t cols, T offdiag, T diag, M<T> a) const {
    if (rows == 0 || cols == 0 || batch == 0) return;
    count_op(BackendOp::set);
    if (a.t) std::swap(rows, cols);
    be.set(rows, cols, offdiag, diag, a.p, a.ld, a.bs, batch);
  }

  void larft(index_t count, index_t m, const T* g, index_t ldg, index_t sg, const T* tau,
             index_t stau, T* t, index_t ldt, index_t st) const {
    if (count == 0 || m == 0) return;
    count_op(BackendOp::larft);
    be.larft(count, m, g, ldg, sg, tau, stau, t, ldt, st);
  }

  void mirror(index_t batch, index_t m, M<T> a) const {
    if (m == 0 || (m == 1 && !is_complex_v<T>) || batch == 0) return;  // (complex: Re diag)
    count_op(BackendOp::mirror_upper);
    be.mirror_upper(m, a.p, a.ld, a.bs, batch);
  }

  void normalize(index_t batch, index_t d, index_t k, Strided<const T> v, M<T> y, T* norms,
                 index_t ns) const {
    if (batch == 0 || k == 0) return;
    count_op(BackendOp::normalize);
    be.normalize(batch, d, k, v, strided(y), norms, ns);
  }

  void normalize_backward(index_t batch, index_t d, index_t k, M<const T> y, const T* norms,
                          index_t ns, M<const T> dy, Strided<T> dv) const {
    if (batch == 0 || k == 0 || d == 0) return;
    count_op(BackendOp::normalize_backward);
    be.normalize_backward(batch, d, k, strided(y), norms, ns, strided(dy), dv);
  }

  void lower(index_t batch, index_t d, index_t k, Strided<const T> a, Strided<T> b,
             T diag) const {
    if (batch == 0 || k == 0 || d == 0) return;
    count_op(BackendOp::lower);
    be.lower(batch, d, k, a, b, diag);
  }

  void identity(index_t batch, index_t rows, index_t cols, M<T> a) const {
    set(batch, rows, cols, T(0), T(1), a);
  }
};

}  // namespace fasth::detail
