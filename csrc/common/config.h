// Portability macros shared by every CPU (.cpp) and CUDA (.cu) translation unit.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LOSSEXT_HD __host__ __device__ __forceinline__
#define LOSSEXT_DEVICE_CODE 1
#else
#define LOSSEXT_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDA_ARCH__)
#define LOSSEXT_ON_DEVICE 1
#endif

#include <cstdint>

namespace lossext {

// Same numbering as torch's at::Reduction, so `int reduction` matches aten ops.
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

// Accumulation type: half precision computes in float32; float and double in themselves.
template <class T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <class T> using acc_t = typename AccType<T>::type;

}  // namespace lossext
