// The runs of a Plan, written once for every device module: fasth._core registers them for
// CPU memory, fasth._cuda for CUDA memory. Each is one call: the factors and the op, on a
// backend made for the call's device and stream (Make<T>::make(device, stream, tf32, blas)),
// dispatched on the dtype once, with the GIL released.
//
// An array argument is an address (an int: the adapters pass their own tensors' data
// pointers, laid out as the plan says, which is fastest), None (absent), or any array
// nanobind takes (numpy, DLPack), whose dtype, device and size are checked.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>

#include <complex>
#include <cstdint>
#include <string>

#include "fasth/fasth.hpp"
#include "plan.hpp"

namespace fasth::bindings {

// The dtypes' codes (fasth._api's dtype table gives the same).
enum class Dtype : int { float32 = 0, float64 = 1, complex64 = 2, complex128 = 3 };

template <class T>
T* pointer(nb::handle h, int device_type, const char* name, std::size_t need = 0) {
  if (h.is_none()) return nullptr;
  if (PyLong_Check(h.ptr())) {
    void* p = PyLong_AsVoidPtr(h.ptr());
    if (!p && PyErr_Occurred()) throw nb::python_error();
    return static_cast<T*>(p);
  }
  nb::ndarray<nb::ro> a;  // outputs are the caller's own fresh arrays; inputs may be read-only
  if (!nb::try_cast(h, a))
    throw nb::type_error((std::string("fasth: ") + name + " must be an address or an array").c_str());
  if (a.dtype() != nb::dtype<std::remove_const_t<T>>())
    throw nb::type_error((std::string("fasth: ") + name + " has the wrong dtype").c_str());
  if (a.device_type() != device_type)
    throw nb::type_error((std::string("fasth: ") + name + " is on the wrong device").c_str());
  if (a.size() < need)
    throw std::invalid_argument(std::string("fasth: ") + name + " holds " +
                                std::to_string(a.size()) + " elements, needs " +
                                std::to_string(need));
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// body(T{}) for the call's dtype, on a plan made for that kind of element (real or complex:
// they lay their arrays out differently).
template <class Body>
void dispatch(const Plan& p, int dtype, Body&& body) {
  auto run = [&](auto tag) {
    if (is_complex_v<decltype(tag)> != p.problem().complex)
      throw nb::type_error(p.problem().complex ? "fasth: this plan was made for complex arrays"
                                               : "fasth: this plan was made for real arrays");
    body(tag);
  };
  if (dtype == static_cast<int>(Dtype::float32)) return run(float{});
  if (dtype == static_cast<int>(Dtype::float64)) return run(double{});
  if (dtype == static_cast<int>(Dtype::complex64)) return run(std::complex<float>{});
  if (dtype == static_cast<int>(Dtype::complex128)) return run(std::complex<double>{});
  throw nb::type_error("fasth: expected float32, float64, complex64 or complex128");
}

struct Context {
  std::uintptr_t stream = 0;
  int device = 0;
  bool tf32 = false;
  int blas = 0;
};

template <template <class> class Make, int DeviceType>
void def_runs(nb::module_& m) {
  const int dev = DeviceType;

  m.def(
      "forward",
      [dev](const Plan& p, int dtype, nb::handle V, nb::handle tau, nb::handle X, nb::handle out,
            nb::handle factors, nb::handle ws, std::uintptr_t stream, int device, bool tf32,
            int blas, nb::handle tape) {
        dispatch(p, dtype, [&](auto tag) {
          using T = decltype(tag);
          Forward<T> a;
          a.V = pointer<const T>(V, dev, "V");
          a.tau = pointer<const T>(tau, dev, "tau");
          a.X = pointer<const T>(X, dev, "X");
          a.out = pointer<T>(out, dev, "out");
          a.factors = pointer<T>(factors, dev, "factors", p.factors_size());
          a.workspace = pointer<T>(ws, dev, "workspace", p.workspace_size(Pass::forward));
          a.tape = pointer<T>(tape, dev, "tape", p.tape_size());
          nb::gil_scoped_release release;
          p.forward(Make<T>::make(device, stream, tf32, blas), a);
        });
      },
      nb::arg("plan"), nb::arg("dtype"), nb::arg("V").none(), nb::arg("tau").none(), nb::arg("X").none(),
      nb::arg("out").none(), nb::arg("factors").none(), nb::arg("workspace").none(), nb::arg("stream") = 0,
      nb::arg("device") = 0, nb::arg("tf32") = false, nb::arg("blas") = 0, nb::arg("tape").none() = nb::none(),
      "The factors of V (into `factors`) and the op (into `out`) in one call; with `tape`, "
      "what the backward reads.");

  m.def(
      "forward_with",
      [dev](const Plan& p, int dtype, nb::handle V, nb::handle factors, nb::handle X,
            nb::handle out, nb::handle ws, std::uintptr_t stream, int device, bool tf32,
            int blas, nb::handle tape) {
        dispatch(p, dtype, [&](auto tag) {
          using T = decltype(tag);
          Forward<T> a;
          a.V = pointer<const T>(V, dev, "V");
          a.factors = pointer<T>(factors, dev, "factors", p.factors_size());
          a.X = pointer<const T>(X, dev, "X");
          a.out = pointer<T>(out, dev, "out");
          a.workspace = pointer<T>(ws, dev, "workspace", p.workspace_size(Pass::forward));
          a.tape = pointer<T>(tape, dev, "tape", p.tape_size());
          nb::gil_scoped_release release;
          p.forward_with(Make<T>::make(device, stream, tf32, blas), a);
        });
      },
      nb::arg("plan"), nb::arg("dtype"), nb::arg("V").none(), nb::arg("factors").none(),
      nb::arg("X").none(), nb::arg("out").none(),
      nb::arg("workspace").none(), nb::arg("stream") = 0, nb::arg("device") = 0,
      nb::arg("tf32") = false, nb::arg("blas") = 0, nb::arg("tape").none() = nb::none(),
      "The op with factors that an earlier forward of this plan filled.");

  m.def(
      "backward",
      [dev](const Plan& p, int dtype, nb::handle V, nb::handle factors, nb::handle saved,
            const Dims& saved_shape, const Dims& saved_strides, nb::handle grad,
            const Dims& grad_shape, const Dims& grad_strides, nb::handle dV, nb::handle dtau,
            nb::handle dX, nb::handle ws, std::uintptr_t stream, int device, bool tf32,
            int blas, nb::handle tape) {
        dispatch(p, dtype, [&](auto tag) {
          using T = decltype(tag);
          Backward<T> a;
          a.V = pointer<const T>(V, dev, "V");
          a.factors = pointer<const T>(factors, dev, "factors", p.factors_size());
          a.saved = pointer<const T>(saved, dev, "saved");
          if (a.saved) a.saved_layout = array_of(saved_shape, saved_strides, "saved");
          a.grad = pointer<const T>(grad, dev, "grad");
          a.grad_layout = array_of(grad_shape, grad_strides, "grad");
          a.dV = pointer<T>(dV, dev, "dV");
          a.dtau = pointer<T>(dtau, dev, "dtau");
          a.dX = pointer<T>(dX, dev, "dX");
          a.workspace = pointer<T>(ws, dev, "workspace", p.workspace_size(Pass::backward));
          a.tape = pointer<const T>(tape, dev, "tape", p.tape_size());
          nb::gil_scoped_release release;
          p.backward(Make<T>::make(device, stream, tf32, blas), a);
        });
      },
      nb::arg("plan"), nb::arg("dtype"), nb::arg("V").none(), nb::arg("factors").none(),
      nb::arg("saved").none(), nb::arg("saved_shape"), nb::arg("saved_strides"), nb::arg("grad").none(),
      nb::arg("grad_shape"), nb::arg("grad_strides"), nb::arg("dV").none(), nb::arg("dtau").none(),
      nb::arg("dX").none(), nb::arg("workspace").none(), nb::arg("stream") = 0, nb::arg("device") = 0,
      nb::arg("tf32") = false, nb::arg("blas") = 0, nb::arg("tape").none() = nb::none(),
      "Gradients from the factors, the saved output (householder apply) or input (lapack "
      "apply), and grad = dL/dout; with the forward's `tape`, from it instead of `saved`.");

  m.def(
      "tangent",
      [dev](const Plan& p, int dtype, nb::handle V, nb::handle factors, nb::handle X,
            nb::handle dV, const Dims& dv_shape, const Dims& dv_strides, nb::handle dtau,
            const Dims& dtau_shape, const Dims& dtau_strides, nb::handle dX,
            const Dims& dx_shape, const Dims& dx_strides, nb::handle dout, nb::handle ws,
            std::uintptr_t stream, int device, bool tf32, int blas) {
        dispatch(p, dtype, [&](auto tag) {
          using T = decltype(tag);
          Tangent<T> a;
          a.V = pointer<const T>(V, dev, "V");
          a.factors = pointer<const T>(factors, dev, "factors", p.factors_size());
          a.X = pointer<const T>(X, dev, "X");
          a.dV = pointer<const T>(dV, dev, "dV");
          if (a.dV) a.dV_layout = array_of(dv_shape, dv_strides, "dV");
          a.dtau = pointer<const T>(dtau, dev, "dtau");
          if (a.dtau) a.dtau_layout = array_of(dtau_shape, dtau_strides, "dtau");
          a.dX = pointer<const T>(dX, dev, "dX");
          if (a.dX) a.dX_layout = array_of(dx_shape, dx_strides, "dX");
          a.dout = pointer<T>(dout, dev, "dout");
          a.workspace = pointer<T>(ws, dev, "workspace", p.workspace_size(Pass::tangent));
          nb::gil_scoped_release release;
          p.tangent(Make<T>::make(device, stream, tf32, blas), a);
        });
      },
      nb::arg("plan"), nb::arg("dtype"), nb::arg("V").none(), nb::arg("factors").none(),
      nb::arg("X").none(), nb::arg("dV").none(), nb::arg("dV_shape"), nb::arg("dV_strides"),
      nb::arg("dtau").none(), nb::arg("dtau_shape"), nb::arg("dtau_strides"),
      nb::arg("dX").none(), nb::arg("dX_shape"), nb::arg("dX_strides"), nb::arg("dout").none(),
      nb::arg("workspace").none(), nb::arg("stream") = 0, nb::arg("device") = 0,
      nb::arg("tf32") = false, nb::arg("blas") = 0,
      "Forward mode: the tangent of the op's output in the direction (dV, dtau, dX) (None: "
      "zero), from the forward's factors, into dout.");
}

}  // namespace fasth::bindings
