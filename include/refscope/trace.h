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
 *     Readers refuse a file whose major version is not theirs, saying which
 *     version the file has and which they read. Major 2 (this) changed the
 *     chunk body to version 2; 1.x files are refused. Minor 1 added the
 *     RS_EV_PYTHON record (events.h): a process that became CPython later
 *     (dlopen'd libpython) has its version and flags there, not in the
 *     meta bytes; readers take them at open. Minor 2 added the RS_F_OWN
 *     flag of ALLOC/FREE (events.h): refscope's own Python work, kept out of
 *     the program's figures (a 2.1 reader counts it as the program's).
 *
 *   chunk (struct rs_chunk_header, 32 bytes, then `stored_len` bytes):
 *     magic "RFSC", codec (0 = raw, 1 = zstd), number of records, first
 *     record ordinal, raw (decoded) length, stored length, crc32 over the
 *     stored bytes. A chunk is self-contained: the codec state (previous
 *     values, address model) resets at every chunk, so any chunk decodes
 *     alone and a damaged chunk loses only itself.
 *     The chunk body encoding (columns, delta/varint, address model) is
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
#define RS_TRACE_MAJOR 2u
#define RS_TRACE_MINOR 2u

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
    uint32_t end_reason;      /* enum rs_end_reason (events.h)           */
    uint32_t reserved;
};

/* ---- chunk body ----------------------------------------------------------------
 * (specified by the codec: analyzer/codec.c implements exactly this section)
 *
 * The raw body (after zstd decompression for RS_CODEC_ZSTD) is columnar:
 *
 *   offset 0  u8   body version (2; trace format 1.x used version 1)
 *          1  u8   time_shift: low bits of `time` the writer dropped (0 = exact)
 *          2  u16  reserved, 0
 *          4  u32  records (equals the chunk header's count)
 *          8  u32  stream_len[11]: byte length of streams S0..S10
 *         52  S0 S1 ... S10, back to back; 52 + sum(stream_len) == raw_len
 *
 * Each stream holds the fields of the records that use it, in record order:
 *   S0  op       u8 per record: 0 = the record's head follows in S1; k > 0 =
 *                its head is T[k], the k-th head S1 gave in this chunk
 *   S1  heads    u8 kind, u8 flags, u8 form, pv(thread) per op 0. Only the
 *                first 255 enter T. kind is never EMPTY or CONT; form is 0
 *                for VAR kinds and may carry FORM_REUSE only for ALLOC.
 *   S2  time     a 4-bit code per record, record 2m in the low nibble of byte
 *                m, record 2m+1 in the high one (ceil(records / 2) bytes):
 *                t = zigzag(q - prev_q) when t < 15, else 15 and
 *   S3  time+    pv(t - 15). q = time >> time_shift, prev_q = q of the
 *                previous record (0 at chunk start); readers see q << time_shift.
 *   S4  alloc    ALLOC without FORM_REUSE: ac(addr - last[c])
 *   S5  reuse    ALLOC with FORM_REUSE: pv(zigzag(k - reuse_last[c]))
 *   S6  ref      FREE and OBJ_DESTROY: the reference code v (below)
 *   S7  addr     FREE/OBJ_DESTROY misses: ac(d) (below); OBJ_CREATE:
 *                ac(addr - A[n-1]) (A[n-1] = 0 when n == 0); the fixed kinds
 *                not named here: pv(addr)
 *   S8  size     fixed kinds without FORM_SIZE: pv(size)
 *   S9  stack    fixed kinds without FORM_STACK: pv(stack); VAR kinds: pv(len)
 *   S10 payload  VAR kinds: the payload, len bytes. A VAR record's addr and
 *                size are not stored: as in the ring, they are the first 16
 *                payload bytes (little-endian, zero-padded).
 *
 * pv = prefix varint of a u64: n bytes, n = 1..8, read as a little-endian
 * integer x: its n - 1 lowest bits are 0 and bit n - 1 is 1; the value is
 * x >> n (7n bits). n = 9: a zero byte, then the value as 8 bytes. Writers
 * use the shortest form. The length shows in the first byte, so both sides
 * work with one 8-byte load or store.
 * zigzag(n) = (n << 1) ^ (n >> 63) on int64, differences modulo 2^64.
 * ac(d) = address code of a difference d: zigzag(d >> 4) << 4 | (d & 15),
 * >> arithmetic: an aligned difference costs only its 16-byte units.
 *
 * Heads. form bits: FORM_SIZE (1) the size is not stored, FORM_STACK (2)
 * the stack is not stored, FORM_REUSE (4) see ALLOC. An omitted size or
 * stack is 0, except for ALLOC, where it is the site prediction: both sides
 * keep site[4096] = {stack, size mod 2^32} (all 0 at chunk start) and, over
 * the chunk's ALLOCs, s1/s2 = stack of the previous/second previous ALLOC
 * and z1 = size of the previous ALLOC (0 at chunk start). ALLOC uses
 *   site[h >> 20], h = (s1 * 0x9E3779B1 + s2 * 0x85EBCA77 + z1 * 0xC2B2AE3D)
 *   mod 2^32 (z1 taken mod 2^32), then sets that entry to its own
 *   {stack, size mod 2^32} and shifts s2 = s1, s1 = stack, z1 = size.
 * (Writers omit a size only when it equals the prediction.)
 *
 * Address model. Allocators hand out blocks of one size class in address
 * order and give back the blocks of that class freed last; programs free
 * what they allocated, often in (reverse) allocation order. Both sides
 * keep, per chunk (all zero or empty at chunk start):
 *   A             the allocation list: addresses of the ALLOC and OBJ_CREATE
 *                 records, in record order; n = its length so far.
 *   F             the free list: addresses of the FREE records, in order.
 *   last[c]       per size class, the address of the last ALLOC of class c.
 *   reuse_last[c] per size class, the k of the last FORM_REUSE ALLOC of c.
 *   r             index in A of the last reference (below).
 *   m[0..15]      the last 16 addresses coded as misses, m[0] most recent.
 * size class c = (size + 15) >> 4 for size <= 1024 (0..64), else
 *   64 + the bit length of size (75..128).
 *
 *   ALLOC  without FORM_REUSE: addr = last[c] + d, S4 = ac(d);
 *          with FORM_REUSE: addr = F[k], k = reuse_last[c] + unzigzag(S5),
 *          k < len(F); then reuse_last[c] = k.
 *          Then last[c] = addr and addr is appended to A.
 *   OBJ_CREATE  (S7) then addr is appended to A.
 *   FREE, OBJ_DESTROY  S6 holds v:
 *     v >= 16  a reference: addr = A[j], with w = v - 16 and
 *                j = r + unzigzag(w >> 1)   when w is even,
 *                j = n - 1 - (w >> 1)       when w is odd (recent allocations);
 *              j < n. Then r = j.
 *     v < 16   a miss: addr = m[v] + d, S7 = ac(d). Then m shifts down one
 *              place (m[15] is dropped) and m[0] = addr.
 *   FREE   then addr is appended to F.
 * A writer may code any ALLOC by value, any FREE or OBJ_DESTROY as a miss,
 * and use any j with A[j] == addr or k with F[k] == addr: every choice
 * decodes. (The recorder looks addresses up in a cache of recent ones and
 * takes the shorter code; for a miss it takes the m[i] nearest to addr,
 * lowest i on ties.) A body that breaks a rule above is damaged.
 */

#endif
