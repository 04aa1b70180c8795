#!/usr/bin/env bash
# Runs the loom models of every concurrent protocol (src/loom_tests.rs; docs/loom.md says
# what each one checks), one model at a time with its own preemption bound, and prints each
# model's time. The last line is exactly "N passed, M failed"; the exit status is non-zero
# when any model fails. The bounds are chosen so that the models together take about a
# minute on 2 cores (the budget is 5 minutes); the first build also compiles the
# dev-dependencies into target/loom.
#
#   bash .ci/loom.sh            # every model
#   bash .ci/loom.sh lock_      # only models whose name contains "lock_"
set -uo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="--cfg loom"
# Every cargo command names the library (-p): the workspace's default members include
# preload, which has no loom build (the global allocator is left out under loom).
export CARGO_TARGET_DIR=target/loom

# model name (in src/loom_tests.rs) and its preemption bound
MODELS=(
  "lock_two_threads 4"
  "lock_three_threads_two_sleepers 4"
  "page_map_reader_never_sees_half_made_span 4"
  "thread_exit_flush_races_another_threads_free 4"
  "thread_exit_flush_races_two_frees_from_other_threads 3"
  "frees_from_another_thread_race_refills 3"
  "reserve_reclaim_races_the_owner 4"
  "stash_reclaim_races_the_owner 4"
)
filter="${1:-}"

start=$(date +%s)
if ! cargo test --release -p spanalloc --lib --no-run -q; then
  echo "loom: build failed"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "loom: build $(( $(date +%s) - start ))s"

passed=0
failed=0
suite_start=$(date +%s.%N)
for entry in "${MODELS[@]}"; do
  read -r name bound <<<"$entry"
  [[ -n "$filter" && "$name" != *"$filter"* ]] && continue
  t0=$(date +%s.%N)
  out=$(LOOM_MAX_PREEMPTIONS="$bound" cargo test --release -p spanalloc --lib -q "loom_tests::$name" \
          -- --exact --nocapture 2>&1)
  status=$?
  t1=$(date +%s.%N)
  executions=$(grep -o 'loom: [0-9]* executions' <<<"$out" | grep -o '[0-9]*' | head -1)
  if [[ $status -eq 0 ]] && grep -q "test result: ok. 1 passed" <<<"$out"; then
    passed=$((passed + 1))
    verdict=ok
  else
    failed=$((failed + 1))
    verdict=FAILED
    echo "$out" | tail -40
  fi
  printf '%-44s bound %s  %6.1fs  %8s executions  %s\n' \
    "$name" "$bound" "$(echo "$t1 - $t0" | bc)" "${executions:-?}" "$verdict"
done
printf 'loom: models took %.1fs\n' "$(echo "$(date +%s.%N) - $suite_start" | bc)"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 && $passed -gt 0 ]]
