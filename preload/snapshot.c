/*
 * Heap snapshots (issue 5): the object graph of the traced interpreter,
 * streamed as RS_EV_SNAPSHOT records (layouts in include/refscope/events.h).
 *
 * A snapshot runs at a safe point with the GIL held: an atexit handler
 * registered at the first safe point (so it runs after the program's own
 * handlers, atexit being LIFO), a SIGUSR2 handler and an optional timer
 * thread (REFSCOPE_SNAPSHOT_INTERVAL seconds) that only ask for a safe point.
 * It walks every GC-tracked object (all generations, the permanent one
 * included) and every object they reference, and records address, type,
 * size as sys.getsizeof reports it, refcount and outgoing references.
 *
 * It leaves no trace in the program: no Python code runs (sizes come from C
 * __sizeof__ implementations or the type's basic/item sizes), no refcount is
 * changed, the pending exception is saved and restored, and it runs as
 * refscope's own Python work (guard.h), so the few allocations CPython makes
 * for it (ints from __sizeof__, lookup keys) are recorded flagged RS_F_OWN,
 * apart from the program's. Scratch tables are mmap'd and unmapped at the end.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "refscope/clock.h"
#include "refscope/events.h"
#include "refscope/transport.h"
#include "emit.h"
#include "guard.h"
#include "pysafe.h"
#include "pytypes.h"
#include "pyver.h"
#include "u64vec.h"
#include "shim.h"
#include "sigkeep.h"

/* ---- scratch memory (mmap; never malloc): rs_u64vec arrays (u64vec.h) and a set */

/* Address set: open addressing, linear probing, 0 = empty slot. */
struct snap_set {
    uint64_t *slot;
    size_t cap, used; /* cap is a power of two */
};

static inline size_t set_hash(uint64_t a, size_t mask)
{
    a ^= a >> 33;
    a *= 0xff51afd7ed558ccdull;
    a ^= a >> 29;
    return (size_t)a & mask;
}

static int set_grow(struct snap_set *s)
{
    size_t cap = s->cap ? s->cap * 2 : (1u << 16);
    uint64_t *slot = mmap(NULL, cap * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slot == MAP_FAILED)
        return -ENOMEM;
    for (size_t i = 0; i < s->cap; i++) {
        uint64_t a = s->slot[i];
        if (!a)
            continue;
        size_t j = set_hash(a, cap - 1);
        while (slot[j])
            j = (j + 1) & (cap - 1);
        slot[j] = a;
    }
    if (s->slot)
        munmap(s->slot, s->cap * 8);
    s->slot = slot;
    s->cap = cap;
    return 0;
}

/* 1 = newly added, 0 = already present, <0 error. */
static int set_add(struct snap_set *s, uint64_t a)
{
    if ((s->used + 1) * 2 > s->cap && set_grow(s))
        return -ENOMEM;
    size_t j = set_hash(a, s->cap - 1);
    while (s->slot[j]) {
        if (s->slot[j] == a)
            return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->slot[j] = a;
    s->used++;
    return 1;
}

static int set_has(const struct snap_set *s, uint64_t a)
{
    if (!s->cap)
        return 0;
    size_t j = set_hash(a, s->cap - 1);
    while (s->slot[j]) {
        if (s->slot[j] == a)
            return 1;
        j = (j + 1) & (s->cap - 1);
    }
    return 0;
}

static void set_release(struct snap_set *s)
{
    if (s->slot)
        munmap(s->slot, s->cap * 8);
    memset(s, 0, sizeof(*s));
}

/* ---- per-type facts, cached for the process --------------------------------------- */

#define SNAP_TYPE_CAP 16384u /* power of two; more distinct types than this: objects skipped */

struct snap_type {
    const void *type;
    uint32_t index;        /* position in the cache + 1: the snapshot's type ref */
    uint32_t emitted_seq;  /* snapshot that last defined it                    */
    struct rs_pyver_typeinfo info;
};

static struct snap_type snap_types[SNAP_TYPE_CAP];

/* ---- the snapshot in progress ------------------------------------------------------ */

#define SNAP_RECORD_MAX 60000u /* payload bytes per record, well under 64 KiB */

struct snap {
    uint32_t seq;
    int free_threaded;
    struct snap_set seen;
    struct snap_set garbage;
    struct rs_u64vec refs;   /* outgoing refs of the object being recorded */
    struct rs_u64vec labels; /* (edge index) pairs of dict-key labels       */
    struct rs_u64vec work;   /* untracked referents still to record         */
    uint8_t objbuf[SNAP_RECORD_MAX];
    struct rs_buf obj;
    uint8_t labbuf[SNAP_RECORD_MAX];
    struct rs_buf lab;
    uint8_t morebuf[SNAP_RECORD_MAX];
    uint64_t objects, edges, bytes, errors;
    int failed;
};

static struct snap snap_state;
static volatile int snap_running;
static uint32_t snap_seq;

static void snap_buf_init(struct rs_buf *b, uint8_t *data, uint8_t subkind, uint32_t seq)
{
    b->data = data;
    b->len = 0;
    b->cap = SNAP_RECORD_MAX;
    b->overflow = 0;
    rs_buf_u8(b, subkind);
    rs_buf_u8(b, 0);
    rs_buf_u16(b, 0);
    rs_buf_u32(b, seq);
}

static uint64_t load_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void snap_emit(struct snap *s, struct rs_buf *b)
{
    uint8_t head[16] = {0};
    memcpy(head, b->data, b->len < 16 ? b->len : 16);
    rs_emit_var(RS_EV_SNAPSHOT, b->data[0], load_u64(head), load_u64(head + 8), b->data, b->len);
    s->bytes += b->len;
}

/* Emits the pending record of buffer b if it holds more than its header. */
static void snap_flush(struct snap *s, struct rs_buf *b, uint8_t *data, uint8_t subkind)
{
    if (b->len > 8)
        snap_emit(s, b);
    snap_buf_init(b, data, subkind, s->seq);
}

static void snap_flush_all(struct snap *s)
{
    snap_flush(s, &s->obj, s->objbuf, RS_SNAP_OBJECTS);
    snap_flush(s, &s->lab, s->labbuf, RS_SNAP_LABELS);
}

/* Adds one label; text may be cut to RS_SNAP_LABEL_MAX bytes. */
static void snap_label(struct snap *s, uint64_t addr, uint8_t kind, uint32_t edge,
                       const char *text, uint32_t n)
{
    if (n > RS_SNAP_LABEL_MAX)
        n = RS_SNAP_LABEL_MAX;
    if (s->lab.len + 8 + 1 + 4 + 2 + n > SNAP_RECORD_MAX)
        snap_flush(s, &s->lab, s->labbuf, RS_SNAP_LABELS);
    rs_buf_u64(&s->lab, addr);
    rs_buf_u8(&s->lab, kind);
    rs_buf_u32(&s->lab, edge);
    rs_buf_str(&s->lab, text, n);
}

/* Type ref of `type` for this snapshot, defining it (RS_SNAP_TYPE) on first use. */
static uint32_t snap_type_ref(struct snap *s, const void *type, const struct rs_pyver_typeinfo **info)
{
    size_t j = set_hash((uint64_t)(uintptr_t)type, SNAP_TYPE_CAP - 1);
    for (uint32_t probes = 0; probes < SNAP_TYPE_CAP; probes++, j = (j + 1) & (SNAP_TYPE_CAP - 1)) {
        struct snap_type *t = &snap_types[j];
        if (t->type && t->type != type)
            continue;
        if (!t->type) {
            t->type = type;
            t->index = (uint32_t)j + 1;
            rs_pyver_snap_typeinfo(type, &t->info);
        }
        if (t->emitted_seq != s->seq) {
            uint8_t data[16 + 8 + 4 + 4 + 2 + RS_SNAP_LABEL_MAX];
            struct rs_buf b;
            snap_buf_init(&b, data, RS_SNAP_TYPE, s->seq);
            b.cap = sizeof(data);
            uint32_t n = (uint32_t)strnlen(t->info.name, RS_SNAP_LABEL_MAX);
            rs_buf_u32(&b, t->index);
            rs_buf_u32(&b, rs_pytype_id(type));
            rs_buf_u64(&b, (uint64_t)(uintptr_t)type);
            rs_buf_u32(&b, (uint32_t)t->info.tp_flags);
            rs_buf_str(&b, t->info.name, n);
            snap_emit(s, &b);
            t->emitted_seq = s->seq;
        }
        *info = &t->info;
        return t->index;
    }
    *info = NULL;
    return 0;
}

static int snap_visit(void *obj, void *arg)
{
    struct snap *s = arg;
    if (obj && rs_u64vec_push(&s->refs, (uint64_t)(uintptr_t)obj))
        s->failed = -ENOMEM;
    return 0;
}

static int snap_visit_dict_item(void *key, void *value, void *arg)
{
    struct snap *s = arg;
    if (rs_u64vec_push(&s->refs, (uint64_t)(uintptr_t)key) || rs_u64vec_push(&s->refs, (uint64_t)(uintptr_t)value)) {
        s->failed = -ENOMEM;
        return -1;
    }
    /* key label on the value edge (index refs.n - 1) */
    if (rs_pyver_snap_is_str(key) && rs_u64vec_push(&s->labels, (s->refs.n - 1) << 32 | (s->refs.n - 2)))
        s->failed = -ENOMEM;
    return 0;
}

/* Records one object (not seen before). Untracked referents go to s->work. */
static void snap_object(struct snap *s, void *obj, uint8_t flags)
{
    const struct rs_pyver_typeinfo *ti;
    uint32_t tref = snap_type_ref(s, rs_py_type(obj), &ti);
    if (!ti) {
        s->errors++;
        return;
    }
    int64_t refcnt = rs_py_refcnt(obj);
    if (refcnt < 0) {
        flags |= RS_SNAP_OBJ_IMMORTAL;
        refcnt = 0;
    }
    if (set_has(&s->garbage, (uint64_t)(uintptr_t)obj))
        flags |= RS_SNAP_OBJ_GARBAGE;
    uint64_t size = rs_pyver_snap_sizeof(obj, ti, !s->free_threaded);

    s->refs.n = 0;
    s->labels.n = 0;
    if (rs_pyver_snap_refs(obj, ti, snap_visit, snap_visit_dict_item, s) < 0) {
        flags |= RS_SNAP_OBJ_NOREFS;
        s->errors++;
    }

    /* names: modules, strings, types */
    char text[RS_SNAP_LABEL_MAX];
    int n = rs_pyver_snap_name(obj, ti, text, sizeof(text));
    if (n >= 0)
        snap_label(s, (uint64_t)(uintptr_t)obj, ti->kind == RS_PYKIND_MODULE ? RS_SNAP_LABEL_MODULE :
                   ti->kind == RS_PYKIND_STR ? RS_SNAP_LABEL_STR :
                   ti->kind == RS_PYKIND_TYPE ? RS_SNAP_LABEL_TYPE : RS_SNAP_LABEL_NAME,
                   0, text, (uint32_t)n);
    for (size_t i = 0; i < s->labels.n; i++) {
        uint32_t key_edge = (uint32_t)s->labels.v[i], value_edge = (uint32_t)(s->labels.v[i] >> 32);
        void *key = (void *)(uintptr_t)s->refs.v[key_edge];
        n = rs_py_str_utf8(key, text, sizeof(text));
        if (n >= 0)
            snap_label(s, (uint64_t)(uintptr_t)obj, RS_SNAP_LABEL_KEY, value_edge, text, (uint32_t)n);
    }

    /* the object entry, refs split over RS_SNAP_MORE_REFS records when long */
    if (s->obj.len + RS_SNAP_OBJ_FIXED + 8 * (s->refs.n < 64 ? s->refs.n : 64) > SNAP_RECORD_MAX)
        snap_flush(s, &s->obj, s->objbuf, RS_SNAP_OBJECTS);
    uint32_t room = (SNAP_RECORD_MAX - s->obj.len - RS_SNAP_OBJ_FIXED) / 8;
    uint32_t first = s->refs.n <= room ? (uint32_t)s->refs.n : room;
    if (first < s->refs.n)
        flags |= RS_SNAP_OBJ_MORE_REFS;
    rs_buf_u64(&s->obj, (uint64_t)(uintptr_t)obj);
    rs_buf_u32(&s->obj, tref);
    rs_buf_u32(&s->obj, size > UINT32_MAX ? UINT32_MAX : (uint32_t)size);
    rs_buf_u64(&s->obj, (uint64_t)refcnt);
    rs_buf_u8(&s->obj, flags);
    rs_buf_u8(&s->obj, (uint8_t)rs_pyver_snap_preheader(obj, ti));
    rs_buf_u16(&s->obj, 0);
    rs_buf_u32(&s->obj, first);
    rs_buf_bytes(&s->obj, s->refs.v, first * 8);
    for (size_t done = first; done < s->refs.n;) {
        struct rs_buf b;
        uint32_t k = (uint32_t)((SNAP_RECORD_MAX - 8 - 12) / 8);
        if (k > s->refs.n - done)
            k = (uint32_t)(s->refs.n - done);
        snap_buf_init(&b, s->morebuf, RS_SNAP_MORE_REFS, s->seq);
        rs_buf_u64(&b, (uint64_t)(uintptr_t)obj);
        rs_buf_u32(&b, k);
        rs_buf_bytes(&b, s->refs.v + done, k * 8);
        snap_emit(s, &b);
        done += k;
    }
    s->objects++;
    s->edges += s->refs.n;

    for (size_t i = 0; i < s->refs.n; i++) {
        void *r = (void *)(uintptr_t)s->refs.v[i];
        if (set_has(&s->seen, s->refs.v[i]) || rs_pyver_snap_is_tracked(r))
            continue; /* tracked objects are recorded by the enumeration */
        if (set_add(&s->seen, s->refs.v[i]) < 0 || rs_u64vec_push(&s->work, s->refs.v[i]) < 0)
            s->failed = -ENOMEM;
    }
}

/* One GC-tracked object from the enumeration, then what it made reachable. */
static int snap_tracked(void *obj, int generation, void *arg)
{
    struct snap *s = arg;
    int added = set_add(&s->seen, (uint64_t)(uintptr_t)obj);
    if (added < 0)
        s->failed = added;
    if (added <= 0)
        return s->failed ? -1 : 0;
    uint8_t flags = RS_SNAP_OBJ_TRACKED;
    if (generation == RS_PYVER_GEN_PERMANENT)
        flags |= RS_SNAP_OBJ_FROZEN;
    else if (generation >= 0)
        flags |= (uint8_t)(generation << RS_SNAP_OBJ_GEN_SHIFT);
    snap_object(s, obj, flags);
    while (s->work.n && !s->failed) {
        void *r = (void *)(uintptr_t)s->work.v[--s->work.n];
        snap_object(s, r, 0);
    }
    return s->failed ? -1 : 0;
}

static int snap_mark_garbage(void *obj, void *arg)
{
    struct snap *s = arg;
    return set_add(&s->garbage, (uint64_t)(uintptr_t)obj) < 0 ? -1 : 0;
}

/* Takes one snapshot. Main thread, GIL held (a safe point or atexit). */
static void snapshot_take(uint8_t reason)
{
    if (!rs_emit_active() || snap_running || !rs_pyver_snap_ready())
        return;
    snap_running = 1;
    int own = rs_guard_own_begin();
    struct snap *s = &snap_state;
    memset(&s->seen, 0, sizeof(*s) - offsetof(struct snap, seen));
    /* a type object may have died and another been created at its address */
    memset(snap_types, 0, sizeof(snap_types));
    s->seq = ++snap_seq;
    s->free_threaded = rs_py.free_threaded;
    uint64_t w0 = rs_clock_mono_ns();
    void *saved[3];
    rs_pyver_snap_save_error(saved);

    struct rs_buf b;
    uint8_t data[64];
    snap_buf_init(&b, data, RS_SNAP_BEGIN, s->seq);
    b.cap = sizeof(data);
    rs_buf_u8(&b, reason);
    rs_buf_u8(&b, (uint8_t)rs_pyver_snap_gc_enabled());
    rs_buf_u8(&b, (uint8_t)s->free_threaded);
    rs_buf_u8(&b, 0);
    rs_buf_u32(&b, rs_py.hex);
    snap_emit(s, &b);

    snap_buf_init(&s->obj, s->objbuf, RS_SNAP_OBJECTS, s->seq);
    snap_buf_init(&s->lab, s->labbuf, RS_SNAP_LABELS, s->seq);
    rs_pyver_snap_foreach_garbage(snap_mark_garbage, s);
    int rc = rs_pyver_snap_foreach_tracked(snap_tracked, s);
    snap_flush_all(s);

    snap_buf_init(&b, data, RS_SNAP_END, s->seq);
    b.cap = sizeof(data);
    uint64_t ns = rs_clock_mono_ns() - w0;
    rs_buf_u32(&b, (uint32_t)(rc < 0 || s->failed ? 1 : 0) | (uint32_t)(s->errors ? 2 : 0));
    rs_buf_u64(&b, s->objects);
    rs_buf_u64(&b, s->edges);
    rs_buf_u64(&b, ns);
    snap_emit(s, &b);

    rs_pyver_snap_restore_error(saved);
    rs_u64vec_release(&s->refs);
    rs_u64vec_release(&s->labels);
    rs_u64vec_release(&s->work);
    set_release(&s->seen);
    set_release(&s->garbage);
    rs_guard_own_end(own);
    snap_running = 0;
}

/* ---- triggers ------------------------------------------------------------------------ */

static void snapshot_safe_point(void *arg)
{
    snapshot_take((uint8_t)(uintptr_t)arg);
}

static void snapshot_at_exit(void)
{
    snapshot_take(RS_SNAP_REASON_EXIT);
}

/* SIGUSR2 while the program leaves it at its default (sigkeep.c) */
static void snap_on_usr2(int sig, siginfo_t *info, void *uc)
{
    int saved_errno = errno;
    rs_pysafe_schedule(snapshot_safe_point, (void *)(uintptr_t)RS_SNAP_REASON_SIGNAL);
    errno = saved_errno;
}

static unsigned snap_interval_s;

static void *snap_timer(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec ts = {.tv_sec = snap_interval_s, .tv_nsec = 0};
        while (nanosleep(&ts, &ts) && errno == EINTR)
            ;
        if (!rs_emit_active())
            break;
        rs_pysafe_schedule(snapshot_safe_point, (void *)(uintptr_t)RS_SNAP_REASON_INTERVAL);
    }
    return NULL;
}

/* First safe point: the atexit handler, then the timer. */
static void snapshot_init(void *arg)
{
    (void)arg;
    if (rs_pyver_snap_atexit(snapshot_at_exit) < 0)
        rs_warn("snapshots: could not register the atexit snapshot");
    if (snap_interval_s) {
        pthread_t tid;
        pthread_attr_t attr;
        sigset_t all, old;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old); /* signals stay with the program's threads */
        if (pthread_create(&tid, &attr, snap_timer, NULL))
            rs_warn("snapshots: could not start the interval timer");
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
}

static void snapshot_start(void)
{
    if (!rs_pyver_snap_supported() || rs_pysafe_on_init(snapshot_init, NULL) < 0)
        return;
    if (rs_sigkeep_claim(SIGUSR2, snap_on_usr2) < 0)
        rs_warn("snapshots: cannot catch SIGUSR2; kill -USR2 will not take one");
}

__attribute__((constructor(RS_CTOR_FEATURE))) static void snapshot_ctor(void)
{
    if (!rs_emit_active())
        return;
    const char *iv = rs_env(RS_ENV_SNAPSHOT_INTERVAL);
    if (iv && *iv) {
        char *end;
        unsigned long v = strtoul(iv, &end, 10);
        if (*end == 0 && v > 0 && v < 86400)
            snap_interval_s = (unsigned)v;
    }
    if (rs_env_flag(RS_ENV_SNAPSHOTS, 1))
        rs_pyver_when_found(snapshot_start); /* a process without Python keeps SIGUSR2 */
}
