// A run of a plan on one backend and dtype: the state and small helpers that every part of
// the algorithm shares. docs/math.md derives the algorithm in the names used here: the
// reflectors' unit vectors Y and the T factors of their compact-WY blocks
// P_j = I - Y_j T_j Y_j^T, built once per V (factors.cpp); a forward of k/m block steps
// (forward.cpp), optionally keeping a tape (tape.cpp); a householder backward that recovers
// each block's input from its output, P_j being orthogonal (householder_backward.cpp); a
// LAPACK-reflector backward (any tau: P_j need not be orthogonal) that keeps the block
// inputs (lapack_backward.cpp); forward mode, the forward walked with its tangent
// (tangent.cpp); and U as one block with the full T, U = I - Y T Y^T, for
// matrix() and the materialised apply.
//
// Each block step multiplies by R = T (apply) or R = T^T (transpose: P_j^T = I - Y T^T Y^T);
// the blocks are walked in the order that the product takes them.
#pragma once

#include <algorithm>

#include "detail/ops.hpp"
#include "detail/planning.hpp"
#include "detail/workspaces.hpp"

namespace fasth::detail {

template <class T>
struct Run {
  const Layout& L;
  Ops<T> o;
  index_t fs;  // elements between V entries' factors (at least L.factors_stride)
  // Y for this run: in the factors, or (ydirect) V itself, or V normalised into the head of
  // the run's workspace when some column's norm is too extreme to square (bind_y).
  mutable M<const T> y_{};
  mutable bool normalized_ = true;

  index_t fbs() const { return L.shared ? 0 : fs; }
  index_t width(index_t j) const { return std::min(L.m, L.k - j * L.m); }
  // The forward walks j = nb-1 .. 0 for U X = P_0 (P_1 (... X)), and 0 .. nb-1 for U^T X.
  index_t forward_block(index_t step) const { return L.transpose ? step : L.nb - 1 - step; }

  // A d x k (or c x k) buffer stored as Y is: transposed (row-major) where V is, on the CPU,
  // so that normalising V and its gradient moves no data across.
  template <class P>
  M<P> like_y(P* p, index_t rows, index_t bs) const {
    return L.yt ? M<P>{p, std::max<index_t>(L.ky, 1), true, bs}
                : M<P>{p, std::max<index_t>(rows, 1), false, bs};
  }
  template <class P>
  M<P> Y(P* F) const {
    if (L.ydirect) return M<P>{const_cast<P*>(y_.p), y_.ld, y_.t, y_.bs};
    return like_y(F, L.d, fbs());
  }
  // Norms whose squares stay normal with room for rounding: V is used as it is.
  static bool squarable(T stored) {
    using R = real_t<T>;
    const R norm = real_of(stored);  // norms are real
    constexpr R lo = sizeof(R) == 4 ? R(0x1p-50) : R(0x1p-400);
    constexpr R hi = sizeof(R) == 4 ? R(0x1p+50) : R(0x1p+400);
    return norm == R(0) || (norm >= lo && norm <= hi);
  }
  // Where Y is for a ydirect run: mode 0 in the factors (V as it is) or 1 (normalised, into
  // ws's head). `fresh`: factors() deciding (from the norms it has just written).
  void bind_y(const T* V, const T* F, T* ws, bool fresh) const {
    if (!L.ydirect || L.k == 0 || L.bv == 0) return;  // (no factors: nothing reads Y)
    bool normalized;
    if (fresh) {
      normalized = false;
      for (index_t b = 0; b < L.bv && !normalized; ++b)
        for (index_t j = 0; j < L.k; ++j)
          if (!squarable(F[b * fs + L.f_aux + j])) {
            normalized = true;
            break;
          }
    } else {
      normalized = L.bv > 0 && F[0] != T(0);
    }
    normalized_ = normalized;
    if (!normalized && fresh && L.ypad) {  // a forward's copy of V in rows that do not alias
      const M<T> y{ws, ypad_ld(L), true, L.shared ? 0 : L.d * ypad_ld(L)};
      o.copy(L.bv, L.d, L.k, strided(L.V, V), strided(y));
      y_ = in(y);
      return;
    }
    if (!normalized) {
      y_ = in(view(L.V, const_cast<T*>(V)));
      return;
    }
    const M<T> y = like_y(ws, L.d, L.shared ? 0 : L.d * L.ky);
    o.normalize(L.bv, L.d, L.k, strided(L.V, V), y, const_cast<T*>(F) + L.f_aux, fbs());
    y_ = in(y);
  }

  template <class P>
  M<P> Tf(P* F, index_t j) const { return {F + L.f_blocks + j * 2 * L.m * L.m, L.m, false, fbs()}; }
  template <class P>
  M<P> Gf(P* F, index_t j) const { M<P> t = Tf(F, j); t.p += L.m * L.m; return t; }
  template <class P>
  P* aux(P* F) const { return F + L.f_aux; }
  template <class P>
  M<P> Uf(P* F) const { return {F + L.f_u, std::max<index_t>(L.d, 1), false, fbs()}; }
  index_t cols_u() const { return L.op == Op::matrix ? L.n : L.d; }
  template <class P>
  M<P> Zf(P* F) const { return like_y(F + L.f_z, cols_u(), fbs()); }
  bool z_kept() const { return L.f_u > L.f_z; }

  bool small() const {
    const bool yes = L.small && L.single && !L.yt &&
                     o.be.small_path(L.d, L.k, L.kind == Kind::lapack);
    if (!yes && small_only(L))
      throw std::logic_error("fasth: this CPU plan needs the backend's small-d path");
    return yes;
  }
  // LAPACK's R_b (k x c) for the small path's backward, after U in the factors.
  template <class P>
  P* Rf(P* F) const { return F + L.f_u + L.d * cols_u(); }

  // The padding of a Y-like buffer's rows (L.ky > L.k), zeroed where the factors hold it.
  void zero_pad(index_t batch, index_t rows, M<T> y) const {
    if (L.ky > L.k) o.set(batch, L.ky - L.k, rows, T(0), T(0), M<T>{y.p + L.k, L.ky, false, y.bs});
  }

  // dL/dY for the householder kind: in dV's own memory when it is laid out as Y is (the
  // last step then works in place), else in `scratch`.
  M<T> dy_buffer(T* scratch, T* dV) const {
    const M<T> want = like_y(scratch, L.d, L.shared ? 0 : L.d * L.ky);
    bool ok;
    const M<T> dv = view(L.dV, dV, ok);
    const bool same = ok && dv.t == want.t && dv.ld == want.ld && (L.bv <= 1 || dv.bs == want.bs);
    return same ? M<T>{dV, want.ld, want.t, want.bs} : want;
  }
  // dV from dL/dY: through the normalisation, or as it is where Y is V itself.
  void finish_dv(const T* F, M<const T> dY, T* dV) const {
    if (L.ydirect && !normalized_) {
      if (dY.p != dV) o.copy(L.bv, L.d, L.k, strided(dY), strided(L.dV, dV));
      return;
    }
    o.normalize_backward(L.bv, L.d, L.k, in(Y(F)), aux(F), fbs(), dY, strided(L.dV, dV));
  }
  // How the blockwise forward, and the backward from its tape, walk the matrices, entries
  // d n apart: a shared V's batch as one wide column-major problem (one product per block
  // step, not one per entry; in the workspace where out is row-major), else in out's own
  // orientation, in place (a row-major out, as a features-last activation's transpose is,
  // keeps its block products transposed, so that every gemm is NN or NT: TT products of
  // m <= 8 rows run far slower), except a CPU out of few rows (walk_in_workspace).
  struct Lanes {
    index_t batch, cols, ld;
    bool t, in_out;  // in_out: the walk ends in out itself (else in the workspace's x)
  };
  Lanes lanes() const {
    const bool t = out_row_major(L), in_out = !walk_in_workspace(L);
    if (L.shared && L.B > 1) return {1, L.B * L.n, std::max<index_t>(L.d, 1), false, in_out};
    if (!in_out) return {L.B, L.n, std::max<index_t>(L.d, 1), false, false};
    if (t) return {L.B, L.n, std::max<index_t>(L.n, 1), true, true};
    return {L.B, L.n, std::max<index_t>(L.d, 1), false, true};
  }
  M<T> lane(const Lanes& ln, T* p) const { return {p, ln.ld, ln.t, L.d * L.n}; }
  M<T> products(const Lanes& ln, T* p) const {  // m x cols per walk entry, as the lanes are
    return ln.t ? M<T>{p, std::max<index_t>(ln.cols, 1), true, L.m * ln.cols}
                : buffer(p, L.m, L.m * ln.cols);
  }

  // factors.cpp. `ws` past its head (L.y_head elements, where bind_y may put Y).
  void factors(const T* V, const T* tau, T* F, T* ws) const;
  void small_factors(const T* V, const T* tau, T* F, T* out, T* ws) const;
  void grams_and_t(T* F, T* ws) const;
  void build_t(T* F, T* ws) const;
  void build_u(const T* F, M<T> U, index_t batch, T* ws) const;
  // forward.cpp
  void forward_with(const T* F, const T* X, T* out, T* ws, T* tape) const;
  void forward_blocks(const T* F, const T* X, T* out, T* tape, const ForwardWs<T>& w) const;
  void first_on_identity(index_t batch, index_t wd, index_t c, M<const T> y, M<T> W1) const;
  // tape.cpp
  M<T> tape_input(const Lanes& ln, T* tape, index_t s) const;
  M<T> tape_product(const Lanes& ln, T* tape, index_t s, int which) const;
  void zero_tape_gaps(T* tape) const;
  // backward.cpp
  void backward(const Backward<T>& a) const;
  Mat3 layout_of(const Array& g, const char* name) const;
  M<const T> addressable(const Mat3& g3, const T* g, index_t c, T* buf) const;
  void materialized_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
                             const BackwardWs<T>& w) const;
  void matrix_backward(const T* F, const Mat3& g3, const T* g, index_t c, const MatrixWs<T>& w,
                       T* dV, T* dtau) const;
  // householder_backward.cpp
  void taped_backward(const Backward<T>& a, const Mat3& g3, const BackwardWs<T>& w) const;
  void householder_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
                            const BackwardWs<T>& w) const;
  void householder_matrix_backward(const T* F, M<const T> G, index_t c, const MatrixWs<T>& w,
                                   T* dV) const;
  // tangent.cpp
  void tangent(const Tangent<T>& a) const;
  Mat3 direction(const Array& a, const Mat3& want, int tail, const char* name) const;
  void tangent_walk(const Tangent<T>& a, const T* F, const Mat3& dx3, const TangentWs<T>& w) const;
  M<const T> tangent_y(const Tangent<T>& a, const T* F, T* buf) const;
  void tangent_t(const Tangent<T>& a, const T* F, index_t j, M<const T> y, M<const T> dy,
                 const TangentWs<T>& w) const;
  // lapack_backward.cpp
  void lapack_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
                       const BackwardWs<T>& w) const;
  void lapack_matrix_backward(const T* F, M<const T> G, index_t c, const MatrixWs<T>& w,
                              T* dV, T* dtau) const;
  void lapack_t_backward(index_t batch, index_t wd, M<const T> dT, const T* F, index_t j,
                         const TBackWs<T>& w, M<T> dY, M<const T> y, T* dtau,
                         index_t dtau_bs) const;
};

}  // namespace fasth::detail
