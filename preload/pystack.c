/*
 * Python call stacks for allocation records (implements preload/stack.h).
 *
 * Model. The hook walks the current thread's frames through pyver (no
 * objects created, no sys.setprofile/settrace), giving (code object, byte
 * offset) pairs, innermost first. Two tables, both lock-free and fixed-size
 * in .bss, turn that into a stack id:
 *   - code table: code object address -> code id. A code id is defined once
 *     per trace by RS_EV_PY_CODE. When an OBJ-domain block that is a code
 *     object is freed, its entry is tombstoned, so an object later created at
 *     the same address gets a new id (exec-in-a-loop). Entries also remember
 *     the name object, a second check against a free we did not see.
 *   - stack table: 64-bit hash of (code ids, offsets, flags, native id) ->
 *     stack id, defined once per trace by RS_EV_PY_STACK with lines resolved
 *     from the line table right there, so reports are exact. When a new
 *     stack finds no free slot on its probe path, the table starts a new
 *     generation: entries not found since then may be taken over by new
 *     stacks, and a stack whose entry was taken is defined again under a
 *     new id when next seen (ids stay valid for good; reports group by
 *     frames). Stacks of dead code objects thus make room.
 * Those give the stack's id. A per-thread cache remembers it for the walk's
 * raw frames (rs_py_raw_frames: each frame's code reference, instruction
 * field and owner bytes as the interpreter stores them), from which the
 * (code, offset, flags) frames are a function as long as no code object
 * dies: its ids are invalidated whenever a code object is seen dying or the
 * trace epoch changes. A hit reads only raw frames; a miss walks the frames
 * proper and goes to the tables (REFSCOPE_STACK_CHECK=1 does that for every
 * hit too, and counts differences).
 *
 * Fast path. Consecutive allocations of a thread mostly share all frames but
 * the innermost one, so the thread also keeps the outer raw frames of its
 * previous walk, outermost first, with the hash of every prefix. The walk
 * compares its frames with them as it reads them (rs_py_raw_match): when all
 * are equal, it has read every frame once, written none, and the outer key
 * is the memo's. Otherwise the raw frames are read into an array and
 * compared from the outermost in, and only those that differ are hashed.
 * Either comparison covers every field the hash covers, so the key is the
 * same function of the walk as if it had been hashed whole.
 * Payload layouts: include/refscope/events.h, "issue 3".
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "emit.h"
#include "pyver.h"
#include "shim.h"
#include "stack.h"
#include "refscope/events.h"
#include "refscope/transport.h"

#define CODE_SLOTS  (1u << 17)
#define STACK_SLOTS (1u << 18)
#define MAX_PROBES  128
#define TOMBSTONE   1u      /* a dead code object's slot, free for another one */
#define CLAIMING    2u      /* a tombstone (code) or an old entry (stack) being taken over;
                               stack keys are odd, so never TOMBSTONE or CLAIMING */
#define TCACHE_SLOTS 256

struct code_entry {
    uint64_t addr;       /* 0 free, TOMBSTONE, CLAIMING, else the code object */
    const void *name;    /* qualname object when interned                    */
    uint32_t id;         /* 0 while the inserting thread defines it          */
    uint32_t pad;
};

struct stack_entry {
    uint64_t key;        /* 0 = free, CLAIMING, else the stack's key         */
    uint32_t id;         /* 0 while the inserting thread defines it          */
    uint32_t gen;        /* stack_gen when defined or last found; an older one
                            may be taken over by a new stack                 */
};

/* One stack this thread saw: its innermost frame exactly, the rest by key. */
struct tcache_entry {
    uint64_t outer;      /* walk_outer_key() of the other frames             */
    const void *code;    /* innermost raw frame: code reference ...          */
    uint64_t word;       /* ... and rs_pyframe_word() (instruction, owner)    */
    uint32_t id;
    uint32_t stamp;      /* low bits of code_gen when filled                 */
};

static struct code_entry codes[CODE_SLOTS];
static struct stack_entry stacks[STACK_SLOTS];
static uint32_t next_code_id, next_stack_id;
static uint32_t stack_gen = 1;                /* see struct stack_entry */
static uint32_t stack_mask = STACK_SLOTS - 1; /* tests use fewer slots (RS_ENV_TEST_STACK_SLOTS) */
static uint64_t code_gen = 1;   /* bumped when a known code dies or on reset */
static uint32_t seen_epoch;
static int stacks_on, native_on;
static uint32_t code_block_delta; /* GC header before a code object, if any */

static __thread struct tcache_entry tcache[TCACHE_SLOTS] __attribute__((tls_model("initial-exec")));

/* Raw frames read at most. A stack keeps RS_PYSTACK_MAX_FRAMES frames; the
 * raw frames the walk skips are entry frames (3.12: owned by the C stack;
 * 3.13+: not running code), never two in a row, each after a frame it keeps,
 * and an incomplete innermost frame. So the first 2 * 128 + 4 raw frames
 * decide everything a stack keeps: its 128 frames, their flags (a marker
 * follows its frame) and whether there were more. */
#define RAW_MAX_FRAMES (2 * RS_PYSTACK_MAX_FRAMES + 4)

/* The outer raw frames of the thread's previous walk (see the top of the file). */
struct walk_memo {
    uint32_t n;                                  /* frames in fr[]              */
    uint32_t tail;                               /* n, truncated, native of `key` */
    uint32_t native;
    uint32_t pad;
    uint64_t key;                                /* walk_outer_key() of the walk */
    struct rs_pyframe fr[RAW_MAX_FRAMES];        /* outermost first             */
    uint64_t prefix[RAW_MAX_FRAMES + 1];         /* prefix[d]: hash of fr[0..d) */
};
static __thread struct walk_memo memo __attribute__((tls_model("initial-exec")));

/* The thread's last OBJ-domain block and its stack (stack.h: object creations). */
struct obj_block_memo {
    uint64_t start, size; /* the block; size 0 = used, or none                */
    uint32_t stack;
    uint32_t epoch;       /* rs_emit_epoch() when noted                       */
};
static __thread struct obj_block_memo obj_memo __attribute__((tls_model("initial-exec")));
static int obj_memo_on;

/* REFSCOPE_STACK_CHECK=1 (tests): every reuse of a block's stack and every
 * fast-path walk is checked against a whole walk; the counts are reported at
 * exit. */
static int check_mode;
static uint64_t check_reused, check_differ, check_walks, check_walks_differ;

/* Weak fallback; preload/unwind.c provides the real one. */
__attribute__((weak)) uint32_t rs_native_stack_current(int skip)
{
    (void)skip;
    return 0;
}

static inline uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 32);
}

static inline uint64_t hash_addr(uint64_t a)
{
    a ^= a >> 33;
    a *= 0xc4ceb9fe1a85ec53ull;
    return a ^ (a >> 29);
}

/* Wait until another thread publishes an id (it is emitting the definition). */
static uint32_t wait_id(const uint32_t *idp)
{
    return rs_wait_while_u32(idp, 0, RS_WAIT_DEFINE_NS);
}

/* The value of a table key once another thread's claim on it (CLAIMING)
 * settles. Skipping a claimed slot instead lets two threads that define the
 * same code or stack at once give it two ids (the free-threaded build did).
 * A claim that outlasts RS_WAIT_CLAIM_NS is skipped after all: the duplicate
 * costs a definition, not a wrong stack. */
static uint64_t settled_key(const uint64_t *keyp)
{
    return rs_wait_while_u64(keyp, CLAIMING, RS_WAIT_CLAIM_NS);
}

static void reset_tables(uint32_t epoch)
{
    uint32_t old = __atomic_load_n(&seen_epoch, __ATOMIC_ACQUIRE);
    if (old == epoch || !__atomic_compare_exchange_n(&seen_epoch, &old, epoch, 0,
                                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
    /* A new trace (fork child: one thread). Ids stay unique because the
     * counters keep counting; the tables forget what was defined. */
    memset(codes, 0, sizeof codes);
    memset(stacks, 0, sizeof stacks);
    __atomic_add_fetch(&code_gen, 1, __ATOMIC_RELEASE);
}

static void emit_code(uint32_t id, const void *code)
{
    uint8_t data[16 + 2 + 1024 + 2 + 512];
    char text[1024];
    struct rs_buf b = { data, 0, sizeof data, 0 };
    rs_buf_u32(&b, id);
    rs_buf_u32(&b, rs_py_code_firstline(code));
    rs_buf_u64(&b, (uint64_t)(uintptr_t)code);
    int n = rs_py_str_utf8(rs_py_code_filename(code), text, 1024);
    rs_buf_str(&b, text, n > 0 ? (uint32_t)n : 0);
    n = rs_py_str_utf8(rs_py_code_qualname(code), text, 512);
    rs_buf_str(&b, text, n > 0 ? (uint32_t)n : 0);
    rs_emit_var(RS_EV_PY_CODE, 0, 0, 0, b.data, b.len);
}

/* Gives slot e, claimed for code, its id and definition. */
static uint32_t code_define(struct code_entry *e, const void *code, const void *name)
{
    e->name = name;
    uint32_t id = __atomic_add_fetch(&next_code_id, 1, __ATOMIC_RELAXED);
    emit_code(id, code);
    __atomic_store_n(&e->id, id, __ATOMIC_RELEASE);
    return id;
}

/* The id of code object `code`, interned on first sight. A new code object
 * takes the first tombstone on its probe path (code objects made by exec,
 * namedtuple or dataclasses die all the time in long-running programs). */
static uint32_t code_id(const void *code)
{
    uint64_t addr = (uint64_t)(uintptr_t)code;
    const void *name = rs_py_code_qualname(code);
    for (int attempt = 0; attempt < 4; attempt++) {
        struct code_entry *tomb = NULL;
        uint32_t slot = (uint32_t)hash_addr(addr) & (CODE_SLOTS - 1);
        for (int probe = 0; probe < MAX_PROBES; probe++, slot = (slot + 1) & (CODE_SLOTS - 1)) {
            struct code_entry *e = &codes[slot];
            uint64_t cur = settled_key(&e->addr);
            if (cur == addr) {
                uint32_t id = wait_id(&e->id);
                if (id && e->name == name)
                    return id;
                /* a code object died unseen and another took its address */
                if (__atomic_compare_exchange_n(&e->addr, &cur, TOMBSTONE, 0, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE))
                    __atomic_add_fetch(&code_gen, 1, __ATOMIC_RELEASE);
                cur = TOMBSTONE;
            }
            if (cur == TOMBSTONE && !tomb)
                tomb = e;
            if (cur != 0)
                continue;
            if (tomb)
                break;
            if (!__atomic_compare_exchange_n(&e->addr, &cur, addr, 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE)) {
                probe--; /* lost the race for this slot: look at it again */
                slot = (slot - 1) & (CODE_SLOTS - 1);
                continue;
            }
            return code_define(e, code, name);
        }
        if (!tomb)
            return 0;
        /* Not in the table: take the tombstone over. Its id is cleared before
         * the address is published, so that a reader of the address waits
         * for the new id instead of taking the dead code's. */
        uint64_t expected = TOMBSTONE;
        if (__atomic_compare_exchange_n(&tomb->addr, &expected, CLAIMING, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&tomb->id, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&tomb->addr, addr, __ATOMIC_RELEASE);
            return code_define(tomb, code, name);
        }
    }
    return 0;
}

uint32_t rs_stack_peek_below, rs_stack_peek_at;
const void *rs_stack_code_type;

void rs_stack_obj_block_freed(uint64_t addr, int is_code)
{
    /* The block still holds the dying object: a code object when is_code;
     * when it could not be peeked at, the table tells. Every code death seen
     * invalidates the thread caches, interned or not: a raw frame names its
     * code by address (an incomplete innermost frame's code is never
     * interned). */
    uint64_t key = addr + code_block_delta;
    uint32_t slot = (uint32_t)hash_addr(key) & (CODE_SLOTS - 1);
    int died = is_code;
    for (int probe = 0; probe < MAX_PROBES; probe++, slot = (slot + 1) & (CODE_SLOTS - 1)) {
        uint64_t cur = __atomic_load_n(&codes[slot].addr, __ATOMIC_ACQUIRE);
        if (cur == 0)
            break;
        if (cur == key && __atomic_compare_exchange_n(&codes[slot].addr, &cur, TOMBSTONE, 0,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            died = 1;
    }
    if (died) {
        __atomic_add_fetch(&code_gen, 1, __ATOMIC_RELEASE);
        rs_py_code_freed();
    }
}

/* Lines of (code id, offset) pairs already resolved. A new stack mostly
 * shares its outer frames with earlier ones, and PyCode_Addr2Line scans the
 * code's line table from its start: at start-up (imports: deep stacks over
 * long functions) this was most of what defining stacks cost. Code ids are
 * never reused, so entries never go stale. Lock-free: a writer takes an entry
 * by making its sequence number odd; a reader that sees it odd or changed
 * misses. */
#define LINE_SLOTS 4096u
struct line_entry {
    uint32_t seq;        /* 0 empty, odd while written                       */
    uint32_t line;
    uint64_t key;        /* code id << 32 | offset                           */
};
static struct line_entry lines[LINE_SLOTS];

static uint32_t code_line(uint32_t id, const void *code, int32_t offset)
{
    uint64_t key = (uint64_t)id << 32 | (uint32_t)offset;
    struct line_entry *e = &lines[hash_addr(key) & (LINE_SLOTS - 1)];
    uint32_t seq = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
    if (seq && !(seq & 1)) {
        uint64_t k = __atomic_load_n(&e->key, __ATOMIC_RELAXED);
        uint32_t line = __atomic_load_n(&e->line, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (k == key && __atomic_load_n(&e->seq, __ATOMIC_RELAXED) == seq)
            return line;
    }
    uint32_t line = rs_py_code_line(code, offset);
    if (!(seq & 1) && __atomic_compare_exchange_n(&e->seq, &seq, seq + 1, 0, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_RELAXED)) {
        __atomic_thread_fence(__ATOMIC_RELEASE);
        __atomic_store_n(&e->key, key, __ATOMIC_RELAXED);
        __atomic_store_n(&e->line, line, __ATOMIC_RELAXED);
        __atomic_store_n(&e->seq, seq + 2, __ATOMIC_RELEASE);
    }
    return line;
}

static void emit_stack(uint32_t id, uint32_t native, const struct rs_pyframe *fr,
                       const uint32_t *ids, int n, int truncated)
{
    uint8_t data[12 + 12 * RS_PYSTACK_MAX_FRAMES];
    struct rs_buf b = { data, 0, sizeof data, 0 };
    rs_buf_u32(&b, id);
    rs_buf_u32(&b, native);
    rs_buf_u16(&b, (uint16_t)n);
    rs_buf_u16(&b, truncated ? RS_PYSTACK_TRUNCATED : 0);
    for (int i = 0; i < n; i++) {
        rs_buf_u32(&b, ids[i]);
        rs_buf_u32(&b, ids[i] ? code_line(ids[i], fr[i].code, fr[i].offset) : 0);
        rs_buf_u32(&b, fr[i].flags);
    }
    rs_emit_var(RS_EV_PY_STACK, 0, 0, 0, b.data, b.len);
}

/* Define a new stack in entry e, whose key the caller holds as CLAIMING
 * (or just took from 0): id cleared before the key is published, so a
 * reader that finds the key waits for this stack's id, never an older one. */
static uint32_t stack_insert(struct stack_entry *e, uint64_t key, uint32_t gen, uint32_t native,
                             const struct rs_pyframe *fr, const uint32_t *ids, int n, int truncated)
{
    __atomic_store_n(&e->id, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->gen, gen, __ATOMIC_RELAXED);
    __atomic_store_n(&e->key, key, __ATOMIC_RELEASE);
    uint32_t id = __atomic_add_fetch(&next_stack_id, 1, __ATOMIC_RELAXED);
    emit_stack(id, native, fr, ids, n, truncated);
    __atomic_store_n(&e->id, id, __ATOMIC_RELEASE);
    return id;
}

/* Slow path: intern the code objects and find or define the stack. The
 * probe path ends at a free slot; a new stack takes the first entry on it
 * older than the current generation, else the free slot. A path with
 * neither starts a new generation (once), and the search runs again. */
static uint32_t stack_define(const struct rs_pyframe *fr, int n, int truncated, uint32_t native)
{
    uint32_t ids[RS_PYSTACK_MAX_FRAMES];
    uint64_t key = mix((uint64_t)n, ((uint64_t)native << 1) | (uint64_t)truncated);
    for (int i = 0; i < n; i++) {
        ids[i] = code_id(fr[i].code);
        key = mix(key, ((uint64_t)ids[i] << 32) | (uint32_t)fr[i].offset);
        key = mix(key, fr[i].flags);
    }
    key |= 1; /* never 0 (free) nor CLAIMING */
    uint32_t mask = stack_mask;
    for (int round = 0; round < 8; round++) {
        uint32_t gen = __atomic_load_n(&stack_gen, __ATOMIC_ACQUIRE);
        uint32_t slot = (uint32_t)key & mask;
        struct stack_entry *old = NULL;
        int probe = 0, again = 0;
        while (probe < MAX_PROBES) {
            struct stack_entry *e = &stacks[slot];
            uint64_t cur = settled_key(&e->key);
            if (cur == key) {
                uint32_t id = wait_id(&e->id);
                if (__atomic_load_n(&e->key, __ATOMIC_ACQUIRE) != key) {
                    again = 1; /* taken over meanwhile: the id may be the new stack's */
                    break;
                }
                if (__atomic_load_n(&e->gen, __ATOMIC_RELAXED) != gen)
                    __atomic_store_n(&e->gen, gen, __ATOMIC_RELAXED);
                return id;
            }
            if (cur == 0) {
                if (old)
                    break; /* the key is not further on: take the older entry */
                if (__atomic_compare_exchange_n(&e->key, &cur, CLAIMING, 0, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE))
                    return stack_insert(e, key, gen, native, fr, ids, n, truncated);
                continue; /* someone took this slot: look at it again */
            }
            if (!old && cur != CLAIMING && __atomic_load_n(&e->gen, __ATOMIC_RELAXED) != gen)
                old = e;
            probe++;
            slot = (slot + 1) & mask;
        }
        if (again)
            continue;
        if (old) {
            uint64_t cur = __atomic_load_n(&old->key, __ATOMIC_ACQUIRE);
            if (cur != 0 && cur != CLAIMING && __atomic_load_n(&old->gen, __ATOMIC_RELAXED) != gen &&
                __atomic_compare_exchange_n(&old->key, &cur, CLAIMING, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return stack_insert(old, key, gen, native, fr, ids, n, truncated);
            continue; /* another thread took it first: search again */
        }
        /* every entry on the path was found or defined in this generation */
        __atomic_compare_exchange_n(&stack_gen, &gen, gen + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    return 0; /* no room */
}

static inline int same_frame(const struct rs_pyframe *a, const struct rs_pyframe *b)
{
    return a->code == b->code && rs_pyframe_word(a) == rs_pyframe_word(b);
}

static inline uint64_t hash_frame(uint64_t h, const struct rs_pyframe *f)
{
    return mix(mix(h, (uint64_t)(uintptr_t)f->code), rs_pyframe_word(f));
}

/* Key of everything in a walk but its innermost frame: the outer frames
 * fr[1..n), the frame count, the truncation flag and the native id. The outer
 * frames are compared with the memo, outermost first, and only those that
 * differ are hashed (the memo keeps the hash of every prefix); when none
 * differs the key itself is the memo's. */
static inline uint64_t walk_outer_key(struct walk_memo *m, const struct rs_pyframe *fr, uint32_t n,
                                      uint32_t native, int truncated)
{
    uint32_t outer_n = n ? n - 1 : 0, d = 0, same = outer_n < m->n ? outer_n : m->n;
    uint32_t tail = n | (uint32_t)truncated << 16;
    const struct rs_pyframe *outer = fr + outer_n; /* outer[-d]: depth d from the outermost */
    while (d < same && same_frame(outer - d, &m->fr[d]))
        d++;
    if (__builtin_expect(d == outer_n && d == m->n && tail == m->tail && native == m->native, 1))
        return m->key;
    uint64_t h = m->prefix[d];
    for (; d < outer_n; d++) {
        const struct rs_pyframe *f = outer - d;
        uint64_t w = rs_pyframe_word(f);
        rs_pyframe_set(&m->fr[d], f->code, (int32_t)(uint32_t)w, (uint32_t)(w >> 32));
        h = hash_frame(h, f);
        m->prefix[d + 1] = h;
    }
    m->n = outer_n;
    m->tail = tail;
    m->native = native;
    m->key = mix(h, (uint64_t)tail | (uint64_t)native << 32);
    return m->key;
}

/* The thread cache's slot for a walk: outer key, innermost raw frame. Indexed
 * by a cheap fold (no multiply chain on the way to the load); the entry is
 * checked field by field. */
static inline struct tcache_entry *tcache_slot(uint64_t outer, const void *code, uint64_t word)
{
    uint64_t fold = outer ^ (uint64_t)(uintptr_t)code ^ word * 0x9e3779b97f4a7c15ull;
    return &tcache[(fold ^ fold >> 29) & (TCACHE_SLOTS - 1)];
}

static inline int tcache_hit(const struct tcache_entry *c, uint64_t outer, const void *code,
                             uint64_t word, uint32_t stamp)
{
    return c->outer == outer && c->code == code && c->word == word && c->stamp == stamp && c->id;
}

/* The stack id of the current walk from the frames themselves (rs_py_frames)
 * and the tables: what the thread cache remembers. */
static __attribute__((noinline)) uint32_t stack_from_frames(int gil_held, uint32_t native)
{
    struct rs_pyframe fr[RS_PYSTACK_MAX_FRAMES];
    int truncated = 0;
    int n = stacks_on ? rs_py_frames(fr, RS_PYSTACK_MAX_FRAMES, &truncated, gil_held) : 0;
    if (n == 0 && native == 0)
        return 0;
    return stack_define(fr, n, truncated, native);
}

/* Look the walk up in the thread cache, filling it on a miss. */
static inline uint32_t stack_cached(uint64_t outer, const struct rs_pyframe *inner, int gil_held,
                                    uint32_t native)
{
    const void *code = inner ? inner->code : NULL;
    uint64_t word = inner ? rs_pyframe_word(inner) : 0;
    uint32_t stamp = (uint32_t)__atomic_load_n(&code_gen, __ATOMIC_ACQUIRE);
    struct tcache_entry *c = tcache_slot(outer, code, word);
    if (__builtin_expect(tcache_hit(c, outer, code, word, stamp), 1))
        return c->id;
    uint32_t id = stack_from_frames(gil_held, native);
    c->outer = outer;
    c->code = code;
    c->word = word;
    c->id = id;
    c->stamp = stamp;
    return id;
}

/* A walk whose outer frames are not the memo's: the raw frames into an
 * array, the outer key from the memo's prefixes. */
static __attribute__((noinline)) uint32_t stack_walk(int gil_held, uint32_t native)
{
    struct rs_pyframe raw[RAW_MAX_FRAMES];
    int truncated = 0;
    int n = stacks_on ? rs_py_raw_frames(raw, RAW_MAX_FRAMES, &truncated, gil_held) : 0;
    if (n == 0 && native == 0)
        return 0;
    uint64_t outer = walk_outer_key(&memo, raw, (uint32_t)n, native, truncated);
    return stack_cached(outer, n ? &raw[0] : NULL, gil_held, native);
}

int rs_stack_capturing;

uint32_t rs_stack_capture(int gil_held)
{
    uint32_t epoch = rs_emit_epoch();
    if (__builtin_expect(epoch != __atomic_load_n(&seen_epoch, __ATOMIC_RELAXED), 0))
        reset_tables(epoch);

    uint32_t native = native_on ? rs_native_stack_current(1) : 0, id;
    struct walk_memo *m = &memo;
    struct rs_pyframe inner;
    /* Fast path: the outer raw frames are the memo's (m->tail == n also says
     * the memo's walk was not truncated), so the outer key is too. */
    int n = stacks_on ? rs_py_raw_match(&inner, m->fr, (int)m->n, gil_held) : 0;
    if (__builtin_expect(n > 0 && (uint32_t)n == m->tail && native == m->native, 1))
        id = stack_cached(m->key, &inner, gil_held, native);
    else if (n == 0 && native == 0)
        return 0;
    else
        id = stack_walk(gil_held, native);
    if (__builtin_expect(check_mode, 0)) {
        __atomic_add_fetch(&check_walks, 1, __ATOMIC_RELAXED);
        if (stack_from_frames(gil_held, native) != id)
            __atomic_add_fetch(&check_walks_differ, 1, __ATOMIC_RELAXED);
    }
    return id;
}

void rs_stack_obj_memo_on(void)
{
    /* Python frames only: native frames of the allocation and of the
     * creation differ (PyObject_Malloc's callers vs _Py_NewReference's) */
    __atomic_store_n(&obj_memo_on, !native_on, __ATOMIC_RELAXED);
}

void rs_stack_note_obj_block(uint64_t addr, uint64_t size, uint32_t stack)
{
    if (!stack || !__atomic_load_n(&obj_memo_on, __ATOMIC_RELAXED))
        return;
    obj_memo.start = addr;
    obj_memo.size = size;
    obj_memo.stack = stack;
    obj_memo.epoch = rs_emit_epoch();
}

uint32_t rs_stack_for_object(uint64_t obj)
{
    struct obj_block_memo *m = &obj_memo;
    if (obj - m->start < m->size && m->epoch == rs_emit_epoch()) {
        m->size = 0; /* one object per block: a later one in it was made elsewhere */
        if (__builtin_expect(check_mode, 0)) {
            __atomic_add_fetch(&check_reused, 1, __ATOMIC_RELAXED);
            if (rs_stack_current(1) != m->stack)
                __atomic_add_fetch(&check_differ, 1, __ATOMIC_RELAXED);
        }
        return m->stack;
    }
    return rs_stack_current(1);
}

__attribute__((destructor)) static void check_report(void)
{
    char line[240];
    if (!check_mode)
        return;
    snprintf(line, sizeof(line),
             "stack check: %llu object stacks taken from their block, %llu differ from a walk; "
             "%llu stacks found from raw frames, %llu differ from a walk",
             (unsigned long long)check_reused, (unsigned long long)check_differ,
             (unsigned long long)check_walks, (unsigned long long)check_walks_differ);
    rs_warn(line);
}

static void pystack_start(void);

__attribute__((constructor(RS_CTOR_FEATURE))) static void pystack_ctor(void)
{
    native_on = rs_env_flag(RS_ENV_NATIVE, 0);
    rs_stack_capturing = native_on;
    check_mode = rs_env_flag(RS_ENV_STACK_CHECK, 0);
    const char *slots = rs_env(RS_ENV_TEST_STACK_SLOTS);
    unsigned long n = slots ? strtoul(slots, NULL, 10) : 0;
    if (n >= 256 && n <= STACK_SLOTS && !(n & (n - 1)))
        stack_mask = (uint32_t)n - 1;
    if (rs_env_flag(RS_ENV_PYSTACKS, 1))
        rs_pyver_when_found(pystack_start);
}

static void pystack_start(void)
{
    if (rs_pyver_init() < 0)
        return;
    /* default builds: a GC type's block starts with the 16-byte GC header */
    if (!rs_py.free_threaded)
        code_block_delta = (rs_py_type_flags(rs_py.code_type) & RS_PY_TPFLAGS_HAVE_GC) ? 16 : 0;
    stacks_on = 1;
    rs_stack_capturing = 1;
    rs_stack_code_type = rs_py.code_type;
    rs_stack_peek_at = code_block_delta + rs_py.ob_type;
    rs_stack_peek_below = rs_py_peek_start(rs_stack_peek_at);
}
