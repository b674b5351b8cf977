// fasth._core: the CPU module, and the home of the Plan type that every module shares. The
// CPU backend's BLAS is a property of each call: tables registered here (SciPy's, from the
// capsules of scipy.linalg.cython_blas as jaxlib does, and any other by its addresses) are
// immutable once registered, and a call names the one it uses.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <atomic>
#include <stdexcept>

#include "fasth/cpu.hpp"
#include "jax_ffi.hpp"
#include "ops.hpp"
#include "plan.hpp"

namespace nb = nanobind;

namespace {

// Registered BLAS tables: written once each, then only read (no lock on the read path).
constexpr int kMaxBlas = 16;
fasth::cpu::Blas g_tables[kMaxBlas];
std::atomic<int> g_count{0};
std::atomic_flag g_writing = ATOMIC_FLAG_INIT;

int add_blas(const fasth::cpu::Blas& b) {
  if (!b.sgemm || !b.dgemm) throw std::invalid_argument("fasth: a BLAS needs sgemm and dgemm");
  while (g_writing.test_and_set(std::memory_order_acquire)) {
  }
  const int id = g_count.load();
  if (id == kMaxBlas) {
    g_writing.clear(std::memory_order_release);
    throw std::runtime_error("fasth: too many BLAS tables registered");
  }
  g_tables[id] = b;
  g_count.store(id + 1, std::memory_order_release);
  g_writing.clear(std::memory_order_release);
  return id;
}

const fasth::cpu::Blas& blas_table(int id) {
  if (id < 0 || id >= g_count.load(std::memory_order_acquire))
    throw std::invalid_argument("fasth: no BLAS registered with id " + std::to_string(id));
  return g_tables[id];
}

template <class T>
struct MakeCpu {
  static fasth::cpu::CpuBackend<T> make(int, std::uintptr_t, bool, int blas) {
    return fasth::cpu::CpuBackend<T>(blas_table(blas));
  }
};

// A table entry from an address, as the entry's function type.
template <class F>
void put(F*& entry, std::uintptr_t address) {
  entry = reinterpret_cast<F*>(address);
}

int scipy_blas() {
  nb::dict capi = nb::module_::import_("scipy.linalg.cython_blas").attr("__pyx_capi__");
  auto fn = [&](const char* name) { return reinterpret_cast<std::uintptr_t>(nb::cast<nb::capsule>(capi[name]).data()); };
  fasth::cpu::Blas b;
  put(b.sgemm, fn("sgemm")), put(b.dgemm, fn("dgemm")), put(b.cgemm, fn("cgemm")), put(b.zgemm, fn("zgemm"));
  put(b.strmm, fn("strmm")), put(b.dtrmm, fn("dtrmm")), put(b.ctrmm, fn("ctrmm")), put(b.ztrmm, fn("ztrmm"));
  put(b.strsm, fn("strsm")), put(b.dtrsm, fn("dtrsm")), put(b.ctrsm, fn("ctrsm")), put(b.ztrsm, fn("ztrsm"));
  return add_blas(b);
}

// ssyrk, dsyrk: accepted for fasth.torch's positional call, unused (gram runs on gemm).
int register_blas(std::uintptr_t sgemm, std::uintptr_t dgemm, std::uintptr_t /*ssyrk*/,
                  std::uintptr_t /*dsyrk*/, std::uintptr_t strmm, std::uintptr_t dtrmm,
                  std::uintptr_t set_threads_local, std::uintptr_t sgemm_batch,
                  std::uintptr_t dgemm_batch, std::uintptr_t strsm, std::uintptr_t dtrsm,
                  std::uintptr_t cgemm, std::uintptr_t zgemm, std::uintptr_t ctrmm,
                  std::uintptr_t ztrmm, std::uintptr_t ctrsm, std::uintptr_t ztrsm,
                  std::uintptr_t cgemm_batch, std::uintptr_t zgemm_batch) {
  fasth::cpu::Blas b;
  put(b.sgemm, sgemm), put(b.dgemm, dgemm), put(b.cgemm, cgemm), put(b.zgemm, zgemm);
  put(b.strmm, strmm), put(b.dtrmm, dtrmm), put(b.ctrmm, ctrmm), put(b.ztrmm, ztrmm);
  put(b.strsm, strsm), put(b.dtrsm, dtrsm), put(b.ctrsm, ctrsm), put(b.ztrsm, ztrsm);
  put(b.sgemm_batch, sgemm_batch), put(b.dgemm_batch, dgemm_batch);
  put(b.cgemm_batch, cgemm_batch), put(b.zgemm_batch, zgemm_batch);
  put(b.set_threads_local, set_threads_local);
  return add_blas(b);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "fasth core on CPU arrays";
  // Plans live on in caches and autograd graphs until the interpreter is gone: not leaks.
  nb::set_leak_warnings(false);
  fasth::bindings::def_plan(m);
  fasth::bindings::def_counts(m);
  fasth::bindings::def_runs<MakeCpu, nb::device::cpu::value>(m);
  fasth::bindings::def_jax_ffi<fasth::Device::cpu, MakeCpu>(m);
  m.def("scipy_blas", &scipy_blas,
        "Registers SciPy's BLAS (scipy.linalg.cython_blas) and returns its id.");
  m.def("register_blas", &register_blas, nb::arg("sgemm"), nb::arg("dgemm"), nb::arg("ssyrk") = 0,
        nb::arg("dsyrk") = 0, nb::arg("strmm") = 0, nb::arg("dtrmm") = 0,
        nb::arg("set_threads_local") = 0, nb::arg("sgemm_batch") = 0, nb::arg("dgemm_batch") = 0,
        nb::arg("strsm") = 0, nb::arg("dtrsm") = 0, nb::arg("cgemm") = 0, nb::arg("zgemm") = 0,
        nb::arg("ctrmm") = 0, nb::arg("ztrmm") = 0, nb::arg("ctrsm") = 0, nb::arg("ztrsm") = 0,
        nb::arg("cgemm_batch") = 0, nb::arg("zgemm_batch") = 0,
        "Registers the BLAS at these addresses (Fortran ABI, 32-bit integers; 0: absent, all "
        "but sgemm and dgemm optional, cgemm and zgemm needed by complex calls; ssyrk and dsyrk "
        "ignored; set_threads_local: MKL's MKL_Set_Num_Threads_Local, to run small products on "
        "one thread; ?gemm_batch: MKL's group interface) and returns its id.");
}
