/*
 * Unit tests of the GC model (analyzer/gcmodel.c) on synthetic records:
 * baseline + traced collections, shutdown collections kept apart, census
 * format 2 (SURVIVAL counts, TENURED lists: runs, types, byte units, record
 * boundaries), tenured deaths of object events and of OBJ-domain blocks,
 * census format 1 refused, configuration history and pause statistics.
 * The payloads are built here from the layout in events.h, independently of
 * the shim's encoder.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "gcmodel.h"
#include "check_run.h"

static uint8_t payload[4096];

static struct rs_event fixed(uint8_t kind, uint8_t flags, uint64_t t, uint64_t addr, uint64_t size, uint32_t stack)
{
    struct rs_event ev = {.kind = kind, .flags = flags, .time_ns = t, .addr = addr, .size = size, .stack = stack};
    return ev;
}

static void varint(uint32_t *len, uint64_t v)
{
    for (; v >= 0x80; v >>= 7)
        payload[(*len)++] = (uint8_t)(v | 0x80);
    payload[(*len)++] = (uint8_t)v;
}

static struct rs_event info(uint32_t len)
{
    return (struct rs_event){.kind = RS_EV_GC_INFO, .payload = payload, .payload_len = len};
}

static void header(uint32_t *len, uint8_t kind, uint8_t b1, uint8_t b2, uint32_t seq)
{
    payload[0] = kind;
    payload[1] = b1;
    payload[2] = b2;
    payload[3] = 0;
    memcpy(payload + 4, &seq, 4);
    *len = 8;
}

/* SURVIVAL of collection seq (generation g): examined[0..g], promoted, tenured */
static struct rs_event survival(uint32_t seq, uint8_t g, const uint64_t *examined, uint64_t promoted,
                                uint64_t tenured)
{
    uint32_t len;
    header(&len, RS_GC_INFO_SURVIVAL, g, 0, seq);
    for (int i = 0; i <= g; i++)
        varint(&len, examined[i]);
    varint(&len, promoted);
    varint(&len, tenured);
    return info(len);
}

/* TENURED of sorted addrs, one token per delta (no runs), types optional */
static struct rs_event tenured(uint32_t seq, const uint64_t *addrs, uint32_t n, const uint32_t *types)
{
    uint32_t len;
    uint64_t prev = 0;
    header(&len, RS_GC_INFO_TENURED, types ? RS_GC_TENURED_TYPES : 0, 0, seq);
    varint(&len, n);
    for (uint32_t i = 0; i < n; i++) {
        varint(&len, ((addrs[i] - prev) >> 4) << 1);
        prev = addrs[i];
    }
    for (uint32_t i = 0; types && i < n; i++) {
        varint(&len, types[i]);
        varint(&len, 1);
    }
    return info(len);
}

static void feed(struct rs_gc_model *m, struct rs_event ev)
{
    ck_assert_int_eq(rs_gcmodel_feed(m, &ev), 0);
}

static int deaths, tenured_deaths, typed_deaths, block_deaths;
static uint64_t last_born;
static void on_death(void *arg, const struct rs_gc_death *d)
{
    (void)arg;
    deaths++;
    tenured_deaths += d->tenured;
    typed_deaths += d->type != 0;
    block_deaths += d->from_block;
    last_born = d->born_ns;
}

static void reset_deaths(void)
{
    deaths = tenured_deaths = typed_deaths = block_deaths = 0;
}

START_TEST(test_counts_promotions_pauses)
{
    struct rs_gc_model m;
    uint8_t mode[4] = {RS_GC_INFO_MODE, RS_GC_CENSUS_FORMAT, 3, 0};
    uint8_t base[8 + 72] = {RS_GC_INFO_BASELINE, 3};
    uint64_t b0[3] = {4, 100, 0};
    uint64_t objs[5] = {0x1000, 0x2000, 0x3000, 0x4000, 0x5000};

    reset_deaths();
    ck_assert_int_eq(rs_gcmodel_init(&m, on_death, NULL), 0);
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = mode, .payload_len = 4});
    memcpy(base + 8, b0, sizeof(b0));
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = base, .payload_len = sizeof(base)});
    for (int i = 0; i < 5; i++)
        feed(&m, fixed(RS_EV_OBJ_CREATE, 0, 10 + i, objs[i], 7, 3));

    /* gen-0 collection: 5 examined, 2 promoted (what the shim counted) */
    feed(&m, fixed(RS_EV_GC_START, 0, 100, 50, 0, 1));
    ck_assert_uint_eq(m.collections[0].promoted, RS_GC_UNKNOWN);
    feed(&m, fixed(RS_EV_OBJ_DESTROY, 0, 110, objs[0], 0, 0));
    feed(&m, fixed(RS_EV_OBJ_DESTROY, 0, 111, objs[1], 0, 0));
    feed(&m, fixed(RS_EV_GC_STOP, 0, 130, 2, 0, 30));
    feed(&m, survival(1, 0, (uint64_t[]){5}, 2, 0));
    ck_assert_uint_eq(m.collections[0].examined, 5);
    ck_assert_uint_eq(m.collections[0].promoted, 2);

    /* gen-1 collection: 2 + 1 examined, all 3 survive and are tenured */
    feed(&m, fixed(RS_EV_GC_START, 1, 200, 0, 1, 2));
    feed(&m, fixed(RS_EV_GC_STOP, 1, 300, 0, 0, 100));
    feed(&m, survival(2, 1, (uint64_t[]){1, 2}, 3, 3));
    feed(&m, tenured(2, objs + 2, 3, NULL));
    ck_assert_uint_eq(m.collections[1].examined, 3);
    ck_assert_uint_eq(m.collections[1].promoted, 3);
    feed(&m, fixed(RS_EV_OBJ_DESTROY, 0, 400, objs[4], 0, 0));
    ck_assert_int_eq(tenured_deaths, 1);
    ck_assert_int_eq(typed_deaths, 3); /* types from OBJ_CREATE */
    ck_assert_uint_eq(m.tenured_listed, m.tenured_expected);

    /* a collection whose census failed stays unknown */
    feed(&m, fixed(RS_EV_GC_START, 0, 420, 0, 0, 3));
    feed(&m, fixed(RS_EV_GC_STOP, 0, 430, 0, 0, 10));
    {
        uint32_t len;
        header(&len, RS_GC_INFO_SURVIVAL, 0, RS_GC_SURVIVAL_FAILED, 3);
        varint(&len, 0);
        varint(&len, 0);
        varint(&len, 0);
        feed(&m, info(len));
    }
    ck_assert_uint_eq(m.collections[2].promoted, RS_GC_UNKNOWN);

    /* shutdown collection is counted apart */
    feed(&m, fixed(RS_EV_GC_START, 2 | RS_GC_F_SHUTDOWN, 500, 0, 0, 4));
    feed(&m, fixed(RS_EV_GC_STOP, 2 | RS_GC_F_SHUTDOWN, 510, 1, 0, 10));

    ck_assert_int_eq(rs_gcmodel_finish(&m, 600), 0);
    ck_assert_uint_eq(m.gens[0].collections, 6);   /* 4 before tracing + 2 */
    ck_assert_uint_eq(m.gens[0].collected, 102);
    ck_assert_uint_eq(m.gens[0].census_collections, 1);
    ck_assert_uint_eq(m.gens[0].promoted, 2);
    ck_assert_uint_eq(m.gens[0].examined, 5);
    ck_assert_uint_eq(m.gens[1].collections, 1);
    ck_assert_uint_eq(m.gens[1].promoted, 3);
    ck_assert_uint_eq(m.gens[1].pause_total_ns, 100);
    ck_assert_uint_eq(m.gens[1].pause_max_ns, 100);
    ck_assert_uint_eq(m.gens[2].collections, 0);
    ck_assert_uint_eq(m.gens[2].shutdown, 1);
    ck_assert_int_eq(deaths, 3);
    ck_assert(m.census);
    rs_gcmodel_free(&m);
}
END_TEST

/* Before 3.13: objects are OBJ-domain blocks; TENURED records give the
 * types. Runs, the byte unit and a second record in one collection. */
START_TEST(test_tenured_blocks_runs_types)
{
    struct rs_gc_model m;
    uint8_t mode[4] = {RS_GC_INFO_MODE, RS_GC_CENSUS_FORMAT, 3, 0};
    uint64_t blocks[6] = {0x10000, 0x10040, 0x10080, 0x100c0, 0x20000, 0x30008};
    uint32_t len;

    reset_deaths();
    ck_assert_int_eq(rs_gcmodel_init(&m, on_death, NULL), 0);
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = mode, .payload_len = 4});
    for (int i = 0; i < 6; i++)
        feed(&m, fixed(RS_EV_ALLOC, RS_DOMAIN_OBJ, 20 + i, blocks[i], 48, 9));
    feed(&m, fixed(RS_EV_GC_START, 1, 100, 0, 0, 1));
    feed(&m, fixed(RS_EV_GC_STOP, 1, 110, 0, 0, 10));
    feed(&m, survival(1, 1, (uint64_t[]){5, 1}, 6, 6));

    /* objects 0x10010..0x100d0 (blocks + 16): first 0x10010 = 0x1001 units,
     * then a run of 3 deltas of 4 units; types: 5 x2, 6 x2 */
    header(&len, RS_GC_INFO_TENURED, RS_GC_TENURED_TYPES, 0, 1);
    varint(&len, 4);
    varint(&len, 0x1001u << 1);
    varint(&len, 4u << 1 | 1);
    varint(&len, 3);
    varint(&len, 5);
    varint(&len, 2);
    varint(&len, 6);
    varint(&len, 2);
    feed(&m, info(len));
    /* a second record starts from 0 again; byte units: 0x20010 and 0x30008
     * (pre-header 0: a block without GC header) */
    header(&len, RS_GC_INFO_TENURED, RS_GC_TENURED_TYPES | RS_GC_TENURED_BYTES, 0, 1);
    varint(&len, 2);
    varint(&len, 0x20010u << 1);
    varint(&len, (0x30008u - 0x20010u) << 1);
    varint(&len, 7);
    varint(&len, 2);
    feed(&m, info(len));

    for (int i = 0; i < 6; i++)
        feed(&m, fixed(RS_EV_FREE, RS_DOMAIN_OBJ, 200 + i, blocks[i], 0, 0));
    ck_assert_int_eq(deaths, 6);
    ck_assert_int_eq(block_deaths, 6);
    ck_assert_int_eq(tenured_deaths, 6);
    ck_assert_int_eq(typed_deaths, 6);
    ck_assert_uint_eq(last_born, 25); /* birth from the block */
    ck_assert_int_eq(rs_gcmodel_finish(&m, 300), 0);
    ck_assert_uint_eq(m.gens[1].examined, 6);
    ck_assert_uint_eq(m.gens[1].promoted, 6);
    ck_assert_uint_eq(m.tenured_expected, 6);
    ck_assert_uint_eq(m.tenured_listed, 6);
    rs_gcmodel_free(&m);
}
END_TEST

/* Census format 1 (an older shim): census off, its records ignored. */
START_TEST(test_census_format1_not_read)
{
    struct rs_gc_model m;
    uint8_t mode[4] = {RS_GC_INFO_MODE, 1, 3, 0};
    uint8_t old[8 + 12] = {RS_GC_INFO_CENSUS, 0, 0, 1, 1, 0, 0, 0};
    ck_assert_int_eq(rs_gcmodel_init(&m, NULL, NULL), 0);
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = mode, .payload_len = 4});
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = old, .payload_len = sizeof(old)});
    feed(&m, fixed(RS_EV_GC_START, 0, 100, 0, 0, 1));
    feed(&m, fixed(RS_EV_GC_STOP, 0, 110, 0, 0, 10));
    feed(&m, survival(1, 0, (uint64_t[]){5}, 2, 0));
    ck_assert_int_eq(rs_gcmodel_finish(&m, 200), 0);
    ck_assert(!m.census);
    ck_assert_int_eq(m.census_format, 1);
    ck_assert_uint_eq(m.collections[0].promoted, RS_GC_UNKNOWN);
    rs_gcmodel_free(&m);
}
END_TEST

START_TEST(test_config_and_notes)
{
    struct rs_gc_model m;
    uint8_t cfg[64] = {RS_GC_INFO_CONFIG, RS_GC_CFG_CALL, 0, 3};
    uint64_t v[4] = {1234, 7, 3, 0};
    uint8_t note[32] = {0x03, 0x04, 5, 0, 'h', 'e', 'l', 'l', 'o'};

    ck_assert_int_eq(rs_gcmodel_init(&m, NULL, NULL), 0);
    memcpy(cfg + 8, v, sizeof(v));
    cfg[40] = 3;
    memcpy(cfg + 42, "set", 3);
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .time_ns = 5, .payload = cfg, .payload_len = 45});
    feed(&m, (struct rs_event){.kind = RS_EV_NOTE, .payload = note, .payload_len = 9});
    feed(&m, (struct rs_event){.kind = RS_EV_NOTE, .payload = note, .payload_len = 9});
    ck_assert_uint_eq(m.nconfigs, 1);
    ck_assert_uint_eq(m.configs[0].thresholds[0], 1234);
    ck_assert_int_eq(m.configs[0].enabled, 0);
    ck_assert_str_eq(m.configs[0].function, "set");
    ck_assert_uint_eq(m.nnotes, 1);
    ck_assert_str_eq(m.notes[0], "hello");
    rs_gcmodel_free(&m);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        test_counts_promotions_pauses,
        test_tenured_blocks_runs_types,
        test_census_format1_not_read,
        test_config_and_notes,
    };
    return rs_check_run("gcmodel", 60, tests, sizeof(tests) / sizeof(tests[0]));
}
