// Fuzz target: tokenizer.json loading, and encoding/decoding arbitrary text. The first byte picks the mode:
// even = the rest is a tokenizer.json (loaded, then encodes and decodes fixed strings); odd = the rest is text for a
// real tokenizer ($XPO_FUZZ_TOKENIZER, a tokenizer.json path): encode with and without special tokens, every id must
// be in the vocabulary, and decoding must not fail.
#include <xpo/text/tokenizer.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

namespace {
const xpo::text::Tokenizer* real_tokenizer() {
  static const std::optional<xpo::text::Tokenizer> t = []() -> std::optional<xpo::text::Tokenizer> {
    const char* path = std::getenv("XPO_FUZZ_TOKENIZER");
    if (path == nullptr || *path == '\0') return std::nullopt;
    return xpo::text::Tokenizer::from_file(path);
  }();
  return t ? &*t : nullptr;
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
    } else if (const auto* t = real_tokenizer()) {
      exercise(*t, rest);
    }
  } catch (const xpo::Error&) {
  }
  return 0;
}
