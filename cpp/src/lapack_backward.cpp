// The backward of LAPACK's reflectors (any tau): blockwise from the saved input, the single
// block's, and the path through T = T(Gram, tau).

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {

// The path through T = T(Gram, tau) for LAPACK reflectors, given dT (w x w, batch
// entries): with U = striu(Gram), D = diag(tau), K = I - T U (so T = K D), and
// E = K^T dT D K^T = K^T dT T^T:  dtau = diag(K^T dT - E U^T),  dY += Y (M + M^T),
// M = striu(-D E) = striu(-T^T dT T^T). Regular at tau = 0 (docs/math.md); ^T is ^H for
// complex reflectors.
template <class T>
void Run<T>::lapack_t_backward(index_t batch, index_t wd, M<const T> dT, const T* F, index_t j,
                       const TBackWs<T>& w, M<T> dY, M<const T> y, T* dtau,
                       index_t dtau_bs) const {
  const index_t q = wd * wd;
  auto sq = [&](T* p) { return M<T>{p, std::max<index_t>(wd, 1), false, q}; };
  const M<T> Lo = sq(w.lo), K = sq(w.kk), P1 = sq(w.p1), P2 = sq(w.p2), E = sq(w.e),
             Ms = sq(w.ms);
  const M<const T> gram = in(Gf(F, j)), t = in(Tf(F, j));
  o.lower(batch, wd, wd, strided(gram), strided(Lo), T(0));             // U^T (Gram Hermitian)
  o.identity(batch, wd, wd, K);
  o.mm(batch, wd, wd, wd, T(-1), t, false, in(Lo), true, T(1), K);       // K = I - T U
  o.mm(batch, wd, wd, wd, T(1), in(K), true, dT, false, T(0), P1);       // K^T dT
  o.tr(batch, true, true, wd, wd, T(1), t, dT, P2);                      // dT T^T
  o.mm(batch, wd, wd, wd, T(1), in(K), true, in(P2), false, T(0), E);    // E = K^T dT T^T
  o.mm(batch, wd, wd, wd, T(-1), in(E), false, in(Lo), false, T(1), P1); // K^T dT - E U^T
  const Mat3& dt = L.dtau;
  o.copy(batch, 1, wd, Strided<const T>{P1.p, 1, wd + 1, q},
         Strided<T>{dtau + j * L.m * dt.rs, 1, dt.rs, dtau_bs});
  o.tr(batch, false, true, wd, wd, T(-1), t, in(P2), Ms);                // -D E = -T^T dT T^T
  o.mirror(batch, wd, Ms);
  o.set(batch, 1, wd, T(0), T(0), M<T>{Ms.p, wd + 1, false, q});         // its diagonal
  o.mm(batch, L.d, wd, wd, T(1), y, false, in(Ms), false, T(1), dY);
}

// LAPACK reflectors applied blockwise (ormqr): P_j need not be orthogonal, so the
// forward is walked again from the saved input, keeping each block's input, and the
// blocks are then differentiated in reverse:  W = Y^T A_in, Q = R W, out = A_in - Y Q;
//   dQ = -Y^T G, dW = R^T dQ, dR = dQ W^T, dY = -G Q^T + A_in dW^T (+ the path through T),
//   G_in = G + Y dW.
template <class T>
void Run<T>::lapack_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
                     const BackwardWs<T>& w) const {
  const index_t B = L.B, d = L.d, n = L.n, m = L.m, ld = std::max<index_t>(d, 1);
  const Walk wk = walk_of(L);
  const index_t batch = wk.batch, cols = wk.n, dn = d * n;
  const T* F = a.factors;
  // Block inputs S_s (all entries side by side) and G, d x (B n) each.
  auto S = [&](index_t s) { return M<T>{w.ins + s * B * dn, ld, false, L.shared ? 0 : dn}; };
  const M<T> G{w.g, ld, false, L.shared ? 0 : dn};
  o.copy(B, d, n, strided(s3, a.saved), Strided<T>{w.ins, 1, ld, dn});
  const M<T> Wm = buffer(w.w, m, m * cols), Q = buffer(w.q, m, m * cols),
             dQ = buffer(w.dq, m, m * cols), dW = buffer(w.dw, m, m * cols),
             dT = buffer(w.dt, m, m * m);
  for (index_t s = 0; s + 1 < L.nb; ++s) {  // S_{s+1} = P_j S_s
    const index_t j = forward_block(s), wd = width(j);
    const M<const T> y = in(Y(F)).cols(j * m);
    o.copy(B, d, n, Strided<const T>{S(s).p, 1, ld, dn}, Strided<T>{S(s + 1).p, 1, ld, dn});
    o.mm(batch, wd, cols, d, T(1), y, true, in(S(s)), false, T(0), Wm);
    o.tr(batch, false, L.transpose, wd, cols, T(1), in(Tf(F, j)), in(Wm), Q);
    o.mm(batch, d, cols, wd, T(-1), y, false, in(Q), false, T(1), S(s + 1));
  }
  o.copy(B, d, n, Strided<const T>{a.grad, g3.rs, g3.cs, g3.bs}, Strided<T>{w.g, 1, ld, dn});
  const M<T> dYall = like_y(w.dy, d, L.shared ? 0 : d * L.ky);
  T* dtau = a.dtau;
  for (index_t s = L.nb - 1; s >= 0; --s) {
    const index_t j = forward_block(s), wd = width(j);
    const M<const T> y = in(Y(F)).cols(j * m), t = in(Tf(F, j)), A = in(S(s));
    const M<T> dY = dYall.cols(j * m);
    o.mm(batch, wd, cols, d, T(1), y, true, A, false, T(0), Wm);          // W = Y^T A_in
    o.tr(batch, false, L.transpose, wd, cols, T(1), t, in(Wm), Q);        // Q = R W
    o.mm(batch, wd, cols, d, T(-1), y, true, in(G), false, T(0), dQ);     // dQ = -Y^T G
    o.tr(batch, false, !L.transpose, wd, cols, T(1), t, in(dQ), dW);      // dW = R^T dQ
    if (!L.transpose) o.mm(batch, wd, wd, cols, T(1), in(dQ), false, in(Wm), true, T(0), dT);
    else o.mm(batch, wd, wd, cols, T(1), in(Wm), false, in(dQ), true, T(0), dT);
    o.mm(batch, d, wd, cols, T(-1), in(G), false, in(Q), true, T(0), dY);  // -G Q^T
    o.mm(batch, d, wd, cols, T(1), A, false, in(dW), true, T(1), dY);      // + A_in dW^T
    o.mm(batch, d, cols, wd, T(1), y, false, in(dW), false, T(1), G);      // G_in
    lapack_t_backward(batch, wd, in(dT), F, j, w.tb, dY, y, dtau, L.dtau.bs);
  }
  if (a.dX) o.copy(B, d, n, Strided<const T>{w.g, 1, ld, dn}, strided(L.dX, a.dX));
  o.lower(L.bv, d, L.k, strided(in(dYall)), strided(L.dV, a.dV), T(0));
}

// The LAPACK single block (any tau): dY = -G Y_E T^T - E G^T Y T + the path through T.
template <class T>
void Run<T>::lapack_matrix_backward(const T* F, M<const T> G, index_t c, const MatrixWs<T>& w,
                                    T* dV, T* dtau) const {
  const index_t bv = L.bv, d = L.d, k = L.k;
  const M<const T> y = in(Y(F)), t = in(Tf(F, 0));
  const M<T> dY = like_y(w.dy, d, d * L.ky);
  const M<T> GY = like_y(w.gy, d, d * L.ky), H = buffer(w.h, k, k * k),
             GtY = buffer(w.gty, c, c * k);
  o.mm(bv, d, k, c, T(1), G, false, y, false, T(0), GY);                 // G Y_E
  o.mm(bv, k, k, d, T(-1), y, true, in(GY), false, T(0), H);             // dT = -Y^T G Y_E
  o.tr(bv, true, true, k, d, T(-1), t, in(GY), dY);                      // dY = -G Y_E T^T
  o.mm(bv, c, k, d, T(1), G, true, y, false, T(0), GtY);                 // G^T Y
  o.mm(bv, c, k, k, T(-1), in(GtY), false, t, false, T(1), dY);          // - E G^T Y T
  lapack_t_backward(bv, k, in(H), F, 0, w.t, dY, y, dtau, L.dtau.bs);
  o.lower(bv, d, k, strided(in(dY)), strided(L.dV, dV), T(0));
}

#define FASTH_INSTANTIATE(T)                                                               \
  template void Run<T>::lapack_backward(const Backward<T>&, const Mat3&, const Mat3&,      \
      const BackwardWs<T>&) const;                                                         \
  template void Run<T>::lapack_matrix_backward(const T*, M<const T>, index_t,              \
      const MatrixWs<T>&, T*, T*) const;                                                   \
  template void Run<T>::lapack_t_backward(index_t, index_t, M<const T>, const T*, index_t, \
      const TBackWs<T>&, M<T>, M<const T>, T*, index_t) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
