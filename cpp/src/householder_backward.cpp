// The householder backwards: from a tape, from the output alone (each block's input
// recovered through orthogonality), and the single block's.

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {

// The householder blockwise backward from a tape (docs/math.md, "from a tape"): with each
// block's input A = S_s, W1 = Y^T A and W2 = op(T) W1 kept, and G = dL/dout, walking back:
//   D = Y^T G,  E = op(T)^T D,  dY = -G W2^T - A E^T,  d op(T) = -D W1^T,  G_in = G - Y E;
// then T's path for every block at once: dS = -T^T dT T^T, dY += Y mirror(dS), as
// T^-1 = striu(Y^T Y) + diag(Y^T Y) / 2.
template <class T>
void Run<T>::taped_backward(const Backward<T>& a, const Mat3& g3, const BackwardWs<T>& w) const {
  const index_t B = L.B, d = L.d, n = L.n, m = L.m, dn = d * n, ld = std::max<index_t>(d, 1);
  const Lanes ln = lanes();
  const index_t batch = ln.batch, cols = ln.cols, mm2 = m * m, es = L.nb * mm2;
  T* tape = const_cast<T*>(a.tape);
  const T* F = a.factors;
  o.copy(B, d, n, Strided<const T>{a.grad, g3.rs, g3.cs, g3.bs}, Strided<T>{w.g, 1, ld, dn});
  const M<T> G{w.g, ld, false, dn};
  const M<T> D = buffer(w.w, m, m * cols), E = buffer(w.q, m, m * cols);
  const M<T> dYall = dy_buffer(w.dy, a.dV);
  // dT per block (summed over a shared V's entries where the walk keeps them apart).
  auto dT = [&](index_t j) { return M<T>{w.dt + j * mm2, m, false, L.shared ? 0 : es}; };
  for (index_t s = L.nb - 1; s >= 0; --s) {
    const index_t j = forward_block(s), wd = width(j);
    const M<const T> y = in(Y(F)).cols(j * m), A = in(tape_input(ln, tape, s));
    const M<const T> W1 = in(tape_product(ln, tape, s, 0)),
                     W2 = in(tape_product(ln, tape, s, 1));
    const M<T> dY = dYall.cols(j * m);
    o.mm(batch, wd, cols, d, T(1), y, true, in(G), false, T(0), D);          // D = Y^T G
    o.tr(batch, false, !L.transpose, wd, cols, T(1), in(Tf(F, j)), in(D), E);  // E
    o.mm(batch, d, wd, cols, T(-1), in(G), false, W2, true, T(0), dY);      // -G W2^T
    o.mm(batch, d, wd, cols, T(-1), A, false, in(E), true, T(1), dY);       // - A E^T
    if (!L.transpose) o.mm(batch, wd, wd, cols, T(-1), in(D), false, W1, true, T(0), dT(j));
    else o.mm(batch, wd, wd, cols, T(-1), W1, false, in(D), true, T(0), dT(j));
    o.mm(batch, d, cols, wd, T(-1), y, false, in(E), false, T(1), G);       // G_in
  }
  // T's path: the full blocks batched together (per entry, or per block where entries
  // outnumber blocks), then a short last block.
  const index_t full = L.k / m, r = L.k - full * m, bv = L.bv;
  const M<const T> y = in(Y(F));
  const index_t yb = y.cols(m).p - y.p, dyb = dYall.cols(m).p - dYall.p;
  auto t_path = [&](index_t count, index_t wd, const T* t, index_t ts, T* dt, T* p, index_t ps,
                    const T* yp, index_t ys, T* dyp, index_t dys) {
    const M<const T> Tm{t, m, false, ts};
    const M<T> dS{dt, m, false, ps}, P{p, m, false, ps};
    o.tr(count, false, true, wd, wd, T(-1), Tm, in(dS), P);   // -T^T dT
    o.tr(count, true, true, wd, wd, T(1), Tm, in(P), dS);     // (-T^T dT) T^T
    o.mirror(count, wd, dS);
    o.mm(count, d, wd, wd, T(1), M<const T>{yp, y.ld, y.t, ys}, false, in(dS), false, T(1),
         M<T>{dyp, dYall.ld, dYall.t, dys});
  };
  const index_t fs = fbs(), m2 = 2 * mm2;
  const T* t0 = Tf(F, 0).p;
  if (full > 0) {
    if (bv == 1 || full >= bv) {
      for (index_t e = 0; e < bv; ++e)
        t_path(full, m, t0 + e * fs, m2, w.dt + e * es, w.dq + e * es, mm2, y.p + e * y.bs, yb,
               dYall.p + e * dYall.bs, dyb);
    } else {
      for (index_t j = 0; j < full; ++j)
        t_path(bv, m, t0 + j * m2, fs, w.dt + j * mm2, w.dq + j * mm2, es, y.p + j * yb, y.bs,
               dYall.p + j * dyb, dYall.bs);
    }
  }
  if (r > 0)
    t_path(bv, r, t0 + full * m2, fs, w.dt + full * mm2, w.dq + full * mm2, es,
           y.p + full * yb, y.bs, dYall.p + full * dyb, dYall.bs);
  if (a.dX) o.copy(B, d, n, Strided<const T>{w.g, 1, ld, dn}, strided(L.dX, a.dX));
  finish_dv(F, in(dYall), a.dV);
}

// The householder blockwise backward (docs/math.md, "from the output alone"): from the
// output A and its gradient G, held side by side as AG = [A | G] (d x 2n per entry),
// walking the blocks back to the input: A ends as the input X, G as dL/dX, and dY receives
// dL/dY (summed over the batch when shared). With A and G adjacent, the products with Y
// and with R serve both at once: 3 products of the size of A per block, not 6.
template <class T>
void Run<T>::householder_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
                          const BackwardWs<T>& w) const {
  const index_t B = L.B, d = L.d, n = L.n, m = L.m;
  const Walk wk = walk_of(L);
  const index_t dn = d * n, ld = std::max<index_t>(d, 1);
  // [A | G]: entry b's A at b * 2dn (G dn after it), or shared: all A's side by side, then all G's.
  T* ag = w.ag;
  const M<T> AG = L.shared ? M<T>{ag, ld, false, 0} : M<T>{ag, ld, false, 2 * dn};
  T* gp = L.shared ? ag + B * dn : ag + dn;
  const index_t ebs = L.shared ? dn : 2 * dn;  // entry stride of A and G in the buffer
  o.copy(B, d, n, strided(s3, a.saved), Strided<T>{ag, 1, ld, ebs});
  o.copy(B, d, n, Strided<const T>{a.grad, g3.rs, g3.cs, g3.bs}, Strided<T>{gp, 1, ld, ebs});
  const index_t batch = wk.batch, cols = wk.n;
  const M<T> YtAG = buffer(w.ytag, m, m * 2 * cols),   // [Y^T A | Y^T G]
             QDQ = buffer(w.qdq, m, m * 3 * cols),     // [Q0 | D | Q]
             S = buffer(w.s, m, m * m);
  const M<T> Z = YtAG, Q0 = QDQ, D = QDQ.cols(cols), Q = QDQ.cols(2 * cols);
  const M<T> dYall = dy_buffer(w.dy, a.dV);
  const T* F = a.factors;
  for (index_t s = L.nb - 1; s >= 0; --s) {
    const index_t j = forward_block(s), wd = width(j);
    const M<const T> y = in(Y(F)).cols(j * m), r = in(Tf(F, j)), gram = in(Gf(F, j));
    const M<T> dY = dYall.cols(j * m);
    o.mm(batch, wd, 2 * cols, d, T(1), y, true, in(AG), false, T(0), YtAG);  // Y^T [A | G]
    o.tr(batch, false, !L.transpose, wd, 2 * cols, T(1), r, in(YtAG), QDQ);  // [Q0 | D]
    o.mm(batch, wd, cols, wd, T(-1), gram, false, in(Q0), false, T(1), Z);   // Z = Y^T A_in
    o.tr(batch, false, L.transpose, wd, cols, T(1), r, in(Z), Q);            // Q = R Z
    // S = mirror(D Q^T) + Q0 D^T (D and Q swapped for the transpose).
    if (!L.transpose) o.mm(batch, wd, wd, cols, T(1), in(D), false, in(Q), true, T(0), S);
    else o.mm(batch, wd, wd, cols, T(1), in(Q), false, in(D), true, T(0), S);
    o.mirror(batch, wd, S);
    o.mm(batch, wd, wd, cols, T(1), in(Q0), false, in(D), true, T(1), S);
    // dY = -[A | G] [D | Q]^T + Y S
    o.mm(batch, d, wd, 2 * cols, T(-1), in(AG), false, in(D), true, T(0), dY);
    o.mm(batch, d, wd, wd, T(1), y, false, in(S), false, T(1), dY);
    // [A | G] -= Y [Q0 | D]: A_in = A - Y Q0, and G = P^T G.
    o.mm(batch, d, 2 * cols, wd, T(-1), y, false, in(QDQ), false, T(1), AG);
  }
  if (a.dX) o.copy(B, d, n, Strided<const T>{gp, 1, ld, ebs}, strided(L.dX, a.dX));
  finish_dv(F, in(dYall), a.dV);
}

// The householder single block (tau_i = 2 / |y_i|^2): with A = Y T and B_E = Y_E T^T,
//   dY = -G B_E - E G^T A + Y mirror(C),  C = A^T G B_E.
template <class T>
void Run<T>::householder_matrix_backward(const T* F, M<const T> G, index_t c,
                                         const MatrixWs<T>& w, T* dV) const {
  const index_t bv = L.bv, d = L.d, k = L.k;
  const M<const T> y = in(Y(F)), t = in(Tf(F, 0));
  const M<T> dY = dy_buffer(w.dy, dV);
  const M<T> A = like_y(w.a, d, d * L.ky), C = buffer(w.c, k, k * k);
  const M<const T> BE = in(Zf(F));                                   // B_E = Y_E T^T = Z
  o.tr(bv, true, false, k, d, T(1), t, y, A);                        // A = Y T
  o.mm(bv, d, k, c, T(-1), G, false, BE, false, T(0), dY);           // dY = -G B_E
  o.mm(bv, k, k, d, T(-1), in(A), true, in(dY), false, T(0), C);     // C = A^T G B_E
  o.mirror(bv, k, C);
  o.mm(bv, d, k, k, T(1), y, false, in(C), false, T(1), dY);         // + Y mirror(C)
  o.mm(bv, c, k, d, T(-1), G, true, in(A), false, T(1), dY);         // - E G^T A
  finish_dv(F, in(dY), dV);
}

#define FASTH_INSTANTIATE(T)                                                               \
  template void Run<T>::taped_backward(const Backward<T>&, const Mat3&,                    \
      const BackwardWs<T>&) const;                                                         \
  template void Run<T>::householder_backward(const Backward<T>&, const Mat3&, const Mat3&, \
      const BackwardWs<T>&) const;                                                         \
  template void Run<T>::householder_matrix_backward(const T*, M<const T>, index_t,         \
      const MatrixWs<T>&, T*) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
