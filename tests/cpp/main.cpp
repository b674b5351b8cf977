// Runs the tests named on the command line (ctest passes one), or all of them.
#include <cstdio>
#include <exception>

#include "harness.hpp"

namespace ftest {

std::map<std::string, std::function<void()>>& registry() {
  static std::map<std::string, std::function<void()>> tests;
  return tests;
}

void check_invalid(const std::function<void()>& f, const std::string& arg, const char* what) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(arg) != std::string::npos,
          what << ": the message does not name " << arg << ": " << e.what());
    return;
  }
  CHECK(false, what << ": no std::invalid_argument");
}

std::vector<double> randn(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  std::vector<double> a(n);
  for (double& x : a) x = normal(gen);
  return a;
}

index_t at(const fasth::Array& a, index_t b, index_t i, index_t j) {
  const int r = a.rank;
  return (r > 2 ? b * a.strides[0] : 0) + i * a.strides[r - 2] + j * a.strides[r - 1];
}

index_t at(const fasth::Array& a, index_t b, index_t i) {
  const int r = a.rank;
  return (r > 1 ? b * a.strides[0] : 0) + i * a.strides[r - 1];
}

std::size_t span(const fasth::Array& a) {
  index_t last = 0;
  for (int i = 0; i < a.rank; ++i) {
    if (a.shape[i] == 0) return 0;
    last += (a.shape[i] - 1) * a.strides[i];
  }
  return static_cast<std::size_t>(last + 1);
}

index_t batch_of(const fasth::Array& a, int matrix_rank) {
  index_t b = 1;
  for (int i = 0; i + matrix_rank < a.rank; ++i) b *= a.shape[i];
  return b;
}

}  // namespace ftest

int main(int argc, char** argv) {
  std::vector<std::string> names;
  for (int i = 1; i < argc; ++i) names.emplace_back(argv[i]);
  if (names.empty())
    for (const auto& t : ftest::registry()) names.push_back(t.first);
  int failed = 0;
  for (const auto& name : names) {
    const auto it = ftest::registry().find(name);
    if (it == ftest::registry().end()) {
      std::printf("%s: no such test\n", name.c_str());
      ++failed;
      continue;
    }
    try {
      it->second();
      std::printf("%s: ok\n", name.c_str());
    } catch (const std::exception& e) {
      std::printf("%s: FAILED: %s\n", name.c_str(), e.what());
      ++failed;
    }
  }
  return failed == 0 ? 0 : 1;
}
