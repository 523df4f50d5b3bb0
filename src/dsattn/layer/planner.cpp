#include "dsattn/layer/planner.h"

#include <algorithm>
#include <charconv>
#include <optional>
#include <utility>

#include "dsattn/core/error.h"

namespace dsattn {

std::string_view path_name(Path p) {
  switch (p) {
    case Path::dense_mha:
      return "dense_mha";
    case Path::sparse_mla:
      return "sparse_mla";
    case Path::row_split:
      return "row_split";
    case Path::masked_mha:
      return "masked_mha";
  }
  return "?";
}

Policy Policy::parse(std::string_view text) {
  Policy p;
  if (text == "auto") {
    p.kind = Kind::automatic;
  } else if (text == "per-request") {
    p.kind = Kind::per_request;
  } else if (text == "mha") {
    p.kind = Kind::mha;
  } else if (text == "mla") {
    p.kind = Kind::mla;
  } else if (text == "masked") {
    p.kind = Kind::masked;
  } else if (text == "threshold") {
    p.kind = Kind::threshold;
  } else if (text.starts_with("threshold=")) {
    p.kind = Kind::threshold;
    const std::string_view number = text.substr(10);
    const auto [end, ec] =
        std::from_chars(number.data(), number.data() + number.size(), p.threshold);
    if (ec != std::errc() || end != number.data() + number.size() || p.threshold <= 0) {
      fail("policy threshold=N needs a positive integer N, got '{}'", text);
    }
  } else {
    fail(
        "policy must be one of auto, per-request, threshold, threshold=N, mha, mla, masked; got "
        "'{}'",
        text);
  }
  return p;
}

std::string Policy::to_string() const {
  switch (kind) {
    case Kind::automatic:
      return "auto";
    case Kind::per_request:
      return "per-request";
    case Kind::threshold:
      return threshold > 0 ? fmt::format("threshold={}", threshold) : "threshold";
    case Kind::mha:
      return "mha";
    case Kind::mla:
      return "mla";
    case Kind::masked:
      return "masked";
  }
  return "?";
}

bool dense_mha_is_exact(const RequestInput& request, const AttentionConfig& config) {
  return request.context_len() <= config.index_topk;
}

std::int64_t dense_rows(const RequestInput& request, const AttentionConfig& config) {
  return std::clamp<std::int64_t>(config.index_topk - request.prefix_len, 0, request.extend_len);
}

std::shared_ptr<const CostProfile> planning_profile(const Policy& policy, Device device,
                                                    const AttentionConfig& config) {
  if (policy.kind != Policy::Kind::automatic) return nullptr;
  if (policy.profile) return policy.profile;
  std::optional<CostProfile> builtin = CostProfile::builtin(device, config);
  return builtin ? std::make_shared<const CostProfile>(std::move(*builtin)) : nullptr;
}

namespace {

// A row_split request's two parts: its dense rows, then its sparse rows.
std::pair<RequestInput, RequestInput> split_request(const RequestInput& r,
                                                    const AttentionConfig& config) {
  const std::int64_t head = dense_rows(r, config);
  return {{r.prefix_len, head, r.block_table},
          {r.prefix_len + head, r.extend_len - head, r.block_table}};
}

}  // namespace

PathCosts predict_paths(const RequestInput& request, const AttentionConfig& config,
                        const CostProfile& profile) {
  PathCosts c;
  c.sparse_mla = profile.sparse_seconds(path_work(request, config));
  if (dense_mha_is_exact(request, config)) {
    c.dense_mha = profile.dense_seconds(path_work(request, config));
  } else if (dense_rows(request, config) > 0) {
    const auto [first, rest] = split_request(request, config);
    c.row_split = profile.dense_seconds(path_work(first, config)) +
                  profile.sparse_seconds(path_work(rest, config));
  }
  if (!dense_mha_is_exact(request, config) && profile.has_masked) {
    c.masked_mha = profile.masked_seconds(path_work(request, config));
  }
  return c;
}

RowSplitBatch split_rows(const Batch& batch, const std::vector<Path>& paths,
                         const AttentionConfig& config) {
  RowSplitBatch out;
  out.batch.mode = batch.mode;
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const RequestInput& r = batch.requests[i];
    if (paths[i] == Path::row_split) {
      const auto [first, rest] = split_request(r, config);
      out.batch.requests.push_back(first);
      out.paths.push_back(Path::dense_mha);
      out.origin.push_back(i);
      out.batch.requests.push_back(rest);
      out.paths.push_back(Path::sparse_mla);
    } else {
      out.batch.requests.push_back(r);
      out.paths.push_back(paths[i]);
    }
    out.origin.push_back(i);
  }
  return out;
}

std::vector<Path> plan_batch(const Batch& batch, const AttentionConfig& config,
                             const Policy& policy, const CostProfile* profile) {
  const std::size_t n = batch.requests.size();
  const bool decode = batch.mode == ForwardMode::decode;
  switch (policy.kind) {
    case Policy::Kind::mla:
      return std::vector<Path>(n, Path::sparse_mla);
    case Policy::Kind::masked:
      return std::vector<Path>(n, Path::masked_mha);
    case Policy::Kind::mha:
      for (std::size_t i = 0; i < n; ++i) {
        const RequestInput& r = batch.requests[i];
        if (!dense_mha_is_exact(r, config)) {
          fail(
              "policy mha is not exact for request {}: its context of {} tokens exceeds "
              "index_topk {} (use per-request or mla)",
              i, r.context_len(), config.index_topk);
        }
      }
      return std::vector<Path>(n, Path::dense_mha);
    case Policy::Kind::threshold: {
      const std::int64_t limit = policy.threshold > 0 ? policy.threshold : config.index_topk;
      if (limit > config.index_topk) {
        fail("policy threshold={} exceeds index_topk {}: dense MHA would not be exact", limit,
             config.index_topk);
      }
      bool all_short = !decode;
      for (const RequestInput& r : batch.requests)
        all_short = all_short && r.context_len() <= limit;
      return std::vector<Path>(n, all_short ? Path::dense_mha : Path::sparse_mla);
    }
    case Policy::Kind::automatic:
    case Policy::Kind::per_request: {
      std::vector<Path> paths(n, Path::sparse_mla);
      if (decode) return paths;
      const bool by_cost = policy.kind == Policy::Kind::automatic && profile != nullptr;
      for (std::size_t i = 0; i < n; ++i) {
        const RequestInput& r = batch.requests[i];
        if (!by_cost) {
          if (dense_mha_is_exact(r, config)) paths[i] = Path::dense_mha;
          continue;
        }
        // The cheapest exact path; dense MHA on a tie, then sparse MLA. Row split: the rows up to
        // index_topk on dense MHA and the others on sparse MLA.
        const PathCosts c = predict_paths(r, config, *profile);
        double best = c.sparse_mla;
        if (c.dense_mha && *c.dense_mha <= best) {
          paths[i] = Path::dense_mha;
          best = *c.dense_mha;
        }
        if (c.row_split && *c.row_split < best) {
          paths[i] = Path::row_split;
          best = *c.row_split;
        }
        if (c.masked_mha && *c.masked_mha < best) paths[i] = Path::masked_mha;
      }
      return paths;
    }
  }
  return {};
}

}  // namespace dsattn
