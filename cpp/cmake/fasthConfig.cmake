# find_package(fasth): fasth::fasth (the algorithm and the CPU backend), and fasth::cuda where
# the CUDA backend was built and installed (it needs the CUDA toolkit's runtime and cuBLAS).
include(CMakeFindDependencyMacro)
include("${CMAKE_CURRENT_LIST_DIR}/fasthTargets.cmake")
if(EXISTS "${CMAKE_CURRENT_LIST_DIR}/fasthCudaTargets.cmake")
  find_dependency(CUDAToolkit)
  if(NOT TARGET CUDA::cublas)  # cuBLAS from the nvidia-cublas wheel, where it was found
    include("${CMAKE_CURRENT_LIST_DIR}/fasthCublas.cmake")
    add_library(CUDA::cublas SHARED IMPORTED)
    set_target_properties(CUDA::cublas PROPERTIES IMPORTED_LOCATION "${FASTH_CUBLAS_LIBRARY}"
                          INTERFACE_INCLUDE_DIRECTORIES "${FASTH_CUBLAS_INCLUDE}")
  endif()
  include("${CMAKE_CURRENT_LIST_DIR}/fasthCudaTargets.cmake")
endif()
