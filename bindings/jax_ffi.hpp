// XLA FFI handlers for fasth.jax, written once for every device module: fasth._core registers
// them for XLA's CPU platform, fasth._cuda for CUDA, each with its own backend factory (the
// Make<T>::make(device, stream, tf32, blas) of ops.hpp). `jax_registrations()` returns the
// handlers as capsules for jax.ffi.register_ffi_target; built only where the XLA FFI headers
// (from jax.ffi.include_dir()) were found, else it returns an empty dict.
//
// Three custom calls, each a Plan's run on row-major arrays of any rank (the plan is made
// from the buffers' dimensions each call: cheap, and the one home of the shape rules):
//   fasth_forward       args V, [tau], [X]                 rets out, factors, workspace, [tape]
//   fasth_forward_with  args V, factors, X                 rets out, workspace
//   fasth_backward      args V, [tau], [S], factors, grad, [tape]   (S but for LAPACK's U)
//                                                          rets dV, [dtau], [dX], workspace
//   fasth_tangent       args V, [tau], [X], factors, dV, [dtau], [dX]   rets dout, workspace
// A tape (Plan::tape_size) is used where the call's plan keeps one and the buffer holds it:
// the backward then reads it instead of S.
// fasth_forward_with is a householder apply with the factors an earlier fasth_forward of the
// same V and shapes returned (one U applied again and again: no work per V).
// with tau for LAPACK reflectors, X for apply, and S: the saved output (householder apply
// and matrix), or the input (an apply of LAPACK reflectors). One dtype per call (float32,
// float64, complex64 or complex128, dispatched once). The factors and the workspace are outputs: XLA allocates them
// with the call's other buffers, so the handlers allocate nothing, never synchronise, and
// enqueue on XLA's stream (safe to capture in command buffers). fasth.jax sizes them for any
// device (the largest).
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

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

inline Array row_major(const Buf& b) {
  const auto dims = b.dimensions();
  if (dims.size() > static_cast<std::size_t>(kMaxRank))
    throw std::invalid_argument("fasth: more than 8 dimensions");
  Array a;
  a.rank = static_cast<int>(dims.size());
  index_t s = 1;
  for (int i = a.rank - 1; i >= 0; --i) a.shape[i] = dims[i], a.strides[i] = s, s *= std::max<index_t>(dims[i], 1);
  return a;
}

inline Buf arg(const ffi::RemainingArgs& args, std::size_t i) {
  auto b = args.get<Buf>(i);
  if (!b.has_value()) throw std::invalid_argument("fasth: a custom call argument is missing");
  return *b;
}

inline ffi::Result<Buf> ret(const ffi::RemainingRets& rets, std::size_t i) {
  auto b = rets.get<Buf>(i);
  if (!b.has_value()) throw std::invalid_argument("fasth: a custom call result is missing");
  return *b;
}

template <class T>
T* data(const Buf& b) {
  return reinterpret_cast<T*>(b.untyped_data());
}
// The tape, where the plan keeps one and the buffer holds it (else none: a call under vmap
// passes an empty one).
template <class T>
T* tape(const Plan& plan, std::size_t elements, void* p) {
  return plan.tape_size() > 0 && elements >= plan.tape_size() ? static_cast<T*>(p) : nullptr;
}
template <class T>
T* data(ffi::Result<Buf>& b, std::size_t need, const char* name) {
  if (b->element_count() < need)
    throw std::invalid_argument(std::string("fasth: ") + name + " holds " +
                                std::to_string(b->element_count()) + " elements, needs " +
                                std::to_string(need));
  return reinterpret_cast<T*>(b->untyped_data());
}

// The leading arguments of fasth_forward and fasth_tangent, V, [tau], [X]: their shapes into
// the problem, their data into a (tau where a has it). Returns the index of the next argument.
template <class T, class Args>
std::size_t primals(const ffi::RemainingArgs& args, Problem& p, Args& a) {
  std::size_t i = 0;
  p.V = row_major(arg(args, i)), a.V = data<const T>(arg(args, i++));
  if (p.kind == Kind::lapack) {
    p.tau = row_major(arg(args, i));
    if constexpr (std::is_same_v<Args, Forward<T>>) a.tau = data<const T>(arg(args, i));
    ++i;
  }
  if (p.op == Op::apply) p.X = row_major(arg(args, i)), a.X = data<const T>(arg(args, i++));
  return i;
}

// Runs body(T{}) for the call's dtype; C++ exceptions become FFI errors.
template <class Body>
ffi::Error dispatch(ffi::DataType dtype, Body&& body) {
  try {
    if (dtype == ffi::DataType::F32) return body(float{}), ffi::Error::Success();
    if (dtype == ffi::DataType::F64) return body(double{}), ffi::Error::Success();
    if (dtype == ffi::DataType::C64) return body(std::complex<float>{}), ffi::Error::Success();
    if (dtype == ffi::DataType::C128) return body(std::complex<double>{}), ffi::Error::Success();
    return ffi::Error::InvalidArgument(
        "fasth: expected float32, float64, complex64 or complex128 buffers");
  } catch (const std::exception& e) {
    return ffi::Error::InvalidArgument(e.what());
  }
}

struct Attrs {
  int64_t op, kind, block, strategy;
  bool transpose, thin, tf32;
};

// Factors laid out alike on every device: fasth.jax sizes them for any.
inline PlanOptions options() {
  PlanOptions o;
  o.direct_y = false;
  return o;
}

inline Problem problem(const Attrs& at) {
  Problem p;
  p.op = static_cast<Op>(at.op), p.kind = static_cast<Kind>(at.kind);
  p.transpose = at.transpose, p.thin = at.thin, p.block = at.block;
  p.strategy = static_cast<Strategy>(at.strategy);
  return p;
}

template <class B>
auto attrs(B b) {
  return std::move(b)
      .template Attr<int64_t>("op")
      .template Attr<int64_t>("kind")
      .template Attr<int64_t>("block")
      .template Attr<int64_t>("strategy")
      .template Attr<bool>("transpose")
      .template Attr<bool>("thin")
      .template Attr<bool>("tf32");
}

// fasth.jax sizes the factors for every device's plan (the largest): V's entries take the
// buffer's elements evenly, also where vmap broadcast one V's factors to a batch of them.
inline std::size_t entry_stride(const Plan& plan, std::size_t elements) {
  const std::size_t per = plan.factors_stride();
  const std::size_t entries = per ? plan.factors_size() / per : 0;
  return entries ? elements / entries : 0;
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
    return Make<T>::make(device, stream, tf32, 0);
  }

  // Each custom call: its attributes, then Call::run<T>(ctx, args, rets, problem, tf32) for the
  // dtype of its first argument (V).
  template <class Call>
  static ffi::Error handler(ffi::Context ctx, ffi::RemainingArgs args, ffi::RemainingRets rets,
                            int64_t op, int64_t kind, int64_t block, int64_t strategy,
                            bool transpose, bool thin, bool tf32) {
    Problem p = problem(Attrs{op, kind, block, strategy, transpose, thin, tf32});
    return dispatch(arg(args, 0).element_type(), [&](auto tag) {
      p.complex = is_complex_v<decltype(tag)>;
      Call::template run<decltype(tag)>(ctx, args, rets, p, tf32);
    });
  }

  struct ForwardCall {  // fasth_forward
    template <class T>
    static void run(const ffi::Context& ctx, const ffi::RemainingArgs& args,
                    const ffi::RemainingRets& rets, Problem p, bool tf32) {
      Forward<T> a;
      primals<T>(args, p, a);
      const Plan plan(p, D, options());
      auto out = ret(rets, 0), f = ret(rets, 1), ws = ret(rets, 2);
      a.out = data<T>(out, 0, "out");
      a.factors = data<T>(f, plan.factors_size(), "factors");
      a.factors_stride = entry_stride(plan, f->element_count());
      a.workspace = data<T>(ws, plan.workspace_size(Pass::forward), "workspace");
      if (rets.size() > 3) {
        auto t = ret(rets, 3);
        a.tape = tape<T>(plan, t->element_count(), t->untyped_data());
      }
      plan.forward(backend<T>(ctx, tf32), a);
    }
  };

  struct ForwardWithCall {  // fasth_forward_with
    template <class T>
    static void run(const ffi::Context& ctx, const ffi::RemainingArgs& args,
                    const ffi::RemainingRets& rets, Problem p, bool tf32) {
      if (p.op != Op::apply || p.kind != Kind::householder)
        throw std::invalid_argument("fasth: fasth_forward_with is a householder apply");
      const Buf V = arg(args, 0), F = arg(args, 1), X = arg(args, 2);
      Forward<T> a;
      p.V = row_major(V), a.V = data<const T>(V);
      p.X = row_major(X), a.X = data<const T>(X);
      const Plan plan(p, D, options());
      if (F.element_count() < plan.factors_size())
        throw std::invalid_argument("fasth: factors hold " + std::to_string(F.element_count()) +
                                    " elements, need " + std::to_string(plan.factors_size()));
      a.factors = const_cast<T*>(data<const T>(F));  // read only
      a.factors_stride = entry_stride(plan, F.element_count());
      auto out = ret(rets, 0), ws = ret(rets, 1);
      a.out = data<T>(out, 0, "out");
      a.workspace = data<T>(ws, plan.workspace_size(Pass::forward), "workspace");
      plan.forward_with(backend<T>(ctx, tf32), a);
    }
  };

  struct BackwardCall {  // fasth_backward
    template <class T>
    static void run(const ffi::Context& ctx, const ffi::RemainingArgs& args,
                    const ffi::RemainingRets& rets, Problem p, bool tf32) {
      const Buf V = arg(args, 0);
      std::size_t i = 1, r = 1;
      Backward<T> a;
      p.V = row_major(V);
      a.V = data<const T>(V);
      if (p.kind == Kind::lapack) p.tau = row_major(arg(args, i++));
      if (p.op == Op::apply || p.kind == Kind::householder) {  // S: out (householder), or X
        a.saved_layout = row_major(arg(args, i));
        if (p.op == Op::apply) p.X = a.saved_layout;
        a.saved = data<const T>(arg(args, i++));
      }
      const Buf F = arg(args, i++);
      a.factors = data<const T>(F);
      const Buf grad = arg(args, i++);
      a.grad = data<const T>(grad), a.grad_layout = row_major(grad);
      const Plan plan(p, D, options());
      a.factors_stride = entry_stride(plan, F.element_count());
      auto dV = ret(rets, 0);
      a.dV = data<T>(dV, 0, "dV");
      if (p.kind == Kind::lapack) {
        auto dtau = ret(rets, r++);
        a.dtau = data<T>(dtau, 0, "dtau");
      }
      if (p.op == Op::apply) {
        auto dX = ret(rets, r++);
        a.dX = data<T>(dX, 0, "dX");
      }
      auto ws = ret(rets, r++);
      a.workspace = data<T>(ws, plan.workspace_size(Pass::backward), "workspace");
      if (i < args.size()) {
        const Buf t = arg(args, i++);
        a.tape = tape<const T>(plan, t.element_count(), t.untyped_data());
      }
      plan.backward(backend<T>(ctx, tf32), a);
    }
  };

  struct TangentCall {  // fasth_tangent: args V, [tau], [X], factors, dV, [dtau], [dX]
    template <class T>
    static void run(const ffi::Context& ctx, const ffi::RemainingArgs& args,
                    const ffi::RemainingRets& rets, Problem p, bool tf32) {
      Tangent<T> a;
      std::size_t i = primals<T>(args, p, a);
      const Buf F = arg(args, i++);
      a.factors = data<const T>(F);
      a.dV_layout = row_major(arg(args, i)), a.dV = data<const T>(arg(args, i++));
      if (p.kind == Kind::lapack)
        a.dtau_layout = row_major(arg(args, i)), a.dtau = data<const T>(arg(args, i++));
      if (p.op == Op::apply)
        a.dX_layout = row_major(arg(args, i)), a.dX = data<const T>(arg(args, i++));
      const Plan plan(p, D, options());
      a.factors_stride = entry_stride(plan, F.element_count());
      auto dout = ret(rets, 0), ws = ret(rets, 1);
      a.dout = data<T>(dout, 0, "dout");
      a.workspace = data<T>(ws, plan.workspace_size(Pass::tangent), "workspace");
      plan.tangent(backend<T>(ctx, tf32), a);
    }
  };

  // The C entry point XLA calls for a custom call; each binds its handler once.
  template <class Call>
  static XLA_FFI_Error* entry(XLA_FFI_CallFrame* frame) {
    static const auto h = attrs(ffi::Ffi::Bind().Ctx<ffi::Context>().RemainingArgs().RemainingRets())
                              .To(handler<Call>, {ffi::Traits::kCmdBufferCompatible});
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
        d["fasth_forward"] = cap(&H::template entry<typename H::ForwardCall>);
        d["fasth_forward_with"] = cap(&H::template entry<typename H::ForwardWithCall>);
        d["fasth_backward"] = cap(&H::template entry<typename H::BackwardCall>);
        d["fasth_tangent"] = cap(&H::template entry<typename H::TangentCall>);
#endif
        return d;
      },
      "XLA FFI handlers of fasth.jax for this module's platform, as capsules (empty when "
      "built without the XLA FFI headers).");
}

}  // namespace fasth::bindings
