/*
 * Unit tests for analyzer/cycles.c: the offline cycle detection, liveness
 * (what only garbage keeps alive), SCCs, unreachable groups and "why alive"
 * chains, on small synthetic snapshots.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "refscope/events.h"
#include "cycles.h"
#include "snapshot.h"
#include "check_run.h"

enum { T_MODULE, T_DICT, T_LIST, T_FOO, T_STR, T_NTYPES };
static const char *const type_names[T_NTYPES] = {"module", "dict", "list", "Foo", "str"};

struct node_spec {
    int type;
    uint64_t refcnt;
    uint8_t flags;
};

/* Builds a snapshot from node specs and an edge list (src, dst) pairs in
 * per-source order. Caller frees with free_snap. */
static struct rs_snapshot *make_snap(const struct node_spec *nodes, size_t n, const int (*edges)[2], size_t ne)
{
    struct rs_snapshot *s = calloc(1, sizeof(*s));
    s->nobjs = n;
    s->objs = calloc(n, sizeof(*s->objs));
    s->types = calloc(T_NTYPES, sizeof(*s->types));
    s->ntypes = T_NTYPES;
    for (int t = 0; t < T_NTYPES; t++)
        s->types[t].name = type_names[t];
    for (size_t i = 0; i < n; i++) {
        s->objs[i].addr = 0x1000 + 0x40 * i;
        s->objs[i].type = (uint32_t)nodes[i].type;
        s->objs[i].refcnt = nodes[i].refcnt;
        s->objs[i].flags = nodes[i].flags;
        s->objs[i].size = 100;
        s->objs[i].label = RS_SNAP_NONE;
    }
    s->edge_start = calloc(n + 1, sizeof(uint64_t));
    s->edges = calloc(ne ? ne : 1, sizeof(uint32_t));
    s->nedges = ne;
    for (size_t e = 0; e < ne; e++)
        s->edge_start[edges[e][0] + 1]++;
    for (size_t i = 0; i < n; i++)
        s->edge_start[i + 1] += s->edge_start[i];
    size_t *fill = calloc(n, sizeof(size_t));
    for (size_t e = 0; e < ne; e++) {
        int src = edges[e][0];
        s->edges[s->edge_start[src] + fill[src]++] = (uint32_t)edges[e][1];
    }
    free(fill);
    return s;
}

static void free_snap(struct rs_snapshot *s)
{
    free(s->objs);
    free(s->types);
    free(s->edge_start);
    free(s->edges);
    free(s->strings);
    free(s->key_edge);
    free(s->key_text);
    free(s);
}

#define TR RS_SNAP_OBJ_TRACKED

START_TEST(test_two_node_cycle_unreachable)
{
    /* 0 <-> 1 with refcount 1 each: unreachable; 2 -> 3 with 2 referenced
     * from outside (refcount 1, no internal ref): alive */
    struct node_spec nodes[] = {{T_FOO, 1, TR}, {T_FOO, 1, TR}, {T_LIST, 1, TR}, {T_FOO, 1, TR}};
    int edges[][2] = {{0, 1}, {1, 0}, {2, 3}};
    struct rs_snapshot *s = make_snap(nodes, 4, edges, 3);
    uint8_t un[4];
    int64_t gc_refs[4];
    ck_assert_int_eq(rs_cycles_unreachable(s, un, gc_refs), 2);
    ck_assert(un[0] && un[1] && !un[2] && !un[3]);
    ck_assert_int_eq(gc_refs[2], 1);
    ck_assert_int_eq(gc_refs[3], 0);
    struct rs_cycles c;
    ck_assert_int_eq(rs_cycles_find(s, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_uint_eq(c.groups[0].n, 2);
    ck_assert_uint_eq(c.groups[0].cycles, 1);
    ck_assert(!c.groups[0].uncollectable);
    rs_cycles_free(&c);
    free_snap(s);
}
END_TEST

START_TEST(test_external_reference_keeps_cycle_alive)
{
    /* the same cycle, but node 0 has one more reference than the graph shows */
    struct node_spec nodes[] = {{T_FOO, 2, TR}, {T_FOO, 1, TR}};
    int edges[][2] = {{0, 1}, {1, 0}};
    struct rs_snapshot *s = make_snap(nodes, 2, edges, 2);
    uint8_t un[2];
    ck_assert_int_eq(rs_cycles_unreachable(s, un, NULL), 0);
    free_snap(s);
}
END_TEST

START_TEST(test_self_cycles_are_separate_groups)
{
    struct node_spec nodes[8];
    int edges[8][2];
    for (int i = 0; i < 8; i++) {
        nodes[i] = (struct node_spec){T_LIST, 1, TR};
        edges[i][0] = edges[i][1] = i;
    }
    struct rs_snapshot *s = make_snap(nodes, 8, edges, 8);
    struct rs_cycles c;
    ck_assert_int_eq(rs_cycles_find(s, &c), 0);
    ck_assert_uint_eq(c.n, 8);
    for (size_t g = 0; g < c.n; g++) {
        ck_assert_uint_eq(c.groups[g].n, 1);
        ck_assert_uint_eq(c.groups[g].cycles, 1);
    }
    rs_cycles_free(&c);
    free_snap(s);
}
END_TEST

START_TEST(test_untracked_and_frozen_and_immortal)
{
    /* 0 (frozen) -> 1 <-> 2: frozen objects are not collected and count as
     * outside references. 3 <-> 4 where 4 is not tracked: only 3 is a
     * candidate, its refcount 1 comes from 4 (unseen by the collector) so it
     * is alive. 5 immortal self-cycle: alive. */
    struct node_spec nodes[] = {{T_FOO, 1, TR | RS_SNAP_OBJ_FROZEN}, {T_FOO, 2, TR}, {T_FOO, 1, TR},
                                {T_FOO, 1, TR}, {T_FOO, 1, 0}, {T_FOO, 0, TR | RS_SNAP_OBJ_IMMORTAL}};
    int edges[][2] = {{0, 1}, {1, 2}, {2, 1}, {3, 4}, {4, 3}, {5, 5}};
    struct rs_snapshot *s = make_snap(nodes, 6, edges, 6);
    uint8_t un[6];
    ck_assert_int_eq(rs_cycles_unreachable(s, un, NULL), 0);
    free_snap(s);
}
END_TEST

START_TEST(test_gc_garbage_is_uncollectable)
{
    /* node 2 is gc.garbage (a list holding exactly the flagged objects 0, 1);
     * it is referenced from outside (refcount 1, no internal referrer) */
    struct node_spec nodes[] = {{T_FOO, 2, TR | RS_SNAP_OBJ_GARBAGE}, {T_FOO, 2, TR | RS_SNAP_OBJ_GARBAGE},
                                {T_LIST, 1, TR}};
    int edges[][2] = {{0, 1}, {1, 0}, {2, 0}, {2, 1}};
    struct rs_snapshot *s = make_snap(nodes, 3, edges, 4);
    struct rs_cycles c;
    ck_assert_int_eq(rs_cycles_find(s, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_uint_eq(c.groups[0].n, 2);
    ck_assert(c.groups[0].uncollectable);
    rs_cycles_free(&c);
    free_snap(s);
}
END_TEST

START_TEST(test_scc_chain_and_loops)
{
    /* 0 -> 1 -> 2 -> 0 (one SCC), 2 -> 3 (singleton, not cyclic), 3 -> 4 -> 4 */
    struct node_spec nodes[5];
    for (int i = 0; i < 5; i++)
        nodes[i] = (struct node_spec){T_FOO, 1, TR};
    int edges[][2] = {{0, 1}, {1, 2}, {2, 0}, {2, 3}, {3, 4}, {4, 4}};
    struct rs_snapshot *s = make_snap(nodes, 5, edges, 6);
    uint8_t mask[5] = {1, 1, 1, 1, 1}, cyclic[5] = {0};
    uint32_t comp[5], ncomp = 0;
    ck_assert_int_eq(rs_cycles_scc(s, mask, comp, &ncomp, cyclic), 0);
    ck_assert_uint_eq(ncomp, 3);
    ck_assert(comp[0] == comp[1] && comp[1] == comp[2]);
    ck_assert(comp[3] != comp[0] && comp[4] != comp[3]);
    ck_assert(cyclic[comp[0]] && !cyclic[comp[3]] && cyclic[comp[4]]);
    free_snap(s);
}
END_TEST

START_TEST(test_scc_deep_chain_is_iterative)
{
    size_t n = 200000;
    struct node_spec *nodes = calloc(n, sizeof(*nodes));
    int (*edges)[2] = calloc(n, sizeof(*edges));
    for (size_t i = 0; i < n; i++) {
        nodes[i] = (struct node_spec){T_FOO, 1, TR};
        edges[i][0] = (int)i;
        edges[i][1] = (int)((i + 1) % n);
    }
    struct rs_snapshot *s = make_snap(nodes, n, (const int (*)[2])edges, n);
    struct rs_cycles c;
    ck_assert_int_eq(rs_cycles_find(s, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_uint_eq(c.groups[0].n, n);
    ck_assert_uint_eq(c.groups[0].cycles, 1);
    rs_cycles_free(&c);
    free_snap(s);
    free(nodes);
    free(edges);
}
END_TEST

START_TEST(test_chain_from_module_global)
{
    /* module(0) -> dict(1) -[key 'cache']-> list(2) -[index 1]-> Foo(4);
     * list also holds Foo(3) at index 0; Foo(5) referenced from outside only */
    struct node_spec nodes[] = {{T_MODULE, 1, TR}, {T_DICT, 1, TR}, {T_LIST, 1, TR},
                                {T_FOO, 1, TR}, {T_FOO, 1, TR}, {T_FOO, 1, TR}};
    int edges[][2] = {{0, 1}, {1, 2}, {2, 3}, {2, 4}};
    struct rs_snapshot *s = make_snap(nodes, 6, edges, 4);
    const char strings[] = "mymod\0cache";
    s->strings = malloc(sizeof(strings));
    memcpy(s->strings, strings, sizeof(strings));
    s->strings_len = sizeof(strings);
    s->objs[0].label = 0;
    s->key_edge = malloc(sizeof(uint64_t));
    s->key_text = malloc(sizeof(uint32_t));
    s->key_edge[0] = s->edge_start[1]; /* the dict's only edge */
    s->key_text[0] = 6;
    s->nkeys = 1;
    struct rs_chain_tree t;
    ck_assert_int_eq(rs_chain_tree_build(s, &t), 0);
    char buf[512];
    int n = rs_chain_steps(s, &t, 4, buf, sizeof(buf));
    const char *want[] = {"module mymod", "dict", "key 'cache'", "list", "index 1", "Foo"};
    ck_assert_int_eq(n, 6);
    const char *p = buf;
    for (int i = 0; i < n; i++, p += strlen(p) + 1)
        ck_assert_str_eq(p, want[i]);
    n = rs_chain_steps(s, &t, 5, buf, sizeof(buf));
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(buf, "Foo");
    rs_chain_tree_free(&t);
    free_snap(s);
}
END_TEST

START_TEST(test_liveness_held_by_garbage)
{
    /* module(0) -> dict(1) -> str(2); garbage Foo(3) <-> Foo(4); 3 also
     * holds str(5), its only referrer, and str(2), which the dict keeps */
    struct node_spec nodes[] = {{T_MODULE, 1, TR}, {T_DICT, 1, TR}, {T_STR, 2, 0},
                                {T_FOO, 1, TR},    {T_FOO, 1, TR},  {T_STR, 1, 0}};
    int edges[][2] = {{0, 1}, {1, 2}, {3, 4}, {3, 5}, {3, 2}, {4, 3}};
    struct rs_snapshot *s = make_snap(nodes, 6, edges, 6);
    uint8_t st[6];
    ck_assert_int_eq(rs_cycles_liveness(s, st, NULL), 3);
    ck_assert(st[0] == RS_LIVE_ALIVE && st[1] == RS_LIVE_ALIVE && st[2] == RS_LIVE_ALIVE);
    ck_assert(st[3] == RS_LIVE_UNREACHABLE && st[4] == RS_LIVE_UNREACHABLE);
    ck_assert_int_eq(st[5], RS_LIVE_HELD);
    struct rs_cycles c;
    ck_assert_int_eq(rs_cycles_find(s, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_uint_eq(c.unreachable, 2);
    ck_assert_uint_eq(c.unreachable_bytes, 200);
    ck_assert_uint_eq(c.groups[0].held, 1);
    ck_assert_uint_eq(c.groups[0].held_bytes, 100);
    ck_assert_uint_eq(c.held, 1);
    ck_assert_int_eq(c.state[5], RS_LIVE_HELD);
    rs_cycles_free(&c);
    free_snap(s);
}
END_TEST

START_TEST(test_liveness_through_untracked_object)
{
    /* garbage Foo(2) <-> Foo(3); 2 -> untracked X(1) -> Foo(0). The
     * collector counts X's reference as external, so Foo(0) is reachable
     * for it, yet it goes with the garbage: held. Untracked 4 <-> 5, with
     * no referrer from outside and no garbage above: nothing explains
     * them, so they count as alive, and get a chain. */
    struct node_spec nodes[] = {{T_FOO, 1, TR}, {T_FOO, 1, 0}, {T_FOO, 1, TR},
                                {T_FOO, 1, TR}, {T_FOO, 1, 0}, {T_FOO, 1, 0}};
    int edges[][2] = {{1, 0}, {2, 3}, {2, 1}, {3, 2}, {4, 5}, {5, 4}};
    struct rs_snapshot *s = make_snap(nodes, 6, edges, 6);
    uint8_t un[6], st[6];
    ck_assert_int_eq(rs_cycles_unreachable(s, un, NULL), 2);
    ck_assert(!un[0] && un[2] && un[3]);
    ck_assert_int_eq(rs_cycles_liveness(s, st, NULL), 4);
    ck_assert(st[0] == RS_LIVE_HELD && st[1] == RS_LIVE_HELD);
    ck_assert(st[4] == RS_LIVE_ALIVE && st[5] == RS_LIVE_ALIVE);
    struct rs_chain_tree t;
    ck_assert_int_eq(rs_chain_tree_build(s, &t), 0);
    char buf[256];
    ck_assert_int_eq(rs_chain_steps(s, &t, 5, buf, sizeof(buf)), 2);
    rs_chain_tree_free(&t);
    free_snap(s);
}
END_TEST

START_TEST(test_liveness_gc_garbage_holder)
{
    /* gc.garbage (list 2, referenced from outside) holds flagged 0 <-> 1;
     * 1 holds str(3): uncollectable, and the str goes nowhere either, but
     * it is what the uncollectable group keeps: held */
    struct node_spec nodes[] = {{T_FOO, 2, TR | RS_SNAP_OBJ_GARBAGE}, {T_FOO, 2, TR | RS_SNAP_OBJ_GARBAGE},
                                {T_LIST, 1, TR}, {T_STR, 1, 0}};
    int edges[][2] = {{0, 1}, {1, 0}, {1, 3}, {2, 0}, {2, 1}};
    struct rs_snapshot *s = make_snap(nodes, 4, edges, 5);
    uint8_t st[4];
    ck_assert_int_eq(rs_cycles_liveness(s, st, NULL), 3);
    ck_assert(st[0] == RS_LIVE_UNREACHABLE && st[1] == RS_LIVE_UNREACHABLE);
    ck_assert(st[2] == RS_LIVE_ALIVE && st[3] == RS_LIVE_HELD);
    free_snap(s);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        test_two_node_cycle_unreachable,
        test_external_reference_keeps_cycle_alive,
        test_self_cycles_are_separate_groups,
        test_untracked_and_frozen_and_immortal,
        test_gc_garbage_is_uncollectable,
        test_scc_chain_and_loops,
        test_scc_deep_chain_is_iterative,
        test_chain_from_module_global,
        test_liveness_held_by_garbage,
        test_liveness_through_untracked_object,
        test_liveness_gc_garbage_holder,
    };
    return rs_check_run("cycles", 60, tests, sizeof(tests) / sizeof(tests[0]));
}
