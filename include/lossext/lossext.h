// lossext: fused loss kernels for libtorch programs (header-only C++ API).
//
//   #include <lossext/lossext.h>        // CMake: find_package(lossext); link lossext::lossext
//
//   torch::Tensor loss = lossext::<loss>(input, target, ...);   // the Python API's names and defaults
//   loss.backward();
//
// The kernels live in liblossext.so (the same file the Python package loads) as the torch
// custom operators lossext::<op> (CPU, and CUDA when compiled in); they are registered when the
// library is loaded. These headers call them through the c10 dispatcher and add the autograd
// formulas (the same as the Python package's, lossext/<family>/ops.py).
//
// Layout: this umbrella header includes every loss family's header, include/lossext/<family>.h
// (the list below is generated from lossext/_core/families.py by `make sync`); a program may
// instead include just the family it uses (each family header is self-contained and documents
// its losses' arguments and gradients):
//   lossext/detail/          the families' generic wrapper machinery: common.h (Reduction,
//                            version(), with_cuda(), cuda_arch_list(), argument checks, the
//                            double-backward refusal), pointwise.h (the element-wise losses'
//                            autograd wrapper), rowwise.h (the checks of per-row labelled losses)
//   lossext/build_info.h     the library's plain C entry points (what was compiled in)
//
// Double backward is NOT supported: the gradients are computed by fused kernels that have no
// derivative of their own. backward(create_graph=true) works, but differentiating the
// gradients it returns throws c10::NotImplementedError.
//
// Argument errors throw c10::Error subclasses naming the argument and its value
// (c10::ValueError for bad values and shapes, c10::TypeError for bad dtypes).
//
// These headers need full libtorch; they are compiled by consumers only (the kernels themselves are
// built on the LibTorch stable ABI).
#pragma once

#include "build_info.h"
#include "detail/common.h"

// BEGIN FAMILY HEADERS (generated from lossext/_core/families.py; do not edit by hand)
#include "landmark.h"
#include "margin.h"
#include "age.h"
#include "metric.h"
#include "detection.h"
#include "dense.h"
// END FAMILY HEADERS
