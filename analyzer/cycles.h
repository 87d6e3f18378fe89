/*
 * Graph algorithms on heap snapshots (analyzer/snapshot.h): CPython's cycle
 * detection run offline, unreachable groups and their strongly connected
 * components, and shortest "why alive" reference chains from roots.
 * Pure functions of a snapshot; tests/unit/check_cycles.c drives them with
 * synthetic graphs.
 */
#ifndef REFSCOPE_CYCLES_H
#define REFSCOPE_CYCLES_H

#include <stddef.h>
#include <stdint.h>
#include "snapshot.h"

/* What CPython's collector would see, for every object of the snapshot:
 * candidates are GC-tracked objects outside the permanent generation;
 * gc_refs = refcount - references from other candidates (immortal objects
 * count as referenced from outside); every candidate reachable from one with
 * gc_refs > 0 is alive; the rest is unreachable. The gc.garbage list (the
 * list whose items are exactly the objects flagged RS_SNAP_OBJ_GARBAGE) holds
 * its items without keeping them "reachable", so that what it holds shows up
 * as uncollectable. unreachable[i] is set to 1 for unreachable objects.
 * gc_refs (optional, n entries) receives each candidate's external
 * reference count (0 for non-candidates). Returns the number of unreachable
 * objects or -ENOMEM. */
long rs_cycles_unreachable(const struct rs_snapshot *s, uint8_t *unreachable, int64_t *gc_refs);

/* Liveness of every object, the collector's view extended to the objects
 * it does not track (str, int, bytes, untracked tuples and dicts):
 *   RS_LIVE_ALIVE        reachable from a root; what leak hunting is about.
 *   RS_LIVE_UNREACHABLE  cyclic garbage, exactly as rs_cycles_unreachable.
 *   RS_LIVE_HELD         not unreachable itself, but every reference to it
 *                        comes from unreachable or held objects: it is freed
 *                        when they are (the name strings of garbage objects,
 *                        or a tracked object the garbage reaches through an
 *                        untracked one).
 * Roots are the objects referenced from outside the graph: refcount above
 * the references the snapshot knows, immortal or frozen. Like the
 * collector, the gc.garbage list does not make what it holds alive. An
 * object neither a root nor unreachable objects reach is counted alive:
 * nothing in the graph explains what keeps it, so it is not called garbage.
 * gc_refs (optional) as for rs_cycles_unreachable. Returns the number of
 * objects not alive, or -ENOMEM. */
enum rs_liveness { RS_LIVE_ALIVE = 0, RS_LIVE_UNREACHABLE = 1, RS_LIVE_HELD = 2 };
long rs_cycles_liveness(const struct rs_snapshot *s, uint8_t *state, int64_t *gc_refs);

/* Strongly connected components of the subgraph induced by mask[i] != 0
 * (iterative Tarjan). comp[i] receives the component of each masked node
 * (RS_SNAP_NONE for the others); *ncomp their number. cyclic[c] (optional,
 * sized n) is set when component c is a real cycle: more than one member, or
 * a self-reference. Returns 0 or -ENOMEM. */
int rs_cycles_scc(const struct rs_snapshot *s, const uint8_t *mask, uint32_t *comp, uint32_t *ncomp,
                  uint8_t *cyclic);

struct rs_cycle_group {
    uint32_t *members;        /* object indices, in index order               */
    size_t n;
    uint64_t bytes;           /* sum of sizes                                 */
    int uncollectable;        /* a member is in gc.garbage                     */
    size_t cycles;            /* number of cyclic SCCs inside                  */
    size_t held;              /* RS_LIVE_HELD objects freed with this group    */
    uint64_t held_bytes;
};

struct rs_cycles {
    struct rs_cycle_group *groups; /* sorted by bytes, largest first           */
    size_t n;
    uint32_t *comp;           /* SCC id per object (RS_SNAP_NONE: reachable)  */
    uint8_t *cyclic;          /* per SCC id                                   */
    uint8_t *state;           /* enum rs_liveness per object                   */
    size_t unreachable;       /* objects                                      */
    uint64_t unreachable_bytes;
    size_t held;              /* RS_LIVE_HELD objects (sum over the groups)    */
    uint64_t held_bytes;
};

/* Unreachable groups: weakly connected parts of the unreachable subgraph,
 * each a union of SCCs, with the held objects each one alone keeps alive
 * (one reached from two groups counts for one of them). Returns 0 or
 * -ENOMEM. */
int rs_cycles_find(const struct rs_snapshot *s, struct rs_cycles *out);
void rs_cycles_free(struct rs_cycles *c);

/* Shortest reference chains. Roots: module objects first (a chain then
 * starts at a module global), then objects referenced from outside the
 * snapshot's graph (a thread's frame, the interpreter: refcount above the
 * references the snapshot knows, or immortal), then, so that every object
 * rs_cycles_liveness finds alive has a chain, each alive object still
 * unreached (kept by frozen objects, or by nothing the graph shows) in
 * index order. parent[i] / parent_edge[i]
 * describe the BFS tree (RS_SNAP_NONE for roots and unreached objects);
 * depth[i] is UINT32_MAX for unreached ones. Returns 0 or -ENOMEM. */
struct rs_chain_tree {
    uint32_t *parent;
    uint64_t *parent_edge;
    uint32_t *depth;
};
int rs_chain_tree_build(const struct rs_snapshot *s, struct rs_chain_tree *t);
void rs_chain_tree_free(struct rs_chain_tree *t);

/* The chain to object `target` as readable steps ("module __main__",
 * "dict", "key 'cache'", "list", "index 3", "bytes"), written as
 * NUL-separated strings into buf. Returns the number of steps (0 when
 * unreachable). */
int rs_chain_steps(const struct rs_snapshot *s, const struct rs_chain_tree *t, uint32_t target,
                   char *buf, size_t len);

#endif
