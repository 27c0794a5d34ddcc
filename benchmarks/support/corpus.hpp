// A generated, reproducible text corpus for tokenizer benchmarks: documents of English-like prose (with some
// accented, CJK and emoji text), Python and C++ code (indentation, operators, numbers) and JSON-ish data, in the
// proportions of a typical pretraining mix. Generated from a fixed seed, so every run and machine encodes the
// same bytes; the generator is the shipped corpus.
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace xpo::bench {

inline std::vector<std::string> generate_corpus(std::size_t total_bytes, std::uint32_t seed = 1234) {
  static const std::array<const char*, 64> kWords = {
      "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
      "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you",
      "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will",
      "would", "who", "so", "model", "training", "preference", "optimization", "exploration", "reward", "policy",
      "gradient", "language", "tokenizer", "distribution", "sampling", "reference", "learning", "objective", "value"};
  static const std::array<const char*, 12> kExotic = {"café", "naïve", "Zürich", "façade", "日本語", "中文文本", "한국어",
                                                      "Привет", "emoji 🤗", "🚀🚀", "mañana", "Ελληνικά"};
  static const std::array<const char*, 8> kCode = {
      "def {f}(x, y=None):\n    if y is None:\n        y = {n}\n    return x * y + {n}\n\n",
      "for i in range({n}):\n    total += values[i] ** 2  # accumulate\n",
      "class {F}:\n    def __init__(self):\n        self.count = {n}\n\n",
      "static int {f}(const std::vector<int>& v) {\n  int s = 0;\n  for (int x : v) s += x;\n  return s + {n};\n}\n\n",
      "if (ptr != nullptr && ptr->size() > {n}) {\n\treturn -1;\n}\n",
      "{\"id\": {n}, \"name\": \"{f}\", \"score\": 0.{n}, \"tags\": [\"a\", \"b\"]}\n",
      "    x_{n} = torch.zeros({n}, dtype=torch.float32)\n",
      "  // TODO({f}): handle the {n} edge cases\n"};
  std::mt19937 rng(seed);
  const auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  const auto fill = [&](std::string s) {
    for (std::size_t at; (at = s.find("{n}")) != std::string::npos;) s.replace(at, 3, std::to_string(rng() % 100000));
    for (std::size_t at; (at = s.find("{f}")) != std::string::npos;) s.replace(at, 3, std::string(kWords[pick(48) + 16]) + "_" + kWords[pick(64)]);
    for (std::size_t at; (at = s.find("{F}")) != std::string::npos;) s.replace(at, 3, "Model" + std::to_string(rng() % 1000));
    return s;
  };
  std::vector<std::string> docs;
  std::size_t bytes = 0;
  while (bytes < total_bytes) {
    std::string& doc = docs.emplace_back();
    const bool code = pick(10) < 3;
    while (doc.size() < 2048) {
      if (code) {
        doc += fill(kCode[pick(kCode.size())]);
        continue;
      }
      std::string sentence;
      const std::size_t words = 6 + pick(18);
      for (std::size_t w = 0; w < words; ++w) {
        std::string word = pick(40) == 0 ? kExotic[pick(kExotic.size())] : kWords[pick(kWords.size())];
        if (w == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
        if (pick(25) == 0) word = std::to_string(rng() % 10000);
        sentence += (w ? " " : "") + word;
        if (w + 1 < words && pick(12) == 0) sentence += ",";
      }
      sentence += pick(8) == 0 ? "?" : (pick(10) == 0 ? "!" : ".");
      sentence += pick(6) == 0 ? "\n\n" : " ";
      doc.insert(doc.end(), sentence.begin(), sentence.end());
    }
    bytes += doc.size();
  }
  return docs;
}

}  // namespace xpo::bench
