/*
 * Human units for the text reports (units.h): binary prefixes for bytes, the
 * largest unit below the value for durations.
 */
#include <stdio.h>
#include "units.h"

const char *rs_units_bytes(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    unsigned u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.2f %s", v, units[u]);
    return buf;
}

const char *rs_units_ns(double ns, char *buf, size_t len)
{
    if (ns >= 1e9)
        snprintf(buf, len, "%.2fs", ns / 1e9);
    else if (ns >= 1e6)
        snprintf(buf, len, "%.2fms", ns / 1e6);
    else if (ns >= 1e3)
        snprintf(buf, len, "%.1fus", ns / 1e3);
    else
        snprintf(buf, len, "%.0fns", ns);
    return buf;
}
