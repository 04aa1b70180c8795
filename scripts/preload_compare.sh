#!/usr/bin/env bash
# Wall time and peak RSS of two real programs with glibc malloc, libspanalloc.so, Debian's
# libmimalloc and libjemalloc (all through LD_PRELOAD except glibc), from one run, as ratios
# to glibc. A measurement, not a test: these machines are noisy, read only the ratios.
#
#   scripts/preload_compare.sh [repeats]     (default 5; the best of the repeats is kept)
#
# Workloads: python3 running preload/tests/programs/alloc_heavy.py with PYTHONMALLOC=malloc
# (every object through malloc) and with python's own pymalloc (only larger blocks reach
# malloc), and GNU sort of a generated 2-million-line file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
repeats="${1:-5}"

libdir=/usr/lib/x86_64-linux-gnu
mimalloc="$libdir/libmimalloc.so.2"
jemalloc="$libdir/libjemalloc.so.2"
need=()
[[ -x /usr/bin/time ]] || need+=(time)
[[ -f $mimalloc ]] || need+=(libmimalloc2.0)
[[ -f $jemalloc ]] || need+=(libjemalloc2)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    echo "installing: ${need[*]}" >&2
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -f $mimalloc ]] || mimalloc="$(ls $libdir/libmimalloc.so.* | head -1)"

cargo build --release -p spanalloc-preload >&2
ours="${CARGO_TARGET_DIR:-$root/target}/release/libspanalloc.so"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
awk 'BEGIN { x = 12345; for (i = 0; i < 2000000; i++) { x = (x * 1103515245 + 12345) % 2147483648;
    printf "%d %s line-%d\n", x % 100000, substr("abcdefghijklmnopqrstuvwxyz", x % 26 + 1, 5 + x % 20), i } }' \
    >"$work/big.txt"
script="$root/preload/tests/programs/alloc_heavy.py"

names=(glibc spanalloc mimalloc jemalloc)
preloads=("" "$ours" "$mimalloc" "$jemalloc")

# run_once PRELOAD CMD... -> "seconds kib"
run_once() {
    local preload=$1
    shift
    if [[ -n $preload ]]; then
        LD_PRELOAD="$preload" /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null
    else
        env -u LD_PRELOAD /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null
    fi
    cat "$work/t"
}

# Repeats go round the allocators (glibc, spanalloc, mimalloc, jemalloc, glibc, ...) so that
# a change in the machine's load touches them all alike; each keeps its best time and RSS.
declare -A T M
workloads=("python3 (PYTHONMALLOC=malloc)" "python3 (pymalloc)" "sort (2M lines)")
for w in "${!workloads[@]}"; do
    for _ in $(seq "$repeats"); do
        for i in "${!names[@]}"; do
            case $w in
            0) r=$(PYTHONMALLOC=malloc PYTHONHASHSEED=0 run_once "${preloads[$i]}" python3 "$script" 30) ;;
            1) r=$(PYTHONHASHSEED=0 run_once "${preloads[$i]}" python3 "$script" 30) ;;
            2) r=$(cd "$work" && LC_ALL=C run_once "${preloads[$i]}" sort --parallel=2 -k2,2 -k1,1n big.txt) ;;
            esac
            t=${r% *}
            m=${r#* }
            if [[ -z ${T[$w,$i]:-} ]] || awk -v a="$t" -v b="${T[$w,$i]}" 'BEGIN { exit !(a < b) }'; then
                T[$w,$i]=$t
            fi
            if [[ -z ${M[$w,$i]:-} ]] || ((m < M[$w,$i])); then M[$w,$i]=$m; fi
        done
    done
done

printf '%-30s %-10s %9s %10s %11s %10s\n' workload allocator "time (s)" "time/glibc" "peak RSS MiB" "RSS/glibc"
for w in "${!workloads[@]}"; do
    for i in "${!names[@]}"; do
        awk -v w="${workloads[$w]}" -v n="${names[$i]}" -v t="${T[$w,$i]}" -v m="${M[$w,$i]}" \
            -v t0="${T[$w,0]}" -v m0="${M[$w,0]}" 'BEGIN {
            printf "%-30s %-10s %9.2f %10.2f %11.1f %10.2f\n", w, n, t, (t0 > 0 ? t / t0 : 0), m / 1024, m / m0 }'
    done
done
echo "(best of $repeats runs each; ratios are to glibc in the same run)"
