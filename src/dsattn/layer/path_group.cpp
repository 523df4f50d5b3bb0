#include <algorithm>
#include <numeric>

#include "dsattn/layer/host_meta.h"
#include "dsattn/layer/paths.h"
#include "dsattn/ops/cache_ops.h"
#include "dsattn/ops/latent_fp8.h"

namespace dsattn {

void PathGroup::build(const Batch& batch, std::int64_t page_size, bool host_tables) {
  const std::vector<std::int64_t> offsets = batch.token_offsets();
  for (std::size_t i : requests) {
    const RequestInput& r = batch.requests[i];
    for (std::int64_t t = 0; t < r.extend_len; ++t) {
      rows.push_back(static_cast<std::int32_t>(offsets[i] + t));
    }
    cu_q.push_back(cu_q.back() + static_cast<std::int32_t>(r.extend_len));
    cu_k.push_back(cu_k.back() + static_cast<std::int32_t>(r.context_len()));
    max_q = std::max(max_q, r.extend_len);
    max_k = std::max(max_k, r.context_len());
    if (!host_tables) continue;
    std::vector<std::int32_t> positions(r.context_len()), slots(r.context_len());
    std::iota(positions.begin(), positions.end(), 0);
    ops::positions_to_slots(r.block_table, page_size, positions, slots);
    key_slots.insert(key_slots.end(), slots.begin(), slots.end());
  }
}

void PathGroup::upload(Device device) {
  device_rows = upload_i32(rows, device);
  if (!key_slots.empty()) device_key_slots = upload_i32(key_slots, device);
  device_cu_q = upload_i32(cu_q, device);
  device_cu_k = upload_i32(cu_k, device);
}

void PathGroup::map_key_slots(const Batch& batch, const Tensor& tables,
                              const std::vector<std::size_t>& table_row, std::int64_t page_size) {
  std::vector<std::int32_t> positions, key_request;
  for (std::size_t w : requests) {
    const std::int64_t context = batch.requests[w].context_len();
    for (std::int64_t p = 0; p < context; ++p) {
      positions.push_back(static_cast<std::int32_t>(p));
      key_request.push_back(static_cast<std::int32_t>(table_row[w]));
    }
  }
  const std::int64_t n = static_cast<std::int64_t>(positions.size());
  device_key_slots = upload_i32(positions, tables.device());  // mapped in place
  ops::map_positions_to_slots(device_key_slots.view().reshape({n, 1}),
                              upload_i32(key_request, tables.device()), tables, page_size);
}

Tensor gather_group_rows(const TensorView& src, const TensorView& rows) {
  const std::int64_t width = src.numel() / std::max<std::int64_t>(src.size(0), 1);
  std::vector<std::int64_t> shape(src.shape().begin(), src.shape().end());
  shape[0] = rows.size(0);
  Tensor out = Tensor::empty(shape, src.dtype(), src.device());
  ops::gather_rows(src.reshape({src.size(0), width}), rows,
                   out.view().reshape({rows.size(0), width}));
  return out;
}

Tensor read_latent(const LayerContext& ctx, const LayerCacheView& cache, const Tensor& slots) {
  const AttentionConfig& c = ctx.config;
  const Device dev = cache.latent.device();
  Tensor latent = Tensor::empty({slots.size(0), c.latent_dim()}, DType::bf16, dev);
  if (cache.latent_format == LatentFormat::bf16) {
    ops::gather_rows(cache.latent, slots, latent);
  } else {
    Tensor rows = Tensor::empty({slots.size(0), cache.latent.size(1)}, DType::u8, dev);
    ops::gather_rows(cache.latent, slots, rows);
    ops::dequantize_latent_fp8(rows, c.kv_lora_rank, latent);
  }
  return latent;
}

}  // namespace dsattn
