#!/usr/bin/env bash
# cibuildwheel's before-all on a manylinux_2_28 image (AlmaLinux 8): the CUDA 13 compiler and
# runtime headers from NVIDIA's RHEL 8 repository. cuBLAS is not installed here: the build
# backend puts the nvidia-cublas wheel into each build environment.
set -euo pipefail
arch=$(uname -m); [ "$arch" = aarch64 ] && arch=sbsa
dnf config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/$arch/cuda-rhel8.repo"
dnf install -y cuda-nvcc-13-0 cuda-cudart-devel-13-0 cuda-cccl-13-0
/usr/local/cuda/bin/nvcc --version
