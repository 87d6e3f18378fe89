/*
 * Chunk body codec: the columnar, delta + LEB128 + address-history encoding
 * specified in the "chunk body" section of include/refscope/trace.h, and the
 * zstd layer on top. Records go into eight growable column buffers; a chunk
 * body is their concatenation behind a 40-byte table. State (previous time,
 * address history) resets at every chunk.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include "codec.h"

_Static_assert(RS_CODEC_ADDR_CACHE == 16, "encode_addr keys carry a 4-bit index");

#define BODY_HEADER_BYTES (8u + 4u * RS_CODEC_STREAMS)

enum { S_KIND, S_FLAGS, S_THREAD, S_TIME, S_ADDR, S_SIZE, S_STACK, S_PAYLOAD };

struct column {
    uint8_t *data;
    size_t len, cap;
};

struct rs_enc {
    struct column col[RS_CODEC_STREAMS];
    struct column body;
    uint32_t records;
    unsigned time_shift;
    uint64_t prev_q;
    uint64_t hist[RS_CODEC_ADDR_CACHE]; /* circular: h[i] = hist[(head - i) % 16] */
    unsigned head;
    unsigned room;           /* records every fixed-size column has space for */
};

#define ROOM_BATCH 4096u     /* records reserved at a time */
#define MAX_FIELD 10u        /* bytes of the longest varint */

static inline uint64_t zigzag(uint64_t d) { return (d << 1) ^ (uint64_t)((int64_t)d >> 63); }
static inline uint64_t unzigzag(uint64_t z) { return (z >> 1) ^ (0 - (z & 1)); }

static inline int is_addr_kind(uint8_t kind)
{
    return kind == RS_EV_ALLOC || kind == RS_EV_FREE || kind == RS_EV_OBJ_CREATE ||
           kind == RS_EV_OBJ_DESTROY;
}

static int column_reserve(struct column *c, size_t more)
{
    if (c->len + more <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + more)
        cap *= 2;
    uint8_t *p = realloc(c->data, cap);
    if (!p)
        return -ENOMEM;
    c->data = p;
    c->cap = cap;
    return 0;
}

/* Callers reserve 10 bytes first. */
static inline void put_varint128(struct column *c, unsigned __int128 v)
{
    uint8_t *p = c->data + c->len;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    c->len = (size_t)(p - c->data);
}

static inline void put_varint(struct column *c, uint64_t v)
{
    uint8_t *p = c->data + c->len;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    c->len = (size_t)(p - c->data);
}

struct rs_enc *rs_enc_new(unsigned time_shift)
{
    struct rs_enc *e = calloc(1, sizeof(*e));
    if (e)
        e->time_shift = time_shift < 63 ? time_shift : 63;
    return e;
}

void rs_enc_free(struct rs_enc *e)
{
    if (!e)
        return;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++)
        free(e->col[i].data);
    free(e->body.data);
    free(e);
}

uint32_t rs_enc_records(const struct rs_enc *e) { return e->records; }

size_t rs_enc_raw_bytes(const struct rs_enc *e)
{
    size_t n = BODY_HEADER_BYTES;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++)
        n += e->col[i].len;
    return n;
}

int rs_enc_full(const struct rs_enc *e)
{
    if (e->records & 255) /* the raw size moves slowly: look every 256 records */
        return 0;
    return e->records >= RS_CODEC_CHUNK_RECORDS || rs_enc_raw_bytes(e) >= RS_CODEC_CHUNK_RAW;
}

/* Pick the history entry nearest to addr; the code carries its index and
 * the difference (see "Address model" in trace.h). */
static unsigned __int128 encode_addr(struct rs_enc *e, uint64_t addr)
{
    const unsigned mask = RS_CODEC_ADDR_CACHE - 1;
    uint64_t k0 = UINT64_MAX, k1 = UINT64_MAX, k2 = UINT64_MAX, k3 = UINT64_MAX;
#define ADDR_KEY(i) ({                                                      \
        uint64_t d_ = addr - e->hist[(e->head - (i)) & mask];                 \
        uint64_t dist_ = (int64_t)d_ < 0 ? 0 - d_ : d_;                       \
        dist_ = dist_ < (1ull << 59) ? dist_ : (1ull << 59) - 1;              \
        dist_ << 4 | (i); })
#define ADDR_MIN(k, i) do { uint64_t key_ = ADDR_KEY(i); k = key_ < k ? key_ : k; } while (0)
    for (unsigned i = 0; i < RS_CODEC_ADDR_CACHE; i += 4) {
        ADDR_MIN(k0, i);
        ADDR_MIN(k1, i + 1);
        ADDR_MIN(k2, i + 2);
        ADDR_MIN(k3, i + 3);
    }
#undef ADDR_MIN
#undef ADDR_KEY
    uint64_t k01 = k0 < k1 ? k0 : k1, k23 = k2 < k3 ? k2 : k3;
    unsigned best = (unsigned)((k01 < k23 ? k01 : k23) & mask);
    uint64_t d = addr - e->hist[(e->head - best) & mask];
    unsigned __int128 code = (d & 15) == 0
        ? ((unsigned __int128)zigzag((uint64_t)((int64_t)d >> 4)) << 5) | (best << 1) | 1
        : ((unsigned __int128)zigzag(d) << 5) | (best << 1);
    e->head = (e->head + 1) & mask;
    e->hist[e->head] = addr;
    return code;
}

int rs_enc_add(struct rs_enc *e, const struct rs_slot *rec, const void *payload, uint32_t len)
{
    int var = RS_EV_IS_VAR(rec->kind);
    if (__builtin_expect(e->room == 0, 0)) {
        for (unsigned i = 0; i < S_PAYLOAD; i++)
            if (column_reserve(&e->col[i], ROOM_BATCH * MAX_FIELD) < 0)
                return -ENOMEM;
        e->room = ROOM_BATCH;
    }
    if (var && column_reserve(&e->col[S_PAYLOAD], len) < 0)
        return -ENOMEM;
    e->room--;
    e->col[S_KIND].data[e->col[S_KIND].len++] = rec->kind;
    e->col[S_FLAGS].data[e->col[S_FLAGS].len++] = rec->flags;
    put_varint(&e->col[S_THREAD], rec->thread);
    uint64_t q = rec->time >> e->time_shift;
    put_varint(&e->col[S_TIME], zigzag(q - e->prev_q));
    e->prev_q = q;
    if (var) {
        put_varint(&e->col[S_STACK], len);
        if (len)
            memcpy(e->col[S_PAYLOAD].data + e->col[S_PAYLOAD].len, payload, len);
        e->col[S_PAYLOAD].len += len;
    } else {
        if (is_addr_kind(rec->kind))
            put_varint128(&e->col[S_ADDR], encode_addr(e, rec->addr));
        else
            put_varint(&e->col[S_ADDR], rec->addr);
        put_varint(&e->col[S_SIZE], rec->size);
        put_varint(&e->col[S_STACK], rec->stack);
    }
    e->records++;
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
    size_t total = rs_enc_raw_bytes(e);
    e->body.len = 0;
    if (column_reserve(&e->body, total) < 0)
        return -ENOMEM;
    uint8_t *p = e->body.data;
    p[0] = RS_CODEC_BODY_VERSION;
    p[1] = (uint8_t)e->time_shift;
    p[2] = p[3] = 0;
    put_u32(p + 4, e->records);
    size_t off = BODY_HEADER_BYTES;
    for (unsigned i = 0; i < RS_CODEC_STREAMS; i++) {
        put_u32(p + 8 + 4 * i, (uint32_t)e->col[i].len);
        if (e->col[i].len)
            memcpy(p + off, e->col[i].data, e->col[i].len);
        off += e->col[i].len;
        e->col[i].len = 0;
    }
    e->body.len = total;
    e->records = 0;
    e->prev_q = 0;
    e->room = 0;
    e->head = 0;
    memset(e->hist, 0, sizeof(e->hist));
    *body = e->body.data;
    *len = total;
    return 0;
}

/* ---- decoder ----------------------------------------------------------------------- */

int rs_dec_init(struct rs_dec *d, const uint8_t *body, size_t len, uint32_t records)
{
    memset(d, 0, sizeof(*d));
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
    /* fixed-width columns must hold exactly one byte per record */
    if ((size_t)(d->end[S_KIND] - d->cur[S_KIND]) != records ||
        (size_t)(d->end[S_FLAGS] - d->cur[S_FLAGS]) != records)
        return -EBADMSG;
    return 0;
}

static inline int get_varint(struct rs_dec *d, unsigned s, uint64_t *out)
{
    const uint8_t *p = d->cur[s], *end = d->end[s];
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (p == end)
            return -EBADMSG;
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            d->cur[s] = p;
            *out = v;
            return 0;
        }
    }
    return -EBADMSG;
}

static int get_varint128(struct rs_dec *d, unsigned s, unsigned __int128 *out)
{
    const uint8_t *p = d->cur[s], *end = d->end[s];
    unsigned __int128 v = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (p == end)
            return -EBADMSG;
        uint8_t b = *p++;
        v |= (unsigned __int128)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            d->cur[s] = p;
            *out = v;
            return 0;
        }
    }
    return -EBADMSG;
}

static void decode_addr(struct rs_dec *d, unsigned __int128 code, uint64_t *addr)
{
    const unsigned mask = RS_CODEC_ADDR_CACHE - 1;
    unsigned i = (unsigned)(code >> 1) & mask;
    uint64_t delta = unzigzag((uint64_t)(code >> 5));
    uint64_t a = d->hist[(d->head - i) & mask] + ((code & 1) ? delta << 4 : delta);
    d->head = (d->head + 1) & mask;
    d->hist[d->head] = a;
    *addr = a;
}

int rs_dec_next(struct rs_dec *d, struct rs_slot *rec, const uint8_t **payload, uint32_t *len)
{
    uint64_t thread, dt, addr = 0, size = 0, stack;
    if (d->done == d->records)
        return 0;
    uint8_t kind = *d->cur[S_KIND]++;
    uint8_t flags = *d->cur[S_FLAGS]++;
    int var = RS_EV_IS_VAR(kind);
    if (kind == RS_EV_EMPTY || kind == RS_EV_CONT || kind > RS_EV_KIND_MAX)
        return -EBADMSG;
    if (get_varint(d, S_THREAD, &thread) || thread > UINT16_MAX || get_varint(d, S_TIME, &dt))
        return -EBADMSG;
    if (is_addr_kind(kind)) {
        unsigned __int128 code;
        if (get_varint128(d, S_ADDR, &code))
            return -EBADMSG;
        decode_addr(d, code, &addr);
    } else if (!var && get_varint(d, S_ADDR, &addr)) {
        return -EBADMSG;
    }
    if (!var && get_varint(d, S_SIZE, &size))
        return -EBADMSG;
    if (get_varint(d, S_STACK, &stack) || stack > UINT32_MAX)
        return -EBADMSG;
    d->prev_time += unzigzag(dt);
    rec->kind = kind;
    rec->flags = flags;
    rec->thread = (uint16_t)thread;
    rec->stack = (uint32_t)stack;
    rec->time = d->prev_time << d->time_shift;
    rec->addr = addr;
    rec->size = size;
    *payload = NULL;
    *len = 0;
    if (var) {
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
        /* every column must be consumed exactly */
        for (unsigned i = 0; i < RS_CODEC_STREAMS; i++)
            if (d->cur[i] != d->end[i])
                return -EBADMSG;
    }
    return 1;
}

/* ---- zstd layer --------------------------------------------------------------------- */

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (*cap >= need && *buf)
        return 0;
    uint8_t *p = realloc(*buf, need);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = need;
    return 0;
}

int rs_chunk_pack(const uint8_t *raw, size_t raw_len, int level,
                  uint8_t **out, size_t *cap, uint8_t *codec, size_t *stored_len)
{
    static __thread ZSTD_CCtx *cctx;
    size_t bound = ZSTD_compressBound(raw_len);
    if (grow(out, cap, bound > raw_len ? bound : raw_len) < 0)
        return -ENOMEM;
    if (!cctx)
        cctx = ZSTD_createCCtx();
    if (cctx) {
        size_t n = ZSTD_compressCCtx(cctx, *out, *cap, raw, raw_len, level);
        if (!ZSTD_isError(n) && n < raw_len) {
            *codec = 1; /* RS_CODEC_ZSTD */
            *stored_len = n;
            return 0;
        }
    }
    memcpy(*out, raw, raw_len);
    *codec = 0; /* RS_CODEC_RAW */
    *stored_len = raw_len;
    return 0;
}

int rs_chunk_unpack(uint8_t codec, const uint8_t *stored, size_t stored_len,
                    size_t raw_len, uint8_t **out, size_t *cap)
{
    if (grow(out, cap, raw_len ? raw_len : 1) < 0)
        return -ENOMEM;
    if (codec == 0) {
        if (stored_len != raw_len)
            return -EBADMSG;
        memcpy(*out, stored, raw_len);
        return 0;
    }
    if (codec != 1)
        return -ENOTSUP;
    static __thread ZSTD_DCtx *dctx;
    if (!dctx)
        dctx = ZSTD_createDCtx();
    if (!dctx)
        return -ENOMEM;
    size_t n = ZSTD_decompressDCtx(dctx, *out, raw_len, stored, stored_len);
    if (ZSTD_isError(n) || n != raw_len)
        return -EBADMSG;
    return 0;
}
