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
#include <memory>
#include <string>

#include "fasth/backend.hpp"
#include "fasth/scalar.hpp"

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
enum class Pass : int { forward = 0, backward = 1, tangent = 2 };

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
  // Complex elements (std::complex<float> or <double>): H_i = I - tau_i v_i v_i^H and U^H for
  // transpose, LAPACK's complex conventions. The plan keeps every complex operand of a
  // product column-major (BLAS conjugates only along with a transpose).
  bool complex = false;
};

// What a front end adds to a Problem; a C++ user needs none of it.
struct PlanOptions {
  std::string x_name = "X";  // how errors name X
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

// Forward mode: the tangent of the op's output at (V, tau, X) in the direction (dV, dtau, dX),
// from the factors that the forward filled. Each direction is laid out as `*_layout` says
// (the shape of its primal, any strides), or null: zero.
template <class T>
struct Tangent {
  const T* V = nullptr;        // as given to the forward
  const T* X = nullptr;        // apply: its input
  const T* factors = nullptr;
  const T* dV = nullptr;       // lapack: the tangent of A
  Array dV_layout;
  const T* dtau = nullptr;     // lapack
  Array dtau_layout;
  const T* dX = nullptr;       // apply
  Array dX_layout;
  T* dout = nullptr;           // laid out as out()
  T* workspace = nullptr;      // workspace_size(Pass::tangent)
  std::size_t factors_stride = 0;  // as the forward's (see Forward)
};

namespace detail {
struct Layout;  // what the plan resolves (fasth's own code reads it)
}  // namespace detail

class Plan {
 public:
  // Validates the problem (std::invalid_argument, naming the argument) and resolves it.
  Plan(const Problem& problem, Device device);
  Plan(const Problem& problem, Device device, const PlanOptions& options);

  const Problem& problem() const { return p_; }
  Device device() const { return device_; }
  index_t batch() const;   // entries of X / out
  bool shared() const;     // one V for the whole batch
  index_t d() const;
  index_t k() const;       // reflectors
  index_t n() const;       // columns of X / out
  index_t block() const;
  Strategy strategy() const;

  std::size_t factors_size() const;
  std::size_t factors_stride() const;  // per entry of V
  // Elements; the forward's covers factors() and forward_with() as well.
  std::size_t workspace_size(Pass pass) const;
  // Elements of the optional tape (0: this plan keeps none): what a forward may leave for
  // its backward, which then does 8 d k n flops instead of 12 d k n.
  std::size_t tape_size() const;
  bool reads_saved() const;  // see Backward::saved
  // The outputs' shapes and strides (dense), for the caller to allocate.
  const Array& out() const;
  const Array& d_V() const;
  const Array& d_tau() const;
  const Array& d_X() const;

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
  // Forward mode (see Tangent): about three forwards' flops.
  template <class T>
  void tangent(const Backend<T>& be, const Tangent<T>& a) const;

 private:
  // std::invalid_argument where a pointer that the run needs is null.
  template <class T>
  void check_forward(const Forward<T>& a, const char* run, bool out) const;
  Problem p_;
  Device device_;
  std::shared_ptr<const detail::Layout> L_;  // immutable: copies of a plan share it
};

// The one stride that walks the leading `lead` dimensions of (shape, strides), where one
// does: a dimension of size 1 imposes no constraint, and an empty batch (a dimension of
// size 0) none at all (stride 0 where nothing constrains it).
bool leading_stride(const index_t* shape, const index_t* strides, int lead, index_t& stride);

// The block size m for a problem of these sizes on this kind of device (n: the columns of
// one entry of X), and the strategy (blockwise or materialize) that costs less for
// forward + backward.
index_t choose_block(index_t d, index_t k, index_t n, Device device);
Strategy choose_strategy(index_t d, index_t k, index_t n);

// The Backend's operations. Calls of each (one BLAS call or kernel launch on a batch) are
// counted while counting is on; process-wide, thread-safe.
enum class BackendOp : int {
  gemm, trmm, trsm, gram, copy, set, larft, mirror_upper, normalize, normalize_backward, lower,
  small_matrix, small_matrix_backward, count_
};
const char* backend_op_name(BackendOp op);
void count_backend_ops(bool on);
void reset_backend_op_counts();
std::int64_t backend_op_count(BackendOp op);

}  // namespace fasth
