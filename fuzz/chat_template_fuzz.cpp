// Fuzz target: the Jinja chat-template engine (parse + render). The input is the template source; it is rendered
// against fixed conversations with and without a generation prompt, under the engine's default limits.
#include <xpo/text/jinja/template.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  static const nlohmann::json contexts[] = {
      {{"messages", {{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", "Hi <b>\xc3\xa9"}}}},
       {"add_generation_prompt", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"}},
      {{"messages", {{{"role", "user"}, {"content", ""}}, {{"role", "assistant"}, {"content", "x"}}}},
       {"add_generation_prompt", false}, {"tools", nullptr}}};
  try {
    xpo::text::jinja::Options options;
    options.trim_blocks = options.lstrip_blocks = (size % 2) == 1;
    const xpo::text::jinja::Template t(source, options);
    for (const auto& context : contexts) (void)t.render_json(context);
  } catch (const xpo::Error&) {
    // bad templates are reported as xpo::Error; anything else escapes and is a finding
  }
  return 0;
}
