// xpo/core/tensor_ops.hpp — tensor helpers shared by generation, scoring, losses and the trainer.
// Every function states its shapes; all of them run on whatever device their inputs live on.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/core/padding.hpp"

namespace xpo {

namespace detail {

// Rows of a [N, V] logits matrix processed at once by selective_log_softmax: bounds the temporaries to about
// this many elements however large V is (a Qwen2 vocabulary has 151,936 entries).
inline constexpr std::int64_t kSelectiveChunkElements = std::int64_t{1} << 22;

inline std::int64_t selective_chunk_rows(std::int64_t vocab) {
  return std::max<std::int64_t>(1, kSelectiveChunkElements / std::max<std::int64_t>(1, vocab));
}

// Accumulation dtype: at least float32, so bf16/fp16 logits get an accurate logsumexp.
inline torch::ScalarType accumulation_dtype(torch::ScalarType t) {
  return t == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// log p(index) = logits[index] - logsumexp(logits), with a hand-written backward. Autograd's own
// log_softmax + gather keeps the full [N, V] log-softmax alive until backward and allocates two more [N, V]
// buffers in it; this keeps only the logits the caller already holds plus one [N] logsumexp, and writes the
// gradient softmax * (-g) + onehot * g into a single [N, V] buffer chunk by chunk.
struct SelectiveLogSoftmax : torch::autograd::Function<SelectiveLogSoftmax> {
  // logits [N, V], index [N] int64 -> [N] (float32, or float64 for float64 logits)
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& index) {
    const auto acc = accumulation_dtype(logits.scalar_type());
    const std::int64_t n = logits.size(0);
    const std::int64_t rows = selective_chunk_rows(logits.size(1));
    auto lse = torch::empty({n}, logits.options().dtype(acc));  // [N]
    for (std::int64_t start = 0; start < n; start += rows) {
      const std::int64_t len = std::min(rows, n - start);
      lse.narrow(0, start, len).copy_(torch::logsumexp(logits.narrow(0, start, len).to(acc), {-1}));
    }
    auto picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1).to(acc);  // [N]
    ctx->save_for_backward({logits, index, lse});
    return picked - lse;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& logits = saved[0];  // [N, V]
    const auto& index = saved[1];   // [N]
    const auto& lse = saved[2];     // [N]
    const auto g = grad_outputs[0].to(lse.scalar_type());  // [N]
    auto grad = torch::empty_like(logits, torch::MemoryFormat::Contiguous);  // [N, V]
    const std::int64_t n = logits.size(0);
    const std::int64_t rows = selective_chunk_rows(logits.size(1));
    for (std::int64_t start = 0; start < n; start += rows) {
      const std::int64_t len = std::min(rows, n - start);
      const auto lse_part = lse.narrow(0, start, len).unsqueeze(-1);    // [len, 1]
      const auto scale = g.narrow(0, start, len).neg().unsqueeze(-1);   // [len, 1]
      auto out = grad.narrow(0, start, len);                            // [len, V]
      if (logits.scalar_type() == lse.scalar_type()) {
        // Out-of-place into the gradient buffer: never touches the saved logits, no temporary.
        torch::sub_out(out, logits.narrow(0, start, len), lse_part).exp_().mul_(scale);
      } else {
        out.copy_((logits.narrow(0, start, len).to(lse.scalar_type()) - lse_part).exp_().mul_(scale));
      }
    }
    grad.scatter_add_(-1, index.unsqueeze(-1), g.unsqueeze(-1).to(grad.scalar_type()));
    return {grad, torch::Tensor()};
  }
};

}  // namespace detail

// Log-probability of the given tokens: logits [..., V], index [...] int64 -> [...] (float32, float64 for
// float64 logits). Never materialises the full log-softmax; differentiable w.r.t. logits.
inline torch::Tensor selective_log_softmax(const torch::Tensor& logits, const torch::Tensor& index) {
  TORCH_CHECK(logits.dim() >= 1 && index.sizes() == logits.sizes().slice(0, logits.dim() - 1),
              "selective_log_softmax: index shape ", index.sizes(), " does not match logits ", logits.sizes(),
              " without its last dimension");
  const auto vocab = logits.size(-1);
  auto flat = detail::SelectiveLogSoftmax::apply(logits.reshape({-1, vocab}), index.reshape({-1}).to(torch::kLong));
  return flat.view(index.sizes());
}

// Per-token log-probs of completion tokens from logits already aligned with them (row t predicts token t):
// logits [B, T, V], ids [B, T], mask [B, T] -> [B, T], 0 where mask is 0.
inline torch::Tensor aligned_token_logps(const torch::Tensor& logits, const torch::Tensor& ids,
                                         const torch::Tensor& mask) {
  return selective_log_softmax(logits, ids).masked_fill(mask.eq(0), 0.0);
}

// Per-token log-probs of the completion from a forward pass over [prompt; completion]:
// logits [B, P+T, V], completion ids/mask [B, T], P = padded prompt width -> [B, T] (logits[:, P-1:-1]).
inline torch::Tensor completion_token_logps(const torch::Tensor& logits, const torch::Tensor& completion_ids,
                                            const torch::Tensor& completion_mask, std::int64_t prompt_width) {
  const auto t = completion_ids.size(1);
  TORCH_CHECK(prompt_width >= 1 && logits.size(1) == prompt_width + t,
              "completion_token_logps: logits cover ", logits.size(1), " positions, expected prompt width ",
              prompt_width, " + completion width ", t);
  return aligned_token_logps(logits.narrow(1, prompt_width - 1, t), completion_ids, completion_mask);
}

// Index of the first true entry per row: mask [B, T] bool -> [B] int64, T where a row has none.
inline torch::Tensor first_true_index(const torch::Tensor& mask) {
  const auto t = mask.size(-1);
  auto positions = torch::arange(t, mask.options().dtype(torch::kLong)).expand(mask.sizes());  // [B, T]
  return positions.masked_fill(mask.logical_not(), t).amin(-1);
}

// Where ids equal any of the given token ids: ids [B, T] -> [B, T] bool.
inline torch::Tensor is_any_of(const torch::Tensor& ids, std::span<const std::int64_t> token_ids) {
  auto hit = torch::zeros(ids.sizes(), ids.options().dtype(torch::kBool));
  for (const auto id : token_ids) hit.logical_or_(ids.eq(id));
  return hit;
}

// Rows that contain any of the given token ids: ids [B, T] -> [B] bool.
inline torch::Tensor contains_any_of(const torch::Tensor& ids, std::span<const std::int64_t> token_ids) {
  return is_any_of(ids, token_ids).any(-1);
}

struct TruncatedCompletions {
  torch::Tensor ids;   // [B, T] pad strictly after the first EOS
  torch::Tensor mask;  // [B, T] int64, 1 up to and including the first EOS
};

// Truncate after the first EOS (TRL's truncate_right): ids [B, T] -> ids, mask [B, T]. Tokens strictly after
// the first EOS become pad with mask 0; the EOS keeps mask 1; rows without EOS keep every token.
inline TruncatedCompletions truncate_after_eos(const torch::Tensor& ids, std::span<const std::int64_t> eos_ids,
                                               std::int64_t pad_id) {
  const auto first_eos = first_true_index(is_any_of(ids, eos_ids)).unsqueeze(-1);             // [B, 1]
  const auto positions = torch::arange(ids.size(-1), ids.options().dtype(torch::kLong)).unsqueeze(0);  // [1, T]
  const auto after = positions.gt(first_eos);                                                 // [B, T]
  return {ids.masked_fill(after, pad_id), torch::ones_like(ids, ids.options().dtype(torch::kLong)).masked_fill(after, 0)};
}

inline TruncatedCompletions truncate_after_eos(const torch::Tensor& ids, std::int64_t eos_id, std::int64_t pad_id) {
  return truncate_after_eos(ids, std::span<const std::int64_t>(&eos_id, 1), pad_id);
}

// Sum over the masked positions of each row: values, mask [B, T] -> [B].
inline torch::Tensor masked_sum(const torch::Tensor& values, const torch::Tensor& mask) {
  return (values * mask.to(values.scalar_type())).sum(-1);
}

// Mean over the masked positions of each row (0 for an empty row): values, mask [B, T] -> [B].
inline torch::Tensor masked_mean(const torch::Tensor& values, const torch::Tensor& mask) {
  const auto m = mask.to(values.scalar_type());
  return (values * m).sum(-1) / m.sum(-1).clamp_min(1);
}

// Position ids for a (left- or right-) padded batch, as Hugging Face derives them: mask [B, T] -> [B, T] int64,
// cumsum(mask) - 1 on real tokens, 1 on padding (never read; any valid position would do).
inline torch::Tensor position_ids_from_mask(const torch::Tensor& mask) {
  auto m = mask.to(torch::kLong);
  return (m.cumsum(-1) - 1).masked_fill(m.eq(0), 1);
}

struct PaddedBatch {
  torch::Tensor ids;   // [B, W] int64
  torch::Tensor mask;  // [B, W] int64, 1 on real tokens
};

// Pad token sequences into one batch: B sequences -> ids, mask [B, W], W = the longest (or `width` if larger;
// a sequence longer than an explicit width is an error). Built on the CPU, then moved to `device`.
inline PaddedBatch pad_sequences(const std::vector<std::vector<std::int64_t>>& sequences, std::int64_t pad_id,
                                 PaddingSide side, torch::Device device = torch::kCPU, std::int64_t width = 0) {
  std::int64_t longest = 0;
  for (const auto& s : sequences) longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(s.size()));
  if (width > 0 && longest > width) {
    throw Error("pad_sequences: a sequence has " + std::to_string(longest) + " tokens, more than the width " +
                std::to_string(width));
  }
  const std::int64_t w = std::max(width, longest);
  const auto b = static_cast<std::int64_t>(sequences.size());
  auto ids = torch::full({b, w}, pad_id, torch::kLong);
  auto mask = torch::zeros({b, w}, torch::kLong);
  auto ids_a = ids.accessor<std::int64_t, 2>();
  auto mask_a = mask.accessor<std::int64_t, 2>();
  for (std::int64_t row = 0; row < b; ++row) {
    const auto& s = sequences[static_cast<std::size_t>(row)];
    const std::int64_t offset = side == PaddingSide::left ? w - static_cast<std::int64_t>(s.size()) : 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      ids_a[row][offset + static_cast<std::int64_t>(i)] = s[i];
      mask_a[row][offset + static_cast<std::int64_t>(i)] = 1;
    }
  }
  return {ids.to(device), mask.to(device)};
}

// Right-pad the last dimension to `width` with `value`: t [B, T] -> [B, width] (T <= width).
inline torch::Tensor pad_right_to(const torch::Tensor& t, std::int64_t width, double value) {
  const auto current = t.size(-1);
  TORCH_CHECK(current <= width, "pad_right_to: width ", width, " is smaller than ", current);
  if (current == width) return t;
  return torch::constant_pad_nd(t, {0, width - current}, value);
}

}  // namespace xpo
