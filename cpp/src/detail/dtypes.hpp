// The element types libfasth is built for: the one list every explicit instantiation
// expands (a new dtype is one more X(...) here).
#pragma once

#include <complex>

#define FASTH_FOR_EACH_DTYPE(X) \
  X(float) X(double) X(std::complex<float>) X(std::complex<double>)
