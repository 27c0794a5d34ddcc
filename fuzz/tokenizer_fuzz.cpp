// Fuzz target: tokenizer.json loading, and encoding/decoding arbitrary text. The first byte picks the mode:
// even = the rest is a tokenizer.json (loaded, then encodes and decodes fixed strings); odd = the rest is text for a
// real tokenizer ($XPO_FUZZ_TOKENIZER: tokenizer.json paths separated by ':', each used in turn): encode with and
// without special tokens, every id must be in the vocabulary, and decoding must not fail.
#include <xpo/text/tokenizer.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace {
const std::vector<xpo::text::Tokenizer>& real_tokenizers() {
  static const std::vector<xpo::text::Tokenizer> all = [] {
    std::vector<xpo::text::Tokenizer> out;
    const char* paths = std::getenv("XPO_FUZZ_TOKENIZER");
    std::string list = paths == nullptr ? "" : paths;
    for (std::size_t at = 0; at < list.size();) {
      const auto end = std::min(list.find(':', at), list.size());
      if (end > at) out.push_back(xpo::text::Tokenizer::from_file(list.substr(at, end - at)));
      at = end + 1;
    }
    return out;
  }();
  return all;
}

void exercise(const xpo::text::Tokenizer& t, const std::string& text) {
  for (const bool special : {false, true}) {
    const auto ids = t.encode(text, special);
    for (const auto id : ids)
      if (id < 0 || static_cast<std::size_t>(id) >= t.vocab_size()) __builtin_trap();
    (void)t.decode(ids, false);
    (void)t.decode(ids, true);
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      const auto j = nlohmann::json::parse(rest, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) return 0;
      const auto t = xpo::text::Tokenizer::from_json(j, "fuzz");
      exercise(t, "Hello world! \xc3\x87" "a va? <|im_end|>\n\n  12345 \xe4\xbd\xa0\xe5\xa5\xbd");
      (void)t.decode({0, 1, 2, 3, 1000000, -1}, true);
    } else {
      for (const auto& t : real_tokenizers()) exercise(t, rest);
    }
  } catch (const xpo::Error&) {
  }
  return 0;
}
