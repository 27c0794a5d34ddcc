// Fuzz target: the safetensors header parser (io/safetensors_header.hpp). The input is written as a .safetensors
// file and read. What is accepted must describe the file exactly: each tensor's byte range is its dtype size
// times its shape product, and the ranges tile the data section from its start to the end of the file.
#include <xpo/io/safetensors_header.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto path = std::filesystem::temp_directory_path() / ("xpo-fuzz-" + std::to_string(::getpid()) + ".safetensors");
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  xpo::io::SafetensorsHeader header;
  try {
    header = xpo::io::SafetensorsHeader::read(path);
  } catch (const xpo::Error&) {
    return 0;  // bad input is refused with xpo's error, and only with it
  }
  if (header.data_start < 8 || header.data_start > size) __builtin_trap();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& e : header.entries) {
    if (xpo::io::safetensors_dtype_size(e.dtype) != e.element_bytes) __builtin_trap();
    std::uint64_t bytes = e.element_bytes;
    for (const auto d : e.shape) {
      if (d < 0) __builtin_trap();
      bytes *= static_cast<std::uint64_t>(d);
    }
    if (e.end - e.begin != bytes || e.begin > e.end) __builtin_trap();
    ranges.emplace_back(e.begin, e.end);
  }
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t cursor = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin != cursor) __builtin_trap();
    cursor = end;
  }
  if (header.data_start + cursor != size) __builtin_trap();
  return 0;
}
