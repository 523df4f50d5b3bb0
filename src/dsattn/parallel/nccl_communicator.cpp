#include "dsattn/parallel/nccl_communicator.h"

#include <cstdlib>
#include <exception>

#include "dsattn/core/checks.h"
#include "dsattn/core/cuda_runtime.h"

#ifdef DSATTN_WITH_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>

#include "dsattn/core/cuda_check.h"
#endif

namespace dsattn::parallel {

#ifdef DSATTN_WITH_NCCL

namespace {

static_assert(sizeof(ncclUniqueId) == sizeof(NcclUniqueId::bytes), "ncclUniqueId size changed");

void check_nccl(ncclResult_t status, const char* what, ncclComm_t comm = nullptr) {
  if (status == ncclSuccess) return;
  const char* detail = ncclGetLastError(comm);
  fail<CudaError>("{} failed: {}{}{}", what, ncclGetErrorString(status),
                  detail && *detail ? ": " : "", detail ? detail : "");
}

// NVLink multicast stays off unless the caller chose otherwise in the environment.
void disable_nvls_unless_set() { setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0); }

void check_device_index(int device) {
  const int count = cuda::device_count();
  if (device < 0 || device >= count) {
    fail("NCCL device must be in [0, {}) (the visible CUDA devices), got {}", count, device);
  }
}

}  // namespace

bool nccl_available() { return true; }

NcclUniqueId NcclUniqueId::create() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  NcclUniqueId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

NcclCommunicator::NcclCommunicator(void* comm, int rank, int world_size, int device)
    : comm_(comm),
      rank_(rank),
      world_size_(world_size),
      device_(device),
      uncaught_at_creation_(std::uncaught_exceptions()) {}

NcclCommunicator::NcclCommunicator(const NcclUniqueId& id, int rank, int world_size, int device)
    : rank_(rank),
      world_size_(world_size),
      device_(device),
      uncaught_at_creation_(std::uncaught_exceptions()) {
  if (world_size < 1) fail("NCCL world size must be >= 1, got {}", world_size);
  if (rank < 0 || rank >= world_size) {
    fail("NCCL rank must be in [0, {}), got {}", world_size, rank);
  }
  check_device_index(device);
  disable_nvls_unless_set();
  DSATTN_CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId raw;
  std::memcpy(&raw, id.bytes.data(), sizeof(raw));
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, world_size, raw, rank), "ncclCommInitRank");
  comm_ = comm;
}

std::vector<std::unique_ptr<NcclCommunicator>> NcclCommunicator::local_group(
    std::span<const int> devices) {
  if (devices.empty()) fail("NCCL local group needs at least one device, got none");
  for (int d : devices) check_device_index(d);
  disable_nvls_unless_set();
  const int n = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  check_nccl(ncclCommInitAll(comms.data(), n, devices.data()), "ncclCommInitAll");
  std::vector<std::unique_ptr<NcclCommunicator>> group;
  for (int r = 0; r < n; ++r) {
    group.push_back(std::unique_ptr<NcclCommunicator>(
        new NcclCommunicator(comms[r], r, n, devices[static_cast<std::size_t>(r)])));
  }
  return group;
}

NcclCommunicator::~NcclCommunicator() {
  if (!comm_) return;
  const auto comm = static_cast<ncclComm_t>(comm_);
  if (std::uncaught_exceptions() > uncaught_at_creation_) {
    ncclCommAbort(comm);
  } else {
    ncclCommDestroy(comm);
  }
}

void NcclCommunicator::all_reduce_sum(const TensorView& t) {
  check_all_reduce_tensor(t, "all_reduce_sum tensor");
  check_device(t, "all_reduce_sum tensor", Device::cuda(device_));
  if (t.numel() == 0) return;
  const auto comm = static_cast<ncclComm_t>(comm_);
  check_nccl(ncclAllReduce(t.data(), t.data(), static_cast<std::size_t>(t.numel()), ncclBfloat16,
                           ncclSum, comm, static_cast<cudaStream_t>(cuda::current_stream())),
             "ncclAllReduce", comm);
}

#else  // no NCCL in this build

namespace {
[[noreturn]] void no_nccl() {
  fail<Unsupported>(
      "tensor parallelism needs NCCL, and this build has none (it needs the CUDA backend and "
      "nccl.h / libnccl at configure time)");
}
}  // namespace

bool nccl_available() { return false; }
NcclUniqueId NcclUniqueId::create() { no_nccl(); }
NcclCommunicator::NcclCommunicator(void*, int, int, int) { no_nccl(); }
NcclCommunicator::NcclCommunicator(const NcclUniqueId&, int, int, int) { no_nccl(); }
std::vector<std::unique_ptr<NcclCommunicator>> NcclCommunicator::local_group(std::span<const int>) {
  no_nccl();
}
NcclCommunicator::~NcclCommunicator() = default;
void NcclCommunicator::all_reduce_sum(const TensorView&) { no_nccl(); }

#endif

}  // namespace dsattn::parallel
