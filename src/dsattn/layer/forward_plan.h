// A forward planned once and run without the host: AttentionLayer::plan() does every check,
// chooses each request's path and builds every per-batch table (positions, the new tokens' cache
// slots, each path group's rows, offsets, key slots, block tables and score windows) on the
// layer's device; AttentionLayer::run() then launches the layer's work on the current stream with
// no planning, no upload and no synchronisation. One plan serves every layer of a model whose
// caches share the block tables (AttentionStack plans once per forward), and may be run again.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dsattn/core/tensor.h"
#include "dsattn/layer/planner.h"

namespace dsattn {

struct ForwardTables;  // layer/forward_tables.h: what a plan holds

class ForwardPlan {
 public:
  ForwardPlan() = default;  // empty: run() refuses it

  bool empty() const { return tables_ == nullptr; }
  // The path of each request, in the batch's order.
  const std::vector<Path>& paths() const;
  std::int64_t num_requests() const;
  std::int64_t total_tokens() const;  // the rows of hidden_in and hidden_out
  Device device() const;
  // A plan over device block tables (AttentionLayer::plan with block_tables): what their entries
  // held that was not a page of the cache, one sentence each (empty: nothing); empty for other
  // plans. Reads the plan's fault word, waiting for the current stream.
  std::vector<std::string> faults() const;

  const ForwardTables& tables() const;  // for the layer's executors

 private:
  friend class AttentionLayer;
  explicit ForwardPlan(std::shared_ptr<const ForwardTables> tables) : tables_(std::move(tables)) {}
  std::shared_ptr<const ForwardTables> tables_;  // shared: copies of a plan are cheap
};

// What run() may also do. Everything is off by default: a run then only launches work.
struct RunOptions {
  // As ForwardOptions::lse: [T, num_heads] f32, each new row's and head's log-sum-exp.
  TensorView lse;
  // Wall-clock stage times (ForwardResult::times); on a GPU this waits for each stage's kernels.
  bool time_stages = false;
  // ForwardResult::topk_positions (copies the selections to the host, so it waits for them).
  bool record_topk = false;
};

}  // namespace dsattn
