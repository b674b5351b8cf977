// fasth: products of Householder reflectors, U = H_1 ... H_k, in blocked compact-WY form.
//
// The public C++ API, shaped like tiny-cuda-nn's: a Plan is made once for the arrays'
// shapes and strides (it validates them, picks the block size and strategy, and sizes
// every buffer), then runs forward and backward on raw pointers with a Backend, which
// carries the BLAS (CPU) or the device and stream (CUDA). The core never allocates memory
// and never picks a stream: the caller passes the outputs, a workspace of
// workspace_size(pass) elements, and a factors buffer of factors_size() elements, the
// opaque context that the forward fills and the backward reads.
//
//   householder  H_i = I - 2 v_i v_i^T / |v_i|^2, v_i column i of V (d x k, any k >= 0;
//                a zero column is the identity, with zero gradient)
//   lapack       H_i = I - tau_i v_i v_i^T, v_i the unit lower part of column i of A
//                (geqrf's output: ones on the diagonal, zeros above; any tau; k <= d)
//
//   apply    out = U X, or U^T X with transpose           X (..., d, n)
//   matrix   out = U (d x d), its thin frame U[:, :min(k, d)] (householder, thin), or
//            U[:, :c] for A of c columns (lapack: householder_product)
//
// Arrays are N-d, matrices in their last two dimensions; leading dimensions are a batch, the
// same on V and X, or absent from V (one V shared by the batch: its gradient is summed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "fasth/backend.hpp"

namespace fasth {

constexpr int kMaxRank = 8;

// An N-d array's shape and element strides (any strides: the core copies what BLAS cannot
// address).
struct Array {
  int rank = 0;
  index_t shape[kMaxRank] = {};
  index_t strides[kMaxRank] = {};

  Array() = default;
  Array(std::initializer_list<index_t> shape, std::initializer_list<index_t> strides);
  // C order (row-major, the last dimension contiguous).
  static Array dense(std::initializer_list<index_t> shape);
};

enum class Kind : int { householder = 0, lapack = 1 };
enum class Op : int { apply = 0, matrix = 1 };
enum class Strategy : int {
  automatic = 0,    // chosen by cost, see Plan::strategy()
  blockwise = 1,    // k/m sequential steps of compact-WY blocks
  materialize = 2,  // build U once in one block, then one GEMM (the regime n >> d)
};
enum class Device : int { cpu = 0, cuda = 1 };
enum class Pass : int { forward = 0, backward = 1 };

struct Problem {
  Op op = Op::apply;
  Kind kind = Kind::householder;
  Array V;                 // (..., d, k); lapack: A (..., d, c) with its reflectors in front
  Array tau;               // lapack: (..., k)
  Array X;                 // apply: (..., d, n)
  bool transpose = false;  // apply: U^T X
  bool thin = false;       // householder matrix: U[:, :min(k, d)]
  index_t block = 0;       // reflectors per block; 0: chosen for the sizes and device
  Strategy strategy = Strategy::automatic;
  const char* x_name = "X";  // how errors name X (read while the plan is made, then cleared)
  // The CPU may use V itself for its unit vectors (no copy) where its columns' norms allow;
  // false keeps the factors laid out alike on every device (JAX sizes them for any device).
  bool direct_y = true;
};

// Where a run reads and writes; pointers to the first element of arrays laid out as the
// plan's Arrays say (inputs as given to the plan, outputs as out(), d_V(), ...).
template <class T>
struct Forward {
  const T* V = nullptr;
  const T* tau = nullptr;  // lapack
  const T* X = nullptr;    // apply
  T* out = nullptr;
  T* factors = nullptr;    // filled here, for the backward (and further forward_with calls)
  T* workspace = nullptr;  // workspace_size(Pass::forward)
  // Optional, tape_size() elements: what this call's backward reads instead of recomputing
  // it (each block's input and products). nullptr: not kept.
  T* tape = nullptr;
  // Elements between consecutive V entries' factors: 0 for factors_stride(), or more, where
  // a caller sizes factors for several plans (fasth.jax: for every device's).
  std::size_t factors_stride = 0;
};

template <class T>
struct Backward {
  const T* V = nullptr;     // as given to the forward
  const T* factors = nullptr;
  // The forward's output (householder apply, and a householder matrix made blockwise: the
  // blocks' inputs are recovered from it through orthogonality), or its input X (lapack
  // apply); unused by a single-block matrix, and where a tape is given. Any strides, as
  // `saved_layout` says.
  const T* saved = nullptr;
  Array saved_layout;
  const T* grad = nullptr;  // dL/dout, laid out as `grad_layout` (any strides)
  Array grad_layout;
  T* dV = nullptr;          // laid out as d_V(); lapack: dL/dA
  T* dtau = nullptr;        // lapack: laid out as d_tau()
  T* dX = nullptr;          // apply: laid out as d_X(); nullptr: not wanted
  T* workspace = nullptr;   // workspace_size(Pass::backward)
  // The tape that this call's forward filled, or nullptr: the backward then recovers each
  // block's input from `saved` (a third more work).
  const T* tape = nullptr;
  std::size_t factors_stride = 0;  // as the forward's (see Forward)
};

namespace detail {
// A batch of matrices: element (i, j) of entry b at b * bs + i * rs + j * cs.
struct Mat3 {
  index_t batch = 0, rows = 0, cols = 0, rs = 1, cs = 1, bs = 0;
};
// Everything a run needs to know, resolved once by the plan (fasth's own code reads it).
struct Layout {
  Op op = Op::apply;
  Kind kind = Kind::householder;
  Device device = Device::cpu;
  bool transpose = false;
  index_t B = 0, bv = 0, d = 0, k = 0, n = 0, m = 1, nb = 0;
  bool shared = true;       // one V (and its factors) for the whole batch
  bool yt = false;          // Y stored row-major, as a row-major V is (CPU)
  index_t ky = 0;           // elements a row of a Y-like buffer takes: k, padded where yt
  bool ydirect = false;     // Y is V itself unless a norm is too extreme to square (CPU)
  bool ypad = false;        // ydirect, V's rows alias: a forward reads a padded copy of V
  bool single = false;      // one block with the full T: matrix, and the materialised apply
  // The T of a householder block wider than the backend's larft by a triangular solve,
  // T = S^-1 (a few calls), not by leaves merged level by level (two calls a level): CUDA,
  // one V, where calls are launches.
  bool solve_t = false;
  Strategy strategy = Strategy::blockwise;
  Mat3 V, tau, X, out, dV, dtau, dX;  // the arrays as batches of matrices
  Array out_array, dV_array, dtau_array, dX_array;
  // Factors of one V entry, fstride apart: unit reflectors Y (d x k), their norms or taus
  // (nb * m, zero past k), per block its T and Gram matrix (m x m each), the householder
  // single block's Z = Y_E T^T (c x k), and U itself for the materialised apply (d x d) and,
  // on CUDA, for matrix (d x n: a small-d path's backward reads it).
  std::size_t fstride = 0, f_aux = 0, f_blocks = 0, f_z = 0, f_u = 0;
  // The tape of a householder blockwise run (an apply, or U on the CPU), when small enough
  // (see size_plan): each block's input (B d n, in forward order), then its products
  // W1 = Y^T A and W2 = op(T) W1 (m B n each).
  std::size_t tape = 0;
  std::size_t ws[2] = {0, 0};  // forward, backward
  std::size_t ws_y = 0;        // the head of every workspace: Y normalised, where needed
  // Whether a backward given no tape reads `saved` (the forward's output, or a LAPACK apply's
  // input): all but the single block's U.
  bool reads_saved() const { return op == Op::apply || !single; }
};
}  // namespace detail

class Plan {
 public:
  // Validates the problem (std::invalid_argument, naming the argument) and resolves it.
  Plan(const Problem& problem, Device device);

  const Problem& problem() const { return p_; }
  Device device() const { return device_; }
  index_t batch() const { return L_.B; }    // entries of X / out
  bool shared() const { return L_.shared; }  // one V for the whole batch
  index_t d() const { return L_.d; }
  index_t k() const { return L_.k; }        // reflectors
  index_t n() const { return L_.n; }        // columns of X / out
  index_t block() const { return L_.m; }
  Strategy strategy() const { return L_.strategy; }

  std::size_t factors_size() const { return static_cast<std::size_t>(L_.bv) * L_.fstride; }
  std::size_t factors_stride() const { return L_.fstride; }  // per entry of V
  // Elements; the forward's covers factors() and forward_with() as well.
  std::size_t workspace_size(Pass pass) const { return L_.ws[static_cast<int>(pass)]; }
  // Elements of the optional tape (0: this plan keeps none): what a forward may leave for
  // its backward, which then does 8 d k n flops instead of 12 d k n.
  std::size_t tape_size() const { return L_.tape; }
  bool reads_saved() const { return L_.reads_saved(); }  // see Backward::saved
  // The outputs' shapes and strides (dense), for the caller to allocate.
  const Array& out() const { return L_.out_array; }
  const Array& d_V() const { return L_.dV_array; }
  const Array& d_tau() const { return L_.dtau_array; }
  const Array& d_X() const { return L_.dX_array; }

  // factors() then forward_with() (unless a.out is null): the usual forward.
  template <class T>
  void forward(const Backend<T>& be, const Forward<T>& a) const;
  // The T factors (and unit reflectors) of V alone, into a.factors; X and out unused.
  template <class T>
  void factors(const Backend<T>& be, const Forward<T>& a) const;
  // The forward with factors that an earlier factors() or forward() of this plan filled
  // (a V applied again and again: no work per V, which it still reads on the CPU).
  template <class T>
  void forward_with(const Backend<T>& be, const Forward<T>& a) const;
  template <class T>
  void backward(const Backend<T>& be, const Backward<T>& a) const;

  const detail::Layout& layout() const { return L_; }

 private:
  // std::invalid_argument where a pointer that the run needs is null.
  template <class T>
  void check_forward(const Forward<T>& a, const char* run, bool out) const;
  Problem p_;
  Device device_;
  detail::Layout L_;
};

// The block size m for a problem of these sizes on this kind of device (n: the columns of
// one entry of X), and the strategy (blockwise or materialize) that costs less for
// forward + backward.
index_t choose_block(index_t d, index_t k, index_t n, Device device);
Strategy choose_strategy(index_t d, index_t k, index_t n);

// Backend calls (each one BLAS call or kernel launch on a batch), counted by operation
// while counting is on; process-wide, thread-safe.
enum class Call : int {
  gemm, trmm, trsm, gram, copy, set, larft, mirror_upper, normalize, normalize_backward, lower,
  small_matrix, small_matrix_backward, count_
};
const char* call_name(Call c);
void count_calls(bool on);
void reset_call_counts();
std::int64_t call_count(Call c);

}  // namespace fasth
