// The FastH algorithm, written once over the Backend interface (see MATH.md in the design
// notes): blocks of m reflectors in compact-WY form P_j = I - Y_j T_j Y_j^T, the T factors of
// every block built once per V, a forward of k/m block steps, and a backward that recovers
// each block's input from its output (P_j is orthogonal) so that only the output is kept.
//
// Each block step multiplies by R = T (apply) or R = T^T (transpose: P_j^T = I - Y T^T Y^T);
// the blocks are walked in the order that the product takes them.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "fasth/fasth.hpp"

namespace fasth {
namespace {

// A logical matrix over column-major storage: M = t ? S^T : S, S with leading dimension ld.
// Batch entries lie bs apart (0: shared by the whole batch).
template <class T>
struct View {
  T* p;
  index_t ld;
  bool t;
  index_t bs;

  // Columns [c, c + w) of the logical matrix.
  View cols(index_t c) const { return {p + c * (t ? 1 : ld), ld, t, bs}; }
};

// Column-major (t = false) or row-major (t = true) leading dimension, or -1 when neither.
struct Layout {
  index_t ld;
  bool t;
};

Layout layout_of(index_t rows, index_t cols, index_t rs, index_t cs) {
  const index_t r = std::max<index_t>(rows, 1), c = std::max<index_t>(cols, 1);
  if (rows == 0 || cols == 0) return {r, false};  // nothing is ever addressed
  if ((rs == 1 || rows <= 1) && (cols <= 1 || cs >= r)) return {cols <= 1 ? r : cs, false};
  if ((cs == 1 || cols <= 1) && (rows <= 1 || rs >= c)) return {rows <= 1 ? c : rs, true};
  return {-1, false};
}

template <class T>
View<T> view(Matrix<T> m, const char* name) {
  const Layout l = layout_of(m.rows, m.cols, m.rs, m.cs);
  if (l.ld < 0)
    throw std::invalid_argument(std::string("fasth: ") + name +
                                " has strides that BLAS cannot address; pass a contiguous copy");
  return {m.data, l.ld, l.t, m.bs};
}

template <class T>
View<T> buffer(T* p, index_t rows, index_t cols) {  // contiguous column-major batch
  return {p, std::max<index_t>(rows, 1), false, rows * cols};
}

template <class T>
View<const T> in(View<T> v) {
  return {v.p, v.ld, v.t, v.bs};
}

template <class T>
Strided<T> strided(View<T> v) {
  return v.t ? Strided<T>{v.p, v.ld, 1, v.bs} : Strided<T>{v.p, 1, v.ld, v.bs};
}

// Whether U (d x cols, V d x k) and its backward go through the backend's small-d path.
template <class T>
bool small(const Backend<T>& be, index_t d, index_t k, index_t cols) {
  return cols <= d && be.small_path(d, k);
}

// C = alpha op(A) op(B) + beta C, op(A) m x k, for `batch` entries. A C shared across the
// batch (bs == 0) receives the sum over the batch.
template <class T>
void mm(const Backend<T>& be, index_t batch, index_t m, index_t n, index_t k, T alpha,
        View<const T> a, bool ta, View<const T> b, bool tb, T beta, View<T> c) {
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {
    if (beta == T(1)) return;
    // C = beta C: degenerate product; only ever beta == 0 here (fresh outputs).
    if (c.t) std::swap(m, n);
    be.set(m, n, T(0), T(0), c.p, c.ld, c.bs, c.bs == 0 ? 1 : batch);
    return;
  }
  if (c.bs == 0 && batch > 1) {
    for (index_t i = 0; i < batch; ++i) {
      View<const T> ai{a.p + i * a.bs, a.ld, a.t, 0}, bi{b.p + i * b.bs, b.ld, b.t, 0};
      mm(be, 1, m, n, k, alpha, ai, ta, bi, tb, i == 0 ? beta : T(1), c);
    }
    return;
  }
  const bool ea = a.t != ta, eb = b.t != tb;  // transposes relative to the storage
  if (!c.t)
    be.gemm(ea, eb, m, n, k, alpha, a.p, a.ld, a.bs, b.p, b.ld, b.bs, beta, c.p, c.ld, c.bs,
            batch);
  else  // C^T = op(B)^T op(A)^T
    be.gemm(!eb, !ea, n, m, k, alpha, b.p, b.ld, b.bs, a.p, a.ld, a.bs, beta, c.p, c.ld, c.bs,
            batch);
}

// C = Y^T Y (w x w) for Y (d x w), batched.
template <class T>
void gram(const Backend<T>& be, index_t batch, index_t w, index_t d, View<const T> y, View<T> c) {
  be.gram(y.t, w, d, y.p, y.ld, y.bs, c.p, c.ld, c.bs, batch);
}

template <class T>
void copy(const Backend<T>& be, index_t batch, index_t rows, index_t cols, View<const T> a,
          View<T> b) {
  if (!b.t) be.copy(a.t, rows, cols, a.p, a.ld, a.bs, b.p, b.ld, b.bs, batch);
  else be.copy(!a.t, cols, rows, a.p, a.ld, a.bs, b.p, b.ld, b.bs, batch);
}

template <class T>
void identity(const Backend<T>& be, index_t batch, index_t rows, index_t cols, View<T> a) {
  if (a.t) std::swap(rows, cols);
  be.set(rows, cols, T(0), T(1), a.p, a.ld, a.bs, batch);
}

// Sizes shared by every op once the shape is resolved.
struct Dims {
  index_t B, bv, d, k, n, m, nb;
  explicit Dims(const Shape& s)
      : B(s.batch), bv(s.shared_v ? 1 : s.batch), d(s.d), k(s.k), n(s.n), m(s.block),
        nb(s.k == 0 ? 0 : (s.k + s.block - 1) / s.block) {}
  index_t width(index_t j) const { return std::min(m, k - j * m); }
  index_t fstride() const { return nb * 2 * m * m; }  // factors of one V-batch entry
};

// Workspace carving: consecutive sub-buffers, each 64-byte aligned.
template <class T>
struct Carver {
  T* p;
  std::size_t used = 0;
  T* take(std::size_t count) {
    T* r = p ? p + used : nullptr;
    used += (count + 15) / 16 * 16;
    return r;
  }
};

template <class T>
struct Blocks {
  const Backend<T>& be;
  Dims z;
  bool transpose;  // R = T^T and the blocks in the other order
  View<const T> V;
  const T* F;
  index_t batch;  // batch entries of the matrices being multiplied
  index_t n;      // their columns

  View<const T> Y(index_t j) const { return V.cols(j * z.m); }
  View<const T> Tf(index_t j) const { return {F + j * 2 * z.m * z.m, z.m, false, V.bs ? z.fstride() : 0}; }
  View<const T> Gram(index_t j) const { View<const T> t = Tf(j); t.p += z.m * z.m; return t; }
  // The forward walks j = nb-1 .. 0 for U X = P_0 (P_1 (... X)), and 0 .. nb-1 for U^T X.
  index_t forward_block(index_t step) const { return transpose ? step : z.nb - 1 - step; }

  // A <- P A (or P^T A) for every block: A holds X on entry and the product on exit.
  void forward(View<T> A, T* ws) const {
    Carver<T> c{ws};
    View<T> W1 = buffer(c.take(batch * z.m * n), z.m, n), W2 = buffer(c.take(batch * z.m * n), z.m, n);
    for (index_t s = 0; s < z.nb; ++s) {
      const index_t j = forward_block(s), w = z.width(j);
      mm(be, batch, w, n, z.d, T(1), Y(j), true, in(A), false, T(0), W1);
      mm(be, batch, w, n, w, T(1), Tf(j), transpose, in(W1), false, T(0), W2);
      mm(be, batch, z.d, n, w, T(-1), Y(j), false, in(W2), false, T(1), A);
    }
  }
  static std::size_t forward_ws(index_t batch, index_t m, index_t n) {
    Carver<T> c{nullptr};
    c.take(batch * m * n), c.take(batch * m * n);
    return c.used;
  }

  // From the output A and its gradient G, held side by side as AG = [A | G] (d x 2n per
  // entry), walking the blocks back to the input: A ends as the input X, G as dL/dX, and dV
  // receives dL/dV (summed over the batch when shared). With A and G adjacent, the products
  // with Y and with R serve both at once: 3 products of the size of A per block, not 6.
  void backward(View<T> AG, View<T> dV, T* ws) const {
    Carver<T> c{ws};
    View<T> WdQ = buffer(c.take(batch * z.m * 2 * n), z.m, 2 * n),  // [W | Y^T G]
            B2 = buffer(c.take(batch * z.m * 3 * n), z.m, 3 * n),   // [Q0 | dZ' | Q]
            Ms = buffer(c.take(batch * z.m * z.m), z.m, z.m);
    View<T> W = WdQ, Q0 = B2, dZ = B2.cols(n), Q = B2.cols(2 * n);  // dZ' = -dZ
    for (index_t s = z.nb - 1; s >= 0; --s) {
      const index_t j = forward_block(s), w = z.width(j);
      const View<const T> y = Y(j), t = Tf(j);
      View<T> dY = dV.cols(j * z.m);
      mm(be, batch, w, 2 * n, z.d, T(1), y, true, in(AG), false, T(0), WdQ);  // Y^T [A | G]
      mm(be, batch, w, 2 * n, w, T(1), t, !transpose, in(WdQ), false, T(0), B2);  // R^T (..)
      mm(be, batch, w, n, w, T(-1), Gram(j), false, in(Q0), false, T(1), W);  // Z = Y^T A_in
      mm(be, batch, w, n, w, T(1), t, transpose, in(W), false, T(0), Q);      // Q = R Z
      // dS = -dZ Q^T for R = T, its transpose for R = T^T; M + M^T mirrors its upper part.
      if (!transpose) mm(be, batch, w, w, n, T(1), in(dZ), false, in(Q), true, T(0), Ms);
      else mm(be, batch, w, w, n, T(1), in(Q), false, in(dZ), true, T(0), Ms);
      be.mirror_upper(w, Ms.p, Ms.ld, Ms.bs, batch);
      // dY = -G Q^T + A_in dZ^T + Y (M + M^T) with A_in = A - Y Q0:
      //    = -[A | G] [dZ' | Q]^T + Y (M + M^T + Q0 dZ'^T)
      mm(be, batch, w, w, n, T(1), in(Q0), false, in(dZ), true, T(1), Ms);
      mm(be, batch, z.d, w, 2 * n, T(-1), in(AG), false, in(dZ), true, T(0), dY);
      mm(be, batch, z.d, w, w, T(1), y, false, in(Ms), false, T(1), dY);
      // [A | G] -= Y [Q0 | dZ']: A_in = A - Y Q0, and G = P^T G = G + Y dZ.
      mm(be, batch, z.d, 2 * n, w, T(-1), y, false, in(B2), false, T(1), AG);
    }
  }
  static std::size_t backward_ws(index_t batch, index_t m, index_t n) {
    Carver<T> c{nullptr};
    c.take(batch * m * 2 * n), c.take(batch * m * 3 * n), c.take(batch * m * m);
    return c.used;
  }
};

// Workspace for a backward walk over `batch` entries of d x n: [A | G] side by side, and its
// A and G halves as batches. A shared V (fold) takes the whole batch as one wide problem,
// d x 2Bn: no reduction over the batch for dV.
template <class T>
struct Walk {
  View<T> ag, a, g;
  index_t batch, n;
  static std::size_t size(index_t batch, index_t d, index_t n, index_t m, bool fold) {
    const std::size_t own = static_cast<std::size_t>(2 * batch * d * n) + 16;
    return own + (fold ? Blocks<T>::backward_ws(1, m, batch * n)
                       : Blocks<T>::backward_ws(batch, m, n));
  }
};

template <class T>
Walk<T> walk(Carver<T>& c, index_t batch, index_t d, index_t n, bool fold) {
  T* p = c.take(2 * batch * d * n);
  const index_t ld = std::max<index_t>(d, 1), dn = d * n;
  if (fold) return {{p, ld, false, 0}, {p, ld, false, dn}, {p + batch * dn, ld, false, dn}, 1, batch * n};
  return {{p, ld, false, 2 * dn}, {p, ld, false, 2 * dn}, {p + dn, ld, false, 2 * dn}, batch, n};
}

void check_shape(const Shape& s) {
  if (s.d < 0 || s.k < 0 || s.n < 0 || s.batch < 0)
    throw std::invalid_argument("fasth: negative size");
  if (s.k > s.d)
    throw std::invalid_argument("fasth: V has more columns (k = " + std::to_string(s.k) +
                                ") than rows (d = " + std::to_string(s.d) + ")");
  if (s.block < 1) throw std::invalid_argument("fasth: block size must be at least 1");
}

template <class T>
void check(const Matrix<T>& m, index_t rows, index_t cols, const char* name) {
  if (m.rows != rows || m.cols != cols)
    throw std::invalid_argument(std::string("fasth: ") + name + " is " +
                                std::to_string(m.rows) + " x " + std::to_string(m.cols) +
                                ", expected " + std::to_string(rows) + " x " +
                                std::to_string(cols));
}

// A V shared by a batch whose matrices sit side by side in memory is one wide problem:
// n' = batch * n, no reduction over the batch for dV.
template <class T>
bool side_by_side(const View<T>& v, index_t n, index_t batch) {
  return batch == 1 || (!v.t && v.bs == n * v.ld);
}

template <class T>
Blocks<T> blocks(const Backend<T>& be, const Shape& s, bool transpose, Matrix<const T> V,
                 const T* F, index_t batch, index_t n) {
  check(V, s.d, s.k, "V");
  View<const T> v = view(V, "V");
  if (s.shared_v) v.bs = 0;
  return {be, Dims(s), transpose, v, F, batch, n};
}

// U (bv entries, d x d) into `u` by a blockwise forward on the identity, or the small path.
template <class T>
void build_u(const Blocks<T>& b0, View<T> u, T* ws) {
  const Dims& z = b0.z;
  if (small(b0.be, z.d, z.k, z.d))
    return b0.be.small_matrix(z.bv, z.d, z.k, z.d, strided(b0.V), strided(u));
  Blocks<T> b = b0;
  b.transpose = false;
  b.batch = b0.z.bv;
  b.n = b0.z.d;
  identity(b.be, b.batch, b.z.d, b.z.d, u);
  b.forward(u, ws);
}

// The leaf width for T factors of blocks of m: the widest divisor of m that larft takes.
index_t leaf_width(index_t m, index_t most) {
  if (m <= most) return m;
  for (index_t h = most; h > 1; --h)
    if (m % h == 0) return h;
  return 1;
}

// T of the leaves [lo, hi) (each h wide) of every block from the T's of its two halves:
// T[a:b, b:c] = -T[a:b, a:b] G[a:b, b:c] T[b:c, b:c], the block form of T = S^{-1} for the
// upper triangular S = striu(G) + diag(G) / 2 (MATH.md), whose off-diagonal block is G's.
// `count` blocks, 2 m^2 apart in F.
template <class T>
void merge_t(const Backend<T>& be, index_t count, index_t m, index_t h, T* F, T* ws, index_t lo,
             index_t hi) {
  if (hi - lo < 2) return;
  const index_t mid = (lo + hi) / 2;
  merge_t(be, count, m, h, F, ws, lo, mid);
  merge_t(be, count, m, h, F, ws, mid, hi);
  const index_t a = lo * h, b = mid * h, c = hi * h, p = b - a, q = c - b, bs = 2 * m * m;
  auto at = [&](index_t r, index_t col, index_t off) {  // off: 0 for T, m^2 for G
    return View<T>{F + off + r + col * m, m, false, bs};
  };
  View<T> w = buffer(ws, p, q);
  mm(be, count, p, q, q, T(1), in(at(a, b, m * m)), false, in(at(b, b, 0)), false, T(0), w);
  mm(be, count, p, q, p, T(-1), in(at(a, a, 0)), false, in(w), false, T(0), at(a, b, 0));
}

// The T factors of `count` blocks of m from their Gram matrices (factors layout): by the
// backend's larft, or, for blocks wider than it takes, larft on leaves packed in `ws` and
// merged with gemm.
template <class T>
void build_t(const Backend<T>& be, index_t count, index_t m, T* F, T* ws) {
  const index_t h = leaf_width(m, be.larft_max());
  if (h == m) return be.larft(count, m, F);
  const index_t leaves = m / h, m2 = m * m, h2 = h * h;
  for (index_t l = 0; l < leaves; ++l)  // the diagonal h x h blocks of G, as larft takes them
    be.copy(false, h, h, F + m2 + l * h * (m + 1), m, 2 * m2, ws + l * 2 * h2 + h2, h,
            2 * h * m, count);
  be.larft(count * leaves, h, ws);
  for (index_t l = 0; l < leaves; ++l)  // their T's onto the diagonal of T
    be.copy(false, h, h, ws + l * 2 * h2, h, 2 * h * m, F + l * h * (m + 1), m, 2 * m2, count);
  merge_t(be, count, m, h, F, ws, 0, leaves);
}

}  // namespace

bool addressable(index_t rows, index_t cols, index_t rs, index_t cs) {
  return layout_of(rows, cols, rs, cs).ld >= 0;
}

index_t choose_block(index_t d, index_t k, index_t n, Device device) {
  // GPU: each block step is a few launches, which dominate at small n, and its Y^T A product
  // has an m x n output that must fill the GPU: blocks of 128 (at 64, d = 1024, n = 2048 took
  // 7.4x U @ X on an H200). 256 lost when the T kernel fell back to global memory; wider
  // blocks now merge T's of 128 with gemm instead, which is still to be measured.
  // CPU: each block step costs several BLAS calls, and thin products run far below the
  // BLAS's speed, so even at small n wide blocks win although their T work (about m / 4n of
  // the flops) grows. Forward + backward of apply with libtorch's MKL on 2 cores, d = 1024:
  // n = 8, blocks of 4 / 32: 88 / 16 ms; n = 64, 32 / 64: 24 / 21 ms; n = 1024, 64 / 128:
  // 273 / 242 ms, where at k = 512, 64 won (56 / 61 ms).
  (void)d;  // part of the rule's signature; the measured rules need only n and k so far
  const index_t m = device == Device::cuda ? index_t{128}
                    : n >= 1024 && k >= 1024 ? index_t{128}
                                             : index_t{64};
  return std::max<index_t>(1, std::min(m, k));
}

namespace {
// Forward + backward flops, blockwise weighted by 1.25: its thin products run below the
// speed of materialize's square ones. With k = d, materialize then wins from n = 1.57 d
// (at 2.2 d by flops alone); on the CPU (MKL, 2 cores) it won by 12-20 % at n = 2d for
// d = 128 .. 1024 and lost at n = 1.5 d (d = 512: 43 against 39 ms).
double blockwise_flops(double d, double k, double n) { return 1.25 * 16 * d * k * n; }
double materialize_flops(double d, double k, double n) {
  return 8 * d * d * k + 6 * d * d * n + 2 * d * d * d + 12 * d * d * k;
}
}  // namespace

Strategy choose_strategy(index_t d, index_t k, index_t n) {
  return materialize_flops(d, k, n) < blockwise_flops(d, k, n) ? Strategy::materialize
                                                                : Strategy::blockwise;
}

namespace {
bool materialized(const Shape& s) {
  return s.strategy == Strategy::materialize ||
         (s.strategy == Strategy::automatic && choose_strategy(s.d, s.k, s.n) == Strategy::materialize);
}
}  // namespace

Shape resolve(Shape s, Device device) {
  if (s.block <= 0) s.block = choose_block(s.d, s.k, s.n, device);
  if (s.strategy == Strategy::automatic) s.strategy = choose_strategy(s.d, s.k, s.n);
  if (s.batch == 1) s.shared_v = true;
  check_shape(s);
  return s;
}

std::size_t factors_size(const Shape& s) {
  const Dims z(s);
  return static_cast<std::size_t>(z.bv * z.fstride());
}

namespace {
std::size_t op_workspace(Op op, const Shape& s) {
  const Dims z(s);
  const std::size_t dd = static_cast<std::size_t>(z.bv * z.d * z.d);
  auto fw = [&](index_t batch, index_t n) { return Blocks<double>::forward_ws(batch, z.m, n); };
  auto bw = [&](index_t batch, index_t n) { return Blocks<double>::backward_ws(batch, z.m, n); };
  auto walk = [&](index_t batch, index_t n) { return Walk<double>::size(batch, z.d, n, z.m, s.shared_v); };
  const bool mat = materialized(s);
  switch (op) {
    case Op::factors: break;
    case Op::matrix: return fw(z.bv, z.n);
    case Op::matrix_backward: return walk(z.B, z.n);
    case Op::apply: return mat ? dd + 16 + fw(z.bv, z.d) : fw(z.B, z.n);
    case Op::apply_backward:
      return mat ? 3 * (dd + 16) + std::max(fw(z.bv, z.d), bw(z.bv, z.d)) : walk(z.B, z.n);
  }
  return 0;
}
}  // namespace

std::size_t workspace_size(Op op, const Shape& s) {
  // factors(): leaves of at least 1 per block (2 h m <= m^2 for h <= m / 2) or the merges'
  // products (at most m^2 / 4), whatever the backend's larft_max().
  const Dims z(s);
  const std::size_t t = z.m > 1 ? static_cast<std::size_t>(z.bv * z.nb * z.m * z.m) : 0;
  return std::max(t, op_workspace(op, s));
}

template <class T>
void factors(const Backend<T>& be, const Shape& s, Matrix<const T> V, T* F, T* ws) {
  check_shape(s);
  check(V, s.d, s.k, "V");
  const Dims z(s);
  if (z.bv == 0 || z.nb == 0) return;
  const auto size = static_cast<index_t>(factors_size(s));
  be.set(size, 1, T(0), T(0), F, size, 0, 1);  // zero: deterministic, and padding for larft
  // Unused where every op that could read them takes the small path.
  if (materialized(s) && small(be, s.d, s.k, s.n)) return;
  View<const T> v = view(V, "V");
  // Gram matrices Y_j^T Y_j of the full blocks, then of the short last block.
  const index_t full = z.k / z.m, ystride = z.m * (v.t ? 1 : v.ld), mm2 = z.m * z.m;
  for (index_t i = 0; i < (z.bv <= full ? z.bv : full); ++i) {
    if (z.bv <= full) {  // one batched product over the blocks of V-batch entry i
      View<const T> y{v.p + i * v.bs, v.ld, v.t, ystride};
      gram(be, full, z.m, z.d, y, View<T>{F + i * z.fstride() + mm2, z.m, false, 2 * mm2});
    } else {  // one batched product over the V batch for block i
      View<const T> y = v.cols(i * z.m);
      gram(be, z.bv, z.m, z.d, y, View<T>{F + i * 2 * mm2 + mm2, z.m, false, z.fstride()});
    }
  }
  if (full < z.nb) {
    const index_t r = z.k - full * z.m;
    View<const T> y = v.cols(full * z.m);
    gram(be, z.bv, r, z.d, y, View<T>{F + full * 2 * mm2 + mm2, z.m, false, z.fstride()});
  }
  build_t(be, z.bv * z.nb, z.m, F, ws);
}

template <class T>
void apply(const Backend<T>& be, const Shape& s, bool transpose, Matrix<const T> V,
           const T* F, Matrix<const T> X, Matrix<T> out, T* ws) {
  check_shape(s);
  check(X, s.d, s.n, "X");
  check(out, s.d, s.n, "out");
  View<const T> x = view(X, "X");
  View<T> o = view(out, "out");
  if (s.batch == 0 || s.d == 0 || s.n == 0) return;
  Blocks<T> b = blocks(be, s, transpose, V, F, s.batch, s.n);
  if (materialized(s)) {
    View<T> u = buffer(ws, s.d, s.d);
    if (s.shared_v) u.bs = 0;
    build_u(b, u, ws + (b.z.bv * s.d * s.d + 15) / 16 * 16);
    mm(be, s.batch, s.d, s.n, s.d, T(1), in(u), transpose, x, false, T(0), o);
    return;
  }
  copy(be, s.batch, s.d, s.n, x, o);
  if (s.shared_v && s.batch > 1 && side_by_side(o, s.n, s.batch)) {
    b.batch = 1, b.n = s.batch * s.n;
    o.bs = 0;
  }
  b.forward(o, ws);
}

template <class T>
void apply_backward(const Backend<T>& be, const Shape& s, bool transpose, Matrix<const T> V,
                    const T* F, Matrix<const T> out, Matrix<const T> grad, Matrix<T> dX,
                    Matrix<T> dV, T* ws) {
  check_shape(s);
  check(out, s.d, s.n, "out");
  check(grad, s.d, s.n, "grad");
  check(dX, s.d, s.n, "dX");
  check(dV, s.d, s.k, "dV");
  View<const T> o = view(out, "out"), g = view(grad, "grad");
  View<T> dx = view(dX, "dX"), dv = view(dV, "dV");
  if (s.shared_v) dv.bs = 0;
  const Dims z(s);
  if (z.bv > 0) {
    if (s.k > 0 && (s.d == 0 || s.n == 0 || s.batch == 0))
      be.set(dv.t ? s.k : s.d, dv.t ? s.d : s.k, T(0), T(0), dv.p, dv.ld, dv.bs, z.bv);
  }
  if (s.batch == 0 || s.d == 0 || s.n == 0) return;
  Blocks<T> b = blocks(be, s, transpose, V, F, s.batch, s.n);
  Carver<T> c{ws};
  if (materialized(s)) {
    const index_t d = s.d, dd = z.bv * d * d;
    View<T> ud = buffer(c.take(2 * dd), d, 2 * d), w1 = buffer(c.take(dd), d, d);
    View<T> u{ud.p, ud.ld, false, 2 * d * d}, du{ud.p + d * d, ud.ld, false, 2 * d * d};
    if (s.shared_v) u.bs = w1.bs = du.bs = 0;
    T* rest = ws + c.used;
    build_u(b, u, rest);
    mm(be, s.batch, d, s.n, d, T(1), in(u), !transpose, g, false, T(0), dx);  // dX = op(U)^T G
    mm(be, s.batch, d, d, s.n, T(1), g, false, o, true, T(0), w1);            // W1 = G out^T
    if (!transpose) mm(be, z.bv, d, d, d, T(1), in(w1), false, in(u), false, T(0), du);
    else mm(be, z.bv, d, d, d, T(1), in(u), false, in(w1), true, T(0), du);
    if (small(be, d, s.k, d))
      return be.small_matrix_backward(z.bv, d, s.k, d, strided(b.V), strided(in(u)),
                                      strided(in(du)), strided(dv));
    Blocks<T> mb = b;  // dV from dU, as matrix_backward with [U | dU] consumed in place
    mb.transpose = false, mb.batch = z.bv, mb.n = d;
    mb.backward(ud, dv, rest);
    return;
  }
  const Walk<T> wk = walk(c, s.batch, s.d, s.n, s.shared_v);
  copy(be, s.batch, s.d, s.n, o, wk.a);
  copy(be, s.batch, s.d, s.n, g, wk.g);
  b.batch = wk.batch, b.n = wk.n;
  b.backward(wk.ag, dv, ws + c.used);
  copy(be, s.batch, s.d, s.n, in(wk.g), dx);
}

template <class T>
void matrix(const Backend<T>& be, const Shape& s, Matrix<const T> V, const T* F, Matrix<T> out,
            T* ws) {
  check_shape(s);
  check(out, s.d, s.n, "out");
  View<T> o = view(out, "out");
  if (s.batch == 0 || s.d == 0 || s.n == 0) return;
  Blocks<T> b = blocks(be, s, false, V, F, s.batch, s.n);
  if (small(be, s.d, s.k, s.n))
    return be.small_matrix(s.batch, s.d, s.k, s.n, strided(b.V), strided(o));
  identity(be, s.batch, s.d, s.n, o);
  b.forward(o, ws);
}

template <class T>
void matrix_backward(const Backend<T>& be, const Shape& s, Matrix<const T> V, const T* F,
                     Matrix<const T> out, Matrix<const T> grad, Matrix<T> dV, T* ws) {
  check_shape(s);
  check(out, s.d, s.n, "out");
  check(grad, s.d, s.n, "grad");
  check(dV, s.d, s.k, "dV");
  View<T> dv = view(dV, "dV");
  if (s.batch == 0 || s.k == 0) return;
  if (s.d == 0 || s.n == 0) {
    be.set(dv.t ? s.k : s.d, dv.t ? s.d : s.k, T(0), T(0), dv.p, dv.ld, dv.bs, s.batch);
    return;
  }
  Blocks<T> b = blocks(be, s, false, V, F, s.batch, s.n);
  if (small(be, s.d, s.k, s.n))
    return be.small_matrix_backward(s.batch, s.d, s.k, s.n, strided(b.V),
                                    strided(view(out, "out")), strided(view(grad, "grad")),
                                    strided(dv));
  Carver<T> c{ws};
  const Walk<T> wk = walk(c, s.batch, s.d, s.n, s.shared_v);
  copy(be, s.batch, s.d, s.n, view(out, "out"), wk.a);
  copy(be, s.batch, s.d, s.n, view(grad, "grad"), wk.g);
  b.batch = wk.batch, b.n = wk.n;
  b.backward(wk.ag, dv, ws + c.used);
}

#define FASTH_INSTANTIATE(T)                                                                  \
  template void factors<T>(const Backend<T>&, const Shape&, Matrix<const T>, T*, T*);        \
  template void apply<T>(const Backend<T>&, const Shape&, bool, Matrix<const T>, const T*,    \
                         Matrix<const T>, Matrix<T>, T*);                                     \
  template void apply_backward<T>(const Backend<T>&, const Shape&, bool, Matrix<const T>,     \
                                  const T*, Matrix<const T>, Matrix<const T>, Matrix<T>,      \
                                  Matrix<T>, T*);                                             \
  template void matrix<T>(const Backend<T>&, const Shape&, Matrix<const T>, const T*,         \
                          Matrix<T>, T*);                                                     \
  template void matrix_backward<T>(const Backend<T>&, const Shape&, Matrix<const T>,          \
                                   const T*, Matrix<const T>, Matrix<const T>, Matrix<T>, T*);
FASTH_INSTANTIATE(float)
FASTH_INSTANTIATE(double)
#undef FASTH_INSTANTIATE

}  // namespace fasth
