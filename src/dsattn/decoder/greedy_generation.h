// Greedy generation with the decoder: one prefill of every prompt in one batch, then decode steps
// of one token per request, each request's next token the argmax of its logits.
#pragma once

#include <cstdint>
#include <vector>

#include "dsattn/decoder/decoder_model.h"

namespace dsattn {

struct GenerationStep {
  ForwardMode mode = ForwardMode::prefill;
  std::vector<Path> paths;           // per request
  std::vector<std::int32_t> tokens;  // the token each request chose at this step
  std::vector<float> margins;        // per request: its best logit minus its second best
};

struct Generation {
  std::vector<std::vector<std::int32_t>> tokens;  // per request: the generated tokens
  std::vector<GenerationStep> steps;              // step 0 is the prefill
  // The smallest top-two logit margin over every step and request: how close greedy decoding
  // came to a tie.
  float min_margin() const;
};

// Generates `new_tokens` tokens for every prompt. With `feed` (one sequence of new_tokens per
// prompt), step s + 1 is fed feed[r][s] instead of the token chosen at step s (teacher forcing:
// two models, or two policies, then see the same inputs at every step and their choices can be
// compared step by step); the chosen tokens are recorded either way. Pages for prompt + new tokens
// are reserved in `cache` up front (all or nothing: CacheFull before any forward) and released at
// the end, also when an exception leaves. Equal logits choose the lower token id; a NaN or infinite
// logit is an error. Throws InvalidArgument for an empty prompt list or prompt, new_tokens < 1 and
// tokens out of the vocabulary.
Generation generate_greedy(const DecoderModel& model,
                           const std::vector<std::vector<std::int32_t>>& prompts,
                           std::int64_t new_tokens, PagedKvCache& cache,
                           const std::vector<std::vector<std::int32_t>>& feed = {});

}  // namespace dsattn
