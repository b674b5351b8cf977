// The small-d path's kernels (see kernels.hpp).
#include "kernels.hpp"
#include "launch.cuh"

namespace fasth::cuda::kernels {
namespace {

// The small-d path (d <= 128, where launches dominate): U = H_1 ... H_k and its backward
// reflector by reflector, one thread block per batch entry, one launch each. Threads work in
// groups of kGroup lanes; group q owns column q (or row q) and its lanes split the rows (or
// columns) of that column (row), reducing their partial dot products by shuffles.
constexpr int kGroup = 8;
constexpr int kMaxRows = kSmallD / kGroup;  // rows of a column per lane

template <class T>
__device__ T group_sum(T x) {
#pragma unroll
  for (int o = kGroup / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <class T>
__device__ T group_max(T x) {  // NaN wins
#pragma unroll
  for (int o = kGroup / 2; o > 0; o /= 2) {
    const T y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x || y != y ? y : x;
  }
  return x;
}

// dst (leading dimension ld) = the rows x cols matrix at src.
template <class T>
__device__ void load(T* dst, int ld, const T* src, index_t rs, index_t cs, int rows, int cols) {
  for (int x = threadIdx.x; x < rows * cols; x += blockDim.x) {
    const int i = x % rows, j = x / rows;
    dst[i + j * ld] = src[i * rs + j * cs];
  }
}

// U_e = (H_1 ... H_k)[:, :cols]: the columns of V normalised in shared memory (as the
// backend's normalize: amax, then the scaled sum of squares, so no finite column overflows or
// underflows; Y and the norms written out for the backward), then I[:, :cols] and
// U <- H_i U for i = k .. 1. Column q in registers (lane l holds rows l, l + kGroup, ...);
// no block barriers between reflectors. Blocks are multiples of 32 threads, all of which
// run every shuffle (loops over columns step whole rounds of groups).
template <class T>
__global__ void __launch_bounds__(1024)
    small_matrix_kernel(index_t batch, int d, int k, int cols, Strided<const T> V,
                        Strided<T> U, T* y, index_t ys, T* norms, index_t ns, T* u2,
                        index_t u2s) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* sv = reinterpret_cast<T*>(smem);  // V, d x k
  const int q = threadIdx.x / kGroup, l = threadIdx.x % kGroup;
  const int groups = blockDim.x / kGroup;
  for (index_t e = blockIdx.x; e < batch; e += gridDim.x) {
    load(sv, d, V.p + e * V.bs, V.rs, V.cs, d, k);
    __syncthreads();
    for (int j0 = 0; j0 < k; j0 += groups) {
      const int j = j0 + q;
      const bool on = j < k;
      T* col = sv + (on ? j : 0) * d;
      T amax = T(0);
      if (on)
        for (int r = l; r < d; r += kGroup) {
          const T x = fabs(col[r]);
          amax = x > amax || x != x ? x : amax;
        }
      amax = group_max(amax);
      T s = T(0);
      if (on && amax != T(0))
        for (int r = l; r < d; r += kGroup) {
          const T x = col[r] / amax;
          s += x * x;
        }
      s = group_sum(s);
      if (on) {
        const T rt = sqrt(s);
        for (int r = l; r < d; r += kGroup) {
          col[r] = amax == T(0) ? T(0) : col[r] / amax / rt;
          y[e * ys + r + j * d] = col[r];
        }
        if (l == 0) norms[e * ns + j] = amax == T(0) ? T(0) : amax * rt;
      }
    }
    __syncthreads();
    T a[kMaxRows];
#pragma unroll
    for (int t = 0; t < kMaxRows; ++t) a[t] = l + t * kGroup == q ? T(1) : T(0);
    for (int i = k - 1; i >= 0; --i) {
      const T* v = sv + i * d;
      T p = T(0), nn = T(0);
#pragma unroll
      for (int t = 0; t < kMaxRows; ++t) {
        const int r = l + t * kGroup;
        if (r < d) p += v[r] * a[t], nn += v[r] * v[r];
      }
      p = group_sum(p), nn = group_sum(nn);
      const T sc = nn == T(0) ? T(0) : T(2) / nn * p;  // tau_i (v_i . U[:, q])
#pragma unroll
      for (int t = 0; t < kMaxRows; ++t) {
        const int r = l + t * kGroup;
        if (r < d) a[t] -= sc * v[r];
      }
    }
    if (q < cols) {
      T* u = U.p + e * U.bs + q * U.cs;
      T* w = u2 ? u2 + e * u2s + q * d : nullptr;
#pragma unroll
      for (int t = 0; t < kMaxRows; ++t) {
        const int r = l + t * kGroup;
        if (r < d) {
          u[r * U.rs] = a[t];
          if (w) w[r] = a[t];
        }
      }
    }
    __syncthreads();  // sv is reloaded for the next entry
  }
}

// dV_e from the output A = U_e, its unit vectors Y_e and norms, and G = dL/dU_e (d x cols),
// for i = 1 .. k (U = H_1 (H_2 ...)):
// with tau = 2 / |v|^2 (0 for v = 0), A_in = H_i A, a = A_in^T v, g = G^T v,
//   dv_i = tau^2 (g . a) v - tau (G a + A_in g),  then G <- H_i G, A <- A_in.
// Phase 1, group q = column: a_q, g_q, and A_in[:, q]. Phase 2, group q = row: dv_i[q] and
// G[q, :]. A and G live in shared memory (leading dimension ld, odd against bank conflicts).
// dv_i is the gradient in y_i; through y = v / |v| it is dv_i / |v| (dv_i is orthogonal to
// y_i: a reflector depends on its vector's direction alone).
template <class T>
__global__ void __launch_bounds__(1024)
    small_matrix_backward_kernel(index_t batch, int d, int k, int cols, const T* y, index_t ys,
                                 const T* norms, index_t ns, const T* u, index_t us,
                                 Strided<const T> G, Strided<T> dV) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int ld = d | 1;
  T* sA = reinterpret_cast<T*>(smem);  // ld x cols
  T* sG = sA + ld * cols;              // ld x cols
  T* sv = sG + ld * cols;              // V, d x k
  T* sa = sv + d * k;                  // a, cols
  T* sg = sa + cols;                   // g, cols
  T* stau = sg + cols;                 // tau of the current reflector
  const int q = threadIdx.x / kGroup, l = threadIdx.x % kGroup;
  for (index_t e = blockIdx.x; e < batch; e += gridDim.x) {
    load(sA, ld, u + e * us, 1, d, d, cols);
    load(sG, ld, G.p + e * G.bs, G.rs, G.cs, d, cols);
    load(sv, d, y + e * ys, 1, d, d, k);
    __syncthreads();
    for (int i = 0; i < k; ++i) {
      const T* v = sv + i * d;
      {  // Phase 1: column q.
        T* A = sA + q * ld;
        const T* Gq = sG + q * ld;
        const bool on = q < cols;
        T p = T(0), g = T(0), nn = T(0);
        if (on)
          for (int r = l; r < d; r += kGroup)
            p += v[r] * A[r], g += v[r] * Gq[r], nn += v[r] * v[r];
        p = group_sum(p), g = group_sum(g), nn = group_sum(nn);
        const T tau = nn == T(0) ? T(0) : T(2) / nn;
        if (on) {
          for (int r = l; r < d; r += kGroup) A[r] -= tau * p * v[r];
          if (l == 0) sa[q] = tau == T(0) ? p : -p, sg[q] = g;  // A_in^T v = -A^T v
          if (q == 0 && l == 0) *stau = tau;
        }
      }
      __syncthreads();
      {  // Phase 2: row q.
        const bool on = q < d;
        const T tau = *stau;
        T s1 = T(0), s2 = T(0);  // (G a + A_in g)_q, g . a
        if (on)
          for (int j = l; j < cols; j += kGroup)
            s1 += sG[q + j * ld] * sa[j] + sA[q + j * ld] * sg[j], s2 += sg[j] * sa[j];
        s1 = group_sum(s1), s2 = group_sum(s2);
        if (on) {
          const T vq = v[q];
          if (l == 0) {  // d/dy, then through y = v / |v| (dy is orthogonal to y)
            const T nrm = norms[e * ns + i];
            const T dv = nrm == T(0) ? T(0) : (tau * tau * s2 * vq - tau * s1) / nrm;
            dV.p[e * dV.bs + q * dV.rs + i * dV.cs] = dv;
          }
          for (int j = l; j < cols; j += kGroup) sG[q + j * ld] -= tau * vq * sg[j];
        }
      }
      __syncthreads();
    }
  }
}

// Shared memory of the small-path kernels, in elements.
index_t small_matrix_smem(index_t d, index_t k) { return d * k; }
index_t small_backward_smem(index_t d, index_t k, index_t cols) {
  return 2 * (d | 1) * cols + d * k + 2 * cols + 1;
}

// Threads of a small-path block: kGroup lanes per column (or row), whole warps.
unsigned small_threads(index_t groups) {
  return static_cast<unsigned>((groups * kGroup + 31) / 32 * 32);
}

}  // namespace

template <class T>
bool small_fits(int device, index_t d, index_t k) {
  return small_backward_smem(d, k, d) * sizeof(T) <= detail::smem_optin(device);
}

template <class T>
void small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                  Strided<const T> V, Strided<T> U, T* y, index_t ys, T* norms, index_t ns,
                  T* u2, index_t u2s, cudaStream_t s) {
  const std::size_t bytes = small_matrix_smem(d, k) * sizeof(T);
  allow_smem(small_matrix_kernel<T>, bytes);
  small_matrix_kernel<T><<<grid_dim(batch, kMaxGridX), small_threads(cols), bytes, s>>>(
      batch, static_cast<int>(d), static_cast<int>(k), static_cast<int>(cols), V, U, y, ys,
      norms, ns, u2, u2s);
}

template <class T>
void small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                           const T* y, index_t ys, const T* norms, index_t ns, const T* u,
                           index_t us, Strided<const T> G, Strided<T> dV, cudaStream_t s) {
  const std::size_t bytes = small_backward_smem(d, k, cols) * sizeof(T);
  allow_smem(small_matrix_backward_kernel<T>, bytes);
  small_matrix_backward_kernel<T><<<grid_dim(batch, kMaxGridX), small_threads(d), bytes, s>>>(
      batch, static_cast<int>(d), static_cast<int>(k), static_cast<int>(cols), y, ys, norms, ns,
      u, us, G, dV);
}

#define FASTH_SMALL(T)                                                                       \
  template bool small_fits<T>(int, index_t, index_t);                                        \
  template void small_matrix(index_t, index_t, index_t, index_t, Strided<const T>,      \
                             Strided<T>, T*, index_t, T*, index_t, T*, index_t, cudaStream_t); \
  template void small_matrix_backward(index_t, index_t, index_t, index_t, const T*,     \
                                      index_t, const T*, index_t, const T*, index_t,         \
                                      Strided<const T>, Strided<T>, cudaStream_t);
FASTH_SMALL(float)
FASTH_SMALL(double)
#undef FASTH_SMALL

}  // namespace fasth::cuda::kernels
