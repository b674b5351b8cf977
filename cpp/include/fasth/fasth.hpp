// fasth: products of Householder reflectors, U = H_1 ... H_k, in blocked compact-WY form.
//
// The public C++ API. Every function takes raw pointers with strides, a Backend (which
// carries the BLAS, or the CUDA stream and cuBLAS handle), outputs and a workspace that the
// caller allocates; the core never allocates memory and never picks a stream.
//
//   V  (batch, d, k)  Householder vectors in columns, H_i = I - 2 v_i v_i^T / |v_i|^2
//   X  (batch, d, n)  apply:      out = U X, or U^T X with transpose
//                     matrix:     out = U (d x d), or its thin frame U[:, :k]
//
// A V with batch stride 0 is shared by every batch entry; its gradient is then summed.
// Call order: factors() once per V, then any forward/backward op with those factors and the
// same Shape (a materialize shape on a backend with a small-d path leaves them zero: unused).
#pragma once

#include <cstddef>
#include <cstdint>

#include "fasth/backend.hpp"

namespace fasth {

// A batch of matrices: element (i, j) of entry b is data[b * bs + i * rs + j * cs].
// Usable without a copy when BLAS can address it: rs == 1 (column-major) or cs == 1
// (row-major), with a leading dimension that covers the other extent.
template <class T>
struct Matrix {
  T* data = nullptr;
  index_t rows = 0, cols = 0;
  index_t rs = 1, cs = 1, bs = 0;
};

// True when a rows x cols matrix with these element strides can be handed to BLAS.
bool addressable(index_t rows, index_t cols, index_t rs, index_t cs);

enum class Strategy : int {
  automatic = 0,    // chosen by flop count, see choose_strategy
  blockwise = 1,    // k/m sequential block steps of compact-WY products
  materialize = 2,  // build U once, then one GEMM (the regime n >> d)
};

enum class Device : int { cpu = 0, cuda = 1 };

// Block size m (reflectors per compact-WY block) for this problem on this kind of device.
index_t choose_block(index_t d, index_t k, index_t n, Device device);
// blockwise or materialize, whichever costs fewer flops for forward + backward.
Strategy choose_strategy(index_t d, index_t k, index_t n);

// Everything an operation needs to know about its sizes.
struct Shape {
  index_t batch = 1;      // batch entries of X / out
  bool shared_v = false;  // V (and its factors) has batch stride 0
  index_t d = 0, k = 0;   // V is d x k
  index_t n = 0;          // columns of X; for matrix(): d, or k when thin
  index_t block = 0;      // 0: choose_block(d, k, n, device)
  Strategy strategy = Strategy::automatic;
};

enum class Op : int { factors, apply, apply_backward, matrix, matrix_backward };

// Resolves block == 0 and Strategy::automatic; done by every entry point below as well.
Shape resolve(Shape s, Device device);
// Elements of T in the factors buffer: for each V-batch entry and block, T and the Gram Y^T Y.
std::size_t factors_size(const Shape& s);
// Elements of T of workspace that `op` needs. Every op's workspace also serves factors() of
// the same shape, so one buffer can go to both calls.
std::size_t workspace_size(Op op, const Shape& s);

// The T factors of every block, once per V. `factors` holds factors_size(s) elements; the
// workspace, workspace_size(Op::factors, s) (scratch for blocks wider than the backend's
// larft_max()).
template <class T>
void factors(const Backend<T>& be, const Shape& s, Matrix<const T> V, T* factors, T* workspace);

// out = U X, or U^T X. out may not overlap X.
template <class T>
void apply(const Backend<T>& be, const Shape& s, bool transpose, Matrix<const T> V,
           const T* factors, Matrix<const T> X, Matrix<T> out, T* workspace);

// Gradients of apply from its output alone: dX (may alias nothing) and dV (batch stride 0
// when V is shared: summed over the batch).
template <class T>
void apply_backward(const Backend<T>& be, const Shape& s, bool transpose, Matrix<const T> V,
                    const T* factors, Matrix<const T> out, Matrix<const T> grad, Matrix<T> dX,
                    Matrix<T> dV, T* workspace);

// out = U (s.n == d) or the thin frame U[:, :k] (s.n == k).
template <class T>
void matrix(const Backend<T>& be, const Shape& s, Matrix<const T> V, const T* factors,
            Matrix<T> out, T* workspace);

// dV from out = matrix(V) and grad = dL/dout.
template <class T>
void matrix_backward(const Backend<T>& be, const Shape& s, Matrix<const T> V, const T* factors,
                     Matrix<const T> out, Matrix<const T> grad, Matrix<T> dV, T* workspace);

}  // namespace fasth
