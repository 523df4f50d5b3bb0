// The configuration the model tests share.
#pragma once

#include "dsattn/model/config.h"

namespace dsattn::testing {

// A small but complete configuration: every dimension differs, so a swapped one shows.
inline AttentionConfig small_model_config() {
  AttentionConfig c;
  c.hidden_size = 320;
  c.num_heads = 4;
  c.q_lora_rank = 96;
  c.kv_lora_rank = 64;
  c.qk_nope_head_dim = 24;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 40;
  c.index_n_heads = 8;
  c.index_head_dim = 128;
  c.index_topk = 32;
  return c;
}

}  // namespace dsattn::testing
