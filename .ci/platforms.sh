#!/usr/bin/env bash
# Platforms (docs/testing.md says what each checks):
#   (a) aarch64 Linux: the library's unit tests and the integration tests that run in one
#       process (and four of them again with `small-tls`, whose thread slot is an ordinary
#       thread local off x86-64), cross-built with Debian's aarch64 linker and run under
#       qemu-user (installed here when missing, with the rustup target). The tests that
#       re-run their own binary as a child process (death, forged, oom, huge, stats,
#       stress, startup, profiling's file check, the hardened and unhardened
#       demonstrations) cannot: without the kernel's binfmt_misc the child is an aarch64
#       file the host cannot execute;
#   (b) macOS, built and linted, not run (no macOS host): for aarch64-apple-darwin and
#       x86_64-apple-darwin, `cargo check` and `cargo clippy -- -D warnings` of the library
#       with and without the features internals and hardened, and clippy of every target
#       (tests, benchmarks, examples);
#   (c) any other OS stops at the one `compile_error!` that names what a port needs:
#       `cargo check` for x86_64-unknown-freebsd prints that error and no other.
# A job that cannot run here (no package, no rustup target) prints one line starting
# `NOT RUN ` and counts neither as passed nor as failed. The last line is exactly
# "N passed, M failed" (tests counted from the harness's result lines; each macOS build
# and the other OS's check count as one test); the exit status is non-zero when anything
# failed.
#
#   bash .ci/platforms.sh            # all three
#   bash .ci/platforms.sh aarch64    # one of: aarch64, macos, other-os
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

only="${1:-}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
jobs_failed=()
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

job() { # name command...
  local name=$1 t0
  shift
  t0=$(date +%s)
  echo "=== platforms: $name"
  if "$@" 2>&1 | tee -a "$log"; then
    echo "=== platforms: $name: PASS ($(($(date +%s) - t0)) s)"
  else
    echo "=== platforms: $name: FAIL ($(($(date +%s) - t0)) s)"
    jobs_failed+=("$name")
  fi
}

# Adds a rustup target unless it is there; false when it cannot be had.
have_target() {
  rustup target list --installed 2>/dev/null | grep -qx "$1" ||
    timeout 300 rustup target add "$1" >/dev/null 2>&1
}

aarch64() {
  local t=aarch64-unknown-linux-gnu
  if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross; } >/dev/null 2>&1
  fi
  if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    echo "NOT RUN aarch64: qemu-user or gcc-aarch64-linux-gnu cannot be installed here"
    return 0
  fi
  if ! have_target $t; then
    echo "NOT RUN aarch64: the rustup target $t cannot be installed here"
    return 0
  fi
  local status=0
  aarch64_test --lib --test background --test fork --test fragmentation --test global \
    --test large --test proptest_model --test reentrancy --test teardown --test threads \
    -- --skip freed_blocks_are_counted_and_reused || status=1
  # (That one test of proptest_model runs itself again as a child process.)
  # The `small-tls` build, as libspanalloc.so is built: off x86-64 its thread slot is an
  # ordinary thread local, code that no x86-64 build compiles.
  aarch64_test --features small-tls --test global --test large --test teardown \
    --test threads || status=1
  return $status
}

# `cargo test --release -p spanalloc` for aarch64 Linux under qemu, with more arguments.
aarch64_test() {
  # Its own target directory: the host's release build stays as it is.
  CARGO_TARGET_DIR=target/aarch64 \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    cargo test --release -p spanalloc --target aarch64-unknown-linux-gnu "$@"
}

# One counted test: the command's output is shown only when it fails.
counted() { # description command...
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "test result: ok. 1 passed; 0 failed; ($what)"
  else
    echo "$out" | grep -E '^(error|warning)' -A8 | head -60
    echo "test result: FAILED. 0 passed; 1 failed; ($what)"
    return 1
  fi
}

macos() {
  local t status=0
  for t in aarch64-apple-darwin x86_64-apple-darwin; do
    if ! have_target $t; then
      echo "NOT RUN macos: the rustup target $t cannot be installed here"
      continue
    fi
    counted "$t: check" cargo check -p spanalloc --target $t || status=1
    counted "$t: check, internals and hardened" \
      cargo check -p spanalloc --target $t --features internals,hardened || status=1
    counted "$t: clippy" cargo clippy -p spanalloc --target $t --lib -- -D warnings || status=1
    counted "$t: clippy, internals and hardened" cargo clippy -p spanalloc --target $t --lib \
      --features internals,hardened -- -D warnings || status=1
    # The tests, benchmarks and examples build too (internals through the dev-dependency).
    counted "$t: clippy of every target, hardened" cargo clippy -p spanalloc --target $t \
      --all-targets --features hardened -- -D warnings || status=1
  done
  return $status
}

other_os() {
  local t=x86_64-unknown-freebsd out
  if ! have_target $t; then
    echo "NOT RUN other-os: the rustup target $t cannot be installed here"
    return 0
  fi
  out=$(cargo check -p spanalloc --target $t 2>&1)
  echo "$out" | grep -E '^error'
  # Exactly one error, ours (cargo's closing "could not compile" line aside).
  if echo "$out" | grep -q '^error: spanalloc supports Linux and macOS only' &&
    [ "$(echo "$out" | grep -E '^error' | grep -vc '^error: could not compile')" -eq 1 ]; then
    echo "test result: ok. 1 passed; 0 failed; ($t stops at the port message alone)"
  else
    echo "test result: FAILED. 0 passed; 1 failed; ($t: not the port message alone)"
    return 1
  fi
}

start=$(date +%s)
want aarch64 && job "aarch64 Linux under qemu (unit and in-process tests)" aarch64
want macos && job "macOS builds and passes clippy (aarch64 and x86_64, not run)" macos
want other-os && job "another OS stops at one compile_error!" other_os

read -r tp tf <<<"$(grep -E '^test result: ' "$log" |
  sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' |
  awk '{p += $1; f += $2} END {print p + 0, f + 0}')"
echo "platforms: $(($(date +%s) - start)) s in all"
for j in "${jobs_failed[@]+"${jobs_failed[@]}"}"; do echo "platforms: failed job: $j"; done
grep '^NOT RUN ' "$log" | sort -u
if [ "${#jobs_failed[@]}" -gt 0 ] && [ "$tf" -eq 0 ]; then tf=${#jobs_failed[@]}; fi
echo "$tp passed, $tf failed"
[ "${#jobs_failed[@]}" -eq 0 ]
