/*
 * The CPython C API the shim calls from safe points (pysafe.h: GIL held,
 * refscope's own work) and at-exit hooks: gc callbacks and wrappers, the gc
 * census, heap snapshots, type names, the ref tracer, sys._debugmallocstats.
 * One table, looked up once where rs_pyver_init found the interpreter (the
 * global scope, or a libpython loaded later), so that every feature calls the
 * same functions and a new one adds its entries here.
 *
 * Fields are named as CPython names them. An entry is NULL when this
 * interpreter lacks it (older versions, internal symbols a build does not
 * export): a feature checks what it needs with rs_capi_missing before it
 * relies on anything. Nothing here is for allocation hooks: the hooks' own
 * C API (allocator get/set, thread state, pending calls) is rs_py's, in
 * pyver.h.
 */
#ifndef REFSCOPE_CAPI_H
#define REFSCOPE_CAPI_H

#include <stddef.h>
#include <sys/types.h>

struct rs_py_methoddef; /* pyver.h */

typedef void rs_pyobj;  /* PyObject */
/* PyRefTracer (3.13+): called on object creation (event 0) and destruction (1). */
typedef int (*rs_py_reftracer)(rs_pyobj *obj, int event, void *data);

struct rs_capi {
    /* modules, attributes, calls */
    rs_pyobj *(*PyImport_ImportModule)(const char *name);
    rs_pyobj *(*PyObject_GetAttrString)(rs_pyobj *obj, const char *name);
    int (*PyObject_SetAttrString)(rs_pyobj *obj, const char *name, rs_pyobj *value);
    rs_pyobj *(*PyObject_Call)(rs_pyobj *fn, rs_pyobj *args, rs_pyobj *kwargs);
    rs_pyobj *(*PyObject_CallObject)(rs_pyobj *fn, rs_pyobj *args);
    rs_pyobj *(*PyObject_CallFunctionObjArgs)(rs_pyobj *fn, ...);
    int (*PyObject_IsTrue)(rs_pyobj *obj);
    rs_pyobj *(*PyCFunction_NewEx)(struct rs_py_methoddef *def, rs_pyobj *self, rs_pyobj *module);
    rs_pyobj *(*PySys_GetObject)(const char *name); /* borrowed */
    int (*PySys_SetObject)(const char *name, rs_pyobj *value);
    const char *(*PyModule_GetName)(rs_pyobj *module);

    /* references and errors */
    void (*Py_IncRef)(rs_pyobj *obj);
    void (*Py_DecRef)(rs_pyobj *obj);
    void (*PyErr_Clear)(void);
    void (*PyErr_Fetch)(rs_pyobj **type, rs_pyobj **value, rs_pyobj **tb);
    void (*PyErr_Restore)(rs_pyobj *type, rs_pyobj *value, rs_pyobj *tb);

    /* containers, numbers, str */
    rs_pyobj *(*PyTuple_New)(ssize_t size);
    ssize_t (*PyTuple_Size)(rs_pyobj *tuple);
    rs_pyobj *(*PyTuple_GetItem)(rs_pyobj *tuple, ssize_t i); /* borrowed */
    int (*PyTuple_SetItem)(rs_pyobj *tuple, ssize_t i, rs_pyobj *item); /* steals */
    ssize_t (*PyList_Size)(rs_pyobj *list);
    rs_pyobj *(*PyList_GetItem)(rs_pyobj *list, ssize_t i); /* borrowed */
    int (*PyList_Append)(rs_pyobj *list, rs_pyobj *item);
    rs_pyobj *(*PyDict_New)(void);
    rs_pyobj *(*PyDict_GetItem)(rs_pyobj *dict, rs_pyobj *key); /* borrowed */
    rs_pyobj *(*PyDict_GetItemString)(rs_pyobj *dict, const char *key); /* borrowed */
    int (*PyDict_SetItemString)(rs_pyobj *dict, const char *key, rs_pyobj *value);
    int (*PyDict_Next)(rs_pyobj *dict, ssize_t *pos, rs_pyobj **key, rs_pyobj **value);
    long long (*PyLong_AsLongLong)(rs_pyobj *obj);
    ssize_t (*PyLong_AsSsize_t)(rs_pyobj *obj);
    rs_pyobj *(*PyUnicode_FromString)(const char *utf8);
    rs_pyobj *(*PyUnicode_InternFromString)(const char *utf8);
    const char *(*PyUnicode_AsUTF8)(rs_pyobj *str);
    const char *(*PyUnicode_AsUTF8AndSize)(rs_pyobj *str, ssize_t *size);

    /* types */
    int (*PyType_IsSubtype)(const rs_pyobj *type, const rs_pyobj *base);
    rs_pyobj *(*_PyType_Lookup)(const rs_pyobj *type, rs_pyobj *name); /* borrowed */

    /* interpreters and the collector */
    rs_pyobj *(*PyInterpreterState_Get)(void);
    rs_pyobj *(*PyInterpreterState_Head)(void);
    rs_pyobj *(*PyInterpreterState_Next)(rs_pyobj *interp);
    int (*PyGC_IsEnabled)(void);                      /* 3.10+ */
    int (*PyObject_IS_GC)(rs_pyobj *obj);
    int (*PyObject_GC_IsTracked)(rs_pyobj *obj);      /* 3.9+ */
    void (*PyUnstable_GC_VisitObjects)(int (*visit)(rs_pyobj *obj, void *arg), void *arg); /* 3.12+ */
    int (*PyRefTracer_SetTracer)(rs_py_reftracer fn, void *data);  /* 3.13+ */
    rs_py_reftracer (*PyRefTracer_GetTracer)(void **data);         /* 3.13+ */

    /* objects (addresses of the interpreter's statics) */
    rs_pyobj *_Py_NoneStruct;
    rs_pyobj *PyBaseObject_Type;
    rs_pyobj *PyType_Type;
    rs_pyobj *PyDict_Type;
    rs_pyobj *PyList_Type;
    rs_pyobj *PyTuple_Type;
    rs_pyobj *PyModule_Type;
    rs_pyobj *PyByteArray_Type;
    rs_pyobj *PyMethodDescr_Type;
    rs_pyobj *_PyWeakref_RefType;
    rs_pyobj *_PyWeakref_ProxyType;
    rs_pyobj *_PyWeakref_CallableProxyType;
};

extern struct rs_capi rs_capi;

/* Looks every entry up (NULL when absent). rs_pyver_init calls it when it
 * has found the interpreter; nothing else needs to. */
void rs_capi_resolve(void);

/* The first entry among `fields` (offsets into struct rs_capi, see RS_CAPI)
 * this interpreter lacks, by its C API name, or NULL when it has them all. */
const char *rs_capi_missing(const size_t *fields, size_t n);

#define RS_CAPI(field) offsetof(struct rs_capi, field)
#define RS_CAPI_COUNT(fields) (sizeof(fields) / sizeof((fields)[0]))

#endif
