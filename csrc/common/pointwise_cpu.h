// CPU device for the element-wise loss pattern (pointwise_loss.h).
//
// Determinism: the range is cut into fixed chunks of kChunk elements, whatever the thread
// count. Each chunk sums blocks of kBlock elements in vector lanes of the accumulation type
// (lane order fixed at compile time), adds the blocks in order into a double partial, and the
// partials are added in chunk order on one thread. So the result is bitwise the same for 1
// and N threads.
//
// Speed: the chunk loop is compiled for baseline x86-64, AVX2+FMA and AVX-512, and picked at
// run time (so results can differ in the last bits between CPU generations, never between runs); math.h's float log/exp are branch-free so that GCC vectorizes the loop.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/ops.h>

#include "cpu_isa.h"
#include "pointwise_loss.h"

namespace lossext {
namespace cpu_detail {

constexpr int64_t kChunk = int64_t(1) << 15;
constexpr int64_t kBlock = 2048;

// Elements [b, e). Loops are `omp simd` (needs -fopenmp-simd): the float sum runs in
// lane_sum's fixed lanes (the same order for every instruction set), per kBlock, into double.
template <PointwiseMode mode, bool kW, bool kReduce, bool kGoScalar, class scalar_t, class Op>
inline double chunk(const Op& op, const PointwisePtrs<scalar_t>& P, acc_t<scalar_t> scale,
                    acc_t<scalar_t> go_scaled, int64_t b, int64_t e) {
  using A = acc_t<scalar_t>;
  constexpr bool kForward = is_forward(mode);
  const scalar_t* __restrict x = P.x;
  const scalar_t* __restrict y = P.y;
  const scalar_t* __restrict w = P.w;
  const scalar_t* __restrict go = P.go;
  scalar_t* __restrict o0 = P.o0;
  scalar_t* __restrict o1 = P.o1;
  if constexpr (kForward && kReduce) {
    // a local copy: lane_sum's loop stores to its buffer, and GCC would otherwise reload the
    // parameters through `op` in every iteration (and not vectorize the loop)
    const Op o = op;
    double total = 0.0;
    for (int64_t bb = b; bb < e; bb += kBlock) {
      const int64_t ee = std::min(e, bb + kBlock);
      const A s = lane_sum<A>(bb, ee, [&](int64_t k) {
        const A X = static_cast<A>(x[k]);
        const A Y = static_cast<A>(y[k]);
        const A W = kW ? static_cast<A>(w[k]) : A(1);
        if constexpr (mode == PointwiseMode::ForwardWithGrad) {
          A d;
          const A v = value_and_dinput(o, X, Y, d);
          o1[k] = static_cast<scalar_t>(scale * W * d);
          return W * v;
        } else {
          return W * o.value(X, Y);
        }
      });
      total += static_cast<double>(s);
    }
    return total;
  } else {
#pragma omp simd
    for (int64_t k = b; k < e; ++k) {
      const A X = static_cast<A>(x[k]);
      const A Y = static_cast<A>(y[k]);
      const A W = kW ? static_cast<A>(w[k]) : A(1);
      if constexpr (mode == PointwiseMode::ForwardWithGrad) {
        A d;
        const A v = value_and_dinput(op, X, Y, d);
        o0[k] = static_cast<scalar_t>(W * v);
        o1[k] = static_cast<scalar_t>(scale * W * d);
      } else if constexpr (kForward) {
        o0[k] = static_cast<scalar_t>(W * op.value(X, Y));
      } else {
        const A g = mode == PointwiseMode::BackwardInput ? op.dinput(X, Y) : op.dtarget(X, Y);
        const A G = kGoScalar ? go_scaled : static_cast<A>(go[k]) * scale;
        o0[k] = static_cast<scalar_t>(G * W * g);
      }
    }
    return 0.0;
  }
}

template <PointwiseMode mode, bool kW, bool kReduce, bool kGoScalar, class scalar_t, class Op>
__attribute__((flatten)) double chunk_base(const Op& op, const PointwisePtrs<scalar_t>& P,
                                           acc_t<scalar_t> scale, acc_t<scalar_t> go_scaled,
                                           int64_t b, int64_t e) {
  return chunk<mode, kW, kReduce, kGoScalar>(op, P, scale, go_scaled, b, e);
}

#ifdef LOSSEXT_HAVE_X86_CLONES
#define LOSSEXT_CHUNK_CLONE(NAME, TARGET)                                                       \
  template <PointwiseMode mode, bool kW, bool kReduce, bool kGoScalar, class scalar_t, class Op> \
  __attribute__((target(TARGET), flatten)) double NAME(                                         \
      const Op& op, const PointwisePtrs<scalar_t>& P, acc_t<scalar_t> scale, acc_t<scalar_t> go_scaled,   \
      int64_t b, int64_t e) {                                                                    \
    return chunk<mode, kW, kReduce, kGoScalar>(op, P, scale, go_scaled, b, e);                   \
  }
LOSSEXT_CHUNK_CLONE(chunk_avx2, LOSSEXT_TARGET_AVX2)
LOSSEXT_CHUNK_CLONE(chunk_avx512, LOSSEXT_TARGET_AVX512)
#undef LOSSEXT_CHUNK_CLONE
#endif

}  // namespace cpu_detail

struct CpuDevice {
  template <PointwiseMode mode, class scalar_t, class Op>
  static void run(const PointwiseProblem& p, const Op& op, Tensor& out0, Tensor* out1) {
    using namespace cpu_detail;
    using A = acc_t<scalar_t>;
    constexpr bool kForward = is_forward(mode);
    const int64_t n = p.numel;
    const PointwisePtrs<scalar_t> P(p, out0, out1);
    const bool reduce = p.reduction != Reduction::None;
    const A scale = static_cast<A>(p.grad_scale());
    const bool go_scalar = !kForward && reduce;
    const A go_scaled = go_scalar ? static_cast<A>(P.go[0]) * scale : A(0);
    const int64_t nchunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(kForward && reduce ? nchunks : 0);

    using Fn = double (*)(const Op&, const PointwisePtrs<scalar_t>&, A, A, int64_t, int64_t);
    Fn fn = nullptr;
    with_bool(p.weight.has_value(), [&](auto kW) {
      with_bool(reduce, [&](auto kReduce) {
        with_bool(go_scalar, [&](auto kGo) {
          fn = &chunk_base<mode, kW.value, kReduce.value, kGo.value, scalar_t, Op>;
#ifdef LOSSEXT_HAVE_X86_CLONES
          if (cpu_level() == CpuLevel::Avx2)
            fn = &chunk_avx2<mode, kW.value, kReduce.value, kGo.value, scalar_t, Op>;
          if (cpu_level() == CpuLevel::Avx512)
            fn = &chunk_avx512<mode, kW.value, kReduce.value, kGo.value, scalar_t, Op>;
#endif
        });
      });
    });
    torch::stable::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const double s = fn(op, P, scale, go_scaled, c * kChunk, std::min(n, (c + 1) * kChunk));
        if (!partial.empty()) partial[c] = s;
      }
    });
    if (kForward && reduce) {
      double total = 0.0;
      for (double s : partial) total += s;
      if (p.reduction == Reduction::Mean) total /= static_cast<double>(n);  // 0/0 = NaN, as torch
      P.o0[0] = static_cast<scalar_t>(total);
    }
  }
};

}  // namespace lossext
