// The limits of the device a benchmark runs on, measured in the same run (support/machine.hpp does this for the
// CPU): the bf16 matrix-multiply rate and the copy bandwidth, as the lent GPU machine's notes measure them
// (a large n x n x n product on random data; a large device-to-device copy counting the bytes read plus the bytes
// written). Device work is asynchronous: every timed region ends with a device synchronisation.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace xpo::bench {

// Waits for the work queued on `device` (nothing to wait for on the CPU).
inline void synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

// Seconds of f() on `device`, synchronised before and after.
template <class F>
double device_seconds(torch::Device device, F&& f) {
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  f();
  synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The median of `repeats` timings of f() after `warmups` untimed calls.
template <class F>
double median_seconds(torch::Device device, int warmups, int repeats, F&& f) {
  for (int i = 0; i < warmups; ++i) f();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) times.push_back(device_seconds(device, f));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// bf16 matrix-multiply rate on `device` (FLOP/s): n x n x n products of normal random matrices, the median of 10.
inline double measured_bf16_matmul_flops(torch::Device device, std::int64_t n = 8192) {
  torch::manual_seed(0);
  const auto options = torch::TensorOptions().dtype(torch::kBFloat16).device(device);
  const auto a = torch::randn({n, n}, options), b = torch::randn({n, n}, options);
  auto c = torch::empty({n, n}, options);
  const double seconds = median_seconds(device, 3, 10, [&] { torch::mm_out(c, a, b); });
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / seconds;
}

// Device memory bandwidth (bytes/s): a copy of `bytes` of random float32 values into another buffer, counting the
// bytes read plus the bytes written, the median of 10.
inline double measured_copy_bandwidth(torch::Device device, std::int64_t bytes = std::int64_t{2} << 30) {
  torch::manual_seed(0);
  const auto src = torch::rand({bytes / 4}, torch::TensorOptions().device(device));
  auto dst = torch::empty_like(src);
  const double seconds = median_seconds(device, 2, 10, [&] { dst.copy_(src); });
  return 2.0 * static_cast<double>(bytes) / seconds;
}

}  // namespace xpo::bench
