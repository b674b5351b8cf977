// The forward: out = op(U) X by k/m block steps (or one product with the materialised U),
// and U itself as the blocks applied to the identity.

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {

template <class T>
void Run<T>::forward_with(const T* F, const T* X, T* out, T* ws, T* tape) const {
  const index_t B = L.B, d = L.d, n = L.n;
  if (B == 0 || d == 0 || n == 0) return;
  const bool taped = tape && L.tape_size;
  Arena<T> arena{ws};
  const ForwardWs<T> w = carve_forward(L, arena, taped);
  if (L.op == Op::matrix && L.single) {
    if (!w.x) return build_u(F, view(L.out, out), B, ws);
    build_u(F, buffer(w.x, d, d * n), B, ws);  // a complex out stored row-major: U, copied
    return o.copy(B, d, n, Strided<const T>{w.x, 1, d, d * n}, strided(L.out, out));
  }
  if (L.single) {
    bool ok;
    M<const T> x = view(L.X, X, ok);
    if (!ok) {
      o.copy(B, d, n, strided(L.X, X), Strided<T>{w.x, 1, d, d * n});
      x = M<const T>{w.x, d, false, d * n};
    }
    return o.mm(B, d, n, d, T(1), in(Uf(F)), L.transpose, x, false, T(0), view(L.out, out));
  }
  forward_blocks(F, X, out, taped ? tape : nullptr, w);
}

// The blockwise forward, in place on out; with a tape, each block's input stays in its
// slot (the next slot a copy of it, updated, the last block's output out) and its products
// in the tape. The same products on the same values either way: a forward gives the same
// numbers whether or not it keeps a tape. U (matrix) is the blocks applied to the identity.
template <class T>
void Run<T>::forward_blocks(const T* F, const T* X, T* out, T* tape, const ForwardWs<T>& w) const {
  const index_t B = L.B, d = L.d, n = L.n;
  const Lanes ln = lanes();
  T* const last = ln.in_out ? out : w.x;
  auto S = [&](index_t s) {  // block s's input; s == nb: the output
    return tape && s < L.nb ? tape_input(ln, tape, s) : lane(ln, last);
  };
  if (L.op == Op::matrix) o.identity(B, d, n, S(0));
  else o.copy(B, d, n, strided(L.X, X), strided(S(0)));
  if (tape) zero_tape_gaps(tape);
  for (index_t s = 0; s < L.nb; ++s) {
    const index_t j = forward_block(s), wd = width(j);
    const M<const T> y = in(Y(F)).cols(j * L.m), A = in(S(s));
    const M<T> next = S(s + 1);
    const M<T> W1 = tape ? tape_product(ln, tape, s, 0) : products(ln, w.w1),
               W2 = tape ? tape_product(ln, tape, s, 1) : products(ln, w.w2);
    if (L.op == Op::matrix && s == 0 && !is_complex_v<T>)  // (complex: Y^H E conjugates)
      first_on_identity(ln.batch, wd, ln.cols, y, W1);
    else o.mm(ln.batch, wd, ln.cols, d, T(1), y, true, A, false, T(0), W1);
    o.tr(ln.batch, false, L.transpose, wd, ln.cols, T(1), in(Tf(F, j)), in(W1), W2);
    if (tape && wd < L.m)  // a short block's products, whole in the tape
      for (const M<T>& W : {W1, W2}) o.set(ln.batch, L.m - wd, ln.cols, T(0), T(0), W.rows(wd));
    if (next.p != A.p) o.copy(B, d, n, strided(A), strided(next));
    o.mm(ln.batch, d, ln.cols, wd, T(-1), y, false, in(W2), false, T(1), next);
  }
  if (last != out) o.copy(B, d, n, strided(in(lane(ln, last))), strided(L.out, out));
}

// W1 = Y^T E for the identity's first c columns E: Y's first c rows, transposed (U's first
// block step needs no product with the identity).
template <class T>
void Run<T>::first_on_identity(index_t batch, index_t wd, index_t c, M<const T> y, M<T> W1) const {
  o.copy(batch, wd, c, Strided<const T>{y.p, y.t ? 1 : y.ld, y.t ? y.ld : 1, y.bs}, strided(W1));
}

#define FASTH_INSTANTIATE(T)                                                     \
  template void Run<T>::forward_with(const T*, const T*, T*, T*, T*) const;      \
  template void Run<T>::forward_blocks(const T*, const T*, T*, T*,               \
      const ForwardWs<T>&) const;                                                \
  template void Run<T>::first_on_identity(index_t, index_t, index_t, M<const T>, \
      M<T>) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
