// What a plan resolves once and every run reads: the arrays as batches of matrices, the
// blocks, the factors' layout and the workspace sizes. Internal to libfasth (Plan holds it
// behind a pointer).
#pragma once

#include <algorithm>
#include <cstddef>

#include "fasth/fasth.hpp"

namespace fasth::detail {

// A batch of matrices: element (i, j) of entry b at b * bs + i * rs + j * cs.
struct Mat3 {
  index_t batch = 0, rows = 0, cols = 0, rs = 1, cs = 1, bs = 0;
};
// Everything a run needs to know, resolved once by the plan (fasth's own code reads it).
struct Layout {
  Op op = Op::apply;
  Kind kind = Kind::householder;
  Device device = Device::cpu;
  bool transpose = false;
  bool complex = false;     // Problem::complex
  index_t B = 0, bv = 0, d = 0, k = 0, n = 0, m = 1, nb = 0;
  bool shared = true;       // one V (and its factors) for the whole batch
  bool yt = false;          // Y stored row-major, as a row-major V is (CPU)
  index_t ky = 0;           // elements a row of a Y-like buffer takes: k, padded where yt
  bool ydirect = false;     // Y is V itself unless a norm is too extreme to square (CPU)
  bool ypad = false;        // ydirect, V's rows alias: a forward reads a padded copy of V
  bool single = false;      // one block with the full T: matrix, and the materialised apply
  // The single block may take the backend's small-d path (Backend::small_path): the factors
  // keep U (and LAPACK's R), the workspaces the path's scratch; Y column-major in the factors.
  bool small = false;
  // The T of a householder block wider than the backend's larft by a triangular solve,
  // T = S^-1 (a few calls), not by leaves merged level by level (two calls a level): CUDA,
  // one V, where calls are launches.
  bool solve_t = false;
  Strategy strategy = Strategy::blockwise;
  Mat3 V, tau, X, out, dV, dtau, dX;  // the arrays as batches of matrices
  Array out_array, dV_array, dtau_array, dX_array;
  // Factors of one V entry, factors_stride apart: unit reflectors Y (d x k), their norms or taus
  // (nb * m, zero past k), per block its T and Gram matrix (m x m each), the householder
  // single block's Z = Y_E T^T (c x k), and U itself for the materialised apply (d x d) and,
  // where the plan allows the small-d path (Layout::small), for matrix (d x n, then LAPACK's
  // R, k x n: that path's backward reads them; a CPU plan on it keeps no T, Gram or Z).
  std::size_t factors_stride = 0, f_aux = 0, f_blocks = 0, f_z = 0, f_u = 0;
  // The tape of a householder blockwise run (an apply, or U on the CPU), when small enough
  // (see size_plan): each block's input (B d n, in forward order), then its products
  // W1 = Y^T A and W2 = op(T) W1 (m B n each).
  std::size_t tape_size = 0;
  std::size_t workspace[3] = {0, 0, 0};  // elements: forward, backward, tangent
  std::size_t y_head = 0;              // the head of every workspace: Y normalised, where needed
  // Whether a backward given no tape reads `saved` (the forward's output, or a LAPACK apply's
  // input): all but the single block's U.
  bool reads_saved() const { return op == Op::apply || !single; }
};

// Element counts: negative sizes count as empty; sub-buffers start 64-byte aligned (float).
constexpr std::size_t kAlign = 16;
inline std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
inline std::size_t sz(index_t n) { return static_cast<std::size_t>(std::max<index_t>(n, 0)); }

// Rows a multiple of kAliasedRows elements apart share cache sets; Y-like buffers then take
// kRowPad more (Layout::ky, Layout::ypad).
constexpr index_t kAliasedRows = 256, kRowPad = 16, kPadCopyMax = index_t(1) << 22;
// The rows of a forward's padded copy of V (Layout::ypad).
inline index_t ypad_ld(const Layout& L) { return L.k + kRowPad; }

}  // namespace fasth::detail
