// A Communicator over NCCL: one rank per GPU, in one process per GPU (the usual deployment, as
// `dsattn run --tp N` launches it) or several GPUs of one process (local_group). NVLink
// multicast (NVLS) is turned off by setting NCCL_NVLS_ENABLE=0 before the first communicator is
// created, unless the environment already sets it.
//
// NCCL is optional: in a build without it (no CUDA backend, or no nccl.h / libnccl found),
// nccl_available() is false and creating a communicator throws Unsupported.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "dsattn/parallel/communicator.h"

namespace dsattn::parallel {

// True when this build has NCCL.
bool nccl_available();

// The token every rank of a group passes to NcclCommunicator: created once (by rank 0) and handed
// to the others before they join.
struct NcclUniqueId {
  std::array<std::uint8_t, 128> bytes{};

  static NcclUniqueId create();
};

class NcclCommunicator final : public Communicator {
 public:
  // Joins the group of `world_size` ranks that share `id`, as `rank`, on CUDA device `device`
  // (made the calling thread's current device). Blocks until every rank has joined. Throws
  // InvalidArgument for a rank outside [0, world_size) or a device that does not exist, CudaError
  // with NCCL's message when NCCL fails.
  NcclCommunicator(const NcclUniqueId& id, int rank, int world_size, int device);
  // A whole group inside this process: rank i on devices[i].
  static std::vector<std::unique_ptr<NcclCommunicator>> local_group(std::span<const int> devices);
  // Destroys the communicator; while an exception unwinds the stack it aborts it instead, so that
  // a failing rank does not wait for peers that may be waiting for it.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int device() const { return device_; }
  // ncclAllReduce (sum, bf16, in place) on the calling thread's current stream; `t` must be a
  // contiguous bf16 tensor on this communicator's device.
  void all_reduce_sum(const TensorView& t) override;

 private:
  NcclCommunicator(void* comm, int rank, int world_size, int device);

  void* comm_ = nullptr;  // ncclComm_t
  int rank_ = 0, world_size_ = 1, device_ = 0;
  int uncaught_at_creation_ = 0;
};

}  // namespace dsattn::parallel
