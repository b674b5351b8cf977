// Planning: the block size, the strategy and their cost models, and the sizes of the
// factors and workspaces of a resolved Layout, measured by the carving functions that the
// runs use (workspaces.hpp), so that the two cannot drift apart.
#include <algorithm>

#include "detail/planning.hpp"
#include "detail/workspaces.hpp"

namespace fasth {

// GPU: each block step costs a few launches and its m x n product must fill the device:
// blocks of 128; where launches dominate whatever the flops (d <= 1024, n <= 256), one block
// with the full T (built by a solve, Layout::solve_t), a few launches for about 3x the flops.
// CPU: each block step costs several BLAS calls and thin products run below BLAS speed, so
// wide blocks win while the T work (2 d k m flops against 4 d k n) stays small: 64, 128 at
// n >= 256 and k >= 1024; where there is little work (d n, n per entry) the Grams dominate:
// 32, and 16. docs/benchmarks.md, "Why the defaults", has the measurements.
index_t choose_block(index_t d, index_t k, index_t n, Device device) {
  constexpr index_t kGpuBlock = 128, kGpuOneBlockD = 1024, kGpuOneBlockN = 256;
  constexpr index_t kCpuBlock = 64, kCpuWideBlock = 128;
  constexpr index_t kCpuWideFromK = 1024, kCpuWideFromN = 256;
  constexpr index_t kSmallWork = 16384, kTinyWork = 4096, kSmallBlock = 32, kTinyBlock = 16;
  const index_t work = d * n;
  const index_t m = device == Device::cuda
                        ? (d <= kGpuOneBlockD && n <= kGpuOneBlockN ? k : kGpuBlock)
                    : n >= kCpuWideFromN && k >= kCpuWideFromK ? kCpuWideBlock
                    : work <= kTinyWork                        ? kTinyBlock
                    : work <= kSmallWork                       ? kSmallBlock
                                                               : kCpuBlock;
  return std::max<index_t>(1, std::min(m, k));
}

Strategy choose_strategy(index_t d, index_t k, index_t n) {
  return detail::materialize_cost(d, k, n) < detail::blockwise_cost(d, k, n)
             ? Strategy::materialize
             : Strategy::blockwise;
}

namespace detail {

// Forward + backward flops. Blockwise: 4 d k n forward and 12 d k n backward in thin
// products, which run below the speed of square ones (kThinProducts). Materialise:
// U = E - Y Z^T (Gram, T, Z, one GEMM), U X, and the backward through dL/dU.
constexpr double kThinProducts = 1.25;
double blockwise_cost(index_t d, index_t k, index_t n) {
  return kThinProducts * 16.0 * double(d) * double(k) * double(n);
}
double materialize_cost(index_t d, index_t k, index_t n) {
  const double D = double(d), K = double(k), N = double(n);
  return 6 * D * D * N + 2 * D * D * D + 8 * D * K * K + 6 * D * D * K + K * K * K / 3;
}

void size_plan(Layout& L) {
  // Packed, every element written by factors() (the factors are an output: deterministic).
  const std::size_t d = sz(L.d), k = sz(L.k), m = sz(L.m), nb = sz(L.nb);
  // ydirect: no Y in the factors but a mode (0: V as it is, 1: normalised into the
  // workspace's head), then the norms.
  L.f_aux = L.ydirect ? 1 : d * sz(L.ky);
  L.y_head = L.ydirect ? round_up(sz(L.bv) * d * sz(L.ypad ? ypad_ld(L) : L.ky)) : 0;
  L.f_blocks = L.f_aux + (L.kind == Kind::lapack ? nb * m : k);
  const bool no_t = small_only(L);  // no T factors, Grams or Z
  // The single block's Z = Y_E T^T (c x k) for U = E - Y Z^T, which the householder
  // backward reads again, then U.
  const std::size_t c = sz(L.op == Op::matrix ? L.n : L.d);
  L.f_z = L.f_blocks + (no_t ? 0 : nb * 2 * m * m);
  L.f_u = L.f_z + (L.single && L.kind == Kind::householder && !no_t ? c * sz(L.ky) : 0);
  // The small path's U for matrix (and LAPACK's R, k x c), which its backward reads.
  const bool u_matrix = L.op == Op::matrix && L.small;
  const std::size_t r = u_matrix && L.kind == Kind::lapack ? k * c : 0;
  L.factors_stride = L.f_u + (L.op == Op::apply && L.single ? d * d : u_matrix ? d * c + r : 0);
  if (L.k == 0) L.factors_stride = 0;
  // The tape: a householder blockwise run keeps each block's input and products where they
  // fit, so that its backward need not recover them from the output: 8 d k n flops instead
  // of 12.
  const bool tapeable = L.kind == Kind::householder && !L.single && L.k > 0;
  L.tape_size = tapeable && tape_elements(L) <= kTapeMax ? tape_elements(L) : 0;
  Arena<float> f{nullptr}, fw{nullptr}, bw{nullptr}, fwt{nullptr}, bwt{nullptr}, tg{nullptr};
  carve_factors<float>(L, f);
  if (L.op == Op::apply && L.single && !no_t) carve_u<float>(L.bv, L.d, L.ky, f);
  Arena<float> sm{nullptr};  // small_factors: from the head of the workspace
  if (L.single) carve_small<float>(L, sm);
  carve_forward<float>(L, fw, false);
  carve_backward<float>(L, bw, false);
  if (L.tape_size) carve_forward<float>(L, fwt, true), carve_backward<float>(L, bwt, true);
  L.workspace[0] = L.y_head + std::max({f.used, fw.used, fwt.used, sm.used});
  L.workspace[1] = L.y_head + std::max(bw.used, bwt.used);
  carve_tangent<float>(L, tg);
  L.workspace[2] = L.y_head + tg.used;
}

}  // namespace detail
}  // namespace fasth
