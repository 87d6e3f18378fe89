/*
 * /proc/<pid>/stat and /proc/<pid>/maps, read without allocation or stdio
 * (include/refscope/proc.h). The stat line is "pid (comm) state ppid ...",
 * comm may hold spaces and parentheses, so the fields are counted from the
 * last ')'. Whether a file is mapped at an address: the kernel's
 * PROCMAP_QUERY where it has one, else the maps lines ("start-end perms
 * offset major:minor inode path", read through a fixed buffer, only their
 * first five fields matter), up to a limit.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "refscope/proc.h"

/* field numbers of proc(5), counting pid as 1 */
#define FIELD_STATE   3
#define FIELD_THREADS 20
#define FIELD_START   22

size_t rs_proc_decimal(char *out, uint32_t v)
{
    char digits[10];
    size_t k = 0, n = 0;
    for (uint32_t p = v; p || !k; p /= 10)
        digits[k++] = (char)('0' + p % 10);
    while (k)
        out[n++] = digits[--k];
    out[n] = 0;
    return n;
}

/* Opens /proc/<pid>/<leaf>. Returns the descriptor, -ESRCH when there is no
 * such process, or another negative errno. */
static int open_proc(uint32_t pid, const char *leaf)
{
    char path[40] = "/proc/";
    size_t n = 6 + rs_proc_decimal(path + 6, pid);
    path[n++] = '/';
    while (*leaf && n < sizeof(path) - 1)
        path[n++] = *leaf++;
    path[n] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd >= 0 ? fd : errno == ENOENT ? -ESRCH : -errno;
}

/* Fills buf[*len..cap) from fd as far as it goes. Returns 0 or -errno. */
static int read_more(int fd, char *buf, size_t cap, size_t *len)
{
    while (*len < cap) {
        ssize_t r = read(fd, buf + *len, cap - *len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        *len += (size_t)r;
    }
    return 0;
}

static int read_stat(uint32_t pid, char *buf, size_t cap, size_t *len)
{
    int fd = open_proc(pid, "stat");
    if (fd < 0)
        return fd;
    *len = 0;
    int rc = read_more(fd, buf, cap, len);
    close(fd);
    return rc;
}

int rs_proc_read(uint32_t pid, struct rs_proc_state *st)
{
    char buf[1024];
    size_t len = 0;
    int rc = read_stat(pid, buf, sizeof(buf), &len);
    if (rc < 0)
        return rc;
    size_t i = len;
    while (i > 0 && buf[i - 1] != ')')
        i--;
    if (i == 0)
        return -EPROTO;
    /* buf[i] is the space before field 3 */
    uint64_t value = 0;
    int field = 2, in_field = 0;
    st->state = 0;
    st->threads = 0;
    st->start_ticks = 0;
    for (; i < len && field <= FIELD_START; i++) {
        char c = buf[i];
        if (c == ' ' || c == '\n') {
            if (in_field) {
                if (field == FIELD_THREADS)
                    st->threads = (uint32_t)value;
                else if (field == FIELD_START)
                    st->start_ticks = value;
            }
            in_field = 0;
            continue;
        }
        if (!in_field) {
            in_field = 1;
            field++;
            value = 0;
            if (field == FIELD_STATE)
                st->state = c;
        }
        if (c >= '0' && c <= '9')
            value = value * 10 + (uint64_t)(c - '0');
    }
    if (in_field && field == FIELD_START)
        st->start_ticks = value;
    return st->state && field >= FIELD_START ? 0 : -EPROTO;
}

int rs_proc_alive(uint32_t pid, uint64_t start_ticks)
{
    struct rs_proc_state st;
    int rc = rs_proc_read(pid, &st);
    if (rc == -ESRCH)
        return 0;
    if (rc < 0)
        return rc;
    if (st.start_ticks != start_ticks)
        return 0;
    /* a thread-group leader that exited before its other threads is a
     * zombie too, with those threads still counted */
    if ((st.state == 'Z' || st.state == 'X') && st.threads <= 1)
        return 0;
    return 1;
}

void rs_proc_identify(int sock, struct rs_proc_id *id)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    struct rs_proc_state st;
    id->pid = 0;
    id->start_ticks = 0;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid <= 0)
        return;
    id->pid = (uint32_t)cred.pid;
    if (rs_proc_read(id->pid, &st) == 0)
        id->start_ticks = st.start_ticks;
}

int rs_proc_id_alive(const struct rs_proc_id *id)
{
    if (!id->pid || !id->start_ticks)
        return -ENOENT;
    return rs_proc_alive(id->pid, id->start_ticks);
}

/* Parses a hex or decimal number at *p, moving *p past it. */
static uint64_t parse_number(const char **p, const char *end, unsigned base)
{
    uint64_t v = 0;
    for (; *p < end; (*p)++) {
        char c = **p;
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : base == 16 && c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : base;
        if (d >= base)
            break;
        v = v * base + d;
    }
    return v;
}

/* 1 when a maps line (p..end, no newline) is the mapping of file (dev, ino)
 * that starts at addr. */
static int line_maps(const char *p, const char *end, uint64_t addr, uint64_t dev, uint64_t ino)
{
    if (parse_number(&p, end, 16) != addr)
        return 0;
    for (int field = 0; field < 3; field++) { /* rest of the range, perms, offset */
        while (p < end && *p != ' ')
            p++;
        while (p < end && *p == ' ')
            p++;
    }
    uint64_t ma = parse_number(&p, end, 16);
    if (p >= end || *p++ != ':')
        return 0;
    uint64_t mi = parse_number(&p, end, 16);
    while (p < end && *p == ' ')
        p++;
    return ma == major(dev) && mi == minor(dev) && parse_number(&p, end, 10) == ino && ino != 0;
}

/* rs_proc_maps_scan on an open maps file. */
static int scan_maps(int fd, uint64_t addr, uint64_t dev, uint64_t ino)
{
    char buf[4096];
    size_t len = 0;     /* buf holds the start of a line not yet ended */
    size_t seen = 0;    /* bytes read before buf's */
    int found = 0, any = 0, skip = 0, rc = 0;
    while (!found) {
        if (seen >= RS_PROC_MAPS_SCAN_MAX)
            return -E2BIG;
        if ((rc = read_more(fd, buf, sizeof(buf), &len)) < 0)
            return rc;
        int at_end = len < sizeof(buf);
        any |= len > 0;
        size_t start = 0;
        for (size_t i = 0; i < len && !found; i++) {
            if (buf[i] != '\n')
                continue;
            found = !skip && line_maps(buf + start, buf + i, addr, dev, ino);
            skip = 0;
            start = i + 1;
        }
        if (found || at_end) { /* a last line may lack its newline */
            found = found || (!skip && start < len &&
                              line_maps(buf + start, buf + len, addr, dev, ino));
            break;
        }
        if (start == 0) { /* a line longer than buf: its head decides, the rest is skipped */
            found = !skip && line_maps(buf, buf + len, addr, dev, ino);
            skip = 1;
            start = len;
        }
        memmove(buf, buf + start, len - start);
        len -= start;
        seen += start;
    }
    return found ? 1 : any ? 0 : -ESRCH;
}

/* PROCMAP_QUERY (Linux 6.11, <linux/fs.h>; spelled out here because the
 * headers of older distributions lack it): the mapping that covers an
 * address, found by the kernel in its tree of mappings. */
struct procmap_query {
    uint64_t size;
    uint64_t query_flags;
    uint64_t query_addr;
    uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset;
    uint64_t inode;
    uint32_t dev_major, dev_minor;
    uint32_t vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
#define PROCMAP_QUERY_IOCTL _IOWR('f', 17, struct procmap_query)

/* rs_proc_maps_query on an open maps file. */
static int query_maps(int fd, uint64_t addr, uint64_t dev, uint64_t ino)
{
    struct procmap_query q;
    memset(&q, 0, sizeof(q));
    q.size = sizeof(q);
    q.query_addr = addr; /* no flags: only a mapping that covers addr */
    if (ioctl(fd, PROCMAP_QUERY_IOCTL, &q) < 0)
        return errno == ENOENT ? 0 : -errno; /* ENOENT: nothing there */
    return q.vma_start == addr && q.inode == ino && ino != 0 && q.dev_major == major(dev) &&
           q.dev_minor == minor(dev);
}

enum { WAY_QUERY = 1, WAY_SCAN = 2 };

/* The look-up and/or the scan (when the look-up is not there or not asked). */
static int maps_lookup(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino, int ways)
{
    int fd = open_proc(pid, "maps");
    if (fd < 0)
        return fd;
    int rc = -ENOTTY;
    if (ways & WAY_QUERY)
        rc = query_maps(fd, addr, dev, ino);
    if ((ways & WAY_SCAN) && (rc == -ENOTTY || rc == -EINVAL)) /* a kernel before 6.11 */
        rc = scan_maps(fd, addr, dev, ino);
    close(fd);
    return rc;
}

int rs_proc_maps_file(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino)
{
    return maps_lookup(pid, addr, dev, ino, WAY_QUERY | WAY_SCAN);
}

int rs_proc_maps_query(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino)
{
    return maps_lookup(pid, addr, dev, ino, WAY_QUERY);
}

int rs_proc_maps_scan(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino)
{
    return maps_lookup(pid, addr, dev, ino, WAY_SCAN);
}
