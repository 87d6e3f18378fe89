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

/* Strongly connected components of the subgraph induced by mask[i] != 0
 * (iterative Tarjan). comp[i] receives the component of each masked node
 * (RS_SNAP_NONE for the others); *ncomp their number. cyclic[c] (optional,
 * sized n) is set when component c is a real cycle: more than one member, or
 * a self-reference. Returns 0 or -ENOMEM. */
int rs_cycles_scc(const struct rs_snapshot *s, const uint8_t *mask, uint32_t *comp, uint32_t *ncomp,
                  uint8_t *cyclic);

struct rs_cycle_group {
    uint32_t *members;        /* object indices                               */
    size_t n;
    uint64_t bytes;           /* sum of sizes                                 */
    int uncollectable;        /* a member is in gc.garbage                     */
    size_t cycles;            /* number of cyclic SCCs inside                  */
};

struct rs_cycles {
    struct rs_cycle_group *groups; /* sorted by bytes, largest first           */
    size_t n;
    uint32_t *comp;           /* SCC id per object (RS_SNAP_NONE: reachable)  */
    uint8_t *cyclic;          /* per SCC id                                   */
    size_t unreachable;       /* objects                                      */
};

/* Unreachable groups: weakly connected parts of the unreachable subgraph,
 * each a union of SCCs. Returns 0 or -ENOMEM. */
int rs_cycles_find(const struct rs_snapshot *s, struct rs_cycles *out);
void rs_cycles_free(struct rs_cycles *c);

/* Shortest reference chains. Roots: module objects first (a chain then
 * starts at a module global), then objects referenced from outside the
 * snapshot's graph (a thread's frame, the interpreter: refcount above the
 * references the snapshot knows, or immortal). parent[i] / parent_edge[i]
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
