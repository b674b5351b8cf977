// The CUDA backend's host side, plain C++: errors, the device guard, and the per-device cuBLAS
// handles with the mutex that serialises their stream and math-mode state.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <mutex>
#include <string>

namespace fasth::cuda::detail {

[[noreturn]] void fail(const std::string& what);
void check(cudaError_t e, const char* what);
void check(cublasStatus_t s, const char* what);

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// Holds `device`'s handle mutex with the call's stream, pointer mode (host) and math mode set
// on the handle: that state is handle-wide, so it is set and used under one lock.
class BoundHandle {
 public:
  BoundHandle(int device, cublasHandle_t h, cudaStream_t stream, bool tf32);

 private:
  std::lock_guard<std::mutex> lock_;
};

// The device's opt-in limit of shared memory per block, in bytes.
std::size_t smem_optin(int device);

}  // namespace fasth::cuda::detail
