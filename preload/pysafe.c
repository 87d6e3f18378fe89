/*
 * Safe points (implements preload/pysafe.h): the only way shim code gets to
 * run with the GIL at a bytecode boundary. Hooks call rs_pysafe_poll(); once
 * Py_IsInitialized() turns 1 the init functions are queued with
 * Py_AddPendingCall and run in registration order on the main thread.
 * rs_pysafe_schedule() queues one-off calls through a small fixed pool of
 * (fn, arg) cells, because pending calls take int (*)(void *). Both run as
 * refscope's own work (guard.h: what they allocate is flagged RS_F_OWN).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "guard.h"
#include "pysafe.h"
#include "pyver.h"

#define INIT_MAX   16
#define CELLS      64
#define POLL_EVERY 4096u
#define POLL_SOON 16u    /* after an init safe point was put off (run_init) */

struct safe_cell {
    rs_safe_fn fn;
    void *arg;
    int busy;
};

static struct { rs_safe_fn fn; void *arg; } init_fns[INIT_MAX];
static int init_count;
int rs_pysafe_init_state;  /* 0 waiting, 1 queued, 2 done (read inline by pysafe.h) */
static unsigned poll_ticks, poll_every = POLL_EVERY;
static struct safe_cell cells[CELLS];

int rs_pysafe_on_init(rs_safe_fn fn, void *arg)
{
    if (init_count == INIT_MAX)
        return -ENOSPC;
    init_fns[init_count].fn = fn;
    init_fns[init_count].arg = arg;
    init_count++;
    return 0;
}

/* Is the thread inside importlib's own code (its innermost Python frame in
 * <frozen importlib._bootstrap> or _bootstrap_external)? */
static int in_importlib(void)
{
    static const char prefix[] = "<frozen importlib._bootstrap";
    struct rs_pyframe inner;
    char name[sizeof prefix];
    int truncated;
    if (rs_py_frames(&inner, 1, &truncated, 1) != 1)
        return 0;
    int n = rs_py_str_utf8(rs_py_code_filename(inner.code), name, sizeof name);
    return n >= (int)sizeof prefix - 1 && memcmp(name, prefix, sizeof prefix - 1) == 0;
}

/* The init work imports modules (gc, atexit, posix). A pending call runs at
 * any bytecode boundary, also inside importlib's bookkeeping of an import in
 * progress, where a nested import breaks it (3.11: the outer import fails
 * with a KeyError in _ModuleLock.acquire, CPython gh-87712; seen as `site`
 * failing to import). So the init safe point is put off while the innermost
 * Python frame is importlib's: the allocation hooks ask again POLL_SOON
 * calls later (a few bytecodes), so that it still comes before the
 * program's first statement. */
static int run_init(void *unused)
{
    (void)unused;
    if (in_importlib()) {
        poll_every = POLL_SOON;
        __atomic_store_n(&rs_pysafe_init_state, 0, __ATOMIC_RELEASE);
        return 0;
    }
    int own = rs_guard_own_begin();
    for (int i = 0; i < init_count; i++)
        init_fns[i].fn(init_fns[i].arg);
    rs_guard_own_end(own);
    __atomic_store_n(&rs_pysafe_init_state, 2, __ATOMIC_RELEASE);
    return 0;
}

void rs_pysafe_poll_slow(void)
{
    /* racy counter on purpose: it only spaces out the checks */
    if (++poll_ticks % poll_every != 0)
        return;
    if (!rs_py.is_python || !rs_py.Py_AddPendingCall || !rs_py.Py_IsInitialized())
        return;
    int expected = 0;
    if (!__atomic_compare_exchange_n(&rs_pysafe_init_state, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
    if (rs_py.Py_AddPendingCall(run_init, NULL) != 0)
        __atomic_store_n(&rs_pysafe_init_state, 0, __ATOMIC_RELEASE); /* queue full: retry later */
}

static int run_cell(void *p)
{
    struct safe_cell *c = p;
    rs_safe_fn fn = c->fn;
    void *arg = c->arg;
    __atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE);
    int own = rs_guard_own_begin();
    fn(arg);
    rs_guard_own_end(own);
    return 0;
}

int rs_pysafe_schedule(rs_safe_fn fn, void *arg)
{
    if (!rs_py.is_python || !rs_py.Py_AddPendingCall)
        return -ENOSYS;
    if (!rs_py.Py_IsInitialized())
        return -EAGAIN;
    for (int i = 0; i < CELLS; i++) {
        int expected = 0;
        if (!__atomic_compare_exchange_n(&cells[i].busy, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        cells[i].fn = fn;
        cells[i].arg = arg;
        if (rs_py.Py_AddPendingCall(run_cell, &cells[i]) != 0) {
            __atomic_store_n(&cells[i].busy, 0, __ATOMIC_RELEASE);
            return -EAGAIN;
        }
        return 0;
    }
    return -EAGAIN;
}
