// Calls every C++ allocation operator libspanalloc.so exports and prints one line per
// check. Run under LD_PRELOAD=libspanalloc.so; tests/cxx_program.rs compares the output
// with cxx_ops.expected. Build with -std=c++17 -O0 -fno-builtin (every call kept) and
// -fsized-deallocation (GCC's default for C++14 and later).
#include <dlfcn.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

static int failures;

static void check(const char *what, bool ok) {
    std::printf("%s: %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static bool aligned(const void *p, std::size_t a) { return ((std::uintptr_t)p & (a - 1)) == 0; }

// The 20 operators libstdc++ exports (nm -D --defined-only libstdc++.so.6).
static const char *const operators[] = {
    "_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t", "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm", "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t", "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t", "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

/// Whether the code at `addr` belongs to libspanalloc.so.
static bool in_spanalloc(const void *addr) {
    Dl_info info;
    return addr && dladdr(addr, &info) && info.dli_fname && std::strstr(info.dli_fname, "libspanalloc");
}

// Too large for any allocator: fails at once, without touching memory.
static const std::size_t HUGE_SIZE = (std::size_t)1 << 62;

static int handler_calls;
static void handler_once() {
    handler_calls++;
    std::set_new_handler(nullptr);
}
static void handler_thrice() {
    if (++handler_calls == 3) std::set_new_handler(nullptr);
}
struct custom_error {};
static void handler_throws() {
    handler_calls++;
    throw custom_error();
}
static void *reserve;
static void handler_frees_reserve() {
    handler_calls++;
    std::free(reserve);
    reserve = nullptr;
    std::set_new_handler(nullptr);
}

template <typename F> static bool throws_bad_alloc(F f) {
    try {
        f();
    } catch (const std::bad_alloc &) {
        return true;
    }
    return false;
}

// Optimised, so that the values live across the call sit in callee-saved registers
// (rbx, rbp, r12-r14): the unwinder must restore them through the assembly frames of
// operator new, whose call-frame information says where it saved rbx and r12.
__attribute__((noinline, optimize("O2"))) static long live_across_throw(long a, long b, long c, long d,
                                                                        long e) {
    long x1 = a * 3, x2 = b * 5, x3 = c * 7, x4 = d * 11, x5 = e * 13;
    try {
        void *p = ::operator new((std::size_t)a << 60);
        ::operator delete(p);
    } catch (const std::bad_alloc &) {
        return x1 + x2 * 2 + x3 * 3 + x4 * 4 + x5 * 5;
    } catch (const custom_error &) {
        return -(x1 + x2 * 2 + x3 * 3 + x4 * 4 + x5 * 5);
    }
    return 0;
}

struct alignas(128) Wide {
    char bytes[300];
};

/// Virtual memory size of the process in bytes.
static std::size_t vm_size() {
    unsigned long pages = 0;
    FILE *f = std::fopen("/proc/self/statm", "r");
    if (f) {
        if (std::fscanf(f, "%lu", &pages) != 1) pages = 0;
        std::fclose(f);
    }
    return pages * (std::size_t)sysconf(_SC_PAGESIZE);
}

int main() {
    // Every operator resolves to libspanalloc.so, and the ones this code calls too.
    bool all = true;
    for (const char *name : operators) {
        bool ours = in_spanalloc(dlsym(RTLD_DEFAULT, name));
        if (!ours) std::printf("  %s does not resolve to libspanalloc.so\n", name);
        all &= ours;
    }
    check("all 20 operators resolve to libspanalloc.so", all);
    void *(*op_new)(std::size_t) = &::operator new;
    void (*op_delete_sized)(void *, std::size_t) noexcept = &::operator delete;
    void *(*op_new_aligned)(std::size_t, std::align_val_t) = &::operator new;
    check("&operator new, &operator delete(void *, size_t) are spanalloc's",
          in_spanalloc((void *)op_new) && in_spanalloc((void *)op_delete_sized) &&
              in_spanalloc((void *)op_new_aligned));

    void *a = ::operator new(0), *b = ::operator new(0);
    void *c = ::operator new[](0), *d = ::operator new[](0);
    check("new(0), new[](0) unique and non-null", a && b && c && d && a != b && c != d && a != c);
    ::operator delete(a);
    ::operator delete(b, (std::size_t)0);
    ::operator delete[](c);
    ::operator delete[](d, (std::size_t)0);

    bool ok = true;
    for (std::size_t n = 1; n < 70000; n += n < 5000 ? 7 : 4099) {
        char *p = (char *)::operator new(n);
        char *q = (char *)::operator new[](n);
        ok &= p && q && aligned(p, 16) && aligned(q, 16) && malloc_usable_size(p) >= n;
        std::memset(p, 0x5a, n);
        std::memset(q, 0xa5, n);
        ok &= p[n - 1] == 0x5a && q[0] == (char)0xa5;
        ::operator delete(p, n);
        ::operator delete[](q, n);
    }
    check("new, new[] 16-aligned and usable; sized delete, delete[]", ok);

    // A sized delete puts the block back in this thread's cache: the next new of the size
    // gets it back.
    ok = true;
    for (std::size_t n : {8, 24, 100, 1000, 4000, 20000}) {
        void *p = ::operator new(n);
        ::operator delete(p, n);
        void *q = ::operator new(n);
        ok &= p == q;
        ::operator delete(q, n);
    }
    check("sized delete returns the block to this thread's cache", ok);

    ok = true;
    for (std::size_t al : {1, 2, 8, 16, 32, 64, 256, 4096, 65536, 1 << 21}) {
        for (std::size_t n : {0, 1, 100, 5000, 100000}) {
            std::align_val_t av = (std::align_val_t)al;
            char *p = (char *)::operator new(n, av);
            char *q = (char *)::operator new[](n, av);
            char *r = (char *)::operator new(n, av, std::nothrow);
            char *s = (char *)::operator new[](n, av, std::nothrow);
            ok &= p && q && r && s && aligned(p, al) && aligned(q, al) && aligned(r, al) &&
                  aligned(s, al);
            if (n) {
                std::memset(p, 1, n);
                std::memset(q, 2, n);
                std::memset(r, 3, n);
                std::memset(s, 4, n);
            }
            ::operator delete(p, n, av);
            ::operator delete[](q, av);
            ::operator delete(r, av, std::nothrow);
            ::operator delete[](s, n, av);
        }
    }
    check("aligned new, new[], nothrow: aligned; every aligned delete", ok);

    Wide *w = new Wide;
    Wide *ws = new Wide[5];
    check("new of an over-aligned type (alignas 128)", aligned(w, 128) && aligned(ws, 128));
    delete w;
    delete[] ws;

    void *n1 = ::operator new(100, std::nothrow), *n2 = ::operator new[](100, std::nothrow);
    check("nothrow new, new[]", n1 && n2 && aligned(n1, 16) && aligned(n2, 16));
    ::operator delete(n1, std::nothrow);
    ::operator delete[](n2, std::nothrow);

    ::operator delete(nullptr);
    ::operator delete[](nullptr);
    ::operator delete(nullptr, 16);
    ::operator delete[](nullptr, 16);
    ::operator delete(nullptr, std::nothrow);
    ::operator delete[](nullptr, std::nothrow);
    ::operator delete(nullptr, std::align_val_t(64));
    ::operator delete[](nullptr, std::align_val_t(64));
    ::operator delete(nullptr, 16, std::align_val_t(64));
    ::operator delete[](nullptr, 16, std::align_val_t(64));
    ::operator delete(nullptr, std::align_val_t(64), std::nothrow);
    ::operator delete[](nullptr, std::align_val_t(64), std::nothrow);
    check("every delete of nullptr is a no-op", true);

    // Failure with no new-handler.
    check("new(huge) throws std::bad_alloc",
          throws_bad_alloc([] { ::operator new(HUGE_SIZE); }) &&
              throws_bad_alloc([] { ::operator new(SIZE_MAX); }));
    check("new[](huge) throws std::bad_alloc", throws_bad_alloc([] { ::operator new[](HUGE_SIZE); }));
    check("aligned new(huge), new[](huge) throw std::bad_alloc",
          throws_bad_alloc([] { ::operator new(HUGE_SIZE, std::align_val_t(64)); }) &&
              throws_bad_alloc([] { ::operator new[](HUGE_SIZE, std::align_val_t(4096)); }));
    check("aligned new with an alignment not a power of two throws std::bad_alloc",
          throws_bad_alloc([] { ::operator new(16, std::align_val_t(24)); }));
    check("nothrow new(huge), new[](huge) return null",
          ::operator new(HUGE_SIZE, std::nothrow) == nullptr &&
              ::operator new[](HUGE_SIZE, std::nothrow) == nullptr);
    check("nothrow aligned new(huge), new[](huge), bad alignment return null",
          ::operator new(HUGE_SIZE, std::align_val_t(64), std::nothrow) == nullptr &&
              ::operator new[](HUGE_SIZE, std::align_val_t(64), std::nothrow) == nullptr &&
              ::operator new(16, std::align_val_t(24), std::nothrow) == nullptr);

    // The new-handler loop.
    handler_calls = 0;
    std::set_new_handler(handler_once);
    check("new(huge): the new-handler is called, then std::bad_alloc",
          throws_bad_alloc([] { ::operator new(HUGE_SIZE); }) && handler_calls == 1 &&
              std::get_new_handler() == nullptr);
    handler_calls = 0;
    std::set_new_handler(handler_thrice);
    check("new[](huge): the new-handler is called until it uninstalls itself",
          throws_bad_alloc([] { ::operator new[](HUGE_SIZE); }) && handler_calls == 3);
    handler_calls = 0;
    std::set_new_handler(handler_once);
    check("aligned new(huge): the new-handler is called, then std::bad_alloc",
          throws_bad_alloc([] { ::operator new(HUGE_SIZE, std::align_val_t(256)); }) &&
              handler_calls == 1);
    handler_calls = 0;
    std::set_new_handler(handler_throws);
    bool custom = false;
    try {
        ::operator new(HUGE_SIZE);
    } catch (const custom_error &) {
        custom = true;
    }
    check("an exception the new-handler throws reaches the caller", custom && handler_calls == 1);
    handler_calls = 0;
    check("nothrow new(huge) with a throwing new-handler: null",
          ::operator new(HUGE_SIZE, std::nothrow) == nullptr && handler_calls == 1);
    handler_calls = 0;
    check("nothrow aligned new[](huge) with a throwing new-handler: null",
          ::operator new[](HUGE_SIZE, std::align_val_t(64), std::nothrow) == nullptr &&
              handler_calls == 1);
    handler_calls = 0;
    std::set_new_handler(handler_once);
    check("nothrow new[](huge): the new-handler is called, then null",
          ::operator new[](HUGE_SIZE, std::nothrow) == nullptr && handler_calls == 1);
    std::set_new_handler(nullptr);

    long want = 4 * 3 + 5 * 5 * 2 + 6 * 7 * 3 + 7 * 11 * 4 + 8 * 13 * 5;
    check("registers the caller keeps across a throwing new are restored",
          live_across_throw(4, 5, 6, 7, 8) == want);
    std::set_new_handler(handler_throws);
    check("... and across an exception from the new-handler", live_across_throw(4, 5, 6, 7, 8) == -want);
    std::set_new_handler(nullptr);

    // A new-handler that frees memory: the retry succeeds. The address space is capped
    // below what the request needs, so only the freed reserve can serve it.
    const std::size_t MiB = 1 << 20;
    reserve = std::malloc(100 * MiB);
    std::memset(reserve, 1, 100 * MiB);
    struct rlimit old_limit;
    getrlimit(RLIMIT_AS, &old_limit);
    struct rlimit limit = old_limit;
    limit.rlim_cur = vm_size() + 40 * MiB;
    bool capped = setrlimit(RLIMIT_AS, &limit) == 0;
    handler_calls = 0;
    std::set_new_handler(handler_frees_reserve);
    void *big = nullptr;
    try {
        big = ::operator new(90 * MiB);
    } catch (const std::bad_alloc &) {
    }
    std::set_new_handler(nullptr);
    setrlimit(RLIMIT_AS, &old_limit);
    check("new: a new-handler that frees memory, then the retry succeeds",
          capped && big && handler_calls == 1 && reserve == nullptr);
    if (big) std::memset(big, 2, 90 * MiB);
    ::operator delete(big, 90 * MiB);
    std::free(reserve);

    // Exceptions through operator new on another thread.
    bool thread_ok = false;
    std::thread t([&] {
        std::vector<void *> v;
        for (int i = 0; i < 1000; i++) v.push_back(::operator new(i));
        thread_ok = throws_bad_alloc([] { ::operator new(HUGE_SIZE); });
        for (int i = 0; i < 1000; i++) ::operator delete(v[i], i);
    });
    t.join();
    check("std::bad_alloc on another thread", thread_ok);

    // The standard library's containers over these operators.
    std::vector<std::string> strings;
    for (int i = 0; i < 20000; i++) strings.push_back(std::string(i % 100, 'x') + std::to_string(i));
    std::map<int, std::string> m;
    for (int i = 0; i < 20000; i++) m[i * 7 % 20000] = strings[i];
    auto shared = std::make_shared<std::vector<long>>(100000, 3L);
    std::unique_ptr<Wide[]> wides(new Wide[100]);
    std::size_t total = 0;
    for (auto &kv : m) total += kv.second.size();
    check("containers", strings.size() == 20000 && m.size() == 20000 && total > 20000 * 50 &&
                            (*shared)[99999] == 3 && aligned(wides.get(), 128));

    std::printf("%d failures\n", failures);
    return failures != 0;
}
