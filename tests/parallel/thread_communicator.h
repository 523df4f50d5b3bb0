// An in-process tensor-parallel group for tests: one thread per rank, and an all-reduce that
// meets the other ranks at a barrier and sums on the host (f32, in rank order, rounded once to
// bf16), so that a TensorParallelLayer runs on the CPU, or with every rank on one GPU.
#pragma once

#include <barrier>
#include <cstring>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/parallel/communicator.h"

namespace dsattn::tp_test {

// out[i] = bf16(sum over p of parts[p][i]), accumulated in f32 in the order of `parts`: the sum
// ThreadCommunicator computes, and what the tests compare summed rank outputs with.
inline void sum_in_rank_order(const std::vector<const bf16*>& parts, bf16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (const bf16* p : parts) acc += p[i].to_float();
    out[i] = bf16::from_float(acc);
  }
}

// Host bf16 tensors of equal shape, summed with sum_in_rank_order.
inline Tensor sum_in_rank_order(const std::vector<Tensor>& parts) {
  Tensor out = Tensor::empty(parts.at(0).view().shape(), DType::bf16);
  std::vector<const bf16*> ptrs;
  for (const Tensor& p : parts) ptrs.push_back(p.ptr<bf16>());
  sum_in_rank_order(ptrs, out.ptr<bf16>(), out.numel());
  return out;
}

class ThreadGroup {
 public:
  explicit ThreadGroup(int world_size)
      : world_size_(world_size), barrier_(world_size), parts_(world_size) {}
  int world_size() const { return world_size_; }

  // Rank `rank`'s share: waits for every rank's, then leaves the sum in `host` on every rank.
  void all_reduce(int rank, const Tensor& host) {
    parts_[rank] = &host;
    barrier_.arrive_and_wait();
    if (rank == 0) {
      sum_ = Tensor::empty(host.view().shape(), DType::bf16);
      std::vector<const bf16*> ptrs;
      for (const Tensor* p : parts_) ptrs.push_back(p->ptr<bf16>());
      sum_in_rank_order(ptrs, sum_.ptr<bf16>(), sum_.numel());
    }
    barrier_.arrive_and_wait();
    std::memcpy(host.view().data(), sum_.view().data(), host.nbytes());
    barrier_.arrive_and_wait();  // sum_ stays alive until every rank has read it
  }

  // A rank that failed leaves the group, so that the others do not wait for it forever.
  void leave() { barrier_.arrive_and_drop(); }

 private:
  int world_size_;
  std::barrier<> barrier_;
  std::vector<const Tensor*> parts_;
  Tensor sum_;
};

class ThreadCommunicator final : public parallel::Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_.world_size(); }
  void all_reduce_sum(const TensorView& t) override {
    parallel::check_all_reduce_tensor(t, "all_reduce_sum tensor");
    Tensor host = Tensor::empty(t.shape(), DType::bf16);
    if (t.device().is_cuda()) cuda::synchronize();  // the share is written on the current stream
    copy(t, host);
    group_.all_reduce(rank_, host);
    copy(host, t);
  }

 private:
  ThreadGroup& group_;
  int rank_;
};

// Runs fn(rank, communicator) on world_size threads and rethrows the first rank's exception.
inline void run_ranks(int world_size, const std::function<void(int, parallel::Communicator&)>& fn) {
  ThreadGroup group(world_size);
  std::vector<std::exception_ptr> errors(world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      try {
        fn(r, comm);
      } catch (...) {
        errors[r] = std::current_exception();
        group.leave();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace dsattn::tp_test
