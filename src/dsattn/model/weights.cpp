#include "dsattn/model/weights.h"

#include <cmath>
#include <string_view>

#include "dsattn/core/checks.h"
#include "dsattn/core/random.h"

namespace dsattn {

namespace {

// Calls fn(name, tensor, expected shape) for every weight, in checkpoint order.
template <typename W, typename Fn>
void for_each_weight(W& w, const AttentionConfig& c, Fn&& fn) {
  const std::int64_t H = c.num_heads;
  fn("q_a_proj", w.q_a_proj, Shape{c.q_lora_rank, c.hidden_size});
  fn("q_a_layernorm", w.q_a_layernorm, Shape{c.q_lora_rank});
  fn("q_b_proj", w.q_b_proj, Shape{H * c.qk_head_dim(), c.q_lora_rank});
  fn("kv_a_proj_with_mqa", w.kv_a_proj_with_mqa, Shape{c.latent_dim(), c.hidden_size});
  fn("kv_a_layernorm", w.kv_a_layernorm, Shape{c.kv_lora_rank});
  fn("kv_b_proj", w.kv_b_proj, Shape{H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
  fn("o_proj", w.o_proj, Shape{c.hidden_size, H * c.v_head_dim});
  fn("indexer.wq_b", w.indexer_wq_b, Shape{c.index_n_heads * c.index_head_dim, c.q_lora_rank});
  fn("indexer.wk", w.indexer_wk, Shape{c.index_head_dim, c.hidden_size});
  fn("indexer.k_norm.weight", w.indexer_k_norm, Shape{c.index_head_dim});
  fn("indexer.k_norm.bias", w.indexer_k_norm_bias, Shape{c.index_head_dim});
  fn("indexer.weights_proj", w.indexer_weights_proj, Shape{c.index_n_heads, c.hidden_size});
}

}  // namespace

LayerWeights LayerWeights::synthetic(const AttentionConfig& config, std::uint64_t seed,
                                     float output_gain) {
  config.validate();
  LayerWeights w;
  std::uint64_t stream = 0;
  for_each_weight(w, config, [&](const char* name, Tensor& t, const Shape& shape) {
    t = Tensor::empty(shape, DType::bf16);
    const std::string_view n(name);
    ++stream;
    if (shape.size() == 1) {
      // Norm weights near one and biases near zero: non-trivial, but harmless to the scale.
      const bool bias = n.ends_with("bias");
      fill_uniform(t, seed, stream, 0.05f, bias ? 0.0f : 1.0f);
    } else {
      float std = 1.0f / std::sqrt(static_cast<float>(shape[1]));
      if (n == "o_proj") std *= output_gain;
      fill_uniform(t, seed, stream, std);
    }
  });
  return w;
}

bool is_indexer_weight(std::string_view name) { return name.starts_with("indexer."); }

LayerWeights LayerWeights::synthetic_layer(const AttentionConfig& config, std::int64_t layer,
                                           std::uint64_t seed) {
  LayerWeights w = synthetic(config, seed);
  if (config.shares_topk(layer)) w.drop_indexer();
  return w;
}

void LayerWeights::drop_indexer() {
  for_each_weight(*this, AttentionConfig{}, [](const char* name, Tensor& t, const Shape&) {
    if (is_indexer_weight(name)) t = Tensor();
  });
}

void LayerWeights::validate(const AttentionConfig& config) const {
  const bool indexer = has_indexer();
  for_each_weight(*this, config, [&](const char* name, const Tensor& t, const Shape& shape) {
    if (!indexer && is_indexer_weight(name)) {
      if (t.defined()) {
        fail(
            "layer weight {} is given but indexer.wq_b is not: a layer has all five indexer "
            "weights or none",
            name);
      }
      return;
    }
    if (!t.defined()) fail("layer weight {} is missing", name);
    check_dtype(t, name, DType::bf16);
    check_contiguous(t, name);
    if (shape.size() == 1) {
      check_shape(t, name, {shape[0]});
    } else {
      check_shape(t, name, {shape[0], shape[1]});
    }
    check_device(t, name, q_a_proj.device());
  });
}

LayerWeights LayerWeights::to(Device device) const {
  LayerWeights out;
  const LayerWeights& self = *this;
  // Pair fields by position: walk both structs with the same visitor order.
  AttentionConfig unused;
  std::vector<const Tensor*> src;
  for_each_weight(self, unused,
                  [&](const char*, const Tensor& t, const Shape&) { src.push_back(&t); });
  std::size_t i = 0;
  for_each_weight(out, unused, [&](const char*, Tensor& t, const Shape&) {
    const Tensor& s = *src[i++];
    if (s.defined()) t = s.to(device);
  });
  return out;
}

}  // namespace dsattn
