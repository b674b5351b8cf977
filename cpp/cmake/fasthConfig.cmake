include("${CMAKE_CURRENT_LIST_DIR}/fasthTargets.cmake")
