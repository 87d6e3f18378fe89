/*
 * The chunk codec: turns a run of records (struct rs_slot + VAR payloads)
 * into one self-contained chunk body and back. The byte layout is the
 * "chunk body" section of include/refscope/trace.h; this file only
 * implements it. Compression (zstd) goes on top: chunk_pack.h.
 *
 * Encoder: rs_enc_add() records (or rs_enc_add_fixed() runs of fixed
 * records, the recorder's fast path; both give the same bytes) until
 * rs_enc_full() says the chunk is big enough, then rs_enc_finish() yields
 * the raw body and resets the state.
 * Decoder: rs_dec_init() over a raw body, then rs_dec_next() per record.
 */
#ifndef REFSCOPE_CODEC_H
#define REFSCOPE_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include "refscope/events.h"

#define RS_CODEC_BODY_VERSION 2u
#define RS_CODEC_STREAMS 11u
#define RS_CODEC_HEADS 255u             /* entries of the head table T (trace.h)   */
#define RS_CODEC_SITES_BITS 12u
#define RS_CODEC_SITES (1u << RS_CODEC_SITES_BITS) /* ALLOC stack/size predictions */
#define RS_CODEC_SIZE_CLASSES 129u      /* size classes of the ALLOC address model */
#define RS_CODEC_MISS_HISTORY 16u       /* addresses coded by value (see trace.h)  */
/* A chunk ends at whichever comes first. Big chunks let frees find the
 * allocation they undo in the same chunk (see trace.h, "Address model"):
 * on samples/churn.py 1 Mi records cost ~0.30 B/record, 2 Mi ~0.22, 4 Mi
 * ~0.18, but the recorder's memory grows with them, and beyond 2 Mi its
 * CPU per record got less steady (its buffers crowd the ring out of the
 * shared cache). The raw bound caps a chunk of big payloads. */
#define RS_CODEC_CHUNK_RAW (12u << 20)  /* bytes of raw body                       */
#define RS_CODEC_CHUNK_RECORDS (2u << 20) /* records                               */

struct rs_enc;

/* time_shift: low bits of `time` dropped by the encoder (0 = lossless). */
struct rs_enc *rs_enc_new(unsigned time_shift);
void rs_enc_free(struct rs_enc *e);

/* Append one record. For VAR kinds rec->stack, addr and size are not stored:
 * the decoder derives them from the payload (its length, its first 16 bytes).
 * Returns 0 or -ENOMEM. */
int rs_enc_add(struct rs_enc *e, const struct rs_slot *rec, const void *payload, uint32_t len);

/* Append fixed records: the fast path. Stops early before a VAR kind (add
 * that one with rs_enc_add) and when the chunk reaches
 * RS_CODEC_CHUNK_RECORDS. Returns the number of records added, or -ENOMEM
 * when none could be. */
long rs_enc_add_fixed(struct rs_enc *e, const struct rs_slot *recs, size_t n);

uint32_t rs_enc_records(const struct rs_enc *e);
size_t rs_enc_raw_bytes(const struct rs_enc *e);
int rs_enc_full(const struct rs_enc *e);

/* The body of the records added since the last finish: *body stays valid
 * until the next call on e. Resets the codec state. Returns 0 or -ENOMEM. */
int rs_enc_finish(struct rs_enc *e, const uint8_t **body, size_t *len);

struct rs_dec_head {
    uint8_t kind, flags, form;
    uint16_t thread;
};

struct rs_dec_site {
    uint32_t stack;
    uint32_t size;           /* mod 2^32 */
};

struct rs_dec {
    const uint8_t *cur[RS_CODEC_STREAMS];
    const uint8_t *end[RS_CODEC_STREAMS];
    uint32_t records, done;
    unsigned time_shift;
    uint64_t prev_time;
    /* heads (trace.h) */
    unsigned heads;
    struct rs_dec_head head[RS_CODEC_HEADS];
    uint32_t site_s1, site_s2;
    uint64_t site_z1;
    struct rs_dec_site site[RS_CODEC_SITES];
    /* address model (trace.h) */
    uint64_t class_last[RS_CODEC_SIZE_CLASSES];
    uint64_t reuse_last[RS_CODEC_SIZE_CLASSES];
    uint64_t miss[RS_CODEC_MISS_HISTORY];
    unsigned miss_head;
    uint64_t ref_last;
    uint64_t *alloc_list;        /* A: the chunk's allocated addresses */
    size_t alloc_count, alloc_cap;
    uint64_t *free_list;         /* F: the chunk's freed addresses */
    size_t free_count, free_cap;
};

/* Check the body's framing against `records` and start decoding it. `d`
 * must be zeroed before its first use (struct rs_dec d = {0}); it may then
 * be reused for any number of bodies and keeps its buffer between them.
 * Returns 0 or -EBADMSG. */
int rs_dec_init(struct rs_dec *d, const uint8_t *body, size_t len, uint32_t records);

/* Next record: 1 = *rec filled (VAR payload pointer/length into the body),
 * 0 = all records decoded, -EBADMSG = the body is inconsistent, -ENOMEM. */
int rs_dec_next(struct rs_dec *d, struct rs_slot *rec, const uint8_t **payload, uint32_t *len);

/* Free the decoder's buffer (d can be initialised again afterwards). */
void rs_dec_release(struct rs_dec *d);

#endif
