/*
 * Command-line options of the subcommands, parsed one way for all of them:
 * each command describes its options in a table and gets back its
 * positional arguments, or exit status 2 after exactly one line on stderr
 * ("refscope CMD: <what is wrong> (see 'refscope CMD --help')"). The usage
 * text itself lives in main.c, which also answers --help.
 *
 * Accepted forms: --name VALUE, --name=VALUE, -x VALUE, -xVALUE, and "--"
 * to end the options. Options and arguments may be mixed (GNU style) unless
 * the command asks to stop at its first argument (run: what follows is the
 * traced command's own).
 */
#ifndef REFSCOPE_CLI_H
#define REFSCOPE_CLI_H

#include <jansson.h>
#include <limits.h>
#include <stdio.h>

enum rs_opt_kind {
    RS_OPT_FLAG,    /* no value: *(int *)target = 1                            */
    RS_OPT_INT,     /* *(int *)target = a decimal integer in [min, max]        */
    RS_OPT_STR,     /* *(const char **)target = the value (any non-empty text) */
    RS_OPT_CHOICE,  /* *(int *)target = index of the value in choices[]        */
};

struct rs_opt {
    const char *name;             /* long name, without "--"                 */
    char short_name;              /* one-letter form, or 0                   */
    enum rs_opt_kind kind;
    void *target;
    int min, max;                 /* RS_OPT_INT                              */
    const char *const *choices;   /* RS_OPT_CHOICE: NULL-terminated          */
};

/* A table ends with an entry whose name is NULL. */
#define RS_OPT_END { NULL, 0, RS_OPT_FLAG, NULL, 0, 0, NULL }

struct rs_cli {
    const char *cmd;              /* "top": messages read "refscope top: ..." */
    const struct rs_opt *opts;
    const char *args;             /* the positional arguments, for messages: "TRACE" */
    int min_args, max_args;       /* how many positional arguments           */
    int stop_at_arg;              /* options end at the first argument       */
};

/* Parses argv[1..argc) (argv[0] is the command's name) into the targets and
 * moves the positional arguments, in order, to argv[1..], followed by NULL
 * (so they can be passed to exec). Returns their number, or -1 after printing one line (the caller exits with status 2).
 * Targets of options not given keep their values (the defaults). */
int rs_cli_parse(const struct rs_cli *cli, int argc, char **argv);

/* Prints a report's JSON to stdout (indented, then a newline) and releases
 * it; `root` NULL means it could not be built. Returns 0, or -1 after one
 * line on stderr ("refscope CMD: cannot render the JSON report"), or, when
 * writing stdout failed, after none: main.c checks stdout once a command
 * returns and says what went wrong. */
int rs_cli_print_json(const char *cmd, json_t *root);

/* Ends writing an output file: fclose (stdout: fflush only). Returns 0, or
 * -1 after one line on stderr, "refscope CMD: cannot write NAME: REASON",
 * when any write to it failed, not only the last flush (fclose alone misses
 * a write that failed before; its reason is then unknown and left out). */
int rs_cli_close_output(FILE *f, const char *cmd, const char *name);

#endif
