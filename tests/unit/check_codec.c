/*
 * Codec round trips (analyzer/codec.c): random streams, realistic
 * allocator-like streams, VAR payloads of every length around the 16-byte
 * inline boundary, chunk boundaries, time_shift, and corrupt bodies.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include "codec.h"

struct rec {
    struct rs_slot s;
    uint8_t payload[300];
    uint32_t len;
};

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* VAR records carry their first 16 payload bytes in addr/size, as in the ring. */
static void make_var(struct rec *r, uint8_t kind, uint32_t len)
{
    memset(&r->s, 0, sizeof(r->s));
    r->s.kind = kind;
    r->s.thread = (uint16_t)(rnd() % 4);
    r->len = len;
    r->s.stack = len;
    for (uint32_t i = 0; i < len; i++)
        r->payload[i] = (uint8_t)rnd();
    uint8_t head[16] = {0};
    memcpy(head, r->payload, len < 16 ? len : 16);
    memcpy(&r->s.addr, head, 8);
    memcpy(&r->s.size, head + 8, 8);
}

static void check_roundtrip(struct rec *recs, size_t n, unsigned shift, int pack)
{
    struct rs_enc *e = rs_enc_new(shift);
    ck_assert_ptr_nonnull(e);
    size_t done = 0;
    uint8_t *packed = NULL, *raw = NULL;
    size_t packed_cap = 0, raw_cap = 0;
    while (done < n) {
        size_t first = done;
        while (done < n && !rs_enc_full(e)) {
            ck_assert_int_eq(rs_enc_add(e, &recs[done].s, recs[done].payload, recs[done].len), 0);
            done++;
        }
        uint32_t count = rs_enc_records(e);
        const uint8_t *body;
        size_t len;
        ck_assert_int_eq(rs_enc_finish(e, &body, &len), 0);
        if (pack) {
            uint8_t codec;
            size_t stored;
            ck_assert_int_eq(rs_chunk_pack(body, len, 1, &packed, &packed_cap, &codec, &stored), 0);
            ck_assert_int_eq(rs_chunk_unpack(codec, packed, stored, len, &raw, &raw_cap), 0);
            body = raw;
        }
        struct rs_dec d;
        ck_assert_int_eq(rs_dec_init(&d, body, len, count), 0);
        for (size_t i = first; i < done; i++) {
            struct rs_slot s;
            const uint8_t *p;
            uint32_t l;
            ck_assert_int_eq(rs_dec_next(&d, &s, &p, &l), 1);
            const struct rs_slot *w = &recs[i].s;
            ck_assert_uint_eq(s.kind, w->kind);
            ck_assert_uint_eq(s.flags, w->flags);
            ck_assert_uint_eq(s.thread, w->thread);
            ck_assert_uint_eq(s.time, (w->time >> shift) << shift);
            ck_assert_uint_eq(s.addr, w->addr);
            ck_assert_uint_eq(s.size, w->size);
            ck_assert_uint_eq(s.stack, w->stack);
            ck_assert_uint_eq(l, recs[i].len);
            if (l)
                ck_assert_int_eq(memcmp(p, recs[i].payload, l), 0);
        }
        struct rs_slot s;
        const uint8_t *p;
        uint32_t l;
        ck_assert_int_eq(rs_dec_next(&d, &s, &p, &l), 0);
    }
    free(packed);
    free(raw);
    rs_enc_free(e);
}

START_TEST(random_fixed)
{
    size_t n = 20000;
    struct rec *recs = calloc(n, sizeof(*recs));
    for (size_t i = 0; i < n; i++) {
        struct rs_slot *s = &recs[i].s;
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
    check_roundtrip(recs, n, 0, 0);
    check_roundtrip(recs, n, 0, 1);
    free(recs);
}
END_TEST

START_TEST(var_payloads)
{
    size_t n = 600;
    struct rec *recs = calloc(n, sizeof(*recs));
    for (size_t i = 0; i < n; i++) {
        if (i % 3 == 0) {
            make_var(&recs[i], (uint8_t)(RS_EV_PROCESS + rnd() % 11), (uint32_t)(i / 3 % 300));
        } else {
            recs[i].s.kind = RS_EV_ALLOC;
            recs[i].s.addr = 0x7f0000000000ull + (rnd() % 4096) * 16;
            recs[i].s.size = rnd() % 1000;
            recs[i].s.time = i * 100;
        }
    }
    check_roundtrip(recs, n, 0, 1);
    free(recs);
}
END_TEST

/* pymalloc-like: size classes walking pools, frees of recent blocks */
static struct rec *realistic(size_t n)
{
    struct rec *recs = calloc(n, sizeof(*recs));
    uint64_t next[8], live[64] = {0}, t = 1000;
    for (int c = 0; c < 8; c++)
        next[c] = 0x7f1200000000ull + (uint64_t)c * 0x100000;
    for (size_t i = 0; i < n; i++) {
        struct rs_slot *s = &recs[i].s;
        t += rnd() % 200;
        s->time = t;
        s->thread = (uint16_t)(rnd() % 16 == 0);
        unsigned slot = (unsigned)(rnd() % 64);
        if (live[slot]) {
            s->kind = RS_EV_FREE;
            s->flags = RS_DOMAIN_OBJ;
            s->addr = live[slot];
            live[slot] = 0;
        } else {
            int c = (int)(rnd() % 8);
            s->kind = RS_EV_ALLOC;
            s->flags = RS_DOMAIN_OBJ;
            s->size = 16 * (uint64_t)(c + 1);
            s->addr = next[c];
            s->stack = 1 + (uint32_t)(rnd() % 5);
            next[c] += s->size;
            live[slot] = s->addr;
        }
    }
    return recs;
}

START_TEST(realistic_streams)
{
    size_t n = 300000;
    struct rec *recs = realistic(n);
    check_roundtrip(recs, n, 0, 1);
    check_roundtrip(recs, n, 5, 1);
    free(recs);
}
END_TEST

START_TEST(chunk_boundaries)
{
    /* more records than one chunk holds: state must reset at every chunk */
    size_t n = RS_CODEC_CHUNK_RECORDS + 12345;
    struct rec *recs = realistic(n);
    check_roundtrip(recs, n, 0, 1);
    free(recs);
}
END_TEST

START_TEST(corrupt_bodies)
{
    size_t n = 5000;
    struct rec *recs = realistic(n);
    struct rs_enc *e = rs_enc_new(0);
    for (size_t i = 0; i < n; i++)
        rs_enc_add(e, &recs[i].s, NULL, 0);
    const uint8_t *body;
    size_t len;
    rs_enc_finish(e, &body, &len);
    uint8_t *copy = malloc(len);
    for (int trial = 0; trial < 2000; trial++) {
        memcpy(copy, body, len);
        size_t cut = trial < 1000 ? len : (size_t)(rnd() % len);
        if (trial < 1000)
            copy[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
        struct rs_dec d;
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
    struct rs_dec d;
    ck_assert_int_lt(rs_dec_init(&d, body, len, (uint32_t)n + 1), 0);
    ck_assert_int_lt(rs_dec_init(&d, body, len - 1, (uint32_t)n), 0);
    free(copy);
    rs_enc_free(e);
    free(recs);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("codec");
    TCase *tc = tcase_create("codec");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, random_fixed);
    tcase_add_test(tc, var_payloads);
    tcase_add_test(tc, realistic_streams);
    tcase_add_test(tc, chunk_boundaries);
    tcase_add_test(tc, corrupt_bodies);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
