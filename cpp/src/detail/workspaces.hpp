// The workspaces, each carved by the same function that sizes it: with a null base an Arena
// only measures, which is how size_plan sizes every workspace from the run's own carving.
#pragma once

#include <algorithm>

#include "detail/views.hpp"

namespace fasth::detail {

// Consecutive aligned sub-buffers of a workspace.
template <class T>
struct Arena {
  T* base;
  std::size_t used = 0;
  T* take(std::size_t count) {
    T* r = base ? base + used : nullptr;
    used += round_up(count);
    return r;
  }
};

template <class T>
struct FactorsWs {
  T* merge;  // T-factor merges: W = G12 T2 for a level's pairs
  T* s;      // solve_t: S = striu(G) + I / 2 per block
};

// A CPU plan on the small path: the CPU backend takes every size the plan's rule gives it, so
// the plan keeps no T factors, Z, or the single block's other workspaces.
inline bool small_only(const Layout& L) {
  return L.small && L.single && L.device == Device::cpu;
}

// The small-d path's scratch (Backend::small_matrix), where the plan allows the path.
template <class T>
T* carve_small(const Layout& L, Arena<T>& a) {
  const index_t c = L.op == Op::matrix ? L.n : L.d;
  return L.small && L.k > 0 ? a.take(sz(small_workspace(L.d, L.k, c))) : nullptr;
}

template <class T>
FactorsWs<T> carve_factors(const Layout& L, Arena<T>& a) {
  // A merge level of q-wide pairs batches its largest level (entries, blocks or pairs) and
  // takes q x q per batched entry: at most max(entries, blocks) (m / 2)^2 at the top level,
  // and (m / 2q) q^2 <= m^2 / 4 below it, whatever the leaf width.
  FactorsWs<T> w{};
  if (L.k > 0 && L.m > 1 && !small_only(L)) {
    const std::size_t half = sz(L.m / 2);
    if (L.solve_t) w.s = a.take(sz(L.nb) * sz(L.m) * sz(L.m));  // (no merges: build_t)
    else w.merge = a.take(sz(std::max(L.bv, L.nb)) * half * half);
  }
  return w;
}

// Z = Y_E T^T (c x k) for U = E - Y T Y_E^T: the single block's forward on the identity.
template <class T>
struct UWs {
  T* z;
};

template <class T>
UWs<T> carve_u(index_t batch, index_t c, index_t ky, Arena<T>& a) {
  return {a.take(sz(batch) * sz(c) * sz(ky))};
}

template <class T>
struct ForwardWs {
  T *w1, *w2, *x;
  UWs<T> u;
};

// How the blockwise forward walks a row-major out (see Run::lanes): in place, its products
// transposed, except a shared V's batch and, on the CPU, fewer than kThinRows columns, which
// it walks column-major in the workspace: BLAS runs products with so few rows slowly
// (docs/benchmarks.md).
constexpr index_t kThinRows = 16;
inline bool out_row_major(const Layout& L) { return view(L.out, static_cast<float*>(nullptr)).t; }
// A complex out stored row-major, too (see view).
inline bool walk_in_workspace(const Layout& L) {
  return out_row_major(L) && (L.complex || (L.shared && L.B > 1) ||
                              (L.device == Device::cpu && L.n < kThinRows));
}

// `taped`: the forward that fills a tape keeps the blocks' products there.
template <class T>
ForwardWs<T> carve_forward(const Layout& L, Arena<T>& a, bool taped) {
  ForwardWs<T> w{};
  if (L.op == Op::matrix && L.single) {
    if (!small_only(L)) w.u = carve_u(L.B, L.n, L.ky, a);
    if (L.complex && out_row_major(L)) w.x = a.take(sz(L.B) * sz(L.d) * sz(L.n));  // U, then out
  } else {
    // X where BLAS cannot address it (single); the walk where it does not end in out
    // (blockwise, see Run::lanes); the blocks' products where no tape holds them.
    bool addressable;
    view(L.X, static_cast<T*>(nullptr), addressable);
    if (L.single ? !addressable : walk_in_workspace(L)) w.x = a.take(sz(L.B) * sz(L.d) * sz(L.n));
    if (!L.single && !taped) {
      w.w1 = a.take(sz(L.B) * sz(L.m) * sz(L.n));
      w.w2 = a.take(sz(L.B) * sz(L.m) * sz(L.n));
    }
  }
  return w;
}

// lapack_t_backward's products (m x m each, `batch` entries).
template <class T>
struct TBackWs {
  T *lo, *kk, *p1, *p2, *e, *ms;
};

template <class T>
TBackWs<T> carve_tback(index_t batch, index_t m, Arena<T>& a) {
  TBackWs<T> w;
  const std::size_t mm = sz(batch) * sz(m) * sz(m);
  w.lo = a.take(mm), w.kk = a.take(mm), w.p1 = a.take(mm), w.p2 = a.take(mm);
  w.e = a.take(mm), w.ms = a.take(mm);
  return w;
}

// The single block's backward (matrix, or the materialised apply through dL/dU).
template <class T>
struct MatrixWs {
  T *g, *dy;        // dL/dU where BLAS cannot address it; dL/dY
  T *a, *c;         // householder: A = Y T, C (k x k)
  T *gy, *h, *gty;  // lapack: G Y_E, dT, G^T Y
  TBackWs<T> t;     // lapack: the path through T
  T* small;         // the small-d path's scratch
};

template <class T>
MatrixWs<T> carve_matrix_backward(const Layout& L, index_t c, Arena<T>& a) {
  MatrixWs<T> w{};
  w.small = carve_small(L, a);
  if (small_only(L)) return w;
  const std::size_t bv = sz(L.bv), d = sz(L.d), k = sz(L.k), cc = sz(c), ky = sz(L.ky);
  w.g = a.take(bv * d * cc);  // dL/dU, where BLAS cannot address it
  w.dy = a.take(bv * d * ky);
  if (L.kind == Kind::householder) {
    w.a = a.take(bv * d * ky), w.c = a.take(bv * k * k);
  } else {
    w.gy = a.take(bv * d * ky), w.h = a.take(bv * k * k), w.gty = a.take(bv * cc * k);
    w.t = carve_tback(L.bv, L.k, a);
  }
  return w;
}

template <class T>
struct BackwardWs {
  T *ag, *ytag, *qdq, *s, *dy;     // householder walk: [A | G], Y^T [A | G], [Q0 | D | Q], S
  T *x, *g, *w1, *du;              // materialised apply: X or G copies, W1 = G out^T, dU
  MatrixWs<T> mat;
  T *ins, *w, *q, *dq, *dw, *dt;   // lapack: the blocks' inputs, per-block products
  TBackWs<T> tb;
};

// Entries and columns of the walk over a batch: a shared V takes the batch as one wide
// problem (entries side by side), with no reduction over the batch for dV.
struct Walk {
  index_t batch, n;
};
inline Walk walk_of(const Layout& L) { return L.shared ? Walk{1, L.B * L.n} : Walk{L.B, L.n}; }

// `taped`: the householder backward from a tape: G, D = Y^T G and E = op(T)^T D per block,
// dT and a product with it for every block (T's path is taken for all blocks at the end).
template <class T>
BackwardWs<T> carve_backward(const Layout& L, Arena<T>& a, bool taped) {
  BackwardWs<T> w{};
  const std::size_t B = sz(L.B), d = sz(L.d), n = sz(L.n), m = sz(L.m), bv = sz(L.bv);
  const Walk wk = walk_of(L);
  const std::size_t wb = sz(wk.batch), wn = sz(wk.n);
  if (taped) {
    w.g = a.take(B * d * n);
    w.w = a.take(wb * m * wn), w.q = a.take(wb * m * wn);
    w.dt = a.take(bv * sz(L.nb) * m * m), w.dq = a.take(bv * sz(L.nb) * m * m);
    w.dy = a.take(bv * d * sz(L.ky));
  } else if (L.op == Op::matrix && L.single) {
    w.mat = carve_matrix_backward(L, L.n, a);
  } else if (L.kind == Kind::lapack) {
    w.ins = a.take(sz(L.nb) * B * d * n);
    w.g = a.take(B * d * n);
    w.w = a.take(wb * m * wn), w.q = a.take(wb * m * wn);
    w.dq = a.take(wb * m * wn), w.dw = a.take(wb * m * wn);
    w.dt = a.take(wb * m * m);
    w.dy = a.take(bv * d * sz(L.ky));
    w.tb = carve_tback(wk.batch, L.m, a);
  } else if (L.single) {
    w.g = a.take(B * d * n), w.x = a.take(B * d * n);
    w.w1 = a.take(bv * d * d), w.du = a.take(bv * d * d);
    w.mat = carve_matrix_backward(L, L.d, a);
  } else {
    w.ag = a.take(2 * B * d * n);
    w.ytag = a.take(wb * m * 2 * wn), w.qdq = a.take(wb * m * 3 * wn), w.s = a.take(wb * m * m);
    w.dy = a.take(bv * d * sz(L.ky));
  }
  return w;
}

// The tangent (forward mode): [A | dA] walked as the householder backward walks [A | G],
// its products [W | Z] and [Q | Zt], dY, and per block m x m scratch for dT (tangent_t);
// where the single block may take the small-d path (whose factors hold no T), factors with
// T (with_t) and build_t's workspace.
template <class T>
struct TangentWs {
  T *ad, *wz, *qz, *dy;
  T *mt, *lo, *p, *dt, *dd, *k1, *k2;
  T *f, *fws;
};

// The layout of the factors that a small-d plan's tangent builds for itself: the plan's own
// off the small path, its factors cut after the T and Gram blocks (Y and the norms or taus,
// as the small path leaves them, then T and Gram).
inline Layout with_t(const Layout& L) {
  Layout t = L;
  t.small = false;
  t.factors_stride = L.f_blocks + sz(L.nb) * 2 * sz(L.m) * sz(L.m);
  return t;
}

template <class T>
TangentWs<T> carve_tangent(const Layout& L, Arena<T>& a) {
  TangentWs<T> w{};
  const std::size_t B = sz(L.B), d = sz(L.d), n = sz(L.n), m = sz(L.m), bv = sz(L.bv);
  const Walk wk = walk_of(L);
  const std::size_t wb = sz(wk.batch), wn = sz(wk.n), q = bv * m * m;
  w.ad = a.take(2 * B * d * n);
  w.wz = a.take(wb * m * 2 * wn), w.qz = a.take(wb * m * 2 * wn);
  w.dy = a.take(bv * d * sz(L.ky));
  w.mt = a.take(q), w.lo = a.take(q), w.p = a.take(q), w.dt = a.take(q), w.dd = a.take(q);
  if (L.kind == Kind::lapack) w.k1 = a.take(q), w.k2 = a.take(q);
  if (L.small && L.single && L.k > 0) {
    const Layout t = with_t(L);
    w.f = a.take(bv * t.factors_stride);
    w.fws = a.base ? a.base + a.used : nullptr;
    carve_factors<T>(t, a);
  }
  return w;
}

}  // namespace fasth::detail
