/*
 * The table of CPython C API entries the shim calls from safe points
 * (capi.h), filled by name with rs_py_sym where pyver found the interpreter.
 * Every field of struct rs_capi is a pointer, and each has its name here
 * once: the static assertion below catches a field added to the header but
 * not to this table.
 */
#include "capi.h"
#include "pyver.h"

struct rs_capi rs_capi;

struct capi_entry {
    const char *name;
    size_t at; /* offset in struct rs_capi */
};

#define ENTRY(field) { #field, offsetof(struct rs_capi, field) }

static const struct capi_entry entries[] = {
    ENTRY(PyImport_ImportModule), ENTRY(PyObject_GetAttrString), ENTRY(PyObject_SetAttrString),
    ENTRY(PyObject_Call), ENTRY(PyObject_CallObject), ENTRY(PyObject_CallFunctionObjArgs),
    ENTRY(PyObject_IsTrue), ENTRY(PyCFunction_NewEx), ENTRY(PySys_GetObject),
    ENTRY(PySys_SetObject), ENTRY(PyModule_GetName),

    ENTRY(Py_IncRef), ENTRY(Py_DecRef), ENTRY(PyErr_Clear),
    ENTRY(PyErr_Fetch), ENTRY(PyErr_Restore),

    ENTRY(PyTuple_New), ENTRY(PyTuple_Size), ENTRY(PyTuple_GetItem), ENTRY(PyTuple_SetItem),
    ENTRY(PyList_Size), ENTRY(PyList_GetItem), ENTRY(PyList_Append), ENTRY(PyDict_New),
    ENTRY(PyDict_GetItem), ENTRY(PyDict_GetItemString), ENTRY(PyDict_SetItemString),
    ENTRY(PyDict_Next), ENTRY(PyLong_AsLongLong), ENTRY(PyLong_AsSsize_t),
    ENTRY(PyUnicode_FromString), ENTRY(PyUnicode_InternFromString), ENTRY(PyUnicode_AsUTF8),
    ENTRY(PyUnicode_AsUTF8AndSize),

    ENTRY(PyType_IsSubtype), ENTRY(_PyType_Lookup),

    ENTRY(PyInterpreterState_Get), ENTRY(PyInterpreterState_Head), ENTRY(PyInterpreterState_Next),
    ENTRY(PyGC_IsEnabled), ENTRY(PyObject_IS_GC), ENTRY(PyObject_GC_IsTracked),
    ENTRY(PyUnstable_GC_VisitObjects), ENTRY(PyRefTracer_SetTracer), ENTRY(PyRefTracer_GetTracer),

    ENTRY(_Py_NoneStruct), ENTRY(PyBaseObject_Type), ENTRY(PyType_Type), ENTRY(PyDict_Type),
    ENTRY(PyList_Type), ENTRY(PyTuple_Type), ENTRY(PyModule_Type), ENTRY(PyByteArray_Type),
    ENTRY(PyMethodDescr_Type), ENTRY(_PyWeakref_RefType), ENTRY(_PyWeakref_ProxyType),
    ENTRY(_PyWeakref_CallableProxyType),
};

_Static_assert(sizeof(entries) / sizeof(entries[0]) == sizeof(struct rs_capi) / sizeof(void *),
               "every field of struct rs_capi has its entry");

static void **slot(size_t at)
{
    return (void **)((char *)&rs_capi + at);
}

void rs_capi_resolve(void)
{
    for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++)
        *slot(entries[i].at) = rs_py_sym(entries[i].name);
}

const char *rs_capi_missing(const size_t *fields, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        if (*slot(fields[k]))
            continue;
        for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++)
            if (entries[i].at == fields[k])
                return entries[i].name;
        return "?";
    }
    return NULL;
}
