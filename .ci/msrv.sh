#!/usr/bin/env bash
# The `rust-version` of every crate of the workspace, checked with that very toolchain:
# `cargo +<rust-version> check` of the crate's library (spanalloc: with its default
# features, with none, with `small-tls`, and with `override`, `internals`, `hardened` and
# `profiling` together; preload: as is). Clippy's `incompatible_msrv`
# lint (on by default once rust-version is set; `.ci/run` denies warnings) catches library
# APIs that are too new; only a build with the old compiler catches language features
# (preload's naked functions) and edition requirements. The dev-dependencies (criterion)
# need a newer Rust than the library, so tests and benches are not checked here.
#
# Installs each toolchain with rustup (minimal profile, under a timeout). When one cannot be
# installed the checks of its crate print `NOT RUN ...`; when nothing could be checked the
# script exits 3, which `.ci/run` reports as not run (never as passed). The last line is
# exactly "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=target/msrv CARGO_TERM_COLOR=never

# name rust-version, one crate a line ("-" for a crate without one).
crates=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    print(p["name"], p.get("rust_version") or "-")
') || { echo "msrv: cargo metadata failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
not_run=0
while read -r name version; do
  if [ "$version" = "-" ]; then
    echo "FAIL $name: no rust-version in its Cargo.toml"
    failed=$((failed + 1))
    continue
  fi
  if ! rustup run "$version" rustc --version >/dev/null 2>&1 &&
    ! timeout 300 rustup toolchain install "$version" --profile minimal >/dev/null 2>&1; then
    echo "NOT RUN msrv $name: Rust $version cannot be installed here"
    not_run=$((not_run + 1))
    continue
  fi
  case $name in
    spanalloc) feature_sets=("" "--no-default-features" "--features small-tls" "--features override,internals,hardened,profiling") ;;
    *) feature_sets=("") ;;
  esac
  for features in "${feature_sets[@]}"; do
    what="$name ${features:-(default features)} with Rust $version"
    # shellcheck disable=SC2086 # $features is zero or two words
    if out=$(cargo "+$version" check -q -p "$name" --lib $features 2>&1); then
      echo "PASS $what"
      passed=$((passed + 1))
    else
      echo "$out" | tail -20
      echo "FAIL $what"
      failed=$((failed + 1))
    fi
  done
done <<<"$crates"

echo "$passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  exit 1
fi
if [ "$passed" -eq 0 ] && [ "$not_run" -gt 0 ]; then
  exit 3
fi
exit 0
