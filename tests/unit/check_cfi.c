/*
 * Frame rules from .eh_frame (common/cfi.c): a hand-assembled table checked
 * rule by rule (CFA moves, rbp saves, remember/restore state, expressions,
 * addresses outside every FDE, a bad header), then the rules the compiler
 * wrote for this test's own functions: unwinding with them must land on
 * the return addresses and the caller's rbp the functions really have.
 */
#include <check.h>
#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "refscope/cfi.h"
#include "check_run.h"

/* ---- a hand-assembled .eh_frame_hdr, CIE and FDE --------------------------- */

struct synth {
    uint8_t buf[256];
    const uint8_t *hdr;
    uint64_t pc0;           /* the FDE covers [pc0, pc0 + 0x100) */
};

static void put32(uint8_t *p, int32_t v) { memcpy(p, &v, 4); }

/* `aug`: the CIE's augmentation, "zR" plus letters without data */
static void synth_build_aug(struct synth *s, const char *aug, const uint8_t *insns, size_t n_insns)
{
    uint8_t *b = s->buf;
    memset(b, 0, sizeof(s->buf));
    s->pc0 = (uint64_t)(uintptr_t)b + 0x1000;   /* never read: only compared */

    /* CIE at 32: version 1, code align 1, data align -8, RA column 16,
     * FDE pointers pcrel|sdata4; CFA = rsp + 8, RA at CFA - 8 */
    uint8_t *cie = b + 32, *c = cie + 4;
    memset(c, 0, 4);                    /* CIE id */
    c += 4;
    *c++ = 1;                           /* version */
    memcpy(c, aug, strlen(aug) + 1);
    c += strlen(aug) + 1;
    static const uint8_t rest[] = {
        1, 0x78, 16,            /* code align, data align (-8), RA column */
        1, 0x1b,                /* augmentation data: FDE encoding */
        0x0c, 7, 8,             /* def_cfa rsp, 8 */
        0x90, 1,                /* offset r16 (RA), 1 * -8 */
    };
    memcpy(c, rest, sizeof(rest));
    c += sizeof(rest);
    put32(cie, (int32_t)(c - (cie + 4)));

    /* FDE right after it */
    uint8_t *fde = c;
    uint8_t *f = fde + 4;
    put32(f, (int32_t)(f - cie));                               /* CIE pointer */
    put32(f + 4, (int32_t)(s->pc0 - (uint64_t)(uintptr_t)(f + 4)));   /* pc begin, pcrel */
    put32(f + 8, 0x100);                                        /* range */
    f[12] = 0;                                                  /* augmentation data length */
    memcpy(f + 13, insns, n_insns);
    size_t body = 13 + n_insns;
    put32(fde, (int32_t)body);
    uint8_t *end = fde + 4 + body;
    put32(end, 0);                                              /* terminator */

    /* .eh_frame_hdr at 0: eh_frame pcrel|sdata4, count udata4, table datarel|sdata4 */
    b[0] = 1;
    b[1] = 0x1b;
    b[2] = 0x03;
    b[3] = 0x3b;
    put32(b + 4, (int32_t)(cie - (b + 4)));
    put32(b + 8, 1);
    put32(b + 12, (int32_t)(s->pc0 - (uint64_t)(uintptr_t)b));
    put32(b + 16, (int32_t)(fde - b));
    s->hdr = b;
}

static void synth_build(struct synth *s, const uint8_t *insns, size_t n_insns)
{
    synth_build_aug(s, "zR", insns, n_insns);
}

static struct rs_cfi_rule rule_at(const struct synth *s, uint64_t off)
{
    struct rs_cfi_rule r;
    int kind = rs_cfi_rule_at(s->hdr, s->pc0 + off, &r);
    ck_assert_int_eq(kind, r.kind);
    return r;
}

START_TEST(synthetic_table)
{
    static const uint8_t insns[] = {
        0x41,                   /* advance 1 */
        0x0e, 16,               /* def_cfa_offset 16 */
        0x86, 2,                /* offset rbp, 2 * -8 */
        0x43,                   /* advance 3 */
        0x0d, 6,                /* def_cfa_register rbp */
        0x60,                   /* advance 0x20 (to 0x24) */
        0x0a,                   /* remember_state */
        0x0c, 7, 8,             /* def_cfa rsp, 8 */
        0xc6,                   /* restore rbp (to the CIE's: unchanged) */
        0x41,                   /* advance 1 (to 0x25) */
        0x0b,                   /* restore_state */
        0x50,                   /* advance 0x10 (to 0x35) */
        0x0f, 2, 0x77, 8,       /* def_cfa_expression: breg7 +8 */
        0x02, 0x10,             /* advance_loc1 0x10 (to 0x45) */
        0x0c, 3, 8,             /* def_cfa rbx, 8 */
        0x41,                   /* advance 1 (to 0x46) */
        0x07, 16,               /* undefined RA */
    };
    struct synth s;
    struct rs_cfi_rule r;
    synth_build(&s, insns, sizeof(insns));

    r = rule_at(&s, 0);
    ck_assert_int_eq(r.kind, RS_CFI_OK);
    ck_assert_int_eq(r.cfa_reg, RS_CFI_REG_SP);
    ck_assert_int_eq(r.cfa_off, 8);
    ck_assert_int_eq(r.bp_saved, 0);

    r = rule_at(&s, 1);
    ck_assert_int_eq(r.kind, RS_CFI_OK);
    ck_assert_int_eq(r.cfa_reg, RS_CFI_REG_SP);
    ck_assert_int_eq(r.cfa_off, 16);
    ck_assert_int_eq(r.bp_saved, 1);
    ck_assert_int_eq(r.bp_off, -16);
    r = rule_at(&s, 3);                 /* still the rule of 1 */
    ck_assert_int_eq(r.cfa_off, 16);
    ck_assert_int_eq(r.cfa_reg, RS_CFI_REG_SP);

    r = rule_at(&s, 4);
    ck_assert_int_eq(r.kind, RS_CFI_OK);
    ck_assert_int_eq(r.cfa_reg, RS_CFI_REG_BP);
    ck_assert_int_eq(r.cfa_off, 16);
    ck_assert_int_eq(r.bp_saved, 1);

    r = rule_at(&s, 0x24);              /* after remember: rsp + 8, rbp restored */
    ck_assert_int_eq(r.kind, RS_CFI_OK);
    ck_assert_int_eq(r.cfa_reg, RS_CFI_REG_SP);
    ck_assert_int_eq(r.cfa_off, 8);
    ck_assert_int_eq(r.bp_saved, 0);

    r = rule_at(&s, 0x25);              /* restore_state: back to rbp + 16, rbp saved */
    ck_assert_int_eq(r.kind, RS_CFI_OK);
    ck_assert_int_eq(r.cfa_reg, RS_CFI_REG_BP);
    ck_assert_int_eq(r.cfa_off, 16);
    ck_assert_int_eq(r.bp_saved, 1);
    ck_assert_int_eq(r.bp_off, -16);

    ck_assert_int_eq(rule_at(&s, 0x35).kind, RS_CFI_UNSUPPORTED);  /* expression */
    ck_assert_int_eq(rule_at(&s, 0x45).kind, RS_CFI_UNSUPPORTED);  /* CFA in rbx */
    ck_assert_int_eq(rule_at(&s, 0x46).kind, RS_CFI_END);          /* RA undefined */
    ck_assert_int_eq(rule_at(&s, 0xff).kind, RS_CFI_END);
    ck_assert_int_eq(rule_at(&s, 0x100).kind, RS_CFI_NONE);        /* past the FDE */
    struct rs_cfi_rule below;
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0 - 1, &below), RS_CFI_NONE);
}
END_TEST

START_TEST(malformed_tables)
{
    struct synth s;
    struct rs_cfi_rule r;
    static const uint8_t unknown_op[] = {0x41, 0x3f, 0x41};       /* 0x3f: not an opcode */
    synth_build(&s, unknown_op, sizeof(unknown_op));
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_OK); /* before it */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0 + 1, &r), RS_CFI_UNSUPPORTED);

    static const uint8_t cut_uleb[] = {0x41, 0x0e, 0x80};          /* unterminated LEB128 */
    synth_build(&s, cut_uleb, sizeof(cut_uleb));
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0 + 1, &r), RS_CFI_UNSUPPORTED);

    static const uint8_t unbalanced[] = {0x0b};                     /* restore_state, none saved */
    synth_build(&s, unbalanced, sizeof(unbalanced));
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_UNSUPPORTED);

    static const uint8_t nested[] = {0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a};
    synth_build(&s, nested, sizeof(nested));                       /* 9 > the state stack */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_UNSUPPORTED);

    synth_build(&s, NULL, 0);
    s.buf[0] = 2;                                                   /* unknown header version */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_NONE);
    synth_build(&s, NULL, 0);
    s.buf[3] = 0x1b;                                                /* table not datarel sdata4 */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_NONE);
    synth_build(&s, NULL, 0);
    s.buf[32 + 4 + 4] = 9;                                          /* CIE version 9 */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_UNSUPPORTED);
    synth_build_aug(&s, "zRQ", NULL, 0);                           /* unknown letter */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_UNSUPPORTED);
    synth_build_aug(&s, "zRS", NULL, 0);                           /* signal frame */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_UNSUPPORTED);
    synth_build_aug(&s, "zRB", NULL, 0);                           /* known, no data */
    ck_assert_int_eq(rs_cfi_rule_at(s.hdr, s.pc0, &r), RS_CFI_OK);
}
END_TEST

/* ---- this program's own tables ------------------------------------------------- */

#if defined(__x86_64__)
static const uint8_t *own_hdr;

static int find_own_hdr(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    (void)arg;
    uintptr_t self = (uintptr_t)&find_own_hdr;
    const uint8_t *hdr = NULL;
    int mine = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && self >= start && self < start + ph->p_memsz)
            mine = 1;
        if (ph->p_type == PT_GNU_EH_FRAME)
            hdr = (const uint8_t *)start;
    }
    if (mine)
        own_hdr = hdr;
    return mine;
}

struct state {
    uint64_t ip, sp, bp;
};

#define CAPTURE(st) \
    __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2" \
                     : "=r"((st).ip), "=r"((st).sp), "=r"((st).bp))

/* One frame up with the rules; returns the kind. `exact`: st->ip is not a
 * return address. */
static int unwind_one(struct state *st, int exact)
{
    struct rs_cfi_rule r;
    int kind = rs_cfi_rule_at(own_hdr, exact ? st->ip : st->ip - 1, &r);
    if (kind != RS_CFI_OK)
        return kind;
    uint64_t cfa = (r.cfa_reg == RS_CFI_REG_BP ? st->bp : st->sp) + (uint64_t)(int64_t)r.cfa_off;
    uint64_t ip = *(const uint64_t *)(uintptr_t)(cfa - 8);
    if (r.bp_saved)
        st->bp = *(const uint64_t *)(uintptr_t)(cfa + (uint64_t)(int64_t)r.bp_off);
    st->ip = ip;
    st->sp = cfa;
    return kind;
}

static uint64_t ras[3], caller_bp;
static volatile int sink;

/* rbp-based CFA: a frame pointer and a variable-length array */
__attribute__((noinline, optimize("no-omit-frame-pointer")))
static void level3(int n)
{
    volatile char vla[n];
    struct state st;
    vla[0] = 1;
    ras[2] = (uint64_t)(uintptr_t)__builtin_return_address(0);
    CAPTURE(st);
    ck_assert_int_eq(unwind_one(&st, 1), RS_CFI_OK);
    ck_assert_uint_eq(st.ip, ras[2]);
    ck_assert_uint_eq(st.bp, caller_bp);      /* level2's frame pointer, restored */
    ck_assert_int_eq(unwind_one(&st, 0), RS_CFI_OK);
    ck_assert_uint_eq(st.ip, ras[1]);
    ck_assert_int_eq(unwind_one(&st, 0), RS_CFI_OK);
    ck_assert_uint_eq(st.ip, ras[0]);
    sink = vla[0];
}

__attribute__((noinline, optimize("no-omit-frame-pointer")))
static void level2(int n)
{
    ras[1] = (uint64_t)(uintptr_t)__builtin_return_address(0);
    __asm__ volatile("mov %%rbp, %0" : "=r"(caller_bp));
    level3(n + 1);
    sink++;
}

/* rsp-based CFA (the unit tests are built without frame pointers) */
__attribute__((noinline))
static void level1(int n)
{
    struct state st;
    ras[0] = (uint64_t)(uintptr_t)__builtin_return_address(0);
    CAPTURE(st);
    level2(n + 1);
    struct rs_cfi_rule r;
    ck_assert_int_eq(rs_cfi_rule_at(own_hdr, st.ip, &r), RS_CFI_OK);
    ck_assert_int_eq(unwind_one(&st, 1), RS_CFI_OK);
    ck_assert_uint_eq(st.ip, ras[0]);
    sink++;
}

extern char _start[];

START_TEST(own_functions)
{
    dl_iterate_phdr(find_own_hdr, NULL);
    ck_assert_ptr_nonnull(own_hdr);
    level1(3);
    struct rs_cfi_rule r;
    /* _start says where the stack ends (DW_CFA_undefined rip) */
    ck_assert_int_eq(rs_cfi_rule_at(own_hdr, (uint64_t)(uintptr_t)_start + 1, &r), RS_CFI_END);
    /* data is in no FDE */
    ck_assert_int_eq(rs_cfi_rule_at(own_hdr, (uint64_t)(uintptr_t)&ras, &r), RS_CFI_NONE);
}
END_TEST
#endif

int main(void)
{
    const TTest *tests[] = {
        synthetic_table,
        malformed_tables,
#if defined(__x86_64__)
        own_functions,
#endif
    };
    return rs_check_run("cfi", 30, tests, sizeof(tests) / sizeof(tests[0]));
}
