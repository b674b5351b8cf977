// What the kernel families share: the tile geometry, grids that stride over tiles (x) and
// batch entries (y) so any size fits the grid limits, and the shared-memory opt-in.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <complex>
#include <cstddef>
#include <cuda/std/complex>
#include <type_traits>

#include "fasth/backend.hpp"
#include "fasth/scalar.hpp"
#include "runtime.hpp"

// The kernels' complex type is a complex Scalar, as std::complex is (real_t, is_complex_v,
// real_of, abs2 and re_dot then serve it).
namespace fasth {
template <class R>
struct Scalar<::cuda::std::complex<R>> : Scalar<std::complex<R>> {};
}  // namespace fasth

namespace fasth::cuda::kernels {

// A 32 x 8 thread block covers a 32 x 32 tile.
constexpr int kTile = 32, kRows = 8;
constexpr unsigned kMaxGridX = 1u << 20, kMaxGridY = 65535;

__host__ __device__ inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

inline unsigned grid_dim(index_t n, unsigned cap) {
  return static_cast<unsigned>(std::min<index_t>(std::max<index_t>(n, 1), cap));
}

inline dim3 tile_grid(index_t m, index_t n, index_t batch) {
  return dim3(grid_dim(ceil_div(m, kTile) * ceil_div(n, kTile), kMaxGridX),
              grid_dim(batch, kMaxGridY));
}

inline dim3 tile_block() { return dim3(kTile, kRows); }

// Complex elements in kernels: cuda::std::complex, layout-compatible with the std::complex
// the launchers take. dev_t<T> is the kernels' type for T; dp and dv view pointers, strided
// views and values as it.
template <class T>
struct Dev {
  using type = T;
};
template <class R>
struct Dev<std::complex<R>> {
  using type = ::cuda::std::complex<R>;
};
template <class T>
using dev_t = typename Dev<T>::type;
template <class T>
dev_t<T>* dp(T* p) {
  return reinterpret_cast<dev_t<T>*>(p);
}
template <class T>
const dev_t<T>* dp(const T* p) {
  return reinterpret_cast<const dev_t<T>*>(p);
}
template <class T>
Strided<dev_t<T>> dp(Strided<T> s) {
  return {dp(s.p), s.rs, s.cs, s.bs};
}
template <class T>
Strided<const dev_t<T>> dp(Strided<const T> s) {
  return {dp(s.p), s.rs, s.cs, s.bs};
}
template <class T>
dev_t<T> dv(T x) {
  if constexpr (is_complex_v<T>) return dev_t<T>(x.real(), x.imag());
  else return x;
}

// The rest of what the kernels ask of an element type D (real: itself) beyond scalar.hpp's:
// |x| and conj x.
template <class D>
__device__ real_t<D> dabs(D x) {
  if constexpr (is_complex_v<D>) return ::cuda::std::abs(x);
  else return fabs(x);
}
template <class D>
__device__ D dconj(D x) {
  if constexpr (is_complex_v<D>) return ::cuda::std::conj(x);
  else return x;
}

// Lets `kernel` use `bytes` of dynamic shared memory (past the default 48 KB: opt in).
template <class K>
void allow_smem(K* kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    detail::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)),
                  "cudaFuncSetAttribute");
}

}  // namespace fasth::cuda::kernels
