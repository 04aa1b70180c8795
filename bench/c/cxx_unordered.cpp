/*
 * cxx_unordered: hash maps built, churned and torn down, as a request handler does.
 *
 * Imitates a C++ server that parses each request into a small
 * std::unordered_map<std::string, std::string> (headers, JSON fields: 4..40 entries, keys
 * and values past the short-string buffer), looks a few fields up and throws the map away,
 * while a long-lived std::unordered_map<uint64_t, std::string> cache takes inserts and
 * erases (and rehashes as it grows) for every request.
 *
 *   cxx_unordered REQUESTS CACHE THREADS
 *
 *   REQUESTS  requests per thread
 *   CACHE     key space of each thread's cache (it holds about half of it)
 *   THREADS   threads, each with its own cache (1 runs on the main thread)
 *
 * Fixed work: prints the seconds for all requests and the caches' destruction.
 */
#include "common.h"

#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

static const char *const FIELD_NAMES[8] = {
    "content-type", "content-length", "x-request-identifier", "authorization-token",
    "accept-encoding-list", "user-agent-string", "cache-control-directive", "x-forwarded-for-chain",
};

static long run(long requests, long cache_keys, uint64_t seed) {
    rng_t r = rng_seeded(seed);
    long sum = 0;
    {
        std::unordered_map<uint64_t, std::string> cache;
        for (long i = 0; i < requests; i++) {
            std::unordered_map<std::string, std::string> req;
            long fields = static_cast<long>(rng_range(&r, 4, 40));
            for (long f = 0; f < fields; f++) {
                std::string key = FIELD_NAMES[f & 7];
                key += '-';
                key += std::to_string(f);
                std::string value(rng_range(&r, 8, 120), static_cast<char>('a' + f % 26));
                req.emplace(std::move(key), std::move(value));
            }
            auto it = req.find("content-type-0");
            if (it != req.end()) sum += static_cast<long>(it->second.size());

            uint64_t k = rng_below(&r, static_cast<uint64_t>(cache_keys));
            if (rng_below(&r, 3) == 0) {
                cache.erase(k);
            } else {
                cache[k] = std::string(rng_range(&r, 16, 200), 'v');
            }
        }
        sum += static_cast<long>(cache.size());
    }
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s REQUESTS CACHE THREADS\n", argv[0]);
        return 2;
    }
    long requests = static_cast<long>(arg_int(argc, argv, 1, 100000));
    long cache = static_cast<long>(arg_int(argc, argv, 2, 200000));
    int threads = static_cast<int>(arg_int(argc, argv, 3, 1));
    if (requests < 0 || cache < 1 || threads < 1 || threads > 256) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    std::vector<long> sums(threads);
    double t0 = now_sec();
    if (threads == 1) {
        sums[0] = run(requests, cache, 1);
    } else {
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; t++)
            ts.emplace_back([&, t] { sums[t] = run(requests, cache, static_cast<uint64_t>(t) + 1); });
        for (auto &t : ts) t.join();
    }
    double t1 = now_sec();
    long sum = 0;
    for (long s : sums) sum += s;
    printf("# requests %ld cache %ld threads %d checksum %ld\n", requests, cache, threads, sum);
    report_seconds(t1 - t0);
    return 0;
}
