/*
 * Trace reader (analyzer/trace_read.h): checks the file header, indexes the
 * chunks in one verifying pre-pass (crc, decompression, decoding, clock
 * pairs, END record, trailer), then hands out records in order with times
 * converted from clock ticks to ns since process start by interpolating the
 * RS_EV_CLOCK pairs. The pre-pass is what lets a truncated or damaged file be
 * judged once, at open, and lets early records use clock pairs written later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "chunk_pack.h"
#include "codec.h"
#include "grow.h"
#include "trace_read.h"

struct chunk_ref {
    uint64_t offset;      /* of the chunk header */
    struct rs_chunk_header h;
};

struct clock_pair {
    uint64_t ticks, ns;
};

struct rs_trace {
    int fd;
    char *path;
    uint64_t file_size;
    struct rs_trace_info info;
    char *exe, *cmdline;
    uint32_t clock_kind;
    uint64_t start_mono_ns, start_ticks;
    struct clock_pair *pairs;
    size_t npairs, pairs_cap;
    size_t seg;            /* cached interpolation segment */
    struct chunk_ref *chunks;
    size_t nchunks, chunks_cap;
    /* iteration */
    size_t next_chunk;
    int in_chunk;
    struct rs_dec dec;
    uint64_t ordinal;
    uint8_t *stored, *raw;
    size_t stored_cap, raw_cap;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int read_at(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    size_t done = 0;
    *got = 0; /* also on error: errno is positive, but the compiler cannot know */
    while (done < len) {
        ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (*buf && *cap >= need)
        return 0;
    uint8_t *p = realloc(*buf, need ? need : 1);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = need;
    return 0;
}

/* ---- clock -------------------------------------------------------------------------- */

static int add_pair(struct rs_trace *t, uint64_t ticks, uint64_t ns)
{
    if (t->npairs == t->pairs_cap) {
        size_t cap = t->pairs_cap ? 2 * t->pairs_cap : 16;
        struct clock_pair *p = realloc(t->pairs, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        t->pairs = p;
        t->pairs_cap = cap;
    }
    t->pairs[t->npairs++] = (struct clock_pair){ticks, ns};
    return 0;
}

static int pair_cmp(const void *a, const void *b)
{
    const struct clock_pair *x = a, *y = b;
    return x->ticks < y->ticks ? -1 : x->ticks > y->ticks;
}

static void sort_pairs(struct rs_trace *t)
{
    size_t n = 0;
    rs_sort(t->pairs, t->npairs, sizeof(*t->pairs), pair_cmp);
    for (size_t i = 0; i < t->npairs; i++)
        if (n == 0 || t->pairs[i].ticks != t->pairs[n - 1].ticks)
            t->pairs[n++] = t->pairs[i];
    t->npairs = n;
}

/* Monotonic ns for `ticks`, by interpolation (extrapolation at the ends). */
static uint64_t ticks_to_mono(struct rs_trace *t, uint64_t ticks)
{
    if (t->clock_kind != RS_CLOCK_TSC)
        return ticks;
    if (t->npairs == 0)
        return t->start_mono_ns;
    if (t->npairs == 1) /* no rate known: 1 tick = 1 ns */
        return t->pairs[0].ns + (ticks - t->pairs[0].ticks);
    size_t s = t->seg;
    if (s + 1 >= t->npairs)
        s = 0;
    if (!(ticks >= t->pairs[s].ticks && ticks < t->pairs[s + 1].ticks)) {
        size_t lo = 0, hi = t->npairs - 1; /* find the last pair with .ticks <= ticks */
        while (lo + 1 < hi) {
            size_t mid = (lo + hi) / 2;
            if (t->pairs[mid].ticks <= ticks)
                lo = mid;
            else
                hi = mid;
        }
        s = lo;
        t->seg = s;
    }
    const struct clock_pair *a = &t->pairs[s], *b = &t->pairs[s + 1];
    double rate = (double)(int64_t)(b->ns - a->ns) / (double)(b->ticks - a->ticks);
    double d = (double)(int64_t)(ticks - a->ticks) * rate;
    /* damaged clock records can make it anything (even NaN): keep the
     * conversion defined; the result is then only as wrong as they are */
    if (!(d >= -9.2e18 && d <= 9.2e18))
        d = d > 0 ? 9.2e18 : d < 0 ? -9.2e18 : 0;
    return a->ns + (uint64_t)(int64_t)d;
}

static uint64_t ticks_to_ns(struct rs_trace *t, uint64_t ticks)
{
    uint64_t mono = ticks_to_mono(t, ticks);
    return mono > t->start_mono_ns ? mono - t->start_mono_ns : 0;
}

/* ---- header --------------------------------------------------------------------------- */

static char *copy_str(const uint8_t **p, const uint8_t *end, int nul_to_space)
{
    if (end - *p < 2)
        return NULL;
    uint16_t n = (uint16_t)((*p)[0] | (*p)[1] << 8);
    *p += 2;
    if (end - *p < n)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    memcpy(s, *p, n);
    s[n] = 0;
    *p += n;
    while (nul_to_space && n > 0 && s[n - 1] == 0)
        n--;
    for (uint16_t i = 0; nul_to_space && i < n; i++)
        if (s[i] == 0)
            s[i] = ' ';
    s[n] = 0;
    return s;
}

static int read_header(struct rs_trace *t, uint64_t *data_off, char *err, size_t errlen)
{
    struct rs_file_header h;
    struct rs_process_info pi;
    size_t got;
    uint8_t *meta = NULL;
    int ret = read_at(t->fd, &h, sizeof(h), 0, &got);
    if (ret < 0) {
        set_err(err, errlen, "%s: %s", t->path, strerror(-ret));
        return ret;
    }
    if (got < 8 || memcmp(h.magic, RS_TRACE_MAGIC, 8)) {
        set_err(err, errlen, "%s: not a refscope trace", t->path);
        return -EPROTO;
    }
    if (got < sizeof(h)) {
        set_err(err, errlen, "%s: truncated trace header", t->path);
        return -EPROTO;
    }
    if (h.major > RS_TRACE_MAJOR) {
        set_err(err, errlen, "%s: trace format %u.%u is newer than this refscope (reads %u.x)",
                t->path, h.major, h.minor, RS_TRACE_MAJOR);
        return -EPROTONOSUPPORT;
    }
    if (h.major < RS_TRACE_MAJOR) {
        set_err(err, errlen, "%s: trace format %u.%u is older than this refscope reads (%u.x); "
                "record it again", t->path, h.major, h.minor, RS_TRACE_MAJOR);
        return -EPROTONOSUPPORT;
    }
    if (h.header_len < sizeof(h) || h.header_len > 4096 || h.meta_len < sizeof(pi) ||
        h.meta_len > (1u << 20)) {
        set_err(err, errlen, "%s: damaged trace header", t->path);
        return -EPROTO;
    }
    meta = malloc(h.meta_len);
    if (!meta)
        return -ENOMEM;
    ret = read_at(t->fd, meta, h.meta_len, h.header_len, &got);
    if (ret < 0 || got < h.meta_len || (uint32_t)crc32(0, meta, h.meta_len) != h.meta_crc) {
        set_err(err, errlen, "%s: damaged trace header (process information)", t->path);
        ret = -EPROTO;
        goto out;
    }
    memcpy(&pi, meta, sizeof(pi));
    const uint8_t *p = meta + sizeof(pi), *end = meta + h.meta_len;
    t->exe = copy_str(&p, end, 0);
    t->cmdline = t->exe ? copy_str(&p, end, 1) : NULL;
    if (!t->exe || !t->cmdline) {
        set_err(err, errlen, "%s: damaged trace header (process strings)", t->path);
        ret = -EPROTO;
        goto out;
    }
    t->info.major = h.major;
    t->info.minor = h.minor;
    t->info.pid = pi.pid;
    t->info.ppid = pi.ppid;
    t->info.py_version = pi.py_version;
    t->info.proc_flags = pi.flags;
    t->info.start_real_ns = pi.start_real_ns;
    t->info.exe = t->exe;
    t->info.cmdline = t->cmdline;
    t->clock_kind = pi.clock_kind;
    t->start_mono_ns = pi.start_mono_ns;
    t->start_ticks = pi.start_ticks;
    if (t->clock_kind == RS_CLOCK_TSC)
        ret = add_pair(t, pi.start_ticks, pi.start_mono_ns);
    *data_off = (uint64_t)h.header_len + h.meta_len;
out:
    free(meta);
    return ret;
}

/* ---- chunks ----------------------------------------------------------------------------- */

static int load_chunk(struct rs_trace *t, const struct chunk_ref *c)
{
    size_t got;
    int ret = grow(&t->stored, &t->stored_cap, c->h.stored_len);
    if (ret < 0)
        return ret;
    ret = read_at(t->fd, t->stored, c->h.stored_len, c->offset + sizeof(c->h), &got);
    if (ret < 0)
        return ret;
    if (got < c->h.stored_len)
        return -ENODATA;
    if ((uint32_t)crc32(0, t->stored, c->h.stored_len) != c->h.crc)
        return -EBADMSG;
    ret = rs_chunk_unpack(c->h.codec, t->stored, c->h.stored_len, c->h.raw_len, &t->raw, &t->raw_cap);
    if (ret < 0)
        return ret;
    return rs_dec_init(&t->dec, t->raw, c->h.raw_len, c->h.records);
}

/* Pre-pass over one data chunk: clock pairs, END info, last time. */
static int scan_chunk(struct rs_trace *t, uint64_t *max_ticks, int *have_ticks, uint64_t *end_mono)
{
    struct rs_slot rec;
    const uint8_t *payload;
    uint32_t len;
    int r;
    while ((r = rs_dec_next(&t->dec, &rec, &payload, &len)) == 1) {
        if (rec.kind == RS_EV_CLOCK) {
            if (t->clock_kind == RS_CLOCK_TSC && add_pair(t, rec.time, rec.addr) < 0)
                return -ENOMEM;
            continue;
        }
        if (rec.kind == RS_EV_PYTHON && len >= sizeof(struct rs_python_info)) {
            /* a libpython loaded later: the process is that interpreter */
            struct rs_python_info p;
            memcpy(&p, payload, sizeof(p));
            t->info.py_version = p.py_version;
            t->info.proc_flags = p.flags;
        }
        if (rec.kind == RS_EV_END && len >= sizeof(struct rs_end_info)) {
            struct rs_end_info e;
            memcpy(&e, payload, sizeof(e));
            t->info.producer_waits = e.producer_waits;
            t->info.lost_events = e.lost_events;
            *end_mono = e.end_mono_ns;
        }
        if (!*have_ticks || (int64_t)(rec.time - *max_ticks) > 0)
            *max_ticks = rec.time;
        *have_ticks = 1;
    }
    return r;
}

static int push_chunk(struct rs_trace *t, uint64_t off, const struct rs_chunk_header *h)
{
    if (t->nchunks == t->chunks_cap) {
        size_t cap = t->chunks_cap ? 2 * t->chunks_cap : 64;
        struct chunk_ref *p = realloc(t->chunks, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        t->chunks = p;
        t->chunks_cap = cap;
    }
    t->chunks[t->nchunks].offset = off;
    t->chunks[t->nchunks].h = *h;
    t->nchunks++;
    return 0;
}

static int prescan(struct rs_trace *t, uint64_t off, char *err, size_t errlen)
{
    uint64_t max_ticks = 0, end_mono = 0, expect_ordinal = 0;
    int have_ticks = 0, ret;
    for (;;) {
        struct rs_chunk_header h;
        size_t got;
        if (off >= t->file_size)
            break;
        if ((ret = read_at(t->fd, &h, sizeof(h), off, &got)) < 0) {
            set_err(err, errlen, "%s: %s", t->path, strerror(-ret));
            return ret;
        }
        if (got < sizeof(h)) {
            t->info.truncated = 1;
            break;
        }
        if (h.magic != RS_CHUNK_MAGIC) {
            set_err(err, errlen, "%s: damaged chunk header at offset %llu", t->path,
                    (unsigned long long)off);
            return -EBADMSG;
        }
        uint64_t next = off + sizeof(h) + h.stored_len;
        int last = next >= t->file_size;
        if (next > t->file_size) {
            t->info.truncated = 1;
            break;
        }
        if (h.codec == RS_CODEC_TRAILER) {
            struct rs_trailer tr;
            if (h.stored_len != sizeof(tr) || h.raw_len != sizeof(tr) ||
                read_at(t->fd, &tr, sizeof(tr), off + sizeof(h), &got) < 0 || got != sizeof(tr) ||
                (uint32_t)crc32(0, (const uint8_t *)&tr, sizeof(tr)) != h.crc) {
                if (last) {
                    t->info.truncated = 1;
                    break;
                }
                set_err(err, errlen, "%s: damaged trailer at offset %llu", t->path,
                        (unsigned long long)off);
                return -EBADMSG;
            }
            t->info.has_trailer = 1;
            t->info.producer_waits = tr.producer_waits;
            t->info.lost_events = tr.lost_events;
            t->info.end_reason = tr.end_reason;
            break;
        }
        struct chunk_ref ref = {off, h};
        ret = h.first_ordinal == expect_ordinal ? load_chunk(t, &ref) : -EBADMSG;
        if (ret == 0)
            ret = scan_chunk(t, &max_ticks, &have_ticks, &end_mono);
        if (ret == -ENOMEM) {
            set_err(err, errlen, "%s: out of memory", t->path);
            return ret;
        }
        if (ret < 0) {
            if (last) {
                t->info.truncated = 1;
                break;
            }
            set_err(err, errlen, "%s: damaged chunk at offset %llu (%s)", t->path,
                    (unsigned long long)off, ret == -EBADMSG ? "checksum or encoding mismatch"
                    : ret == -ENOTSUP ? "unknown codec" : strerror(-ret));
            return -EBADMSG;
        }
        if ((ret = push_chunk(t, off, &h)) < 0)
            return ret;
        expect_ordinal += h.records;
        off = next;
    }
    sort_pairs(t);
    t->info.end_ns = have_ticks ? ticks_to_ns(t, max_ticks) : 0;
    if (end_mono > t->start_mono_ns && end_mono - t->start_mono_ns > t->info.end_ns)
        t->info.end_ns = end_mono - t->start_mono_ns;
    return 0;
}

/* ---- API ----------------------------------------------------------------------------------- */

int rs_trace_open(const char *path, struct rs_trace **out, char *err, size_t errlen)
{
    struct stat st;
    uint64_t data_off = 0;
    int ret;
    struct rs_trace *t = calloc(1, sizeof(*t));
    if (!t || !(t->path = strdup(path))) {
        free(t);
        set_err(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    t->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (t->fd < 0) {
        ret = -errno;
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(t->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        ret = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        set_err(err, errlen, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        goto fail;
    }
    t->file_size = (uint64_t)st.st_size;
    if ((ret = read_header(t, &data_off, err, errlen)) < 0)
        goto fail;
    if ((ret = prescan(t, data_off, err, errlen)) < 0)
        goto fail;
    *out = t;
    return 0;
fail:
    rs_trace_close(t);
    return ret;
}

const struct rs_trace_info *rs_trace_info(const struct rs_trace *t) { return &t->info; }

int rs_trace_next(struct rs_trace *t, struct rs_event *ev, char *err, size_t errlen)
{
    struct rs_slot rec;
    const uint8_t *payload;
    uint32_t len;
    for (;;) {
        if (t->in_chunk) {
            int r = rs_dec_next(&t->dec, &rec, &payload, &len);
            if (r == 1 && rs_slot_impossible(&rec)) {
                set_err(err, errlen, "%s: damaged record %llu (an allocation of %llu bytes)", t->path,
                        (unsigned long long)t->ordinal, (unsigned long long)rec.size);
                return -EBADMSG;
            }
            if (r == 1) {
                ev->ordinal = t->ordinal++;
                ev->kind = rec.kind;
                ev->flags = rec.flags;
                ev->thread = rec.thread;
                ev->stack = RS_EV_IS_VAR(rec.kind) ? 0 : rec.stack;
                ev->time_ns = ticks_to_ns(t, rec.time);
                ev->addr = rec.addr;
                ev->size = rec.size;
                ev->payload = payload;
                ev->payload_len = len;
                return 1;
            }
            if (r < 0) {
                set_err(err, errlen, "%s: damaged chunk (decoding failed)", t->path);
                return r;
            }
            t->in_chunk = 0;
        }
        if (t->next_chunk >= t->nchunks)
            return 0;
        const struct chunk_ref *c = &t->chunks[t->next_chunk++];
        int ret = load_chunk(t, c);
        if (ret < 0) {
            set_err(err, errlen, "%s: chunk at offset %llu changed or unreadable: %s", t->path,
                    (unsigned long long)c->offset, strerror(-ret));
            return ret;
        }
        t->ordinal = c->h.first_ordinal;
        t->in_chunk = 1;
    }
}

int rs_trace_rewind(struct rs_trace *t, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    t->next_chunk = 0;
    t->in_chunk = 0;
    t->ordinal = 0;
    return 0;
}

static const char *const kind_names[RS_EV_KIND_MAX + 1] = {
    [RS_EV_ALLOC] = "alloc", [RS_EV_FREE] = "free", [RS_EV_THREAD_EXIT] = "thread_exit",
    [RS_EV_CLOCK] = "clock", [RS_EV_ALLOCATOR_WRAPPED] = "allocator_wrapped",
    [RS_EV_OBJ_CREATE] = "obj_create", [RS_EV_OBJ_DESTROY] = "obj_destroy",
    [RS_EV_GC_START] = "gc_start", [RS_EV_GC_STOP] = "gc_stop", [RS_EV_LOST] = "lost",
    [RS_EV_PROCESS] = "process", [RS_EV_THREAD] = "thread", [RS_EV_END] = "end",
    [RS_EV_PY_CODE] = "py_code", [RS_EV_PY_STACK] = "py_stack", [RS_EV_NATIVE_STACK] = "native_stack",
    [RS_EV_MODULE_MAP] = "module_map", [RS_EV_PY_TYPE] = "py_type", [RS_EV_GC_INFO] = "gc_info",
    [RS_EV_SNAPSHOT] = "snapshot", [RS_EV_NOTE] = "note", [RS_EV_PYTHON] = "python",
};

const char *rs_event_kind_name(uint8_t kind)
{
    return kind <= RS_EV_KIND_MAX ? kind_names[kind] : NULL;
}

void rs_trace_record_error(char *err, size_t errlen, const char *path, const struct rs_event *ev, int ret)
{
    if (ret != -EPROTO) {
        set_err(err, errlen, "%s", ret == -ENOMEM ? "out of memory" : strerror(-ret));
        return;
    }
    const char *name = rs_event_kind_name(ev->kind);
    set_err(err, errlen, "%s: malformed %s record at ordinal %llu (the trace is damaged)", path,
            name ? name : "unknown", (unsigned long long)ev->ordinal);
}

void rs_trace_close(struct rs_trace *t)
{
    if (!t)
        return;
    if (t->fd >= 0)
        close(t->fd);
    free(t->path);
    free(t->exe);
    free(t->cmdline);
    free(t->pairs);
    free(t->chunks);
    free(t->stored);
    free(t->raw);
    rs_dec_release(&t->dec);
    free(t);
}
