// xpo/scoring/pair_rm.hpp and xpo/models/deberta.hpp: parity with llm-blender's PairRM, transformers'
// DebertaV2Model and TRL's PairRMJudge on every case of $XPO_FIXTURES_DIR/judges/tiny-pairrm/reference.json (see
// its README), and the DeBERTa forward against an independent naive loop implementation.
// Tolerances, as |actual - expected| <= tol * (1 + |expected|): ids, masks, marker positions, ranks and TRL's
// choices exact; logits, head outputs, scores and probabilities 1e-5 (float32); marker hidden states 1e-4; the
// float64 DeBERTa against the float64 naive loops 1e-10.
#include <gtest/gtest.h>

#include <xpo/models/deberta.hpp>
#include <xpo/scoring/pair_rm.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "support/fixtures.hpp"

namespace {

using nlohmann::json;
using xpo::models::DebertaV2Config;
using xpo::models::DebertaV2Model;
using xpo::scoring::PairRMJudge;
using xpo::test::all_close;
using xpo::test::ScratchDir;
using Ids = std::vector<xpo::text::TokenId>;

constexpr double kLogitTol = 1e-5;
constexpr double kHiddenTol = 1e-4;

std::filesystem::path pair_rm_folder() { return xpo::test::fixture_path("judges/tiny-pairrm"); }

const json& reference() {
  static const json j = xpo::read_json_file(xpo::test::fixture_path("judges/tiny-pairrm/reference.json"));
  return j;
}

Ids ids_of(const json& j) { return j.get<Ids>(); }

// [CLS] tokens [SEP] -> tokens (what the encoder gives for the text, up to truncation).
Ids inner(const Ids& with_specials) {
  EXPECT_GE(with_specials.size(), 2U);
  return Ids(with_specials.begin() + 1, with_specials.end() - 1);
}

std::vector<std::int64_t> row_of(const torch::Tensor& t, std::int64_t r) {
  const auto row = t[r].contiguous();
  return std::vector<std::int64_t>(row.data_ptr<std::int64_t>(), row.data_ptr<std::int64_t>() + row.numel());
}

// An encoder that knows exactly the texts of the reference (source_text / candidate_texts -> the tokens of the
// reference ids); an unknown text is a failure, so this also checks the texts the judge builds.
xpo::scoring::PairRMEncoder reference_encoder() {
  auto table = std::make_shared<std::map<std::string, Ids>>();
  for (const auto& c : reference().at("cases")) {
    (*table)[c.at("source_text").get<std::string>()] = inner(ids_of(c.at("source_ids")));
    for (int k = 0; k < 2; ++k)
      (*table)[c.at("candidate_texts")[k].get<std::string>()] = inner(ids_of(c.at("candidate_ids")[k]));
  }
  return [table](const std::string& text) {
    const auto it = table->find(text);
    if (it == table->end()) throw std::runtime_error("the judge built a text the reference does not have: \"" + text + "\"");
    return it->second;
  };
}

PairRMJudge reference_judge(std::int64_t batch_size = 8) {
  return PairRMJudge(xpo::scoring::load_pair_rm(pair_rm_folder()), reference_encoder(), {.batch_size = batch_size});
}

// ---- DeBERTa -----------------------------------------------------------------------------------------------

TEST(Deberta, LogBucketsMatchTransformers) {
  const auto& b = reference().at("relative_position_buckets");
  const auto config = DebertaV2Config::from_json(xpo::read_json_file(pair_rm_folder() / "backbone" / "config.json"), "backbone");
  const auto rel = xpo::test::to_tensor(b.at("relative_positions"), torch::kLong);
  const auto buckets = xpo::models::log_bucket_position(rel, config.position_buckets, config.max_relative_distance());
  EXPECT_TRUE(torch::equal(buckets, xpo::test::to_tensor(b.at("buckets"), torch::kLong)));
}

TEST(Deberta, ConfigReadsBothPosAttTypeSpellingsAndRefusesWhatIsNotImplemented) {
  const auto backbone = xpo::read_json_file(pair_rm_folder() / "backbone" / "config.json");
  const auto hf = xpo::read_json_file(pair_rm_folder() / "pairrm_hf_config.json");
  const auto a = DebertaV2Config::from_json(backbone, "backbone");
  const auto b = DebertaV2Config::from_json(hf, "hf");
  EXPECT_TRUE(a.c2p && a.p2c && b.c2p && b.p2c);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.position_buckets, b.position_buckets);
  EXPECT_EQ(a.layer_norm_eps, b.layer_norm_eps);
  auto bad = backbone;
  bad["position_biased_input"] = true;
  bad["hidden_act"] = "relu";
  try {
    (void)DebertaV2Config::from_json(bad, "bad.json");
    FAIL() << "expected a ConfigError";
  } catch (const xpo::ConfigError& e) {
    EXPECT_EQ(e.problems().size(), 2U);
    EXPECT_NE(std::string(e.what()).find("position_biased_input"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("hidden_act"), std::string::npos) << e.what();
  }
}

// An independent float64 DeBERTa-v2 forward written as plain loops over tokens, heads and dimensions (no torch
// kernels), from the README's description of transformers' computation.
struct Naive {
  const DebertaV2Config& c;
  std::map<std::string, torch::Tensor> p;  // float64 CPU parameters by transformers' name

  using Vec = std::vector<double>;
  Vec linear(const std::string& name, const Vec& x) const {
    const auto w = p.at(name + ".weight").accessor<double, 2>();
    const auto b = p.at(name + ".bias").accessor<double, 1>();
    Vec y(static_cast<std::size_t>(w.size(0)));
    for (std::int64_t o = 0; o < w.size(0); ++o) {
      double s = b[o];
      for (std::int64_t i = 0; i < w.size(1); ++i) s += w[o][i] * x[static_cast<std::size_t>(i)];
      y[static_cast<std::size_t>(o)] = s;
    }
    return y;
  }
  Vec norm(const std::string& name, const Vec& x) const {
    const auto w = p.at(name + ".weight").accessor<double, 1>();
    const auto b = p.at(name + ".bias").accessor<double, 1>();
    double mean = 0, var = 0;
    for (double v : x) mean += v;
    mean /= static_cast<double>(x.size());
    for (double v : x) var += (v - mean) * (v - mean);
    var /= static_cast<double>(x.size());
    Vec y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      y[i] = (x[i] - mean) / std::sqrt(var + c.layer_norm_eps) * w[static_cast<std::int64_t>(i)] + b[static_cast<std::int64_t>(i)];
    return y;
  }
  std::int64_t bucket(std::int64_t r) const {
    if (c.position_buckets <= 0) return r;
    const std::int64_t mid = c.position_buckets / 2;
    const auto a = std::llabs(r);
    if (a <= mid) return r;
    const double m = static_cast<double>(c.max_relative_distance());
    const auto v = static_cast<std::int64_t>(std::ceil(std::log(static_cast<double>(a) / mid) / std::log((m - 1) / mid) * (mid - 1))) + mid;
    return r < 0 ? -v : v;
  }
  static double dot(const Vec& a, const Vec& b, std::int64_t from, std::int64_t n) {
    double s = 0;
    for (std::int64_t i = from; i < from + n; ++i) s += a[static_cast<std::size_t>(i)] * b[static_cast<std::size_t>(i)];
    return s;
  }

  // ids, mask [T] -> hidden [T][H]
  std::vector<Vec> forward(const std::vector<std::int64_t>& ids, const std::vector<std::int64_t>& mask) const {
    const auto t = static_cast<std::int64_t>(ids.size());
    const auto h = c.hidden_size, heads = c.num_attention_heads, d = c.head_dim(), span = c.attention_span();
    const auto emb = p.at("embeddings.word_embeddings.weight").accessor<double, 2>();
    std::vector<Vec> x(static_cast<std::size_t>(t));
    for (std::int64_t i = 0; i < t; ++i) {
      Vec e(static_cast<std::size_t>(h));
      for (std::int64_t k = 0; k < h; ++k) e[static_cast<std::size_t>(k)] = emb[ids[static_cast<std::size_t>(i)]][k];
      x[static_cast<std::size_t>(i)] = norm("embeddings.LayerNorm", e);
      for (auto& v : x[static_cast<std::size_t>(i)]) v *= static_cast<double>(mask[static_cast<std::size_t>(i)]);
    }
    const auto rel_w = p.at("encoder.rel_embeddings.weight").accessor<double, 2>();
    std::vector<Vec> rel(static_cast<std::size_t>(2 * span));
    for (std::int64_t r = 0; r < 2 * span; ++r) {
      Vec e(static_cast<std::size_t>(h));
      for (std::int64_t k = 0; k < h; ++k) e[static_cast<std::size_t>(k)] = rel_w[r][k];
      rel[static_cast<std::size_t>(r)] = norm("encoder.LayerNorm", e);
    }
    const double scale = std::sqrt(static_cast<double>(d * (1 + c.c2p + c.p2c)));
    for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const auto pre = "encoder.layer." + std::to_string(l) + ".";
      std::vector<Vec> q, k, v, pq, pk;
      for (const auto& xi : x) {
        q.push_back(linear(pre + "attention.self.query_proj", xi));
        k.push_back(linear(pre + "attention.self.key_proj", xi));
        v.push_back(linear(pre + "attention.self.value_proj", xi));
      }
      for (const auto& r : rel) {
        pq.push_back(linear(pre + "attention.self.query_proj", r));
        pk.push_back(linear(pre + "attention.self.key_proj", r));
      }
      std::vector<Vec> next(static_cast<std::size_t>(t));
      for (std::int64_t i = 0; i < t; ++i) {
        Vec ctx(static_cast<std::size_t>(h), 0.0);
        if (mask[static_cast<std::size_t>(i)] != 0) {
          for (std::int64_t hd = 0; hd < heads; ++hd) {
            std::vector<double> s(static_cast<std::size_t>(t), 0.0);
            double top = -1e300;
            for (std::int64_t j = 0; j < t; ++j) {
              if (mask[static_cast<std::size_t>(j)] == 0) continue;
              const auto idx = static_cast<std::size_t>(std::clamp<std::int64_t>(bucket(i - j) + span, 0, 2 * span - 1));
              double score = dot(q[static_cast<std::size_t>(i)], k[static_cast<std::size_t>(j)], hd * d, d);
              if (c.c2p) score += dot(q[static_cast<std::size_t>(i)], pk[idx], hd * d, d);
              if (c.p2c) score += dot(k[static_cast<std::size_t>(j)], pq[idx], hd * d, d);
              s[static_cast<std::size_t>(j)] = score / scale;
              top = std::max(top, s[static_cast<std::size_t>(j)]);
            }
            double total = 0;
            for (std::int64_t j = 0; j < t; ++j)
              if (mask[static_cast<std::size_t>(j)] != 0) total += std::exp(s[static_cast<std::size_t>(j)] - top);
            for (std::int64_t j = 0; j < t; ++j) {
              if (mask[static_cast<std::size_t>(j)] == 0) continue;
              const double w = std::exp(s[static_cast<std::size_t>(j)] - top) / total;
              for (std::int64_t e = hd * d; e < (hd + 1) * d; ++e)
                ctx[static_cast<std::size_t>(e)] += w * v[static_cast<std::size_t>(j)][static_cast<std::size_t>(e)];
            }
          }
        }
        auto a = linear(pre + "attention.output.dense", ctx);
        for (std::int64_t e = 0; e < h; ++e) a[static_cast<std::size_t>(e)] += x[static_cast<std::size_t>(i)][static_cast<std::size_t>(e)];
        a = norm(pre + "attention.output.LayerNorm", a);
        auto f = linear(pre + "intermediate.dense", a);
        for (auto& z : f) z = 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
        auto o = linear(pre + "output.dense", f);
        for (std::int64_t e = 0; e < h; ++e) o[static_cast<std::size_t>(e)] += a[static_cast<std::size_t>(e)];
        next[static_cast<std::size_t>(i)] = norm(pre + "output.LayerNorm", o);
      }
      x = std::move(next);
    }
    return x;
  }
};

// A tiny random DeBERTa (float64) against the naive loops, with distances past the buckets and the clamp, and a
// padded row; once for each combination of the disentangled terms.
TEST(Deberta, ForwardMatchesNaiveLoops) {
  for (const auto& [c2p, p2c] : std::vector<std::pair<bool, bool>>{{true, true}, {true, false}, {false, true}}) {
    SCOPED_TRACE(std::string("c2p ") + (c2p ? "on" : "off") + ", p2c " + (p2c ? "on" : "off"));
    DebertaV2Config c;
    c.vocab_size = 23;
    c.hidden_size = 12;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 3;
    c.intermediate_size = 20;
    c.max_position_embeddings = 10;
    c.position_buckets = 6;
    c.layer_norm_eps = 1e-7;
    c.c2p = c2p;
    c.p2c = p2c;
    torch::manual_seed(7);
    DebertaV2Model model(c);
    model->to(torch::kDouble);
    Naive naive{c, {}};
    {
      torch::NoGradGuard no_grad;
      for (auto& item : model->named_parameters()) {
        auto& t = item.value();
        const bool norm_weight = item.key().find("LayerNorm.weight") != std::string::npos;
        t.copy_(norm_weight ? 1 + 0.2 * torch::randn_like(t) : 0.4 * torch::randn_like(t));
        naive.p[item.key()] = t.detach().clone();
      }
    }
    const std::int64_t t = 17;  // distances up to 16: past position_buckets/2 = 3 and the clamp at 2 * 6 rows
    const auto ids = torch::randint(0, c.vocab_size, {2, t}, torch::kLong);
    auto mask = torch::ones({2, t}, torch::kLong);
    mask[1].narrow(0, 12, t - 12).zero_();
    torch::Tensor hidden;
    {
      torch::InferenceMode guard;
      hidden = model(ids, mask);
    }
    for (std::int64_t r = 0; r < 2; ++r) {
      const auto expected = naive.forward(row_of(ids, r), row_of(mask, r));
      auto e = torch::empty({t, c.hidden_size}, torch::kDouble);
      for (std::int64_t i = 0; i < t; ++i)
        for (std::int64_t k = 0; k < c.hidden_size; ++k) e[i][k] = expected[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)];
      EXPECT_TRUE(all_close(hidden[r], e, 1e-10)) << "row " << r;
    }
    // float32 gives the same within float32 rounding (dtype-agnostic module).
    model->to(torch::kFloat);
    torch::InferenceMode guard;
    EXPECT_TRUE(all_close(model(ids, mask), hidden, 1e-4));
  }
}

// ---- PairRM against the reference, case by case ------------------------------------------------------------

TEST(PairRM, EveryReferenceCaseAlone) {
  auto judge = reference_judge();
  const auto& cases = reference().at("cases");
  ASSERT_FALSE(cases.empty());
  const auto& meta = reference().at("meta");
  EXPECT_EQ(judge.model()->settings().source_maxlength, meta.at("source_maxlength").get<std::int64_t>());
  EXPECT_EQ(judge.model()->settings().candidate_maxlength, meta.at("candidate_maxlength").get<std::int64_t>());
  for (const auto& c : cases) {
    SCOPED_TRACE("case " + c.at("name").get<std::string>());
    EXPECT_EQ(PairRMJudge::source_text(c.at("prompt").get<std::string>()), c.at("source_text").get<std::string>());
    for (int k = 0; k < 2; ++k)
      EXPECT_EQ(PairRMJudge::candidate_text(c.at("completions")[k].get<std::string>()), c.at("candidate_texts")[k].get<std::string>());
    const auto in = judge.build_inputs({inner(ids_of(c.at("source_ids")))},
                                       {{inner(ids_of(c.at("candidate_ids")[0])), inner(ids_of(c.at("candidate_ids")[1]))}});
    EXPECT_EQ(in.source_ids[0], ids_of(c.at("source_ids")));
    EXPECT_EQ(in.candidate_ids[0][0], ids_of(c.at("candidate_ids")[0]));
    EXPECT_EQ(in.candidate_ids[0][1], ids_of(c.at("candidate_ids")[1]));
    EXPECT_EQ(in.longest_source, static_cast<std::int64_t>(ids_of(c.at("source_ids")).size()));
    EXPECT_EQ(in.candidate_max_length, c.at("candidate_max_length").get<std::int64_t>());
    const auto out = judge.run(in);
    ASSERT_EQ(c.at("orders").size(), 2U);
    for (std::int64_t o = 0; o < 2; ++o) {
      const auto& ord = c.at("orders")[static_cast<std::size_t>(o)];
      const auto name = ord.at("order").get<std::string>();
      SCOPED_TRACE("order " + name);
      const std::int64_t r = name == "AB" ? 0 : 1;  // row 0 holds AB, row B = 1 holds BA
      EXPECT_EQ(row_of(in.input_ids, r), ids_of(ord.at("input_ids")));
      EXPECT_EQ(row_of(in.attention_mask, r), ids_of(ord.at("attention_mask")));
      const auto& mp = ord.at("marker_positions");
      EXPECT_EQ(row_of(in.marker_positions, r),
                (Ids{mp.at("source").get<std::int64_t>(), mp.at("candidate1").get<std::int64_t>(), mp.at("candidate2").get<std::int64_t>()}));
      const auto& mh = ord.at("marker_hidden_states");
      EXPECT_TRUE(all_close(out.marker_hidden[r][0], mh.at("source"), kHiddenTol)) << "source hidden";
      EXPECT_TRUE(all_close(out.marker_hidden[r][1], mh.at("candidate1"), kHiddenTol)) << "candidate1 hidden";
      EXPECT_TRUE(all_close(out.marker_hidden[r][2], mh.at("candidate2"), kHiddenTol)) << "candidate2 hidden";
      EXPECT_TRUE(all_close(out.head_left[r], ord.at("head_left"), kLogitTol)) << "head_left";
      EXPECT_TRUE(all_close(out.head_right[r], ord.at("head_right"), kLogitTol)) << "head_right";
      EXPECT_TRUE(all_close(out.logits[r], json(ord.at("logit")), kLogitTol)) << "logit";
    }
    const auto v = PairRMJudge::verdict(out.logits[0].item<float>(), out.logits[1].item<float>());
    const auto& cmp = c.at("cmp_matrix");
    EXPECT_TRUE(all_close(torch::tensor({v.logit_ab, v.logit_ba}), json::array({cmp[0][1], cmp[1][0]}), kLogitTol));
    EXPECT_TRUE(all_close(torch::tensor({v.scores[0], v.scores[1]}), c.at("scores"), kLogitTol)) << "scores";
    EXPECT_EQ(v.scores[1], -v.scores[0]);
    EXPECT_EQ((std::vector<int>{v.ranks[0], v.ranks[1]}), c.at("ranks").get<std::vector<int>>());
    // The whole text path, one prompt per call, as TRL's judge([prompt], [[a, b]]).
    const std::vector<std::string> prompts{c.at("prompt").get<std::string>()};
    const std::vector<xpo::CompletionPair> pairs{{c.at("completions")[0].get<std::string>(), c.at("completions")[1].get<std::string>()}};
    const auto& trl = c.at("trl_judge");
    EXPECT_EQ(judge.judge(prompts, pairs), std::vector<int>{trl.at("return_scores_false").get<int>()});
    const auto probs = judge.judge_probabilities(prompts, pairs, reference().at("meta").at("trl_temperature").get<double>());
    EXPECT_TRUE(all_close(torch::tensor(probs), json::array({trl.at("return_scores_true")}), kLogitTol)) << "probability";
    EXPECT_EQ(judge.last_first_probabilities().size(), 1U);
  }
}

// All cases in one call, batches of 8 (the candidate budget depends on the other prompts of the batch).
TEST(PairRM, BatchedCallMatchesReference) {
  const auto& b = reference().at("batched");
  auto judge = reference_judge(b.at("batch_size").get<std::int64_t>());
  const auto& cases = reference().at("cases");
  const auto batch_size = static_cast<std::size_t>(b.at("batch_size").get<std::int64_t>());
  std::vector<std::string> prompts;
  std::vector<xpo::CompletionPair> pairs;
  std::vector<Ids> sources;
  std::vector<std::array<Ids, 2>> candidates;
  for (const auto& c : cases) {
    prompts.push_back(c.at("prompt").get<std::string>());
    pairs.push_back({c.at("completions")[0].get<std::string>(), c.at("completions")[1].get<std::string>()});
    sources.push_back(inner(ids_of(c.at("source_ids"))));
    candidates.push_back({inner(ids_of(c.at("candidate_ids")[0])), inner(ids_of(c.at("candidate_ids")[1]))});
  }
  const std::size_t n_batches = (cases.size() + batch_size - 1) / batch_size;
  ASSERT_EQ(n_batches, b.at("num_batches").get<std::size_t>());
  std::vector<xpo::scoring::PairRMBatchInputs> inputs;
  for (std::size_t k = 0; k < n_batches; ++k) {
    const auto from = k * batch_size, to = std::min(cases.size(), from + batch_size);
    inputs.push_back(judge.build_inputs(std::vector<Ids>(sources.begin() + static_cast<std::ptrdiff_t>(from), sources.begin() + static_cast<std::ptrdiff_t>(to)),
                                        std::vector<std::array<Ids, 2>>(candidates.begin() + static_cast<std::ptrdiff_t>(from), candidates.begin() + static_cast<std::ptrdiff_t>(to))));
    EXPECT_EQ(inputs.back().longest_source, b.at("longest_source_per_batch")[k].get<std::int64_t>());
    EXPECT_EQ(inputs.back().candidate_max_length, b.at("candidate_max_length_per_batch")[k].get<std::int64_t>());
  }
  const auto verdicts = judge.compare(prompts, pairs);
  const auto choices = judge.judge(prompts, pairs);
  const auto probs = judge.judge_probabilities(prompts, pairs, reference().at("meta").at("trl_temperature").get<double>());
  ASSERT_EQ(b.at("cases").size(), cases.size());
  int changed = 0;
  for (const auto& bc : b.at("cases")) {
    const auto i = bc.at("case").get<std::size_t>();
    SCOPED_TRACE("batched case " + std::to_string(i) + " (" + cases[i].at("name").get<std::string>() + ")");
    const auto k = bc.at("batch").get<std::size_t>();
    ASSERT_EQ(k, i / batch_size);
    ASSERT_EQ(b.at("batch_of_case")[i].get<std::size_t>(), k);
    const auto row = bc.at("row").get<std::int64_t>();
    ASSERT_EQ(static_cast<std::size_t>(row), i % batch_size);
    const auto& in = inputs[k];
    const auto rows = in.input_ids.size(0) / 2;
    EXPECT_EQ(in.candidate_max_length, bc.at("candidate_max_length").get<std::int64_t>());
    EXPECT_EQ(in.source_ids[static_cast<std::size_t>(row)], ids_of(bc.at("source_ids")));
    EXPECT_EQ(in.candidate_ids[static_cast<std::size_t>(row)][0], ids_of(bc.at("candidate_ids")[0]));
    EXPECT_EQ(in.candidate_ids[static_cast<std::size_t>(row)][1], ids_of(bc.at("candidate_ids")[1]));
    const auto out = judge.run(in);
    for (const auto& ord : bc.at("orders")) {
      const auto name = ord.at("order").get<std::string>();
      SCOPED_TRACE("order " + name);
      const auto r = (name == "AB" ? 0 : rows) + row;
      EXPECT_EQ(row_of(in.input_ids, r), ids_of(ord.at("input_ids")));
      EXPECT_EQ(row_of(in.attention_mask, r), ids_of(ord.at("attention_mask")));
      const auto& mp = ord.at("marker_positions");
      EXPECT_EQ(row_of(in.marker_positions, r),
                (Ids{mp.at("source").get<std::int64_t>(), mp.at("candidate1").get<std::int64_t>(), mp.at("candidate2").get<std::int64_t>()}));
      EXPECT_TRUE(all_close(out.head_left[r], ord.at("head_left"), kLogitTol)) << "head_left";
      EXPECT_TRUE(all_close(out.head_right[r], ord.at("head_right"), kLogitTol)) << "head_right";
      EXPECT_TRUE(all_close(out.logits[r], json(ord.at("logit")), kLogitTol)) << "logit";
    }
    const auto& v = verdicts[i];
    EXPECT_TRUE(all_close(torch::tensor({v.scores[0], v.scores[1]}), bc.at("scores"), kLogitTol)) << "scores";
    EXPECT_EQ((std::vector<int>{v.ranks[0], v.ranks[1]}), bc.at("ranks").get<std::vector<int>>());
    EXPECT_EQ(choices[i], bc.at("trl_judge").at("return_scores_false").get<int>());
    EXPECT_TRUE(all_close(torch::tensor({probs[i]}), json::array({bc.at("trl_judge").at("return_scores_true")}), kLogitTol));
    EXPECT_TRUE(all_close(torch::tensor({judge.last_first_probabilities()[i]}), json::array({bc.at("trl_judge").at("return_scores_true")}), kLogitTol));
    changed += bc.at("trl_judge").at("return_scores_false") != cases[i].at("trl_judge").at("return_scores_false");
  }
  // The README promises decisions that change with the batch; the loop above checked they change the same way.
  EXPECT_GT(changed, 0) << "no decision differs between alone and batched: the batch-dependent budget is untested";
}

// A batch size other than the reference's gives, per prompt, what that prompt's own batch gives.
TEST(PairRM, BatchSizeIsConfigurable) {
  auto alone = reference_judge(1);
  const auto& cases = reference().at("cases");
  std::vector<std::string> prompts;
  std::vector<xpo::CompletionPair> pairs;
  for (const auto& c : cases) {
    prompts.push_back(c.at("prompt").get<std::string>());
    pairs.push_back({c.at("completions")[0].get<std::string>(), c.at("completions")[1].get<std::string>()});
  }
  const auto choices = alone.judge(prompts, pairs);
  for (std::size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(choices[i], cases[i].at("trl_judge").at("return_scores_false").get<int>()) << cases[i].at("name");
  EXPECT_THROW(PairRMJudge(xpo::scoring::load_pair_rm(pair_rm_folder()), reference_encoder(), {.batch_size = 0}), xpo::ConfigError);
  EXPECT_THROW((void)alone.judge(prompts, {}), xpo::Error);
}

// ---- the folder's own tokenizer (tokenizer.json through xpo's Tokenizer) ------------------------------------

// Per case and order: the ids the judge builds from the texts with the real tokenizer are the reference's.
TEST(PairRM, FolderTokenizerGivesTheReferenceIds) {
  const auto encode = xpo::scoring::pair_rm_encoder(pair_rm_folder());
  auto judge = reference_judge();
  for (const auto& c : reference().at("cases")) {
    SCOPED_TRACE("case " + c.at("name").get<std::string>());
    const auto in = judge.build_inputs({encode(PairRMJudge::source_text(c.at("prompt").get<std::string>()))},
                                       {{encode(PairRMJudge::candidate_text(c.at("completions")[0].get<std::string>())),
                                         encode(PairRMJudge::candidate_text(c.at("completions")[1].get<std::string>()))}});
    EXPECT_EQ(in.source_ids[0], ids_of(c.at("source_ids")));
    EXPECT_EQ(in.candidate_ids[0][0], ids_of(c.at("candidate_ids")[0]));
    EXPECT_EQ(in.candidate_ids[0][1], ids_of(c.at("candidate_ids")[1]));
    for (const auto& ord : c.at("orders")) {
      const std::int64_t r = ord.at("order").get<std::string>() == "AB" ? 0 : 1;
      EXPECT_EQ(row_of(in.input_ids, r), ids_of(ord.at("input_ids"))) << ord.at("order");
      EXPECT_EQ(row_of(in.attention_mask, r), ids_of(ord.at("attention_mask"))) << ord.at("order");
    }
  }
}

// The judge as xpo-train loads it (load_pair_rm_judge: network, settings and tokenizer from the folder), on
// every case alone and on all cases in one batched call.
TEST(PairRM, LoadedJudgeMatchesTrlAloneAndBatched) {
  auto judge = xpo::scoring::load_pair_rm_judge(pair_rm_folder());
  const auto& cases = reference().at("cases");
  const auto temperature = reference().at("meta").at("trl_temperature").get<double>();
  std::vector<std::string> prompts;
  std::vector<xpo::CompletionPair> pairs;
  for (const auto& c : cases) {
    prompts.push_back(c.at("prompt").get<std::string>());
    pairs.push_back({c.at("completions")[0].get<std::string>(), c.at("completions")[1].get<std::string>()});
    const auto& trl = c.at("trl_judge");
    EXPECT_EQ(judge.judge({prompts.back()}, {pairs.back()}), std::vector<int>{trl.at("return_scores_false").get<int>()}) << c.at("name");
    EXPECT_TRUE(all_close(torch::tensor(judge.judge_probabilities({prompts.back()}, {pairs.back()}, temperature)),
                          json::array({trl.at("return_scores_true")}), kLogitTol)) << c.at("name");
  }
  const auto& b = reference().at("batched");
  ASSERT_EQ(judge.options().batch_size, b.at("batch_size").get<std::int64_t>());
  const auto choices = judge.judge(prompts, pairs);
  const auto probs = judge.judge_probabilities(prompts, pairs, temperature);
  for (const auto& bc : b.at("cases")) {
    const auto i = bc.at("case").get<std::size_t>();
    EXPECT_EQ(choices.at(i), bc.at("trl_judge").at("return_scores_false").get<int>()) << "batched case " << i;
    EXPECT_TRUE(all_close(torch::tensor({probs.at(i)}), json::array({bc.at("trl_judge").at("return_scores_true")}), kLogitTol))
        << "batched case " << i;
  }
}

// ---- both hub layouts, and bad folders ---------------------------------------------------------------------

class PairRMLayout : public ScratchDir {
 protected:
  // A folder laid out like llm-blender/PairRM-hf: the complete config.json, the weights and the tokenizer files.
  std::filesystem::path make_hf_folder() {
    const auto src = pair_rm_folder();
    const auto dst = dir_ / "PairRM-hf";
    std::filesystem::create_directories(dst);
    std::filesystem::copy_file(src / "pairrm_hf_config.json", dst / "config.json");
    for (const char* f : {"model.safetensors", "spm.model", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "added_tokens.json"})
      std::filesystem::copy_file(src / f, dst / f);
    return dst;
  }
  // A copy of the PairRM folder without `skip`.
  std::filesystem::path copy_without(const std::string& skip) {
    const auto dst = dir_ / ("PairRM-without-" + std::filesystem::path(skip).filename().string());
    std::filesystem::copy(pair_rm_folder(), dst, std::filesystem::copy_options::recursive);
    std::filesystem::permissions(dst, std::filesystem::perms::owner_all, std::filesystem::perm_options::add);
    for (const auto& e : std::filesystem::recursive_directory_iterator(dst))
      std::filesystem::permissions(e.path(), std::filesystem::perms::owner_all, std::filesystem::perm_options::add);
    if (!skip.empty()) std::filesystem::remove_all(dst / skip);
    return dst;
  }
};

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const xpo::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST_F(PairRMLayout, PairRMHfLoadsAndAgreesWithPairRM) {
  const auto hf = make_hf_folder();
  EXPECT_TRUE(xpo::scoring::is_pair_rm_folder(hf));
  EXPECT_TRUE(xpo::scoring::is_pair_rm_folder(pair_rm_folder()));
  EXPECT_FALSE(xpo::scoring::is_pair_rm_folder(pair_rm_folder() / "backbone"));
  // PairRM-hf's config.json has no truncation lengths: PairRM's defaults unless given.
  EXPECT_EQ(xpo::scoring::load_pair_rm(hf)->settings().source_maxlength, xpo::scoring::kPairRMSourceMaxLength);
  const auto& meta = reference().at("meta");
  auto hf_model = xpo::scoring::load_pair_rm(hf, {.source_maxlength = meta.at("source_maxlength").get<std::int64_t>(),
                                                  .candidate_maxlength = meta.at("candidate_maxlength").get<std::int64_t>()});
  const auto& a = hf_model->settings();
  auto ranker_model = xpo::scoring::load_pair_rm(pair_rm_folder());
  const auto& b = ranker_model->settings();
  EXPECT_EQ(a.source_prefix_id, b.source_prefix_id);
  EXPECT_EQ(a.cand1_prefix_id, b.cand1_prefix_id);
  EXPECT_EQ(a.cand2_prefix_id, b.cand2_prefix_id);
  EXPECT_EQ(a.cand_prefix_id, b.cand_prefix_id);
  EXPECT_EQ(a.n_tasks, b.n_tasks);
  EXPECT_EQ(hf_model->pretrained_model->config().vocab_size, ranker_model->pretrained_model->config().vocab_size);
  PairRMJudge hf_judge(hf_model, reference_encoder());
  auto judge = reference_judge();
  std::vector<std::string> prompts;
  std::vector<xpo::CompletionPair> pairs;
  for (const auto& c : reference().at("cases")) {
    prompts.push_back(c.at("prompt").get<std::string>());
    pairs.push_back({c.at("completions")[0].get<std::string>(), c.at("completions")[1].get<std::string>()});
  }
  const auto x = hf_judge.compare(prompts, pairs), y = judge.compare(prompts, pairs);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(x[i].logit_ab, y[i].logit_ab);
    EXPECT_EQ(x[i].logit_ba, y[i].logit_ba);
  }
}

TEST_F(PairRMLayout, MissingFolderOrFilesAreClearErrors) {
  const auto missing = message_of([&] { (void)xpo::scoring::load_pair_rm(dir_ / "nowhere"); });
  EXPECT_NE(missing.find("llm-blender/PairRM"), std::string::npos) << missing;
  EXPECT_NE(missing.find("huggingface-cli download"), std::string::npos) << missing;
  for (const char* file : {"model.safetensors", "added_tokens.json"}) {
    const auto msg = message_of([&] { (void)xpo::scoring::load_pair_rm(copy_without(file)); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find("llm-blender/PairRM"), std::string::npos) << msg;
  }
  const auto no_config = copy_without("config.json");
  std::filesystem::remove(no_config / "ranker_config.json");
  const auto msg = message_of([&] { (void)xpo::scoring::load_pair_rm(no_config); });
  EXPECT_NE(msg.find("ranker_config.json"), std::string::npos) << msg;
  const auto no_tokenizer = message_of([&] { (void)xpo::scoring::pair_rm_encoder(copy_without("tokenizer.json")); });
  EXPECT_NE(no_tokenizer.find("tokenizer.json"), std::string::npos) << no_tokenizer;
}

TEST_F(PairRMLayout, WrongShapesAreClearErrors) {
  // Without backbone/, the network is deberta-v3-large's: the tiny weights do not fit, and the error says why.
  const auto no_backbone = copy_without("backbone");
  const auto msg = message_of([&] { (void)xpo::scoring::load_pair_rm(no_backbone); });
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;
  EXPECT_NE(msg.find("deberta-v3-large"), std::string::npos) << msg;
  // A backbone config of another width.
  auto config = xpo::read_json_file(pair_rm_folder() / "backbone" / "config.json");
  config["intermediate_size"] = 48;
  const auto other = dir_ / "other.json";
  xpo::write_json_file(other, config);
  const auto wrong = message_of([&] { (void)xpo::scoring::load_pair_rm(pair_rm_folder(), {.backbone_config = other}); });
  EXPECT_NE(wrong.find("intermediate.dense.weight"), std::string::npos) << wrong;
  EXPECT_NE(wrong.find("[64,32]"), std::string::npos) << wrong;
}

TEST(PairRM, DeviceAndDtype) {
  // float64 gives the float32 logits within float32 rounding (the module follows its parameters' dtype).
  auto model = xpo::scoring::load_pair_rm(pair_rm_folder(), {.dtype = torch::kDouble});
  EXPECT_EQ(model->dtype(), torch::kDouble);
  PairRMJudge judge(model, reference_encoder());
  const auto& c = reference().at("cases")[0];
  const auto v = judge.compare({c.at("prompt").get<std::string>()},
                               {{c.at("completions")[0].get<std::string>(), c.at("completions")[1].get<std::string>()}});
  EXPECT_TRUE(all_close(torch::tensor({v[0].scores[0], v[0].scores[1]}), c.at("scores"), kLogitTol));
}

}  // namespace
