// Errors, devices and cuBLAS handles (see runtime.hpp and fasth/cuda.hpp).
#include "runtime.hpp"

#include <cuda_runtime_api.h>

#include <exception>
#include <stdexcept>

#include "fasth/cuda.hpp"
#include "kernels.hpp"

namespace fasth::cuda {
namespace detail {

void fail(const std::string& what) { throw std::runtime_error("fasth CUDA: " + what); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail(std::string(what) + ": " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) +
         ")");
}

DeviceGuard::DeviceGuard(int device) {
  check(cudaGetDevice(&prev_), "cudaGetDevice");
  if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  int now = prev_;
  if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
}

namespace {

// One handle per device, guarded by that device's mutex (creation and every use).
constexpr int kMaxDevices = 64;
struct Slot {
  std::mutex mu;
  cublasHandle_t handle = nullptr;
};

Slot& slot(int device) {
  static Slot slots[kMaxDevices];
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count || device >= kMaxDevices)
    fail("invalid device " + std::to_string(device) + " (" + std::to_string(count) +
         " devices)");
  return slots[device];
}

// Requires s.mu held.
cublasHandle_t handle_locked(Slot& s, int device) {
  if (!s.handle) {
    DeviceGuard guard(device);
    cublasHandle_t h = nullptr;
    check(cublasCreate(&h), "cublasCreate");
    const cublasStatus_t st = cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST);
    if (st != CUBLAS_STATUS_SUCCESS) cublasDestroy(h);
    check(st, "cublasSetPointerMode");
    s.handle = h;
  }
  return s.handle;
}

}  // namespace

BoundHandle::BoundHandle(int device, cublasHandle_t h, cudaStream_t stream, bool tf32)
    : lock_(slot(device).mu) {
  check(cublasSetStream(h, stream), "cublasSetStream");
  check(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
  check(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
        "cublasSetMathMode");
}

std::size_t smem_optin(int device) {
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  return static_cast<std::size_t>(optin);
}

}  // namespace detail

using namespace detail;

cublasHandle_t handle_for(int device) {
  Slot& s = slot(device);
  std::lock_guard<std::mutex> lock(s.mu);
  return handle_locked(s, device);
}

std::string unavailable_reason() {
  try {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it
      const std::string hint =
          e == cudaErrorInsufficientDriver
              ? "; no NVIDIA driver was found, or it is older than the CUDA " +
                    std::to_string(CUDART_VERSION / 1000) + "." +
                    std::to_string(CUDART_VERSION % 1000 / 10) + " runtime fasth was built with"
              : "";
      return std::string("CUDA is unavailable: ") + cudaGetErrorName(e) + " (" +
             cudaGetErrorString(e) + ")" + hint;
    }
    if (count == 0) return "no CUDA device found";
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    e = kernels::kernel_image_error();
    if (e != cudaSuccess) {
      cudaGetLastError();
      cudaDeviceProp prop;
      std::string arch = cudaGetDeviceProperties(&prop, device) == cudaSuccess
                             ? " (compute capability " + std::to_string(prop.major) + "." +
                                   std::to_string(prop.minor) + ")"
                             : "";
      return "fasth's CUDA kernels cannot run on device " + std::to_string(device) + arch +
             ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    }
    handle_for(device);
    return "";
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown error while initialising CUDA";
  }
}

}  // namespace fasth::cuda
