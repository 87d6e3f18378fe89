/*
 * Compressing chunk bodies (the chunk header's codec, include/refscope/
 * trace.h): zstd, or the raw body when zstd does not shrink it. The writer
 * packs, the reader unpacks; the body itself is codec.h's.
 */
#ifndef REFSCOPE_CHUNK_PACK_H
#define REFSCOPE_CHUNK_PACK_H

#include <stddef.h>
#include <stdint.h>

/* Compress a raw body with zstd at `level`, in steps so that a caller can
 * do other work between them (the recorder keeps draining rings while a
 * chunk is compressed): rs_pack_start(), then rs_pack_step() until it
 * returns 1, then rs_pack_result(). `raw` must stay valid and unchanged
 * until then. A pack is reused for any number of bodies. */
struct rs_pack;
struct rs_pack *rs_pack_new(void);
void rs_pack_free(struct rs_pack *p);

/* Returns 0 or -ENOMEM. */
int rs_pack_start(struct rs_pack *p, const uint8_t *raw, size_t raw_len, int level);

/* Compress up to `budget` more input bytes (0: all of it). Returns 1 when
 * the chunk is packed (a zstd failure packs it raw), 0 when work remains. */
int rs_pack_step(struct rs_pack *p, size_t budget);

/* After rs_pack_step returned 1: the codec (RS_CODEC_RAW when zstd did not
 * shrink the body) and the stored bytes, valid until the next start. */
void rs_pack_result(const struct rs_pack *p, uint8_t *codec, const uint8_t **stored,
                    size_t *stored_len);

/* Decompress a stored chunk body of `codec` into exactly raw_len bytes at *out
 * (grown as needed). Returns 0, -EBADMSG on corrupt data, -ENOTSUP for an
 * unknown codec, -ENOMEM. */
int rs_chunk_unpack(uint8_t codec, const uint8_t *stored, size_t stored_len,
                    size_t raw_len, uint8_t **out, size_t *cap);

#endif
