// The CUDA backend: cuBLAS for gemm, small kernels for the rest. See cuda_backend.hpp.
#include "fasth/cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fasth::cuda {
namespace {

// ---------------------------------------------------------------------------------------
// Errors, devices, handles

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("fasth CUDA: " + what); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail(std::string(what) + ": " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) +
         ")");
}

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = prev_;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// One handle per device, guarded by that device's mutex (creation and every use).
constexpr int kMaxDevices = 64;
struct Slot {
  std::mutex mu;
  cublasHandle_t handle = nullptr;
};

Slot& slot(int device) {
  static Slot slots[kMaxDevices];
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count || device >= kMaxDevices)
    fail("invalid device " + std::to_string(device) + " (" + std::to_string(count) +
         " devices)");
  return slots[device];
}

// Requires s.mu held.
cublasHandle_t handle_locked(Slot& s, int device) {
  if (!s.handle) {
    DeviceGuard guard(device);
    cublasHandle_t h = nullptr;
    check(cublasCreate(&h), "cublasCreate");
    const cublasStatus_t st = cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST);
    if (st != CUBLAS_STATUS_SUCCESS) cublasDestroy(h);
    check(st, "cublasSetPointerMode");
    s.handle = h;
  }
  return s.handle;
}

// A call's stream and math mode on the device's handle; requires its slot's mutex held.
void bind(cublasHandle_t h, cudaStream_t stream, bool tf32) {
  check(cublasSetStream(h, stream), "cublasSetStream");
  check(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
  check(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
        "cublasSetMathMode");
}

// ---------------------------------------------------------------------------------------
// Kernels. A 32 x 8 thread block covers a 32 x 32 tile; grids stride over tiles (x) and
// batch entries (y), so any size fits the grid limits.

constexpr int kTile = 32, kRows = 8;
constexpr unsigned kMaxGridX = 1u << 20, kMaxGridY = 65535;

__host__ __device__ inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

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
// its mirror upper tile, which nobody writes, or itself (diagonal), loaded before written.
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
      if (i < m && j < n && (!lower_only || i > j)) be[i + j * ldb] = tile[tx][jj];
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
      const T* col = v.p + e * v.bs + j * v.cs;
      T amax = 0;
      for (index_t i = threadIdx.x; i < d; i += blockDim.x) {
        const T x = fabs(col[i * v.rs]);
        amax = x > amax || x != x ? x : amax;
      }
      amax = block_reduce(amax, true);
      T* out = y.p ? y.p + e * y.bs + j * y.cs : nullptr;  // null: the norms alone
      if (amax == T(0)) {
        if (out)
          for (index_t i = threadIdx.x; i < d; i += blockDim.x) out[i * y.rs] = 0;
        if (threadIdx.x == 0) norms[e * ns + j] = 0;
        continue;
      }
      T s = 0;
      for (index_t i = threadIdx.x; i < d; i += blockDim.x) {
        const T x = col[i * v.rs] / amax;
        s += x * x;
      }
      s = block_reduce(s, false);
      const T r = sqrt(s);
      if (out)
        for (index_t i = threadIdx.x; i < d; i += blockDim.x) out[i * y.rs] = col[i * v.rs] / amax / r;
      if (threadIdx.x == 0) norms[e * ns + j] = amax * r;
    }
}

// dV = (dY - Y (Y . dY)) / |v| column by column (0 where |v| = 0).
template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    normalize_backward_kernel(index_t batch, index_t d, index_t k, Strided<const T> y,
                              const T* norms, index_t ns, Strided<const T> dy, Strided<T> dv) {
  for (index_t e = blockIdx.y; e < batch; e += gridDim.y)
    for (index_t j = blockIdx.x; j < k; j += gridDim.x) {
      const T* yc = y.p + e * y.bs + j * y.cs;
      const T* dc = dy.p + e * dy.bs + j * dy.cs;
      T* out = dv.p + e * dv.bs + j * dv.cs;
      const T nrm = norms[e * ns + j];
      T dot = 0;
      for (index_t i = threadIdx.x; i < d; i += blockDim.x) dot += yc[i * y.rs] * dc[i * dy.rs];
      dot = block_reduce(dot, false);
      for (index_t i = threadIdx.x; i < d; i += blockDim.x)
        out[i * dv.rs] = nrm == T(0) ? T(0) : (dc[i * dy.rs] - yc[i * y.rs] * dot) / nrm;
    }
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
        const T gii = g[i + i * ldg];
        const T ti = tau ? tau[blk * stau + i] : gii == T(0) ? T(0) : T(2) / gii;
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

// The small-d path (d <= 128, where launches dominate): U = H_1 ... H_k and its backward
// reflector by reflector, one thread block per batch entry, one launch each. Threads work in
// groups of kGroup lanes; group q owns column q (or row q) and its lanes split the rows (or
// columns) of that column (row), reducing their partial dot products by shuffles.
constexpr int kGroup = 8;
constexpr index_t kSmallD = 128;
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

std::size_t smem_optin(int device) {
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  return static_cast<std::size_t>(optin);
}

// Lets `kernel` use `bytes` of dynamic shared memory (past the default 48 KB: opt in).
template <class K>
void allow_smem(K* kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "cudaFuncSetAttribute");
}

// Threads of a small-path block: kGroup lanes per column (or row), whole warps.
unsigned small_threads(index_t groups) {
  return static_cast<unsigned>((groups * kGroup + 31) / 32 * 32);
}

unsigned grid_dim(index_t n, unsigned cap) {
  return static_cast<unsigned>(std::min<index_t>(std::max<index_t>(n, 1), cap));
}

dim3 tile_grid(index_t m, index_t n, index_t batch) {
  return dim3(grid_dim(ceil_div(m, kTile) * ceil_div(n, kTile), kMaxGridX),
              grid_dim(batch, kMaxGridY));
}

const dim3 kTileBlock(kTile, kRows);

// cuBLAS wants a leading dimension >= the stored rows (and >= 1) even when there is one
// column and it is never used; fix that case up and leave real errors to cuBLAS.
index_t fix_ld(index_t ld, index_t rows, index_t cols) {
  return cols <= 1 ? std::max<index_t>({ld, rows, 1}) : ld;
}

int to_int(index_t v, const char* what) {
  if (v > INT_MAX) fail(std::string(what) + " = " + std::to_string(v) + " exceeds cuBLAS's int");
  return static_cast<int>(v);
}

// The cuBLAS entry points, by type.
cublasStatus_t gemm_strided(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                            int m, int n, int k, const float* alpha, const float* a, int lda,
                            long long sa, const float* b, int ldb, long long sb,
                            const float* beta, float* c, int ldc, long long sc, int batch) {
  return batch == 1 ? cublasSgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
                    : cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb,
                                                sb, beta, c, ldc, sc, batch);
}

cublasStatus_t gemm_strided(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                            int m, int n, int k, const double* alpha, const double* a, int lda,
                            long long sa, const double* b, int ldb, long long sb,
                            const double* beta, double* c, int ldc, long long sc, int batch) {
  return batch == 1 ? cublasDgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
                    : cublasDgemmStridedBatched(h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb,
                                                sb, beta, c, ldc, sc, batch);
}

}  // namespace

// -----------------------------------------------------------------------------------------

cublasHandle_t handle_for(int device) {
  Slot& s = slot(device);
  std::lock_guard<std::mutex> lock(s.mu);
  return handle_locked(s, device);
}

std::string unavailable_reason() {
  try {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it
      const std::string hint =
          e == cudaErrorInsufficientDriver
              ? "; no NVIDIA driver was found, or it is older than the CUDA " +
                    std::to_string(CUDART_VERSION / 1000) + "." +
                    std::to_string(CUDART_VERSION % 1000 / 10) + " runtime fasth was built with"
              : "";
      return std::string("CUDA is unavailable: ") + cudaGetErrorName(e) + " (" +
             cudaGetErrorString(e) + ")" + hint;
    }
    if (count == 0) return "no CUDA device found";
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    cudaFuncAttributes attr;
    e = cudaFuncGetAttributes(&attr, copy_kernel<float>);
    if (e != cudaSuccess) {
      cudaGetLastError();
      cudaDeviceProp prop;
      std::string arch = cudaGetDeviceProperties(&prop, device) == cudaSuccess
                             ? " (compute capability " + std::to_string(prop.major) + "." +
                                   std::to_string(prop.minor) + ")"
                             : "";
      return "fasth's CUDA kernels cannot run on device " + std::to_string(device) + arch +
             ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    }
    handle_for(device);
    return "";
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown error while initialising CUDA";
  }
}

template <class T>
CudaBackend<T>::CudaBackend(int device, cudaStream_t stream, bool allow_tf32)
    : device_(device),
      stream_(stream),
      tf32_(allow_tf32 && std::is_same_v<T, float>),
      handle_(handle_for(device)) {}

template <class T>
void CudaBackend<T>::gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                          T alpha, const T* a, index_t lda, index_t sa, const T* b,
                          index_t ldb, index_t sb, T beta, T* c, index_t ldc, index_t sc,
                          index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  ldc = fix_ld(ldc, m, n);
  if (k <= 0) {  // C = beta C, as BLAS does
    if (beta == T(1)) return;
    scale_kernel<T><<<tile_grid(m, n, batch), kTileBlock, 0, stream_>>>(m, n, beta, c, ldc, sc,
                                                                       batch);
    check(cudaGetLastError(), "scale_kernel launch");
    return;
  }
  lda = trans_a ? fix_ld(lda, k, m) : fix_ld(lda, m, k);
  ldb = trans_b ? fix_ld(ldb, n, k) : fix_ld(ldb, k, n);
  const int im = to_int(m, "m"), in = to_int(n, "n"), ik = to_int(k, "k");
  const int ilda = to_int(lda, "lda"), ildb = to_int(ldb, "ldb"), ildc = to_int(ldc, "ldc");
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;

  Slot& s = slot(device_);
  std::lock_guard<std::mutex> lock(s.mu);
  bind(handle_, stream_, tf32_);
  for (index_t b0 = 0; b0 < batch; b0 += INT_MAX) {
    const int nb = static_cast<int>(std::min<index_t>(batch - b0, INT_MAX));
    check(gemm_strided(handle_, op_a, op_b, im, in, ik, &alpha, a + b0 * sa, ilda, sa,
                       b + b0 * sb, ildb, sb, &beta, c + b0 * sc, ildc, sc, nb),
          std::is_same_v<T, float> ? "cublasSgemm" : "cublasDgemm");
  }
}

template <class T>
void CudaBackend<T>::copy(index_t m, index_t n, Strided<const T> a, Strided<T> b,
                          index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  const auto grid = tile_grid(m, n, batch);
  // The tiled kernel for B column-major (the transpose through shared memory when A is
  // row-major); B row-major is the transposed problem.
  if (b.rs == 1 && (a.rs == 1 || a.cs == 1)) {
    const bool trans = a.rs != 1;
    copy_kernel<T><<<grid, kTileBlock, 0, stream_>>>(trans, false, m, n, a.p, trans ? a.rs : a.cs,
                                                     a.bs, b.p, b.cs, b.bs, batch);
  } else if (b.cs == 1 && (a.rs == 1 || a.cs == 1)) {
    const bool trans = a.cs != 1;
    copy_kernel<T><<<tile_grid(n, m, batch), kTileBlock, 0, stream_>>>(
        trans, false, n, m, a.p, trans ? a.cs : a.rs, a.bs, b.p, b.rs, b.bs, batch);
  } else {
    strided_copy_kernel<T><<<grid, kTileBlock, 0, stream_>>>(m, n, a, b, batch);
  }
  check(cudaGetLastError(), "copy launch");
}

template <class T>
void CudaBackend<T>::set(index_t m, index_t n, T offdiag, T diag, T* a, index_t lda,
                         index_t sa, index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  set_kernel<T><<<tile_grid(m, n, batch), kTileBlock, 0, stream_>>>(m, n, offdiag, diag, a,
                                                                   lda, sa, batch);
  check(cudaGetLastError(), "set_kernel launch");
}

template <class T>
void CudaBackend<T>::mirror_upper(index_t m, T* a, index_t lda, index_t sa,
                                  index_t batch) const {
  if (m <= 1 || batch <= 0) return;
  DeviceGuard guard(device_);
  copy_kernel<T><<<tile_grid(m, m, batch), kTileBlock, 0, stream_>>>(true, true, m, m, a, lda,
                                                                    sa, a, lda, sa, batch);
  check(cudaGetLastError(), "mirror_upper launch");
}

template <class T>
void CudaBackend<T>::larft(index_t count, index_t m, const T* g, index_t ldg, index_t sg,
                           const T* tau, index_t stau, T* t, index_t ldt, index_t st) const {
  if (count <= 0 || m <= 0) return;
  DeviceGuard guard(device_);
  const unsigned threads = static_cast<unsigned>(std::min<index_t>(ceil_div(m, 32) * 32, 256));
  const dim3 grid(grid_dim(count, kMaxGridX));
  const std::size_t bytes = static_cast<std::size_t>(m) * m * sizeof(T);
  if (bytes <= smem_optin(device_)) {
    allow_smem(larft_kernel<T, true>, bytes);
    larft_kernel<T, true><<<grid, threads, bytes, stream_>>>(count, m, g, ldg, sg, tau, stau, t, ldt, st);
  } else {
    larft_kernel<T, false><<<grid, threads, 0, stream_>>>(count, m, g, ldg, sg, tau, stau, t, ldt, st);
  }
  check(cudaGetLastError(), "larft_kernel launch");
}

template <class T>
void CudaBackend<T>::trmm(bool right, bool trans, index_t m, index_t n, T alpha, const T* r,
                          index_t ldr, index_t sr, const T* b, index_t ldb, index_t sb, T* c,
                          index_t ldc, index_t sc, index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  if (batch > 1) return Backend<T>::trmm(right, trans, m, n, alpha, r, ldr, sr, b, ldb, sb, c, ldc, sc, batch);
  DeviceGuard guard(device_);
  const index_t rows = right ? n : m, cols = right ? m : n;
  const int irows = to_int(rows, "m"), icols = to_int(cols, "n"), ir = to_int(fix_ld(ldr, m, m), "ldr");
  const int ib = to_int(fix_ld(ldb, rows, cols), "ldb"), ic = to_int(fix_ld(ldc, rows, cols), "ldc");
  Slot& s = slot(device_);
  std::lock_guard<std::mutex> lock(s.mu);
  bind(handle_, stream_, tf32_);
  const cublasSideMode_t side = right ? CUBLAS_SIDE_RIGHT : CUBLAS_SIDE_LEFT;
  const cublasOperation_t op = trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  if constexpr (std::is_same_v<T, float>)
    check(cublasStrmm(handle_, side, CUBLAS_FILL_MODE_UPPER, op, CUBLAS_DIAG_NON_UNIT, irows,
                      icols, &alpha, r, ir, b, ib, c, ic), "cublasStrmm");
  else
    check(cublasDtrmm(handle_, side, CUBLAS_FILL_MODE_UPPER, op, CUBLAS_DIAG_NON_UNIT, irows,
                      icols, &alpha, r, ir, b, ib, c, ic), "cublasDtrmm");
}

template <class T>
void CudaBackend<T>::trsm(index_t m, index_t n, T alpha, const T* r, index_t ldr, index_t sr,
                          T* c, index_t ldc, index_t sc, index_t batch) const {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  DeviceGuard guard(device_);
  const int im = to_int(m, "m"), in = to_int(n, "n"), ir = to_int(fix_ld(ldr, m, m), "ldr");
  const int ic = to_int(fix_ld(ldc, m, n), "ldc");
  Slot& s = slot(device_);
  std::lock_guard<std::mutex> lock(s.mu);
  bind(handle_, stream_, tf32_);
  for (index_t i = 0; i < batch; ++i) {
    if constexpr (std::is_same_v<T, float>)
      check(cublasStrsm(handle_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                        CUBLAS_DIAG_NON_UNIT, im, in, &alpha, r + i * sr, ir, c + i * sc, ic),
            "cublasStrsm");
    else
      check(cublasDtrsm(handle_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                        CUBLAS_DIAG_NON_UNIT, im, in, &alpha, r + i * sr, ir, c + i * sc, ic),
            "cublasDtrsm");
  }
}

template <class T>
void CudaBackend<T>::normalize(index_t batch, index_t d, index_t k, Strided<const T> v,
                               Strided<T> y, T* norms, index_t ns) const {
  if (batch <= 0 || k <= 0) return;
  DeviceGuard guard(device_);
  const dim3 grid(grid_dim(k, kMaxGridX), grid_dim(batch, kMaxGridY));
  normalize_kernel<T><<<grid, kReduceThreads, 0, stream_>>>(batch, d, k, v, y, norms, ns);
  check(cudaGetLastError(), "normalize_kernel launch");
}

template <class T>
void CudaBackend<T>::normalize_backward(index_t batch, index_t d, index_t k, Strided<const T> y,
                                        const T* norms, index_t ns, Strided<const T> dy,
                                        Strided<T> dv) const {
  if (batch <= 0 || k <= 0 || d <= 0) return;
  DeviceGuard guard(device_);
  const dim3 grid(grid_dim(k, kMaxGridX), grid_dim(batch, kMaxGridY));
  normalize_backward_kernel<T><<<grid, kReduceThreads, 0, stream_>>>(batch, d, k, y, norms, ns,
                                                                     dy, dv);
  check(cudaGetLastError(), "normalize_backward_kernel launch");
}

template <class T>
void CudaBackend<T>::lower(index_t batch, index_t d, index_t k, Strided<const T> a, Strided<T> b,
                           T diag) const {
  if (batch <= 0 || k <= 0 || d <= 0) return;
  DeviceGuard guard(device_);
  lower_kernel<T><<<tile_grid(d, k, batch), kTileBlock, 0, stream_>>>(d, k, a, b, diag, batch);
  check(cudaGetLastError(), "lower_kernel launch");
}

template <class T>
bool CudaBackend<T>::small_path(index_t d, index_t k) const {
  return d >= 1 && d <= kSmallD && k <= 4 * kSmallD &&
         small_backward_smem(d, k, d) * sizeof(T) <= smem_optin(device_);
}

template <class T>
void CudaBackend<T>::small_matrix(index_t batch, index_t d, index_t k, index_t cols,
                                  Strided<const T> V, Strided<T> U, T* y, index_t ys, T* norms,
                                  index_t ns, T* u2, index_t u2s) const {
  if (batch <= 0 || d <= 0 || cols <= 0) return;
  if (d > kSmallD || cols > d) fail("small_matrix: sizes outside the small path");
  DeviceGuard guard(device_);
  const std::size_t bytes = small_matrix_smem(d, k) * sizeof(T);
  allow_smem(small_matrix_kernel<T>, bytes);
  small_matrix_kernel<T><<<grid_dim(batch, kMaxGridX), small_threads(cols), bytes, stream_>>>(
      batch, static_cast<int>(d), static_cast<int>(k), static_cast<int>(cols), V, U, y, ys,
      norms, ns, u2, u2s);
  check(cudaGetLastError(), "small_matrix_kernel launch");
}

template <class T>
void CudaBackend<T>::small_matrix_backward(index_t batch, index_t d, index_t k, index_t cols,
                                           const T* y, index_t ys, const T* norms, index_t ns,
                                           const T* u, index_t us, Strided<const T> G,
                                           Strided<T> dV) const {
  if (batch <= 0 || d <= 0 || k <= 0) return;
  if (d > kSmallD || cols < 1 || cols > d)
    fail("small_matrix_backward: sizes outside the small path");
  DeviceGuard guard(device_);
  const std::size_t bytes = small_backward_smem(d, k, cols) * sizeof(T);
  allow_smem(small_matrix_backward_kernel<T>, bytes);
  small_matrix_backward_kernel<T><<<grid_dim(batch, kMaxGridX), small_threads(d), bytes, stream_>>>(
      batch, static_cast<int>(d), static_cast<int>(k), static_cast<int>(cols), y, ys, norms, ns,
      u, us, G, dV);
  check(cudaGetLastError(), "small_matrix_backward_kernel launch");
}

template class CudaBackend<float>;
template class CudaBackend<double>;

}  // namespace fasth::cuda
