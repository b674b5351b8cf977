// XLA FFI handlers for fasth.jax, written once for every device module: fasth._core registers
// them for XLA's CPU platform, fasth._cuda for CUDA, each with its own backend factory (the
// Make<T>::make(device, stream, tf32) of ops.hpp). `jax_registrations()` returns the handlers
// as capsules for jax.ffi.register_ffi_target; built only where the XLA FFI headers (from
// jax.ffi.include_dir()) were found, else it returns an empty dict.
//
// Buffers are row-major (batch, rows, cols) arrays, one dtype per call (float32 or float64,
// dispatched once). V has batch 1 (shared by every batch entry: its gradient is summed) or
// the batch of X. Outputs include the T factors (saved for the backward) and the workspace:
// XLA allocates both with the call's other buffers, so the handlers allocate nothing, never
// synchronise, and enqueue on XLA's stream: safe to capture in command buffers (CUDA graphs).
// Shapes, strategy and block are resolved here by the core; fasth.jax sizes the factors and
// workspace outputs for any device (the largest), and they are checked here.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "fasth/fasth.hpp"

#if __has_include("xla/ffi/api/ffi.h")
#define FASTH_JAX_FFI 1
#include "xla/ffi/api/ffi.h"
#endif

namespace fasth::bindings {

#ifdef FASTH_JAX_FFI
namespace jax_ffi {

namespace ffi = xla::ffi;
using Buf = ffi::AnyBuffer;
using Ret = ffi::Result<ffi::AnyBuffer>;

struct Dims {
  index_t batch, rows, cols;
};

inline Dims dims_of(const Buf& b, const char* name) {
  auto d = b.dimensions();
  if (d.size() != 3)
    throw std::invalid_argument(std::string("fasth: ") + name + " must be a (batch, rows, cols) buffer");
  return {d[0], d[1], d[2]};
}

template <class T, class B>
Matrix<T> mat(B& b, const Dims& s) {
  return {reinterpret_cast<T*>(b.untyped_data()), s.rows, s.cols, s.cols, 1,
          s.batch > 1 ? s.rows * s.cols : 0};
}

inline void check_size(std::size_t have, std::size_t need, const char* name) {
  if (have < need)
    throw std::invalid_argument(std::string("fasth: ") + name + " holds " + std::to_string(have) +
                                " elements, needs " + std::to_string(need));
}

// A buffer of at least `need` elements: an output, or an input (the saved factors).
template <class T>
T* buffer(Ret& b, std::size_t need, const char* name) {
  check_size(b->element_count(), need, name);
  return reinterpret_cast<T*>(b->untyped_data());
}
template <class T>
const T* buffer(const Buf& b, std::size_t need, const char* name) {
  check_size(b.element_count(), need, name);
  return reinterpret_cast<const T*>(b.untyped_data());
}

// The core's Shape for V (bv, d, k) against a (batch, d, n) operand.
inline Shape shape_of(const Dims& v, const Dims& x, const char* x_name, int64_t block,
                      int64_t strategy, Device dev) {
  if (x.rows != v.rows)
    throw std::invalid_argument(std::string("fasth: ") + x_name + " has " +
                                std::to_string(x.rows) + " rows but V has d = " +
                                std::to_string(v.rows));
  if (v.batch != 1 && v.batch != x.batch)
    throw std::invalid_argument("fasth: V has batch " + std::to_string(v.batch) +
                                ", expected 1 or " + std::to_string(x.batch));
  Shape s;
  s.batch = x.batch;
  s.shared_v = v.batch != x.batch || x.batch == 1;  // an empty batch shares nothing
  s.d = v.rows;
  s.k = v.cols;
  s.n = x.cols;
  s.block = block;
  s.strategy = static_cast<Strategy>(strategy);
  return resolve(s, dev);
}

template <class T>
struct Tag {
  using type = T;
};

// Runs body(Tag<T>{}) for the call's dtype; C++ exceptions become FFI errors.
template <class Body>
ffi::Error dispatch(ffi::DataType dtype, Body&& body) {
  try {
    if (dtype == ffi::DataType::F32) return body(Tag<float>{}), ffi::Error::Success();
    if (dtype == ffi::DataType::F64) return body(Tag<double>{}), ffi::Error::Success();
    return ffi::Error::InvalidArgument("fasth: expected float32 or float64 buffers");
  } catch (const std::exception& e) {
    return ffi::Error::InvalidArgument(e.what());
  }
}

// The bindings' common parts: the context first, the attributes every op takes last.
inline auto bind() { return ffi::Ffi::Bind().Ctx<ffi::Context>(); }
template <class B>
auto attrs(B b) {
  return std::move(b).template Attr<int64_t>("block").template Attr<int64_t>("strategy").template Attr<bool>("tf32");
}

template <Device D, template <class> class Make>
struct Handlers {
  // The backend on XLA's device and stream (CPU: neither).
  template <class T>
  static auto backend(const ffi::Context& ctx, bool tf32) {
    int device = 0;
    std::uintptr_t stream = 0;
    if constexpr (D != Device::cpu) {
      auto s = ctx.get<ffi::PlatformStream<void*>>();
      auto o = ctx.get<ffi::DeviceOrdinal>();
      if (!s.has_value() || !o.has_value())
        throw std::runtime_error("fasth: XLA gave no stream or device to the custom call");
      stream = reinterpret_cast<std::uintptr_t>(*s);
      device = *o;
    }
    return Make<T>::make(device, stream, tf32);
  }

  static ffi::Error apply(ffi::Context ctx, Buf V, Buf X, Ret out, Ret f, Ret ws, bool transpose,
                          int64_t block, int64_t strategy, bool tf32) {
    return dispatch(V.element_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Dims v = dims_of(V, "V"), x = dims_of(X, "X");
      const Shape s = shape_of(v, x, "X", block, strategy, D);
      T* fp = buffer<T>(f, factors_size(s), "factors");
      T* wp = buffer<T>(ws, workspace_size(Op::apply, s), "workspace");
      auto be = backend<T>(ctx, tf32);
      fasth::factors<T>(be, s, mat<const T>(V, v), fp, wp);
      fasth::apply<T>(be, s, transpose, mat<const T>(V, v), fp, mat<const T>(X, x),
                      mat<T>(*out, x), wp);
    });
  }

  static ffi::Error apply_backward(ffi::Context ctx, Buf V, Buf f, Buf out, Buf grad, Ret dX,
                                   Ret dV, Ret ws, bool transpose, int64_t block,
                                   int64_t strategy, bool tf32) {
    return dispatch(V.element_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Dims v = dims_of(V, "V"), o = dims_of(out, "out");
      const Shape s = shape_of(v, o, "out", block, strategy, D);
      auto be = backend<T>(ctx, tf32);
      fasth::apply_backward<T>(be, s, transpose, mat<const T>(V, v),
                               buffer<T>(f, factors_size(s), "factors"), mat<const T>(out, o),
                               mat<const T>(grad, dims_of(grad, "grad")), mat<T>(*dX, o),
                               mat<T>(*dV, v),
                               buffer<T>(ws, workspace_size(Op::apply_backward, s), "workspace"));
    });
  }

  static ffi::Error matrix(ffi::Context ctx, Buf V, Ret out, Ret f, Ret ws, int64_t block,
                           int64_t strategy, bool tf32) {
    return dispatch(V.element_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Dims v = dims_of(V, "V"), u = dims_of(*out, "out");
      const Shape s = shape_of(v, u, "out", block, strategy, D);
      T* fp = buffer<T>(f, factors_size(s), "factors");
      T* wp = buffer<T>(ws, workspace_size(Op::matrix, s), "workspace");
      auto be = backend<T>(ctx, tf32);
      fasth::factors<T>(be, s, mat<const T>(V, v), fp, wp);
      fasth::matrix<T>(be, s, mat<const T>(V, v), fp, mat<T>(*out, u), wp);
    });
  }

  static ffi::Error matrix_backward(ffi::Context ctx, Buf V, Buf f, Buf U, Buf grad, Ret dV,
                                    Ret ws, int64_t block, int64_t strategy, bool tf32) {
    return dispatch(V.element_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Dims v = dims_of(V, "V"), u = dims_of(U, "U");
      const Shape s = shape_of(v, u, "U", block, strategy, D);
      auto be = backend<T>(ctx, tf32);
      fasth::matrix_backward<T>(be, s, mat<const T>(V, v),
                                buffer<T>(f, factors_size(s), "factors"), mat<const T>(U, u),
                                mat<const T>(grad, dims_of(grad, "grad")), mat<T>(*dV, v),
                                buffer<T>(ws, workspace_size(Op::matrix_backward, s), "workspace"));
    });
  }

  // The C entry points XLA calls; each binds its handler once.

  static XLA_FFI_Error* apply_entry(XLA_FFI_CallFrame* frame) {
    static const auto h = attrs(bind().Arg<Buf>().Arg<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                    .Attr<bool>("transpose"))
                              .To(apply, {ffi::Traits::kCmdBufferCompatible});
    return h->Call(frame);
  }
  static XLA_FFI_Error* apply_backward_entry(XLA_FFI_CallFrame* frame) {
    static const auto h = attrs(bind().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Ret<Buf>()
                                    .Ret<Buf>().Ret<Buf>().Attr<bool>("transpose"))
                              .To(apply_backward, {ffi::Traits::kCmdBufferCompatible});
    return h->Call(frame);
  }
  static XLA_FFI_Error* matrix_entry(XLA_FFI_CallFrame* frame) {
    static const auto h = attrs(bind().Arg<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>())
                              .To(matrix, {ffi::Traits::kCmdBufferCompatible});
    return h->Call(frame);
  }
  static XLA_FFI_Error* matrix_backward_entry(XLA_FFI_CallFrame* frame) {
    static const auto h = attrs(bind().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Ret<Buf>()
                                    .Ret<Buf>())
                              .To(matrix_backward, {ffi::Traits::kCmdBufferCompatible});
    return h->Call(frame);
  }
};

}  // namespace jax_ffi
#endif  // FASTH_JAX_FFI

// m.jax_registrations(): {target name: handler capsule} for this module's platform.
template <Device D, template <class> class Make>
void def_jax_ffi(nanobind::module_& m) {
  namespace nb = nanobind;
  m.def(
      "jax_registrations",
      []() {
        nb::dict d;
#ifdef FASTH_JAX_FFI
        using H = jax_ffi::Handlers<D, Make>;
        auto cap = [](XLA_FFI_Error* (*fn)(XLA_FFI_CallFrame*)) {
          return nb::capsule(reinterpret_cast<void*>(fn));
        };
        d["fasth_apply"] = cap(&H::apply_entry);
        d["fasth_apply_backward"] = cap(&H::apply_backward_entry);
        d["fasth_matrix"] = cap(&H::matrix_entry);
        d["fasth_matrix_backward"] = cap(&H::matrix_backward_entry);
#endif
        return d;
      },
      "XLA FFI handlers of fasth.jax for this module's platform, as capsules (empty when "
      "built without the XLA FFI headers).");
}

}  // namespace fasth::bindings
