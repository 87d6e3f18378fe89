/*
 * The refscope subcommands. Each lives in its own analyzer/cmd_<name>.c and
 * has this signature: argv[0] is the subcommand name; it returns the process
 * exit status (0 ok, 1 bad input or failed analysis, 2 usage error) after
 * printing at most one line "refscope <cmd>: <what failed>" on stderr.
 */
#ifndef REFSCOPE_COMMANDS_H
#define REFSCOPE_COMMANDS_H

int cmd_run(int argc, char **argv);        /* trace a command               */
int cmd_record(int argc, char **argv);     /* recorder for the direct form  */
int cmd_summary(int argc, char **argv);    /* issue 2                       */
int cmd_top(int argc, char **argv);        /* issue 3                       */
int cmd_flamegraph(int argc, char **argv); /* issue 3                       */
int cmd_gc(int argc, char **argv);         /* issue 4                       */
int cmd_lifetimes(int argc, char **argv);  /* issue 4                       */
int cmd_leaks(int argc, char **argv);      /* issue 5                       */
int cmd_cycles(int argc, char **argv);     /* issue 5                       */
int cmd_diff(int argc, char **argv);       /* issue 5: snapshot diff        */
int cmd_dump(int argc, char **argv);       /* every record, one per line    */

#endif
