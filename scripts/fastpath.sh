#!/usr/bin/env bash
# Instructions per malloc+free pair on the fast path, counted exactly with callgrind, for
# spanalloc, glibc (System), mimalloc and jemalloc through their GlobalAlloc methods.
# Usage: scripts/fastpath.sh [size|inline]   (default 64 bytes through non-inlined shims;
# "inline": a constant 64-byte layout, the methods free to inline, as under LTO)
# The harness is compare/examples/fastpath.rs. mimalloc is the line the build links: v3 by
# default, v2 with FEATURES="--features mimalloc-v2"; FEATURES=--no-default-features
# measures spanalloc without its free checks.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-64}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
# jemalloc stays in under --no-default-features (spanalloc's free checks go).
cargo build --release -p spanalloc-compare --example fastpath -q --features jemalloc ${FEATURES:-}
bin=${CARGO_TARGET_DIR:-target}/release/examples/fastpath
count() { # allocator pairs -> total instructions
  local out
  out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$size" 2>&1)
  echo "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
n1=1000
n2=101000
declare -A per_pair
for a in empty spanalloc spanalloc-c system mimalloc jemalloc; do
  [ "$a" = spanalloc-c ] && [ "$size" = inline ] && continue
  c1=$(count "$a" $n1)
  c2=$(count "$a" $n2)
  per_pair[$a]=$(( (c2 - c1) / (n2 - n1) ))
done
base=${per_pair[empty]}
if [ "$size" = inline ]; then
  echo "malloc+free pair of 64 bytes, GlobalAlloc methods inlined with a constant layout (callgrind, instructions per pair)"
else
  echo "malloc+free pair of $size bytes through GlobalAlloc shims (callgrind, instructions per pair)"
fi
printf '%-10s %8s %18s\n' allocator total "minus loop+shims"
for a in spanalloc spanalloc-c system mimalloc jemalloc; do
  [ -z "${per_pair[$a]:-}" ] && continue
  printf '%-10s %8d %18d\n' "$a" "${per_pair[$a]}" $(( per_pair[$a] - base ))
done
printf '%-10s %8d   (the harness loop alone, with the shims in the shim form)\n' empty "$base"
