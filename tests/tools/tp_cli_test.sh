#!/usr/bin/env bash
# The refusals of `dsattn run --tp N` and `dsattn bench --tp N`, which come before any rank
# starts: one line on stderr and a non-zero exit, on any machine (with or without GPUs or NCCL).
# Usage: tp_cli_test.sh DSATTN_BINARY
set -u
dsattn=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# expect_error NAME EXTENDED_REGEX ARGS...: non-zero exit, exactly one stderr line that starts
# with "dsattn: error:" and matches the pattern, nothing on stdout.
expect_error() {
  local name=$1 want=$2
  shift 2
  checks=$((checks + 1))
  "$dsattn" "$@" >"$work/out" 2>"$work/err"
  local status=$?
  [[ $status -ne 0 ]] || fail "$name: exit status 0"
  [[ $(wc -l <"$work/err") -eq 1 ]] || fail "$name: stderr is not one line: $(cat "$work/err")"
  grep -Eq "^dsattn: error: .*($want)" "$work/err" ||
    fail "$name: stderr does not match '$want': $(cat "$work/err")"
  [[ ! -s "$work/out" ]] || fail "$name: printed to stdout: $(cat "$work/out")"
}

expect_error "run, N not dividing the heads" \
  "--tp 3: tensor-parallel world size must divide the 128 attention heads" run --tp 3
expect_error "bench, N not dividing the heads" "must divide the 128 attention heads.*got 48" \
  bench --tp 48
expect_error "run, N = 0" "--tp must be >= 1, got 0" run --tp 0
expect_error "run on the CPU" "--tp 2 runs one process per GPU and cannot run with --device cpu" \
  run --tp 2 --device cpu
expect_error "bench on the CPU" "cannot run with --device cpu" bench --tp 4 --device cpu --quick
# More GPUs than any machine here has: refused for the device count, or earlier for a build
# without CUDA or NCCL.
expect_error "run, N above the device count" \
  "--tp 128 needs 128 CUDA devices, [0-9]+ visible|no CUDA backend|no NCCL" run --tp 128
expect_error "rank options without the launcher" "set by the --tp launcher" run --tp-rank 1

echo "$((checks - failures)) passed, $failures failed"
[[ $failures -eq 0 ]]
