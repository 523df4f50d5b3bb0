// What the decode-graph and decode-step GPU tests share: the shrunk layer they run (every
// dimension small, so the generic kernels serve it, and index_topk small enough that a few steps
// cross it) and a cache prefilled with their prompts.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_stack.h"
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

// A cache on the GPU with `prompts` prefilled through every layer of `stack`, and the block tables
// (room for max_context tokens a request).
struct Prefilled {
  std::unique_ptr<PagedKvCache> cache;
  std::vector<BlockTable> tables;
};

inline Prefilled prefill_prompts(const AttentionStack& stack,
                                 const std::vector<std::int64_t>& prompts, std::int64_t max_context,
                                 LatentFormat format, std::int64_t page_size = kPageSize) {
  const AttentionConfig& c = stack.layer(0).config();
  Prefilled p;
  CacheOptions opts;
  opts.device = Device::cuda(0);
  opts.num_layers = stack.num_layers();
  opts.latent_format = format;
  opts.page_size = page_size;
  opts.num_pages = static_cast<std::int64_t>(prompts.size()) * pages_for(max_context, page_size);
  p.cache = std::make_unique<PagedKvCache>(c, opts);
  p.tables.resize(prompts.size());
  Batch batch;
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    p.cache->reserve(p.tables[i], max_context);
    batch.requests.push_back({0, prompts[i], p.tables[i]});
    rows += prompts[i];
  }
  Tensor x = Tensor::empty({rows, c.hidden_size}, DType::bf16);
  fill_uniform(x, 3, 1, 1.0f);
  stack.forward(batch, x.to(Device::cuda(0)), *p.cache);
  return p;
}

}  // namespace dsattn::gpu_test
