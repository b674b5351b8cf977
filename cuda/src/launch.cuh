// What the kernel families share: the tile geometry, grids that stride over tiles (x) and
// batch entries (y) so any size fits the grid limits, and the shared-memory opt-in.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "fasth/backend.hpp"
#include "runtime.hpp"

namespace fasth::cuda::kernels {

// A 32 x 8 thread block covers a 32 x 32 tile.
constexpr int kTile = 32, kRows = 8;
constexpr unsigned kMaxGridX = 1u << 20, kMaxGridY = 65535;

__host__ __device__ inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

inline unsigned grid_dim(index_t n, unsigned cap) {
  return static_cast<unsigned>(std::min<index_t>(std::max<index_t>(n, 1), cap));
}

inline dim3 tile_grid(index_t m, index_t n, index_t batch) {
  return dim3(grid_dim(ceil_div(m, kTile) * ceil_div(n, kTile), kMaxGridX),
              grid_dim(batch, kMaxGridY));
}

inline dim3 tile_block() { return dim3(kTile, kRows); }

// Lets `kernel` use `bytes` of dynamic shared memory (past the default 48 KB: opt in).
template <class K>
void allow_smem(K* kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    detail::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)),
                  "cudaFuncSetAttribute");
}

}  // namespace fasth::cuda::kernels
