# Shared by the CLI test scripts (sourced after setting $dsattn): a scratch folder, failure
# counting and the check of a refusal.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# expect_error NAME EXTENDED_REGEX ARGS...: non-zero exit, exactly one stderr line that starts
# with "dsattn: error:" and matches the pattern, and no stack dump.
expect_error() {
  local name=$1 want=$2
  shift 2
  checks=$((checks + 1))
  "$dsattn" "$@" >"$work/out" 2>"$work/err"
  local status=$?
  [[ $status -ne 0 ]] || fail "$name: exit status 0"
  [[ $(wc -l <"$work/err") -eq 1 ]] || fail "$name: stderr is not one line: $(cat "$work/err")"
  grep -Eq -- "^dsattn: error: .*($want)" "$work/err" ||
    fail "$name: stderr does not match '$want': $(cat "$work/err")"
}

# finish WHAT: the summary line, and the exit status of the script.
finish() {
  if ((failures)); then
    echo "$failures $1 check(s) failed"
    exit 1
  fi
  echo "all $1 checks passed"
}
