// Workspaces: a run writes only its own buffers. Every run of the suite checks its guards
// (runner.hpp); this test adds the tape, factors() then forward_with(), and a caller's
// factors stride wider than the plan's.
#include "cases.hpp"

namespace ftest {

TEST(workspace_guards) {
  const fasth::Problem problems[] = {
      householder_apply(3, 3, 9, 6, 4, true, false, 2),
      householder_apply(2, 0, 9, 6, 4, false, true, 0, fasth::Strategy::materialize),
      householder_matrix(2, 6, 8, false, 3),
      lapack(fasth::Op::apply, 2, 7, 5, 4, 3, false, 2),
  };
  unsigned seed = 200;
  for (const fasth::Problem& p : problems) {
    const fasth::Plan plan(p, fasth::Device::cpu);
    const Inputs in = random_inputs(p, ++seed);
    const std::vector<double> G = randn(span(plan.out()), seed);
    run<double>(plan, in, G, true);  // with the tape, where the plan keeps one
    run<float>(plan, in, G, false);

    // factors() then forward_with(), with factors `wide` elements apart per entry of V.
    const std::size_t wide = plan.factors_stride() + 7;
    const std::size_t entries = plan.factors_size() / plan.factors_stride();
    Guarded<double> V(in.V, "V"), tau(in.tau, "tau"), X(in.X, "X");
    Guarded<double> factors(entries * wide, "factors"), out(span(plan.out()), "out");
    Guarded<double> ws(plan.workspace_size(fasth::Pass::forward), "workspace");
    fasth::Forward<double> f;
    f.V = V.cp(), f.tau = tau.cp(), f.X = X.cp(), f.factors = factors.p();
    f.workspace = ws.p(), f.factors_stride = wide;
    plan.factors(cpu_backend<double>(), f);
    f.out = out.p();
    plan.forward_with(cpu_backend<double>(), f);
    for (const auto* b : {&V, &tau, &X, &factors, &out, &ws}) b->check();
    const double err = rel_error(out.values(), reference(p, in, plan.out()));
    CHECK(err < 1e-12, "forward_with, factors stride " << wide << ": error " << err);
  }
}

}  // namespace ftest
