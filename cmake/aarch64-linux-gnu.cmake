# CMake toolchain file: cross-compile for 64-bit ARM Linux with Debian's cross toolchain.
#   apt-get install g++-aarch64-linux-gnu          (Debian/Ubuntu; scripts/edge-check.sh does it)
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DONNXCOMP_BUILD_TESTS=ON
# or: cmake --preset aarch64   (CMakePresets.json). The onnxruntime headers are architecture-independent, so
# the same header fetch (cmake/OnnxruntimeHeaders.cmake) serves both builds.
# Binaries built here run on the build machine under user-mode emulation:
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build-aarch64/test_decode
# (CMAKE_CROSSCOMPILING_EMULATOR below makes ctest do exactly that.)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ONNXCOMP_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ONNXCOMP_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ONNXCOMP_CROSS_TRIPLE}-g++)

# Look for libraries and headers of the target only in the target's folder; programs on the build machine.
set(CMAKE_FIND_ROOT_PATH /usr/${ONNXCOMP_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(ONNXCOMP_QEMU_AARCH64 qemu-aarch64)
if(ONNXCOMP_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${ONNXCOMP_QEMU_AARCH64} -L /usr/${ONNXCOMP_CROSS_TRIPLE})
endif()
