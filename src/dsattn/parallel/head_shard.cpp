#include "dsattn/parallel/head_shard.h"

#include "dsattn/ops/elementwise.h"

namespace dsattn::parallel {

HeadShard head_shard(const AttentionConfig& config, int rank, int world_size) {
  if (world_size < 1) fail("tensor-parallel world size must be >= 1, got {}", world_size);
  if (config.num_heads % world_size != 0) {
    fail(
        "tensor-parallel world size must divide the {} attention heads (num_attention_heads), "
        "got {}",
        config.num_heads, world_size);
  }
  if (rank < 0 || rank >= world_size) {
    fail("tensor-parallel rank must be in [0, {}), got {}", world_size, rank);
  }
  HeadShard s;
  s.rank = rank;
  s.world_size = world_size;
  s.num_heads = config.num_heads / world_size;
  s.head_begin = rank * s.num_heads;
  return s;
}

namespace {

void check_shard_fits(const AttentionConfig& config, const HeadShard& shard) {
  const HeadShard expected = head_shard(config, shard.rank, shard.world_size);
  if (shard.head_begin != expected.head_begin || shard.num_heads != expected.num_heads) {
    fail("head shard of rank {} of {} must hold heads [{}, {}) of {}, got [{}, {})", shard.rank,
         shard.world_size, expected.head_begin, expected.head_end(), config.num_heads,
         shard.head_begin, shard.head_end());
  }
}

// Rows [begin, end) of a [rows, cols] weight, as a tensor of its own on the same device.
Tensor copy_rows(const Tensor& w, std::int64_t begin, std::int64_t end) {
  Tensor out = Tensor::empty({end - begin, w.size(1)}, w.dtype(), w.device());
  copy(w.view().slice(0, begin, end), out);
  return out;
}

// Columns [begin, end) of a [rows, cols] weight, contiguous.
Tensor copy_columns(const Tensor& w, std::int64_t begin, std::int64_t end) {
  Tensor out = Tensor::empty({w.size(0), end - begin}, w.dtype(), w.device());
  ops::strided_copy(w.view().slice(1, begin, end), out);
  return out;
}

}  // namespace

AttentionConfig shard_config(const AttentionConfig& config, const HeadShard& shard) {
  check_shard_fits(config, shard);
  AttentionConfig local = config;
  local.num_heads = shard.num_heads;
  return local;
}

LayerWeights shard_weights(const LayerWeights& full, const AttentionConfig& config,
                           const HeadShard& shard) {
  check_shard_fits(config, shard);
  full.validate(config);
  const std::int64_t h0 = shard.head_begin, h1 = shard.head_end();
  const std::int64_t q_rows = config.qk_head_dim();
  const std::int64_t kv_rows = config.qk_nope_head_dim + config.v_head_dim;
  LayerWeights w = full;  // replicated tensors share storage with `full`
  w.q_b_proj = copy_rows(full.q_b_proj, h0 * q_rows, h1 * q_rows);
  w.kv_b_proj = copy_rows(full.kv_b_proj, h0 * kv_rows, h1 * kv_rows);
  w.o_proj = copy_columns(full.o_proj, h0 * config.v_head_dim, h1 * config.v_head_dim);
  return w;
}

}  // namespace dsattn::parallel
