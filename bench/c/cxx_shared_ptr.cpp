/*
 * cxx_shared_ptr: reference-counted object graphs, as C++ document and scene models hold
 * them.
 *
 * Imitates a program that builds graphs of std::shared_ptr nodes (a DOM, a scene graph, an
 * AST with shared subtrees) and lets them go: each graph has NODES nodes, half made with
 * std::make_shared (object and count in one block) and half with shared_ptr(new Node)
 * (a separate control block), each node linked as a child of a random earlier node, with
 * one in four also shared as a second child of another earlier node (a DAG, no cycles), a
 * weak_ptr back to its first parent and a label string. The last WINDOW graphs stay alive;
 * building a new one drops the oldest, freeing it node by node as the counts reach zero.
 *
 *   cxx_shared_ptr GRAPHS NODES THREADS [WINDOW]
 *
 *   GRAPHS   graphs built per thread
 *   NODES    nodes per graph
 *   THREADS  threads, each with its own graphs (1 runs on the main thread)
 *   WINDOW   graphs kept alive at once (default 8)
 *
 * Fixed work: prints the seconds for building and dropping every graph.
 */
#include "common.h"

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

struct Node {
    std::vector<std::shared_ptr<Node>> children;
    std::weak_ptr<Node> parent;
    std::string label;
    long value;
    explicit Node(long v) : label("node-label-" + std::to_string(v)), value(v) {}
};

static long run(long graphs, long nodes, long window, uint64_t seed) {
    rng_t r = rng_seeded(seed);
    long sum = 0;
    std::deque<std::shared_ptr<Node>> alive;
    std::vector<std::shared_ptr<Node>> order; // the graph under construction
    order.reserve(static_cast<size_t>(nodes));
    for (long g = 0; g < graphs; g++) {
        order.push_back(std::make_shared<Node>(g));
        for (long n = 1; n < nodes; n++) {
            std::shared_ptr<Node> node =
                (n & 1) ? std::make_shared<Node>(n) : std::shared_ptr<Node>(new Node(n));
            const std::shared_ptr<Node> &parent = order[rng_below(&r, order.size())];
            parent->children.push_back(node);
            node->parent = parent;
            if (rng_below(&r, 4) == 0) order[rng_below(&r, order.size())]->children.push_back(node);
            order.push_back(std::move(node));
        }
        // a reader's walk: every node's parent through its weak_ptr
        for (const auto &node : order)
            if (auto p = node->parent.lock()) sum += p->value;
        alive.push_back(order[0]);
        order.clear(); // from here on only the root holds the graph
        if (static_cast<long>(alive.size()) > window) alive.pop_front();
    }
    alive.clear();
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s GRAPHS NODES THREADS [WINDOW]\n", argv[0]);
        return 2;
    }
    long graphs = static_cast<long>(arg_int(argc, argv, 1, 200));
    long nodes = static_cast<long>(arg_int(argc, argv, 2, 2000));
    int threads = static_cast<int>(arg_int(argc, argv, 3, 1));
    long window = static_cast<long>(arg_int(argc, argv, 4, 8));
    if (graphs < 0 || nodes < 1 || threads < 1 || threads > 256 || window < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    std::vector<long> sums(threads);
    double t0 = now_sec();
    if (threads == 1) {
        sums[0] = run(graphs, nodes, window, 1);
    } else {
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; t++)
            ts.emplace_back(
                [&, t] { sums[t] = run(graphs, nodes, window, static_cast<uint64_t>(t) + 1); });
        for (auto &t : ts) t.join();
    }
    double t1 = now_sec();
    long sum = 0;
    for (long s : sums) sum += s;
    printf("# graphs %ld nodes %ld threads %d checksum %ld\n", graphs, nodes, threads, sum);
    report_seconds(t1 - t0);
    return 0;
}
