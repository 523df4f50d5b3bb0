#include "dsattn/decoder/decoder_weights.h"

#include <cmath>

#include "dsattn/core/checks.h"
#include "dsattn/core/random.h"

namespace dsattn {

namespace {

// Random streams of the decoder's own tensors (the attention's use 1..12 of the layer's seed).
enum Stream : std::uint64_t {
  kEmbed = 101,
  kLmHead,
  kFinalNorm,
  kPostNorm,
  kGate,
  kUp,
  kDown,
};

Tensor uniform(const Shape& shape, std::uint64_t seed, std::uint64_t stream, float std,
               float mean = 0.0f) {
  Tensor t = Tensor::empty(shape, DType::bf16);
  fill_uniform(t, seed, stream, std, mean);
  return t;
}

float inv_sqrt(std::int64_t n) { return 1.0f / std::sqrt(static_cast<float>(n)); }

std::string layer_name(std::int64_t layer, const char* suffix) {
  return fmt::format("model.layers.{}.{}", layer, suffix);
}

// [gate; up] stacked along rows, so one GEMM computes both projections.
Tensor stack_rows(const Tensor& gate, const Tensor& up) {
  Tensor out = Tensor::empty({gate.size(0) + up.size(0), gate.size(1)}, DType::bf16);
  copy(gate, out.view().slice(0, 0, gate.size(0)));
  copy(up, out.view().slice(0, gate.size(0), gate.size(0) + up.size(0)));
  return out;
}

// A contiguous host copy of rows [begin, end) of a 2-D tensor.
Tensor rows_of(const Tensor& t, std::int64_t begin, std::int64_t end) {
  Tensor out = Tensor::empty({end - begin, t.size(1)}, t.dtype());
  copy(t.view().slice(0, begin, end), out);
  return out;
}

}  // namespace

DecoderWeights DecoderWeights::synthetic(const DecoderConfig& config, std::uint64_t seed) {
  config.validate();
  const std::int64_t D = config.attention.hidden_size, V = config.vocab_size;
  const std::int64_t I = config.intermediate_size;
  DecoderWeights w;
  w.embed = uniform({V, D}, seed, kEmbed, 1.0f);
  for (std::int64_t l = 0; l < config.num_layers; ++l) {
    const std::uint64_t s = seed + static_cast<std::uint64_t>(l);
    DecoderLayerWeights& layer = w.layers.emplace_back();
    layer.input_norm = synthetic_input_norm(config.attention, s);
    layer.attention = LayerWeights::synthetic_layer(config.attention, l, s);
    layer.post_attention_norm = uniform({D}, s, kPostNorm, 0.05f, 1.0f);
    layer.gate_up =
        stack_rows(uniform({I, D}, s, kGate, inv_sqrt(D)), uniform({I, D}, s, kUp, inv_sqrt(D)));
    layer.down = uniform({D, I}, s, kDown, 0.5f * inv_sqrt(I));
  }
  w.final_norm = uniform({D}, seed, kFinalNorm, 0.05f, 1.0f);
  w.lm_head = uniform({V, D}, seed, kLmHead, inv_sqrt(D));
  return w;
}

DecoderWeights DecoderWeights::load(const Checkpoint& checkpoint, const DecoderConfig& config) {
  config.validate();
  const std::int64_t D = config.attention.hidden_size, V = config.vocab_size;
  const std::int64_t I = config.intermediate_size;
  DecoderWeights w;
  w.embed = load_bf16_weight(checkpoint, "model.embed_tokens.weight", {V, D});
  for (std::int64_t l = 0; l < config.num_layers; ++l) {
    const int li = static_cast<int>(l);
    DecoderLayerWeights& layer = w.layers.emplace_back();
    layer.input_norm = load_bf16_weight(checkpoint, input_norm_name(li), {D});
    layer.attention = load_layer_weights(checkpoint, li);
    layer.post_attention_norm =
        load_bf16_weight(checkpoint, layer_name(l, "post_attention_layernorm.weight"), {D});
    layer.gate_up =
        stack_rows(load_bf16_weight(checkpoint, layer_name(l, "mlp.gate_proj.weight"), {I, D}),
                   load_bf16_weight(checkpoint, layer_name(l, "mlp.up_proj.weight"), {I, D}));
    layer.down = load_bf16_weight(checkpoint, layer_name(l, "mlp.down_proj.weight"), {D, I});
  }
  w.final_norm = load_bf16_weight(checkpoint, "model.norm.weight", {D});
  w.lm_head = load_bf16_weight(checkpoint, "lm_head.weight", {V, D});
  return w;
}

void DecoderWeights::validate(const DecoderConfig& config) const {
  const std::int64_t D = config.attention.hidden_size, V = config.vocab_size;
  const std::int64_t I = config.intermediate_size;
  auto check = [](const Tensor& t, const std::string& name, std::initializer_list<std::int64_t> s) {
    if (!t.defined()) fail("decoder weight {} is missing", name);
    check_dtype(t, name, DType::bf16);
    check_contiguous(t, name);
    check_shape(t, name, s);
  };
  check(embed, "embed", {V, D});
  if (static_cast<std::int64_t>(layers.size()) != config.num_layers) {
    fail("decoder weights must have {} layers, got {}", config.num_layers, layers.size());
  }
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const DecoderLayerWeights& layer = layers[l];
    check(layer.input_norm, fmt::format("layers[{}].input_norm", l), {D});
    layer.attention.validate(config.attention);
    // IndexShare: a layer has indexer weights exactly when the config gives it its own indexer;
    // otherwise a missing indexer would silently reuse another layer's top-k.
    const bool shares = config.attention.shares_topk(static_cast<std::int64_t>(l));
    if (layer.attention.has_indexer() == shares) {
      fail("decoder layer {} {} indexer weights, but the config says it {} (IndexShare)", l,
           shares ? "has" : "has no", shares ? "takes an earlier layer's top-k" : "runs its own");
    }
    check(layer.post_attention_norm, fmt::format("layers[{}].post_attention_norm", l), {D});
    check(layer.gate_up, fmt::format("layers[{}].gate_up", l), {2 * I, D});
    check(layer.down, fmt::format("layers[{}].down", l), {D, I});
  }
  check(final_norm, "final_norm", {D});
  check(lm_head, "lm_head", {V, D});
}

DecoderWeights DecoderWeights::to(Device device) const {
  DecoderWeights w;
  w.embed = embed.to(device);
  for (const DecoderLayerWeights& l : layers) {
    w.layers.push_back({l.input_norm.to(device), l.attention.to(device),
                        l.post_attention_norm.to(device), l.gate_up.to(device), l.down.to(device)});
  }
  w.final_norm = final_norm.to(device);
  w.lm_head = lm_head.to(device);
  return w;
}

void write_synthetic_decoder_checkpoint(const std::string& dir, const DecoderConfig& config,
                                        std::uint64_t seed, bool fp8, CheckpointLayout layout) {
  const DecoderWeights w = DecoderWeights::synthetic(config, seed);
  const std::int64_t I = config.intermediate_size;
  CheckpointWriter writer(dir, fp8, layout, static_cast<int>(config.num_layers) + 1);
  writer.add("model.embed_tokens.weight", w.embed);
  writer.add("model.norm.weight", w.final_norm);
  writer.add("lm_head.weight", w.lm_head);
  writer.end_shard();
  for (std::int64_t l = 0; l < config.num_layers; ++l) {
    const DecoderLayerWeights& layer = w.layers[static_cast<std::size_t>(l)];
    const int li = static_cast<int>(l);
    writer.add(input_norm_name(li), layer.input_norm);
    for (const AttentionWeightSlot& slot : attention_weight_slots(config.attention)) {
      const Tensor& t = layer.attention.*slot.member;
      if (t.defined()) writer.add(attention_prefix(li) + slot.name, t);  // none: IndexShare
    }
    writer.add(layer_name(l, "post_attention_layernorm.weight"), layer.post_attention_norm);
    writer.add(layer_name(l, "mlp.gate_proj.weight"), rows_of(layer.gate_up, 0, I));
    writer.add(layer_name(l, "mlp.up_proj.weight"), rows_of(layer.gate_up, I, 2 * I));
    writer.add(layer_name(l, "mlp.down_proj.weight"), layer.down);
    writer.end_shard();
  }
  writer.finish(
      config.attention, static_cast<int>(config.num_layers),
      {{"vocab_size", config.vocab_size}, {"intermediate_size", config.intermediate_size}});
}

}  // namespace dsattn
