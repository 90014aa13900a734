#!/usr/bin/env bash
# Fuzzes the agent's input handling with cargo-fuzz (libFuzzer), each target for a bounded
# time: the request decoder, the job-item scan (against serde_json), the Npgsql
# connection-string parser and the console encoder.
#
#   scripts/fuzz.sh [seconds-per-target]        (default 60)
#
# Environment:
#   FUZZ_TARGETS     the targets to run, space-separated (default: all four)
#   FUZZ_SANITIZER   cargo-fuzz sanitizer (default: none; the crate forbids unsafe code, and
#                    without ASan libFuzzer runs about twice as many inputs; `address` works)
#   CARGO_TARGET_DIR where the fuzz build goes (default: fuzz/target)
#
# cargo-fuzz needs nightly compiler features; on a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1 for its builds. It installs cargo-fuzz from crates.io when missing.
# Seeds are read from fuzz/corpus/<target>/ (never written to); the growing working corpus
# lives in <target dir>/fuzz-corpus/<target>/. Exits non-zero when a target crashes, and
# prints the crashing input's path (fuzz/artifacts/<target>/crash-*) and how to replay it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-60}
case "$secs" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2; exit 2 ;;
esac
targets=${FUZZ_TARGETS:-"request_decoder item_scanner npgsql_parser console_encoder"}
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${CARGO_TARGET_DIR:-$root/fuzz/target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
started=$(date +%s)
echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"

status=0
summary=()
for t in $targets; do
  work="$target_dir/fuzz-corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  log="$target_dir/fuzz-$t.log"
  echo "== fuzzing $t for ${secs}s"
  set +e
  cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(INFO: Seed|#[0-9]+[[:space:]]+(INITED|DONE))|stat::' "$log" | tail -n 8 || true
  runs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{s += $2} END {print s + 0}')
  rate=$(grep -E '^stat::average_exec_per_sec:' "$log" | awk '{s += $2} END {print s + 0}')
  if [ "$rc" -ne 0 ]; then
    status=1
    crash=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -n 1 | sed 's/Test unit written to //')
    echo "!! $t FAILED (exit $rc); the last 40 lines of $log:"
    tail -n 40 "$log"
    if [ -n "$crash" ]; then
      echo "!! crashing input: fuzz/$crash"
      echo "!! replay: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t $crash)"
    fi
    summary+=("$t: FAILED, ${runs} runs, ${rate} exec/s")
  else
    corp=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | grep -oE 'corp: [0-9]+' | tail -n 1 | cut -d' ' -f2)
    summary+=("$t: ok, ${runs} runs, ${rate} exec/s, corpus ${corp:-?} inputs")
  fi
done

echo "== summary (${secs}s per target, $(( $(date +%s) - started ))s in all including the build)"
for line in "${summary[@]}"; do echo "  $line"; done
exit "$status"
