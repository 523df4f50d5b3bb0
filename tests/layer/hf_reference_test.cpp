// dsattn against Hugging Face transformers' own implementation: tiny DeepSeek-V3.2 and GLM-5
// models that transformers built and saved (tests/data/hf/make_reference.py). dsattn reads the
// checkpoint and its config.json as transformers wrote them, and on the same attention inputs
//   - its float64 reference, given the keys transformers' indexer chose, reproduces
//     transformers' float64 output on every row (RoPE, YaRN or not, softmax scale, IndexShare);
//   - the engine matches that output within the tolerance scheme on every row where it chose
//     the same keys (all rows whose context is at most index_topk; transformers' indexer has
//     neither the Hadamard rotation nor FP8, so near-ties may fall the other way elsewhere);
//   - transformers' indexer chose the keys dsattn's float64 indexer ranks highest (the RoPE
//     pairing of each model's indexer), and the engine chooses the same keys on most rows.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "dsattn/layer/attention_layer.h"
#include "dsattn/model/checkpoint.h"
#include "dsattn/model/safetensors.h"
#include "dsattn/reference/compare.h"
#include "dsattn/reference/reference_layer.h"

namespace dsattn {
namespace {

using reference::Precision;

struct Model {
  const char* name;
  bool glm;
};

class HfReference : public ::testing::TestWithParam<Model> {};

std::string model_dir(const Model& m) {
  return fmt::format("{}/hf/{}", DSATTN_TEST_DATA_DIR, m.name);
}

// Row t's key positions from a [L, min(L, K)] f32 tensor of transformers' top-k: all earlier keys
// when the row sees at most K (whatever its masked columns hold), else its K selected ones.
std::set<std::int32_t> hf_keys(const Tensor& topk, std::int64_t t, std::int64_t K) {
  std::set<std::int32_t> keys;
  if (t + 1 <= K) {
    for (std::int32_t s = 0; s <= t; ++s) keys.insert(s);
    return keys;
  }
  for (std::int64_t j = 0; j < topk.size(1); ++j) {
    keys.insert(static_cast<std::int32_t>(topk.ptr<float>()[t * topk.size(1) + j]));
  }
  return keys;
}

TEST_P(HfReference, SameConfigSameAttention) {
  const Model m = GetParam();
  const Checkpoint ck = Checkpoint::open(model_dir(m));
  const AttentionConfig& c = ck.config();
  ASSERT_EQ(c.index_topk, 16);
  EXPECT_EQ(c.indexer_rope_interleave, m.glm);
  EXPECT_EQ(c.use_yarn, !m.glm);
  EXPECT_EQ(c.shares_topk(1), m.glm);
  const SafetensorsFile ref = SafetensorsFile::open(model_dir(m) + "/reference.safetensors");
  const LayerWeights w[2] = {load_layer_weights(ck, 0), load_layer_weights(ck, 1)};
  const AttentionLayer layers[2] = {AttentionLayer(c, w[0]), AttentionLayer(c, w[1])};

  std::int64_t sparse_rows = 0, same_sparse_rows = 0;
  for (const std::int64_t L : {12, 16, 40}) {
    CacheOptions opts;
    opts.num_layers = 2;
    opts.num_pages = 2;
    PagedKvCache cache(c, opts);
    BlockTable table;
    cache.reserve(table, L);
    Batch batch;
    batch.requests.push_back({0, L, table});
    ForwardOptions fo;
    fo.record_topk = true;
    SharedTopk shared;
    for (int l = 0; l < 2; ++l) {
      SCOPED_TRACE(testing::Message() << "L " << L << " layer " << l);
      const Tensor x = ref.load(fmt::format("L{}.x{}", L, l));
      const Tensor y_hf = ref.load(fmt::format("L{}.y{}", L, l));
      const Tensor topk_hf = ref.load(fmt::format("L{}.topk{}", L, l));
      Tensor y = Tensor::empty({L, c.hidden_size}, DType::bf16);
      const ForwardResult r = layers[l].forward(batch, x, cache.layer(l), y, fo, &shared);

      // dsattn's float64 reference on transformers' key sets reproduces transformers' output.
      reference::Request req;
      req.hidden = x;
      req.extend_len = L;
      for (std::int64_t t = 0; t < L; ++t) {
        const std::set<std::int32_t> keys = hf_keys(topk_hf, t, c.index_topk);
        req.allowed_keys.emplace_back(keys.begin(), keys.end());
      }
      const std::vector<double> hf = reference::to_doubles(y_hf);
      const std::vector<double> ref64 =
          reference::attention_layer(c, w[l], req, Precision::float64);
      const reference::Comparison exact = reference::compare(ref64, hf);
      EXPECT_LE(exact.max_abs_error, 1e-5 * exact.ref_max_abs) << exact.to_string();

      // transformers' indexer chose what dsattn's float64 indexer ranks highest, up to ties
      // within float32 rounding (transformers scores in float32).
      if (w[l].has_indexer() && L > c.index_topk) {
        const std::vector<double> scores = reference::indexer_scores(c, w[l], req);
        for (std::int64_t t = c.index_topk; t < L; ++t) {
          std::vector<double> row(scores.begin() + t * L, scores.begin() + t * L + t + 1);
          std::vector<double> sorted = row;
          std::sort(sorted.begin(), sorted.end(), std::greater<>());
          const double margin =
              1e-5 * std::max(std::fabs(sorted.front()), std::fabs(sorted.back()));
          const std::set<std::int32_t> keys = hf_keys(topk_hf, t, c.index_topk);
          for (std::int64_t k = 0; k <= t; ++k) {
            if (row[k] > sorted[c.index_topk - 1] + margin) {
              EXPECT_TRUE(keys.count(static_cast<std::int32_t>(k))) << "row " << t << " key " << k;
            } else if (row[k] < sorted[c.index_topk] - margin) {
              EXPECT_FALSE(keys.count(static_cast<std::int32_t>(k))) << "row " << t << " key " << k;
            }
          }
        }
      }

      // The engine, on the rows where it chose transformers' keys.
      const std::vector<double> plain =
          reference::attention_layer(c, w[l], req, Precision::plain_bf16);
      const std::vector<double> engine = reference::to_doubles(y);
      std::vector<double> e_rows, p_rows, h_rows;
      for (std::int64_t t = 0; t < L; ++t) {
        std::set<std::int32_t> mine;
        if (r.paths[0] == Path::dense_mha || t + 1 <= c.index_topk) {
          for (std::int32_t s = 0; s <= t; ++s) mine.insert(s);
        } else {
          const Tensor& sel = r.topk_positions[0];
          for (std::int64_t j = 0; j < sel.size(1); ++j) {
            const std::int32_t s = sel.ptr<std::int32_t>()[t * sel.size(1) + j];
            if (s >= 0) mine.insert(s);
          }
        }
        const bool same = mine == hf_keys(topk_hf, t, c.index_topk);
        if (t + 1 > c.index_topk) {
          ++sparse_rows;
          same_sparse_rows += same;
        } else {
          EXPECT_TRUE(same) << "row " << t;
        }
        if (!same) continue;
        const auto row = [&](const std::vector<double>& v, std::vector<double>& out) {
          out.insert(out.end(), v.begin() + t * c.hidden_size, v.begin() + (t + 1) * c.hidden_size);
        };
        row(engine, e_rows);
        row(plain, p_rows);
        row(hf, h_rows);
      }
      const reference::Comparison e = reference::compare(e_rows, h_rows);
      EXPECT_TRUE(reference::within_tolerance(e, reference::compare(p_rows, h_rows)))
          << e.to_string();
    }
  }
  ASSERT_EQ(sparse_rows, 2 * 24);  // the 24 rows of L = 40 past index_topk, in both layers
  EXPECT_GE(same_sparse_rows, sparse_rows / 2);
  RecordProperty("sparse_rows_with_the_same_keys", static_cast<int>(same_sparse_rows));
}

INSTANTIATE_TEST_SUITE_P(Models, HfReference,
                         ::testing::Values(Model{"deepseek_v32", false},
                                           Model{"glm_moe_dsa", true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsattn
