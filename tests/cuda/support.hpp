// Test support for the CUDA tests (label `cuda`, program xpo_cuda_tests): which device is under test.
//
// Every CUDA test compares a computation on the device under test with the same computation on the CPU (or with
// the fixtures' transformers reference). The device is CUDA when LibTorch sees a GPU; without one each test
// skips, saying why. XPO_CUDA_TESTS_ON_CPU=1 puts the CPU in the GPU's place: the same code paths then run CPU
// against CPU, which checks the tests' own code (shapes, indexing, tolerances that do not depend on the device,
// such as bf16 against float32) on a machine without a GPU. scripts/cuda-check.sh --dry-run uses it once.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <optional>
#include <string>

#include <xpo/core/compat.hpp>

namespace xpo::test {

// Whether XPO_CUDA_TESTS_ON_CPU is set to a non-empty value other than "0".
inline bool cuda_tests_on_cpu() {
  const char* v = std::getenv("XPO_CUDA_TESTS_ON_CPU");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

// CUDA when LibTorch sees a GPU; the CPU under XPO_CUDA_TESTS_ON_CPU; otherwise none (the test skips).
inline std::optional<torch::Device> device_under_test() {
  if (torch::cuda::is_available()) return torch::Device(torch::kCUDA, 0);
  if (cuda_tests_on_cpu()) return torch::Device(torch::kCPU);
  return std::nullopt;
}

// Why a CUDA test skips here (the message GTEST_SKIP prints).
inline std::string no_cuda_reason() {
  return "no CUDA device: torch::cuda::is_available() is false (LibTorch " + compat::torch_version() +
         "); these tests compare CUDA against the CPU and run on a GPU machine (scripts/cuda-check.sh)";
}

}  // namespace xpo::test

// Declares `torch::Device name`, the device under test, or skips the test with the reason.
#define XPO_DEVICE_UNDER_TEST(name)                                               \
  const auto name##_or_none = ::xpo::test::device_under_test();                   \
  if (!name##_or_none) GTEST_SKIP() << ::xpo::test::no_cuda_reason();             \
  const torch::Device name = *name##_or_none
