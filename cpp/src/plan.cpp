// Planning: validation of a Problem, its arrays as batches of matrices, the block size and
// strategy, the outputs' layouts and the sizes of the factors and workspaces. The workspace
// sizes come from the same carving functions the runs use (algorithm.hpp), so they cannot
// drift apart.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "algorithm.hpp"
#include "fasth/fasth.hpp"

namespace fasth {

Array::Array(std::initializer_list<index_t> shape, std::initializer_list<index_t> strides) {
  if (shape.size() != strides.size() || shape.size() > static_cast<std::size_t>(kMaxRank))
    throw std::invalid_argument("fasth: an Array needs as many strides as dimensions (at most 8)");
  rank = static_cast<int>(shape.size());
  std::copy(shape.begin(), shape.end(), this->shape);
  std::copy(strides.begin(), strides.end(), this->strides);
}

Array Array::dense(std::initializer_list<index_t> shape) {
  Array a;
  if (shape.size() > static_cast<std::size_t>(kMaxRank))
    throw std::invalid_argument("fasth: at most 8 dimensions");
  a.rank = static_cast<int>(shape.size());
  std::copy(shape.begin(), shape.end(), a.shape);
  index_t s = 1;
  for (int i = a.rank - 1; i >= 0; --i) a.strides[i] = s, s *= std::max<index_t>(a.shape[i], 1);
  return a;
}

namespace {

using detail::kAliasedRows;
using detail::kPadCopyMax;
using detail::kRowPad;
using detail::Layout;
using detail::Mat3;

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("fasth: " + msg); }

std::string shape_str(const Array& a, int from = 0, int to = -1) {
  if (to < 0) to = a.rank;
  std::string s = "(";
  for (int i = from; i < to; ++i) s += std::to_string(a.shape[i]) + (to - from == 1 || i + 1 < to ? "," : "");
  if (to - from > 1) s.pop_back();
  return s + ")";
}

index_t lead_size(const Array& a, int tail) {
  index_t p = 1;
  for (int i = 0; i < a.rank - tail; ++i) p *= a.shape[i];
  return p;
}

bool same_lead(const Array& a, int ta, const Array& b, int tb) {
  if (a.rank - ta != b.rank - tb) return false;
  for (int i = 0; i < a.rank - ta; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

// The batch stride of the leading dimensions (all but the last `tail`) when one stride
// walks them all; sets ok = false otherwise.
index_t batch_stride(const Array& a, int tail, bool& ok) {
  ok = true;
  index_t stride = 0, expect = 0;
  bool first = true;
  for (int i = a.rank - tail - 1; i >= 0; --i) {
    if (a.shape[i] == 1) continue;
    if (a.shape[i] == 0) return 0;
    if (first) {
      stride = a.strides[i], expect = stride * a.shape[i], first = false;
    } else if (a.strides[i] != expect) {
      ok = false;
      return 0;
    } else {
      expect *= a.shape[i];
    }
  }
  return stride;
}

Mat3 matrices(const Array& a, const char* name) {
  bool ok = true;
  Mat3 m;
  m.batch = lead_size(a, 2);
  m.rows = a.shape[a.rank - 2];
  m.cols = a.shape[a.rank - 1];
  m.rs = a.strides[a.rank - 2];
  m.cs = a.strides[a.rank - 1];
  m.bs = m.batch > 1 ? batch_stride(a, 2, ok) : 0;
  if (!ok) bad(std::string(name) + "'s batch dimensions cannot be walked with one stride; pass a contiguous copy");
  return m;
}

Mat3 vectors(const Array& a, const char* name) {  // (..., k) as a batch of k x 1 matrices
  bool ok = true;
  Mat3 m;
  m.batch = lead_size(a, 1);
  m.rows = a.shape[a.rank - 1];
  m.cols = 1;
  m.rs = a.strides[a.rank - 1];
  m.cs = std::max<index_t>(m.rows, 1);
  m.bs = m.batch > 1 ? batch_stride(a, 1, ok) : 0;
  if (!ok) bad(std::string(name) + "'s batch dimensions cannot be walked with one stride; pass a contiguous copy");
  return m;
}

void need_rank(const Array& a, int rank, const char* name) {
  if (a.rank < rank)
    bad(std::string(name) + " must have at least " + std::to_string(rank) + " dimension" +
        (rank > 1 ? "s" : "") + ", got shape " + shape_str(a));
  for (int i = 0; i < a.rank; ++i)
    if (a.shape[i] < 0) bad(std::string(name) + " has a negative size");
}

// A dense array of `lead` + (rows, cols), column-major matrices when `col_major`.
Array dense_like(const Array& lead_of, int tail, index_t rows, index_t cols, bool col_major) {
  Array a;
  a.rank = lead_of.rank - tail + 2;
  for (int i = 0; i < a.rank - 2; ++i) a.shape[i] = lead_of.shape[i];
  a.shape[a.rank - 2] = rows, a.shape[a.rank - 1] = cols;
  const index_t r = std::max<index_t>(rows, 1), c = std::max<index_t>(cols, 1);
  a.strides[a.rank - 2] = col_major ? 1 : c;
  a.strides[a.rank - 1] = col_major ? r : 1;
  index_t s = r * c;
  for (int i = a.rank - 3; i >= 0; --i) a.strides[i] = s, s *= std::max<index_t>(a.shape[i], 1);
  return a;
}

Array dense_vectors(const Array& lead_of, int tail, index_t k) {
  Array a;
  a.rank = lead_of.rank - tail + 1;
  for (int i = 0; i < a.rank - 1; ++i) a.shape[i] = lead_of.shape[i];
  a.shape[a.rank - 1] = k;
  index_t s = 1;
  for (int i = a.rank - 1; i >= 0; --i) a.strides[i] = s, s *= std::max<index_t>(a.shape[i], 1);
  return a;
}

// Column-major when the matrices are stored by columns (as a features-last activation's
// transpose is), so that outputs keep the layout of what they come from.
bool column_major(const Mat3& m) { return m.rows > 1 && m.cols > 1 && m.rs == 1 && m.cs != 1; }

}  // namespace

// GPU: each block step is a few launches, which dominate at small n, and its Y^T A product
// has an m x n output that must fill the GPU: blocks of 128 (at 64, d = 1024, n = 2048 took
// 7.4x U @ X on an H200). Where the work is small (d <= 1024, n <= 256), launches dominate
// whatever the flops: one block with the full T (built by a solve, Layout::solve_t), a
// forward of 10-11 launches and a forward + backward of 24 (k = d = 1024, n = 256: 36 and 91
// with blocks of 128), for about 3x the flops (at most 4.5 GFLOP forward: about 0.1 ms at
// an H200's float32 peak; not yet timed on one). CPU: each block step costs several BLAS
// calls, and thin products run below the BLAS's speed, so wide blocks win although their T
// work (the Grams' 2 d k m flops against the products' 4 d k n) grows: blocks of 64, and of
// 128 at n >= 256, k >= 1024 (forward + backward, one thread, MKL, k = d: 64 / 128 took
// 19.3 / 20.3 ms at d = 512, n = 256; 64.5 / 65.0 ms at d = 1024, n = 256, and half the
// backend calls; 277.6 / 268.4 ms at d = 2048). Where there is little work (d n <= 16384,
// n the columns of one entry), the Grams dominate and narrower blocks win: 32, and 16 from
// d n <= 4096.
// Over d = 64..1024, n = 1..128, one and two threads, this took 0.84x the time of blocks of
// 64 (geometric mean of forward + backward, weighted 2, and forward); 0.54-0.92x at n <= 16
// on one thread; the worst cells 1.14x (forward + backward, d = 1024, n = 8, two threads)
// and 1.13x (forward, d = 256, n = 64, one thread); U at d <= 128 likewise.
// benchmarks/cpu_blocks.py measures it.
index_t choose_block(index_t d, index_t k, index_t n, Device device) {
  constexpr index_t kGpuBlock = 128, kGpuOneBlockD = 1024, kGpuOneBlockN = 256;
  constexpr index_t kCpuBlock = 64, kCpuWideBlock = 128;
  constexpr index_t kCpuWideFromK = 1024, kCpuWideFromN = 256;
  constexpr index_t kSmallWork = 16384, kTinyWork = 4096, kSmallBlock = 32, kTinyBlock = 16;
  const index_t work = d * n;
  const index_t m = device == Device::cuda
                        ? (d <= kGpuOneBlockD && n <= kGpuOneBlockN ? k : kGpuBlock)
                    : n >= kCpuWideFromN && k >= kCpuWideFromK ? kCpuWideBlock
                    : work <= kTinyWork                        ? kTinyBlock
                    : work <= kSmallWork                       ? kSmallBlock
                                                               : kCpuBlock;
  return std::max<index_t>(1, std::min(m, k));
}

Strategy choose_strategy(index_t d, index_t k, index_t n) {
  return detail::materialize_cost(d, k, n) < detail::blockwise_cost(d, k, n)
             ? Strategy::materialize
             : Strategy::blockwise;
}

Plan::Plan(const Problem& p, Device device) : p_(p), device_(device) {
  Layout& L = L_;
  const bool lapack = p.kind == Kind::lapack;
  const char* vname = lapack ? "A" : "V";
  L.op = p.op, L.kind = p.kind, L.device = device, L.transpose = p.op == Op::apply && p.transpose;
  need_rank(p.V, 2, vname);
  L.V = matrices(p.V, vname);
  L.d = L.V.rows;
  L.k = L.V.cols;
  if (lapack) {
    need_rank(p.tau, 1, "tau");
    L.tau = vectors(p.tau, "tau");
    L.k = L.tau.rows;
    if (!same_lead(p.tau, 1, p.V, 2))
      bad("tau has batch dimensions " + shape_str(p.tau, 0, p.tau.rank - 1) + " but A has " +
          shape_str(p.V, 0, p.V.rank - 2));
    if (L.k > L.V.cols)
      bad("tau has " + std::to_string(L.k) + " reflectors but A has only " +
          std::to_string(L.V.cols) + " columns");
    if (L.k > L.d)
      bad("tau has " + std::to_string(L.k) + " reflectors but A has only d = " +
          std::to_string(L.d) + " rows");
  }
  if (p.block < 0) bad("block must be a positive integer, got " + std::to_string(p.block));
  if (p.op == Op::apply) {
    const std::string xn = p.x_name ? p.x_name : "X";
    need_rank(p.X, 2, xn.c_str());
    L.X = matrices(p.X, xn.c_str());
    if (L.X.rows != L.d)
      bad(xn + " has " + std::to_string(L.X.rows) + " rows (shape " + shape_str(p.X) + ") but " +
          vname + " has d = " + std::to_string(L.d));
    const bool same = same_lead(p.V, 2, p.X, 2);
    if (!same && L.V.batch != 1)
      bad(std::string("batch dimensions of ") + vname + " " + shape_str(p.V, 0, p.V.rank - 2) +
          " and " + xn + " " + shape_str(p.X, 0, p.X.rank - 2) + " must match, or " + vname +
          " must have none");
    L.B = L.X.batch;
    L.n = L.X.cols;
    L.shared = !same || L.B == 1;
    L.out_array = dense_like(p.X, 2, L.d, L.n, column_major(L.X));
    L.dX_array = L.out_array;
  } else {
    L.B = L.V.batch;
    L.shared = L.B == 1;
    if (lapack) {
      if (L.V.cols > L.d)
        bad("A has more columns (" + std::to_string(L.V.cols) + ") than rows (" +
            std::to_string(L.d) + ")");
      L.n = L.V.cols;
    } else {
      L.n = p.thin ? std::min(L.k, L.d) : L.d;
    }
    L.out_array = dense_like(p.V, 2, L.d, L.n, false);
  }
  L.bv = L.shared ? std::min<index_t>(L.B, 1) : L.B;
  if (L.shared && p.op == Op::apply) L.bv = 1;  // even for an empty batch: V still has a gradient
  if (L.shared) L.V.bs = 0, L.tau.bs = 0;
  L.dV_array = dense_like(p.V, 2, L.d, L.V.cols, column_major(L.V));
  {  // On the CPU, Y is laid out as V is, and an addressable V is its own Y (docs/math.md,
     // "Unit vectors first"); the orientations follow the BLAS view the algorithm takes.
    const Mat3& v = L.V;
    const index_t r = std::max<index_t>(v.rows, 1), c = std::max<index_t>(v.cols, 1);
    const bool by_columns = (v.rs == 1 || v.rows <= 1) && (v.cols <= 1 || v.cs >= r);
    const bool by_rows = (v.cs == 1 || v.cols <= 1) && (v.rows <= 1 || v.rs >= c);
    L.yt = device == Device::cpu && (by_columns ? false : by_rows || (v.cs == 1 && v.rs != 1));
    L.ydirect = device == Device::cpu && p.direct_y && !lapack && (by_columns || by_rows) && L.d > 0;
    // Rows a multiple of 256 elements apart (1 KiB of float32) share cache sets: MKL's
    // products that read Y across such rows (Y^T A, the Grams) ran 1.4-1.5x slower at k = 512
    // and 1024 than with rows 16 elements further apart. Where Y is written anyway (not V
    // itself: fasth.jax, LAPACK's reflectors), Y-like buffers take padded rows.
    const bool aliased = L.yt && L.k > 0 && L.k % kAliasedRows == 0;
    L.ky = aliased && !L.ydirect ? L.k + kRowPad : L.k;
    // Where Y is V itself, a forward reads a padded copy of it in its workspace (one copy of
    // d k elements), up to kPadCopyMax elements. One thread, k = d: forward 0.67x the time at
    // d = 1024, n = 16, 0.84x at n = 64, 0.95x at n = 256, 0.81-0.93x at d = 512 and 0.91x at
    // d = 2048, n = 128; forward + backward 0.79-1.0x. At d = 4096 the copy, and the fresh
    // pages of so large a workspace, cost more than it saved (n = 64: 125 -> 147 ms).
    const index_t v_ld = v.rows <= 1 ? c : v.rs;  // of V's rows, where it is Y (yt)
    L.ypad = L.ydirect && L.yt && v_ld % kAliasedRows == 0 && L.bv * L.d * L.k <= kPadCopyMax;
  }
  if (lapack) L.dtau_array = dense_vectors(p.tau, 1, L.k);

  // Strategy and blocks.
  if (p.op == Op::matrix) {
    L.single = true;  // unless blocks on the identity with a tape serve (below)
    L.strategy = Strategy::materialize;
  } else if (lapack) {
    L.single = false;  // apply with LAPACK's reflectors: always blockwise
    L.strategy = Strategy::blockwise;
  } else {
    L.strategy = p.strategy == Strategy::automatic ? choose_strategy(L.d, L.k, L.n) : p.strategy;
    if (L.k == 0) L.strategy = Strategy::blockwise;  // U = I: nothing to materialise
    L.single = L.strategy == Strategy::materialize;
  }
  auto blocks = [&](bool single) {
    // n per entry, not a shared V's whole batch: the plans of a forward and of its backward
    // must agree on the blocks where one shares V and the other does not (torch.func.vmap of
    // a gradient, whose backward gives a dV per example from the forward's factors).
    const index_t m = single ? L.k : p.block > 0 ? p.block : choose_block(L.d, L.k, L.n, device);
    L.m = std::max<index_t>(1, std::min(m, std::max<index_t>(L.k, 1)));
    L.nb = L.k == 0 ? 0 : (L.k + L.m - 1) / L.m;
  };
  blocks(L.single);
  // A householder U on the CPU: the blocks applied to the identity, keeping a tape for the
  // backward where it fits (4 d^2 k flops forward, 8 d^2 k backward), instead of the single
  // block (Gram, T and Z, then one GEMM: 5.3 d^3 forward, 9 d^3 backward). Float32, one
  // thread, d = 512: forward 6.8 against 9.5 ms (2.3x against 3.3x a GEMM of d^3),
  // forward + backward 23.4 against 24.1 ms; d = 256: 0.95 against 1.24 ms, 3.1 against
  // 3.2 ms. The GPU keeps the single block, a few launches.
  if (p.op == Op::matrix && !lapack && device == Device::cpu && L.k > 0) {
    const index_t m = L.m, nb = L.nb;
    blocks(false);
    if (detail::tape_elements(L) <= detail::kTapeMax) {
      L.single = false;
      L.strategy = Strategy::blockwise;
    } else {
      L.m = m, L.nb = nb;
    }
  }

  L.solve_t = device == Device::cuda && L.kind == Kind::householder && L.bv <= 1 && L.k > 0 &&
              L.k % L.m == 0;

  // Output layouts as batches of matrices.
  L.out = matrices(L.out_array, "out");
  L.dV = matrices(L.dV_array, "dV");
  if (L.shared) L.dV.bs = 0;
  if (lapack) L.dtau = vectors(L.dtau_array, "dtau"), L.dtau.bs = L.shared ? 0 : L.dtau.bs;
  if (p.op == Op::apply) L.dX = matrices(L.dX_array, "dX");

  detail::size_plan(L);
  p_.x_name = nullptr;  // read during construction only
}

}  // namespace fasth
