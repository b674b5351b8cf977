// fasth._core: the CPU module. Fills the core's BLAS table from SciPy's BLAS at import (the
// capsules of scipy.linalg.cython_blas, as jaxlib does), so nothing is linked at build time.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "fasth/cpu.hpp"
#include "jax_ffi.hpp"
#include "ops.hpp"
#include "shape.hpp"

namespace nb = nanobind;

namespace {

template <class T>
struct MakeCpu {
  static fasth::cpu::CpuBackend<T> make(int, std::uintptr_t, bool) { return {}; }
};

void load_scipy_blas() {
  nb::dict capi = nb::module_::import_("scipy.linalg.cython_blas").attr("__pyx_capi__");
  auto fn = [&](const char* name) { return nb::cast<nb::capsule>(capi[name]).data(); };
  fasth::cpu::set_blas({reinterpret_cast<fasth::cpu::gemm_fn<float>*>(fn("sgemm")),
                        reinterpret_cast<fasth::cpu::gemm_fn<double>*>(fn("dgemm")),
                        reinterpret_cast<fasth::cpu::syrk_fn<float>*>(fn("ssyrk")),
                        reinterpret_cast<fasth::cpu::syrk_fn<double>*>(fn("dsyrk"))});
}

// A BLAS given by the addresses of its Fortran entry points (0: absent; all but the gemms
// are optional).
void use_blas(std::uintptr_t sgemm, std::uintptr_t dgemm, std::uintptr_t ssyrk,
              std::uintptr_t dsyrk, std::uintptr_t set_threads_local,
              std::uintptr_t sgemm_batch, std::uintptr_t dgemm_batch) {
  fasth::cpu::set_blas({reinterpret_cast<fasth::cpu::gemm_fn<float>*>(sgemm),
                        reinterpret_cast<fasth::cpu::gemm_fn<double>*>(dgemm),
                        reinterpret_cast<fasth::cpu::syrk_fn<float>*>(ssyrk),
                        reinterpret_cast<fasth::cpu::syrk_fn<double>*>(dsyrk),
                        reinterpret_cast<int (*)(int)>(set_threads_local),
                        reinterpret_cast<fasth::cpu::gemm_batch_fn<float>*>(sgemm_batch),
                        reinterpret_cast<fasth::cpu::gemm_batch_fn<double>*>(dgemm_batch)});
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "fasth core on CPU arrays (BLAS from SciPy)";
  fasth::bindings::def_shape(m);
  fasth::bindings::def_ops<float, nb::device::cpu, MakeCpu>(m);
  fasth::bindings::def_ops<double, nb::device::cpu, MakeCpu>(m);
  fasth::bindings::def_jax_ffi<fasth::Device::cpu, MakeCpu>(m);
  m.def("use_blas", &use_blas, nb::arg("sgemm"), nb::arg("dgemm"), nb::arg("ssyrk") = 0,
        nb::arg("dsyrk") = 0, nb::arg("set_threads_local") = 0, nb::arg("sgemm_batch") = 0,
        nb::arg("dgemm_batch") = 0,
        "Use the BLAS at these addresses (Fortran ABI, 32-bit integers; set_threads_local: "
        "MKL's MKL_Set_Num_Threads_Local, to run small products on one thread; ?gemm_batch: "
        "MKL's group interface, for batches).");
  m.def("load_scipy_blas", &load_scipy_blas, "Fill the BLAS table from SciPy (done by `import fasth`).");
}
