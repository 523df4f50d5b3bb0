#!/usr/bin/env bash
# End-to-end checks of the dsattn CLI: figures, JSON output, exit codes and one-line errors.
# Usage: cli_test.sh DSATTN_BINARY DATA_DIR
set -u
dsattn=$1
data=$2
source "$(dirname "$0")/cli_test_lib.sh"

# Contexts of 22 <= index_topk 24: auto (the default) takes dense MHA for prefill, the CPU's
# built-in cost profile predicting it cheaper for such short prompts; both forced paths
# are exact and each differs from it somewhere, so both comparison passes run.
"$dsattn" run --config "$data/small_config.json" --requests 3 --prompt-len 20 --decode-steps 2 \
  --json "$work/run.json" >"$work/out" 2>"$work/err" || fail "run: exit status $?: $(cat "$work/err")"
grep -q "paths under auto: prefill 0-2 dense_mha; decode sparse_mla" "$work/out" ||
  fail "run: paths line missing: $(cat "$work/out")"
grep -q "^mla " "$work/out" || fail "run: no mla comparison pass"
grep -q "largest relative difference between paths on the same requests" "$work/out" ||
  fail "run: no agreement line"
python3 - "$work/run.json" <<'PY' || fail "run: JSON content"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["workload"]["requests"] == 3 and j["policy"] == "auto", j["workload"]
assert [p["policy"] for p in j["passes"]] == ["auto", "mha", "mla"], j["passes"]
assert j["passes"][0]["prefill"]["tokens"] == 60 and j["passes"][0]["decode"]["tokens"] == 6
assert 0 <= j["max_relative_difference"] < 0.05, j["max_relative_difference"]
PY

# calibrate on the CPU backend with the small config: a profile of finite, non-negative costs
# for that shape, which run --profile plans with (and which any other policy refuses).
"$dsattn" calibrate --device cpu --config "$data/small_config.json" --repeats 1 \
  --out "$work/profile.json" >"$work/out" 2>"$work/err" ||
  fail "calibrate: exit status $?: $(cat "$work/err")"
python3 - "$work/profile.json" <<'PY' || fail "calibrate: profile content"
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j["device"] == "cpu" and j["shape"].endswith("topk24"), j
costs = [v for path in ("dense", "sparse") for v in j[path].values()]
assert len(costs) == 7 and all(math.isfinite(v) and v >= 0 for v in costs), j
shared = list(j["shared"].values())
assert len(shared) == 2 and all(math.isfinite(v) and v >= 0 for v in shared), j
assert any(v > 0 for v in j["dense"].values()) and any(v > 0 for v in j["sparse"].values()), j
PY
"$dsattn" run --config "$data/small_config.json" --requests 2 --prompt-len 20 --decode-steps 1 \
  --profile "$work/profile.json" >"$work/out" 2>"$work/err" ||
  fail "run --profile: exit status $?: $(cat "$work/err")"
grep -q "cost profile: $work/profile.json, measured on cpu" "$work/out" ||
  fail "run --profile: profile line missing: $(cat "$work/out")"
expect_error "profile with mla" "--profile gives the costs of policy auto; --policy is mla" \
  run --config "$data/small_config.json" --policy mla --profile "$work/profile.json"
echo '{"device": "cpu"}' >"$work/bad_profile.json"
expect_error "bench bad profile" \
  "cost profile: 'source' must be a string \\(in '$work/bad_profile.json'\\)" \
  bench --device cpu --quick --stages crossover --profile "$work/bad_profile.json"
expect_error "bad profile" "cost profile: 'source' must be a string \\(in '$work/bad_profile.json'\\)" \
  run --config "$data/small_config.json" --profile "$work/bad_profile.json"
expect_error "calibrate repeats" "--repeats must be >= 1, got 0" calibrate --repeats 0
expect_error "calibrate model and config" "--model and --config exclude each other" \
  calibrate --model glm5 --config "$data/small_config.json"
expect_error "calibrate model" "model preset must be deepseek-v32 or glm5, got 'nope'" \
  calibrate --model nope --out "$work/unused.json"
expect_error "calibrate cache" "kv cache format must be bf16 or fp8, got 'fp4'" \
  calibrate --kv-cache fp4 --out "$work/unused.json"
expect_error "calibrate out" "--out: directory $work/missing does not exist" \
  calibrate --out "$work/missing/p.json"

# Past index_topk (24): auto routes to sparse MLA and forced mha is not run.
"$dsattn" run --config "$data/small_config.json" --requests 2 --prompt-len 30 --decode-steps 1 \
  >"$work/out" 2>"$work/err" || fail "run long: exit status $?"
grep -q "prefill 0-1 sparse_mla" "$work/out" || fail "run long: paths: $(cat "$work/out")"
grep -q "^mha " "$work/out" && fail "run long: forced mha ran where it is not exact"

# The benchmark harness, in its small CPU form: JSON with the ceilings and the stages asked for.
"$dsattn" bench --device cpu --quick --stages mha topk --commit test --json "$work/bench.json" \
  >"$work/out" 2>"$work/err" || fail "bench: exit status $?: $(cat "$work/err")"
python3 - "$work/bench.json" <<'PY' || fail "bench: JSON content"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["device"] == "cpu" and j["commit"] == "test" and j["quick"] is True, j
assert j["ceilings"]["bf16_gemm_tflops"] > 0 and j["ceilings"]["copy_tbps"] > 0, j["ceilings"]
assert [r["seq"] for r in j["mha_prefill"]] == [128, 256], j["mha_prefill"]
assert all(r["tflops"] > 0 for r in j["mha_prefill"])
assert j["topk"][0]["rows"] == 4096 and j["topk"][0]["us"] > 0, j["topk"]
assert "layer" not in j and "indexer" not in j
PY
# Without --commit the JSON names the commit the binary was built from (with "-dirty" when its
# sources differed from it), whatever directory the benchmark runs in.
(cd "$work" && "$dsattn" bench --device cpu --quick --stages topk --json "$work/bench2.json") \
  >"$work/out" 2>"$work/err" || fail "bench (built commit): exit status $?: $(cat "$work/err")"
python3 - "$work/bench2.json" <<'PY' || fail "bench: the built commit"
import json, re, sys
commit = json.load(open(sys.argv[1]))["commit"]
assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", commit), commit
PY
expect_error "bench stage" "unknown stage 'nope'" bench --device cpu --quick --stages nope
expect_error "bench seqs" "--seqs: every length must be in \\[1, 512\\], got 0" \
  bench --device cpu --quick --stages mha --seqs 128,0
expect_error "bench full on cpu" "pass --quick" bench --device cpu
expect_error "bench device" "--device must be auto, cpu or cuda" bench --device tpu

expect_error "bad policy" "policy must be one of" run --policy nonsense
expect_error "forced mha past topk" "policy mha is not exact for request 0" \
  run --config "$data/small_config.json" --requests 1 --prompt-len 30 --decode-steps 0 --policy mha
expect_error "missing config" "cannot open config file" run --config "$work/none.json"
echo '{"index_topk": 0}' >"$work/bad.json"
expect_error "bad config" "index_topk must be a positive integer, got 0" run --config "$work/bad.json"
expect_error "bad device" "--device must be auto, cpu or cuda" run --device tpu
expect_error "cuda device" "--device cuda" run --device cuda
expect_error "bad size" "--requests must be in \\[1, 1048576\\], got 0" run --requests 0
# Sizes whose products or sums would wrap int64 (or int32 positions) are refused by name.
expect_error "huge decode" "--decode-steps must be in \\[0, 2147483647\\], got 9223372036854775807" \
  run --device cpu --requests 2 --prompt-len 4 --decode-steps 9223372036854775807
expect_error "huge requests" "--requests must be in \\[1, 1048576\\]" \
  run --device cpu --requests 99999999999999999999
expect_error "positions past int32" "must be at most 2147483647 \\(positions are int32\\)" \
  run --device cpu --requests 1 --prompt-len 2000000000 --prefix-len 2000000000
expect_error "too many pages" "--requests x the pages of one request's context \\(1048576 x 32769 pages" \
  run --device cpu --requests 1048576 --prompt-len 2097152
expect_error "json dir" "--json: directory" run --requests 1 --prompt-len 4 --decode-steps 0 \
  --json "$work/no/such/dir/out.json"
[[ -e "$work/no" ]] && fail "json dir: something was written"
# --json naming a directory is refused before the run, and leaves no DIR.tmp behind.
mkdir -p "$work/figures"
expect_error "json is a directory" "--json: .*figures is a directory" run --device cpu \
  --requests 1 --prompt-len 4 --decode-steps 0 --json "$work/figures"
[[ -e "$work/figures.tmp" ]] && fail "json is a directory: $work/figures.tmp was left behind"
expect_error "bench json is a directory" "--json: .*figures is a directory" bench --device cpu \
  --quick --stages mha --json "$work/figures"
expect_error "unknown flag" "" run --no-such-flag
expect_error "check cases" "--cases must be >= 1" check --cases 0

finish CLI
