// Applies U = H_1 ... H_k to a matrix through fasth's C++ API, with the BLAS this program
// links, and checks that U is orthogonal. Exit status 0 when the errors are small.
#include <fasth/cpu.hpp>
#include <fasth/fasth.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

extern "C" fasth::cpu::gemm_fn<float> sgemm_;
extern "C" fasth::cpu::gemm_fn<double> dgemm_;

using fasth::index_t;
using Mat = fasth::Matrix<double>;
using CMat = fasth::Matrix<const double>;

CMat in(const std::vector<double>& a, index_t rows, index_t cols) {  // column-major
  return {a.data(), rows, cols, 1, rows, 0};
}
Mat out(std::vector<double>& a, index_t rows, index_t cols) {
  return {a.data(), rows, cols, 1, rows, 0};
}

int main() {
  fasth::cpu::set_blas({&sgemm_, &dgemm_});
  const fasth::cpu::CpuBackend<double> be;
  const index_t d = 64, k = 48, n = 32;

  std::mt19937 gen(0);
  std::normal_distribution<double> normal;
  std::vector<double> V(d * k), X(d * n), Y(d * n), Z(d * n), U(d * d);
  for (double& v : V) v = normal(gen);
  for (double& x : X) x = normal(gen);

  // Sizes first: block and strategy resolved, then factors and workspace allocated here.
  fasth::Shape s;
  s.d = d, s.k = k, s.n = n;
  s = fasth::resolve(s, fasth::Device::cpu);
  std::vector<double> f(fasth::factors_size(s)), ws(fasth::workspace_size(fasth::Op::apply, s));
  fasth::factors(be, s, in(V, d, k), f.data(), ws.data());  // apply's workspace serves too
  fasth::apply(be, s, false, in(V, d, k), f.data(), in(X, d, n), out(Y, d, n), ws.data());
  fasth::apply(be, s, true, in(V, d, k), f.data(), in(Y, d, n), out(Z, d, n), ws.data());
  double roundtrip = 0;
  for (index_t i = 0; i < d * n; ++i) roundtrip = std::max(roundtrip, std::abs(Z[i] - X[i]));

  // U itself (n = d): its own block size, so its own factors.
  fasth::Shape m = s;
  m.n = d, m.block = 0;
  m = fasth::resolve(m, fasth::Device::cpu);
  std::vector<double> fm(fasth::factors_size(m)), wm(fasth::workspace_size(fasth::Op::matrix, m));
  fasth::factors(be, m, in(V, d, k), fm.data(), wm.data());
  fasth::matrix(be, m, in(V, d, k), fm.data(), out(U, d, d), wm.data());
  double orth = 0;  // max |U^T U - I|
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j < d; ++j) {
      double dot = 0;
      for (index_t r = 0; r < d; ++r) dot += U[r + i * d] * U[r + j * d];
      orth = std::max(orth, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  // U X from the matrix agrees with apply.
  double agree = 0;
  for (index_t j = 0; j < n; ++j)
    for (index_t r = 0; r < d; ++r) {
      double ux = 0;
      for (index_t c = 0; c < d; ++c) ux += U[r + c * d] * X[c + j * d];
      agree = std::max(agree, std::abs(ux - Y[r + j * d]));
    }

  const double tol = 1e-12;
  std::printf("max|U^T U - I| = %.3g  max|U^T (U X) - X| = %.3g  "
              "max|matrix(V) X - apply(V, X)| = %.3g\n", orth, roundtrip, agree);
  return orth < tol && roundtrip < tol && agree < tol ? 0 : 1;
}
