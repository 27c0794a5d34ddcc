// xpo/core/tensor_ops.hpp: each op against an independent computation (autograd's own log_softmax + gather,
// hand-written expectations for masks and padding).
#include <gtest/gtest.h>

#include <xpo/core/tensor_ops.hpp>

#include "support/fixtures.hpp"

namespace {

using xpo::test::all_close;

torch::Tensor reference_logps(const torch::Tensor& logits, const torch::Tensor& index) {
  return torch::log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1);
}

TEST(SelectiveLogSoftmax, MatchesLogSoftmaxGatherAndItsGradientInFloat64) {
  torch::manual_seed(0);
  // V large enough that the forward and backward loop over several row chunks (tolerance 1e-12).
  const std::int64_t b = 3, t = 70, v = 50000;
  ASSERT_GT(b * t, xpo::detail::selective_chunk_rows(v)) << "the test must span more than one chunk";
  auto logits = (torch::randn({b, t, v}, torch::kDouble) * 3).requires_grad_();
  auto reference_input = logits.detach().clone().requires_grad_();
  const auto index = torch::randint(v, {b, t}, torch::kLong);
  const auto weights = torch::randn({b, t}, torch::kDouble);  // a non-uniform upstream gradient

  const auto ours = xpo::selective_log_softmax(logits, index);
  const auto theirs = reference_logps(reference_input, index);
  EXPECT_TRUE(all_close(ours, theirs, 1e-12));
  (ours * weights).sum().backward();
  (theirs * weights).sum().backward();
  EXPECT_TRUE(all_close(logits.grad(), reference_input.grad(), 1e-12));
}

TEST(SelectiveLogSoftmax, Float32MatchesFloat64Reference) {
  torch::manual_seed(1);
  auto logits = torch::randn({4, 9, 257}) * 20;  // large logits: the logsumexp must be stable (tolerance 1e-5)
  const auto index = torch::randint(257, {4, 9}, torch::kLong);
  const auto ours = xpo::selective_log_softmax(logits, index);
  EXPECT_EQ(ours.scalar_type(), torch::kFloat);
  EXPECT_TRUE(all_close(ours, reference_logps(logits.to(torch::kDouble), index), 1e-5));
}

TEST(SelectiveLogSoftmax, Bfloat16LogitsAccumulateInFloat32) {
  torch::manual_seed(2);
  auto logits = (torch::randn({2, 5, 1000}) * 4).to(torch::kBFloat16).requires_grad_();
  const auto index = torch::randint(1000, {2, 5}, torch::kLong);
  const auto ours = xpo::selective_log_softmax(logits, index);
  EXPECT_EQ(ours.scalar_type(), torch::kFloat);
  // The widened bf16 values are exact in float64, so the only error left is float32 accumulation (1e-5).
  const auto wide = logits.detach().to(torch::kDouble).requires_grad_();
  const auto reference = reference_logps(wide, index);
  EXPECT_TRUE(all_close(ours, reference, 1e-5));
  ours.sum().backward();
  reference.sum().backward();
  EXPECT_EQ(logits.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(all_close(logits.grad(), wide.grad(), 1e-2));  // the gradient is rounded to bf16 (8 bits)
}

TEST(SelectiveLogSoftmax, RejectsMismatchedShapes) {
  EXPECT_THROW(xpo::selective_log_softmax(torch::zeros({2, 3, 5}), torch::zeros({2, 4}, torch::kLong)), c10::Error);
}

TEST(CompletionTokenLogps, ReadsTheLogitsThatPredictEachCompletionToken) {
  torch::manual_seed(3);
  const std::int64_t p = 4, t = 3, v = 11;
  const auto logits = torch::randn({2, p + t, v}, torch::kDouble);
  const auto ids = torch::randint(v, {2, t}, torch::kLong);
  const auto mask = torch::tensor({1, 1, 0, 1, 1, 1}, torch::kLong).view({2, t});
  const auto got = xpo::completion_token_logps(logits, ids, mask, p);
  for (std::int64_t row = 0; row < 2; ++row) {
    for (std::int64_t col = 0; col < t; ++col) {
      const double expected = mask[row][col].item<std::int64_t>() == 0
                                  ? 0.0
                                  : torch::log_softmax(logits[row][p - 1 + col], -1)[ids[row][col]].item<double>();
      EXPECT_NEAR(got[row][col].item<double>(), expected, 1e-12) << "row " << row << " col " << col;
    }
  }
  EXPECT_THROW(xpo::completion_token_logps(logits, ids, mask, p + 1), c10::Error);
}

TEST(FirstTrueIndex, GivesTheWidthWhenARowHasNone) {
  const auto mask = torch::tensor({0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1}, torch::kBool).view({3, 4});
  EXPECT_TRUE(xpo::first_true_index(mask).equal(torch::tensor({2, 0, 3}, torch::kLong)));
  EXPECT_TRUE(xpo::first_true_index(torch::zeros({2, 5}, torch::kBool)).equal(torch::tensor({5, 5}, torch::kLong)));
}

TEST(TruncateAfterEos, PadsStrictlyAfterTheFirstEosAndKeepsTheEos) {
  const std::int64_t eos = 2, pad = 0;
  const auto ids = torch::tensor({5, 2, 7, 2,    // EOS second: the rest becomes pad
                                  2, 9, 9, 9,    // EOS first
                                  4, 4, 4, 4},   // no EOS: unchanged
                                 torch::kLong).view({3, 4});
  const auto out = xpo::truncate_after_eos(ids, eos, pad);
  EXPECT_TRUE(out.ids.equal(torch::tensor({5, 2, 0, 0, 2, 0, 0, 0, 4, 4, 4, 4}, torch::kLong).view({3, 4})));
  EXPECT_TRUE(out.mask.equal(torch::tensor({1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1}, torch::kLong).view({3, 4})));
}

TEST(TruncateAfterEos, PadEqualToEosAndSeveralEosIds) {
  // Qwen: pad == eos. The mask, not the ids, says where the completion ends.
  const auto same = xpo::truncate_after_eos(torch::tensor({{3, 2, 5}}, torch::kLong), 2, 2);
  EXPECT_TRUE(same.ids.equal(torch::tensor({{3, 2, 2}}, torch::kLong)));
  EXPECT_TRUE(same.mask.equal(torch::tensor({{1, 1, 0}}, torch::kLong)));
  // Llama 3 stops at either <|eot_id|> or <|end_of_text|>.
  const std::vector<std::int64_t> eos_ids{7, 9};
  const auto several = xpo::truncate_after_eos(torch::tensor({{1, 9, 7, 3}, {7, 1, 1, 1}}, torch::kLong), eos_ids, 0);
  EXPECT_TRUE(several.ids.equal(torch::tensor({{1, 9, 0, 0}, {7, 0, 0, 0}}, torch::kLong)));
  EXPECT_TRUE(xpo::contains_any_of(torch::tensor({{1, 9}, {3, 4}}, torch::kLong), eos_ids)
                  .equal(torch::tensor({true, false})));
}

TEST(MaskedReductions, SumAndMeanOverMaskedPositions) {
  const auto values = torch::tensor({{1.0, 2.0, 4.0}, {8.0, 16.0, 32.0}}, torch::kDouble);
  const auto mask = torch::tensor({{1, 0, 1}, {0, 0, 0}}, torch::kLong);
  EXPECT_TRUE(xpo::masked_sum(values, mask).equal(torch::tensor({5.0, 0.0}, torch::kDouble)));
  EXPECT_TRUE(xpo::masked_mean(values, mask).equal(torch::tensor({2.5, 0.0}, torch::kDouble)));
}

TEST(PositionIds, CumsumMinusOneOnRealTokens) {
  const auto mask = torch::tensor({{0, 0, 1, 1, 1}, {1, 1, 1, 0, 0}}, torch::kLong);
  EXPECT_TRUE(xpo::position_ids_from_mask(mask).equal(torch::tensor({{1, 1, 0, 1, 2}, {0, 1, 2, 1, 1}}, torch::kLong)));
}

TEST(PadSequences, LeftAndRightPaddingWithMask) {
  const std::vector<std::vector<std::int64_t>> seqs{{5, 6, 7}, {8}};
  const auto left = xpo::pad_sequences(seqs, 0, xpo::PaddingSide::left);
  EXPECT_TRUE(left.ids.equal(torch::tensor({{5, 6, 7}, {0, 0, 8}}, torch::kLong)));
  EXPECT_TRUE(left.mask.equal(torch::tensor({{1, 1, 1}, {0, 0, 1}}, torch::kLong)));
  const auto right = xpo::pad_sequences(seqs, 9, xpo::PaddingSide::right, torch::kCPU, 4);
  EXPECT_TRUE(right.ids.equal(torch::tensor({{5, 6, 7, 9}, {8, 9, 9, 9}}, torch::kLong)));
  EXPECT_TRUE(right.mask.equal(torch::tensor({{1, 1, 1, 0}, {1, 0, 0, 0}}, torch::kLong)));
  EXPECT_THROW(xpo::pad_sequences(seqs, 0, xpo::PaddingSide::left, torch::kCPU, 2), xpo::Error);
}

TEST(PadRightTo, ExtendsTheLastDimension) {
  const auto t = torch::tensor({{1, 2}, {3, 4}}, torch::kLong);
  EXPECT_TRUE(xpo::pad_right_to(t, 4, 0).equal(torch::tensor({{1, 2, 0, 0}, {3, 4, 0, 0}}, torch::kLong)));
  EXPECT_TRUE(xpo::pad_right_to(t, 2, 0).equal(t));
  EXPECT_THROW(xpo::pad_right_to(t, 1, 0), c10::Error);
}

// Concatenating both completion sets into one batch of 2B (ALGORITHM.md §1.5) must not change the masked sums.
TEST(CompletionTokenLogps, ConcatenatedBatchGivesTheSameMaskedSums) {
  torch::manual_seed(4);
  const std::int64_t p = 2, v = 13;
  const auto a_ids = torch::randint(v, {2, 3}, torch::kLong);
  const auto a_mask = torch::tensor({{1, 1, 1}, {1, 0, 0}}, torch::kLong);
  const auto b_ids = torch::randint(v, {2, 5}, torch::kLong);
  const auto b_mask = torch::tensor({{1, 1, 1, 1, 0}, {1, 1, 1, 1, 1}}, torch::kLong);
  const auto logits_a = torch::randn({2, p + 3, v}, torch::kDouble);
  const auto logits_b = torch::randn({2, p + 5, v}, torch::kDouble);
  const auto separate_a = xpo::completion_token_logps(logits_a, a_ids, a_mask, p).sum(-1);
  const auto separate_b = xpo::completion_token_logps(logits_b, b_ids, b_mask, p).sum(-1);
  // One batch: the shorter set is right-padded (mask 0) and its logits extended with arbitrary values.
  const auto ids = torch::cat({xpo::pad_right_to(a_ids, 5, 0), b_ids});
  const auto mask = torch::cat({xpo::pad_right_to(a_mask, 5, 0), b_mask});
  const auto logits = torch::cat({torch::cat({logits_a, torch::randn({2, 2, v}, torch::kDouble)}, 1), logits_b});
  const auto joint = xpo::completion_token_logps(logits, ids, mask, p).sum(-1);
  EXPECT_TRUE(all_close(joint, torch::cat({separate_a, separate_b}), 1e-12));
}

}  // namespace
