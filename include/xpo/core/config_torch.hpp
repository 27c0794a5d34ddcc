// xpo/core/config_torch.hpp — LibTorch's view of an XPOConfig: its device and its dtype. Kept apart from
// core/config.hpp, which needs no LibTorch (so that the config and flag parsers can be fuzzed with clang).
#pragma once

#include <torch/torch.h>

#include <string>

#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"

namespace xpo {

// The device of `config.device` ("cpu", "cuda", "cuda:1", ...).
inline torch::Device torch_device(const XPOConfig& config) { return torch::Device(config.device); }

// The dtype of `config.dtype` (float32 | bfloat16 | float16 | float64).
inline torch::ScalarType torch_dtype(const XPOConfig& config) {
  if (config.dtype == "float32") return torch::kFloat;
  if (config.dtype == "bfloat16") return torch::kBFloat16;
  if (config.dtype == "float16") return torch::kHalf;
  if (config.dtype == "float64") return torch::kDouble;
  throw ConfigError("dtype = \"" + config.dtype + "\": must be one of float32, bfloat16, float16, float64");
}

}  // namespace xpo
