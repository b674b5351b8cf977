// The T factors of blocks of reflectors from their Gram matrices (LAPACK's larft).
#include "detail/dtypes.hpp"
#include "kernels.hpp"
#include "launch.cuh"

namespace fasth::cuda::kernels {
namespace {

// T factors, one thread block per block of reflectors. Row r of T depends only on row r of
// T and on G: T[r, i] = -tau_i sum_{r <= c < i} T[r, c] G[c, i], so each thread computes
// whole rows, with no synchronisation; the row being built lives in shared memory when
// m x m fits (kShared), else it is read back from the output in global memory. Reads of
// G[c, i] are consecutive across the threads of a warp. Writes T whole (zero below).
template <class T, bool kShared>
__global__ void larft_kernel(index_t count, index_t m, const T* g0, index_t ldg, index_t sg,
                             const T* tau, index_t stau, T* t0, index_t ldt, index_t st) {
  extern __shared__ __align__(16) unsigned char smem[];
  for (index_t blk = blockIdx.x; blk < count; blk += gridDim.x) {
    T* t = t0 + blk * st;
    const T* g = g0 + blk * sg;
    T* w = kShared ? reinterpret_cast<T*>(smem) : t;
    const index_t ldw = kShared ? m : ldt;
    for (index_t r = threadIdx.x; r < m; r += blockDim.x) {
      for (index_t i = 0; i < m; ++i) {
        const real_t<T> gii = real_of(g[i + i * ldg]);  // |y_i|^2, real
        const T ti = tau ? tau[blk * stau + i] : gii == 0 ? T(0) : T(2 / gii);
        T v = T(0);
        if (i == r) {
          v = ti;
        } else if (i > r && ti != T(0)) {
          T acc[4] = {T(0), T(0), T(0), T(0)};
          const T* gi = g + i * ldg;
          index_t c = r;
          for (; c + 4 <= i; c += 4) {
#pragma unroll
            for (int u = 0; u < 4; ++u) acc[u] += w[r + (c + u) * ldw] * gi[c + u];
          }
          for (; c < i; ++c) acc[0] += w[r + c * ldw] * gi[c];
          v = -ti * ((acc[0] + acc[1]) + (acc[2] + acc[3]));
        }
        w[r + i * ldw] = v;
        if constexpr (kShared) t[r + i * ldt] = v;
      }
    }
    if constexpr (kShared) __syncthreads();  // w is reused by the next block
  }
}

}  // namespace

template <class T>
void larft(int device, index_t count, index_t m, const T* g, index_t ldg, index_t sg,
           const T* tau, index_t stau, T* t, index_t ldt, index_t st, cudaStream_t s) {
  const unsigned threads = static_cast<unsigned>(std::min<index_t>(ceil_div(m, 32) * 32, 256));
  const dim3 grid(grid_dim(count, kMaxGridX));
  const std::size_t bytes = static_cast<std::size_t>(m) * m * sizeof(T);
  using D = dev_t<T>;
  if (bytes <= detail::smem_optin(device)) {
    allow_smem(larft_kernel<D, true>, bytes);
    larft_kernel<D, true><<<grid, threads, bytes, s>>>(count, m, dp(g), ldg, sg, dp(tau), stau,
                                                       dp(t), ldt, st);
  } else {
    larft_kernel<D, false><<<grid, threads, 0, s>>>(count, m, dp(g), ldg, sg, dp(tau), stau,
                                                    dp(t), ldt, st);
  }
}

#define FASTH_LARFT(T)                                                                      \
  template void larft(int, index_t, index_t, const T*, index_t, index_t, const T*, index_t, \
                      T*, index_t, index_t, cudaStream_t);
FASTH_FOR_EACH_DTYPE(FASTH_LARFT)
#undef FASTH_LARFT

}  // namespace fasth::cuda::kernels
