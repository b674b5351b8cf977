// Column normalisation Y = V / |V| (overflow-safe) and its backward, one thread block per
// column and batch entry.
#include "detail/dtypes.hpp"
#include "kernels.hpp"
#include "launch.cuh"

namespace fasth::cuda::kernels {
namespace {

constexpr int kReduceThreads = 256;

// The block's sum (op = 0) or max (op = 1) of x, in every thread.
template <class T>
__device__ T block_reduce(T x, bool max_op) {
  __shared__ T part[kReduceThreads / 32];
  for (int o = 16; o > 0; o /= 2) {
    const T y = __shfl_xor_sync(0xffffffffu, x, o);
    x = max_op ? (y > x || y != y ? y : x) : x + y;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) part[warp] = x;
  __syncthreads();
  T r = part[0];
  for (int w = 1; w < kReduceThreads / 32; ++w) r = max_op ? (part[w] > r || part[w] != part[w] ? part[w] : r) : r + part[w];
  return r;
}

// One thread block per column (x) and batch entry (y): Y = v / |v| with |v| computed as
// amax * sqrt(sum (v / amax)^2), so no finite column overflows or underflows.
template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    normalize_kernel(index_t batch, index_t d, index_t k, Strided<const T> v, Strided<T> y,
                     T* norms, index_t ns) {
  for (index_t e = blockIdx.y; e < batch; e += gridDim.y)
    for (index_t j = blockIdx.x; j < k; j += gridDim.x) {
      using R = real_t<T>;  // the norms are real (stored as T)
      const T* col = v.p + e * v.bs + j * v.cs;
      R amax = 0;
      for (index_t i = threadIdx.x; i < d; i += blockDim.x) {
        const R x = dabs(col[i * v.rs]);
        amax = x > amax || x != x ? x : amax;
      }
      amax = block_reduce(amax, true);
      T* out = y.p ? y.p + e * y.bs + j * y.cs : nullptr;  // null: the norms alone
      if (amax == R(0)) {
        if (out)
          for (index_t i = threadIdx.x; i < d; i += blockDim.x) out[i * y.rs] = T(0);
        if (threadIdx.x == 0) norms[e * ns + j] = T(0);
        continue;
      }
      R s = 0;
      for (index_t i = threadIdx.x; i < d; i += blockDim.x) s += abs2(col[i * v.rs] / amax);
      s = block_reduce(s, false);
      const R r = sqrt(s);
      if (out)
        for (index_t i = threadIdx.x; i < d; i += blockDim.x) out[i * y.rs] = col[i * v.rs] / amax / r;
      if (threadIdx.x == 0) norms[e * ns + j] = T(amax * r);
    }
}

// dV = (dY - Y Re(Y^H dY)) / |v| column by column (0 where |v| = 0).
template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    normalize_backward_kernel(index_t batch, index_t d, index_t k, Strided<const T> y,
                              const T* norms, index_t ns, Strided<const T> dy, Strided<T> dv) {
  for (index_t e = blockIdx.y; e < batch; e += gridDim.y)
    for (index_t j = blockIdx.x; j < k; j += gridDim.x) {
      const T* yc = y.p + e * y.bs + j * y.cs;
      const T* dc = dy.p + e * dy.bs + j * dy.cs;
      T* out = dv.p + e * dv.bs + j * dv.cs;
      using R = real_t<T>;
      const R nrm = real_of(norms[e * ns + j]);
      R dot = 0;
      for (index_t i = threadIdx.x; i < d; i += blockDim.x) dot += re_dot(yc[i * y.rs], dc[i * dy.rs]);
      dot = block_reduce(dot, false);
      for (index_t i = threadIdx.x; i < d; i += blockDim.x)
        out[i * dv.rs] = nrm == R(0) ? T(0) : (dc[i * dy.rs] - yc[i * y.rs] * dot) / nrm;
    }
}

}  // namespace

template <class T>
void normalize(index_t batch, index_t d, index_t k, Strided<const T> v, Strided<T> y, T* norms,
               index_t ns, cudaStream_t s) {
  const dim3 grid(grid_dim(k, kMaxGridX), grid_dim(batch, kMaxGridY));
  normalize_kernel<dev_t<T>><<<grid, kReduceThreads, 0, s>>>(batch, d, k, dp(v), dp(y),
                                                             dp(norms), ns);
}

template <class T>
void normalize_backward(index_t batch, index_t d, index_t k, Strided<const T> y,
                        const T* norms, index_t ns, Strided<const T> dy, Strided<T> dv,
                        cudaStream_t s) {
  const dim3 grid(grid_dim(k, kMaxGridX), grid_dim(batch, kMaxGridY));
  normalize_backward_kernel<dev_t<T>><<<grid, kReduceThreads, 0, s>>>(
      batch, d, k, dp(y), dp(norms), ns, dp(dy), dp(dv));
}

#define FASTH_NORMALIZE(T)                                                                   \
  template void normalize(index_t, index_t, index_t, Strided<const T>, Strided<T>, T*,       \
                          index_t, cudaStream_t);                                            \
  template void normalize_backward(index_t, index_t, index_t, Strided<const T>, const T*,    \
                                   index_t, Strided<const T>, Strided<T>, cudaStream_t);
FASTH_FOR_EACH_DTYPE(FASTH_NORMALIZE)
#undef FASTH_NORMALIZE

}  // namespace fasth::cuda::kernels
