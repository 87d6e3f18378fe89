/*
 * Trace file writer: header, zstd chunks via the codec, trailer. One writer
 * per file; not thread-safe (the recorder drives all writers from one thread).
 *
 * A full chunk is compressed in steps (rs_trace_pump) while the next one
 * fills: compressing a whole chunk at once would stop the recorder for
 * several ms, long enough for a ring to fall far behind its producer. The pending
 * chunk's body is the encoder's, untouched until the encoder's next finish,
 * so the pending chunk is always completed before that.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "chunk_pack.h"
#include "codec.h"
#include "refscope/clock.h"
#include "trace_write.h"

struct rs_trace_writer {
    int fd;
    int level;
    struct rs_enc *enc;
    uint64_t records;     /* records written in chunks */
    uint64_t chunks;
    uint64_t bytes;
    struct rs_pack *pack;
    uint32_t pending;     /* records of the chunk being packed, 0 = none */
    uint32_t pending_raw;
};

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int rs_trace_path_is_special(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode);
}

int rs_trace_create(const char *path, const struct rs_writer_opts *opts,
                    const void *meta, uint32_t meta_len, struct rs_trace_writer **out)
{
    struct rs_writer_opts defaults = {0};
    struct rs_file_header h;
    int ret;
    if (!opts)
        opts = &defaults;
    struct rs_trace_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->fd = -1;
    w->level = opts->zstd_level ? opts->zstd_level : 1;
    w->enc = rs_enc_new(opts->time_shift);
    w->pack = rs_pack_new();
    if (!w->enc || !w->pack) {
        ret = -ENOMEM;
        goto fail;
    }
    /* -f replaces the file (a new inode, so it is 0600 like any trace), or
     * a symbolic link (not what it points to); never a device, FIFO, socket
     * or directory: those stay, and O_EXCL below answers -EEXIST for them */
    if (opts->force && !rs_trace_path_is_special(path) && unlink(path) < 0 && errno != ENOENT) {
        ret = -errno;
        goto fail;
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        ret = -errno;
        goto fail;
    }
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, RS_TRACE_MAGIC, 8);
    h.major = RS_TRACE_MAJOR;
    h.minor = RS_TRACE_MINOR;
    h.meta_len = meta_len;
    h.meta_crc = (uint32_t)crc32(0, meta, meta_len);
    h.header_len = sizeof(h);
    h.created_real_ns = rs_clock_real_ns();
    h.recorder_pid = (uint32_t)getpid();
    if ((ret = write_all(w->fd, &h, sizeof(h))) < 0 || (ret = write_all(w->fd, meta, meta_len)) < 0)
        goto fail;
    w->bytes = sizeof(h) + meta_len;
    *out = w;
    return 0;
fail:
    rs_trace_abandon(w);
    return ret;
}

static int write_chunk(struct rs_trace_writer *w, uint8_t codec, uint32_t records,
                       uint32_t raw_len, const uint8_t *stored, size_t stored_len)
{
    struct rs_chunk_header ch;
    int ret;
    memset(&ch, 0, sizeof(ch));
    ch.magic = RS_CHUNK_MAGIC;
    ch.codec = codec;
    ch.records = records;
    ch.raw_len = raw_len;
    ch.stored_len = (uint32_t)stored_len;
    ch.crc = (uint32_t)crc32(0, stored, (uInt)stored_len);
    ch.first_ordinal = w->records;
    if ((ret = write_all(w->fd, &ch, sizeof(ch))) < 0 ||
        (ret = write_all(w->fd, stored, stored_len)) < 0)
        return ret;
    w->records += records;
    w->chunks++;
    w->bytes += sizeof(ch) + stored_len;
    return 0;
}

int rs_trace_pump(struct rs_trace_writer *w, size_t budget)
{
    const uint8_t *stored;
    size_t stored_len;
    uint8_t codec;
    if (!w->pending)
        return 0;
    int ret = rs_pack_step(w->pack, budget);
    if (ret <= 0)
        return ret;
    rs_pack_result(w->pack, &codec, &stored, &stored_len);
    ret = write_chunk(w, codec, w->pending, w->pending_raw, stored, stored_len);
    w->pending = 0;
    return ret;
}

/* Close the encoder's chunk and start packing it (the previous one must be
 * written first: its body is about to be replaced). */
static int start_chunk(struct rs_trace_writer *w)
{
    const uint8_t *body;
    size_t raw_len;
    int ret;
    uint32_t records = rs_enc_records(w->enc);
    if (!records)
        return 0;
    if ((ret = rs_trace_pump(w, 0)) < 0 || (ret = rs_enc_finish(w->enc, &body, &raw_len)) < 0 ||
        (ret = rs_pack_start(w->pack, body, raw_len, w->level)) < 0)
        return ret;
    w->pending = records;
    w->pending_raw = (uint32_t)raw_len;
    return 0;
}

int rs_trace_flush(struct rs_trace_writer *w)
{
    int ret = start_chunk(w);
    return ret < 0 ? ret : rs_trace_pump(w, 0);
}

int rs_trace_append(struct rs_trace_writer *w, const struct rs_slot *rec,
                    const void *payload, uint32_t len)
{
    int ret = rs_enc_add(w->enc, rec, payload, len);
    if (ret < 0)
        return ret;
    return rs_enc_full(w->enc) ? start_chunk(w) : 0;
}

int rs_trace_append_fixed(struct rs_trace_writer *w, const struct rs_slot *recs, size_t n)
{
    while (n) {
        long added = rs_enc_add_fixed(w->enc, recs, n);
        if (added < 0)
            return (int)added;
        if (added == 0 && !rs_enc_full(w->enc))
            return -EINVAL; /* a VAR kind */
        recs += added;
        n -= (size_t)added;
        if (rs_enc_full(w->enc)) {
            int ret = start_chunk(w);
            if (ret < 0)
                return ret;
        }
    }
    return 0;
}

int rs_trace_finish(struct rs_trace_writer *w, const struct rs_trailer *trailer)
{
    struct rs_trailer t = *trailer;
    int ret = rs_trace_flush(w);
    if (ret == 0) {
        t.records = w->records;
        t.chunks = w->chunks;
        ret = write_chunk(w, RS_CODEC_TRAILER, 0, sizeof(t), (const uint8_t *)&t, sizeof(t));
    }
    if (close(w->fd) < 0 && ret == 0)
        ret = -errno;
    w->fd = -1;
    rs_trace_abandon(w);
    return ret;
}

void rs_trace_abandon(struct rs_trace_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    rs_enc_free(w->enc);
    rs_pack_free(w->pack);
    free(w);
}

uint64_t rs_trace_writer_records(const struct rs_trace_writer *w)
{
    return w->records + w->pending + rs_enc_records(w->enc);
}

uint64_t rs_trace_writer_bytes(const struct rs_trace_writer *w) { return w->bytes; }
