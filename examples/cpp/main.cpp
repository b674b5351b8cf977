// Applies U = H_1 ... H_k through fasth's C++ API, with the BLAS this program links (and on
// a GPU, where fasth::cuda was installed and a device is present): a plan made once, a
// forward and a backward with the factors between them, and U itself. Checks the results
// against each other; exit status 0 when the errors are small.
#include <fasth/cpu.hpp>
#include <fasth/fasth.hpp>
#include <fasth/fortran_blas.hpp>  // fasth::cpu::fortran_blas(): the BLAS this program links
#ifdef FASTH_EXAMPLE_CUDA
#include <cuda_runtime.h>
#include <fasth/cuda.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using fasth::index_t;
using Vec = std::vector<double>;

constexpr index_t d = 64, k = 48, n = 32;

// Everything the checks need, computed on one backend; `alloc` gives the backend's memory
// (host vectors, or device buffers copied back by `back`).
struct Results {
  Vec Y, Z, U, dV, dX;
};

template <class Be, class Mem>
Results run(const Be& be, Mem& mem, const Vec& V, const Vec& X, const Vec& G) {
  // Column-major d x k and d x n matrices: shape (rows, cols), element strides (1, rows).
  fasth::Problem p;
  p.V = {{d, k}, {1, d}};
  p.X = {{d, n}, {1, d}};
  const fasth::Plan plan(p, mem.device);  // validates, picks block and strategy, sizes buffers
  p.transpose = true;
  const fasth::Plan back(p, mem.device);  // U^T X: the same block size, so the same factors
  auto v = mem.in(V), x = mem.in(X), g = mem.in(G);
  auto y = mem.out(d * n), z = mem.out(d * n), dv = mem.out(d * k), dx = mem.out(d * n);
  auto f = mem.out(plan.factors_size());
  auto ws = mem.out(std::max(plan.workspace_size(fasth::Pass::forward),
                             plan.workspace_size(fasth::Pass::backward)));

  fasth::Forward<double> fw;
  fw.V = v, fw.X = x, fw.out = y, fw.factors = f, fw.workspace = ws;
  plan.forward(be, fw);                  // Y = U X, and the factors
  fw.X = y, fw.out = z;
  back.forward_with(be, fw);             // Z = U^T Y with those factors: X again

  fasth::Backward<double> bw;            // from the output and dL/dY = G alone
  bw.V = v, bw.factors = f, bw.saved = y, bw.saved_layout = plan.out();
  bw.grad = g, bw.grad_layout = plan.out();
  bw.dV = dv, bw.dX = dx, bw.workspace = ws;
  plan.backward(be, bw);

  fasth::Problem pm;                     // U itself (d x d, row-major as Plan::out() says)
  pm.op = fasth::Op::matrix;
  pm.V = p.V;
  const fasth::Plan mat(pm, mem.device);
  auto u = mem.out(d * d), fm = mem.out(mat.factors_size());
  auto wm = mem.out(mat.workspace_size(fasth::Pass::forward));
  fasth::Forward<double> fu;
  fu.V = v, fu.out = u, fu.factors = fm, fu.workspace = wm;
  mat.forward(be, fu);
  return {mem.back(y, d * n), mem.back(z, d * n), mem.back(u, d * d), mem.back(dv, d * k),
          mem.back(dx, d * n)};
}

struct Host {
  fasth::Device device = fasth::Device::cpu;
  std::vector<Vec> keep;
  const double* in(const Vec& a) { return keep.emplace_back(a).data(); }
  double* out(std::size_t size) { return keep.emplace_back(std::max<std::size_t>(size, 1)).data(); }
  Vec back(const double* p, std::size_t size) { return Vec(p, p + size); }
};

#ifdef FASTH_EXAMPLE_CUDA
struct Device {
  fasth::Device device = fasth::Device::cuda;
  std::vector<double*> keep;
  ~Device() {
    for (double* p : keep) cudaFree(p);
  }
  double* out(std::size_t size) {
    double* p = nullptr;
    cudaMalloc(&p, sizeof(double) * std::max<std::size_t>(size, 1));
    keep.push_back(p);
    return p;
  }
  const double* in(const Vec& a) {
    double* p = out(a.size());
    cudaMemcpy(p, a.data(), sizeof(double) * a.size(), cudaMemcpyHostToDevice);
    return p;
  }
  Vec back(const double* p, std::size_t size) {
    Vec a(size);
    cudaMemcpy(a.data(), p, sizeof(double) * size, cudaMemcpyDeviceToHost);  // synchronises
    return a;
  }
};
#endif

double check(const char* where, const Results& r, const Vec& X, const Vec& G) {
  double orth = 0, roundtrip = 0, agree = 0, gradx = 0;
  for (index_t i = 0; i < d; ++i)  // U is row-major: U(r, c) = U[r * d + c]
    for (index_t j = 0; j < d; ++j) {
      double dot = 0;
      for (index_t q = 0; q < d; ++q) dot += r.U[q * d + i] * r.U[q * d + j];
      orth = std::max(orth, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  for (index_t i = 0; i < d * n; ++i) roundtrip = std::max(roundtrip, std::abs(r.Z[i] - X[i]));
  for (index_t j = 0; j < n; ++j)
    for (index_t q = 0; q < d; ++q) {
      double ux = 0, utg = 0;
      for (index_t c = 0; c < d; ++c) ux += r.U[q * d + c] * X[c + j * d], utg += r.U[c * d + q] * G[c + j * d];
      agree = std::max(agree, std::abs(ux - r.Y[q + j * d]));
      gradx = std::max(gradx, std::abs(utg - r.dX[q + j * d]));  // dL/dX = U^T G
    }
  std::printf("%s: max|U^T U - I| = %.3g  max|U^T (U X) - X| = %.3g  "
              "max|matrix(V) X - apply(V, X)| = %.3g  max|dX - U^T G| = %.3g\n",
              where, orth, roundtrip, agree, gradx);
  return std::max({orth, roundtrip, agree, gradx});
}

int main() {
  std::mt19937 gen(0);
  std::normal_distribution<double> normal;
  Vec V(d * k), X(d * n), G(d * n);
  for (double& a : V) a = normal(gen);
  for (double& a : X) a = normal(gen);
  for (double& a : G) a = normal(gen);

  const fasth::cpu::Blas blas = fasth::cpu::fortran_blas();
  const fasth::cpu::CpuBackend<double> cpu(blas);
  Host host;
  const Results r = run(cpu, host, V, X, G);
  double err = check("cpu", r, X, G);
#ifdef FASTH_EXAMPLE_CUDA
  if (fasth::cuda::unavailable_reason().empty()) {
    const fasth::cuda::CudaBackend<double> gpu(0, nullptr);  // device 0, the default stream
    Device dev;
    const Results rg = run(gpu, dev, V, X, G);
    err = std::max(err, check("cuda", rg, X, G));
    double diff = 0;
    for (index_t i = 0; i < d * k; ++i) diff = std::max(diff, std::abs(rg.dV[i] - r.dV[i]));
    std::printf("cuda: max|dV - dV on the cpu| = %.3g\n", diff);
    err = std::max(err, diff);
  } else {
    std::printf("cuda: skipped (%s)\n", fasth::cuda::unavailable_reason().c_str());
  }
#endif
  return err < 1e-11 ? 0 : 1;
}
