/*
 * The compression layer of a chunk (include/refscope/trace.h, the chunk's
 * codec): zstd over the raw body the codec built, or the body as it is when
 * zstd cannot shrink it; in steps, so that the recorder can keep draining
 * rings meanwhile.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include "chunk_pack.h"
#include "refscope/trace.h"

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

struct rs_pack {
    ZSTD_CCtx *cctx;
    const uint8_t *raw;
    size_t raw_len, pos;
    uint8_t *out;
    size_t out_cap, out_len;
    int done, failed;
};

struct rs_pack *rs_pack_new(void)
{
    struct rs_pack *p = calloc(1, sizeof(*p));
    if (p && !(p->cctx = ZSTD_createCCtx())) {
        free(p);
        p = NULL;
    }
    return p;
}

void rs_pack_free(struct rs_pack *p)
{
    if (!p)
        return;
    ZSTD_freeCCtx(p->cctx);
    free(p->out);
    free(p);
}

int rs_pack_start(struct rs_pack *p, const uint8_t *raw, size_t raw_len, int level)
{
    size_t bound = ZSTD_compressBound(raw_len);
    if (grow(&p->out, &p->out_cap, bound > raw_len ? bound : raw_len) < 0)
        return -ENOMEM;
    p->raw = raw;
    p->raw_len = raw_len;
    p->pos = p->out_len = 0;
    p->done = 0;
    /* a zstd failure is not the trace's: the chunk is then stored raw */
    p->failed = ZSTD_isError(ZSTD_CCtx_reset(p->cctx, ZSTD_reset_session_and_parameters)) ||
                ZSTD_isError(ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_compressionLevel, level)) ||
                ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(p->cctx, raw_len));
    return 0;
}

int rs_pack_step(struct rs_pack *p, size_t budget)
{
    while (!p->done && !p->failed) {
        size_t take = p->raw_len - p->pos;
        if (budget && take > budget)
            take = budget;
        int last = p->pos + take == p->raw_len;
        ZSTD_inBuffer in = {p->raw + p->pos, take, 0};
        ZSTD_outBuffer out = {p->out, p->out_cap, p->out_len};
        size_t left = ZSTD_compressStream2(p->cctx, &out, &in, last ? ZSTD_e_end : ZSTD_e_continue);
        p->pos += in.pos;
        p->out_len = out.pos;
        if (ZSTD_isError(left) || (out.pos == out.size && left)) {
            p->failed = 1; /* the output holds the bound: should not happen */
            break;
        }
        if (last && left == 0)
            p->done = 1;
        else if (budget && !last)
            return 0;
    }
    if (p->failed || p->out_len >= p->raw_len) {
        p->failed = 1; /* store the body raw */
        p->done = 1;
    }
    return 1;
}

void rs_pack_result(const struct rs_pack *p, uint8_t *codec, const uint8_t **stored,
                    size_t *stored_len)
{
    *codec = p->failed ? RS_CODEC_RAW : RS_CODEC_ZSTD;
    *stored = p->failed ? p->raw : p->out;
    *stored_len = p->failed ? p->raw_len : p->out_len;
}

int rs_chunk_unpack(uint8_t codec, const uint8_t *stored, size_t stored_len,
                    size_t raw_len, uint8_t **out, size_t *cap)
{
    if (grow(out, cap, raw_len ? raw_len : 1) < 0)
        return -ENOMEM;
    if (codec == RS_CODEC_RAW) {
        if (stored_len != raw_len)
            return -EBADMSG;
        memcpy(*out, stored, raw_len);
        return 0;
    }
    if (codec != RS_CODEC_ZSTD)
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
