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
 */

#endif
