/*
 * Keeps the shim's recorder socket open while the program manages its file
 * descriptors. Daemons, servers and process launchers close every
 * descriptor they did not open (os.closerange, close_range, closefrom, a
 * loop of close) and dup2 onto numbers they think are free; the recorder
 * would see the socket close, take the program for dead and end its trace.
 * So close, close_range and closefrom pass over the kept descriptor, and
 * dup2/dup3 onto it move it out of the way first. It also lives at a high
 * number (rs_fdkeep_adopt), away from the low ones programs expect to get.
 *
 * Safe anywhere close() is: the real functions are resolved by
 * rs_fdkeep_resolve (constructor); before that, or if one is missing, the
 * raw system call stands in. No allocation, no locks.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fdkeep.h"
#include "shim.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* The lowest number a kept descriptor moves to (when the limit allows). */
#define KEEP_FLOOR 900

static int *kept;  /* the shim's variable holding the descriptor; NULL = none */
static int (*real_close)(int);
static int (*real_close_range)(unsigned, unsigned, int);
static void (*real_closefrom)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);

void rs_fdkeep_resolve(void)
{
    real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
    real_close_range = (int (*)(unsigned, unsigned, int))dlsym(RTLD_NEXT, "close_range");
    real_closefrom = (void (*)(int))dlsym(RTLD_NEXT, "closefrom");
    real_dup2 = (int (*)(int, int))dlsym(RTLD_NEXT, "dup2");
    real_dup3 = (int (*)(int, int, int))dlsym(RTLD_NEXT, "dup3");
}

static int kept_fd(void)
{
    int *k = __atomic_load_n(&kept, __ATOMIC_ACQUIRE);
    return k ? __atomic_load_n(k, __ATOMIC_ACQUIRE) : -1;
}

static int do_close(int fd)
{
    return real_close ? real_close(fd) : (int)syscall(SYS_close, fd);
}

static int do_close_range(unsigned first, unsigned last, int flags)
{
    return real_close_range ? real_close_range(first, last, flags)
                            : (int)syscall(SYS_close_range, first, last, flags);
}

/* A copy of fd at KEEP_FLOOR or above (close-on-exec), or -1. */
static int dup_high(int fd)
{
    int floor = KEEP_FLOOR;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)KEEP_FLOOR + 64)
        floor = (int)(rl.rlim_cur * 3 / 4);
    if (fd >= floor)
        return -1;
    return fcntl(fd, F_DUPFD_CLOEXEC, floor);
}

int rs_fdkeep_adopt(int *fd)
{
    int high = dup_high(*fd);
    if (high >= 0) {
        do_close(*fd);
        *fd = high;
    }
    __atomic_store_n(&kept, fd, __ATOMIC_RELEASE);
    return *fd;
}

void rs_fdkeep_release(void)
{
    __atomic_store_n(&kept, NULL, __ATOMIC_RELEASE);
}

/* dup2/dup3 are about to replace the kept descriptor: move it first. A
 * thread of the shim that read the old number just before keeps using it
 * for a moment; the shim only polls and writes the socket, and a wrong
 * number makes the write fail, never the program. */
static int move_kept(int fd)
{
    int *k = __atomic_load_n(&kept, __ATOMIC_ACQUIRE);
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, fd + 1);
    if (!k || moved < 0)
        return 0;
    __atomic_store_n(k, moved, __ATOMIC_RELEASE);
    return 1;
}

RS_EXPORT int close(int fd)
{
    if (fd >= 0 && fd == kept_fd())
        return 0; /* stays open: it is the trace's, not the program's */
    return do_close(fd);
}

RS_EXPORT int close_range(unsigned first, unsigned last, int flags)
{
    int keep = kept_fd();
    if (keep < 0 || (unsigned)keep < first || (unsigned)keep > last || (flags & CLOSE_RANGE_CLOEXEC))
        return do_close_range(first, last, flags); /* the socket is close-on-exec already */
    int rc = 0;
    if ((unsigned)keep > first)
        rc = do_close_range(first, (unsigned)keep - 1, flags);
    if (rc == 0 && (unsigned)keep < last)
        rc = do_close_range((unsigned)keep + 1, last, flags);
    return rc;
}

RS_EXPORT void closefrom(int lowfd)
{
    int keep = kept_fd();
    if (keep >= 0 && lowfd >= 0 && keep >= lowfd) {
        if (keep > lowfd)
            do_close_range((unsigned)lowfd, (unsigned)keep - 1, 0);
        lowfd = keep + 1;
    }
    if (real_closefrom)
        real_closefrom(lowfd);
    else if (lowfd >= 0)
        do_close_range((unsigned)lowfd, ~0u, 0);
}

/* After dup2/dup3 onto a moved descriptor failed, the old number is a
 * second copy of the socket nobody uses: close it. */
static int after_dup(int rc, int moved, int newfd)
{
    if (rc < 0 && moved) {
        int e = errno;
        do_close(newfd);
        errno = e;
    }
    return rc;
}

RS_EXPORT int dup2(int oldfd, int newfd)
{
    int moved = newfd >= 0 && newfd != oldfd && newfd == kept_fd() && move_kept(newfd);
    int rc;
    if (real_dup2)
        rc = real_dup2(oldfd, newfd);
    else if (oldfd == newfd) /* dup2's own rule: newfd when valid, else EBADF */
        rc = fcntl(oldfd, F_GETFD) < 0 ? -1 : newfd;
    else
        rc = (int)syscall(SYS_dup3, oldfd, newfd, 0);
    return after_dup(rc, moved, newfd);
}

RS_EXPORT int dup3(int oldfd, int newfd, int flags)
{
    int moved = newfd >= 0 && newfd != oldfd && newfd == kept_fd() && move_kept(newfd);
    int rc = real_dup3 ? real_dup3(oldfd, newfd, flags) : (int)syscall(SYS_dup3, oldfd, newfd, flags);
    return after_dup(rc, moved, newfd);
}
