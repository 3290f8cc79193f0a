// CUDA kernels of the YOLOv2 region loss (Device = RegionCuda, see region_ops.h), the counterpart
// of region_cpu.cpp: the same per-truth and per-anchor work (region_math.h), done in parallel.
//
// Three launches per batch, on the current stream, no host synchronization:
// 1. region_truth_kernel, one block per image (grid-stride over images past kMaxGrid): the
//    image's non-padding rows are compacted in row order (a block scan per chunk of kThreads rows:
//    warp ballots, then the warps' counts in warp order); the thread of each kept row makes its
//    Truth, its anchor (best_anchor, the CPU's lambda), its key n H W + cell and its statistics
//    (IoU, sigmoid(to), class probability), written to a per-image list in a scratch buffer.
//    Thread 0 then adds the statistics in row order (the CPU's order) into the image's slots.
// 2. region_anchor_kernel, grid (slices, images): each block copies its image's truth boxes into
//    dynamic shared memory (T * 40 bytes when that is <= kSmemBudget, i.e. T <= 1024; a larger T
//    reads the list from the global scratch buffer instead) and takes the anchor-cells
//    k = n H W + cell of its slice (grid-stride within the image: k = slice kThreads + tid +
//    m slices kThreads). Per anchor, the CPU's work: the best IoU over the truths, win = the last
//    truth with key == k, the 5 + C gradient entries, the loss, darknet's delta^2 and sigmoid(to),
//    added to the thread's partials (double) in the CPU's order; the block's partials are added
//    by cuda_detail::block_sum's fixed tree into the (image, slice) slot.
// 3. region_final_kernel, one block: each image's slices added in slice order (loss[b]), then the
//    seven statistics each folded over the images in image order (as the CPU) and written.
// Deterministic: no atomics; the grid, the slice count and the anchor-to-thread mapping depend on
// the sizes only. Accumulation type A = acc_t<scalar_t>, truth geometry in double (region_math.h).
//
// Bad targets are not validated (that would need a host sync; the CPU raises) and never index
// out of bounds: a class that is not an integer in [0, C) (or NaN) is never used as an index; its
// avg_cat contribution is NaN and, where it wins its anchor, that anchor's class gradient
// entries, class loss and class cost are NaN; region_final_kernel makes the image's loss NaN in
// any case (also where a later truth on the same cell and anchor took the anchor). A NaN centre is given
// cell 0 (make_truth's cast of NaN would be undefined; any other centre is clamped to the grid)
// and stays NaN in the truth, so its terms are NaN. w, h <= 0 just give NaN / inf through log.
// H W = 0: no anchors; a kept truth is counted with NaN IoU, obj and cat (the CPU would read the
// output out of bounds there). B = 0 launches only the final kernel (stats: all 0).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include "../common/cuda_helpers.cuh"
#include "../common/math.h"
#include "../common/pointwise_cuda.cuh"
#include "region_ops.h"

namespace lossext {
namespace detection {
namespace {

using namespace cuda;
using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;

constexpr int kThreads = 256;              // threads per block of every kernel here
constexpr int kWarps = kThreads / 32;
constexpr int64_t kAnchorsPerThread = 2;   // anchor-cells per thread before the slices are capped
constexpr int64_t kMaxSlices = 1024;       // blocks per image in the anchor kernel
constexpr int64_t kMaxImages = 65535;      // grid.y of the anchor kernel
constexpr int64_t kSmemBudget = 40 * 1024; // dynamic shared memory for the truth boxes (< 48 KiB)

// The part of a truth the anchor scan reads (shared memory), and the rest (global only).
struct TruthBox {
  double x, y, w, h;
  int64_t key;  // n H W + cell of its anchor; -1 for none (H W = 0)
};
struct TruthInfo {
  int64_t cls;  // -1 for a bad class
  double iou, obj, cat;
};
static_assert(sizeof(TruthBox) == 40 && sizeof(TruthInfo) == 32, "8-byte packed truth records");

enum : int { kPartLoss = 0, kPartCost = 1, kPartAnyObj = 2, kNumPart = 3 };

// ---- kernel 1: truths ----------------------------------------------------------------------

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    region_truth_kernel(const scalar_t* __restrict__ out, const double* __restrict__ tg,
                        const double* __restrict__ anc, RegionParams p, int64_t B, TruthBox* __restrict__ boxes,
                        TruthInfo* __restrict__ info, int64_t* __restrict__ ntruth, double* __restrict__ img) {
  using A = acc_t<scalar_t>;
  __shared__ int warp_count[kWarps];
  const int64_t HW = p.H * p.W, E = 5 + p.C, per_image = p.A * E * HW;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const scalar_t* z = out + b * per_image;
    auto at = [&](int64_t n, int64_t cell, int64_t e) { return to_a<A>(z[n * E * HW + e * HW + cell]); };
    TruthBox* bx = boxes + b * p.T;
    TruthInfo* in = info + b * p.T;
    int64_t nt = 0;  // the same in every thread
    for (int64_t k0 = 0; k0 < p.T; k0 += kThreads) {
      const int64_t k = k0 + threadIdx.x;
      const double* row = tg + (b * p.T + (k < p.T ? k : 0)) * 5;
      const bool keep = k < p.T && !(row[0] < 0);  // class < 0 is padding (NaN is kept: a bad class)
      const int2 rank = cuda::block_compact<kWarps>(keep, warp_count);
      if (keep) {
        const int64_t slot = nt + rank.x;
        // make_truth's casts (class, cell) are only given values they are defined for: a bad class
        // is cast as 0 (then marked -1), a NaN centre gives cell 0 (then u.x, u.y are NaN again)
        const double c = row[0];
        const bool good = c == floor(c) && c < double(p.C);  // c >= 0 here; NaN fails the first test
        const double safe[5] = {good ? c : 0.0, row[1] == row[1] ? row[1] : 0.0, row[2] == row[2] ? row[2] : 0.0,
                                row[3], row[4]};
        Truth u = make_truth(safe, p.H, p.W);
        u.x = row[1];
        u.y = row[2];
        u.cls = good ? u.cls : -1;
        TruthBox tb{u.x, u.y, u.w, u.h, -1};
        TruthInfo ti{u.cls, nan_v<double>(), nan_v<double>(), nan_v<double>()};
        if (HW > 0) {
          const int64_t cell = u.j * p.W + u.i;
          const int64_t n = best_anchor(u, p.A, [&](int64_t a, double& w, double& h) {
            w = p.bias_match ? anc[2 * a] / double(p.W) : ::exp(double(at(a, cell, 2))) * anc[2 * a] / double(p.W);
            h = p.bias_match ? anc[2 * a + 1] / double(p.H)
                             : ::exp(double(at(a, cell, 3))) * anc[2 * a + 1] / double(p.H);
          });
          tb.key = n * HW + cell;
          const Decoded d = decode(at(n, cell, 0), at(n, cell, 1), at(n, cell, 2), at(n, cell, 3), anc[2 * n],
                                   anc[2 * n + 1], u.i, u.j, p.H, p.W);
          ti.iou = dk_iou(d.x, d.y, d.w, d.h, u.x, u.y, u.w, u.h);
          ti.obj = double(sigmoid_of(at(n, cell, 4)));
          if (good) {
            A m = at(n, cell, 5);
            for (int64_t cc = 1; cc < p.C; ++cc) m = std::max(m, at(n, cell, 5 + cc));
            A s = A(0);
            for (int64_t cc = 0; cc < p.C; ++cc) s += math::exp_softmax(at(n, cell, 5 + cc) - m);
            ti.cat = double(math::exp_softmax(at(n, cell, 5 + u.cls) - m) / s);
          }
        }
        bx[slot] = tb;
        in[slot] = ti;
      }
      nt += rank.y;
    }
    __syncthreads();  // the block's writes of the list are visible to thread 0
    if (threadIdx.x == 0) {
      double iou = 0.0, recall = 0.0, obj = 0.0, cat = 0.0;
      for (int64_t t = 0; t < nt; ++t) {  // row order, as the CPU
        const TruthInfo ti = in[t];
        iou += ti.iou;
        recall += ti.iou > 0.5 ? 1.0 : 0.0;
        obj += ti.obj;
        cat += ti.cat;
      }
      double* st = img + b * kNumStats;
      st[kAvgIou] = iou;
      st[kRecall] = recall;
      st[kAvgObj] = obj;
      st[kAvgCat] = cat;
      st[kCount] = double(nt);
      ntruth[b] = nt;
    }
  }
}

// ---- kernel 2: anchors ---------------------------------------------------------------------

// The best IoU of box d with the list's truths and the last truth whose key is k.
__device__ __forceinline__ void scan_truths(const TruthBox* list, int64_t nt, const Decoded& d, int64_t k,
                                            double& best, int64_t& win) {
  for (int64_t t = 0; t < nt; ++t) {
    const TruthBox u = list[t];
    best = std::max(best, dk_iou(d.x, d.y, d.w, d.h, u.x, u.y, u.w, u.h));
    if (u.key == k) win = t;
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    region_anchor_kernel(const scalar_t* __restrict__ out, const double* __restrict__ anc, RegionParams p,
                         int64_t B, const TruthBox* __restrict__ boxes, const TruthInfo* __restrict__ info,
                         const int64_t* __restrict__ ntruth, bool use_smem, const double* __restrict__ prior,
                         scalar_t* __restrict__ grad, double* __restrict__ part) {
  using A = acc_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TruthBox* sbox = reinterpret_cast<TruthBox*>(smem_raw);
  const int64_t HW = p.H * p.W, E = 5 + p.C, per_image = p.A * E * HW, N = p.A * HW;
  const int64_t S = gridDim.x, stride = S * kThreads;
  const A ps = static_cast<A>(*prior);  // the warm-up prior's scale, a device scalar (no host read)
  const A cls_scale = static_cast<A>(p.class_scale);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t nt = ntruth[b];
    const TruthBox* gbox = boxes + b * p.T;
    const TruthInfo* ginfo = info + b * p.T;
    if (use_smem) {  // uniform over the block
      for (int64_t t = threadIdx.x; t < nt; t += kThreads) sbox[t] = gbox[t];
      __syncthreads();
    }
    const scalar_t* z = out + b * per_image;
    scalar_t* g = grad + b * per_image;
    double lsum = 0.0, cost = 0.0, anyobj = 0.0;
    for (int64_t k = int64_t(blockIdx.x) * kThreads + threadIdx.x; k < N; k += stride) {
      const int64_t n = k / HW, cell = k - n * HW;
      const int64_t i = cell % p.W, j = cell / p.W;
      const scalar_t* zk = z + n * E * HW + cell;
      auto at = [&](int64_t e) { return to_a<A>(zk[e * HW]); };
      const double aw = anc[2 * n], ah = anc[2 * n + 1];
      const A tx = at(0), ty = at(1), tw = at(2), th = at(3), to = at(4);
      const Decoded d = decode(tx, ty, tw, th, aw, ah, i, j, p.H, p.W);
      double best = 0.0;
      int64_t win = -1;
      if (use_smem) {
        scan_truths(sbox, nt, d, k, best, win);
      } else {
        scan_truths(gbox, nt, d, k, best, win);
      }
      anyobj += double(sigmoid_of(to));
      scalar_t* gk = g + n * E * HW + cell;
      Term<A> ex, ey, ew, eh, eo;
      if (win >= 0) {  // the truth's terms (forward_region_layer's truth loop)
        const TruthBox tb = gbox[win];
        Truth u;
        u.cls = ginfo[win].cls;
        u.x = tb.x;
        u.y = tb.y;
        u.w = tb.w;
        u.h = tb.h;
        u.i = i;  // its key is k: its cell is this one
        u.j = j;
        const BoxTargets bt = box_targets(u, aw, ah, p.H, p.W);
        const A cs = static_cast<A>(coord_scale_of(p, u));
        ex = sigmoid_term(tx, cs, A(bt.tx));
        ey = sigmoid_term(ty, cs, A(bt.ty));
        ew = linear_term(tw, cs, A(bt.tw));
        eh = linear_term(th, cs, A(bt.th));
        const double iou = dk_iou(d.x, d.y, d.w, d.h, u.x, u.y, u.w, u.h);
        eo = sigmoid_term(to, static_cast<A>(p.object_scale), static_cast<A>(p.rescore ? iou : 1.0));
        if (u.cls >= 0) {
          // delta_region_class (softmax): class_scale (p - onehot) for every class
          A m = at(5);
          for (int64_t c = 1; c < p.C; ++c) m = std::max(m, at(5 + c));
          A s = A(0);
          for (int64_t c = 0; c < p.C; ++c) s += math::exp_softmax(at(5 + c) - m);
          const A lse = m + math::log(s);
          for (int64_t c = 0; c < p.C; ++c) {
            const A pc = math::exp_softmax(at(5 + c) - m) / s;
            const A dc = cls_scale * ((c == u.cls ? A(1) : A(0)) - pc);
            gk[(5 + c) * HW] = to_s<scalar_t>(-dc);
            cost += double(dc) * double(dc);
          }
          lsum += double(cls_scale) * double(lse - at(5 + u.cls));
        } else {  // a bad class: NaN class terms, no index
          const A nan = nan_v<A>();
          for (int64_t c = 0; c < p.C; ++c) {
            gk[(5 + c) * HW] = to_s<scalar_t>(nan);
            cost += double(nan);
          }
          lsum += double(nan);
        }
      } else {  // the no-object term and the warm-up prior (forward_region_layer's first loop)
        ex = sigmoid_term(tx, ps, A(0.5));
        ey = sigmoid_term(ty, ps, A(0.5));
        ew = linear_term(tw, ps, A(0));
        eh = linear_term(th, ps, A(0));
        const A s = best > p.thresh ? A(0) : static_cast<A>(p.noobject_scale);
        eo = sigmoid_term(to, s, A(0));
        for (int64_t c = 0; c < p.C; ++c) gk[(5 + c) * HW] = to_s<scalar_t>(0.0f);
      }
      const Term<A> terms[5] = {ex, ey, ew, eh, eo};
#pragma unroll
      for (int e = 0; e < 5; ++e) {
        gk[e * HW] = to_s<scalar_t>(terms[e].grad);
        lsum += double(terms[e].loss);
        cost += double(terms[e].delta2);
      }
    }
    lsum = block_sum(lsum);
    cost = block_sum(cost);
    anyobj = block_sum(anyobj);  // block_sum ends with a barrier: sbox may be rewritten after it
    if (threadIdx.x == 0) {
      double* q = part + (b * S + blockIdx.x) * kNumPart;
      q[kPartLoss] = lsum;
      q[kPartCost] = cost;
      q[kPartAnyObj] = anyobj;
    }
  }
}

// ---- kernel 3: per-image losses and the statistics -----------------------------------------

template <class scalar_t, class stat_t>
__global__ void __launch_bounds__(kThreads)
    region_final_kernel(const double* __restrict__ part, int64_t S, int64_t B, int64_t T, double anchors_total,
                        const TruthInfo* __restrict__ info, const int64_t* __restrict__ ntruth,
                        double* __restrict__ img, scalar_t* __restrict__ loss, stat_t* __restrict__ stats) {
  __shared__ double tot[kNumStats];
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    double l = 0.0, c = 0.0, a = 0.0;
    for (int64_t s = 0; s < S; ++s) {  // slice order
      const double* q = part + (b * S + s) * kNumPart;
      l += q[kPartLoss];
      c += q[kPartCost];
      a += q[kPartAnyObj];
    }
    // a bad class anywhere in the image makes its loss NaN, also where a later truth on the same
    // cell and anchor took that anchor (its NaN class terms then never reach l)
    bool bad = false;
    for (int64_t t = 0; t < ntruth[b]; ++t) bad = bad || info[b * T + t].cls < 0;
    loss[b] = to_s<scalar_t>(bad ? nan_v<double>() : l);
    img[b * kNumStats + kCost] = c;
    img[b * kNumStats + kAvgAnyObj] = a;
  }
  __syncthreads();
  if (threadIdx.x < kNumStats) {  // one statistic per thread, images in order (as the CPU)
    double t = 0.0;
    for (int64_t b = 0; b < B; ++b) t += img[b * kNumStats + threadIdx.x];
    tot[threadIdx.x] = t;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const double cnt = tot[kCount];
    auto avg = [](double v, double n) { return n > 0 ? v / n : 0.0; };
    const double res[kNumStats] = {avg(tot[kAvgIou], cnt), avg(tot[kRecall], cnt),
                                   avg(tot[kAvgObj], cnt), avg(tot[kAvgAnyObj], anchors_total),
                                   avg(tot[kAvgCat], cnt), cnt, tot[kCost]};
#pragma unroll
    for (int s = 0; s < kNumStats; ++s) stats[s] = static_cast<stat_t>(res[s]);
  }
}

// ---- host ----------------------------------------------------------------------------------

inline int64_t align_up(int64_t v) { return (v + 255) / 256 * 256; }

template <class scalar_t>
void run_t(const RegionProblem& r, Tensor& loss_t, Tensor& grad_t, Tensor& stats_t, cudaStream_t stream) {
  using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  STD_TORCH_CHECK(stats_t.scalar_type() == (std::is_same_v<stat_t, double> ? ScalarType::Double : ScalarType::Float),
                  r.op, ": internal error: unexpected stats dtype");
  const RegionParams p = r.p;
  const int64_t B = r.B, T = p.T, HW = p.H * p.W, N = p.A * HW;
  const int64_t per_block = int64_t(kThreads) * kAnchorsPerThread;
  const int64_t S = B > 0 ? std::max<int64_t>(1, std::min<int64_t>((N + per_block - 1) / per_block, kMaxSlices)) : 0;

  // scratch: truth boxes [B, T], truth info [B, T], truth counts [B], per-image stats [B, 7],
  // per-(image, slice) partials [B, S, 3]
  const int64_t off_info = align_up(B * T * int64_t(sizeof(TruthBox)));
  const int64_t off_nt = off_info + align_up(B * T * int64_t(sizeof(TruthInfo)));
  const int64_t off_img = off_nt + align_up(B * int64_t(sizeof(int64_t)));
  const int64_t off_part = off_img + align_up(B * kNumStats * int64_t(sizeof(double)));
  const int64_t bytes = off_part + align_up(B * S * kNumPart * int64_t(sizeof(double)));
  Tensor scratch = torch::stable::empty({bytes}, ScalarType::Byte, std::nullopt, r.output.device());
  unsigned char* base = ptr<unsigned char>(scratch);
  TruthBox* boxes = reinterpret_cast<TruthBox*>(base);
  TruthInfo* info = reinterpret_cast<TruthInfo*>(base + off_info);
  int64_t* ntruth = reinterpret_cast<int64_t*>(base + off_nt);
  double* img = reinterpret_cast<double*>(base + off_img);
  double* part = reinterpret_cast<double*>(base + off_part);

  const scalar_t* out = ptr<const scalar_t>(r.output);
  const double* tg = ptr<const double>(r.targets);
  const double* anc = ptr<const double>(r.anchors);
  if (B > 0) {
    region_truth_kernel<scalar_t><<<static_cast<int>(std::min<int64_t>(B, kMaxGrid)), kThreads, 0, stream>>>(
        out, tg, anc, p, B, boxes, info, ntruth, img);
    check_launch("lossext::yolov2_region_loss truth kernel");
    const bool use_smem = T > 0 && T <= kSmemBudget / int64_t(sizeof(TruthBox));
    const size_t smem = use_smem ? size_t(T) * sizeof(TruthBox) : 0;
    const dim3 grid(static_cast<unsigned>(S), static_cast<unsigned>(std::min<int64_t>(B, kMaxImages)));
    region_anchor_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
        out, anc, p, B, boxes, info, ntruth, use_smem, ptr<const double>(r.prior), ptr<scalar_t>(grad_t), part);
    check_launch("lossext::yolov2_region_loss anchor kernel");
  }
  region_final_kernel<scalar_t, stat_t><<<1, kThreads, 0, stream>>>(
      part, S, B, T, double(B * N), info, ntruth, img, ptr<scalar_t>(loss_t), ptr<stat_t>(stats_t));
  check_launch("lossext::yolov2_region_loss final kernel");
}

}  // namespace

struct RegionCuda {
  static void run(const RegionProblem& r, Tensor& loss, Tensor& grad, Tensor& stats) {
    const int32_t dev = r.output.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(dev);
    cudaStream_t stream = current_stream(dev);
    dispatch_floating(r.output.scalar_type(), r.op,
                      [&](auto tag) { run_t<decltype(tag)>(r, loss, grad, stats, stream); });
  }
};

}  // namespace detection
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::detection::register_region_kernels<lossext::detection::RegionCuda>(m);
}
