// Internal to libfasth: what plan.cpp and algorithm.cpp share.
#pragma once

#include "fasth/fasth.hpp"

namespace fasth::detail {

// Cost models (flops, weighted by how fast each kind of product runs) of forward + backward.
double blockwise_cost(index_t d, index_t k, index_t n);
double materialize_cost(index_t d, index_t k, index_t n);

// Fills the factors layout and the workspace sizes of a resolved Layout.
void size_plan(Layout& L);

}  // namespace fasth::detail
