/*
 * Human units for the text reports: every report prints bytes and durations
 * the same way. JSON output never goes through here (it carries raw numbers).
 */
#ifndef REFSCOPE_UNITS_H
#define REFSCOPE_UNITS_H

#include <stddef.h>
#include <stdint.h>

/* "512 B", "1.5 KiB", "12.3 MiB", "2.0 GiB", ... into buf; returns buf. */
const char *rs_units_bytes(uint64_t bytes, char *buf, size_t len);

/* "850ns", "12.5us", "3.42ms", "1.20s" into buf; returns buf. */
const char *rs_units_ns(double ns, char *buf, size_t len);

#endif
