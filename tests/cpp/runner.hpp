// Runs a plan on the CPU backend (the BLAS from fasth/fortran_blas.hpp) with every buffer it
// writes between guard regions, and checks that the run wrote nothing else: guards intact,
// inputs unchanged.
#pragma once

#include <fasth/cpu.hpp>
#include <fasth/fasth.hpp>
#include <fasth/fortran_blas.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "harness.hpp"
#include "reference.hpp"

namespace ftest {

template <class T>
const fasth::cpu::CpuBackend<T>& cpu_backend() {
  static const fasth::cpu::Blas blas = fasth::cpu::fortran_blas();
  static const fasth::cpu::CpuBackend<T> be(blas);
  return be;
}

// `size` elements between two guard regions; the inside starts as NaN (an output the run
// leaves unwritten shows), the guards as a pattern that check() wants back bit for bit.
template <class T>
class Guarded {
 public:
  static constexpr std::size_t kGuard = 64;
  Guarded(std::size_t size, const char* name)
      : name_(name), size_(size), v_(size + 2 * kGuard, std::numeric_limits<T>::quiet_NaN()) {
    for (std::size_t i = 0; i < kGuard; ++i) v_[i] = v_[kGuard + size + i] = pattern(i);
  }
  Guarded(const std::vector<double>& values, const char* name) : Guarded(values.size(), name) {
    for (std::size_t i = 0; i < size_; ++i) v_[kGuard + i] = static_cast<T>(values[i]);
    copy_ = v_;
  }
  T* p() { return size_ ? v_.data() + kGuard : nullptr; }
  const T* cp() const { return size_ ? v_.data() + kGuard : nullptr; }
  std::vector<double> values() const {
    return {v_.begin() + kGuard, v_.begin() + kGuard + size_};
  }
  void check() const {
    for (std::size_t i = 0; i < kGuard; ++i) {
      CHECK(same(v_[i], pattern(i)), name_ << ": written before its start");
      CHECK(same(v_[kGuard + size_ + i], pattern(i)), name_ << ": written past its end");
    }
    if (!copy_.empty())
      CHECK(std::memcmp(copy_.data(), v_.data(), sizeof(T) * v_.size()) == 0,
            name_ << ": an input was written");
  }

 private:
  static T pattern(std::size_t i) { return static_cast<T>(1234.5 + i); }
  static bool same(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }
  std::string name_;
  std::size_t size_;
  std::vector<T> v_;
  std::vector<T> copy_;  // inputs: the whole buffer, to compare after the run
};

// What a forward and a backward of one plan produced, in double.
struct Results {
  std::vector<double> out, dV, dtau, dX;
};

// forward, then backward with dL/dout = G (laid out as plan.out()), with a tape where
// use_tape and the plan keeps one.
template <class T>
Results run(const fasth::Plan& plan, const Inputs& in, const std::vector<double>& G,
            bool use_tape = false) {
  const fasth::Problem& p = plan.problem();
  const auto& be = cpu_backend<T>();
  const bool lapack = p.kind == fasth::Kind::lapack, apply = p.op == fasth::Op::apply;
  Guarded<T> V(in.V, "V"), tau(in.tau, "tau"), X(in.X, "X"), g(G, "grad");
  Guarded<T> out(span(plan.out()), "out"), factors(plan.factors_size(), "factors");
  Guarded<T> fws(plan.workspace_size(fasth::Pass::forward), "forward workspace");
  Guarded<T> tape(use_tape ? plan.tape_size() : 0, "tape");
  fasth::Forward<T> f;
  f.V = V.cp(), f.tau = tau.cp(), f.X = X.cp(), f.out = out.p();
  f.factors = factors.p(), f.workspace = fws.p(), f.tape = tape.p();
  plan.forward(be, f);

  Guarded<T> dV(span(plan.d_V()), "dV"), dtau(lapack ? span(plan.d_tau()) : 0, "dtau");
  Guarded<T> dX(apply ? span(plan.d_X()) : 0, "dX");
  Guarded<T> bws(plan.workspace_size(fasth::Pass::backward), "backward workspace");
  fasth::Backward<T> b;
  b.V = V.cp(), b.factors = factors.p(), b.tape = tape.p();
  if (plan.reads_saved() && !tape.p()) {
    if (lapack && apply)
      b.saved = X.cp(), b.saved_layout = p.X;
    else
      b.saved = out.p(), b.saved_layout = plan.out();
  }
  b.grad = g.cp(), b.grad_layout = plan.out();
  b.dV = dV.p(), b.dtau = dtau.p(), b.dX = dX.p(), b.workspace = bws.p();
  plan.backward(be, b);
  for (const Guarded<T>* buf : {&V, &tau, &X, &g, &out, &factors, &fws, &tape, &dV, &dtau, &dX, &bws})
    buf->check();
  return {out.values(), dV.values(), dtau.values(), dX.values()};
}

// The tangent of the forward's output in the direction `dir` (laid out as the inputs), from
// the factors of a fresh forward.
template <class T>
std::vector<double> tangent(const fasth::Plan& plan, const Inputs& in, const Inputs& dir) {
  const fasth::Problem& p = plan.problem();
  const auto& be = cpu_backend<T>();
  Guarded<T> V(in.V, "V"), tau(in.tau, "tau"), X(in.X, "X");
  Guarded<T> dV(dir.V, "dV"), dtau(dir.tau, "dtau"), dX(dir.X, "dX");
  Guarded<T> out(span(plan.out()), "out"), factors(plan.factors_size(), "factors");
  Guarded<T> fws(plan.workspace_size(fasth::Pass::forward), "forward workspace");
  fasth::Forward<T> f;
  f.V = V.cp(), f.tau = tau.cp(), f.X = X.cp(), f.out = out.p();
  f.factors = factors.p(), f.workspace = fws.p();
  plan.forward(be, f);
  Guarded<T> dout(span(plan.out()), "dout");
  Guarded<T> tws(plan.workspace_size(fasth::Pass::tangent), "tangent workspace");
  fasth::Tangent<T> t;
  t.V = V.cp(), t.X = X.cp(), t.factors = factors.p();
  t.dV = dV.cp(), t.dV_layout = p.V, t.dtau = dtau.cp(), t.dtau_layout = p.tau;
  t.dX = dX.cp(), t.dX_layout = p.X, t.dout = dout.p(), t.workspace = tws.p();
  plan.tangent(be, t);
  for (const Guarded<T>* buf : {&V, &tau, &X, &dV, &dtau, &dX, &out, &factors, &fws, &dout, &tws})
    buf->check();
  return dout.values();
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) s += a[i] * b[i];
  return s;
}

// Runs p in T and checks the output against the reference and, where grads, the gradients
// against finite differences (relative tolerance tol), and the tangent in a random
// direction as the backward's transpose: <G, tangent(dir)> = <gradients, dir>.
template <class T>
void check_problem(const fasth::Problem& p, bool grads, double tol, unsigned seed,
                   const std::string& what, bool use_tape = false) {
  const fasth::Plan plan(p, fasth::Device::cpu);
  const Inputs in = random_inputs(p, seed);
  const std::vector<double> G = randn(span(plan.out()), seed + 3);
  const Results r = run<T>(plan, in, G, use_tape);
  const std::vector<double> want = reference(p, in, plan.out());
  CHECK(rel_error(r.out, want) < tol, what << ": forward error " << rel_error(r.out, want));
  if (!grads) return;
  const Inputs fd = finite_differences(p, in, plan.out(), G);
  CHECK(rel_error(r.dV, fd.V) < tol, what << ": dV error " << rel_error(r.dV, fd.V));
  if (p.kind == fasth::Kind::lapack)
    CHECK(rel_error(r.dtau, fd.tau) < tol, what << ": dtau error " << rel_error(r.dtau, fd.tau));
  if (p.op == fasth::Op::apply)
    CHECK(rel_error(r.dX, fd.X) < tol, what << ": dX error " << rel_error(r.dX, fd.X));
  const Inputs dir = random_inputs(p, seed + 7);
  const double lhs = dot(G, tangent<T>(plan, in, dir));
  const double rhs = dot(r.dV, dir.V) + dot(r.dtau, dir.tau) + dot(r.dX, dir.X);
  CHECK(std::abs(lhs - rhs) < tol * (1 + std::abs(rhs)),
        what << ": tangent " << lhs << ", transposed backward " << rhs);
}

}  // namespace ftest
