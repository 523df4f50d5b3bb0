// The planner: which path computes each request.
//
// Dense MHA is exact for a request when every one of its queries sees at most index_topk keys,
// i.e. prefix_len + extend_len <= index_topk: top-k then selects every earlier key. Sparse MLA is
// exact always. Under `auto` the cost model (cost_model.h) picks the cheaper of the exact paths.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dsattn/layer/batch.h"
#include "dsattn/layer/cost_model.h"

namespace dsattn {

// row_split: a prefill request whose context passes index_topk inside its extend runs its first
// dense_rows() rows (each sees at most index_topk keys, so top-k would select them all) on dense
// MHA and the rest on sparse MLA, in the same forward; exact like both.
// masked_mha: the indexer and top-k of sparse MLA, then dense MHA over the request's whole
// decompressed context with each row limited to its selected keys (a key mask): the same keys as
// sparse MLA, at dense MHA's FLOPs per (row, key) pair but over every causal pair. Exact always.
enum class Path { dense_mha, sparse_mla, row_split, masked_mha };
std::string_view path_name(Path p);

struct Policy {
  enum class Kind {
    automatic,    // "auto": each request on its cheaper exact path by the cost model (default)
    per_request,  // each request: dense MHA when exact, else sparse MLA
    threshold,    // SGLang's rule: the whole batch takes dense MHA iff every context <= threshold
    mha,          // dense MHA for every request; an error where it is not exact
    mla,          // sparse MLA for every request
    masked,       // masked MHA for every request
  };
  Kind kind = Kind::automatic;
  std::int64_t threshold = 0;  // for Kind::threshold; 0 means index_topk
  // For Kind::automatic: the costs to plan with; when null, the built-in profile for the layer's
  // device and shape (CostProfile::builtin), and without one the per-request rule.
  std::shared_ptr<const CostProfile> profile;

  // Parses "auto", "per-request", "threshold", "threshold=N", "mha", "mla" or "masked".
  static Policy parse(std::string_view text);
  std::string to_string() const;
};

bool dense_mha_is_exact(const RequestInput& request, const AttentionConfig& config);

// The rows of `request` whose own context is at most index_topk: min(extend, index_topk - prefix),
// at least 0. A request can take row_split when this is strictly between 0 and its extend.
std::int64_t dense_rows(const RequestInput& request, const AttentionConfig& config);

// The requests the paths of a forward run: a row_split request becomes two adjacent ones, its
// dense rows and then its sparse rows, over the same block table (their hidden rows are adjacent
// in the packed input too); other requests stay as they are.
struct RowSplitBatch {
  Batch batch;
  // Per request of `batch`: the path that runs it (dense_mha, sparse_mla or masked_mha).
  std::vector<Path> paths;
  std::vector<std::size_t> origin;  // per request of `batch`: its request in the planned batch
};
RowSplitBatch split_rows(const Batch& batch, const std::vector<Path>& paths,
                         const AttentionConfig& config);

// The predicted seconds of one request on each exact path under `profile`, without the per-group
// fixed costs (a forward pays each path group's once): dense MHA where it is exact, row split
// where the context passes index_topk inside the extend (dense_rows strictly between 0 and the
// extend), masked MHA where dense MHA is not exact and the profile has its costs, sparse MLA
// always. What auto compares.
struct PathCosts {
  std::optional<double> dense_mha;
  double sparse_mla = 0;
  std::optional<double> row_split;
  std::optional<double> masked_mha;
};
PathCosts predict_paths(const RequestInput& request, const AttentionConfig& config,
                        const CostProfile& profile);

// The costs `policy` plans with for layers of `config` on `device`: under auto, the policy's own
// profile, else the built-in one for that device and shape (CostProfile::builtin); null for
// other policies and where there is none (auto then follows the per-request rule).
std::shared_ptr<const CostProfile> planning_profile(const Policy& policy, Device device,
                                                    const AttentionConfig& config);

// One path per request, in the batch's order. Decode batches (one or a few tokens per request)
// take sparse MLA under auto, per-request and threshold: decode reads the cache once and MLA's
// 576 values per token beat MHA's decompressed keys. Under auto, a prefill request takes dense
// MHA when it is exact and `profile` predicts it cheaper, and a request whose context passes
// index_topk inside its extend takes row_split when `profile` predicts its dense rows plus its
// sparse rows cheaper than sparse MLA for all, and a request past index_topk takes masked MHA
// when `profile` predicts it the cheapest (per-request's rule when `profile` is null). Throws
// InvalidArgument for a forced `mha` on a request where it is not exact, and for threshold >
// index_topk.
std::vector<Path> plan_batch(const Batch& batch, const AttentionConfig& config,
                             const Policy& policy, const CostProfile* profile = nullptr);

}  // namespace dsattn
