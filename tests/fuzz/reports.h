/*
 * The reports both fuzzers run on every input (tests/fuzz/): the argument
 * lists, and running one of them in this process.
 */
#ifndef REFSCOPE_FUZZ_REPORTS_H
#define REFSCOPE_FUZZ_REPORTS_H

#include <stddef.h>

/* TRACE stands for the input's path, DOT for a scratch file. */
#define MAX_ARGS 10
#define NREPORTS ((size_t)17) /* the table has exactly this many (else its definition does not compile) */
extern const char *const reports[NREPORTS][MAX_ARGS];

/* Run report k on `trace` (scratch output `dot`); returns its exit status. */
int run_report(size_t k, const char *trace, const char *dot);

#endif
