// The array-facing ops, written once for every device module: fasth._core registers them for
// CPU arrays, fasth._cuda for CUDA arrays. Arrays arrive over DLPack without a copy; their
// contract (dtype, rank, device) sits in the nb::ndarray types, so misuse is a TypeError.
// Each op releases the GIL and runs the core on a backend made for the array's device and
// the caller's stream.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>

#include "fasth/fasth.hpp"

namespace fasth::bindings {

namespace nb = nanobind;

// (batch, rows, cols) arrays with any strides; 1-d contiguous buffers for factors/workspace.
template <class T, class Dev>
using In = nb::ndarray<const T, nb::ndim<3>, Dev>;
template <class T, class Dev>
using Out = nb::ndarray<T, nb::ndim<3>, Dev>;
template <class T, class Dev>
using Buf = nb::ndarray<T, nb::ndim<1>, nb::c_contig, Dev>;

template <class A>
auto matrix_of(const A& a) {
  const index_t rows = static_cast<index_t>(a.shape(1)), cols = static_cast<index_t>(a.shape(2));
  if (a.shape(0) == 0)  // nothing is read or written: any strides, canonical ones here
    return Matrix<std::remove_pointer_t<decltype(a.data())>>{a.data(), rows, cols, 1, rows, 0};
  return Matrix<std::remove_pointer_t<decltype(a.data())>>{
      a.data(), rows, cols, a.stride(1), a.stride(2), a.shape(0) > 1 ? a.stride(0) : 0};
}

// The array's matrices, checked against the shape's batch (V and dV: one shared matrix).
template <class A>
auto batch_of(const A& a, const Shape& s, const char* name, bool v_like = false) {
  const index_t want = v_like && s.shared_v ? 1 : s.batch;
  const index_t got = static_cast<index_t>(a.shape(0));
  if (got != want)
    throw std::invalid_argument(std::string("fasth: ") + name + " has batch " +
                                std::to_string(got) + ", expected " + std::to_string(want));
  return matrix_of(a);
}

template <class B>
void need(const B& buf, std::size_t count, const char* name) {
  if (buf.size() < count)
    throw std::invalid_argument(std::string("fasth: ") + name + " holds " +
                                std::to_string(buf.size()) + " elements, needs " +
                                std::to_string(count));
}

// Make<T>::make(device_id, stream, tf32) returns the backend for one call.
template <class T, class Dev, template <class> class Make>
void def_ops(nb::module_& m) {
  using I = In<T, Dev>;
  using O = Out<T, Dev>;
  using F = Buf<T, Dev>;
  using CF = Buf<const T, Dev>;
  const auto release = nb::call_guard<nb::gil_scoped_release>();

  m.def(
      "factors",
      [](const Shape& s, I V, F f, F ws, std::uintptr_t stream, bool tf32) {
        need(f, factors_size(s), "factors");
        need(ws, workspace_size(Op::factors, s), "workspace");
        auto be = Make<T>::make(V.device_id(), stream, tf32);
        fasth::factors<T>(be, s, batch_of(V, s, "V", true), f.data(), ws.data());
      },
      nb::arg("shape"), nb::arg("V"), nb::arg("factors"), nb::arg("workspace"),
      nb::arg("stream") = 0, nb::arg("tf32") = false, release);

  m.def(
      "apply",
      [](const Shape& s, bool transpose, I V, CF f, I X, O out, F ws, std::uintptr_t stream,
         bool tf32) {
        need(f, factors_size(s), "factors");
        need(ws, workspace_size(Op::apply, s), "workspace");
        auto be = Make<T>::make(V.device_id(), stream, tf32);
        fasth::apply<T>(be, s, transpose, batch_of(V, s, "V", true), f.data(),
                        batch_of(X, s, "X"), batch_of(out, s, "out"), ws.data());
      },
      nb::arg("shape"), nb::arg("transpose"), nb::arg("V"), nb::arg("factors"), nb::arg("X"),
      nb::arg("out"), nb::arg("workspace"), nb::arg("stream") = 0, nb::arg("tf32") = false,
      release);

  m.def(
      "apply_backward",
      [](const Shape& s, bool transpose, I V, CF f, I out, I grad, O dX, O dV, F ws,
         std::uintptr_t stream, bool tf32) {
        need(f, factors_size(s), "factors");
        need(ws, workspace_size(Op::apply_backward, s), "workspace");
        auto be = Make<T>::make(V.device_id(), stream, tf32);
        fasth::apply_backward<T>(be, s, transpose, batch_of(V, s, "V", true), f.data(),
                                 batch_of(out, s, "out"), batch_of(grad, s, "grad"),
                                 batch_of(dX, s, "dX"), batch_of(dV, s, "dV", true), ws.data());
      },
      nb::arg("shape"), nb::arg("transpose"), nb::arg("V"), nb::arg("factors"), nb::arg("out"),
      nb::arg("grad"), nb::arg("dX"), nb::arg("dV"), nb::arg("workspace"),
      nb::arg("stream") = 0, nb::arg("tf32") = false, release);

  m.def(
      "matrix",
      [](const Shape& s, I V, CF f, O out, F ws, std::uintptr_t stream, bool tf32) {
        need(f, factors_size(s), "factors");
        need(ws, workspace_size(Op::matrix, s), "workspace");
        auto be = Make<T>::make(V.device_id(), stream, tf32);
        fasth::matrix<T>(be, s, batch_of(V, s, "V", true), f.data(), batch_of(out, s, "out"),
                         ws.data());
      },
      nb::arg("shape"), nb::arg("V"), nb::arg("factors"), nb::arg("out"), nb::arg("workspace"),
      nb::arg("stream") = 0, nb::arg("tf32") = false, release);

  m.def(
      "matrix_backward",
      [](const Shape& s, I V, CF f, I out, I grad, O dV, F ws, std::uintptr_t stream,
         bool tf32) {
        need(f, factors_size(s), "factors");
        need(ws, workspace_size(Op::matrix_backward, s), "workspace");
        auto be = Make<T>::make(V.device_id(), stream, tf32);
        fasth::matrix_backward<T>(be, s, batch_of(V, s, "V", true), f.data(),
                                  batch_of(out, s, "out"), batch_of(grad, s, "grad"),
                                  batch_of(dV, s, "dV", true), ws.data());
      },
      nb::arg("shape"), nb::arg("V"), nb::arg("factors"), nb::arg("out"), nb::arg("grad"),
      nb::arg("dV"), nb::arg("workspace"), nb::arg("stream") = 0, nb::arg("tf32") = false,
      release);
}

}  // namespace fasth::bindings
