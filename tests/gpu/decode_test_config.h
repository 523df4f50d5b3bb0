// The shrunk layer that the decode-graph and decode-step GPU tests run: every dimension small (the
// generic kernels serve it), and index_topk small enough that a few steps cross it.
#pragma once

#include <cstdint>

#include "dsattn/model/config.h"

namespace dsattn::gpu_test {

inline AttentionConfig decode_test_config(std::int64_t index_topk = 32) {
  AttentionConfig c;
  c.hidden_size = 256;
  c.num_heads = 4;
  c.q_lora_rank = 64;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.index_n_heads = 8;
  c.index_topk = index_topk;
  return c;
}

}  // namespace dsattn::gpu_test
