#include "reference.hpp"

#include <algorithm>
#include <cmath>

namespace ftest {

Inputs random_inputs(const fasth::Problem& p, unsigned seed) {
  Inputs in;
  in.V = randn(span(p.V), seed);
  if (p.kind == fasth::Kind::lapack) {
    in.tau = randn(span(p.tau), seed + 1);
    for (double& t : in.tau) t = 1 + std::fabs(t) / (1 + std::fabs(t));
  }
  if (p.op == fasth::Op::apply) in.X = randn(span(p.X), seed + 2);
  return in;
}

namespace {

// x <- (I - tau v v^T) x for each column of the d x c matrix x (column-major).
void reflect(const std::vector<double>& v, double tau, std::vector<double>& x, index_t d,
             index_t c) {
  for (index_t j = 0; j < c; ++j) {
    double s = 0;
    for (index_t r = 0; r < d; ++r) s += v[r] * x[r + j * d];
    for (index_t r = 0; r < d; ++r) x[r + j * d] -= tau * s * v[r];
  }
}

}  // namespace

std::vector<double> reference(const fasth::Problem& p, const Inputs& in, const fasth::Array& out) {
  const bool lapack = p.kind == fasth::Kind::lapack, apply = p.op == fasth::Op::apply;
  const int vr = p.V.rank;
  const index_t d = p.V.shape[vr - 2], cols_v = p.V.shape[vr - 1];
  const index_t k = lapack ? p.tau.shape[p.tau.rank - 1] : cols_v;
  const index_t bv = batch_of(p.V, 2);
  const index_t batch = apply ? batch_of(p.X, 2) : bv;
  const index_t c = apply ? p.X.shape[p.X.rank - 1]
                          : lapack ? cols_v : p.thin ? std::min(k, d) : d;
  std::vector<double> result(span(out));
  for (index_t b = 0; b < batch; ++b) {
    const index_t e = bv == 1 ? 0 : b;
    std::vector<std::vector<double>> vs(k, std::vector<double>(d));
    std::vector<double> taus(k);
    for (index_t i = 0; i < k; ++i) {
      double nn = 0;
      for (index_t r = 0; r < d; ++r) {
        const double a = in.V[at(p.V, e, r, i)];
        vs[i][r] = !lapack ? a : r < i ? 0 : r == i ? 1 : a;
        nn += vs[i][r] * vs[i][r];
      }
      taus[i] = lapack ? in.tau[at(p.tau, e, i)] : nn == 0 ? 0 : 2 / nn;
    }
    std::vector<double> x(d * c, 0.0);  // X, or the identity's first c columns
    for (index_t j = 0; j < c; ++j)
      for (index_t r = 0; r < d; ++r) x[r + j * d] = apply ? in.X[at(p.X, b, r, j)] : r == j;
    if (apply && p.transpose)  // U^T X = H_k ... H_1 X
      for (index_t i = 0; i < k; ++i) reflect(vs[i], taus[i], x, d, c);
    else  // U X = H_1 ... H_k X
      for (index_t i = k - 1; i >= 0; --i) reflect(vs[i], taus[i], x, d, c);
    for (index_t j = 0; j < c; ++j)
      for (index_t r = 0; r < d; ++r) result[at(out, b, r, j)] = x[r + j * d];
  }
  return result;
}

Inputs finite_differences(const fasth::Problem& p, const Inputs& in, const fasth::Array& out,
                          const std::vector<double>& G) {
  const double h = 1e-6;
  auto loss = [&](const Inputs& x) {
    const std::vector<double> y = reference(p, x, out);
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += G[i] * y[i];
    return s;
  };
  Inputs grad{std::vector<double>(in.V.size()), std::vector<double>(in.tau.size()),
              std::vector<double>(in.X.size())};
  Inputs x = in;
  auto diff = [&](std::vector<double>& a, std::vector<double>& g) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double a0 = a[i];
      a[i] = a0 + h;
      const double up = loss(x);
      a[i] = a0 - h;
      const double down = loss(x);
      a[i] = a0;
      g[i] = (up - down) / (2 * h);
    }
  };
  diff(x.V, grad.V);
  diff(x.tau, grad.tau);
  diff(x.X, grad.X);
  return grad;
}

fasth::Array matrices(index_t batch, index_t rows, index_t cols, bool col_major) {
  const index_t rs = col_major ? 1 : cols, cs = col_major ? rows : 1;
  if (batch == 0) return fasth::Array({rows, cols}, {rs, cs});
  return fasth::Array({batch, rows, cols}, {rows * cols, rs, cs});
}

fasth::Array vectors(index_t batch, index_t n) {
  if (batch == 0) return fasth::Array({n}, {1});
  return fasth::Array({batch, n}, {n, 1});
}

double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  double err = 0, scale = 1;
  for (std::size_t i = 0; i < b.size(); ++i) {
    err = std::max(err, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return a.size() == b.size() ? err / scale : INFINITY;
}

}  // namespace ftest
