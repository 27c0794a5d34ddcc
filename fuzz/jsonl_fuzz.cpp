// Fuzz target: the JSONL prompt reader (io/prompt_dataset.hpp). The input is written as a .jsonl file and read
// strictly and with skip_bad_rows, with a small line limit on odd sizes.
#include <xpo/io/prompt_dataset.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto path = std::filesystem::temp_directory_path() / ("xpo-fuzz-" + std::to_string(::getpid()) + ".jsonl");
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  for (const bool skip : {false, true}) {
    try {
      xpo::io::PromptDatasetOptions options;
      options.skip_bad_rows = skip;
      if (size % 2 == 1) options.max_line_bytes = 64;
      const auto loaded = xpo::io::load_prompt_dataset(path, options);
      if (loaded.rows.empty()) __builtin_trap();  // "no usable rows" must be an error, not an empty set
      if (loaded.rows.size() > 1) (void)xpo::io::split_eval(loaded.rows, 0.5, size);
    } catch (const xpo::Error&) {
    }
  }
  return 0;
}
