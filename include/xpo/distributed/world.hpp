// xpo/distributed/world.hpp — data-parallel training on LibTorch's own c10d process groups: a TCPStore for the
// rendezvous and ProcessGroupGloo on CPU (ProcessGroupNCCL for CUDA devices when LibTorch was built with it).
//
// A World is this process's place in the job: rank, size and the process group. World::single() is the one-
// process world (no communication at all). World::join(LaunchEnvironment::from_environment()...) joins the job
// that a launcher describes with the variables torchrun, Slurm wrappers and MPI launchers set: RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT. Every collective has the World's timeout: a rank that dies or hangs
// makes the others fail with an xpo::Error (naming the operation and the world) instead of waiting forever.
//
// The Trainer uses a World through Trainer::distribute (training/trainer.hpp): parameters broadcast from rank 0,
// a distinct shard of every global batch per rank, gradients averaged in buckets before clipping while backward
// still runs (GradientReducer, distributed/reducer.hpp), metrics averaged over ranks, and only rank 0 writing
// logs and checkpoints.
#pragma once

#include <torch/torch.h>

#include "xpo/core/compat.hpp"  // XPO_HAS_C10D, XPO_HAS_C10D_GLOO, XPO_HAS_C10D_NCCL: the backends usable here

#if defined(XPO_HAS_C10D)
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#if defined(XPO_HAS_C10D_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if defined(XPO_HAS_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "xpo/core/errors.hpp"

namespace xpo::distributed {

// What a launcher says about the job (torchrun's variables).
struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;

  // From RANK, WORLD_SIZE, LOCAL_RANK (default: RANK), MASTER_ADDR (default 127.0.0.1), MASTER_PORT (default
  // 29500); std::nullopt when WORLD_SIZE is unset. A malformed value is a ConfigError naming the variable.
  static std::optional<LaunchEnvironment> from_environment() {
    const char* world = std::getenv("WORLD_SIZE");
    if (world == nullptr || *world == '\0') return std::nullopt;
    const auto integer = [](const char* name, const char* text, int low, int high) {
      char* end = nullptr;
      const long v = std::strtol(text, &end, 10);
      if (end == text || *end != '\0' || v < low || v > high)
        throw ConfigError(std::string(name) + "=" + text + ": expected an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]");
      return static_cast<int>(v);
    };
    LaunchEnvironment e;
    e.world_size = integer("WORLD_SIZE", world, 1, 1 << 20);
    const char* rank = std::getenv("RANK");
    if (rank == nullptr) throw ConfigError("WORLD_SIZE is set but RANK is not (launch with torchrun or set both)");
    e.rank = integer("RANK", rank, 0, e.world_size - 1);
    const char* local = std::getenv("LOCAL_RANK");
    e.local_rank = local != nullptr ? integer("LOCAL_RANK", local, 0, e.world_size - 1) : e.rank;
    if (const char* addr = std::getenv("MASTER_ADDR"); addr != nullptr && *addr != '\0') e.master_addr = addr;
    if (const char* port = std::getenv("MASTER_PORT"); port != nullptr) e.master_port = integer("MASTER_PORT", port, 1, 65535);
    return e;
  }
};

// A TCP port on the loopback interface that is free now, for a local rendezvous (xpo-train --nproc, tests,
// benchmarks). Another process may take it before it is used; the rendezvous then fails with a clear error.
inline int free_local_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = s >= 0 && ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int error = errno;
  if (s >= 0) ::close(s);
  if (!ok) throw Error(std::string("cannot find a free local port: ") + std::strerror(error));
  return ntohs(a.sin_port);
}

class World {
 public:
  // The one-process world: every collective is the identity.
  static World single() { return World(); }

  // Joins the job: a TCPStore (rank 0 serves it) and a process group for `device`'s kind. Waits at most
  // `timeout` for the other ranks, and every later collective waits at most `timeout` too. A job of one rank
  // communicates with nobody, unless `communicate_alone`: then it still builds its process group and every
  // collective really runs through it (a one-process NCCL world on a single GPU checks the backend's path).
  static World join(const LaunchEnvironment& env, torch::Device device, std::chrono::milliseconds timeout,
                    bool communicate_alone = false) {
    World w;
    w.rank_ = env.rank;
    w.size_ = env.world_size;
    w.local_rank_ = env.local_rank;
    w.timeout_ = timeout;
    w.device_ = device;
    if (env.world_size == 1 && !communicate_alone) return w;
#if defined(XPO_HAS_C10D)
    w.guard("joining the job at " + env.master_addr + ":" + std::to_string(env.master_port), [&] {
      c10d::TCPStoreOptions options;
      options.port = static_cast<std::uint16_t>(env.master_port);
      options.isServer = env.rank == 0;
      options.numWorkers = static_cast<std::size_t>(env.world_size);
      options.timeout = timeout;
      compat::use_classic_tcp_store(options);
      auto store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
      if (device.is_cuda()) {
#if defined(XPO_HAS_C10D_NCCL)
        auto nccl = c10d::ProcessGroupNCCL::Options::create();
        nccl->timeout = timeout;
        w.group_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, nccl);
#else
        throw Error("device " + device.str() + ": this LibTorch was built without NCCL, or nccl.h was not on the "
                    "include path when xpo was compiled");
#endif
      } else {
#if defined(XPO_HAS_C10D_GLOO)
        auto gloo = c10d::ProcessGroupGloo::Options::create();
        // On one machine (a loopback master) the ranks talk over loopback; across machines, over the interface
        // this host's name resolves to.
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(is_loopback(env.master_addr) ? "127.0.0.1" : host_name()));
        gloo->timeout = timeout;
        w.group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, gloo);
#else
        throw Error("this LibTorch was built without Gloo, or its gloo/ headers were not on the include path when "
                    "xpo was compiled");
#endif
      }
    });
    return w;
#else
    (void)device;
    throw Error("this LibTorch was built without c10d (distributed) support; WORLD_SIZE must be 1");
#endif
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] int local_rank() const noexcept { return local_rank_; }
  [[nodiscard]] bool is_main() const noexcept { return rank_ == 0; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  // Whether collectives go through a process group: several ranks, or one that joined with communicate_alone.
  [[nodiscard]] bool communicates() const noexcept {
#if defined(XPO_HAS_C10D)
    return size_ > 1 || group_.defined();
#else
    return size_ > 1;
#endif
  }

  // Rank 0's values into every rank's tensors (in place).
  void broadcast(std::vector<torch::Tensor> tensors) {
    if (!communicates()) return;
#if !defined(XPO_HAS_C10D)
    (void)tensors;
#else
    guard("broadcasting the parameters", [&] {
      torch::NoGradGuard no_grad;
      for (auto& t : tensors) {
        std::vector<torch::Tensor> one{t.detach()};
        group_->broadcast(one)->wait();
      }
    });
#endif
  }

  // Averages `tensors` over the ranks in place, flattened into buckets of at most `bucket_bytes` (one
  // all-reduce per bucket instead of one per tensor).
  void all_reduce_mean(const std::vector<torch::Tensor>& tensors, std::int64_t bucket_bytes = std::int64_t{25} << 20) {
    if (!communicates() || tensors.empty()) return;
#if !defined(XPO_HAS_C10D)
    (void)bucket_bytes;
#else
    guard("averaging the gradients", [&] {
      torch::NoGradGuard no_grad;
      std::size_t i = 0;
      while (i < tensors.size()) {
        std::vector<torch::Tensor> bucket;
        std::int64_t bytes = 0;
        const auto options = tensors[i].options();
        while (i < tensors.size() && (bucket.empty() || bytes + tensors[i].nbytes() <= static_cast<std::size_t>(bucket_bytes)) &&
               tensors[i].options().dtype() == options.dtype() && tensors[i].device() == options.device()) {
          bytes += static_cast<std::int64_t>(tensors[i].nbytes());
          bucket.push_back(tensors[i]);
          ++i;
        }
        std::vector<torch::Tensor> flat{torch::cat(flatten_all(bucket))};
        group_->allreduce(flat)->wait();
        flat[0].div_(size_);
        std::int64_t offset = 0;
        for (auto& t : bucket) {
          t.copy_(flat[0].narrow(0, offset, t.numel()).view_as(t));
          offset += t.numel();
        }
      }
    });
#endif
  }

  // An all-reduce that has started and not been waited for (World::start_sum, World::wait).
  struct Pending {
#if defined(XPO_HAS_C10D)
    decltype(std::declval<compat::CollectiveGroup&>().allreduce(std::declval<std::vector<at::Tensor>&>())) work;
#endif
    std::vector<torch::Tensor> tensors;  // kept alive until the all-reduce is done
  };

  // Starts summing `flat` over the ranks, in place and asynchronously (on the process group's threads); every
  // rank must start the same sums in the same order. wait() finishes it.
  Pending start_sum(const torch::Tensor& flat, const std::string& what) {
    Pending p;
    p.tensors = {flat};
#if defined(XPO_HAS_C10D)
    if (communicates()) guard(what, [&] { p.work = group_->allreduce(p.tensors); });
#else
    (void)what;
#endif
    return p;
  }
  // Waits for a started sum, at most the timeout; a failure is the same xpo::Error as a blocking collective's.
  void wait(Pending& p, const std::string& what) {
#if defined(XPO_HAS_C10D)
    if (p.work.defined()) guard(what, [&] { p.work->wait(); });
    p.work.reset();
#else
    (void)what;
#endif
    p.tensors.clear();
  }

  // The mean over ranks of each value (every rank must pass the same keys).
  std::map<std::string, double> average(const std::map<std::string, double>& values) {
    if (!communicates()) return values;
    std::vector<double> v;
    for (const auto& [k, x] : values) v.push_back(x);
    auto t = torch::tensor(v, torch::kFloat64);
    all_reduce_sum_cpu(t, "averaging the metrics");
    std::map<std::string, double> out;
    std::size_t i = 0;
    for (const auto& [k, x] : values) out[k] = t[static_cast<std::int64_t>(i++)].item<double>() / size_;
    return out;
  }

  // The sum over ranks (e.g. of a flag: > 0 when any rank raised it).
  double sum(double value, const std::string& what) {
    if (!communicates()) return value;
    auto t = torch::tensor({value}, torch::kFloat64);
    all_reduce_sum_cpu(t, what);
    return t.item<double>();
  }

  // Waits until every rank arrives (or the timeout passes).
  void barrier(const std::string& what) {
    if (!communicates()) return;
    (void)sum(0.0, what);  // an all-reduce: Gloo's barrier ignores the timeout in some LibTorch versions
  }

 private:
  World() = default;

  static std::vector<torch::Tensor> flatten_all(const std::vector<torch::Tensor>& ts) {
    std::vector<torch::Tensor> out;
    for (const auto& t : ts) out.push_back(t.reshape(-1));
    return out;
  }

  static bool is_loopback(const std::string& addr) { return addr == "127.0.0.1" || addr == "::1" || addr == "localhost"; }
  static std::string host_name() {
    char name[256] = {};
    if (::gethostname(name, sizeof(name) - 1) != 0) return "127.0.0.1";
    return name;
  }

  void all_reduce_sum_cpu(torch::Tensor& t, const std::string& what) {
#if defined(XPO_HAS_C10D)
    guard(what, [&] {
      std::vector<torch::Tensor> one{t.to(device_)};  // NCCL reduces device tensors only
      group_->allreduce(one)->wait();
      t.copy_(one[0].cpu());
    });
#else
    (void)t;
    (void)what;
#endif
  }

  // Runs a collective; any failure (a rank died, a timeout) becomes one clear xpo::Error.
  template <class F>
  void guard(const std::string& what, F&& f) {
    try {
      f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      std::string why = e.what();
      why = why.substr(0, why.find('\n'));
      throw Error("rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": " + what +
                  " failed (another rank died, hung or cannot be reached; timeout " +
                  std::to_string(timeout_.count() / 1000) + " s): " + why);
    }
  }

  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::chrono::milliseconds timeout_{std::chrono::minutes(30)};
  torch::Device device_ = torch::kCPU;
#if defined(XPO_HAS_C10D)
  c10::intrusive_ptr<compat::CollectiveGroup> group_;
#endif
};

}  // namespace xpo::distributed
