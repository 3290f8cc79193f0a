// CUDA kernels of the pair-based metric losses (Device = PairCuda, see pair_ops.h; the semantics
// are pair_cpu.cpp's).
//
// - Chunks: the anchors are taken in chunks of R rows (R = max(1, min(N, kScratchBytes / (M x the
//   bytes a pair needs)))), run in order on the stream; the chunk size changes no result (each
//   anchor is mined on its own and the references' gradients are summed across the chunks in
//   anchor order).
// - Distances: pair_dist_kernel, one warp per (anchor, reference) pair of the chunk, writes the
//   exact basis sv (s = |a - r_j|^2 or t = a . r_j) of the chunk's R x M pairs into a scratch
//   [R, M]: each lane sums d = lane, lane + 32, ... in order (explicit fma), then a fixed
//   shuffle-down tree. The backward computes the very same values (same function), so it mines
//   the same triplets as the forward; batch_hard's backward recomputes its two distances with it.
// - Mining: pair_rows_kernel, one block (8 warps) per anchor of the chunk (grid-stride).
//   batch_hard: every thread keeps the running hardest positive (max key) and negative (min key)
//   of its references j = tid, tid + 256, ..., merged by a fixed shuffle tree and then by thread 0
//   in warp order (pair_better: NaN wins, the lowest index among ties; a total order, so the
//   winner is the CPU's). batch_all and semi_hard: the block first lists the anchor's positives
//   (in index order, at [0, P)) and negatives (in index order, negative q at M - 1 - q) with
//   their distances (ballot + popc, warps in order); batch_all's forward spreads the P x Q
//   triplets over the threads (triplet e = k Q + q to thread e mod 256), semi_hard takes one warp
//   per positive, lanes over the negatives, merged by shuffles; contrastive: threads over j.
//   Per-thread float64 sums and int64 counts are added by block_sum (fixed order) and thread 0
//   writes the anchor's (sum_pos, sum_neg) [N, 2] float64 and counts [N, 4] int64 (and 'none''s
//   loss, hard). pair_total_kernel (one block) adds the anchors' values in a fixed order and writes
//   counts and the reduced loss; a mean's divisor is read from device memory: no host sync.
// - Backward: the reduced loss's scales (dL/dterm) are computed on the device from grad_output and
//   counts (pair_scales_kernel). batch_hard reads its saved (positive, negative): one warp per
//   anchor writes its gradient row and its two (reference, coefficient) entries; each reference's
//   gradient is one block (threads over d) walking the anchors in order and keeping the entries
//   that name it (O(N M) index reads, the metric family's center-gradient pattern). The other
//   minings re-mine each chunk's rows (same kernels) and write W[j] = dL/dd_aj into a scratch
//   [R, M] with one writer per slot: batch_all's positive k by its warp (lanes over the negatives,
//   shuffle tree), its negative q by thread q looping over the positives in order; semi_hard's
//   positive by its warp, its negative q by thread q walking the positives in order and keeping
//   those whose choice is q; contrastive: thread j. Then grad_embeddings row a = sum_j c_aj (a - r_j)
//   (or c r_j), j in order (block per anchor, threads over d), and, if wanted, grad_ref row j +=
//   sum over the chunk's anchors, in order, of c_aj (r_j - a) (or c a) into an accumulator [M, D]
//   in the accumulation type carried across the chunks (block per reference, threads over d);
//   the last chunk writes the output dtype. c = W u (euclidean kinds) or -W (dot) is computed from
//   W and sv where used, and a term is skipped where W == 0, as the CPU does (NaN passes).
// - No atomics anywhere (floating or integer); every sum is in a fixed order that depends on the
//   shapes only. 64-bit element offsets, grids capped at kMaxGrid with grid-stride loops, the
//   current stream of the embeddings' device, a launch check after every launch.
// - float16/bfloat16 arrive as float32 (pair_ops.h converts them once on the host), so the
//   kernels are instantiated for float and double; they accumulate in grad_ref itself.
// - Memory beyond the inputs and outputs: [N] vectors and the chunk's scratch (at most
//   kScratchBytes, or one row of M); never N x M.
// - A saved hard index outside [-1, M) (the CPU checks it on the host: a sync here) gives the
//   anchor a NaN gradient row and no reference gradient.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <torch/csrc/stable/library.h>

#include "../common/pointwise_cuda.cuh"
#include "../common/cuda_helpers.cuh"
#include "pair_ops.h"

namespace lossext {
namespace metric {
namespace {

using namespace cuda;
using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kFinal = cuda_detail::kFinalThreads;
constexpr int64_t kScratchBytes = int64_t(64) << 20;  // a chunk's scratch (unless one row needs more)
constexpr unsigned kFull = 0xffffffffu;

// ---- helpers ----------------------------------------------------------------------------------

__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

// s = sum_d (a_d - b_d)^2 or t = sum_d a_d b_d over the warp: lanes over d in order (explicit
// fma, so no contraction choice of the compiler changes it), then a fixed shuffle-down tree; the
// same in every lane. (metric_cuda.cu's warp_sq_dist, with the dot product added.)
template <class A, class scalar_t>
__device__ __forceinline__ A warp_pair_value(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                             int64_t D, bool dotk, int lane) {
  A v = A(0);
  if (dotk) {
    for (int64_t d = lane; d < D; d += 32) v = fma_rn(to_a<A>(a[d]), to_a<A>(b[d]), v);
  } else {
    for (int64_t d = lane; d < D; d += 32) {
      const A x = to_a<A>(a[d]) - to_a<A>(b[d]);
      v = fma_rn(x, x, v);
    }
  }
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return __shfl_sync(kFull, v, 0);
}

// Sum over the warp by a fixed shuffle-down tree; valid in lane 0.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return v;
}

// (best, bi) <- (key, idx) when idx is a candidate (>= 0) that pair_better prefers.
template <class A>
__device__ __forceinline__ void take_better(A& best, int64_t& bi, A key, int64_t idx, bool largest) {
  if (idx >= 0 && pair_better(key, idx, best, bi, largest)) {
    best = key;
    bi = idx;
  }
}

// The warp's best (max or min with pair_better's order) by a fixed shuffle tree; valid in lane 0.
template <class A>
__device__ __forceinline__ void warp_best(A& best, int64_t& bi, bool largest) {
  for (int o = 16; o > 0; o >>= 1) {
    const A k = __shfl_down_sync(kFull, best, o);
    const int64_t i = __shfl_down_sync(kFull, bi, o);
    take_better(best, bi, k, i, largest);
  }
}

// c = dL/dd * u (euclidean kinds) or -dL/dd (dot): dL/da = c (a - r), dL/dr = c (r - a) (or c r, c a).
template <class A>
__device__ __forceinline__ A pair_coef(A W, A s_or_t, PairDistance k) {
  if (k == PairDistance::Dot) return -W;
  A u, v;
  pair_coefs(s_or_t, k, u, v);
  return W * u;
}

// ---- distances --------------------------------------------------------------------------------

// sv[i, j] = s or t of anchor a0 + i and reference j (0 for the excluded self), one warp per pair.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_dist_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r, int64_t a0, int64_t R, int64_t M,
                     int64_t D, bool excl, bool dotk, acc_t<scalar_t>* __restrict__ sv) {
  using A = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = threadIdx.x >> 5;
  const int64_t total = R * M;
  for (int64_t e = blockIdx.x * int64_t(kWarps) + warp; e < total; e += int64_t(gridDim.x) * kWarps) {
    const int64_t i = e / M, j = e - i * M, a = a0 + i;
    A v = A(0);
    if (!(excl && j == a)) v = warp_pair_value<A>(x + a * D, r + j * D, D, dotk, lane);  // uniform over the warp
    if (lane == 0) sv[e] = v;
  }
}

// ---- mining (forward and the backward's W) ------------------------------------------------------

template <class scalar_t>
struct RowArgs {
  using A = acc_t<scalar_t>;
  const int64_t* y;        // [N]
  const int64_t* ry;       // [M]
  const A* sv;             // [R, M] the chunk's distance basis
  int64_t* lst;            // [R, M] batch_all / semi_hard: positives at [0, P), negative q at M - 1 - q
  A* dl;                   // [R, M] their distances
  A* W;                    // [R, M] backward: dL/dd_aj (0: no term)
  const scalar_t* go;      // backward: grad_output ([N] for 'none')
  const A* gs;             // backward, reduced: (dL/d triplet or positive pair, dL/d negative pair)
  double* psum;            // forward: [N, 2] (sum_pos, sum_neg)
  int64_t* pcnt;           // forward: [N, 4]
  int64_t* hard;           // forward: [N, 2]
  scalar_t* loss_none;     // forward, 'none': [N]
  int64_t a0, R, M;
  bool excl, soft, none;
  Mining mining;
  PairDistance dist;
  A m, pm, nm;             // triplet margin (0 for soft), contrastive pos / neg margins
};

// Lists the anchor's positives (in index order, at lst[0, P)) and negatives (negative q, in
// index order, at lst[M - 1 - q]) with their distances; P and Q on every thread. All threads call it.
template <class A>
__device__ void build_lists(const A* __restrict__ sv, const int64_t* __restrict__ ry, int64_t ya, int64_t a,
                            int64_t M, bool excl, PairDistance dist, int64_t* __restrict__ lst, A* __restrict__ dl,
                            int64_t& P, int64_t& Q) {
  __shared__ int s_np[kWarps], s_nn[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const unsigned below = (1u << lane) - 1u;
  int64_t bp = 0, bn = 0;
  for (int64_t j0 = 0; j0 < M; j0 += kThreads) {
    const int64_t j = j0 + threadIdx.x;
    int kind = 0;  // 1 positive, 2 negative
    if (j < M && !(excl && j == a)) kind = ry[j] == ya ? 1 : 2;
    const unsigned mp = __ballot_sync(kFull, kind == 1), mn = __ballot_sync(kFull, kind == 2);
    if (lane == 0) {
      s_np[warp] = __popc(mp);
      s_nn[warp] = __popc(mn);
    }
    __syncthreads();
    int op = 0, on = 0, tp = 0, tn = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) {
        op += s_np[w];
        on += s_nn[w];
      }
      tp += s_np[w];
      tn += s_nn[w];
    }
    if (kind == 1) {
      const int64_t k = bp + op + __popc(mp & below);
      lst[k] = j;
      dl[k] = pair_distance(sv[j], dist);
    } else if (kind == 2) {
      const int64_t k = M - 1 - (bn + on + __popc(mn & below));
      lst[k] = j;
      dl[k] = pair_distance(sv[j], dist);
    }
    bp += tp;
    bn += tn;
    __syncthreads();  // s_np / s_nn are rewritten by the next tile; the lists are complete after the last
  }
  P = bp;
  Q = bn;
}

// One block per anchor of the chunk. kGrad false: the anchor's sums and counts (and hard, and
// 'none''s loss). kGrad true (not batch_hard): the anchor's row of W.
template <bool kGrad, class scalar_t>
__global__ void __launch_bounds__(kThreads) pair_rows_kernel(RowArgs<scalar_t> g) {
  using A = acc_t<scalar_t>;
  __shared__ A s_kp[kWarps], s_kn[kWarps];
  __shared__ int64_t s_ip[kWarps], s_in[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t M = g.M;
  const bool dotk = g.dist == PairDistance::Dot, euclid = g.dist == PairDistance::Euclidean;
  for (int64_t i = blockIdx.x; i < g.R; i += gridDim.x) {
    const int64_t a = g.a0 + i, ya = g.y[a];
    const A* __restrict__ sv = g.sv + i * M;
    double s_pos = 0.0, s_neg = 0.0;          // this thread's share
    int64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;   // this thread's share of the counts
    int64_t hp = -1, hn = -1;                 // thread 0: batch_hard's choice
    A gp = A(0), gn = A(0);
    A* __restrict__ W = nullptr;
    if constexpr (kGrad) {
      W = g.W + i * M;
      if (g.none) {
        gp = gn = to_a<A>(g.go[a]);
      } else {
        gp = g.gs[0];
        gn = g.gs[1];
      }
    }
    if (g.mining == Mining::BatchHard) {
      // (forward only) the hardest positive (max key) and negative (min key); key: the clamped s
      // (euclidean kinds) or -t (dot), as the CPU compares
      A bp = A(0), bn = A(0);
      int64_t ip = -1, in = -1;
      for (int64_t j = threadIdx.x; j < M; j += kThreads) {
        if (g.excl && j == a) continue;
        const A v = sv[j];
        const A key = dotk ? -v : (euclid && v < A(kPairEps) ? A(kPairEps) : v);
        if (g.ry[j] == ya) {
          take_better(bp, ip, key, j, true);
        } else {
          take_better(bn, in, key, j, false);
        }
      }
      warp_best(bp, ip, true);
      warp_best(bn, in, false);
      if (lane == 0) {
        s_kp[warp] = bp;
        s_ip[warp] = ip;
        s_kn[warp] = bn;
        s_in[warp] = in;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        bp = bn = A(0);
        ip = in = -1;
        for (int w = 0; w < kWarps; ++w) {
          take_better(bp, ip, s_kp[w], s_ip[w], true);
          take_better(bn, in, s_kn[w], s_in[w], false);
        }
        hp = ip;
        hn = in;
        if (ip >= 0 && in >= 0) {  // else no triplet: nothing, in no divisor
          const A dp = pair_distance(dotk ? -bp : bp, g.dist);
          const A dn = pair_distance(dotk ? -bn : bn, g.dist);
          const A h = triplet_value(dp - dn + g.m, g.soft);
          s_pos = double(h);
          c0 = 1;
          c1 = h > A(0);
        }
      }
    } else if (g.mining == Mining::Contrastive) {
      for (int64_t j = threadIdx.x; j < M; j += kThreads) {
        if (g.excl && j == a) {
          if constexpr (kGrad) W[j] = A(0);
          continue;
        }
        const A dd = pair_distance(sv[j], g.dist);
        if (g.ry[j] == ya) {
          const A v = dd - g.pm, h = pair_hinge(v);
          s_pos += double(h);
          c0 += 1;
          c1 += h > A(0);
          if constexpr (kGrad) W[j] = A(0) + gp * pair_hinge_slope(v);
        } else {
          const A v = g.nm - dd, h = pair_hinge(v);
          s_neg += double(h);
          c2 += 1;
          c3 += h > A(0);
          if constexpr (kGrad) W[j] = A(0) - gn * pair_hinge_slope(v);
        }
      }
    } else {
      int64_t* __restrict__ lst = g.lst + i * M;
      A* __restrict__ dl = g.dl + i * M;
      int64_t P, Q;
      build_lists(sv, g.ry, ya, a, M, g.excl, g.dist, lst, dl, P, Q);
      if constexpr (kGrad) {
        for (int64_t j = threadIdx.x; j < M; j += kThreads) W[j] = A(0);
        __syncthreads();
      }
      if (P > 0 && Q > 0) {  // (uniform) else no triplet: nothing, in no divisor
        const A m = g.m;
        const bool soft = g.soft;
        if (g.mining == Mining::BatchAll) {
          if constexpr (!kGrad) {
            // triplet e = k Q + q (positive k, negative q) to thread e mod kThreads
            const int64_t T = P * Q, dk = kThreads / Q, dq = kThreads % Q;
            int64_t k = int64_t(threadIdx.x) / Q, q = int64_t(threadIdx.x) % Q;
            for (int64_t e = threadIdx.x; e < T; e += kThreads) {
              const A h = triplet_value(dl[k] - dl[M - 1 - q] + m, soft);
              s_pos += double(h);
              c1 += h > A(0);
              q += dq;
              k += dk;
              if (q >= Q) {
                q -= Q;
                ++k;
              }
            }
            if (threadIdx.x == 0) c0 = P * Q;
          } else {
            // positive k: its warp, lanes over the negatives, a fixed tree
            for (int64_t k = warp; k < P; k += kWarps) {
              const A dp = dl[k];
              A wp = A(0);
              for (int64_t q = lane; q < Q; q += 32) wp += gp * triplet_slope(dp - dl[M - 1 - q] + m, soft);
              wp = warp_sum(wp);
              if (lane == 0) W[lst[k]] = A(0) + wp;
            }
            // negative q: one thread, the positives in order
            for (int64_t q = threadIdx.x; q < Q; q += kThreads) {
              const A dn = dl[M - 1 - q];
              A wn = A(0);
              for (int64_t k = 0; k < P; ++k) wn -= gp * triplet_slope(dl[k] - dn + m, soft);
              W[lst[M - 1 - q]] = A(0) + wn;
            }
          }
        } else {
          // semi_hard: per positive (one warp, lanes over the negatives), the nearest negative
          // farther than it, else the farthest negative
          for (int64_t k = warp; k < P; k += kWarps) {
            const A dp = dl[k];
            A out = A(0), in = A(0);
            int64_t qo = -1, qi = -1;
            for (int64_t q = lane; q < Q; q += 32) {
              const A dn = dl[M - 1 - q];
              if (dn > dp) take_better(out, qo, dn, q, false);
              take_better(in, qi, dn, q, true);
            }
            warp_best(out, qo, false);
            warp_best(in, qi, true);
            __syncwarp();  // every lane has read dl[k] before lane 0 reuses the slot
            if (lane == 0) {
              const int64_t q = qo >= 0 ? qo : qi;
              const A v = dp - dl[M - 1 - q] + m;
              if constexpr (!kGrad) {
                const A h = triplet_value(v, soft);
                s_pos += double(h);
                c1 += h > A(0);
              } else {
                const A w = gp * triplet_slope(v, soft);
                W[lst[k]] = A(0) + w;
                // positive slot k now holds (its choice, its dL/dd): read below, after the sync
                dl[k] = w;
                lst[k] = q;
              }
            }
          }
          if constexpr (!kGrad) {
            if (threadIdx.x == 0) c0 = P;
          } else {
            __syncthreads();
            // negative q: one thread, the positives that chose it, in order
            for (int64_t q = threadIdx.x; q < Q; q += kThreads) {
              A wn = A(0);
              for (int64_t k = 0; k < P; ++k)
                if (lst[k] == q) wn -= dl[k];
              W[lst[M - 1 - q]] = A(0) + wn;
            }
          }
        }
      }
    }
    if constexpr (!kGrad) {
      s_pos = block_sum(s_pos);
      s_neg = block_sum(s_neg);
      c0 = block_sum(c0);
      c1 = block_sum(c1);
      c2 = block_sum(c2);
      c3 = block_sum(c3);
      if (threadIdx.x == 0) {
        g.psum[2 * a] = s_pos;
        g.psum[2 * a + 1] = s_neg;
        g.pcnt[4 * a] = c0;
        g.pcnt[4 * a + 1] = c1;
        g.pcnt[4 * a + 2] = c2;
        g.pcnt[4 * a + 3] = c3;
        g.hard[2 * a] = hp;
        g.hard[2 * a + 1] = hn;
        if (g.loss_none) g.loss_none[a] = to_s<scalar_t>(s_pos + s_neg);
      }
    }
    __syncthreads();  // shared values and the scratch row are rewritten for the next anchor
  }
}

// counts = the anchors' counts; loss (reduced) from the anchors' sums, by one block in a fixed
// order. A mean over no term is 0, except for an empty batch (N = 0): NaN.
template <class scalar_t>
__global__ void __launch_bounds__(kFinal)
    pair_total_kernel(const double* __restrict__ psum, const int64_t* __restrict__ pcnt, int64_t N,
                      PairReduction red, scalar_t* __restrict__ loss, int64_t* __restrict__ counts) {
  double sp = 0.0, sn = 0.0, st = 0.0;
  int64_t c[4] = {0, 0, 0, 0};
  for (int64_t a = threadIdx.x; a < N; a += blockDim.x) {
    const double p = psum[2 * a], n = psum[2 * a + 1];
    sp += p;
    sn += n;
    st += p + n;
    for (int k = 0; k < 4; ++k) c[k] += pcnt[4 * a + k];
  }
  sp = block_sum(sp);
  sn = block_sum(sn);
  st = block_sum(st);
  for (int k = 0; k < 4; ++k) c[k] = block_sum(c[k]);
  if (threadIdx.x == 0) {
    for (int k = 0; k < 4; ++k) counts[k] = c[k];
    if (red == PairReduction::Sum) {
      loss[0] = to_s<scalar_t>(st);
    } else if (red != PairReduction::None) {
      const int k = red == PairReduction::MeanNonzero ? 1 : 0;
      const double mp = c[k] > 0 ? sp / double(c[k]) : 0.0;
      const double mn = c[k + 2] > 0 ? sn / double(c[k + 2]) : 0.0;
      loss[0] = to_s<scalar_t>(N == 0 ? nan_v<double>() : mp + mn);  // an empty batch: NaN (torch's mean)
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------

// gs = (dL/d(triplet or positive-pair loss), dL/d(negative-pair loss)) of a reduced loss, from
// grad_output and the forward's counts (device memory).
template <class scalar_t>
__global__ void pair_scales_kernel(const scalar_t* __restrict__ go, const int64_t* __restrict__ cnt,
                                   PairReduction red, acc_t<scalar_t>* __restrict__ gs) {
  using A = acc_t<scalar_t>;
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const double g = double(to_a<A>(go[0]));
  if (red == PairReduction::Sum) {
    gs[0] = gs[1] = A(g);
    return;
  }
  const int k = red == PairReduction::MeanNonzero ? 1 : 0;
  gs[0] = A(cnt[k] > 0 ? g / double(cnt[k]) : 0.0);
  gs[1] = A(cnt[k + 2] > 0 ? g / double(cnt[k + 2]) : 0.0);
}

// batch_hard: one warp per anchor from its saved (positive, negative): its gradient row and its
// two entries (reference, coefficient) (-1: none).
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    bh_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r, const int64_t* __restrict__ hard,
                   const scalar_t* __restrict__ go, const acc_t<scalar_t>* __restrict__ gs, bool none, int64_t N,
                   int64_t M, int64_t D, PairDistance dist, bool soft, acc_t<scalar_t> m, scalar_t* __restrict__ ge,
                   int64_t* __restrict__ ent_j, acc_t<scalar_t>* __restrict__ ent_c) {
  using A = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = threadIdx.x >> 5;
  const bool dotk = dist == PairDistance::Dot;
  for (int64_t a = blockIdx.x * int64_t(kWarps) + warp; a < N; a += int64_t(gridDim.x) * kWarps) {
    const int64_t jp = hard[2 * a], jn = hard[2 * a + 1];
    const bool ok = jp >= -1 && jp < M && jn >= -1 && jn < M;
    const bool live = ok && jp >= 0 && jn >= 0;
    const scalar_t* __restrict__ xa = x + a * D;
    A cp = A(0), cn = A(0);
    if (live) {  // uniform over the warp
      const A sp = warp_pair_value<A>(xa, r + jp * D, D, dotk, lane);
      const A sn = warp_pair_value<A>(xa, r + jn * D, D, dotk, lane);
      const A gp = none ? to_a<A>(go[a]) : gs[0];
      const A w = gp * triplet_slope(pair_distance(sp, dist) - pair_distance(sn, dist) + m, soft);
      cp = pair_coef(w, sp, dist);
      cn = pair_coef(-w, sn, dist);
    }
    if (lane == 0) {
      ent_j[2 * a] = live ? jp : -1;
      ent_j[2 * a + 1] = live ? jn : -1;
      ent_c[2 * a] = cp;
      ent_c[2 * a + 1] = cn;
    }
    const scalar_t* __restrict__ rp = r + (live ? jp : 0) * D;
    const scalar_t* __restrict__ rn = r + (live ? jn : 0) * D;
    for (int64_t d = lane; d < D; d += 32) {
      A v = A(0);
      if (!ok) {
        v = nan_v<A>();
      } else if (live) {
        if (dotk) {
          v += cp * to_a<A>(rp[d]);
          v += cn * to_a<A>(rn[d]);
        } else {
          const A xd = to_a<A>(xa[d]);
          v += cp * (xd - to_a<A>(rp[d]));
          v += cn * (xd - to_a<A>(rn[d]));
        }
      }
      ge[a * D + d] = to_s<scalar_t>(v);
    }
  }
}

// batch_hard: grad_ref[j] = sum over the anchors in order of the entries naming j of c (r_j - a)
// (or c a). One block per reference (grid-stride), threads over d.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    bh_ref_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r, const int64_t* __restrict__ ent_j,
                  const acc_t<scalar_t>* __restrict__ ent_c, int64_t N, int64_t M, int64_t D, PairDistance dist,
                  scalar_t* __restrict__ gr) {
  using A = acc_t<scalar_t>;
  const bool dotk = dist == PairDistance::Dot;
  for (int64_t j = blockIdx.x; j < M; j += gridDim.x) {
    for (int64_t d0 = 0; d0 < D; d0 += blockDim.x) {
      const int64_t d = d0 + threadIdx.x;
      const bool mine = d < D;
      const A rd = mine ? to_a<A>(r[j * D + d]) : A(0);
      A acc = A(0);
      for (int64_t e = 0; e < 2 * N; ++e) {
        if (ent_j[e] != j) continue;  // uniform over the block
        if (mine) {
          const A c = ent_c[e], xd = to_a<A>(x[(e >> 1) * D + d]);
          acc += dotk ? c * xd : c * (rd - xd);
        }
      }
      if (mine) gr[j * D + d] = to_s<scalar_t>(acc);
    }
  }
}

// grad_embeddings row a0 + i = sum_j c_ij (a - r_j) (or c_ij r_j), j in order, over the terms
// (W != 0). One block per anchor (grid-stride), threads over d.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_grad_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r,
                          const acc_t<scalar_t>* __restrict__ sv, const acc_t<scalar_t>* __restrict__ W, int64_t a0,
                          int64_t R, int64_t M, int64_t D, PairDistance dist, scalar_t* __restrict__ ge) {
  using A = acc_t<scalar_t>;
  const bool dotk = dist == PairDistance::Dot;
  for (int64_t i = blockIdx.x; i < R; i += gridDim.x) {
    const int64_t a = a0 + i;
    const A* __restrict__ wr = W + i * M;
    const A* __restrict__ sr = sv + i * M;
    for (int64_t d0 = 0; d0 < D; d0 += blockDim.x) {
      const int64_t d = d0 + threadIdx.x;
      const bool mine = d < D;
      const A xd = mine ? to_a<A>(x[a * D + d]) : A(0);
      A acc = A(0);
      for (int64_t j = 0; j < M; ++j) {
        const A w = wr[j];
        if (w == A(0)) continue;  // no term (uniform over the block); NaN passes
        const A c = pair_coef(w, sr[j], dist);
        if (mine) {
          const A rd = to_a<A>(r[j * D + d]);
          acc += dotk ? c * rd : c * (xd - rd);
        }
      }
      if (mine) ge[a * D + d] = to_s<scalar_t>(acc);
    }
  }
}

// grad_ref row j += sum over the chunk's anchors in order of c_ij (r_j - a) (or c_ij a): the
// accumulator racc (A) carries the sum across the chunks; first: it starts at 0; last: the sum
// goes to gr in the output dtype. One block per reference (grid-stride), threads over d.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_grad_ref_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r,
                         const acc_t<scalar_t>* __restrict__ sv, const acc_t<scalar_t>* __restrict__ W, int64_t a0,
                         int64_t R, int64_t M, int64_t D, PairDistance dist, bool first, bool last,
                         acc_t<scalar_t>* racc, scalar_t* gr) {  // racc may be gr (float32, float64)
  using A = acc_t<scalar_t>;
  const bool dotk = dist == PairDistance::Dot;
  for (int64_t j = blockIdx.x; j < M; j += gridDim.x) {
    for (int64_t d0 = 0; d0 < D; d0 += blockDim.x) {
      const int64_t d = d0 + threadIdx.x;
      const bool mine = d < D;
      const A rd = mine ? to_a<A>(r[j * D + d]) : A(0);
      A acc = (first || !mine) ? A(0) : racc[j * D + d];
      for (int64_t i = 0; i < R; ++i) {
        const A w = W[i * M + j];
        if (w == A(0)) continue;  // no term (uniform over the block); NaN passes
        const A c = pair_coef(w, sv[i * M + j], dist);
        if (mine) {
          const A xd = to_a<A>(x[(a0 + i) * D + d]);
          acc += dotk ? c * xd : c * (rd - xd);
        }
      }
      if (mine) {
        if (last) {
          gr[j * D + d] = to_s<scalar_t>(acc);
        } else {
          racc[j * D + d] = acc;
        }
      }
    }
  }
}

// ---- host ---------------------------------------------------------------------------------------

inline bool listed(Mining mining) { return mining == Mining::BatchAll || mining == Mining::SemiHard; }

// Rows per chunk: the scratch of R x M pairs (bytes_per_pair each) within kScratchBytes, or one row.
inline int64_t chunk_rows(int64_t N, int64_t M, int64_t bytes_per_pair) {
  const int64_t per_row = std::max<int64_t>(M, 1) * bytes_per_pair;
  return std::max<int64_t>(1, std::min<int64_t>(N, kScratchBytes / per_row));
}

template <class F>
void on_pair_device(const PairProblem& p, F&& f) {
  const int32_t dev = p.x.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  cudaStream_t stream = current_stream(dev);
  dispatch_pair(p, [&](auto tag) { f(tag, stream); });
}

template <class scalar_t>
RowArgs<scalar_t> row_args(const PairProblem& p) {
  using A = acc_t<scalar_t>;
  RowArgs<scalar_t> g{};
  g.y = ptr<const int64_t>(p.y);
  g.ry = ptr<const int64_t>(p.ry);
  g.M = p.M;
  g.excl = p.exclude_self;
  g.soft = p.soft;
  g.none = p.reduction == PairReduction::None;
  g.mining = p.mining;
  g.dist = p.dist;
  g.m = p.soft ? A(0) : A(p.margin);
  g.pm = A(p.margin);
  g.nm = A(p.neg_margin);
  return g;
}

template <class scalar_t>
void launch_dist(const PairProblem& p, int64_t a0, int64_t rows, acc_t<scalar_t>* sv, cudaStream_t stream) {
  if (rows * p.M == 0) return;
  pair_dist_kernel<scalar_t><<<grid_for(rows * p.M, kWarps), kThreads, 0, stream>>>(
      ptr<const scalar_t>(p.x), ptr<const scalar_t>(p.r), a0, rows, p.M, p.D, p.exclude_self,
      p.dist == PairDistance::Dot, sv);
  check_launch("lossext::metric pair distance kernel");
}

}  // namespace

struct PairCuda {
  static void pair_forward(const PairProblem& p, Tensor& loss, Tensor& hard, Tensor& counts) {
    on_pair_device(p, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const ScalarType acc_st = acc_scalar_type(p.x.scalar_type());
      const int64_t N = p.N, M = p.M;
      const bool lists = listed(p.mining);
      const int64_t R = chunk_rows(N, M, lists ? 2 * int64_t(sizeof(A)) + 8 : int64_t(sizeof(A)));
      Tensor psum = new_tensor({2 * N}, ScalarType::Double, p.x);
      Tensor pcnt = new_tensor({4 * N}, ScalarType::Long, p.x);
      Tensor sv = new_tensor({N > 0 ? R * M : 0}, acc_st, p.x);
      Tensor lst = new_tensor({N > 0 && lists ? R * M : 0}, ScalarType::Long, p.x);
      Tensor dl = new_tensor({N > 0 && lists ? R * M : 0}, acc_st, p.x);
      RowArgs<scalar_t> g = row_args<scalar_t>(p);
      g.sv = ptr<const A>(sv);
      g.lst = ptr<int64_t>(lst);
      g.dl = ptr<A>(dl);
      g.psum = ptr<double>(psum);
      g.pcnt = ptr<int64_t>(pcnt);
      g.hard = ptr<int64_t>(hard);
      g.loss_none = p.reduction == PairReduction::None ? ptr<scalar_t>(loss) : nullptr;
      for (int64_t a0 = 0; a0 < N; a0 += R) {
        const int64_t rows = std::min(R, N - a0);
        launch_dist<scalar_t>(p, a0, rows, ptr<A>(sv), stream);
        g.a0 = a0;
        g.R = rows;
        pair_rows_kernel<false, scalar_t><<<grid_for(rows, 1), kThreads, 0, stream>>>(g);
        check_launch("lossext::metric pair mining kernel");
      }
      pair_total_kernel<scalar_t><<<1, kFinal, 0, stream>>>(ptr<const double>(psum), ptr<const int64_t>(pcnt), N,
                                                            p.reduction, ptr<scalar_t>(loss), ptr<int64_t>(counts));
      check_launch("lossext::metric pair total kernel");
    });
  }

  static void pair_backward(const PairProblem& p, const Tensor& go, const Tensor& hard, const Tensor& counts,
                            Tensor& ge, Tensor& gr) {
    on_pair_device(p, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const ScalarType acc_st = acc_scalar_type(p.x.scalar_type());
      const int64_t N = p.N, M = p.M, D = p.D;
      const bool ref_grad = p.ref_grad && M * D > 0;
      if (N * D == 0 && !ref_grad) return;  // nothing to write
      const bool none = p.reduction == PairReduction::None;
      Tensor gs = new_tensor({2}, acc_st, p.x);
      if (!none) {
        pair_scales_kernel<scalar_t><<<1, 32, 0, stream>>>(ptr<const scalar_t>(go), ptr<const int64_t>(counts),
                                                           p.reduction, ptr<A>(gs));
        check_launch("lossext::metric pair scales kernel");
      }
      if (p.mining == Mining::BatchHard) {
        Tensor ent_j = new_tensor({2 * N}, ScalarType::Long, p.x);
        Tensor ent_c = new_tensor({2 * N}, acc_st, p.x);
        if (N > 0) {
          bh_rows_kernel<scalar_t><<<grid_for(N, kWarps), kThreads, 0, stream>>>(
              ptr<const scalar_t>(p.x), ptr<const scalar_t>(p.r), ptr<const int64_t>(hard), ptr<const scalar_t>(go),
              ptr<const A>(gs), none, N, M, D, p.dist, p.soft, p.soft ? A(0) : A(p.margin), ptr<scalar_t>(ge),
              ptr<int64_t>(ent_j), ptr<A>(ent_c));
          check_launch("lossext::metric pair batch_hard backward kernel");
        }
        if (ref_grad) {
          bh_ref_kernel<scalar_t><<<grid_for(M, 1), kThreads, 0, stream>>>(
              ptr<const scalar_t>(p.x), ptr<const scalar_t>(p.r), ptr<const int64_t>(ent_j), ptr<const A>(ent_c), N, M,
              D, p.dist, ptr<scalar_t>(gr));
          check_launch("lossext::metric pair batch_hard reference-gradient kernel");
        }
        return;
      }
      if (N == 0) {  // ref_grad: no anchor, no term
        torch::stable::zero_(gr);
        return;
      }
      const bool lists = listed(p.mining);
      const int64_t R = chunk_rows(N, M, lists ? 3 * int64_t(sizeof(A)) + 8 : 2 * int64_t(sizeof(A)));
      const int64_t chunks = (N + R - 1) / R;
      Tensor sv = new_tensor({R * M}, acc_st, p.x);
      Tensor W = new_tensor({R * M}, acc_st, p.x);
      Tensor lst = new_tensor({lists ? R * M : 0}, ScalarType::Long, p.x);
      Tensor dl = new_tensor({lists ? R * M : 0}, acc_st, p.x);
      // the references' accumulator across the chunks: grad_ref itself when it is in A
      constexpr bool kInPlace = std::is_same_v<scalar_t, A>;
      Tensor racc = new_tensor({ref_grad && chunks > 1 && !kInPlace ? M * D : 0}, acc_st, p.x);
      A* racc_p = kInPlace ? ptr<A>(gr) : ptr<A>(racc);
      RowArgs<scalar_t> g = row_args<scalar_t>(p);
      g.sv = ptr<const A>(sv);
      g.lst = ptr<int64_t>(lst);
      g.dl = ptr<A>(dl);
      g.W = ptr<A>(W);
      g.go = ptr<const scalar_t>(go);
      g.gs = ptr<const A>(gs);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t a0 = c * R, rows = std::min(R, N - a0);
        launch_dist<scalar_t>(p, a0, rows, ptr<A>(sv), stream);
        g.a0 = a0;
        g.R = rows;
        pair_rows_kernel<true, scalar_t><<<grid_for(rows, 1), kThreads, 0, stream>>>(g);
        check_launch("lossext::metric pair mining backward kernel");
        if (D > 0) {
          pair_grad_rows_kernel<scalar_t><<<grid_for(rows, 1), kThreads, 0, stream>>>(
              ptr<const scalar_t>(p.x), ptr<const scalar_t>(p.r), ptr<const A>(sv), ptr<const A>(W), a0, rows, M, D,
              p.dist, ptr<scalar_t>(ge));
          check_launch("lossext::metric pair embedding-gradient kernel");
        }
        if (ref_grad) {
          pair_grad_ref_kernel<scalar_t><<<grid_for(M, 1), kThreads, 0, stream>>>(
              ptr<const scalar_t>(p.x), ptr<const scalar_t>(p.r), ptr<const A>(sv), ptr<const A>(W), a0, rows, M, D,
              p.dist, c == 0, c == chunks - 1, racc_p, ptr<scalar_t>(gr));
          check_launch("lossext::metric pair reference-gradient kernel");
        }
      }
    });
  }
};

}  // namespace metric
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::metric::register_pair_kernels<lossext::metric::PairCuda>(m);
}
