// Fuzz target: the Jinja chat-template engine (parse + render). The input is the template source; it is rendered
// against fixed conversations with and without a generation prompt. The limits are the engine's defaults scaled
// down 16x for output and 4x for values, so that a unit which runs into them (printing 2^40 shared items, say)
// takes milliseconds rather than seconds under the sanitizers; which checks fire does not depend on the scale.
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
    xpo::text::jinja::Limits limits;
    limits.max_output_bytes /= 16;
    limits.max_value_bytes /= 4;
    const xpo::text::jinja::Template t(source, options, limits);
    for (const auto& context : contexts) (void)t.render_json(context);
  } catch (const xpo::Error&) {
    // bad templates are reported as xpo::Error; anything else escapes and is a finding
  }
  return 0;
}
