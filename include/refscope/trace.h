/*
 * The refscope trace file (.rfs): one file per traced process, written by the
 * recorder, read by every analysis. Byte-level specification; the writer
 * (analyzer/trace_write.c) and the reader (analyzer/trace_read.c) both follow
 * it and nothing else. All integers little-endian.
 *
 *   file   := file_header chunk* [trailer]
 *
 *   file_header (struct rs_file_header, 64 bytes, then `meta_len` bytes):
 *     magic "RFSTRACE", format major/minor, meta_len, crc32 of the meta bytes.
 *     The meta bytes are the RS_EV_PROCESS payload of the process as the shim
 *     wrote it (struct rs_process_info + exe + cmdline): pid, parent pid,
 *     command line, Python version, start time, clock kind.
 *     Readers refuse a file whose major version is newer than theirs, saying
 *     which version the file has and which they read.
 *
 *   chunk (struct rs_chunk_header, 32 bytes, then `stored_len` bytes):
 *     magic "RFSC", codec (0 = raw, 1 = zstd), number of records, first
 *     record ordinal, raw (decoded) length, stored length, crc32 over the
 *     stored bytes. A chunk is self-contained: the codec state (previous
 *     values, address caches) resets at every chunk, so any chunk decodes
 *     alone and a damaged chunk loses only itself.
 *     The chunk body encoding (columns, delta/varint, address caches) is
 *     specified in the "chunk body" section below.
 *
 *   trailer: a chunk with zero records and codec RS_CODEC_TRAILER whose body
 *     is struct rs_trailer. Its absence means the recorder did not finish the
 *     file; readers then warn "truncated" and use every complete chunk.
 *
 * A truncated last chunk (short read or bad crc at end of file) yields a
 * warning and all records before it; a bad crc in the middle is an error
 * unless the reader is asked to skip damaged chunks.
 */
#ifndef REFSCOPE_TRACE_H
#define REFSCOPE_TRACE_H

#include <stdint.h>

#define RS_TRACE_MAGIC "RFSTRACE"
#define RS_TRACE_MAJOR 1u
#define RS_TRACE_MINOR 0u

struct rs_file_header {
    char     magic[8];        /* RS_TRACE_MAGIC, no NUL                  */
    uint16_t major;
    uint16_t minor;
    uint32_t meta_len;        /* bytes of process meta after this header */
    uint32_t meta_crc;        /* crc32 (zlib) of the meta bytes           */
    uint32_t header_len;      /* sizeof(struct rs_file_header)           */
    uint64_t created_real_ns; /* CLOCK_REALTIME when the recorder opened it */
    uint32_t recorder_pid;
    uint32_t flags;
    uint8_t  reserved[24];
};
_Static_assert(sizeof(struct rs_file_header) == 64, "file header is 64 bytes");

#define RS_CHUNK_MAGIC 0x43534652u /* "RFSC" */

enum rs_codec { RS_CODEC_RAW = 0, RS_CODEC_ZSTD = 1, RS_CODEC_TRAILER = 0x7f };

struct rs_chunk_header {
    uint32_t magic;           /* RS_CHUNK_MAGIC                         */
    uint8_t  codec;           /* enum rs_codec                          */
    uint8_t  reserved[3];
    uint32_t records;         /* records in this chunk                  */
    uint32_t raw_len;         /* body length after decompression        */
    uint32_t stored_len;      /* body length in the file                */
    uint32_t crc;             /* crc32 (zlib) of the stored body        */
    uint64_t first_ordinal;   /* ordinal of the chunk's first record    */
};
_Static_assert(sizeof(struct rs_chunk_header) == 32, "chunk header is 32 bytes");

struct rs_trailer {
    uint64_t records;         /* total records in the file              */
    uint64_t chunks;
    uint64_t producer_waits;  /* copied from the ring at the end        */
    uint64_t lost_events;
    uint32_t end_reason;      /* as rs_end_info.reason; 2 = process died without END */
    uint32_t reserved;
};

/* ---- chunk body ----------------------------------------------------------------
 * (specified by the codec: analyzer/codec.c implements exactly this section)
 *
 * The raw body (after zstd decompression for RS_CODEC_ZSTD) is columnar:
 *
 *   offset 0  u8   body version (1)
 *          1  u8   time_shift: low bits of `time` the writer dropped (0 = exact)
 *          2  u16  reserved, 0
 *          4  u32  records (equals the chunk header's count)
 *          8  u32  stream_len[8]: byte length of streams S0..S7
 *         40  S0 S1 ... S7, back to back; 40 + sum(stream_len) == raw_len
 *
 * Record i is field i of every stream it uses, in order:
 *   S0 kind    u8 per record (enum rs_event_kind; never EMPTY or CONT)
 *   S1 flags   u8 per record
 *   S2 thread  varint(thread) per record
 *   S3 time    varint(zigzag(q - prev_q)) per record, q = time >> time_shift,
 *              prev_q = q of the previous record (0 at chunk start). A reader
 *              sees time = q << time_shift.
 *   S4 addr    fixed kinds only: for the address kinds ALLOC, FREE, OBJ_CREATE
 *              and OBJ_DESTROY an address code (below); for the other fixed
 *              kinds varint(addr)
 *   S5 size    fixed kinds only: varint(size)
 *   S6 stack   varint(stack) per record (VAR kinds: the payload length)
 *   S7 payload VAR kinds only: the payload bytes, `stack` of them. A VAR
 *              record's addr and size are not stored: as in the ring, they
 *              are its first 16 payload bytes (little-endian, zero-padded).
 *
 * varint = unsigned LEB128 (7 bits per byte, low group first, high bit =
 * more, at most 10 bytes); zigzag(n) = (n << 1) ^ (n >> 63) on int64, all
 * differences taken modulo 2^64.
 *
 * Address model. Allocators walk pools of one size class and reuse what was
 * just freed; programs free what they allocated a few records ago. So an
 * address is coded as a small difference from one of the last 16 addresses
 * of address kinds, h[0] (most recent) .. h[15], all 0 at chunk start:
 *   code = varint of an unsigned integer of up to 69 bits:
 *     bit 0      aligned: 1 when the difference is a multiple of 16
 *     bits 1..4  i, the history entry the difference is taken from
 *     bits 5..   zigzag(addr - h[i]), divided by 16 (arithmetic shift of
 *                the difference) when aligned
 *   Then h shifts down one place (h[15] is dropped) and h[0] = addr.
 * Writers pick the i with the smallest |addr - h[i]|, the lowest i on ties
 * (any i decodes; this choice compresses best).
 */

#endif
