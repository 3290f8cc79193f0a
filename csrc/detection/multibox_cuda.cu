// CUDA kernels of prior matching and the multibox losses (Device = MultiboxCuda, see
// multibox_ops.h), the counterpart of multibox_cpu.cpp: the same matching, encoding, mining and
// sums (multibox_math.h), done in parallel. kThreads = 256 threads per block everywhere; every
// grid is capped (kMaxGrid) and walked grid-stride; element offsets are 64-bit.
//
// match_priors: [mb_decode_kernel,] mb_match_kernel. multibox_loss: [mb_decode_kernel,]
// mb_match_kernel, mb_prior_kernel, mb_mine_kernel, mb_grad_conf_kernel. All on the current
// stream, a launch check after each, no host synchronization, one scratch buffer per call.
//
// 0. mb_decode_kernel (only with arm_loc), thread per (image, prior): the refined anchors
//    mb_decode(prior, arm_loc) into a [B, P] double scratch (the CPU's Matcher::load).
// 1. mb_match_kernel, one block per image: the image's non-padding truths (label >= 0, or NaN)
//    compacted in row order (per chunk of kThreads rows: warp ballots, the warps' counts in warp
//    order) into a [B, T] list (box, row; for the loss also its class: label + 1, 1 when binary,
//    -1 for a bad label, and the image's bad flag). The boxes and the matcher's per-truth state
//    live in dynamic shared memory when T <= kSmemTruths, else in the [B, T] global lists.
//    Bipartite (Matcher::bipartite): each truth's best unmatched prior by a block argmax (IoUs
//    recomputed with mb_iou; max overlap > 1e-6, ties the lower prior); then up to nt rounds: warp
//    0 picks the pool truth of largest value (ties: lower prior, then lower truth), assigns it and
//    lists the pool truths whose best was that prior; the block recomputes those, one block argmax
//    each, in list order; then, in parallel over the priors, the per-prediction pass (and each
//    unmatched prior's overlap, its best IoU > 1e-6). SSD (Matcher::ssd_pytorch): per prior its
//    first best truth, then per truth its first best prior (block argmax), applied by thread 0 in
//    truth order (a later truth overwrites). Writes matches (int32 local truth index, scratch;
//    match_priors also the int64 target row or -1) and the overlaps (double).
// 2. mb_prior_kernel, thread per (image, prior): the prior's class (0 unmatched, else the truth's),
//    lse = max + log(sum exp(z - max)) and ce = lse - z[class] in acc_t (NaN for a bad class, which
//    is never an index), the positives' smooth L1 over the four encoded offsets (loss summed per
//    prior in k order; grad_loc; zeros for the others), and the mining key: 0 for a prior that is
//    no negative candidate (matched, overlap >= neg_overlap, or ARM objectness
//    1 / (1 + exp(a0 - a1)) (double) < objectness_thresh), else an order-preserving unsigned key of
//    ce (32-bit for float accumulation, 64-bit for double; NaN the largest, -0 as +0; never 0).
// 3. mb_mine_kernel, one block per image: num_pos and the candidate count (block sums), k =
//    min(floor(num_pos * neg_pos_ratio), candidates) (0 when num_pos = 0). With 0 < k <
//    candidates, a radix select over the keys (8-bit digits from the top, a shared-memory
//    histogram per digit: integer atomics, counts only, then a block suffix scan over the 256
//    bins) gives the k-th largest key K and how many priors of key K to take; the taken negatives
//    are the keys > K and the first (by prior index: contiguous chunks per thread and a block
//    exclusive scan of the chunks' tie counts) of the keys == K: the k hardest of mb_harder
//    (larger loss, NaN first, ties the lower index). Priors not taken get class -2. Each thread
//    adds its chunk's ce of the taken priors and its chunk's smooth L1 in prior order (double), the
//    block by a fixed tree; thread 0 writes loss_loc, loss_conf (NaN when the image has a bad
//    label) and num_pos.
// 4. mb_grad_conf_kernel, thread per element of [B, P, C]: softmax - onehot for the taken priors
//    (exp(z - lse)), NaN for a taken prior of a bad class, zeros for the others.
//
// Deterministic: integer atomics only for the histogram counts; sums in a fixed order (the
// order differs from the CPU's sequential one); the grids and the element-to-thread mappings
// depend on the sizes only.
//
// Floating point: the CPU is built with -ffp-contract=off, nvcc contracts a * b + c into FMAs by
// default. The geometry (corners, IoU, encode, decode, smooth L1) is therefore not taken from
// multibox_math.h but from its uncontracted copies dx_* below (IEEE _rn intrinsics, the header's
// operations in its order), so the matcher's IoUs, and with them its exact ties and threshold
// comparisons, are the CPU's bit for bit. What can still differ from the CPU: the libm calls (CUDA's
// log / exp in double, within 1 ulp of glibc's, in encode, decode and the ARM objectness; and
// math.h's float exp / log, CUDA libm here, Cephes on the CPU), so the cross-entropies (and thus
// the mining's order of near-equal losses), the refined anchors and the sums can differ in the
// last bits.
//
// Bad targets and priors are not validated (that would need a host sync; the CPU raises): a label that is
// not an integer (NaN included) or, unless binary, not < C - 1 makes the image's loss_loc and
// loss_conf NaN, and a prior matched to that truth gets ce NaN, a NaN smooth L1 term and a NaN
// gradient row in grad_conf (its grad_loc is computed as usual); it is never used as an index.
// match_priors has no labels to check (any label >= 0 or NaN is a truth). NaN or empty boxes
// have IoU 0 with everything (mb_iou), so they match nothing.
//
// Empty sizes: B = 0 launches nothing; P = 0 or T = 0 (or all padding) still run the match and
// mine kernels (matches -1, overlaps 0, losses 0, num_pos 0, zero gradients).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../common/cuda_helpers.cuh"
#include "../common/math.h"
#include "../common/pointwise_cuda.cuh"
#include "multibox_ops.h"

namespace lossext {
namespace detection {
namespace {

using namespace cuda;
using cuda_detail::check_launch;
using cuda_detail::current_stream;

constexpr int kThreads = 256;  // threads per block of every kernel here (and the radix bins)
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
static_assert(kThreads == 256, "the radix select uses one thread per 8-bit digit");

// Per truth in shared memory: box (32), best value (8), best prior (8), in pool (4), list (4).
constexpr int64_t kTruthBytes = 56;
constexpr int64_t kSmemBudget = 44 * 1024;  // dynamic shared memory of the match kernel (< 48 KiB)
constexpr int64_t kSmemTruths = kSmemBudget / kTruthBytes;

// Class codes of a prior (int32 [B, P]): >= 0 its class; kBadClass a matched truth's bad label;
// kNotTaken (after mining) neither a positive nor a mined negative.
constexpr int32_t kBadClass = -1;
constexpr int32_t kNotTaken = -2;

// ---- block helpers (kThreads threads, every thread calls, fixed order) -----------------------

// Sum over the block, returned to every thread: each warp by a shuffle-down tree, then the warps
// in warp order.
template <class T>
__device__ __forceinline__ T block_sum_all(T v) {
  __shared__ T buf[kWarps + 1];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T s = buf[0];
    for (int w = 1; w < kWarps; ++w) s += buf[w];
    buf[kWarps] = s;
  }
  __syncthreads();
  return buf[kWarps];  // rewritten only after the next call's first barrier
}

// Inclusive prefix sum over the threads in thread order (integers: exact).
template <class T>
__device__ __forceinline__ T block_inclusive_scan(T v) {
  __shared__ T wsum[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) wsum[warp] = v;
  __syncthreads();
  T off = T(0);
  for (int w = 0; w < warp; ++w) off += wsum[w];
  __syncthreads();  // wsum is rewritten by the next call
  return v + off;
}

// The block's best (value, prior): the larger value, ties the lower prior (-1: none, whose value
// is below every real one). Returned to every thread.
struct Best {
  double v;
  int64_t i;
};
__device__ __forceinline__ bool better(double v2, int64_t i2, double v1, int64_t i1) {
  return v2 > v1 || (v2 == v1 && i2 < i1);
}
__device__ __forceinline__ Best block_best(double v, int64_t i) {
  __shared__ double sv[kWarps];
  __shared__ int64_t si[kWarps];
  __shared__ Best res;
  for (int o = 16; o > 0; o >>= 1) {
    const double ov = __shfl_down_sync(kFull, v, o);
    const int64_t oi = __shfl_down_sync(kFull, i, o);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Best r{sv[0], si[0]};
    for (int w = 1; w < kWarps; ++w)
      if (better(sv[w], si[w], r.v, r.i)) r = {sv[w], si[w]};
    res = r;
  }
  __syncthreads();
  return res;  // rewritten only after the next call's first barrier
}

// ---- the geometry of multibox_math.h, uncontracted ----------------------------------------------
// nvcc contracts a * b + c into one FMA by default (-fmad=true: NVVM emits fma.rn.f64, and ptxas
// may fuse any plain mul.f64 / add.f64 pair), the CPU build does not (-ffp-contract=off). A fused
// mb_decode (cx + v0 l0 w), mb_iou (area + area - iw ih) or the corners would differ from the
// CPU's in the last bit and could flip the matcher's exact ties and threshold comparisons. These
// are multibox_math.h's mb_corners, mb_area, mb_iou, mb_encode, mb_decode and mb_smooth_l1,
// operation for operation in the same order, written with the IEEE round-to-nearest intrinsics
// (__dadd_rn & co. are never contracted), so +, -, *, / give the CPU's bits. x / 2 is written
// __dmul_rn(x, 0.5): the same correctly rounded value of x / 2 for every x. Only the libm calls
// (log, exp) can still differ from glibc's (CUDA's are within 1 ulp). KEEP IN SYNC with
// multibox_math.h.
__device__ __forceinline__ MbCorners dx_corners(const MbBox& b) {
  const double hw = __dmul_rn(b.w, 0.5), hh = __dmul_rn(b.h, 0.5);
  return {__dsub_rn(b.cx, hw), __dsub_rn(b.cy, hh), __dadd_rn(b.cx, hw), __dadd_rn(b.cy, hh)};
}
__device__ __forceinline__ double dx_area(const MbCorners& a) {
  return (a.x2 < a.x1 || a.y2 < a.y1) ? 0.0 : __dmul_rn(__dsub_rn(a.x2, a.x1), __dsub_rn(a.y2, a.y1));
}
__device__ __forceinline__ double dx_iou(const MbCorners& a, const MbCorners& b) {
  const double iw = __dsub_rn(a.x2 < b.x2 ? a.x2 : b.x2, a.x1 > b.x1 ? a.x1 : b.x1);
  const double ih = __dsub_rn(a.y2 < b.y2 ? a.y2 : b.y2, a.y1 > b.y1 ? a.y1 : b.y1);
  if (!(iw > 0.0 && ih > 0.0)) return 0.0;
  const double inter = __dmul_rn(iw, ih);
  const double uni = __dsub_rn(__dadd_rn(dx_area(a), dx_area(b)), inter);
  return uni > 0.0 ? __ddiv_rn(inter, uni) : 0.0;
}
__device__ __forceinline__ MbTarget dx_encode(const MbCorners& g, const MbBox& p, double v0, double v1) {
  const double gw = __dsub_rn(g.x2, g.x1), gh = __dsub_rn(g.y2, g.y1);
  const double gcx = __dmul_rn(__dadd_rn(g.x1, g.x2), 0.5), gcy = __dmul_rn(__dadd_rn(g.y1, g.y2), 0.5);
  return {{__ddiv_rn(__ddiv_rn(__dsub_rn(gcx, p.cx), p.w), v0), __ddiv_rn(__ddiv_rn(__dsub_rn(gcy, p.cy), p.h), v0),
           __ddiv_rn(::log(__ddiv_rn(gw, p.w)), v1), __ddiv_rn(::log(__ddiv_rn(gh, p.h)), v1)}};
}
__device__ __forceinline__ MbBox dx_decode(const MbBox& p, double l0, double l1, double l2, double l3, double v0,
                                           double v1) {
  return {__dadd_rn(p.cx, __dmul_rn(__dmul_rn(v0, l0), p.w)), __dadd_rn(p.cy, __dmul_rn(__dmul_rn(v0, l1), p.h)),
          __dmul_rn(p.w, ::exp(__dmul_rn(v1, l2))), __dmul_rn(p.h, ::exp(__dmul_rn(v1, l3)))};
}
__device__ __forceinline__ MbL1 dx_smooth_l1(double x) {
  const double ax = x < 0 ? -x : x;
  if (ax < 1.0) return {__dmul_rn(__dmul_rn(0.5, x), x), x};
  return {__dsub_rn(ax, 0.5), x < 0 ? -1.0 : (x > 0 ? 1.0 : x)};  // x NaN: NaN
}

// The softmax's adds in acc_t, uncontracted too: the operand from an inlined libm exp / log ends in
// a multiply that ptxas could otherwise fuse with the add (the CPU rounds exp's result first).
__device__ __forceinline__ float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float rn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double rn_sub(double a, double b) { return __dsub_rn(a, b); }

// ---- mining keys -------------------------------------------------------------------------------

template <class A> using MbKey = std::conditional_t<std::is_same_v<A, double>, uint64_t, uint32_t>;

// Larger loss -> larger key; every NaN the largest; -0 as +0 (mb_harder: equal); never 0 (0 marks
// "not a candidate": the smallest key, -inf's, is 0x007fffff / 0x000fffffffffffff).
__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0xffffffffu;
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t order_key(double d) {
  if (d != d) return ~uint64_t(0);
  if (d == 0.0) d = 0.0;
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(d));
  const uint64_t sign = uint64_t(1) << 63;
  return (u & sign) ? ~u : (u | sign);
}

// ---- kernel 0: refined anchors -----------------------------------------------------------------

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    mb_decode_kernel(const double* __restrict__ priors, const scalar_t* __restrict__ arm_loc, int64_t n, int64_t P,
                     double v0, double v1, MbBox* __restrict__ anchors) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const int64_t q = i % P;
    const double* pr = priors + q * 4;
    const scalar_t* l = arm_loc + i * 4;
    anchors[i] = dx_decode({pr[0], pr[1], pr[2], pr[3]}, to_a<double>(l[0]), to_a<double>(l[1]),
                           to_a<double>(l[2]), to_a<double>(l[3]), v0, v1);
  }
}

// ---- kernel 1: matching ------------------------------------------------------------------------

struct MatchArgs {
  const double* targets;  // [B, T, 5]
  const MbBox* anchors;   // [P] (the priors, anchor_stride 0) or [B, P] (refined, anchor_stride P)
  int64_t anchor_stride;
  int64_t B, P, T;
  double thresh;
  bool bipartite;
  bool use_smem;
  // labels (multibox_loss only; tcls == nullptr for match_priors)
  int32_t* tcls;  // [B, T] class of each listed truth (label + 1, 1 binary, kBadClass)
  int32_t* bad;   // [B] the image has a bad label
  int64_t C;
  bool binary;
  // per-truth lists [B, T] (boxes and rows always; the matcher state when !use_smem)
  MbCorners* tbox;
  int64_t* trow;
  double* tbv;
  int64_t* tbi;
  int32_t* tpool;
  int32_t* tlist;
  // per prior [B, P]
  int32_t* mt;         // local truth index or -1
  double* ov;          // overlap
  int64_t* out_rows;   // match_priors: target row or -1 (nullptr for multibox_loss)
};

__global__ void __launch_bounds__(kThreads) mb_match_kernel(MatchArgs a) {
  extern __shared__ __align__(16) unsigned char mb_smem[];
  __shared__ int warp_count[kWarps];
  __shared__ int64_t s_pick, s_nlist;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t P = a.P, T = a.T;
  for (int64_t b = blockIdx.x; b < a.B; b += gridDim.x) {
    MbCorners* gbox = a.tbox + b * T;
    int64_t* grow = a.trow + b * T;
    MbCorners* box;
    double* bv;
    int64_t* bi;
    int32_t* pool;
    int32_t* list;
    if (a.use_smem) {  // generic pointers into shared memory
      box = reinterpret_cast<MbCorners*>(mb_smem);
      bv = reinterpret_cast<double*>(mb_smem + T * 32);
      bi = reinterpret_cast<int64_t*>(mb_smem + T * 40);
      pool = reinterpret_cast<int32_t*>(mb_smem + T * 48);
      list = reinterpret_cast<int32_t*>(mb_smem + T * 52);
    } else {
      box = gbox;
      bv = a.tbv + b * T;
      bi = a.tbi + b * T;
      pool = a.tpool + b * T;
      list = a.tlist + b * T;
    }
    const MbBox* anc = a.anchors + b * a.anchor_stride;
    int32_t* mt = a.mt + b * P;
    double* ov = a.ov + b * P;
    int64_t* rows = a.out_rows ? a.out_rows + b * P : nullptr;

    // (1) the truths, in row order (Matcher::load)
    int64_t nt = 0;  // the same in every thread
    int bad = 0;
    for (int64_t k0 = 0; k0 < T; k0 += kThreads) {
      const int64_t k = k0 + tid;
      const double* row = a.targets + (b * T + (k < T ? k : 0)) * 5;
      const bool keep = k < T && !(row[4] < 0);  // label < 0 is padding (NaN is kept: a bad label)
      const int2 rank = cuda::block_compact<kWarps>(keep, warp_count);
      if (keep) {
        const int64_t slot = nt + rank.x;
        const MbCorners g{row[0], row[1], row[2], row[3]};
        gbox[slot] = g;
        if (a.use_smem) box[slot] = g;
        grow[slot] = k;
        if (a.tcls) {
          const double c = row[4];  // >= 0 or NaN here
          const bool good = c == ::floor(c) && (a.binary || c < double(a.C - 1));
          a.tcls[b * T + slot] = good ? (a.binary ? 1 : static_cast<int32_t>(c) + 1) : kBadClass;
          bad |= good ? 0 : 1;
        }
      }
      nt += rank.y;
    }
    bad = __syncthreads_or(bad);  // also: the lists are visible to the block
    if (tid == 0 && a.bad) a.bad[b] = bad;

    // the block's first best prior of truth t (larger IoU > lo, ties the lower prior; -1 none),
    // among the unmatched priors only when unmatched_only
    auto best_prior = [&](int64_t t, bool unmatched_only, double lo) -> Best {
      const MbCorners g = box[t];
      double v = -1.0;
      int64_t i = -1;
      for (int64_t p = tid; p < P; p += kThreads) {
        if (unmatched_only && mt[p] != -1) continue;
        const double o = dx_iou(g, dx_corners(anc[p]));
        if (o > lo && o > v) {
          v = o;
          i = p;
        }
      }
      return block_best(v, i);
    };

    if (nt == 0) {
      for (int64_t p = tid; p < P; p += kThreads) {
        mt[p] = -1;
        ov[p] = 0.0;
        if (rows) rows[p] = -1;
      }
    } else if (a.bipartite) {
      // (2a) Matcher::bipartite
      for (int64_t p = tid; p < P; p += kThreads) mt[p] = -1;
      __syncthreads();
      for (int64_t t = 0; t < nt; ++t) {
        const Best r = best_prior(t, true, kMbMinOverlap);
        if (tid == 0) {
          bv[t] = r.v;
          bi[t] = r.i;
          pool[t] = 1;
        }
      }
      __syncthreads();
      for (int64_t it = 0; it < nt; ++it) {
        if (warp == 0) {
          // the pool truth of largest value, ties the lower prior, then the lower truth
          double v = -1.0;
          int64_t pi = -1, tb = -1;
          for (int64_t t = lane; t < nt; t += 32) {
            if (!pool[t] || bi[t] < 0) continue;
            const double vt = bv[t];
            const int64_t it2 = bi[t];
            if (tb < 0 || vt > v || (vt == v && it2 < pi)) {
              tb = t;
              v = vt;
              pi = it2;
            }
          }
          for (int o = 16; o > 0; o >>= 1) {
            const double ov2 = __shfl_down_sync(kFull, v, o);
            const int64_t op = __shfl_down_sync(kFull, pi, o);
            const int64_t ot = __shfl_down_sync(kFull, tb, o);
            if (ot >= 0 && (tb < 0 || ov2 > v || (ov2 == v && (op < pi || (op == pi && ot < tb))))) {
              v = ov2;
              pi = op;
              tb = ot;
            }
          }
          tb = __shfl_sync(kFull, tb, 0);
          pi = __shfl_sync(kFull, pi, 0);
          v = __shfl_sync(kFull, v, 0);
          int64_t count = 0;
          if (tb >= 0) {  // the other pool truths whose best was prior pi, in truth order
            for (int64_t t0 = 0; t0 < nt; t0 += 32) {
              const int64_t t = t0 + lane;
              const bool f = t < nt && t != tb && pool[t] && bi[t] == pi;
              const unsigned bal = __ballot_sync(kFull, f);
              if (f) list[count + __popc(bal & ((1u << lane) - 1u))] = static_cast<int32_t>(t);
              count += __popc(bal);
            }
          }
          __syncwarp();
          if (lane == 0) {
            if (tb >= 0) {
              mt[pi] = static_cast<int32_t>(tb);
              ov[pi] = v;
              pool[tb] = 0;
            }
            s_pick = tb;
            s_nlist = count;
          }
        }
        __syncthreads();
        if (s_pick < 0) break;  // uniform
        const int64_t m = s_nlist;
        for (int64_t j = 0; j < m; ++j) {
          const int64_t t = list[j];
          const Best r = best_prior(t, true, kMbMinOverlap);
          if (tid == 0) {
            bv[t] = r.v;
            bi[t] = r.i;
          }
        }
        __syncthreads();  // bv, bi for warp 0's next pick; s_pick, s_nlist read by all
      }
      // per prediction: each prior still unmatched takes its first truth of largest overlap
      // >= thresh; its overlap is its best IoU > 1e-6 (0 if none)
      for (int64_t p = tid; p < P; p += kThreads) {
        int32_t m = mt[p];
        if (m < 0) {
          const MbCorners q = dx_corners(anc[p]);
          double best = 0.0, v = -1.0;
          int64_t tb = -1;
          for (int64_t t = 0; t < nt; ++t) {
            const double o = dx_iou(box[t], q);
            if (o > kMbMinOverlap && o > best) best = o;
            if (o > kMbMinOverlap && o >= a.thresh && o > v) {
              v = o;
              tb = t;
            }
          }
          if (tb >= 0) {
            m = static_cast<int32_t>(tb);
            mt[p] = m;
            ov[p] = v;
          } else {
            ov[p] = best;
          }
        }
        if (rows) rows[p] = m < 0 ? -1 : grow[m];
      }
    } else {
      // (2b) Matcher::ssd_pytorch: each prior's first best truth ...
      for (int64_t p = tid; p < P; p += kThreads) {
        const MbCorners q = dx_corners(anc[p]);
        double v = dx_iou(box[0], q);
        int64_t tb = 0;
        for (int64_t t = 1; t < nt; ++t) {
          const double o = dx_iou(box[t], q);
          if (o > v) {
            v = o;
            tb = t;
          }
        }
        ov[p] = v;
        mt[p] = (v >= a.thresh && v > 0.0) ? static_cast<int32_t>(tb) : -1;
      }
      // ... then each truth's first best prior (IoU > 0), a later truth overwriting an earlier one
      for (int64_t t = 0; t < nt; ++t) {
        const Best r = best_prior(t, false, 0.0);
        if (tid == 0) {
          bv[t] = r.v;
          bi[t] = r.i;
        }
      }
      __syncthreads();
      if (tid == 0) {
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t p = bi[t];
          if (p < 0) continue;
          mt[p] = static_cast<int32_t>(t);
          ov[p] = bv[t];
        }
      }
      __syncthreads();
      if (rows) {
        for (int64_t p = tid; p < P; p += kThreads) {
          const int32_t m = mt[p];
          rows[p] = m < 0 ? -1 : grow[m];
        }
      }
    }
    __syncthreads();  // the shared lists are rewritten by the next image
  }
}

// ---- kernel 2: per prior -----------------------------------------------------------------------

template <class scalar_t>
struct PriorArgs {
  using A = acc_t<scalar_t>;
  const scalar_t* loc;       // [B, P, 4]
  const scalar_t* conf;      // [B, P, C]
  const scalar_t* arm_conf;  // [B, P, 2] or nullptr
  const MbBox* anchors;
  int64_t anchor_stride;
  const MbCorners* tbox;  // [B, T]
  const int32_t* tcls;    // [B, T]
  const int32_t* mt;      // [B, P]
  const double* ov;       // [B, P]
  int64_t B, P, T, C;
  double v0, v1, neg_overlap, objectness;
  scalar_t* grad_loc;  // [B, P, 4]
  A* lse;              // [B, P]
  A* ce;               // [B, P]
  double* lloc;        // [B, P]
  MbKey<A>* key;       // [B, P]
  int32_t* cls;        // [B, P]
};

template <class scalar_t>
__global__ void __launch_bounds__(kThreads) mb_prior_kernel(PriorArgs<scalar_t> a) {
  using A = acc_t<scalar_t>;
  const int64_t n = a.B * a.P, C = a.C, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / a.P, q = i - b * a.P;
    const int32_t t = a.mt[i];
    // every prior's cross-entropy against its class (ComputeConfLoss)
    const scalar_t* z = a.conf + i * C;
    A mx = to_a<A>(z[0]);
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, to_a<A>(z[c]));
    A s = A(0);
    for (int64_t c = 0; c < C; ++c) s = rn_add(s, math::exp_softmax(rn_sub(to_a<A>(z[c]), mx)));
    const A lse = rn_add(mx, math::log(s));
    const int32_t cl = t < 0 ? 0 : a.tcls[b * a.T + t];
    const A ce = cl >= 0 ? rn_sub(lse, to_a<A>(z[cl])) : nan_v<A>();
    a.lse[i] = lse;
    a.ce[i] = ce;
    a.cls[i] = cl;
    // the positives' smooth L1 against the truth encoded on their anchor
    const scalar_t* lz = a.loc + i * 4;
    scalar_t* gl = a.grad_loc + i * 4;
    double lsum = 0.0;
    if (t >= 0) {
      const MbTarget tg = dx_encode(a.tbox[b * a.T + t], a.anchors[b * a.anchor_stride + q], a.v0, a.v1);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const MbL1 l = dx_smooth_l1(__dsub_rn(to_a<double>(lz[k]), tg.t[k]));
        lsum = __dadd_rn(lsum, l.loss);
        gl[k] = to_s<scalar_t>(l.grad);
      }
      if (cl < 0) lsum = nan_v<double>();
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) gl[k] = to_s<scalar_t>(0.0f);
    }
    a.lloc[i] = lsum;
    // the mining key: negative candidates only (MineHardExamples; RefineDet's objectness filter)
    bool cand = t < 0 && a.ov[i] < a.neg_overlap;
    if (cand && a.arm_conf) {
      const scalar_t* ac = a.arm_conf + i * 2;
      const double obj = __ddiv_rn(1.0, __dadd_rn(1.0, ::exp(__dsub_rn(to_a<double>(ac[0]), to_a<double>(ac[1])))));
      cand = obj >= a.objectness;
    }
    a.key[i] = cand ? order_key(ce) : MbKey<A>(0);
  }
}

// ---- kernel 3: hard negative mining and the per-image sums -------------------------------------

template <class scalar_t>
struct MineArgs {
  using A = acc_t<scalar_t>;
  const int32_t* mt;     // [B, P]
  const MbKey<A>* key;   // [B, P]
  const A* ce;           // [B, P]
  const double* lloc;    // [B, P]
  const int32_t* bad;    // [B]
  int32_t* cls;          // [B, P]: kNotTaken written for the priors not taken
  int64_t B, P;
  double neg_pos_ratio;
  scalar_t* loss_loc;  // [B]
  scalar_t* loss_conf; // [B]
  int64_t* num_pos;    // [B]
};

template <class scalar_t>
__global__ void __launch_bounds__(kThreads) mb_mine_kernel(MineArgs<scalar_t> a) {
  using A = acc_t<scalar_t>;
  using K = MbKey<A>;
  constexpr int kBits = 8 * int(sizeof(K));
  __shared__ unsigned int hist[kThreads];
  __shared__ int64_t s_digit, s_rem;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t P = a.P;
  for (int64_t b = blockIdx.x; b < a.B; b += gridDim.x) {
    const int32_t* mt = a.mt + b * P;
    const K* key = a.key + b * P;
    const A* ce = a.ce + b * P;
    const double* lloc = a.lloc + b * P;
    int32_t* cls = a.cls + b * P;
    int64_t np = 0, nc = 0;
    for (int64_t p = tid; p < P; p += kThreads) {
      np += mt[p] >= 0 ? 1 : 0;
      nc += key[p] != K(0) ? 1 : 0;
    }
    np = block_sum_all(np);
    nc = block_sum_all(nc);
    int64_t k = 0;  // negatives to take
    if (np > 0) {
      const double kd = ::floor(double(np) * a.neg_pos_ratio);
      k = kd >= double(nc) ? nc : static_cast<int64_t>(kd);
    }
    const bool select = k > 0 && k < nc;  // uniform; k == nc takes every candidate
    K thr = 0;                             // the k-th largest key
    int64_t rem = 0;                       // how many of key thr to take
    if (select) {
      K prefix = 0, mask = 0;
      rem = k;
      for (int shift = kBits - 8; shift >= 0; shift -= 8) {
        hist[tid] = 0u;
        __syncthreads();
        for (int64_t p = tid; p < P; p += kThreads) {
          const K kk = key[p];
          if (kk != K(0) && (kk & mask) == prefix) atomicAdd(&hist[int((kk >> shift) & K(255))], 1u);
        }
        __syncthreads();
        // thread j holds digit 255 - j: the inclusive scan counts the keys of digit >= 255 - j
        const int64_t h = hist[kThreads - 1 - tid];
        const int64_t c = block_inclusive_scan(h);
        if (c >= rem && c - h < rem) {  // exactly one thread (a digit with h > 0)
          s_digit = kThreads - 1 - tid;
          s_rem = rem - (c - h);
        }
        __syncthreads();
        prefix |= K(s_digit) << shift;
        mask |= K(255) << shift;
        rem = s_rem;
        __syncthreads();  // s_digit, s_rem and hist are rewritten by the next digit
      }
      thr = prefix;
    }
    // the taken priors, each thread a contiguous chunk in prior order (ties: lower index first)
    const int64_t chunk = (P + kThreads - 1) / kThreads;
    const int64_t lo = std::min<int64_t>(P, int64_t(tid) * chunk), hi = std::min<int64_t>(P, lo + chunk);
    int64_t ties_before = 0;
    if (select) {
      int64_t ties = 0;
      for (int64_t q = lo; q < hi; ++q) ties += key[q] == thr ? 1 : 0;
      ties_before = block_inclusive_scan(ties) - ties;
    }
    double lc = 0.0, ll = 0.0;
    for (int64_t q = lo; q < hi; ++q) {
      bool take = mt[q] >= 0;
      if (!take && k > 0) {
        const K kk = key[q];
        if (kk != K(0)) {
          if (!select || kk > thr) {
            take = true;
          } else if (kk == thr) {
            take = ties_before < rem;
            ++ties_before;
          }
        }
      }
      if (take) lc += double(ce[q]);
      else cls[q] = kNotTaken;
      ll += lloc[q];
    }
    lc = block_sum_all(lc);
    ll = block_sum_all(ll);
    if (tid == 0) {
      const bool is_bad = a.bad[b] != 0;
      a.loss_loc[b] = to_s<scalar_t>(is_bad ? nan_v<double>() : ll);
      a.loss_conf[b] = to_s<scalar_t>(is_bad ? nan_v<double>() : lc);
      a.num_pos[b] = np;
    }
    __syncthreads();
  }
}

// ---- kernel 4: grad_conf -----------------------------------------------------------------------

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    mb_grad_conf_kernel(const scalar_t* __restrict__ conf, const acc_t<scalar_t>* __restrict__ lse,
                        const int32_t* __restrict__ cls, int64_t n, int64_t C, scalar_t* __restrict__ grad) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / C, c = i - r * C;
    const int32_t cl = cls[r];
    A g;
    if (cl == kNotTaken) {
      g = A(0);
    } else if (cl < 0) {
      g = nan_v<A>();
    } else {
      const A pc = math::exp_softmax(rn_sub(to_a<A>(conf[i]), lse[r]));
      g = c == cl ? rn_sub(pc, A(1)) : pc;
    }
    grad[i] = to_s<scalar_t>(g);
  }
}

// ---- host --------------------------------------------------------------------------------------

inline int64_t align_up(int64_t v) { return (v + 255) / 256 * 256; }

// Offsets into one scratch buffer, each region 256-byte aligned.
struct Layout {
  int64_t bytes = 0;
  template <class T>
  int64_t add(int64_t n) {
    const int64_t off = bytes;
    bytes += align_up(n * int64_t(sizeof(T)));
    return off;
  }
};

template <class T> T* at(unsigned char* base, int64_t off) { return reinterpret_cast<T*>(base + off); }

inline int image_grid(int64_t B) { return static_cast<int>(std::min<int64_t>(B, kMaxGrid)); }

// The match scratch: truth lists [B, T] and matches [B, P] (and refined anchors [B, P]).
struct MatchScratch {
  int64_t box, row, bv, bi, pool, list, mt, anchors = -1;
  void plan(Layout& L, const MatchProblem& m) {
    const int64_t BT = m.B * m.T, BP = m.B * m.P;
    box = L.add<MbCorners>(BT);
    row = L.add<int64_t>(BT);
    bv = L.add<double>(BT);
    bi = L.add<int64_t>(BT);
    pool = L.add<int32_t>(BT);
    list = L.add<int32_t>(BT);
    mt = L.add<int32_t>(BP);
    if (m.arm_loc.has_value()) anchors = L.add<MbBox>(BP);
  }
};

// Launches the decode kernel (with arm_loc) and the match kernel; a fills in the rest.
template <class arm_t>
void launch_match(const MatchProblem& m, unsigned char* base, const MatchScratch& s, MatchArgs a,
                  cudaStream_t stream) {
  const int64_t BP = m.B * m.P;
  a.anchors = reinterpret_cast<const MbBox*>(ptr<const double>(m.priors));
  a.anchor_stride = 0;
  if (m.arm_loc.has_value()) {
    MbBox* anc = at<MbBox>(base, s.anchors);
    if (BP > 0) {
      mb_decode_kernel<arm_t><<<grid_for(BP, kThreads), kThreads, 0, stream>>>(
          ptr<const double>(m.priors), ptr<const arm_t>(*m.arm_loc), BP, m.P, m.v0, m.v1, anc);
      check_launch("lossext multibox decode kernel");
    }
    a.anchors = anc;
    a.anchor_stride = m.P;
  }
  a.targets = ptr<const double>(m.targets);
  a.B = m.B;
  a.P = m.P;
  a.T = m.T;
  a.thresh = m.thresh;
  a.bipartite = m.matching == MbMatching::Bipartite;
  a.use_smem = m.T > 0 && m.T <= kSmemTruths;
  a.tbox = at<MbCorners>(base, s.box);
  a.trow = at<int64_t>(base, s.row);
  a.tbv = at<double>(base, s.bv);
  a.tbi = at<int64_t>(base, s.bi);
  a.tpool = at<int32_t>(base, s.pool);
  a.tlist = at<int32_t>(base, s.list);
  a.mt = at<int32_t>(base, s.mt);
  const size_t smem = a.use_smem ? static_cast<size_t>(m.T * kTruthBytes) : 0;
  mb_match_kernel<<<image_grid(m.B), kThreads, smem, stream>>>(a);
  check_launch("lossext multibox match kernel");
}

template <class scalar_t>
void run_t(const MultiboxProblem& p, Tensor& loss_loc, Tensor& loss_conf, Tensor& num_pos, Tensor& grad_loc,
           Tensor& grad_conf, cudaStream_t stream) {
  using A = acc_t<scalar_t>;
  const MatchProblem& m = p.m;
  const int64_t B = m.B, P = m.P, T = m.T, BP = B * P;
  if (B == 0) return;  // every output is empty

  Layout L;
  MatchScratch ms;
  ms.plan(L, m);
  const int64_t o_tcls = L.add<int32_t>(B * T);
  const int64_t o_bad = L.add<int32_t>(B);
  const int64_t o_ov = L.add<double>(BP);
  const int64_t o_lse = L.add<A>(BP);
  const int64_t o_ce = L.add<A>(BP);
  const int64_t o_lloc = L.add<double>(BP);
  const int64_t o_key = L.add<MbKey<A>>(BP);
  const int64_t o_cls = L.add<int32_t>(BP);
  Tensor scratch = torch::stable::empty({std::max<int64_t>(L.bytes, 1)}, ScalarType::Byte, std::nullopt,
                                        p.loc.device());
  unsigned char* base = ptr<unsigned char>(scratch);

  MatchArgs ma{};
  ma.tcls = at<int32_t>(base, o_tcls);
  ma.bad = at<int32_t>(base, o_bad);
  ma.C = p.C;
  ma.binary = p.binary;
  ma.ov = at<double>(base, o_ov);
  ma.out_rows = nullptr;
  launch_match<scalar_t>(m, base, ms, ma, stream);

  PriorArgs<scalar_t> pa{};
  pa.loc = ptr<const scalar_t>(p.loc);
  pa.conf = ptr<const scalar_t>(p.conf);
  pa.arm_conf = p.arm_conf.has_value() ? ptr<const scalar_t>(*p.arm_conf) : nullptr;
  pa.anchors = m.arm_loc.has_value() ? at<const MbBox>(base, ms.anchors)
                                     : reinterpret_cast<const MbBox*>(ptr<const double>(m.priors));
  pa.anchor_stride = m.arm_loc.has_value() ? P : 0;
  pa.tbox = at<const MbCorners>(base, ms.box);
  pa.tcls = at<const int32_t>(base, o_tcls);
  pa.mt = at<const int32_t>(base, ms.mt);
  pa.ov = at<const double>(base, o_ov);
  pa.B = B;
  pa.P = P;
  pa.T = T;
  pa.C = p.C;
  pa.v0 = m.v0;
  pa.v1 = m.v1;
  pa.neg_overlap = p.neg_overlap;
  pa.objectness = p.objectness;
  pa.grad_loc = ptr<scalar_t>(grad_loc);
  pa.lse = at<A>(base, o_lse);
  pa.ce = at<A>(base, o_ce);
  pa.lloc = at<double>(base, o_lloc);
  pa.key = at<MbKey<A>>(base, o_key);
  pa.cls = at<int32_t>(base, o_cls);
  if (BP > 0) {
    mb_prior_kernel<scalar_t><<<grid_for(BP, kThreads), kThreads, 0, stream>>>(pa);
    check_launch("lossext::multibox_loss prior kernel");
  }

  MineArgs<scalar_t> na{};
  na.mt = pa.mt;
  na.key = pa.key;
  na.ce = pa.ce;
  na.lloc = pa.lloc;
  na.bad = at<const int32_t>(base, o_bad);
  na.cls = pa.cls;
  na.B = B;
  na.P = P;
  na.neg_pos_ratio = p.neg_pos_ratio;
  na.loss_loc = ptr<scalar_t>(loss_loc);
  na.loss_conf = ptr<scalar_t>(loss_conf);
  na.num_pos = ptr<int64_t>(num_pos);
  mb_mine_kernel<scalar_t><<<image_grid(B), kThreads, 0, stream>>>(na);
  check_launch("lossext::multibox_loss mine kernel");

  const int64_t n = BP * p.C;
  if (n > 0) {
    mb_grad_conf_kernel<scalar_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        pa.conf, pa.lse, pa.cls, n, p.C, ptr<scalar_t>(grad_conf));
    check_launch("lossext::multibox_loss grad_conf kernel");
  }
}

}  // namespace

struct MultiboxCuda {
  static void match(const MatchProblem& m, Tensor& matches, Tensor& overlaps) {
    if (m.B == 0) return;  // empty outputs
    const int32_t dev = m.priors.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(dev);
    cudaStream_t stream = current_stream(dev);
    Layout L;
    MatchScratch ms;
    ms.plan(L, m);
    Tensor scratch =
        torch::stable::empty({std::max<int64_t>(L.bytes, 1)}, ScalarType::Byte, std::nullopt, m.priors.device());
    unsigned char* base = ptr<unsigned char>(scratch);
    MatchArgs a{};
    a.tcls = nullptr;
    a.bad = nullptr;
    a.ov = ptr<double>(overlaps);
    a.out_rows = ptr<int64_t>(matches);
    if (m.arm_loc.has_value()) {
      dispatch_floating(m.arm_loc->scalar_type(), m.op,
                        [&](auto tag) { launch_match<decltype(tag)>(m, base, ms, a, stream); });
    } else {
      launch_match<double>(m, base, ms, a, stream);
    }
  }

  static void run(const MultiboxProblem& p, Tensor& loss_loc, Tensor& loss_conf, Tensor& num_pos, Tensor& grad_loc,
                  Tensor& grad_conf) {
    const int32_t dev = p.loc.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(dev);
    cudaStream_t stream = current_stream(dev);
    dispatch_floating(p.loc.scalar_type(), p.m.op, [&](auto tag) {
      run_t<decltype(tag)>(p, loss_loc, loss_conf, num_pos, grad_loc, grad_conf, stream);
    });
  }
};

}  // namespace detection
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::detection::register_multibox_kernels<lossext::detection::MultiboxCuda>(m);
}
