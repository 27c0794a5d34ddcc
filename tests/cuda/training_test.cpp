// CUDA (label `cuda`): xpo::Trainer on the GPU against the same trainer on the CPU, and mixed precision on the GPU,
// on the tiny fixture models. Each test skips without a GPU (tests/cuda/support.hpp). Tolerances, in the form
// |a - e| <= tol (1 + |e|):
//  - one micro-batch (Trainer::step: both samples, scoring, the two 2B-row forwards, the loss, backward): the
//    logged metrics and every gradient 1e-4. The samples come from the row streams, which give the CPU's tokens
//    on the device (CudaGeneration.RowStreamSamplesEqualTheCpuSamples: a difference needs a uniform within ~1e-6
//    of a distribution boundary); the rest is float32 arithmetic in other summation orders, ~1e-6 relative, and
//    1e-4 is the fixtures' float32 parity bound;
//  - one whole optimizer step (clipping, AdamW): the weights 1e-5, on the elements whose gradient exceeds 1e-6 in
//    magnitude (AdamW's first update is lr x g / (|g| + eps): a rounding-level gradient moves its weight by up to
//    lr either way, which says nothing about the step's precision);
//  - --bf16 and --fp16 (fp16 with the dynamic loss scaler) on the device, 20 steps: every loss finite, no step
//    skipped by the non-finite guard, the weights move, under fp16 the scale stays a power of two with at least
//    one step applied; and bf16's mean logged loss within 0.02 of float32's (the CPU's own bf16 test bound,
//    tests/training/trainer_test.cpp). The samples are drawn under autocast, so a single micro-batch's
//    completions, and loss, are not comparable with float32's (seen with the CPU in the GPU's place: 0.23 apart).
#include "cuda/support.hpp"
#include "cuda/trainer_support.hpp"

namespace {

using xpo::test::all_close;

class CudaTrainer : public xpo::test::ScratchDir {};

TEST_F(CudaTrainer, OneStepMatchesTheCpuStep) {
  XPO_DEVICE_UNDER_TEST(device);
  xpo::training::Metrics cpu_metrics, device_metrics;
  auto cpu = xpo::test::tiny_trainer(torch::kCPU, dir_ / "cpu");
  auto gpu = xpo::test::tiny_trainer(device, dir_ / "device");
  ASSERT_EQ(gpu->policy()->device().type(), device.type());
  ASSERT_EQ(cpu->micro_batch_rows(0), gpu->micro_batch_rows(0));
  const auto cpu_grads = xpo::test::first_gradients(*cpu, &cpu_metrics);
  const auto device_grads = xpo::test::first_gradients(*gpu, &device_metrics);

  ASSERT_EQ(device_metrics.size(), cpu_metrics.size());
  for (const auto& [key, value] : cpu_metrics) {
    ASSERT_TRUE(device_metrics.count(key)) << key;
    EXPECT_LE(std::abs(device_metrics.at(key) - value), 1e-4 * (1 + std::abs(value)))
        << key << ": device " << device_metrics.at(key) << ", CPU " << value;
  }
  ASSERT_EQ(device_grads.size(), cpu_grads.size());
  for (const auto& [name, grad] : cpu_grads) {
    ASSERT_TRUE(device_grads.count(name)) << name;
    EXPECT_TRUE(all_close(device_grads.at(name), grad, 1e-4)) << name;
  }

  // A whole optimizer step on fresh trainers (the same first micro-batch): the weights agree.
  auto cpu_step = xpo::test::tiny_trainer(torch::kCPU, dir_ / "cpu-step");
  auto device_step = xpo::test::tiny_trainer(device, dir_ / "device-step");
  cpu_step->optimizer_step();
  device_step->optimizer_step();
  EXPECT_EQ(device_step->state().skipped_steps, 0);
  const auto compared = xpo::test::expect_parameters_close(device_step->policy(), cpu_step->policy(), cpu_grads, 1e-6, 1e-5);
  EXPECT_GT(compared, 1000) << "elements with a gradient above 1e-6";
}

// --bf16 and --fp16 train on the device and follow its float32 run (see the top of the file).
TEST_F(CudaTrainer, MixedPrecisionTrainsAndTracksFloat32) {
  XPO_DEVICE_UNDER_TEST(device);
  constexpr std::int64_t kSteps = 20;
  const auto edit = [&](const std::string& mode) {
    return [mode](xpo::XPOConfig& c) {
      c.max_steps = kSteps;
      c.bf16 = mode == "bf16";
      c.fp16 = mode == "fp16";
    };
  };
  // A whole run: every logged loss finite, no step lost to the non-finite guard, the weights move.
  const auto run = [&](const std::string& mode) {
    auto t = xpo::test::tiny_trainer(device, dir_ / mode, edit(mode));
    const auto before = t->policy()->named_parameters()["model.layers.0.mlp.up_proj.weight"].detach().cpu().clone();
    xpo::test::LossRecorder losses;
    t->train(losses);
    EXPECT_EQ(t->policy()->dtype(), torch::kFloat) << mode << ": the master weights stay float32";
    EXPECT_EQ(t->state().global_step, kSteps) << mode;
    EXPECT_EQ(t->state().skipped_steps, 0) << mode << ": steps skipped by the non-finite guard";
    const auto after = t->policy()->named_parameters()["model.layers.0.mlp.up_proj.weight"].detach().cpu();
    EXPECT_FALSE(after.equal(before)) << mode << ": the weights moved";
    std::int64_t overflow = 0;
    if (mode == "fp16") {
      const auto* scaler = t->loss_scaler();
      EXPECT_NE(scaler, nullptr) << "fp16 trains with the loss scaler";
      if (scaler != nullptr) {
        const double exponent = std::log2(scaler->scale());
        EXPECT_EQ(exponent, std::floor(exponent)) << "the scale stays a power of two: " << scaler->scale();
        overflow = scaler->overflow_steps();
        EXPECT_LT(overflow, kSteps) << "at least one fp16 step applied";
      }
    }
    // A step the scaler skipped (overflow) logs no loss, as transformers' Trainer.
    EXPECT_EQ(static_cast<std::int64_t>(losses.losses.size()), kSteps - overflow) << mode;
    double mean = 0;
    for (const double l : losses.losses) {
      EXPECT_TRUE(std::isfinite(l)) << mode;
      mean += l / static_cast<double>(losses.losses.size());
    }
    return mean;
  };
  const double fp32 = run("fp32");
  std::vector<std::string> modes = {"bf16"};
  if (device.is_cuda()) modes.push_back("fp16");  // LibTorch's CPU autocast runs bfloat16 only (the config says so)
  for (const auto& mode : modes) {
    SCOPED_TRACE(mode);
    const double low = run(mode);
    // The samples are drawn under autocast, so one micro-batch's completions (and loss) differ from float32's;
    // only a run's mean is comparable. For bf16 only: fp16's first steps may be skipped while the scale backs
    // off, so its run is some steps behind float32's.
    if (mode == "bf16") {
      EXPECT_LE(std::abs(low - fp32), 0.02 * (1 + std::abs(fp32))) << "mean loss " << low << ", float32 " << fp32;
    }
  }
}

}  // namespace
