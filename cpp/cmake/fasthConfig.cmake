# find_package(fasth): fasth::fasth (the algorithm and the CPU backend), and fasth::cuda where
# the CUDA backend was built and installed (it needs the CUDA toolkit's runtime and cuBLAS).
include(CMakeFindDependencyMacro)
include("${CMAKE_CURRENT_LIST_DIR}/fasthTargets.cmake")
if(EXISTS "${CMAKE_CURRENT_LIST_DIR}/fasthCudaTargets.cmake")
  find_dependency(CUDAToolkit)
  include("${CMAKE_CURRENT_LIST_DIR}/fasthCublas.cmake")  # the cuBLAS it was built against
  include("${CMAKE_CURRENT_LIST_DIR}/fasthFindCublas.cmake")
  include("${CMAKE_CURRENT_LIST_DIR}/fasthCudaTargets.cmake")
endif()
