// Peak resident memory of a region of code, from the kernel's own accounting (/proc/self: VmHWM, reset through
// clear_refs). Independent of LibTorch's allocator API, so it reads the same on 1.13 and 2.x. Tensors of a few
// MB and more are mmapped by glibc and returned on free, so the high-water mark follows live tensor memory.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace xpo::bench {

inline std::int64_t read_status_kib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

// Bytes the region added on top of what was resident when it started: run `region` and return peak - start.
template <class F>
std::int64_t peak_extra_bytes(F&& region) {
  { std::ofstream("/proc/self/clear_refs") << "5"; }  // reset VmHWM to the current RSS
  const std::int64_t start = read_status_kib("VmRSS");
  region();
  return (read_status_kib("VmHWM") - start) * 1024;
}

}  // namespace xpo::bench
