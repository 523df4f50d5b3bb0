#include "tensor_parallel.h"

#include "pass_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "dsattn/core/cuda_runtime.h"
#include "dsattn/parallel/nccl_communicator.h"
#include "dsattn/parallel/tensor_parallel_stack.h"
#include "rank_launcher.h"

namespace dsattn::tools {

namespace {

// How long a rank waits for rank 0's NCCL id: rank 0 may first be building its weights.
constexpr double kRendezvousTimeoutS = 300;

// The one-line refusals, before any rank starts.
void check_request(int tp, const AttentionConfig& config, const std::string& device) {
  if (tp < 1) fail("--tp must be >= 1, got {}", tp);
  if (device == "cpu") {
    fail("--tp {} runs one process per GPU and cannot run with --device cpu", tp);
  }
  if (device != "auto" && device != "cuda") {
    fail("--device must be auto, cpu or cuda, got '{}'", device);
  }
  try {
    parallel::head_shard(config, 0, tp);
  } catch (const InvalidArgument& e) {
    fail("--tp {}: {}", tp, e.what());
  }
  if (!cuda::built_with_cuda()) fail<Unsupported>("--tp: this build has no CUDA backend");
  if (!parallel::nccl_available()) {
    fail<Unsupported>("--tp: this build has no NCCL (it is found at configure time with CUDA)");
  }
  const int gpus = cuda::device_count();
  if (tp > gpus) fail("--tp {} needs {} CUDA devices, {} visible", tp, tp, gpus);
}

void check_rank_options(const TensorParallelOptions& o) {
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world || o.rendezvous.empty()) {
    fail(
        "--tp-rank, --tp-world and --tp-rendezvous are set by the --tp launcher, got rank {} of {}",
        o.rank, o.world);
  }
}

// Rank 0 creates the group's NCCL id and hands it over through the launcher's private directory.
std::unique_ptr<parallel::NcclCommunicator> join_group(const TensorParallelOptions& o) {
  const std::string path = o.rendezvous + "/nccl_id";
  parallel::NcclUniqueId id;
  if (o.rank == 0) {
    id = parallel::NcclUniqueId::create();
    write_file_by_rename(
        path, std::string(reinterpret_cast<const char*>(id.bytes.data()), id.bytes.size()));
  } else {
    const std::string bytes = wait_for_file(path, kRendezvousTimeoutS, "rank 0's NCCL id");
    if (bytes.size() != id.bytes.size()) {
      fail<Error>("{}: expected {} bytes of NCCL id, got {}", path, id.bytes.size(), bytes.size());
    }
    std::memcpy(id.bytes.data(), bytes.data(), bytes.size());
  }
  return std::make_unique<parallel::NcclCommunicator>(id, o.rank, o.world, o.rank);
}

// Rank `shard.rank`'s stack on its GPU: the synthetic stack of `dsattn run`, cut to its heads.
AttentionStack rank_stack(const TensorParallelRun& run, const parallel::HeadShard& shard,
                          parallel::Communicator& comm) {
  const AttentionStack full =
      AttentionStack::synthetic(run.config, run.spec.layers, run.spec.seed, run.policy);
  return parallel::rank_local_stack(full, shard, comm, Device::cuda(shard.rank));
}

// FNV-1a over every output row of every pass: equal on two ranks iff their outputs are.
std::string outputs_checksum(const std::vector<PassResult>& passes) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const PassResult& p : passes) {
    for (const Tensor& t : p.outputs) {
      const auto* b = static_cast<const std::uint8_t*>(t.view().data());
      for (std::size_t i = 0; i < t.nbytes(); ++i) h = (h ^ b[i]) * 0x100000001b3ull;
    }
  }
  return fmt::format("{:016x}", h);
}

std::string path_counts(const std::vector<Path>& paths) {
  std::string out;
  for (Path kind : {Path::dense_mha, Path::sparse_mla, Path::row_split, Path::masked_mha}) {
    const auto n = std::count(paths.begin(), paths.end(), kind);
    // dense_mha and sparse_mla always; the others where taken.
    if (n == 0 && kind != Path::dense_mha && kind != Path::sparse_mla) continue;
    out += fmt::format("{}{} {}", out.empty() ? "" : ", ", n, path_name(kind));
  }
  return out;
}

int run_rank(const TensorParallelOptions& o, const TensorParallelRun& run) {
  check_rank_options(o);
  const bool lead = o.rank == 0;
  auto progress = [lead](const std::string& line) {
    if (lead) std::fprintf(stderr, "  ... %s\n", line.c_str());
  };
  auto comm = join_group(o);
  const parallel::HeadShard shard = parallel::head_shard(run.config, o.rank, o.world);
  const Device dev = Device::cuda(o.rank);
  std::vector<PassResult> passes;
  {
    AttentionStack stack = rank_stack(run, shard, *comm);
    passes = serve_passes(run.config, stack, run.spec, run.policy, dev, progress);
  }
  const std::string checksum = outputs_checksum(passes);
  write_file_by_rename(fmt::format("{}/rank{}.checksum", o.rendezvous, o.rank), checksum);
  comm.reset();  // every rank leaves the group here, before rank 0's single-GPU pass
  if (!lead) return 0;
  for (const PassResult& pass : passes) check_outputs_finite(pass);

  std::printf("\npaths under %s: prefill %s; decode %s\n", passes[0].policy.c_str(),
              path_counts(passes[0].prefill_paths).c_str(),
              passes[0].decode_paths.empty()
                  ? "-"
                  : std::string(path_name(passes[0].decode_paths.front())).c_str());
  const nlohmann::json json_passes = print_passes(passes);

  // The same workload with every head on this GPU, for the figures and the outputs.
  std::printf("\nthe same workload on one GPU (all %lld heads on cuda:0):\n",
              static_cast<long long>(run.config.num_heads));
  std::fflush(stdout);
  AttentionStack single = AttentionStack::synthetic(run.config, run.spec.layers, run.spec.seed,
                                                    run.policy, Device::cuda(0));
  const PassResult one =
      run_pass(run.config, single, run.spec, run.policy, Device::cuda(0), progress);
  const double diff = max_relative_difference(passes[0], one);
  print_pass_row("1 GPU", one, diff);
  std::printf(
      "%d-GPU speedup over 1 GPU: prefill %.2fx, decode %.2fx; largest relative difference of "
      "the outputs %.2e\n",
      o.world, one.prefill_seconds / std::max(passes[0].prefill_seconds, 1e-12),
      one.decode_seconds / std::max(passes[0].decode_seconds, 1e-12), diff);
  std::fflush(stdout);

  nlohmann::json j;
  j["tensor_parallel"] = o.world;
  j["heads_per_gpu"] = shard.num_heads;
  j["device"] = cuda::device_name(0);
  j["workload"] = {{"requests", run.spec.requests},
                   {"prompt_len", run.spec.prompt_len},
                   {"prefix_len", run.spec.prefix_len},
                   {"decode_steps", run.spec.decode_steps},
                   {"layers", run.spec.layers},
                   {"seed", run.spec.seed},
                   {"max_batch_tokens", run.spec.max_batch_tokens}};
  j["passes"] = json_passes;
  j["single_gpu"] = pass_json(one, diff);
  write_file_by_rename(o.rendezvous + "/run.json", j.dump(1));
  return 0;
}

// The checksums every rank left: all equal, or an error naming the first rank that differs.
std::string check_ranks_agree(const std::string& dir, int world) {
  const std::string first = wait_for_file(dir + "/rank0.checksum", 0, "rank 0's checksum");
  for (int r = 1; r < world; ++r) {
    const std::string mine =
        wait_for_file(fmt::format("{}/rank{}.checksum", dir, r), 0, "a rank's checksum");
    if (mine != first) {
      fail<Error>("--tp {}: rank {}'s outputs differ from rank 0's (checksum {} vs {})", world, r,
                  mine, first);
    }
  }
  return first;
}

// The layer benchmark of one group: the default workload's shape, shorter.
WorkloadSpec bench_spec(bool quick) {
  WorkloadSpec s;
  s.requests = quick ? 8 : 64;
  s.prompt_len = quick ? 512 : 1024;
  s.decode_steps = quick ? 8 : 32;
  return s;
}

int bench_rank(const TensorParallelOptions& o, bool quick) {
  check_rank_options(o);
  TensorParallelRun run;
  run.spec = bench_spec(quick);
  auto comm = join_group(o);
  const parallel::HeadShard shard = parallel::head_shard(run.config, o.rank, o.world);
  PassResult p;
  {
    AttentionStack stack = rank_stack(run, shard, *comm);
    p = run_pass(run.config, stack, run.spec, run.policy, Device::cuda(o.rank),
                 [](const std::string&) {});
  }
  comm.reset();
  if (o.rank != 0) return 0;
  const std::int64_t forwards =
      (p.prefill_tokens + run.spec.max_batch_tokens - 1) / run.spec.max_batch_tokens;
  const nlohmann::json j = {{"gpus", o.world},
                            {"heads_per_gpu", shard.num_heads},
                            {"prefill_tokens", p.prefill_tokens},
                            {"prefill_forwards", forwards},
                            {"prefill_seconds", p.prefill_seconds},
                            {"decode_steps", run.spec.decode_steps},
                            {"decode_batch", run.spec.requests},
                            {"decode_seconds", p.decode_seconds},
                            {"decode_cuda_graph", p.decode_graph}};
  write_file_by_rename(o.rendezvous + "/bench.json", j.dump(1));
  return 0;
}

}  // namespace

void add_tensor_parallel_options(CLI::App* cmd, TensorParallelOptions& o, const std::string& help) {
  cmd->add_option("--tp", o.tp, help);
  // Set by the launcher for the processes it starts; not for users.
  cmd->add_option("--tp-rank", o.rank)->group("");
  cmd->add_option("--tp-world", o.world)->group("");
  cmd->add_option("--tp-rendezvous", o.rendezvous)->group("");
}

int run_tensor_parallel(const TensorParallelOptions& o, const TensorParallelRun& run) {
  run.spec.validate();
  if (o.rank >= 0) return run_rank(o, run);
  check_request(o.tp, run.config, run.device);
  const PrivateDir dir;
  std::printf("dsattn run --tp %d: %s, policy %s, on %d x %s (%lld of %lld heads each)\n", o.tp,
              run.spec.to_string().c_str(), run.policy.to_string().c_str(), o.tp,
              cuda::device_name(0).c_str(), static_cast<long long>(run.config.num_heads / o.tp),
              static_cast<long long>(run.config.num_heads));
  launch_ranks(o.tp, dir.path());
  const std::string checksum = check_ranks_agree(dir.path(), o.tp);
  std::printf("outputs identical on all %d ranks (checksum %s)\n", o.tp, checksum.c_str());
  if (!run.json_path.empty()) {
    nlohmann::json j =
        nlohmann::json::parse(wait_for_file(dir.path() + "/run.json", 0, "rank 0's figures"));
    j["ranks_identical"] = true;
    j["checksum"] = checksum;
    write_file_by_rename(run.json_path, j.dump(1) + "\n");
    std::printf("wrote %s\n", run.json_path.c_str());
  }
  return 0;
}

int bench_tensor_parallel(const TensorParallelOptions& o, const std::string& device,
                          const std::string& json_path, bool quick) {
  if (o.rank >= 0) return bench_rank(o, quick);
  const AttentionConfig config;
  check_request(o.tp, config, device);
  std::vector<int> sizes;
  for (int k = 1; k <= o.tp; k *= 2) {
    if (config.num_heads % k == 0) sizes.push_back(k);
  }
  if (sizes.back() != o.tp) sizes.push_back(o.tp);
  const WorkloadSpec spec = bench_spec(quick);
  std::printf("dsattn bench --tp %d: the layer at %zu group sizes on %s; %s, policy per-request\n",
              o.tp, sizes.size(), cuda::device_name(0).c_str(), spec.to_string().c_str());
  std::vector<nlohmann::json> rows;
  for (int k : sizes) {
    std::fprintf(stderr, "  ... %d GPU%s\n", k, k == 1 ? "" : "s");
    const PrivateDir dir;
    launch_ranks(k, dir.path());
    rows.push_back(
        nlohmann::json::parse(wait_for_file(dir.path() + "/bench.json", 0, "rank 0's figures")));
  }
  std::printf("\n%5s %10s %14s %16s %8s %14s %8s\n", "GPUs", "heads/GPU", "prefill tok/s",
              "ms per forward", "speedup", "decode step ms", "speedup");
  const double prefill_1 = rows[0]["prefill_seconds"].get<double>();
  const double decode_1 = rows[0]["decode_seconds"].get<double>();
  for (nlohmann::json& r : rows) {
    const double ps = r["prefill_seconds"].get<double>(), ds = r["decode_seconds"].get<double>();
    const double forward_ms = 1e3 * ps / r["prefill_forwards"].get<double>();
    const double step_ms = 1e3 * ds / std::max(1.0, r["decode_steps"].get<double>());
    r["prefill_speedup"] = prefill_1 / ps;
    r["decode_speedup"] = decode_1 / ds;
    std::printf("%5d %10lld %14.0f %16.2f %7.2fx %14.3f %7.2fx\n", r["gpus"].get<int>(),
                r["heads_per_gpu"].get<long long>(),
                per_second(r["prefill_tokens"].get<std::int64_t>(), ps), forward_ms, prefill_1 / ps,
                step_ms, decode_1 / ds);
  }
  if (!json_path.empty()) {
    const nlohmann::json j = {{"device", cuda::device_name(0)},
                              {"workload", spec.to_string()},
                              {"tensor_parallel", rows}};
    write_file_by_rename(json_path, j.dump(1) + "\n");
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace dsattn::tools
