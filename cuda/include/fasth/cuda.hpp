// The CUDA backend: fasth::Backend<T> over cuBLAS (gemm, trmm) and a few small kernels
// (copy, set, larft, mirror_upper, normalize and its backward, lower, and the small-d path:
// U and its backward in one launch each), all enqueued on the caller's stream. It never allocates device memory and never
// synchronises the device or the stream.
//
// cuBLAS handles: one per device, created on first use, cached for the life of the process
// (never destroyed: the CUDA context may already be gone at exit) and shared by every
// backend object and thread. A handle's stream and math mode are handle-wide state, so each
// gemm takes that device's mutex, sets the stream, pointer mode (host) and math mode,
// enqueues and releases it.
// The lock covers only the enqueueing, never the backend's lifetime, so backends on several
// threads and streams (and several backends on one thread) neither race nor deadlock.
// Concurrent kernels on different streams draw their scratch space from cuBLAS's default
// workspace pool, which cublasSetStream selects per stream.
//
// Plain C++: include it from any translation unit (no kernels, no nanobind).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <complex>
#include <string>

#include "fasth/backend.hpp"
#include "fasth/scalar.hpp"

namespace fasth::cuda {

// "" when a CUDA device, cuBLAS and this library's kernels work on the current device;
// otherwise why not (no driver, no device, no kernel image for this GPU, ...). Never throws.
std::string unavailable_reason();

// The cached cuBLAS handle of `device` (host pointer mode), created on first use.
// Throws std::runtime_error when the device is invalid or cuBLAS cannot be initialised.
// The backends set its stream, pointer mode and math mode on every gemm, under a
// per-device lock that is private to this library: other code that uses the handle
// directly must not do so concurrently with a backend on the same device.
cublasHandle_t handle_for(int device);

template <class T>
class CudaBackend final : public fasth::Backend<T> {
 public:
  // Every operation runs on `device` (made current for the call, then restored) and is
  // enqueued on `stream`, which must belong to `device`. allow_tf32 lets float GEMMs use
  // TF32 tensor cores; it is ignored for double.
  CudaBackend(int device, cudaStream_t stream, bool allow_tf32 = false);

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // The operations every backend implements, declared once for all (a copy per header would
  // drift). trmm: cuBLAS's trmm for one matrix; a batch goes to the strided-batched gemm
  // (cuBLAS has no batched trmm). trsm: cuBLAS's trsm, one call per matrix (its batched form
  // takes arrays of device pointers). small_path: d <= 128 where the backward's shared memory
  // (U and dL/dU, d x d, and V) fits the device's opt-in limit: float to d = 128 on Hopper
  // (about 115 on A100), double to 97; fasth's reflectors only (taus: no).
#include "fasth/backend_overrides.inc"
  // larft keeps a block's T in shared memory up to 128 (double: 128 KiB, within the opt-in
  // limit from A100 on); wider blocks merge leaves of 128.
  index_t larft_max() const override { return 128; }

 private:
  int device_;
  cudaStream_t stream_;
  bool tf32_;
  cublasHandle_t handle_;
};

extern template class CudaBackend<float>;
extern template class CudaBackend<double>;
extern template class CudaBackend<std::complex<float>>;
extern template class CudaBackend<std::complex<double>>;

}  // namespace fasth::cuda
