// The element types fasth runs on, and what the algorithm and backends ask of them: float and
// double, and std::complex of each (LAPACK's complex reflectors H = I - tau v v^H). One
// rule covers both: a backend's "trans" is the conjugate transpose (BLAS 'C') for a complex
// type, which is the transpose for a real one, so the algorithm is written once.
#pragma once

#include <complex>
#include <type_traits>

namespace fasth {

template <class T>
struct Scalar {  // float, double
  using real = T;
  static constexpr bool complex = false;
  static constexpr char trans = 'T';  // BLAS's op for the (conjugate) transpose
};
template <class R>
struct Scalar<std::complex<R>> {
  using real = R;
  static constexpr bool complex = true;
  static constexpr char trans = 'C';
};

template <class T>
using real_t = typename Scalar<T>::real;
template <class T>
inline constexpr bool is_complex_v = Scalar<T>::complex;

// On the host and, under nvcc, the device: the CUDA kernels call real_of, abs2 and re_dot on
// their own complex type too (cuda/src/launch.cuh makes it a Scalar).
#ifdef __CUDACC__
#define FASTH_HOST_DEVICE __host__ __device__
#else
#define FASTH_HOST_DEVICE
#endif

// conj and real that stay in T's own type for a real T (std::conj(double) is complex).
template <class T>
constexpr T conj_of(T x) {
  if constexpr (is_complex_v<T>) return std::conj(x);
  else return x;
}
template <class T>
FASTH_HOST_DEVICE constexpr real_t<T> real_of(T x) {
  if constexpr (is_complex_v<T>) return x.real();
  else return x;
}
// |x|^2 without a square root.
template <class T>
FASTH_HOST_DEVICE constexpr real_t<T> abs2(T x) {
  if constexpr (is_complex_v<T>) return x.real() * x.real() + x.imag() * x.imag();
  else return x * x;
}
// Re(conj(a) b): the real inner product's term.
template <class T>
FASTH_HOST_DEVICE constexpr real_t<T> re_dot(T a, T b) {
  if constexpr (is_complex_v<T>) return a.real() * b.real() + a.imag() * b.imag();
  else return a * b;
}

}  // namespace fasth
