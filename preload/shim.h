/*
 * Shim-wide definitions: export marker and constructor order.
 *
 * Constructor priorities: the core (ring, transport, libc hooks) runs first;
 * features run after it and check rs_emit_active() before doing anything.
 */
#ifndef REFSCOPE_SHIM_H
#define REFSCOPE_SHIM_H

#define RS_EXPORT __attribute__((visibility("default")))

#define RS_CTOR_CORE    101 /* shim.c: config, ring, transport, libc hooks */
#define RS_CTOR_PYTHON  110 /* pyver.c / hooks_pymem.c: CPython detection, PyMem wrappers */
#define RS_CTOR_FEATURE 120 /* stacks, gc, objects, snapshots */

/* Print "refscope: <msg>\n" on stderr with write(2): no stdio, no malloc. */
void rs_warn(const char *msg);

/* ---- settings (env.c) ------------------------------------------------------ */

/* Read the run directory's settings when this library was loaded from one
 * and the environment has no REFSCOPE_SOCK (refscope/transport.h, "The run
 * directory"). Core constructor, first. */
void rs_env_load(void);

/* A REFSCOPE_* setting: the environment's, else the run directory's, else
 * NULL. Every part of the shim reads its settings through here. */
const char *rs_env(const char *name);

/* This library's file with symlinks resolved (set by rs_env_load when native
 * stacks are on), or NULL: the path to give offline readers, which outlives
 * the run directory's. */
const char *rs_env_shim_file(void);

/* An on/off setting, read the same way by every part of the shim: unset or
 * empty gives `dflt`, "0", "off" and "no" give 0, anything else 1. */
int rs_env_flag(const char *name, int dflt);

/* ---- core (shim.c, forkexec.c, hooks_libc.c, transport.c) ---------------------- */

/* Resolve the real libc allocator functions (hooks_libc.c). Returns 1 when
 * resolved; while resolving, hooks serve memory from a static pool. */
int rs_libc_resolve(void);

/* Register the pthread_atfork handlers (forkexec.c). Constructor only. */
int rs_forkexec_init(void);

/* Set up tracing for this process (shim.c): ring, recorder connection,
 * RS_EV_PROCESS. `fork_child` = called from the atfork child handler.
 * On failure prints one rs_warn line and leaves tracing off. */
int rs_shim_start(int fork_child);

/* Nonzero when this process is (or tried to be) traced, so a fork child
 * should set up its own trace; 0 after a set-up failure. */
int rs_shim_traced(void);

/* Atfork child side: forget the parent's ring and connection (shim.c). */
void rs_shim_forget_parent(void);

#endif
