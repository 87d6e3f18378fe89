/*
 * refscope: entry point. Dispatches to the subcommands declared in
 * commands.h; each one parses its own options.
 */
#include <stdio.h>
#include <string.h>
#include "commands.h"

/* Weak references: a subcommand whose file is not linked shows as missing
 * instead of breaking the build while features land one by one. */
#pragma weak cmd_run
#pragma weak cmd_record
#pragma weak cmd_summary
#pragma weak cmd_top
#pragma weak cmd_flamegraph
#pragma weak cmd_gc
#pragma weak cmd_lifetimes
#pragma weak cmd_leaks
#pragma weak cmd_cycles
#pragma weak cmd_diff
#pragma weak cmd_dump

struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *usage;
};

static const struct command commands[] = {
    {"run", cmd_run, "run [-o OUT] [-f] [--native] [...] [--] CMD ARGS...   trace a command"},
    {"summary", cmd_summary, "summary [--json] TRACE                      totals per domain, peak, threads"},
    {"top", cmd_top, "top [--by peak|total|count|live] [--json] TRACE   allocation sites"},
    {"flamegraph", cmd_flamegraph, "flamegraph [-o OUT.html] [--format html|collapsed] TRACE"},
    {"gc", cmd_gc, "gc [--json] TRACE                           collections, pauses, promotions"},
    {"lifetimes", cmd_lifetimes, "lifetimes [--json] TRACE                    object lifetimes, tenured garbage"},
    {"leaks", cmd_leaks, "leaks [--json] TRACE                        leak candidates, why-alive chains"},
    {"cycles", cmd_cycles, "cycles [--json] [--dot OUT] TRACE           unreachable/uncollectable cycles"},
    {"diff", cmd_diff, "diff [--json] TRACE [SNAP_A SNAP_B]         growth between snapshots"},
    {"dump", cmd_dump, "dump [--json] TRACE                         every record, one per line"},
    {"record", cmd_record, "record --serve SOCK -o OUT                  recorder (used by the shim)"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: refscope COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (commands[i].fn)
            fprintf(out, "  %s\n", commands[i].usage);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name))
            continue;
        if (!commands[i].fn) {
            fprintf(stderr, "refscope: '%s' is not available in this build\n", argv[1]);
            return 2;
        }
        return commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "refscope: unknown command '%s' (see 'refscope --help')\n", argv[1]);
    return 2;
}
