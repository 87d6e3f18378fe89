/*
 * The one way shim modules write records (preload/emit.h): stamps thread and
 * time, reserves ring slots, writes, commits. Also owns thread indices: a
 * u16 per OS thread, assigned on first use (announced by RS_EV_THREAD),
 * recycled when the thread exits (RS_EV_THREAD_EXIT from a pthread key
 * destructor). Everything here runs inside malloc hooks: no allocation, no
 * stdio, no locks; per-thread state is initial-exec TLS.
 *
 * Solo mode. The ring's CAS on `head` is a locked instruction (~6 ns here,
 * and it drains the store buffer), needed only while two threads may reserve
 * at once. So the first thread to reserve in a trace claims the ring, and
 * reserves with an unlocked compare-and-exchange (rs_ring_reserve_solo)
 * bracketed by `solo_busy`; every other thread, before its first
 * reservation, ends solo mode for good: it marks it ending, runs
 * membarrier(PRIVATE_EXPEDITED) so that the solo thread either sees the mark
 * or has its busy count visible (an asymmetric Dekker handshake: the solo
 * side has compiler fences only), waits for the count to drop to zero, and
 * from then on everyone uses the CAS. Records stay ordered by head
 * increments, exactly as with the CAS. Without membarrier the mode is off.
 */
#include <errno.h>
#include <limits.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "refscope/clock.h"
#include "emit.h"
#include "guard.h"

int rs_emit_on;
_Alignas(64) struct rs_emit_hot rs_emit_hot = { .solo = RS_EMIT_SOLO_NONE };
__thread struct rs_emit_tls rs_emit_tls __attribute__((tls_model("initial-exec")));

static uint64_t emit_lost_reported; /* lossy mode: dropped count already in LOST records */

/* rs_emit_hot.solo besides RS_EMIT_SOLO_NONE and a thread value: */
#define SOLO_OPEN   0xfffffffeu /* no thread has reserved yet: the first one claims it */
#define SOLO_ENDING 0xffffffffu /* another thread is waiting for the solo thread to leave */
static int solo_ok;             /* membarrier is registered for this process      */

/* membarrier(2) registration; needed again in a fork child (a new mm). */
static int solo_register(void)
{
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

static void solo_wait(unsigned *step)
{
    if ((*step)++ < 64) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        return;
    }
    sched_yield();
}

/* The calling thread (value `thread`, 0 when it has no index) is about to
 * reserve with the CAS: afterwards rs_emit_hot.solo is RS_EMIT_SOLO_NONE or
 * `thread`. */
void rs_emit_solo_settle(uint32_t thread)
{
    unsigned step = 0;
    for (;;) {
        uint32_t solo = __atomic_load_n(&rs_emit_hot.solo, __ATOMIC_ACQUIRE);
        if (solo == RS_EMIT_SOLO_NONE || solo == thread)
            return;
        if (solo == SOLO_ENDING) {
            solo_wait(&step);
            continue;
        }
        if (solo == SOLO_OPEN) {
            /* claim it; RS_THREAD_NONE + 1 is shared by every thread without an index */
            uint32_t claim = thread >= 1 && thread <= RS_THREAD_NONE ? thread : RS_EMIT_SOLO_NONE;
            __atomic_compare_exchange_n(&rs_emit_hot.solo, &solo, claim, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_ACQUIRE);
            continue;
        }
        if (!__atomic_compare_exchange_n(&rs_emit_hot.solo, &solo, SOLO_ENDING, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_ACQUIRE))
            continue;
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
            /* registered, so this does not fail; if it did, give the solo
             * thread's store buffer far more time than it needs to drain */
            struct timespec ts = { 0, 10000000 };
            nanosleep(&ts, NULL);
        }
        while (__atomic_load_n(&rs_emit_hot.solo_busy, __ATOMIC_ACQUIRE) != 0)
            solo_wait(&step);
        __atomic_store_n(&rs_emit_hot.solo, RS_EMIT_SOLO_NONE, __ATOMIC_RELEASE);
        return;
    }
}

/* Tracing stops: no thread may take the solo lane any more (rs_emit_event
 * looks at nothing else). Another solo thread leaves its reservation first. */
static void solo_end(void)
{
    rs_emit_solo_settle(rs_emit_tls.thread);
    __atomic_store_n(&rs_emit_hot.solo, RS_EMIT_SOLO_NONE, __ATOMIC_RELEASE);
}

/* Thread indices: bit set = index in use. RS_THREAD_NONE is never handed out. */
#define THREAD_WORDS (65536 / 64)
static uint64_t thread_used[THREAD_WORDS];
static uint32_t thread_hint;
static pthread_key_t thread_key;
static int thread_key_ok;

int rs_emit_active(void) { return __atomic_load_n(&rs_emit_on, __ATOMIC_ACQUIRE); }

uint64_t rs_emit_now(void)
{
    struct rs_emit_tls *t = &rs_emit_tls;
    t->ticks = rs_clock_ticks(rs_emit_hot.clock_kind);
    /* the record stamped exactly counts as the reading's first; `seen` stays,
     * so the recorder's next `now` still refreshes */
    t->left = RS_EMIT_CLOCK_RECORDS - 1;
    return t->ticks;
}

/* This thread's clock reading for a hot-path record: the cached one, unless
 * it has stamped RS_EMIT_CLOCK_RECORDS records already or the recorder has
 * stored a new `now` since it was taken (then a fresh reading, which the
 * solo lane uses for the next RS_EMIT_CLOCK_RECORDS - 1 records). */
static uint64_t emit_clock(struct rs_emit_tls *t)
{
    uint64_t now_word = __atomic_load_n(&rs_emit_hot.ring.hdr->now, __ATOMIC_RELAXED);
    if (now_word == t->seen && t->left > 0) {
        t->left--;
        return t->ticks;
    }
    t->seen = now_word;
    t->left = RS_EMIT_CLOCK_RECORDS - 1;
    t->ticks = rs_clock_ticks(rs_emit_hot.clock_kind);
    return t->ticks;
}

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
    rs_emit_claim();
    rs_ring_put_var(&rs_emit_hot.ring, &rec, data, b.len);
}

/* Slow path of thread_current(): bind this thread to a fresh index. */
static uint16_t thread_assign(void)
{
    int index = thread_index_take();
    if (index < 0) {
        rs_emit_tls.thread = RS_THREAD_NONE + 1;
        return RS_THREAD_NONE;
    }
    rs_emit_tls.thread = (uint32_t)index + 1;
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
    uint32_t t = rs_emit_tls.thread;
    if (__builtin_expect(t != 0, 1))
        return (uint16_t)(t - 1);
    return thread_assign();
}

uint16_t rs_emit_thread(void)
{
    uint32_t t = rs_emit_tls.thread;
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
    uint32_t t = rs_emit_tls.thread;
    if (t == 0 || t > RS_THREAD_NONE)
        return;
    if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
        rs_guard_depth++;
        pthread_setspecific(thread_key, (void *)(round + 1));
        rs_guard_depth--;
        return;
    }
    /* the solo thread leaves solo mode (it is not inside a reservation) */
    uint32_t mine = t;
    __atomic_compare_exchange_n(&rs_emit_hot.solo, &mine, RS_EMIT_SOLO_NONE, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_RELAXED);
    rs_emit_tls.thread = RS_THREAD_NONE + 1;
    if (rs_emit_active()) {
        struct rs_slot rec = { .kind = RS_EV_THREAD_EXIT, .thread = (uint16_t)(t - 1),
                               .time = rs_emit_now() };
        rs_emit_claim();
        rs_ring_put(&rs_emit_hot.ring, &rec);
    }
    thread_index_give(t - 1);
}

int rs_emit_init(void)
{
    int rc = pthread_key_create(&thread_key, thread_key_destructor);
    if (rc)
        return -rc;
    thread_key_ok = 1;
    solo_ok = solo_register();
    return 0;
}

void rs_emit_start(const struct rs_ring *ring, uint32_t clock_kind)
{
    rs_emit_hot.ring = *ring;
    rs_emit_hot.clock_kind = clock_kind;
    rs_emit_hot.lossy = (ring->hdr->flags & RS_RING_LOSSY) != 0;
    rs_emit_hot.solo_busy = 0;
    rs_emit_hot.solo = solo_ok ? SOLO_OPEN : RS_EMIT_SOLO_NONE;
    emit_lost_reported = 0;
    __atomic_store_n(&rs_emit_on, 1, __ATOMIC_RELEASE);
}

void rs_emit_stop(void)
{
    __atomic_store_n(&rs_emit_on, 0, __ATOMIC_RELEASE);
    solo_end();
}

void rs_emit_fork_child(void)
{
    /* the parent's solo thread may not exist here (and left its count as it
     * was): no waiting for it, as rs_emit_stop would */
    rs_emit_hot.solo = RS_EMIT_SOLO_NONE;
    rs_emit_hot.solo_busy = 0;
    __atomic_store_n(&rs_emit_on, 0, __ATOMIC_RELEASE);
    memset(thread_used, 0, sizeof(thread_used));
    thread_hint = 0;
    rs_emit_tls.thread = 0;
    rs_emit_tls.left = 0; /* the child's first record reads the clock */
    solo_ok = solo_ok && solo_register();
    __atomic_fetch_add(&rs_emit_hot.epoch, 1, __ATOMIC_ACQ_REL);
}

/* Lossy mode: turn drops counted by the ring into RS_EV_LOST records. */
static void report_lost(uint16_t thread)
{
    uint64_t dropped = __atomic_load_n(&rs_emit_hot.ring.hdr->dropped, __ATOMIC_RELAXED);
    uint64_t seen = __atomic_load_n(&emit_lost_reported, __ATOMIC_RELAXED);
    if (dropped == seen ||
        !__atomic_compare_exchange_n(&emit_lost_reported, &seen, dropped, 0,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    struct rs_slot rec = { .kind = RS_EV_LOST, .thread = thread, .time = rs_emit_now(),
                           .addr = dropped - seen };
    rs_emit_claim();
    rs_ring_put(&rs_emit_hot.ring, &rec);
}

static inline void emit_one(uint8_t kind, uint8_t flags, uint16_t thread, uint32_t stack,
                            uint64_t time, uint64_t addr, uint64_t size)
{
    rs_emit_claim();
    uint64_t index = rs_ring_reserve(&rs_emit_hot.ring, 1);
    if (__builtin_expect(index == UINT64_MAX, 0))
        return;
    rs_emit_write(index, kind, flags, thread, stack, time, addr, size);
    if (__builtin_expect(rs_emit_hot.lossy, 0))
        report_lost(thread);
}

/* rs_emit_event off the solo lane: tracing off, the thread's first record
 * (bind an index, RS_EV_THREAD, a fresh clock reading), other threads
 * reserving too, a full ring, lossy mode's drops. */
void rs_emit_event_shared(uint8_t kind, uint8_t flags, uint64_t addr, uint64_t size, uint32_t stack)
{
    if (!rs_emit_active())
        return;
    struct rs_emit_tls *t = &rs_emit_tls;
    if (t->thread == 0) {
        uint16_t thread = thread_current();
        emit_one(kind, flags, thread, stack, rs_emit_now(), addr, size);
        return;
    }
    emit_one(kind, flags, (uint16_t)(t->thread - 1), stack, emit_clock(t), addr, size);
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
    rs_emit_claim();
    rs_ring_put_var(&rs_emit_hot.ring, &rec, payload, len);
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

void rs_emit_note(uint16_t code, const char *text)
{
    uint8_t data[512];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    rs_buf_u16(&b, code);
    rs_buf_str(&b, text, (uint32_t)strlen(text));
    rs_emit_var(RS_EV_NOTE, 0, 0, 0, data, b.len);
}
