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

#endif
