/*
 * Safe points: where the shim may run code that uses the Python C API
 * (registering gc callbacks, atexit handlers, the ref tracer, taking heap
 * snapshots). Hooks never do that themselves; they ask for a safe point.
 *
 * A safe point is a pending call (Py_AddPendingCall): main thread, GIL held,
 * at a bytecode boundary, only once the interpreter is initialized. The first
 * one is requested by the allocation hooks as soon as Py_IsInitialized()
 * turns 1, and put off while the thread is inside importlib's own code (the
 * init work imports modules; pysafe.c). Features register what they want
 * done there at constructor time. Everything run there runs as refscope's
 * own work (guard.h, rs_guard_own_begin): the guard is held and what it
 * allocates is recorded flagged RS_F_OWN.
 */
#ifndef REFSCOPE_PYSAFE_H
#define REFSCOPE_PYSAFE_H

typedef void (*rs_safe_fn)(void *arg);

/* Run fn(arg) once, at the first safe point after interpreter start-up.
 * Call from constructors or a late Python start (pyver.h: before the
 * interpreter is initialized, which is when the list is read). Up to 16
 * functions; they run in registration order. Returns 0 or -ENOSPC. */
int rs_pysafe_on_init(rs_safe_fn fn, void *arg);

/* Ask for fn(arg) at the next safe point. Usable from any thread and from a
 * signal handler once the interpreter is initialized; returns 0, -EAGAIN
 * when not yet initialized or the interpreter's queue is full (the caller
 * retries later), -ENOSYS when the process is not Python. */
int rs_pysafe_schedule(rs_safe_fn fn, void *arg);

/* Called by the allocation hooks to notice start-up and schedule the init
 * safe point: inline, one load once that is done; until then it checks
 * Py_IsInitialized at most every few thousand calls. */
extern int rs_pysafe_init_state; /* 0 waiting, 1 queued, 2 done (pysafe.c) */
void rs_pysafe_poll_slow(void);

/* Nonzero once the init safe point is queued or done: rs_pysafe_poll has
 * nothing left to do (a hook that knows this may skip it). */
static inline int rs_pysafe_init_asked(void)
{
    return __atomic_load_n(&rs_pysafe_init_state, __ATOMIC_RELAXED) != 0;
}

static inline void rs_pysafe_poll(void)
{
    if (__builtin_expect(!rs_pysafe_init_asked(), 0))
        rs_pysafe_poll_slow();
}

#endif
