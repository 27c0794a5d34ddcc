// xpo/scoring/rules.hpp — built-in rule rewards: small, transparent preferences a model can learn, for quick
// starts, smoke tests and debugging a pipeline before a reward model is involved (xpo-train --reward_rule NAME,
// or --judge NAME to use one as a pairwise judge).
//
//   positivity  (#positive words - #negative words) in the completion, from a small fixed lexicon, clipped to
//               [-3, 3]: the "write a positive review" task of RLHF tutorials, without a sentiment model.
//   concise     1 if the completion ends a sentence (. ! ?), minus 0.01 per byte: short, finished answers.
//
// Rules look at the completion text only (special tokens skipped, as the trainer decodes it).
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <string_view>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/scoring/function.hpp"

namespace xpo::scoring::rules {

namespace detail {

inline constexpr std::array<std::string_view, 24> kPositiveWords = {
    "good",  "great", "wonderful", "love",  "lovely",    "happy",  "nice",   "best",
    "fun",   "beautiful", "amazing", "enjoy", "delightful", "excellent", "kind", "bright",
    "joy",   "like",  "fantastic", "glad",  "pleasant",  "awesome", "cheerful", "favorite"};
inline constexpr std::array<std::string_view, 20> kNegativeWords = {
    "bad",  "awful", "terrible", "hate",  "sad",      "boring", "worst",   "ugly",   "dull",  "annoying",
    "dislike", "horrible", "gloomy", "miserable", "nasty", "poor", "dreadful", "unpleasant", "tedious", "angry"};

// Lower-case ASCII words of `text` (runs of letters).
inline std::vector<std::string> words(std::string_view text) {
  std::vector<std::string> out;
  std::string word;
  for (const char c : text) {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      out.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) out.push_back(std::move(word));
  return out;
}

template <std::size_t N>
bool contains(const std::array<std::string_view, N>& list, std::string_view w) {
  return std::find(list.begin(), list.end(), w) != list.end();
}

}  // namespace detail

inline double positivity(std::string_view /*prompt*/, std::string_view completion) {
  double score = 0;
  for (const auto& w : detail::words(completion)) {
    if (detail::contains(detail::kPositiveWords, w)) score += 1;
    else if (detail::contains(detail::kNegativeWords, w)) score -= 1;
  }
  return std::clamp(score, -3.0, 3.0);
}

inline double concise(std::string_view /*prompt*/, std::string_view completion) {
  auto end = completion.find_last_not_of(" \t\r\n");
  const bool finished = end != std::string_view::npos &&
                        (completion[end] == '.' || completion[end] == '!' || completion[end] == '?');
  return (finished ? 1.0 : 0.0) - 0.01 * static_cast<double>(completion.size());
}

struct Rule {
  std::string_view name;
  std::string_view description;
  double (*score)(std::string_view prompt, std::string_view completion);
};

inline constexpr std::array<Rule, 2> kRules = {
    Rule{"positivity", "(#positive - #negative lexicon words) in the completion, clipped to [-3, 3]", &positivity},
    Rule{"concise", "1 if the completion ends a sentence, minus 0.01 per byte", &concise}};

// The rule called `name`; an unknown name is a ConfigError listing the known ones.
inline const Rule& rule(std::string_view name) {
  for (const auto& r : kRules)
    if (r.name == name) return r;
  std::string known;
  for (const auto& r : kRules) known += (known.empty() ? "" : ", ") + std::string(r.name);
  throw ConfigError("unknown rule \"" + std::string(name) + "\" (built-in rules: " + known + ")");
}

// The rule as a reward scorer.
inline FunctionScorer rule_scorer(std::string_view name) {
  const auto* r = &rule(name);
  return FunctionScorer([r](const std::string& prompt, const std::string& completion) { return r->score(prompt, completion); });
}

// The rule as a pairwise judge: the higher score wins; a tie goes to the policy's completion (0), as the reward
// path's `model_score >= ref_score`.
inline FunctionJudge rule_judge(std::string_view name) {
  const auto* r = &rule(name);
  return FunctionJudge([r](const std::string& prompt, const CompletionPair& pair) {
    return r->score(prompt, pair[0]) >= r->score(prompt, pair[1]) ? 0 : 1;
  });
}

}  // namespace xpo::scoring::rules
