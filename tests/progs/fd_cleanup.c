/*
 * A C program that manages its descriptors the way daemons and launchers
 * do, for tests/integration/test_pipeline_c.py: closefrom(3), then close,
 * dup2 and dup3 onto every socket it still finds open, then
 * close_range(3, ~0U, 0). 0.3 s later it allocates 100 blocks of 7777 bytes
 * and keeps them: a trace that lost its recorder on the way misses them.
 * Prints "done" and exits 0.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int socket_fds(int *out, int cap)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        char path[300], target[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof(target) - 1);
        if (len > 0 && (target[len] = 0, !strncmp(target, "socket:", 7)))
            out[n++] = atoi(e->d_name);
    }
    closedir(d);
    return n;
}

int main(void)
{
    int fds[64];
    closefrom(3);
    int null = open("/dev/null", O_RDONLY);
    int n = socket_fds(fds, 64);
    for (int i = 0; i < n; i++) {
        if (fds[i] == null)
            continue;
        close(fds[i]);
        dup2(null, fds[i]);
        dup3(null, fds[i], O_CLOEXEC);
    }
    close_range(3, ~0U, 0);
    usleep(300000); /* a recorder that saw its socket close has ended the trace by now */
    static void *keep[100];
    for (int i = 0; i < 100; i++)
        keep[i] = malloc(7777);
    printf("done %d\n", keep[99] != NULL);
    return 0;
}
