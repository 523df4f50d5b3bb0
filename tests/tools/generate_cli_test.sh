#!/usr/bin/env bash
# End-to-end checks of dsattn write-checkpoint, generate and run --checkpoint (on the CPU): the
# tokens and paths printed, JSON, agreement across policies, and one-line errors.
# Usage: generate_cli_test.sh DSATTN_BINARY
set -u
dsattn=$1
source "$(dirname "$0")/cli_test_lib.sh"

"$dsattn" write-checkpoint "$work/ck" --fp8 >"$work/out" 2>"$work/err" ||
  fail "write-checkpoint: exit status $?: $(cat "$work/err")"
for f in config.json model.safetensors.index.json model-00001-of-00003.safetensors; do
  [[ -f "$work/ck/$f" ]] || fail "write-checkpoint: no $f"
done

# Prompts below, at and above index_topk = 64: per-request takes dense MHA for the first two.
"$dsattn" generate --checkpoint "$work/ck" --device cpu --prompt-lens 23,64,65,150 --tokens 24 \
  --compare --json "$work/gen.json" >"$work/out" 2>"$work/err" ||
  fail "generate: exit status $?: $(cat "$work/err")"
grep -q "step    0 prefill paths: 0-1 dense_mha, 2-3 sparse_mla" "$work/out" ||
  fail "generate: prefill paths line missing: $(cat "$work/out")"
grep -q "step   23 decode  paths: 0-3 sparse_mla" "$work/out" || fail "generate: no step 23 line"
grep -q "^mla  *identical tokens at every step" "$work/out" || fail "generate: mla comparison"
grep -q "^threshold  *identical tokens at every step" "$work/out" ||
  fail "generate: threshold comparison"
python3 - "$work/gen.json" <<'PY' || fail "generate: JSON content"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["index_topk"] == 64 and j["policy"] == "per-request", j
assert len(j["tokens"]) == 4 and all(len(t) == 24 for t in j["tokens"]), j["tokens"]
assert j["steps"][0]["paths"] == ["dense_mha", "dense_mha", "sparse_mla", "sparse_mla"], j["steps"][0]
assert [s["tokens"][0] for s in j["steps"]] == j["tokens"][0]
assert j["first_difference_vs"] == {"mla": "identical", "threshold": "identical"}, j
PY

# An FP8 latent cache, and --quiet printing the prefill step only.
"$dsattn" generate --checkpoint "$work/ck" --device cpu --tokens 4 --quiet --kv-cache fp8 \
  >"$work/out" 2>"$work/err" || fail "generate fp8: exit status $?: $(cat "$work/err")"
[[ $(grep -c "^step" "$work/out") -eq 1 ]] || fail "generate --quiet: printed every step"

"$dsattn" run --checkpoint "$work/ck" --layer 1 --device cpu --requests 2 --prompt-len 40 \
  --decode-steps 2 >"$work/out" 2>"$work/err" || fail "run --checkpoint: exit status $?: $(cat "$work/err")"
grep -q "weights: checkpoint $work/ck, layers 1..1 (fp8 weights dequantised to bf16)" "$work/out" ||
  fail "run --checkpoint: weights line missing: $(cat "$work/out")"
grep -q "paths under per-request: prefill 0-1 dense_mha; decode sparse_mla" "$work/out" ||
  fail "run --checkpoint: paths line missing"

expect_error "layer past the checkpoint" "no tensor model.layers.2.self_attn.q_a_proj.weight" \
  run --checkpoint "$work/ck" --layer 2 --device cpu --requests 1 --prompt-len 4
expect_error "layer without checkpoint" "--layer selects a layer of --checkpoint" run --layer 1
expect_error "checkpoint and config" "exclude each other" \
  run --checkpoint "$work/ck" --config "$work/ck/config.json"
expect_error "missing checkpoint" "has no config.json" generate --checkpoint "$work/none"
expect_error "no tokens" "--tokens must be at least 1, got 0" generate --device cpu --tokens 0
expect_error "empty prompt" "every length must be positive, got 0" \
  generate --device cpu --prompt-lens 4,0
expect_error "bad cache" "fp16" generate --device cpu --kv-cache fp16
expect_error "write-checkpoint layers" "num_hidden_layers must be positive, got 0" \
  write-checkpoint "$work/ck0" --layers 0

finish "generate CLI"
