// A minimal test harness: TEST(name) registers a function that main() runs by name; CHECK
// throws with the file, line and message, so a test stops at its first failure.
#pragma once

#include <fasth/fasth.hpp>

#include <cstddef>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ftest {

using fasth::index_t;

std::map<std::string, std::function<void()>>& registry();

struct Register {
  Register(const char* name, std::function<void()> f) { registry()[name] = std::move(f); }
};

#define TEST(name)                                               \
  static void test_##name();                                     \
  static const ftest::Register reg_##name(#name, &test_##name); \
  static void test_##name()

#define CHECK(cond, msg)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::ostringstream os_;                                                           \
      os_ << __FILE__ << ":" << __LINE__ << ": " << #cond << ": " << msg;                \
      throw std::runtime_error(os_.str());                                              \
    }                                                                                   \
  } while (0)

// Runs f, which must throw std::invalid_argument whose message names `arg`.
void check_invalid(const std::function<void()>& f, const std::string& arg, const char* what);

// Normal samples, reproducibly.
std::vector<double> randn(std::size_t n, unsigned seed);

// Element (b, i, j) of a rank-2 (no batch) or rank-3 array; (b, i) of a rank-1 or 2 vector.
index_t at(const fasth::Array& a, index_t b, index_t i, index_t j);
index_t at(const fasth::Array& a, index_t b, index_t i);
// Elements an array spans (1 + the largest offset), and its batch (1 without one).
std::size_t span(const fasth::Array& a);
index_t batch_of(const fasth::Array& a, int matrix_rank);

}  // namespace ftest
