#!/usr/bin/env bash
# Instructions per operation of the C malloc ABI, counted exactly with callgrind, for
# libspanalloc.so and the other allocators under LD_PRELOAD (glibc without one):
#   same    malloc(64) + free of the same pointer
#   random  free of a random one of 4096 live 64 B objects, then malloc(64)
# Usage: scripts/callgrind_c.sh [extra-name=path.so ...]
# FEATURES adds cargo flags to the build of libspanalloc.so, e.g. the hardened build:
#   FEATURES="--features spanalloc/hardened" scripts/callgrind_c.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release -p spanalloc-preload -q ${FEATURES:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/pairs" bench/callgrind/pairs.c
lib=/usr/lib/$(uname -m)-linux-gnu
names=(glibc spanalloc)
paths=("" "${CARGO_TARGET_DIR:-$root/target}/release/libspanalloc.so")
for cand in mimalloc:libmimalloc.so.2 jemalloc:libjemalloc.so.2 tcmalloc:libtcmalloc_minimal.so.4; do
  [ -f "$lib/${cand#*:}" ] && names+=("${cand%%:*}") && paths+=("$lib/${cand#*:}")
done
for extra in "$@"; do names+=("${extra%%=*}"); paths+=("${extra#*=}"); done
count() { # preload shape n -> instructions
  local out
  out=$(env ${1:+LD_PRELOAD=$1} valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$work/pairs" "$2" "$3" 2>&1)
  echo "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
n1=100000
n2=200000
printf '%-18s %8s %8s\n' allocator same random
for i in "${!names[@]}"; do
  row=()
  for shape in same random; do
    c1=$(count "${paths[$i]}" $shape $n1)
    c2=$(count "${paths[$i]}" $shape $n2)
    row+=($(((c2 - c1) / (n2 - n1))))
  done
  printf '%-18s %8s %8s\n' "${names[$i]}" "${row[0]}" "${row[1]}"
done
