// The factors of V: its unit reflectors Y, their norms (or LAPACK's taus), and per block
// its Gram matrix and T factor; and U = E - Y T Y_E^T from the single block.

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {
namespace {
index_t leaf_width(index_t m, index_t most) {  // the widest divisor of m that larft takes
  if (m <= most) return m;
  for (index_t h = most; h > 1; --h)
    if (m % h == 0) return h;
  return 1;
}
}  // namespace

// `ws` past its head (L.y_head elements, where bind_y may put Y).
template <class T>
void Run<T>::factors(const T* V, const T* tau, T* F, T* ws) const {
  if (L.bv == 0 || L.k == 0) return;
  const index_t d = L.d, k = L.k, m = L.m, bv = L.bv;
  if (small()) return small_factors(V, tau, F, nullptr, ws);
  if (L.ydirect) {  // the norms alone, then V as it is where they allow
    o.normalize(bv, d, k, strided(L.V, V), M<T>{nullptr, 1, false, 0}, aux(F), fs);
    bind_y(V, F, ws - L.y_head, true);
    o.set(bv, 1, 1, T(0), normalized_ ? T(1) : T(0), M<T>{F, 1, false, fs});
  } else if (L.kind == Kind::householder) {
    o.normalize(bv, d, k, strided(L.V, V), Y(F), aux(F), fs);
    zero_pad(bv, d, Y(F));
  } else {
    o.lower(bv, d, k, strided(L.V, V), strided(Y(F)), T(1));
    zero_pad(bv, d, Y(F));
    o.copy(bv, k, 1, strided(L.tau, tau), Strided<T>{aux(F), 1, k, fs});
    if (L.nb * m > k)  // taus of a short last block's padding
      o.set(bv, L.nb * m - k, 1, T(0), T(0), M<T>{aux(F) + k, L.nb * m - k, false, fs});
  }
  grams_and_t(F, ws);
  if (z_kept()) {  // Z = Y_E T^T, for U = E - Y Z^T and the householder backward
    o.tr(bv, true, true, k, cols_u(), T(1), in(Tf(F, 0)), in(Y(F)), Zf(F));
    zero_pad(bv, cols_u(), Zf(F));
  }
  if (L.op == Op::apply && L.single) build_u(F, Uf(F), bv, ws);
  if (L.factors_stride > L.f_u && L.op == Op::matrix)  // the small-d path's U, unused here
    o.set(bv, static_cast<index_t>(L.factors_stride - L.f_u), 1, T(0), T(0),
          M<T>{F + L.f_u, static_cast<index_t>(L.factors_stride - L.f_u), false, fs});
}

// Each block's Gram matrix Y_j^T Y_j (the full blocks, then the short last block, zero
// padded: larft then leaves its padding zero) and T, from the Y that F holds or binds.
template <class T>
void Run<T>::grams_and_t(T* F, T* ws) const {
  const index_t d = L.d, k = L.k, m = L.m, bv = L.bv;
  const index_t full = k / m, r = k - full * m, m2 = 2 * m * m;
  const M<const T> y = in(Y(F));
  if (full > 0) {
    each(Level{bv, y.bs, fs}, Level{full, y.cols(m).p - y.p, m2}, Level{1, 0, 0},
         [&](index_t oy, index_t og, index_t count, index_t sy, index_t sg) {
           o.gram(count, m, d, M<const T>{y.p + oy, y.ld, y.t, sy},
                  M<T>{Gf(F, 0).p + og, m, false, sg});
         });
  }
  if (r > 0) {
    o.set(bv, m, m, T(0), T(0), Gf(F, full));
    o.gram(bv, r, d, y.cols(full * m), Gf(F, full));
  }
  build_t(F, ws);
}

// The small-d path: Y, norms (or taus) and U (into the factors' U, and into `out` when
// given) in one call; the T factors stay unbuilt (zero). `ws` past its head.
template <class T>
void Run<T>::small_factors(const T* V, const T* tau, T* F, T* out, T* ws) const {
  const index_t bv = L.bv, c = cols_u();
  const M<T> U = out ? view(L.out, out) : Uf(F);
  Arena<T> arena{ws};
  SmallTaus<T> st;
  if (L.kind == Kind::lapack)
    st.tau = tau, st.tau_rs = L.tau.rs, st.tau_bs = L.tau.bs, st.r = Rf(F), st.rs = fs;
  count_op(BackendOp::small_matrix);
  o.be.small_matrix(bv, L.d, L.k, c, strided(L.V, V), strided(U), F, fs, aux(F), fs,
                    out ? Uf(F).p : nullptr, fs, st, carve_small(L, arena));
  const index_t unused = static_cast<index_t>(L.f_u - L.f_blocks);  // T factors and Z
  o.set(bv, unused, 1, T(0), T(0), M<T>{F + L.f_blocks, unused, false, fs});
}

// The T factors of every block from the Gram matrices and taus in F: by the backend's
// larft, or for blocks wider than it takes, larft on leaves merged level by level with
// T[a:b, b:c] = -T[a:b, a:b] G[a:b, b:c] T[b:c, b:c], the block form of T = S^{-1} for the
// upper triangular S = striu(G) + diag(1 / tau) (docs/math.md).
template <class T>
void Run<T>::build_t(T* F, T* ws) const {
  const index_t m = L.m, nb = L.nb, bv = L.bv;
  const index_t h = leaf_width(m, o.be.larft_max()), leaves = m / h, m2 = 2 * m * m;
  const T* tau = L.kind == Kind::lapack ? aux(F) : nullptr;
  T* t0 = Tf(F, 0).p;
  const T* g0 = t0 + m * m;
  Arena<T> arena{ws};
  const FactorsWs<T> w = carve_factors(L, arena);
  if (L.solve_t && h < m) {
    // T = S^-1 for the upper triangular S = striu(G) + I / 2 (tau_i = 2: Y's columns are
    // unit, or zero, and a zero column's row and column of G are zero off the diagonal, so
    // T's are too; its T_ii = 2 multiplies zeros): one triangular solve on the identity.
    const M<T> S{w.s, m, false, m * m}, Tb{t0, m, false, m2};
    o.copy(nb, m, m, Strided<const T>{g0, 1, m, m2}, strided(S));
    o.set(nb, 1, m, T(0.5), T(0.5), M<T>{S.p, m + 1, false, S.bs});  // its diagonal
    o.identity(nb, m, m, Tb);
    return o.solve(nb, m, m, in(S), Tb);
  }
  if (h < m)  // the leaves and merges write the upper triangle; the rest stays zero
    each(Level{bv, fs, 0}, Level{nb, m2, 0}, Level{1, 0, 0},
         [&](index_t ot, index_t, index_t count, index_t st, index_t) {
           o.set(count, m, m, T(0), T(0), M<T>{t0 + ot, m, false, st});
         });
  each(Level{bv, fs, fs}, Level{nb, m2, m}, Level{leaves, h * (m + 1), h},
       [&](index_t ot, index_t otau, index_t count, index_t st, index_t stau) {
         o.larft(count, h, g0 + ot, m, st, tau ? tau + otau : nullptr, stau, t0 + ot, m, st);
       });
  for (index_t q = h; q < m; q *= 2) {  // pairs of q-wide groups, then the short tail pair
    const index_t pairs = m / (2 * q), tail = m - pairs * 2 * q;
    auto merge = [&](index_t a, index_t np, index_t p, index_t qq) {
      if (np == 0 || qq <= 0) return;
      const index_t b = a + p;
      each(Level{bv, fs, 0}, Level{nb, m2, 0}, Level{np, 2 * q * (m + 1), 0},
           [&](index_t ot, index_t, index_t count, index_t st, index_t) {
             T* t = t0 + ot;
             const T* g = g0 + ot;
             const M<T> W{w.merge, std::max<index_t>(p, 1), false, p * qq};
             o.tr(count, true, false, qq, p, T(1), M<const T>{t + b + b * m, m, false, st},
                  M<const T>{g + a + b * m, m, false, st}, W);
             o.tr(count, false, false, p, qq, T(-1), M<const T>{t + a + a * m, m, false, st},
                  in(W), M<T>{t + a + b * m, m, false, st});
           });
    };
    merge(0, pairs, q, q);
    if (tail > q) merge(pairs * 2 * q, 1, q, tail - q);
  }
}

// U (d x c, `batch` entries) = E - Y T Y_E^T, E = I[:, :c], from the single block.
template <class T>
void Run<T>::build_u(const T* F, M<T> U, index_t batch, T* ws) const {
  const index_t d = L.d, k = L.k, c = L.op == Op::matrix ? L.n : d;
  if (batch == 0 || d == 0 || c == 0) return;
  if (k == 0) return o.identity(batch, d, c, U);
  if (small())  // U is in the factors
    return o.copy(batch, d, c, strided(in(Uf(F))), strided(U));
  Arena<T> arena{ws};
  const UWs<T> w = carve_u<T>(batch, c, L.ky, arena);
  M<const T> Z = in(Zf(F));  // Z = Y_E T^T, kept in the factors (householder)
  if (!z_kept()) {
    const M<T> z = like_y(w.z, c, c * L.ky);
    o.tr(batch, true, true, k, c, T(1), in(Tf(F, 0)), in(Y(F)), z);
    Z = in(z);
  }
  o.identity(batch, d, c, U);
  o.mm(batch, d, c, k, T(-1), in(Y(F)), false, Z, true, T(1), U);
}

#define FASTH_INSTANTIATE(T)                                        \
  template void Run<T>::factors(const T*, const T*, T*, T*) const;  \
  template void Run<T>::small_factors(const T*, const T*, T*, T*, T*) const;      \
  template void Run<T>::grams_and_t(T*, T*) const;                  \
  template void Run<T>::build_t(T*, T*) const;                      \
  template void Run<T>::build_u(const T*, M<T>, index_t, T*) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
