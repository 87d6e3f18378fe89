/*
 * The shim's type table: interns Python type objects into small ids and
 * defines each id once per trace with an RS_EV_PY_TYPE record (name, module,
 * flags such as GC-tracked). Used by object events (objtrace.c), gc census
 * (gcwatch.c) and snapshots (snapshot.c). Safe inside hooks: no allocation,
 * no C API calls; reads type fields through pyver.
 */
#ifndef REFSCOPE_PYTYPES_H
#define REFSCOPE_PYTYPES_H

#include <stdint.h>

/* Id of the type object `type` (a PyTypeObject *), emitting its definition
 * on first sight in this trace; 0 when it cannot be read. */
uint32_t rs_pytype_id(const void *type);

/* Same, for callers at a safe point (GIL held, `type` known alive, C API
 * usable): also fills in the module of heap types (their `__module__`, not
 * readable from a hook) and re-emits the definition once with RS_TYPE_MODULE.
 * Never raises: a failing lookup leaves the module unknown. */
uint32_t rs_pytype_id_safe(const void *type);

/* Id of the type of object `obj` (rs_pytype_id of its ob_type); 0 if unknown. */
uint32_t rs_pytype_of(const void *obj);

#endif
