/*
 * The one way shim modules write records (preload/emit.h): stamps thread and
 * time, reserves ring slots, writes, commits. Also owns thread indices: a
 * u16 per OS thread, assigned on first use (announced by RS_EV_THREAD),
 * recycled when the thread exits (RS_EV_THREAD_EXIT from a pthread key
 * destructor). Everything here runs inside malloc hooks: no allocation, no
 * stdio, no locks; per-thread state is initial-exec TLS.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "refscope/clock.h"
#include "emit.h"
#include "guard.h"

int rs_emit_on;

static struct rs_ring emit_ring;
static uint32_t emit_clock;
static uint32_t emit_epoch;
static int emit_lossy;
static uint64_t emit_lost_reported; /* lossy mode: dropped count already in LOST records */

/* Thread indices: bit set = index in use. RS_THREAD_NONE is never handed out. */
#define THREAD_WORDS (65536 / 64)
static uint64_t thread_used[THREAD_WORDS];
static uint32_t thread_hint;
static pthread_key_t thread_key;
static int thread_key_ok;

/* This thread's index + 1; 0 = none yet. */
static __thread uint32_t tls_thread __attribute__((tls_model("initial-exec")));

int rs_emit_active(void) { return __atomic_load_n(&rs_emit_on, __ATOMIC_ACQUIRE); }

uint32_t rs_emit_epoch(void) { return __atomic_load_n(&emit_epoch, __ATOMIC_ACQUIRE); }

uint64_t rs_emit_now(void) { return rs_clock_ticks(emit_clock); }

static int thread_index_take(void)
{
    uint32_t start = __atomic_load_n(&thread_hint, __ATOMIC_RELAXED) % THREAD_WORDS;
    for (uint32_t k = 0; k < THREAD_WORDS; k++) {
        uint32_t w = (start + k) % THREAD_WORDS;
        uint64_t used = __atomic_load_n(&thread_used[w], __ATOMIC_RELAXED);
        while (~used) {
            int bit = __builtin_ctzll(~used);
            uint32_t index = w * 64 + (uint32_t)bit;
            if (index >= RS_THREAD_NONE)
                break;
            if (__atomic_compare_exchange_n(&thread_used[w], &used, used | (1ull << bit), 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
                __atomic_store_n(&thread_hint, w, __ATOMIC_RELAXED);
                return (int)index;
            }
        }
    }
    return -1;
}

static void thread_index_give(uint32_t index)
{
    __atomic_fetch_and(&thread_used[index / 64], ~(1ull << (index % 64)), __ATOMIC_RELEASE);
}

static void emit_thread_record(uint16_t index)
{
    uint8_t data[4 + 2 + 16];
    char name[17] = { 0 };
    struct rs_buf b = { data, 0, sizeof(data), 0 };
    prctl(PR_GET_NAME, name, 0, 0, 0);
    rs_buf_u32(&b, (uint32_t)syscall(SYS_gettid));
    rs_buf_str(&b, name, (uint32_t)strnlen(name, 16));
    struct rs_slot rec = { .kind = RS_EV_THREAD, .thread = index, .time = rs_emit_now() };
    rs_ring_put_var(&emit_ring, &rec, data, b.len);
}

/* Slow path of thread_current(): bind this thread to a fresh index. */
static uint16_t thread_assign(void)
{
    int index = thread_index_take();
    if (index < 0) {
        tls_thread = RS_THREAD_NONE + 1;
        return RS_THREAD_NONE;
    }
    tls_thread = (uint32_t)index + 1;
    emit_thread_record((uint16_t)index);
    /* pthread_setspecific may allocate (keys >= 32): keep that unrecorded. */
    rs_guard_depth++;
    if (thread_key_ok)
        pthread_setspecific(thread_key, (void *)(uintptr_t)1);
    rs_guard_depth--;
    return (uint16_t)index;
}

static inline uint16_t thread_current(void)
{
    uint32_t t = tls_thread;
    if (__builtin_expect(t != 0, 1))
        return (uint16_t)(t - 1);
    return thread_assign();
}

uint16_t rs_emit_thread(void)
{
    uint32_t t = tls_thread;
    if (t)
        return (uint16_t)(t - 1);
    /* No index is handed out (and none announced) while nothing is written. */
    return rs_emit_active() ? thread_assign() : RS_THREAD_NONE;
}

/* Thread exit. Other keys' destructors (and glibc itself) still free memory
 * after ours runs, so we re-arm for every destructor round and only give the
 * index back in the last one; later records carry RS_THREAD_NONE. */
static void thread_key_destructor(void *value)
{
    uintptr_t round = (uintptr_t)value;
    uint32_t t = tls_thread;
    if (t == 0 || t > RS_THREAD_NONE)
        return;
    if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
        rs_guard_depth++;
        pthread_setspecific(thread_key, (void *)(round + 1));
        rs_guard_depth--;
        return;
    }
    tls_thread = RS_THREAD_NONE + 1;
    if (rs_emit_active()) {
        struct rs_slot rec = { .kind = RS_EV_THREAD_EXIT, .thread = (uint16_t)(t - 1),
                               .time = rs_emit_now() };
        rs_ring_put(&emit_ring, &rec);
    }
    thread_index_give(t - 1);
}

int rs_emit_init(void)
{
    int rc = pthread_key_create(&thread_key, thread_key_destructor);
    if (rc)
        return -rc;
    thread_key_ok = 1;
    return 0;
}

void rs_emit_start(const struct rs_ring *ring, uint32_t clock_kind)
{
    emit_ring = *ring;
    emit_clock = clock_kind;
    emit_lossy = (ring->hdr->flags & RS_RING_LOSSY) != 0;
    emit_lost_reported = 0;
    __atomic_store_n(&rs_emit_on, 1, __ATOMIC_RELEASE);
}

void rs_emit_stop(void)
{
    __atomic_store_n(&rs_emit_on, 0, __ATOMIC_RELEASE);
}

void rs_emit_fork_child(void)
{
    rs_emit_stop();
    memset(thread_used, 0, sizeof(thread_used));
    thread_hint = 0;
    tls_thread = 0;
    __atomic_fetch_add(&emit_epoch, 1, __ATOMIC_ACQ_REL);
}

/* Lossy mode: turn drops counted by the ring into RS_EV_LOST records. */
static void emit_report_lost(uint16_t thread)
{
    uint64_t dropped = __atomic_load_n(&emit_ring.hdr->dropped, __ATOMIC_RELAXED);
    uint64_t seen = __atomic_load_n(&emit_lost_reported, __ATOMIC_RELAXED);
    if (dropped == seen ||
        !__atomic_compare_exchange_n(&emit_lost_reported, &seen, dropped, 0,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    struct rs_slot rec = { .kind = RS_EV_LOST, .thread = thread, .time = rs_emit_now(),
                           .addr = dropped - seen };
    rs_ring_put(&emit_ring, &rec);
}

static inline void emit_one(uint8_t kind, uint8_t flags, uint16_t thread, uint32_t stack,
                            uint64_t time, uint64_t addr, uint64_t size)
{
    uint64_t index = rs_ring_reserve(&emit_ring, 1);
    if (__builtin_expect(index == UINT64_MAX, 0))
        return;
    struct rs_slot *slot = rs_ring_slot(&emit_ring, index);
    slot->flags = flags;
    slot->thread = thread;
    slot->stack = stack;
    slot->time = time;
    slot->addr = addr;
    slot->size = size;
    rs_ring_commit(&emit_ring, index, kind);
    if (__builtin_expect(emit_lossy, 0))
        emit_report_lost(thread);
}

void rs_emit_alloc(uint8_t domain_flags, uint64_t addr, uint64_t size, uint32_t stack)
{
    if (__builtin_expect(!__atomic_load_n(&rs_emit_on, __ATOMIC_ACQUIRE), 0))
        return;
    uint16_t thread = thread_current();
    emit_one(RS_EV_ALLOC, domain_flags, thread, stack, rs_clock_ticks(emit_clock), addr, size);
}

void rs_emit_free(uint8_t domain_flags, uint64_t addr)
{
    if (__builtin_expect(!__atomic_load_n(&rs_emit_on, __ATOMIC_ACQUIRE), 0))
        return;
    uint16_t thread = thread_current();
    emit_one(RS_EV_FREE, domain_flags, thread, 0, rs_clock_ticks(emit_clock), addr, 0);
}

void rs_emit_fixed(struct rs_slot *rec)
{
    if (!rs_emit_active())
        return;
    if (!rec->thread)
        rec->thread = thread_current();
    if (!rec->time)
        rec->time = rs_emit_now();
    emit_one(rec->kind, rec->flags, rec->thread, rec->stack, rec->time, rec->addr, rec->size);
}

void rs_emit_var(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size,
                 const void *payload, uint32_t len)
{
    (void)addr;
    (void)size; /* VAR records carry payload bytes in addr/size */
    if (!rs_emit_active())
        return;
    struct rs_slot rec = { .kind = kind, .flags = flags, .thread = thread_current(),
                           .time = rs_emit_now() };
    rs_ring_put_var(&emit_ring, &rec, payload, len);
}

/* ---- payload builder ------------------------------------------------------------ */

void rs_buf_bytes(struct rs_buf *b, const void *p, uint32_t n)
{
    if (n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void rs_buf_u8(struct rs_buf *b, uint8_t v) { rs_buf_bytes(b, &v, 1); }
void rs_buf_u16(struct rs_buf *b, uint16_t v) { rs_buf_bytes(b, &v, 2); }
void rs_buf_u32(struct rs_buf *b, uint32_t v) { rs_buf_bytes(b, &v, 4); }
void rs_buf_u64(struct rs_buf *b, uint64_t v) { rs_buf_bytes(b, &v, 8); }

void rs_buf_str(struct rs_buf *b, const char *s, uint32_t n)
{
    if (n > 0xffff)
        n = 0xffff;
    if (2u + n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    rs_buf_u16(b, (uint16_t)n);
    rs_buf_bytes(b, s, n);
}
