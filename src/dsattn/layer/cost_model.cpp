#include "dsattn/layer/cost_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "dsattn/core/error.h"

namespace dsattn {

namespace {

using nlohmann::json;

double pairs(double prefix, double extend) { return extend * prefix + extend * (extend + 1) / 2; }

// Σ over the request's rows of min(context of the row, k): row t (0-based) sees P + t + 1 keys.
double capped_pairs(double prefix, double extend, double k) {
  // Rows whose context stays at or below k: t + 1 <= k - P.
  const double below = std::clamp(k - prefix, 0.0, extend);
  return pairs(prefix, below) + (extend - below) * k;
}

// Minimises |A x - b| over x >= 0 for a few columns (at most 4): the best unconstrained least-
// squares solution over every subset of columns whose solution is non-negative (exact NNLS for
// so few columns). Columns are scaled to unit norm first, so that FLOP counts of 1e12 and a
// constant column of ones solve alike.
std::vector<double> nonnegative_least_squares(const std::vector<std::vector<double>>& a,
                                              const std::vector<double>& b) {
  const std::size_t rows = a.size(), cols = a.front().size();
  std::vector<double> norm(cols, 0.0);
  for (const auto& r : a) {
    for (std::size_t j = 0; j < cols; ++j) norm[j] += r[j] * r[j];
  }
  for (double& n : norm) n = n > 0 ? std::sqrt(n) : 1.0;
  std::vector<double> best(cols, 0.0);
  double best_residual = 0;
  for (double v : b) best_residual += v * v;  // x = 0
  for (unsigned mask = 1; mask < (1u << cols); ++mask) {
    std::vector<std::size_t> use;
    for (std::size_t j = 0; j < cols; ++j) {
      if (mask & (1u << j)) use.push_back(j);
    }
    const std::size_t n = use.size();
    // Normal equations (AᵀA) x = Aᵀb on the chosen, scaled columns; Gaussian elimination with
    // partial pivoting.
    std::vector<std::vector<double>> m(n, std::vector<double>(n + 1, 0.0));
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t i = 0; i < n; ++i) {
        const double ai = a[r][use[i]] / norm[use[i]];
        for (std::size_t j = 0; j < n; ++j) m[i][j] += ai * a[r][use[j]] / norm[use[j]];
        m[i][n] += ai * b[r];
      }
    }
    bool singular = false;
    for (std::size_t c = 0; c < n && !singular; ++c) {
      std::size_t pivot = c;
      for (std::size_t r = c + 1; r < n; ++r) {
        if (std::abs(m[r][c]) > std::abs(m[pivot][c])) pivot = r;
      }
      if (std::abs(m[pivot][c]) < 1e-12) {
        singular = true;
        break;
      }
      std::swap(m[c], m[pivot]);
      for (std::size_t r = 0; r < n; ++r) {
        if (r == c) continue;
        const double f = m[r][c] / m[c][c];
        for (std::size_t j = c; j <= n; ++j) m[r][j] -= f * m[c][j];
      }
    }
    if (singular) continue;
    std::vector<double> x(cols, 0.0);
    bool nonnegative = true;
    for (std::size_t i = 0; i < n; ++i) {
      x[use[i]] = m[i][n] / m[i][i] / norm[use[i]];
      nonnegative = nonnegative && x[use[i]] >= 0;
    }
    if (!nonnegative) continue;
    double residual = 0;
    for (std::size_t r = 0; r < rows; ++r) {
      double e = -b[r];
      for (std::size_t j = 0; j < cols; ++j) e += a[r][j] * x[j];
      residual += e * e;
    }
    if (residual < best_residual) {
      best_residual = residual;
      best = x;
    }
  }
  return best;
}

// The non-negative least-squares costs of `what` from timed samples: each sample's seconds against
// features(sample), the first `costs` of which are used.
template <class Timed, class Features>
std::vector<double> fit(std::span<const Timed> samples, std::size_t costs, const char* what,
                        const char* samples_name, Features features) {
  DSATTN_CHECK(samples.size() >= costs,
               "fitting the {}'s {} costs needs at least {} timed {}, got {}", what, costs, costs,
               samples_name, samples.size());
  std::vector<std::vector<double>> a;
  std::vector<double> b;
  for (const Timed& t : samples) {
    DSATTN_CHECK(std::isfinite(t.seconds) && t.seconds >= 0,
                 "a timed sample of the {} took {} seconds; expected a finite time >= 0", what,
                 t.seconds);
    const std::array<double, 4> f = features(t);
    a.emplace_back(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(costs));
    b.push_back(t.seconds);
  }
  return nonnegative_least_squares(a, b);
}

double cost_field(const json& j, const char* group, const char* name) {
  if (!j.contains(group) || !j[group].is_object()) {
    fail("cost profile: missing object '{}'", group);
  }
  const json& g = j[group];
  if (!g.contains(name) || !g[name].is_number()) {
    fail("cost profile: '{}.{}' must be a number", group, name);
  }
  const double v = g[name].get<double>();
  DSATTN_CHECK(std::isfinite(v) && v >= 0, "cost profile: '{}.{}' must be finite and >= 0, got {}",
               group, name, v);
  return v;
}

}  // namespace

std::string profile_shape(const AttentionConfig& c) {
  return fmt::format("H{} qk{} v{} r{} rope{} topk{}", c.num_heads, c.qk_head_dim(), c.v_head_dim,
                     c.kv_lora_rank, c.qk_rope_head_dim, c.index_topk);
}

PathWork& PathWork::operator+=(const PathWork& o) {
  decompress_flops += o.decompress_flops;
  attention_flops += o.attention_flops;
  absorb_flops += o.absorb_flops;
  score_pairs += o.score_pairs;
  mla_flops += o.mla_flops;
  return *this;
}

PathWork path_work(const RequestInput& request, const AttentionConfig& c) {
  const double P = static_cast<double>(request.prefix_len);
  const double E = static_cast<double>(request.extend_len);
  const double H = static_cast<double>(c.num_heads), R = static_cast<double>(c.kv_lora_rank);
  const double nope_v = static_cast<double>(c.qk_nope_head_dim + c.v_head_dim);
  PathWork w;
  w.decompress_flops = 2 * (P + E) * R * H * nope_v;
  w.attention_flops = 2 * pairs(P, E) * H * static_cast<double>(c.qk_head_dim() + c.v_head_dim);
  w.absorb_flops = 2 * E * H * R * nope_v;
  w.score_pairs = pairs(P, E);
  w.mla_flops = 2 * capped_pairs(P, E, static_cast<double>(c.index_topk)) * H *
                (2 * R + static_cast<double>(c.qk_rope_head_dim));
  return w;
}

double CostProfile::dense_seconds(const PathWork& w) const {
  return decompress_s_per_flop * w.decompress_flops + attention_s_per_flop * w.attention_flops;
}

double CostProfile::sparse_seconds(const PathWork& w) const {
  return absorb_s_per_flop * w.absorb_flops + score_s_per_pair * w.score_pairs +
         mla_s_per_flop * w.mla_flops;
}

double CostProfile::masked_seconds(const PathWork& w) const {
  return decompress_s_per_flop * w.decompress_flops + score_s_per_pair * w.score_pairs +
         masked_attention_s_per_flop * w.attention_flops;
}

std::string CostProfile::to_json() const {
  json j;
  j["device"] = device;
  j["source"] = source;
  j["shape"] = shape;
  j["dense"] = {{"fixed_s", dense_fixed_s},
                {"decompress_s_per_flop", decompress_s_per_flop},
                {"attention_s_per_flop", attention_s_per_flop}};
  j["sparse"] = {{"fixed_s", sparse_fixed_s},
                 {"absorb_s_per_flop", absorb_s_per_flop},
                 {"score_s_per_pair", score_s_per_pair},
                 {"mla_s_per_flop", mla_s_per_flop}};
  j["shared"] = {{"fixed_s", shared_fixed_s}, {"s_per_token", shared_s_per_token}};
  if (has_masked) {
    j["masked"] = {{"fixed_s", masked_fixed_s},
                   {"attention_s_per_flop", masked_attention_s_per_flop}};
  }
  return j.dump(1) + "\n";
}

CostProfile CostProfile::parse(std::string_view text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("cost profile: not valid JSON ({})", e.what());
  }
  if (!j.is_object()) fail("cost profile: expected a JSON object");
  CostProfile p;
  for (auto [name, field] : {std::pair{"device", &p.device}, std::pair{"source", &p.source}}) {
    if (!j.contains(name) || !j[name].is_string()) {
      fail("cost profile: '{}' must be a string", name);
    }
    *field = j[name].get<std::string>();
  }
  if (j.contains("shape")) {
    if (!j["shape"].is_string()) fail("cost profile: 'shape' must be a string");
    p.shape = j["shape"].get<std::string>();
  }
  p.dense_fixed_s = cost_field(j, "dense", "fixed_s");
  p.decompress_s_per_flop = cost_field(j, "dense", "decompress_s_per_flop");
  p.attention_s_per_flop = cost_field(j, "dense", "attention_s_per_flop");
  p.sparse_fixed_s = cost_field(j, "sparse", "fixed_s");
  p.absorb_s_per_flop = cost_field(j, "sparse", "absorb_s_per_flop");
  p.score_s_per_pair = cost_field(j, "sparse", "score_s_per_pair");
  p.mla_s_per_flop = cost_field(j, "sparse", "mla_s_per_flop");
  if (j.contains("shared")) {
    p.shared_fixed_s = cost_field(j, "shared", "fixed_s");
    p.shared_s_per_token = cost_field(j, "shared", "s_per_token");
  }
  if (j.contains("masked")) {
    p.has_masked = true;
    p.masked_fixed_s = cost_field(j, "masked", "fixed_s");
    p.masked_attention_s_per_flop = cost_field(j, "masked", "attention_s_per_flop");
  }
  return p;
}

CostProfile CostProfile::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cost profile: cannot read '{}'", path);
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return parse(text.str());
  } catch (const InvalidArgument& e) {
    fail("{} (in '{}')", e.what(), path);
  }
}

void fit_dense_costs(std::span<const TimedGroup> groups, CostProfile& profile) {
  const std::vector<double> x = fit(groups, 3, "dense path", "groups", [](const TimedGroup& g) {
    return std::array<double, 4>{1.0, g.work.decompress_flops, g.work.attention_flops, 0.0};
  });
  profile.dense_fixed_s = x[0];
  profile.decompress_s_per_flop = x[1];
  profile.attention_s_per_flop = x[2];
}

void fit_sparse_costs(std::span<const TimedGroup> groups, CostProfile& profile) {
  const std::vector<double> x = fit(groups, 4, "sparse path", "groups", [](const TimedGroup& g) {
    return std::array<double, 4>{1.0, g.work.absorb_flops, g.work.score_pairs, g.work.mla_flops};
  });
  profile.sparse_fixed_s = x[0];
  profile.absorb_s_per_flop = x[1];
  profile.score_s_per_pair = x[2];
  profile.mla_s_per_flop = x[3];
}

void fit_masked_costs(std::span<const TimedGroup> groups, CostProfile& profile) {
  std::vector<TimedGroup> rest(groups.begin(), groups.end());
  for (TimedGroup& g : rest) {
    DSATTN_CHECK(std::isfinite(g.seconds) && g.seconds >= 0,
                 "a timed sample of the masked path took {} seconds; expected a finite time >= 0",
                 g.seconds);
    // What the decompression and scores do not explain; a negative rest (noise) counts as 0.
    g.seconds = std::max(0.0, g.seconds - profile.decompress_s_per_flop * g.work.decompress_flops -
                                  profile.score_s_per_pair * g.work.score_pairs);
  }
  const std::vector<double> x =
      fit(std::span<const TimedGroup>(rest), 2, "masked path", "groups", [](const TimedGroup& g) {
        return std::array<double, 4>{1.0, g.work.attention_flops, 0.0, 0.0};
      });
  profile.has_masked = true;
  profile.masked_fixed_s = x[0];
  profile.masked_attention_s_per_flop = x[1];
}

void fit_shared_costs(std::span<const TimedShared> forwards, CostProfile& profile) {
  const std::vector<double> x =
      fit(forwards, 2, "shared stages", "forwards", [](const TimedShared& f) {
        return std::array<double, 4>{1.0, f.tokens, 0.0, 0.0};
      });
  profile.shared_fixed_s = x[0];
  profile.shared_s_per_token = x[1];
}

}  // namespace dsattn
