#include "dsattn/decoder/greedy_generation.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dsattn {

namespace {

// Pages reserved for a generation, released however it ends.
class ReservedTables {
 public:
  explicit ReservedTables(PagedKvCache& cache) : cache_(cache) {}
  ~ReservedTables() {
    for (BlockTable& t : tables_) cache_.release(t);
  }
  ReservedTables(const ReservedTables&) = delete;
  ReservedTables& operator=(const ReservedTables&) = delete;

  // All or nothing: on CacheFull the pages already reserved are released by the destructor.
  void reserve(const std::vector<std::int64_t>& tokens) {
    tables_.resize(tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) cache_.reserve(tables_[i], tokens[i]);
  }
  const BlockTable& operator[](std::size_t i) const { return tables_[i]; }

 private:
  PagedKvCache& cache_;
  std::vector<BlockTable> tables_;
};

struct Choice {
  std::int32_t token = 0;
  float margin = 0;
};

Choice argmax(const float* logits, std::int64_t vocab, std::size_t request, std::size_t step) {
  float best = -std::numeric_limits<float>::infinity(), second = best;
  std::int32_t token = -1;
  for (std::int64_t v = 0; v < vocab; ++v) {
    const float x = logits[v];
    if (!std::isfinite(x)) {
      fail<Error>("step {}: logit {} of request {} is {}", step, v, request, x);
    }
    if (x > best) {
      second = best;
      best = x;
      token = static_cast<std::int32_t>(v);
    } else if (x > second) {
      second = x;
    }
  }
  return {token, best - second};
}

}  // namespace

float Generation::min_margin() const {
  float m = std::numeric_limits<float>::infinity();
  for (const GenerationStep& s : steps) {
    for (float x : s.margins) m = std::min(m, x);
  }
  return m;
}

Generation generate_greedy(const DecoderModel& model,
                           const std::vector<std::vector<std::int32_t>>& prompts,
                           std::int64_t new_tokens, PagedKvCache& cache,
                           const std::vector<std::vector<std::int32_t>>& feed) {
  if (prompts.empty()) fail("prompts must not be empty");
  if (new_tokens < 1) fail("new_tokens must be at least 1, got {}", new_tokens);
  const std::int64_t vocab = model.config().vocab_size;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    if (prompts[r].empty()) fail("prompt {} must not be empty", r);
    for (std::size_t i = 0; i < prompts[r].size(); ++i) {
      if (prompts[r][i] < 0 || prompts[r][i] >= vocab) {
        fail("prompt {} token {} must be in [0, {}), got {}", r, i, vocab, prompts[r][i]);
      }
    }
  }

  const std::size_t B = prompts.size();
  if (!feed.empty()) {
    if (feed.size() != B)
      fail("feed must hold one sequence per prompt ({}), got {}", B, feed.size());
    for (std::size_t r = 0; r < B; ++r) {
      if (static_cast<std::int64_t>(feed[r].size()) != new_tokens) {
        fail("feed[{}] must hold {} tokens, got {}", r, new_tokens, feed[r].size());
      }
      for (std::size_t i = 0; i < feed[r].size(); ++i) {
        if (feed[r][i] < 0 || feed[r][i] >= vocab) {
          fail("feed[{}][{}] must be in [0, {}), got {}", r, i, vocab, feed[r][i]);
        }
      }
    }
  }
  std::vector<std::int64_t> capacity(B);
  for (std::size_t r = 0; r < B; ++r) {
    // The last generated token is never fed back, so it needs no cache slot.
    capacity[r] = static_cast<std::int64_t>(prompts[r].size()) + new_tokens - 1;
  }
  ReservedTables tables(cache);
  tables.reserve(capacity);

  Generation gen;
  gen.tokens.resize(B);
  Batch batch;
  std::vector<std::int32_t> fed;
  for (std::size_t r = 0; r < B; ++r) {
    batch.requests.push_back({0, static_cast<std::int64_t>(prompts[r].size()), tables[r]});
    fed.insert(fed.end(), prompts[r].begin(), prompts[r].end());
  }
  for (std::int64_t step = 0; step < new_tokens; ++step) {
    const DecoderOutput out = model.forward(batch, fed, cache);
    GenerationStep& s = gen.steps.emplace_back();
    s.mode = batch.mode;
    s.paths = out.paths;
    fed.assign(B, 0);
    for (std::size_t r = 0; r < B; ++r) {
      const Choice c = argmax(out.logits.ptr<float>() + r * vocab, vocab, r, std::size_t(step));
      s.tokens.push_back(c.token);
      s.margins.push_back(c.margin);
      gen.tokens[r].push_back(c.token);
      fed[r] = feed.empty() ? c.token : feed[r][std::size_t(step)];
      // The next step feeds this token after everything cached so far.
      RequestInput& q = batch.requests[r];
      q.prefix_len += q.extend_len;
      q.extend_len = 1;
    }
    batch.mode = ForwardMode::decode;
  }
  return gen;
}

}  // namespace dsattn
