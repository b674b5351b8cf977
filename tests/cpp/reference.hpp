// The float64 reference: products of Householder reflectors applied one at a time, written
// from the definitions in fasth.hpp (no blocking, no fasth code), and its finite-difference
// gradients.
#pragma once

#include <fasth/fasth.hpp>

#include <vector>

#include "harness.hpp"

namespace ftest {

// A problem's inputs, laid out as its Arrays say.
struct Inputs {
  std::vector<double> V, tau, X;
};

// Random inputs for p (tau in [1, 2): geqrf's range for reflectors of unit leading entry).
Inputs random_inputs(const fasth::Problem& p, unsigned seed);

// The problem's output, laid out as `out` (the plan's out()) says.
std::vector<double> reference(const fasth::Problem& p, const Inputs& in, const fasth::Array& out);

// Gradients of L = sum(G * out) by central differences, laid out as the inputs.
Inputs finite_differences(const fasth::Problem& p, const Inputs& in, const fasth::Array& out,
                          const std::vector<double>& G);

// A matrix array: (rows, cols), or (batch, rows, cols) where batch > 0; column-major matrices
// where col_major, else row-major.
fasth::Array matrices(index_t batch, index_t rows, index_t cols, bool col_major);
// A vector array: (n), or (batch, n) where batch > 0.
fasth::Array vectors(index_t batch, index_t n);

// max |a - b| / max(1, max |b|), elementwise (infinite where the sizes differ).
double rel_error(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace ftest
