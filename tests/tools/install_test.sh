#!/usr/bin/env bash
# The C++ package: `cmake --install` into a temporary prefix, then examples/cpp_layer configures
# against it with find_package(dsattn), builds and runs (a prefill on both paths and a decode
# step on the CPU).
#   install_test.sh BUILD_DIR SOURCE_DIR CMAKE
set -euo pipefail
build=$1 src=$2 cmake=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$cmake" --install "$build" --prefix "$work/prefix" >"$work/install.log"
[[ -f "$work/prefix/lib/cmake/dsattn/dsattnConfig.cmake" ]] || {
  echo "install: no dsattnConfig.cmake"
  exit 1
}
"$cmake" -S "$src/examples/cpp_layer" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/configure.log" || {
  cat "$work/configure.log"
  exit 1
}
"$cmake" --build "$work/example" >"$work/build.log" || {
  cat "$work/build.log"
  exit 1
}
out=$("$work/example/dsattn_layer_example")
echo "$out"
grep -q "prefill request 0: dense_mha" <<<"$out" && grep -q "prefill request 1: sparse_mla" <<<"$out" || {
  echo "install: the example took unexpected paths"
  exit 1
}
