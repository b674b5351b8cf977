// The backward's entry: empty problems, grad and saved as batches of matrices, and the
// dispatch to the householder and LAPACK backwards; the single block's backward, shared by
// matrix() and the materialised apply.
#include <stdexcept>
#include <string>

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {

template <class T>
void Run<T>::backward(const Backward<T>& a) const {
  const index_t B = L.B, d = L.d, n = L.n, k = L.k;
  const bool lapack = L.kind == Kind::lapack;
  // dV of columns that no reflector uses, and of an empty problem.
  if (L.bv > 0 && L.dV.cols > 0 && d > 0)
    if (lapack || B == 0 || n == 0 || k == 0)
      o.set(L.bv, d, L.dV.cols, T(0), T(0), settable(L.dV, a.dV));
  if (lapack && L.bv > 0 && k > 0 && (B == 0 || n == 0 || d == 0))
    o.set(L.bv, k, 1, T(0), T(0), settable(L.dtau, a.dtau));
  if (B == 0 || d == 0 || n == 0) return;
  const bool want_dx = L.op == Op::apply && a.dX;
  const bool taped = a.tape && L.tape_size;
  const Mat3 g3 = layout_of(a.grad_layout, "grad");
  const Mat3 s3 = L.reads_saved() && !taped ? layout_of(a.saved_layout, "saved") : Mat3{};
  if (k == 0) {
    if (want_dx) o.copy(B, d, n, strided(g3, a.grad), strided(L.dX, a.dX));
    return;
  }
  Arena<T> arena{a.workspace};
  const BackwardWs<T> w = carve_backward(L, arena, taped);
  if (taped) return taped_backward(a, g3, w);
  if (L.op == Op::matrix && L.single)
    return matrix_backward(a.factors, g3, a.grad, L.n, w.mat, a.dV, a.dtau);
  if (lapack) return lapack_backward(a, g3, s3, w);
  if (L.single) return materialized_backward(a, g3, s3, w);
  householder_backward(a, g3, s3, w);
}

// grad or saved (shape (..., d, n)) as a batch of matrices.
template <class T>
Mat3 Run<T>::layout_of(const Array& g, const char* name) const {
  Mat3 m;
  m.batch = L.B, m.rows = L.d, m.cols = L.n;
  const std::string what = std::string("fasth: ") + name;
  if (g.rank < 2) throw std::invalid_argument(what + " must have at least 2 dimensions");
  m.rs = g.strides[g.rank - 2], m.cs = g.strides[g.rank - 1];
  if (!leading_stride(g.shape, g.strides, g.rank - 2, m.bs))
    throw std::invalid_argument(what + "'s batch dimensions cannot be walked with one stride");
  index_t total = 1;
  for (int i = 0; i < g.rank - 2; ++i) total *= g.shape[i];
  if (g.shape[g.rank - 2] != L.d || g.shape[g.rank - 1] != L.n || total != L.B)
    throw std::invalid_argument(what + " has the wrong shape");
  return m;
}

// grad as a BLAS view, copied into `buf` (column-major, batch entries d x c apart) where
// BLAS cannot address it.
template <class T>
M<const T> Run<T>::addressable(const Mat3& g3, const T* g, index_t c, T* buf) const {
  bool ok;
  M<const T> v = view(g3, g, ok);
  if (ok) return v;
  o.copy(g3.batch, L.d, c, Strided<const T>{g, g3.rs, g3.cs, g3.bs},
         Strided<T>{buf, 1, L.d, L.d * c});
  return M<const T>{buf, L.d, false, L.d * c};
}

// The materialised apply: out = op(U) X with U kept in the factors. dX = op(U)^T G, and
// dL/dU = G X^T = (G out^T) U (or U (G out^T)^T transposed), then U's single-block backward.
template <class T>
void Run<T>::materialized_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
                           const BackwardWs<T>& w) const {
  const index_t B = L.B, d = L.d, n = L.n, bv = L.bv;
  const T* F = a.factors;
  const M<const T> G = addressable(g3, a.grad, n, w.g);
  const M<const T> out = addressable(s3, a.saved, n, w.x);
  const M<const T> U = in(Uf(F));
  if (a.dX) o.mm(B, d, n, d, T(1), U, !L.transpose, G, false, T(0), view(L.dX, a.dX));
  const M<T> W1 = buffer(w.w1, d, L.shared ? 0 : d * d);
  o.mm(B, d, d, n, T(1), G, false, out, true, T(0), W1);
  const M<T> dU = buffer(w.du, d, d * d);
  if (!L.transpose) o.mm(bv, d, d, d, T(1), in(W1), false, U, false, T(0), dU);
  else o.mm(bv, d, d, d, T(1), U, false, in(W1), true, T(0), dU);
  Mat3 du3;
  du3.batch = bv, du3.rows = d, du3.cols = d, du3.rs = 1, du3.cs = d, du3.bs = d * d;
  matrix_backward(F, du3, w.du, d, w.mat, a.dV, nullptr);
}

// The single block's backward: dY for U = E - Y T Y_E^T (d x c) from G = dL/dU.
// householder (tau_i = 2 / |y_i|^2): with A = Y T and B_E = Y_E T^T,
//   dY = -G B_E - E G^T A + Y mirror(C),  C = A^T G B_E;
// lapack (any tau): dY = -G Y_E T^T - E G^T Y T + (the path through T, lapack_t_backward).
template <class T>
void Run<T>::matrix_backward(const T* F, const Mat3& g3, const T* g, index_t c,
                             const MatrixWs<T>& w, T* dV, T* dtau) const {
  if (small()) {  // the small-d path reads G with any strides
    SmallTaus<T> st;
    if (L.kind == Kind::lapack)
      st.r = const_cast<T*>(Rf(F)), st.rs = fbs(), st.dtau = dtau, st.dtau_rs = L.dtau.rs,
      st.dtau_bs = L.dtau.bs;
    count_op(BackendOp::small_matrix_backward);
    return o.be.small_matrix_backward(L.bv, L.d, L.k, c, F, fbs(), aux(F), fbs(), Uf(F).p, fbs(),
                                      Strided<const T>{g, g3.rs, g3.cs, g3.bs},
                                      strided(L.dV, dV), st, w.small);
  }
  const M<const T> G = addressable(g3, g, c, w.g);
  if (L.kind == Kind::householder) return householder_matrix_backward(F, G, c, w, dV);
  lapack_matrix_backward(F, G, c, w, dV, dtau);
}

#define FASTH_INSTANTIATE(T)                                                                \
  template void Run<T>::backward(const Backward<T>&) const;                                 \
  template Mat3 Run<T>::layout_of(const Array&, const char*) const;                         \
  template M<const T> Run<T>::addressable(const Mat3&, const T*, index_t, T*) const;        \
  template void Run<T>::materialized_backward(const Backward<T>&, const Mat3&, const Mat3&, \
      const BackwardWs<T>&) const;                                                          \
  template void Run<T>::matrix_backward(const T*, const Mat3&, const T*, index_t,           \
      const MatrixWs<T>&, T*, T*) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
