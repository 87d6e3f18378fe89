/*
 * Frame rules from an object's .eh_frame (common/cfi.c), for the shim's
 * native unwinder (preload/unwind.c).
 *
 * A rule says, for code at one address, where the caller's frame is:
 *     CFA            = (rsp or rbp) + cfa_off
 *     return address = *(CFA - 8)
 *     caller's rsp   = CFA
 *     caller's rbp   = bp_saved ? *(CFA + bp_off) : rbp
 * That is everything x86-64 compilers emit for ordinary functions. Anything
 * else (signal trampolines, DWARF expressions, a CFA in another register as
 * in functions that realign their stack, a return address not at CFA-8) is
 * RS_CFI_UNSUPPORTED: the caller must unwind that stack some other way.
 *
 * The address looked up is the exact pc for the innermost frame and the
 * return address minus one for the others (a call can be a function's last
 * instruction).
 *
 * rs_cfi_rule_at() reads only the object's mapped unwind tables, found
 * through its PT_GNU_EH_FRAME segment (.eh_frame_hdr); it does not allocate,
 * lock or make system calls, so it may run inside malloc. Malformed tables
 * answer RS_CFI_UNSUPPORTED, never read past the CIE or FDE they parse.
 * Defined for x86-64; elsewhere it answers RS_CFI_UNSUPPORTED.
 */
#ifndef REFSCOPE_CFI_H
#define REFSCOPE_CFI_H

#include <stdint.h>

enum rs_cfi_kind {
    RS_CFI_NONE = 0,        /* no FDE covers the address */
    RS_CFI_OK = 1,          /* the rule below applies */
    RS_CFI_END = 2,         /* return address undefined: the outermost frame */
    RS_CFI_UNSUPPORTED = 3, /* covered, but not by a rule of the form above */
};

enum rs_cfi_reg { RS_CFI_REG_SP = 0, RS_CFI_REG_BP = 1 };

struct rs_cfi_rule {
    uint8_t kind;           /* enum rs_cfi_kind */
    uint8_t cfa_reg;        /* enum rs_cfi_reg */
    uint8_t bp_saved;
    int32_t cfa_off;
    int32_t bp_off;         /* meaningful when bp_saved */
};

/* Fills *out for `pc` in the object whose .eh_frame_hdr is mapped at
 * `eh_frame_hdr`; returns out->kind. */
int rs_cfi_rule_at(const uint8_t *eh_frame_hdr, uint64_t pc, struct rs_cfi_rule *out);

#endif
