/*
 * Object events (3.13+): RS_EV_OBJ_CREATE / RS_EV_OBJ_DESTROY through
 * PyRefTracer_SetTracer, installed at the init safe point (objtrace.c).
 */
#ifndef REFSCOPE_OBJTRACE_H
#define REFSCOPE_OBJTRACE_H

/* At a safe point (GIL held): checks that refscope still owns the ref tracer
 * slot; emits RS_NOTE_REFTRACER_TAKEN once when another tool (tracemalloc)
 * took it, and takes it back (RS_NOTE_REFTRACER_BACK) when it was cleared.
 * No-op before 3.13 or when object events are off. gcwatch calls it at every
 * collection start and at exit. */
void rs_objtrace_check(void);

#endif
