// Forward mode: the tangent of an op's output in a direction (dV, dtau, dX), by the forward
// walked again carrying (A, dA) (docs/math.md, "Forward mode"). Per block, with
// W = Y^T A and Q = R W:
//   dA -= dY Q + Y (R (Y^T dA + dY^T A) + dR W),  A -= Y Q,
// dY the tangent of the reflectors (tangent_y) and dR that of R = T or T^T (tangent_t): six
// products of the size of A per block, about three forwards. Its transpose, for a fixed V,
// is the backward.

#include <stdexcept>
#include <string>

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {

template <class T>
void Run<T>::tangent(const Tangent<T>& a) const {
  const index_t B = L.B, d = L.d, n = L.n;
  if (B == 0 || d == 0 || n == 0) return;
  const Mat3 dx3 = L.op == Op::apply && a.dX ? direction(a.dX_layout, L.X, 2, "dX") : Mat3{};
  if (L.k == 0) {  // U = I
    if (L.op == Op::apply && a.dX) return o.copy(B, d, n, strided(dx3, a.dX), strided(L.out, a.dout));
    return o.set(B, d, n, T(0), T(0), view(L.out, a.dout));
  }
  Arena<T> arena{a.workspace};
  const TangentWs<T> w = carve_tangent(L, arena);
  if (w.f && small()) {  // the small-d path's factors hold no T: factors with it (with_t)
    const Layout lt = with_t(L);
    const index_t f1 = static_cast<index_t>(lt.factors_stride), head = static_cast<index_t>(L.f_blocks);
    o.copy(L.bv, head, 1, Strided<const T>{a.factors, 1, head, fbs()}, Strided<T>{w.f, 1, f1, f1});
    const Run r{lt, o, f1};
    r.grams_and_t(w.f, w.fws);
    return r.tangent_walk(a, w.f, dx3, w);
  }
  tangent_walk(a, a.factors, dx3, w);
}

// A direction's layout as a batch of matrices like its primal's (`want`; `tail` 2 for
// matrices, 1 for tau's vectors): the primal's shape, any strides. Its own batch stride,
// also where V's is 0 (a V broadcast to a batch), but for a shared V's.
template <class T>
Mat3 Run<T>::direction(const Array& a, const Mat3& want, int tail, const char* name) const {
  auto bad = [&](const char* why) {
    throw std::invalid_argument(std::string("fasth: the tangent ") + name + " " + why);
  };
  if (a.rank < tail) bad("has the wrong shape");
  Mat3 m = want;
  if (tail == 2) {
    if (a.shape[a.rank - 2] != want.rows || a.shape[a.rank - 1] != want.cols) bad("has the wrong shape");
    m.rs = a.strides[a.rank - 2], m.cs = a.strides[a.rank - 1];
  } else {
    if (a.shape[a.rank - 1] != want.rows) bad("has the wrong shape");
    m.rs = a.strides[a.rank - 1], m.cs = std::max<index_t>(want.rows, 1);
  }
  index_t total = 1;
  for (int i = 0; i < a.rank - tail; ++i) total *= a.shape[i];
  if (total != want.batch) bad("has the wrong shape");
  index_t stride = 0;
  if (!leading_stride(a.shape, a.strides, a.rank - tail, stride))
    bad("has batch dimensions that one stride cannot walk");
  m.bs = &want != &L.X && L.shared ? 0 : stride;
  return m;
}

template <class T>
void Run<T>::tangent_walk(const Tangent<T>& a, const T* F, const Mat3& dx3,
                          const TangentWs<T>& w) const {
  const index_t B = L.B, d = L.d, n = L.n, m = L.m;
  const Walk wk = walk_of(L);
  const index_t batch = wk.batch, cols = wk.n, dn = d * n, ld = std::max<index_t>(d, 1);
  // [A | dA] as the householder backward holds [A | G]: entry b's A at b * 2dn (dA dn after
  // it), or for a shared V all A's side by side, then all dA's.
  const index_t ebs = L.shared ? dn : 2 * dn;
  const M<T> AdA{w.ad, ld, false, L.shared ? 0 : 2 * dn};
  T* dap = L.shared ? w.ad + B * dn : w.ad + dn;
  const M<T> A = AdA, dA{dap, ld, false, AdA.bs};
  if (L.op == Op::matrix) o.identity(B, d, n, M<T>{w.ad, ld, false, ebs});
  else o.copy(B, d, n, strided(L.X, a.X), Strided<T>{w.ad, 1, ld, ebs});
  if (L.op == Op::apply && a.dX) o.copy(B, d, n, strided(dx3, a.dX), Strided<T>{dap, 1, ld, ebs});
  else o.set(B, d, n, T(0), T(0), M<T>{dap, ld, false, ebs});
  const M<const T> dYall = tangent_y(a, F, w.dy);
  const M<T> WZ = buffer(w.wz, m, m * 2 * cols), QZ = buffer(w.qz, m, m * 2 * cols);
  const M<T> Zt = QZ.cols(cols), Z = WZ.cols(cols);
  const M<T> dT{w.dt, m, false, L.shared ? 0 : m * m};
  for (index_t s = 0; s < L.nb; ++s) {
    const index_t j = forward_block(s), wd = width(j);
    const M<const T> y = in(Y(F)).cols(j * m), dy = dYall.cols(j * m), t = in(Tf(F, j));
    tangent_t(a, F, j, y, dy, w);
    o.mm(batch, wd, 2 * cols, d, T(1), y, true, in(AdA), false, T(0), WZ);  // Y^T [A | dA]
    o.mm(batch, wd, cols, d, T(1), dy, true, in(A), false, T(1), Z);         // + dY^T A
    o.tr(batch, false, L.transpose, wd, 2 * cols, T(1), t, in(WZ), QZ);      // R [W | Z]
    o.mm(batch, wd, cols, wd, T(1), in(dT), L.transpose, in(WZ), false, T(1), Zt);  // + dR W
    o.mm(batch, d, 2 * cols, wd, T(-1), y, false, in(QZ), false, T(1), AdA);  // -= Y [Q | Zt]
    o.mm(batch, d, cols, wd, T(-1), dy, false, in(QZ), false, T(1), dA);      // dA -= dY Q
  }
  o.copy(B, d, n, Strided<const T>{dap, 1, ld, ebs}, strided(L.out, a.dout));
}

// dY, the tangent of the reflectors Y in the direction dV: normalize's Jacobian
// (I - y y^T) / |v| (symmetric: normalize_backward computes it), dV itself where Y is V, or
// the strictly lower part of LAPACK's dA. Zero where dV is not given.
template <class T>
M<const T> Run<T>::tangent_y(const Tangent<T>& a, const T* F, T* buf) const {
  const index_t bv = L.bv, d = L.d, k = L.k;
  const M<T> dY = like_y(buf, d, L.shared ? 0 : d * L.ky);
  if (!a.dV) {
    o.set(bv, d, k, T(0), T(0), dY);
    return in(dY);
  }
  const Mat3 dv3 = direction(a.dV_layout, L.V, 2, L.kind == Kind::lapack ? "dA" : "dV");
  const Strided<const T> dv = strided(dv3, a.dV);
  if (L.kind == Kind::lapack) {
    o.lower(bv, d, k, dv, strided(dY), T(0));
  } else if (L.ydirect && !normalized_) {  // Y is V itself
    bool ok;
    const M<const T> v = in(view(dv3, const_cast<T*>(a.dV), ok));
    if (ok) return v;
    o.copy(bv, d, k, dv, strided(dY));
  } else {
    count_op(BackendOp::normalize_backward);
    o.be.normalize_backward(bv, d, k, strided(in(Y(F))), aux(F), fbs(), dv, strided(dY));
  }
  return in(dY);
}

// dT of block j into w.dt (per V entry). T^-1 = striu(Gram) + diag(1 / tau), so
// dT = -T dS T + K diag(dtau) K~, with dS = striu(dGram) (+ diag(Y^T dY) for fasth's
// reflectors, whose 1 / tau is half the Gram's diagonal), K = I - T U, K~ = I - U T and
// U = striu(Gram): regular where tau = 0. With Mt = Y^T dY and Lo its strictly lower part,
// dS = Mt - Lo + Lo^T (less diag(Mt) for LAPACK's reflectors).
template <class T>
void Run<T>::tangent_t(const Tangent<T>& a, const T* F, index_t j, M<const T> y,
                       M<const T> dy, const TangentWs<T>& w) const {
  const index_t bv = L.bv, wd = width(j), m = L.m, bs = L.shared ? 0 : m * m;
  auto sq = [&](T* p) { return M<T>{p, m, false, bs}; };
  const M<T> Mt = sq(w.mt), Lo = sq(w.lo), P = sq(w.p), dT = sq(w.dt), D = sq(w.dd);
  const M<const T> t = in(Tf(F, j));
  const bool lapack = L.kind == Kind::lapack;
  o.mm(bv, wd, wd, L.d, T(1), y, true, dy, false, T(0), Mt);
  o.lower(bv, wd, wd, strided(in(Mt)), strided(Lo), T(0));
  o.mm(bv, wd, wd, wd, T(1), in(Mt), false, t, false, T(0), P);  // P = dS T
  o.mm(bv, wd, wd, wd, T(-1), in(Lo), false, t, false, T(1), P);
  o.mm(bv, wd, wd, wd, T(1), in(Lo), true, t, false, T(1), P);
  if (lapack) {  // LAPACK's dS has no diagonal
    o.set(bv, wd, wd, T(0), T(0), D);
    o.copy(bv, 1, wd, Strided<const T>{Mt.p, 1, m + 1, bs}, Strided<T>{D.p, 1, m + 1, bs});
    o.mm(bv, wd, wd, wd, T(-1), in(D), false, t, false, T(1), P);
  }
  o.tr(bv, false, false, wd, wd, T(-1), t, in(P), dT);  // dT = -T dS T
  if (!lapack || !a.dtau) return;
  const Mat3 tm = direction(a.dtau_layout, L.tau, 1, "dtau");
  const M<T> K = sq(w.k1), Kt = sq(w.k2);
  o.lower(bv, wd, wd, strided(in(Gf(F, j))), strided(Lo), T(0));  // U^T
  o.identity(bv, wd, wd, K);
  o.mm(bv, wd, wd, wd, T(-1), t, false, in(Lo), true, T(1), K);   // K = I - T U
  o.identity(bv, wd, wd, Kt);
  o.mm(bv, wd, wd, wd, T(-1), in(Lo), true, t, false, T(1), Kt);  // K~ = I - U T
  o.set(bv, wd, wd, T(0), T(0), D);
  o.copy(bv, 1, wd, Strided<const T>{a.dtau + j * m * tm.rs, 1, tm.rs, tm.bs},
         Strided<T>{D.p, 1, m + 1, bs});                                // diag(dtau)
  o.mm(bv, wd, wd, wd, T(1), in(D), false, in(Kt), false, T(0), P);
  o.mm(bv, wd, wd, wd, T(1), in(K), false, in(P), false, T(1), dT);  // + K diag(dtau) K~
}

#define FASTH_INSTANTIATE(T)                                                              \
  template void Run<T>::tangent(const Tangent<T>&) const;                                 \
  template Mat3 Run<T>::direction(const Array&, const Mat3&, int, const char*) const;     \
  template void Run<T>::tangent_walk(const Tangent<T>&, const T*, const Mat3&,            \
      const TangentWs<T>&) const;                                                         \
  template M<const T> Run<T>::tangent_y(const Tangent<T>&, const T*, T*) const;           \
  template void Run<T>::tangent_t(const Tangent<T>&, const T*, index_t, M<const T>,       \
      M<const T>, const TangentWs<T>&) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
