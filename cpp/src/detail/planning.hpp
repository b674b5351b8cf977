// Planning's internals: the cost models behind choose_strategy, the tape's parts, and the
// sizing of a resolved Layout's factors and workspaces (planning.cpp, tape.cpp).
#pragma once

#include "detail/layout.hpp"

namespace fasth::detail {

// Cost models (flops, weighted by how fast each kind of product runs) of forward + backward.
double blockwise_cost(index_t d, index_t k, index_t n);
double materialize_cost(index_t d, index_t k, index_t n);

// A householder blockwise run's tape, per block: its input (B d n) and its two products
// (m B n each), each part rounded up to an aligned size; a plan keeps one of up to kTapeMax
// elements, as a network keeps its layers' activations.
constexpr std::size_t kTapeMax = std::size_t(1) << 24;  // 64 MiB of float32
struct TapeParts {
  std::size_t input, product;  // elements of one block's input, and of one of its products
  std::size_t input_used, product_used;  // of those, what the data take (the rest: alignment)
};
TapeParts tape_parts(const Layout& L);
std::size_t tape_elements(const Layout& L);

// Fills the factors layout and the workspace sizes of a resolved Layout.
void size_plan(Layout& L);

}  // namespace fasth::detail
