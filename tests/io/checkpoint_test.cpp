// Checkpoint folders (io/checkpoint.hpp, models::save_pretrained): which weight file a folder load prefers, what a
// save removes and keeps — as transformers' from_pretrained / save_pretrained do.
#include <xpo/xpo.hpp>

#include <gtest/gtest.h>

#include <fstream>

#include "support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class CheckpointFolder : public xpo::test::ScratchDir {};

// A folder holding both a single model.safetensors and a (stale) shard index: the single file wins.
TEST_F(CheckpointFolder, ASingleWeightFileWinsOverAShardIndex) {
  xpo::io::save_safetensors(dir_ / "model.safetensors", {{"w", torch::ones({2})}});
  xpo::io::save_safetensors(dir_ / "model-00001-of-00001.safetensors", {{"w", torch::zeros({2})}});
  std::ofstream(dir_ / "model.safetensors.index.json") << R"({"weight_map": {"w": "model-00001-of-00001.safetensors"}})";
  const auto store = xpo::io::TensorStore::open(dir_);
  EXPECT_TRUE(torch::equal(store.load("w", std::nullopt, torch::kCPU), torch::ones({2})));
  fs::remove(dir_ / "model.safetensors");  // without it, the shards are read
  EXPECT_TRUE(torch::equal(xpo::io::TensorStore::open(dir_).load("w", std::nullopt, torch::kCPU), torch::zeros({2})));
}

// save_pretrained: stale shards and index of an earlier sharded save are removed (other files stay), and the
// generation config the model was loaded with is written back unchanged.
TEST_F(CheckpointFolder, SavePretrainedRemovesStaleShardsAndKeepsTheGenerationConfig) {
  const auto source = dir_ / "source";
  fs::copy(xpo::test::fixture_path("models/tiny-qwen2"), source, fs::copy_options::recursive);
  json generation = xpo::test::read_json(source / "generation_config.json");
  generation["eos_token_id"] = json::array({2, 0});
  generation["top_p"] = 0.8;
  std::ofstream(source / "generation_config.json") << generation.dump(2);
  auto model = xpo::models::load_causal_lm(source);

  const auto out = dir_ / "out";
  fs::create_directories(out);
  for (const char* stale : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"})
    std::ofstream(out / stale) << "stale";
  std::ofstream(out / "notes.txt") << "mine";
  xpo::models::save_pretrained(model, out);
  for (const char* stale : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"})
    EXPECT_FALSE(fs::exists(out / stale)) << stale;
  EXPECT_TRUE(fs::exists(out / "notes.txt"));
  EXPECT_EQ(xpo::test::read_json(out / "generation_config.json"), generation);
  // A model built without a folder still gets one made from its config (eos from config.json).
  xpo::models::CausalLM fresh(xpo::io::ModelConfig::from_json(xpo::test::read_json(source / "config.json")));
  xpo::models::save_pretrained(fresh, dir_ / "fresh");
  EXPECT_EQ(xpo::test::read_json(dir_ / "fresh" / "generation_config.json").at("eos_token_id"),
            xpo::test::read_json(source / "config.json").at("eos_token_id"));
}

// A generation_config.json that is not a JSON object is an error naming the file, not a silently ignored one.
TEST_F(CheckpointFolder, AMalformedGenerationConfigIsAnErrorNamingIt) {
  fs::copy(xpo::test::fixture_path("models/tiny-qwen2"), dir_ / "m", fs::copy_options::recursive);
  std::ofstream(dir_ / "m" / "generation_config.json") << "[2, 0]";
  try {
    (void)xpo::io::ModelConfig::load(dir_ / "m");
    ADD_FAILURE() << "accepted";
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json"), std::string::npos) << e.what();
  }
}

}  // namespace
