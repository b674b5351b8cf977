// A Plan made: the Problem validated and resolved into its Layout (the arrays as batches of
// matrices, the outputs' layouts, how Y is stored, the strategy and blocks), then sized by
// size_plan (planning.cpp).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "detail/planning.hpp"

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

bool leading_stride(const index_t* shape, const index_t* strides, int lead, index_t& stride) {
  stride = 0;
  for (int i = 0; i < lead; ++i)
    if (shape[i] == 0) return true;  // an empty batch: nothing to walk
  index_t expect = 0;
  bool first = true;
  for (int i = lead - 1; i >= 0; --i) {
    if (shape[i] == 1) continue;
    if (first) stride = strides[i], expect = stride * shape[i], first = false;
    else if (strides[i] != expect) return false;
    else expect *= shape[i];
  }
  return true;
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
  for (int i = from; i < to; ++i) s += (i > from ? ", " : "") + std::to_string(a.shape[i]);
  return s + (to - from == 1 ? ",)" : ")");  // Python's spelling: (5,) and (5, 3)
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

Mat3 matrices(const Array& a, const char* name) {
  Mat3 m;
  m.batch = lead_size(a, 2);
  m.rows = a.shape[a.rank - 2];
  m.cols = a.shape[a.rank - 1];
  m.rs = a.strides[a.rank - 2];
  m.cs = a.strides[a.rank - 1];
  if (!leading_stride(a.shape, a.strides, a.rank - 2, m.bs))
    bad(std::string(name) + "'s batch dimensions cannot be walked with one stride; pass a contiguous copy");
  return m;
}

Mat3 vectors(const Array& a, const char* name) {  // (..., k) as a batch of k x 1 matrices
  Mat3 m;
  m.batch = lead_size(a, 1);
  m.rows = a.shape[a.rank - 1];
  m.cols = 1;
  m.rs = a.strides[a.rank - 1];
  m.cs = std::max<index_t>(m.rows, 1);
  if (!leading_stride(a.shape, a.strides, a.rank - 1, m.bs))
    bad(std::string(name) + "'s batch dimensions cannot be walked with one stride; pass a contiguous copy");
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

// CPU: small U where per-entry BLAS calls on blocks of a few columns cost more than their
// flops: the backend's small-d path builds U for a tile of entries at once. It fills its
// vector lanes with entries, so beyond d = 16 it pays only for many V entries: fasth's dense
// reflectors (4 d^2 k flops) from 1024 entries up to d = 64, LAPACK's (orgqr's 4/3 d^3) from
// 8 up to d = 128. A matrix, and an apply whose X has n >= d / 4 columns (U then costs about
// 4 d^2 k flops against the blocks' 16 d k n).
bool cpu_small(const Layout& L) {
  constexpr index_t kMaxD = 128, kMaxK = 256, kApplyColsPerRow = 4, kAnyBatchD = 16;
  constexpr index_t kDenseMaxD = 64, kDenseEntries = 1024, kLapackEntries = 8;
  if (L.d < 1 || L.d > kMaxD || L.k < 1 || L.k > kMaxK) return false;
  const bool lapack = L.kind == Kind::lapack;
  const bool enough = L.d <= kAnyBatchD || (lapack ? L.bv >= kLapackEntries
                                                   : L.d <= kDenseMaxD && L.bv >= kDenseEntries);
  if (!enough) return false;
  if (L.op == Op::matrix) return true;
  return !lapack && L.n * kApplyColsPerRow >= L.d;
}

}  // namespace

Plan::Plan(const Problem& p, Device device) : Plan(p, device, PlanOptions{}) {}

Plan::Plan(const Problem& p, Device device, const PlanOptions& options)
    : p_(p), device_(device) {
  auto layout = std::make_shared<Layout>();
  Layout& L = *layout;
  const bool lapack = p.kind == Kind::lapack;
  const char* vname = lapack ? "A" : "V";
  L.op = p.op, L.kind = p.kind, L.device = device, L.transpose = p.op == Op::apply && p.transpose;
  L.complex = p.complex;
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
    const std::string& xn = options.x_name;
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
    // A complex Y is column-major, and V is its own Y only where it is too (see view).
    L.yt = device == Device::cpu && !p.complex &&
           (by_columns ? false : by_rows || (v.cs == 1 && v.rs != 1));
    L.ydirect = device == Device::cpu && options.direct_y && !lapack &&
                (by_columns || (by_rows && !p.complex)) && L.d > 0;
    // Rows a multiple of 256 elements apart (1 KiB of float32) share cache sets, which slows
    // the products that read Y across them: where Y is written anyway (not V itself:
    // fasth.jax, LAPACK's reflectors), Y-like buffers take padded rows.
    const bool aliased = L.yt && L.k > 0 && L.k % kAliasedRows == 0;
    L.ky = aliased && !L.ydirect ? L.k + kRowPad : L.k;
    // Where Y is V itself, a forward reads a padded copy of it in its workspace (one copy of
    // d k elements), up to kPadCopyMax elements, beyond which the copy costs more than it saves.
    const index_t v_ld = v.rows <= 1 ? c : v.rs;  // of V's rows, where it is Y (yt)
    L.ypad = L.ydirect && L.yt && v_ld % kAliasedRows == 0 && L.bv * L.d * L.k <= kPadCopyMax;
  }
  if (lapack) L.dtau_array = dense_vectors(p.tau, 1, L.k);
  // The small-d path (Layout::small): CUDA's for fasth's reflectors at the sizes its backend
  // takes (d <= 128, k <= 512; the plan reserves the path's scratch there, whose size grows as
  // 16 d^2), the CPU's by its rule; Y then lives column-major in the factors.
  constexpr index_t kCudaSmallD = 128, kCudaSmallK = 512;
  // (Real types only: the complex blocks take every size.)
  L.small = !p.complex && (device == Device::cuda
                               ? !lapack && L.d <= kCudaSmallD && L.k <= kCudaSmallK
                               : cpu_small(L));
  if (L.small && device == Device::cpu) L.yt = L.ydirect = L.ypad = false, L.ky = L.k;

  // Strategy and blocks.
  if (p.op == Op::matrix) {
    L.single = true;  // unless blocks on the identity with a tape serve (below)
    L.strategy = Strategy::materialize;
  } else if (lapack) {
    L.single = false;  // apply with LAPACK's reflectors: always blockwise
    L.strategy = Strategy::blockwise;
  } else {
    L.strategy = p.strategy != Strategy::automatic ? p.strategy
                 : L.small && device == Device::cpu ? Strategy::materialize
                                                    : choose_strategy(L.d, L.k, L.n);
    if (L.k == 0) L.strategy = Strategy::blockwise;  // U = I: nothing to materialise
    // Complex: blockwise only (the materialised apply's products would need its X, out and
    // gradients column-major, which the blockwise walk does without).
    if (p.complex) L.strategy = Strategy::blockwise;
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
  // backward where it fits (4 d^2 k flops forward, 8 d^2 k backward), cost less than the
  // single block (5.3 d^3 forward, 9 d^3 backward). The GPU keeps the single block, a few
  // launches.
  if (p.op == Op::matrix && !lapack && device == Device::cpu && L.k > 0 && !L.small) {
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
  L_ = std::move(layout);
}

index_t Plan::batch() const { return L_->B; }
bool Plan::shared() const { return L_->shared; }
index_t Plan::d() const { return L_->d; }
index_t Plan::k() const { return L_->k; }
index_t Plan::n() const { return L_->n; }
index_t Plan::block() const { return L_->m; }
Strategy Plan::strategy() const { return L_->strategy; }
std::size_t Plan::factors_size() const { return detail::sz(L_->bv) * L_->factors_stride; }
std::size_t Plan::factors_stride() const { return L_->factors_stride; }
std::size_t Plan::workspace_size(Pass pass) const { return L_->workspace[static_cast<int>(pass)]; }
std::size_t Plan::tape_size() const { return L_->tape_size; }
bool Plan::reads_saved() const { return L_->reads_saved(); }
const Array& Plan::out() const { return L_->out_array; }
const Array& Plan::d_V() const { return L_->dV_array; }
const Array& Plan::d_tau() const { return L_->dtau_array; }
const Array& Plan::d_X() const { return L_->dX_array; }

}  // namespace fasth
