// Forward runs against the float64 reference.
#include "cases.hpp"

namespace ftest {

TEST(forward_householder) { householder_cases<double>(false, 1e-12); }
TEST(forward_lapack) { lapack_cases<double>(false, 1e-12); }
TEST(forward_batched) { batched_cases<double>(false, 1e-12); }
TEST(forward_float) {
  householder_cases<float>(false, 1e-5);
  lapack_cases<float>(false, 1e-5);
  batched_cases<float>(false, 1e-5);
}

}  // namespace ftest
