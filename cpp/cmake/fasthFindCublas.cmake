# CUDA::cublas where CUDAToolkit made none: the one place fasth finds cuBLAS, included by the
# build (cuda/CMakeLists.txt) and by the installed package (fasthConfig.cmake).
# FASTH_CUBLAS_LIBRARY and FASTH_CUBLAS_INCLUDE, where set (the installed package sets the ones
# it was built with), name it; else it is the nvidia-cublas wheel's, headers and library under
# site-packages/nvidia/cu13 of the Python found (in an isolated pip build, the build
# environment's, which asks for that wheel where nvcc is).
if(TARGET CUDA::cublas)
  return()
endif()
if(NOT FASTH_CUBLAS_LIBRARY OR NOT FASTH_CUBLAS_INCLUDE)
  find_package(Python COMPONENTS Interpreter QUIET)
  if(Python_FOUND)
    execute_process(COMMAND ${Python_EXECUTABLE} -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13'))"
                    OUTPUT_VARIABLE _fasth_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  # Nothing is cached: a later configure (pip reuses build/<tag>) looks again.
  find_path(FASTH_CUBLAS_INCLUDE cublas_v2.h HINTS ${_fasth_wheel}/include NO_CACHE)
  find_library(FASTH_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 HINTS ${_fasth_wheel}/lib NO_CACHE)
endif()
if(FASTH_CUBLAS_INCLUDE AND FASTH_CUBLAS_LIBRARY)
  add_library(CUDA::cublas SHARED IMPORTED)
  set_target_properties(CUDA::cublas PROPERTIES IMPORTED_LOCATION "${FASTH_CUBLAS_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${FASTH_CUBLAS_INCLUDE}")
endif()
