// Op bodies of the margin-softmax family, generic over the device (MarginCpu or MarginCuda).
// Host code only: checks, layouts, allocations and the class-chunk loop of the fused op.
// margin_cpu.cpp and margin_cuda.cu register them; margin_schema.cpp declares the schemas.
//
// A Device provides (all tensors contiguous; "acc" tensors are float32, or float64 for
// float64 inputs; N rows, C classes, D features):
//   ce_forward(const CeProblem&, RowStats&)            fills the row stats of margin CE
//   ce_backward(const CeProblem&, const Tensor& G, Tensor& grad_cos, Tensor* grad_row_scale)
//   ce_forward_with_grad(const CeProblem&, const Tensor& G, RowStats&, Tensor& grad_cos,
//                        Tensor* grad_row_scale)   both of the above in one call (the CPU's
//                                                  float kernels: one read of each row)
//   finalize(const LossSpec&, const RowStats&, const Tensor& target, const Tensor* class_weight,
//            Tensor& loss, Tensor& lse)               loss_i, the reduction, lse_i (RowStats and
//                                                     lse are float64 for every input dtype), the
//                                                     loss written in its own dtype (the fused op's:
//                                                     fused_loss_type); class_weight has that dtype
//   row_grad_scale(const LossSpec&, const Tensor& grad_output, const Tensor& target,
//                  const Tensor* class_weight, Tensor& G)  G_i = dReducedLoss/dloss_i (0 if ignored),
//                                                     read in grad_output's dtype; class_weight has it
//   inv_norms(const Tensor& v [R, D], Tensor& out acc [R])  1 / max(|v_r|, 1e-12)
//   scale_rows(const Tensor& v [R, D], const Tensor& s acc [R], Tensor& out [R, D])  out_r = s_r v_r
//   fused_forward_chunk(const FusedProblem&, const Tensor& P [N, k], int64_t c0, RowStats&)
//   fused_backward_chunk(const FusedProblem&, Tensor& P [N, k] (in: the chunk's logits before
//                        scale, out: dLoss/dP), int64_t c0, const Tensor& G, Tensor* grad_bias [C])
//   project_rows(const Tensor& g [R, D], const Tensor& v [R, D], const Tensor* inv_norm [R],
//                Tensor& out [R, D])   out_r = r_r (g_r - r_r^2 (v_r . g_r) v_r), r = inv_norm:
//                                      the gradient wrt v_r of g_r = dL/d(v_r / |v_r|) (g_r if no norm)
//   add_into(Tensor& acc [N, D], const Tensor& t [N, D])     acc += t
//   addmm_into(Tensor& acc [N, D], const Tensor& a [N, k], const Tensor& b [k, D])  acc += a b
//                                      (same dtype: float32 and float64 inputs)
//
// The fused op with normalize multiplies normalized rows: P = (x_i / |x_i|) . (w_j / |w_j|) is the
// cosine itself, in [-1, 1] for every dtype (x W^T first and the norms after overflowed float16
// for norms ~ 300), and the backward's dLoss/dP = G s (p - y) carries no 1 / (|x| |w|) factor
// (which underflowed in float16): the norms enter in float32 in project_rows.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>

#include "../common/alloc.h"
#include "../common/checks.h"
#include "margin_math.h"

namespace lossext {
namespace margin {

constexpr double kNormEps = 1e-12;  // as torch.nn.functional.normalize

// The loss part shared by both ops: label smoothing, ignore_index, reduction, margin.
struct LossSpec {
  const char* op;  // the op's name, "lossext::<op>", for the messages
  double scale, m1, m2, m3, lambda, smoothing;
  // lambda_ on a CUDA device: the kernels read it from device memory (no host sync); then
  // lambda above is unused. Empty on the CPU (lambda holds the value) and for lambda_ = None.
  std::optional<Tensor> lambda_dev;
  bool easy_margin;
  int64_t ignore_index;
  // The shard ops (fused_linear_margin_shard_*): no ignore_index, and target -1 means "this row's
  // target is on another shard": the row counts, with no target column here.
  bool shard = false;
  Reduction reduction;
  int64_t N, C;
  double keep() const { return 1.0 - smoothing; }
  double spread() const { return C > 0 ? smoothing / double(C) : 0.0; }
  template <class T>
  TargetMargin<T> target_margin() const {
    return TargetMargin<T>::make(m1, m2, m3, lambda, easy_margin,
                                 lambda_dev ? static_cast<const double*>(lambda_dev->data_ptr()) : nullptr);
  }
};

// Row statistics, float64 [N] each: lse, the target logit z_y, and sum_j w_j z_j. (lse is kept
// in float64 so that exp(z - lse) in the backward is exact to float32 rounding of z - lse.)
struct RowStats {
  Tensor lse, zy, wz;
  // fused op only: running max (lse holds the running sum of exp(z - max) until finalize)
  std::optional<Tensor> max;
};

struct CeProblem {
  LossSpec spec;
  Tensor cos;                      // [N, C]
  Tensor target;                   // [N] int64
  std::optional<Tensor> weight;    // [C], cos dtype
  std::optional<Tensor> row_scale; // [N], cos dtype: replaces scale per row (SphereFace's |x|)
  std::optional<Tensor> lse;       // backward: [N] acc
};

struct FusedProblem {
  LossSpec spec;
  Tensor x;                        // [N, D]
  Tensor w;                        // [C, D]
  Tensor xn;                       // [N, D]: x / |x| row by row (normalize), else x
  std::optional<Tensor> wn;        // [chunk, D] scratch: the chunk's w / |w| rows (normalize)
  Tensor target;                   // [N] int64
  std::optional<Tensor> bias;      // [C] (normalize = false only)
  bool normalize;
  int64_t D, chunk;
  std::optional<Tensor> inv_norm_x, inv_norm_w;  // acc [N], [C] when normalize
  std::optional<Tensor> lse;       // backward: [N] acc
  std::optional<Tensor> gw_acc;    // backward, normalize with float16/bfloat16: [chunk, D] acc
                                   // scratch for the chunk's B^T xn (see FusedKernels::backward)
};

inline ScalarType acc_scalar_type(ScalarType st) {
  return st == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

inline Tensor new_tensor(std::vector<int64_t> sizes, ScalarType st, const Tensor& like) {
  return lossext::empty(sizes, st, std::nullopt, like.device());
}

inline Tensor zeros(std::vector<int64_t> sizes, ScalarType st, const Tensor& like) {
  Tensor t = new_tensor(sizes, st, like);
  torch::stable::zero_(t);
  return t;
}

// out = a @ b through the dispatcher (BLAS on CPU, cuBLAS on CUDA; deterministic).
inline void mm_out(Tensor& out, const Tensor& a, const Tensor& b) {
  using torch::stable::detail::from;
  std::array<StableIValue, 3> stack{from(a), from(b), from(out)};
  STD_TORCH_CHECK(torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION) ==
                      AOTI_TORCH_SUCCESS,
                  "lossext: aten::mm.out failed");
  (void)torch::stable::detail::to<Tensor>(stack[0]);
}

// out = a @ b with float16/bfloat16 a, b and a float32 out (aten::mm.dtype_out: cuBLAS
// accumulates in float32 and writes float32, nothing rounded to the input dtype). CUDA only:
// aten has no CPU kernel for it (the CPU converts its operands instead: margin_cpu.cpp).
inline void mm_out_acc(Tensor& out, const Tensor& a, const Tensor& b) {
  using torch::stable::detail::from;
  std::array<StableIValue, 4> stack{from(a), from(b), from(out.scalar_type()), from(out)};
  STD_TORCH_CHECK(torch_call_dispatcher("aten::mm", "dtype_out", stack.data(), TORCH_ABI_VERSION) ==
                      AOTI_TORCH_SUCCESS,
                  "lossext: aten::mm.dtype_out failed");
  (void)torch::stable::detail::to<Tensor>(stack[0]);
}

// A [rows, cols] window of a contiguous 2-D tensor starting at (row0, col0), as a plain alias
// (no autograd history: it is safe to pass to aten::mm.out from any thread).
inline Tensor window(const Tensor& base, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  const int64_t ld = base.size(1);
  return torch::stable::from_blob(base.data_ptr(), {rows, cols}, {ld, 1}, base.device(), base.scalar_type(),
                                  row0 * ld + col0);
}

// [start, start + len) of a contiguous 1-D tensor, as a plain alias.
inline Tensor segment(const Tensor& base, int64_t start, int64_t len) {
  return torch::stable::from_blob(base.data_ptr(), {len}, {1}, base.device(), base.scalar_type(), start);
}

// ---- checks -------------------------------------------------------------------------------

// lambda_: None (0), or a 0-dim float64 tensor on ref's device. On the CPU its value is checked
// (finite, >= 0) and copied; on CUDA the kernels read it (a bad value there makes the loss NaN).
inline void check_lambda(const char* op, const std::optional<Tensor>& lam, const Tensor& ref,
                         const char* ref_name, LossSpec& s) {
  s.lambda = 0.0;
  s.lambda_dev = std::nullopt;
  if (!lam.has_value()) return;
  LOSSEXT_CHECK(lam->scalar_type() == ScalarType::Double, op, ": argument 'lambda_' must be float64, got ",
                torch::headeronly::toString(lam->scalar_type()));
  LOSSEXT_CHECK(lam->dim() == 0, op, ": argument 'lambda_' must be a 0-dim tensor, got shape ", shape_str(*lam));
  LOSSEXT_CHECK(lam->device() == ref.device(), op, ": argument 'lambda_' is on a different device than the ",
                ref_name);
  if (lam->is_cpu()) {
    const double v = *static_cast<const double*>(lam->data_ptr());
    LOSSEXT_CHECK(std::isfinite(v) && v >= 0.0, op, ": argument 'lambda_' must be finite and >= 0, got ", v);
    s.lambda = v;
  } else {
    s.lambda_dev = *lam;
  }
}

inline LossSpec check_spec(const char* op, double scale, double m1, double m2, double m3,
                           bool easy_margin, double smoothing, int64_t ignore_index,
                           int64_t reduction, int64_t N, int64_t C) {
  LossSpec s;
  s.op = op;
  check_positive(op, "scale", scale);
  check_positive(op, "m1", m1);
  LOSSEXT_CHECK(std::isfinite(m2) && m2 >= 0.0 && m2 < 3.14159265358979323846, op,
                  ": argument 'm2' must be in [0, pi), got ", m2);
  LOSSEXT_CHECK(std::isfinite(m3), op, ": argument 'm3' must be finite, got ", m3);
  LOSSEXT_CHECK(smoothing >= 0.0 && smoothing <= 1.0, op,
                  ": argument 'label_smoothing' must be in [0, 1], got ", smoothing);
  s.reduction = check_reduction(op, reduction);
  s.scale = scale; s.m1 = m1; s.m2 = m2; s.m3 = m3; s.lambda = 0.0; s.smoothing = smoothing;
  s.easy_margin = easy_margin; s.ignore_index = ignore_index; s.N = N; s.C = C;
  return s;
}

inline void check_target(const char* op, const Tensor& target, const Tensor& ref, int64_t N) {
  LOSSEXT_CHECK(target.scalar_type() == ScalarType::Long, op,
                  ": argument 'target' must be int64 class indices, got ",
                  torch::headeronly::toString(target.scalar_type()));
  LOSSEXT_CHECK(target.dim() == 1 && target.size(0) == N, op, ": argument 'target' must have shape [",
                  N, "], got ", shape_str(target));
  LOSSEXT_CHECK(target.device() == ref.device(), op,
                  ": argument 'target' is on a different device than the logits");
}

inline void check_vector(const char* op, const char* name, const Tensor& t, const Tensor& ref,
                         int64_t n) {
  check_like(op, name, t, ref);
  LOSSEXT_CHECK(t.dim() == 1 && t.size(0) == n, op, ": argument '", name, "' must have shape [", n,
                  "], got ", shape_str(t));
}

// grad_output has the loss's dtype: ref's (margin_cross_entropy), or for the fused op float32
// with float16/bfloat16 inputs (fused_loss_type), where ref's own dtype is accepted too.
inline void check_grad_output(const char* op, const Tensor& g, const Tensor& ref, const LossSpec& s,
                              ScalarType loss_type) {
  const ScalarType st = g.scalar_type();
  LOSSEXT_CHECK(st == loss_type || st == ref.scalar_type(), op, ": argument 'grad_output' has dtype ",
                torch::headeronly::toString(st), " but the loss has dtype ", torch::headeronly::toString(loss_type),
                (loss_type != ref.scalar_type() ? " (or input's, " : ""),
                (loss_type != ref.scalar_type() ? torch::headeronly::toString(ref.scalar_type()) : ""),
                (loss_type != ref.scalar_type() ? ")" : ""));
  LOSSEXT_CHECK(g.device() == ref.device(), op, ": argument 'grad_output' is on a different device than input");
  if (s.reduction == Reduction::None) {
    LOSSEXT_CHECK(g.dim() == 1 && g.size(0) == s.N, op, ": argument 'grad_output' must have shape [",
                    s.N, "], got ", shape_str(g));
  } else {
    LOSSEXT_CHECK(g.dim() == 0, op, ": argument 'grad_output' must be 0-dim for a reduced loss, got shape ",
                    shape_str(g));
  }
}

inline void check_lse(const char* op, const Tensor& lse, const Tensor& ref, int64_t N) {
  LOSSEXT_CHECK(lse.scalar_type() == ScalarType::Double, op, ": argument 'lse' must be float64, got ",
                torch::headeronly::toString(lse.scalar_type()), " (lse is the forward's second output)");
  LOSSEXT_CHECK(lse.dim() == 1 && lse.size(0) == N, op, ": argument 'lse' must have shape [", N,
                "] (the forward's second output), got shape ", shape_str(lse));
  LOSSEXT_CHECK(lse.device() == ref.device(), op, ": argument 'lse' is on a different device than the input");
}

inline CeProblem prepare_ce(const char* op, const Tensor& cos, const Tensor& target,
                            const std::optional<Tensor>& weight, const std::optional<Tensor>& row_scale,
                            double scale, double m1, double m2, double m3, const std::optional<Tensor>& lambda,
                            bool easy_margin, double smoothing, int64_t ignore_index, int64_t reduction) {
  check_float_tensor(op, "cos_logits", cos);
  LOSSEXT_CHECK(cos.dim() == 2, op, ": argument 'cos_logits' must be 2-D [N, C], got shape ",
                  shape_str(cos));
  const int64_t N = cos.size(0), C = cos.size(1);
  LOSSEXT_CHECK(C > 0 || N == 0, op, ": argument 'cos_logits' has no classes (shape ", shape_str(cos), ")");
  CeProblem p;
  p.spec = check_spec(op, scale, m1, m2, m3, easy_margin, smoothing, ignore_index, reduction, N, C);
  check_lambda(op, lambda, cos, "logits", p.spec);
  check_target(op, target, cos, N);
  p.cos = torch::stable::contiguous(cos);
  p.target = torch::stable::contiguous(target);
  if (weight.has_value()) {
    check_vector(op, "weight", *weight, cos, C);
    p.weight = torch::stable::contiguous(*weight);
  }
  if (row_scale.has_value()) {
    check_vector(op, "row_scale", *row_scale, cos, N);
    p.row_scale = torch::stable::contiguous(*row_scale);
  }
  return p;
}

// The fused op's loss dtype: float32 for float16/bfloat16 inputs (as F.linear in the half
// dtype, then F.cross_entropy in float32 under autocast; the per-row lse is float64, so the
// loss is not rounded to the input dtype), the input's dtype for float32 and float64.
inline ScalarType fused_loss_type(ScalarType input) { return acc_scalar_type(input); }

// The loss output, [N] (reduction none) or [], in dtype st on like's device.
inline Tensor new_loss(const LossSpec& s, ScalarType st, const Tensor& like) {
  if (s.reduction == Reduction::None) return new_tensor({s.N}, st, like);
  return new_tensor({}, st, like);
}

// Internal invariant of finalize and row_grad_scale: they read the class weight in the dtype
// they dispatch on (the loss's, grad_output's). Only margin_cross_entropy passes one, and there
// those dtypes are the input's.
inline void check_weight_type(const Tensor* class_weight, const Tensor& t, const char* where) {
  STD_TORCH_CHECK(class_weight == nullptr || class_weight->scalar_type() == t.scalar_type(),
                  "lossext::margin ", where, ": class weight dtype differs from the loss dtype");
}

inline RowStats new_row_stats(const LossSpec& s, const Tensor& like, bool with_max) {
  const ScalarType f64 = ScalarType::Double;
  RowStats r{new_tensor({s.N}, f64, like), new_tensor({s.N}, f64, like), new_tensor({s.N}, f64, like),
             std::nullopt};
  if (with_max) r.max = new_tensor({s.N}, f64, like);
  return r;
}

// ---- margin_cross_entropy ----------------------------------------------------------------

template <class Device>
struct MarginCeKernels {
  static std::tuple<Tensor, Tensor> forward(Tensor cos, Tensor target, std::optional<Tensor> weight,
                                            std::optional<Tensor> row_scale, double scale, double m1,
                                            double m2, double m3, std::optional<Tensor> lambda, bool easy_margin,
                                            double smoothing, int64_t ignore_index, int64_t reduction) {
    const char* op = "lossext::margin_cross_entropy";
    CeProblem p = prepare_ce(op, cos, target, weight, row_scale, scale, m1, m2, m3, lambda, easy_margin,
                             smoothing, ignore_index, reduction);
    RowStats st = new_row_stats(p.spec, p.cos, false);
    Device::ce_forward(p, st);
    Tensor loss = new_loss(p.spec, p.cos.scalar_type(), p.cos);
    Tensor lse = st.lse;
    Device::finalize(p.spec, st, p.target, p.weight ? &*p.weight : nullptr, loss, lse);
    return {loss, lse};
  }

  static std::tuple<Tensor, Tensor> backward(Tensor grad_output, Tensor cos, Tensor target,
                                             std::optional<Tensor> weight, std::optional<Tensor> row_scale,
                                             Tensor lse, double scale, double m1, double m2, double m3,
                                             std::optional<Tensor> lambda, bool easy_margin, double smoothing,
                                             int64_t ignore_index, int64_t reduction) {
    const char* op = "lossext::margin_cross_entropy_backward";
    CeProblem p = prepare_ce(op, cos, target, weight, row_scale, scale, m1, m2, m3, lambda, easy_margin,
                             smoothing, ignore_index, reduction);
    check_grad_output(op, grad_output, cos, p.spec, cos.scalar_type());
    check_lse(op, lse, cos, p.spec.N);
    p.lse = torch::stable::contiguous(lse);
    Tensor G = new_tensor({p.spec.N}, acc_scalar_type(cos.scalar_type()), cos);
    Device::row_grad_scale(p.spec, torch::stable::contiguous(grad_output), p.target,
                           p.weight ? &*p.weight : nullptr, G);
    Tensor grad_cos = new_tensor({p.spec.N, p.spec.C}, cos.scalar_type(), cos);
    Tensor grad_rs = new_tensor({p.row_scale ? p.spec.N : 0}, cos.scalar_type(), cos);
    Device::ce_backward(p, G, grad_cos, p.row_scale ? &grad_rs : nullptr);
    return {grad_cos, grad_rs};
  }

  // The one-pass forward (issue #15): (loss, lse) as forward, plus dloss/dcos and dloss/drow_scale
  // for grad_output = 1 (the 'mean' division included), which the autograd backward only scales
  // by grad_output (lossext/margin/ops.py). G is known before any row is read: it depends on the
  // targets and class weights alone.
  static std::tuple<Tensor, Tensor, Tensor, Tensor> forward_with_grad(
      Tensor cos, Tensor target, std::optional<Tensor> weight, std::optional<Tensor> row_scale, double scale,
      double m1, double m2, double m3, std::optional<Tensor> lambda, bool easy_margin, double smoothing,
      int64_t ignore_index, int64_t reduction) {
    const char* op = "lossext::margin_cross_entropy_with_grad";
    CeProblem p = prepare_ce(op, cos, target, weight, row_scale, scale, m1, m2, m3, lambda, easy_margin,
                             smoothing, ignore_index, reduction);
    const LossSpec& s = p.spec;
    const Tensor* w = p.weight ? &*p.weight : nullptr;
    Tensor ones = new_loss(s, p.cos.scalar_type(), p.cos);
    torch::stable::fill_(ones, 1.0);
    Tensor G = new_tensor({s.N}, acc_scalar_type(p.cos.scalar_type()), p.cos);
    Device::row_grad_scale(s, ones, p.target, w, G);  // also checks the targets
    RowStats st = new_row_stats(s, p.cos, false);
    Tensor grad_cos = new_tensor({s.N, s.C}, p.cos.scalar_type(), p.cos);
    Tensor grad_rs = new_tensor({p.row_scale ? s.N : 0}, p.cos.scalar_type(), p.cos);
    Device::ce_forward_with_grad(p, G, st, grad_cos, p.row_scale ? &grad_rs : nullptr);
    Tensor loss = new_loss(s, p.cos.scalar_type(), p.cos);
    Tensor lse = st.lse;
    Device::finalize(s, st, p.target, w, loss, lse);
    return {loss, lse, grad_cos, grad_rs};
  }
};

// ce_forward_with_grad as the two passes it replaces: the forward's statistics, then the backward
// kernel over them (their lse, which ce_forward leaves final in st.lse). Devices and dtypes
// without a one-pass kernel (CUDA; float16/bfloat16 on the CPU) take it.
template <class Device>
void ce_forward_then_backward(const CeProblem& p, const Tensor& G, RowStats& st, Tensor& grad, Tensor* grad_rs) {
  Device::ce_forward(p, st);
  CeProblem q = p;
  q.lse = st.lse;
  Device::ce_backward(q, G, grad, grad_rs);
}

// ---- fused_linear_margin_cross_entropy ---------------------------------------------------

inline int64_t default_chunk(int64_t N, int64_t C, int64_t D, bool cuda) {
  // about 16 MiB of float32 logits per chunk (and of normalized weight rows) on the CPU, 256 MiB
  // on CUDA; at least 256 and at most C classes. Why larger on CUDA: the first GPU run (H200,
  // N = 4096, C = 1M, bfloat16) took 159 ms where the composite took 75: with 1024 classes a
  // chunk, 977 chunks of four small GEMMs and their epilogues, each chunk's host calls (views,
  // dispatcher calls) take longer than its GPU work. 16384 classes a chunk make 62 chunks of
  // GEMMs large enough to run near the chip's rate, still ~1 % of the composite's memory.
  // (Not yet measured on a GPU: the next run's margin suite says.)
  const int64_t budget = cuda ? (int64_t(64) << 20) : (int64_t(4) << 20);
  int64_t k = budget / std::max<int64_t>(std::max(N, D), 1);
  k = std::max<int64_t>(256, (k / 256) * 256);
  return std::max<int64_t>(1, std::min<int64_t>(k, C));
}

inline FusedProblem prepare_fused(const char* op, const Tensor& x, const Tensor& w, const Tensor& target,
                                  const std::optional<Tensor>& bias, double scale, double m1, double m2,
                                  double m3, const std::optional<Tensor>& lambda, bool easy_margin, bool normalize, double smoothing,
                                  int64_t ignore_index, int64_t reduction, int64_t chunk) {
  check_float_tensor(op, "input", x);
  LOSSEXT_CHECK(x.dim() == 2, op, ": argument 'input' must be 2-D [N, D], got shape ", shape_str(x));
  check_like(op, "weight", w, x);
  LOSSEXT_CHECK(w.dim() == 2, op, ": argument 'weight' must be 2-D [C, D], got shape ", shape_str(w));
  LOSSEXT_CHECK(w.size(1) == x.size(1), op, ": argument 'weight' has D = ", w.size(1),
                  " but input has D = ", x.size(1));
  const int64_t N = x.size(0), C = w.size(0);
  LOSSEXT_CHECK(C > 0 || N == 0, op, ": argument 'weight' has no classes (shape ", shape_str(w), ")");
  FusedProblem p;
  p.spec = check_spec(op, scale, m1, m2, m3, easy_margin, smoothing, ignore_index, reduction, N, C);
  check_lambda(op, lambda, x, "embeddings", p.spec);
  LOSSEXT_CHECK(normalize || (m1 == 1.0 && m2 == 0.0), op, ": argument '", (m1 != 1.0 ? "m1" : "m2"),
                "' must be ", (m1 != 1.0 ? "1" : "0"),
                ": normalize=False takes only an additive margin m3 (m1 = 1, m2 = 0), got m1 = ", m1, ", m2 = ", m2);
  LOSSEXT_CHECK(!(normalize && bias.has_value()), op, ": argument 'bias' needs normalize=False");
  LOSSEXT_CHECK(chunk >= 0, op, ": argument 'chunk_size' must be >= 0 (0: automatic), got ", chunk);
  check_target(op, target, x, N);
  p.x = torch::stable::contiguous(x);
  p.w = torch::stable::contiguous(w);
  p.target = torch::stable::contiguous(target);
  if (bias.has_value()) {
    check_vector(op, "bias", *bias, x, C);
    p.bias = torch::stable::contiguous(*bias);
  }
  p.normalize = normalize;
  p.D = x.size(1);
  p.chunk = chunk > 0 ? std::min<int64_t>(chunk, std::max<int64_t>(C, 1)) : default_chunk(N, C, p.D, !p.x.is_cpu());
  // normalize = false multiplies x itself: as a plain alias, since x may require grad and the CPU
  // matmul tasks call aten::mm.out from worker threads, where grad mode is on (mm.out refuses an
  // out= call with an input that requires grad)
  p.xn = N > 0 && p.D > 0 ? window(p.x, 0, N, 0, p.D) : p.x;
  return p;
}

// normalize: the inverse norms, x / |x| and the chunk scratch for w / |w|.
template <class Device>
inline void prepare_norms(FusedProblem& p) {
  if (!p.normalize) return;
  const ScalarType st = p.x.scalar_type(), acc = acc_scalar_type(st);
  Tensor rx = new_tensor({p.spec.N}, acc, p.x), rw = new_tensor({p.spec.C}, acc, p.x);
  Device::inv_norms(p.x, rx);
  Device::inv_norms(p.w, rw);
  p.inv_norm_x = rx;
  p.inv_norm_w = rw;
  p.xn = new_tensor({p.spec.N, p.D}, st, p.x);
  Device::scale_rows(p.x, rx, p.xn);
  p.wn = new_tensor({p.chunk, p.D}, st, p.x);
}

// The chunk's class rows [k, D] as the matmuls take them: w_j / |w_j| (normalize; written into
// the scratch) or a window of w.
template <class Device>
inline Tensor chunk_weights(const FusedProblem& p, int64_t c0, int64_t k) {
  const Tensor wc = window(p.w, c0, k, 0, p.D);
  if (!p.normalize) return wc;
  Tensor out = window(*p.wn, 0, k, 0, p.D);
  Device::scale_rows(wc, segment(*p.inv_norm_w, c0, k), out);
  return out;
}

// A [N, k] view of the first N * k elements of a flat chunk buffer.
inline Tensor chunk_view(Tensor flat, int64_t N, int64_t k) {
  return torch::stable::view(torch::stable::narrow(flat, 0, 0, N * k), {N, k});
}

// acc += a b in acc's dtype: one addmm where a and b have it too (float32, float64), else a
// product into tmp (a's dtype, acc's shape) and an add.
template <class Device>
inline void accumulate_product(Tensor& acc, const Tensor& a, const Tensor& b, Tensor* tmp) {
  if (tmp == nullptr) {
    Device::addmm_into(acc, a, b);
    return;
  }
  Tensor t = window(*tmp, 0, acc.size(0), 0, acc.size(1));
  mm_out(t, a, b);
  Device::add_into(acc, t);
}

// The chunk's matrix products, with wc = chunk_weights(p, c0, k). The default issues one aten
// call per product (cuBLAS gives the same bits on every run). A device may specialize this (the
// CPU does, to stay bitwise equal across thread counts: margin_cpu.cpp).
template <class Device>
struct ChunkMatmuls {
  // P [N, k] = xn wc^T
  static void logits(const FusedProblem& p, Tensor& P, const Tensor& wc) {
    const int64_t N = P.size(0), k = P.size(1);
    Tensor out = window(P, 0, N, 0, k);
    mm_out(out, p.xn, torch::stable::transpose(wc, 0, 1));
  }
  // With B = dLoss/dP in P: gw [k, D] = B^T xn, through the normalization of the class rows
  // (dW_c is owned by this chunk: every row written once, never accumulated); acc_x += B wc,
  // in chunk order, in the acc dtype. tmp: [N, D] scratch in the input dtype for float16 and
  // bfloat16 (nullptr otherwise: one addmm into acc_x). With p.gw_acc, B^T xn lands in that
  // float32 scratch and project_rows rounds only the projected, divided rows.
  static void grads(const FusedProblem& p, const Tensor& P, int64_t c0, const Tensor& wc, Tensor& gw,
                    Tensor& acc_x, Tensor* tmp) {
    const int64_t N = P.size(0), k = P.size(1);
    Tensor B = window(P, 0, N, 0, k);
    Tensor gwv = window(gw, 0, k, 0, p.D);
    if (p.gw_acc) {
      Tensor g = window(*p.gw_acc, 0, k, 0, p.D);
      mm_out_acc(g, torch::stable::transpose(B, 0, 1), p.xn);
      Tensor rw = segment(*p.inv_norm_w, c0, k);
      Device::project_rows(g, window(p.w, c0, k, 0, p.D), &rw, gwv);
    } else {
      mm_out(gwv, torch::stable::transpose(B, 0, 1), p.xn);
      if (p.normalize) {
        Tensor rw = segment(*p.inv_norm_w, c0, k);
        Device::project_rows(gwv, window(p.w, c0, k, 0, p.D), &rw, gwv);
      }
    }
    accumulate_product<Device>(acc_x, B, wc, tmp);
  }
};

// P = xn wc^T, or zeros for D = 0 (no matmul over an empty inner dimension).
template <class Device>
inline void chunk_logits(const FusedProblem& p, Tensor& P, const Tensor& wc) {
  if (p.D == 0) {
    torch::stable::zero_(P);
    return;
  }
  ChunkMatmuls<Device>::logits(p, P, wc);
}

template <class Device>
struct FusedKernels {
  static std::tuple<Tensor, Tensor> forward(Tensor x, Tensor w, Tensor target, std::optional<Tensor> bias,
                                            double scale, double m1, double m2, double m3,
                                            std::optional<Tensor> lambda, bool easy_margin, bool normalize, double smoothing, int64_t ignore_index,
                                            int64_t reduction, int64_t chunk) {
    const char* op = "lossext::fused_linear_margin_cross_entropy";
    FusedProblem p = prepare_fused(op, x, w, target, bias, scale, m1, m2, m3, lambda, easy_margin, normalize,
                                   smoothing, ignore_index, reduction, chunk);
    RowStats st = new_row_stats(p.spec, p.x, true);
    Tensor loss = new_loss(p.spec, fused_loss_type(p.x.scalar_type()), p.x);
    forward_chunks(p, st);
    Tensor lse = st.lse;
    Device::finalize(p.spec, st, p.target, nullptr, loss, lse);
    return {loss, lse};
  }

  // The chunk loop of the forward: the running (max, sum of exp(z - max)) of each row in st.max
  // and st.lse, its target logit in st.zy (0 where the target is not among these classes).
  static void forward_chunks(FusedProblem& p, RowStats& st) {
    const int64_t N = p.spec.N, C = p.spec.C, K = p.chunk;
    if (N == 0) return;
    prepare_norms<Device>(p);
    Tensor flat = new_tensor({N * K}, p.x.scalar_type(), p.x);
    for (int64_t c0 = 0; c0 < C; c0 += K) {
      const int64_t k = std::min(K, C - c0);
      Tensor P = chunk_view(flat, N, k);
      chunk_logits<Device>(p, P, chunk_weights<Device>(p, c0, k));
      Device::fused_forward_chunk(p, P, c0, st);
    }
  }

  static std::tuple<Tensor, Tensor, Tensor> backward(Tensor grad_output, Tensor x, Tensor w, Tensor target,
                                                     std::optional<Tensor> bias, Tensor lse, double scale,
                                                     double m1, double m2, double m3, std::optional<Tensor> lambda,
                                                     bool easy_margin,
                                                     bool normalize, double smoothing, int64_t ignore_index,
                                                     int64_t reduction, int64_t chunk) {
    const char* op = "lossext::fused_linear_margin_cross_entropy_backward";
    FusedProblem p = prepare_fused(op, x, w, target, bias, scale, m1, m2, m3, lambda, easy_margin, normalize,
                                   smoothing, ignore_index, reduction, chunk);
    check_grad_output(op, grad_output, x, p.spec, fused_loss_type(x.scalar_type()));
    check_lse(op, lse, x, p.spec.N);
    p.lse = torch::stable::contiguous(lse);
    return backward_chunks(p, [&](Tensor& G) {
      Device::row_grad_scale(p.spec, torch::stable::contiguous(grad_output), p.target, nullptr, G);
    });
  }

  // The chunk loop of the backward, with G_i = dLoss/dloss_i (acc [N], written by fill_G).
  template <class FillG>
  static std::tuple<Tensor, Tensor, Tensor> backward_chunks(FusedProblem& p, const FillG& fill_G) {
    const int64_t N = p.spec.N, C = p.spec.C, K = p.chunk, D = p.D;
    const ScalarType st = p.x.scalar_type(), acc = acc_scalar_type(st);
    // grad_w and grad_b: empty, since with N > 0 the chunks [c0, c0 + k) cover [0, C) and each
    // writes all its rows (grads: gw = B^T xn by a matmul that overwrites, ignored rows of B
    // being zeros; fused_backward_chunk: every db_j of its columns); N = 0 zeroes them below.
    Tensor grad_x = new_tensor({N, D}, st, p.x);
    Tensor grad_w = new_tensor({C, D}, st, p.x);
    Tensor grad_b = new_tensor({p.bias ? C : 0}, st, p.x);
    if (N == 0) {
      torch::stable::zero_(grad_x);
      torch::stable::zero_(grad_w);
      torch::stable::zero_(grad_b);
      return {grad_x, grad_w, grad_b};
    }
    // D = 0 still runs the chunks: the logits are the bias alone, and grad_bias depends on them.
    prepare_norms<Device>(p);
    // normalize, float16/bfloat16: grad_w_j = rw_j (g_j - rw_j^2 (g_j . w_j) w_j) with
    // g_j = (B^T xn)_j. g_j itself is not bounded by grad_w's range: a column sums up to N rows
    // of |B| <= s |grad_output| (s = 64, 1000 rows of one class: ~6.4e4, over float16's 65504)
    // and only rw_j ~ 1/|w_j| (|w| ~ 300) brings it back. So g lands in a float32 [chunk, D]
    // scratch and is rounded once, after the projection and the division. Folding rw_j into the
    // columns of B instead would keep the product in float16 but push B's small entries
    // (reduction='mean': s / N, then / |w|) into float16's subnormals, and B wc (grad_input)
    // needs the unscaled B: the scratch keeps both intact.
    if (p.normalize && st != acc && D > 0) p.gw_acc = new_tensor({K, D}, acc, p.x);
    Tensor G = new_tensor({N}, acc, p.x);
    fill_G(G);
    Tensor flat = new_tensor({N * K}, st, p.x);
    Tensor acc_x = zeros({N, D}, acc, p.x);
    std::optional<Tensor> tmp;  // half inputs: B wc in the input dtype before the float32 add
    if (st != acc) tmp = new_tensor({N, D}, st, p.x);
    for (int64_t c0 = 0; c0 < C; c0 += K) {
      const int64_t k = std::min(K, C - c0);
      Tensor P = chunk_view(flat, N, k);
      const Tensor wc = chunk_weights<Device>(p, c0, k);
      chunk_logits<Device>(p, P, wc);
      Device::fused_backward_chunk(p, P, c0, G, p.bias ? &grad_b : nullptr);
      if (D == 0) continue;  // grad_input and grad_weight are empty
      Tensor gw = torch::stable::narrow(grad_w, 0, c0, k);
      ChunkMatmuls<Device>::grads(p, P, c0, wc, gw, acc_x, tmp ? &*tmp : nullptr);
    }
    Device::project_rows(acc_x, p.x, p.normalize ? &*p.inv_norm_x : nullptr, grad_x);
    return {grad_x, grad_w, grad_b};
  }
};

// ---- fused_linear_margin_cross_entropy_with_grad (row blocks; issue #15) -------------------
// A reduced loss whose gradients are formed in the forward, so the backward is a multiply (none
// for grad_output = 1): the rows are taken in blocks of `rows` whose logits for every class are
// kept (rows x C elements, chunk by chunk), so each logit is computed once, not recomputed in a
// backward: three matrix products per element (logits, dX, dW) against the class-chunked op's
// four. Per row block: each chunk's logits and the rows' online softmax (as forward_chunks),
// the rows' log-sum-exp, then each chunk's dLoss/dlogits in place, dX += B wc and
// dW_c += B^T xn (into a chunk scratch, added in row-block order: deterministic). The memory is
// rows x C logits, which grows with C: lossext.margin.functional takes this op only where a
// block of at least 128 rows fits its budget, else the class-chunked op. float16/bfloat16 run the
// class-chunked forward and backward (a dW accumulator in their dtype would round every block).
inline FusedProblem fused_rows_of(const FusedProblem& p, int64_t r0, int64_t r) {
  FusedProblem q = p;
  q.spec.N = r;
  q.x = window(p.x, r0, r, 0, p.D);
  q.xn = window(p.xn, r0, r, 0, p.D);
  q.target = segment(p.target, r0, r);
  if (p.inv_norm_x) q.inv_norm_x = segment(*p.inv_norm_x, r0, r);
  return q;
}

inline RowStats row_stats_of(const RowStats& st, int64_t r0, int64_t r) {
  RowStats q{segment(st.lse, r0, r), segment(st.zy, r0, r), segment(st.wz, r0, r), std::nullopt};
  if (st.max) q.max = segment(*st.max, r0, r);
  return q;
}

template <class Device>
struct FusedRowKernels {
  using Out = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

  static Out forward_with_grad(Tensor x, Tensor w, Tensor target, std::optional<Tensor> bias, double scale, double m1,
                               double m2, double m3, std::optional<Tensor> lambda, bool easy_margin, bool normalize,
                               double smoothing, int64_t ignore_index, int64_t reduction, int64_t chunk,
                               int64_t rows) {
    const char* op = "lossext::fused_linear_margin_cross_entropy_with_grad";
    FusedProblem p = prepare_fused(op, x, w, target, bias, scale, m1, m2, m3, lambda, easy_margin, normalize,
                                   smoothing, ignore_index, reduction, chunk);
    LOSSEXT_CHECK(p.spec.reduction != Reduction::None, op,
                  ": argument 'reduction' must be 1 (mean) or 2 (sum): a per-row loss scales its gradient row by row");
    LOSSEXT_CHECK(rows >= 1, op, ": argument 'rows' must be >= 1, got ", rows);
    const int64_t N = p.spec.N, C = p.spec.C, K = p.chunk, D = p.D;
    const ScalarType st = p.x.scalar_type(), acc = acc_scalar_type(st), lt = fused_loss_type(st);
    Tensor ones = new_loss(p.spec, lt, p.x);
    torch::stable::fill_(ones, 1.0);
    if (st != acc || N == 0) {  // half types (see above), and no rows: the two passes
      auto fw = FusedKernels<Device>::forward(x, w, target, bias, scale, m1, m2, m3, lambda, easy_margin, normalize,
                                              smoothing, ignore_index, reduction, chunk);
      auto bw = FusedKernels<Device>::backward(ones, x, w, target, bias, std::get<1>(fw), scale, m1, m2, m3, lambda,
                                               easy_margin, normalize, smoothing, ignore_index, reduction, chunk);
      return {std::get<0>(fw), std::get<1>(fw), std::get<0>(bw), std::get<1>(bw), std::get<2>(bw)};
    }
    const int64_t R = std::min(rows, N);
    RowStats stats = new_row_stats(p.spec, p.x, true);
    Tensor loss = new_loss(p.spec, lt, p.x);
    Tensor lse = new_tensor({N}, ScalarType::Double, p.x);  // the rows' lse, finalized per block
    Tensor grad_x = new_tensor({N, D}, st, p.x);
    Tensor grad_w = zeros({C, D}, st, p.x);  // dW_c accumulates over the row blocks
    Tensor grad_b = zeros({p.bias ? C : 0}, st, p.x);
    prepare_norms<Device>(p);
    Tensor G = new_tensor({N}, acc, p.x);
    Device::row_grad_scale(p.spec, ones, p.target, nullptr, G);  // dLoss/dloss_i for grad_output = 1
    const int64_t nch = (C + K - 1) / K;
    Tensor flat = new_tensor({R * C}, st, p.x);  // chunk c of a block at flat[c0 * r]: [r, k], contiguous
    Tensor gw = new_tensor({K, D}, st, p.x);       // one chunk's dW from one row block
    std::optional<Tensor> gb;
    if (p.bias) gb = new_tensor({C}, st, p.x);
    Tensor acc_x = zeros({N, D}, acc, p.x);
    Tensor row_loss = new_tensor({R}, lt, p.x);
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r = std::min(R, N - r0);
      FusedProblem q = fused_rows_of(p, r0, r);
      RowStats sq = row_stats_of(stats, r0, r);
      auto chunk_at = [&](int64_t c0, int64_t k) {
        return torch::stable::view(torch::stable::narrow(flat, 0, c0 * r, r * k), {r, k});
      };
      for (int64_t ci = 0; ci < nch; ++ci) {
        const int64_t c0 = ci * K, k = std::min(K, C - c0);
        Tensor P = chunk_at(c0, k);
        chunk_logits<Device>(q, P, chunk_weights<Device>(q, c0, k));
        Device::fused_forward_chunk(q, P, c0, sq);
      }
      // the block's lse (the loss itself is reduced over every row at the end)
      LossSpec s_none = q.spec;
      s_none.reduction = Reduction::None;
      Tensor lq = segment(lse, r0, r);
      Tensor loss_q = segment(row_loss, 0, r);
      Device::finalize(s_none, sq, q.target, nullptr, loss_q, lq);
      q.lse = lq;
      const Tensor Gq = segment(G, r0, r);
      Tensor ax = window(acc_x, r0, r, 0, D);
      for (int64_t ci = 0; ci < nch; ++ci) {
        const int64_t c0 = ci * K, k = std::min(K, C - c0);
        Tensor P = chunk_at(c0, k);
        Device::fused_backward_chunk(q, P, c0, Gq, gb ? &*gb : nullptr);
        if (D == 0) continue;
        const Tensor wc = chunk_weights<Device>(q, c0, k);
        Tensor gwc = window(gw, 0, k, 0, D);
        ChunkMatmuls<Device>::grads(q, P, c0, wc, gwc, ax, nullptr);
        Tensor dst = torch::stable::narrow(grad_w, 0, c0, k);
        Device::add_into(dst, gwc);
      }
      if (gb) Device::add_into(grad_b, *gb);
    }
    Device::project_rows(acc_x, p.x, p.normalize ? &*p.inv_norm_x : nullptr, grad_x);
    // the loss from every row's running (max, sum), as forward's finalize
    Device::finalize(p.spec, stats, p.target, nullptr, loss, lse);
    return {loss, lse, grad_x, grad_w, grad_b};
  }
};

// ---- fused_linear_margin_shard_forward / _backward -----------------------------------------
// One shard of the classes of a normalized fused margin CE (lossext.distributed): the forward
// returns each row's max, sum of exp(z - max) over this shard's logits and the target logit
// (0 when the row's target is elsewhere: target -1), all float64 [N], for the caller to combine
// across shards; the backward takes the combined (global) lse and G_i = dLoss/dloss_i, and
// returns this shard's part of dL/dinput (summed over the shards by the caller) and its dL/dW.

inline FusedProblem prepare_shard(const char* op, const Tensor& x, const Tensor& w, const Tensor& target,
                                  double scale, double m1, double m2, double m3,
                                  const std::optional<Tensor>& lambda, bool easy_margin, int64_t chunk) {
  FusedProblem p = prepare_fused(op, x, w, target, std::nullopt, scale, m1, m2, m3, lambda, easy_margin, true, 0.0,
                                 -1, 0, chunk);
  p.spec.shard = true;
  return p;
}

template <class Device>
struct ShardKernels {
  static std::tuple<Tensor, Tensor, Tensor> forward(Tensor x, Tensor w, Tensor target, double scale, double m1,
                                                    double m2, double m3, std::optional<Tensor> lambda,
                                                    bool easy_margin, int64_t chunk) {
    FusedProblem p = prepare_shard("lossext::fused_linear_margin_shard_forward", x, w, target, scale, m1, m2, m3,
                                   lambda, easy_margin, chunk);
    RowStats st = new_row_stats(p.spec, p.x, true);
    FusedKernels<Device>::forward_chunks(p, st);
    return {*st.max, st.lse, st.zy};
  }

  static std::tuple<Tensor, Tensor> backward(Tensor grad_rows, Tensor x, Tensor w, Tensor target, Tensor lse,
                                             double scale, double m1, double m2, double m3,
                                             std::optional<Tensor> lambda, bool easy_margin, int64_t chunk) {
    const char* op = "lossext::fused_linear_margin_shard_backward";
    FusedProblem p = prepare_shard(op, x, w, target, scale, m1, m2, m3, lambda, easy_margin, chunk);
    const ScalarType acc = acc_scalar_type(p.x.scalar_type());
    LOSSEXT_CHECK(grad_rows.scalar_type() == acc, op, ": argument 'grad_rows' must have dtype ",
                  torch::headeronly::toString(acc), " (float64 for float64 inputs, else float32), got ",
                  torch::headeronly::toString(grad_rows.scalar_type()));
    LOSSEXT_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == p.spec.N, op,
                  ": argument 'grad_rows' must have shape [", p.spec.N, "], got ", shape_str(grad_rows));
    LOSSEXT_CHECK(grad_rows.device() == x.device(), op,
                  ": argument 'grad_rows' is on a different device than input");
    check_lse(op, lse, x, p.spec.N);
    p.lse = torch::stable::contiguous(lse);
    auto grads = FusedKernels<Device>::backward_chunks(p, [&](Tensor& G) {
      torch::stable::copy_(G, grad_rows);
    });
    return {std::get<0>(grads), std::get<1>(grads)};
  }
};

template <class Device, class Lib>
void register_margin_kernels(Lib& m) {
  m.impl("margin_cross_entropy", TORCH_BOX(&MarginCeKernels<Device>::forward));
  m.impl("margin_cross_entropy_backward", TORCH_BOX(&MarginCeKernels<Device>::backward));
  m.impl("margin_cross_entropy_with_grad", TORCH_BOX(&MarginCeKernels<Device>::forward_with_grad));
  m.impl("fused_linear_margin_cross_entropy", TORCH_BOX(&FusedKernels<Device>::forward));
  m.impl("fused_linear_margin_cross_entropy_backward", TORCH_BOX(&FusedKernels<Device>::backward));
  m.impl("fused_linear_margin_cross_entropy_with_grad", TORCH_BOX(&FusedRowKernels<Device>::forward_with_grad));
  m.impl("fused_linear_margin_shard_forward", TORCH_BOX(&ShardKernels<Device>::forward));
  m.impl("fused_linear_margin_shard_backward", TORCH_BOX(&ShardKernels<Device>::backward));
}

}  // namespace margin
}  // namespace lossext
