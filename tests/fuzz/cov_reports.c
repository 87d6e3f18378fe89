/*
 * Coverage-guided fuzzing of the trace reader and every report, with
 * libFuzzer (clang -fsanitize=fuzzer, with AddressSanitizer and UBSan; the
 * Makefile builds it when clang is there). fuzz_reports.c damages traces at
 * random; this one keeps the inputs that reach code no earlier input
 * reached, so it gets deep into the chunk decoder and the analyses.
 *
 * Each input is a trace file. Before it is read, its framing's checksums
 * (the meta crc, every chunk's crc) and a raw chunk's decoded length are
 * made right again, so that mutations reach the decoder instead of stopping
 * at a crc. Seeds should have raw chunks (`fuzz_reports --raw-chunks`):
 * mutated zstd bodies mostly stop at zstd. The input is decoded twice (the
 * second time after a rewind, as two-pass analyses do), then every report
 * runs on it in this process. A report may refuse an input; it must not
 * crash, hang, leak or trip a sanitizer.
 *
 *   cov_reports -close_fd_mask=3 -max_total_time=60 CORPUS_DIR SEED_DIR
 *   cov_reports CRASH_FILE                  (replays one input, with output)
 * (-close_fd_mask=3 silences the reports; libFuzzer and the sanitizers
 * still report on a descriptor of their own.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "refscope/trace.h"
#include "reports.h"
#include "trace_read.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_RECORDS 4000000L /* per pass: an input is at most a few MiB */

static int input_fd = -1;       /* a memfd holding the current input */
static char input_path[64];     /* /proc/self/fd/N of it            */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    input_fd = memfd_create("refscope-fuzz", MFD_CLOEXEC);
    if (input_fd < 0) {
        perror("cov_reports: set-up");
        exit(2);
    }
    snprintf(input_path, sizeof(input_path), "/proc/self/fd/%d", input_fd);
    return 0;
}

/* The meta crc, every chunk's crc, and a raw chunk's raw length, right. */
static void fix_framing(uint8_t *b, size_t n)
{
    struct rs_file_header h;
    if (n < sizeof(h))
        return;
    memcpy(&h, b, sizeof(h));
    size_t off = sizeof(h);
    if (h.meta_len > n - off)
        return;
    h.meta_crc = (uint32_t)crc32(0, b + off, h.meta_len);
    memcpy(b, &h, sizeof(h));
    off += h.meta_len;
    while (n - off >= sizeof(struct rs_chunk_header)) {
        struct rs_chunk_header c;
        memcpy(&c, b + off, sizeof(c));
        if (c.magic != RS_CHUNK_MAGIC)
            return;
        size_t room = n - off - sizeof(c);
        if (c.stored_len > room)
            return; /* a cut last chunk stays cut */
        if (c.codec == RS_CODEC_RAW)
            c.raw_len = c.stored_len;
        c.crc = (uint32_t)crc32(0, b + off + sizeof(c), c.stored_len);
        memcpy(b + off, &c, sizeof(c));
        off += sizeof(c) + c.stored_len;
    }
}

static void read_all(void)
{
    struct rs_trace *t;
    struct rs_event ev;
    char err[512];
    if (rs_trace_open(input_path, &t, err, sizeof(err)) < 0)
        return;
    for (int pass = 0; pass < 2; pass++) {
        long n = 0;
        while (n++ < MAX_RECORDS && rs_trace_next(t, &ev, err, sizeof(err)) > 0)
            ;
        if (rs_trace_rewind(t, err, sizeof(err)) < 0)
            break;
    }
    rs_trace_close(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    fix_framing(copy, size);
    int ok = ftruncate(input_fd, 0) == 0 && pwrite(input_fd, copy, size, 0) == (ssize_t)size;
    free(copy);
    if (!ok)
        return 0;
    read_all();
    for (size_t k = 0; k < NREPORTS; k++)
        run_report(k, input_path, "/dev/null");
    return 0;
}
