/*
 * Trace files end to end (trace_write.c → trace_read.c): round trip with
 * tick→ns conversion, truncation at every offset (a warning and a prefix, or
 * a clean error), bit flips (crc errors), random bytes, directories,
 * newer and older major versions refused by name, chunks compressed in
 * steps between appends as the recorder writes them, and records no
 * program can have written (an allocation bigger than an address space).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "codec.h"
#include "trace_read.h"
#include "trace_write.h"
#include "check_run.h"

static char dir[] = "/tmp/check_trace_XXXXXX";

static size_t make_meta(uint8_t *buf, uint32_t clock_kind)
{
    struct rs_process_info pi = {
        .pid = 4242, .ppid = 1, .py_version = 0x030b02f0, .flags = RS_PROC_PYTHON,
        .clock_kind = clock_kind, .start_mono_ns = 5000, .start_real_ns = 123, .start_ticks = 1000,
        .ring_bytes = 1 << 20,
    };
    size_t n = 0;
    memcpy(buf, &pi, sizeof(pi));
    n += sizeof(pi);
    const char exe[] = "/usr/bin/python3", cmd[] = "python3\0-c\0pass";
    uint16_t l = sizeof(exe) - 1;
    memcpy(buf + n, &l, 2);
    memcpy(buf + n + 2, exe, l);
    n += 2 + l;
    l = sizeof(cmd) - 1;
    memcpy(buf + n, &l, 2);
    memcpy(buf + n + 2, cmd, l);
    n += 2 + l;
    return n;
}

/* rs_trace_create with make_meta's process record on `clock_kind`. */
static int create_trace(const char *path, uint32_t clock_kind, int force, struct rs_trace_writer **w)
{
    uint8_t meta[256];
    size_t meta_len = make_meta(meta, clock_kind);
    struct rs_writer_opts opts = {.force = force};
    return rs_trace_create(path, &opts, meta, (uint32_t)meta_len, w);
}

/* n ALLOC/FREE records in `chunks` chunks, TSC clock at 0.5 ns per tick. */
static void write_trace(const char *path, int records, int chunks, int trailer)
{
    struct rs_trace_writer *w;
    ck_assert_int_eq(create_trace(path, RS_CLOCK_TSC, 1, &w), 0);
    struct rs_slot clock = {.kind = RS_EV_CLOCK, .time = 1000 + 2000000, .addr = 5000 + 1000000};
    ck_assert_int_eq(rs_trace_append(w, &clock, NULL, 0), 0);
    for (int i = 0; i < records; i++) {
        struct rs_slot s = {
            .kind = i % 2 ? RS_EV_FREE : RS_EV_ALLOC, .flags = RS_DOMAIN_OBJ, .thread = 1,
            .time = 1000 + 2 * (uint64_t)i, .addr = 0x10000 + (uint64_t)(i / 2) * 64,
            .size = i % 2 ? 0 : 48, .stack = 7,
        };
        ck_assert_int_eq(rs_trace_append(w, &s, NULL, 0), 0);
        if (chunks > 1 && (i + 1) % (records / chunks) == 0)
            ck_assert_int_eq(rs_trace_flush(w), 0);
    }
    const char note[] = "\x01\x00\x05\x00hello";
    struct rs_slot v = {.kind = RS_EV_NOTE, .stack = sizeof(note) - 1};
    memcpy(&v.addr, note, 8);
    memcpy(&v.size, note + 8, 1);
    ck_assert_int_eq(rs_trace_append(w, &v, note, sizeof(note) - 1), 0);
    if (trailer) {
        struct rs_trailer t = {.producer_waits = 3, .lost_events = 4};
        ck_assert_int_eq(rs_trace_finish(w, &t), 0);
    } else {
        ck_assert_int_eq(rs_trace_flush(w), 0);
        rs_trace_abandon(w);
    }
}

static void path_in(char *buf, const char *name) { snprintf(buf, 256, "%s/%s", dir, name); }

START_TEST(roundtrip)
{
    char path[256], err[256];
    path_in(path, "rt.rfs");
    write_trace(path, 1000, 3, 1);
    struct rs_trace *t;
    ck_assert_int_eq(rs_trace_open(path, &t, err, sizeof(err)), 0);
    const struct rs_trace_info *in = rs_trace_info(t);
    ck_assert_uint_eq(in->pid, 4242);
    ck_assert_str_eq(in->cmdline, "python3 -c pass");
    ck_assert_str_eq(in->exe, "/usr/bin/python3");
    ck_assert_int_eq(in->has_trailer, 1);
    ck_assert_int_eq(in->truncated, 0);
    ck_assert_uint_eq(in->producer_waits, 3);
    ck_assert_uint_eq(in->lost_events, 4);
    for (int pass = 0; pass < 2; pass++) {
        struct rs_event ev;
        uint64_t n = 0;
        int r;
        while ((r = rs_trace_next(t, &ev, err, sizeof(err))) == 1) {
            ck_assert_uint_eq(ev.ordinal, n);
            if (n >= 1 && n <= 1000) {
                int i = (int)n - 1;
                ck_assert_uint_eq(ev.kind, i % 2 ? RS_EV_FREE : RS_EV_ALLOC);
                ck_assert_uint_eq(ev.addr, 0x10000 + (uint64_t)(i / 2) * 64);
                ck_assert_uint_eq(ev.time_ns, (uint64_t)i); /* 2 ticks per record, 0.5 ns per tick */
                ck_assert_uint_eq(ev.stack, 7);
            }
            if (n == 1001) {
                ck_assert_uint_eq(ev.kind, RS_EV_NOTE);
                ck_assert_uint_eq(ev.payload_len, 9);
                ck_assert_int_eq(memcmp(ev.payload + 4, "hello", 5), 0);
            }
            n++;
        }
        ck_assert_int_eq(r, 0);
        ck_assert_uint_eq(n, 1002);
        ck_assert_int_eq(rs_trace_rewind(t, err, sizeof(err)), 0);
    }
    rs_trace_close(t);
}
END_TEST

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len);
    ck_assert_uint_eq(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

static void spill(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* Open and read to the end: returns the record count, or -1 on a clean error. */
static long read_all(const char *path, int *truncated, char *err, size_t errlen)
{
    struct rs_trace *t;
    struct rs_event ev;
    long n = 0;
    int r;
    if (rs_trace_open(path, &t, err, errlen) < 0) {
        ck_assert_msg(err[0] && !strchr(err, '\n'), "one-line error expected");
        return -1;
    }
    while ((r = rs_trace_next(t, &ev, err, errlen)) == 1)
        n++;
    *truncated = rs_trace_info(t)->truncated || !rs_trace_info(t)->has_trailer;
    rs_trace_close(t);
    return r < 0 ? -1 : n;
}

START_TEST(truncated_everywhere)
{
    char path[256], cut[256], err[256];
    path_in(path, "full.rfs");
    path_in(cut, "cut.rfs");
    write_trace(path, 400, 4, 1);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    long prev = -1;
    for (size_t off = 0; off < len; off++) {
        int truncated = 0;
        spill(cut, buf, off);
        long n = read_all(cut, &truncated, err, sizeof(err));
        if (n >= 0) {
            ck_assert_int_eq(truncated, 1);
            ck_assert_int_ge(n, prev < 0 ? 0 : prev); /* a longer prefix never yields fewer records */
            prev = n;
        }
    }
    int truncated = 0;
    ck_assert_int_eq(read_all(path, &truncated, err, sizeof(err)), 402);
    ck_assert_int_eq(truncated, 0);
    free(buf);
}
END_TEST

START_TEST(bit_flips)
{
    char path[256], bad[256], err[256];
    path_in(path, "flip.rfs");
    path_in(bad, "flipped.rfs");
    write_trace(path, 400, 4, 1);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    size_t data_start = 64 + 0; /* header; meta crc covers what follows */
    for (size_t off = data_start; off < len; off += 7) {
        for (int bit = 0; bit < 8; bit += 3) {
            buf[off] ^= (uint8_t)(1u << bit);
            spill(bad, buf, len);
            buf[off] ^= (uint8_t)(1u << bit);
            int truncated = 0;
            long n = read_all(bad, &truncated, err, sizeof(err));
            /* a flip is either detected (error or dropped damaged chunk) or in a
             * field no check covers (reserved bytes, first_ordinal of nothing) */
            ck_assert(n == -1 || n <= 402);
        }
    }
    /* a flip inside the first chunk's body is a crc error naming the offset */
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    uint8_t meta[256];
    size_t meta_len = make_meta(meta, RS_CLOCK_TSC);
    size_t body = 64 + meta_len + 32 + 2;
    buf[body] ^= 0x10;
    spill(bad, buf, len);
    int truncated = 0;
    ck_assert_int_eq(read_all(bad, &truncated, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "damaged chunk"));
    free(buf);
}
END_TEST

START_TEST(random_and_odd_files)
{
    char path[256], err[256];
    path_in(path, "random.rfs");
    uint8_t buf[8192];
    uint64_t x = 12345;
    for (int trial = 0; trial < 200; trial++) {
        size_t len = (size_t)(trial * 37) % sizeof(buf);
        for (size_t i = 0; i < len; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            buf[i] = (uint8_t)(x >> 56);
        }
        if (trial % 2 && len >= 8)
            memcpy(buf, "RFSTRACE", 8); /* right magic, garbage after */
        spill(path, buf, len);
        int truncated;
        long n = read_all(path, &truncated, err, sizeof(err));
        ck_assert(n == -1 || n >= 0);
    }
    struct rs_trace *t;
    ck_assert_int_lt(rs_trace_open(dir, &t, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "directory"));
    path_in(path, "missing.rfs");
    ck_assert_int_lt(rs_trace_open(path, &t, err, sizeof(err)), 0);
    spill(path, (const uint8_t *)"hello world\n", 12);
    ck_assert_int_lt(rs_trace_open(path, &t, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "not a refscope trace"));
}
END_TEST

START_TEST(newer_major_refused)
{
    char path[256], err[256];
    path_in(path, "v2.rfs");
    write_trace(path, 10, 1, 1);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    struct rs_file_header h;
    memcpy(&h, buf, sizeof(h));
    h.major = RS_TRACE_MAJOR + 1;
    h.minor = 3;
    memcpy(buf, &h, sizeof(h));
    spill(path, buf, len);
    struct rs_trace *t;
    ck_assert_int_lt(rs_trace_open(path, &t, err, sizeof(err)), 0);
    char want[128];
    snprintf(want, sizeof(want), "trace format %u.3 is newer than this refscope (reads %u.x)",
             RS_TRACE_MAJOR + 1, RS_TRACE_MAJOR);
    ck_assert_ptr_nonnull(strstr(err, want));
    free(buf);
}
END_TEST

START_TEST(older_major_refused)
{
    char path[256], err[256];
    path_in(path, "v1.rfs");
    write_trace(path, 10, 1, 1);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    struct rs_file_header h;
    memcpy(&h, buf, sizeof(h));
    h.major = RS_TRACE_MAJOR - 1;
    h.minor = 0;
    memcpy(buf, &h, sizeof(h));
    spill(path, buf, len);
    struct rs_trace *t;
    ck_assert_int_lt(rs_trace_open(path, &t, err, sizeof(err)), 0);
    char want[128];
    snprintf(want, sizeof(want), "trace format %u.0 is older than this refscope reads (%u.x)",
             RS_TRACE_MAJOR - 1, RS_TRACE_MAJOR);
    ck_assert_ptr_nonnull(strstr(err, want));
    free(buf);
}
END_TEST

/* The recorder's path: runs of fixed records, full chunks compressed in
 * steps between appends (rs_trace_pump), VAR records in between; every
 * record comes back in order. */
static struct rs_slot pumped_record(uint64_t i)
{
    struct rs_slot s = {
        .kind = i % 3 == 2 ? RS_EV_FREE : RS_EV_ALLOC, .flags = RS_DOMAIN_OBJ,
        .time = 1000 + 2 * i, .addr = 0x7f0000000000ull + (i % 100000) * 48,
        .size = i % 3 == 2 ? 0 : 32 + i % 5, .stack = i % 3 == 2 ? 0 : 1 + (uint32_t)(i % 7),
    };
    return s;
}

START_TEST(pumped_chunks)
{
    char path[256], err[256];
    path_in(path, "pumped.rfs");
    struct rs_trace_writer *w;
    ck_assert_int_eq(create_trace(path, RS_CLOCK_MONOTONIC_NS, 1, &w), 0);
    const uint64_t n = 2 * (uint64_t)RS_CODEC_CHUNK_RECORDS + 5000;
    struct rs_slot run[1000];
    const char note[] = "\x01\x00\x02\x00hi";
    struct rs_slot v = {.kind = RS_EV_NOTE, .stack = sizeof(note) - 1};
    memcpy(&v.addr, note, sizeof(note) - 1); /* the first payload bytes, zero-padded */
    for (uint64_t i = 0; i < n;) {
        size_t k = 0;
        while (k < 1000 && i + k < n) {
            run[k] = pumped_record(i + k);
            k++;
        }
        if (rs_trace_append_fixed(w, run, k) != 0)
            ck_abort_msg("append_fixed failed at %llu", (unsigned long long)i);
        i += k;
        if (i % 100000 == 0 && rs_trace_append(w, &v, note, sizeof(note) - 1) != 0)
            ck_abort_msg("append failed at %llu", (unsigned long long)i);
        if (rs_trace_pump(w, 4096) != 0)
            ck_abort_msg("pump failed at %llu", (unsigned long long)i);
    }
    uint64_t notes = n / 100000;
    ck_assert_uint_eq(rs_trace_writer_records(w), n + notes);
    struct rs_trailer tr = {0};
    ck_assert_int_eq(rs_trace_finish(w, &tr), 0);
    struct rs_trace *t;
    struct rs_event ev;
    ck_assert_int_eq(rs_trace_open(path, &t, err, sizeof(err)), 0);
    uint64_t i = 0, seen_notes = 0;
    int r;
    while ((r = rs_trace_next(t, &ev, err, sizeof(err))) == 1) {
        if (ev.kind == RS_EV_NOTE) {
            seen_notes++;
            continue;
        }
        struct rs_slot w = pumped_record(i++);
        if (ev.kind != w.kind || ev.addr != w.addr || ev.size != w.size || ev.stack != w.stack)
            ck_abort_msg("record %llu differs", (unsigned long long)(i - 1));
    }
    ck_assert_int_eq(r, 0);
    ck_assert_uint_eq(i, n);
    ck_assert_uint_eq(seen_notes, notes);
    ck_assert_int_eq(rs_trace_info(t)->has_trailer, 1);
    rs_trace_close(t);
}
END_TEST

START_TEST(no_trailer_and_exclusive_create)
{
    char path[256], err[256];
    path_in(path, "open.rfs");
    write_trace(path, 100, 1, 0);
    int truncated = 0;
    ck_assert_int_eq(read_all(path, &truncated, err, sizeof(err)), 102);
    ck_assert_int_eq(truncated, 1); /* no trailer: the recorder did not finish */
    struct rs_trace_writer *w;
    ck_assert_int_eq(create_trace(path, RS_CLOCK_MONOTONIC_NS, 0, &w), -EEXIST);
    struct stat st;
    path_in(path, "mode.rfs");
    ck_assert_int_eq(create_trace(path, RS_CLOCK_MONOTONIC_NS, 0, &w), 0);
    struct rs_trailer tr = {0};
    ck_assert_int_eq(rs_trace_finish(w, &tr), 0);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
}
END_TEST

/* force replaces a regular file or a symbolic link (not its target), and
 * never anything else: a FIFO here stands for /dev/null or a disk. */
START_TEST(force_replaces_files_only)
{
    char path[256], target[256];
    struct rs_trace_writer *w;
    struct rs_trailer tr = {0};
    struct stat st;
    path_in(path, "fifo.rfs");
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    ck_assert_int_eq(create_trace(path, RS_CLOCK_MONOTONIC_NS, 1, &w), -EEXIST);
    ck_assert_int_eq(lstat(path, &st), 0);
    ck_assert(S_ISFIFO(st.st_mode));
    unlink(path);

    path_in(target, "target");
    FILE *f = fopen(target, "w");
    ck_assert_ptr_nonnull(f);
    fputs("precious", f);
    fclose(f);
    path_in(path, "link.rfs");
    ck_assert_int_eq(symlink(target, path), 0);
    ck_assert_int_eq(create_trace(path, RS_CLOCK_MONOTONIC_NS, 1, &w), 0);
    ck_assert_int_eq(rs_trace_finish(w, &tr), 0);
    ck_assert_int_eq(lstat(path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_int_eq(stat(target, &st), 0);
    ck_assert_int_eq(st.st_size, 8);
    unlink(path);
    unlink(target);
}
END_TEST

/* An allocation bigger than any address space is damage, named with its
 * ordinal; the records before it are read. The feed functions' -EPROTO
 * reads as a malformed record of its kind. */
START_TEST(impossible_allocation_refused)
{
    char path[256], err[256];
    struct rs_trace_writer *w;
    path_in(path, "huge.rfs");
    ck_assert_int_eq(create_trace(path, RS_CLOCK_TSC, 1, &w), 0);
    struct rs_slot ok = {.kind = RS_EV_ALLOC, .addr = 0x1000, .size = RS_ALLOC_SIZE_LIMIT - 1};
    struct rs_slot huge = {.kind = RS_EV_ALLOC, .addr = 0x2000, .size = RS_ALLOC_SIZE_LIMIT};
    ck_assert_int_eq(rs_trace_append(w, &ok, NULL, 0), 0);
    ck_assert_int_eq(rs_trace_append(w, &huge, NULL, 0), 0);
    struct rs_trailer tr = {0};
    ck_assert_int_eq(rs_trace_finish(w, &tr), 0);

    struct rs_trace *t;
    struct rs_event ev;
    ck_assert_int_eq(rs_trace_open(path, &t, err, sizeof(err)), 0);
    ck_assert_int_eq(rs_trace_next(t, &ev, err, sizeof(err)), 1);
    ck_assert_uint_eq(ev.size, RS_ALLOC_SIZE_LIMIT - 1);
    ck_assert_int_eq(rs_trace_next(t, &ev, err, sizeof(err)), -EBADMSG);
    ck_assert_msg(strstr(err, "damaged record 1 (an allocation of 144115188075855872 bytes)"), "%s", err);
    rs_trace_close(t);

    struct rs_event stack = {.ordinal = 77, .kind = RS_EV_PY_STACK};
    rs_trace_record_error(err, sizeof(err), "x.rfs", &stack, -EPROTO);
    ck_assert_str_eq(err, "x.rfs: malformed py_stack record at ordinal 77 (the trace is damaged)");
    stack.kind = 0x7e;
    rs_trace_record_error(err, sizeof(err), "x.rfs", &stack, -EPROTO);
    ck_assert_str_eq(err, "x.rfs: malformed unknown record at ordinal 77 (the trace is damaged)");
    rs_trace_record_error(err, sizeof(err), "x.rfs", &stack, -ENOMEM);
    ck_assert_str_eq(err, "out of memory");
    unlink(path);
}
END_TEST

/* A process that became CPython later (a dlopen'd libpython): the
 * RS_EV_PYTHON record's version and flags replace the header's at open,
 * whichever chunk holds it; a short one is ignored. */
START_TEST(late_python_record)
{
    char path[256], err[256];
    struct rs_trace_writer *w;
    uint8_t meta[256];
    size_t meta_len = make_meta(meta, RS_CLOCK_MONOTONIC_NS);
    struct rs_process_info pi;
    memcpy(&pi, meta, sizeof(pi));
    pi.py_version = 0;
    pi.flags = 0;
    memcpy(meta, &pi, sizeof(pi));
    struct rs_writer_opts opts = {.force = 1};
    path_in(path, "late.rfs");
    ck_assert_int_eq(rs_trace_create(path, &opts, meta, (uint32_t)meta_len, &w), 0);
    struct rs_slot a = {.kind = RS_EV_ALLOC, .flags = RS_DOMAIN_LIBC, .addr = 0x1000, .size = 16, .time = 1};
    ck_assert_int_eq(rs_trace_append(w, &a, NULL, 0), 0);
    ck_assert_int_eq(rs_trace_flush(w), 0);
    uint8_t short_one[4] = {1, 2, 3, 4};
    struct rs_slot p = {.kind = RS_EV_PYTHON, .time = 2, .stack = sizeof(short_one)};
    ck_assert_int_eq(rs_trace_append(w, &p, short_one, sizeof(short_one)), 0);
    uint8_t payload[sizeof(struct rs_python_info) + 2 + 6];
    struct rs_python_info info = {.py_version = 0x030c01f0,
                                  .flags = RS_PROC_PYTHON | RS_PROC_PY_SHARED | RS_PROC_PY_STACKS};
    memcpy(payload, &info, sizeof(info));
    uint16_t l = 6;
    memcpy(payload + sizeof(info), &l, 2);
    memcpy(payload + sizeof(info) + 2, "lib.so", 6);
    p.stack = sizeof(payload);
    ck_assert_int_eq(rs_trace_append(w, &p, payload, sizeof(payload)), 0);
    struct rs_trailer tr = {0};
    ck_assert_int_eq(rs_trace_finish(w, &tr), 0);

    struct rs_trace *t;
    ck_assert_int_eq(rs_trace_open(path, &t, err, sizeof(err)), 0);
    const struct rs_trace_info *in = rs_trace_info(t);
    ck_assert_uint_eq(in->py_version, 0x030c01f0);
    ck_assert_uint_eq(in->proc_flags, RS_PROC_PYTHON | RS_PROC_PY_SHARED | RS_PROC_PY_STACKS);
    ck_assert_uint_eq(in->minor, RS_TRACE_MINOR);
    ck_assert_str_eq(rs_event_kind_name(RS_EV_PYTHON), "python");
    rs_trace_close(t);
    unlink(path);
}
END_TEST

int main(void)
{
    if (!mkdtemp(dir))
        return 1;
    const TTest *tests[] = {
        roundtrip,
        late_python_record,
        truncated_everywhere,
        bit_flips,
        random_and_odd_files,
        newer_major_refused,
        older_major_refused,
        pumped_chunks,
        no_trailer_and_exclusive_create,
        force_replaces_files_only,
        impossible_allocation_refused,
    };
    int status = rs_check_run("trace", 120, tests, sizeof(tests) / sizeof(tests[0]));
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        status = EXIT_FAILURE;
    return status;
}
