// The FastH algorithm, written once over the Backend interface (docs/math.md derives it, in
// the names used here): the reflectors' unit vectors Y and the T factors of their compact-WY
// blocks P_j = I - Y_j T_j Y_j^T, built once per V (the factors); a forward of k/m block
// steps; a householder backward that recovers each block's input from its output (P_j is
// orthogonal), so that only the output is kept; a LAPACK-reflector backward (any tau: P_j
// need not be orthogonal) that keeps the block inputs; and U as one block with the full T,
// U = I - Y T Y^T, for matrix() and the materialised apply.
//
// Each block step multiplies by R = T (apply) or R = T^T (transpose: P_j^T = I - Y T^T Y^T);
// the blocks are walked in the order that the product takes them.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "algorithm.hpp"

namespace fasth {

// ---------------------------------------------------------------------------------------
// Call counts

namespace {
std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_counts[static_cast<int>(Call::count_)] = {};

void counted(Call c) {
  if (g_counting.load(std::memory_order_relaxed))
    g_counts[static_cast<int>(c)].fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

const char* call_name(Call c) {
  static const char* const names[] = {"gemm", "trmm", "trsm", "gram", "copy", "set", "larft",
                                      "mirror_upper", "normalize", "normalize_backward",
                                      "lower", "small_matrix", "small_matrix_backward"};
  const int i = static_cast<int>(c);
  return i >= 0 && i < static_cast<int>(Call::count_) ? names[i] : "?";
}
void count_calls(bool on) { g_counting.store(on); }
void reset_call_counts() {
  for (auto& c : g_counts) c.store(0);
}
std::int64_t call_count(Call c) { return g_counts[static_cast<int>(c)].load(); }

namespace detail {
namespace {

constexpr std::size_t kAlign = 16;  // elements: 64-byte aligned sub-buffers for float
std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
std::size_t sz(index_t n) { return static_cast<std::size_t>(std::max<index_t>(n, 0)); }

// Consecutive aligned sub-buffers of a workspace; with a null base it only measures, which
// is how the plan sizes each workspace from the very code that carves it.
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

// A logical matrix over column-major storage: t ? S^T : S, S with leading dimension ld;
// batch entries bs apart (0: one matrix shared by the batch).
template <class T>
struct M {
  T* p;
  index_t ld;
  bool t;
  index_t bs;
  M cols(index_t c) const { return {p + c * (t ? 1 : ld), ld, t, bs}; }
  M rows(index_t r) const { return {p + r * (t ? ld : 1), ld, t, bs}; }
};

template <class T>
M<const T> in(M<T> v) {
  return {v.p, v.ld, v.t, v.bs};
}

template <class T>
Strided<T> strided(M<T> v) {
  return v.t ? Strided<T>{v.p, v.ld, 1, v.bs} : Strided<T>{v.p, 1, v.ld, v.bs};
}

template <class T>
Strided<T> strided(const Mat3& m, T* p) {
  return {p, m.rs, m.cs, m.bs};
}

template <class T>
M<T> buffer(T* p, index_t rows, index_t bs) {  // contiguous column-major, rows x anything
  return {p, std::max<index_t>(rows, 1), false, bs};
}

// The BLAS view of a strided batch of matrices, when there is one (ok == false otherwise).
template <class T>
M<T> view(const Mat3& m, T* p, bool& ok) {
  const index_t r = std::max<index_t>(m.rows, 1), c = std::max<index_t>(m.cols, 1);
  ok = true;
  if (m.rows == 0 || m.cols == 0) return {p, r, false, m.bs};
  if ((m.rs == 1 || m.rows <= 1) && (m.cols <= 1 || m.cs >= r))
    return {p, m.cols <= 1 ? r : m.cs, false, m.bs};
  if ((m.cs == 1 || m.cols <= 1) && (m.rows <= 1 || m.rs >= c))
    return {p, m.rows <= 1 ? c : m.rs, true, m.bs};
  ok = false;
  return {p, r, false, m.bs};
}

template <class T>
M<T> view(const Mat3& m, T* p) {
  bool ok;
  M<T> v = view(m, p, ok);
  if (!ok) throw std::logic_error("fasth: an output the plan laid out is not BLAS-addressable");
  return v;
}

index_t leaf_width(index_t m, index_t most) {  // the widest divisor of m that larft takes
  if (m <= most) return m;
  for (index_t h = most; h > 1; --h)
    if (m % h == 0) return h;
  return 1;
}

// One level of a batch of up to three levels, for the operands of one call: n entries,
// each operand's pointer stepping by its own stride.
struct Level {
  index_t n;
  index_t s0, s1;
};

// Calls f(off0, off1, count, stride0, stride1) for every entry of the levels, with the
// largest level as the batch of each call and the others looped.
template <class F>
void each(Level a, Level b, Level c, F&& f) {
  Level lv[3] = {a, b, c};
  std::sort(lv, lv + 3, [](const Level& x, const Level& y) { return x.n > y.n; });
  if (lv[0].n <= 0 || lv[1].n <= 0 || lv[2].n <= 0) return;
  for (index_t i = 0; i < lv[1].n; ++i)
    for (index_t j = 0; j < lv[2].n; ++j)
      f(i * lv[1].s0 + j * lv[2].s0, i * lv[1].s1 + j * lv[2].s1, lv[0].n, lv[0].s0, lv[0].s1);
}

// ---------------------------------------------------------------------------------------
// The backend's operations on logical matrices, each counted.

template <class T>
struct Ops {
  const Backend<T>& be;

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
    counted(Call::gemm);
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
    if (c.t) right = !right, trans = !trans;
    counted(Call::trmm);
    be.trmm(right, trans, w, n, alpha, r.p, r.ld, r.bs, b.p, b.ld, b.bs, c.p, c.ld, c.bs, batch);
  }

  void solve(index_t batch, index_t w, index_t n, M<const T> r, M<T> c) const {  // C = R^-1 C
    if (w == 0 || n == 0 || batch == 0) return;
    counted(Call::trsm);
    be.trsm(w, n, T(1), r.p, r.ld, r.bs, c.p, c.ld, c.bs, batch);
  }

  void gram(index_t batch, index_t w, index_t d, M<const T> y, M<T> c) const {
    if (w == 0 || batch == 0) return;
    if (d == 0) return set(batch, w, w, T(0), T(0), c);
    counted(Call::gram);
    be.gram(y.t, w, d, y.p, y.ld, y.bs, c.p, c.ld, c.bs, batch);
  }

  void copy(index_t batch, index_t rows, index_t cols, Strided<const T> a, Strided<T> b) const {
    if (rows == 0 || cols == 0 || batch == 0) return;
    counted(Call::copy);
    be.copy(rows, cols, a, b, batch);
  }

  void set(index_t batch, index_t rows, index_t cols, T offdiag, T diag, M<T> a) const {
    if (rows == 0 || cols == 0 || batch == 0) return;
    counted(Call::set);
    if (a.t) std::swap(rows, cols);
    be.set(rows, cols, offdiag, diag, a.p, a.ld, a.bs, batch);
  }

  void larft(index_t count, index_t m, const T* g, index_t ldg, index_t sg, const T* tau,
             index_t stau, T* t, index_t ldt, index_t st) const {
    if (count == 0 || m == 0) return;
    counted(Call::larft);
    be.larft(count, m, g, ldg, sg, tau, stau, t, ldt, st);
  }

  void mirror(index_t batch, index_t m, M<T> a) const {
    if (m <= 1 || batch == 0) return;
    counted(Call::mirror_upper);
    be.mirror_upper(m, a.p, a.ld, a.bs, batch);
  }

  void normalize(index_t batch, index_t d, index_t k, Strided<const T> v, M<T> y, T* norms,
                 index_t ns) const {
    if (batch == 0 || k == 0) return;
    counted(Call::normalize);
    be.normalize(batch, d, k, v, strided(y), norms, ns);
  }

  void normalize_backward(index_t batch, index_t d, index_t k, M<const T> y, const T* norms,
                          index_t ns, M<const T> dy, Strided<T> dv) const {
    if (batch == 0 || k == 0 || d == 0) return;
    counted(Call::normalize_backward);
    be.normalize_backward(batch, d, k, strided(y), norms, ns, strided(dy), dv);
  }

  void lower(index_t batch, index_t d, index_t k, Strided<const T> a, Strided<T> b,
             T diag) const {
    if (batch == 0 || k == 0 || d == 0) return;
    counted(Call::lower);
    be.lower(batch, d, k, a, b, diag);
  }

  void identity(index_t batch, index_t rows, index_t cols, M<T> a) const {
    set(batch, rows, cols, T(0), T(1), a);
  }
};

// ---------------------------------------------------------------------------------------
// The workspaces, carved by the same functions that size them.

template <class T>
struct FactorsWs {
  T* merge;  // T-factor merges: W = G12 T2 for a level's pairs
  T* s;      // solve_t: S = striu(G) + I / 2 per block
};

template <class T>
FactorsWs<T> carve_factors(const Layout& L, Arena<T>& a) {
  // A merge level of q-wide pairs batches its largest level (entries, blocks or pairs) and
  // takes q x q per batched entry: at most max(entries, blocks) (m / 2)^2 at the top level,
  // and (m / 2q) q^2 <= m^2 / 4 below it, whatever the leaf width.
  FactorsWs<T> w{};
  if (L.k > 0 && L.m > 1) {
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

// How the blockwise forward walks a row-major out (see Run::Lanes): in place, its products
// transposed, except a shared V's batch and, on the CPU, fewer than kThinRows columns, which
// it walks column-major in the workspace. MKL (one thread, d = 1024, k = 1024, blocks of 16)
// took 6.9 / 7.1 / 4.3 ms on n = 4 / 8 / 12 columns walked in place, 2.5 / 3.3 / 3.0 ms
// column-major: its products with so few rows run slowly. From 16 on, the two are even.
constexpr index_t kThinRows = 16;
bool out_row_major(const Layout& L) { return view(L.out, static_cast<float*>(nullptr)).t; }
bool walk_in_workspace(const Layout& L) {
  return out_row_major(L) && ((L.shared && L.B > 1) || (L.device == Device::cpu && L.n < kThinRows));
}

// `taped`: the forward that fills a tape keeps the blocks' products there.
template <class T>
ForwardWs<T> carve_forward(const Layout& L, Arena<T>& a, bool taped) {
  ForwardWs<T> w{};
  if (L.op == Op::matrix && L.single) {
    w.u = carve_u(L.B, L.n, L.ky, a);
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

// The single block's backward (matrix, or the materialised apply through dL/dU).
template <class T>
struct MatrixWs {
  T *g, *a, *c, *dy;                 // householder: A = Y T, C (k x k)
  T *gy, *h, *gty, *lo, *kk, *p1, *p2, *e, *ms, *dm;  // lapack: see lapack_t_backward
};

template <class T>
struct TBackWs {
  T *lo, *kk, *p1, *p2, *e, *ms, *dm;
};

template <class T>
TBackWs<T> carve_tback(index_t batch, index_t m, Arena<T>& a) {
  TBackWs<T> w;
  const std::size_t mm = sz(batch) * sz(m) * sz(m);
  w.lo = a.take(mm), w.kk = a.take(mm), w.p1 = a.take(mm), w.p2 = a.take(mm);
  w.e = a.take(mm), w.ms = a.take(mm), w.dm = a.take(mm);
  return w;
}

template <class T>
MatrixWs<T> carve_matrix_backward(const Layout& L, index_t c, Arena<T>& a) {
  MatrixWs<T> w{};
  const std::size_t bv = sz(L.bv), d = sz(L.d), k = sz(L.k), cc = sz(c), ky = sz(L.ky);
  w.g = a.take(bv * d * cc);  // dL/dU, where BLAS cannot address it
  w.dy = a.take(bv * d * ky);
  if (L.kind == Kind::householder) {
    w.a = a.take(bv * d * ky), w.c = a.take(bv * k * k);
  } else {
    w.gy = a.take(bv * d * ky), w.h = a.take(bv * k * k), w.gty = a.take(bv * cc * k);
    const TBackWs<T> t = carve_tback(L.bv, L.k, a);
    w.lo = t.lo, w.kk = t.kk, w.p1 = t.p1, w.p2 = t.p2, w.e = t.e, w.ms = t.ms, w.dm = t.dm;
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
Walk walk_of(const Layout& L) { return L.shared ? Walk{1, L.B * L.n} : Walk{L.B, L.n}; }

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

// ---------------------------------------------------------------------------------------
// The runs

template <class T>
struct Run {
  const Layout& L;
  Ops<T> o;
  index_t fs;  // elements between V entries' factors (at least L.fstride)
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
  static bool squarable(T norm) {
    constexpr T lo = sizeof(T) == 4 ? T(0x1p-50) : T(0x1p-400);
    constexpr T hi = sizeof(T) == 4 ? T(0x1p+50) : T(0x1p+400);
    return norm == T(0) || (norm >= lo && norm <= hi);
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
    return L.kind == Kind::householder && L.single && !L.yt && o.be.small_path(L.d, L.k);
  }

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

  // ---- factors

  // `ws` past its head (L.ws_y elements, where bind_y may put Y).
  void factors(const T* V, const T* tau, T* F, T* ws) const {
    if (L.bv == 0 || L.k == 0) return;
    const index_t d = L.d, k = L.k, m = L.m, bv = L.bv;
    if (small()) return small_factors(V, F, nullptr);
    if (L.ydirect) {  // the norms alone, then V as it is where they allow
      o.normalize(bv, d, k, strided(L.V, V), M<T>{nullptr, 1, false, 0}, aux(F), fs);
      bind_y(V, F, ws - L.ws_y, true);
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
    // Gram matrices Y_j^T Y_j of the full blocks, then of the short last block (zero
    // padded: larft then leaves its padding zero).
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
    if (z_kept()) {  // Z = Y_E T^T, for U = E - Y Z^T and the householder backward
      o.tr(bv, true, true, k, cols_u(), T(1), in(Tf(F, 0)), in(Y(F)), Zf(F));
      zero_pad(bv, cols_u(), Zf(F));
    }
    if (L.op == Op::apply && L.single) build_u(F, Uf(F), bv, ws);
    if (L.fstride > L.f_u && L.op == Op::matrix)  // the small-d path's U, unused here
      o.set(bv, static_cast<index_t>(L.fstride - L.f_u), 1, T(0), T(0),
            M<T>{F + L.f_u, static_cast<index_t>(L.fstride - L.f_u), false, fs});
  }

  // The small-d path: Y, norms and U (into the factors' U, and into `out` when given) in one
  // launch; the T factors stay unbuilt (zero).
  void small_factors(const T* V, T* F, T* out) const {
    const index_t bv = L.bv, m2 = 2 * L.m * L.m;
    const index_t c = L.op == Op::matrix ? L.n : L.d;
    const M<T> U = out ? view(L.out, out) : Uf(F);
    counted(Call::small_matrix);
    o.be.small_matrix(bv, L.d, L.k, c, strided(L.V, V), strided(U), F, fs, aux(F), fs,
                      out ? Uf(F).p : nullptr, fs);
    const index_t unused = static_cast<index_t>(L.f_u - L.f_blocks);  // T factors and Z
    o.set(bv, unused, 1, T(0), T(0), M<T>{F + L.f_blocks, unused, false, fs});
    (void)m2;
  }

  // The T factors of every block from the Gram matrices and taus in F: by the backend's
  // larft, or for blocks wider than it takes, larft on leaves merged level by level with
  // T[a:b, b:c] = -T[a:b, a:b] G[a:b, b:c] T[b:c, b:c], the block form of T = S^{-1} for the
  // upper triangular S = striu(G) + diag(1 / tau) (docs/math.md).
  void build_t(T* F, T* ws) const {
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
  void build_u(const T* F, M<T> U, index_t batch, T* ws) const {
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

  // ---- forward

  void forward_with(const T* F, const T* X, T* out, T* ws, T* tape) const {
    const index_t B = L.B, d = L.d, n = L.n;
    if (B == 0 || d == 0 || n == 0) return;
    const bool taped = tape && L.tape;
    Arena<T> arena{ws};
    const ForwardWs<T> w = carve_forward(L, arena, taped);
    const M<T> o3 = view(L.out, out);
    if (L.op == Op::matrix && L.single) return build_u(F, o3, B, ws);
    if (L.single) {
      bool ok;
      M<const T> x = view(L.X, X, ok);
      if (!ok) {
        o.copy(B, d, n, strided(L.X, X), Strided<T>{w.x, 1, d, d * n});
        x = M<const T>{w.x, d, false, d * n};
      }
      return o.mm(B, d, n, d, T(1), in(Uf(F)), L.transpose, x, false, T(0), o3);
    }
    forward_blocks(F, X, out, taped ? tape : nullptr, w);
  }

  // How the blockwise forward, and the backward from its tape, walk the matrices, entries
  // d n apart: a shared V's batch as one wide column-major problem (one product per block
  // step, not one per entry; in the workspace where out is row-major), else in out's own
  // orientation, in place (a row-major out, as a features-last activation's transpose is,
  // keeps its block products transposed, so that every gemm is NN or NT; MKL took up to 8x
  // longer on TT products at m <= 8), except a CPU out of few rows (walk_in_workspace).
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

  // The tape of a forward (see Layout::tape), in aligned parts: block s's input S_s (laid
  // out as out is), W1_s = Y^T S_s and W2_s = op(T) W1_s.
  M<T> tape_input(const Lanes& ln, T* tape, index_t s) const {
    return lane(ln, tape + s * static_cast<index_t>(tape_parts(L).input));
  }
  M<T> tape_product(const Lanes& ln, T* tape, index_t s, int which) const {
    const TapeParts tp = tape_parts(L);
    return products(ln, tape + L.nb * tp.input + (2 * s + which) * tp.product);
  }

  // The blockwise forward, in place on out; with a tape, each block's input stays in its
  // slot (the next slot a copy of it, updated, the last block's output out) and its products
  // in the tape. The same products on the same values either way: a forward gives the same
  // numbers whether or not it keeps a tape. U (matrix) is the blocks applied to the identity.
  void forward_blocks(const T* F, const T* X, T* out, T* tape, const ForwardWs<T>& w) const {
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
      if (L.op == Op::matrix && s == 0) first_on_identity(ln.batch, wd, ln.cols, y, W1);
      else o.mm(ln.batch, wd, ln.cols, d, T(1), y, true, A, false, T(0), W1);
      o.tr(ln.batch, false, L.transpose, wd, ln.cols, T(1), in(Tf(F, j)), in(W1), W2);
      if (tape && wd < L.m)  // a short block's products, whole in the tape
        for (const M<T>& W : {W1, W2}) o.set(ln.batch, L.m - wd, ln.cols, T(0), T(0), W.rows(wd));
      if (next.p != A.p) o.copy(B, d, n, strided(A), strided(next));
      o.mm(ln.batch, d, ln.cols, wd, T(-1), y, false, in(W2), false, T(1), next);
    }
    if (last != out) o.copy(B, d, n, strided(in(lane(ln, last))), strided(L.out, out));
  }

  // The gaps that align a tape's parts, zeroed: a tape is an output (torch.compile's checks
  // compare it whole), every element written.
  void zero_tape_gaps(T* tape) const {
    const TapeParts tp = tape_parts(L);
    const index_t in = static_cast<index_t>(tp.input_used);
    const index_t pr = static_cast<index_t>(tp.product_used);
    const index_t pi = static_cast<index_t>(tp.input), pp = static_cast<index_t>(tp.product);
    if (pi > in) o.set(1, pi - in, L.nb, T(0), T(0), M<T>{tape + in, pi, false, 0});
    if (pp > pr) o.set(1, pp - pr, 2 * L.nb, T(0), T(0), M<T>{tape + L.nb * pi + pr, pp, false, 0});
  }

  // W1 = Y^T E for the identity's first c columns E: Y's first c rows, transposed (U's first
  // block step needs no product with the identity).
  void first_on_identity(index_t batch, index_t wd, index_t c, M<const T> y, M<T> W1) const {
    o.copy(batch, wd, c, Strided<const T>{y.p, y.t ? 1 : y.ld, y.t ? y.ld : 1, y.bs}, strided(W1));
  }

  // ---- backward

  void backward(const Backward<T>& a) const {
    const index_t B = L.B, d = L.d, n = L.n, k = L.k;
    const bool lapack = L.kind == Kind::lapack;
    if (L.bv > 0 && L.dV.cols > 0 && d > 0)  // dV of columns that no reflector uses, and of an empty problem
      if (lapack || B == 0 || n == 0 || k == 0)
        o.set(L.bv, d, L.dV.cols, T(0), T(0), view(L.dV, a.dV));
    if (lapack && L.bv > 0 && k > 0 && (B == 0 || n == 0 || d == 0))
      o.set(L.bv, k, 1, T(0), T(0), view(L.dtau, a.dtau));
    if (B == 0 || d == 0 || n == 0) return;
    const bool want_dx = L.op == Op::apply && a.dX;
    const bool taped = a.tape && L.tape;
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
  Mat3 layout_of(const Array& g, const char* name) const {
    Mat3 m;
    m.batch = L.B, m.rows = L.d, m.cols = L.n;
    if (g.rank < 2) throw std::invalid_argument(std::string("fasth: ") + name + " must have at least 2 dimensions");
    m.rs = g.strides[g.rank - 2], m.cs = g.strides[g.rank - 1];
    // The batch stride of grad's leading dimensions (one stride, or the batch is 1).
    index_t stride = 0, expect = 0;
    bool first = true;
    for (int i = g.rank - 3; i >= 0; --i) {
      if (g.shape[i] == 1) continue;
      if (first) stride = g.strides[i], expect = stride * g.shape[i], first = false;
      else if (g.strides[i] != expect)
        throw std::invalid_argument(std::string("fasth: ") + name + "'s batch dimensions cannot be walked with one stride");
      else expect *= g.shape[i];
    }
    m.bs = stride;
    index_t total = 1;
    for (int i = 0; i < g.rank - 2; ++i) total *= g.shape[i];
    if (g.shape[g.rank - 2] != L.d || g.shape[g.rank - 1] != L.n || total != L.B)
      throw std::invalid_argument(std::string("fasth: ") + name + " has the wrong shape");
    return m;
  }

  // grad as a BLAS view, copied into `buf` (column-major, batch entries d x c apart) where
  // BLAS cannot address it.
  M<const T> addressable(const Mat3& g3, const T* g, index_t c, T* buf) const {
    bool ok;
    M<const T> v = view(g3, g, ok);
    if (ok) return v;
    o.copy(g3.batch, L.d, c, Strided<const T>{g, g3.rs, g3.cs, g3.bs},
           Strided<T>{buf, 1, L.d, L.d * c});
    return M<const T>{buf, L.d, false, L.d * c};
  }

  // The householder blockwise backward from a tape (docs/math.md, "from a tape"): with each
  // block's input A = S_s, W1 = Y^T A and W2 = op(T) W1 kept, and G = dL/dout, walking back:
  //   D = Y^T G,  E = op(T)^T D,  dY = -G W2^T - A E^T,  d op(T) = -D W1^T,  G_in = G - Y E;
  // then T's path for every block at once: dS = -T^T dT T^T, dY += Y mirror(dS), as
  // T^-1 = striu(Y^T Y) + diag(Y^T Y) / 2.
  void taped_backward(const Backward<T>& a, const Mat3& g3, const BackwardWs<T>& w) const {
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
  void householder_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
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

  // The materialised apply: out = op(U) X with U kept in the factors. dX = op(U)^T G, and
  // dL/dU = G X^T = (G out^T) U (or U (G out^T)^T transposed), then U's single-block backward.
  void materialized_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
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
  void matrix_backward(const T* F, const Mat3& g3, const T* g, index_t c, const MatrixWs<T>& w,
                       T* dV, T* dtau) const {
    const index_t bv = L.bv, d = L.d, k = L.k;
    const M<const T> G = addressable(g3, g, c, w.g);
    const M<const T> y = in(Y(F)), t = in(Tf(F, 0));
    const M<T> dY = L.kind == Kind::householder ? dy_buffer(w.dy, dV) : like_y(w.dy, d, d * L.ky);
    if (L.kind == Kind::householder) {
      if (small()) {
        counted(Call::small_matrix_backward);
        const index_t fs = fbs();
        return o.be.small_matrix_backward(bv, d, k, c, F, fs, aux(F), fs, Uf(F).p, fs,
                                          strided(G), strided(L.dV, dV));
      } else {
        const M<T> A = like_y(w.a, d, d * L.ky), C = buffer(w.c, k, k * k);
        const M<const T> BE = in(Zf(F));                                   // B_E = Y_E T^T = Z
        o.tr(bv, true, false, k, d, T(1), t, y, A);                        // A = Y T
        o.mm(bv, d, k, c, T(-1), G, false, BE, false, T(0), dY);           // dY = -G B_E
        o.mm(bv, k, k, d, T(-1), in(A), true, in(dY), false, T(0), C);     // C = A^T G B_E
        o.mirror(bv, k, C);
        o.mm(bv, d, k, k, T(1), y, false, in(C), false, T(1), dY);         // + Y mirror(C)
        o.mm(bv, c, k, d, T(-1), G, true, in(A), false, T(1), dY);         // - E G^T A
      }
      return finish_dv(F, in(dY), dV);
    }
    const M<T> GY = like_y(w.gy, d, d * L.ky), H = buffer(w.h, k, k * k),
               GtY = buffer(w.gty, c, c * k);
    o.mm(bv, d, k, c, T(1), G, false, y, false, T(0), GY);                 // G Y_E
    o.mm(bv, k, k, d, T(-1), y, true, in(GY), false, T(0), H);             // dT = -Y^T G Y_E
    o.tr(bv, true, true, k, d, T(-1), t, in(GY), dY);                      // dY = -G Y_E T^T
    o.mm(bv, c, k, d, T(1), G, true, y, false, T(0), GtY);                 // G^T Y
    o.mm(bv, c, k, k, T(-1), in(GtY), false, t, false, T(1), dY);          // - E G^T Y T
    TBackWs<T> tw{w.lo, w.kk, w.p1, w.p2, w.e, w.ms, w.dm};
    lapack_t_backward(bv, k, in(H), F, 0, tw, dY, y, dtau, L.dtau.bs);
    o.lower(bv, d, k, strided(in(dY)), strided(L.dV, dV), T(0));
  }

  // The path through T = T(Gram, tau) for LAPACK reflectors, given dT (w x w, batch
  // entries): with U = striu(Gram), D = diag(tau), K = I - T U (so T = K D), and
  // E = K^T dT D K^T:  dtau = diag(K^T dT - E U^T),  dY += Y (M + M^T), M = striu(-D E).
  // Regular at tau = 0 (docs/math.md).
  void lapack_t_backward(index_t batch, index_t wd, M<const T> dT, const T* F, index_t j,
                         const TBackWs<T>& w, M<T> dY, M<const T> y, T* dtau,
                         index_t dtau_bs) const {
    const index_t q = wd * wd;
    auto sq = [&](T* p) { return M<T>{p, std::max<index_t>(wd, 1), false, q}; };
    const M<T> Lo = sq(w.lo), K = sq(w.kk), P1 = sq(w.p1), P2 = sq(w.p2), E = sq(w.e),
               Ms = sq(w.ms), D = sq(w.dm);
    const M<const T> gram = in(Gf(F, j)), t = in(Tf(F, j));
    const index_t fb = fbs();
    o.lower(batch, wd, wd, strided(gram), strided(Lo), T(0));             // U^T (Gram symmetric)
    o.identity(batch, wd, wd, K);
    o.mm(batch, wd, wd, wd, T(-1), t, false, in(Lo), true, T(1), K);       // K = I - T U
    o.mm(batch, wd, wd, wd, T(1), in(K), true, dT, false, T(0), P1);       // K^T dT
    o.set(batch, wd, wd, T(0), T(0), D);
    o.copy(batch, 1, wd, Strided<const T>{aux(F) + j * L.m, 1, 1, fb},
           Strided<T>{D.p, 1, wd + 1, q});                                  // D = diag(tau)
    o.mm(batch, wd, wd, wd, T(1), in(D), false, in(K), true, T(0), P2);    // D K^T
    o.mm(batch, wd, wd, wd, T(1), in(P1), false, in(P2), false, T(0), E);  // E
    o.mm(batch, wd, wd, wd, T(-1), in(E), false, in(Lo), false, T(1), P1); // K^T dT - E U^T
    const Mat3& dt = L.dtau;
    o.copy(batch, 1, wd, Strided<const T>{P1.p, 1, wd + 1, q},
           Strided<T>{dtau + j * L.m * dt.rs, 1, dt.rs, dtau_bs});
    o.mm(batch, wd, wd, wd, T(-1), in(D), false, in(E), false, T(0), Ms);  // -D E
    o.mirror(batch, wd, Ms);
    o.set(batch, 1, wd, T(0), T(0), M<T>{Ms.p, wd + 1, false, q});         // its diagonal
    o.mm(batch, L.d, wd, wd, T(1), y, false, in(Ms), false, T(1), dY);
  }

  // LAPACK reflectors applied blockwise (ormqr): P_j need not be orthogonal, so the
  // forward is walked again from the saved input, keeping each block's input, and the
  // blocks are then differentiated in reverse:  W = Y^T A_in, Q = R W, out = A_in - Y Q;
  //   dQ = -Y^T G, dW = R^T dQ, dR = dQ W^T, dY = -G Q^T + A_in dW^T (+ the path through T),
  //   G_in = G + Y dW.
  void lapack_backward(const Backward<T>& a, const Mat3& g3, const Mat3& s3,
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
};

}  // namespace

// Forward + backward flops. Blockwise: 4 d k n forward and 12 d k n backward in thin
// products, which run below the speed of square ones (kThinProducts). Materialise:
// U = E - Y Z^T (Gram, T, Z, one GEMM), U X, and the backward through dL/dU.
constexpr double kThinProducts = 1.25;
double blockwise_cost(index_t d, index_t k, index_t n) {
  return kThinProducts * 16.0 * double(d) * double(k) * double(n);
}
double materialize_cost(index_t d, index_t k, index_t n) {
  const double D = double(d), K = double(k), N = double(n);
  return 6 * D * D * N + 2 * D * D * D + 8 * D * K * K + 6 * D * D * K + K * K * K / 3;
}

TapeParts tape_parts(const Layout& L) {  // as Run::tape_input and tape_product lay it out
  const std::size_t in = sz(L.B) * sz(L.d) * sz(L.n), pr = sz(L.B) * sz(L.m) * sz(L.n);
  return {round_up(in), round_up(pr), in, pr};
}

std::size_t tape_elements(const Layout& L) {
  const TapeParts tp = tape_parts(L);
  return sz(L.nb) * (tp.input + 2 * tp.product);
}

void size_plan(Layout& L) {
  // Packed, every element written by factors() (the factors are an output: deterministic).
  const std::size_t d = sz(L.d), k = sz(L.k), m = sz(L.m), nb = sz(L.nb);
  // ydirect: no Y in the factors but a mode (0: V as it is, 1: normalised into the
  // workspace's head), then the norms.
  L.f_aux = L.ydirect ? 1 : d * sz(L.ky);
  L.ws_y = L.ydirect ? round_up(sz(L.bv) * d * sz(L.ypad ? ypad_ld(L) : L.ky)) : 0;
  L.f_blocks = L.f_aux + (L.kind == Kind::lapack ? nb * m : k);
  // The single block's Z = Y_E T^T (c x k) for U = E - Y Z^T, which the householder
  // backward reads again, then U.
  const std::size_t c = sz(L.op == Op::matrix ? L.n : L.d);
  L.f_z = L.f_blocks + nb * 2 * m * m;
  L.f_u = L.f_z + (L.single && L.kind == Kind::householder ? c * sz(L.ky) : 0);
  const bool u_matrix = L.op == Op::matrix && L.kind == Kind::householder && L.device == Device::cuda;
  L.fstride = L.f_u + (L.op == Op::apply && L.single ? d * d : u_matrix ? d * c : 0);
  if (L.k == 0) L.fstride = 0;
  // The tape: a householder blockwise run keeps each block's input and products where they
  // fit, so that its backward need not recover them from the output: 8 d k n flops instead
  // of 12.
  const bool tapeable = L.kind == Kind::householder && !L.single && L.k > 0;
  L.tape = tapeable && tape_elements(L) <= kTapeMax ? tape_elements(L) : 0;
  Arena<float> f{nullptr}, fw{nullptr}, bw{nullptr}, fwt{nullptr}, bwt{nullptr};
  carve_factors<float>(L, f);
  if (L.op == Op::apply && L.single) carve_u<float>(L.bv, L.d, L.ky, f);
  carve_forward<float>(L, fw, false);
  carve_backward<float>(L, bw, false);
  if (L.tape) carve_forward<float>(L, fwt, true), carve_backward<float>(L, bwt, true);
  L.ws[0] = L.ws_y + std::max({f.used, fw.used, fwt.used});
  L.ws[1] = L.ws_y + std::max(bw.used, bwt.used);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// The Plan's runs

namespace {
// A run's pointers: each one that the run will read or write must be given.
void need(const void* p, bool used, const char* run, const char* name) {
  if (used && !p)
    throw std::invalid_argument(std::string("fasth: Plan::") + run + " needs " + name + " (null)");
}
// The factors' entry stride of a run: the plan's, or a caller's larger one.
index_t entry_stride(const detail::Layout& L, std::size_t given) {
  if (given != 0 && given < L.fstride)
    throw std::invalid_argument("fasth: factors_stride " + std::to_string(given) +
                                " is below the plan's " + std::to_string(L.fstride));
  return static_cast<index_t>(given ? given : L.fstride);
}
}  // namespace

template <class T>
void Plan::check_forward(const Forward<T>& a, const char* run, bool out) const {
  const bool v = L_.bv > 0 && L_.d > 0 && L_.k > 0, x = L_.B > 0 && L_.d > 0 && L_.n > 0;
  need(a.V, v, run, "V");
  need(a.tau, v && L_.kind == Kind::lapack, run, "tau");
  need(a.factors, factors_size() > 0, run, "factors");
  need(a.workspace, workspace_size(Pass::forward) > 0, run, "workspace");
  need(a.X, out && a.out && x && L_.op == Op::apply, run, "X");
}

// Each run's workspace: its head holds Y where bind_y normalises V into it; the rest is
// carved by the run.
template <class T>
void Plan::factors(const Backend<T>& be, const Forward<T>& a) const {
  check_forward(a, "factors", false);
  detail::Run<T>{L_, {be}, entry_stride(L_, a.factors_stride)}.factors(a.V, a.tau, a.factors, a.workspace + L_.ws_y);
}

template <class T>
void Plan::forward_with(const Backend<T>& be, const Forward<T>& a) const {
  check_forward(a, "forward_with", true);
  need(a.out, L_.B > 0 && L_.d > 0 && L_.n > 0, "forward_with", "out");
  const detail::Run<T> r{L_, {be}, entry_stride(L_, a.factors_stride)};
  r.bind_y(a.V, a.factors, a.workspace, false);
  r.forward_with(a.factors, a.X, a.out, a.workspace + L_.ws_y, a.tape);
}

template <class T>
void Plan::forward(const Backend<T>& be, const Forward<T>& a) const {
  check_forward(a, "forward", true);
  const detail::Run<T> r{L_, {be}, entry_stride(L_, a.factors_stride)};
  if (L_.op == Op::matrix && a.out && L_.B > 0 && L_.d > 0 && L_.k > 0 && r.small())
    return r.small_factors(a.V, a.factors, a.out);  // U and the factors in one launch
  r.factors(a.V, a.tau, a.factors, a.workspace + L_.ws_y);
  if (a.out) r.forward_with(a.factors, a.X, a.out, a.workspace + L_.ws_y, a.tape);
}

template <class T>
void Plan::backward(const Backend<T>& be, const Backward<T>& a) const {
  const bool v = L_.bv > 0 && L_.d > 0 && L_.k > 0, x = L_.B > 0 && L_.d > 0 && L_.n > 0;
  need(a.V, v, "backward", "V");
  need(a.factors, v && x, "backward", "factors");
  need(a.grad, v && x, "backward", "grad");
  need(a.saved, v && x && L_.reads_saved() && !(a.tape && L_.tape), "backward", "saved");
  need(a.dV, L_.bv > 0 && L_.d > 0 && L_.dV.cols > 0, "backward", "dV");
  need(a.dtau, v && L_.kind == Kind::lapack, "backward", "dtau");
  need(a.workspace, workspace_size(Pass::backward) > 0, "backward", "workspace");
  const detail::Run<T> r{L_, {be}, entry_stride(L_, a.factors_stride)};
  r.bind_y(a.V, a.factors, a.workspace, false);
  Backward<T> rest = a;
  rest.workspace = a.workspace + L_.ws_y;
  r.backward(rest);
}

#define FASTH_INSTANTIATE(T)                                                  \
  template void Plan::factors<T>(const Backend<T>&, const Forward<T>&) const;      \
  template void Plan::forward_with<T>(const Backend<T>&, const Forward<T>&) const; \
  template void Plan::forward<T>(const Backend<T>&, const Forward<T>&) const;      \
  template void Plan::backward<T>(const Backend<T>&, const Backward<T>&) const;      \
  template void Plan::check_forward<T>(const Forward<T>&, const char*, bool) const;
FASTH_INSTANTIATE(float)
FASTH_INSTANTIATE(double)
#undef FASTH_INSTANTIATE

}  // namespace fasth
