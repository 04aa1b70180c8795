/*
 * cxx_map: an ordered index of string keys, as C++ programs keep them.
 *
 * Imitates a C++ service's in-memory index (a symbol table, a session store, a config
 * tree): std::map<std::string, std::vector<int>> with keys of 12..60 characters (past the
 * short-string buffer, so each key is a heap block) and vectors of 0..40 ints. Each
 * operation builds a key string and then
 *   - 40%: assigns a fresh vector to the key (insert or replace),
 *   - 20%: erases the key,
 *   - 40%: looks the key up and, when found, appends to its vector (which regrows).
 * Node, key and vector blocks of different sizes come and go through operator new/delete,
 * with sized delete as compiled with -fsized-deallocation.
 *
 *   cxx_map OPS KEYS THREADS
 *
 *   OPS      operations per thread
 *   KEYS     key space per thread (the map holds about half of it)
 *   THREADS  threads, each with its own map (1 runs on the main thread)
 *
 * Fixed work: prints the seconds for all operations and the maps' destruction.
 */
#include "common.h"

#include <map>
#include <string>
#include <thread>
#include <vector>

static std::string make_key(uint64_t k) {
    // "user/<k>/" then a tail of k-dependent length: 12..60 characters in all
    std::string s = "user/";
    s += std::to_string(k);
    s += '/';
    s.append(4 + k % 44, static_cast<char>('a' + k % 26));
    return s;
}

static long run(long ops, long keys, uint64_t seed) {
    rng_t r = rng_seeded(seed);
    long sum = 0;
    {
        std::map<std::string, std::vector<int>> m;
        for (long i = 0; i < ops; i++) {
            uint64_t k = rng_below(&r, static_cast<uint64_t>(keys));
            uint64_t op = rng_below(&r, 10);
            std::string key = make_key(k);
            if (op < 4) {
                m[std::move(key)] = std::vector<int>(rng_below(&r, 41), static_cast<int>(i));
            } else if (op < 6) {
                m.erase(key);
            } else {
                auto it = m.find(key);
                if (it != m.end()) {
                    it->second.push_back(static_cast<int>(i));
                    sum += static_cast<long>(it->second.size());
                }
            }
        }
        sum += static_cast<long>(m.size());
    }
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s OPS KEYS THREADS\n", argv[0]);
        return 2;
    }
    long ops = static_cast<long>(arg_int(argc, argv, 1, 1000000));
    long keys = static_cast<long>(arg_int(argc, argv, 2, 100000));
    int threads = static_cast<int>(arg_int(argc, argv, 3, 1));
    if (ops < 0 || keys < 1 || threads < 1 || threads > 256) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    std::vector<long> sums(threads);
    double t0 = now_sec();
    if (threads == 1) {
        sums[0] = run(ops, keys, 1);
    } else {
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; t++)
            ts.emplace_back([&, t] { sums[t] = run(ops, keys, static_cast<uint64_t>(t) + 1); });
        for (auto &t : ts) t.join();
    }
    double t1 = now_sec();
    long sum = 0;
    for (long s : sums) sum += s;
    printf("# ops %ld keys %ld threads %d checksum %ld\n", ops, keys, threads, sum);
    report_seconds(t1 - t0);
    return 0;
}
