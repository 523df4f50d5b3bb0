// What a ForwardPlan holds (layer/forward_plan.h): the planned batch's paths and every table its
// forward reads, already on the layer's device, and the geometry of the cache and layer it was
// planned for (run() refuses a plan made for others).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dsattn/cache/cache_format.h"
#include "dsattn/cache/page_allocator.h"
#include "dsattn/core/tensor.h"
#include "dsattn/layer/paths.h"
#include "dsattn/layer/planner.h"

namespace dsattn {

struct ForwardTables {
  // What the plan was made for.
  Device device = Device::cpu();
  std::string layer_shape;  // plan_signature() of the layer
  std::int64_t page_size = 0, num_pages = 0;
  LatentFormat latent_format = LatentFormat::bf16;
  IndexKeyLayout index_key_layout = IndexKeyLayout::rows;
  // The allocator the batch was checked against and its pages claimed in (null for a cache
  // without one, the caller's), and its release count then.
  const PageAllocator* allocator = nullptr;
  std::uint64_t releases = 0;

  std::vector<Path> paths;  // per request of the planned batch
  // The planned batch's lengths, for ForwardResult::topk_positions.
  std::vector<std::int64_t> prefix_lens, extend_lens;
  std::int64_t total_tokens = 0;
  // Per request of the work batch (a row_split request counts twice): its planned request.
  std::vector<std::size_t> origin;

  Tensor positions;  // [T] i32: each new token's position
  Tensor new_slots;  // [T] i32: its cache slot (-1: not written)
  // A plan over device block tables: its checked copy of them ([requests, pages] i32) and the
  // fault bits build_prefill_tables found ([1] i32); undefined otherwise.
  Tensor device_tables, faults;
  PathGroup dense, masked, sparse;
  SparseMeta masked_meta, sparse_meta;  // built when the group is not empty
};

// The dimensions of `config` a plan's tables depend on: a plan runs on layers that agree on them.
std::string plan_signature(const AttentionConfig& config);

}  // namespace dsattn
