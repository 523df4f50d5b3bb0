#include "bench/stages.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

#include "bench/timer.h"
#include "dsattn/cache/cache_format.h"
#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/core/cuda_runtime.h"
#include "dsattn/core/random.h"
#include "dsattn/layer/attention_stack.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/gemm.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/latent_fp8.h"
#include "dsattn/ops/quantize.h"
#include "dsattn/ops/topk.h"

namespace dsattn::tools {

namespace {

using nlohmann::json;

// DeepSeek-V3.2's attention shapes.
constexpr std::int64_t H = 128, kNope = 128, kRope = 64, kV = 128, kRank = 512, kTopk = 2048;
constexpr std::int64_t kIndexHeads = 64, kIndexDim = 128;

Tensor random_tensor(std::initializer_list<std::int64_t> shape, DType dtype, Device device,
                     std::uint64_t stream, float std = 1.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  if (dtype == DType::u8) {
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      t.ptr<std::uint8_t>()[i] = static_cast<std::uint8_t>(mix64(stream * 1000003 + i) & 0x77);
    }
  } else {
    fill_uniform(t, 1234, stream, std);
  }
  return device.is_cpu() ? t : t.to(device);
}

Tensor upload(const std::vector<std::int32_t>& v, std::initializer_list<std::int64_t> shape,
              Device device) {
  Tensor t = Tensor::empty(shape, DType::i32);
  std::copy(v.begin(), v.end(), t.ptr<std::int32_t>());
  return device.is_cpu() ? t : t.to(device);
}

std::vector<std::int32_t> offsets(std::int64_t batch, std::int64_t s) {
  std::vector<std::int32_t> cu(batch + 1);
  for (std::int64_t b = 0; b <= batch; ++b) cu[b] = static_cast<std::int32_t>(b * s);
  return cu;
}

double pct(double value, double ceiling) { return ceiling > 0 ? 100.0 * value / ceiling : 0.0; }

void say(const std::string& line) { std::fprintf(stderr, "  ... %s\n", line.c_str()); }

// One row of a sequence-length sweep: time, rate and percent of the GEMM ceiling, also printed.
json sweep_row(const char* stage, std::int64_t s, std::int64_t batch, double ms, double flops,
               const Ceilings& c) {
  const double tflops = flops / (ms * 1e9);
  say(fmt::format("{} s={}: {:.1f} us, {:.1f} TFLOPS", stage, s, ms * 1e3, tflops));
  return {{"seq", s},
          {"batch", batch},
          {"us", ms * 1e3},
          {"tflops", tflops},
          {"pct_gemm_ceiling", pct(tflops, c.gemm_tflops)}};
}

}  // namespace

Ceilings measure_ceilings(Device device) {
  Ceilings c;
  const std::int64_t n = device.is_cpu() ? 1024 : 8192;
  const Tensor a = random_tensor({n, n}, DType::bf16, device, 1);
  const Tensor b = random_tensor({n, n}, DType::bf16, device, 2);
  Tensor out = Tensor::empty({n, n}, DType::bf16, device);
  const Timing g = time_median(device, [&] { ops::gemm(a, b, out, ops::BLayout::nt); });
  c.gemm_tflops = 2.0 * n * n * n / (g.median_ms * 1e9);
  const std::int64_t bytes = device.is_cpu() ? (256 << 20) : (std::int64_t(2) << 30);
  const Tensor src = Tensor::empty({bytes}, DType::u8, device);
  const Tensor dst = Tensor::empty({bytes}, DType::u8, device);
  const Timing t = time_median(device, [&] { copy(src, dst); });
  c.copy_tbps = 2.0 * bytes / (t.median_ms * 1e9);
  say(fmt::format("ceilings: bf16 GEMM {:.0f} TFLOPS, copy {:.2f} TB/s", c.gemm_tflops,
                  c.copy_tbps));
  return c;
}

json bench_mha_prefill(Device device, const Sweep& sweep, const Ceilings& c,
                       const AttentionConfig& config, const char* label) {
  json rows = json::array();
  const std::int64_t heads = config.num_heads, d_qk = config.qk_head_dim(), d_v = config.v_head_dim;
  const float scale = static_cast<float>(config.softmax_scale());
  for (std::int64_t s : sweep.seqs) {
    const std::int64_t batch = std::max<std::int64_t>(1, sweep.tokens / s), T = batch * s;
    const Tensor q = random_tensor({T, heads, d_qk}, DType::bf16, device, 3);
    const Tensor k = random_tensor({T, heads, d_qk}, DType::bf16, device, 4);
    const Tensor v = random_tensor({T, heads, d_v}, DType::bf16, device, 5);
    Tensor o = Tensor::empty({T, heads, d_v}, DType::bf16, device);
    const Tensor cu = upload(offsets(batch, s), {batch + 1}, device);
    const Timing t =
        time_median(device, [&] { ops::mha_varlen_causal(q, k, v, cu, cu, s, scale, o); });
    const double flops = double(batch) * s * (s + 1) * heads * (d_qk + d_v);
    json row = sweep_row(label, s, batch, t.median_ms, flops, c);
    // Past index_topk: the same attention as masked MHA, each row limited to a top-k selection
    // (here a random one of about index_topk of its keys; all of them for rows that see fewer).
    // Its rate counts every causal pair, as dense MHA's does, so the two compare directly.
    const std::int64_t topk = config.index_topk;
    if (s > topk) {
      const std::int64_t words = (s + 127) / 128 * 4;
      std::vector<std::int32_t> mask(static_cast<std::size_t>(T * words), 0);
      for (std::int64_t b = 0; b < batch; ++b) {
        for (std::int64_t i = 0; i < s; ++i) {
          auto* row = reinterpret_cast<std::uint32_t*>(mask.data() + (b * s + i) * words);
          const std::uint64_t keep = (std::uint64_t(topk) << 32) / std::uint64_t(i + 1);
          for (std::int64_t j = 0; j <= i; ++j) {
            if (i < topk || (mix64(std::uint64_t(i) * 0x9e3779b97f4a7c15ull + j) >> 32) < keep) {
              row[j / 32] |= 1u << (j % 32);
            }
          }
        }
      }
      const Tensor key_mask = upload(mask, {T, words}, device);
      const Timing m = time_median(
          device, [&] { ops::mha_varlen_causal(q, k, v, cu, cu, s, scale, o, {}, key_mask); });
      const double tflops = flops / (m.median_ms * 1e9);
      say(fmt::format("{} masked to top-{} s={}: {:.1f} us, {:.1f} TFLOPS", label, topk, s,
                      m.median_ms * 1e3, tflops));
      row["masked_us"] = m.median_ms * 1e3;
      row["masked_tflops"] = tflops;
    }
    rows.push_back(row);
  }
  return rows;
}

json bench_projections(Device device, const Sweep& sweep, const Ceilings& c) {
  json rows = json::array();
  const std::int64_t T = sweep.tokens;
  // kv_b_proj: decompress T latents into per-head keys and values (the dense path).
  const Tensor latent = random_tensor({T, kRank}, DType::bf16, device, 6);
  const Tensor w_kvb = random_tensor({H * (kNope + kV), kRank}, DType::bf16, device, 7, 0.04f);
  Tensor kv = Tensor::empty({T, H * (kNope + kV)}, DType::bf16, device);
  const Timing t1 = time_median(device, [&] { ops::gemm(latent, w_kvb, kv, ops::BLayout::nt); });
  const double f1 = 2.0 * T * kRank * H * (kNope + kV) / (t1.median_ms * 1e9);
  rows.push_back({{"stage", "kv_b_proj"},
                  {"tokens", T},
                  {"us", t1.median_ms * 1e3},
                  {"tflops", f1},
                  {"pct_gemm_ceiling", pct(f1, c.gemm_tflops)}});
  // Absorption of the queries (the sparse path): one batched product over the heads.
  const Tensor q = random_tensor({T, H, kNope + kRope}, DType::bf16, device, 8);
  Tensor q_abs = Tensor::empty({T, H, kRank + kRope}, DType::bf16, device);
  const TensorView w = w_kvb.view().reshape({H, kNope + kV, kRank}).slice(1, 0, kNope);
  const Timing t2 = time_median(device, [&] {
    ops::gemm(q.view().slice(2, 0, kNope).transpose(0, 1), w,
              q_abs.view().slice(2, 0, kRank).transpose(0, 1), ops::BLayout::nn);
  });
  const double f2 = 2.0 * T * H * kNope * kRank / (t2.median_ms * 1e9);
  rows.push_back({{"stage", "absorb_q"},
                  {"tokens", T},
                  {"us", t2.median_ms * 1e3},
                  {"tflops", f2},
                  {"pct_gemm_ceiling", pct(f2, c.gemm_tflops)}});
  say(fmt::format("kv_b_proj {:.1f} us ({:.0f} TFLOPS), absorb {:.1f} us ({:.0f} TFLOPS)",
                  t1.median_ms * 1e3, f1, t2.median_ms * 1e3, f2));
  return rows;
}

json bench_sparse_mla_prefill(Device device, const Sweep& sweep, const Ceilings& c) {
  json rows = json::array();
  std::mt19937 rng(7);
  for (std::int64_t s : sweep.seqs) {
    const std::int64_t batch = std::max<std::int64_t>(1, sweep.tokens / s), T = batch * s;
    // Each query selects min(K, position + 1) of its request's earlier positions at random.
    std::vector<std::int32_t> idx(T * kTopk, -1);
    std::int64_t valid = 0;
    std::vector<std::int32_t> pool;
    for (std::int64_t b = 0; b < batch; ++b) {
      for (std::int64_t i = 0; i < s; ++i) {
        const std::int64_t row = b * s + i, n = std::min<std::int64_t>(kTopk, i + 1);
        pool.resize(i + 1);
        std::iota(pool.begin(), pool.end(), static_cast<std::int32_t>(b * s));
        if (i + 1 > kTopk) std::shuffle(pool.begin(), pool.end(), rng);
        std::sort(pool.begin(), pool.begin() + n);
        std::copy(pool.begin(), pool.begin() + n, idx.begin() + row * kTopk);
        valid += n;
      }
    }
    const Tensor indices = upload(idx, {T, kTopk}, device);
    const Tensor q = random_tensor({T, H, kRank + kRope}, DType::bf16, device, 9);
    const Tensor kv = random_tensor({T, kRank + kRope}, DType::bf16, device, 10);
    Tensor o = Tensor::empty({T, H, kRank}, DType::bf16, device);
    const Timing t = time_median(device, [&] { ops::sparse_mla(q, kv, indices, 0.1352f, o); });
    const double flops = 2.0 * valid * H * (kRank + kRope + kRank);
    rows.push_back(sweep_row("sparse MLA prefill", s, batch, t.median_ms, flops, c));
  }
  return rows;
}

namespace {

// The indexer's inputs for `batch` requests of `rows` query rows each over `context` cached keys
// (the request's newest rows), each request's keys in its own pages, in order; seeded from `seed`.
struct IndexerInputs {
  Tensor q, q_scale, weights, keys, tables, cu_q, context_lens, scores;

  IndexerInputs(Device device, std::int64_t batch, std::int64_t rows, std::int64_t context,
                std::uint64_t seed) {
    const std::int64_t T = batch * rows, pages = (context + kPageSize - 1) / kPageSize;
    q = random_tensor({T, kIndexHeads, kIndexDim}, DType::u8, device, seed);
    Tensor qs = Tensor::empty({T, kIndexHeads, 1}, DType::f32);
    fill_uniform(qs, 1, seed + 1, 0.001f, 0.01f);
    Tensor w = Tensor::empty({T, kIndexHeads}, DType::f32);
    fill_uniform(w, 1, seed + 2, 0.1f);
    q_scale = device.is_cpu() ? qs : qs.to(device);
    weights = device.is_cpu() ? w : w.to(device);
    std::vector<std::int32_t> table(batch * pages);
    std::iota(table.begin(), table.end(), 0);
    tables = upload(table, {batch, pages}, device);
    keys = random_tensor({batch * pages * kPageSize, kIndexDim + 4}, DType::u8, device, seed + 3);
    cu_q = upload(offsets(batch, rows), {batch + 1}, device);
    context_lens = upload(std::vector<std::int32_t>(batch, static_cast<std::int32_t>(context)),
                          {batch}, device);
    scores = Tensor::empty({T, context}, DType::f32, device);
  }

  Timing time(Device device, IndexKeyLayout layout = IndexKeyLayout::rows) {
    return time_median(device, [&] {
      ops::indexer_scores(q, q_scale, weights, keys, tables, kPageSize, cu_q, context_lens, 0,
                          scores, layout);
    });
  }
};

}  // namespace

json bench_indexer(Device device, const Sweep& sweep, const Ceilings& c) {
  json rows = json::array();
  for (std::int64_t s : sweep.seqs) {
    const std::int64_t batch = std::max<std::int64_t>(1, sweep.tokens / s);
    const Timing t = IndexerInputs(device, batch, s, s, 11).time(device);
    const double flops = double(batch) * s * (s + 1) / 2 * kIndexHeads * kIndexDim * 2;
    rows.push_back(sweep_row("indexer", s, batch, t.median_ms, flops, c));
  }
  return rows;
}

json bench_indexer_decode(Device device, const Ceilings& c) {
  json rows = json::array();
  for (std::int64_t batch : {8, 128}) {
    for (std::int64_t ctx : {8192, 65536}) {
      // One query row per request (a decode step) against `ctx` cached keys, in each layout of
      // the index-key cache (the same bytes).
      IndexerInputs inputs(device, batch, 1, ctx, 21);
      for (IndexKeyLayout layout : {IndexKeyLayout::rows, IndexKeyLayout::page_major}) {
        const Timing t = inputs.time(device, layout);
        const double key_bytes = double(batch) * ctx * (kIndexDim + 4);
        const double tbps = key_bytes / (t.median_ms * 1e9);
        rows.push_back({{"batch", batch},
                        {"context", ctx},
                        {"index_key_layout", index_key_layout_name(layout)},
                        {"us", t.median_ms * 1e3},
                        {"key_tbps", tbps},
                        {"pct_copy_ceiling", pct(tbps, c.copy_tbps)}});
        say(fmt::format("indexer decode b={} ctx={} ({} keys): {:.1f} us, keys read at {:.2f} TB/s",
                        batch, ctx, index_key_layout_name(layout), t.median_ms * 1e3, tbps));
      }
    }
  }
  return rows;
}

json bench_topk(Device device, const std::vector<TopkShape>& shapes, const Ceilings& c) {
  json rows = json::array();
  for (const TopkShape& shape : shapes) {
    const Tensor scores = random_tensor({shape.rows, shape.cols}, DType::f32, device, 15);
    const Tensor lengths = upload(std::vector<std::int32_t>(static_cast<std::size_t>(shape.rows),
                                                            static_cast<std::int32_t>(shape.cols)),
                                  {shape.rows}, device);
    Tensor out = Tensor::empty({shape.rows, kTopk}, DType::i32, device);
    const Timing t = time_median(device, [&] { ops::topk(scores, lengths, out); });
    // The same selection written as cache slots (topk_slots), each row its own request with its
    // pages in order: what the layer's sparse path runs.
    const std::int64_t pages = (shape.cols + kPageSize - 1) / kPageSize;
    std::vector<std::int32_t> table(static_cast<std::size_t>(shape.rows * pages)),
        request(shape.rows);
    std::iota(table.begin(), table.end(), 0);
    std::iota(request.begin(), request.end(), 0);
    const Tensor tables = upload(table, {shape.rows, pages}, device);
    const Tensor row_request = upload(request, {shape.rows}, device);
    const Timing slots = time_median(
        device, [&] { ops::topk_slots(scores, lengths, row_request, tables, kPageSize, out); });
    const double bytes = double(shape.rows) * shape.cols * 4;
    const double tbps = bytes / (t.median_ms * 1e9);
    // The floor: one read of the scores at the measured copy rate (bytes moved per second).
    const double floor_us = bytes / (c.copy_tbps * 1e6);
    rows.push_back({{"rows", shape.rows},
                    {"cols", shape.cols},
                    {"k", kTopk},
                    {"us", t.median_ms * 1e3},
                    {"read_tbps", tbps},
                    {"floor_us", floor_us},
                    {"times_floor", t.median_ms * 1e3 / floor_us},
                    {"pct_copy_ceiling", pct(tbps, c.copy_tbps)},
                    {"slots_us", slots.median_ms * 1e3}});
    say(fmt::format(
        "top-k {}x{}: {:.1f} us, scores read at {:.2f} TB/s, {:.2f}x the floor; as slots {:.1f} us",
        shape.rows, shape.cols, t.median_ms * 1e3, tbps, t.median_ms * 1e3 / floor_us,
        slots.median_ms * 1e3));
  }
  return rows;
}

// Sparse MLA decode (and speculative verify, s_q = 2) at top-k 2048 over 8K-token contexts, with
// the bf16 cache (1,152 bytes a row) and the FP8 one (656): FLOPs and the rate at which the
// gathered cache rows are read.
json bench_decode(Device device, const Ceilings& c) {
  json rows = json::array();
  std::mt19937 rng(11);
  for (const bool fp8 : {false, true}) {
    for (std::int64_t b : {1, 8, 64, 128}) {
      for (std::int64_t s_q : {1, 2}) {
        const std::int64_t ctx = 8192, n = b * s_q, slots = b * ctx;
        std::vector<std::int32_t> idx(n * kTopk);
        std::vector<std::int32_t> pool(ctx);
        for (std::int64_t r = 0; r < n; ++r) {
          std::iota(pool.begin(), pool.end(), static_cast<std::int32_t>((r / s_q) * ctx));
          std::shuffle(pool.begin(), pool.end(), rng);
          std::sort(pool.begin(), pool.begin() + kTopk);
          std::copy(pool.begin(), pool.begin() + kTopk, idx.begin() + r * kTopk);
        }
        const Tensor indices = upload(idx, {n, kTopk}, device);
        const Tensor q = random_tensor({n, H, kRank + kRope}, DType::bf16, device, 16);
        Tensor kv = random_tensor({slots, kRank + kRope}, DType::bf16, device, 17);
        if (fp8) {
          Tensor rows_fp8 =
              Tensor::empty({slots, latent_fp8_bytes(kRank, kRope)}, DType::u8, device);
          ops::quantize_latent_fp8(kv, kRank, rows_fp8);
          kv = std::move(rows_fp8);
        }
        Tensor o = Tensor::empty({n, H, kRank}, DType::bf16, device);
        const Timing t = time_median(device, [&] { ops::sparse_mla(q, kv, indices, 0.1352f, o); });
        const double tflops = 2.0 * n * kTopk * H * (kRank + kRope + kRank) / (t.median_ms * 1e9);
        const double row_bytes = fp8 ? latent_fp8_bytes(kRank, kRope) : (kRank + kRope) * 2;
        const double tbps = double(n) * kTopk * row_bytes / (t.median_ms * 1e9);
        rows.push_back({{"batch", b},
                        {"s_q", s_q},
                        {"topk", kTopk},
                        {"kv_cache", fp8 ? "fp8" : "bf16"},
                        {"us", t.median_ms * 1e3},
                        {"tflops", tflops},
                        {"pct_gemm_ceiling", pct(tflops, c.gemm_tflops)},
                        {"gathered_gbps", tbps * 1e3},
                        {"pct_copy_ceiling", pct(tbps, c.copy_tbps)}});
        say(fmt::format(
            "sparse MLA decode ({} cache) b={} s_q={}: {:.1f} us, {:.1f} TFLOPS, rows read at "
            "{:.2f} TB/s",
            fp8 ? "fp8" : "bf16", b, s_q, t.median_ms * 1e3, tflops, tbps));
      }
    }
  }
  return rows;
}

ReservedCache reserve_requests(const AttentionConfig& config, Device device, std::int64_t requests,
                               std::int64_t tokens) {
  CacheOptions opts;
  opts.device = device;
  opts.num_pages = requests * pages_for(tokens);
  ReservedCache r{PagedKvCache(config, opts), std::vector<BlockTable>(requests)};
  for (BlockTable& t : r.tables) r.cache.reserve(t, tokens);
  return r;
}

json bench_layer(Device device, std::int64_t requests, const std::vector<std::int64_t>& prompt_lens,
                 const AttentionConfig& config) {
  json rows = json::array();
  const std::string model = config.model_type == "glm_moe_dsa" ? "GLM-5 " : "";
  AttentionStack stack = AttentionStack::synthetic(config, 1, 3, {}, device);
  const std::int64_t D = config.hidden_size, budget = 16384;
  for (std::int64_t len : prompt_lens) {
    json row = {{"requests", requests}, {"prompt_len", len}};
    auto [cache, tables] = reserve_requests(config, device, requests, len + 1);
    // Whole requests per forward, up to the token budget.
    std::vector<Batch> batches;
    for (std::int64_t r = 0, used = budget; r < requests; ++r) {
      if (used + len > budget) {
        batches.emplace_back();
        used = 0;
      }
      batches.back().requests.push_back({0, len, tables[r]});
      used += len;
    }
    const std::int64_t max_rows = std::min(requests, budget / std::max<std::int64_t>(len, 1)) * len;
    const Tensor x = random_tensor({std::max(max_rows, len), D}, DType::bf16, device, 20);
    for (const char* policy : {"mla", "threshold", "per-request", "auto"}) {
      stack.set_policy(Policy::parse(policy));
      ForwardOptions fo;
      fo.time_stages = false;
      auto prefill = [&] {
        for (const Batch& b : batches) {
          const std::int64_t rows_b = b.total_tokens();
          stack.forward(b, x.view().slice(0, 0, rows_b), cache, fo);
        }
      };
      const Timing t = time_median(device, prefill, 2000);
      row[std::string(policy)] = {{"prefill_ms", t.median_ms},
                                  {"tokens_per_s", requests * len / (t.median_ms / 1e3)}};
      say(fmt::format("{}layer {}x{} prefill {}: {:.2f} ms", model, requests, len, policy,
                      t.median_ms));
    }
    // One decode step for every request (sparse MLA), after the prefill above.
    Batch decode;
    decode.mode = ForwardMode::decode;
    for (std::int64_t r = 0; r < requests; ++r) decode.requests.push_back({len, 1, tables[r]});
    stack.set_policy(Policy::parse("per-request"));
    ForwardOptions fo;
    fo.time_stages = false;
    const Timing td = time_median(
        device, [&] { stack.forward(decode, x.view().slice(0, 0, requests), cache, fo); });
    row["decode_step_ms"] = td.median_ms;
    row["mla_over_per_request"] =
        row["mla"]["prefill_ms"].get<double>() / row["per-request"]["prefill_ms"].get<double>();
    say(fmt::format("{}layer {}x{} decode step {:.3f} ms; mla / per-request prefill = {:.2f}",
                    model, requests, len, td.median_ms, row["mla_over_per_request"].get<double>()));
    rows.push_back(row);
  }
  return rows;
}

json bench_layer_prefix(Device device, std::int64_t requests, std::int64_t prefix,
                        std::int64_t extend) {
  const AttentionConfig config = AttentionConfig::deepseek_v32();
  AttentionStack stack = AttentionStack::synthetic(config, 1, 3, {}, device);
  auto [cache, tables] = reserve_requests(config, device, requests, prefix + extend);
  ForwardOptions fo;
  fo.time_stages = false;
  // The cached prefixes, written by sparse forwards of up to 16K tokens (untimed).
  stack.set_policy(Policy::parse("mla"));
  const std::int64_t per_batch = std::max<std::int64_t>(1, 16384 / prefix);
  const Tensor xp =
      random_tensor({per_batch * prefix, config.hidden_size}, DType::bf16, device, 22);
  for (std::int64_t r = 0; r < requests; r += per_batch) {
    Batch b;
    for (std::int64_t i = r; i < std::min(requests, r + per_batch); ++i) {
      b.requests.push_back({0, prefix, tables[i]});
    }
    stack.forward(b, xp.view().slice(0, 0, b.total_tokens()), cache, fo);
  }
  Batch batch;
  for (std::int64_t r = 0; r < requests; ++r) batch.requests.push_back({prefix, extend, tables[r]});
  const Tensor x = random_tensor({requests * extend, config.hidden_size}, DType::bf16, device, 23);
  json row = {{"requests", requests}, {"prefix_len", prefix}, {"extend_len", extend}};
  for (const char* policy : {"mla", "per-request", "auto"}) {
    stack.set_policy(Policy::parse(policy));
    const Timing t = time_median(
        device, [&] { stack.forward(batch, x, cache, fo); }, 2000);
    const ForwardResult fr = stack.forward(batch, x, cache, fo);
    row[std::string(policy)] = {{"prefill_ms", t.median_ms},
                                {"path", std::string(path_name(fr.paths.front()))}};
    say(fmt::format("layer {} x ({} cached + {} new) {}: {:.2f} ms ({})", requests, prefix, extend,
                    policy, t.median_ms, path_name(fr.paths.front())));
  }
  return row;
}

json bench_layer_mixed(Device device, const std::vector<MixedGroup>& groups,
                       std::shared_ptr<const CostProfile> profile) {
  const AttentionConfig config = AttentionConfig::deepseek_v32();
  AttentionStack stack = AttentionStack::synthetic(config, 1, 3, {}, device);
  std::int64_t requests = 0, pages = 0;
  for (const MixedGroup& g : groups) {
    requests += g.requests;
    pages += g.requests * pages_for(g.prefix + g.extend);
  }
  CacheOptions opts;
  opts.device = device;
  opts.num_pages = pages;
  PagedKvCache cache(config, opts);
  std::vector<BlockTable> tables(static_cast<std::size_t>(requests));
  ForwardOptions fo;
  fo.time_stages = false;
  Batch batch;
  json described = json::array();
  std::size_t r = 0;
  for (const MixedGroup& g : groups) {
    described.push_back(
        {{"requests", g.requests}, {"prefix_len", g.prefix}, {"extend_len", g.extend}});
    for (std::int64_t i = 0; i < g.requests; ++i, ++r) {
      cache.reserve(tables[r], g.prefix + g.extend);
      if (g.prefix > 0) {  // the cached prefix, written alone (untimed)
        stack.set_policy(Policy::parse("mla"));
        Batch b;
        b.requests.push_back({0, g.prefix, tables[r]});
        const Tensor xp = random_tensor({g.prefix, config.hidden_size}, DType::bf16, device, 24);
        stack.forward(b, xp, cache, fo);
      }
      batch.requests.push_back({g.prefix, g.extend, tables[r]});
    }
  }
  const Tensor x =
      random_tensor({batch.total_tokens(), config.hidden_size}, DType::bf16, device, 25);
  json row = {{"groups", described}, {"tokens", batch.total_tokens()}};
  double best_forced = 0;
  for (const char* policy : {"mla", "masked", "per-request", "threshold", "auto"}) {
    Policy p = Policy::parse(policy);
    if (p.kind == Policy::Kind::automatic) p.profile = profile;
    stack.set_policy(p);
    const Timing t = time_median(
        device, [&] { stack.forward(batch, x, cache, fo); }, 3000);
    const ForwardResult fr = stack.forward(batch, x, cache, fo);
    // The path of each group's first request.
    std::vector<std::string> paths;
    for (std::size_t g = 0, first = 0; g < groups.size(); first += groups[g].requests, ++g) {
      paths.emplace_back(path_name(fr.paths[first]));
    }
    row[std::string(policy)] = {{"prefill_ms", t.median_ms}, {"paths", paths}};
    if (p.kind == Policy::Kind::mla || p.kind == Policy::Kind::masked) {
      best_forced = best_forced == 0 ? t.median_ms : std::min(best_forced, t.median_ms);
    }
    say(fmt::format("layer mixed batch {}: {:.2f} ms ({})", policy, t.median_ms,
                    fmt::join(paths, ", ")));
  }
  row["auto_speedup_over_best_forced"] = best_forced / row["auto"]["prefill_ms"].get<double>();
  return row;
}

json bench_layer_chunked(Device device, const std::vector<std::int64_t>& contexts,
                         std::int64_t chunk) {
  json rows = json::array();
  const AttentionConfig config = AttentionConfig::deepseek_v32();
  AttentionStack stack = AttentionStack::synthetic(config, 1, 3, {}, device);
  stack.set_policy(Policy::parse("per-request"));
  const Tensor x = random_tensor({chunk, config.hidden_size}, DType::bf16, device, 21);
  for (std::int64_t len : contexts) {
    auto [cache, tables] = reserve_requests(config, device, 1, len);
    const BlockTable& table = tables[0];
    ForwardOptions fo;
    fo.time_stages = false;
    auto prefill = [&] {
      for (std::int64_t p = 0; p < len; p += chunk) {
        Batch b;
        const std::int64_t n = std::min(chunk, len - p);
        b.requests.push_back({p, n, table});
        stack.forward(b, x.view().slice(0, 0, n), cache, fo);
      }
    };
    prefill();  // warm: the allocator's cache then holds what a prefill needs
    cuda::synchronize();
    const std::size_t before = cuda::device_memory_stats(device).in_use;
    cuda::reset_peak_device_memory(device);
    const Timing t = time_median(device, prefill, 3000);
    const double peak_gib =
        double(cuda::device_memory_stats(device).peak_in_use - before) / (1024.0 * 1024 * 1024);
    rows.push_back({{"context", len},
                    {"chunk", chunk},
                    {"prefill_ms", t.median_ms},
                    {"tokens_per_s", len / (t.median_ms / 1e3)},
                    {"peak_temporary_gib", peak_gib},
                    {"cache_gib", double(before) / (1024.0 * 1024 * 1024)}});
    say(fmt::format("layer 1x{} prefill in chunks of {}: {:.1f} ms, {:.2f} GiB of temporaries", len,
                    chunk, t.median_ms, peak_gib));
  }
  return rows;
}

}  // namespace dsattn::tools
