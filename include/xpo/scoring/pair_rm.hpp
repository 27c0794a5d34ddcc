// xpo/scoring/pair_rm.hpp — llm-blender's PairRM as a PairwiseJudge: the judge of TRL's XPO quick start
// (TRL's PairRMJudge). A DeBERTa-v3 cross-encoder reads [source; candidate1; candidate2] and a small head on
// the three marker tokens says which candidate is better; both orders are run and combined. Followed:
// llm-blender (commit 2a67366) DataCollator/CrossCompareReranker/Blender.rank, TRL's PairRMJudge.judge
// (v0.12-v0.25), transformers' DebertaV2Model. The pipeline (../shared/fixtures/judges/tiny-pairrm/README.md):
//   1. prompts in consecutive batches of `batch_size` (8); everything below is per batch;
//   2. texts "<|source|>" + prompt and "<|candidate|>" + completion, every "[SEP]" replaced by " ";
//   3. sources: [CLS] ... [SEP] cut to source_maxlength tokens; L = the longest in the batch;
//   4. candidates: [CLS] ... [SEP] cut to candidate_maxlength + (source_maxlength - L) / 2 (batch-dependent);
//   5. rows source + left + right (<|candidate|> -> <|candidate1|>/<|candidate2|>), right-padded, for the
//      orders AB and BA;
//   6. head(x) = W4 tanh(W1 x + b1) + b4 on [h_source; h_candidateK], logit = mean(left - right);
//   7. s0 = (logit_AB - logit_BA) / 2, s1 = -s0; TRL: 0 when s0 >= s1 (ties to the first), else 1; with scores,
//      softmax([s0, s1] / T)[0].
// Two hub layouts load: llm-blender/PairRM (ranker_config.json + deberta-v3-large's backbone config) and
// llm-blender/PairRM-hf (one complete config.json).
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "xpo/core/concepts.hpp"
#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"
#include "xpo/core/types.hpp"
#include "xpo/io/checkpoint.hpp"
#include "xpo/models/deberta.hpp"
#include "xpo/models/layers.hpp"
#include "xpo/models/pretrained.hpp"
#include "xpo/text/tokenizer.hpp"

namespace xpo::scoring {

// PairRM's real truncation lengths (llm-blender/PairRM's ranker config); PairRM-hf's config.json does not carry
// them, so they are the defaults there.
inline constexpr std::int64_t kPairRMSourceMaxLength = 1224;
inline constexpr std::int64_t kPairRMCandidateMaxLength = 412;

// What the judge needs besides the network: the truncation lengths and the special/marker token ids.
struct PairRMSettings {
  std::int64_t source_maxlength = kPairRMSourceMaxLength;
  std::int64_t candidate_maxlength = kPairRMCandidateMaxLength;
  std::int64_t n_tasks = 1;
  text::TokenId source_prefix_id = 128001;  // <|source|>
  text::TokenId cand1_prefix_id = 128002;   // <|candidate1|>
  text::TokenId cand2_prefix_id = 128003;   // <|candidate2|>
  text::TokenId cand_prefix_id = 128004;    // <|candidate|>
  text::TokenId cls_id = 1;
  text::TokenId sep_id = 2;
  text::TokenId pad_id = 0;

  // Throws ConfigError naming the field (`source` says where the values came from).
  void validate(const std::string& source) const {
    std::vector<std::string> p;
    if (source_maxlength < 3) p.push_back(source + ": source_maxlength = " + std::to_string(source_maxlength) + " must be >= 3");
    if (candidate_maxlength < 3)
      p.push_back(source + ": candidate_maxlength = " + std::to_string(candidate_maxlength) + " must be >= 3");
    if (n_tasks < 1) p.push_back(source + ": n_tasks = " + std::to_string(n_tasks) + " must be >= 1");
    if (!p.empty()) throw ConfigError(p);
  }
};

// llm-blender's head_layer: Sequential(Dropout, Linear(2H, H), Tanh, Dropout, Linear(H, n_tasks)); parameters
// `1.{weight,bias}` and `4.{weight,bias}` (the Sequential's indices). Dropout is identity at inference.
class PairRMHeadImpl : public torch::nn::Module {
 public:
  PairRMHeadImpl(std::int64_t hidden, std::int64_t n_tasks) {
    first = register_module("1", models::Linear(2 * hidden, hidden, true));
    second = register_module("4", models::Linear(hidden, n_tasks, true));
  }
  // x [..., 2H] -> [..., n_tasks]
  torch::Tensor forward(const torch::Tensor& x) { return second(torch::tanh(first(x))); }
  models::Linear first{nullptr};
  models::Linear second{nullptr};
};
TORCH_MODULE(PairRMHead);

// What one forward of the cross-encoder gives, per row.
struct PairRMForward {
  torch::Tensor logits;            // [R] float32: mean over tasks of head_left - head_right
  torch::Tensor head_left;         // [R, n_tasks] head([h_source; h_candidate1]) in the model's dtype
  torch::Tensor head_right;        // [R, n_tasks] head([h_source; h_candidate2])
  torch::Tensor marker_hidden;     // [R, 3, H] last hidden state at <|source|>, <|candidate1|>, <|candidate2|>
};

// llm-blender's CrossCompareReranker (= PairRM-hf's DebertaV2PairRM): `pretrained_model.*` (DebertaV2Model) and
// `head_layer.*`. Device- and dtype-agnostic.
class PairRMImpl : public torch::nn::Module {
 public:
  PairRMImpl(models::DebertaV2Config backbone, PairRMSettings settings) : settings_(settings) {
    settings_.validate("PairRM");
    pretrained_model = register_module("pretrained_model", models::DebertaV2Model(std::move(backbone)));
    head_layer = register_module("head_layer", PairRMHead(pretrained_model->config().hidden_size, settings_.n_tasks));
  }

  // input_ids, attention_mask [R, T]; marker_positions [R, 3] int64 (source, candidate1, candidate2) ->
  // PairRMForward. Runs under the caller's grad mode (the judge uses inference mode).
  PairRMForward forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& marker_positions) {
    const auto h = pretrained_model(input_ids, attention_mask);  // [R, T, H]
    const auto index = marker_positions.unsqueeze(-1).expand({-1, -1, h.size(-1)});
    const auto marker = h.gather(1, index);  // [R, 3, H]
    const auto source = marker.select(1, 0);
    const auto left = head_layer(torch::cat({source, marker.select(1, 1)}, -1));   // [R, n]
    const auto right = head_layer(torch::cat({source, marker.select(1, 2)}, -1));  // [R, n]
    return {(left.to(torch::kFloat) - right.to(torch::kFloat)).mean(-1), left, right, marker};
  }

  [[nodiscard]] const PairRMSettings& settings() const { return settings_; }
  [[nodiscard]] torch::Device device() const { return head_layer->first->weight.device(); }
  [[nodiscard]] torch::ScalarType dtype() const { return head_layer->first->weight.scalar_type(); }

  models::DebertaV2Model pretrained_model{nullptr};
  PairRMHead head_layer{nullptr};

 private:
  PairRMSettings settings_;
};
TORCH_MODULE(PairRM);

// ---- loading ---------------------------------------------------------------------------------------------------

// Overrides for load_pair_rm. Unset values come from the folder.
struct PairRMLoadOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat;
  // A DeBERTa config.json to use instead of backbone/config.json or deberta-v3-large's constants (PairRM layout).
  std::optional<std::filesystem::path> backbone_config{};
  // Truncation lengths; PairRM-hf's config.json has none (PairRM's 1224/412 then, unless ranker_config.json is there).
  std::optional<std::int64_t> source_maxlength{};
  std::optional<std::int64_t> candidate_maxlength{};
};

namespace detail {
inline std::string pair_rm_download_hint(const std::filesystem::path& folder) {
  return "download llm-blender/PairRM (or llm-blender/PairRM-hf) from the Hugging Face hub on a machine with network, "
         "e.g. `huggingface-cli download llm-blender/PairRM --local-dir " + folder.string() +
         "`, and copy the folder here (xpo does not download)";
}

inline std::int64_t json_int(const nlohmann::json& j, const char* key, const std::filesystem::path& file) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer())
    throw FileError(file.string(), std::string("needs an integer \"") + key + "\"" +
                                       (it == j.end() ? std::string(" (absent)") : ", got " + it->dump()));
  return it->get<std::int64_t>();
}
}  // namespace detail

// True when `folder` looks like a PairRM checkpoint (either layout): a ranker_config.json, or a config.json
// naming DebertaV2PairRM / carrying source_prefix_id, or a config.json that is a RankerConfig.
inline bool is_pair_rm_folder(const std::filesystem::path& folder) {
  std::error_code ec;
  if (!std::filesystem::is_directory(folder, ec)) return false;
  if (std::filesystem::exists(folder / "ranker_config.json", ec)) return true;
  const auto config = folder / "config.json";
  if (!std::filesystem::exists(config, ec)) return false;
  try {
    const auto j = read_json_file(config, std::uintmax_t{1} << 20);
    if (!j.is_object()) return false;
    if (j.contains("ranker_type") || j.contains("source_prefix_id")) return true;
    if (const auto a = j.find("architectures"); a != j.end() && a->is_array())
      for (const auto& v : *a)
        if (v.is_string() && v.get<std::string>() == "DebertaV2PairRM") return true;
  } catch (const Error&) {
    return false;
  }
  return false;
}

// A PairRM network + its settings from a hub folder, on options.device in options.dtype, in eval mode with
// requires_grad off.
//  - llm-blender/PairRM: ranker_config.json (or config.json, the same RankerConfig) gives source_maxlength,
//    candidate_maxlength, n_tasks; added_tokens.json the marker ids and (max id + 1) the resized vocabulary; the
//    network is deberta-v3-large's (deberta_v3_large_config()) unless backbone/config.json or
//    options.backbone_config gives another.
//  - llm-blender/PairRM-hf: config.json is the complete DeBERTa config plus source_prefix_id, cand1_prefix_id,
//    cand2_prefix_id, cand_prefix_id, n_tasks.
// Weights: model.safetensors with llm-blender's names. Throws FileError naming the file for a missing folder or
// file (with how to download it), a missing/unexpected tensor or a wrong shape.
inline PairRM load_pair_rm(const std::filesystem::path& folder, const PairRMLoadOptions& options = {}) {
  std::error_code ec;
  if (!std::filesystem::is_directory(folder, ec))
    throw FileError(folder.string(), "no such PairRM folder; " + detail::pair_rm_download_hint(folder));
  if (!std::filesystem::exists(folder / "model.safetensors", ec))
    throw FileError((folder / "model.safetensors").string(),
                    "missing (the PairRM weights); " + detail::pair_rm_download_hint(folder));
  PairRMSettings s;
  models::DebertaV2Config backbone;
  const auto config_path = folder / "config.json";
  const auto ranker_path = folder / "ranker_config.json";
  std::optional<nlohmann::json> config;
  if (std::filesystem::exists(config_path, ec)) config = read_json_file(config_path, std::uintmax_t{1} << 20);
  const bool hf_layout = config && config->is_object() && config->contains("source_prefix_id");
  std::optional<nlohmann::json> ranker;
  std::filesystem::path ranker_file;
  if (std::filesystem::exists(ranker_path, ec)) {
    ranker = read_json_file(ranker_path, std::uintmax_t{1} << 20);
    ranker_file = ranker_path;
  } else if (config && !hf_layout) {
    ranker = config;
    ranker_file = config_path;
  }
  if (!hf_layout && !ranker) {
    throw FileError(folder.string(), "has neither ranker_config.json nor config.json (llm-blender/PairRM ships both, "
                                     "llm-blender/PairRM-hf a complete config.json); " + detail::pair_rm_download_hint(folder));
  }
  if (ranker) {
    if (!ranker->is_object()) throw FileError(ranker_file.string(), "must be a JSON object (llm-blender's RankerConfig)");
    s.source_maxlength = detail::json_int(*ranker, "source_maxlength", ranker_file);
    s.candidate_maxlength = detail::json_int(*ranker, "candidate_maxlength", ranker_file);
    if (!hf_layout) s.n_tasks = ranker->contains("n_tasks") ? detail::json_int(*ranker, "n_tasks", ranker_file) : 1;
  }
  if (hf_layout) {
    backbone = models::DebertaV2Config::from_json(*config, config_path.string());
    s.source_prefix_id = detail::json_int(*config, "source_prefix_id", config_path);
    s.cand1_prefix_id = detail::json_int(*config, "cand1_prefix_id", config_path);
    s.cand2_prefix_id = detail::json_int(*config, "cand2_prefix_id", config_path);
    s.cand_prefix_id = detail::json_int(*config, "cand_prefix_id", config_path);
    s.n_tasks = config->contains("n_tasks") ? detail::json_int(*config, "n_tasks", config_path) : 1;
  } else {
    // The markers and the resized vocabulary come from the tokenizer llm-blender builds (added_tokens.json).
    const auto added_path = folder / "added_tokens.json";
    if (!std::filesystem::exists(added_path, ec))
      throw FileError(added_path.string(), "missing (the PairRM marker tokens <|source|>, <|candidate1|>, ...); " +
                                               detail::pair_rm_download_hint(folder));
    const auto added = read_json_file(added_path, std::uintmax_t{1} << 20);
    if (!added.is_object()) throw FileError(added_path.string(), "must be an object of token -> id");
    const auto id_of = [&](const char* token) { return detail::json_int(added, token, added_path); };
    s.source_prefix_id = id_of("<|source|>");
    s.cand1_prefix_id = id_of("<|candidate1|>");
    s.cand2_prefix_id = id_of("<|candidate2|>");
    s.cand_prefix_id = id_of("<|candidate|>");
    std::int64_t vocab = 0;
    for (const auto& [token, id] : added.items()) {
      if (!id.is_number_integer()) throw FileError(added_path.string(), "\"" + token + "\" has no integer id");
      vocab = std::max(vocab, id.get<std::int64_t>() + 1);
    }
    std::optional<std::filesystem::path> backbone_path = options.backbone_config;
    if (!backbone_path && std::filesystem::exists(folder / "backbone" / "config.json", ec))
      backbone_path = folder / "backbone" / "config.json";
    if (backbone_path) {
      backbone = models::DebertaV2Config::from_json(read_json_file(*backbone_path, std::uintmax_t{1} << 20),
                                                    backbone_path->string());
    } else {
      backbone = models::deberta_v3_large_config();
    }
    backbone.vocab_size = vocab;  // llm-blender's resize_token_embeddings(len(tokenizer))
  }
  if (options.source_maxlength) s.source_maxlength = *options.source_maxlength;
  if (options.candidate_maxlength) s.candidate_maxlength = *options.candidate_maxlength;
  s.pad_id = backbone.pad_token_id;
  s.validate(folder.string());
  const std::string built_from = hf_layout ? "config.json"
                                 : options.backbone_config ? options.backbone_config->string()
                                 : std::filesystem::exists(folder / "backbone" / "config.json", ec)
                                     ? "backbone/config.json"
                                     : "microsoft/deberta-v3-large's constants (deberta_v3_large_config())";
  const auto weights = (folder / "model.safetensors").string();
  const auto store = io::TensorStore::open(folder);
  // The embedding table first, so that a mismatched config fails before the network is allocated.
  const std::string embedding = "pretrained_model.embeddings.word_embeddings.weight";
  if (!store.contains(embedding)) throw FileError(weights, "has no tensor \"" + embedding + "\" (not a PairRM checkpoint?)");
  if (const auto& shape = store.entry(embedding).shape; shape != std::vector<std::int64_t>{backbone.vocab_size, backbone.hidden_size}) {
    throw FileError(weights, "tensor \"" + embedding + "\" has shape " + nlohmann::json(shape).dump() + " but the network built from " +
                                 built_from + " expects [" + std::to_string(backbone.vocab_size) + "," +
                                 std::to_string(backbone.hidden_size) + "] (vocabulary from " +
                                 (hf_layout ? "config.json" : "added_tokens.json") + ")");
  }
  PairRM model(backbone, s);
  model->to(options.device, options.dtype);
  try {
    models::load_weights(*model, store, weights);
  } catch (const FileError& e) {
    throw FileError(e.path(), std::string(e.what()).substr(e.path().size() + 2) + " [network built from " + built_from + "]");
  }
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  return model;
}

// ---- the judge -----------------------------------------------------------------------------------------------

// Text -> token ids without special tokens, untruncated (the DeBERTa-v3 tokenizer with the marker tokens added).
using PairRMEncoder = std::function<std::vector<text::TokenId>(const std::string&)>;

struct PairRMOptions {
  std::int64_t batch_size = 8;  // prompts per forward (llm-blender's Blender.rank default, used by TRL)
  double temperature = 1.0;     // TRL's judge(return_scores=True, temperature)
};

// One batch as llm-blender's collator and CrossCompareReranker build it.
struct PairRMBatchInputs {
  std::vector<std::vector<text::TokenId>> source_ids;                    // per prompt, [CLS] ... [SEP]
  std::vector<std::array<std::vector<text::TokenId>, 2>> candidate_ids;  // per prompt, [CLS] <|candidate|> ... [SEP]
  std::int64_t longest_source = 0;                                       // L
  std::int64_t candidate_max_length = 0;                                 // the batch's candidate budget
  // Row r < B is prompt r in order AB, row B + r prompt r in order BA. All on the CPU.
  torch::Tensor input_ids;         // [2B, T] int64, right-padded with pad_id
  torch::Tensor attention_mask;    // [2B, T] int64
  torch::Tensor marker_positions;  // [2B, 3] int64
};

// One prompt's verdict (llm-blender's Blender.rank + TRL).
struct PairRMComparison {
  float logit_ab = 0;  // candidate A left
  float logit_ba = 0;
  std::array<float, 2> scores{};  // s0 = (logit_ab - logit_ba) / 2, s1 = -s0
  std::array<int, 2> ranks{};     // 1 + place in the descending order; equal scores share rank 1
  [[nodiscard]] int choice() const { return ranks[0] - 1; }  // TRL: 0 when the first is ranked first (ties included)
};

// TRL's PairRMJudge: judge() gives 0 where the first completion (the policy's, in the trainer) wins or ties,
// else 1; judge_probabilities() the probability of the first (TRL's return_scores=True). Batched in groups of
// options.batch_size prompts (the decision can depend on the batch through the candidate budget, as in
// llm-blender), run under inference mode in the model's dtype. After judge(), last_first_probabilities() holds
// the first completion's probability at options.temperature for each prompt (for a "mean preference
// probability of the policy sample" metric).
class PairRMJudge {
 public:
  PairRMJudge(PairRM model, PairRMEncoder encoder, PairRMOptions options = {})
      : model_(std::move(model)), encoder_(std::move(encoder)), options_(options) {
    if (options_.batch_size < 1) throw ConfigError("PairRM judge: batch_size = " + std::to_string(options_.batch_size) + " must be >= 1");
    if (!(options_.temperature > 0)) throw ConfigError("PairRM judge: temperature must be > 0");
    model_->eval();
    for (auto& p : model_->parameters()) p.set_requires_grad(false);
  }

  // TRL PairRMJudge.judge(prompts, completions) with return_scores=False: per prompt 0 or 1. Throws Error if the
  // sizes differ.
  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs) {
    const auto results = compare(prompts, pairs);
    std::vector<int> out;
    out.reserve(results.size());
    for (const auto& r : results) out.push_back(r.choice());
    last_probabilities_ = first_probabilities(results, options_.temperature);
    return out;
  }

  // TRL PairRMJudge.judge(..., return_scores=True, temperature): the first completion's probability,
  // softmax([s0, s1] / T)[0] in float32.
  std::vector<float> judge_probabilities(const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs,
                                         std::optional<double> temperature = std::nullopt) {
    return first_probabilities(compare(prompts, pairs), temperature.value_or(options_.temperature));
  }

  // The full verdicts (Blender.rank's scores and ranks), batched by options.batch_size.
  std::vector<PairRMComparison> compare(const std::vector<std::string>& prompts, const std::vector<CompletionPair>& pairs) {
    if (prompts.size() != pairs.size())
      throw Error("PairRM judge: " + std::to_string(prompts.size()) + " prompts but " + std::to_string(pairs.size()) +
                  " completion pairs");
    std::vector<std::vector<text::TokenId>> sources;
    std::vector<std::array<std::vector<text::TokenId>, 2>> candidates;
    sources.reserve(prompts.size());
    candidates.reserve(prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      sources.push_back(encoder_(source_text(prompts[i])));
      candidates.push_back({encoder_(candidate_text(pairs[i][0])), encoder_(candidate_text(pairs[i][1]))});
    }
    return compare_tokens(sources, candidates);
  }

  // As compare(), from the tokens of source_text()/candidate_text() (no special tokens, untruncated).
  std::vector<PairRMComparison> compare_tokens(const std::vector<std::vector<text::TokenId>>& sources,
                                               const std::vector<std::array<std::vector<text::TokenId>, 2>>& candidates) {
    std::vector<PairRMComparison> out;
    out.reserve(sources.size());
    const auto n = static_cast<std::int64_t>(sources.size());
    for (std::int64_t start = 0; start < n; start += options_.batch_size) {
      const auto end = std::min(n, start + options_.batch_size);
      const std::vector<std::vector<text::TokenId>> s(sources.begin() + start, sources.begin() + end);
      const std::vector<std::array<std::vector<text::TokenId>, 2>> c(candidates.begin() + start, candidates.begin() + end);
      const auto inputs = build_inputs(s, c);
      const auto logits = run(inputs).logits.to(torch::kCPU).contiguous();  // [2B]
      const auto b = end - start;
      for (std::int64_t i = 0; i < b; ++i) out.push_back(verdict(logits[i].item<float>(), logits[b + i].item<float>()));
    }
    return out;
  }

  // llm-blender's step 2: the source text "<|source|>" + prompt with every "[SEP]" replaced by " ".
  static std::string source_text(const std::string& prompt) { return replace_sep("<|source|>" + prompt); }
  // The candidate text "<|candidate|>" + completion, "[SEP]" replaced likewise.
  static std::string candidate_text(const std::string& completion) { return replace_sep("<|candidate|>" + completion); }

  // Steps 3-5 for one batch, from untruncated tokens without special tokens. Throws Error on an empty batch.
  [[nodiscard]] PairRMBatchInputs build_inputs(const std::vector<std::vector<text::TokenId>>& sources,
                                               const std::vector<std::array<std::vector<text::TokenId>, 2>>& candidates) const {
    const auto& st = model_->settings();
    if (sources.empty() || sources.size() != candidates.size())
      throw Error("PairRM judge: a batch needs as many sources as candidate pairs, and at least one");
    PairRMBatchInputs in;
    for (const auto& s : sources) {
      in.source_ids.push_back(with_specials(s, st.source_maxlength));
      in.longest_source = std::max<std::int64_t>(in.longest_source, static_cast<std::int64_t>(in.source_ids.back().size()));
    }
    // Python's floor division; source_maxlength >= L, so it is plain integer division.
    in.candidate_max_length = st.candidate_maxlength + (st.source_maxlength - in.longest_source) / 2;
    for (const auto& c : candidates)
      in.candidate_ids.push_back({with_specials(c[0], in.candidate_max_length), with_specials(c[1], in.candidate_max_length)});
    const auto b = static_cast<std::int64_t>(sources.size());
    std::vector<std::vector<text::TokenId>> rows(2 * b);
    std::vector<std::array<std::int64_t, 3>> markers(2 * b);
    std::size_t width = 0;
    for (std::int64_t order = 0; order < 2; ++order) {
      for (std::int64_t i = 0; i < b; ++i) {
        const auto& src = in.source_ids[i];
        const auto& left = in.candidate_ids[i][order];
        const auto& right = in.candidate_ids[i][1 - order];
        auto& row = rows[order * b + i];
        row = src;
        const auto left_at = static_cast<std::int64_t>(row.size());
        append_marked(row, left, st.cand1_prefix_id);
        const auto right_at = static_cast<std::int64_t>(row.size());
        append_marked(row, right, st.cand2_prefix_id);
        // The markers sit right after each part's [CLS]; llm-blender finds them by id, which is the same place
        // for every text without a literal marker string (where llm-blender would misalign or fail).
        markers[order * b + i] = {1, left_at + 1, right_at + 1};
        width = std::max(width, row.size());
      }
    }
    in.input_ids = torch::full({2 * b, static_cast<std::int64_t>(width)}, st.pad_id, torch::kLong);
    in.attention_mask = torch::zeros({2 * b, static_cast<std::int64_t>(width)}, torch::kLong);
    in.marker_positions = torch::empty({2 * b, 3}, torch::kLong);
    auto ids = in.input_ids.accessor<std::int64_t, 2>();
    auto mask = in.attention_mask.accessor<std::int64_t, 2>();
    auto pos = in.marker_positions.accessor<std::int64_t, 2>();
    for (std::int64_t r = 0; r < 2 * b; ++r) {
      for (std::size_t t = 0; t < rows[r].size(); ++t) {
        ids[r][static_cast<std::int64_t>(t)] = rows[r][t];
        mask[r][static_cast<std::int64_t>(t)] = 1;
      }
      for (int k = 0; k < 3; ++k) pos[r][k] = markers[r][k];
    }
    return in;
  }

  // The cross-encoder on a built batch (both orders in one forward), under inference mode, on the model's device.
  PairRMForward run(const PairRMBatchInputs& in) {
    c10::InferenceMode guard;
    const auto device = model_->device();
    return model_->forward(in.input_ids.to(device), in.attention_mask.to(device), in.marker_positions.to(device));
  }

  // Steps 7-8 from the two logits (float32 arithmetic as llm-blender's (cmp - cmp^T).mean(-1)).
  static PairRMComparison verdict(float logit_ab, float logit_ba) {
    PairRMComparison c;
    c.logit_ab = logit_ab;
    c.logit_ba = logit_ba;
    const float s0 = (0.0f + (logit_ab - logit_ba)) / 2.0f;
    const float s1 = ((logit_ba - logit_ab) + 0.0f) / 2.0f;
    c.scores = {s0, s1};
    c.ranks = {s0 >= s1 ? 1 : 2, s1 >= s0 ? 1 : 2};
    return c;
  }

  // softmax([s0, s1] / T)[0] per verdict, max-subtracted in float32 (TRL's return_scores=True).
  static std::vector<float> first_probabilities(const std::vector<PairRMComparison>& results, double temperature) {
    std::vector<float> out;
    out.reserve(results.size());
    if (results.empty()) return out;
    auto scores = torch::empty({static_cast<std::int64_t>(results.size()), 2}, torch::kFloat);
    auto a = scores.accessor<float, 2>();
    for (std::size_t i = 0; i < results.size(); ++i) {
      a[static_cast<std::int64_t>(i)][0] = results[i].scores[0];
      a[static_cast<std::int64_t>(i)][1] = results[i].scores[1];
    }
    const auto probs = torch::softmax(scores / temperature, -1).select(1, 0).contiguous();
    const auto* p = probs.data_ptr<float>();
    out.assign(p, p + probs.numel());
    return out;
  }

  // The first completion's probability for each prompt of the last judge() call (empty before one).
  [[nodiscard]] const std::vector<float>& last_first_probabilities() const { return last_probabilities_; }
  [[nodiscard]] PairRM& model() { return model_; }
  [[nodiscard]] const PairRMOptions& options() const { return options_; }

 private:
  // Python's str.replace("[SEP]", " "): non-overlapping occurrences, left to right.
  static std::string replace_sep(const std::string& s) {
    constexpr std::string_view sep = "[SEP]";
    std::string out;
    out.reserve(s.size());
    std::size_t from = 0;
    for (std::size_t at = s.find(sep); at != std::string::npos; at = s.find(sep, from)) {
      out.append(s, from, at - from);
      out.push_back(' ');
      from = at + sep.size();
    }
    out.append(s, from, std::string::npos);
    return out;
  }

  // [CLS] tokens [SEP], the tokens cut at the end so that the whole has at most max_length ids.
  [[nodiscard]] std::vector<text::TokenId> with_specials(const std::vector<text::TokenId>& tokens, std::int64_t max_length) const {
    const auto& st = model_->settings();
    const auto keep = std::min<std::size_t>(tokens.size(), static_cast<std::size_t>(std::max<std::int64_t>(max_length - 2, 0)));
    std::vector<text::TokenId> out;
    out.reserve(keep + 2);
    out.push_back(st.cls_id);
    out.insert(out.end(), tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(keep));
    out.push_back(st.sep_id);
    return out;
  }

  // Appends a candidate with every <|candidate|> replaced by `marker` (as llm-blender does on its copy).
  void append_marked(std::vector<text::TokenId>& row, const std::vector<text::TokenId>& candidate, text::TokenId marker) const {
    const auto cand = model_->settings().cand_prefix_id;
    for (const auto id : candidate) row.push_back(id == cand ? marker : id);
  }

  PairRM model_;
  PairRMEncoder encoder_;
  PairRMOptions options_;
  std::vector<float> last_probabilities_;
};

static_assert(PairwiseJudge<PairRMJudge>);

// The tokenizer of a PairRM folder as a PairRMEncoder: tokenizer.json through xpo's Tokenizer, no special tokens.
inline PairRMEncoder pair_rm_encoder(const std::filesystem::path& folder) {
  if (!std::filesystem::exists(folder / "tokenizer.json"))
    throw FileError((folder / "tokenizer.json").string(),
                    "missing (PairRM's DeBERTa-v3 tokenizer with the marker tokens); " + detail::pair_rm_download_hint(folder));
  auto tokenizer = std::make_shared<text::Tokenizer>(text::Tokenizer::from_pretrained(folder));
  return [tokenizer](const std::string& s) { return tokenizer->encode(s, false); };
}

// A ready judge from a PairRM folder (network, settings and tokenizer).
inline PairRMJudge load_pair_rm_judge(const std::filesystem::path& folder, const PairRMLoadOptions& load = {},
                                      PairRMOptions options = {}) {
  auto model = load_pair_rm(folder, load);
  return PairRMJudge(std::move(model), pair_rm_encoder(folder), options);
}

}  // namespace xpo::scoring
