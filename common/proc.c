/*
 * /proc/<pid>/stat, read without allocation (include/refscope/proc.h): the
 * line is "pid (comm) state ppid ...", comm may hold spaces and parentheses,
 * so the fields are counted from the last ')'.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "refscope/proc.h"

/* field numbers of proc(5), counting pid as 1 */
#define FIELD_STATE   3
#define FIELD_THREADS 20
#define FIELD_START   22

static int read_stat(uint32_t pid, char *buf, size_t cap, size_t *len)
{
    char path[32] = "/proc/";
    size_t n = 6;
    char digits[12];
    int k = 0;
    for (uint32_t p = pid; p || !k; p /= 10)
        digits[k++] = (char)('0' + p % 10);
    while (k)
        path[n++] = digits[--k];
    const char *tail = "/stat";
    while (*tail)
        path[n++] = *tail++;
    path[n] = 0;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ESRCH : -errno;
    size_t got = 0;
    int rc = 0;
    while (got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = errno == ESRCH ? -ESRCH : -errno;
            break;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *len = got;
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

uint32_t rs_proc_peer(int sock)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid <= 0)
        return 0;
    return (uint32_t)cred.pid;
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
