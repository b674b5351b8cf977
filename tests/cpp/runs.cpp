// Runs against the float64 reference: forwards against its output, backwards against its
// central finite differences.
#include "cases.hpp"

namespace ftest {

TEST(forward_householder) { householder_cases<double>(false, 1e-12); }
TEST(forward_lapack) { lapack_cases<double>(false, 1e-12); }
TEST(forward_batched) { batched_cases<double>(false, 1e-12); }
TEST(backward_householder) { householder_cases<double>(true, 1e-7); }
TEST(backward_lapack) { lapack_cases<double>(true, 1e-7); }
TEST(backward_batched) { batched_cases<double>(true, 1e-7); }

TEST(forward_float) {
  householder_cases<float>(false, 1e-5);
  lapack_cases<float>(false, 1e-5);
  batched_cases<float>(false, 1e-5);
}

TEST(backward_float) {
  householder_cases<float>(true, 1e-4);
  lapack_cases<float>(true, 1e-4);
  batched_cases<float>(true, 1e-4);
}

}  // namespace ftest
