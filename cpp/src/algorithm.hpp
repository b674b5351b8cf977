// Internal to libfasth: what plan.cpp and algorithm.cpp share.
#pragma once

#include "fasth/fasth.hpp"

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

// Rows a multiple of kAliasedRows elements apart share cache sets; Y-like buffers then take
// kRowPad more (Layout::ky, Layout::ypad).
constexpr index_t kAliasedRows = 256, kRowPad = 16, kPadCopyMax = index_t(1) << 22;
// The rows of a forward's padded copy of V (Layout::ypad).
inline index_t ypad_ld(const Layout& L) { return L.k + kRowPad; }

// Fills the factors layout and the workspace sizes of a resolved Layout.
void size_plan(Layout& L);

}  // namespace fasth::detail
