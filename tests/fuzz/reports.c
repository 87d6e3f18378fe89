/*
 * The reports the fuzzers run on every input (tests/fuzz/reports.h): every
 * subcommand that reads a trace, with the options that take it down
 * different paths.
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "reports.h"

const char *const reports[][MAX_ARGS] = {
    { "summary", "TRACE" },
    { "summary", "--json", "TRACE" },
    { "top", "TRACE" },
    { "top", "--by", "live", "--depth", "0", "--json", "TRACE" },
    { "top", "--native", "--by", "peak", "TRACE" },
    { "flamegraph", "-o", "DOT", "TRACE" },
    { "flamegraph", "--format", "collapsed", "--native", "--by", "live", "-o", "DOT", "TRACE" },
    { "gc", "TRACE" },
    { "gc", "--json", "TRACE" },
    { "lifetimes", "--json", "TRACE" },
    { "lifetimes", "--depth", "0", "TRACE" },
    { "leaks", "--json", "TRACE" },
    { "leaks", "--since", "import", "--depth", "0", "TRACE" },
    { "cycles", "--json", "--all", "TRACE" },
    { "cycles", "--dot", "DOT", "TRACE" },
    { "diff", "--json", "TRACE" },
    { "dump", "--json", "TRACE" },
};

static int (*report_fn(const char *name))(int, char **)
{
    static const struct { const char *name; int (*fn)(int, char **); } fns[] = {
        { "summary", cmd_summary }, { "top", cmd_top },         { "flamegraph", cmd_flamegraph },
        { "gc", cmd_gc },           { "lifetimes", cmd_lifetimes }, { "leaks", cmd_leaks },
        { "cycles", cmd_cycles },   { "diff", cmd_diff },       { "dump", cmd_dump },
    };
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++)
        if (!strcmp(fns[i].name, name))
            return fns[i].fn;
    return NULL;
}

int run_report(size_t k, const char *trace, const char *dot)
{
    char *argv[MAX_ARGS + 1] = { 0 };
    int argc = 0;
    for (; argc < MAX_ARGS && reports[k][argc]; argc++) {
        const char *a = reports[k][argc];
        argv[argc] = (char *)(!strcmp(a, "TRACE") ? trace : !strcmp(a, "DOT") ? dot : a);
    }
    int status = report_fn(reports[k][0])(argc, argv);
    fflush(stdout);
    clearerr(stdout);
    return status;
}

