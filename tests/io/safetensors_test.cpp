// xpo/io/safetensors.hpp and checkpoint.hpp: round trips, sharded folders, and every kind of lying or broken file
// refused with an error that names the file and the tensor.
#include <gtest/gtest.h>

#include <xpo/io/checkpoint.hpp>
#include <xpo/io/hf_config.hpp>
#include <xpo/io/safetensors.hpp>
#include <xpo/models/layers.hpp>

#include <unistd.h>

#include <cmath>
#include <fstream>

#include "support/fixtures.hpp"

namespace {

using nlohmann::json;

class SafetensorsFiles : public xpo::test::ScratchDir {
 protected:
  // A file with the given header text (unpadded) and `data_bytes` bytes of data; `declared` overrides the length.
  std::filesystem::path write_raw(const std::string& header, std::size_t data_bytes, std::optional<std::uint64_t> declared = {}) {
    const auto path = dir_ / "raw.safetensors";
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    std::uint64_t n = declared.value_or(header.size());
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << header << std::string(data_bytes, '\1');
    return path;
  }

  // The error message of opening (and, if that works, reading every tensor of) `path`.
  static std::string error_of(const std::filesystem::path& path) {
    try {
      const auto f = xpo::io::SafetensorsFile::open(path);
      for (const auto& e : f.entries()) (void)f.load(e.name);
    } catch (const xpo::FileError& e) {
      EXPECT_EQ(e.path(), path.string());
      return e.what();
    }
    return "";
  }
};

TEST_F(SafetensorsFiles, RoundTripEveryDtype) {
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f64", torch::randn({2, 3}, torch::kDouble)},   {"f32", torch::randn({4})},
      {"f16", torch::randn({3, 1}).to(torch::kHalf)},  {"bf16", torch::randn({5}).to(torch::kBFloat16)},
      {"i64", torch::randint(-9, 9, {3}, torch::kLong)}, {"i32", torch::randint(-9, 9, {2, 2}, torch::kInt)},
      {"i16", torch::randint(-9, 9, {2}, torch::kShort)}, {"i8", torch::randint(-9, 9, {2}, torch::kChar)},
      {"u8", torch::randint(0, 255, {7}, torch::kByte)}, {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5)},                   {"empty", torch::zeros({0, 4})}};
  xpo::io::save_safetensors(dir_ / "all.safetensors", tensors, {{"note", "test"}});
  EXPECT_FALSE(std::filesystem::exists(dir_ / "all.safetensors.tmp"));
  const auto f = xpo::io::SafetensorsFile::open(dir_ / "all.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "test");
  for (const auto& [name, t] : tensors) EXPECT_TRUE(f.load(name).equal(t)) << name;
  EXPECT_TRUE(f.load("bf16", torch::kFloat).equal(tensors[3].second.to(torch::kFloat))) << "widening is exact";
  // HF's layout: header padded with spaces to a multiple of 8.
  std::ifstream in(dir_ / "all.safetensors", std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(SafetensorsDtypes, TheTorchFreeParserAndTheLoaderAgree) {
  // io/safetensors_header.hpp (no LibTorch) admits a code only if the loader has a type of the same size for it.
  ASSERT_EQ(std::size(xpo::io::kSafetensorsDtypeSizes), xpo::io::safetensors_dtypes().size());
  for (const auto& [code, bytes] : xpo::io::kSafetensorsDtypeSizes) {
    const auto d = xpo::io::dtype_from_safetensors(std::string(code));
    ASSERT_TRUE(d.has_value()) << code;
    EXPECT_EQ(d->bytes, bytes) << code;
    EXPECT_EQ(torch::empty({1}, d->type).element_size(), static_cast<std::int64_t>(bytes)) << code;
  }
}

TEST_F(SafetensorsFiles, TruncatedFile) {
  std::ofstream(dir_ / "short.safetensors", std::ios::binary) << "abc";
  EXPECT_NE(error_of(dir_ / "short.safetensors").find("truncated"), std::string::npos);
  xpo::io::save_safetensors(dir_ / "ok.safetensors", {{"w", torch::randn({64})}});
  std::filesystem::resize_file(dir_ / "ok.safetensors", std::filesystem::file_size(dir_ / "ok.safetensors") - 10);
  EXPECT_NE(error_of(dir_ / "ok.safetensors").find("run past the data section"), std::string::npos) << error_of(dir_ / "ok.safetensors");
}

TEST_F(SafetensorsFiles, HeaderLengthLargerThanTheFile) {
  const auto path = write_raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 1u << 30);
  EXPECT_NE(error_of(path).find("larger than the rest of the file"), std::string::npos) << error_of(path);
}

TEST_F(SafetensorsFiles, OverlappingOffsets) {
  const auto path = write_raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  EXPECT_NE(error_of(path).find("overlaps"), std::string::npos) << error_of(path);
}

TEST_F(SafetensorsFiles, ByteSizeDisagreesWithShape) {
  const auto path = write_raw(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  EXPECT_NE(error_of(path).find("tensor \"w\": holds 8 bytes, but dtype F32 x shape [3] needs 12"), std::string::npos)
      << error_of(path);
}

TEST_F(SafetensorsFiles, UnknownDtype) {
  const auto path = write_raw(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(error_of(path).find("tensor \"w\": unsupported dtype \"F8_E4M3\""), std::string::npos) << error_of(path);
}

TEST_F(SafetensorsFiles, BadJson) {
  const auto path = write_raw(R"({"w":{"dtype":"F32","shape":[1],)", 4);
  EXPECT_NE(error_of(path).find("not valid JSON"), std::string::npos) << error_of(path);
  EXPECT_NE(error_of(write_raw("[1,2]", 0)).find("not a JSON object"), std::string::npos);
}

TEST_F(SafetensorsFiles, DuplicateNamesHolesTrailingBytesAndBadValues) {
  EXPECT_NE(error_of(write_raw(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2))
                .find("appears twice"),
            std::string::npos);
  EXPECT_NE(error_of(write_raw(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2)).find("unused bytes"), std::string::npos);
  EXPECT_NE(error_of(write_raw(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 3)).find("trailing bytes"), std::string::npos);
  EXPECT_NE(error_of(write_raw(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1)).find("not a non-negative integer"),
            std::string::npos);
  EXPECT_NE(error_of(write_raw(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,1]}})", 1)).find("overflows"),
            std::string::npos);
  EXPECT_NE(error_of(write_raw(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}})", 1)).find("end before they begin"),
            std::string::npos);
  EXPECT_EQ(error_of(write_raw(R"({"w":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", 1)), "") << "byte 1 is a valid bool";
  const auto bad_bool = write_raw(R"({"w":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", 0);
  { std::ofstream(bad_bool, std::ios::binary | std::ios::app) << "\x01\x07"; }
  EXPECT_NE(error_of(bad_bool).find("BOOL data holds bytes other than 0 and 1"), std::string::npos) << error_of(bad_bool);
  EXPECT_NE(error_of(write_raw(R"({"__metadata__":{"format":1}})", 0)).find("__metadata__"), std::string::npos);
}

TEST_F(SafetensorsFiles, ShardedCheckpointLoadsAndShardNamesAreConfined) {
  xpo::io::save_safetensors(dir_ / "model-00001-of-00002.safetensors", {{"a", torch::ones({2})}});
  xpo::io::save_safetensors(dir_ / "model-00002-of-00002.safetensors", {{"b", torch::zeros({3})}});
  json index = {{"metadata", {{"total_size", 20}}},
                {"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump();
  const auto store = xpo::io::TensorStore::open(dir_);
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(store.load("b", torch::kDouble, torch::kCPU).equal(torch::zeros({3}, torch::kDouble)));

  index["weight_map"]["b"] = "../elsewhere.safetensors";
  std::ofstream(dir_ / "model.safetensors.index.json", std::ios::trunc) << index.dump();
  EXPECT_THROW(xpo::io::TensorStore::open(dir_), xpo::FileError);
  index["weight_map"]["b"] = "model-00001-of-00002.safetensors";  // "b" is not in that shard
  std::ofstream(dir_ / "model.safetensors.index.json", std::ios::trunc) << index.dump();
  try {
    (void)xpo::io::TensorStore::open(dir_);
    FAIL() << "must throw";
  } catch (const xpo::FileError& e) {
    EXPECT_NE(std::string(e.what()).find("has no tensor \"b\""), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir_ / "model.safetensors.index.json");
  EXPECT_THROW(xpo::io::TensorStore::open(dir_), xpo::FileError) << "no weights at all";
}

TEST(HfConfig, ReadsEveryFixtureConfigAndKeepsUnknownKeys) {
  for (const auto& folder : xpo::test::model_fixture_folders()) {
    SCOPED_TRACE(folder.string());
    const auto raw = xpo::test::read_json(folder / "config.json");
    const auto c = xpo::io::ModelConfig::load(folder);
    EXPECT_EQ(c.vocab_size, raw.at("vocab_size").get<std::int64_t>());
    EXPECT_EQ(c.head_dim * c.num_attention_heads,
              raw.contains("head_dim") ? raw["head_dim"].get<std::int64_t>() * raw["num_attention_heads"].get<std::int64_t>()
                                       : raw.at("hidden_size").get<std::int64_t>());
    const auto back = c.to_json();
    for (const auto& [key, value] : raw.items()) EXPECT_EQ(back.at(key), value) << key;
  }
}

TEST(HfConfig, Llama3RopeScalingAndEosLists) {
  const json j = {{"model_type", "llama"}, {"vocab_size", 100}, {"hidden_size", 64}, {"intermediate_size", 128},
                  {"num_hidden_layers", 1}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                  {"max_position_embeddings", 1024}, {"rope_theta", 500000.0}, {"eos_token_id", {7, 9}},
                  {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                    {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}}};
  const auto c = xpo::io::ModelConfig::from_json(j);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->type, "llama3");
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{7, 9}));
  auto missing = j;
  missing["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_THROW(xpo::io::ModelConfig::from_json(missing), xpo::FileError);

  // The scaled frequencies against a scalar re-derivation of Meta's llama3 rule in double precision (1e-6
  // relative: the tensors are float32): long wavelengths / factor, short ones kept, a smooth band between.
  const auto inv_freq = xpo::models::rotary_inverse_frequencies(c);
  const double pi = 3.14159265358979323846;
  const double low_wavelen = 64 / 1.0, high_wavelen = 64 / 4.0;
  std::size_t scaled = 0, kept = 0, smoothed = 0;
  for (std::int64_t i = 0; i < c.head_dim / 2; ++i) {
    const double f = 1.0 / std::pow(500000.0, 2.0 * static_cast<double>(i) / static_cast<double>(c.head_dim));
    const double wavelen = 2 * pi / f;
    double expected = f;
    if (wavelen > low_wavelen) {
      expected = f / 8.0;
      ++scaled;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (64 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * f / 8.0 + smooth * f;
      ++smoothed;
    } else {
      ++kept;
    }
    EXPECT_NEAR(inv_freq[i].item<double>(), expected, 1e-6 * expected) << "frequency " << i;
  }
  EXPECT_GT(scaled * kept * smoothed, 0u) << "the test config must exercise all three bands";
}

}  // namespace
