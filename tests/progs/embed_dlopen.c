/*
 * An embedding program that loads libpython itself, after start-up, the way
 * PyInstaller's bootloader, uwsgi and mod_wsgi do: nothing of Python is in
 * the process when the shim's constructors run. Used by the integration
 * tests of late Python detection.
 *
 *   embed_dlopen LIBPYTHON local|global CODE
 *
 * dlopens LIBPYTHON (RTLD_LOCAL or RTLD_GLOBAL), looks the C API up through
 * its handle, initializes the interpreter, runs CODE and finalizes. Exit
 * status: 0, or 2 (bad arguments), 3 (dlopen or dlsym failed), 4 (CODE
 * raised), 5 (finalization failed).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[2], "local") && strcmp(argv[2], "global"))) {
        fprintf(stderr, "usage: embed_dlopen LIBPYTHON local|global CODE\n");
        return 2;
    }
    int mode = RTLD_NOW | (strcmp(argv[2], "global") ? RTLD_LOCAL : RTLD_GLOBAL);
    void *lib = dlopen(argv[1], mode);
    if (!lib) {
        fprintf(stderr, "embed_dlopen: %s\n", dlerror());
        return 3;
    }
    void (*initialize)(int) = (void (*)(int))dlsym(lib, "Py_InitializeEx");
    int (*run)(const char *) = (int (*)(const char *))dlsym(lib, "PyRun_SimpleString");
    int (*finalize)(void) = (int (*)(void))dlsym(lib, "Py_FinalizeEx");
    if (!initialize || !run || !finalize) {
        fprintf(stderr, "embed_dlopen: %s lacks the embedding API\n", argv[1]);
        return 3;
    }
    initialize(0);
    int rc = run(argv[3]) == 0 ? 0 : 4;
    if (finalize() < 0 && rc == 0)
        rc = 5;
    return rc;
}
