// Backward runs against central finite differences of the float64 reference.
#include "cases.hpp"

namespace ftest {

TEST(backward_householder) { householder_cases<double>(true, 1e-7); }
TEST(backward_lapack) { lapack_cases<double>(true, 1e-7); }
TEST(backward_batched) { batched_cases<double>(true, 1e-7); }
TEST(backward_float) {
  householder_cases<float>(true, 1e-4);
  lapack_cases<float>(true, 1e-4);
  batched_cases<float>(true, 1e-4);
}

}  // namespace ftest
