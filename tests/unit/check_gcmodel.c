/*
 * Unit tests of the GC model (analyzer/gcmodel.c) on synthetic records:
 * baseline + traced collections, shutdown collections kept apart, promotions
 * from a START census minus deaths in the window, the exact STOP census,
 * tenured objects, configuration history and pause statistics.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "gcmodel.h"

static uint8_t payload[4096];

static struct rs_event fixed(uint8_t kind, uint8_t flags, uint64_t t, uint64_t addr, uint64_t size, uint32_t stack)
{
    struct rs_event ev = {.kind = kind, .flags = flags, .time_ns = t, .addr = addr, .size = size, .stack = stack};
    return ev;
}

static struct rs_event census(uint8_t phase, uint8_t gen, const uint64_t *addrs, uint32_t n, uint32_t type)
{
    struct rs_event ev = {.kind = RS_EV_GC_INFO, .payload = payload};
    payload[0] = RS_GC_INFO_CENSUS;
    payload[1] = phase;
    payload[2] = gen;
    payload[3] = RS_GC_CENSUS_LAST;
    memcpy(payload + 4, &n, 4);
    for (uint32_t i = 0; i < n; i++) {
        memcpy(payload + 8 + i * 12, &addrs[i], 8);
        memcpy(payload + 16 + i * 12, &type, 4);
    }
    ev.payload_len = 8 + n * 12;
    return ev;
}

static void feed(struct rs_gc_model *m, struct rs_event ev)
{
    ck_assert_int_eq(rs_gcmodel_feed(m, &ev), 0);
}

static int deaths, tenured_deaths;
static void on_death(void *arg, const struct rs_gc_death *d)
{
    (void)arg;
    deaths++;
    tenured_deaths += d->tenured;
}

START_TEST(test_counts_promotions_pauses)
{
    struct rs_gc_model m;
    uint8_t mode[4] = {RS_GC_INFO_MODE, 1, 3, 0};
    uint8_t base[8 + 72] = {RS_GC_INFO_BASELINE, 3};
    uint64_t b0[3] = {4, 100, 0};
    uint64_t objs[5] = {0x1000, 0x2000, 0x3000, 0x4000, 0x5000};

    deaths = tenured_deaths = 0;
    ck_assert_int_eq(rs_gcmodel_init(&m, on_death, NULL), 0);
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = mode, .payload_len = 4});
    memcpy(base + 8, b0, sizeof(b0));
    feed(&m, (struct rs_event){.kind = RS_EV_GC_INFO, .payload = base, .payload_len = sizeof(base)});
    for (int i = 0; i < 5; i++)
        feed(&m, fixed(RS_EV_OBJ_CREATE, 0, 10 + i, objs[i], 7, 3));

    /* gen-0 collection: 5 examined, 2 die in the window, STOP census lists 2 of the 3 survivors */
    feed(&m, census(0, 0, objs, 5, 7));
    feed(&m, fixed(RS_EV_GC_START, 0, 100, 50, 0, 1));
    feed(&m, fixed(RS_EV_OBJ_DESTROY, 0, 110, objs[0], 0, 0));
    feed(&m, fixed(RS_EV_OBJ_DESTROY, 0, 111, objs[1], 0, 0));
    feed(&m, fixed(RS_EV_GC_STOP, 0, 130, 2, 0, 30));
    ck_assert_uint_eq(m.collections[0].promoted, 3);
    feed(&m, census(1, 1, objs + 2, 2, 7));
    ck_assert_uint_eq(m.collections[0].promoted, 2);

    /* gen-1 collection: survivors become tenured */
    feed(&m, census(0, 1, objs + 2, 3, 7));
    feed(&m, fixed(RS_EV_GC_START, 1, 200, 0, 1, 2));
    feed(&m, fixed(RS_EV_GC_STOP, 1, 300, 0, 0, 100));
    ck_assert_uint_eq(m.collections[1].promoted, 3);
    feed(&m, fixed(RS_EV_OBJ_DESTROY, 0, 400, objs[4], 0, 0));
    ck_assert_int_eq(tenured_deaths, 1);

    /* shutdown collection is counted apart */
    feed(&m, fixed(RS_EV_GC_START, 2 | RS_GC_F_SHUTDOWN, 500, 0, 0, 3));
    feed(&m, fixed(RS_EV_GC_STOP, 2 | RS_GC_F_SHUTDOWN, 510, 1, 0, 10));

    ck_assert_int_eq(rs_gcmodel_finish(&m, 600), 0);
    ck_assert_uint_eq(m.gens[0].collections, 5);   /* 4 before tracing + 1 */
    ck_assert_uint_eq(m.gens[0].collected, 102);
    ck_assert_uint_eq(m.gens[0].promoted, 2);
    ck_assert_uint_eq(m.gens[0].examined, 5);
    ck_assert_uint_eq(m.gens[1].collections, 1);
    ck_assert_uint_eq(m.gens[1].pause_total_ns, 100);
    ck_assert_uint_eq(m.gens[1].pause_max_ns, 100);
    ck_assert_uint_eq(m.gens[2].collections, 0);
    ck_assert_uint_eq(m.gens[2].shutdown, 1);
    ck_assert_int_eq(deaths, 3);
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
    Suite *s = suite_create("gcmodel");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_counts_promotions_pauses);
    tcase_add_test(tc, test_config_and_notes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
