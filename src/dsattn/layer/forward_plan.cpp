#include "dsattn/layer/forward_plan.h"

#include <fmt/format.h>

#include "dsattn/core/error.h"
#include "dsattn/layer/forward_tables.h"
#include "dsattn/ops/cache_ops.h"

namespace dsattn {

const ForwardTables& ForwardPlan::tables() const {
  if (!tables_) fail("plan: this plan is empty (make one with AttentionLayer::plan)");
  return *tables_;
}

const std::vector<Path>& ForwardPlan::paths() const { return tables().paths; }

std::int64_t ForwardPlan::num_requests() const {
  return static_cast<std::int64_t>(tables().paths.size());
}

std::int64_t ForwardPlan::total_tokens() const { return tables().total_tokens; }

Device ForwardPlan::device() const { return tables().device; }

std::vector<std::string> ForwardPlan::faults() const {
  const ForwardTables& t = tables();
  if (!t.faults.defined()) return {};
  std::int32_t bits = 0;
  copy(t.faults, TensorView(&bits, DType::i32, Device::cpu(), {1}));
  std::vector<std::string> found;
  if (bits & ops::kDecodeFaultPage) found.push_back(ops::page_fault_sentence(t.num_pages));
  return found;
}

std::string plan_signature(const AttentionConfig& c) {
  return fmt::format(
      "D{} H{} q_lora{} r{} nope{} rope{} v{} index_heads{} index_dim{} topk{} max_pos{}",
      c.hidden_size, c.num_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim,
      c.qk_rope_head_dim, c.v_head_dim, c.index_n_heads, c.index_head_dim, c.index_topk,
      c.max_position_embeddings);
}

}  // namespace dsattn
