/*
 * Codec round trips (analyzer/codec.c): random streams, realistic
 * allocator-like streams (pool carving, LIFO reuse, frees in and out of
 * allocation order), adversarial address patterns (cache collisions, frees
 * of unknown or already freed addresses, extreme and unaligned addresses,
 * objects at offsets), head-table overflow, site predictions, long time
 * gaps, VAR payloads around the 16-byte inline boundary, chunk boundaries
 * (references into an earlier chunk), batches against single appends,
 * time_shift, compression in steps, and corrupt bodies.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "chunk_pack.h"
#include "codec.h"
#include "check_run.h"

/* A record stream: fixed parts, and for VAR records their payloads. */
struct stream {
    struct rs_slot *s;
    uint8_t **payload;       /* NULL or per record (NULL for fixed records) */
    size_t n, cap;
};

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static struct rs_slot *push(struct stream *st)
{
    if (st->n == st->cap) {
        st->cap = st->cap ? 2 * st->cap : 1024;
        st->s = realloc(st->s, st->cap * sizeof(*st->s));
        ck_assert_ptr_nonnull(st->s);
        if (st->payload) {
            st->payload = realloc(st->payload, st->cap * sizeof(*st->payload));
            ck_assert_ptr_nonnull(st->payload);
        }
    }
    if (st->payload)
        st->payload[st->n] = NULL;
    struct rs_slot *s = &st->s[st->n++];
    memset(s, 0, sizeof(*s));
    return s;
}

static void stream_free(struct stream *st)
{
    for (size_t i = 0; st->payload && i < st->n; i++)
        free(st->payload[i]);
    free(st->payload);
    free(st->s);
}

/* VAR records carry their first 16 payload bytes in addr/size, as in the ring. */
static void push_var(struct stream *st, uint8_t kind, uint32_t len)
{
    struct rs_slot *s = push(st);
    uint8_t *p = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(p);
    s->kind = kind;
    s->thread = (uint16_t)(rnd() % 4);
    s->stack = len;
    for (uint32_t i = 0; i < len; i++)
        p[i] = (uint8_t)rnd();
    uint8_t head[16] = {0};
    memcpy(head, p, len < 16 ? len : 16);
    memcpy(&s->addr, head, 8);
    memcpy(&s->size, head + 8, 8);
    st->payload[st->n - 1] = p;
}

static uint32_t rec_len(const struct stream *st, size_t i)
{
    return RS_EV_IS_VAR(st->s[i].kind) ? st->s[i].stack : 0;
}

/* Pack a raw body in one go (the recorder does it in steps: pack_in_steps). */
static void pack_all(const uint8_t *raw, size_t len, uint8_t *codec, const uint8_t **stored,
                     size_t *stored_len)
{
    static struct rs_pack *p;
    if (!p)
        p = rs_pack_new();
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(rs_pack_start(p, raw, len, 1), 0);
    ck_assert_int_eq(rs_pack_step(p, 0), 1);
    rs_pack_result(p, codec, stored, stored_len);
}

/* Encode with single appends (batch == 0) or runs of up to `batch` fixed
 * records, chunk by chunk, and check every decoded record. */
static void check_roundtrip_mode(const struct stream *st, unsigned shift, int pack, size_t batch)
{
    struct rs_enc *e = rs_enc_new(shift);
    ck_assert_ptr_nonnull(e);
    size_t done = 0;
    uint8_t *raw = NULL;
    size_t raw_cap = 0;
    struct rs_dec d = {0};
    while (done < st->n) {
        size_t first = done;
        while (done < st->n && !rs_enc_full(e)) {
            if (batch && !RS_EV_IS_VAR(st->s[done].kind)) {
                size_t k = 1 + rnd() % batch;
                if (k > st->n - done)
                    k = st->n - done;
                long added = rs_enc_add_fixed(e, &st->s[done], k);
                /* stops only before a VAR record or at the record limit */
                if (added < 0 || (added != (long)k && !RS_EV_IS_VAR(st->s[done + (size_t)added].kind) &&
                                  rs_enc_records(e) != RS_CODEC_CHUNK_RECORDS))
                    ck_abort_msg("rs_enc_add_fixed added %ld of %zu", added, k);
                done += (size_t)added;
                continue;
            }
            const uint8_t *p = st->payload ? st->payload[done] : NULL;
            if (rs_enc_add(e, &st->s[done], p, rec_len(st, done)) != 0)
                ck_abort_msg("rs_enc_add failed at %zu", done);
            done++;
        }
        uint32_t count = rs_enc_records(e);
        ck_assert_uint_eq(count, done - first);
        const uint8_t *body;
        size_t len;
        ck_assert_int_eq(rs_enc_finish(e, &body, &len), 0);
        if (pack) {
            uint8_t codec;
            const uint8_t *stored;
            size_t stored_len;
            pack_all(body, len, &codec, &stored, &stored_len);
            ck_assert_int_eq(rs_chunk_unpack(codec, stored, stored_len, len, &raw, &raw_cap), 0);
            body = raw;
        }
        ck_assert_int_eq(rs_dec_init(&d, body, len, count), 0);
        /* plain comparisons: every ck_assert costs Check a write() */
        for (size_t i = first; i < done; i++) {
            struct rs_slot s;
            const uint8_t *p;
            uint32_t l;
            int r = rs_dec_next(&d, &s, &p, &l);
            const struct rs_slot *w = &st->s[i];
            if (r != 1 || s.kind != w->kind || s.flags != w->flags || s.thread != w->thread ||
                s.time != (w->time >> shift) << shift || s.addr != w->addr ||
                s.size != w->size || s.stack != w->stack || l != rec_len(st, i) ||
                (l && memcmp(p, st->payload[i], l)))
                ck_abort_msg("record %zu (kind %u, batch %zu): decoded %d kind %u addr %#llx "
                             "size %llu stack %u time %llu, wrote addr %#llx size %llu stack %u "
                             "time %llu", i, w->kind, batch, r, s.kind,
                             (unsigned long long)s.addr, (unsigned long long)s.size, s.stack,
                             (unsigned long long)s.time, (unsigned long long)w->addr,
                             (unsigned long long)w->size, w->stack, (unsigned long long)w->time);
        }
        struct rs_slot s;
        const uint8_t *p;
        uint32_t l;
        ck_assert_int_eq(rs_dec_next(&d, &s, &p, &l), 0);
    }
    rs_dec_release(&d);
    free(raw);
    rs_enc_free(e);
}

static void check_roundtrip(const struct stream *st, unsigned shift, int pack)
{
    check_roundtrip_mode(st, shift, pack, 0);
    check_roundtrip_mode(st, shift, pack, 300);
}

static void random_fill(struct stream *st, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct rs_slot *s = push(st);
        static const uint8_t kinds[] = {RS_EV_ALLOC, RS_EV_FREE, RS_EV_CLOCK, RS_EV_OBJ_CREATE,
                                        RS_EV_OBJ_DESTROY, RS_EV_LOST, RS_EV_GC_START};
        s->kind = kinds[rnd() % sizeof(kinds)];
        s->flags = (uint8_t)rnd();
        s->thread = (uint16_t)rnd();
        s->stack = (uint32_t)rnd();
        s->time = rnd();
        s->addr = rnd();
        s->size = rnd() >> (rnd() % 64);
    }
}

START_TEST(random_fixed)
{
    struct stream st = {0};
    random_fill(&st, 20000); /* also overflows the head table (255 entries) */
    check_roundtrip(&st, 0, 0);
    check_roundtrip(&st, 0, 1);
    stream_free(&st);
}
END_TEST

START_TEST(var_payloads)
{
    struct stream st = {.payload = calloc(1, sizeof(uint8_t *))};
    for (size_t i = 0; i < 600; i++) {
        if (i % 3 == 0) {
            push_var(&st, (uint8_t)(RS_EV_PROCESS + rnd() % 11), (uint32_t)(i / 3 % 300));
        } else {
            struct rs_slot *s = push(&st);
            s->kind = i % 3 == 1 ? RS_EV_ALLOC : RS_EV_FREE;
            s->addr = 0x7f0000000000ull + (rnd() % 4096) * 16;
            s->size = s->kind == RS_EV_ALLOC ? rnd() % 1000 : 0;
            s->time = i * 100;
        }
    }
    check_roundtrip(&st, 0, 1);
    stream_free(&st);
}
END_TEST

/* pymalloc-like: size classes carving pools, frees of live blocks in
 * allocation order, reverse order or at random, reuse of freed blocks
 * (LIFO per class), stacks that repeat per call site, two threads. */
static void realistic_fill(struct stream *st, size_t n)
{
    enum { CLASSES = 8, LIVE = 4096 };
    uint64_t next[CLASSES], t = 1000;
    uint64_t *live = calloc(LIVE, sizeof(*live)), *freed[CLASSES];
    size_t nlive = 0, nfreed[CLASSES] = {0};
    for (int c = 0; c < CLASSES; c++) {
        next[c] = 0x7f1200000000ull + (uint64_t)c * 0x100000;
        freed[c] = calloc(LIVE, sizeof(uint64_t));
    }
    while (st->n < n) {
        t += rnd() % 200;
        unsigned mode = (unsigned)(st->n / 5000 % 4);
        int do_free = nlive == LIVE || (nlive > 0 && rnd() % 2 == 0);
        struct rs_slot *s = push(st);
        s->time = t;
        s->thread = (uint16_t)(rnd() % 16 == 0);
        s->flags = RS_DOMAIN_OBJ;
        if (do_free) {
            size_t i = mode == 0 ? 0 : mode == 1 ? nlive - 1 : (size_t)(rnd() % nlive);
            s->kind = RS_EV_FREE;
            s->addr = live[i];
            memmove(&live[i], &live[i + 1], (nlive - i - 1) * sizeof(*live));
            nlive--;
            int c = (int)((s->addr - 0x7f1200000000ull) / 0x100000) % CLASSES;
            if (nfreed[c] < LIVE)
                freed[c][nfreed[c]++] = s->addr;
        } else {
            unsigned site = (unsigned)(st->n % 6);
            int c = (int)(site % CLASSES);
            s->kind = RS_EV_ALLOC;
            s->size = 16 * (uint64_t)(c + 1) - (rnd() % 3 == 0 ? 8 : 0);
            s->stack = 100 + site;
            if (nfreed[c] && rnd() % 4) {
                s->addr = freed[c][--nfreed[c]];
            } else {
                s->addr = next[c];
                next[c] += 16 * (uint64_t)(c + 1);
            }
            live[nlive++] = s->addr;
        }
    }
    for (int c = 0; c < CLASSES; c++)
        free(freed[c]);
    free(live);
}

START_TEST(realistic_streams)
{
    struct stream st = {0};
    realistic_fill(&st, 300000);
    check_roundtrip(&st, 0, 1);
    check_roundtrip(&st, 5, 1);
    stream_free(&st);
}
END_TEST

/* Address patterns meant to break the address model's assumptions. */
START_TEST(adversarial_addresses)
{
    struct stream st = {0};
    uint64_t t = 0;
    static const uint64_t odd[] = {0, 1, 15, 16, 0x8000000000000000ull, UINT64_MAX,
                                   UINT64_MAX - 15, 0x7fffffffffffffffull, 0x10, 0xfffffffffffffff0ull};
    for (size_t round = 0; round < 40; round++) {
        /* extreme and unaligned addresses, sizes at the class edges */
        for (size_t i = 0; i < sizeof(odd) / sizeof(*odd); i++) {
            struct rs_slot *s = push(&st);
            s->kind = RS_EV_ALLOC;
            s->addr = odd[i] + round;
            s->size = (uint64_t[]){0, 1, 1024, 1025, 1u << 20, UINT64_MAX, 1ull << 63}[i % 7];
            s->stack = (uint32_t)(i % 3 ? i : UINT32_MAX);
            s->time = (t += 1);
        }
        /* their frees, some twice, one never allocated */
        for (size_t i = 0; i < sizeof(odd) / sizeof(*odd); i++) {
            struct rs_slot *s = push(&st);
            s->kind = RS_EV_FREE;
            s->addr = odd[(i * 7) % (sizeof(odd) / sizeof(*odd))] + round;
            s->time = (t -= 3); /* time running backwards */
        }
        /* addresses that collide in a direct-mapped cache (same low bits) */
        for (size_t i = 0; i < 64; i++) {
            struct rs_slot *s = push(&st);
            s->kind = RS_EV_ALLOC;
            s->addr = 0x100000000ull + (i << 24) + round * 16;
            s->size = 48;
            s->time = (t += 1000000); /* long gaps */
        }
        for (size_t i = 64; i-- > 0;) {
            struct rs_slot *s = push(&st);
            s->kind = i % 5 ? RS_EV_FREE : RS_EV_OBJ_DESTROY;
            s->addr = 0x100000000ull + (i << 24) + round * 16;
            s->time = (t += rnd() % 64);
        }
        /* objects at an offset from their block, destroyed, freed */
        for (size_t i = 0; i < 32; i++) {
            uint64_t block = 0x7f0000000000ull + (rnd() % 65536) * 64;
            struct rs_slot *s = push(&st);
            s->kind = RS_EV_ALLOC;
            s->addr = block;
            s->size = 64;
            s->flags = RS_DOMAIN_OBJ;
            s = push(&st);
            s->kind = RS_EV_OBJ_CREATE;
            s->addr = block + 16 * (i % 3);
            s->size = i % 7; /* type id */
            s->stack = (uint32_t)i;
            s = push(&st);
            s->kind = RS_EV_OBJ_DESTROY;
            s->addr = block + 16 * (i % 3);
            s = push(&st);
            s->kind = RS_EV_FREE;
            s->addr = block;
            s->flags = RS_DOMAIN_OBJ;
            /* the same block again, right away (LIFO reuse), and a free
             * with a nonzero size and stack */
            s = push(&st);
            s->kind = RS_EV_ALLOC;
            s->addr = block;
            s->size = 64;
            s = push(&st);
            s->kind = RS_EV_FREE;
            s->addr = block;
            s->size = 5;
            s->stack = 9;
        }
        /* addresses sharing a cache entry and its tag with a plain (16-byte
         * aligned, below 2^56) one: unaligned, or differing above bit 55 */
        for (size_t i = 0; i < 3; i++) {
            uint64_t plain = 0x7f1234500000ull + round * 0x10000;
            uint64_t twin = plain + (uint64_t[]){8, 1ull << 56, 1 + (3ull << 60)}[i];
            static const uint8_t kinds[] = {RS_EV_ALLOC, RS_EV_FREE, RS_EV_ALLOC, RS_EV_FREE,
                                            RS_EV_ALLOC, RS_EV_ALLOC, RS_EV_FREE, RS_EV_FREE,
                                            RS_EV_OBJ_CREATE, RS_EV_OBJ_DESTROY};
            for (size_t k = 0; k < sizeof(kinds); k++) {
                struct rs_slot *s = push(&st);
                s->kind = kinds[k];
                s->addr = (uint64_t[]){plain, plain, twin, twin, plain, twin, plain, twin,
                                       plain, twin}[k];
                s->size = s->kind == RS_EV_ALLOC ? 32 : 0;
                s->time = (t += 1);
            }
        }
        /* the other fixed kinds, with huge values */
        struct rs_slot *s = push(&st);
        s->kind = RS_EV_CLOCK;
        s->addr = UINT64_MAX - round;
        s->size = rnd();
        s->time = UINT64_MAX - round;
        s->thread = 0xffff;
    }
    check_roundtrip(&st, 0, 1);
    check_roundtrip(&st, 7, 0);
    stream_free(&st);
}
END_TEST

/* Batches and single appends must give the same bytes. */
START_TEST(batch_equals_single)
{
    struct stream st = {0};
    realistic_fill(&st, 50000);
    random_fill(&st, 5000);
    const uint8_t *body;
    size_t len1, len2;
    struct rs_enc *one = rs_enc_new(3), *many = rs_enc_new(3);
    for (size_t i = 0; i < st.n; i++)
        if (rs_enc_add(one, &st.s[i], NULL, 0) != 0)
            ck_abort_msg("rs_enc_add failed at %zu", i);
    for (size_t i = 0; i < st.n;) {
        size_t k = 1 + rnd() % 2000;
        if (k > st.n - i)
            k = st.n - i;
        if (rs_enc_add_fixed(many, &st.s[i], k) != (long)k)
            ck_abort_msg("rs_enc_add_fixed failed at %zu", i);
        i += k;
    }
    ck_assert_int_eq(rs_enc_finish(one, &body, &len1), 0);
    uint8_t *copy = malloc(len1);
    memcpy(copy, body, len1);
    ck_assert_int_eq(rs_enc_finish(many, &body, &len2), 0);
    ck_assert_uint_eq(len1, len2);
    ck_assert_int_eq(memcmp(copy, body, len1), 0);
    /* a VAR record stops a batch before it */
    struct rs_slot two[2] = {{.kind = RS_EV_ALLOC, .addr = 64, .size = 8}, {.kind = RS_EV_NOTE}};
    ck_assert_int_eq(rs_enc_add_fixed(many, two, 2), 1);
    ck_assert_int_eq(rs_enc_add_fixed(many, two + 1, 1), 0);
    free(copy);
    rs_enc_free(one);
    rs_enc_free(many);
    stream_free(&st);
}
END_TEST

START_TEST(chunk_boundaries)
{
    /* more records than one chunk holds: state resets at every chunk, and
     * frees whose allocation was in the previous chunk are misses */
    struct stream st = {0};
    realistic_fill(&st, RS_CODEC_CHUNK_RECORDS + 12345);
    check_roundtrip_mode(&st, 0, 1, 0);
    check_roundtrip_mode(&st, 0, 1, 1000);
    stream_free(&st);
}
END_TEST

START_TEST(incompressible_chunk)
{
    /* zstd cannot shrink random bytes: the chunk is stored raw */
    size_t len = 100000, stored_len;
    const uint8_t *stored;
    uint8_t *raw = malloc(len), *back = NULL, codec;
    for (size_t i = 0; i < len; i++)
        raw[i] = (uint8_t)rnd();
    pack_all(raw, len, &codec, &stored, &stored_len);
    ck_assert_uint_eq(codec, 0);
    ck_assert_uint_eq(stored_len, len);
    size_t back_cap = 0;
    ck_assert_int_eq(rs_chunk_unpack(codec, stored, stored_len, len, &back, &back_cap), 0);
    ck_assert_int_eq(memcmp(back, raw, len), 0);
    ck_assert_int_eq(rs_chunk_unpack(codec, stored, stored_len - 1, len, &back, &back_cap), -EBADMSG);
    ck_assert_int_eq(rs_chunk_unpack(9, stored, stored_len, len, &back, &back_cap), -ENOTSUP);
    free(raw);
    free(back);
}
END_TEST

/* Packing in steps gives a body that unpacks to the same bytes; a body
 * zstd cannot shrink comes out raw. */
START_TEST(pack_in_steps)
{
    struct stream st = {0};
    realistic_fill(&st, 200000);
    struct rs_enc *e = rs_enc_new(0);
    ck_assert_int_eq(rs_enc_add_fixed(e, st.s, st.n), (long)st.n);
    const uint8_t *body;
    size_t len;
    ck_assert_int_eq(rs_enc_finish(e, &body, &len), 0);
    size_t rlen = 300000;
    uint8_t *noise = malloc(rlen);
    for (size_t i = 0; i < rlen; i++)
        noise[i] = (uint8_t)rnd();
    struct rs_pack *p = rs_pack_new();
    ck_assert_ptr_nonnull(p);
    for (int round = 0; round < 4; round++) {
        const uint8_t *raw = round & 1 ? noise : body;
        size_t raw_len = round & 1 ? rlen : len, budget = round < 2 ? 1000 : 0;
        ck_assert_int_eq(rs_pack_start(p, raw, raw_len, 1), 0);
        int steps = 0, r;
        while ((r = rs_pack_step(p, budget)) == 0)
            steps++;
        ck_assert_int_eq(r, 1);
        if (budget)
            ck_assert_int_gt(steps, 10);
        uint8_t codec;
        const uint8_t *stored;
        size_t stored_len, cap = 0;
        uint8_t *back = NULL;
        rs_pack_result(p, &codec, &stored, &stored_len);
        ck_assert_uint_eq(codec, round & 1 ? 0 : 1);
        ck_assert_int_eq(rs_chunk_unpack(codec, stored, stored_len, raw_len, &back, &cap), 0);
        ck_assert_int_eq(memcmp(back, raw, raw_len), 0);
        free(back);
    }
    rs_pack_free(p);
    free(noise);
    rs_enc_free(e);
    stream_free(&st);
}
END_TEST

START_TEST(corrupt_bodies)
{
    struct stream st = {0};
    realistic_fill(&st, 4000);
    random_fill(&st, 1000);
    size_t n = st.n;
    struct rs_enc *e = rs_enc_new(0);
    for (size_t i = 0; i < n; i++)
        rs_enc_add(e, &st.s[i], NULL, 0);
    const uint8_t *body;
    size_t len;
    rs_enc_finish(e, &body, &len);
    uint8_t *copy = malloc(len);
    struct rs_dec d = {0};
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(copy, body, len);
        size_t cut = trial < 2000 ? len : (size_t)(rnd() % len);
        if (trial < 2000)
            for (int flips = 1 + trial % 3; flips > 0; flips--)
                copy[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
        if (rs_dec_init(&d, copy, cut, (uint32_t)n) < 0)
            continue;
        struct rs_slot s;
        const uint8_t *p;
        uint32_t l;
        int r;
        while ((r = rs_dec_next(&d, &s, &p, &l)) == 1)
            ;
        ck_assert_int_le(r, 0); /* decodes or reports -EBADMSG; never crashes */
    }
    ck_assert_int_lt(rs_dec_init(&d, body, len, (uint32_t)n + 1), 0);
    ck_assert_int_lt(rs_dec_init(&d, body, len - 1, (uint32_t)n), 0);
    rs_dec_release(&d);
    free(copy);
    rs_enc_free(e);
    stream_free(&st);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        random_fixed,
        var_payloads,
        realistic_streams,
        adversarial_addresses,
        batch_equals_single,
        chunk_boundaries,
        incompressible_chunk,
        pack_in_steps,
        corrupt_bodies,
    };
    return rs_check_run("codec", 120, tests, sizeof(tests) / sizeof(tests[0]));
}
