// fasth._core.Plan: the core's Plan for Python, made from shapes and strides (tuples), and
// the call counters. Defined once, in fasth._core; fasth._cuda takes the same objects.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <tuple>
#include <vector>

#include "fasth/fasth.hpp"

namespace fasth::bindings {

namespace nb = nanobind;
using Dims = std::vector<index_t>;

inline Array array_of(const Dims& shape, const Dims& strides, const char* name) {
  if (shape.size() != strides.size())
    throw std::invalid_argument(std::string("fasth: ") + name + ": shape and strides differ in length");
  if (shape.size() > static_cast<std::size_t>(kMaxRank))
    throw std::invalid_argument(std::string("fasth: ") + name + " has more than 8 dimensions");
  Array a;
  a.rank = static_cast<int>(shape.size());
  for (int i = 0; i < a.rank; ++i) a.shape[i] = shape[i], a.strides[i] = strides[i];
  return a;
}

inline std::tuple<Dims, Dims> tuple_of(const Array& a) {
  return {Dims(a.shape, a.shape + a.rank), Dims(a.strides, a.strides + a.rank)};
}

// Whether the leading dimensions of (shape, strides) can be walked with one stride (else
// the caller passes a contiguous copy): the core's rule (leading_stride).
inline bool collapsible(const Dims& shape, const Dims& strides, int tail) {
  if (shape.size() != strides.size())
    throw std::invalid_argument("fasth: shape and strides differ in length");
  index_t stride;
  return leading_stride(shape.data(), strides.data(), static_cast<int>(shape.size()) - tail, stride);
}

inline void def_plan(nb::module_& m) {
  nb::enum_<Kind>(m, "Kind").value("householder", Kind::householder).value("lapack", Kind::lapack);
  nb::enum_<Op>(m, "Op").value("apply", Op::apply).value("matrix", Op::matrix);
  nb::enum_<Strategy>(m, "Strategy")
      .value("automatic", Strategy::automatic)
      .value("blockwise", Strategy::blockwise)
      .value("materialize", Strategy::materialize);
  nb::enum_<Device>(m, "Device").value("cpu", Device::cpu).value("cuda", Device::cuda);

  nb::class_<Plan>(m, "Plan")
      .def(
          "__init__",
          [](Plan* self, Op op, Kind kind, const Dims& v_shape, const Dims& v_strides,
             const Dims& tau_shape, const Dims& tau_strides, const Dims& x_shape,
             const Dims& x_strides, bool transpose, bool thin, index_t block,
             Strategy strategy, Device device, const std::string& x_name, bool direct_y,
             bool complex) {
            Problem p;
            p.complex = complex;
            p.op = op, p.kind = kind, p.transpose = transpose, p.thin = thin;
            p.block = block, p.strategy = strategy;
            p.V = array_of(v_shape, v_strides, kind == Kind::lapack ? "A" : "V");
            if (kind == Kind::lapack) p.tau = array_of(tau_shape, tau_strides, "tau");
            if (op == Op::apply) p.X = array_of(x_shape, x_strides, "X");
            new (self) Plan(p, device, PlanOptions{x_name, direct_y});
          },
          nb::arg("op"), nb::arg("kind"), nb::arg("v_shape"), nb::arg("v_strides"),
          nb::arg("tau_shape"), nb::arg("tau_strides"), nb::arg("x_shape"),
          nb::arg("x_strides"), nb::arg("transpose"), nb::arg("thin"), nb::arg("block"),
          nb::arg("strategy"), nb::arg("device"), nb::arg("x_name") = "X",
          nb::arg("direct_y") = true, nb::arg("complex") = false,
          "Validates the arrays' shapes and strides (ValueError naming the argument) and "
          "resolves the block size, strategy and buffer sizes.")
      .def_prop_ro("batch", &Plan::batch)
      .def_prop_ro("shared", &Plan::shared)
      .def_prop_ro("complex", [](const Plan& p) { return p.problem().complex; })
      .def_prop_ro("d", &Plan::d)
      .def_prop_ro("k", &Plan::k)
      .def_prop_ro("n", &Plan::n)
      .def_prop_ro("block", &Plan::block)
      .def_prop_ro("strategy", &Plan::strategy)
      .def_prop_ro("factors_size", &Plan::factors_size)
      .def_prop_ro("tape_size", &Plan::tape_size)
      .def_prop_ro("forward_workspace", [](const Plan& p) { return p.workspace_size(Pass::forward); })
      .def_prop_ro("backward_workspace", [](const Plan& p) { return p.workspace_size(Pass::backward); })
      .def_prop_ro("tangent_workspace", [](const Plan& p) { return p.workspace_size(Pass::tangent); })
      .def_prop_ro("out", [](const Plan& p) { return tuple_of(p.out()); }, "(shape, strides)")
      .def_prop_ro("dV", [](const Plan& p) { return tuple_of(p.d_V()); })
      .def_prop_ro("dtau", [](const Plan& p) { return tuple_of(p.d_tau()); })
      .def_prop_ro("dX", [](const Plan& p) { return tuple_of(p.d_X()); })
      .def_prop_ro("reads_saved", &Plan::reads_saved,
                   "Whether a backward given no tape reads the saved output (or LAPACK's input).");

  m.def("collapsible", &collapsible, nb::arg("shape"), nb::arg("strides"), nb::arg("tail"),
        "Whether the leading dimensions (all but the last `tail`) can be walked with one stride.");
  m.def("choose_block", &choose_block, nb::arg("d"), nb::arg("k"), nb::arg("n"), nb::arg("device"));
  m.def("choose_strategy", &choose_strategy, nb::arg("d"), nb::arg("k"), nb::arg("n"));
}

// The backend-operation counters of this module's copy of the core (each device module has its own).
inline void def_counts(nb::module_& m) {
  m.def("count_calls", &count_backend_ops, nb::arg("on"), "Counts backend calls while on.");
  m.def("reset_call_counts", &reset_backend_op_counts);
  m.def("call_counts", []() {
    nb::dict d;
    for (int i = 0; i < static_cast<int>(BackendOp::count_); ++i) {
      const auto op = static_cast<BackendOp>(i);
      if (backend_op_count(op)) d[backend_op_name(op)] = backend_op_count(op);
    }
    return d;
  }, "{backend operation: calls} since the last reset (nonzero ones).");
}

}  // namespace fasth::bindings
