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

# check_comparison JSON OUT LAST_STEP: the report of generate --compare (auto, the default,
# against mla, threshold and per-request): each policy either generated identical tokens or parted at a step <= LAST_STEP,
# printed with the requests that chose differently there, their tokens and top-two margins.
check_comparison() {
  python3 - "$@" <<'PY'
import json, re, sys
j = json.load(open(sys.argv[1]))
printed = open(sys.argv[2]).read()
last_step = int(sys.argv[3])
assert j["index_topk"] == 64 and j["policy"] == "auto", j
assert len(j["tokens"]) == 4 and all(len(t) == 24 for t in j["tokens"]), j["tokens"]
assert j["steps"][0]["paths"] == ["dense_mha", "dense_mha", "sparse_mla", "sparse_mla"], j["steps"][0]
for r in range(4):
    assert [s["tokens"][r] for s in j["steps"]] == j["tokens"][r], r
assert all(len(s["margins"]) == 4 and min(s["margins"]) >= 0 for s in j["steps"]), j["steps"]
assert set(j["first_difference_vs"]) == {"mla", "threshold", "per-request"}, j
for other, diff in j["first_difference_vs"].items():
    if diff == "identical":
        assert re.search(rf"^{other} +identical tokens at every step$", printed, re.M), other
        assert other not in j["partings_vs"], j["partings_vs"]
        continue
    assert isinstance(diff, int) and 0 <= diff <= last_step, (other, diff)
    assert re.search(rf"^{other} +first different token at step {diff}$", printed, re.M), other
    partings = j["partings_vs"][other]
    assert partings, f"{other}: no request parts at step {diff}"
    for p in partings:
        mine, theirs = p["tokens"]["auto"], p["tokens"][other]
        assert mine == j["steps"][diff]["tokens"][p["request"]] and mine != theirs, p
        assert p["margins"]["auto"] == j["steps"][diff]["margins"][p["request"]], p
        line = (rf"request {p['request']}: auto chose {mine} \(top-two margin [^)]*\), "
                rf"{other} chose {theirs} \(top-two margin [^)]*\)")
        assert re.search(line, printed), (line, printed)
PY
}

# Prompts below, at and above index_topk = 64: auto takes dense MHA for the first two (exact, and
# cheaper by the CPU's built-in cost profile).
# With one attention layer, only the prefill's logits differ between the policies, by rounding
# (docs/design.md): every decode step is then the same computation, so the policies can part at
# the prefill step alone, and only where it met a near-tie.
"$dsattn" write-checkpoint "$work/ck1" --layers 1 >"$work/out" 2>"$work/err" ||
  fail "write-checkpoint --layers 1: exit status $?: $(cat "$work/err")"
"$dsattn" generate --checkpoint "$work/ck1" --device cpu --prompt-lens 23,64,65,150 --tokens 24 \
  --compare --json "$work/gen1.json" >"$work/out" 2>"$work/err" ||
  fail "generate, one layer: exit status $?: $(cat "$work/err")"
grep -q "step    0 prefill paths: 0-1 dense_mha, 2-3 sparse_mla" "$work/out" ||
  fail "generate: prefill paths line missing: $(cat "$work/out")"
grep -q "step   23 decode  paths: 0-3 sparse_mla" "$work/out" || fail "generate: no step 23 line"
check_comparison "$work/gen1.json" "$work/out" 0 || fail "generate, one layer: comparison report"

# Two layers: the second layer's top-k sees the first layer's rounding, so where two keys score
# within rounding at its boundary the policies may part at any step (docs/design.md).
"$dsattn" generate --checkpoint "$work/ck" --device cpu --prompt-lens 23,64,65,150 --tokens 24 \
  --compare --json "$work/gen.json" >"$work/out" 2>"$work/err" ||
  fail "generate: exit status $?: $(cat "$work/err")"
grep -q "step    0 prefill paths: 0-1 dense_mha, 2-3 sparse_mla" "$work/out" ||
  fail "generate, two layers: prefill paths line missing: $(cat "$work/out")"
grep -q "step   23 decode  paths: 0-3 sparse_mla" "$work/out" ||
  fail "generate, two layers: no step 23 line"
check_comparison "$work/gen.json" "$work/out" 23 || fail "generate, two layers: comparison report"

# An FP8 latent cache, and --quiet printing the prefill step only.
"$dsattn" generate --checkpoint "$work/ck" --device cpu --tokens 4 --quiet --kv-cache fp8 \
  >"$work/out" 2>"$work/err" || fail "generate fp8: exit status $?: $(cat "$work/err")"
[[ $(grep -c "^step" "$work/out") -eq 1 ]] || fail "generate --quiet: printed every step"

"$dsattn" run --checkpoint "$work/ck" --layer 1 --device cpu --requests 2 --prompt-len 40 \
  --decode-steps 2 >"$work/out" 2>"$work/err" || fail "run --checkpoint: exit status $?: $(cat "$work/err")"
grep -q "weights: checkpoint $work/ck, layers 1..1 (fp8 weights dequantised to bf16)" "$work/out" ||
  fail "run --checkpoint: weights line missing: $(cat "$work/out")"
grep -q "paths under auto: prefill 0-1 dense_mha; decode sparse_mla" "$work/out" ||
  fail "run --checkpoint: paths line missing"

# A NaN block scale in kv_b_proj makes NaN outputs: the run fails in one line naming the pass and
# request, instead of reporting agreement between NaN outputs.
cp -r "$work/ck" "$work/ck_nan"
python3 - "$work/ck_nan" <<'PY' || fail "could not write a NaN scale into the checkpoint"
import json, struct, sys
folder = sys.argv[1]
name = "model.layers.1.self_attn.kv_b_proj.weight_scale_inv"
shard = json.load(open(f"{folder}/model.safetensors.index.json"))["weight_map"][name]
with open(f"{folder}/{shard}", "r+b") as f:
    header_len = struct.unpack("<Q", f.read(8))[0]
    entry = json.loads(f.read(header_len))[name]
    assert entry["dtype"] == "F32", entry
    f.seek(8 + header_len + entry["data_offsets"][0])
    f.write(struct.pack("<f", float("nan")))
PY
expect_error "NaN weights" "the auto pass's output for request 0 is nan at element" \
  run --checkpoint "$work/ck_nan" --layer 1 --device cpu --requests 2 --prompt-len 40 \
  --decode-steps 1

expect_error "layer past the checkpoint" "no tensor model.layers.2.self_attn.q_a_proj.weight" \
  run --checkpoint "$work/ck" --layer 2 --device cpu --requests 1 --prompt-len 4
expect_error "layer without checkpoint" "--layer selects a layer of --checkpoint" run --layer 1
expect_error "checkpoint and config" "exclude each other" \
  run --checkpoint "$work/ck" --config "$work/ck/config.json"
expect_error "missing checkpoint" "has no config.json" generate --checkpoint "$work/none"
expect_error "no tokens" "--tokens must be at least 1, got 0" generate --device cpu --tokens 0
expect_error "huge tokens" "--tokens must be at most 1048576, got 9223372036854775807" \
  generate --device cpu --tokens 9223372036854775807
expect_error "huge prompt" "every length must be at most 1048576" \
  generate --device cpu --prompt-lens 4,4611686018427387904
expect_error "empty prompt" "every length must be positive, got 0" \
  generate --device cpu --prompt-lens 4,0
expect_error "bad cache" "fp16" generate --device cpu --kv-cache fp16
expect_error "write-checkpoint layers" "num_hidden_layers must be positive, got 0" \
  write-checkpoint "$work/ck0" --layers 0
expect_error "write-checkpoint model" "--model must be deepseek-v32 or glm5, got 'llama'" \
  write-checkpoint "$work/ckl" --model llama

# GLM-5's shapes with IndexShare: the checkpoint runs and generates; a stack cannot start at a
# layer that shares another's top-k.
"$dsattn" write-checkpoint "$work/glm" --model glm5 >"$work/out" 2>"$work/err" ||
  fail "write-checkpoint --model glm5: exit status $?: $(cat "$work/err")"
grep -q '"model_type": "glm_moe_dsa"' "$work/glm/config.json" || fail "glm5: model_type"
"$dsattn" run --checkpoint "$work/glm" --layers 4 --device cpu --requests 2 --prompt-len 80 \
  --decode-steps 2 >"$work/out" 2>"$work/err" ||
  fail "run --checkpoint glm5: exit status $?: $(cat "$work/err")"
"$dsattn" generate --checkpoint "$work/glm" --device cpu --prompt-lens 30,90 --tokens 3 \
  --compare --quiet >"$work/out" 2>"$work/err" ||
  fail "generate --checkpoint glm5: exit status $?: $(cat "$work/err")"
expect_error "shared first layer" "start at layer 0" \
  run --checkpoint "$work/glm" --layer 1 --device cpu --requests 1 --prompt-len 4
expect_error "model with config" "--model picks a synthetic model" \
  run --model glm5 --config "$work/glm/config.json"

finish "generate CLI"
