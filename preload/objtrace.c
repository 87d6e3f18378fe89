/*
 * Object events for CPython 3.13+: a PyRefTracer callback that records every
 * object creation (address, type id, stack) and destruction. Installed at the
 * init safe point; before 3.13 it records a note instead (the analyzer then
 * uses OBJ-domain block lifetimes).
 *
 * The tracer slot is one per runtime and tracemalloc.start() silently takes
 * it; rs_objtrace_check() (called at every collection start and at exit)
 * notices and records it, and re-takes the slot once it is free again.
 * 3.13.0-3.13.2 miss DESTROY inside the eval loop (CPython gh-130382): a note
 * says so, and every report that depends on DESTROY warns.
 *
 * The callback runs inside object creation/deallocation with the GIL (or, on
 * free-threaded builds, concurrently): it only reads the object header,
 * interns the type and emits a fixed record. Objects created while the
 * recursion guard is held are refscope's own (census lists at safe points)
 * and are not recorded.
 */
#include <errno.h>
#include <string.h>
#include "capi.h"
#include "emit.h"
#include "guard.h"
#include "objtrace.h"
#include "pysafe.h"
#include "pytypes.h"
#include "pyver.h"
#include "shim.h"
#include "stack.h"

enum { REFTRACER_CREATE = 0, REFTRACER_DESTROY = 1 };

static int installed;   /* we set the tracer at least once                  */
static int lost;        /* another tool holds the slot (note emitted)       */

/* Hot path like the allocator hooks (an event per object): rs_emit_event,
 * with the thread's cached clock reading. */
static int reftracer(void *obj, int event, void *data)
{
    if (!rs_guard_enter()) {
        rs_guard_leave();
        return 0;
    }
    uint64_t addr = (uint64_t)(uintptr_t)obj;
    if (event == REFTRACER_CREATE) {
        uint64_t type_id = rs_pytype_id(rs_py_type(obj)); /* may define the type first */
        uint32_t stack = rs_stack_for_object(addr);        /* may define the stack first */
        rs_emit_event(RS_EV_OBJ_CREATE, 0, addr, type_id, stack);
    } else if (event == REFTRACER_DESTROY) {
        rs_emit_event(RS_EV_OBJ_DESTROY, 0, addr, 0, 0);
    }
    rs_guard_leave();
    return 0;
}

static int take_slot(void)
{
    return rs_capi.PyRefTracer_SetTracer(reftracer, NULL);
}

static void objtrace_at_init(void *arg)
{
    if (!rs_emit_active())
        return;
    static const size_t needs[] = { RS_CAPI(PyRefTracer_SetTracer), RS_CAPI(PyRefTracer_GetTracer) };
    if (rs_capi_missing(needs, RS_CAPI_COUNT(needs))) {
        rs_emit_note(RS_NOTE_NO_REFTRACER,
                  "no PyRefTracer before CPython 3.13: object lifetimes are PyObject-domain block "
                  "lifetimes; types come from the gc census");
        return;
    }
    if (take_slot() != 0) {
        rs_emit_note(RS_NOTE_NO_REFTRACER, "PyRefTracer_SetTracer failed: no object events");
        return;
    }
    installed = 1;
    rs_stack_obj_memo_on();
    if (rs_py_reftracer_misses_destroy())
        rs_emit_note(RS_NOTE_DESTROY_MISSED,
                  "CPython 3.13.0-3.13.2 miss object DESTROY events inside the eval loop "
                  "(gh-130382, fixed in 3.13.3): objects look longer-lived than they are");
}

void rs_objtrace_check(void)
{
    void *data = NULL;
    rs_py_reftracer cur;

    if (!installed || !rs_emit_active())
        return;
    cur = rs_capi.PyRefTracer_GetTracer(&data);
    if (cur == reftracer)
        return;
    if (cur == NULL) {
        if (take_slot() == 0) {
            lost = 0;
            rs_emit_note(RS_NOTE_REFTRACER_BACK,
                      "the ref tracer slot was released; object events resume here");
        }
        return;
    }
    if (!lost) {
        lost = 1;
        rs_emit_note(RS_NOTE_REFTRACER_TAKEN,
                  "another tool took the PyRefTracer slot (tracemalloc.start() does): object "
                  "events stop here; lifetimes after this point are incomplete");
    }
}

static void objtrace_start(void)
{
    if (!rs_py.ob_size)
        return;
    if (rs_pysafe_on_init(objtrace_at_init, NULL) != 0)
        rs_warn("object events: no safe point slot left; object events are off");
}

__attribute__((constructor(RS_CTOR_FEATURE)))
static void objtrace_init(void)
{
    if (rs_emit_active())
        rs_pyver_when_found(objtrace_start);
}
