#!/usr/bin/env bash
# libspanalloc.so under LD_PRELOAD: a C program that calls every exported symbol, then real
# programs (python3, sort, git, gcc, a pthreads program) whose output must be the same with
# and without spanalloc. Each case prints PASS or FAIL; the last line is "N passed, M failed".
# Installs what it needs with apt-get, only if missing. Run from anywhere in the repository.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need=()
command -v cc >/dev/null || need+=(gcc)
command -v gcc >/dev/null || need+=(gcc)
command -v python3 >/dev/null || need+=(python3)
command -v git >/dev/null || need+=(git)
command -v sort >/dev/null || need+=(coreutils)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -p spanalloc-preload
target="${CARGO_TARGET_DIR:-$root/target}"
lib="$target/release/libspanalloc.so"
[[ -f $lib ]] || { echo "missing $lib"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; failed=$((failed + 1)); }

# Runs "$@" twice, plain and under LD_PRELOAD (with SPANALLOC_SHOW_STATS=1, so that the
# library proves it was loaded), in directory $dir; compares exit status and stdout.
# Usage: same_output NAME DIR SETUP-COMMAND CMD...  (SETUP runs before each run, in DIR).
same_output() {
    local name=$1 dir=$2 setup=$3
    shift 3
    local plain="$work/$name.plain" ours="$work/$name.ours" err="$work/$name.err"
    local rc_plain=0 rc_ours=0
    (cd "$dir" && eval "$setup" && env -u LD_PRELOAD "$@") >"$plain" 2>"$work/$name.plain.err" || rc_plain=$?
    (cd "$dir" && eval "$setup" && LD_PRELOAD="$lib" SPANALLOC_SHOW_STATS=1 "$@") >"$ours" 2>"$err" || rc_ours=$?
    if [[ $rc_plain -ne 0 || $rc_ours -ne 0 ]]; then
        fail "$name" "exit status $rc_plain without, $rc_ours with libspanalloc.so; $(grep -v '^spanalloc: peak' "$err" | head -3)"
    elif ! cmp -s "$plain" "$ours"; then
        fail "$name" "output differs: $(diff "$plain" "$ours" | head -5)"
    elif ! grep -q '^spanalloc: peak ' "$err"; then
        fail "$name" "libspanalloc.so was not loaded (no stats line)"
    elif grep -v '^spanalloc: peak ' "$err" | grep -q '^spanalloc:'; then
        fail "$name" "$(grep '^spanalloc:' "$err" | grep -v '^spanalloc: peak' | head -1)"
    else
        pass "$name ($(wc -l <"$plain") lines of output)"
    fi
}

# 1. Every exported symbol from C.
cc -O0 -fno-builtin -w -pthread -o "$work/api" preload/tests/c/api.c -ldl
if LD_PRELOAD="$lib" "$work/api" >"$work/api.out" 2>"$work/api.err" &&
    cmp -s "$work/api.out" preload/tests/c/api.expected; then
    pass "c-api (every exported symbol)"
else
    fail "c-api" "$(diff preload/tests/c/api.expected "$work/api.out" | head -5) $(head -3 "$work/api.err")"
fi
for case in invalid-free:"invalid free: pointer not allocated by spanalloc" \
    double-free:"double free detected" interior-free:"invalid free: pointer into the middle of an object"; do
    arg=${case%%:*}
    msg="spanalloc: ${case#*:}"
    # (A subshell of two commands, so that bash's "Aborted" notice goes to /dev/null.)
    rc=$( (LD_PRELOAD="$lib" "$work/api" "$arg" >/dev/null 2>"$work/fatal.err"; echo $?) 2>/dev/null)
    if [[ $rc -eq 134 ]] && grep -qxE "$msg at 0x[0-9a-f]+" "$work/fatal.err"; then
        pass "c-api $arg stops with '$msg'"
    else
        fail "c-api $arg" "exit $rc, stderr: $(head -2 "$work/fatal.err")"
    fi
done

# 2. python3, allocation-heavy: with pymalloc (the default) and with every object from malloc.
script="$root/preload/tests/programs/alloc_heavy.py"
same_output python3 "$work" "export PYTHONHASHSEED=0" python3 "$script" 20
same_output python3-pythonmalloc=malloc "$work" "export PYTHONHASHSEED=0 PYTHONMALLOC=malloc" python3 "$script" 20

# 2b. Address space at start-up: the page heap maps 2 MiB first and doubles its step, so a
#     program under LD_PRELOAD holds a few MiB more than without (the page map's root and
#     first leaf, the first mapping), and python3 starts a thread under a 48 MiB RLIMIT_AS
#     as it does without spanalloc.
cat >"$work/vmsize.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    void *p = malloc(16);
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0) printf("%ld\n", strtol(line + 7, 0, 10));
    free(p);
    return 0;
}
EOF
cc -O1 -o "$work/vmsize" "$work/vmsize.c"
plain_kib=$("$work/vmsize")
ours_kib=$(LD_PRELOAD="$lib" "$work/vmsize")
extra_kib=$((ours_kib - plain_kib))
# The library's own mapping (about 6.5 MiB, the profiler's symbolizer included), the page
# map's root (2 MiB) and first leaf (2 MiB: span records and small-object words), the first
# 2 MiB mapping; untouched, address space only.
if ((extra_kib <= 12 * 1024)); then
    pass "address space at start: $((extra_kib / 1024)) MiB more than without (at most 12)"
else
    fail "address space at start" "$((extra_kib / 1024)) MiB more than without (at most 12)"
fi
thread='import threading; t = threading.Thread(target=lambda: None); t.start(); t.join(); print("ok")'
if ! (ulimit -v 49152 && python3 -c "$thread") >/dev/null 2>&1; then
    echo "NOT RUN python3 thread under RLIMIT_AS 48 MiB: python3 itself needs more here"
elif (ulimit -v 49152 && LD_PRELOAD="$lib" python3 -c "$thread") >"$work/rlimit.out" 2>&1; then
    pass "python3 starts a thread under RLIMIT_AS = 48 MiB"
else
    fail "python3 thread under RLIMIT_AS = 48 MiB" "$(tail -1 "$work/rlimit.out")"
fi

# 3. sort of a large generated file (about 60 MB, 2 million lines), in memory and with
#    temporary files, with several threads.
awk 'BEGIN { x = 12345; for (i = 0; i < 2000000; i++) { x = (x * 1103515245 + 12345) % 2147483648;
    printf "%d %s line-%d\n", x % 100000, substr("abcdefghijklmnopqrstuvwxyz", x % 26 + 1, 5 + x % 20), i } }' \
    >"$work/big.txt"
same_output sort "$work" "export LC_ALL=C" sort --parallel=2 -k2,2 -k1,1n big.txt
same_output sort-small-buffer "$work" "export LC_ALL=C" sort -S 4M -T "$work" -n big.txt

# 4. git on a throwaway repository: init, add, commit, log (fixed identities and dates, so
#    the commit hashes are the same in both runs).
gitrun() {
    rm -rf repo && mkdir repo && cd repo &&
        export GIT_AUTHOR_NAME=ci GIT_AUTHOR_EMAIL=ci@example.com GIT_COMMITTER_NAME=ci \
            GIT_COMMITTER_EMAIL=ci@example.com GIT_AUTHOR_DATE="2020-01-01T00:00:00Z" \
            GIT_COMMITTER_DATE="2020-01-01T00:00:00Z" GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 &&
        git init -q -b main . &&
        for i in $(seq 1 30); do
            seq 1 $((i * 500)) >"file$i.txt"
            git add "file$i.txt"
            git commit -q -m "commit $i"
        done &&
        git log --stat --format='%H %s' && git gc -q && git fsck --full && git log --oneline | wc -l
}
export -f gitrun
same_output git "$work" "true" bash -c gitrun

# 5. gcc compiling a C file (the driver, cc1 and as all run under the preload).
cp preload/tests/c/threads.c "$work/prog.c"
same_output gcc "$work" "rm -f prog.s" bash -c 'gcc -O2 -S -o prog.s prog.c && cat prog.s'

# 6. A pthreads program that frees across threads (producer/consumer pairs, thread exits).
cc -O2 -pthread -o "$work/threads" preload/tests/c/threads.c
same_output threads "$work" "true" "$work/threads" 8 50000

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
