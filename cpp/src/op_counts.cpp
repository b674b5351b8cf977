// The backend-operation counters behind fasth.profile(): process-wide, relaxed atomics
// (counts, not synchronisation).
#include <atomic>

#include "detail/ops.hpp"

namespace fasth {

namespace {
constexpr int kOps = static_cast<int>(BackendOp::count_);
std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_counts[kOps] = {};
}  // namespace

void detail::count_op(BackendOp op) {
  if (g_counting.load(std::memory_order_relaxed))
    g_counts[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed);
}

const char* backend_op_name(BackendOp op) {
  static const char* const names[kOps] = {
      "gemm", "trmm", "trsm", "gram", "copy", "set", "larft", "mirror_upper", "normalize",
      "normalize_backward", "lower", "small_matrix", "small_matrix_backward"};
  const int i = static_cast<int>(op);
  return i >= 0 && i < kOps ? names[i] : "?";
}
void count_backend_ops(bool on) { g_counting.store(on); }
void reset_backend_op_counts() {
  for (auto& c : g_counts) c.store(0);
}
std::int64_t backend_op_count(BackendOp op) { return g_counts[static_cast<int>(op)].load(); }

}  // namespace fasth
