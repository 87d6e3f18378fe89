/*
 * The shim's settings (the REFSCOPE_* variables of refscope/transport.h):
 * the process's environment, or, for a variable it lacks, the run
 * directory's settings file when the shim was loaded from a run directory
 * and the environment has no REFSCOPE_SOCK. A program that gives its child
 * an environment of its own but keeps LD_PRELOAD (CPython's test suite
 * keeps "LD_*") thus has the child join `refscope run` with the run's
 * options, instead of starting a recorder of its own and writing
 * refscope-<pid>.rfs into whatever directory it runs in.
 *
 * Also where the shim was loaded from: through the run directory's symlink,
 * a path that is gone after the run, so native stacks name the file itself
 * (rs_env_shim_file).
 *
 * Read once, in the core constructor (rs_env_load), before any setting is;
 * static buffers, no stdio after it.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"
#include "refscope/transport.h"

#define MAX_LINES 64

static char file_text[RS_RUN_ENV_MAX + 1];
static const char *lines[MAX_LINES];  /* "NAME=value", REFSCOPE_* only */
static int nlines;
static char self_file[PATH_MAX];      /* this library's file, symlinks resolved */

/* The directory part of this library's path when it is a run directory
 * (its last component starts with RS_RUN_DIR_PREFIX): its length, with the
 * slash, or 0. */
static size_t run_dir_of(const char *lib)
{
    const char *slash = strrchr(lib, '/');
    if (!slash || slash == lib)
        return 0;
    const char *base = slash;
    while (base > lib && base[-1] != '/')
        base--;
    if (strncmp(base, RS_RUN_DIR_PREFIX, sizeof(RS_RUN_DIR_PREFIX) - 1))
        return 0;
    return (size_t)(slash - lib) + 1;
}

/* A `type` (S_IFDIR, S_IFREG) of ours that nobody else may read or
 * write, as `refscope run` makes them: a directory merely named like a run
 * directory (an install under /opt/refscope-1.0) is not taken for one. */
static int private_to_us(const struct stat *st, mode_t type)
{
    return (st->st_mode & S_IFMT) == type && st->st_uid == geteuid() && (st->st_mode & 077) == 0;
}

/* The run directory's settings, when `lib` (this library's path as loaded)
 * lies in one. */
static void load_run_settings(const char *lib)
{
    char path[PATH_MAX];
    struct stat st;
    size_t dir = run_dir_of(lib);
    if (!dir || dir + sizeof(RS_RUN_ENV_NAME) > sizeof(path))
        return;
    memcpy(path, lib, dir);
    path[dir - 1] = 0;
    if (lstat(path, &st) < 0 || !private_to_us(&st, S_IFDIR))
        return;
    path[dir - 1] = '/';
    memcpy(path + dir, RS_RUN_ENV_NAME, sizeof(RS_RUN_ENV_NAME));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;
    if (fstat(fd, &st) < 0 || !private_to_us(&st, S_IFREG)) {
        close(fd);
        return;
    }
    size_t got = 0;
    ssize_t n;
    while (got < RS_RUN_ENV_MAX && (n = read(fd, file_text + got, RS_RUN_ENV_MAX - got)) > 0)
        got += (size_t)n;
    close(fd);
    file_text[got] = 0;
    for (char *p = file_text; *p && nlines < MAX_LINES;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = 0;
        if (!strncmp(p, "REFSCOPE_", 9) && strchr(p, '='))
            lines[nlines++] = p;
        if (!nl)
            break;
        p = nl + 1;
    }
}

void rs_env_load(void)
{
    Dl_info info;
    if (!dladdr((void *)rs_env_load, &info) || !info.dli_fname)
        return;
    if (!getenv(RS_ENV_SOCK))
        load_run_settings(info.dli_fname);
    /* only native stacks name the shim's file (module map): no path walk
     * at every process start otherwise */
    if (rs_env_flag(RS_ENV_NATIVE, 0) && !realpath(info.dli_fname, self_file))
        snprintf(self_file, sizeof(self_file), "%s", info.dli_fname);
}

const char *rs_env_shim_file(void)
{
    return self_file[0] ? self_file : NULL;
}

const char *rs_env(const char *name)
{
    const char *v = getenv(name);
    if (v)
        return v;
    size_t n = strlen(name);
    for (int i = 0; i < nlines; i++)
        if (!strncmp(lines[i], name, n) && lines[i][n] == '=')
            return lines[i] + n + 1;
    return NULL;
}

int rs_env_flag(const char *name, int dflt)
{
    const char *v = rs_env(name);
    if (!v || !*v)
        return dflt;
    return strcmp(v, "0") && strcmp(v, "off") && strcmp(v, "no");
}
