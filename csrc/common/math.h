// Scalar math used by every loss, callable from CPU and CUDA code.
//
// On the GPU these are the CUDA libm functions. On the CPU, float uses the branch-free
// Cephes-style log/exp below, so that GCC vectorizes the loss loops (glibc's logf/expf
// are scalar calls unless -ffast-math, which would also break NaN/inf handling).
// Accuracy of the float versions: about 1 ulp (tests compare every op with float64).
// Vectorizing needs -fno-trapping-math (if-conversion of the selects) and -fopenmp-simd.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "config.h"

namespace lossext {
namespace math {
namespace detail {

#ifndef LOSSEXT_ON_DEVICE
LOSSEXT_HD float as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
LOSSEXT_HD uint32_t as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// ln(2^e * (1 + f)) for f in [sqrt(1/2) - 1, sqrt(2) - 1]: the Cephes logf polynomial.
LOSSEXT_HD float log_from_parts(int32_t e, float f) {
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float ef = static_cast<float>(e);
  y += ef * -2.12194440e-4f;
  y += -0.5f * z;
  float r = f + y;
  return r + ef * 0.693359375f;
}

// Splits a positive normal x into x = 2^e * (1 + f), 1 + f in [sqrt(1/2), sqrt(2)).
LOSSEXT_HD void split_normal(float x, int32_t& e, float& f) {
  const uint32_t ix = as_uint(x);
  e = static_cast<int32_t>((ix >> 23) & 0xffu) - 127;
  float m = as_float((ix & 0x007fffffu) | 0x3f800000u);  // m in [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e += big ? 1 : 0;
  f = m - 1.0f;
}

// Natural log; exact special values: log(0) = -inf, log(<0) = NaN, log(inf) = inf, NaN -> NaN;
// subnormals are scaled by 2^23 first.
LOSSEXT_HD float fast_logf(float x) {
  const bool tiny = x < 1.17549435e-38f;  // subnormal (or <= 0, fixed below)
  int32_t e;
  float f;
  split_normal(tiny ? x * 8388608.0f : x, e, f);
  float r = log_from_parts(e - (tiny ? 23 : 0), f);
  r = (x == 0.0f) ? -std::numeric_limits<float>::infinity() : r;
  r = (x < 0.0f) ? std::numeric_limits<float>::quiet_NaN() : r;
  r = (x == std::numeric_limits<float>::infinity()) ? x : r;
  return (x != x) ? x : r;
}

// exp(x) = 2^n exp(r): n = round(x / ln 2) (by the 1.5 * 2^23 trick, branch-free) and
// exp(r) for |r| <= ln(2) / 2 by the Cephes polynomial.
LOSSEXT_HD void exp_reduce(float x, float& nf, float& r) {
  nf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
}
LOSSEXT_HD float exp_poly(float r) {
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  return y;
}

// exp; overflows to inf, underflows through subnormals to 0, NaN -> NaN.
LOSSEXT_HD float fast_expf(float x) {
  float xc = x > 89.0f ? 89.0f : x;
  xc = xc < -104.0f ? -104.0f : xc;
  float nf, r;
  exp_reduce(xc, nf, r);
  nf = (x != x) ? 0.0f : nf;  // NaN never reaches the int conversion (fixed up at the end)
  const int32_t n = static_cast<int32_t>(nf);
  const float y = exp_poly(r);
  // 2^n in two factors so that subnormal results and overflow to inf both come out right.
  const int32_t n1 = n / 2;
  const int32_t n2 = n - n1;
  const float s1 = as_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = as_float(static_cast<uint32_t>(n2 + 127) << 23);
  const float res = y * s1 * s2;
  return (x != x) ? x : res;
}

// log(1 + u) for u >= 0 (NaN and +inf propagate), accurate for small u and without a
// division: with v = fl(1 + u) >= 1 and its rounding error c = u - (v - 1),
// log(1 + u) = log(v) + c / v, and 1/v = 2^-e / (1 + f) is taken as 2^-e (1 - f + f^2)
// (c is at most half an ulp of v, so that error is far below an ulp of the result).
// v >= 1 is normal, so none of fast_logf's zero/negative/subnormal handling is needed.
LOSSEXT_HD float fast_log1pf_nonneg(float u) {
  const float v = 1.0f + u;
  const float c = u - (v - 1.0f);
  int32_t e;
  float f;
  split_normal(v, e, f);
  const float inv_v = as_float(static_cast<uint32_t>(127 - e) << 23) * (1.0f - f + f * f);
  const float r = log_from_parts(e, f) + c * inv_v;
  return (v == std::numeric_limits<float>::infinity() || v != v) ? v : r;
}

// exp for the arguments of a softmax (x <= 0 up to rounding, or NaN): the Cephes polynomial of
// fast_expf with a cheaper range: x is clamped to [-87, 88] so 2^n is one normal factor;
// results below exp(-87) = 1.6e-38 come out as that (not subnormal or 0), which changes a
// softmax sum or probability by under 2e-38 in absolute terms. NaN propagates.
LOSSEXT_HD float fast_expf_softmax(float x) {
  float xc = x > 88.0f ? 88.0f : x;
  xc = xc < -87.0f ? -87.0f : xc;  // NaN compares false both times and stays NaN
  float nf, r;
  exp_reduce(xc, nf, r);
  const float y = exp_poly(r);
  const int32_t n = static_cast<int32_t>(nf == nf ? nf : 0.0f);
  return y * as_float(static_cast<uint32_t>(n + 127) << 23);
}

// exp(x) - 1: for |x| <= 0.5 the Taylor series to x^10 / 10! (Horner; its truncation is below
// 3e-10 relative), else fast_expf(x) - 1, which loses at most 1.3 bits there (|exp(x) - 1| >=
// 0.39). Branch-free (both sides, then a select); inf -> inf, -inf -> -1, NaN -> NaN.
LOSSEXT_HD float fast_expm1f(float x) {
  float y = 2.7557319e-7f;  // 1 / 10!
  y = y * x + 2.7557319e-6f;
  y = y * x + 2.4801587e-5f;
  y = y * x + 1.9841270e-4f;
  y = y * x + 1.3888889e-3f;
  y = y * x + 8.3333333e-3f;
  y = y * x + 4.1666667e-2f;
  y = y * x + 1.6666667e-1f;
  y = y * x + 0.5f;
  const float small = (y * x) * x + x;
  const float big = fast_expf(x) - 1.0f;
  return std::abs(x) <= 0.5f ? small : big;
}
#endif  // !LOSSEXT_ON_DEVICE

}  // namespace detail

LOSSEXT_HD float log(float x) {
#ifdef LOSSEXT_ON_DEVICE
  return ::logf(x);
#else
  return detail::fast_logf(x);
#endif
}
LOSSEXT_HD float exp(float x) {
#ifdef LOSSEXT_ON_DEVICE
  return ::expf(x);
#else
  return detail::fast_expf(x);
#endif
}
// exp of a softmax argument (x <= 0, see fast_expf_softmax); float64 and the GPU use libm.
LOSSEXT_HD float exp_softmax(float x) {
#ifdef LOSSEXT_ON_DEVICE
  return ::expf(x);
#else
  return detail::fast_expf_softmax(x);
#endif
}
LOSSEXT_HD double exp_softmax(double x) { return ::exp(x); }
// log(1 + x) for x >= 0 (or NaN / +inf): the only range the losses need.
LOSSEXT_HD float log1p_nonneg(float x) {
#ifdef LOSSEXT_ON_DEVICE
  return ::log1pf(x);
#else
  return detail::fast_log1pf_nonneg(x);
#endif
}
// exp(x) - 1 (precise near 0); float64 and the GPU use libm.
LOSSEXT_HD float expm1(float x) {
#ifdef LOSSEXT_ON_DEVICE
  return ::expm1f(x);
#else
  return detail::fast_expm1f(x);
#endif
}
LOSSEXT_HD double expm1(double x) { return ::expm1(x); }
LOSSEXT_HD double log(double x) { return ::log(x); }
LOSSEXT_HD double exp(double x) { return ::exp(x); }
LOSSEXT_HD double log1p_nonneg(double x) { return ::log1p(x); }

// sign(x) in {-1, 0, +1}; NaN stays NaN so that it propagates into gradients.
template <class T> LOSSEXT_HD T sign(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : (x == T(0) ? T(0) : x));
}

}  // namespace math
}  // namespace lossext
