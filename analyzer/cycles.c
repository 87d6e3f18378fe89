/*
 * Graph algorithms on heap snapshots (see cycles.h): the collector's
 * unreachable test (subtract internal references, propagate reachability),
 * liveness (what only garbage keeps alive), Tarjan's SCCs, grouping of
 * unreachable objects, and BFS chains from roots.
 * Everything is iterative: snapshots hold millions of objects and chains of
 * any length.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "refscope/events.h"
#include "cycles.h"
#include "grow.h"

static int is_candidate(const struct rs_snap_object *o)
{
    return (o->flags & RS_SNAP_OBJ_TRACKED) && !(o->flags & RS_SNAP_OBJ_FROZEN);
}

/* The gc.garbage list: a list whose items are exactly the GARBAGE-flagged
 * objects. RS_SNAP_NONE when there is none. */
static uint32_t find_garbage_list(const struct rs_snapshot *s)
{
    size_t flagged = 0;
    for (size_t i = 0; i < s->nobjs; i++)
        flagged += (s->objs[i].flags & RS_SNAP_OBJ_GARBAGE) != 0;
    if (!flagged)
        return RS_SNAP_NONE;
    for (size_t i = 0; i < s->nobjs; i++) {
        uint64_t a = s->edge_start[i], b = s->edge_start[i + 1];
        if (b - a != flagged || strcmp(rs_snapshot_type_name(s, (uint32_t)i), "list"))
            continue;
        uint64_t e = a;
        for (; e < b; e++)
            if (s->edges[e] == RS_SNAP_NONE || !(s->objs[s->edges[e]].flags & RS_SNAP_OBJ_GARBAGE))
                break;
        if (e == b)
            return (uint32_t)i;
    }
    return RS_SNAP_NONE;
}

long rs_cycles_unreachable(const struct rs_snapshot *s, uint8_t *unreachable, int64_t *gc_refs_out)
{
    size_t n = s->nobjs;
    int64_t *gc_refs = calloc(n ? n : 1, sizeof(int64_t));
    uint32_t *queue = malloc((n ? n : 1) * sizeof(uint32_t));
    if (!gc_refs || !queue) {
        free(gc_refs);
        free(queue);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const struct rs_snap_object *o = &s->objs[i];
        unreachable[i] = 0;
        if (is_candidate(o))
            gc_refs[i] = (o->flags & RS_SNAP_OBJ_IMMORTAL) ? INT64_MAX / 2 : (int64_t)o->refcnt;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_candidate(&s->objs[i]))
            continue;
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
            uint32_t j = s->edges[e];
            if (j != RS_SNAP_NONE && is_candidate(&s->objs[j]))
                gc_refs[j]--;
        }
    }
    uint32_t holder = find_garbage_list(s);
    size_t head = 0, tail = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_candidate(&s->objs[i]))
            continue;
        if (gc_refs[i] > 0) {
            unreachable[i] = 2; /* 2 = reached */
            queue[tail++] = (uint32_t)i;
        }
    }
    while (head < tail) {
        uint32_t i = queue[head++];
        if (i == holder)
            continue;
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
            uint32_t j = s->edges[e];
            if (j == RS_SNAP_NONE || unreachable[j] || !is_candidate(&s->objs[j]))
                continue;
            unreachable[j] = 2;
            queue[tail++] = j;
        }
    }
    long count = 0;
    for (size_t i = 0; i < n; i++) {
        int cand = is_candidate(&s->objs[i]);
        unreachable[i] = cand && unreachable[i] != 2;
        count += unreachable[i];
        if (gc_refs_out)
            gc_refs_out[i] = cand ? (gc_refs[i] < 0 ? 0 : gc_refs[i]) : 0;
    }
    free(gc_refs);
    free(queue);
    return count;
}

/* Breadth-first from queue[0..tail) over objects whose state is `from`,
 * setting them to `to`; never through the gc.garbage list `holder`. */
static void spread(const struct rs_snapshot *s, uint8_t *state, uint8_t from, uint8_t to, uint32_t holder,
                   uint32_t *queue, size_t tail)
{
    size_t head = 0;
    while (head < tail) {
        uint32_t i = queue[head++];
        if (i == holder)
            continue;
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
            uint32_t j = s->edges[e];
            if (j == RS_SNAP_NONE || state[j] != from)
                continue;
            state[j] = to;
            queue[tail++] = j;
        }
    }
}

/* Liveness in three spreads over the objects the collector did not find
 * unreachable (all start as "not yet known"): from the roots; from the
 * unreachable objects (what they hold); from whatever neither reached,
 * which we cannot explain and so do not call garbage. A root is an object
 * with references from outside the graph (refcount above its known
 * referrers), not merely one the collector finds reachable: the collector
 * counts a reference from an untracked object as external, but when that
 * object is itself held by garbage, both go when the garbage does. */
enum { LIVE_UNKNOWN = 3, LIVE_FROM_GARBAGE = 4 };

long rs_cycles_liveness(const struct rs_snapshot *s, uint8_t *state, int64_t *gc_refs)
{
    size_t n = s->nobjs;
    uint64_t *incoming = calloc(n ? n : 1, sizeof(uint64_t));
    uint32_t *queue = malloc((n ? n : 1) * sizeof(uint32_t));
    long rc = -ENOMEM;
    if (!incoming || !queue)
        goto out;
    if ((rc = rs_cycles_unreachable(s, state, gc_refs)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++)
            if (s->edges[e] != RS_SNAP_NONE)
                incoming[s->edges[e]]++;
    uint32_t holder = find_garbage_list(s);
    size_t tail = 0;
    for (size_t i = 0; i < n; i++) {
        const struct rs_snap_object *o = &s->objs[i];
        if (state[i]) /* unreachable */
            continue;
        if ((o->flags & (RS_SNAP_OBJ_IMMORTAL | RS_SNAP_OBJ_FROZEN)) || o->refcnt > incoming[i])
            queue[tail++] = (uint32_t)i; /* stays RS_LIVE_ALIVE */
        else
            state[i] = LIVE_UNKNOWN;
    }
    spread(s, state, LIVE_UNKNOWN, RS_LIVE_ALIVE, holder, queue, tail);
    tail = 0;
    for (size_t i = 0; i < n; i++)
        if (state[i] == RS_LIVE_UNREACHABLE)
            queue[tail++] = (uint32_t)i;
    spread(s, state, LIVE_UNKNOWN, LIVE_FROM_GARBAGE, RS_SNAP_NONE, queue, tail);
    tail = 0;
    for (size_t i = 0; i < n; i++) {
        if (state[i] == LIVE_UNKNOWN) {
            state[i] = RS_LIVE_ALIVE;
            queue[tail++] = (uint32_t)i;
        }
    }
    spread(s, state, LIVE_FROM_GARBAGE, RS_LIVE_ALIVE, holder, queue, tail);
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (state[i] == LIVE_FROM_GARBAGE)
            state[i] = RS_LIVE_HELD;
        rc += state[i] != RS_LIVE_ALIVE;
    }
out:
    free(incoming);
    free(queue);
    return rc;
}

int rs_cycles_scc(const struct rs_snapshot *s, const uint8_t *mask, uint32_t *comp, uint32_t *ncomp,
                  uint8_t *cyclic)
{
    size_t n = s->nobjs;
    uint32_t *index = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *low = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *stack = malloc((n ? n : 1) * sizeof(uint32_t));
    uint8_t *on_stack = calloc(n ? n : 1, 1);
    uint32_t *call_node = malloc((n ? n : 1) * sizeof(uint32_t));
    uint64_t *call_edge = malloc((n ? n : 1) * sizeof(uint64_t));
    int rc = -ENOMEM;
    if (!index || !low || !stack || !on_stack || !call_node || !call_edge)
        goto out;
    for (size_t i = 0; i < n; i++) {
        index[i] = UINT32_MAX;
        comp[i] = RS_SNAP_NONE;
    }
    uint32_t next_index = 0, nc = 0;
    size_t sp = 0;
    for (size_t root = 0; root < n; root++) {
        if (!mask[root] || index[root] != UINT32_MAX)
            continue;
        size_t depth = 0;
        call_node[0] = (uint32_t)root;
        call_edge[0] = s->edge_start[root];
        index[root] = low[root] = next_index++;
        stack[sp++] = (uint32_t)root;
        on_stack[root] = 1;
        while (1) {
            uint32_t v = call_node[depth];
            if (call_edge[depth] < s->edge_start[v + 1]) {
                uint32_t w = s->edges[call_edge[depth]++];
                if (w == RS_SNAP_NONE || !mask[w])
                    continue;
                if (index[w] == UINT32_MAX) {
                    index[w] = low[w] = next_index++;
                    stack[sp++] = w;
                    on_stack[w] = 1;
                    depth++;
                    call_node[depth] = w;
                    call_edge[depth] = s->edge_start[w];
                } else if (on_stack[w] && index[w] < low[v]) {
                    low[v] = index[w];
                }
                continue;
            }
            if (low[v] == index[v]) {
                uint32_t w, members = 0;
                do {
                    w = stack[--sp];
                    on_stack[w] = 0;
                    comp[w] = nc;
                    members++;
                } while (w != v);
                if (cyclic) {
                    int self = 0;
                    for (uint64_t e = s->edge_start[v]; e < s->edge_start[v + 1] && !self; e++)
                        self = s->edges[e] == v;
                    cyclic[nc] = members > 1 || self;
                }
                nc++;
            }
            if (depth == 0)
                break;
            depth--;
            uint32_t parent = call_node[depth];
            if (low[v] < low[parent])
                low[parent] = low[v];
        }
    }
    *ncomp = nc;
    rc = 0;
out:
    free(index);
    free(low);
    free(stack);
    free(on_stack);
    free(call_node);
    free(call_edge);
    return rc;
}

static uint32_t uf_find(uint32_t *p, uint32_t x)
{
    while (p[x] != x) {
        p[x] = p[p[x]];
        x = p[x];
    }
    return x;
}

static int cmp_group(const void *a, const void *b)
{
    const struct rs_cycle_group *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes ? -1 : 1;
    return x->members[0] < y->members[0] ? -1 : 1;
}

int rs_cycles_find(const struct rs_snapshot *s, struct rs_cycles *out)
{
    size_t n = s->nobjs;
    memset(out, 0, sizeof(*out));
    uint8_t *mask = calloc(n ? n : 1, 1);
    uint32_t *uf = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *group_of = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *queue = malloc((n ? n : 1) * sizeof(uint32_t));
    out->comp = malloc((n ? n : 1) * sizeof(uint32_t));
    out->cyclic = calloc(n ? n : 1, 1);
    out->state = malloc(n ? n : 1);
    int rc = -ENOMEM;
    if (!mask || !uf || !group_of || !queue || !out->comp || !out->cyclic || !out->state)
        goto out;
    if (rs_cycles_liveness(s, out->state, NULL) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        mask[i] = out->state[i] == RS_LIVE_UNREACHABLE;
        out->unreachable += mask[i];
        if (mask[i])
            out->unreachable_bytes += s->objs[i].size;
    }
    uint32_t ncomp;
    if (rs_cycles_scc(s, mask, out->comp, &ncomp, out->cyclic) < 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        uf[i] = (uint32_t)i;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i])
            continue;
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
            uint32_t j = s->edges[e];
            if (j != RS_SNAP_NONE && mask[j]) {
                uint32_t a = uf_find(uf, (uint32_t)i), b = uf_find(uf, j);
                if (a != b)
                    uf[a] = b;
            }
        }
    }
    size_t ng = 0;
    for (size_t i = 0; i < n; i++)
        group_of[i] = RS_SNAP_NONE;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i])
            continue;
        uint32_t r = uf_find(uf, (uint32_t)i);
        if (group_of[r] == RS_SNAP_NONE)
            group_of[r] = (uint32_t)ng++;
    }
    out->groups = calloc(ng ? ng : 1, sizeof(*out->groups));
    if (!out->groups)
        goto out;
    out->n = ng;
    for (size_t i = 0; i < n; i++)
        if (mask[i])
            out->groups[group_of[uf_find(uf, (uint32_t)i)]].n++;
    for (size_t g = 0; g < ng; g++) {
        out->groups[g].members = malloc(out->groups[g].n * sizeof(uint32_t));
        if (!out->groups[g].members)
            goto out;
        out->groups[g].n = 0;
    }
    uint8_t *counted = calloc(ncomp ? ncomp : 1, 1);
    if (!counted)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i])
            continue;
        struct rs_cycle_group *g = &out->groups[group_of[uf_find(uf, (uint32_t)i)]];
        g->members[g->n++] = (uint32_t)i;
        g->bytes += s->objs[i].size;
        if (s->objs[i].flags & RS_SNAP_OBJ_GARBAGE)
            g->uncollectable = 1;
        uint32_t c = out->comp[i];
        if (out->cyclic[c] && !counted[c]) {
            counted[c] = 1;
            g->cycles++;
        }
    }
    free(counted);
    /* held objects: breadth-first from every group at once; group_of[] now
     * maps objects (not union-find roots) to their group */
    size_t tail = 0;
    for (size_t i = 0; i < n; i++) {
        group_of[i] = mask[i] ? group_of[uf_find(uf, (uint32_t)i)] : RS_SNAP_NONE;
        if (mask[i])
            queue[tail++] = (uint32_t)i;
    }
    for (size_t head = 0; head < tail;) {
        uint32_t i = queue[head++];
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
            uint32_t j = s->edges[e];
            if (j == RS_SNAP_NONE || out->state[j] != RS_LIVE_HELD || group_of[j] != RS_SNAP_NONE)
                continue;
            group_of[j] = group_of[i];
            out->groups[group_of[j]].held++;
            out->groups[group_of[j]].held_bytes += s->objs[j].size;
            out->held++;
            out->held_bytes += s->objs[j].size;
            queue[tail++] = j;
        }
    }
    rs_sort(out->groups, ng, sizeof(*out->groups), cmp_group);
    rc = 0;
out:
    free(mask);
    free(uf);
    free(group_of);
    free(queue);
    if (rc < 0)
        rs_cycles_free(out);
    return rc;
}

void rs_cycles_free(struct rs_cycles *c)
{
    for (size_t g = 0; c->groups && g < c->n; g++)
        free(c->groups[g].members);
    free(c->groups);
    free(c->comp);
    free(c->cyclic);
    free(c->state);
    memset(c, 0, sizeof(*c));
}

/* ---- chains ------------------------------------------------------------------------ */

static int bfs_from(const struct rs_snapshot *s, struct rs_chain_tree *t, uint32_t *queue, size_t tail)
{
    size_t head = 0;
    while (head < tail) {
        uint32_t i = queue[head++];
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++) {
            uint32_t j = s->edges[e];
            if (j == RS_SNAP_NONE || t->depth[j] != UINT32_MAX)
                continue;
            t->depth[j] = t->depth[i] + 1;
            t->parent[j] = i;
            t->parent_edge[j] = e;
            queue[tail++] = j;
        }
    }
    return 0;
}

int rs_chain_tree_build(const struct rs_snapshot *s, struct rs_chain_tree *t)
{
    size_t n = s->nobjs;
    memset(t, 0, sizeof(*t));
    t->parent = malloc((n ? n : 1) * sizeof(uint32_t));
    t->parent_edge = malloc((n ? n : 1) * sizeof(uint64_t));
    t->depth = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *queue = malloc((n ? n : 1) * sizeof(uint32_t));
    uint64_t *incoming = calloc(n ? n : 1, sizeof(uint64_t));
    uint8_t *state = NULL;
    int rc = -ENOMEM;
    if (!t->parent || !t->parent_edge || !t->depth || !queue || !incoming)
        goto out;
    for (size_t i = 0; i < n; i++) {
        t->parent[i] = RS_SNAP_NONE;
        t->parent_edge[i] = UINT64_MAX;
        t->depth[i] = UINT32_MAX;
    }
    size_t tail = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(rs_snapshot_type_name(s, (uint32_t)i), "module")) {
            t->depth[i] = 0;
            queue[tail++] = (uint32_t)i;
        }
    }
    bfs_from(s, t, queue, tail);
    /* then what only the outside keeps alive */
    for (size_t i = 0; i < n; i++)
        for (uint64_t e = s->edge_start[i]; e < s->edge_start[i + 1]; e++)
            if (s->edges[e] != RS_SNAP_NONE)
                incoming[s->edges[e]]++;
    tail = 0;
    for (size_t i = 0; i < n; i++) {
        const struct rs_snap_object *o = &s->objs[i];
        if (t->depth[i] != UINT32_MAX)
            continue;
        if ((o->flags & RS_SNAP_OBJ_IMMORTAL) || o->refcnt > incoming[i]) {
            t->depth[i] = 0;
            queue[tail++] = (uint32_t)i;
        }
    }
    bfs_from(s, t, queue, tail);
    /* Alive objects no chain reached yet (kept by frozen objects, or by
     * references the graph cannot explain): each one not reached from an
     * earlier one starts its own chain, so that every alive object has one. */
    if (!(state = malloc(n ? n : 1)) || rs_cycles_liveness(s, state, NULL) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (t->depth[i] == UINT32_MAX && state[i] == RS_LIVE_ALIVE) {
            t->depth[i] = 0;
            queue[0] = (uint32_t)i;
            bfs_from(s, t, queue, 1);
        }
    }
    rc = 0;
out:
    free(queue);
    free(incoming);
    free(state);
    if (rc < 0)
        rs_chain_tree_free(t);
    return rc;
}

void rs_chain_tree_free(struct rs_chain_tree *t)
{
    free(t->parent);
    free(t->parent_edge);
    free(t->depth);
    memset(t, 0, sizeof(*t));
}

static size_t put_step(char *buf, size_t len, size_t pos, const char *text)
{
    size_t n = strlen(text);
    if (pos + n + 1 > len)
        return pos;
    memcpy(buf + pos, text, n + 1);
    return pos + n + 1;
}

int rs_chain_steps(const struct rs_snapshot *s, const struct rs_chain_tree *t, uint32_t target,
                   char *buf, size_t len)
{
    if (target >= s->nobjs || t->depth[target] == UINT32_MAX)
        return 0;
    uint32_t depth = t->depth[target];
    uint32_t *path = malloc((depth + 1) * sizeof(uint32_t));
    if (!path)
        return 0;
    uint32_t i = target;
    for (uint32_t d = depth + 1; d-- > 0;) {
        path[d] = i;
        i = t->parent[i];
    }
    size_t pos = 0;
    int steps = 0;
    char text[160];
    for (uint32_t d = 0; d <= depth; d++) {
        if (d > 0) {
            uint64_t e = t->parent_edge[path[d]];
            rs_snapshot_describe_edge(s, path[d - 1], e, text, sizeof(text));
            if (text[0]) {
                pos = put_step(buf, len, pos, text);
                steps++;
            }
        }
        rs_snapshot_describe(s, path[d], text, sizeof(text));
        pos = put_step(buf, len, pos, text);
        steps++;
    }
    free(path);
    return steps;
}
