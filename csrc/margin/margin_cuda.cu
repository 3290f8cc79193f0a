// CUDA kernels of the margin-softmax family (Device = MarginCuda, see margin_ops.h).
//
// - Row kernels: blocks over rows (grid-stride), and long rows of few-row problems split across
//   several blocks (row_split: the rule, from N, the row length and the SM count). Each thread
//   folds its classes (16-byte packets, fold_row) into an online (max, sum of exp) pair, as
//   Milakov & Gimelshein, "Online normalizer calculation for softmax" (2018), Alg. 3; the pairs
//   are combined in double by a fixed-order block reduction (warp shuffles, then shared memory),
//   and a split row's block partials by one thread in split order. Per-row finishing is in double
//   as on CPU. The backward row kernels split the same way (each block writes its segment).
// - RowStats (lse, z_y, wz, max) and the lse output / backward input are float64 for every input
//   dtype. The target column's margin (one thread per row) is computed in double from a double
//   cosine. The per-element exponents are formed as on CPU from the logit z = r x rounded to the
//   acc type (mul_rn: never contracted into an fma, whose product residual, half an ulp of z,
//   leaves exp's range for huge logits): exp(z - m) in the forward, exp((z - Lh) - Ll) in the
//   backward with lse = Lh + Ll split into two acc-type values.
// - Deterministic: no atomics; every reduction order depends on the sizes only (block and grid
//   sizes are functions of N, C, k, D, and for split rows the SM count), never on timing or on
//   pointer alignment.
// - No host synchronization: the 'mean' divisor and the class-weight sum stay on the device.
// - Bad labels: targets are not validated here (that would need a host sync). A row whose target
//   is neither ignore_index nor in [0, C) never indexes with it: its loss and lse are NaN (so a
//   reduced loss is NaN), its G_i is NaN and its gradient row (and grad row_scale) is NaN; with
//   'mean' the divisor is NaN, so every non-ignored G_i is NaN. In the fused op the NaN row also reaches
//   grad_weight and grad_bias (sums over rows).
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cuda.h>
#include <torch/csrc/stable/library.h>

#include "../common/math.h"
#include "../common/pointwise_cuda.cuh"
#include "margin_ops.h"

namespace lossext {
namespace margin {
namespace {

using cuda_detail::block_sum;
using cuda_detail::check_launch;
using cuda_detail::current_stream;

constexpr int kRowThreads = 256;       // most threads per row block
constexpr int kFinal = cuda_detail::kFinalThreads;
constexpr int64_t kMaxGrid = 65535;    // grid-stride beyond this
constexpr int64_t kBiasSeg = 256;      // rows per partial of the grad_bias column sums

// Data pointers; an absent tensor (nullopt or nullptr) gives nullptr, a present one + off elements.
template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }
template <class T> T* ptr(const Tensor* t) { return t ? ptr<T>(*t) : nullptr; }
template <class T> T* ptr(const std::optional<Tensor>& t, int64_t off = 0) {
  return t ? ptr<T>(*t) + off : nullptr;
}

// Threads per row block: whole warps, about one class per thread for short rows.
inline int row_threads(int64_t n) {
  return n <= 32 ? 32 : (n <= 64 ? 64 : (n <= 128 ? 128 : kRowThreads));
}
inline int row_grid(int64_t rows) { return static_cast<int>(std::min(rows, kMaxGrid)); }
inline int flat_grid(int64_t n, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, kMaxGrid)));
}

template <class T> __device__ __forceinline__ T nan_v() { return std::numeric_limits<T>::quiet_NaN(); }
template <class T> __device__ __forceinline__ T ninf_v() { return -std::numeric_limits<T>::infinity(); }

// Output conversion (half types through float, as on CPU).
template <class scalar_t, class V>
__device__ __forceinline__ scalar_t to_s(V v) {
  if constexpr (std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>) {
    return static_cast<scalar_t>(v);
  } else {
    return static_cast<scalar_t>(static_cast<float>(v));
  }
}

// a * b rounded to the acc type, never contracted with a following add (__fmul_rn, __dmul_rn):
// the logits z = r x, whose rounding the forward's max and both passes' exponents share.
template <class T>
__device__ __forceinline__ T mul_rn(T a, T b) {
  if constexpr (std::is_same_v<T, float>) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
}

// lse (double) as Lh + Ll in the acc type: z - lse = (z - Lh) - Ll.
template <class A>
__device__ __forceinline__ void split_lse(double L, A& Lh, A& Ll) {
  Lh = static_cast<A>(L);
  Ll = static_cast<A>(L - double(Lh));
}

__device__ __forceinline__ bool is_bad(int64_t t, int64_t ignore, int64_t C) {
  return t != ignore && (t < 0 || t >= C);
}

// The fused kernels skip a row whose target is ignore_index or bad. The shard ops (shard: no
// ignore_index) take -1 as a target on another shard: the row counts, with no target column.
__device__ __forceinline__ bool fused_skip(int64_t t, int64_t ignore, int64_t C, bool shard) {
  return shard ? (t != -1 && (t < 0 || t >= C)) : (t == ignore || t < 0 || t >= C);
}

// ---- block reductions (fixed order) --------------------------------------------------------

// Online softmax state: running max m, sum of exp(z - m), and a plain sum of z.
struct Online {
  double m, s, z;
};
static_assert(sizeof(Online) == 3 * sizeof(double), "split partials are stored as 3 doubles");

__device__ __forceinline__ double shfl_down(double v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ __forceinline__ float shfl_down(float v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ __forceinline__ Online shfl_down(const Online& v, int o) {
  return {shfl_down(v.m, o), shfl_down(v.s, o), shfl_down(v.z, o)};
}

// Merge of two online states (Milakov & Gimelshein 2018, Eq. 3); an empty state (s = 0) adds 0.
__device__ __forceinline__ Online online_merge(const Online& a, const Online& b) {
  const double m = a.m < b.m ? b.m : a.m;
  const double s = (a.s == 0.0 ? 0.0 : a.s * exp(a.m - m)) + (b.s == 0.0 ? 0.0 : b.s * exp(b.m - m));
  return {m, s, a.z + b.z};
}

struct MergeOp {
  __device__ __forceinline__ Online operator()(const Online& a, const Online& b) const { return online_merge(a, b); }
};
struct AddOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// Block reduction in a fixed order; blockDim.x a multiple of 32. Result valid in thread 0.
// Every thread of the block must call it (it has __syncthreads).
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T identity, Op op) {
  __shared__ T smem[32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_down(v, o));
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = static_cast<int>(blockDim.x >> 5);
    v = lane < nwarps ? smem[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_down(v, o));
  }
  __syncthreads();  // smem may be reused by a later call
  return v;
}

// One thread's online (max, sum of exp) over its logits z = r x, rounded in the acc type; the
// shifted exponent is z - m, as MarginCpu's online_row. m stays -inf only while every z seen is
// -inf, and those add 0 (never exp(-inf + inf) = NaN).
template <class A>
struct ThreadOnline {
  A m, s, z;
  __device__ __forceinline__ ThreadOnline() : m(ninf_v<A>()), s(A(0)), z(A(0)) {}
  __device__ __forceinline__ void add(A r, A x) {
    const A zz = mul_rn(r, x);
    if (zz > m) {
      // m = -inf: s = 0 and exp(-inf) = 0; x = +inf gives inf - inf = NaN, as the CPU kernel
      s = s * math::exp(m - zz) + math::exp(zz - zz);
      m = zz;
    } else {
      s += zz == ninf_v<A>() ? A(0) : math::exp(zz - m);  // NaN z lands in s
    }
  }
  __device__ __forceinline__ Online to_online() const { return {double(m), double(s), double(z)}; }
};

__device__ __forceinline__ Online online_identity() { return {ninf_v<double>(), 0.0, 0.0}; }


// ---- row columns: 16-byte packets, and long rows split across blocks ------------------------

// Elements per 16-byte packet.
template <class scalar_t>
constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));

__device__ __forceinline__ bool aligned16_dev(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class scalar_t>
using RowPacket = cuda_detail::Packet<scalar_t, kVec<scalar_t>>;

// Packet q of base: one 16-byte load (aligned) or kVec element loads.
template <class scalar_t>
__device__ __forceinline__ RowPacket<scalar_t> load_packet(const scalar_t* base, int64_t q, bool aligned) {
  constexpr int V = kVec<scalar_t>;
  if (aligned) return reinterpret_cast<const RowPacket<scalar_t>*>(base)[q];
  RowPacket<scalar_t> pk;
#pragma unroll
  for (int e = 0; e < V; ++e) pk.v[e] = base[q * V + e];
  return pk;
}

// The columns [j0, j1) of a row that this thread of the block owns: packets of kVec consecutive
// columns from j0, packet p to thread p mod blockDim (in increasing p), then the ragged tail
// [j0 + npk kVec, j1) column by column, stride blockDim. The mapping depends on j0, j1 and
// blockDim only; `aligned` (block-uniform) picks one 16-byte load (store) per packet over kVec
// element ones, so the reduction order and the bits never depend on pointer alignment.
// fold_row calls f(j, x) for each owned column j, x = row[j].
template <class scalar_t, class F>
__device__ __forceinline__ void fold_row(const scalar_t* row, int64_t j0, int64_t j1, F&& f) {
  constexpr int V = kVec<scalar_t>;
  const scalar_t* base = row + j0;
  const int64_t npk = (j1 - j0) / V;
  const bool aligned = aligned16_dev(base);
  for (int64_t q = threadIdx.x; q < npk; q += blockDim.x) {
    const RowPacket<scalar_t> pk = load_packet(base, q, aligned);
#pragma unroll
    for (int e = 0; e < V; ++e) f(j0 + q * V + e, pk.v[e]);
  }
  for (int64_t j = j0 + npk * V + threadIdx.x; j < j1; j += blockDim.x) f(j, row[j]);
}

// out[j] = f(j, in[j]) for each owned column j (fold_row's mapping). in and out may be the same
// row: each element is read and then written by the thread that owns it.
template <class scalar_t, class F>
__device__ __forceinline__ void map_row(const scalar_t* in, scalar_t* out, int64_t j0, int64_t j1, F&& f) {
  constexpr int V = kVec<scalar_t>;
  const scalar_t* ib = in + j0;
  scalar_t* ob = out + j0;
  const int64_t npk = (j1 - j0) / V;
  const bool aligned = aligned16_dev(ib) && aligned16_dev(ob);
  for (int64_t q = threadIdx.x; q < npk; q += blockDim.x) {
    const RowPacket<scalar_t> pk = load_packet(ib, q, aligned);
    RowPacket<scalar_t> po;
#pragma unroll
    for (int e = 0; e < V; ++e) po.v[e] = f(j0 + q * V + e, pk.v[e]);
    if (aligned) {
      reinterpret_cast<RowPacket<scalar_t>*>(ob)[q] = po;
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) ob[q * V + e] = po.v[e];
    }
  }
  for (int64_t j = j0 + npk * V + threadIdx.x; j < j1; j += blockDim.x) out[j] = f(j, in[j]);
}

// out[j0, j1) = v (ignored and bad rows).
template <class scalar_t>
__device__ __forceinline__ void fill_row(scalar_t* out, int64_t j0, int64_t j1, scalar_t v) {
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) out[j] = v;
}

// How a row's columns are cut across the blocks of a row kernel: split s = blockIdx.y owns the
// columns [s seg, min(n, (s + 1) seg)); splits = 1 is one block per row (seg = n).
struct RowSplit {
  int64_t seg;
  int splits;
  __device__ __forceinline__ int64_t begin() const { return int64_t(blockIdx.y) * seg; }
  __device__ __forceinline__ int64_t end(int64_t n) const { return std::min<int64_t>(n, begin() + seg); }
};

constexpr int64_t kBlocksPerSm = 4;   // blocks (of kRowThreads) per SM that a split aims for
constexpr int64_t kSplitCols = 2048;  // fewest columns per split block: 8 per thread

// Streaming multiprocessors of a device, asked once per device (cudaDeviceGetAttribute makes no
// stream work, so it is safe during graph capture too).
inline int64_t sm_count(int32_t dev) {
  static std::array<std::atomic<int>, 64> cache{};  // 0: not asked yet
  const bool cached = dev >= 0 && dev < static_cast<int32_t>(cache.size());
  if (cached) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) (void)cudaGetLastError();  // not left for a later op's launch check
  STD_TORCH_CHECK(err == cudaSuccess && v > 0, "lossext: could not read the multiprocessor count of CUDA device ",
                  dev, ": ", cudaGetErrorString(err));
  if (cached) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

// The split of rows of n columns (issue 8, item 6). With T = kBlocksPerSm * SMs blocks to fill
// the GPU: one block per row when the rows alone fill it (N >= T) or a row is short
// (n < 2 kSplitCols); otherwise S = min(ceil(T / N), n / kSplitCols) blocks per row, each a
// contiguous segment of ceil(n / S) columns rounded up to whole 16-byte packets (so that every
// segment starts on the row's packet grid), and S recounted from that segment. A split row's
// (max, sum) partials are merged by one thread in split order (merge_parts): no atomics, and
// the bits depend on N, n and the SM count only, so they repeat on one GPU model (as cuBLAS's
// do; another SM count may cut the rows elsewhere).
template <class scalar_t>
RowSplit row_split(int64_t N, int64_t n, int32_t dev) {
  const int64_t target = kBlocksPerSm * sm_count(dev);
  if (N >= target || n < 2 * kSplitCols) return {std::max<int64_t>(n, 1), 1};
  int64_t S = std::min<int64_t>({(target + N - 1) / N, n / kSplitCols, kMaxGrid});
  constexpr int64_t V = kVec<scalar_t>;
  int64_t seg = (n + S - 1) / S;
  seg = (seg + V - 1) / V * V;
  S = (n + seg - 1) / seg;
  return {seg, static_cast<int>(S)};
}

// Scratch for the partials of split rows, [N, splits] of `per` doubles each; none for one block per row.
inline std::optional<Tensor> split_parts(const RowSplit& sp, int64_t N, int64_t per, const Tensor& like) {
  if (sp.splits <= 1) return std::nullopt;
  return new_tensor({N * sp.splits * per}, ScalarType::Double, like);
}

inline dim3 split_grid(int64_t N, const RowSplit& sp) {
  return dim3(static_cast<unsigned>(row_grid(N)), static_cast<unsigned>(sp.splits));
}
// Threads of a row block: an unsplit row gets about one 16-byte packet per thread (a packet is
// kVec columns; counting columns would leave most warps idle on short half rows).
template <class scalar_t>
inline int split_threads(int64_t n, const RowSplit& sp) {
  return sp.splits > 1 ? kRowThreads : row_threads((n + kVec<scalar_t> - 1) / kVec<scalar_t>);
}

// A split row's partial states [splits], merged in split order.
__device__ __forceinline__ Online merge_parts(const Online* part, int splits) {
  Online acc = part[0];
  for (int q = 1; q < splits; ++q) acc = online_merge(acc, part[q]);
  return acc;
}

// ---- margin_cross_entropy ------------------------------------------------------------------

// The block's online state over the columns [j0, j1) of a row (its target column t excluded),
// logits z = r x; valid in thread 0. Every thread of the block calls it.
template <bool kW, bool kSum, class scalar_t>
__device__ __forceinline__ Online ce_row_state(const scalar_t* row, const scalar_t* w, int64_t t,
                                               acc_t<scalar_t> r, int64_t j0, int64_t j1) {
  using A = acc_t<scalar_t>;
  ThreadOnline<A> o;
  fold_row(row, j0, j1, [&](int64_t j, scalar_t v) {
    if (j == t) return;
    const A x = static_cast<A>(v);
    o.add(r, x);
    if constexpr (kSum) o.z += (kW ? static_cast<A>(w[j]) : A(1)) * r * x;
  });
  return block_reduce(o.to_online(), online_identity(), MergeOp{});
}

// Row i's stats from the online state of its other columns: the target's logit joins it, in float64.
template <bool kW, class scalar_t>
__device__ __forceinline__ void ce_finish_row(const scalar_t* row, const scalar_t* w, int64_t i, int64_t t,
                                              acc_t<scalar_t> r, const TargetMargin<double>& tm, const Online& red,
                                              double* lse, double* zy, double* wz) {
  using A = acc_t<scalar_t>;
  double f, df;
  tm.apply(double(static_cast<A>(row[t])), f, df);
  const double z_t = acc_logit<A>(double(r) * f);
  double m = red.m, s = red.s;
  online_add(z_t, m, s);
  lse[i] = row_lse(m, s);
  zy[i] = z_t;
  wz[i] = red.z + (kW ? double(static_cast<A>(w[t])) : 1.0) * z_t;
}

// An ignored row's stats (0), or those of a row whose target is bad (NaN).
__device__ __forceinline__ void ce_skip_row(int64_t i, bool ignored, double* lse, double* zy, double* wz) {
  lse[i] = zy[i] = wz[i] = ignored ? 0.0 : nan_v<double>();
}

// kSplit = false: one block per row, thread 0 finishes it. kSplit: block (i, s) writes the
// partial state of its segment to part[i * splits + s]; ce_forward_merge_kernel finishes the row.
template <bool kW, bool kSum, bool kSplit, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    ce_forward_kernel(const scalar_t* __restrict__ cos, const int64_t* __restrict__ tg,
                      const scalar_t* __restrict__ w, const scalar_t* __restrict__ rs, acc_t<scalar_t> scale,
                      TargetMargin<double> tm, int64_t N, int64_t C, int64_t ignore, RowSplit split,
                      Online* __restrict__ part, double* __restrict__ lse, double* __restrict__ zy,
                      double* __restrict__ wz) {
  using A = acc_t<scalar_t>;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t t = tg[i];
    if (t == ignore || t < 0 || t >= C) {  // block-uniform; split rows: the merge kernel writes them
      if (!kSplit && threadIdx.x == 0) ce_skip_row(i, t == ignore, lse, zy, wz);
      continue;
    }
    const scalar_t* row = cos + i * C;
    const A r = rs ? static_cast<A>(rs[i]) : scale;
    const Online red = ce_row_state<kW, kSum>(row, w, t, r, split.begin(), split.end(C));
    if (threadIdx.x == 0) {
      if constexpr (kSplit) {
        part[i * split.splits + blockIdx.y] = red;
      } else {
        ce_finish_row<kW>(row, w, i, t, r, tm, red, lse, zy, wz);
      }
    }
  }
}

// Split rows: one thread per row merges its partials in split order and finishes the row.
template <bool kW, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    ce_forward_merge_kernel(const scalar_t* __restrict__ cos, const int64_t* __restrict__ tg,
                            const scalar_t* __restrict__ w, const scalar_t* __restrict__ rs, acc_t<scalar_t> scale,
                            TargetMargin<double> tm, int64_t N, int64_t C, int64_t ignore, int splits,
                            const Online* __restrict__ part, double* __restrict__ lse, double* __restrict__ zy,
                            double* __restrict__ wz) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const int64_t t = tg[i];
    if (t == ignore || t < 0 || t >= C) {
      ce_skip_row(i, t == ignore, lse, zy, wz);
      continue;
    }
    const A r = rs ? static_cast<A>(rs[i]) : scale;
    ce_finish_row<kW>(cos + i * C, w, i, t, r, tm, merge_parts(part + i * splits, splits), lse, zy, wz);
  }
}

// The backward's per-row constants: r (scale or row_scale), w_y, a = keep w_y + spread sum_j w_j.
template <bool kW, class scalar_t>
struct CeRowGrad {
  using A = acc_t<scalar_t>;
  A r, w_t, a;
  __device__ __forceinline__ CeRowGrad(const scalar_t* w, const scalar_t* rs, A scale, int64_t i, int64_t t, A keep,
                                       A spread, A wsum)
      : r(rs ? static_cast<A>(rs[i]) : scale), w_t(kW ? static_cast<A>(w[t]) : A(1)), a(keep * w_t + spread * wsum) {}
  // The target column's dL/dz_y, with f = its margin function of x_t = cos_iy and df = f'(x_t), in float64.
  __device__ __forceinline__ double target_d(A x_t, A keep, A spread, double L, const TargetMargin<double>& tm,
                                             double& f, double& df) const {
    tm.apply(double(x_t), f, df);
    return target_dlogit(a, keep, spread, w_t, double(r) * f, L);
  }
};

// dL/dcos_ij = G_i r (a p_ij - spread w_j) (j != y), G_i r (a p_iy - keep w_y - spread w_y) f'(cos_iy);
// d row_scale_i = G_i (sum_{j != y} d_j cos_ij + d_y f(cos_iy)). Block (i, s) writes the columns
// of its segment (the target column by the thread that owns it); with kRS its sum_{j != y} d_j
// cos_ij goes to out_rs directly (one block per row) or to part_dr[i * splits + s] (kSplit;
// ce_backward_rs_kernel finishes out_rs).
template <bool kW, bool kRS, bool kSplit, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    ce_backward_kernel(const scalar_t* __restrict__ cos, const int64_t* __restrict__ tg,
                       const scalar_t* __restrict__ w, const scalar_t* __restrict__ rs, acc_t<scalar_t> scale,
                       TargetMargin<double> tm, int64_t N, int64_t C, int64_t ignore,
                       acc_t<scalar_t> keep, acc_t<scalar_t> spread, const double* __restrict__ wsum_p,
                       const double* __restrict__ lse, const acc_t<scalar_t>* __restrict__ g,
                       scalar_t* __restrict__ out, scalar_t* __restrict__ out_rs, RowSplit split,
                       double* __restrict__ part_dr) {
  using A = acc_t<scalar_t>;
  const A wsum = wsum_p ? static_cast<A>(*wsum_p) : static_cast<A>(double(C));
  const int64_t j0 = split.begin(), j1 = split.end(C);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t t = tg[i];
    scalar_t* o = out + i * C;
    if (t == ignore || t < 0 || t >= C) {  // block-uniform
      const scalar_t v = t == ignore ? to_s<scalar_t>(0.0f) : to_s<scalar_t>(nan_v<float>());
      fill_row(o, j0, j1, v);
      if (kRS && !kSplit && threadIdx.x == 0) out_rs[i] = v;
      continue;
    }
    const scalar_t* row = cos + i * C;
    const CeRowGrad<kW, scalar_t> rg(w, rs, scale, i, t, keep, spread, wsum);
    const A r = rg.r, a = rg.a;
    const double L = lse[i];
    A Lh, Ll;  // z - lse = (z - Lh) - Ll, z = r x rounded as in the forward
    split_lse(L, Lh, Ll);
    const A gr = g[i] * r;
    A dr = A(0);
    map_row(row, o, j0, j1, [&](int64_t j, scalar_t v) -> scalar_t {
      const A x = static_cast<A>(v);
      if (j == t) {  // the target column in float64
        double f, df;
        const double d_t = rg.target_d(x, keep, spread, L, tm, f, df);
        return to_s<scalar_t>(target_cos_grad(double(gr) * d_t, df));
      }
      const A d = a * math::exp((mul_rn(r, x) - Lh) - Ll) - spread * (kW ? static_cast<A>(w[j]) : A(1));
      if constexpr (kRS) dr += d * x;
      return to_s<scalar_t>(gr * d);
    });
    if constexpr (kRS) {
      const double dsum = block_reduce(double(dr), 0.0, AddOp{});
      if (threadIdx.x == 0) {
        if constexpr (kSplit) {
          part_dr[i * split.splits + blockIdx.y] = dsum;
        } else {
          double f, df;
          const double d_t = rg.target_d(static_cast<A>(row[t]), keep, spread, L, tm, f, df);
          out_rs[i] = to_s<scalar_t>(double(g[i]) * (dsum + d_t * f));
        }
      }
    }
  }
}

// Split rows with row_scale: one thread per row adds its partial sums in split order.
template <bool kW, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    ce_backward_rs_kernel(const scalar_t* __restrict__ cos, const int64_t* __restrict__ tg,
                          const scalar_t* __restrict__ w, const scalar_t* __restrict__ rs, acc_t<scalar_t> scale,
                          TargetMargin<double> tm, int64_t N, int64_t C, int64_t ignore, acc_t<scalar_t> keep,
                          acc_t<scalar_t> spread, const double* __restrict__ wsum_p, const double* __restrict__ lse,
                          const acc_t<scalar_t>* __restrict__ g, int splits, const double* __restrict__ part_dr,
                          scalar_t* __restrict__ out_rs) {
  using A = acc_t<scalar_t>;
  const A wsum = wsum_p ? static_cast<A>(*wsum_p) : static_cast<A>(double(C));
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const int64_t t = tg[i];
    if (t == ignore || t < 0 || t >= C) {
      out_rs[i] = t == ignore ? to_s<scalar_t>(0.0f) : to_s<scalar_t>(nan_v<float>());
      continue;
    }
    const CeRowGrad<kW, scalar_t> rg(w, rs, scale, i, t, keep, spread, wsum);
    double dsum = 0.0;
    for (int q = 0; q < splits; ++q) dsum += part_dr[i * splits + q];
    double f, df;
    const double d_t = rg.target_d(static_cast<A>(cos[i * C + t]), keep, spread, lse[i], tm, f, df);
    out_rs[i] = to_s<scalar_t>(double(g[i]) * (dsum + d_t * f));
  }
}

// ---- shared --------------------------------------------------------------------------------

// Sum of the class weights in double, fixed order (one block).
template <class scalar_t>
__global__ void __launch_bounds__(kFinal) weight_sum_kernel(const scalar_t* __restrict__ w, int64_t C,
                                                            double* __restrict__ out) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += double(w[j]);
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

// Per-row loss (and lse); with a reduction, block partials of sum loss_i and sum w_y (double).
template <bool kMax, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    finalize_rows_kernel(const int64_t* __restrict__ tg, const scalar_t* __restrict__ w,
                         const double* lse, const double* __restrict__ mx, const double* __restrict__ zy,
                         const double* __restrict__ wz, int64_t N, int64_t C, int64_t ignore, double keep,
                         double spread, const double* __restrict__ wsum_p, bool reduce, double* lse_out,
                         scalar_t* __restrict__ out, double* __restrict__ part_loss,
                         double* __restrict__ part_w) {
  const double wsum = wsum_p ? *wsum_p : double(C);
  double tl = 0.0, tw = 0.0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const int64_t t = tg[i];
    double L = 0.0, w_t = 0.0, li = 0.0;  // ignored row
    if (is_bad(t, ignore, C)) {
      L = w_t = li = nan_v<double>();
    } else if (t != ignore) {
      // lse_out may alias lse: element i is read before it is written, by this thread only.
      L = kMax ? row_lse(mx[i], lse[i]) : lse[i];
      w_t = w ? double(w[t]) : 1.0;
      li = row_loss(keep, spread, wsum, w_t, L, zy[i], wz[i]);
    }
    lse_out[i] = L;
    if (!reduce) out[i] = to_s<scalar_t>(li);
    tl += li;
    tw += w_t;
  }
  if (reduce) {  // grid-uniform
    tl = block_sum(tl);
    tw = block_sum(tw);
    if (threadIdx.x == 0) {
      part_loss[blockIdx.x] = tl;
      part_w[blockIdx.x] = tw;
    }
  }
}

// 'sum' or 'mean' (0 / 0 = NaN for no valid row, as on CPU) from the block partials.
template <class scalar_t>
__global__ void __launch_bounds__(kFinal)
    finalize_total_kernel(const double* __restrict__ part_loss, const double* __restrict__ part_w,
                          int64_t nparts, bool mean, scalar_t* __restrict__ out) {
  double a = 0.0, b = 0.0;
  for (int64_t k = threadIdx.x; k < nparts; k += blockDim.x) {
    a += part_loss[k];
    b += part_w[k];
  }
  a = block_sum(a);
  b = block_sum(b);
  if (threadIdx.x == 0) out[0] = to_s<scalar_t>(mean ? a / b : a);
}

// 'mean' divisor: sum of w_y over valid rows (NaN if a target is bad), one block.
template <class scalar_t>
__global__ void __launch_bounds__(kFinal)
    mean_divisor_kernel(const int64_t* __restrict__ tg, const scalar_t* __restrict__ w, int64_t N, int64_t C,
                        int64_t ignore, double* __restrict__ out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const int64_t t = tg[i];
    if (t == ignore) continue;
    s += is_bad(t, ignore, C) ? nan_v<double>() : (w ? double(w[t]) : 1.0);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

// G_i = dReduced/dloss_i (0 if ignored, NaN if the target is bad); w_y is in the row's math.
template <class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    row_grad_scale_kernel(const scalar_t* __restrict__ go, const int64_t* __restrict__ tg,
                          const scalar_t* __restrict__ /*w*/, int64_t N, int64_t C, int64_t ignore, bool none,
                          const double* __restrict__ div_p, acc_t<scalar_t>* __restrict__ G) {
  using A = acc_t<scalar_t>;
  const double div = div_p ? *div_p : 1.0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const int64_t t = tg[i];
    if (t == ignore) {
      G[i] = A(0);
    } else if (is_bad(t, ignore, C)) {
      G[i] = nan_v<A>();
    } else {
      const double gi = none ? double(static_cast<A>(go[i])) : double(static_cast<A>(go[0])) / div;
      G[i] = static_cast<A>(gi);
    }
  }
}

// 1 / max(|v_r|, eps), one block per row.
template <class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    inv_norms_kernel(const scalar_t* __restrict__ v, int64_t R, int64_t D, acc_t<scalar_t>* __restrict__ out) {
  using A = acc_t<scalar_t>;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const scalar_t* row = v + r * D;
    A ss = A(0);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A x = static_cast<A>(row[j]);
      ss += x * x;
    }
    ss = block_reduce(ss, A(0), AddOp{});
    if (threadIdx.x == 0) {
      const A n = std::sqrt(ss);
      out[r] = A(1) / (n < A(kNormEps) ? A(kNormEps) : n);
    }
  }
}

// out_r = inv_norm_r (g_r - inv_norm_r^2 (v_r . g_r) v_r); g and out may be the same memory (no __restrict__):
// each element is read and then written by the same thread, after the row's dot product.
template <bool kNorm, class gscalar_t, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    project_rows_kernel(const gscalar_t* g, const scalar_t* __restrict__ v,
                        const acc_t<scalar_t>* __restrict__ rn, scalar_t* out, int64_t R, int64_t D) {
  using A = acc_t<scalar_t>;
  __shared__ A coef_s;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const gscalar_t* gr = g + r * D;
    const scalar_t* vr = v + r * D;
    scalar_t* orow = out + r * D;
    A coef = A(0), post = A(1);
    if constexpr (kNorm) {
      A dot = A(0);
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dot += static_cast<A>(gr[j]) * static_cast<A>(vr[j]);
      dot = block_reduce(dot, A(0), AddOp{});
      if (threadIdx.x == 0) coef_s = rn[r] * rn[r] * dot;
      __syncthreads();
      coef = coef_s;  // rewritten only after the next row's block_reduce barriers
      post = rn[r];
    }
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
      orow[j] = to_s<scalar_t>(post * (static_cast<A>(gr[j]) - coef * static_cast<A>(vr[j])));
  }
}

// out_r = s_r v_r (rows of D), element-wise over R x D.
template <class scalar_t>
__global__ void __launch_bounds__(cuda_detail::kThreads)
    scale_rows_kernel(const scalar_t* __restrict__ v, const acc_t<scalar_t>* __restrict__ sc, int64_t n, int64_t D,
                      scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride)
    out[j] = to_s<scalar_t>(sc[j / D] * static_cast<A>(v[j]));
}

template <class scalar_t>
__global__ void __launch_bounds__(cuda_detail::kThreads)
    add_into_kernel(acc_t<scalar_t>* __restrict__ acc, const scalar_t* __restrict__ x, int64_t n) {
  using A = acc_t<scalar_t>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride)
    acc[j] += static_cast<A>(x[j]);
}

// ---- fused linear --------------------------------------------------------------------------

// The chunk's logit before scale, P_ij + b_j (P_ij the cosine itself with normalize, no bias),
// from p = P_ij.
template <class A, class scalar_t>
__device__ __forceinline__ A chunk_value(scalar_t p, int64_t j, const scalar_t* bias) {
  return static_cast<A>(p) + (bias ? static_cast<A>(bias[j]) : A(0));
}

// The block's online state over the columns [j0, j1) of a chunk row (the target column tl
// excluded), logits z = scale (P_ij + b_j); valid in thread 0. Every thread of the block calls it.
template <bool kSum, class scalar_t>
__device__ __forceinline__ Online fused_row_state(const scalar_t* row, const scalar_t* bias, int64_t tl,
                                                  acc_t<scalar_t> scale, int64_t j0, int64_t j1) {
  using A = acc_t<scalar_t>;
  ThreadOnline<A> o;
  fold_row(row, j0, j1, [&](int64_t j, scalar_t v) {
    if (j == tl) return;
    const A z = mul_rn(scale, chunk_value<A>(v, j, bias));
    o.add(A(1), z);  // 1 z = z, as the CPU's online_row with r = 1
    if constexpr (kSum) o.z += z;
  });
  return block_reduce(o.to_online(), online_identity(), MergeOp{});
}

__device__ __forceinline__ void fused_init_row(int64_t i, double* ssum, double* smax, double* zy, double* wz) {
  smax[i] = ninf_v<double>();
  ssum[i] = zy[i] = wz[i] = 0.0;
}

// Folds the chunk's state red of row i (its other columns) into the running (max, sum); the
// target column, when in the chunk (here), joins with its margin logit in float64.
template <bool kSum, class scalar_t>
__device__ __forceinline__ void fused_finish_row(const scalar_t* row, const scalar_t* bias, int64_t i, int64_t tl,
                                                 bool here, acc_t<scalar_t> scale, const TargetMargin<double>& tm,
                                                 const Online& red, double* ssum, double* smax, double* zy,
                                                 double* wz) {
  using A = acc_t<scalar_t>;
  const Online cur = online_merge({smax[i], ssum[i], 0.0}, red);
  double m = cur.m, s = cur.s, sz = red.z;
  if (here) {  // the target's cosine (or logit) and margin in float64
    double f, df;
    tm.apply(fused_target_cos<A>(row, tl, bias), f, df);
    const double z_t = acc_logit<A>(double(scale) * f);
    online_add(z_t, m, s);
    zy[i] = z_t;
    sz += z_t;
  }
  smax[i] = m;
  ssum[i] = s;
  if (kSum) wz[i] += sz;
}

// Folds the chunk's columns [c0, c0 + k) into the running (max, sum) of each row; the target
// column (if in the chunk) gets its margin. State is initialized when c0 == 0. Ignored and bad
// rows are left at the initial state (finalize gives them 0 / NaN). kSplit = false: one block
// per row, whose thread 0 initializes and updates the state. kSplit: block (i, s) writes its
// segment's partial state to part[i * splits + s] and fused_forward_merge_kernel updates the row.
template <bool kSum, bool kSplit, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    fused_forward_kernel(const scalar_t* __restrict__ P, int64_t k, int64_t c0, const int64_t* __restrict__ tg,
                         int64_t N, int64_t C, int64_t ignore, bool shard, const scalar_t* __restrict__ bias,
                         acc_t<scalar_t> scale, TargetMargin<double> tm, RowSplit split, Online* __restrict__ part,
                         double* __restrict__ ssum, double* __restrict__ smax, double* __restrict__ zy,
                         double* __restrict__ wz) {
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    if (!kSplit && c0 == 0 && threadIdx.x == 0) fused_init_row(i, ssum, smax, zy, wz);
    const int64_t t = tg[i];
    if (fused_skip(t, ignore, C, shard)) continue;  // block-uniform
    const int64_t tl = t - c0;  // target column in this chunk, if in [0, k)
    const scalar_t* row = P + i * k;
    const Online red = fused_row_state<kSum>(row, bias, tl, scale, split.begin(), split.end(k));
    if (threadIdx.x == 0) {  // (unsplit: the same thread that initialized the state)
      if constexpr (kSplit) {
        part[i * split.splits + blockIdx.y] = red;
      } else {
        fused_finish_row<kSum>(row, bias, i, tl, tl >= 0 && tl < k, scale, tm, red, ssum, smax, zy, wz);
      }
    }
  }
}

// Split rows: one thread per row merges the chunk's partials in split order into the row's state.
template <bool kSum, class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    fused_forward_merge_kernel(const scalar_t* __restrict__ P, int64_t k, int64_t c0, const int64_t* __restrict__ tg,
                               int64_t N, int64_t C, int64_t ignore, bool shard, const scalar_t* __restrict__ bias,
                               acc_t<scalar_t> scale, TargetMargin<double> tm, int splits,
                               const Online* __restrict__ part, double* __restrict__ ssum, double* __restrict__ smax,
                               double* __restrict__ zy, double* __restrict__ wz) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    if (c0 == 0) fused_init_row(i, ssum, smax, zy, wz);
    const int64_t t = tg[i];
    if (fused_skip(t, ignore, C, shard)) continue;
    const int64_t tl = t - c0;
    fused_finish_row<kSum>(P + i * k, bias, i, tl, tl >= 0 && tl < k, scale, tm, merge_parts(part + i * splits, splits),
                           ssum, smax, zy, wz);
  }
}

// P (in: x W_c^T) becomes dLoss/dP in place; each element is read then written by one thread
// (the target column by the thread that owns it). Block (i, s) takes the columns of its segment.
template <class scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    fused_backward_kernel(scalar_t* __restrict__ P, int64_t k, int64_t c0, const int64_t* __restrict__ tg,
                          int64_t N, int64_t C, int64_t ignore, bool shard, const scalar_t* __restrict__ bias,
                          const double* __restrict__ lse, const acc_t<scalar_t>* __restrict__ g,
                          acc_t<scalar_t> scale, acc_t<scalar_t> keep, acc_t<scalar_t> spread, acc_t<scalar_t> a,
                          TargetMargin<double> tm, RowSplit split) {
  using A = acc_t<scalar_t>;
  const int64_t j0 = split.begin(), j1 = split.end(k);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    scalar_t* row = P + i * k;
    const int64_t t = tg[i];
    if (fused_skip(t, ignore, C, shard)) {
      fill_row(row, j0, j1, !shard && t == ignore ? to_s<scalar_t>(0.0f) : to_s<scalar_t>(nan_v<float>()));
      continue;
    }
    const int64_t tl = t - c0;  // matches a column only when the target is in the chunk
    const double L = lse[i];
    A Lh, Ll;  // z - lse = (z - Lh) - Ll, z = scale (P + b) rounded as in the forward
    split_lse(L, Lh, Ll);
    const A gs = g[i] * scale;
    map_row(row, row, j0, j1, [&](int64_t j, scalar_t v) -> scalar_t {
      if (j == tl) {  // the target column in float64 (exp may overflow there: its margin logit is lower)
        double f, df;
        tm.apply(fused_target_cos<A>(row, j, bias), f, df);  // row[j] is written after this returns
        const double d_t = target_dlogit(a, keep, spread, 1.0, double(scale) * f, L);
        return to_s<scalar_t>(target_cos_grad(double(gs) * d_t, df));
      }
      const A e = a * math::exp((mul_rn(scale, chunk_value<A>(v, j, bias)) - Lh) - Ll) - spread;
      return to_s<scalar_t>(gs * e);
    });
  }
}

// grad_bias column sums, stage 1: part[s, j] = sum of P[i, j] over rows of segment s, in row order.
template <class scalar_t>
__global__ void __launch_bounds__(cuda_detail::kThreads)
    colsum_partial_kernel(const scalar_t* __restrict__ P, int64_t N, int64_t k, int64_t nseg,
                          double* __restrict__ part) {
  const int64_t jstride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t s = blockIdx.y; s < nseg; s += gridDim.y) {
    const int64_t i0 = s * kBiasSeg, i1 = std::min<int64_t>(N, i0 + kBiasSeg);
    for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += jstride) {
      double acc = 0.0;
      for (int64_t i = i0; i < i1; ++i) acc += double(P[i * k + j]);
      part[s * k + j] = acc;
    }
  }
}

// Stage 2: db[j] = sum over segments in order.
template <class scalar_t>
__global__ void __launch_bounds__(cuda_detail::kThreads)
    colsum_final_kernel(const double* __restrict__ part, int64_t nseg, int64_t k, scalar_t* __restrict__ db) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    double acc = 0.0;
    for (int64_t s = 0; s < nseg; ++s) acc += part[s * k + j];
    db[j] = to_s<scalar_t>(acc);
  }
}

// Device-resident sum of class weights (nullptr without weights: the kernels use C).
template <class scalar_t>
std::optional<Tensor> weight_sum(const scalar_t* w, int64_t C, const Tensor& like, cudaStream_t stream) {
  if (w == nullptr) return std::nullopt;
  Tensor out = new_tensor({1}, ScalarType::Double, like);
  weight_sum_kernel<scalar_t><<<1, kFinal, 0, stream>>>(w, C, ptr<double>(out));
  check_launch("lossext margin weight_sum kernel");
  return out;
}

// ---- host launch helpers -------------------------------------------------------------------

// Calls f(scalar_t{}, stream) for dtype st (an unsupported one throws, naming op), with where's
// device current (the guard lives until f returns) and stream that device's current stream.
template <class F>
void on_device(const Tensor& where, ScalarType st, const char* op, F&& f) {
  const int32_t dev = where.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  cudaStream_t stream = current_stream(dev);
  dispatch_floating(st, op, [&](auto tag) { f(tag, stream); });
}

// The same in t's own dtype.
template <class F>
void on_device(const Tensor& t, const char* op, F&& f) {
  on_device(t, t.scalar_type(), op, std::forward<F>(f));
}

// margin_cross_entropy in cos's dtype on cos's device: calls f(scalar_t{}, stream, w) with w the
// class weights (nullptr when absent). Nothing for no rows.
template <class F>
void on_ce(const CeProblem& p, const char* op, F&& f) {
  if (p.spec.N == 0) return;
  on_device(p.cos, op, [&](auto tag, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    f(tag, stream, ptr<const scalar_t>(p.weight));
  });
}

// A fused chunk (columns [c0, c0 + k)) in x's dtype on x's device: calls f(scalar_t{}, stream,
// bias) with bias the chunk's slice of bias (nullptr when absent). Nothing for no rows or no
// columns.
template <class F>
void on_chunk(const FusedProblem& p, int64_t k, int64_t c0, const char* op, F&& f) {
  if (p.spec.N == 0 || k == 0) return;
  on_device(p.x, op, [&](auto tag, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    f(tag, stream, ptr<const scalar_t>(p.bias, c0));
  });
}

}  // namespace

struct MarginCuda {
  // ---- margin_cross_entropy --------------------------------------------------------------
  static void ce_forward(const CeProblem& p, RowStats& st) {
    const LossSpec& s = p.spec;
    on_ce(p, "lossext::margin_cross_entropy", [&](auto tag, cudaStream_t stream, auto w) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      with_bool(w != nullptr, [&](auto kW) {
        with_bool(s.smoothing > 0.0, [&](auto kSum) {
          const RowSplit sp = row_split<scalar_t>(s.N, s.C, p.cos.get_device_index());
          const std::optional<Tensor> part = split_parts(sp, s.N, 3, p.cos);
          Online* pp = part ? reinterpret_cast<Online*>(ptr<double>(*part)) : nullptr;
          const scalar_t* cos = ptr<const scalar_t>(p.cos);
          const int64_t* tg = ptr<const int64_t>(p.target);
          const scalar_t* rs = ptr<const scalar_t>(p.row_scale);
          const A scale = static_cast<A>(s.scale);
          const auto tm = s.target_margin<double>();
          double* lse = ptr<double>(st.lse);
          double* zy = ptr<double>(st.zy);
          double* wz = ptr<double>(st.wz);
          with_bool(sp.splits > 1, [&](auto kSplit) {
            ce_forward_kernel<kW.value, kSum.value, kSplit.value, scalar_t>
                <<<split_grid(s.N, sp), split_threads<scalar_t>(s.C, sp), 0, stream>>>(
                    cos, tg, w, rs, scale, tm, s.N, s.C, s.ignore_index, sp, pp, lse, zy, wz);
            check_launch("lossext::margin_cross_entropy forward kernel");
          });
          if (sp.splits > 1) {
            ce_forward_merge_kernel<kW.value, scalar_t><<<flat_grid(s.N, kRowThreads), kRowThreads, 0, stream>>>(
                cos, tg, w, rs, scale, tm, s.N, s.C, s.ignore_index, sp.splits, pp, lse, zy, wz);
            check_launch("lossext::margin_cross_entropy forward merge kernel");
          }
        });
      });
    });
  }

  // No one-pass kernel on CUDA yet: the forward's and the backward's kernels in turn.
  static void ce_forward_with_grad(const CeProblem& p, const Tensor& G, RowStats& st, Tensor& grad,
                                   Tensor* grad_rs) {
    ce_forward_then_backward<MarginCuda>(p, G, st, grad, grad_rs);
  }

  static void ce_backward(const CeProblem& p, const Tensor& G, Tensor& grad, Tensor* grad_rs) {
    const LossSpec& s = p.spec;
    on_ce(p, "lossext::margin_cross_entropy_backward", [&](auto tag, cudaStream_t stream, auto w) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const std::optional<Tensor> wsum = weight_sum(w, s.C, p.cos, stream);
      scalar_t* out_rs = ptr<scalar_t>(grad_rs);
      with_bool(w != nullptr, [&](auto kW) {
        with_bool(out_rs != nullptr, [&](auto kRS) {
          const RowSplit sp = row_split<scalar_t>(s.N, s.C, p.cos.get_device_index());
          const std::optional<Tensor> part = kRS.value ? split_parts(sp, s.N, 1, p.cos) : std::nullopt;
          double* pd = ptr<double>(part);
          const scalar_t* cos = ptr<const scalar_t>(p.cos);
          const int64_t* tg = ptr<const int64_t>(p.target);
          const scalar_t* rs = ptr<const scalar_t>(p.row_scale);
          const A scale = static_cast<A>(s.scale), keep = A(s.keep()), spread = A(s.spread());
          const auto tm = s.target_margin<double>();
          const double* ws = ptr<const double>(wsum);
          const double* lse = ptr<const double>(*p.lse);
          const A* g = ptr<const A>(G);
          with_bool(sp.splits > 1, [&](auto kSplit) {
            ce_backward_kernel<kW.value, kRS.value, kSplit.value, scalar_t>
                <<<split_grid(s.N, sp), split_threads<scalar_t>(s.C, sp), 0, stream>>>(
                    cos, tg, w, rs, scale, tm, s.N, s.C, s.ignore_index, keep, spread, ws, lse, g,
                    ptr<scalar_t>(grad), out_rs, sp, pd);
            check_launch("lossext::margin_cross_entropy_backward kernel");
          });
          if (kRS.value && sp.splits > 1) {
            ce_backward_rs_kernel<kW.value, scalar_t><<<flat_grid(s.N, kRowThreads), kRowThreads, 0, stream>>>(
                cos, tg, w, rs, scale, tm, s.N, s.C, s.ignore_index, keep, spread, ws, lse, g, sp.splits, pd,
                out_rs);
            check_launch("lossext::margin_cross_entropy_backward row_scale kernel");
          }
        });
      });
    });
  }

  // ---- shared -------------------------------------------------------------------------------
  static void finalize(const LossSpec& s, const RowStats& st, const Tensor& target, const Tensor* class_weight,
                       Tensor& loss, Tensor& lse_out) {
    check_weight_type(class_weight, loss, "finalize");
    on_device(loss, "lossext::margin finalize", [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      const scalar_t* w = ptr<const scalar_t>(class_weight);
      const bool reduce = s.reduction != Reduction::None;
      const int blocks = static_cast<int>(
          std::max<int64_t>(1, std::min<int64_t>(cuda_detail::kMaxBlocks, (s.N + kRowThreads - 1) / kRowThreads)));
      std::optional<Tensor> parts;
      double* part_loss = nullptr;
      double* part_w = nullptr;
      if (reduce) {
        parts = new_tensor({2 * int64_t(blocks)}, ScalarType::Double, loss);
        part_loss = ptr<double>(parts);
        part_w = part_loss + blocks;
      }
      if (s.N > 0) {
        const std::optional<Tensor> wsum = weight_sum(w, s.C, loss, stream);
        with_bool(st.max.has_value(), [&](auto kMax) {
          finalize_rows_kernel<kMax.value, scalar_t><<<blocks, kRowThreads, 0, stream>>>(
              ptr<const int64_t>(target), w, ptr<const double>(st.lse), ptr<const double>(st.max),
              ptr<const double>(st.zy), ptr<const double>(st.wz), s.N, s.C, s.ignore_index, s.keep(), s.spread(),
              ptr<const double>(wsum), reduce, ptr<double>(lse_out), ptr<scalar_t>(loss), part_loss, part_w);
          check_launch("lossext::margin finalize kernel");
        });
      }
      if (reduce) {
        finalize_total_kernel<scalar_t><<<1, kFinal, 0, stream>>>(
            part_loss, part_w, s.N > 0 ? blocks : 0, s.reduction == Reduction::Mean, ptr<scalar_t>(loss));
        check_launch("lossext::margin finalize_total kernel");
      }
    });
  }

  static void row_grad_scale(const LossSpec& s, const Tensor& grad_output, const Tensor& target,
                             const Tensor* class_weight, Tensor& G) {
    check_weight_type(class_weight, grad_output, "row_grad_scale");
    if (s.N == 0) return;
    on_device(G, grad_output.scalar_type(), s.op, [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const scalar_t* w = ptr<const scalar_t>(class_weight);
      const int64_t* tg = ptr<const int64_t>(target);
      std::optional<Tensor> div;
      if (s.reduction == Reduction::Mean) {
        div = new_tensor({1}, ScalarType::Double, G);
        mean_divisor_kernel<scalar_t><<<1, kFinal, 0, stream>>>(tg, w, s.N, s.C, s.ignore_index, ptr<double>(div));
        check_launch("lossext::margin mean_divisor kernel");
      }
      row_grad_scale_kernel<scalar_t><<<flat_grid(s.N, kRowThreads), kRowThreads, 0, stream>>>(
          ptr<const scalar_t>(grad_output), tg, w, s.N, s.C, s.ignore_index, s.reduction == Reduction::None,
          ptr<const double>(div), ptr<A>(G));
      check_launch("lossext::margin row_grad_scale kernel");
    });
  }

  static void inv_norms(const Tensor& v, Tensor& out) {
    const int64_t R = v.size(0), D = v.size(1);
    if (R == 0) return;
    on_device(v, "lossext::margin inv_norms", [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      inv_norms_kernel<scalar_t><<<row_grid(R), row_threads(D), 0, stream>>>(ptr<const scalar_t>(v), R, D,
                                                                              ptr<A>(out));
      check_launch("lossext::margin inv_norms kernel");
    });
  }

  // ---- fused linear ------------------------------------------------------------------------
  static void fused_forward_chunk(const FusedProblem& p, const Tensor& P, int64_t c0, RowStats& st) {
    const LossSpec& s = p.spec;
    const int64_t k = P.size(1);
    on_chunk(p, k, c0, "lossext::fused_linear_margin_cross_entropy", [&](auto tag, cudaStream_t stream, auto bias) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const RowSplit sp = row_split<scalar_t>(s.N, k, p.x.get_device_index());
      const std::optional<Tensor> part = split_parts(sp, s.N, 3, p.x);
      Online* pp = part ? reinterpret_cast<Online*>(ptr<double>(*part)) : nullptr;
      const scalar_t* Pp = ptr<const scalar_t>(P);
      const int64_t* tg = ptr<const int64_t>(p.target);
      const A scale = static_cast<A>(s.scale);
      const auto tm = s.target_margin<double>();
      double* ssum = ptr<double>(st.lse);
      double* smax = ptr<double>(*st.max);
      double* zy = ptr<double>(st.zy);
      double* wz = ptr<double>(st.wz);
      with_bool(s.smoothing > 0.0, [&](auto kSum) {
        with_bool(sp.splits > 1, [&](auto kSplit) {
          fused_forward_kernel<kSum.value, kSplit.value, scalar_t><<<split_grid(s.N, sp), split_threads<scalar_t>(k, sp), 0, stream>>>(
              Pp, k, c0, tg, s.N, s.C, s.ignore_index, s.shard, bias, scale, tm, sp, pp, ssum, smax, zy, wz);
          check_launch("lossext::fused_linear_margin_cross_entropy chunk kernel");
        });
        if (sp.splits > 1) {
          fused_forward_merge_kernel<kSum.value, scalar_t><<<flat_grid(s.N, kRowThreads), kRowThreads, 0, stream>>>(
              Pp, k, c0, tg, s.N, s.C, s.ignore_index, s.shard, bias, scale, tm, sp.splits, pp, ssum, smax, zy, wz);
          check_launch("lossext::fused_linear_margin_cross_entropy chunk merge kernel");
        }
      });
    });
  }

  static void fused_backward_chunk(const FusedProblem& p, Tensor& P, int64_t c0, const Tensor& G,
                                   Tensor* grad_bias) {
    const LossSpec& s = p.spec;
    const int64_t k = P.size(1);
    on_chunk(p, k, c0, "lossext::fused_linear_margin_cross_entropy_backward",
             [&](auto tag, cudaStream_t stream, auto bias) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      const A keep = A(s.keep()), spread = A(s.spread());
      const A a = keep + spread * A(s.C);
      scalar_t* Pp = ptr<scalar_t>(P);
      const RowSplit sp = row_split<scalar_t>(s.N, k, p.x.get_device_index());
      fused_backward_kernel<scalar_t><<<split_grid(s.N, sp), split_threads<scalar_t>(k, sp), 0, stream>>>(
          Pp, k, c0, ptr<const int64_t>(p.target), s.N, s.C, s.ignore_index, s.shard, bias, ptr<const double>(*p.lse),
          ptr<const A>(G), static_cast<A>(s.scale), keep, spread, a, s.target_margin<double>(), sp);
      check_launch("lossext::fused_linear_margin_cross_entropy_backward chunk kernel");
      if (grad_bias) {
        // column sums in a fixed row order: segments of kBiasSeg rows, then segments in order
        const int64_t nseg = (s.N + kBiasSeg - 1) / kBiasSeg;
        Tensor part = new_tensor({nseg * k}, ScalarType::Double, P);
        const dim3 grid(static_cast<unsigned>(flat_grid(k, cuda_detail::kThreads)),
                        static_cast<unsigned>(std::min<int64_t>(nseg, kMaxGrid)));
        colsum_partial_kernel<scalar_t><<<grid, cuda_detail::kThreads, 0, stream>>>(Pp, s.N, k, nseg,
                                                                                  ptr<double>(part));
        check_launch("lossext::fused_linear_margin_cross_entropy_backward bias partial kernel");
        colsum_final_kernel<scalar_t><<<flat_grid(k, cuda_detail::kThreads), cuda_detail::kThreads, 0, stream>>>(
            ptr<const double>(part), nseg, k, ptr<scalar_t>(*grad_bias) + c0);
        check_launch("lossext::fused_linear_margin_cross_entropy_backward bias kernel");
      }
    });
  }

  static void project_rows(const Tensor& g, const Tensor& v, const Tensor* inv_norm, Tensor& out) {
    const int64_t R = g.size(0), D = g.size(1);
    if (R == 0 || D == 0) return;
    on_device(out, "lossext::margin project_rows", [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      auto run = [&](auto gtag) {
        using gscalar_t = decltype(gtag);
        with_bool(inv_norm != nullptr, [&](auto kNorm) {
          project_rows_kernel<kNorm.value, gscalar_t, scalar_t><<<row_grid(R), row_threads(D), 0, stream>>>(
              ptr<const gscalar_t>(g), ptr<const scalar_t>(v), ptr<const A>(inv_norm), ptr<scalar_t>(out), R, D);
          check_launch("lossext::margin project_rows kernel");
        });
      };
      if (g.scalar_type() == out.scalar_type()) run(scalar_t{}); else run(A{});
    });
  }

  static void scale_rows(const Tensor& v, const Tensor& sc, Tensor& out) {
    const int64_t n = v.numel(), D = v.size(1);
    if (n == 0) return;
    on_device(v, "lossext::margin scale_rows", [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      scale_rows_kernel<scalar_t><<<flat_grid(n, cuda_detail::kThreads), cuda_detail::kThreads, 0, stream>>>(
          ptr<const scalar_t>(v), ptr<const A>(sc), n, D, ptr<scalar_t>(out));
      check_launch("lossext::margin scale_rows kernel");
    });
  }

  // acc += a b by cuBLAS on the current stream (aten::addmm.out; deterministic for fixed shapes).
  static void addmm_into(Tensor& acc, const Tensor& a, const Tensor& b) {
    if (acc.numel() == 0) return;
    torch::stable::accelerator::DeviceGuard guard(acc.get_device_index());
    STD_TORCH_CHECK(aoti_torch_cuda_addmm_out(acc.get(), acc.get(), a.get(), b.get(), 1.0, 1.0) == AOTI_TORCH_SUCCESS,
                    "lossext: aten::addmm.out failed");
  }

  static void add_into(Tensor& acc, const Tensor& t) {
    const int64_t n = t.numel();
    if (n == 0) return;
    on_device(t, "lossext::margin add_into", [&](auto tag, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using A = acc_t<scalar_t>;
      add_into_kernel<scalar_t><<<flat_grid(n, cuda_detail::kThreads), cuda_detail::kThreads, 0, stream>>>(
          ptr<A>(acc), ptr<const scalar_t>(t), n);
      check_launch("lossext::margin add_into kernel");
    });
  }
};

}  // namespace margin
}  // namespace lossext

STABLE_TORCH_LIBRARY_IMPL(lossext, CUDA, m) {
  lossext::margin::register_margin_kernels<lossext::margin::MarginCuda>(m);
}
