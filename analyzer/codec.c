/*
 * Chunk body codec: the columnar encoding specified in the "chunk body"
 * section of include/refscope/trace.h (zstd goes on top: chunk_pack.c).
 *
 * Model. The recorder has to keep up with a traced program that makes a
 * record every 30-50 ns, so the codec removes what is predictable itself,
 * cheaply, and leaves zstd a small residue:
 *   - a record's head (kind, flags, thread, which fields it omits) is one
 *     byte, an index into the chunk's table of heads seen so far;
 *   - an ALLOC's stack and size are predicted from the two allocations
 *     before it (call sites repeat in patterns) and omitted when right;
 *     FREE and the other kinds omit them when they are 0;
 *   - a FREE's (or OBJ_DESTROY's) address is a reference, "the address of
 *     the chunk's j-th allocation", j coded as a difference from the
 *     previous reference: programs free in (reverse) allocation order, so
 *     these differences repeat however fragmented the heap is;
 *   - an ALLOC's address is, likewise, "the address of the chunk's k-th
 *     free", k coded as a difference from the last such k of its size
 *     class (allocators hand back what was freed, in order, per class), or
 *     else the difference from the previous ALLOC of its size class (they
 *     carve fresh pools of one class in order), whichever is smaller;
 *   - time deltas are 4-bit codes, the rare long ones kept apart.
 * The encoder finds j and k in a direct-mapped cache of addresses; a miss
 * only costs bytes (the address is then coded by value). The decoder needs
 * no cache, only the lists of the chunk's allocated and freed addresses.
 * Integers are prefix varints, written branch-free with one 8-byte store.
 * Everything resets at every chunk.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "codec.h"

#define BODY_HEADER_BYTES (8u + 4u * RS_CODEC_STREAMS)

enum { S_OP, S_HEAD, S_TIME, S_TIME_LONG, S_ALLOC, S_REUSE, S_REF, S_ADDR, S_SIZE, S_STACK,
       S_PAYLOAD };
_Static_assert(S_PAYLOAD + 1 == RS_CODEC_STREAMS, "one column per stream");

/* head form bits (trace.h) */
#define FORM_SIZE  0x1u     /* size omitted: the implied one */
#define FORM_STACK 0x2u     /* stack omitted: the implied one */
#define FORM_REUSE 0x4u     /* ALLOC: the address is a freed one (S_REUSE) */

#define ROOM_BATCH 4096u     /* records reserved at a time */
#define MAX_FIELD 12u        /* bytes a record can add to one column (a head literal) */
#define STORE_SLACK 8u       /* a varint is written with an 8-byte store */

/* The encoder's cache of addresses: entry (addr >> 4) mod size stands for
 * the last address that mapped there and what happened to it last: its
 * allocation's serial (its place in A) or, once freed, its free's serial
 * (its place in F). An address's next record needs only that one: a FREE
 * or OBJ_DESTROY follows an allocation, an ALLOC reusing it follows a free.
 * Serials are running counts, so entries from earlier chunks are
 * recognised as stale without clearing the table; 0 is never valid.
 *
 * An entry is 8 bytes: the address bits its index leaves out, 24-55, are
 * the tag. Only "plain" addresses, 16-byte aligned and below 2^56 (every
 * block the allocators we wrap hand out), are cached; any other is stored
 * as an empty entry and so always misses. The entries mirror the traced
 * heap (an entry per 16 bytes of it) and share the last-level cache with
 * the traced program: half the size of an entry with the whole address
 * is that much less of the program's cache taken. 8 MiB. */
#define REF_CACHE_BITS 20u
#define REF_CACHE_MASK ((1u << REF_CACHE_BITS) - 1)
#define REF_FREED 0x80000000u  /* serial is a free serial (its low 31 bits)      */
#define REF_SERIAL_MAX (REF_FREED - 1)
struct ref_entry {
    uint32_t tag;            /* addr >> 24 */
    uint32_t serial;         /* allocation serial, or REF_FREED | free serial; 0 = empty */
};
_Static_assert(sizeof(struct ref_entry) == 8, "compact cache entry");

static inline uint32_t ref_tag(uint64_t addr) { return (uint32_t)(addr >> 24); }

/* The serial an entry for addr may hold: 0 (empty) when addr is not cacheable. */
static inline uint32_t ref_serial(uint64_t addr, uint32_t serial)
{
    return ((addr & 0xf) | (addr >> 56)) == 0 ? serial : 0;
}

/* Whether entry c stands for addr (whatever its serial says). */
static inline int ref_is(const struct ref_entry *c, uint64_t addr)
{
    return c->tag == ref_tag(addr) && ref_serial(addr, 1) != 0;
}

static inline void ref_set(struct ref_entry *c, uint64_t addr, uint32_t serial)
{
    c->tag = ref_tag(addr);
    c->serial = ref_serial(addr, serial);
}

/* The encoder's index of the head table T, by kind, flags and thread; the
 * index of each form's head. The lookup does not wait for the form, which
 * comes late (predictions, the address cache). Small, like every table the
 * encoder touches per record: they share the L1 cache. */
#define HEAD_SLOTS_BITS 8u
struct head_slot {
    uint32_t key;            /* kind | flags << 8 | thread << 16; 0 = empty */
    uint8_t index[8];        /* by form: index in T, 0 = none yet */
};

/* ALLOC stack/size predictions (trace.h "Heads"); sizes mod 2^32 */
struct site {
    uint32_t stack;
    uint32_t size;
};

struct column {
    uint8_t *data, *end;     /* end: where the next field goes */
    size_t cap;
};

struct rs_enc {
    struct column col[RS_CODEC_STREAMS];
    uint8_t *body;
    size_t body_cap;
    uint32_t records;
    unsigned time_shift;
    unsigned room;           /* records every fixed-size column has space for */
    uint64_t prev_q;
    uint64_t time_nibbles;   /* time codes not yet stored, low nibble first */
    unsigned time_bits;      /* bits used in time_nibbles */
    unsigned heads;          /* entries in T */
    /* ALLOC stack/size prediction (trace.h "Heads") */
    uint32_t site_s1, site_s2;
    uint64_t site_z1;
    /* address model (trace.h "Address model") */
    uint64_t alloc_last;     /* A[n - 1] */
    uint32_t serial;         /* serial of the next allocation list entry */
    uint32_t chunk_serial;   /* serial of this chunk's A[0] */
    uint32_t ref_last;       /* r */
    uint32_t free_serial;    /* serial of the next free list entry */
    uint32_t chunk_free_serial; /* serial of this chunk's F[0] */
    unsigned miss_head;
    uint64_t miss[RS_CODEC_MISS_HISTORY];
    uint64_t class_last[RS_CODEC_SIZE_CLASSES];
    uint32_t reuse_last[RS_CODEC_SIZE_CLASSES];
    struct site site[RS_CODEC_SITES];
    struct head_slot head_slot[1u << HEAD_SLOTS_BITS];
    struct ref_entry *cache;
};

/* ---- primitives ------------------------------------------------------------------ */

static inline uint64_t zigzag(uint64_t d) { return (d << 1) ^ (uint64_t)((int64_t)d >> 63); }
static inline uint64_t unzigzag(uint64_t z) { return (z >> 1) ^ (0 - (z & 1)); }

/* Address differences keep their low 4 bits apart, so an aligned difference
 * costs no more than its 16-byte units while any difference still fits 64
 * bits: code = zigzag(d >> 4 (arithmetic)) << 4 | (d & 15). */
static inline uint64_t addr_code(uint64_t d)
{
    return zigzag((uint64_t)((int64_t)d >> 4)) << 4 | (d & 15);
}

static inline uint64_t addr_uncode(uint64_t code)
{
    return unzigzag(code >> 4) << 4 | (code & 15);
}

static inline void store64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

/* Prefix varint (trace.h): n - 1 zero bits and a one bit, then the value.
 * Callers guarantee MAX_FIELD + STORE_SLACK writable bytes at p. */
static inline uint8_t *put_pv(uint8_t *p, uint64_t v)
{
    if (__builtin_expect(v < 128, 1)) { /* most codes: the models leave small residues */
        *p = (uint8_t)(v << 1 | 1);
        return p + 1;
    }
    unsigned bits = 64u - (unsigned)__builtin_clzll(v | 1);
    if (__builtin_expect(bits > 56, 0)) {
        p[0] = 0;
        store64(p + 1, v);
        return p + 9;
    }
    unsigned n = ((bits + 6) * 37) >> 8; /* (bits + 6) / 7 for bits <= 56 */
    store64(p, ((v << 1) | 1) << (n - 1));
    return p + n;
}

/* Read one prefix varint from [*p, end). Returns 0 or -EBADMSG. */
static inline int get_pv(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    if (__builtin_expect(end - p >= 9, 1)) {
        uint64_t x = load64(p);
        if (__builtin_expect((x & 0xff) != 0, 1)) {
            unsigned n = (unsigned)__builtin_ctzll(x) + 1;
            *out = (x >> n) & ((1ull << (7 * n)) - 1);
            *pp = p + n;
        } else {
            *out = load64(p + 1);
            *pp = p + 9;
        }
        return 0;
    }
    /* near the end of the stream: no 9-byte form fits */
    if (p == end || p[0] == 0)
        return -EBADMSG;
    unsigned n = (unsigned)__builtin_ctz(p[0]) + 1;
    if ((size_t)(end - p) < n)
        return -EBADMSG;
    uint64_t x = 0;
    for (unsigned i = 0; i < n; i++)
        x |= (uint64_t)p[i] << (8 * i);
    *out = (x >> n) & ((1ull << (7 * n)) - 1);
    *pp = p + n;
    return 0;
}

/* Size classes (trace.h): 16-byte steps up to 1024, then powers of two. */
static inline unsigned size_class(uint64_t size)
{
    if (__builtin_expect(size <= 1024, 1))
        return (unsigned)((size + 15) >> 4);
    return 64u + 64u - (unsigned)__builtin_clzll(size);
}

/* The site table entry that predicts the next ALLOC (trace.h "Heads"). */
static inline unsigned site_context(uint32_t s1, uint32_t s2, uint64_t z1)
{
    uint32_t h = s1 * 0x9E3779B1u + s2 * 0x85EBCA77u + (uint32_t)z1 * 0xC2B2AE3Du;
    return h >> (32 - RS_CODEC_SITES_BITS);
}

static inline int is_ref_kind(uint8_t kind)
{
    return kind == RS_EV_FREE || kind == RS_EV_OBJ_DESTROY;
}

/* Nearest entry of the miss history (lowest index on ties): keys are
 * distance << 4 | index, minimised in four independent chains. */
static inline uint64_t miss_key(const uint64_t *hist, unsigned head, uint64_t addr, unsigned i)
{
    uint64_t d = addr - hist[(head - i) & (RS_CODEC_MISS_HISTORY - 1)];
    uint64_t dist = (int64_t)d < 0 ? 0 - d : d;
    dist = dist < (1ull << 59) ? dist : (1ull << 59) - 1;
    return dist << 4 | i;
}

static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static unsigned miss_nearest(const uint64_t *hist, unsigned head, uint64_t addr)
{
    uint64_t k0 = miss_key(hist, head, addr, 0), k1 = miss_key(hist, head, addr, 1);
    uint64_t k2 = miss_key(hist, head, addr, 2), k3 = miss_key(hist, head, addr, 3);
    for (unsigned i = 4; i < RS_CODEC_MISS_HISTORY; i += 4) {
        k0 = min_u64(k0, miss_key(hist, head, addr, i));
        k1 = min_u64(k1, miss_key(hist, head, addr, i + 1));
        k2 = min_u64(k2, miss_key(hist, head, addr, i + 2));
        k3 = min_u64(k3, miss_key(hist, head, addr, i + 3));
    }
    return (unsigned)(min_u64(min_u64(k0, k1), min_u64(k2, k3)) & 15);
}

_Static_assert(RS_CODEC_MISS_HISTORY == 16, "miss_nearest: a 4-bit index, four chains");

/* ---- encoder ------------------------------------------------------------------------ */

static int column_reserve(struct column *c, size_t more)
{
    size_t len = (size_t)(c->end - c->data);
    if (len + more + STORE_SLACK <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 1u << 16;
    while (cap < len + more + STORE_SLACK)
        cap *= 2;
    uint8_t *p = realloc(c->data, cap);
    if (!p)
        return -ENOMEM;
    c->data = p;
    c->end = p + len;
    c->cap = cap;
    return 0;
}

static void enc_reset(struct rs_enc *e)
{
    e->records = 0;
    e->room = 0;
    e->prev_q = 0;
    e->time_nibbles = 0;
    e->time_bits = 0;
    e->heads = 0;
    e->site_s1 = e->site_s2 = 0;
    e->site_z1 = 0;
    e->alloc_last = 0;
    e->ref_last = 0;
    e->miss_head = 0;
    memset(e->miss, 0, sizeof(e->miss));
    memset(e->class_last, 0, sizeof(e->class_last));
    memset(e->reuse_last, 0, sizeof(e->reuse_last));
    memset(e->site, 0, sizeof(e->site));
    memset(e->head_slot, 0, sizeof(e->head_slot));
    /* serials must never repeat within the cache's memory: before the
     * counter could wrap, forget everything */
    if (e->serial > REF_SERIAL_MAX - 2 * RS_CODEC_CHUNK_RECORDS ||
        e->free_serial > REF_SERIAL_MAX - 2 * RS_CODEC_CHUNK_RECORDS) {
        memset(e->cache, 0, sizeof(*e->cache) << REF_CACHE_BITS);
        e->serial = e->free_serial = 1;
    }
    e->chunk_serial = e->serial;
    e->chunk_free_serial = e->free_serial;
}

struct rs_enc *rs_enc_new(unsigned time_shift)
{
    struct rs_enc *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    /* calloc: untouched pages of the cache cost nothing */
    e->cache = calloc((size_t)1 << REF_CACHE_BITS, sizeof(*e->cache));
    if (!e->cache) {
        free(e);
        return NULL;
    }
    e->time_shift = time_shift < 63 ? time_shift : 63;
    e->serial = e->free_serial = 1; /* 0 is never valid: zeroed entries are stale */
    enc_reset(e);
    return e;
}

void rs_enc_free(struct rs_enc *e)
{
    if (!e)
        return;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++)
        free(e->col[i].data);
    free(e->cache);
    free(e->body);
    free(e);
}

uint32_t rs_enc_records(const struct rs_enc *e) { return e->records; }

size_t rs_enc_raw_bytes(const struct rs_enc *e)
{
    size_t n = BODY_HEADER_BYTES;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++)
        n += (size_t)(e->col[i].end - e->col[i].data);
    return n;
}

int rs_enc_full(const struct rs_enc *e)
{
    return e->records >= RS_CODEC_CHUNK_RECORDS || rs_enc_raw_bytes(e) >= RS_CODEC_CHUNK_RAW;
}

/* The encoder's hot state for a run of records, in locals (registers):
 * column stores go through uint8_t pointers, which may alias anything, so
 * state kept in *e would be reloaded after every store. Columns written
 * for a minority of records (heads, long times, sizes, stacks, addresses
 * by value) stay in *e. */
struct run {
    uint8_t *op, *time, *alloc, *reuse, *ref;
    struct ref_entry *cache;
    uint64_t prev_q, time_nibbles;
    unsigned time_bits;
    uint32_t serial, free_serial, ref_last;
};

static inline void run_load(struct run *r, const struct rs_enc *e)
{
    r->op = e->col[S_OP].end;
    r->time = e->col[S_TIME].end;
    r->alloc = e->col[S_ALLOC].end;
    r->reuse = e->col[S_REUSE].end;
    r->ref = e->col[S_REF].end;
    r->cache = e->cache;
    r->prev_q = e->prev_q;
    r->time_nibbles = e->time_nibbles;
    r->time_bits = e->time_bits;
    r->serial = e->serial;
    r->free_serial = e->free_serial;
    r->ref_last = e->ref_last;
}

static inline void run_store(const struct run *r, struct rs_enc *e)
{
    e->col[S_OP].end = r->op;
    e->col[S_TIME].end = r->time;
    e->col[S_ALLOC].end = r->alloc;
    e->col[S_REUSE].end = r->reuse;
    e->col[S_REF].end = r->ref;
    e->prev_q = r->prev_q;
    e->time_nibbles = r->time_nibbles;
    e->time_bits = r->time_bits;
    e->serial = r->serial;
    e->free_serial = r->free_serial;
    e->ref_last = r->ref_last;
}

/* Append a varint to a column kept in *e. */
static inline void put_col(struct rs_enc *e, unsigned s, uint64_t v)
{
    e->col[s].end = put_pv(e->col[s].end, v);
}

static inline struct head_slot *head_slot(struct rs_enc *e, uint32_t key)
{
    return &e->head_slot[(key * 0x9E3779B1u) >> (32 - HEAD_SLOTS_BITS)];
}

static inline uint32_t head_key(uint8_t kind, uint8_t flags, uint16_t thread)
{
    return kind | (uint32_t)flags << 8 | (uint32_t)thread << 16;
}

/* A head not in T yet: op 0 and the head as a literal. */
static __attribute__((noinline)) void encode_head_literal(struct rs_enc *e, struct head_slot *h,
                                                          uint32_t key, unsigned form)
{
    uint8_t *p = e->col[S_HEAD].end;
    p[0] = (uint8_t)key;
    p[1] = (uint8_t)(key >> 8);
    p[2] = (uint8_t)form;
    e->col[S_HEAD].end = put_pv(p + 3, key >> 16);
    if (e->heads < RS_CODEC_HEADS) {
        if (h->key != key) {
            h->key = key;
            memset(h->index, 0, sizeof(h->index));
        }
        h->index[form] = (uint8_t)++e->heads;
    }
}

/* The op byte: the head's index in T, or 0 and the head as a literal. */
static inline void encode_head(struct rs_enc *e, struct run *r, struct head_slot *h,
                               uint32_t key, unsigned form)
{
    if (__builtin_expect(h->key == key && h->index[form], 1)) {
        *r->op++ = h->index[form];
        return;
    }
    *r->op++ = 0;
    encode_head_literal(e, h, key, form);
}

/* The time code: a nibble, 15 = look in S_TIME_LONG. Nibbles gather in a
 * word that is stored whole (the tail at rs_enc_finish). */
static inline void encode_time(struct rs_enc *e, struct run *r, uint64_t time)
{
    uint64_t q = time >> e->time_shift;
    uint64_t t = zigzag(q - r->prev_q);
    r->prev_q = q;
    if (__builtin_expect(t >= 15, 0)) {
        put_col(e, S_TIME_LONG, t - 15);
        t = 15;
    }
    r->time_nibbles |= t << r->time_bits;
    r->time_bits += 4;
    if (r->time_bits == 64) {
        store64(r->time, r->time_nibbles);
        r->time += 8;
        r->time_nibbles = 0;
        r->time_bits = 0;
    }
}

static inline struct ref_entry *cache_entry(const struct run *r, uint64_t addr)
{
    return &r->cache[(addr >> 4) & REF_CACHE_MASK];
}

/* A FREE/OBJ_DESTROY address missing from the cache: coded by value. */
static __attribute__((noinline)) void encode_miss(struct rs_enc *e, uint64_t addr)
{
    const unsigned mask = RS_CODEC_MISS_HISTORY - 1;
    unsigned i = miss_nearest(e->miss, e->miss_head, addr);
    uint64_t d = addr - e->miss[(e->miss_head - i) & mask];
    e->miss_head = (e->miss_head + 1) & mask;
    e->miss[e->miss_head] = addr;
    put_col(e, S_REF, i);
    put_col(e, S_ADDR, addr_code(d));
}

/* The FREE/OBJ_DESTROY address: a reference into the allocation list when
 * the cache knows it (trace.h, "Address model"), else a miss. */
static inline void encode_ref(struct rs_enc *e, struct run *r, const struct ref_entry *c,
                              uint64_t addr)
{
    uint32_t n = r->serial - e->chunk_serial;
    uint32_t j = c->serial - e->chunk_serial; /* >= n when freed, empty or stale */
    if (__builtin_expect(!ref_is(c, addr) || j >= n, 0)) {
        e->col[S_REF].end = r->ref;
        encode_miss(e, addr);
        r->ref = e->col[S_REF].end;
        return;
    }
    uint64_t near = zigzag((uint64_t)((int64_t)j - (int64_t)r->ref_last));
    uint64_t recent = n - 1 - j;
    uint64_t code = near <= recent ? near << 1 : recent << 1 | 1;
    r->ref_last = j;
    r->ref = put_pv(r->ref, RS_CODEC_MISS_HISTORY + code);
}

/* The ALLOC address, by value or as the reuse of a freed address,
 * whichever code is smaller; the site prediction. Returns the form. */
static inline unsigned encode_alloc(struct rs_enc *e, struct run *r, uint64_t addr,
                                    uint64_t size, uint32_t stack, uint64_t *field)
{
    struct site *s = &e->site[site_context(e->site_s1, e->site_s2, e->site_z1)];
    unsigned form = (s->size == size ? FORM_SIZE : 0) | (s->stack == stack ? FORM_STACK : 0);
    s->size = (uint32_t)size;
    s->stack = stack;
    e->site_s2 = e->site_s1;
    e->site_s1 = stack;
    e->site_z1 = size;
    unsigned c = size_class(size);
    struct ref_entry *ce = cache_entry(r, addr);
    uint64_t code = addr_code(addr - e->class_last[c]);
    e->class_last[c] = addr;
    /* k < len(F) only for a freed entry of this chunk */
    uint32_t k = (ce->serial ^ REF_FREED) - e->chunk_free_serial;
    if (ref_is(ce, addr) && k < r->free_serial - e->chunk_free_serial) {
        uint64_t reuse = zigzag((uint64_t)((int64_t)k - (int64_t)e->reuse_last[c]));
        if (reuse <= code) {
            form |= FORM_REUSE;
            code = reuse;
            e->reuse_last[c] = k;
        }
    }
    ref_set(ce, addr, r->serial++);
    e->alloc_last = addr;
    *field = code;
    return form;
}

/* Append an OBJ_CREATE to the allocation list. */
static inline void alloc_list_add(struct rs_enc *e, struct run *r, uint64_t addr)
{
    ref_set(cache_entry(r, addr), addr, r->serial++);
    e->alloc_last = addr;
}

/* Cache lines of the records this far ahead are fetched early: the cache
 * is far bigger than the CPU's and every FREE looks up an old entry. */
#define PREFETCH_AHEAD 24u

/* Encode up to m fixed records (the columns have room for them); stops at
 * a VAR kind. Returns the number encoded. */
static size_t encode_run(struct rs_enc *e, const struct rs_slot *recs, size_t m)
{
    struct run r;
    size_t i;
    run_load(&r, e);
    for (i = 0; i < m; i++) {
        const struct rs_slot *rec = &recs[i];
        if (i + PREFETCH_AHEAD < m)
            __builtin_prefetch(cache_entry(&r, recs[i + PREFETCH_AHEAD].addr), 1);
        uint8_t kind = rec->kind;
        uint64_t addr = rec->addr, size = rec->size, field = 0;
        uint32_t stack = rec->stack;
        uint32_t key = head_key(kind, rec->flags, rec->thread);
        struct head_slot *h = head_slot(e, key);
        unsigned form;
        if (__builtin_expect(RS_EV_IS_VAR(kind), 0))
            break;
        if (kind == RS_EV_ALLOC)
            form = encode_alloc(e, &r, addr, size, stack, &field);
        else
            form = (size == 0 ? FORM_SIZE : 0) | (stack == 0 ? FORM_STACK : 0);
        encode_head(e, &r, h, key, form);
        encode_time(e, &r, rec->time);
        if (kind == RS_EV_ALLOC) {
            if (form & FORM_REUSE)
                r.reuse = put_pv(r.reuse, field);
            else
                r.alloc = put_pv(r.alloc, field);
        } else if (is_ref_kind(kind)) {
            struct ref_entry *ce = cache_entry(&r, addr);
            encode_ref(e, &r, ce, addr);
            if (kind == RS_EV_FREE)
                ref_set(ce, addr, REF_FREED | r.free_serial++);
        } else if (kind == RS_EV_OBJ_CREATE) {
            put_col(e, S_ADDR, addr_code(addr - e->alloc_last));
            alloc_list_add(e, &r, addr);
        } else {
            put_col(e, S_ADDR, addr);
        }
        if (__builtin_expect(!(form & FORM_SIZE), 0))
            put_col(e, S_SIZE, size);
        if (__builtin_expect(!(form & FORM_STACK), 0))
            put_col(e, S_STACK, stack);
    }
    run_store(&r, e);
    e->records += (uint32_t)i;
    e->room -= (unsigned)i;
    return i;
}

static int enc_reserve(struct rs_enc *e)
{
    for (unsigned i = 0; i < S_PAYLOAD; i++)
        if (column_reserve(&e->col[i], ROOM_BATCH * MAX_FIELD) < 0)
            return -ENOMEM;
    e->room = ROOM_BATCH;
    return 0;
}

long rs_enc_add_fixed(struct rs_enc *e, const struct rs_slot *recs, size_t n)
{
    size_t done = 0;
    while (done < n && e->records < RS_CODEC_CHUNK_RECORDS) {
        if (e->room == 0 && enc_reserve(e) < 0)
            return done ? (long)done : -ENOMEM;
        size_t m = n - done;
        if (m > e->room)
            m = e->room;
        if (m > RS_CODEC_CHUNK_RECORDS - e->records)
            m = RS_CODEC_CHUNK_RECORDS - e->records;
        size_t k = encode_run(e, recs + done, m);
        done += k;
        if (k < m)
            break; /* a VAR kind */
    }
    return (long)done;
}

int rs_enc_add(struct rs_enc *e, const struct rs_slot *rec, const void *payload, uint32_t len)
{
    if (e->room == 0 && enc_reserve(e) < 0)
        return -ENOMEM;
    if (!RS_EV_IS_VAR(rec->kind)) {
        encode_run(e, rec, 1);
        return 0;
    }
    if (column_reserve(&e->col[S_PAYLOAD], len) < 0)
        return -ENOMEM;
    struct run r;
    run_load(&r, e);
    uint32_t key = head_key(rec->kind, rec->flags, rec->thread);
    encode_head(e, &r, head_slot(e, key), key, 0);
    encode_time(e, &r, rec->time);
    run_store(&r, e);
    put_col(e, S_STACK, len);
    if (len)
        memcpy(e->col[S_PAYLOAD].end, payload, len);
    e->col[S_PAYLOAD].end += len;
    e->records++;
    e->room--;
    return 0;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int rs_enc_finish(struct rs_enc *e, const uint8_t **body, size_t *len)
{
    if (e->time_bits) { /* the column has STORE_SLACK bytes to spare */
        store64(e->col[S_TIME].end, e->time_nibbles);
        e->col[S_TIME].end += (e->time_bits / 4 + 1) / 2;
        e->time_nibbles = 0;
        e->time_bits = 0;
    }
    size_t total = rs_enc_raw_bytes(e);
    if (total > e->body_cap) {
        uint8_t *p = realloc(e->body, total);
        if (!p)
            return -ENOMEM;
        e->body = p;
        e->body_cap = total;
    }
    uint8_t *p = e->body;
    p[0] = RS_CODEC_BODY_VERSION;
    p[1] = (uint8_t)e->time_shift;
    p[2] = p[3] = 0;
    put_u32(p + 4, e->records);
    size_t off = BODY_HEADER_BYTES;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++) {
        size_t n = (size_t)(e->col[i].end - e->col[i].data);
        put_u32(p + 8 + 4 * i, (uint32_t)n);
        if (n)
            memcpy(p + off, e->col[i].data, n);
        off += n;
        e->col[i].end = e->col[i].data;
    }
    enc_reset(e);
    *body = e->body;
    *len = total;
    return 0;
}

/* ---- decoder ----------------------------------------------------------------------- */

int rs_dec_init(struct rs_dec *d, const uint8_t *body, size_t len, uint32_t records)
{
    uint64_t *alloc_list = d->alloc_list, *free_list = d->free_list;
    size_t alloc_cap = d->alloc_cap, free_cap = d->free_cap;
    memset(d, 0, sizeof(*d));
    d->alloc_list = alloc_list;
    d->alloc_cap = alloc_cap;
    d->free_list = free_list;
    d->free_cap = free_cap;
    if (len < BODY_HEADER_BYTES || body[0] != RS_CODEC_BODY_VERSION || body[1] > 63 ||
        get_u32(body + 4) != records)
        return -EBADMSG;
    d->time_shift = body[1];
    d->records = records;
    size_t off = BODY_HEADER_BYTES;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++) {
        size_t n = get_u32(body + 8 + 4 * i);
        if (n > len - off)
            return -EBADMSG;
        d->cur[i] = body + off;
        d->end[i] = body + off + n;
        off += n;
    }
    if (off != len)
        return -EBADMSG;
    /* fixed-width columns: one op byte, one time nibble per record */
    if ((size_t)(d->end[S_OP] - d->cur[S_OP]) != records ||
        (size_t)(d->end[S_TIME] - d->cur[S_TIME]) != records / 2 + (records & 1))
        return -EBADMSG;
    return 0;
}

void rs_dec_release(struct rs_dec *d)
{
    free(d->alloc_list);
    free(d->free_list);
    d->alloc_list = d->free_list = NULL;
    d->alloc_cap = d->free_cap = 0;
}

static inline int get(struct rs_dec *d, unsigned s, uint64_t *out)
{
    return get_pv(&d->cur[s], d->end[s], out);
}

static int list_add(uint64_t **list, size_t *count, size_t *cap, uint64_t addr)
{
    if (__builtin_expect(*count == *cap, 0)) {
        size_t n = *cap ? 2 * *cap : 4096;
        uint64_t *p = realloc(*list, n * sizeof(*p));
        if (!p)
            return -ENOMEM;
        *list = p;
        *cap = n;
    }
    (*list)[(*count)++] = addr;
    return 0;
}

static int dec_alloc_list_add(struct rs_dec *d, uint64_t addr)
{
    return list_add(&d->alloc_list, &d->alloc_count, &d->alloc_cap, addr);
}

static int decode_head(struct rs_dec *d, struct rs_dec_head *h)
{
    uint8_t op = *d->cur[S_OP]++;
    if (op) {
        if (op > d->heads)
            return -EBADMSG;
        *h = d->head[op - 1];
        return 0;
    }
    uint64_t thread;
    const uint8_t *p = d->cur[S_HEAD];
    if (d->end[S_HEAD] - p < 3)
        return -EBADMSG;
    h->kind = p[0];
    h->flags = p[1];
    h->form = p[2];
    d->cur[S_HEAD] = p + 3;
    if (get(d, S_HEAD, &thread) || thread > UINT16_MAX)
        return -EBADMSG;
    h->thread = (uint16_t)thread;
    if (h->kind == RS_EV_EMPTY || h->kind == RS_EV_CONT || h->kind > RS_EV_KIND_MAX ||
        (h->form & ~(FORM_SIZE | FORM_STACK | FORM_REUSE)) ||
        (RS_EV_IS_VAR(h->kind) && h->form) || (h->kind != RS_EV_ALLOC && (h->form & FORM_REUSE)))
        return -EBADMSG;
    if (d->heads < RS_CODEC_HEADS)
        d->head[d->heads++] = *h;
    return 0;
}

static int decode_ref(struct rs_dec *d, uint64_t *addr)
{
    uint64_t code, delta;
    if (get(d, S_REF, &code))
        return -EBADMSG;
    if (code >= RS_CODEC_MISS_HISTORY) {
        code -= RS_CODEC_MISS_HISTORY;
        uint64_t j = code & 1 ? d->alloc_count - 1 - (code >> 1)
                              : d->ref_last + unzigzag(code >> 1);
        if (j >= d->alloc_count) /* also catches the wrap of n - 1 - x */
            return -EBADMSG;
        d->ref_last = j;
        *addr = d->alloc_list[j];
        return 0;
    }
    const unsigned mask = RS_CODEC_MISS_HISTORY - 1;
    if (get(d, S_ADDR, &delta))
        return -EBADMSG;
    uint64_t a = d->miss[(d->miss_head - (unsigned)code) & mask] + addr_uncode(delta);
    d->miss_head = (d->miss_head + 1) & mask;
    d->miss[d->miss_head] = a;
    *addr = a;
    return 0;
}

/* The omitted-or-stored size and stack of a fixed record. */
static int decode_size_stack(struct rs_dec *d, unsigned form, uint64_t implied_size,
                             uint64_t implied_stack, uint64_t *size, uint64_t *stack)
{
    *size = implied_size;
    *stack = implied_stack;
    if (!(form & FORM_SIZE) && get(d, S_SIZE, size))
        return -EBADMSG;
    if (!(form & FORM_STACK) && (get(d, S_STACK, stack) || *stack > UINT32_MAX))
        return -EBADMSG;
    return 0;
}

int rs_dec_next(struct rs_dec *d, struct rs_slot *rec, const uint8_t **payload, uint32_t *len)
{
    struct rs_dec_head h;
    uint64_t dt, addr = 0, size = 0, stack = 0, code;
    int ret;
    if (d->done == d->records)
        return 0;
    if (decode_head(d, &h))
        return -EBADMSG;
    dt = (d->cur[S_TIME][d->done >> 1] >> (4 * (d->done & 1))) & 15;
    if (dt == 15) {
        if (get(d, S_TIME_LONG, &dt))
            return -EBADMSG;
        dt += 15;
    }
    if (RS_EV_IS_VAR(h.kind)) {
        /* no address or size: they are the payload's first 16 bytes */
        if (get(d, S_STACK, &stack) || stack > UINT32_MAX)
            return -EBADMSG;
    } else if (h.kind == RS_EV_ALLOC) {
        /* stack and size first: the size names the size class */
        struct rs_dec_site *s = &d->site[site_context(d->site_s1, d->site_s2, d->site_z1)];
        if (decode_size_stack(d, h.form, s->size, s->stack, &size, &stack) ||
            get(d, h.form & FORM_REUSE ? S_REUSE : S_ALLOC, &code))
            return -EBADMSG;
        s->size = (uint32_t)size;
        s->stack = (uint32_t)stack;
        d->site_s2 = d->site_s1;
        d->site_s1 = (uint32_t)stack;
        d->site_z1 = size;
        unsigned c = size_class(size);
        if (h.form & FORM_REUSE) {
            uint64_t k = d->reuse_last[c] + unzigzag(code);
            if (k >= d->free_count)
                return -EBADMSG;
            d->reuse_last[c] = k;
            addr = d->free_list[k];
        } else {
            addr = d->class_last[c] + addr_uncode(code);
        }
        d->class_last[c] = addr;
        if ((ret = dec_alloc_list_add(d, addr)) < 0)
            return ret;
    } else {
        if (decode_size_stack(d, h.form, 0, 0, &size, &stack))
            return -EBADMSG;
        if (is_ref_kind(h.kind)) {
            if (decode_ref(d, &addr))
                return -EBADMSG;
            if (h.kind == RS_EV_FREE && (ret = list_add(&d->free_list, &d->free_count, &d->free_cap, addr)) < 0)
                return ret;
        } else if (h.kind == RS_EV_OBJ_CREATE) {
            if (get(d, S_ADDR, &code))
                return -EBADMSG;
            addr = (d->alloc_count ? d->alloc_list[d->alloc_count - 1] : 0) + addr_uncode(code);
            if ((ret = dec_alloc_list_add(d, addr)) < 0)
                return ret;
        } else if (get(d, S_ADDR, &addr)) {
            return -EBADMSG;
        }
    }
    d->prev_time += unzigzag(dt);
    rec->kind = h.kind;
    rec->flags = h.flags;
    rec->thread = h.thread;
    rec->stack = (uint32_t)stack;
    rec->time = d->prev_time << d->time_shift;
    rec->addr = addr;
    rec->size = size;
    *payload = NULL;
    *len = 0;
    if (RS_EV_IS_VAR(h.kind)) {
        uint8_t head[16] = {0};
        if (stack > (uint64_t)(d->end[S_PAYLOAD] - d->cur[S_PAYLOAD]))
            return -EBADMSG;
        *payload = d->cur[S_PAYLOAD];
        *len = (uint32_t)stack;
        memcpy(head, d->cur[S_PAYLOAD], stack < 16 ? stack : 16);
        memcpy(&rec->addr, head, 8);
        memcpy(&rec->size, head + 8, 8);
        d->cur[S_PAYLOAD] += stack;
    }
    d->done++;
    if (d->done == d->records) {
        /* every column must be consumed exactly (time is read by index) */
        d->cur[S_TIME] = d->end[S_TIME];
        for (unsigned i = 0; i < RS_CODEC_STREAMS; i++)
            if (d->cur[i] != d->end[i])
                return -EBADMSG;
    }
    return 1;
}
