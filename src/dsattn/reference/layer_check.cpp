#include "dsattn/reference/layer_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "dsattn/core/random.h"
#include "dsattn/layer/attention_layer.h"
#include "dsattn/reference/reference_layer.h"

namespace dsattn::reference {

std::string CheckCase::to_string() const {
  std::string reqs;
  for (const CheckRequest& r : requests) {
    if (!reqs.empty()) reqs += " ";
    reqs += fmt::format("{}+{}", r.prefix_len, r.extend_len);
  }
  const AttentionConfig& k = config;
  return fmt::format(
      "D={} H={} q_lora={} kv_lora={} qk={}+{} v={} index={}x{} topk={} | {} cache, {} index "
      "keys | {} [{}]",
      k.hidden_size, k.num_heads, k.q_lora_rank, k.kv_lora_rank, k.qk_nope_head_dim,
      k.qk_rope_head_dim, k.v_head_dim, k.index_n_heads, k.index_head_dim, k.index_topk,
      latent_format_name(latent_format), index_key_layout_name(index_key_layout),
      mode == ForwardMode::prefill ? "prefill" : "decode", reqs);
}

std::string CaseReport::to_string() const {
  std::string s;
  for (const PolicyCheck& p : checks) {
    s += fmt::format("  {:<12} {} err {:.3e} vs plain {:.3e} (bound {:.3e})\n", p.policy,
                     p.pass ? "ok  " : "FAIL", p.engine.max_abs_error, p.plain.max_abs_error,
                     2 * p.plain.max_abs_error + kRelativeAtol * p.engine.ref_max_abs);
    if (!p.pass) s += "    worst: " + p.engine.to_string() + "\n";
  }
  if (mha_mla_relative_difference >= 0) {
    s += fmt::format("  mha vs mla relative difference {:.3e}\n", mha_mla_relative_difference);
  }
  return s;
}

namespace {

struct Sequence {
  Tensor hidden;  // [prefix + extend, D] bf16: every token's input
  BlockTable table;
};

PolicyCheck run_policy(const CheckCase& c, const LayerWeights& weights, std::vector<Sequence>& seqs,
                       const Policy& policy) {
  const AttentionConfig& cfg = c.config;
  const std::int64_t D = cfg.hidden_size;
  std::int64_t max_ctx = 0;
  for (const CheckRequest& r : c.requests) max_ctx = std::max(max_ctx, r.prefix_len + r.extend_len);
  CacheOptions options;
  options.num_pages = static_cast<std::int64_t>(c.requests.size()) * pages_for(max_ctx);
  options.latent_format = c.latent_format;
  options.index_key_layout = c.index_key_layout;
  options.device = c.device;
  PagedKvCache cache(cfg, options);
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    seqs[i].table.clear();
    cache.reserve(seqs[i].table, c.requests[i].prefix_len + c.requests[i].extend_len);
  }

  // The prefix, in chunks, under the same policy (its latents are path-independent).
  AttentionLayer layer(cfg, c.device.is_cpu() ? weights : weights.to(c.device), policy);
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const Tensor hidden = seqs[i].hidden.to(c.device);
    for (std::int64_t at = 0; at < c.requests[i].prefix_len;) {
      const std::int64_t n = std::min(c.prefix_chunk, c.requests[i].prefix_len - at);
      Batch b;
      b.requests.push_back({at, n, seqs[i].table});
      Tensor in = Tensor::empty({n, D}, DType::bf16, c.device);
      copy(hidden.view().slice(0, at, at + n), in);
      Tensor scratch = Tensor::empty({n, D}, DType::bf16, c.device);
      layer.forward(b, in, cache.layer(0), scratch);
      at += n;
    }
  }

  Batch batch;
  batch.mode = c.mode;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    batch.requests.push_back({c.requests[i].prefix_len, c.requests[i].extend_len, seqs[i].table});
    total += c.requests[i].extend_len;
  }
  Tensor in = Tensor::empty({total, D}, DType::bf16);
  Tensor out = Tensor::empty({total, D}, DType::bf16);
  std::int64_t row = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const std::int64_t p = c.requests[i].prefix_len, n = c.requests[i].extend_len;
    std::memcpy(in.ptr<bf16>() + row * D, seqs[i].hidden.ptr<bf16>() + p * D, n * D * sizeof(bf16));
    row += n;
  }
  // Poison the output: every element must be written by the forward.
  for (std::int64_t j = 0; j < out.numel(); ++j) out.ptr<bf16>()[j] = bf16::from_bits(0x7fc0);
  const Tensor in_dev = in.to(c.device), out_dev = out.to(c.device);
  ForwardOptions fo;
  fo.record_topk = true;
  const ForwardResult fr = layer.forward(batch, in_dev, cache.layer(0), out_dev, fo);

  PolicyCheck check;
  check.policy = policy.to_string();
  check.paths = fr.paths;
  check.output = to_doubles(out_dev.to(Device::cpu()));
  std::vector<double> ref, plain;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    Request req;
    req.hidden = seqs[i].hidden;
    req.fp8_latent = c.latent_format == LatentFormat::fp8;
    req.extend_len = c.requests[i].extend_len;
    if (fr.paths[i] != Path::dense_mha) {  // sparse MLA, masked MHA, row_split: each row's keys
      const Tensor& sel = fr.topk_positions[i];
      for (std::int64_t t = 0; t < req.extend_len; ++t) {
        std::vector<std::int32_t> keys;
        for (std::int64_t j = 0; j < sel.size(1); ++j) {
          const std::int32_t s = sel.ptr<std::int32_t>()[t * sel.size(1) + j];
          if (s >= 0) keys.push_back(s);
        }
        std::sort(keys.begin(), keys.end());
        req.allowed_keys.push_back(std::move(keys));
      }
    }
    const auto r64 = attention_layer(cfg, weights, req, Precision::float64);
    const auto rpl = attention_layer(cfg, weights, req, Precision::plain_bf16);
    ref.insert(ref.end(), r64.begin(), r64.end());
    plain.insert(plain.end(), rpl.begin(), rpl.end());
  }
  check.engine = compare(check.output, ref);
  check.plain = compare(plain, ref);
  check.pass = within_tolerance(check.engine, check.plain);
  return check;
}

}  // namespace

double relative_difference(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) {
    fail("relative_difference needs equal sizes, got {} and {}", a.size(), b.size());
  }
  double diff = 0, scale = 0;
  for (std::size_t j = 0; j < a.size(); ++j) {
    if (!std::isfinite(a[j]) || !std::isfinite(b[j]))
      return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::fabs(a[j] - b[j]));
    scale = std::max(scale, std::fabs(b[j]));
  }
  return scale > 0 ? diff / scale : diff;
}

CaseReport check_case(const CheckCase& c, std::vector<Policy> policies) {
  c.config.validate();
  if (c.requests.empty()) fail("check case must hold at least one request");
  bool mha_exact = true;
  for (const CheckRequest& r : c.requests) {
    mha_exact = mha_exact && r.prefix_len + r.extend_len <= c.config.index_topk;
  }
  if (policies.empty()) {
    policies.push_back(Policy::parse("mla"));
    policies.push_back(Policy::parse("masked"));
    policies.push_back(Policy::parse("per-request"));
    if (mha_exact) policies.push_back(Policy::parse("mha"));
  }
  const LayerWeights weights = LayerWeights::synthetic(c.config, c.seed);
  std::vector<Sequence> seqs(c.requests.size());
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    seqs[i].hidden = Tensor::empty(
        {c.requests[i].prefix_len + c.requests[i].extend_len, c.config.hidden_size}, DType::bf16);
    fill_uniform(seqs[i].hidden, c.seed, 7000 + i, 1.0f);
  }
  CaseReport report;
  report.pass = true;
  const std::vector<double>* mha = nullptr;
  const std::vector<double>* mla = nullptr;
  for (const Policy& p : policies) {
    report.checks.push_back(run_policy(c, weights, seqs, p));
    report.pass = report.pass && report.checks.back().pass;
  }
  for (const PolicyCheck& p : report.checks) {
    if (p.policy == "mha") mha = &p.output;
    if (p.policy == "mla") mla = &p.output;
  }
  if (mha && mla) {
    report.mha_mla_relative_difference = relative_difference(*mha, *mla);
  }
  return report;
}

CheckCase random_case(std::uint64_t seed) {
  std::uint64_t state = mix64(seed + 0x1234);
  auto pick = [&state](std::int64_t lo, std::int64_t hi) {  // uniform in [lo, hi]
    state = mix64(state);
    return lo + static_cast<std::int64_t>(state % static_cast<std::uint64_t>(hi - lo + 1));
  };
  CheckCase c;
  c.seed = seed;
  AttentionConfig& k = c.config;
  k.hidden_size = 32 * pick(2, 4);
  k.num_heads = pick(1, 3);
  k.q_lora_rank = 16 * pick(2, 4);
  k.kv_lora_rank = 16 * pick(2, 4);
  k.qk_nope_head_dim = 8 * pick(2, 4);
  k.qk_rope_head_dim = 8 * pick(1, 2);
  k.v_head_dim = 8 * pick(2, 4);
  k.index_n_heads = pick(1, 4);
  k.index_head_dim = 128;
  k.index_topk = 8 * pick(1, 6);
  const std::int64_t n = pick(1, 3);
  c.mode = pick(0, 3) == 0 ? ForwardMode::decode : ForwardMode::prefill;
  if (pick(0, 2) == 0) {  // the FP8 latent cache needs kv_lora_rank in blocks of 128
    c.latent_format = LatentFormat::fp8;
    k.kv_lora_rank = 128 * pick(1, 2);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    CheckRequest r;
    r.prefix_len = pick(0, 2) == 0 ? 0 : pick(1, 2 * k.index_topk);
    r.extend_len = c.mode == ForwardMode::decode ? pick(1, 3) : pick(1, 2 * k.index_topk);
    c.requests.push_back(r);
  }
  return c;
}

}  // namespace dsattn::reference
