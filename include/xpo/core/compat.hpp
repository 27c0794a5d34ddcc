// xpo/core/compat.hpp — the ONE place where LibTorch 1.13 and 2.x differ for xpo. Everything else in xpo is
// written against the API both versions share; when a difference is needed, it gets a name here.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <string>

#define XPO_TORCH_VERSION_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// LibTorch 2.0 added the fused scaled-dot-product attention kernel (flash / memory-efficient on CUDA).
#if XPO_TORCH_VERSION_AT_LEAST(2, 0)
#define XPO_HAS_FUSED_SDPA 1
#else
#define XPO_HAS_FUSED_SDPA 0
#endif

// c10d backends (distributed/world.hpp): LibTorch says which it was built with (USE_C10D_GLOO, USE_C10D_NCCL in
// its CMake package's compile definitions), but a binary install may still lack the backend's own headers (a pip
// wheel's LibTorch with no nccl.h or gloo/ on the include path). A backend is used only when both hold; without
// it, joining a job on that device kind is a clear runtime error instead of a failed build.
#if defined(USE_C10D_GLOO) && __has_include(<gloo/algorithm.h>)
#define XPO_HAS_C10D_GLOO 1
#endif
#if defined(USE_C10D_NCCL) && __has_include(<nccl.h>)
#define XPO_HAS_C10D_NCCL 1
#endif
#if defined(XPO_HAS_C10D_GLOO) || defined(XPO_HAS_C10D_NCCL)
#define XPO_HAS_C10D 1
#endif

// c10d (distributed/world.hpp): the concrete process groups (ProcessGroupGloo, ProcessGroupNCCL) derive from
// c10d::ProcessGroup in LibTorch 1.x and from c10d::Backend in 2.x; a World holds one through this base.
namespace c10d {
class ProcessGroup;
class Backend;
}  // namespace c10d

namespace xpo::compat {

#if XPO_TORCH_VERSION_AT_LEAST(2, 0)
using CollectiveGroup = c10d::Backend;
#else
using CollectiveGroup = c10d::ProcessGroup;
#endif

// c10d's TCPStore (distributed/world.hpp): LibTorch 2.4 made the libuv server its default, but libuv is an optional
// part of a LibTorch build (Debian's 2.6 has none, and joining fails with "use_libuv was requested but PyTorch was
// build without libuv support"; whether a build has it is not exported to C++). The classic server is in every
// build, and a rendezvous of a few keys per rank does not need libuv's scaling, so xpo always asks for the classic
// one. `Options` is c10d::TCPStoreOptions (a template so this header needs no c10d include).
template <class Options>
void use_classic_tcp_store(Options& options) {
#if XPO_TORCH_VERSION_AT_LEAST(2, 4)
  options.useLibUV = false;
#else
  (void)options;  // 1.13 .. 2.3: the classic server is the only one, or already the default
#endif
}

inline constexpr int torch_major = TORCH_VERSION_MAJOR;
inline constexpr int torch_minor = TORCH_VERSION_MINOR;

// Returns "major.minor.patch" of the LibTorch xpo was compiled against (logged in trainer state / benchmarks).
inline std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

inline double lowest_finite(torch::ScalarType type);  // defined below

// The dtype autocast computes in on `device` in this thread when it is on (bf16/fp16 mixed precision), else none.
// 1.13 .. 2.3: per-device getters; 2.4 takes the device type as an argument.
inline std::optional<torch::ScalarType> autocast_dtype_on(c10::DeviceType device) {
#if XPO_TORCH_VERSION_AT_LEAST(2, 4)
  if (device != c10::DeviceType::CPU && device != c10::DeviceType::CUDA) return std::nullopt;
  if (!at::autocast::is_autocast_enabled(device)) return std::nullopt;
  return at::autocast::get_autocast_dtype(device);
#else
  if (device == c10::DeviceType::CPU && at::autocast::is_cpu_enabled()) return at::autocast::get_autocast_cpu_dtype();
  if (device == c10::DeviceType::CUDA && at::autocast::is_enabled()) return at::autocast::get_autocast_gpu_dtype();
  return std::nullopt;
#endif
}

// Grouped-query attention as Hugging Face's eager Qwen2/Llama attention computes it:
// softmax(q k^T / sqrt(D) + mask) v, softmax in float32, query head h reading KV head h / (H / Hkv).
// q [B, H, Tq, D], k/v [B, Hkv, Tk, D], additive_mask [B, 1, Tq, Tk] in q's dtype (0 or the lowest finite value)
// -> [B, H, Tq, D]. 2.x: the fused kernel. 1.13: the plain kernel, which groups the query heads of each KV head
// instead of materialising repeated K/V.
inline torch::Tensor grouped_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                             const torch::Tensor& mask_in, double dropout_p) {
  const auto group = q.size(1) / k.size(1);  // query heads per KV head
  // Under autocast (bf16/fp16 mixed precision) the scores are 16-bit while the mask was built in the weights'
  // float32: its lowest float32 value would round to -inf there, and a fully masked (padding) row would turn NaN.
  // So it is clamped to the compute dtype's lowest finite value (exact in that dtype) first.
  auto compute = q.scalar_type();
  if (const auto low = autocast_dtype_on(q.device().type()); low && compute == torch::kFloat) compute = *low;
  const bool half = compute == torch::kBFloat16 || compute == torch::kHalf;
  const auto additive_mask = half && mask_in.scalar_type() != compute ? mask_in.clamp_min(lowest_finite(compute)) : mask_in;
#if XPO_HAS_FUSED_SDPA
  const auto k_all = group == 1 ? k : k.repeat_interleave(group, 1);
  const auto v_all = group == 1 ? v : v.repeat_interleave(group, 1);
  // A KV cache kept in autocast's dtype (DecoderModelImpl::make_cache) meets float32 queries: SDPA wants one dtype,
  // and autocast would cast the queries to it anyway.
  const auto q_all = q.scalar_type() != k_all.scalar_type() ? q.to(k_all.scalar_type()) : q;
  return at::scaled_dot_product_attention(q_all, k_all, v_all, additive_mask, dropout_p);
#else
  const auto b = q.size(0), h = q.size(1), tq = q.size(2), d = q.size(3);
  const auto hkv = k.size(1), tk = k.size(2);
  const auto qg = q.reshape({b, hkv, group * tq, d});                                 // [B, Hkv, r*Tq, D]
  auto scores = torch::matmul(qg, k.transpose(-2, -1)).div_(std::sqrt(static_cast<double>(d)));  // [B, Hkv, r*Tq, Tk]
  scores = scores.view({b, hkv, group, tq, tk}).add_(additive_mask.unsqueeze(1));     // mask [B, 1, 1, Tq, Tk]
  // Softmax in float32 for float32 and below (transformers' eager attention); float64 stays float64: casting its
  // lowest finite mask value to float32 would give -inf, and a fully masked (padding) row NaN that spreads.
  const auto softmax_type = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto probs = torch::softmax(scores, -1, softmax_type).to(q.scalar_type());
  if (dropout_p > 0) probs = torch::dropout(probs, dropout_p, /*train=*/true);
  return torch::matmul(probs.view({b, hkv, group * tq, tk}), v).view({b, h, tq, d});
#endif
}

// A random-number generator of its own for `device`, seeded: sampling streams that do not disturb each other or
// the global generator (the policy and the reference each get one). CPU directly; other devices by cloning the
// device's default generator through ATen's hooks, so no CUDA header is needed here.
inline at::Generator make_generator(torch::Device device, std::uint64_t seed) {
  at::Generator gen = device.is_cpu() ? at::detail::createCPUGenerator(seed)
                                      : at::globalContext().defaultGenerator(device).clone();
  gen.set_current_seed(seed);
  return gen;
}

// The state of the process-wide CPU generator (what dropout and torch::rand* draw from), to checkpoint and
// restore it; the generator's own lock is held as ATen's users do.
inline at::Tensor default_cpu_generator_state() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
inline void set_default_cpu_generator_state(const at::Tensor& state) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Autocast (PyTorch's torch.autocast) for one device type while alive: matmuls and convolutions run in `dtype`
// (bfloat16 or float16), precision-sensitive ops in float32, the casts of leaf weights cached for the scope and
// dropped at the outermost exit (as torch.autocast's __exit__ does). enabled = false leaves the state as it is.
// 1.13 .. 2.3: the per-device setters (set_cpu_enabled, set_autocast_cpu_dtype, set_enabled for CUDA); 2.4 took
// the device type as an argument and deprecated them. Only CPU and CUDA are supported (errors otherwise).
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, torch::ScalarType dtype, bool enabled = true) : device_(device), enabled_(enabled) {
    if (!enabled_) return;
    TORCH_CHECK(device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA,
                "mixed precision (autocast) supports cpu and cuda devices, not ", c10::DeviceTypeName(device));
    prev_enabled_ = is_enabled(device);
    prev_dtype_ = get_dtype(device);
    set(device, true, dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set(device_, prev_enabled_, prev_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

  // Whether autocast is on for `device` in this thread, and its dtype.
  static bool is_enabled(c10::DeviceType device) {
#if XPO_TORCH_VERSION_AT_LEAST(2, 4)
    return at::autocast::is_autocast_enabled(device);
#else
    return device == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
  }
  static torch::ScalarType get_dtype(c10::DeviceType device) {
#if XPO_TORCH_VERSION_AT_LEAST(2, 4)
    return at::autocast::get_autocast_dtype(device);
#else
    return device == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
#endif
  }

 private:
  static void set(c10::DeviceType device, bool on, torch::ScalarType dtype) {
#if XPO_TORCH_VERSION_AT_LEAST(2, 4)
    at::autocast::set_autocast_dtype(device, dtype);
    at::autocast::set_autocast_enabled(device, on);
#else
    if (device == c10::DeviceType::CPU) {
      at::autocast::set_autocast_cpu_dtype(dtype);
      at::autocast::set_cpu_enabled(on);
    } else {
      at::autocast::set_autocast_gpu_dtype(dtype);
      at::autocast::set_enabled(on);
    }
#endif
  }
  c10::DeviceType device_;
  bool enabled_;
  bool prev_enabled_ = false;
  torch::ScalarType prev_dtype_ = torch::kBFloat16;
};

// The lowest finite value of a floating dtype: what a masked attention score gets (Hugging Face's finfo.min).
// Finite, so a fully masked (padding) query row gives a finite, ignored output instead of NaN.
inline double lowest_finite(torch::ScalarType type) {
  switch (type) {
    case torch::kHalf: return -65504.0;
    case torch::kBFloat16: return -3.3895313892515355e38;
    case torch::kDouble: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
}

}  // namespace xpo::compat
