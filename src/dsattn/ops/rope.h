// Rotary position embedding with YaRN frequencies (DeepSeek-V3.2's precompute_freqs_cis).
#pragma once

#include <vector>

#include "dsattn/core/tensor.h"
#include "dsattn/model/config.h"

namespace dsattn::ops {

// How the rotated dimensions pair up: MLA rotates (x[2i], x[2i+1]); the indexer rotates
// (x[i], x[i + d/2]).
enum class RopeLayout { interleaved, halves };

struct RopeTable {
  std::vector<double> inv_freq;  // [rotary_dim / 2], YaRN-corrected
  double mscale = 1.0;           // multiplies cos and sin

  // Frequencies for `rotary_dim` dimensions from the config's rope_theta and YaRN fields.
  static RopeTable from_config(const AttentionConfig& config, std::int64_t rotary_dim);
  std::int64_t rotary_dim() const { return static_cast<std::int64_t>(inv_freq.size()) * 2; }
};

// Rotates x in place by angle positions[t] · inv_freq[i] for pair i.
//   x: [tokens, heads, rotary_dim] bf16, unit inner stride (token and head strides free, so a
//      slice of a wider tensor works); positions: [tokens] i32, each >= 0
void apply_rope(const TensorView& x, const TensorView& positions, const RopeTable& table,
                RopeLayout layout);

}  // namespace dsattn::ops
