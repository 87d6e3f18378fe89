/*
 * Whether a process is still the one it was: its state, thread count and
 * start time as /proc/<pid>/stat gives them (common/proc.c). The shim uses
 * it to tell whether its recorder is alive (a pid alone may have been
 * reused), the recorder to tell whether a traced process has ended where
 * the kernel has no pidfd_open, and, from /proc/<pid>/maps, whether it
 * still maps its ring (it does not once it has exec'd); both learn the
 * other's pid from their socket. Safe inside malloc hooks and fork
 * children: system calls only, no allocation, no stdio.
 */
#ifndef REFSCOPE_PROC_H
#define REFSCOPE_PROC_H

#include <stddef.h>
#include <stdint.h>

struct rs_proc_state {
    char state;             /* 'R', 'S', 'Z' (zombie), 'X' (dead), ...   */
    uint32_t threads;       /* num_threads                              */
    uint64_t start_ticks;   /* starttime: clock ticks after boot        */
};

/* Reads /proc/<pid>/stat. Returns 0, -ESRCH when there is no such process,
 * or another negative errno (no /proc, an unreadable line). */
int rs_proc_read(uint32_t pid, struct rs_proc_state *st);

/* 1 while process `pid` that started at `start_ticks` has not exited
 * (a zombie whose other threads are gone has; a pid now used by a later
 * process has), 0 once it has, -errno when /proc cannot tell. */
int rs_proc_alive(uint32_t pid, uint64_t start_ticks);

/* A process as the other end of a connection knows it: its pid and its
 * start time, so that a later process given the same pid is not taken for
 * it. Each side of a trace's connection watches the other through one. */
struct rs_proc_id {
    uint32_t pid;          /* in our pid namespace; 0: the kernel names none */
    uint64_t start_ticks;  /* as rs_proc_state has it; 0: /proc cannot tell  */
};

/* Who is at the other end of connected unix socket `sock`: its pid
 * (SO_PEERCRED) and start time (/proc). Never fails; what it cannot learn
 * stays 0. */
void rs_proc_identify(int sock, struct rs_proc_id *id);

/* rs_proc_alive for an identified process: 1, 0, or -errno, also when
 * either half of `id` is not known. */
int rs_proc_id_alive(const struct rs_proc_id *id);

/* 1 when process `pid` has the file with inode `ino` on device `dev`
 * (st_ino and st_dev, as fstat gives them) mapped at `addr` (the start of
 * that mapping), 0 when it has not (another mapping or none there), -ESRCH
 * when it maps nothing at all (no such process, or one that is exiting: its
 * memory is gone before its pidfd says so), another negative errno when
 * its maps cannot be read (another user's, a non-dumpable process) or tell
 * nothing within RS_PROC_MAPS_SCAN_MAX bytes (-E2BIG).
 * The kernel's PROCMAP_QUERY answers in one look-up (Linux 6.11+);
 * elsewhere /proc/<pid>/maps is read line by line, at most
 * RS_PROC_MAPS_SCAN_MAX bytes: a process with tens of thousands of
 * mappings makes the kernel spend ~0.4 ms per thousand lines on them. */
int rs_proc_maps_file(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino);

/* Its two ways, for tests: the ioctl alone (-ENOTTY on a kernel without
 * it) and the capped scan alone. Same results as rs_proc_maps_file. */
int rs_proc_maps_query(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino);
int rs_proc_maps_scan(uint32_t pid, uint64_t addr, uint64_t dev, uint64_t ino);
#define RS_PROC_MAPS_SCAN_MAX (512u * 1024u) /* ~10,000 lines */

/* Writes v in decimal and a terminating NUL to out (11 bytes at most).
 * Returns the number of digits. */
size_t rs_proc_decimal(char *out, uint32_t v);

#endif
