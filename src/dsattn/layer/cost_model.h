// The planner's cost model: the predicted time of each exact path for one request, as a sum of
// stage terms, each the stage's work times a cost per unit of work measured on the device
// (`dsattn calibrate`), plus a fixed cost per path group of a forward. docs/design.md, "Cost
// model", has the formulas and how the costs are fitted.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "dsattn/core/tensor.h"
#include "dsattn/layer/batch.h"
#include "dsattn/model/config.h"

namespace dsattn {

// The work of one request on each path, for a request of prefix P, extend E and context C = P + E
// on a layer of H heads (the shapes of AttentionConfig: latent rank R, head dims, index_topk K).
struct PathWork {
  // Dense MHA: kv_b_proj over the whole context, 2 C R H (d_nope + d_v); the prefix gather and
  // the decompressed K/V traffic grow with C as well and are carried by the same term.
  double decompress_flops = 0;
  // Dense MHA: causal attention, 2 pairs H (d_qk + d_v), pairs = E P + E (E + 1) / 2.
  double attention_flops = 0;
  // Sparse MLA: query absorption and output un-absorption, 2 E H R (d_nope + d_v).
  double absorb_flops = 0;
  // Sparse MLA: one indexer score, and one top-k read of it, per (row, visible key): pairs.
  double score_pairs = 0;
  // Sparse MLA: attention over each row's selected keys, 2 Σ_rows min(context, K) H (2 R + d_rope).
  double mla_flops = 0;

  PathWork& operator+=(const PathWork& o);
};

PathWork path_work(const RequestInput& request, const AttentionConfig& config);

// Seconds per unit of each stage's work, and per path group. Measured on one device (and model
// shape: the costs per FLOP fold in how well the kernels fill that device at those shapes).
struct CostProfile {
  std::string device;  // the device the costs were measured on
  std::string source;  // how: "dsattn calibrate, <date>", or a built-in profile's origin
  std::string shape;   // the layer shape measured (profile_shape), "" when not recorded
  double dense_fixed_s = 0;
  double decompress_s_per_flop = 0;
  double attention_s_per_flop = 0;
  double sparse_fixed_s = 0;
  double absorb_s_per_flop = 0;
  double score_s_per_pair = 0;
  double mla_s_per_flop = 0;
  // The stages every path runs (planning, the token projections and cache writes, o_proj), per
  // forward and per new token: they do not change which path is cheaper, but a forward's predicted
  // time needs them. 0 in profiles that do not record them (the "shared" group is optional).
  double shared_fixed_s = 0;
  double shared_s_per_token = 0;
  // Masked MHA runs the dense path's decompression and the sparse path's indexer and top-k (their
  // costs above), then attention over every causal pair under the key mask: its own fixed cost
  // and cost per attention FLOP (attention_flops, the dense count). Profiles without a "masked"
  // group (has_masked false) leave masked MHA out of auto's choice.
  bool has_masked = false;
  double masked_fixed_s = 0;
  double masked_attention_s_per_flop = 0;

  // Predicted seconds of each path for work `w`, without the per-group fixed cost.
  double dense_seconds(const PathWork& w) const;
  double sparse_seconds(const PathWork& w) const;
  double masked_seconds(const PathWork& w) const;
  // Predicted seconds of the shared stages of a forward of `tokens` new tokens.
  double shared_seconds(double tokens) const {
    return shared_fixed_s + shared_s_per_token * tokens;
  }

  // JSON ({"device", "source", "dense": {...}, "sparse": {...}, "shared": {...}, "masked":
  // {...}}; "shared" may be absent: zeros; "masked" may be absent: has_masked false); parse()
  // throws InvalidArgument
  // naming the missing or invalid field (every cost must be finite and >= 0).
  std::string to_json() const;
  static CostProfile parse(std::string_view json);
  static CostProfile load(const std::string& path);

  // The profile shipped for a device (by its name, or the CPU backend) and a layer of `config`'s
  // shape; none for other devices and shapes: costs per FLOP measured on one shape's kernels do
  // not carry over to another's (GLM-5's head sizes run other kernels than DeepSeek-V3.2's).
  static std::optional<CostProfile> builtin(Device device, const AttentionConfig& config);
};

// "H128 qk192 v128 r512 rope64 topk2048": the dimensions of `config` the costs depend on.
std::string profile_shape(const AttentionConfig& config);

// One timed forward of a path group during calibration: the summed work of its requests and the
// seconds the path took.
struct TimedGroup {
  PathWork work;
  double seconds = 0;
};

// Least-squares fit of a path's costs (fixed cost and per-unit costs, all >= 0) to timed groups:
// sets the dense or the sparse fields of `profile`. Throws InvalidArgument with fewer groups than
// costs to fit.
void fit_dense_costs(std::span<const TimedGroup> groups, CostProfile& profile);
void fit_sparse_costs(std::span<const TimedGroup> groups, CostProfile& profile);
// Masked MHA's fixed cost and attention cost (sets has_masked), fitted to what remains of each
// group's time after the decompression and score terms that `profile` already predicts (fit the
// dense and sparse costs first). Throws InvalidArgument with fewer than two groups.
void fit_masked_costs(std::span<const TimedGroup> groups, CostProfile& profile);

// One timed forward's shared stages: its new tokens and the seconds they took.
struct TimedShared {
  double tokens = 0;
  double seconds = 0;
};
// Least-squares fit of shared_fixed_s and shared_s_per_token (both >= 0); InvalidArgument with
// fewer than two forwards.
void fit_shared_costs(std::span<const TimedShared> forwards, CostProfile& profile);

}  // namespace dsattn
