// Tile kernels: copies (transposing through shared memory), set, scale and lower, each over a
// batch of matrices in 32 x 32 tiles.
#include "detail/dtypes.hpp"
#include "kernels.hpp"
#include "launch.cuh"

namespace fasth::cuda::kernels {
namespace {

// f(e, i0, j0) for each 32 x 32 tile at (i0, j0) of each batch entry e this block owns.
// Block-uniform, so f may hold __syncthreads.
template <class F>
__device__ void for_each_tile(index_t m, index_t n, index_t batch, F&& f) {
  const index_t tiles_m = ceil_div(m, kTile), tiles = tiles_m * ceil_div(n, kTile);
  for (index_t e = blockIdx.y; e < batch; e += gridDim.y)
    for (index_t t = blockIdx.x; t < tiles; t += gridDim.x)
      f(e, (t % tiles_m) * kTile, (t / tiles_m) * kTile);
}

// f(e, i, j) for each element (i, j) of an m x n matrix of each batch entry.
template <class F>
__device__ void for_each_element(index_t m, index_t n, index_t batch, F&& f) {
  for_each_tile(m, n, batch, [&](index_t e, index_t i0, index_t j0) {
    const index_t i = i0 + threadIdx.x;
    if (i >= m) return;
    for (index_t j = j0 + threadIdx.y; j < j0 + kTile && j < n; j += kRows) f(e, i, j);
  });
}

// B = op(A), B m x n; with lower_only, only the strict lower triangle of B (i > j) is
// written. Transposes go through a padded shared tile so both sides stay coalesced.
// mirror_upper is the in-place case (a == b, trans, lower_only): a lower tile reads only
// its mirror upper tile, which nobody writes, or itself (diagonal), loaded before written;
// complex, the mirror conjugates and the diagonal keeps its real part (Hermitian).
template <class T>
__global__ void __launch_bounds__(kTile* kRows)
    copy_kernel(bool trans, bool lower_only, index_t m, index_t n, const T* a, index_t lda,
                index_t sa, T* b, index_t ldb, index_t sb, index_t batch) {
  __shared__ T tile[kTile][kTile + 1];
  const int tx = threadIdx.x;
  for_each_tile(m, n, batch, [&](index_t e, index_t i0, index_t j0) {
    if (lower_only && i0 + kTile - 1 <= j0) return;  // no i > j here; block-uniform
    const T* ae = a + e * sa;
    T* be = b + e * sb;
    const index_t i = i0 + tx;
    if (!trans) {
      for (int jj = threadIdx.y; jj < kTile; jj += kRows) {
        const index_t j = j0 + jj;
        if (i < m && j < n && (!lower_only || i > j)) be[i + j * ldb] = ae[i + j * lda];
      }
      return;
    }
    // tile[il][jl] = A(j0 + jl, i0 + il) = B(i0 + il, j0 + jl); A is n x m.
    for (int jj = threadIdx.y; jj < kTile; jj += kRows)
      if (j0 + tx < n && i0 + jj < m) tile[jj][tx] = ae[(j0 + tx) + (i0 + jj) * lda];
    __syncthreads();
    for (int jj = threadIdx.y; jj < kTile; jj += kRows) {
      const index_t j = j0 + jj;
      if (i >= m || j >= n) continue;
      if (!lower_only) be[i + j * ldb] = tile[tx][jj];
      else if (i > j) be[i + j * ldb] = dconj(tile[tx][jj]);
      else if (is_complex_v<T> && i == j) be[i + j * ldb] = T(real_of(tile[tx][jj]));
    }
    __syncthreads();
  });
}

template <class T>
__global__ void __launch_bounds__(kTile* kRows)
    set_kernel(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
               index_t batch) {
  for_each_element(m, n, batch, [&](index_t e, index_t i, index_t j) {
    a[e * sa + i + j * lda] = i == j ? diag : offdiag;
  });
}

// B = A elementwise for any strides (the tiled copy_kernel covers the usual layouts).
template <class T>
__global__ void __launch_bounds__(kTile* kRows)
    strided_copy_kernel(index_t m, index_t n, Strided<const T> a, Strided<T> b, index_t batch) {
  for_each_element(m, n, batch, [&](index_t e, index_t i, index_t j) {
    b.p[e * b.bs + i * b.rs + j * b.cs] = a.p[e * a.bs + i * a.rs + j * a.cs];
  });
}

// B = strictly lower part of A, diag on the diagonal, zeros above.
template <class T>
__global__ void __launch_bounds__(kTile* kRows)
    lower_kernel(index_t d, index_t k, Strided<const T> a, Strided<T> b, T diag, index_t batch) {
  for_each_element(d, k, batch, [&](index_t e, index_t i, index_t j) {
    b.p[e * b.bs + i * b.rs + j * b.cs] =
        i > j ? a.p[e * a.bs + i * a.rs + j * a.cs] : i == j ? diag : T(0);
  });
}

// C = beta C (C = 0 when beta == 0, NaNs included): gemm with k == 0.
template <class T>
__global__ void __launch_bounds__(kTile* kRows)
    scale_kernel(index_t m, index_t n, T beta, T* c, index_t ldc, index_t sc, index_t batch) {
  for_each_element(m, n, batch, [&](index_t e, index_t i, index_t j) {
    T& x = c[e * sc + i + j * ldc];
    x = beta == T(0) ? T(0) : beta * x;
  });
}

}  // namespace

cudaError_t kernel_image_error() {
  cudaFuncAttributes attr;
  return cudaFuncGetAttributes(&attr, copy_kernel<float>);
}

template <class T>
void copy_tiles(bool trans, bool lower_only, index_t m, index_t n, const T* a, index_t lda,
                index_t sa, T* b, index_t ldb, index_t sb, index_t batch, cudaStream_t s) {
  copy_kernel<dev_t<T>><<<tile_grid(m, n, batch), tile_block(), 0, s>>>(
      trans, lower_only, m, n, dp(a), lda, sa, dp(b), ldb, sb, batch);
}

template <class T>
void copy_strided(index_t m, index_t n, Strided<const T> a, Strided<T> b, index_t batch,
                  cudaStream_t s) {
  strided_copy_kernel<dev_t<T>><<<tile_grid(m, n, batch), tile_block(), 0, s>>>(m, n, dp(a),
                                                                               dp(b), batch);
}

template <class T>
void set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda, index_t sa,
         index_t batch, cudaStream_t s) {
  set_kernel<dev_t<T>><<<tile_grid(m, n, batch), tile_block(), 0, s>>>(
      m, n, dv(offdiag), dv(diag), dp(a), lda, sa, batch);
}

template <class T>
void scale(index_t m, index_t n, T beta, T* c, index_t ldc, index_t sc, index_t batch,
           cudaStream_t s) {
  scale_kernel<dev_t<T>><<<tile_grid(m, n, batch), tile_block(), 0, s>>>(m, n, dv(beta), dp(c),
                                                                        ldc, sc, batch);
}

template <class T>
void lower(index_t d, index_t k, Strided<const T> a, Strided<T> b, T diag, index_t batch,
           cudaStream_t s) {
  lower_kernel<dev_t<T>><<<tile_grid(d, k, batch), tile_block(), 0, s>>>(d, k, dp(a), dp(b),
                                                                        dv(diag), batch);
}

#define FASTH_TILE(T)                                                                        \
  template void copy_tiles(bool, bool, index_t, index_t, const T*, index_t, index_t, T*,     \
                           index_t, index_t, index_t, cudaStream_t);                          \
  template void copy_strided(index_t, index_t, Strided<const T>, Strided<T>, index_t,        \
                             cudaStream_t);                                                   \
  template void set(index_t, index_t, T, T, T*, index_t, index_t, index_t, cudaStream_t);    \
  template void scale(index_t, index_t, T, T*, index_t, index_t, index_t, cudaStream_t);     \
  template void lower(index_t, index_t, Strided<const T>, Strided<T>, T, index_t, cudaStream_t);
FASTH_FOR_EACH_DTYPE(FASTH_TILE)
#undef FASTH_TILE

}  // namespace fasth::cuda::kernels
