// fasth._cuda: the CUDA module, the same runs as fasth._core over CUDA memory, with the Plan
// type fasth._core defines. Imported lazily by fasth._api.cuda_module(); importing it touches
// neither the driver nor a GPU (the CUDA runtime loads libcuda on its first call), so it
// imports on machines without either and unavailable_reason() says why it cannot run there.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "fasth/cuda.hpp"
#include "jax_ffi.hpp"
#include "ops.hpp"
#include "plan.hpp"

namespace nb = nanobind;

namespace {

// The backend for one call, on the array's own device (never device 0 by default) and the
// caller's stream (a cudaStream_t as an integer: torch's cuda_stream, cupy's ptr; 0 is the
// legacy default stream).
template <class T>
struct MakeCuda {
  static fasth::cuda::CudaBackend<T> make(int device, std::uintptr_t stream, bool tf32, int) {
    return fasth::cuda::CudaBackend<T>(device, reinterpret_cast<cudaStream_t>(stream), tf32);
  }
};

}  // namespace

NB_MODULE(_cuda, m) {
  m.doc() = "fasth core on CUDA arrays (cuBLAS and fasth's kernels, on the caller's stream)";
  nb::set_leak_warnings(false);
  try {
    nb::module_::import_("fasth._core");  // the Plan type (absent only for stub generation)
  } catch (const nb::python_error&) {
  }
  fasth::bindings::def_counts(m);
  fasth::bindings::def_runs<MakeCuda, nb::device::cuda::value>(m);
  fasth::bindings::def_jax_ffi<fasth::Device::cuda, MakeCuda>(m);
  m.def("unavailable_reason", &fasth::cuda::unavailable_reason,
        nb::call_guard<nb::gil_scoped_release>(),
        "'' when the CUDA backend works on the current device, otherwise why not.");
}
