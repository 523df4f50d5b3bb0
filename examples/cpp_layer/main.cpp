// One attention layer through the installed C++ API: a paged cache, a prefill of two prompts
// (one short enough for dense MHA, one past index_topk on sparse MLA), then a decode step for
// both, on the CPU (or the GPU with --cuda). Prints the path each request took and the output's
// RMS; exits non-zero if an output is not finite.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_layer.h"

int main(int argc, char** argv) {
  using namespace dsattn;
  const Device device = argc > 1 && std::strcmp(argv[1], "--cuda") == 0 ? Device::cuda(0)
                                                                        : Device::cpu();
  // DeepSeek-V3.2's attention per head, with few heads and a small top-k.
  AttentionConfig config;
  config.hidden_size = 256;
  config.num_heads = 4;
  config.q_lora_rank = 128;
  config.index_n_heads = 4;
  config.index_topk = 64;
  LayerWeights weights = LayerWeights::synthetic(config, 1);
  const AttentionLayer layer(config, device.is_cpu() ? weights : weights.to(device));

  CacheOptions opts;
  opts.device = device;
  opts.num_pages = 8;
  PagedKvCache cache(config, opts);
  BlockTable short_table, long_table;
  cache.reserve(short_table, 41);
  cache.reserve(long_table, 151);

  Batch prefill;
  prefill.requests = {{0, 40, short_table}, {0, 150, long_table}};
  Tensor x = Tensor::empty({190, config.hidden_size}, DType::bf16);
  fill_uniform(x, 7, 1, 1.0f);
  const Tensor x_dev = device.is_cpu() ? x : x.to(device);
  Tensor y = Tensor::empty({190, config.hidden_size}, DType::bf16, device);
  const ForwardResult r = layer.forward(prefill, x_dev, cache.layer(0), y);
  for (std::size_t i = 0; i < r.paths.size(); ++i) {
    std::printf("prefill request %zu: %s\n", i, std::string(path_name(r.paths[i])).c_str());
  }

  Batch decode;
  decode.mode = ForwardMode::decode;
  decode.requests = {{40, 1, short_table}, {150, 1, long_table}};
  Tensor y2 = Tensor::empty({2, config.hidden_size}, DType::bf16, device);
  layer.forward(decode, x_dev.view().slice(0, 0, 2), cache.layer(0), y2);

  double sum = 0;
  bool finite = true;
  for (const Tensor* t : {&y, &y2}) {
    const Tensor host = t->to(Device::cpu());
    for (std::int64_t i = 0; i < host.numel(); ++i) {
      const double v = host.ptr<bf16>()[i].to_float();
      finite = finite && std::isfinite(v);
      sum += v * v;
    }
  }
  std::printf("output rms %.4f over %lld rows\n", std::sqrt(sum / (192.0 * config.hidden_size)),
              192LL);
  return finite ? 0 : 1;
}
