/*
 * Chooses the event clock (include/refscope/clock.h): the invariant TSC when
 * /proc/cpuinfo says the CPU has one, CLOCK_MONOTONIC otherwise. Runs in the
 * shim's constructor, so it reads the file with open/read (no stdio, no
 * allocation) and looks only at the first processor's flags line.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "refscope/clock.h"

/* Nonzero when `word` appears as a whole space-separated token in line[0..n). */
static int has_flag(const char *line, size_t n, const char *word)
{
    size_t wn = strlen(word);
    const char *p = line, *end = line + n;
    while (p < end) {
        const char *hit = memmem(p, (size_t)(end - p), word, wn);
        if (!hit)
            return 0;
        int starts = hit == line || hit[-1] == ' ' || hit[-1] == '\t';
        int ends = hit + wn == end || hit[wn] == ' ' || hit[wn] == '\n';
        if (starts && ends)
            return 1;
        p = hit + wn;
    }
    return 0;
}

uint32_t rs_clock_pick(void)
{
#if defined(__x86_64__)
    char buf[16384];
    size_t got = 0;
    int fd = open("/proc/cpuinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return RS_CLOCK_MONOTONIC_NS;
    while (got < sizeof(buf) - 1) {
        ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;

    const char *flags = memmem(buf, got, "\nflags", 6);
    if (!flags)
        return RS_CLOCK_MONOTONIC_NS;
    const char *eol = memchr(flags + 1, '\n', got - (size_t)(flags + 1 - buf));
    if (!eol)
        return RS_CLOCK_MONOTONIC_NS; /* line cut by the buffer: be safe */
    size_t n = (size_t)(eol - flags);
    if (has_flag(flags, n, "constant_tsc") && has_flag(flags, n, "nonstop_tsc"))
        return RS_CLOCK_TSC;
#endif
    return RS_CLOCK_MONOTONIC_NS;
}
