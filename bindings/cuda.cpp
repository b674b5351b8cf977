// fasth._cuda: the CUDA module, the same ops as fasth._core over CUDA arrays (DLPack device
// kCUDA). Imported lazily by fasth._api.cuda_module(); importing it touches neither the driver
// nor a GPU (the CUDA runtime loads libcuda on its first call), so it imports on machines
// without either and unavailable_reason() says why it cannot run there.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cuda_backend.hpp"
#include "jax_ffi.hpp"
#include "ops.hpp"
#include "shape.hpp"

namespace nb = nanobind;

namespace {

// The backend for one call, on the array's own device (never device 0 by default) and the
// caller's stream (a cudaStream_t as an integer: torch's cuda_stream, cupy's ptr; 0 is the
// legacy default stream).
template <class T>
struct MakeCuda {
  static fasth::cuda::CudaBackend<T> make(int device, std::uintptr_t stream, bool tf32) {
    return fasth::cuda::CudaBackend<T>(device, reinterpret_cast<cudaStream_t>(stream), tf32);
  }
};

}  // namespace

NB_MODULE(_cuda, m) {
  m.doc() = "fasth core on CUDA arrays (cuBLAS and fasth's kernels, on the caller's stream)";
  // fasth._core (imported first by the package) has registered the shared types; registering
  // a C++ type again would only warn, so reuse them. Alone (stub generation), define them.
  if (nb::type<fasth::Shape>().is_valid()) {
    nb::module_ core = nb::module_::import_("fasth._core");
    for (const char* name : {"Strategy", "Device", "Op", "Shape", "resolve", "factors_size",
                             "workspace_size", "addressable"})
      m.attr(name) = core.attr(name);
  } else {
    fasth::bindings::def_shape(m);
  }
  fasth::bindings::def_ops<float, nb::device::cuda, MakeCuda>(m);
  fasth::bindings::def_ops<double, nb::device::cuda, MakeCuda>(m);
  fasth::bindings::def_jax_ffi<fasth::Device::cuda, MakeCuda>(m);
  m.def("unavailable_reason", &fasth::cuda::unavailable_reason,
        nb::call_guard<nb::gil_scoped_release>(),
        "'' when the CUDA backend works on the current device, otherwise why not.");
}
