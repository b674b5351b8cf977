// Plans: the sizes they report, the block and strategy they keep, and the problems they refuse.
#include "harness.hpp"
#include "problems.hpp"

using fasth::Device;
using fasth::Op;
using fasth::Pass;
using fasth::Plan;
using fasth::Strategy;

namespace ftest {

TEST(plan_sizes) {
  const Plan a(householder_apply(3, 3, 10, 6, 4, true, false), Device::cpu);
  CHECK(a.batch() == 3 && a.d() == 10 && a.k() == 6 && a.n() == 4 && !a.shared(), "apply sizes");
  CHECK(a.out().rank == 3 && a.out().shape[0] == 3 && a.out().shape[1] == 10 &&
            a.out().shape[2] == 4, "out() is X's shape");
  CHECK(span(a.out()) == 3 * 10 * 4 && span(a.d_X()) == span(a.out()), "out() and d_X() dense");
  CHECK(span(a.d_V()) == 3 * 10 * 6, "d_V() is V's size");
  CHECK(a.factors_size() == 3 * a.factors_stride() && a.factors_stride() > 0,
        "one factors stride per entry of V");
  CHECK(a.workspace_size(Pass::forward) > 0 && a.workspace_size(Pass::backward) > 0,
        "workspaces");

  const Plan s(householder_apply(5, 0, 10, 6, 4, false, false), Device::cpu);
  CHECK(s.shared() && s.batch() == 5, "one V for a batch of X");
  CHECK(s.factors_size() == s.factors_stride(), "a shared V has one entry of factors");

  const Plan m(householder_matrix(0, 7, 9, false), Device::cpu);
  CHECK(m.out().rank == 2 && m.out().shape[0] == 7 && m.out().shape[1] == 7, "matrix: d x d");
  const Plan t(householder_matrix(2, 7, 4, true), Device::cpu);
  CHECK(t.out().shape[0] == 2 && t.out().shape[1] == 7 && t.out().shape[2] == 4,
        "thin: d x min(k, d)");
  const Plan q(lapack(Op::matrix, 2, 8, 5, 3, 0, false), Device::cpu);
  CHECK(q.k() == 3 && q.out().shape[1] == 8 && q.out().shape[2] == 5,
        "householder_product: d x c, k from tau");
  CHECK(span(q.d_tau()) == 2 * 3, "d_tau() is tau's size");

  const Plan e(householder_apply(0, 0, 6, 0, 3, true, false), Device::cpu);
  CHECK(e.k() == 0 && span(e.out()) == 18, "k = 0 is the identity's plan");
}

TEST(plan_block_and_strategy) {
  const Plan b(householder_apply(0, 0, 16, 12, 5, true, false, 4, Strategy::blockwise),
               Device::cpu);
  CHECK(b.block() == 4 && b.strategy() == Strategy::blockwise, "block and strategy kept");
  const Plan m(householder_apply(0, 0, 16, 12, 50, true, false, 0, Strategy::materialize),
               Device::cpu);
  CHECK(m.strategy() == Strategy::materialize, "materialize kept");
  const Plan a(householder_apply(0, 0, 16, 12, 5, true, false), Device::cpu);
  CHECK(a.block() >= 1 && a.block() <= 12, "a chosen block is within 1..k: " << a.block());
  CHECK(a.strategy() == Strategy::blockwise || a.strategy() == Strategy::materialize,
        "automatic resolves to a strategy");
  CHECK(fasth::choose_block(64, 64, 64, Device::cpu) >= 1, "choose_block");
  const Strategy c = fasth::choose_strategy(64, 64, 64);
  CHECK(c == Strategy::blockwise || c == Strategy::materialize, "choose_strategy");
}

TEST(plan_invalid_problems) {
  auto refuse = [](fasth::Problem p, const std::string& arg, const char* what) {
    check_invalid([&] { Plan plan(p, Device::cpu); }, arg, what);
  };
  auto p = householder_apply(0, 0, 6, 3, 2, true, false);
  p.X = matrices(0, 5, 2, true);
  refuse(p, "X", "X with the wrong number of rows");
  p = householder_apply(3, 2, 6, 3, 2, true, false);
  refuse(p, "V", "V's batch neither X's nor absent");
  p = householder_apply(0, 0, 6, 3, 2, true, false);
  p.block = -1;
  refuse(p, "block", "a negative block");
  p.block = 0;
  p.V = fasth::Array({6}, {1});
  refuse(p, "V", "V of one dimension");
  p = householder_apply(0, 0, 6, 3, 2, true, false);
  p.V.shape[1] = -1;
  refuse(p, "V", "a negative size");
  auto q = lapack(Op::apply, 0, 6, 3, 4, 2, false);
  refuse(q, "tau", "more taus than A's columns");
  q = lapack(Op::matrix, 0, 4, 6, 3, 0, false);
  refuse(q, "A", "householder_product of A wider than tall");
  q = lapack(Op::apply, 2, 6, 3, 3, 2, false);
  q.tau = vectors(3, 3);
  refuse(q, "tau", "tau's batch not A's");
}

}  // namespace ftest
