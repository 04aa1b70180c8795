#!/usr/bin/env bash
# Builds the real-program shape benchmarks: every bench/c/*.c with `cc -O2` and every
# bench/c/*.cpp with `c++ -O2 -fsized-deallocation`, one program per file, into OUTDIR
# (default target/realprog), and the runner's helper bench/tools/measure.c. A program is rebuilt only when its source or common.h is newer
# than it. scripts/realprog.py calls this; it can also be run by hand:
#
#   bench/build.sh [OUTDIR]
#
# CC, CXX, CFLAGS and CXXFLAGS from the environment are honoured.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/../target/realprog}"
mkdir -p "$out"
cc="${CC:-cc}"
cxx="${CXX:-c++}"
cflags="${CFLAGS:--O2}"
cxxflags="${CXXFLAGS:--O2}"
common="$here/c/common.h"
warn=(-Wall -Wextra)

fresh() { # fresh OUT SRC: OUT exists and is newer than SRC and common.h
    [[ -x $1 && $1 -nt $2 && $1 -nt $common && $1 -nt ${BASH_SOURCE[0]} ]]
}

for src in "$here"/c/*.c "$here"/tools/measure.c; do
    bin="$out/$(basename "$src" .c)"
    fresh "$bin" "$src" && continue
    echo "cc $(basename "$src")" >&2
    # shellcheck disable=SC2086
    "$cc" $cflags "${warn[@]}" -pthread -o "$bin" "$src" -lm
done
for src in "$here"/c/*.cpp; do
    bin="$out/$(basename "$src" .cpp)"
    fresh "$bin" "$src" && continue
    echo "c++ $(basename "$src")" >&2
    # shellcheck disable=SC2086
    "$cxx" $cxxflags -fsized-deallocation "${warn[@]}" -pthread -o "$bin" "$src"
done
