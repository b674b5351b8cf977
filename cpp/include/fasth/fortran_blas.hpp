// Optional, header-only: a fasth::cpu::Blas filled from the Fortran-ABI BLAS that the program
// links (reference BLAS, OpenBLAS, MKL, BLIS; 32-bit integers), so a CPU user declares no
// `extern "C"` symbol by hand:
//
//   #include <fasth/fortran_blas.hpp>          // link a BLAS, e.g. CMake's BLAS::BLAS
//   const fasth::cpu::Blas blas = fasth::cpu::fortran_blas();
//   const fasth::cpu::CpuBackend<double> be(blas);  // blas must outlive be
//
// It names the real and complex gemm_, trmm_ and trsm_ (s, d, c, z), so including it without
// linking a BLAS fails at link time. The optional MKL fields (threads, gemm_batch) stay unset.
#pragma once

#include "fasth/cpu.hpp"

extern "C" {
fasth::cpu::gemm_fn<float> sgemm_;
fasth::cpu::gemm_fn<double> dgemm_;
fasth::cpu::trmm_fn<float> strmm_;
fasth::cpu::trmm_fn<double> dtrmm_;
fasth::cpu::trsm_fn<float> strsm_;
fasth::cpu::trsm_fn<double> dtrsm_;
fasth::cpu::gemm_fn<std::complex<float>> cgemm_;
fasth::cpu::gemm_fn<std::complex<double>> zgemm_;
fasth::cpu::trmm_fn<std::complex<float>> ctrmm_;
fasth::cpu::trmm_fn<std::complex<double>> ztrmm_;
fasth::cpu::trsm_fn<std::complex<float>> ctrsm_;
fasth::cpu::trsm_fn<std::complex<double>> ztrsm_;
}

namespace fasth::cpu {

inline Blas fortran_blas() {
  Blas blas;
  blas.sgemm = &sgemm_, blas.dgemm = &dgemm_, blas.cgemm = &cgemm_, blas.zgemm = &zgemm_;
  blas.strmm = &strmm_, blas.dtrmm = &dtrmm_, blas.ctrmm = &ctrmm_, blas.ztrmm = &ztrmm_;
  blas.strsm = &strsm_, blas.dtrsm = &dtrsm_, blas.ctrsm = &ctrsm_, blas.ztrsm = &ztrsm_;
  return blas;
}

}  // namespace fasth::cpu
