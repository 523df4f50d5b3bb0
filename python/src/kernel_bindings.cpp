// The layer's kernels on their own, for engines that bring their own layer: thin over the ops,
// whose checks (shapes, strides, offsets) name the same arguments. Outputs are the caller's.
#include <nanobind/stl/string.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "call_scope.h"
#include "dsattn/cache/paged_kv_cache.h"
#include "dsattn/ops/attention.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/indexer.h"
#include "dsattn/ops/latent_fp8.h"
#include "dsattn/ops/quantize.h"
#include "dsattn/ops/topk.h"
#include "tensor_args.h"

namespace dsattn::python {

namespace {

void mha_prefill(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle cu_q_obj,
                 nb::handle cu_k_obj, std::int64_t max_q, float scale, nb::handle out_obj,
                 nb::handle lse_obj, nb::handle key_mask_obj, nb::handle stream) {
  const TensorArg q = tensor_arg(q_obj, "q", {DType::bf16}, 3, "[total_q, heads, d_qk]");
  const TensorArg k = tensor_arg(k_obj, "k", {DType::bf16}, 3, "[total_k, heads, d_qk]");
  const TensorArg v = tensor_arg(v_obj, "v", {DType::bf16}, 3, "[total_k, heads, d_v]");
  const TensorArg cu_q = tensor_arg(cu_q_obj, "cu_q", {DType::i32}, 1, "[batch + 1]");
  const TensorArg cu_k = tensor_arg(cu_k_obj, "cu_k", {DType::i32}, 1, "[batch + 1]");
  const TensorArg out = tensor_arg(out_obj, "out", {DType::bf16}, 3, "[total_q, heads, d_v]", true);
  check_same_device({{"k", &k}, {"v", &v}, {"cu_q", &cu_q}, {"cu_k", &cu_k}, {"out", &out}},
                    q.device(), "q's device");
  const TensorArg lse = optional_tensor_arg(lse_obj, "lse", {DType::f32}, 2, "[total_q, heads]",
                                            true, q.device(), "q's device");
  const TensorArg key_mask =
      optional_tensor_arg(key_mask_obj, "key_mask", {DType::i32}, 2, "[total_q, words]", false,
                          q.device(), "q's device");
  CallScope scope(q.device(), resolve_stream(stream, q_obj, q.device()));
  nb::gil_scoped_release release;
  ops::mha_varlen_causal(q.view, k.view, v.view, cu_q.view, cu_k.view, max_q, scale, out.view,
                         lse.view, key_mask.view);
}

void selection_mask(nb::handle selected_obj, nb::handle mask_obj, nb::handle stream) {
  const TensorArg selected = tensor_arg(selected_obj, "selected", {DType::i32}, 2, "[n, k]");
  const TensorArg mask = tensor_arg(mask_obj, "mask", {DType::i32}, 2, "[n, words]", true);
  check_same_device({{"mask", &mask}}, selected.device(), "selected's device");
  CallScope scope(selected.device(), resolve_stream(stream, selected_obj, selected.device()));
  nb::gil_scoped_release release;
  ops::selection_mask(selected.view, mask.view);
}

void sparse_mla(nb::handle q_obj, nb::handle kv_obj, nb::handle indices_obj, float scale,
                nb::handle out_obj, nb::handle lse_obj, nb::handle topk_length_obj,
                nb::handle stream) {
  const TensorArg q = tensor_arg(q_obj, "q", {DType::bf16}, 3, "[n, heads, d_qk]");
  const TensorArg kv = tensor_arg(kv_obj, "kv_cache", {DType::bf16, DType::u8}, 2,
                                  "[num_slots, d_qk] (bf16) or [num_slots, fp8 row bytes] (uint8)");
  const TensorArg indices = tensor_arg(indices_obj, "indices", {DType::i32}, 2, "[n, topk]");
  const TensorArg out = tensor_arg(out_obj, "out", {DType::bf16}, 3, "[n, heads, d_v]", true);
  check_same_device({{"kv_cache", &kv}, {"indices", &indices}, {"out", &out}}, q.device(),
                    "q's device");
  const TensorArg lse = optional_tensor_arg(lse_obj, "lse", {DType::f32}, 2, "[n, heads]", true,
                                            q.device(), "q's device");
  const TensorArg topk_length = optional_tensor_arg(topk_length_obj, "topk_length", {DType::i32}, 1,
                                                    "[n]", false, q.device(), "q's device");
  CallScope scope(q.device(), resolve_stream(stream, q_obj, q.device()));
  nb::gil_scoped_release release;
  ops::sparse_mla(q.view, kv.view, indices.view, scale, out.view, lse.view, topk_length.view);
}

void indexer_scores(nb::handle q_obj, nb::handle q_scale_obj, nb::handle weights_obj,
                    nb::handle key_cache_obj, nb::handle block_tables_obj, std::int64_t page_size,
                    nb::handle cu_q_obj, nb::handle context_lens_obj, std::int64_t skip_rows_up_to,
                    nb::handle scores_obj, const std::string& key_layout, nb::handle stream) {
  const IndexKeyLayout layout = parse_index_key_layout(key_layout);
  const TensorArg q =
      tensor_arg(q_obj, "q", {DType::fp8_e4m3}, 3, "[total_q, index_heads, index_head_dim]");
  const TensorArg q_scale = tensor_arg(q_scale_obj, "q_scale", {DType::f32}, 3,
                                       "[total_q, index_heads, index_head_dim / 128]");
  const TensorArg weights =
      tensor_arg(weights_obj, "weights", {DType::f32}, 2, "[total_q, index_heads]");
  const TensorArg key_cache =
      tensor_arg(key_cache_obj, "key_cache", {DType::u8}, 2, "[num_slots, key bytes]");
  const TensorArg block_tables =
      tensor_arg(block_tables_obj, "block_tables", {DType::i32}, 2, "[batch, max_pages]");
  const TensorArg cu_q = tensor_arg(cu_q_obj, "cu_q", {DType::i32}, 1, "[batch + 1]");
  const TensorArg context_lens =
      tensor_arg(context_lens_obj, "context_lens", {DType::i32}, 1, "[batch]");
  const TensorArg scores =
      tensor_arg(scores_obj, "scores", {DType::f32}, 2, "[total_q, max_k]", true);
  check_same_device({{"q_scale", &q_scale},
                     {"weights", &weights},
                     {"key_cache", &key_cache},
                     {"block_tables", &block_tables},
                     {"cu_q", &cu_q},
                     {"context_lens", &context_lens},
                     {"scores", &scores}},
                    q.device(), "q's device");
  CallScope scope(q.device(), resolve_stream(stream, q_obj, q.device()));
  nb::gil_scoped_release release;
  ops::indexer_scores(q.view, q_scale.view, weights.view, key_cache.view, block_tables.view,
                      page_size, cu_q.view, context_lens.view, skip_rows_up_to, scores.view,
                      layout);
}

void topk(nb::handle scores_obj, nb::handle lengths_obj, nb::handle out_obj, nb::handle stream) {
  const TensorArg scores = tensor_arg(scores_obj, "scores", {DType::f32}, 2, "[rows, n]");
  const TensorArg lengths = tensor_arg(lengths_obj, "lengths", {DType::i32}, 1, "[rows]");
  const TensorArg out = tensor_arg(out_obj, "out", {DType::i32}, 2, "[rows, k]", true);
  check_same_device({{"lengths", &lengths}, {"out", &out}}, scores.device(), "scores' device");
  CallScope scope(scores.device(), resolve_stream(stream, scores_obj, scores.device()));
  nb::gil_scoped_release release;
  ops::topk(scores.view, lengths.view, out.view);
}

void topk_slots(nb::handle scores_obj, nb::handle lengths_obj, nb::handle row_request_obj,
                nb::handle block_tables_obj, std::int64_t page_size, nb::handle out_obj,
                nb::handle stream) {
  const TensorArg scores = tensor_arg(scores_obj, "scores", {DType::f32}, 2, "[rows, n]");
  const TensorArg lengths = tensor_arg(lengths_obj, "lengths", {DType::i32}, 1, "[rows]");
  const TensorArg row_request =
      tensor_arg(row_request_obj, "row_request", {DType::i32}, 1, "[rows]");
  const TensorArg block_tables =
      tensor_arg(block_tables_obj, "block_tables", {DType::i32}, 2, "[requests, max_pages]");
  const TensorArg out = tensor_arg(out_obj, "out", {DType::i32}, 2, "[rows, k]", true);
  check_same_device({{"lengths", &lengths},
                     {"row_request", &row_request},
                     {"block_tables", &block_tables},
                     {"out", &out}},
                    scores.device(), "scores' device");
  CallScope scope(scores.device(), resolve_stream(stream, scores_obj, scores.device()));
  nb::gil_scoped_release release;
  ops::topk_slots(scores.view, lengths.view, row_request.view, block_tables.view, page_size,
                  out.view);
}

// On the CPU, slots are checked before anything is written: each in the cache or -1 (that row is
// not written), none twice (a repeated slot would keep one of its rows silently). On CUDA they are
// trusted, as all metadata.
void check_slots(const TensorArg& slots, std::int64_t num_slots) {
  if (!slots.device().is_cpu()) return;
  const TensorView& v = slots.view;
  std::vector<bool> seen(static_cast<std::size_t>(num_slots), false);
  for (std::int64_t i = 0; i < v.size(0); ++i) {
    const std::int32_t s = static_cast<const std::int32_t*>(v.data())[i * v.stride(0)];
    if (s == -1) continue;
    if (s < 0 || s >= num_slots) {
      fail("slots[{}] = {} is outside the cache's [0, {}) slots (or -1: not written)", i, s,
           num_slots);
    }
    if (seen[static_cast<std::size_t>(s)]) fail("slots[{}] = {} is given twice", i, s);
    seen[static_cast<std::size_t>(s)] = true;
  }
}

void write_latent(nb::handle latent_obj, nb::handle slots_obj, nb::handle cache_obj,
                  std::int64_t kv_lora_rank, nb::handle stream) {
  const TensorArg latent =
      tensor_arg(latent_obj, "latent", {DType::bf16}, 2, "[n, kv_lora_rank + rope_dim]");
  const TensorArg slots = tensor_arg(slots_obj, "slots", {DType::i32}, 1, "[n]");
  const TensorArg cache = tensor_arg(
      cache_obj, "cache", {DType::bf16, DType::u8}, 2,
      "[num_slots, kv_lora_rank + rope_dim] (bf16) or [num_slots, fp8 row bytes] (uint8)", true);
  check_same_device({{"slots", &slots}, {"cache", &cache}}, latent.device(), "latent's device");
  check_slots(slots, cache.view.size(0));
  CallScope scope(latent.device(), resolve_stream(stream, latent_obj, latent.device()));
  nb::gil_scoped_release release;
  if (cache.view.dtype() == DType::bf16) {
    ops::scatter_rows(latent.view, slots.view, cache.view);
    return;
  }
  // FP8: quantised rows first (the op checks the widths), then one scatter.
  Tensor rows =
      Tensor::empty({latent.view.size(0), cache.view.size(1)}, DType::u8, latent.device());
  ops::quantize_latent_fp8(latent.view, kv_lora_rank, rows);
  ops::scatter_rows(rows, slots.view, cache.view);
}

void write_index_keys(nb::handle rows_obj, nb::handle slots_obj, nb::handle cache_obj,
                      std::int64_t page_size, const std::string& key_layout, nb::handle stream) {
  const IndexKeyLayout layout = parse_index_key_layout(key_layout);
  const TensorArg rows = tensor_arg(rows_obj, "rows", {DType::u8}, 2, "[n, row bytes]");
  const TensorArg slots = tensor_arg(slots_obj, "slots", {DType::i32}, 1, "[n]");
  const TensorArg cache =
      tensor_arg(cache_obj, "cache", {DType::u8}, 2, "[num_slots, row bytes]", true);
  check_same_device({{"slots", &slots}, {"cache", &cache}}, rows.device(), "rows' device");
  check_slots(slots, cache.view.size(0));
  CallScope scope(rows.device(), resolve_stream(stream, rows_obj, rows.device()));
  nb::gil_scoped_release release;
  ops::write_index_keys(rows.view, slots.view, cache.view, page_size, layout);
}

void quantize_index_keys(nb::handle keys_obj, nb::handle out_obj, bool rotate, nb::handle stream) {
  const TensorArg keys = tensor_arg(keys_obj, "keys", {DType::bf16}, 2, "[n, index_head_dim]");
  const TensorArg out = tensor_arg(out_obj, "out", {DType::u8}, 2,
                                   "[n, index_head_dim + 4 * index_head_dim / 128]", true);
  check_same_device({{"out", &out}}, keys.device(), "keys' device");
  CallScope scope(keys.device(), resolve_stream(stream, keys_obj, keys.device()));
  nb::gil_scoped_release release;
  if (!rotate) {
    ops::quantize_index_key_rows(keys.view, out.view);
    return;
  }
  // The rotation works in place: on a copy, so that the caller's keys stay as they are.
  Tensor rotated =
      Tensor::empty({keys.view.size(0), keys.view.size(1)}, DType::bf16, keys.device());
  copy(keys.view, rotated);
  ops::hadamard_rotate(rotated);
  ops::quantize_index_key_rows(rotated, out.view);
}

void map_positions_to_slots(nb::handle indices_obj, nb::handle row_request_obj,
                            nb::handle block_tables_obj, std::int64_t page_size,
                            nb::handle stream) {
  const TensorArg indices = tensor_arg(indices_obj, "indices", {DType::i32}, 2, "[rows, k]", true);
  const TensorArg row_request =
      tensor_arg(row_request_obj, "row_request", {DType::i32}, 1, "[rows]");
  const TensorArg block_tables =
      tensor_arg(block_tables_obj, "block_tables", {DType::i32}, 2, "[requests, max_pages]");
  check_same_device({{"row_request", &row_request}, {"block_tables", &block_tables}},
                    indices.device(), "indices' device");
  CallScope scope(indices.device(), resolve_stream(stream, indices_obj, indices.device()));
  nb::gil_scoped_release release;
  ops::map_positions_to_slots(indices.view, row_request.view, block_tables.view, page_size);
}

}  // namespace

void bind_kernels(nb::module_& m) {
  m.def("write_latent", &write_latent, nb::arg("latent"), nb::arg("slots"), nb::arg("cache"),
        nb::arg("kv_lora_rank"), nb::arg("stream") = nb::none());
  m.def("write_index_keys", &write_index_keys, nb::arg("rows"), nb::arg("slots"), nb::arg("cache"),
        nb::arg("page_size"), nb::arg("key_layout"), nb::arg("stream") = nb::none());
  m.def("quantize_index_keys", &quantize_index_keys, nb::arg("keys"), nb::arg("out"),
        nb::arg("rotate"), nb::arg("stream") = nb::none());
  m.def("map_positions_to_slots", &map_positions_to_slots, nb::arg("indices"),
        nb::arg("row_request"), nb::arg("block_tables"), nb::arg("page_size"),
        nb::arg("stream") = nb::none());
  m.def("mha_prefill", &mha_prefill, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("cu_q"),
        nb::arg("cu_k"), nb::arg("max_q"), nb::arg("scale"), nb::arg("out"),
        nb::arg("lse") = nb::none(), nb::arg("key_mask") = nb::none(),
        nb::arg("stream") = nb::none());
  m.def("selection_mask", &selection_mask, nb::arg("selected"), nb::arg("mask"),
        nb::arg("stream") = nb::none());
  m.def("sparse_mla", &sparse_mla, nb::arg("q"), nb::arg("kv_cache"), nb::arg("indices"),
        nb::arg("scale"), nb::arg("out"), nb::arg("lse") = nb::none(),
        nb::arg("topk_length") = nb::none(), nb::arg("stream") = nb::none());
  m.def("indexer_scores", &indexer_scores, nb::arg("q"), nb::arg("q_scale"), nb::arg("weights"),
        nb::arg("key_cache"), nb::arg("block_tables"), nb::arg("page_size"), nb::arg("cu_q"),
        nb::arg("context_lens"), nb::arg("skip_rows_up_to"), nb::arg("scores"),
        nb::arg("key_layout"), nb::arg("stream") = nb::none());
  m.def("topk", &topk, nb::arg("scores"), nb::arg("lengths"), nb::arg("out"),
        nb::arg("stream") = nb::none());
  m.def("topk_slots", &topk_slots, nb::arg("scores"), nb::arg("lengths"), nb::arg("row_request"),
        nb::arg("block_tables"), nb::arg("page_size"), nb::arg("out"),
        nb::arg("stream") = nb::none());
}

}  // namespace dsattn::python
