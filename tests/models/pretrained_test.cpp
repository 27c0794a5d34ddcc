// xpo/models: parity with Hugging Face transformers on every model folder of $XPO_FIXTURES_DIR/models/ and
// $XPO_FIXTURES_DIR/new-models/ (see their READMEs: qwen2, llama, qwen3 + its reward model, mistral, gemma3_text,
// phi3, smollm3, qwen2 with YaRN). Every size comes from the files, so the same tests run on another fixture set of the same schema.
// Every tolerance has the golden tests' form |a - e| <= tol * (1 + |e|) (xpo::test::all_close), so it holds on other
// inputs of the same schema with larger values too:
//  - logits, next-token and completion log-probs, reward scores against transformers: tol 1e-4 (the models README's
//    1e-4 for values of order 1; float32 forwards of two implementations that sum in different orders);
//  - a log-prob sum over T tokens: tol 1e-4 x T (T per-token errors, each within the per-token bound);
//  - KV-cached vs full forward of our own model: float64 1e-12 (exact up to rounding: positions, masks and cache
//    offsets are right), float32 2e-5 (the same computation with other float32 summation orders: measured up to
//    7.7e-6 over 20 random continuations of 12 steps on each fixture, and transformers' own cached decode differs
//    from its full forward by up to 1.0e-5: new-models README).
#include <gtest/gtest.h>

#include <xpo/models/pretrained.hpp>

#include <unistd.h>

#include "support/fixtures.hpp"

namespace {

using nlohmann::json;
using xpo::test::all_close;
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
    EXPECT_TRUE(all_close(logits.index({present}), expected.values.index({present}), 1e-4)) << "logits";

    const auto next = xpo::test::to_holed_tensor(batch.at("next_token_logprobs"));
    const auto t = ids.size(1);
    const auto got = xpo::selective_log_softmax(logits.narrow(1, 0, t - 1), ids.narrow(1, 1, t - 1)).unsqueeze(-1);
    EXPECT_TRUE(all_close(got.index({next.present}), next.values.index({next.present}), 1e-4)) << "next-token log-probs";
  }
}

void check_completion_logprobs(xpo::models::CausalLM& model, const json& reference) {
  torch::NoGradGuard no_grad;
  const auto& c = reference.at("completion_logprobs");
  const auto logits = model->forward(ids_of(c.at("input_ids")), ids_of(c.at("attention_mask")), ids_of(c.at("position_ids")));
  const auto logps = xpo::completion_token_logps(logits, ids_of(c.at("completion_ids")), ids_of(c.at("completion_mask")),
                                                 c.at("prompt_width").get<std::int64_t>());
  EXPECT_TRUE(all_close(logps, to_tensor(c.at("logprobs"), torch::kDouble), 1e-4)) << "completion log-probs";
  const auto tokens = static_cast<double>(logps.size(-1));
  EXPECT_TRUE(all_close(logps.sum(-1), to_tensor(c.at("logprob_sums"), torch::kDouble), 1e-4 * tokens)) << "log-prob sums";
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
      EXPECT_TRUE(all_close(scores, to_tensor(batch.at("scores"), torch::kDouble), 1e-4)) << "scores";
      const auto all = xpo::test::to_holed_tensor(batch.at("score_logits"));
      EXPECT_TRUE(all_close(rm->forward(ids, mask, pos).index({all.present}), all.values.index({all.present}), 1e-4))
          << "score head at every real position";
    }
    const auto& pc = reference.at("prompt_completion");
    torch::Tensor index;
    const auto scores = rm->completion_scores(ids_of(pc.at("input_ids")), pc.at("prompt_width").get<std::int64_t>(), pad, &index);
    EXPECT_TRUE(index.equal(ids_of(pc.at("score_index")))) << "ALGORITHM.md §4 score index";
    EXPECT_TRUE(all_close(scores, to_tensor(pc.at("scores"), torch::kDouble), 1e-4)) << "get_reward scores";
    ++checked;
  }
  EXPECT_GT(checked, 0u) << "no reward model in the fixture set";
}

// Prefill + one-token steps through the KV cache give the full forward's logits at every step. In float64 the two
// agree to rounding (1e-12): any error in positions, masks or cache offsets would show at O(1); in float32 they
// differ only by summation order (2e-5, see the tolerances above). Several random continuations per fixture.
TEST(KVCache, IncrementalDecodingEqualsFullRecompute) {
  torch::NoGradGuard no_grad;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    const auto prompt = ids_of(g.at("input_ids"));
    const auto prompt_mask = ids_of(g.at("attention_mask"));
    const auto b = prompt.size(0), p = prompt.size(1);
    const std::int64_t steps = 8;
    for (const auto& [dtype, tol] : {std::pair{torch::kDouble, 1e-12}, std::pair{torch::kFloat, 2e-5}}) {
      auto model = xpo::models::load_causal_lm(folder, torch::kCPU, dtype);
      for (int draw = 0; draw < 3; ++draw) {
        SCOPED_TRACE(folder.string() + (dtype == torch::kDouble ? " float64" : " float32") + " draw " + std::to_string(draw));
        torch::manual_seed(draw);
        const auto extra = torch::randint(3, model->vocab_size(), {b, steps}, torch::kLong);
        const auto ids = torch::cat({prompt, extra}, 1);
        const auto mask = torch::cat({prompt_mask, torch::ones({b, steps}, torch::kLong)}, 1);
        const auto pos = xpo::position_ids_from_mask(mask);
        const auto full = model->forward(ids, mask, pos);  // [B, P+steps, V]

        auto cache = model->make_cache(b, p + steps);
        const auto prefill = model->forward(prompt, prompt_mask, pos.narrow(1, 0, p), cache, /*last_only=*/true);
        EXPECT_TRUE(all_close(prefill.squeeze(1), full.select(1, p - 1), tol)) << "prefill";
        for (std::int64_t s = 0; s < steps; ++s) {
          const auto step = model->forward(extra.narrow(1, s, 1), mask.narrow(1, 0, p + s + 1), pos.narrow(1, p + s, 1), cache);
          EXPECT_TRUE(all_close(step.squeeze(1), full.select(1, p + s), tol)) << "step " << s;
        }
        EXPECT_EQ(cache.length, p + steps);
        EXPECT_THROW(model->forward(extra.narrow(1, 0, 1), mask, pos.narrow(1, 0, 1), cache), c10::Error) << "overflow";
      }
    }
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
    // A missing key in the original means the config class's default; the saved file states it.
    EXPECT_EQ(config.at("tie_word_embeddings").get<bool>(), xpo::io::ModelConfig::load(folder).tie_word_embeddings);
    const auto original_config = xpo::test::read_json(folder / "config.json");
    for (const auto& [key, value] : original_config.items()) {
      if (key != "torch_dtype" && key != "dtype") {
        EXPECT_EQ(config.at(key), value) << "config.json key " << key;
      }
    }
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

    // Every linear layer under this architecture's own names (Phi3: qkv_proj, o_proj, gate_up_proj, down_proj).
    xpo::models::LoRAOptions options;
    options.r = 4;
    options.target_modules = model->config().linear_layer_names();
    model->enable_lora(options);
    for (const auto& p : model->named_parameters())
      EXPECT_EQ(p.value().requires_grad(), xpo::models::is_lora_parameter(p.key())) << p.key();
    EXPECT_EQ(model->trainable_parameters().size(),
              2u * options.target_modules.size() * static_cast<std::size_t>(model->config().num_hidden_layers));
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
    EXPECT_TRUE(all_close(merged->forward(ids, mask, pos), adapted, 1e-4)) << "merged checkpoint";
    xpo::models::save_lora_adapter(model, dir_ / "adapter", folder.string());
    const auto adapter = xpo::io::SafetensorsFile::open(dir_ / "adapter" / "adapter_model.safetensors");
    EXPECT_TRUE(adapter.contains("base_model.model.model.layers.0.self_attn." + options.target_modules.front() + ".lora_A.weight"));
    EXPECT_EQ(xpo::test::read_json(dir_ / "adapter" / "adapter_config.json").at("target_modules"), json(options.target_modules));
    // The merged checkpoint has exactly the original tensor names (HF's, fused ones included).
    EXPECT_EQ(xpo::io::TensorStore::open(dir_ / "merged").names(), xpo::io::TensorStore::open(folder).names());
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
           {"model_type", "gpt2"}, {"hidden_act", "gelu"}, {"rope_scaling", {{"rope_type", "ntk-by-parts"}, {"factor", 4.0}}},
           {"num_key_value_heads", 3}}) {
    auto bad = config;
    bad[key] = value;
    EXPECT_THROW(xpo::io::ModelConfig::from_json(bad), xpo::FileError) << key;
  }
}

}  // namespace

namespace {

// LongRoPE (phi3): a cached decode that crosses original_max_position_embeddings recomputes the sequence with the
// long factors, so every step equals what a call without cache gives over the sequence so far (the intended
// behaviour the new-models README names; transformers 4.57.1's own cached crossing is broken there).
TEST(KVCache, LongRopeCrossingEqualsRecomputeWithoutCache) {
  torch::NoGradGuard no_grad;
  std::size_t checked = 0;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    const auto config = xpo::io::ModelConfig::load(folder);
    if (!config.rope_scaling || config.rope_scaling->type != "longrope" || config.is_sequence_classifier()) continue;
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto prompt = ids_of(reference.at("greedy").at("input_ids"));
    const auto prompt_mask = ids_of(reference.at("greedy").at("attention_mask"));
    const auto b = prompt.size(0), p = prompt.size(1);
    const auto original = config.rope_scaling->original_max_position_embeddings;
    // Enough steps that the longest row goes from below the boundary (or at it) to beyond it.
    const auto steps = std::max<std::int64_t>(3, original + 3 - p);
    torch::manual_seed(0);
    const auto extra = torch::randint(3, model->vocab_size(), {b, steps}, torch::kLong);
    const auto ids = torch::cat({prompt, extra}, 1);
    const auto mask = torch::cat({prompt_mask, torch::ones({b, steps}, torch::kLong)}, 1);
    const auto pos = xpo::position_ids_from_mask(mask);
    auto cache = model->make_cache(b, p + steps);
    (void)model->forward(prompt, prompt_mask, pos.narrow(1, 0, p), cache, true);
    bool crossed = false;
    for (std::int64_t s = 0; s < steps; ++s) {
      const auto w = p + s + 1;
      const auto step = model->forward(extra.narrow(1, s, 1), mask.narrow(1, 0, w), pos.narrow(1, p + s, 1), cache);
      const auto full = model->forward(ids.narrow(1, 0, w), mask.narrow(1, 0, w), pos.narrow(1, 0, w));
      EXPECT_TRUE(xpo::test::all_close(step.squeeze(1), full.select(1, w - 1), 2e-5)) << "step " << s;
      crossed = crossed || pos.narrow(1, p + s, 1).max().item<std::int64_t>() + 1 > original;
    }
    EXPECT_TRUE(crossed) << "the test must cross original_max_position_embeddings";
    ++checked;
  }
  EXPECT_GT(checked, 0u) << "no longrope model in the fixture set";
}

// rope_scaling kinds without a fixture of their own: dynamic NTK equals the plain table up to
// max_position_embeddings and stretches beyond it; yarn's factor follows max / original as in v4.57.1.
TEST(RopeScaling, DynamicAndYarnFollowTransformersRules) {
  json j = {{"model_type", "llama"}, {"vocab_size", 50}, {"hidden_size", 32}, {"intermediate_size", 64},
            {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"max_position_embeddings", 16},
            {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}};
  const auto dynamic = xpo::io::ModelConfig::from_json(j);
  xpo::models::RotaryEmbedding rope(dynamic.rope_theta, dynamic.rotary_dim(), dynamic.rope_scaling, 16);
  xpo::models::RotaryEmbedding plain(dynamic.rope_theta, dynamic.rotary_dim(), std::nullopt, 16);
  const auto short_pos = torch::arange(16, torch::kLong).unsqueeze(0);
  EXPECT_TRUE(rope.tables(short_pos, torch::kFloat).cos.equal(plain.tables(short_pos, torch::kFloat).cos));
  const auto long_pos = torch::arange(40, torch::kLong).unsqueeze(0);
  EXPECT_GT((rope.tables(long_pos, torch::kFloat).cos - plain.tables(long_pos, torch::kFloat).cos).abs().max().item<double>(), 1e-3);

  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 3.0}, {"original_max_position_embeddings", 4}};
  const auto yarn = xpo::io::ModelConfig::from_json(j);
  EXPECT_DOUBLE_EQ(yarn.rope_scaling->factor, 4.0) << "max_position_embeddings / original";
  EXPECT_NEAR(xpo::models::rotary_attention_factor(yarn.rope_scaling), 0.1 * std::log(4.0) + 1, 1e-12);
  j["rope_scaling"] = {{"rope_type", "su"}};
  EXPECT_THROW(xpo::io::ModelConfig::from_json(j), xpo::FileError) << "unknown rope_scaling type";
  j["rope_scaling"] = nullptr;
  j["model_type"] = "gpt_oss";
  EXPECT_THROW(xpo::io::ModelConfig::from_json(j), xpo::FileError) << "unknown model_type";
}

// The per-architecture policies each family's config.json maps to.
TEST(HfConfigPolicies, EachFamilyMapsToItsPolicies) {
  std::size_t checked = 0;
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    const auto raw = xpo::test::read_json(folder / "config.json");
    const auto c = xpo::io::ModelConfig::load(folder);
    const auto layers = static_cast<std::size_t>(c.num_hidden_layers);
    ASSERT_EQ(c.layer_attention.size(), layers);
    ASSERT_EQ(c.layer_rope.size(), layers);
    EXPECT_EQ(c.qk_norm, c.model_type == "qwen3" || c.model_type == "gemma3_text");
    EXPECT_EQ(c.fused_projections, c.model_type == "phi3");
    EXPECT_EQ(c.norm_adds_one, c.model_type == "gemma3_text");
    if (raw.contains("layer_types") && c.sliding_window) {
      for (std::size_t i = 0; i < layers; ++i)
        EXPECT_EQ(c.layer_attention[i] == xpo::io::LayerAttention::sliding, raw["layer_types"][i] == "sliding_attention") << i;
    }
    if (c.model_type == "mistral") {
      EXPECT_EQ(c.sliding_window, raw.at("sliding_window").get<std::int64_t>());
      for (auto a : c.layer_attention) EXPECT_EQ(a, xpo::io::LayerAttention::sliding);
    }
    if (raw.contains("no_rope_layers")) {
      for (std::size_t i = 0; i < layers; ++i) {
        EXPECT_EQ(c.layer_rope[i] == xpo::io::LayerRope::none, raw["no_rope_layers"][i] == 0) << i;
      }
    }
    if (c.model_type == "gemma3_text") {
      EXPECT_NEAR(c.embedding_scale, std::sqrt(static_cast<double>(c.hidden_size)), 1e-12);
      EXPECT_NEAR(c.query_scale, 1.0 / std::sqrt(raw.at("query_pre_attn_scalar").get<double>()), 1e-12);
      EXPECT_EQ(c.final_logit_softcapping.has_value(), !raw.at("final_logit_softcapping").is_null());
      EXPECT_TRUE(c.tie_word_embeddings || raw.contains("tie_word_embeddings")) << "missing key = the class default (true)";
    }
    if (c.model_type == "phi3") {
      EXPECT_EQ(c.rotary_dim(), static_cast<std::int64_t>(c.head_dim * raw.at("partial_rotary_factor").get<double>()));
      EXPECT_EQ(c.linear_layer_names(), (std::vector<std::string>{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}));
    }
    ++checked;
  }
  EXPECT_GT(checked, 0u);
}

// The shared-prompt forward (the trainer's loss forward, issue 23: each prompt once, its C completions attending to
// its keys and values) equals forward_window over the C B rows [prompt; completion]: the completion log-probs AND
// every trainable parameter's gradient of a weighted sum of them, float32, |a - e| <= 1e-5 (1 + |e|) (the same
// computation in other float32 summation orders; the gradients of the shared prompt add up over its copies). On
// every fixture family, on the left-padded prompts of different lengths of its reference.json, with completions
// masked after an early EOS, C = 2 (and C = 1, 3 for the log-probs); full fine-tuning, LoRA on every linear layer,
// gradient checkpointing (against the plain forward), and both. Under bf16 autocast the two agree to bf16
// rounding: |a - e| <= 2e-2 (1 + |e|) (bf16 keeps 8 bits: a log-prob of magnitude ~ln V moves by ~1e-2).
TEST(SharedPrompt, LogprobsAndGradientsEqualFullForwards) {
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    const auto reference = xpo::test::read_json(folder / "reference.json");
    const auto& g = reference.at("greedy");
    const auto prompt = ids_of(g.at("input_ids")), prompt_mask = ids_of(g.at("attention_mask"));
    const auto b = prompt.size(0), p = prompt.size(1);
    ASSERT_GT(prompt_mask.sum(-1).max().item<std::int64_t>(), prompt_mask.sum(-1).min().item<std::int64_t>());
    for (const bool lora : {false, true}) {
      for (const bool checkpointing : {false, true}) {
        SCOPED_TRACE(folder.string() + (lora ? " LoRA" : "") + (checkpointing ? " checkpointing" : ""));
        auto model = xpo::models::load_causal_lm(folder);
        const auto vocab = model->vocab_size();
        torch::manual_seed(3);
        if (lora) {
          xpo::models::LoRAOptions options;
          options.r = 2;
          options.dropout = 0.0;
          options.target_modules = model->config().linear_layer_names();
          model->enable_lora(options);
          torch::NoGradGuard no_grad;
          for (const auto& param : model->named_parameters())
            if (param.key().find("lora_B") != std::string::npos) param.value().normal_(0.0, 0.05);
        }
        const auto params = model->trainable_parameters();
        const auto logps_and_grads = [&](const torch::Tensor& completions, const torch::Tensor& mask, const torch::Tensor& weights,
                                         bool shared, bool with_checkpointing) {
          model->set_gradient_checkpointing(with_checkpointing);
          for (const auto& param : params) param.mutable_grad() = torch::Tensor();
          const auto copies = completions.size(0) / b, t = completions.size(1);
          torch::Tensor logits;
          if (shared) {
            logits = model->forward_shared_prompt(prompt, prompt_mask, completions, mask);
          } else {
            const auto full_mask = torch::cat({prompt_mask.repeat({copies, 1}), mask}, 1);
            logits = model->forward_window(torch::cat({prompt.repeat({copies, 1}), completions}, 1), full_mask,
                                           xpo::position_ids_from_mask(full_mask), p - 1, t);
          }
          const auto logps = xpo::aligned_token_logps(logits, completions, mask);
          std::vector<torch::Tensor> grads;
          if (weights.defined()) {
            (logps * weights).sum().backward();
            for (const auto& param : params) grads.push_back(param.grad().clone());
          }
          return std::pair{logps.detach(), grads};
        };
        for (const std::int64_t copies : {2, 1, 3}) {
          const std::int64_t t = 7;
          const auto completions = torch::randint(3, vocab, {copies * b, t}, torch::kLong);
          auto mask = torch::ones({copies * b, t}, torch::kLong);
          mask[0].narrow(0, 3, t - 3).zero_();  // an early EOS: the tail is masked
          mask[copies * b - 1].narrow(0, 5, t - 5).zero_();
          // Mean-scaled random weights: gradients of order 1e-2..1, so the tolerance is not lost to their size.
          const auto weights = copies == 2 ? torch::rand({copies * b, t}) / static_cast<double>(copies * b * t) : torch::Tensor();
          const auto [expected, expected_grads] = logps_and_grads(completions, mask, weights, false, false);
          const auto [got, got_grads] = logps_and_grads(completions, mask, weights, true, checkpointing);
          EXPECT_TRUE(all_close(got, expected, 1e-5)) << copies << " copies";
          ASSERT_EQ(got_grads.size(), expected_grads.size());
          for (std::size_t i = 0; i < got_grads.size(); ++i) EXPECT_TRUE(all_close(got_grads[i], expected_grads[i], 1e-5)) << "parameter " << i;
          if (copies == 2) {
            ASSERT_FALSE(got_grads.empty());
            EXPECT_GT(got.masked_select(mask.eq(0)).numel(), 0);
            EXPECT_TRUE(got.masked_select(mask.eq(0)).eq(0).all().item<bool>()) << "masked positions are 0";
            torch::NoGradGuard no_grad;
            xpo::compat::AutocastGuard bf16(torch::kCPU, torch::kBFloat16, true);
            const auto [low, unused] = logps_and_grads(completions, mask, torch::Tensor(), true, false);
            const auto [low_expected, unused_too] = logps_and_grads(completions, mask, torch::Tensor(), false, false);
            EXPECT_TRUE(all_close(low, low_expected, 2e-2)) << "bf16 autocast";
          }
        }
      }
    }
  }
}

// LoRA names follow the architecture: a fused model refuses q_proj (as PEFT finds no such module) with a message
// listing its own layers; PEFT's default targets for phi3 are its fused layers.
TEST(Lora, TargetsAreTheArchitecturesOwnLayerNames) {
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    if (is_reward_model(folder)) continue;
    SCOPED_TRACE(folder.string());
    auto model = xpo::models::load_causal_lm(folder);
    const auto& names = model->config().linear_layer_names();
    xpo::models::LoRAOptions options;
    options.target_modules = model->config().fused_projections ? std::vector<std::string>{"q_proj"}
                                                               : std::vector<std::string>{"qkv_proj"};
    try {
      model->enable_lora(options);
      ADD_FAILURE() << "must throw";
    } catch (const xpo::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(names.front()), std::string::npos) << e.what();
    }
    options.target_modules = xpo::models::default_lora_targets(model->config().model_type);
    EXPECT_NO_THROW(model->enable_lora(options));
  }
}

}  // namespace
