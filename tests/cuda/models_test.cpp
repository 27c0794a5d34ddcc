// CUDA (label `cuda`): the fixture models on the GPU against the CPU and the transformers reference, on every
// model folder of $XPO_FIXTURES_DIR/models/ and new-models/ (as tests/models and tests/generation do). Each test
// skips without a GPU (tests/cuda/support.hpp). Tolerances, all in the form |a - e| <= tol (1 + |e|):
//  - float32 logits, next-token log-probs and reward scores against transformers: 1e-4 (the CPU parity tests'
//    bound: two float32 implementations summing in different orders);
//  - float32 logits on the GPU against our own CPU forward: 2e-5 (the same computation with other float32
//    summation orders: cuBLAS GEMMs and the fused attention kernel instead of the CPU's; the KV-cache test's bound
//    for summation-order differences). TF32 is off by default in LibTorch, so float32 GEMMs keep float32 inputs;
//  - bf16, against the float32 CPU forward of the same bf16-rounded weights: 0.3 on logits (the fixtures' logits
//    lie within about +-6). bfloat16 keeps 8 significant bits (relative rounding up to 2^-8 per operation; a
//    logit near 4 moves in steps of 2^-5); the hidden state is rounded after every projection, norm and residual
//    add of every layer. Measured with the CPU's bf16 kernels in the GPU's place (XPO_CUDA_TESTS_ON_CPU=1,
//    LibTorch 1.13): at most 0.249 with bf16 weights and 0.177 under autocast (tiny-phi3); cuBLAS accumulates
//    bf16 products in float32, so the GPU is expected to stay below. The next-token argmax must also agree
//    wherever float32's top-2 gap exceeds 0.25 (it did everywhere on the CPU). Each check prints the tolerance it
//    needed ("[ measured ]" lines, gathered in scripts/cuda-check.sh's summary), so a GPU run reports its margin;
//  - greedy tokens: exactly the reference's (the fixtures' min_top2_logit_gap says how far every greedy choice
//    is from a tie: far above the float32 differences);
//  - sampled tokens with row streams: exactly the CPU's for the same keys, except that a draw may fall on the
//    other side of a boundary of the cumulative distribution when the GPU's and the CPU's float32 probabilities
//    put that boundary on different sides of the row's uniform. Such a row is accepted only when the uniform lies
//    within 1e-5 of a CPU boundary between the two tokens (the probabilities agree to ~1e-6); the row is then
//    compared up to that step only.
#include <gtest/gtest.h>

#include <xpo/generation/generate.hpp>
#include <xpo/models/pretrained.hpp>

#include <cstdio>

#include "cuda/support.hpp"
#include "support/fixtures.hpp"

namespace {

using nlohmann::json;
using xpo::test::all_close;
using xpo::test::to_tensor;

torch::Tensor ids_of(const json& j) { return to_tensor(j, torch::kLong); }

// max |a - e| / (1 + |e|): the smallest tol for which all_close(a, e, tol) holds. Printed next to the checks, so a
// GPU run reports how far inside its tolerances it stays.
double needed_tol(const torch::Tensor& a, const torch::Tensor& e) {
  const auto ad = a.detach().to(torch::kCPU, torch::kDouble), ed = e.detach().to(torch::kCPU, torch::kDouble);
  return ad.numel() == 0 ? 0.0 : ((ad - ed).abs() / (1 + ed.abs())).max().item<double>();
}

void report(const std::filesystem::path& folder, const std::string& what, double value) {
  std::printf("[ measured ] %s %s: max |a - e| / (1 + |e|) = %.3g\n", folder.filename().c_str(), what.c_str(), value);
}

bool is_reward_model(const std::filesystem::path& folder) {
  return xpo::io::ModelConfig::load(folder).is_sequence_classifier();
}

std::vector<std::filesystem::path> causal_folders() {
  std::vector<std::filesystem::path> out;
  for (const auto& f : xpo::test::model_fixture_folders())
    if (!is_reward_model(f)) out.push_back(f);
  if (out.empty()) throw std::runtime_error("no causal LM among the fixture models");
  return out;
}

// The forward of one reference batch on `device`: logits [B, T, V] back on the CPU, float32.
torch::Tensor logits_on(xpo::models::CausalLM& model, const json& batch, torch::Device device) {
  torch::NoGradGuard no_grad;
  return model->forward(ids_of(batch.at("input_ids")).to(device), ids_of(batch.at("attention_mask")).to(device),
                        ids_of(batch.at("position_ids")).to(device))
      .to(torch::kCPU, torch::kFloat);
}

TEST(CudaParity, Float32LogitsEqualTheCpuAndTransformers) {
  XPO_DEVICE_UNDER_TEST(device);
  std::size_t checked = 0;
  for (const auto& folder : causal_folders()) {
    SCOPED_TRACE(folder.string());
    auto cpu = xpo::models::load_causal_lm(folder);
    auto gpu = xpo::models::load_causal_lm(folder, device);
    ASSERT_EQ(gpu->device().type(), device.type());
    const auto reference = xpo::test::read_json(folder / "reference.json");
    for (const auto& batch : reference.at("batches")) {
      SCOPED_TRACE("batch " + batch.at("name").get<std::string>());
      const auto expected = xpo::test::to_holed_tensor(batch.at("logits"));
      const auto present = expected.present;
      const auto ours = logits_on(gpu, batch, device);
      ASSERT_EQ(ours.sizes(), expected.values.sizes());
      const auto on_cpu = logits_on(cpu, batch, torch::kCPU).index({present});
      EXPECT_TRUE(all_close(ours.index({present}), expected.values.index({present}), 1e-4)) << "against transformers";
      EXPECT_TRUE(all_close(ours.index({present}), on_cpu, 2e-5)) << "against the CPU forward";
      report(folder, "float32 logits vs the CPU", needed_tol(ours.index({present}), on_cpu));
      const auto ids = ids_of(batch.at("input_ids"));
      const auto t = ids.size(1);
      const auto next = xpo::test::to_holed_tensor(batch.at("next_token_logprobs"));
      const auto got = xpo::selective_log_softmax(ours.narrow(1, 0, t - 1), ids.narrow(1, 1, t - 1)).unsqueeze(-1);
      EXPECT_TRUE(all_close(got.index({next.present}), next.values.index({next.present}), 1e-4)) << "next-token log-probs";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0u);
}

// bf16 on the device (the weights in bf16, and float32 weights under bf16 autocast: the trainer's --bf16 path)
// against the float32 CPU forward of the same weights rounded to bf16, so the difference is the bf16 arithmetic
// alone. Tolerance 0.3 (see the top of the file); where float32's top-2 gap exceeds 0.25 the argmax agrees.
TEST(CudaParity, Bf16LogitsTrackTheFloat32Forward) {
  XPO_DEVICE_UNDER_TEST(device);
  constexpr double kTol = 0.3, kClearGap = 0.25;
  for (const auto& folder : causal_folders()) {
    SCOPED_TRACE(folder.string());
    auto rounded = xpo::models::load_causal_lm(folder);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : rounded->parameters()) p.copy_(p.to(torch::kBFloat16).to(torch::kFloat));
    }
    auto bf16 = xpo::models::load_causal_lm(folder, device, torch::kBFloat16);
    auto autocast = xpo::models::load_causal_lm(folder, device);
    {
      torch::NoGradGuard no_grad;
      const auto source = rounded->named_parameters();
      for (auto& p : autocast->named_parameters()) p.value().copy_(source[p.key()]);
    }
    const auto reference = xpo::test::read_json(folder / "reference.json");
    for (const auto& batch : reference.at("batches")) {
      SCOPED_TRACE("batch " + batch.at("name").get<std::string>());
      const auto present = xpo::test::to_holed_tensor(batch.at("logits")).present;
      const auto expected = logits_on(rounded, batch, torch::kCPU).index({present});  // [N, V]
      const auto top2 = std::get<0>(expected.topk(2, -1));
      const auto clear = (top2.select(-1, 0) - top2.select(-1, 1)).gt(kClearGap);  // [N]
      torch::Tensor under_autocast;
      {
        xpo::compat::AutocastGuard low(device.type(), torch::kBFloat16);
        under_autocast = logits_on(autocast, batch, device).index({present});
      }
      for (const auto& [what, got] : {std::pair{"bf16 weights", logits_on(bf16, batch, device).index({present})},
                                      std::pair{"bf16 autocast", under_autocast}}) {
        EXPECT_TRUE(all_close(got, expected, kTol)) << what;
        report(folder, what, needed_tol(got, expected));
        EXPECT_TRUE(got.argmax(-1).index({clear}).equal(expected.argmax(-1).index({clear}))) << what << ": argmax";
      }
    }
  }
}

TEST(CudaParity, RewardModelScoresEqualTransformers) {
  XPO_DEVICE_UNDER_TEST(device);
  torch::NoGradGuard no_grad;
  std::size_t checked = 0;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (!is_reward_model(folder)) continue;
    SCOPED_TRACE(folder.string());
    auto rm = xpo::models::load_reward_model(folder, device);
    const auto pad = rm->config().pad_token_id.value_or(0);
    const auto reference = xpo::test::read_json(folder / "reference.json");  // alive while its parts are read
    for (const auto& batch : reference.at("batches")) {
      SCOPED_TRACE(batch.at("name").get<std::string>());
      torch::Tensor index;
      const auto scores = rm->sequence_scores(ids_of(batch.at("input_ids")).to(device), ids_of(batch.at("attention_mask")).to(device),
                                              ids_of(batch.at("position_ids")).to(device), pad, &index);
      EXPECT_TRUE(index.cpu().equal(ids_of(batch.at("score_index")))) << "score index";
      EXPECT_TRUE(all_close(scores.select(-1, 0).cpu(), to_tensor(batch.at("scores"), torch::kDouble), 1e-4)) << "scores";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0u) << "no reward model in the fixture set";
}

xpo::generation::SamplingOptions greedy_options(const json& g) {
  xpo::generation::SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = g.at("max_new_tokens").get<std::int64_t>();
  o.eos_token_ids = {g.at("eos_token_id").get<std::int64_t>()};
  o.pad_token_id = g.at("pad_token_id").get<std::int64_t>();
  return o;
}

TEST(CudaGeneration, GreedyEqualsTheReferenceTokens) {
  XPO_DEVICE_UNDER_TEST(device);
  for (const auto& folder : causal_folders()) {
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder, device);
    const auto reference = xpo::test::read_json(folder / "reference.json");  // alive while `g` is read
    const auto& g = reference.at("greedy");
    auto options = greedy_options(g);
    auto gen = xpo::compat::make_generator(device, 0);  // unused by greedy decoding; on the device as the trainer's
    const auto expected = ids_of(g.at("new_tokens"));
    for (bool use_cache : {true, false}) {
      SCOPED_TRACE(use_cache ? "KV cache" : "full recompute");
      options.use_cache = use_cache;
      const auto out = xpo::generation::generate(model, ids_of(g.at("input_ids")).to(device),
                                                 ids_of(g.at("attention_mask")).to(device), options, gen);
      ASSERT_EQ(out.completion_ids.device().type(), device.type());
      const auto ours = xpo::pad_right_to(out.completion_ids, options.max_new_tokens, options.pad_token_id).cpu();
      EXPECT_TRUE(ours.equal(expected)) << ours << "\nvs\n" << expected;
      EXPECT_TRUE(out.contains_eos.cpu().equal(expected.eq(options.eos_token_ids[0]).any(-1)));
    }
  }
}

// The first step at which row `row` of a and b differ, or -1.
std::int64_t first_difference(const torch::Tensor& a, const torch::Tensor& b, std::int64_t row) {
  const auto diff = a[row].ne(b[row]).nonzero();
  return diff.numel() == 0 ? -1 : diff[0][0].item<std::int64_t>();
}

// At the first step where the device's row differs from the CPU's: the uniform's target u x total must lie within
// tol (1 + |cdf|) of a CPU cumulative probability between the two tokens (the boundary that rounding moved).
::testing::AssertionResult boundary_case(xpo::models::CausalLM& cpu, const torch::Tensor& prompt, const torch::Tensor& cpu_tokens,
                                         std::int64_t step, std::int64_t other_token, double uniform,
                                         const xpo::generation::SamplingOptions& options, double tol) {
  torch::NoGradGuard no_grad;
  const auto ids = torch::cat({prompt, cpu_tokens.narrow(0, 0, step)}).unsqueeze(0);  // [1, P + step]
  const auto mask = torch::ones_like(ids);
  const auto logits = cpu->forward(ids, mask, xpo::position_ids_from_mask(mask)).select(1, -1);  // [1, V]
  const auto cdf = xpo::generation::process_logits(logits, options).softmax(-1).cumsum(-1).squeeze(0).to(torch::kDouble);
  const double u = std::floor(uniform * 0x1.0p24) * 0x1.0p-24;  // as sample_next truncates it
  const double target = u * cdf[-1].item<double>();
  const auto a = cpu_tokens[step].item<std::int64_t>();
  const auto lo = std::min(a, other_token), hi = std::max(a, other_token);
  const auto between = cdf.narrow(0, lo, hi - lo);  // the boundaries cdf[lo] .. cdf[hi - 1]
  const double closest = (between - target).abs().min().item<double>();
  if (closest <= tol * (1 + target)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "step " << step << ": CPU token " << a << ", device token " << other_token
                                       << ", but the uniform's target " << target << " is " << closest
                                       << " from every CPU boundary between them (tolerance " << tol << ")";
}

TEST(CudaGeneration, RowStreamSamplesEqualTheCpuSamples) {
  XPO_DEVICE_UNDER_TEST(device);
  std::int64_t rows_compared = 0, boundary_rows = 0;
  for (const auto& folder : causal_folders()) {
    SCOPED_TRACE(folder.string());
    auto cpu = xpo::models::load_causal_lm(folder);
    auto gpu = xpo::models::load_causal_lm(folder, device);
    const auto reference = xpo::test::read_json(folder / "reference.json");  // alive while `g` is read
    const auto& g = reference.at("greedy");
    const auto ids = ids_of(g.at("input_ids")), mask = ids_of(g.at("attention_mask"));
    const auto b = ids.size(0);
    for (const auto& [temperature, top_k, top_p] : {std::tuple{1.0, std::int64_t{0}, 1.0}, std::tuple{0.7, std::int64_t{5}, 0.9}}) {
      SCOPED_TRACE("temperature " + std::to_string(temperature) + " top_k " + std::to_string(top_k) + " top_p " + std::to_string(top_p));
      auto options = greedy_options(g);
      options.temperature = temperature;
      options.top_k = top_k;
      options.top_p = top_p;
      xpo::generation::RowStreams streams;
      for (std::int64_t i = 0; i < b; ++i) streams.keys.push_back(xpo::generation::RowStreams::key({2024, static_cast<std::uint64_t>(i)}));
      const auto width = options.max_new_tokens;
      const auto on_cpu = xpo::pad_right_to(xpo::generation::generate(cpu, ids, mask, options, streams).completion_ids, width, options.pad_token_id);
      const auto on_device =
          xpo::pad_right_to(xpo::generation::generate(gpu, ids.to(device), mask.to(device), options, streams).completion_ids, width,
                            options.pad_token_id)
              .cpu();
      for (std::int64_t r = 0; r < b; ++r) {
        ++rows_compared;
        const auto step = first_difference(on_cpu, on_device, r);
        if (step < 0) continue;
        ++boundary_rows;
        const auto length = mask[r].sum().item<std::int64_t>();
        const auto prompt = ids[r].narrow(0, ids.size(1) - length, length);
        EXPECT_TRUE(boundary_case(cpu, prompt, on_cpu[r], step, on_device[r][step].item<std::int64_t>(), streams.uniform(static_cast<std::size_t>(r), step),
                                  options, 1e-5))
            << "row " << r;
      }
    }
  }
  EXPECT_GT(rows_compared, 0);
  // A boundary case needs a uniform within ~1e-6 of a boundary: more than one in this handful of rows would mean
  // the device's probabilities are further from the CPU's than float32 rounding.
  EXPECT_LE(boundary_rows, 1) << "rows whose device samples left the CPU's at a distribution boundary";
}

}  // namespace
