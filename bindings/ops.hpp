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

// A run's own arrays, each into the field of the run's arguments with the field's type.
template <class P>
void take(P*& field, nb::handle h, int device_type, const char* name, std::size_t need = 0) {
  field = pointer<P>(h, device_type, name, need);
}
// An array of any strides, with its layout where it is given.
template <class P>
void take(P*& field, Array& layout, nb::handle h, const Dims& shape, const Dims& strides,
          int device_type, const char* name) {
  take(field, h, device_type, name);
  if (field) layout = array_of(shape, strides, name);
}

// What makes a call's backend: Make<T>::make(device, stream, tf32, blas).
struct Context {
  std::uintptr_t stream = 0;
  int device = 0;
  bool tf32 = false;
  int blas = 0;
};

// One run for the call's dtype: Args<T> with V and the factors (every run reads both), the
// run's own arrays (own(a)), the workspace of `pass`, then run(backend, a) with the GIL released.
template <template <class> class Make, template <class> class Args, class Own, class Run>
void run(const Plan& p, Pass pass, int dtype, int dev, nb::handle V, nb::handle factors,
         nb::handle ws, const Context& c, Own&& own, Run&& run) {
  dispatch(p, dtype, [&](auto tag) {
    using T = decltype(tag);
    Args<T> a;
    take(a.V, V, dev, "V");
    take(a.factors, factors, dev, "factors", p.factors_size());
    own(a);
    take(a.workspace, ws, dev, "workspace", p.workspace_size(pass));
    nb::gil_scoped_release release;
    run(Make<T>::make(c.device, c.stream, c.tf32, c.blas), a);
  });
}

template <template <class> class Make, int DeviceType>
void def_runs(nb::module_& m) {
  const int dev = DeviceType;

  // forward and forward_with take the same arrays (forward_with: no tau); `then` runs either.
  auto forward_run = [dev](const Plan& p, int dtype, nb::handle V, nb::handle tau, nb::handle X,
                           nb::handle out, nb::handle factors, nb::handle ws, const Context& c,
                           nb::handle tape, auto then) {
    run<Make, Forward>(
        p, Pass::forward, dtype, dev, V, factors, ws, c,
        [&](auto& a) {
          take(a.tau, tau, dev, "tau");
          take(a.X, X, dev, "X");
          take(a.out, out, dev, "out");
          take(a.tape, tape, dev, "tape", p.tape_size());
        },
        then);
  };

  m.def(
      "forward",
      [forward_run](const Plan& p, int dtype, nb::handle V, nb::handle tau, nb::handle X,
                    nb::handle out, nb::handle factors, nb::handle ws, std::uintptr_t stream,
                    int device, bool tf32, int blas, nb::handle tape) {
        forward_run(p, dtype, V, tau, X, out, factors, ws, {stream, device, tf32, blas}, tape,
                    [&](const auto& be, const auto& a) { p.forward(be, a); });
      },
      nb::arg("plan"), nb::arg("dtype"), nb::arg("V").none(), nb::arg("tau").none(), nb::arg("X").none(),
      nb::arg("out").none(), nb::arg("factors").none(), nb::arg("workspace").none(), nb::arg("stream") = 0,
      nb::arg("device") = 0, nb::arg("tf32") = false, nb::arg("blas") = 0, nb::arg("tape").none() = nb::none(),
      "The factors of V (into `factors`) and the op (into `out`) in one call; with `tape`, "
      "what the backward reads.");

  m.def(
      "forward_with",
      [forward_run](const Plan& p, int dtype, nb::handle V, nb::handle factors, nb::handle X,
                    nb::handle out, nb::handle ws, std::uintptr_t stream, int device, bool tf32,
                    int blas, nb::handle tape) {
        forward_run(p, dtype, V, nb::none(), X, out, factors, ws, {stream, device, tf32, blas},
                    tape, [&](const auto& be, const auto& a) { p.forward_with(be, a); });
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
        run<Make, Backward>(
            p, Pass::backward, dtype, dev, V, factors, ws, {stream, device, tf32, blas},
            [&](auto& a) {
              take(a.saved, a.saved_layout, saved, saved_shape, saved_strides, dev, "saved");
              take(a.grad, grad, dev, "grad");
              a.grad_layout = array_of(grad_shape, grad_strides, "grad");
              take(a.dV, dV, dev, "dV");
              take(a.dtau, dtau, dev, "dtau");
              take(a.dX, dX, dev, "dX");
              take(a.tape, tape, dev, "tape", p.tape_size());
            },
            [&](const auto& be, const auto& a) { p.backward(be, a); });
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
        run<Make, Tangent>(
            p, Pass::tangent, dtype, dev, V, factors, ws, {stream, device, tf32, blas},
            [&](auto& a) {
              take(a.X, X, dev, "X");
              take(a.dV, a.dV_layout, dV, dv_shape, dv_strides, dev, "dV");
              take(a.dtau, a.dtau_layout, dtau, dtau_shape, dtau_strides, dev, "dtau");
              take(a.dX, a.dX_layout, dX, dx_shape, dx_strides, dev, "dX");
              take(a.dout, dout, dev, "dout");
            },
            [&](const auto& be, const auto& a) { p.tangent(be, a); });
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
