/*
 * Fuzzing the trace reader and every report. Takes seed traces that real
 * traced programs wrote, makes damaged variants of them, and runs every
 * report command on each variant in a child process. This program and the
 * analyzer objects it links are built with AddressSanitizer and
 * UndefinedBehaviorSanitizer (Makefile, "fuzzing"). A report may refuse an
 * input (status 1, one line) but must not crash, hang, trip a sanitizer or
 * exit with any other status. An input that does is kept in the output
 * directory, and `refscope CMD ARGS FILE` (or `fuzz_reports --replay FILE`)
 * reproduces it.
 *
 * Variants are made at two levels:
 *   records: the seed's records are decoded, changed (fields, payload
 *     bytes, kinds, order, deletions, duplicates, a cut) and written again
 *     with the trace writer, so the file is well framed and the damage
 *     reaches the analyses;
 *   bytes: then, for some, the written file is damaged under its framing
 *     (a chunk body stored raw with bytes changed and its crc made right
 *     again, chunk and file header fields, a cut anywhere), so the damage
 *     reaches the decoder.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "chunk_pack.h"
#include "codec.h"
#include "commands.h"
#include "grow.h"
#include "refscope/clock.h"
#include "trace_write.h"
#include "reports.h"

const char *__asan_default_options(void);
const char *__ubsan_default_options(void);
const char *__asan_default_options(void)
{
    return "exitcode=99:allocator_may_return_null=1:detect_leaks=0:malloc_limit_mb=4096";
}
const char *__ubsan_default_options(void) { return "exitcode=99:print_stacktrace=1"; }

#define SAN_EXIT 99       /* a sanitizer report (both options above) */
#define CHILD_SECONDS 60  /* every report on one input, under the sanitizers */

/* rs_grow for this program's own arrays: running out of memory ends it. */
static void grow_or_exit(void *pp, size_t *cap, size_t need, size_t elsize)
{
    if (rs_grow(pp, cap, need, elsize)) {
        fprintf(stderr, "fuzz_reports: out of memory\n");
        exit(2);
    }
}

/* ---- randomness: xorshift64*, seeded per input -------------------------------- */

static uint64_t rng;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }
static int one_in(unsigned n) { return below(n) == 0; }

static uint64_t interesting(uint64_t near)
{
    static const uint64_t v[] = { 0, 1, 2, 7, 16, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff,
                                  0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ull,
                                  0x7fffffffffffffffull, 0x8000000000000000ull, UINT64_MAX };
    switch (below(4)) {
    case 0:
        return near + below(5) - 2;
    case 1:
        return rnd();
    default:
        return v[below(sizeof(v) / sizeof(v[0]))];
    }
}

/* ---- a seed: its meta, its records, its trailer ---------------------------------- */

struct rec {
    struct rs_slot s;
    uint8_t *payload;      /* VAR kinds; owned by the seed or by the variant */
    uint32_t len;
};

struct seed {
    const char *path;
    uint8_t *meta;
    uint32_t meta_len;
    struct rec *recs;
    size_t n;
    struct rs_trailer trailer;
};

static int read_file(const char *path, uint8_t **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !(*data = malloc((size_t)st.st_size + 1))) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, *data + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return 0;
}

static int write_file(const char *path, const uint8_t *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    close(fd);
    return done == len ? 0 : -EIO;
}

/* Decode a whole (undamaged) seed trace. Returns 0 or -1 after a message. */
static int seed_load(struct seed *s, const char *path)
{
    uint8_t *file, *raw = NULL;
    size_t len, cap = 0, cap_recs = 0;
    struct rs_dec d = { 0 };
    struct rs_file_header fh;
    memset(s, 0, sizeof(*s));
    s->path = path;
    if (read_file(path, &file, &len) < 0 || len < sizeof(fh)) {
        fprintf(stderr, "fuzz_reports: cannot read the seed %s\n", path);
        return -1;
    }
    memcpy(&fh, file, sizeof(fh));
    size_t off = sizeof(fh) + fh.meta_len;
    if (memcmp(fh.magic, RS_TRACE_MAGIC, 8) || off > len)
        goto bad;
    s->meta_len = fh.meta_len;
    s->meta = malloc(fh.meta_len + 1);
    memcpy(s->meta, file + sizeof(fh), fh.meta_len);
    while (off + sizeof(struct rs_chunk_header) <= len) {
        struct rs_chunk_header ch;
        memcpy(&ch, file + off, sizeof(ch));
        off += sizeof(ch);
        if (ch.magic != RS_CHUNK_MAGIC || ch.stored_len > len - off)
            goto bad;
        if (ch.codec == RS_CODEC_TRAILER) {
            memcpy(&s->trailer, file + off, sizeof(s->trailer) < ch.stored_len ? sizeof(s->trailer)
                                                                                 : ch.stored_len);
            break;
        }
        if (rs_chunk_unpack(ch.codec, file + off, ch.stored_len, ch.raw_len, &raw, &cap) < 0 ||
            rs_dec_init(&d, raw, ch.raw_len, ch.records) < 0)
            goto bad;
        off += ch.stored_len;
        struct rs_slot r;
        const uint8_t *p;
        uint32_t plen;
        int got;
        while ((got = rs_dec_next(&d, &r, &p, &plen)) == 1) {
            grow_or_exit(&s->recs, &cap_recs, s->n + 1, sizeof(*s->recs));
            struct rec *e = &s->recs[s->n++];
            e->s = r;
            e->len = RS_EV_IS_VAR(r.kind) ? plen : 0;
            e->payload = NULL;
            if (RS_EV_IS_VAR(r.kind)) {
                e->payload = malloc(plen + 1);
                memcpy(e->payload, p, plen);
            }
        }
        if (got < 0)
            goto bad;
    }
    rs_dec_release(&d);
    free(raw);
    free(file);
    return 0;
bad:
    fprintf(stderr, "fuzz_reports: the seed %s is not an undamaged trace\n", path);
    rs_dec_release(&d);
    free(raw);
    free(file);
    return -1;
}

/* ---- record-level variants ---------------------------------------------------- */

#define VAR_KINDS (RS_EV_KIND_MAX + 1 - 0x40)

struct variant {
    struct rec *recs;
    size_t n, cap;
    uint8_t **owned;       /* payloads made for this variant */
    size_t nowned, cap_owned;
    /* where the VAR records of each kind are (before any reordering):
     * payload mutations pick a kind first, so that rare kinds (the
     * process record, snapshots) are hit as often as the stack records
     * that outnumber them */
    size_t *var_at[VAR_KINDS];
    size_t var_n[VAR_KINDS], var_cap[VAR_KINDS];
};

static uint8_t *variant_own(struct variant *v, size_t len)
{
    grow_or_exit(&v->owned, &v->cap_owned, v->nowned + 1, sizeof(*v->owned));
    return v->owned[v->nowned++] = calloc(1, len + 1);
}

static void variant_index(struct variant *v)
{
    memset(v->var_n, 0, sizeof(v->var_n));
    for (size_t i = 0; i < v->n; i++) {
        uint8_t kind = v->recs[i].s.kind;
        if (!RS_EV_IS_VAR(kind) || kind > RS_EV_KIND_MAX)
            continue;
        unsigned k = kind - 0x40u;
        grow_or_exit(&v->var_at[k], &v->var_cap[k], v->var_n[k] + 1, sizeof(size_t));
        v->var_at[k][v->var_n[k]++] = i;
    }
}

static void variant_release(struct variant *v)
{
    for (size_t i = 0; i < v->nowned; i++)
        free(v->owned[i]);
    v->nowned = 0;
    v->n = 0;
}

/* A random VAR record (its index): a kind the input has, then one of its
 * records. v->n when there is none. */
static size_t pick_var(const struct variant *v)
{
    unsigned present[VAR_KINDS], n = 0;
    for (unsigned k = 0; k < VAR_KINDS; k++)
        if (v->var_n[k])
            present[n++] = k;
    if (!n)
        return v->n;
    unsigned k = present[below(n)];
    return v->var_at[k][below(v->var_n[k])];
}

static size_t pick_fixed(const struct variant *v)
{
    for (int tries = 0; tries < 64 && v->n; tries++) {
        size_t i = below(v->n);
        if (!RS_EV_IS_VAR(v->recs[i].s.kind))
            return i;
    }
    return v->n;
}

/* Make record i's payload this variant's own, `len` bytes (kept or zero-filled). */
static void payload_resize(struct variant *v, struct rec *r, uint32_t len)
{
    uint8_t *p = variant_own(v, len);
    memcpy(p, r->payload, r->len < len ? r->len : len);
    r->payload = p;
    r->len = len;
    r->s.stack = len;
}

static void store_le(uint8_t *p, uint64_t x, unsigned bytes)
{
    for (unsigned k = 0; k < bytes; k++)
        p[k] = (uint8_t)(x >> (8 * k));
}

static void mutate_payload(struct variant *v)
{
    size_t i = pick_var(v);
    if (i == v->n)
        return;
    struct rec *r = &v->recs[i];
    switch (below(6)) {
    case 0: /* bit flips */
        payload_resize(v, r, r->len);
        for (unsigned k = 1 + below(4); k-- && r->len;)
            r->payload[below(r->len)] ^= (uint8_t)(1u << below(8));
        break;
    case 1: { /* an integer field */
        static const unsigned widths[] = { 1, 2, 4, 8 };
        unsigned w = widths[below(4)];
        payload_resize(v, r, r->len);
        if (r->len >= w) {
            size_t at = below(r->len - w + 1);
            if (one_in(2))
                at &= ~(size_t)(w - 1);
            store_le(r->payload + at, interesting(r->len), w);
        }
        break;
    }
    case 2: /* cut */
        payload_resize(v, r, (uint32_t)below(r->len + 1));
        break;
    case 3: { /* grow */
        uint32_t old = r->len;
        payload_resize(v, r, old + 1 + (uint32_t)below(64));
        for (uint32_t k = old; k < r->len; k++)
            r->payload[k] = one_in(2) ? 0xff : (uint8_t)rnd();
        break;
    }
    case 4: { /* another record's payload, or part of it, with this kind */
        size_t j = pick_var(v);
        if (j == v->n)
            break;
        const struct rec *o = &v->recs[j];
        uint32_t len = o->len;
        uint8_t *p = variant_own(v, len);
        memcpy(p, o->payload, len);
        r->payload = p;
        r->len = len;
        r->s.stack = len;
        break;
    }
    default: /* another VAR kind: the payload read as a different layout */
        r->s.kind = (uint8_t)(RS_EV_PROCESS + below(RS_EV_NOTE - RS_EV_PROCESS + 1 + 2));
        break;
    }
}

static void mutate_fixed(struct variant *v)
{
    size_t i = pick_fixed(v);
    if (i == v->n)
        return;
    struct rs_slot *s = &v->recs[i].s;
    const struct rs_slot *o = &v->recs[below(v->n)].s;
    switch (below(8)) {
    case 0:
        s->addr = one_in(2) ? o->addr : interesting(s->addr);
        break;
    case 1:
        s->size = one_in(3) ? o->size : interesting(s->size);
        break;
    case 2:
        s->stack = one_in(2) ? o->stack : (uint32_t)interesting(s->stack);
        break;
    case 3: /* another fixed kind, now and then one no reader knows */
        s->kind = (uint8_t)(one_in(8) ? 0x0b + below(0x3f - 0x0b) : 1 + below(RS_EV_LOST));
        break;
    case 4:
        s->flags = (uint8_t)rnd();
        break;
    case 5:
        s->thread = (uint16_t)(one_in(2) ? interesting(s->thread) : below(4));
        break;
    case 6:
        s->time = one_in(2) ? o->time : interesting(s->time);
        break;
    default: /* the same address freed or destroyed twice, or never made */
        s->kind = one_in(2) ? RS_EV_FREE : RS_EV_OBJ_DESTROY;
        s->addr = o->addr;
        break;
    }
}

/* Keep every VAR record but only a window of the fixed ones: a smaller
 * input (faster reports, so more inputs a second) whose heap is
 * inconsistent in a new way. */
static void thin(struct variant *v)
{
    size_t window = 1024 + below(8192), from = below(v->n), kept = 0;
    for (size_t i = 0; i < v->n; i++)
        if (RS_EV_IS_VAR(v->recs[i].s.kind) || (i >= from && i - from < window))
            v->recs[kept++] = v->recs[i];
    v->n = kept;
}

static void reserve(struct variant *v, size_t n)
{
    grow_or_exit(&v->recs, &v->cap, n, sizeof(*v->recs));
}

static void mutate_order(struct variant *v)
{
    if (v->n < 2)
        return;
    size_t i = below(v->n), j = below(v->n);
    switch (below(4)) {
    case 0: { /* delete a run */
        size_t k = 1 + below(one_in(4) ? 256 : 4);
        if (k > v->n - i)
            k = v->n - i;
        memmove(&v->recs[i], &v->recs[i + k], (v->n - i - k) * sizeof(*v->recs));
        v->n -= k;
        break;
    }
    case 1: /* duplicate one */
        reserve(v, v->n + 1);
        memmove(&v->recs[j + 1], &v->recs[j], (v->n - j) * sizeof(*v->recs));
        v->recs[j] = v->recs[i < j ? i : i + 1];
        v->n++;
        break;
    case 2: { /* swap two */
        struct rec t = v->recs[i];
        v->recs[i] = v->recs[j];
        v->recs[j] = t;
        break;
    }
    default: /* a cut, as if the recorder died there */
        v->n = i;
        break;
    }
}

/* ---- writing a variant, then damaging its bytes ---------------------------------- */

static int write_variant(const struct seed *s, struct variant *v, const char *path)
{
    uint8_t *meta = s->meta;
    uint32_t meta_len = s->meta_len;
    uint8_t *meta_copy = NULL;
    if (one_in(10)) {
        meta_copy = malloc(meta_len + 64);
        memcpy(meta_copy, s->meta, meta_len);
        if (one_in(3))
            meta_len = (uint32_t)below(meta_len + 1);
        for (unsigned k = 1 + below(4); k-- && meta_len;)
            meta_copy[below(meta_len)] = one_in(2) ? (uint8_t)rnd() : 0xff;
        meta = meta_copy;
    }
    struct rs_writer_opts opts = { .force = 1, .zstd_level = 1 };
    struct rs_trace_writer *w;
    int ret = rs_trace_create(path, &opts, meta, meta_len, &w);
    free(meta_copy);
    if (ret < 0)
        return ret;
    size_t split = one_in(3) ? 1 + below(v->n + 1) : 0;
    for (size_t i = 0; i < v->n && ret == 0; i++) {
        const struct rec *r = &v->recs[i];
        ret = rs_trace_append(w, &r->s, r->payload, r->len);
        if (split && i % split == split - 1)
            ret = ret ? ret : rs_trace_flush(w);
    }
    if (ret < 0 || one_in(10)) { /* no trailer: the recorder did not finish */
        rs_trace_abandon(w);
        return ret;
    }
    struct rs_trailer t = s->trailer;
    if (one_in(8)) {
        t.lost_events = interesting(t.lost_events);
        t.producer_waits = interesting(t.producer_waits);
        t.end_reason = (uint32_t)below(5);
    }
    return rs_trace_finish(w, &t);
}

/* Offsets of the file's chunk headers (at most max). */
static size_t chunk_offsets(const uint8_t *f, size_t len, size_t *offs, size_t max)
{
    struct rs_file_header fh;
    size_t n = 0;
    if (len < sizeof(fh))
        return 0;
    memcpy(&fh, f, sizeof(fh));
    size_t off = sizeof(fh) + fh.meta_len;
    while (n < max && off + sizeof(struct rs_chunk_header) <= len) {
        struct rs_chunk_header ch;
        memcpy(&ch, f + off, sizeof(ch));
        offs[n++] = off;
        off += sizeof(ch) + ch.stored_len;
    }
    return n;
}

/* Damage the raw body of one chunk and store it raw with a right crc. */
static int damage_body(uint8_t **f, size_t *len, size_t off)
{
    struct rs_chunk_header ch;
    memcpy(&ch, *f + off, sizeof(ch));
    if (ch.codec == RS_CODEC_TRAILER || ch.stored_len > *len - off - sizeof(ch))
        return 0;
    uint8_t *raw = NULL;
    size_t cap = 0;
    if (rs_chunk_unpack(ch.codec, *f + off + sizeof(ch), ch.stored_len, ch.raw_len, &raw, &cap) < 0) {
        free(raw);
        return 0;
    }
    size_t n = ch.raw_len;
    for (unsigned k = 1 + below(6); k-- && n;) {
        /* the body's header (lengths of the streams) half the time */
        size_t at = one_in(2) && n > 52 ? below(52) : below(n);
        if (one_in(2))
            raw[at] ^= (uint8_t)(1u << below(8));
        else if (at + 4 <= n)
            store_le(raw + at, interesting(0), 4);
        else
            raw[at] = (uint8_t)rnd();
    }
    size_t rest = *len - off - sizeof(ch) - ch.stored_len;
    uint8_t *g = malloc(off + sizeof(ch) + n + rest + 1);
    memcpy(g, *f, off);
    ch.codec = RS_CODEC_RAW;
    ch.raw_len = ch.stored_len = (uint32_t)n;
    ch.crc = (uint32_t)crc32(0, raw, (uInt)n);
    memcpy(g + off, &ch, sizeof(ch));
    memcpy(g + off + sizeof(ch), raw, n);
    memcpy(g + off + sizeof(ch) + n, *f + *len - rest, rest);
    free(raw);
    free(*f);
    *f = g;
    *len = off + sizeof(ch) + n + rest;
    return 1;
}

static void damage_bytes(const char *path)
{
    uint8_t *f;
    size_t len, offs[64];
    if (read_file(path, &f, &len) < 0)
        return;
    size_t n = chunk_offsets(f, len, offs, 64);
    switch (below(n ? 5 : 2)) {
    case 0: /* a cut anywhere */
        len = below(len + 1);
        break;
    case 1: { /* a file header field */
        static const size_t fields[] = { 8, 10, 12, 16, 20 };
        size_t at = fields[below(5)];
        if (at + 4 <= len)
            store_le(f + at, interesting(0), at < 12 ? 2 : 4);
        break;
    }
    case 2: { /* a chunk header field (its crc covers only the body) */
        static const size_t fields[] = { 4, 8, 12, 16, 24 }; /* codec, records, lengths, first */
        size_t field = fields[below(5)], at = offs[below(n)] + field;
        if (at + 8 <= len)
            store_le(f + at, interesting(0), field == 24 ? 8 : 4);
        break;
    }
    case 3: { /* a byte of a stored body, crc left wrong */
        size_t at = offs[below(n)] + sizeof(struct rs_chunk_header);
        if (at < len)
            f[at + below(len - at)] ^= (uint8_t)(1 + below(255));
        break;
    }
    default:
        damage_body(&f, &len, offs[below(n)]);
        break;
    }
    write_file(path, f, len);
    free(f);
}

/* ---- running the reports ---------------------------------------------------------- */

/* What the child tells the parent (shared memory): the report it is in and
 * each report's status. */
struct child_log {
    volatile int current;
    volatile int status[NREPORTS];     /* -1: not run on this input */
};

static void child_run(struct child_log *log, const char *trace, const char *dot, const char *errpath)
{
    alarm(CHILD_SECONDS);
    if (!freopen("/dev/null", "w", stdout) || !freopen(errpath, "w", stderr))
        _exit(3);
    setvbuf(stderr, NULL, _IOLBF, 0);
    for (size_t k = 0; k < NREPORTS; k++) {
        if (log->status[k] < 0)
            continue;
        log->current = (int)k;
        fprintf(stderr, "== refscope %s\n", reports[k][0]);
        log->status[k] = run_report(k, trace, dot);
    }
    log->current = -1;
    _exit(0);
}

static int verbose; /* -v: every input's stderr, not only a failure's */

static void show_tail(const char *errpath)
{
    uint8_t *text;
    size_t len;
    if (read_file(errpath, &text, &len) < 0)
        return;
    size_t start = len > 6000 ? len - 6000 : 0;
    fprintf(stderr, "---- its stderr (tail) ----\n%.*s\n----\n", (int)(len - start), (char *)text + start);
    free(text);
}

static void report_argv(char *buf, size_t cap, size_t k, const char *file)
{
    size_t at = (size_t)snprintf(buf, cap, "refscope");
    for (size_t a = 0; a < MAX_ARGS && reports[k][a] && at < cap; a++) {
        const char *w = reports[k][a];
        at += (size_t)snprintf(buf + at, cap - at, " %s", !strcmp(w, "TRACE") ? file
                                                         : !strcmp(w, "DOT") ? "/tmp/refscope-fuzz.out" : w);
    }
}

/* Run every report on `trace`. Returns 0 when each exited 0 or 1; else keeps
 * the input as DIR/failure-N.rfs, says what failed, and returns 1. */
static int check_input(struct child_log *log, const char *dir, const char *trace, unsigned per_input,
                       unsigned *failures, unsigned *refused)
{
    char dot[4096], errpath[4096];
    snprintf(dot, sizeof(dot), "%s/scratch.out", dir);
    snprintf(errpath, sizeof(errpath), "%s/child.err", dir);
    log->current = -2;
    for (size_t k = 0; k < NREPORTS; k++)
        log->status[k] = per_input && per_input < NREPORTS ? -1 : 0;
    for (unsigned k = 0; per_input && per_input < NREPORTS && k < per_input; k++)
        log->status[below(NREPORTS)] = 0;
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "fuzz_reports: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0)
        child_run(log, trace, dot, errpath);
    int ws;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
        ;
    const char *what = NULL;
    char why[64] = "";
    if (WIFSIGNALED(ws)) {
        what = WTERMSIG(ws) == SIGALRM ? "hung" : "crashed";
        snprintf(why, sizeof(why), " (signal %d)", WTERMSIG(ws));
    } else if (WEXITSTATUS(ws) == SAN_EXIT) {
        what = "tripped a sanitizer";
    } else if (WEXITSTATUS(ws) != 0) {
        what = "failed";
        snprintf(why, sizeof(why), " (status %d)", WEXITSTATUS(ws));
    } else {
        for (size_t k = 0; k < NREPORTS; k++)
            if (log->status[k] > 1) {
                log->current = (int)k;
                what = "exited with an unexpected status";
                snprintf(why, sizeof(why), " (%d)", log->status[k]);
                break;
            }
    }
    if (!what) {
        if (verbose)
            show_tail(errpath);
        for (size_t k = 0; k < NREPORTS; k++)
            if (log->status[k] == 1) {
                ++*refused;
                break;
            }
        return 0;
    }
    char kept[4096], cmd[8192];
    snprintf(kept, sizeof(kept), "%s/failure-%u.rfs", dir, ++*failures);
    uint8_t *data;
    size_t len;
    if (read_file(trace, &data, &len) == 0) {
        write_file(kept, data, len);
        free(data);
    }
    if (log->current >= 0)
        report_argv(cmd, sizeof(cmd), (size_t)log->current, kept);
    else
        snprintf(cmd, sizeof(cmd), "the child, outside any report, on %s", kept);
    fprintf(stderr, "fuzz_reports: %s %s%s\n", cmd, what, why);
    show_tail(errpath);
    return 1;
}

/* `--raw-chunks IN OUT`: IN with every zstd chunk stored raw, the seed form
 * for the coverage-guided fuzzer (cov_reports.c), whose mutations would
 * otherwise stop at zstd's decoder. Returns 0, or 1 with a line on stderr. */
static int raw_chunks(const char *in, const char *out)
{
    uint8_t *f, *g = NULL, *raw = NULL;
    size_t len, glen = 0, gcap = 0, rawcap = 0, offs[4096];
    struct rs_file_header h;
    int rc = 1;
    if (read_file(in, &f, &len) < 0)
        return 1;
    size_t n = chunk_offsets(f, len, offs, 4096);
    if (len < sizeof(h) || n == 4096) {
        fprintf(stderr, "fuzz_reports: %s: not a trace this tool can rewrite\n", in);
        goto out;
    }
    memcpy(&h, f, sizeof(h));
    size_t head = n ? offs[0] : len;
    grow_or_exit(&g, &gcap, head, 1);
    memcpy(g, f, head);
    glen = head;
    for (size_t i = 0; i < n; i++) {
        struct rs_chunk_header ch;
        memcpy(&ch, f + offs[i], sizeof(ch));
        size_t end = i + 1 < n ? offs[i + 1] : len;
        const uint8_t *body = f + offs[i] + sizeof(ch);
        size_t body_len = end - offs[i] - sizeof(ch);
        if (ch.codec == RS_CODEC_ZSTD && ch.stored_len <= body_len &&
            rs_chunk_unpack(ch.codec, body, ch.stored_len, ch.raw_len, &raw, &rawcap) == 0) {
            ch.codec = RS_CODEC_RAW;
            ch.stored_len = ch.raw_len;
            ch.crc = (uint32_t)crc32(0, raw, (uInt)ch.raw_len);
            body = raw;
            body_len = ch.raw_len;
        }
        grow_or_exit(&g, &gcap, glen + sizeof(ch) + body_len, 1);
        memcpy(g + glen, &ch, sizeof(ch));
        memcpy(g + glen + sizeof(ch), body, body_len);
        glen += sizeof(ch) + body_len;
    }
    rc = write_file(out, g, glen) < 0;
out:
    free(f);
    free(g);
    free(raw);
    return rc;
}

static double now_s(void) { return (double)rs_clock_mono_ns() / 1e9; }

static void usage(void)
{
    fprintf(stderr, "usage: fuzz_reports -o DIR [-n INPUTS] [-t SECONDS] [-s SEED] [-r REPORTS] [-v] SEED.rfs...\n"
                    "       (-r: reports run on each input, picked at random; 0 = all of them)\n"
                    "       fuzz_reports --replay FILE.rfs   (every report, in this process)\n"
                    "       fuzz_reports --raw-chunks IN.rfs OUT.rfs   (zstd chunks stored raw)\n");
}

static int replay(const char *file)
{
    int worst = 0;
    for (size_t k = 0; k < NREPORTS; k++) {
        fprintf(stderr, "== refscope %s\n", reports[k][0]);
        int st = run_report(k, file, "/dev/null");
        fprintf(stderr, "   status %d\n", st);
        if (st != 0 && st != 1)
            worst = 1;
    }
    return worst;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    unsigned long inputs = 0, seconds = 0, per_input = 3;
    uint64_t seed = (uint64_t)time(NULL);
    int a = 1;
    if (argc == 3 && !strcmp(argv[1], "--replay"))
        return replay(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "--raw-chunks"))
        return raw_chunks(argv[2], argv[3]);
    for (; a + 1 < argc && argv[a][0] == '-'; a += 2) {
        if (!strcmp(argv[a], "-o"))
            dir = argv[a + 1];
        else if (!strcmp(argv[a], "-n"))
            inputs = strtoul(argv[a + 1], NULL, 10);
        else if (!strcmp(argv[a], "-t"))
            seconds = strtoul(argv[a + 1], NULL, 10);
        else if (!strcmp(argv[a], "-v")) {
            verbose = 1;
            a--;
        } else if (!strcmp(argv[a], "-r"))
            per_input = strtoul(argv[a + 1], NULL, 10);
        else if (!strcmp(argv[a], "-s"))
            seed = strtoull(argv[a + 1], NULL, 10);
        else
            break;
    }
    if (!dir || a >= argc || (!inputs && !seconds)) {
        usage();
        return 2;
    }
    size_t nseeds = (size_t)(argc - a);
    struct seed *seeds = calloc(nseeds, sizeof(*seeds));
    for (size_t i = 0; i < nseeds; i++)
        if (seed_load(&seeds[i], argv[a + i]) < 0)
            return 2;
    struct child_log *log = mmap(NULL, sizeof(*log), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (log == MAP_FAILED) {
        fprintf(stderr, "fuzz_reports: mmap: %s\n", strerror(errno));
        return 2;
    }
    char trace[4096];
    snprintf(trace, sizeof(trace), "%s/input.rfs", dir);
    struct variant v = { 0 };
    unsigned failures = 0, refused = 0, byte_level = 0, max_failures = 20;
    unsigned long done = 0;
    double start = now_s();
    while ((!inputs || done < inputs) && (!seconds || now_s() - start < (double)seconds)) {
        rng = (seed ^ (0x9E3779B97F4A7C15ull * (done + 1))) | 1;
        const struct seed *s = &seeds[below(nseeds)];
        reserve(&v, s->n);
        memcpy(v.recs, s->recs, s->n * sizeof(*v.recs));
        v.n = s->n;
        if (one_in(2))
            thin(&v);
        variant_index(&v);
        unsigned reorder = 0;
        for (unsigned k = 1 + below(one_in(4) ? 32 : 4); k--;) {
            unsigned what = (unsigned)below(10);
            if (what < 5)
                mutate_payload(&v);
            else if (what < 9)
                mutate_fixed(&v);
            else
                reorder++; /* last: the index above holds until then */
        }
        while (reorder--)
            mutate_order(&v);
        if (write_variant(s, &v, trace) == 0 && one_in(3)) {
            damage_bytes(trace);
            byte_level++;
        }
        variant_release(&v);
        done++;
        if (check_input(log, dir, trace, (unsigned)per_input, &failures, &refused) < 0)
            return 2;
        if (failures >= max_failures)
            break;
    }
    printf("fuzz_reports: %lu inputs (%u damaged under the framing), %lu of the %zu reports on each, "
           "in %.0f s, seed %llu: %u failures; %u inputs refused by some report\n",
           done, byte_level, per_input && per_input < NREPORTS ? per_input : NREPORTS, NREPORTS,
           now_s() - start, (unsigned long long)seed, failures, refused);
    return failures ? 1 : 0;
}
