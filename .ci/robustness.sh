#!/usr/bin/env bash
# Robustness jobs (docs/robustness.md says what each checks):
#   (a) Miri over the pure data structures (size classes, span free lists, page heap, page
#       map, the heap over FakePages), with nightly's miri component, installed here when
#       missing; where it cannot be had, the job prints `NOT RUN miri: ...` (reported by
#       `.ci/run` apart from what passed);
#   (b) the unit and integration tests under AddressSanitizer (stable rustc with
#       RUSTC_BOOTSTRAP=1), in target/asan; tests that need RLIMIT_AS skip themselves when
#       SPANALLOC_UNDER_ASAN is set (ASan reserves terabytes of shadow address space);
#   (c) the stress example, 8 threads.
# Every job that cannot run here (no toolchain, another host) prints one line starting
# `NOT RUN `, repeated in the summary; it counts neither as passed nor as failed.
# The last line is exactly "N passed, M failed" (tests counted from the test harness's
# result lines; the stress example counts as one test; a job that fails without a failing
# test, say a hang or a build error, counts as one failure); the exit status is non-zero
# when anything failed. About 10 minutes on 2 cores with a warm cargo cache.
#
#   bash .ci/robustness.sh          # all three
#   bash .ci/robustness.sh miri     # one of: miri, asan, stress
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

only="${1:-}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
jobs_failed=()

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

# Runs a job, teeing its output into the log; records a failure by name.
job() { # name command...
  local name=$1
  shift
  local t0
  t0=$(date +%s)
  echo "=== robustness: $name"
  if "$@" 2>&1 | tee -a "$log"; then
    echo "=== robustness: $name: PASS ($(($(date +%s) - t0)) s)"
  else
    echo "=== robustness: $name: FAIL ($(($(date +%s) - t0)) s)"
    jobs_failed+=("$name")
  fi
}

# ---------------------------------------------------------------------------------------
# (a) Miri. Only unit tests that use FakePages (or no page source), no threads and no
# syscalls besides the clock; of the thread-cache tests, the bin-table, walker, large-stash
# and reserve ones (raw-pointer list surgery on span records and free objects), not the long
# shadow-model runs. Test-name filters (libtest substring match):
MIRI_FILTERS=(
  check::tests::
  fixed_alloc::tests::
  pages::tests::
  page_map::tests::
  page_heap::tests::
  span::tests::
  size_class::tests::about_68_classes_up_to_32k
  heap::tests::
  stack::cfi::tests::
  stack::rule_cache::tests::
  thread_cache::tests::the_direct_bin_table
  thread_cache::tests::the_cache_walker
  thread_cache::tests::freed_large_spans
  thread_cache::tests::freed_large_objects_of_listed_lengths
  thread_cache::tests::a_thread_lends_one
  thread_cache::tests::a_shared_never_filled_cache
  thread_cache::tests::a_reserve_hands_back_a_segment
  thread_cache::tests::a_reclaim_gives_an_idle_threads_stash_back
  central_free_list::
)
# ...less these: threads (sync), files (the table freshness test), or too slow under
# Miri's interpreter for the budget (every size and every class; the page heap's proptest,
# 64 cases): `cargo test` runs them natively. (Of the size-class tests, only the table's
# shape runs here: the aligned lookup checked against a scan of the classes is safe
# arithmetic and took half of Miri's time.)
MIRI_SKIPS=(
  --skip lock_excludes_across_threads
  --skip every_size_maps_to_the_smallest_class_that_holds_it
  --skip division_magic_is_exact_over_each_span
  --skip waste_bounds_hold
  --skip size_class_table_is_fresh
  --skip random_sequences_keep_the_heap_consistent
)

miri() {
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri'; then
    # Added to an installed nightly, else nightly installed with it (minimal profile).
    if ! timeout 300 rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 &&
      ! timeout 600 rustup toolchain install nightly --profile minimal \
        --component miri --component rust-src >/dev/null 2>&1; then
      echo "NOT RUN miri: the nightly toolchain with its miri component cannot be installed here"
      return 0
    fi
  fi
  # Miri's own sysroot (a std built for it), once; separately, so that a failure here is
  # told apart from a failing test.
  if ! timeout 900 cargo +nightly miri setup; then
    echo "NOT RUN miri: cargo miri setup failed (no sysroot for Miri)"
    return 0
  fi
  # Leaks ignored: FakePages never frees what it maps, by design.
  MIRIFLAGS="-Zmiri-ignore-leaks" \
    cargo +nightly miri test -p spanalloc --lib -- "${MIRI_FILTERS[@]}" "${MIRI_SKIPS[@]}"
}

# ---------------------------------------------------------------------------------------
# (b) AddressSanitizer. A subshell (the parentheses), so that its exports do not reach the
# stress job after it.
asan() (
  local target
  target=$(rustc -vV | sed -n 's/^host: //p')
  if [ "$target" != "x86_64-unknown-linux-gnu" ]; then
    echo "NOT RUN asan: host $target (the job is set up for x86_64-unknown-linux-gnu)"
    return 0
  fi
  export RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan
  export SPANALLOC_UNDER_ASAN=1
  # Leaks off: FakePages never frees what it maps, by design.
  export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
  local bins
  # The library's tests only (-p): preload's run C programs under LD_PRELOAD, which an
  # ASan-instrumented libspanalloc.so cannot serve.
  bins=$(cargo test --release -p spanalloc --target "$target" --lib --tests --no-run 2>&1 |
    tee /dev/stderr | sed -n 's/.*Executable .* (\(.*\))$/\1/p') || return 1
  [ -n "$bins" ] || { echo "asan: no test binaries built"; return 1; }
  # One binary at a time, each under a hang timeout, so that one hang cannot stall CI or
  # hide the other binaries' results.
  local bin status=0
  for bin in $bins; do
    echo "--- asan: $bin"
    timeout -k 10 300 "$bin" || { echo "asan: $bin failed or hung (exit $?)"; status=1; }
  done
  return $status
)

# ---------------------------------------------------------------------------------------
# (c) The stress example, 8 threads.
stress() {
  # Reported as one test in the harness's format, so that it is counted like the others.
  # -p: the library alone, as a Rust program links it (not with preload's small-tls).
  if THREADS=8 SCALE=10 ITER=10 cargo run --release -p spanalloc --example stress; then
    echo "test result: ok. 1 passed; 0 failed; (stress example)"
  else
    echo "test result: FAILED. 0 passed; 1 failed; (stress example)"
    return 1
  fi
}

start=$(date +%s)
want miri && job "miri (pure data structures)" miri
want asan && job "AddressSanitizer (cargo test --lib --tests)" asan
want stress && job "stress example, 8 threads" stress

read -r tp tf <<<"$(grep -E '^test result: ' "$log" |
  sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' |
  awk '{p += $1; f += $2} END {print p + 0, f + 0}')"
passed=$tp
failed=$tf
# A job that failed without a failing test (a build error, a crash) still counts.
if [ ${#jobs_failed[@]} -gt 0 ] && [ "$failed" -eq 0 ]; then
  failed=${#jobs_failed[@]}
fi
echo
for j in "${jobs_failed[@]+"${jobs_failed[@]}"}"; do echo "robustness: failed job: $j"; done
grep '^NOT RUN ' "$log" | sed 's/^/robustness: /'
echo "robustness: $(($(date +%s) - start)) s in all"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#jobs_failed[@]} -eq 0 ]
