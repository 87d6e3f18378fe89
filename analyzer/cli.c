/*
 * One option parser for every subcommand (contract in cli.h): table-driven,
 * values checked as they are read, one line per mistake. Replaces a getopt
 * loop per command, whose atoi() let "--depth x" pass as 0.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The one line: "refscope CMD: <fmt...> (see 'refscope CMD --help')". Returns -1. */
__attribute__((format(printf, 2, 3)))
static int fail(const struct rs_cli *cli, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "refscope %s: ", cli->cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'refscope %s --help')\n", cli->cmd);
    return -1;
}

static const struct rs_opt *find_long(const struct rs_cli *cli, const char *name, size_t len)
{
    for (const struct rs_opt *o = cli->opts; o && o->name; o++)
        if (strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static const struct rs_opt *find_short(const struct rs_cli *cli, char c)
{
    for (const struct rs_opt *o = cli->opts; o && o->name; o++)
        if (o->short_name && o->short_name == c)
            return o;
    return NULL;
}

/* Stores `value` for option o (spelled `as` on the command line). */
static int set_value(const struct rs_cli *cli, const struct rs_opt *o, const char *as, const char *value)
{
    switch (o->kind) {
    case RS_OPT_FLAG:
        *(int *)o->target = 1;
        return 0;
    case RS_OPT_STR:
        if (!*value)
            return fail(cli, "%s needs a value", as);
        *(const char **)o->target = value;
        return 0;
    case RS_OPT_INT: {
        char *end = NULL, range[64];
        errno = 0;
        long v = strtol(value, &end, 10);
        if (!*value || *end || errno || v < o->min || v > o->max) {
            if (o->max == INT_MAX)
                snprintf(range, sizeof(range), "an integer >= %d", o->min);
            else
                snprintf(range, sizeof(range), "an integer from %d to %d", o->min, o->max);
            return fail(cli, "%s takes %s, not '%s'", as, range, value);
        }
        *(int *)o->target = (int)v;
        return 0;
    }
    case RS_OPT_CHOICE: {
        char list[256] = "";
        size_t used = 0;
        for (int i = 0; o->choices[i]; i++) {
            if (!strcmp(value, o->choices[i])) {
                *(int *)o->target = i;
                return 0;
            }
            used += (size_t)snprintf(list + used, used < sizeof(list) ? sizeof(list) - used : 0, "%s%s",
                                     i ? "|" : "", o->choices[i]);
        }
        return fail(cli, "%s takes %s, not '%s'", as, list, value);
    }
    }
    return -1;
}

int rs_cli_parse(const struct rs_cli *cli, int argc, char **argv)
{
    int npos = 0, i = 1, options = 1;
    for (; i < argc; i++) {
        char *a = argv[i];
        if (!options || a[0] != '-' || !a[1]) {
            argv[1 + npos++] = a; /* never ahead of i: positions only shrink */
            if (cli->stop_at_arg)
                options = 0;
            continue;
        }
        if (!strcmp(a, "--")) {
            options = 0;
            continue;
        }
        const struct rs_opt *o;
        const char *value = NULL;
        char as[80];
        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            o = find_long(cli, a + 2, len);
            snprintf(as, sizeof(as), "--%.*s", (int)(len < 60 ? len : 60), a + 2);
            if (!o)
                return fail(cli, "unknown option '%s'", as);
            if (eq) {
                if (o->kind == RS_OPT_FLAG)
                    return fail(cli, "%s takes no value", as);
                value = eq + 1;
            }
        } else {
            o = find_short(cli, a[1]);
            snprintf(as, sizeof(as), "-%c", a[1]);
            if (!o)
                return fail(cli, "unknown option '%s'", a);
            if (a[2]) {
                if (o->kind == RS_OPT_FLAG)
                    return fail(cli, "%s takes no value (not '%s')", as, a);
                value = a + 2;
            }
        }
        if (o->kind != RS_OPT_FLAG && !value) {
            if (i + 1 >= argc)
                return fail(cli, "%s needs a value", as);
            value = argv[++i];
        }
        if (set_value(cli, o, as, value ? value : "") < 0)
            return -1;
    }
    argv[1 + npos] = NULL; /* argv[argc] was: the arguments can be exec'd */
    if (npos < cli->min_args)
        return fail(cli, "expected %s%s", cli->args, npos ? " (too few arguments)" : "");
    if (npos > cli->max_args)
        return fail(cli, "unexpected argument '%s' (expected %s)", argv[1 + cli->max_args], cli->args);
    return npos;
}

int rs_cli_print_json(const char *cmd, json_t *root)
{
    int rc = root ? json_dumpf(root, stdout, JSON_INDENT(2)) : -1;
    json_decref(root);
    if (rc < 0) {
        if (!ferror(stdout)) /* a write error is main.c's to report */
            fprintf(stderr, "refscope %s: cannot render the JSON report\n", cmd);
        return -1;
    }
    putchar('\n');
    return 0;
}

int rs_cli_close_output(FILE *f, const char *cmd, const char *name)
{
    int failed_before = ferror(f);
    errno = 0;
    int rc = f == stdout ? fflush(f) : fclose(f);
    if (rc == 0 && !failed_before)
        return 0;
    if (rc != 0 && errno)
        fprintf(stderr, "refscope %s: cannot write %s: %s\n", cmd, name, strerror(errno));
    else
        fprintf(stderr, "refscope %s: cannot write %s\n", cmd, name);
    return -1;
}
