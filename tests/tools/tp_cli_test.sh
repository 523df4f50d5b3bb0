#!/usr/bin/env bash
# The refusals of `dsattn run --tp N` and `dsattn bench --tp N`, which come before any rank
# starts: one line on stderr and a non-zero exit, on any machine (with or without GPUs or NCCL).
# Usage: tp_cli_test.sh DSATTN_BINARY
set -u
dsattn=$1
source "$(dirname "$0")/cli_test_lib.sh"

# Refusals before any rank starts print nothing on stdout either.
expect_refusal() {
  expect_error "$@"
  [[ ! -s "$work/out" ]] || fail "$1: printed to stdout: $(cat "$work/out")"
}

expect_refusal "run, N not dividing the heads" \
  "--tp 3: tensor-parallel world size must divide the 128 attention heads" run --tp 3
expect_refusal "bench, N not dividing the heads" "must divide the 128 attention heads.*got 48" \
  bench --tp 48
expect_refusal "run, N = 0" "--tp must be >= 1, got 0" run --tp 0
expect_refusal "run on the CPU" "--tp 2 runs one process per GPU and cannot run with --device cpu" \
  run --tp 2 --device cpu
expect_refusal "bench on the CPU" "cannot run with --device cpu" bench --tp 4 --device cpu --quick
# More GPUs than any machine here has: refused for the device count, or earlier for a build
# without CUDA or NCCL.
expect_refusal "run, N above the device count" \
  "--tp 128 needs 128 CUDA devices, [0-9]+ visible|no CUDA backend|no NCCL" run --tp 128
expect_refusal "rank options without the launcher" "set by the --tp launcher" run --tp-rank 1

finish "--tp refusal"
