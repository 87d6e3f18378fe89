/*
 * Unit tests for analyzer/stacks.c: synthetic PY_CODE / PY_STACK /
 * NATIVE_STACK / MODULE_MAP records in, frames out. Native addresses point
 * into this test executable itself (described by a MODULE_MAP built from
 * dl_iterate_phdr, as the shim does), so libdw symbolizes real code; a local
 * function named _PyEval_EvalFrameDefault stands in for the eval loop.
 */
#include <check.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stacks.h"
#include "check_run.h"

/* ---- record builders ------------------------------------------------------------- */

struct rec {
    uint8_t buf[4096];
    uint32_t len;
};

static void put(struct rec *r, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        r->buf[r->len++] = (uint8_t)(v >> (8 * i));
}

static void put_str(struct rec *r, const char *s)
{
    put(r, strlen(s), 2);
    memcpy(r->buf + r->len, s, strlen(s));
    r->len += (uint32_t)strlen(s);
}

static uint64_t next_ordinal = 1;

static void feed(struct rs_stacks *s, uint8_t kind, const struct rec *r)
{
    struct rs_event ev = {0};
    ev.ordinal = next_ordinal++;
    ev.kind = kind;
    ev.payload = r->buf;
    ev.payload_len = r->len;
    ck_assert_int_eq(rs_stacks_feed(s, &ev), 0);
}

static void feed_code(struct rs_stacks *s, uint32_t id, const char *file, const char *fn)
{
    struct rec r = {.len = 0};
    put(&r, id, 4);
    put(&r, 1, 4);
    put(&r, 0x1000 + id, 8);
    put_str(&r, file);
    put_str(&r, fn);
    feed(s, RS_EV_PY_CODE, &r);
}

struct pyf {
    uint32_t code, line, flags;
};

static void feed_pystack(struct rs_stacks *s, uint32_t id, uint32_t native, const struct pyf *f, int n)
{
    struct rec r = {.len = 0};
    put(&r, id, 4);
    put(&r, native, 4);
    put(&r, (uint64_t)n, 2);
    put(&r, 0, 2);
    for (int i = 0; i < n; i++) {
        put(&r, f[i].code, 4);
        put(&r, f[i].line, 4);
        put(&r, f[i].flags, 4);
    }
    feed(s, RS_EV_PY_STACK, &r);
}

static void feed_native(struct rs_stacks *s, uint32_t id, const uint64_t *ips, int n)
{
    struct rec r = {.len = 0};
    put(&r, id, 4);
    put(&r, (uint64_t)n, 2);
    put(&r, 0, 2);
    for (int i = 0; i < n; i++)
        put(&r, ips[i], 8);
    feed(s, RS_EV_NATIVE_STACK, &r);
}

/* This executable as the shim would describe it. */
struct self_module {
    uint64_t bias, start, size;
    uint8_t build_id[64];
    uint8_t build_id_len;
    char path[512];
};

static int self_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct self_module *m = arg;
    uint64_t lo = UINT64_MAX, hi = 0;
    (void)size;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD) {
            uint64_t a = info->dlpi_addr + ph->p_vaddr;
            lo = a < lo ? a : lo;
            hi = a + ph->p_memsz > hi ? a + ph->p_memsz : hi;
        } else if (ph->p_type == PT_NOTE) {
            const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
            while (p + sizeof(ElfW(Nhdr)) <= end) {
                const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
                const uint8_t *desc = p + sizeof(*nh) + ((nh->n_namesz + 3) & ~3u);
                if (nh->n_type == NT_GNU_BUILD_ID && nh->n_descsz <= 64) {
                    memcpy(m->build_id, desc, nh->n_descsz);
                    m->build_id_len = (uint8_t)nh->n_descsz;
                }
                p = desc + ((nh->n_descsz + 3) & ~3u);
            }
        }
    }
    m->bias = info->dlpi_addr;
    m->start = lo;
    m->size = hi - lo;
    return 1; /* the main program comes first */
}

static void feed_self_module(struct rs_stacks *s, int corrupt_build_id)
{
    struct self_module m = {0};
    struct rec r = {.len = 0};
    dl_iterate_phdr(self_cb, &m);
    ssize_t n = readlink("/proc/self/exe", m.path, sizeof(m.path) - 1);
    ck_assert_int_gt(n, 0);
    ck_assert_int_gt(m.build_id_len, 0);
    if (corrupt_build_id)
        m.build_id[0] ^= 0xff;
    put(&r, RS_MODULE_INITIAL, 1);
    put(&r, m.build_id_len, 1);
    put(&r, 0, 2);
    put(&r, 0, 4);
    put(&r, m.bias, 8);
    put(&r, m.start, 8);
    put(&r, m.size, 8);
    memcpy(r.buf + r.len, m.build_id, m.build_id_len);
    r.len += m.build_id_len;
    put_str(&r, m.path);
    feed(s, RS_EV_MODULE_MAP, &r);
}

/* ---- native code to point at -------------------------------------------------------- */

__attribute__((noinline)) void alloc_site(void) { __asm__ volatile(""); }
__attribute__((noinline)) void outer_c(void) { __asm__ volatile(""); }
__attribute__((noinline)) void _PyEval_EvalFrameDefault(void) { __asm__ volatile(""); }

/* a "return address" whose call instruction (ip - 1) lies in fn */
static uint64_t ra(void (*fn)(void))
{
    return (uint64_t)(uintptr_t)fn + 1;
}

static void expect_frame(const struct rs_frame *f, const char *function, const char *file_suffix,
                         uint32_t line, int native)
{
    ck_assert_ptr_nonnull(f->function);
    ck_assert_str_eq(f->function, function);
    ck_assert_int_eq(f->native, native);
    if (file_suffix) {
        ck_assert_ptr_nonnull(f->file);
        size_t a = strlen(f->file), b = strlen(file_suffix);
        ck_assert(a >= b && !strcmp(f->file + a - b, file_suffix));
    }
    if (line)
        ck_assert_uint_eq(f->line, line);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(python_frames_only)
{
    struct rs_stacks *s = rs_stacks_new();
    const struct rs_frame *f;
    feed_code(s, 1, "app.py", "Worker.run");
    feed_code(s, 2, "app.py", "<module>");
    struct pyf frames[] = {{1, 12, 0}, {2, 40, RS_PYFRAME_ENTRY}};
    feed_pystack(s, 7, 0, frames, 2);
    ck_assert_int_eq(rs_stacks_resolve(s, 7, &f), 2);
    expect_frame(&f[0], "Worker.run", "app.py", 12, 0);
    expect_frame(&f[1], "<module>", "app.py", 40, 0);
    ck_assert_int_eq(rs_stacks_resolve(s, 0, &f), 0);
    ck_assert_int_eq(rs_stacks_resolve(s, 99, &f), 0);
    ck_assert_ptr_null(rs_stacks_warnings(s));
    rs_stacks_free(s);
}
END_TEST

START_TEST(splice_entry_frames)
{
    struct rs_stacks *s = rs_stacks_new();
    const struct rs_frame *f;
    feed_self_module(s, 0);
    feed_code(s, 1, "m.py", "g");
    feed_code(s, 2, "m.py", "f");
    feed_code(s, 3, "m.py", "<module>");
    /* 3.11+: one C eval frame ran g and f (f is the entry), the other <module> */
    uint64_t ips[] = {ra(alloc_site), ra(_PyEval_EvalFrameDefault), ra(outer_c),
                      ra(_PyEval_EvalFrameDefault), ra(outer_c)};
    feed_native(s, 5, ips, 5);
    struct pyf frames[] = {{1, 3, 0}, {2, 7, RS_PYFRAME_ENTRY}, {3, 11, RS_PYFRAME_ENTRY}};
    feed_pystack(s, 1, 5, frames, 3);
    int n = rs_stacks_resolve(s, 1, &f);
    ck_assert_int_eq(n, 6);
    expect_frame(&f[0], "alloc_site", "check_stacks.c", 0, 1);
    ck_assert_uint_gt(f[0].line, 0);
    expect_frame(&f[1], "g", "m.py", 3, 0);
    expect_frame(&f[2], "f", "m.py", 7, 0);
    expect_frame(&f[3], "outer_c", "check_stacks.c", 0, 1);
    expect_frame(&f[4], "<module>", "m.py", 11, 0);
    expect_frame(&f[5], "outer_c", NULL, 0, 1);
    ck_assert_ptr_nonnull(f[0].module);
    /* resolving again returns the cached frames */
    const struct rs_frame *again;
    ck_assert_int_eq(rs_stacks_resolve(s, 1, &again), 6);
    ck_assert_ptr_eq(again, f);

    /* Python-only mode never symbolizes */
    struct rs_stacks *p = rs_stacks_new();
    rs_stacks_set_native(p, 0);
    feed_self_module(p, 0);
    feed_code(p, 1, "m.py", "g");
    feed_native(p, 5, ips, 5);
    struct pyf one[] = {{1, 3, RS_PYFRAME_ENTRY}};
    feed_pystack(p, 1, 5, one, 1);
    ck_assert_int_eq(rs_stacks_resolve(p, 1, &f), 1);
    expect_frame(&f[0], "g", "m.py", 3, 0);
    rs_stacks_free(p);
    rs_stacks_free(s);
}
END_TEST

START_TEST(splice_without_entry_flags)
{
    /* before 3.11 (or a shim without flags): one eval frame per Python frame */
    struct rs_stacks *s = rs_stacks_new();
    const struct rs_frame *f;
    feed_self_module(s, 0);
    feed_code(s, 1, "old.py", "inner");
    feed_code(s, 2, "old.py", "outer");
    uint64_t ips[] = {ra(alloc_site), ra(_PyEval_EvalFrameDefault), ra(_PyEval_EvalFrameDefault),
                      ra(_PyEval_EvalFrameDefault)};
    feed_native(s, 9, ips, 4);
    struct pyf frames[] = {{1, 5, 0}, {2, 6, 0}};
    feed_pystack(s, 3, 9, frames, 2);
    ck_assert_int_eq(rs_stacks_resolve(s, 3, &f), 4);
    expect_frame(&f[0], "alloc_site", NULL, 0, 1);
    expect_frame(&f[1], "inner", "old.py", 5, 0);
    expect_frame(&f[2], "outer", "old.py", 6, 0);
    /* an eval frame with no Python frame left stays native */
    expect_frame(&f[3], "_PyEval_EvalFrameDefault", NULL, 0, 1);
    rs_stacks_free(s);
}
END_TEST

START_TEST(native_only_and_late_module)
{
    /* a stack defined before the MODULE_MAP of its object (dlopen constructors) */
    struct rs_stacks *s = rs_stacks_new();
    const struct rs_frame *f;
    uint64_t ips[] = {ra(alloc_site), ra(outer_c)};
    feed_native(s, 1, ips, 2);
    feed_pystack(s, 2, 1, NULL, 0);
    feed_self_module(s, 0);
    ck_assert_int_eq(rs_stacks_resolve(s, 2, &f), 2);
    expect_frame(&f[0], "alloc_site", "check_stacks.c", 0, 1);
    expect_frame(&f[1], "outer_c", "check_stacks.c", 0, 1);
    rs_stacks_free(s);
}
END_TEST

START_TEST(build_id_mismatch)
{
    struct rs_stacks *s = rs_stacks_new();
    const struct rs_frame *f;
    feed_self_module(s, 1);
    uint64_t ips[] = {ra(alloc_site)};
    feed_native(s, 1, ips, 1);
    feed_pystack(s, 1, 1, NULL, 0);
    ck_assert_int_eq(rs_stacks_resolve(s, 1, &f), 1);
    ck_assert_ptr_null(f[0].file);
    ck_assert(strstr(f[0].function, "alloc_site") == NULL);
    ck_assert(f[0].function[0] == '[');
    const char *w = rs_stacks_warnings(s);
    ck_assert_ptr_nonnull(w);
    ck_assert(strstr(w, "build-id") != NULL);
    rs_stacks_free(s);
}
END_TEST

START_TEST(unknown_address_and_bad_records)
{
    struct rs_stacks *s = rs_stacks_new();
    const struct rs_frame *f;
    uint64_t ips[] = {0x10};
    feed_native(s, 1, ips, 1);
    feed_pystack(s, 1, 1, NULL, 0);
    ck_assert_int_eq(rs_stacks_resolve(s, 1, &f), 1);
    ck_assert_str_eq(f[0].function, "[0x10]");
    /* a truncated payload is rejected */
    struct rec r = {.len = 0};
    put(&r, 5, 4);
    put(&r, 0, 4);
    put(&r, 3, 2); /* claims 3 frames, has none */
    put(&r, 0, 2);
    struct rs_event ev = {.kind = RS_EV_PY_STACK, .payload = r.buf, .payload_len = r.len};
    ck_assert_int_eq(rs_stacks_feed(s, &ev), -EPROTO);
    rs_stacks_free(s);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        python_frames_only,
        splice_entry_frames,
        splice_without_entry_flags,
        native_only_and_late_module,
        build_id_mismatch,
        unknown_address_and_bad_records,
    };
    return rs_check_run("stacks", 60, tests, sizeof(tests) / sizeof(tests[0]));
}
