#include "dsattn/layer/forward_plan.h"

#include <fmt/format.h>

#include "dsattn/core/error.h"
#include "dsattn/layer/forward_tables.h"

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

std::string plan_signature(const AttentionConfig& c) {
  return fmt::format(
      "D{} H{} q_lora{} r{} nope{} rope{} v{} index_heads{} index_dim{} topk{} max_pos{}",
      c.hidden_size, c.num_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim,
      c.qk_rope_head_dim, c.v_head_dim, c.index_n_heads, c.index_head_dim, c.index_topk,
      c.max_position_embeddings);
}

}  // namespace dsattn
