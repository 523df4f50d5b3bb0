// Dense MHA and sparse MLA agree with each other and with the float64 reference wherever both
// are exact (every query's context <= index_topk).
#include <gtest/gtest.h>

#include "dsattn/reference/layer_check.h"
#include "layer_test_util.h"

namespace dsattn {
namespace {

struct EquivalenceCase {
  const char* name;
  std::int64_t index_topk;
  std::vector<reference::CheckRequest> requests;
  std::int64_t prefix_chunk = 1 << 30;

  friend void PrintTo(const EquivalenceCase& c, std::ostream* os) { *os << c.name; }
};

class PathEquivalence : public ::testing::TestWithParam<EquivalenceCase> {};

TEST_P(PathEquivalence, BothFormsMatchReferenceAndEachOther) {
  const EquivalenceCase& p = GetParam();
  reference::CheckCase c;
  c.config = testing::small_config(p.index_topk);
  c.requests = p.requests;
  c.prefix_chunk = p.prefix_chunk;
  c.seed = 11;
  const reference::CaseReport r = reference::check_case(
      c, {Policy::parse("mha"), Policy::parse("mla"), Policy::parse("per-request")});
  EXPECT_TRUE(r.pass) << c.to_string() << "\n" << r.to_string();
  ASSERT_GE(r.mha_mla_relative_difference, 0.0);
  EXPECT_LE(r.mha_mla_relative_difference, testing::kBf16Agreement) << r.to_string();
  for (const reference::PolicyCheck& check : r.checks) {
    if (check.policy == "per-request") {
      for (Path path : check.paths) EXPECT_EQ(path, Path::dense_mha);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PathEquivalence,
    ::testing::Values(
        EquivalenceCase{"NoPrefix", 64, {{0, 50}}}, EquivalenceCase{"WithPrefix", 64, {{37, 20}}},
        // The prefix is written by two earlier forwards: with the checked one, three chunks.
        EquivalenceCase{"ChunkedPrefillInThreeChunks", 64, {{40, 21}}, 20},
        EquivalenceCase{"VarlenAroundPageAndTopkEdges",
                        2048,
                        {{0, 1}, {0, 63}, {0, 64}, {0, 65}, {0, 2047}, {0, 2048}}},
        EquivalenceCase{"ContextExactlyTopk", 48, {{30, 18}}},
        EquivalenceCase{"PrefixOnPageBoundary", 200, {{64, 64}, {128, 1}}}),
    [](const ::testing::TestParamInfo<EquivalenceCase>& info) { return info.param.name; });

// Row split against the float64 reference: requests whose context passes index_topk inside
// their extend run their first rows on dense MHA and the rest on sparse MLA in one forward (a
// profile where dense work is free makes auto split every such request), beside a request on
// each whole path; both cache formats, the prefix written in chunks.
TEST(RowSplit, MatchesReference) {
  const Policy split = testing::row_split_policy();
  // The small shape with a bf16 cache; GLM-5's (its latent fits the FP8 blocks) with an FP8 one.
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    reference::CheckCase c;
    c.config =
        f == LatentFormat::bf16 ? testing::small_config(48) : testing::glm5_shaped_config(4, 48);
    c.latent_format = f;
    c.requests = {{0, 100}, {30, 40}, {10, 20}, {60, 5}};
    c.prefix_chunk = 25;
    c.seed = 13;
    const reference::CaseReport r = reference::check_case(c, {split, Policy::parse("mla")});
    EXPECT_TRUE(r.pass) << c.to_string() << "\n" << r.to_string();
    ASSERT_EQ(r.checks.size(), 2u);
    EXPECT_EQ(r.checks[0].paths, (std::vector<Path>{Path::row_split, Path::row_split,
                                                    Path::dense_mha, Path::sparse_mla}));
  }
}

// Masked MHA (the sparse path's selection as a key mask over dense MHA) against the float64
// reference over each row's selected keys, and against sparse MLA, which attends to the same keys
// in the absorbed form: prefill past index_topk with chunked prefixes, and decode, both cache
// formats.
TEST(MaskedMha, MatchesReferenceAndSparseMla) {
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    for (ForwardMode mode : {ForwardMode::prefill, ForwardMode::decode}) {
      reference::CheckCase c;
      c.config =
          f == LatentFormat::bf16 ? testing::small_config(48) : testing::glm5_shaped_config(4, 48);
      c.latent_format = f;
      c.mode = mode;
      c.requests = mode == ForwardMode::prefill
                       ? std::vector<reference::CheckRequest>{{0, 100}, {30, 40}, {10, 20}, {60, 5}}
                       : std::vector<reference::CheckRequest>{{10, 1}, {90, 1}, {70, 3}};
      c.prefix_chunk = 25;
      c.seed = 14;
      SCOPED_TRACE(c.to_string());
      const reference::CaseReport r =
          reference::check_case(c, {Policy::parse("masked"), Policy::parse("mla")});
      EXPECT_TRUE(r.pass) << r.to_string();
      ASSERT_EQ(r.checks.size(), 2u);
      for (Path p : r.checks[0].paths) EXPECT_EQ(p, Path::masked_mha);
      EXPECT_LE(reference::relative_difference(r.checks[0].output, r.checks[1].output),
                testing::kBf16Agreement);
    }
  }
}

// A page-major index-key cache (each page's values, then its scales) gives the row layout's
// output bit for bit on every policy, decode and a chunked prefill past index_topk, both latent
// formats: the same keys, read from other addresses.
TEST(IndexKeyLayouts, PageMajorGivesTheRowLayoutsOutput) {
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    for (ForwardMode mode : {ForwardMode::prefill, ForwardMode::decode}) {
      reference::CheckCase c;
      c.config =
          f == LatentFormat::bf16 ? testing::small_config(32) : testing::glm5_shaped_config(4, 32);
      c.latent_format = f;
      c.mode = mode;
      c.requests = mode == ForwardMode::prefill
                       ? std::vector<reference::CheckRequest>{{0, 70}, {50, 30}, {0, 20}}
                       : std::vector<reference::CheckRequest>{{10, 1}, {90, 1}, {70, 3}};
      c.prefix_chunk = 25;
      c.seed = 21;
      testing::expect_page_major_matches_rows(c);
    }
  }
}

// GLM-5's shapes: every policy against the float64 reference, with sparse rows (contexts past
// index_topk) and dense ones, a chunked prefix, both cache formats.
TEST(Glm5Shapes, EveryPolicyMatchesReference) {
  for (LatentFormat f : {LatentFormat::bf16, LatentFormat::fp8}) {
    reference::CheckCase c;
    c.config = testing::glm5_shaped_config(4, 48);
    c.latent_format = f;
    c.requests = {{0, 40}, {0, 90}, {50, 30}};
    c.prefix_chunk = 25;
    c.seed = 12;
    const reference::CaseReport r = reference::check_case(c);
    EXPECT_TRUE(r.pass) << c.to_string() << "\n" << r.to_string();
  }
}

}  // namespace
}  // namespace dsattn
