/*
 * The chunk codec: turns a run of records (struct rs_slot + VAR payloads)
 * into one self-contained chunk body and back. The byte layout is the
 * "chunk body" section of include/refscope/trace.h; this file only
 * implements it. Compression (zstd) is applied on top by rs_chunk_pack.
 *
 * Encoder: rs_enc_add() records until rs_enc_full() says the chunk is big
 * enough, then rs_enc_finish() yields the raw body and resets the state.
 * Decoder: rs_dec_init() over a raw body, then rs_dec_next() per record.
 */
#ifndef REFSCOPE_CODEC_H
#define REFSCOPE_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include "refscope/events.h"

#define RS_CODEC_BODY_VERSION 1u
#define RS_CODEC_STREAMS 8u
#define RS_CODEC_ADDR_CACHE 16u         /* address history entries (see trace.h) */
#define RS_CODEC_CHUNK_RAW (2u << 20)   /* flush a chunk at ~2 MiB of raw body     */
#define RS_CODEC_CHUNK_RECORDS (1u << 20) /* ... or at this many records          */

struct rs_enc;

/* time_shift: low bits of `time` dropped by the encoder (0 = lossless). */
struct rs_enc *rs_enc_new(unsigned time_shift);
void rs_enc_free(struct rs_enc *e);

/* Append one record. For VAR kinds rec->stack, addr and size are not stored:
 * the decoder derives them from the payload (its length, its first 16 bytes).
 * Returns 0 or -ENOMEM. */
int rs_enc_add(struct rs_enc *e, const struct rs_slot *rec, const void *payload, uint32_t len);

uint32_t rs_enc_records(const struct rs_enc *e);
size_t rs_enc_raw_bytes(const struct rs_enc *e);
int rs_enc_full(const struct rs_enc *e);

/* The body of the records added since the last finish: *body stays valid
 * until the next call on e. Resets the codec state. Returns 0 or -ENOMEM. */
int rs_enc_finish(struct rs_enc *e, const uint8_t **body, size_t *len);

struct rs_dec {
    const uint8_t *cur[RS_CODEC_STREAMS];
    const uint8_t *end[RS_CODEC_STREAMS];
    uint32_t records, done;
    unsigned time_shift;
    uint64_t prev_time;
    uint16_t prev_thread;
    uint64_t hist[RS_CODEC_ADDR_CACHE]; /* circular address history */
    unsigned head;
};

/* Check the body's framing against `records`. Returns 0 or -EBADMSG. */
int rs_dec_init(struct rs_dec *d, const uint8_t *body, size_t len, uint32_t records);

/* Next record: 1 = *rec filled (VAR payload pointer/length into the body),
 * 0 = all records decoded, -EBADMSG = the body is inconsistent. */
int rs_dec_next(struct rs_dec *d, struct rs_slot *rec, const uint8_t **payload, uint32_t *len);

/* ---- compression on top of the body ----------------------------------------------- */

/* Compress `raw` with zstd at `level` into a buffer owned by the caller
 * (*out, *cap grown with realloc). Falls back to RS_CODEC_RAW when zstd does
 * not shrink it. Returns 0 and sets *codec and *stored_len, or a negative errno. */
int rs_chunk_pack(const uint8_t *raw, size_t raw_len, int level,
                  uint8_t **out, size_t *cap, uint8_t *codec, size_t *stored_len);

/* Decompress a stored chunk body of `codec` into exactly raw_len bytes at *out
 * (grown as needed). Returns 0, -EBADMSG on corrupt data, -ENOTSUP for an
 * unknown codec, -ENOMEM. */
int rs_chunk_unpack(uint8_t codec, const uint8_t *stored, size_t stored_len,
                    size_t raw_len, uint8_t **out, size_t *cap);

#endif
