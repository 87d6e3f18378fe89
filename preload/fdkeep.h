/*
 * The descriptor the shim must not lose (its recorder socket), kept open
 * through the program's close/close_range/closefrom and moved out of the way
 * of its dup2/dup3 (preload/fdkeep.c, which interposes those five).
 */
#ifndef REFSCOPE_FDKEEP_H
#define REFSCOPE_FDKEEP_H

/* Resolve the real close family. Core constructor, before any adopt. */
void rs_fdkeep_resolve(void);

/* Keep the descriptor in *fd: moves it to a high number when it can (and
 * stores that in *fd), then protects it. *fd is updated in place whenever
 * the descriptor has to move again; read it with an atomic load. Returns
 * the descriptor. One at a time: a new adopt replaces the old. */
int rs_fdkeep_adopt(int *fd);

/* Stop protecting it, before the shim closes it itself. */
void rs_fdkeep_release(void);

#endif
