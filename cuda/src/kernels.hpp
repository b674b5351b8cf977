// The CUDA backend's kernel launchers, plain C++ (the kernels are in the .cu files, one per
// family). Each enqueues one launch on `s` on the current device; the backend's method checks
// the launch (cudaGetLastError), under its own name for the error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "fasth/backend.hpp"

namespace fasth::cuda::kernels {

// Whether this library's kernels have an image for the current device (tile.cu).
cudaError_t kernel_image_error();

// tile.cu: 32 x 32 tiles over a batch of matrices.
// B = op(A), B m x n; lower_only writes only B's strict lower triangle (a == b with trans and
// lower_only mirrors the upper triangle into the lower).
template <class T>
void copy_tiles(bool trans, bool lower_only, index_t m, index_t n, const T* a, index_t lda,
                index_t sa, T* b, index_t ldb, index_t sb, index_t batch, cudaStream_t s);
// B = A for any strides.
template <class T>
void copy_strided(index_t m, index_t n, Strided<const T> a, Strided<T> b, index_t batch,
                  cudaStream_t s);
template <class T>
void set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
         index_t batch, cudaStream_t s);
// C = beta C (0 where beta == 0, NaNs included).
template <class T>
void scale(index_t m, index_t n, T beta, T* c, index_t ldc, index_t sc, index_t batch,
           cudaStream_t s);
template <class T>
void lower(index_t d, index_t k, Strided<const T> a, Strided<T> b, T diag, index_t batch,
           cudaStream_t s);

// normalize.cu: one thread block per column and batch entry.
template <class T>
void normalize(index_t batch, index_t d, index_t k, Strided<const T> v, Strided<T> y, T* norms,
               index_t ns, cudaStream_t s);
template <class T>
void normalize_backward(index_t batch, index_t d, index_t k, Strided<const T> y,
                        const T* norms, index_t ns, Strided<const T> dy, Strided<T> dv,
                        cudaStream_t s);

// larft.cu: one thread block per block of reflectors; T in shared memory where it fits.
template <class T>
void larft(int device, index_t count, index_t m, const T* g, index_t ldg, index_t sg,
           const T* tau, index_t stau, T* t, index_t ldt, index_t st, cudaStream_t s);

// small.cu: the small-d path, d <= kSmallD, one thread block per batch entry.
constexpr index_t kSmallD = 128;
// Whether the small path's backward fits the device's shared memory for d x k.
template <class T>
bool small_fits(int device, index_t d, index_t k);
template <class T>
void small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                  Strided<const T> V, Strided<T> U, T* y, index_t ys, T* norms, index_t ns,
                  T* u2, index_t u2s, cudaStream_t s);
template <class T>
void small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                           const T* y, index_t ys, const T* norms, index_t ns, const T* u,
                           index_t us, Strided<const T> G, Strided<T> dV, cudaStream_t s);

}  // namespace fasth::cuda::kernels
