/*
 * refscope: entry point. Dispatches to the subcommands declared in
 * commands.h, and answers `refscope CMD --help` with the usage below; each
 * command parses its own options with cli.h.
 */
#include <stdio.h>
#include <string.h>
#include "cli.h"
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
    {"run", cmd_run,
     "run [-o OUT] [-f] [--native | --no-stacks] [--no-gc | --gc-census=on|off] [--lossy]\n"
     "      [--ring-mb N] [--snapshot-interval SECONDS] [--] CMD ARGS...\n"
     "      trace CMD and every process it starts; exits with CMD's status"},
    {"summary", cmd_summary, "summary [--json] TRACE\n"
     "      process, duration, per-domain allocations/frees/bytes, peak and live bytes"},
    {"top", cmd_top, "top [--by peak|total|count|live] [--depth N] [--limit N] [--file S]\n"
     "      [--function S] [--native] [--json] TRACE\n"
     "      allocation sites ranked by a metric"},
    {"flamegraph", cmd_flamegraph, "flamegraph [-o OUT] [--by peak|total|live] [--format html|collapsed]\n"
     "      [--native] TRACE\n"
     "      self-contained HTML flame graph, or folded stacks"},
    {"gc", cmd_gc, "gc [--json] TRACE\n"
     "      collections, pauses, promotions and thresholds per generation"},
    {"lifetimes", cmd_lifetimes, "lifetimes [--json] [--depth N] TRACE\n"
     "      object lifetime distributions by type and site (N frames, 0 = whole stack), tenured garbage"},
    {"leaks", cmd_leaks, "leaks [--json] [--since SECONDS|import] [--snapshot N] [--limit N] [--depth N] TRACE\n"
     "      objects alive at the end that grew after warm-up, with why-alive chains"},
    {"cycles", cmd_cycles, "cycles [--json] [--all] [--limit N] [--depth N] [--dot OUT.dot] [--snapshot N] TRACE\n"
     "      unreachable reference cycles: not yet collected, or uncollectable"},
    {"diff", cmd_diff, "diff [--json] [--limit N] [--depth N] TRACE [SNAP_A SNAP_B]\n"
     "      counts and bytes per type and site that grew between two snapshots"},
    {"dump", cmd_dump, "dump [--json] [--kind K,...] TRACE\n"
     "      every record, one per line"},
    {"record", cmd_record, "record --serve SOCK -o OUT\n"
     "      the recorder alone (started by the shim for LD_PRELOAD use)"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: refscope COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (commands[i].fn)
            fprintf(out, "  %s\n\n", commands[i].usage);
}

/* A report that could not be written to stdout (a full disk, a closed
 * descriptor) is a failure like any other: one line, and a non-zero status.
 * Commands leave stdout's errors to this check. */
static int output_checked(const char *name, int status)
{
    if (rs_cli_close_output(stdout, name, "the output") < 0 && status == 0)
        return 1;
    return status;
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
        /* `refscope CMD --help`: the same usage text for every command. */
        /* (run: only right after the command, its CMD may take --help) */
        int last = strcmp(commands[i].name, "run") ? argc : (argc > 2 ? 3 : argc);
        for (int a = 2; a < last && strcmp(argv[a], "--"); a++)
            if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) {
                printf("usage: refscope %s\n", commands[i].usage);
                return 0;
            }
        return output_checked(commands[i].name, commands[i].fn(argc - 1, argv + 1));
    }
    fprintf(stderr, "refscope: unknown command '%s' (see 'refscope --help')\n", argv[1]);
    return 2;
}
