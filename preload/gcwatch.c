/*
 * GC events (all versions): a C function registered in gc.callbacks at the
 * init safe point records each collection's start and stop (generation,
 * collected, uncollectable, counts at start, pause in monotonic ns), the
 * interpreter's own gc.get_stats() at registration (collections before
 * refscope could register stay counted), configuration changes, and the
 * census that lets the analyzer derive exact promotions. Layouts: events.h,
 * "issue 4" section.
 *
 * Configuration changes are seen two ways: gc.set_threshold, disable, enable,
 * freeze and unfreeze are replaced in the gc module by wrappers that call the
 * original and then record the new state (exact time of the change); and the
 * thresholds and `enabled` are compared at every collection start and at
 * exit, which catches changes made through the C API (PyGC_Disable) or
 * through a reference to a gc function taken before refscope registered.
 * They are read from the GC state itself where pyver finds it (3.9-3.13
 * default builds, checked against the gc module at registration), else
 * through the gc functions. The freeze count (gc.get_freeze_count() walks the
 * whole permanent generation) is read at registration, after the program's
 * freeze/unfreeze calls and at exit only.
 *
 * Census (format 2: exact promotions at a small cost; REFSCOPE_GC_CENSUS=off
 * turns it off). At the start of a collection of generation g we walk the
 * generation lists 0..g (the PyGC_Head chains, located by pyver.c; no
 * Python object is made), counting them and keeping their addresses, and
 * note a mark: the last object of generation g+1 that the collector cannot
 * move (not a weakref: handle_weakrefs moves weakrefs whose callback it
 * runs to the tail of g+1, from any generation). The collector appends
 * everything of 0..g that survives to the tail of g+1, so at stop the
 * promoted objects are those past the mark. Usually every object past the
 * mark is one; they are checked against a hash of the kept addresses only
 * when the walk meets a weakref, never meets the mark (it died or left the
 * list: then the whole list is walked), when the permanent generation
 * changed (gc.unfreeze() in a finalizer, 3.12+ immortal objects), or when
 * other gc callbacks run after ours (they may track objects the collector
 * then examines too). For g = 2 survivors stay in place: all of generation
 * 2 is walked against the hash (full collections are rare and walk it too).
 * CPython sources: gc_collect_main(), Modules/gcmodule.c (3.9-3.12),
 * Python/gc.c (3.13).
 *
 * What is written per collection is a few varints (RS_GC_INFO_SURVIVAL).
 * Addresses are written only for objects that reach the oldest generation
 * (RS_GC_INFO_TENURED: sorted, delta- and run-length-coded, with type ids
 * before 3.13), which "tenured garbage" needs: promoted by a generation-1
 * collection, survivors from 0-1 of a generation-2 collection, generation
 * 2 at registration, and what gc.unfreeze() moves there. The census is off
 * on free-threaded builds (whole-heap collections) and on 3.14+ (3.14.0-
 * 3.14.4 run the incremental collector; later lists not verified); a note
 * says so.
 *
 * REFSCOPE_GC=off (run --no-gc) registers nothing: no callback, no
 * wrappers, no census; a note says so. For the program that collects often
 * the callback is not free even if it did nothing: CPython builds an info
 * dict and a phase string for each of its two calls per collection.
 *
 * Everything here runs at safe points (GIL held) as refscope's own Python
 * work (guard.h, rs_guard_own_begin): its allocations are recorded flagged
 * RS_F_OWN, kept apart from the program's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "refscope/clock.h"
#include "refscope/transport.h"
#include "capi.h"
#include "emit.h"
#include "guard.h"
#include "objtrace.h"
#include "pysafe.h"
#include "pytypes.h"
#include "pyver.h"
#include "u64vec.h"
#include "shim.h"

/* The C API entries this file calls (capi.h). */
static const size_t gc_capi[] = {
    RS_CAPI(PyImport_ImportModule), RS_CAPI(PyObject_GetAttrString),
    RS_CAPI(PyObject_SetAttrString), RS_CAPI(PyObject_Call), RS_CAPI(PyList_Append),
    RS_CAPI(PyList_Size), RS_CAPI(PyList_GetItem), RS_CAPI(PyTuple_New), RS_CAPI(PyTuple_Size),
    RS_CAPI(PyTuple_GetItem), RS_CAPI(PyTuple_SetItem), RS_CAPI(PyLong_AsLongLong),
    RS_CAPI(PyDict_GetItem), RS_CAPI(PyUnicode_InternFromString), RS_CAPI(PyDict_New),
    RS_CAPI(PyDict_SetItemString), RS_CAPI(PyUnicode_AsUTF8), RS_CAPI(PyUnicode_FromString),
    RS_CAPI(PyObject_IsTrue), RS_CAPI(PyCFunction_NewEx), RS_CAPI(PyErr_Clear), RS_CAPI(Py_IncRef),
    RS_CAPI(Py_DecRef), RS_CAPI(_Py_NoneStruct),
};

/* gc module functions refscope calls (the originals, never our wrappers). */
static struct {
    rs_pyobj *get_count, *get_threshold, *isenabled, *get_freeze_count, *get_stats;
    rs_pyobj *callbacks; /* the interpreter's gc.callbacks list */
    rs_pyobj *key_generation, *key_collections, *key_collected, *key_uncollectable; /* interned keys */
    int direct;       /* thresholds, counts and `enabled` read from the GC state
                         (pyver), checked against the gc module at registration */
} gcf;

struct gc_config {
    uint8_t enabled, nthresh;
    uint64_t thresh[3];
    uint64_t freeze_count;
};

static struct {
    int off;               /* REFSCOPE_GC=off: no callback at all           */
    int census;            /* census on (lists found)                     */
    int census_types;      /* tenured lists carry type ids (< 3.13)       */
    int census_unavailable; /* wanted, but the lists were not found        */
    int generational;      /* 0 on free-threaded and incremental builds   */
    int in_collection;
    uint8_t start_flags;
    uint64_t start_mono;
    uint32_t seq;
    struct gc_config config; /* last recorded                             */
    int have_config;
    uint32_t trace_epoch;  /* rs_emit_epoch() of the trace that has our MODE */
} st;

static void ensure_trace_start(void);

/* ---- small helpers ---------------------------------------------------------- */

static rs_pyobj *call0(rs_pyobj *fn)
{
    rs_pyobj *args, *res;
    if (!fn)
        return NULL;
    args = rs_capi.PyTuple_New(0);
    if (!args)
        return NULL;
    res = rs_capi.PyObject_Call(fn, args, NULL);
    rs_capi.Py_DecRef(args);
    if (!res)
        rs_capi.PyErr_Clear();
    return res;
}

static long long int_item(rs_pyobj *tuple, long i)
{
    rs_pyobj *it = rs_capi.PyTuple_GetItem(tuple, i);
    long long v;
    if (!it) {
        rs_capi.PyErr_Clear();
        return 0;
    }
    v = rs_capi.PyLong_AsLongLong(it);
    if (v == -1)
        rs_capi.PyErr_Clear();
    return v;
}

/* info[key]; `key` an interned str (no object made per lookup) */
static long long dict_int(rs_pyobj *dict, rs_pyobj *key)
{
    rs_pyobj *it = key ? rs_capi.PyDict_GetItem(dict, key) : NULL;
    long long v;
    if (!it)
        return 0;
    v = rs_capi.PyLong_AsLongLong(it);
    if (v == -1)
        rs_capi.PyErr_Clear();
    return v;
}

static uint32_t sat32(long long v)
{
    return v < 0 ? 0 : v > 0xffffffffll ? 0xffffffffu : (uint32_t)v;
}

/* ---- configuration ---------------------------------------------------------- */

/* The configuration. `freeze`: ask gc.get_freeze_count() too, which walks
 * the permanent generation (O(frozen objects)): only at registration and
 * after the program called freeze/unfreeze; otherwise the last count is
 * kept. With gcf.direct, thresholds and `enabled` are two loads. */
static int read_config(struct gc_config *c, int freeze)
{
    rs_pyobj *t, *e, *f;
    memset(c, 0, sizeof(*c));
    if (gcf.direct) {
        c->nthresh = 3;
        for (int i = 0; i < 3; i++)
            c->thresh[i] = (uint64_t)rs_py_gc_threshold(i);
        c->enabled = rs_py_gc_enabled() > 0;
    } else {
        t = call0(gcf.get_threshold);
        if (!t)
            return -EIO;
        c->nthresh = (uint8_t)(rs_capi.PyTuple_Size(t) > 3 ? 3 : rs_capi.PyTuple_Size(t));
        for (int i = 0; i < c->nthresh; i++)
            c->thresh[i] = (uint64_t)int_item(t, i);
        rs_capi.Py_DecRef(t);
        e = call0(gcf.isenabled);
        if (e) {
            c->enabled = rs_capi.PyObject_IsTrue(e) > 0;
            rs_capi.Py_DecRef(e);
        }
    }
    if (!freeze && st.have_config) {
        c->freeze_count = st.config.freeze_count;
        return 0;
    }
    c->freeze_count = UINT64_MAX;
    f = call0(gcf.get_freeze_count);
    if (f) {
        c->freeze_count = (uint64_t)rs_capi.PyLong_AsLongLong(f);
        rs_capi.Py_DecRef(f);
    }
    return 0;
}

static void emit_config(const struct gc_config *c, uint8_t reason, const char *fn_name)
{
    uint8_t data[128];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    rs_buf_u8(&b, RS_GC_INFO_CONFIG);
    rs_buf_u8(&b, reason);
    rs_buf_u8(&b, c->enabled);
    rs_buf_u8(&b, c->nthresh);
    rs_buf_u32(&b, 0);
    for (int i = 0; i < c->nthresh; i++)
        rs_buf_u64(&b, c->thresh[i]);
    rs_buf_u64(&b, c->freeze_count);
    rs_buf_str(&b, fn_name ? fn_name : "", fn_name ? (uint32_t)strlen(fn_name) : 0);
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, b.len);
}

/* Records the configuration when a call changed it (always, reason CALL) or
 * when it differs from the last recorded one. */
static void check_config(uint8_t reason, const char *fn_name)
{
    struct gc_config c;
    int freeze = reason != RS_GC_CFG_NOTICED;
    if (read_config(&c, freeze) != 0)
        return;
    if (reason == RS_GC_CFG_CALL || reason == RS_GC_CFG_INITIAL || !st.have_config ||
        memcmp(&c, &st.config, sizeof(c)) != 0) {
        emit_config(&c, reason, fn_name);
        st.config = c;
        st.have_config = 1;
    }
}

/* ---- census: scratch memory --------------------------------------------------- */
/* rs_u64vec arrays (u64vec.h), sized by the heap, reused from one
 * collection to the next. */

/* ---- census: the examined set ------------------------------------------------- */
/* Addresses of the objects a collection examines, as keys addr << 2 | tag
 * (tag 1: from generations 0-1, 2: from generation 2; user-space addresses
 * stay below 2^48), listed in `examined` at start and, when the stop walk
 * needs them, hashed into `set`: open addressing, at least twice as many
 * slots as keys. */
#define TAG_YOUNG 1u
#define TAG_OLD   2u

/* How census_promoted tells examined objects from others. */
enum census_lookup {
    LOOKUP_NONE,   /* every object walked was examined, and young (g < 2)     */
    LOOKUP_ALL,    /* `set` holds every examined object                        */
    LOOKUP_YOUNG,  /* g = 2: `set` holds generations 0-1; the rest is old      */
};

static struct {
    struct rs_u64vec examined;   /* keys, in list order                           */
    struct rs_u64vec set;        /* the hash table (0 = empty slot)               */
    struct rs_u64vec tenured;    /* addresses reaching generation 2               */
    struct rs_u64vec sort_tmp;
    uint64_t counts[3];        /* objects per generation at start               */
    unsigned set_bits;
    int gen;                   /* generation being collected; -1 = no census open */
    int failed;                /* out of memory: counts unknown                 */
    int hashed;                /* `set` holds all of `examined`                  */
    size_t young_n;            /* g = 2: the first young_n keys are generations 0-1 */
    const void *mark;          /* see census_start                               */
    const void *permanent[2];  /* ends of the permanent generation at start      */
} cs = {.gen = -1};

static inline uint64_t set_slot(uint64_t addr, unsigned bits)
{
    return ((addr >> 4) * 0x9e3779b97f4a7c15ull) >> (64 - bits);
}

/* Hashes the first n keys of `examined`. */
static int set_build(size_t n)
{
    unsigned bits = 10;
    while (((size_t)1 << bits) < 2 * n)
        bits++;
    if (rs_u64vec_reserve(&cs.set, (size_t)1 << bits) != 0)
        return -ENOMEM;
    cs.set_bits = bits;
    memset(cs.set.v, 0, ((size_t)1 << bits) * 8);
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = cs.examined.v[i];
        uint64_t j = set_slot(key >> 2, bits);
        while (cs.set.v[j])
            j = (j + 1) & mask;
        cs.set.v[j] = key;
    }
    return 0;
}

/* The tag of addr, 0 when the collection did not examine it. */
static inline unsigned set_tag(uint64_t addr)
{
    uint64_t mask = ((uint64_t)1 << cs.set_bits) - 1;
    for (uint64_t j = set_slot(addr, cs.set_bits);; j = (j + 1) & mask) {
        uint64_t key = cs.set.v[j];
        if (!key)
            return 0;
        if (key >> 2 == addr)
            return (unsigned)(key & 3);
    }
}

/* ---- census: tenured lists ---------------------------------------------------- */

/* In-place ascending sort: LSD radix over the bits that differ. */
static void sort_addrs(uint64_t *v, uint64_t *tmp, size_t n)
{
    static size_t count[2048];
    uint64_t diff = 0;
    uint64_t *src = v, *dst = tmp;

    if (n < 32) {
        for (size_t i = 1; i < n; i++) {
            uint64_t x = v[i];
            size_t j = i;
            for (; j > 0 && v[j - 1] > x; j--)
                v[j] = v[j - 1];
            v[j] = x;
        }
        return;
    }
    size_t descents = 0;
    for (size_t i = 1; i < n; i++) {
        diff |= v[i] ^ v[0];
        descents += v[i] < v[i - 1];
    }
    if (!diff || !descents)
        return;
    for (int shift = __builtin_ctzll(diff); shift < 64 - __builtin_clzll(diff); shift += 11) {
        size_t sum = 0;
        memset(count, 0, sizeof(count));
        for (size_t i = 0; i < n; i++)
            count[(src[i] >> shift) & 2047]++;
        for (size_t d = 0; d < 2048; d++) {
            size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[count[(src[i] >> shift) & 2047]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != v)
        memcpy(v, src, n * 8);
}

static void put_varint(uint8_t *buf, uint32_t *len, uint64_t v)
{
    while (v >= 0x80) {
        buf[(*len)++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[(*len)++] = (uint8_t)v;
}

/* One RS_GC_INFO_TENURED record being filled: the address stream and the
 * type stream grow apart and are joined at flush. */
static struct {
    uint8_t addr[RS_GC_TENURED_MAX_PAYLOAD], types[RS_GC_TENURED_MAX_PAYLOAD];
    uint8_t out[RS_GC_TENURED_MAX_PAYLOAD];
    uint32_t alen, tlen, n;
    uint64_t prev, delta, run; /* pending address run: `run` deltas of `delta` */
    uint32_t type, type_run;   /* pending type run                            */
} tw;

static void tw_close_addr_run(void)
{
    if (tw.run == 1)
        put_varint(tw.addr, &tw.alen, tw.delta << 1);
    else if (tw.run > 1) {
        put_varint(tw.addr, &tw.alen, tw.delta << 1 | 1);
        put_varint(tw.addr, &tw.alen, tw.run);
    }
    tw.run = 0;
}

static void tw_close_type_run(void)
{
    if (tw.type_run) {
        put_varint(tw.types, &tw.tlen, tw.type);
        put_varint(tw.types, &tw.tlen, tw.type_run);
    }
    tw.type_run = 0;
}

static void tw_flush(uint32_t seq, uint8_t flags)
{
    uint32_t len = 0;
    if (!tw.n)
        return;
    tw_close_addr_run();
    tw_close_type_run();
    tw.out[len++] = RS_GC_INFO_TENURED;
    tw.out[len++] = flags;
    tw.out[len++] = 0;
    tw.out[len++] = 0;
    memcpy(tw.out + len, &seq, 4);
    len += 4;
    put_varint(tw.out, &len, tw.n);
    memcpy(tw.out + len, tw.addr, tw.alen);
    len += tw.alen;
    memcpy(tw.out + len, tw.types, tw.tlen);
    len += tw.tlen;
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, tw.out, len);
    tw.alen = tw.tlen = tw.n = 0;
    tw.prev = 0;
}

/* Per-type answers remembered during one walk or one record, direct-mapped
 * by the type's address (types cannot die meanwhile; objects of two or
 * three types often alternate). A NULL type is never remembered. */
#define TYPE_MEMO_SLOTS 8
struct type_memo {
    const void *type[TYPE_MEMO_SLOTS];
    uint32_t value[TYPE_MEMO_SLOTS];
};

static inline uint32_t type_memo(struct type_memo *m, const void *tp, uint32_t (*of)(const void *tp))
{
    unsigned k = (unsigned)((uintptr_t)tp >> 4) & (TYPE_MEMO_SLOTS - 1);
    if (tp != m->type[k] || !tp) {
        m->type[k] = tp;
        m->value[k] = of(tp);
    }
    return m->value[k];
}

static uint32_t type_id(const void *tp)
{
    return tp ? rs_pytype_id_safe(tp) : 0;
}

/* Emits cs.tenured (sorted here: cs.sort_tmp must hold as many) as
 * TENURED records of collection seq. */
static void emit_tenured(uint32_t seq)
{
    uint64_t *v = cs.tenured.v, any = 0;
    size_t n = cs.tenured.n;
    struct type_memo ids = {{NULL}, {0}};
    uint32_t last_id = 0;
    uint8_t flags = st.census_types ? RS_GC_TENURED_TYPES : 0;
    unsigned shift;

    if (!n)
        return;
    sort_addrs(v, cs.sort_tmp.v, n);
    for (size_t i = 0; i < n; i++)
        any |= v[i];
    shift = (any & 15) ? 0 : 4;
    if (!shift)
        flags |= RS_GC_TENURED_BYTES;
    tw.alen = tw.tlen = tw.n = 0;
    tw.prev = tw.run = tw.type_run = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t u = v[i] >> shift, d;
        if (i && v[i] == v[i - 1])
            continue;
        /* room, worst case, for the header (8), n (5), closing the pending
         * runs (address 20, type 15) and then this entry's runs (35) */
        if (13 + tw.alen + tw.tlen + 2 * 35 > RS_GC_TENURED_MAX_PAYLOAD ||
            tw.n == RS_GC_TENURED_MAX_ENTRIES)
            tw_flush(seq, flags);
        d = u - tw.prev;
        tw.prev = u;
        if (tw.run && d == tw.delta)
            tw.run++;
        else {
            tw_close_addr_run();
            tw.delta = d;
            tw.run = 1;
        }
        if (flags & RS_GC_TENURED_TYPES) {
            last_id = type_memo(&ids, rs_py_type((const void *)(uintptr_t)v[i]), type_id);
            if (tw.type_run && last_id == tw.type)
                tw.type_run++;
            else {
                tw_close_type_run();
                tw.type = last_id;
                tw.type_run = 1;
            }
        }
        tw.n++;
    }
    tw_flush(seq, flags);
}

/* ---- census: collections ------------------------------------------------------ */

/* Can the collector move objects of this type to the tail of a list it is
 * not collecting? Only weakrefs with a callback (handle_weakrefs). */
static uint32_t type_movable(const void *tp)
{
    return tp == rs_capi._PyWeakref_RefType || tp == rs_capi._PyWeakref_ProxyType ||
           tp == rs_capi._PyWeakref_CallableProxyType ||
           (tp && rs_capi.PyType_IsSubtype(tp, rs_capi._PyWeakref_RefType));
}

/* type_movable of this object's type, remembered in `cache` for one walk. */
static int movable(const void *node, struct type_memo *cache)
{
    return (int)type_memo(cache, rs_py_type(rs_py_gc_object(node)), type_movable);
}

/* Both ends of the permanent generation: when they are the same at stop as
 * at start, nothing left it or joined it but moved weakrefs. */
static void permanent_ends(const void *ends[2])
{
    const void *head = rs_py_gc_head(RS_PYVER_GEN_PERMANENT);
    ends[0] = rs_py_gc_next(head);
    ends[1] = rs_py_gc_prev(head);
}

/* Calls visit(node, ctx) for every node of the whole list at `head`, in no
 * particular order, until one returns nonzero (returned). A walk is bound by
 * memory latency (one dependent load per node), so this one follows the
 * list from both ends at once: two independent chains meeting in the middle
 * (a third to a half less time than one chain). Inlined with its visitor. */
__attribute__((always_inline))
static inline int walk_list(const void *head, int (*visit)(const void *node, void *ctx), void *ctx)
{
    const void *a = rs_py_gc_next(head), *b = rs_py_gc_prev(head);
    int r;
    if (a == head)
        return 0;
    for (;;) {
        if ((r = visit(a, ctx)) != 0)
            return r;
        if (a == b)
            return 0; /* odd length: met on the middle node */
        if ((r = visit(b, ctx)) != 0)
            return r;
        const void *an = rs_py_gc_next(a), *bp = rs_py_gc_prev(b);
        if (an == b)
            return 0; /* even length: the two halves are done */
        a = an;
        b = bp;
    }
}

__attribute__((always_inline))
static inline int examine_node(const void *node, void *tag)
{
    uint64_t key = (uint64_t)(uintptr_t)rs_py_gc_object(node) << 2 | (uint64_t)(uintptr_t)tag;
    return rs_u64vec_push(&cs.examined, key) != 0 ? -ENOMEM : 0;
}

/* At the start of a collection of generation g: counts and remembers the
 * objects of generations 0..g, and marks the end of the list survivors go
 * to. The examined set is hashed at stop, and only as much of it as needed
 * (see census_promoted and census_stop). */
static void census_start(int g)
{
    struct type_memo cache = {{NULL}, {0}};
    cs.gen = g;
    cs.failed = 0;
    cs.hashed = 0;
    cs.examined.n = 0;
    for (int i = 0; i <= g; i++) {
        const void *head = rs_py_gc_head(i);
        uint64_t tag = i < 2 ? TAG_YOUNG : TAG_OLD;
        size_t before = cs.examined.n;
        if (walk_list(head, examine_node, (void *)(uintptr_t)tag) != 0) {
            cs.failed = 1;
            return;
        }
        cs.counts[i] = cs.examined.n - before;
    }
    cs.young_n = g == 2 ? (size_t)(cs.counts[0] + cs.counts[1]) : cs.examined.n;
    /* Other gc callbacks run after this one may track new objects, which
     * the collector then examines too: only the full hash can leave them
     * out, and it must be taken now. */
    if (rs_capi.PyList_Size(gcf.callbacks) > 1) {
        cs.failed = set_build(cs.examined.n) != 0;
        cs.hashed = 1;
    }
    permanent_ends(cs.permanent);
    if (g == 2)
        return;
    const void *head = rs_py_gc_head(g + 1), *node = rs_py_gc_prev(head);
    while (node != head && movable(node, &cache))
        node = rs_py_gc_prev(node);
    cs.mark = node;
}

static int permanent_changed(void)
{
    const void *now[2];
    permanent_ends(now);
    return now[0] != cs.permanent[0] || now[1] != cs.permanent[1];
}

/* Walks generation g+1 back from its tail to the mark (g = 2: all of
 * generation 2), counting the examined objects found there and listing in
 * cs.tenured those that reached generation 2 from a younger one.
 * LOOKUP_NONE (g < 2) takes every object walked as examined, which holds
 * unless the mark was not met (it died or left the list during the
 * collection), a weakref was walked (the collector moves those from any
 * generation) or the permanent generation changed (gc.unfreeze() from a
 * finalizer, 3.12+ immortal objects): then returns -EAGAIN. LOOKUP_YOUNG
 * (g = 2) takes every object of generation 2 as examined, young when the
 * hash of generations 0-1 has it: the caller has checked that the permanent
 * generation did not change and that no other callback could track objects
 * (the collector adds nothing else to generation 2). LOOKUP_ALL asks the
 * hash of everything examined. */
struct promote_walk {
    int g;
    enum census_lookup lookup;
    uint64_t promoted;
    struct type_memo cache;
};

/* One object of the walk below: 0, -EAGAIN or -ENOMEM. */
__attribute__((always_inline))
static inline int promote_node(const void *node, void *ctx)
{
    struct promote_walk *w = ctx;
    uint64_t addr = (uint64_t)(uintptr_t)rs_py_gc_object(node);
    unsigned tag = TAG_YOUNG;
    if (w->lookup == LOOKUP_ALL)
        tag = set_tag(addr);
    else if (w->lookup == LOOKUP_YOUNG)
        tag = set_tag(addr) ? TAG_YOUNG : TAG_OLD;
    else if (movable(node, &w->cache))
        return -EAGAIN;
    if (!tag)
        return 0; /* a moved weakref, or unfrozen during the collection */
    w->promoted++;
    if (w->g >= 1 && tag == TAG_YOUNG && rs_u64vec_push(&cs.tenured, addr) != 0)
        return -ENOMEM;
    return 0;
}

static int census_promoted(int g, enum census_lookup lookup, uint64_t *promoted)
{
    struct promote_walk w = {g, lookup, 0, {{NULL}, {0}}};
    int r = 0;

    cs.tenured.n = 0;
    if (g == 2) {
        r = walk_list(rs_py_gc_head(2), promote_node, &w); /* all of it, both ends at once */
    } else {
        /* from the tail back to the mark: the mark may have died, so never
         * read from it forwards */
        const void *head = rs_py_gc_head(g + 1);
        for (const void *node = rs_py_gc_prev(head); node != cs.mark && !r; node = rs_py_gc_prev(node)) {
            if (node == head) {
                if (lookup == LOOKUP_NONE)
                    r = -EAGAIN; /* the mark died or left: old members were walked too */
                break;
            }
            r = promote_node(node, &w);
        }
    }
    *promoted = w.promoted;
    if (r == 0 && lookup == LOOKUP_NONE && permanent_changed())
        r = -EAGAIN;
    return r;
}

/* At the stop of the collection census_start saw: promoted objects, the
 * SURVIVAL record and the TENURED records. */
static void census_stop(uint32_t seq)
{
    uint8_t data[8 + 5 * 10];
    uint32_t len = 0;
    uint64_t promoted = 0;
    int g = cs.gen, r;

    cs.gen = -1;
    if (!cs.failed) {
        enum census_lookup lookup = cs.hashed ? LOOKUP_ALL : LOOKUP_NONE;
        if (g == 2 && !cs.hashed) {
            /* generation 2 is most of the heap: hash only the young part
             * when nothing but the collection changed the lists */
            lookup = permanent_changed() ? LOOKUP_ALL : LOOKUP_YOUNG;
            r = set_build(lookup == LOOKUP_ALL ? cs.examined.n : cs.young_n);
            cs.hashed = lookup == LOOKUP_ALL;
            if (r != 0)
                goto done;
        }
        r = census_promoted(g, lookup, &promoted);
        if (r == -EAGAIN)
            r = set_build(cs.examined.n) != 0 ? -ENOMEM : census_promoted(g, LOOKUP_ALL, &promoted);
        if (r == 0)
            r = rs_u64vec_reserve(&cs.sort_tmp, cs.tenured.n);
done:
        cs.failed = r != 0;
    }
    data[len++] = RS_GC_INFO_SURVIVAL;
    data[len++] = (uint8_t)g;
    data[len++] = cs.failed ? RS_GC_SURVIVAL_FAILED : 0;
    data[len++] = 0;
    memcpy(data + len, &seq, 4);
    len += 4;
    for (int i = 0; i <= g; i++)
        put_varint(data, &len, cs.failed ? 0 : cs.counts[i]);
    put_varint(data, &len, cs.failed ? 0 : promoted);
    put_varint(data, &len, cs.failed ? 0 : cs.tenured.n);
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, len);
    if (!cs.failed)
        emit_tenured(seq);
}

/* Lists objects that reached generation 2 outside a collection: the whole
 * generation at registration (mark = NULL), or what follows `mark` (its
 * tail before gc.unfreeze()). */
static void census_list_gen2(const void *mark)
{
    const void *head = rs_py_gc_head(2);
    cs.tenured.n = 0;
    for (const void *node = rs_py_gc_prev(head); node != head && node != mark; node = rs_py_gc_prev(node))
        if (rs_u64vec_push(&cs.tenured, (uint64_t)(uintptr_t)rs_py_gc_object(node)) != 0)
            goto oom;
    if (rs_u64vec_reserve(&cs.sort_tmp, cs.tenured.n) != 0)
        goto oom;
    emit_tenured(0);
    return;
oom:
    rs_warn("gc census: out of memory listing generation 2; tenured garbage will be incomplete");
}

/* Finds the generation lists and what the census needs; 0 or -errno. */
static int census_setup(void)
{
    int r = rs_py_gc_lists_init();
    if (r != 0)
        return r;
    static const size_t needs[] = {
        RS_CAPI(_PyWeakref_RefType), RS_CAPI(_PyWeakref_ProxyType),
        RS_CAPI(_PyWeakref_CallableProxyType), RS_CAPI(PyType_IsSubtype),
    };
    if (rs_capi_missing(needs, RS_CAPI_COUNT(needs)))
        return -ENOSYS;
    /* the lists found must be the ones the gc module describes: checked once,
     * by direct_state_agrees() (before, this compared thresholds with a
     * configuration not read yet at this point, which checked nothing) */
    if (!gcf.direct)
        return -ENOENT;
    st.census_types = rs_capi.PyRefTracer_SetTracer == NULL;
    return 0;
}

/* ---- the gc.callbacks entry ---------------------------------------------------- */

static void on_start(rs_pyobj *info)
{
    rs_pyobj *counts;
    struct rs_slot rec;
    long long c[3] = {0, 0, 0};
    int gen = (int)dict_int(info, gcf.key_generation);

    rs_objtrace_check();
    check_config(RS_GC_CFG_NOTICED, NULL);
    if (gcf.direct) {
        for (int i = 0; i < 3; i++)
            c[i] = rs_py_gc_count(i);
    } else if ((counts = call0(gcf.get_count))) {
        for (long i = 0; i < 3 && i < rs_capi.PyTuple_Size(counts); i++)
            c[i] = int_item(counts, i);
        rs_capi.Py_DecRef(counts);
    }
    st.start_flags = (uint8_t)(gen >= 0 && gen < 15 ? (unsigned)gen : RS_GC_GEN_MASK);
    if (rs_py.Py_IsInitialized && !rs_py.Py_IsInitialized())
        st.start_flags |= RS_GC_F_SHUTDOWN;
    if (!st.generational)
        st.start_flags |= RS_GC_F_WHOLEHEAP;
    if (st.census && gen >= 0 && gen <= 2)
        census_start(gen);
    memset(&rec, 0, sizeof(rec));
    rec.kind = RS_EV_GC_START;
    rec.flags = st.start_flags;
    rec.addr = (uint64_t)(c[0] < 0 ? 0 : c[0]);
    rec.size = (uint64_t)sat32(c[1]) | (uint64_t)sat32(c[2]) << 32;
    rec.stack = ++st.seq;
    st.in_collection = 1;
    st.start_mono = rs_clock_mono_ns();
    rs_emit_fixed(&rec);
}

static void on_stop(rs_pyobj *info)
{
    uint64_t pause = rs_clock_mono_ns() - st.start_mono;
    struct rs_slot rec;

    memset(&rec, 0, sizeof(rec));
    rec.kind = RS_EV_GC_STOP;
    rec.flags = st.start_flags;
    rec.addr = (uint64_t)dict_int(info, gcf.key_collected);
    rec.size = (uint64_t)dict_int(info, gcf.key_uncollectable);
    rec.stack = pause >= 0xffffffffull ? 0xffffffffu : (uint32_t)pause;
    if (!st.in_collection)
        return;
    st.in_collection = 0;
    rs_emit_fixed(&rec);
    if (cs.gen >= 0)
        census_stop(st.seq);
}

static rs_pyobj *gc_callback(rs_pyobj *self, rs_pyobj *args)
{
    rs_pyobj *phase, *info;
    const char *p;
    int own = rs_guard_own_begin();

    if (!rs_emit_active() || rs_capi.PyTuple_Size(args) != 2)
        goto out;
    phase = rs_capi.PyTuple_GetItem(args, 0);
    info = rs_capi.PyTuple_GetItem(args, 1);
    p = phase ? rs_capi.PyUnicode_AsUTF8(phase) : NULL;
    if (!p || !info) {
        rs_capi.PyErr_Clear();
        goto out;
    }
    if (!strcmp(p, "start")) {
        ensure_trace_start();
        on_start(info);
    }
    else if (!strcmp(p, "stop"))
        on_stop(info);
out:
    rs_guard_own_end(own);
    rs_capi.Py_IncRef(rs_capi._Py_NoneStruct);
    return rs_capi._Py_NoneStruct;
}

/* ---- wrappers of the gc functions that change the configuration ------------- */

/* self = (original function, name) */
static rs_pyobj *gc_wrapper(rs_pyobj *self, rs_pyobj *args, rs_pyobj *kwargs)
{
    rs_pyobj *orig = rs_capi.PyTuple_GetItem(self, 0);
    const char *name = rs_capi.PyUnicode_AsUTF8(rs_capi.PyTuple_GetItem(self, 1));
    /* gc.unfreeze() appends the permanent generation to generation 2 */
    int unfreeze = st.census && name && !strcmp(name, "unfreeze");
    const void *gen2_tail = unfreeze ? rs_py_gc_prev(rs_py_gc_head(2)) : NULL;
    rs_pyobj *res = rs_capi.PyObject_Call(orig, args, kwargs);
    if (res && rs_emit_active()) {
        int own = rs_guard_own_begin();
        check_config(RS_GC_CFG_CALL, name);
        if (unfreeze)
            census_list_gen2(gen2_tail);
        rs_guard_own_end(own);
    }
    return res;
}

static struct rs_py_methoddef wrapper_defs[] = {
    {"set_threshold", (void *)gc_wrapper, RS_METH_VARARGS | RS_METH_KEYWORDS, "gc.set_threshold (traced by refscope)"},
    {"disable", (void *)gc_wrapper, RS_METH_VARARGS | RS_METH_KEYWORDS, "gc.disable (traced by refscope)"},
    {"enable", (void *)gc_wrapper, RS_METH_VARARGS | RS_METH_KEYWORDS, "gc.enable (traced by refscope)"},
    {"freeze", (void *)gc_wrapper, RS_METH_VARARGS | RS_METH_KEYWORDS, "gc.freeze (traced by refscope)"},
    {"unfreeze", (void *)gc_wrapper, RS_METH_VARARGS | RS_METH_KEYWORDS, "gc.unfreeze (traced by refscope)"},
};

static void wrap_gc_functions(rs_pyobj *gc)
{
    for (size_t i = 0; i < sizeof(wrapper_defs) / sizeof(wrapper_defs[0]); i++) {
        rs_pyobj *orig = rs_capi.PyObject_GetAttrString(gc, wrapper_defs[i].name), *self, *name, *fn;
        if (!orig) {
            rs_capi.PyErr_Clear();
            continue;
        }
        self = rs_capi.PyTuple_New(2);
        name = rs_capi.PyUnicode_FromString(wrapper_defs[i].name);
        if (!self || !name) {
            rs_capi.PyErr_Clear();
            rs_capi.Py_DecRef(orig);
            continue;
        }
        rs_capi.PyTuple_SetItem(self, 0, orig); /* steals */
        rs_capi.PyTuple_SetItem(self, 1, name);
        fn = rs_capi.PyCFunction_NewEx(&wrapper_defs[i], self, NULL);
        rs_capi.Py_DecRef(self);
        if (!fn || rs_capi.PyObject_SetAttrString(gc, wrapper_defs[i].name, fn) != 0)
            rs_capi.PyErr_Clear();
        if (fn)
            rs_capi.Py_DecRef(fn);
    }
}

/* ---- registration ---------------------------------------------------------- */

static rs_pyobj *at_exit(rs_pyobj *self, rs_pyobj *unused)
{
    int own = rs_guard_own_begin();
    if (rs_emit_active()) {
        rs_objtrace_check();
        check_config(RS_GC_CFG_EXIT, NULL);
    }
    rs_guard_own_end(own);
    rs_capi.Py_IncRef(rs_capi._Py_NoneStruct);
    return rs_capi._Py_NoneStruct;
}

static void emit_trace_start(void);

/* A fork child writes a trace of its own (new epoch): it needs the mode,
 * baseline and configuration records too, or its census is unreadable. Run
 * from os.register_at_fork(after_in_child=...) and, for forks made outside
 * Python, checked again at each collection. */
static void ensure_trace_start(void)
{
    if (rs_emit_epoch() != st.trace_epoch)
        emit_trace_start();
}

static rs_pyobj *at_fork_child(rs_pyobj *self, rs_pyobj *unused)
{
    int own = rs_guard_own_begin();
    if (rs_emit_active())
        ensure_trace_start();
    rs_capi.PyErr_Clear();
    rs_guard_own_end(own);
    rs_capi.Py_IncRef(rs_capi._Py_NoneStruct);
    return rs_capi._Py_NoneStruct;
}

static struct rs_py_methoddef fork_def = {"refscope_gc_at_fork_child", (void *)at_fork_child, RS_METH_NOARGS,
                                       "refscope: starts the gc records of a fork child's trace"};
static struct rs_py_methoddef callback_def = {"refscope_gc_callback", (void *)gc_callback, RS_METH_VARARGS,
                                           "refscope: records gc collections"};
static struct rs_py_methoddef exit_def = {"refscope_gc_at_exit", (void *)at_exit, RS_METH_NOARGS,
                                       "refscope: records the final gc configuration"};

static void emit_baseline(void)
{
    rs_pyobj *stats = call0(gcf.get_stats);
    uint8_t data[8 + 3 * 24];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    long n;

    if (!stats)
        return;
    n = rs_capi.PyList_Size(stats);
    if (n > 3)
        n = 3;
    rs_buf_u8(&b, RS_GC_INFO_BASELINE);
    rs_buf_u8(&b, (uint8_t)(n < 0 ? 0 : n));
    rs_buf_u16(&b, 0);
    rs_buf_u32(&b, 0);
    for (long i = 0; i < n; i++) {
        rs_pyobj *d = rs_capi.PyList_GetItem(stats, i);
        rs_buf_u64(&b, (uint64_t)dict_int(d, gcf.key_collections));
        rs_buf_u64(&b, (uint64_t)dict_int(d, gcf.key_collected));
        rs_buf_u64(&b, (uint64_t)dict_int(d, gcf.key_uncollectable));
    }
    rs_capi.Py_DecRef(stats);
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, b.len);
}

static void emit_mode(void)
{
    uint8_t data[4] = {RS_GC_INFO_MODE, (uint8_t)(st.census ? RS_GC_CENSUS_FORMAT : 0),
                       (uint8_t)(st.generational ? 3 : 0),
                       (uint8_t)rs_py_gc_incremental()};
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, sizeof(data));
}

/* What every trace starts with: configuration, census mode, the
 * interpreter's own counters so far, and what is already in the oldest
 * generation. */
static void emit_trace_start(void)
{
    st.trace_epoch = rs_emit_epoch();
    st.have_config = 0;
    check_config(RS_GC_CFG_INITIAL, NULL);
    emit_mode();
    emit_baseline();
    if (st.census)
        census_list_gen2(NULL); /* already in the oldest generation */
}

/* posix, not os: posix is built in and imported at start-up, while the
 * init safe point may come before site has imported os (it does on 3.12,
 * which marks itself initialized before importing site); importing os here
 * would make that import, and every object it keeps, refscope's own. */
static void register_at_fork_child(void)
{
    rs_pyobj *os = rs_capi.PyImport_ImportModule("posix");
    rs_pyobj *reg = os ? rs_capi.PyObject_GetAttrString(os, "register_at_fork") : NULL;
    rs_pyobj *fn = reg ? rs_capi.PyCFunction_NewEx(&fork_def, NULL, NULL) : NULL;
    rs_pyobj *args = fn ? rs_capi.PyTuple_New(0) : NULL;
    rs_pyobj *kwargs = args ? rs_capi.PyDict_New() : NULL;
    if (kwargs && rs_capi.PyDict_SetItemString(kwargs, "after_in_child", fn) == 0) {
        rs_pyobj *res = rs_capi.PyObject_Call(reg, args, kwargs);
        if (res)
            rs_capi.Py_DecRef(res);
    }
    rs_capi.PyErr_Clear();
    if (kwargs)
        rs_capi.Py_DecRef(kwargs);
    if (args)
        rs_capi.Py_DecRef(args);
    if (fn)
        rs_capi.Py_DecRef(fn);
    if (reg)
        rs_capi.Py_DecRef(reg);
    if (os)
        rs_capi.Py_DecRef(os);
}

/* Can the configuration and counts be read from the GC state (pyver) rather
 * than through gc functions (three calls and their objects per collection)?
 * Only when pyver found the state and it agrees with the gc module now. */
static int direct_state_agrees(void)
{
    rs_pyobj *t, *n;
    int ok = 0;
    if (!st.generational || rs_py_gc_lists_init() != 0)
        return 0;
    t = call0(gcf.get_threshold);
    n = call0(gcf.get_count);
    if (t && n && rs_capi.PyTuple_Size(t) == 3 && rs_capi.PyTuple_Size(n) == 3) {
        ok = 1;
        for (int i = 0; i < 3; i++)
            ok &= int_item(t, i) == rs_py_gc_threshold(i);
        /* the count of generation 0 moves with every container made */
        ok &= int_item(n, 1) == rs_py_gc_count(1) && int_item(n, 2) == rs_py_gc_count(2);
    }
    if (t)
        rs_capi.Py_DecRef(t);
    if (n)
        rs_capi.Py_DecRef(n);
    rs_pyobj *e = call0(gcf.isenabled);
    if (e) {
        ok &= (rs_capi.PyObject_IsTrue(e) > 0) == (rs_py_gc_enabled() > 0);
        rs_capi.Py_DecRef(e);
    } else {
        ok = 0;
    }
    rs_capi.PyErr_Clear();
    return ok;
}

static int register_callbacks(void)
{
    rs_pyobj *gc = NULL, *callbacks = NULL, *cb = NULL, *atexit_mod = NULL, *reg = NULL, *fn = NULL, *res;
    int ret = -EIO;

    gc = rs_capi.PyImport_ImportModule("gc");
    if (!gc)
        goto out;
    gcf.get_count = rs_capi.PyObject_GetAttrString(gc, "get_count");
    gcf.get_threshold = rs_capi.PyObject_GetAttrString(gc, "get_threshold");
    gcf.isenabled = rs_capi.PyObject_GetAttrString(gc, "isenabled");
    gcf.get_stats = rs_capi.PyObject_GetAttrString(gc, "get_stats");
    gcf.get_freeze_count = rs_capi.PyObject_GetAttrString(gc, "get_freeze_count");
    rs_capi.PyErr_Clear();
    if (!gcf.get_count || !gcf.get_threshold || !gcf.isenabled)
        goto out;
    callbacks = rs_capi.PyObject_GetAttrString(gc, "callbacks");
    cb = callbacks ? rs_capi.PyCFunction_NewEx(&callback_def, NULL, NULL) : NULL;
    if (!cb || rs_capi.PyList_Append(callbacks, cb) != 0)
        goto out;
    rs_capi.Py_IncRef(callbacks);
    gcf.callbacks = callbacks; /* kept: the census looks at its length */
    gcf.key_generation = rs_capi.PyUnicode_InternFromString("generation");
    gcf.key_collections = rs_capi.PyUnicode_InternFromString("collections");
    gcf.key_collected = rs_capi.PyUnicode_InternFromString("collected");
    gcf.key_uncollectable = rs_capi.PyUnicode_InternFromString("uncollectable");
    rs_capi.PyErr_Clear();
    gcf.direct = direct_state_agrees();

    if (st.census && census_setup() != 0) {
        st.census = 0;
        st.census_unavailable = 1;
    }
    emit_trace_start();
    wrap_gc_functions(gc);
    register_at_fork_child();

    /* At exit (the last Python atexit handler, registered first): catches
     * configuration changes made without the wrappers. Optional. */
    atexit_mod = rs_capi.PyImport_ImportModule("atexit");
    reg = atexit_mod ? rs_capi.PyObject_GetAttrString(atexit_mod, "register") : NULL;
    fn = reg ? rs_capi.PyCFunction_NewEx(&exit_def, NULL, NULL) : NULL;
    if (fn) {
        rs_pyobj *args = rs_capi.PyTuple_New(1);
        if (args) {
            rs_capi.Py_IncRef(fn);
            rs_capi.PyTuple_SetItem(args, 0, fn);
            res = rs_capi.PyObject_Call(reg, args, NULL);
            if (res)
                rs_capi.Py_DecRef(res);
            rs_capi.Py_DecRef(args);
        }
    }
    ret = 0;
out:
    rs_capi.PyErr_Clear();
    if (fn)
        rs_capi.Py_DecRef(fn);
    if (reg)
        rs_capi.Py_DecRef(reg);
    if (atexit_mod)
        rs_capi.Py_DecRef(atexit_mod);
    if (cb)
        rs_capi.Py_DecRef(cb);
    if (callbacks)
        rs_capi.Py_DecRef(callbacks);
    if (gc)
        rs_capi.Py_DecRef(gc);
    return ret;
}

/* At the init safe point (pysafe.h: already refscope's own work). */
static void gcwatch_at_init(void *arg)
{
    if (!rs_emit_active())
        return;
    if (st.off) {
        /* gc.callbacks stays as the program left it: CPython builds an info
         * dict for every callback call, which costs the program itself a few
         * percent when it collects often */
        rs_emit_note(RS_NOTE_GC_OFF, "gc events off (run --no-gc, REFSCOPE_GC=off): no collections, "
                                     "promotions or tenured garbage in this trace");
        return;
    }
    if (!st.generational)
        rs_emit_note(rs_py.free_threaded ? RS_NOTE_GC_FREETHREADED : RS_NOTE_GC_INCREMENTAL,
                  rs_py.free_threaded
                      ? "free-threaded build: every collection examines the whole heap; there are "
                        "no generations, so no promotions (census off)"
                      : "CPython 3.14.0-3.14.4 incremental collector: generation numbers are not "
                        "generational, automatic runs are reported as generation 1; no promotions "
                        "(census off)");
    if (register_callbacks() != 0)
        rs_emit_note(RS_NOTE_GC_UNAVAILABLE,
                  "could not register a gc.callbacks entry: no collection events in this trace");
    else if (st.census_unavailable)
        rs_emit_note(RS_NOTE_GC_CENSUS_UNAVAILABLE,
                  "gc census unavailable: the generation lists of this CPython were not found "
                  "(verified on 3.9-3.13); promotions and tenured garbage unknown");
    else if (!st.census && st.generational)
        rs_emit_note(RS_NOTE_GC_CENSUS_OFF,
                  "gc census off (REFSCOPE_GC_CENSUS=off): promotions and tenured garbage unknown");
}

static void gcwatch_start(void)
{
    if (!rs_py.ob_size)
        return;
    const char *missing = rs_capi_missing(gc_capi, RS_CAPI_COUNT(gc_capi));
    if (missing) {
        char line[160];
        snprintf(line, sizeof(line), "gc events are off: this CPython has no %s", missing);
        rs_warn(line);
        return;
    }
    st.generational = !rs_py.free_threaded && !rs_py_gc_incremental();
    st.off = !rs_env_flag(RS_ENV_GC, 1);
    st.census = !st.off && rs_env_flag(RS_ENV_GC_CENSUS, 1) && st.generational;
    if (rs_pysafe_on_init(gcwatch_at_init, NULL) != 0)
        rs_warn("gc events: no safe point slot left; gc events are off");
}

__attribute__((constructor(RS_CTOR_FEATURE)))
static void gcwatch_init(void)
{
    if (rs_emit_active())
        rs_pyver_when_found(gcwatch_start);
}
