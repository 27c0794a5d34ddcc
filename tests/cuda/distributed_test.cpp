// CUDA (label `cuda`): a one-process NCCL world (distributed/world.hpp, World::join with communicate_alone) runs
// its collectives through ProcessGroupNCCL and trains. On one GPU this is the NCCL path xpo-train takes per rank:
// the parameters broadcast from rank 0, the gradients averaged bucket by bucket during backward
// (distributed/reducer.hpp). With one rank the mean is the rank's own gradient, so the step must equal the same
// trainer's step without a world: the weights within 1e-5 (1 + |e|) on the elements whose gradient exceeds 1e-6
// (as tests/cuda/training_test.cpp compares steps; the two runs may sum in different orders where CUDA kernels
// use atomics). Skips without a GPU; under XPO_CUDA_TESTS_ON_CPU the same runs on a one-process Gloo world.
#include "cuda/support.hpp"
#include "cuda/trainer_support.hpp"

namespace {

class CudaDistributed : public xpo::test::ScratchDir {};

TEST_F(CudaDistributed, OneProcessNcclWorldTrains) {
  XPO_DEVICE_UNDER_TEST(device);
#if !defined(XPO_HAS_C10D_NCCL)
  if (device.is_cuda()) {
    FAIL() << "xpo was compiled without NCCL: this LibTorch does not define USE_C10D_NCCL, or nccl.h was not on the "
              "include path (scripts/cuda-check.sh adds the one of the nvidia-nccl wheel)";
  }
#endif
#if !defined(XPO_HAS_C10D_GLOO)
  if (device.is_cpu()) GTEST_SKIP() << "this LibTorch has no Gloo backend for the CPU stand-in";
#endif
  xpo::distributed::LaunchEnvironment env;
  env.rank = 0;
  env.world_size = 1;
  env.master_port = xpo::distributed::free_local_port();
  auto world = xpo::distributed::World::join(env, device, std::chrono::seconds(60), /*communicate_alone=*/true);
  ASSERT_TRUE(world.communicates());
  EXPECT_FALSE(xpo::distributed::World::single().communicates());

  // The collectives run and, over one rank, leave the values as they are.
  auto gen = xpo::compat::make_generator(torch::kCPU, 3);
  const auto original = torch::randn({1000}, gen, torch::kFloat);
  auto t = original.to(device);
  world.all_reduce_mean({t});
  EXPECT_TRUE(t.cpu().equal(original)) << "all-reduce mean over one rank";
  world.broadcast({t});
  EXPECT_TRUE(t.cpu().equal(original)) << "broadcast from rank 0";
  EXPECT_EQ(world.sum(2.5, "a test sum"), 2.5);

  auto alone = xpo::test::tiny_trainer(device, dir_ / "alone");
  auto in_world = xpo::test::tiny_trainer(device, dir_ / "world");
  in_world->distribute(world);
  const auto grads = xpo::test::first_gradients(*xpo::test::tiny_trainer(device, dir_ / "grads"));
  alone->optimizer_step();
  in_world->optimizer_step();
  EXPECT_EQ(in_world->state().skipped_steps, 0);
  EXPECT_GT(xpo::test::expect_parameters_close(in_world->policy(), alone->policy(), grads, 1e-6, 1e-5), 1000);
  // More steps through the world: every one applied, the weights finite.
  for (int i = 0; i < 2; ++i) in_world->optimizer_step();
  EXPECT_EQ(in_world->state().global_step, 3);
  EXPECT_EQ(in_world->state().skipped_steps, 0);
  for (const auto& p : in_world->policy()->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
}

}  // namespace
