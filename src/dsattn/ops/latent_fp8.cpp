#include "dsattn/ops/latent_fp8.h"

#include "dsattn/ops/op_checks.h"
#include "dsattn/ops/quantize.h"

namespace dsattn::ops {

namespace {

void check_pair(const TensorView& latent, const TensorView& rows, std::int64_t r) {
  check_dtype(latent, "latent", DType::bf16);
  check_shape(latent, "latent", {kAny, kAny});
  check_inner_contiguous(latent, "latent");
  DSATTN_CHECK(r > 0 && r % kQuantBlock == 0 && r < latent.size(1),
               "kv_lora_rank must be a positive multiple of {} below the latent width {}, got {}",
               kQuantBlock, latent.size(1), r);
  check_dtype(rows, "rows", DType::u8);
  check_shape(rows, "rows", {latent.size(0), latent_fp8_bytes(r, latent.size(1) - r)});
  check_inner_contiguous(rows, "rows");
  // The f32 scales and bf16 rope values sit inside the byte rows: keep them aligned.
  DSATTN_CHECK(rows.stride(0) % 4 == 0,
               "rows must have a row stride that is a multiple of 4 bytes, got {}", rows.stride(0));
}

}  // namespace

void quantize_latent_fp8(const TensorView& latent, std::int64_t kv_lora_rank,
                         const TensorView& rows) {
  check_pair(latent, rows, kv_lora_rank);
  const Device d = common_device({{"latent", &latent}, {"rows", &rows}});
  if (latent.size(0) == 0) return;
  DSATTN_DISPATCH(d, quantize_latent_fp8, latent, kv_lora_rank, rows);
}

void dequantize_latent_fp8(const TensorView& rows, std::int64_t kv_lora_rank,
                           const TensorView& latent) {
  check_pair(latent, rows, kv_lora_rank);
  const Device d = common_device({{"rows", &rows}, {"latent", &latent}});
  if (latent.size(0) == 0) return;
  DSATTN_DISPATCH(d, dequantize_latent_fp8, rows, kv_lora_rank, latent);
}

}  // namespace dsattn::ops
