// xpo/models: parity with Hugging Face transformers on every model folder of $XPO_FIXTURES_DIR/models/ (see its
// README). Every size comes from the files, so the same tests run on another fixture set of the same schema.
// Tolerances (models README): logits, next-token and completion log-probs, reward scores 1e-4 absolute;
// log-prob sums 1e-3; KV-cached vs full forward 1e-5.
#include <gtest/gtest.h>

#include <xpo/models/pretrained.hpp>

#include <unistd.h>

#include "support/fixtures.hpp"

namespace {

using nlohmann::json;
using xpo::test::max_abs_within;
using xpo::test::to_tensor;

torch::Tensor ids_of(const json& j) { return to_tensor(j, torch::kLong); }

bool is_reward_model(const std::filesystem::path& folder) {
  return xpo::io::ModelConfig::load(folder).is_sequence_classifier();
}

using xpo::test::ScratchDir;

// Logits at every position the reference has, and the next-token log-probs.
void check_causal_batches(xpo::models::CausalLM& model, const json& reference, const std::string& what) {
  torch::NoGradGuard no_grad;
  ASSERT_FALSE(reference.at("batches").empty());
  for (const auto& batch : reference.at("batches")) {
    SCOPED_TRACE(what + " batch " + batch.at("name").get<std::string>());
    const auto ids = ids_of(batch.at("input_ids"));
    const auto logits = model->forward(ids, ids_of(batch.at("attention_mask")), ids_of(batch.at("position_ids")));
    const auto expected = xpo::test::to_holed_tensor(batch.at("logits"));
    ASSERT_EQ(logits.sizes(), expected.values.sizes());
    const auto present = expected.present;
    EXPECT_TRUE(max_abs_within(logits.index({present}), expected.values.index({present}), 1e-4)) << "logits";

    const auto next = xpo::test::to_holed_tensor(batch.at("next_token_logprobs"));
    const auto t = ids.size(1);
    const auto got = xpo::selective_log_softmax(logits.narrow(1, 0, t - 1), ids.narrow(1, 1, t - 1)).unsqueeze(-1);
    EXPECT_TRUE(max_abs_within(got.index({next.present}), next.values.index({next.present}), 1e-4)) << "next-token log-probs";
  }
}

void check_completion_logprobs(xpo::models::CausalLM& model, const json& reference) {
  torch::NoGradGuard no_grad;
  const auto& c = reference.at("completion_logprobs");
  const auto logits = model->forward(ids_of(c.at("input_ids")), ids_of(c.at("attention_mask")), ids_of(c.at("position_ids")));
  const auto logps = xpo::completion_token_logps(logits, ids_of(c.at("completion_ids")), ids_of(c.at("completion_mask")),
                                                 c.at("prompt_width").get<std::int64_t>());
  EXPECT_TRUE(max_abs_within(logps, to_tensor(c.at("logprobs"), torch::kDouble), 1e-4)) << "completion log-probs";
  EXPECT_TRUE(max_abs_within(logps.sum(-1), to_tensor(c.at("logprob_sums"), torch::kDouble), 1e-3)) << "log-prob sums";
}

TEST(ModelParity, CausalLMsMatchTransformers) {
  std::size_t checked = 0;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    check_causal_batches(model, reference, "float32");
    check_completion_logprobs(model, reference);
    ++checked;
  }
  EXPECT_GT(checked, 0u) << "no causal LM in the fixture set";
}

// model.bf16.safetensors (same weights rounded to bf16) loads into a float32 model widened exactly.
TEST_F(ScratchDir, Bf16CheckpointsWidenExactly) {
  std::size_t checked = 0;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (!std::filesystem::exists(folder / "model.bf16.safetensors")) continue;
    SCOPED_TRACE(folder.string());
    const auto bf16_folder = dir_ / folder.filename();
    std::filesystem::create_directories(bf16_folder);
    std::filesystem::copy_file(folder / "config.json", bf16_folder / "config.json");
    std::filesystem::create_symlink(folder / "model.bf16.safetensors", bf16_folder / "model.safetensors");
    auto model = xpo::models::load_causal_lm(bf16_folder);
    const auto stored = xpo::io::SafetensorsFile::open(folder / "model.bf16.safetensors");
    EXPECT_EQ(stored.entries().front().dtype.type, torch::kBFloat16);
    check_causal_batches(model, xpo::test::read_json(folder / "reference.bf16.json"), "bf16 weights");
    ++checked;
  }
  EXPECT_GT(checked, 0u) << "no model.bf16.safetensors in the fixture set";
}

TEST(ModelParity, RewardModelsMatchTransformers) {
  std::size_t checked = 0;
  torch::NoGradGuard no_grad;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (!is_reward_model(folder)) continue;
    SCOPED_TRACE(folder.string());
    auto rm = xpo::models::load_reward_model(folder);
    const auto pad = rm->config().pad_token_id.value_or(0);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    for (const auto& batch : reference.at("batches")) {
      SCOPED_TRACE(batch.at("name").get<std::string>());
      const auto ids = ids_of(batch.at("input_ids"));
      const auto mask = ids_of(batch.at("attention_mask"));
      const auto pos = ids_of(batch.at("position_ids"));
      torch::Tensor index;
      const auto scores = rm->sequence_scores(ids, mask, pos, pad, &index).select(-1, 0);
      EXPECT_TRUE(index.equal(ids_of(batch.at("score_index")))) << "score index";
      EXPECT_TRUE(max_abs_within(scores, to_tensor(batch.at("scores"), torch::kDouble), 1e-4)) << "scores";
      const auto all = xpo::test::to_holed_tensor(batch.at("score_logits"));
      EXPECT_TRUE(max_abs_within(rm->forward(ids, mask, pos).index({all.present}), all.values.index({all.present}), 1e-4))
          << "score head at every real position";
    }
    const auto& pc = reference.at("prompt_completion");
    torch::Tensor index;
    const auto scores = rm->completion_scores(ids_of(pc.at("input_ids")), pc.at("prompt_width").get<std::int64_t>(), pad, &index);
    EXPECT_TRUE(index.equal(ids_of(pc.at("score_index")))) << "ALGORITHM.md §4 score index";
    EXPECT_TRUE(max_abs_within(scores, to_tensor(pc.at("scores"), torch::kDouble), 1e-4)) << "get_reward scores";
    ++checked;
  }
  EXPECT_GT(checked, 0u) << "no reward model in the fixture set";
}

// Prefill + one-token steps through the KV cache give the full forward's logits at every step (1e-5).
TEST(KVCache, IncrementalDecodingEqualsFullRecompute) {
  torch::NoGradGuard no_grad;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    const auto prompt = ids_of(g.at("input_ids"));
    const auto prompt_mask = ids_of(g.at("attention_mask"));
    const auto b = prompt.size(0), p = prompt.size(1);
    const std::int64_t steps = 5;
    torch::manual_seed(0);
    const auto extra = torch::randint(3, model->vocab_size(), {b, steps}, torch::kLong);
    const auto ids = torch::cat({prompt, extra}, 1);
    const auto mask = torch::cat({prompt_mask, torch::ones({b, steps}, torch::kLong)}, 1);
    const auto pos = xpo::position_ids_from_mask(mask);
    const auto full = model->forward(ids, mask, pos);  // [B, P+steps, V]

    auto cache = model->make_cache(b, p + steps);
    const auto prefill = model->forward(prompt, prompt_mask, pos.narrow(1, 0, p), cache, /*last_only=*/true);
    EXPECT_TRUE(max_abs_within(prefill.squeeze(1), full.select(1, p - 1), 1e-5)) << "prefill";
    for (std::int64_t s = 0; s < steps; ++s) {
      const auto step = model->forward(extra.narrow(1, s, 1), mask.narrow(1, 0, p + s + 1), pos.narrow(1, p + s, 1), cache);
      EXPECT_TRUE(max_abs_within(step.squeeze(1), full.select(1, p + s), 1e-5)) << "step " << s;
    }
    EXPECT_EQ(cache.length, p + steps);
    EXPECT_THROW(model->forward(extra.narrow(1, 0, 1), mask, pos.narrow(1, 0, 1), cache), c10::Error) << "overflow";
  }
}

TEST_F(ScratchDir, SaveLoadRoundTripIsBitIdentical) {
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    const auto out = dir_ / folder.filename();
    if (is_reward_model(folder)) {
      auto rm = xpo::models::load_reward_model(folder);
      xpo::models::save_pretrained(rm, out);
      auto back = xpo::models::load_reward_model(out);
      for (const auto& p : rm->named_parameters()) EXPECT_TRUE(p.value().equal(back->named_parameters()[p.key()])) << p.key();
      continue;
    }
    auto model = xpo::models::load_causal_lm(folder);
    xpo::models::save_pretrained(model, out);
    // The files read back as the same tensors, bit for bit, under the same names as the original checkpoint.
    const auto original = xpo::io::TensorStore::open(folder);
    const auto saved = xpo::io::TensorStore::open(out);
    EXPECT_EQ(saved.names(), original.names());
    for (const auto& name : original.names())
      EXPECT_TRUE(saved.load(name, std::nullopt, torch::kCPU).equal(original.load(name, std::nullopt, torch::kCPU))) << name;
    const auto config = xpo::test::read_json(out / "config.json");
    EXPECT_EQ(config.at("tie_word_embeddings"), xpo::test::read_json(folder / "config.json").at("tie_word_embeddings"));
    EXPECT_EQ(config.at("torch_dtype"), "float32");
    EXPECT_TRUE(std::filesystem::exists(out / "generation_config.json"));
    // Saving in bf16 stores BF16 tensors and says so in config.json.
    xpo::models::save_pretrained(model, dir_ / "bf16", torch::kBFloat16);
    EXPECT_EQ(xpo::test::read_json(dir_ / "bf16" / "config.json").at("torch_dtype"), "bfloat16");
    EXPECT_EQ(xpo::io::SafetensorsFile::open(dir_ / "bf16" / "model.safetensors").entries().front().dtype.type, torch::kBFloat16);
  }
}

// LoRA: only adapters train, adapters-off gives the base model exactly, a merged save equals the adapted model.
TEST_F(ScratchDir, LoraMergedSaveEqualsTheAdaptedModel) {
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& batch = reference.at("batches").at(1);
    const auto ids = ids_of(batch.at("input_ids")), mask = ids_of(batch.at("attention_mask")), pos = ids_of(batch.at("position_ids"));
    torch::NoGradGuard no_grad;
    const auto base_logits = model->forward(ids, mask, pos);

    xpo::models::LoRAOptions options;
    options.r = 4;
    options.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    model->enable_lora(options);
    for (const auto& p : model->named_parameters())
      EXPECT_EQ(p.value().requires_grad(), xpo::models::is_lora_parameter(p.key())) << p.key();
    EXPECT_EQ(model->trainable_parameters().size(), 2u * 7u * static_cast<std::size_t>(model->config().num_hidden_layers));
    EXPECT_TRUE(model->forward(ids, mask, pos).equal(base_logits)) << "B = 0: a fresh adapter changes nothing";
    torch::manual_seed(1);
    for (const auto& p : model->named_parameters())
      if (p.key().find("lora_B") != std::string::npos) p.value().normal_(0.0, 0.05);
    const auto adapted = model->forward(ids, mask, pos);
    EXPECT_GT((adapted - base_logits).abs().max().item<double>(), 1e-2) << "the adapters must matter for this test";
    {
      xpo::models::AdaptersDisabled off(model->adapter_switch());
      EXPECT_TRUE(model->forward(ids, mask, pos).equal(base_logits)) << "adapters off = the reference model";
    }
    EXPECT_TRUE(model->forward(ids, mask, pos).equal(adapted)) << "the guard restores the adapters";

    xpo::models::save_pretrained(model, dir_ / "merged");
    auto merged = xpo::models::load_causal_lm(dir_ / "merged");
    EXPECT_TRUE(max_abs_within(merged->forward(ids, mask, pos), adapted, 1e-4)) << "merged checkpoint";
    xpo::models::save_lora_adapter(model, dir_ / "adapter", folder.string());
    const auto adapter = xpo::io::SafetensorsFile::open(dir_ / "adapter" / "adapter_model.safetensors");
    EXPECT_TRUE(adapter.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    EXPECT_EQ(xpo::test::read_json(dir_ / "adapter" / "adapter_config.json").at("r"), 4);
    std::filesystem::remove_all(dir_ / "merged");
    std::filesystem::remove_all(dir_ / "adapter");
  }
}

TEST(FrozenCopy, SameLogitsNoGradients) {
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    auto model = xpo::models::load_causal_lm(folder);
    auto reference = xpo::models::frozen_copy(model);
    for (const auto& p : reference->parameters()) EXPECT_FALSE(p.requires_grad());
    EXPECT_FALSE(reference->is_training());
    const auto ids = torch::tensor({{5, 9, 17, 3}}, torch::kLong);
    const auto mask = torch::ones_like(ids);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(reference->forward(ids, mask, xpo::position_ids_from_mask(mask))
                    .equal(model->forward(ids, mask, xpo::position_ids_from_mask(mask))));
    // Independent storage: changing the policy leaves the reference alone.
    model->named_parameters()["model.norm.weight"].add_(1.0);
    EXPECT_FALSE(reference->named_parameters()["model.norm.weight"].equal(model->named_parameters()["model.norm.weight"]));
  }
}

TEST_F(ScratchDir, LoadingErrorsNameTheFolderAndTheProblem) {
  const auto folders = xpo::test::model_fixture_folders();
  // No config.json.
  EXPECT_THROW(xpo::models::load_causal_lm(dir_), xpo::FileError);
  // A reward model is not a causal LM and vice versa.
  for (const auto& folder : folders) {
    if (is_reward_model(folder)) {
      EXPECT_THROW(xpo::models::load_causal_lm(folder), xpo::FileError);
    } else {
      EXPECT_THROW(xpo::models::load_reward_model(folder), xpo::FileError);
    }
  }
  // config.json that disagrees with the weights: a shape mismatch names the tensor.
  const auto causal = std::find_if(folders.begin(), folders.end(), [](const auto& f) { return !is_reward_model(f); });
  ASSERT_NE(causal, folders.end());
  auto config = xpo::test::read_json(*causal / "config.json");
  config["intermediate_size"] = config["intermediate_size"].get<int>() + 8;
  std::ofstream(dir_ / "config.json") << config.dump();
  std::filesystem::create_symlink(*causal / "model.safetensors", dir_ / "model.safetensors");
  try {
    (void)xpo::models::load_causal_lm(dir_);
    FAIL() << "must throw";
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.gate_proj.weight\" has shape"), std::string::npos) << e.what();
  }
  // Unsupported architectures and settings are refused when config.json is read.
  config = xpo::test::read_json(*causal / "config.json");
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"model_type", "gpt2"}, {"hidden_act", "gelu"}, {"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}},
           {"num_key_value_heads", 3}}) {
    auto bad = config;
    bad[key] = value;
    EXPECT_THROW(xpo::io::ModelConfig::from_json(bad), xpo::FileError) << key;
  }
}

}  // namespace
