// Sizes, plans and workspace queries: the same in every device module.
#pragma once

#include <nanobind/nanobind.h>

#include "fasth/fasth.hpp"

namespace fasth::bindings {

inline void def_shape(nanobind::module_& m) {
  namespace nb = nanobind;
  nb::enum_<Strategy>(m, "Strategy")
      .value("automatic", Strategy::automatic)
      .value("blockwise", Strategy::blockwise)
      .value("materialize", Strategy::materialize);
  nb::enum_<Device>(m, "Device").value("cpu", Device::cpu).value("cuda", Device::cuda);
  nb::enum_<Op>(m, "Op")
      .value("factors", Op::factors)
      .value("apply", Op::apply)
      .value("apply_backward", Op::apply_backward)
      .value("matrix", Op::matrix)
      .value("matrix_backward", Op::matrix_backward);
  nb::class_<Shape>(m, "Shape")
      .def(nb::init<>())
      .def_rw("batch", &Shape::batch)
      .def_rw("shared_v", &Shape::shared_v)
      .def_rw("d", &Shape::d)
      .def_rw("k", &Shape::k)
      .def_rw("n", &Shape::n)
      .def_rw("block", &Shape::block)
      .def_rw("strategy", &Shape::strategy);
  m.def("resolve", &resolve, nb::arg("shape"), nb::arg("device"),
        "Fill in the block size and strategy; validates the sizes.");
  m.def("factors_size", &factors_size, nb::arg("shape"));
  m.def("workspace_size", &workspace_size, nb::arg("op"), nb::arg("shape"));
  m.def("addressable", &addressable, nb::arg("rows"), nb::arg("cols"), nb::arg("rs"),
        nb::arg("cs"), "Whether BLAS can use a matrix with these element strides as it is.");
}

}  // namespace fasth::bindings
