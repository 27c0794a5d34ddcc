// xpo/distributed/reducer.hpp — gradients averaged over the ranks while backward still runs, as PyTorch DDP's
// reducer does.
//
// The trainable parameters are grouped into buckets of at most 25 MB in reverse order, roughly the order in
// which backward produces their gradients. A hook on each parameter copies the parameter's gradient, as it will
// be once accumulated, into its bucket's flat buffer. When a bucket is complete, its all-reduce starts at once
// and runs on the process group's own threads while backward goes on. Buckets start strictly in order, so every
// rank issues the same collectives in the same order, whatever order its hooks fire in. finish() (after backward)
// starts what is left: a bucket whose parameter got no gradient in this pass takes that parameter's .grad, or
// zeros. It then waits for every bucket and writes the means into .grad.
//
// Only the last micro-batch of an optimizer step is reduced this way (arm() before its backward); the earlier
// ones just accumulate. The result equals World::all_reduce_mean over the accumulated gradients: the copy into
// the bucket adds the same two numbers that autograd's accumulation adds.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/distributed/world.hpp"

namespace xpo::distributed {

class GradientReducer {
 public:
  // Hooks `params` (leaf tensors that require grad, on one device). The hooks hold the reducer weakly: once it is
  // destroyed (its destructor also removes them) they do nothing.
  static std::shared_ptr<GradientReducer> attach(World world, std::vector<torch::Tensor> params,
                                                 std::int64_t bucket_bytes = std::int64_t{25} << 20) {
    std::shared_ptr<GradientReducer> r(new GradientReducer(std::move(world), std::move(params), bucket_bytes));
    std::weak_ptr<GradientReducer> weak = r;
    for (std::size_t i = 0; i < r->params_.size(); ++i) {
      r->hooks_.push_back(r->params_[i].register_hook([weak, i](const torch::Tensor& grad) {
        if (auto self = weak.lock()) self->on_gradient(i, grad);
      }));
    }
    return r;
  }

  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;
  ~GradientReducer() {
    for (std::size_t i = 0; i < hooks_.size(); ++i) params_[i].remove_hook(hooks_[i]);
  }

  // The next backward is the last of the optimizer step: reduce its gradients as they come.
  void arm() {
    std::lock_guard lock(mutex_);
    armed_ = true;
    next_ = 0;
    seen_.assign(params_.size(), false);
    for (auto& b : buckets_) {
      b.ready = 0;
      b.work.reset();
    }
  }

  // After that backward: starts the buckets not started yet, waits for all of them (at most the world's timeout
  // each) and writes the means into the parameters' .grad. Returns the seconds spent waiting here, i.e. the
  // communication that backward did not hide.
  double finish() {
    const auto t0 = std::chrono::steady_clock::now();
    std::lock_guard lock(mutex_);
    if (!armed_) throw Error("GradientReducer::finish without arm()");
    armed_ = false;
    started_in_backward_ = next_;
    torch::NoGradGuard no_grad;
    for (std::size_t b = next_; b < buckets_.size(); ++b) {
      for (const auto i : buckets_[b].members) {
        if (seen_[i]) continue;
        const auto& g = params_[i].grad();
        auto slot = slot_of(i);
        if (g.defined()) slot.copy_(g.reshape(-1));
        else slot.zero_();
      }
      start(b);
    }
    for (auto& b : buckets_) {
      world_.wait(*b.work, "averaging the gradients");
      b.work.reset();
      b.flat.div_(world_.size());
    }
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto mean = slot_of(i).view_as(params_[i]);
      if (params_[i].grad().defined()) params_[i].mutable_grad().copy_(mean);
      else params_[i].mutable_grad() = mean.clone();
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Leaves the armed state without reducing (the micro-batch failed before finish). Started all-reduces are
  // abandoned; the job is ending anyway, since the other ranks will miss this rank's next collective.
  void disarm() noexcept {
    std::lock_guard lock(mutex_);
    armed_ = false;
    for (auto& b : buckets_) b.work.reset();
  }

  [[nodiscard]] std::size_t bucket_count() const noexcept { return buckets_.size(); }
  // How many buckets of the last finish()ed backward had started before backward returned.
  [[nodiscard]] std::size_t started_in_backward() const noexcept { return started_in_backward_; }

 private:
  struct Bucket {
    std::vector<std::size_t> members;
    torch::Tensor flat;
    std::size_t ready = 0;
    std::optional<World::Pending> work;
  };

  GradientReducer(World world, std::vector<torch::Tensor> params, std::int64_t bucket_bytes)
      : world_(std::move(world)), params_(std::move(params)) {
    bucket_of_.resize(params_.size());
    offset_of_.resize(params_.size());
    std::int64_t bytes = 0;
    for (std::size_t k = params_.size(); k-- > 0;) {  // reverse order: the last layers' gradients come first
      const auto& p = params_[k];
      if (!p.requires_grad() || !p.is_leaf()) throw Error("GradientReducer: parameter " + std::to_string(k) + " is not a trainable leaf");
      const auto size = static_cast<std::int64_t>(p.nbytes());
      const bool fits = !buckets_.empty() && bytes + size <= bucket_bytes &&
                        params_[buckets_.back().members.front()].options().dtype() == p.options().dtype() &&
                        params_[buckets_.back().members.front()].device() == p.device();
      if (!fits) {
        buckets_.emplace_back();
        bytes = 0;
      }
      buckets_.back().members.push_back(k);
      bytes += size;
    }
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      std::int64_t offset = 0;
      for (const auto i : buckets_[b].members) {
        bucket_of_[i] = b;
        offset_of_[i] = offset;
        offset += params_[i].numel();
      }
      const auto& first = params_[buckets_[b].members.front()];
      buckets_[b].flat = torch::empty({offset}, first.options().requires_grad(false));
    }
    seen_.assign(params_.size(), false);
  }

  torch::Tensor slot_of(std::size_t i) { return buckets_[bucket_of_[i]].flat.narrow(0, offset_of_[i], params_[i].numel()); }

  // Autograd calls this with a parameter's gradient from this backward, before adding it to .grad.
  void on_gradient(std::size_t i, const torch::Tensor& grad) {
    std::lock_guard lock(mutex_);
    if (!armed_) return;
    if (seen_[i]) {  // autograd sums a leaf's gradients before its hook, so this is not expected to happen
      throw Error("GradientReducer: parameter " + std::to_string(i) + " received a second gradient in one backward");
    }
    seen_[i] = true;
    torch::NoGradGuard no_grad;
    auto slot = slot_of(i);
    slot.copy_(grad.reshape(-1));
    if (const auto& accumulated = params_[i].grad(); accumulated.defined()) slot.add_(accumulated.reshape(-1));
    ++buckets_[bucket_of_[i]].ready;
    while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].members.size()) start(next_++);
  }

  void start(std::size_t b) {
    buckets_[b].work = world_.start_sum(buckets_[b].flat, "averaging the gradients");
    next_ = std::max(next_, b + 1);
  }

  World world_;
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;
  std::vector<std::int64_t> offset_of_;
  std::vector<bool> seen_;
  std::size_t next_ = 0, started_in_backward_ = 0;
  bool armed_ = false;
  std::mutex mutex_;  // hooks may run on autograd's device threads
};

}  // namespace xpo::distributed
