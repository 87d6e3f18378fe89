/*
 * Frame rules from .eh_frame (include/refscope/cfi.h). Finds the FDE that
 * covers an address through the binary-search table of .eh_frame_hdr, then
 * runs the call-frame instructions of its CIE and of the FDE up to that
 * address, tracking only the CFA, rbp and the return address. Runs inside
 * malloc hooks of the traced process: no allocation, no locks, every read
 * bounded by the length of the entry it belongs to.
 */
#include <stddef.h>
#include <string.h>

#include "refscope/cfi.h"

#if defined(__x86_64__)

/* DWARF register numbers on x86-64 */
#define DW_RBP 6
#define DW_RSP 7

/* pointer encodings (DW_EH_PE_*) */
#define PE_OMIT    0xff
#define PE_FORMAT  0x0f
#define PE_APPL    0x70
#define PE_PCREL   0x10
#define PE_DATAREL 0x30
#define PE_INDIRECT 0x80
#define PE_TABLE_DATAREL_SDATA4 0x3b

enum reg_how { REG_SAME, REG_OFFSET, REG_UNDEF, REG_OTHER };

struct reg_rule {
    uint8_t how;            /* enum reg_how */
    int64_t off;            /* REG_OFFSET: saved at CFA + off */
};

struct frame_state {
    uint64_t cfa_reg;
    int64_t cfa_off;
    int cfa_expr;           /* CFA given by a DWARF expression */
    struct reg_rule bp, ra;
};

struct cursor {
    const uint8_t *p, *end;
    int bad;
};

static uint8_t rd_u8(struct cursor *c)
{
    if (c->p >= c->end) {
        c->bad = 1;
        return 0;
    }
    return *c->p++;
}

static uint64_t rd_fixed(struct cursor *c, size_t n)
{
    uint64_t v = 0;
    if ((size_t)(c->end - c->p) < n) {
        c->bad = 1;
        c->p = c->end;
        return 0;
    }
    memcpy(&v, c->p, n);    /* little-endian */
    c->p += n;
    return v;
}

static uint64_t rd_uleb(struct cursor *c)
{
    uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
        uint8_t b = rd_u8(c);
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80) || c->bad)
            return v;
    }
}

static int64_t rd_sleb(struct cursor *c)
{
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b;
    do {
        b = rd_u8(c);
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
    } while ((b & 0x80) && !c->bad);
    if (shift < 64 && (b & 0x40))
        v |= ~0ull << shift;
    return (int64_t)v;
}

/* An encoded pointer. `datarel` is the base for DW_EH_PE_datarel (the
 * .eh_frame_hdr start there; unused in .eh_frame). Indirect pointers are
 * returned as the address of the pointer: only skipped values use them. */
static uint64_t rd_encoded(struct cursor *c, uint8_t enc, uint64_t datarel)
{
    uint64_t at = (uint64_t)(uintptr_t)c->p, v;
    if (enc == PE_OMIT)
        return 0;
    switch (enc & PE_FORMAT) {
    case 0x00: v = rd_fixed(c, 8); break;                       /* absptr */
    case 0x01: v = rd_uleb(c); break;
    case 0x02: v = rd_fixed(c, 2); break;
    case 0x03: v = rd_fixed(c, 4); break;
    case 0x04: v = rd_fixed(c, 8); break;
    case 0x09: v = (uint64_t)rd_sleb(c); break;
    case 0x0a: v = (uint64_t)(int64_t)(int16_t)rd_fixed(c, 2); break;
    case 0x0b: v = (uint64_t)(int64_t)(int32_t)rd_fixed(c, 4); break;
    case 0x0c: v = rd_fixed(c, 8); break;
    default: c->bad = 1; return 0;
    }
    switch (enc & PE_APPL) {
    case 0: break;
    case PE_PCREL: v += at; break;
    case PE_DATAREL: v += datarel; break;
    default: c->bad = 1; return 0;                              /* textrel, funcrel, aligned */
    }
    return v;
}

/* A CIE or FDE at p: its contents [body, end). Returns 0 when malformed
 * or the zero terminator. */
static int entry_bounds(const uint8_t *p, const uint8_t **body, const uint8_t **end)
{
    uint32_t len32;
    memcpy(&len32, p, 4);
    if (len32 == 0)
        return 0;
    if (len32 == 0xffffffffu) {
        uint64_t len64;
        memcpy(&len64, p + 4, 8);
        if (len64 > (1ull << 32))
            return 0;
        *body = p + 12;
        *end = *body + len64;
        return 1;
    }
    *body = p + 4;
    *end = *body + len32;
    return 1;
}

struct cie {
    uint64_t code_align;
    int64_t data_align;
    uint64_t ra_reg;
    uint8_t fde_enc;
    int has_aug_data;       /* 'z' */
    int signal_frame;       /* 'S' */
    const uint8_t *insns, *end;
};

static int parse_cie(const uint8_t *p, struct cie *cie)
{
    const uint8_t *body, *end;
    if (!entry_bounds(p, &body, &end))
        return -1;
    struct cursor c = {body, end, 0};
    if (rd_fixed(&c, 4) != 0)
        return -1;                      /* not a CIE */
    uint8_t version = rd_u8(&c);
    if (version != 1 && version != 3)
        return -1;
    const char *aug = (const char *)c.p;
    size_t aug_len = strnlen(aug, (size_t)(c.end - c.p));
    if (aug_len == (size_t)(c.end - c.p))
        return -1;
    c.p += aug_len + 1;
    if (aug[0] && aug[0] != 'z')
        return -1;                      /* "eh" and other pre-'z' forms */
    memset(cie, 0, sizeof(*cie));
    cie->fde_enc = 0;                   /* absptr unless 'R' says otherwise */
    cie->code_align = rd_uleb(&c);
    cie->data_align = rd_sleb(&c);
    cie->ra_reg = version == 1 ? rd_u8(&c) : rd_uleb(&c);
    if (aug[0] == 'z') {
        uint64_t n = rd_uleb(&c);
        if (c.bad || n > (uint64_t)(c.end - c.p))
            return -1;
        struct cursor a = {c.p, c.p + n, 0};
        cie->has_aug_data = 1;
        for (const char *s = aug + 1; *s; s++) {
            switch (*s) {
            case 'R': cie->fde_enc = rd_u8(&a); break;
            case 'L': rd_u8(&a); break;                         /* LSDA encoding */
            case 'P': {                                         /* personality */
                uint8_t enc = rd_u8(&a);
                rd_encoded(&a, (uint8_t)(enc & ~PE_INDIRECT), 0);
                break;
            }
            case 'S': cie->signal_frame = 1; break;
            case 'B': case 'G': break;                          /* no data */
            default: return -1;
            }
        }
        if (a.bad)
            return -1;
        c.p += n;
    }
    if (c.bad || !cie->code_align)
        return -1;
    cie->insns = c.p;
    cie->end = end;
    return 0;
}

#define STATE_STACK 8

/* Runs instructions [p, end) starting at location `loc`, stopping before
 * the first one that applies beyond `pc`. `init` is the state after the
 * CIE (for DW_CFA_restore); NULL while running the CIE itself. */
static int run_insns(const uint8_t *p, const uint8_t *end, const struct cie *cie,
                     uint64_t loc, uint64_t pc, struct frame_state *st,
                     const struct frame_state *init)
{
    struct frame_state saved[STATE_STACK];
    int depth = 0;
    struct cursor c = {p, end, 0};

    while (c.p < c.end && !c.bad) {
        uint8_t op = rd_u8(&c);
        uint64_t reg, delta = 0;
        int64_t off;
        int advance = 0;

        switch (op >> 6) {
        case 1:                                             /* advance_loc */
            delta = op & 0x3f;
            advance = 1;
            break;
        case 2:                                             /* offset */
            reg = op & 0x3f;
            off = (int64_t)rd_uleb(&c) * cie->data_align;
            goto set_offset;
        case 3:                                             /* restore */
            reg = op & 0x3f;
            goto restore;
        default:
            break;
        }
        if (op >> 6)
            goto next;

        switch (op) {
        case 0x00:                                          /* nop */
            break;
        case 0x01:                                          /* set_loc */
            loc = rd_encoded(&c, cie->fde_enc, 0);
            if (loc > pc)
                return 0;
            break;
        case 0x02: delta = rd_fixed(&c, 1); advance = 1; break;
        case 0x03: delta = rd_fixed(&c, 2); advance = 1; break;
        case 0x04: delta = rd_fixed(&c, 4); advance = 1; break;
        case 0x05:                                          /* offset_extended */
            reg = rd_uleb(&c);
            off = (int64_t)rd_uleb(&c) * cie->data_align;
            goto set_offset;
        case 0x06:                                          /* restore_extended */
            reg = rd_uleb(&c);
            goto restore;
        case 0x07:                                          /* undefined */
        case 0x08:                                          /* same_value */
            reg = rd_uleb(&c);
            if (reg == DW_RBP)
                st->bp.how = op == 0x07 ? REG_UNDEF : REG_SAME;
            if (reg == cie->ra_reg)
                st->ra.how = op == 0x07 ? REG_UNDEF : REG_OTHER;
            break;
        case 0x09:                                          /* register */
            reg = rd_uleb(&c);
            rd_uleb(&c);
            goto other;
        case 0x0a:                                          /* remember_state */
            if (depth == STATE_STACK)
                return -1;
            saved[depth++] = *st;
            break;
        case 0x0b:                                          /* restore_state */
            if (depth == 0)
                return -1;
            *st = saved[--depth];   /* the CFA too, as libgcc and libunwind do */
            break;
        case 0x0c:                                          /* def_cfa */
            st->cfa_reg = rd_uleb(&c);
            st->cfa_off = (int64_t)rd_uleb(&c);
            st->cfa_expr = 0;
            break;
        case 0x0d:                                          /* def_cfa_register */
            st->cfa_reg = rd_uleb(&c);
            st->cfa_expr = 0;
            break;
        case 0x0e:                                          /* def_cfa_offset */
            st->cfa_off = (int64_t)rd_uleb(&c);
            break;
        case 0x0f: {                                        /* def_cfa_expression */
            uint64_t n = rd_uleb(&c);
            if (n > (uint64_t)(c.end - c.p))
                return -1;
            c.p += n;
            st->cfa_expr = 1;
            break;
        }
        case 0x10:                                          /* expression */
        case 0x16: {                                        /* val_expression */
            reg = rd_uleb(&c);
            uint64_t n = rd_uleb(&c);
            if (n > (uint64_t)(c.end - c.p))
                return -1;
            c.p += n;
            goto other;
        }
        case 0x11:                                          /* offset_extended_sf */
            reg = rd_uleb(&c);
            off = rd_sleb(&c) * cie->data_align;
            goto set_offset;
        case 0x12:                                          /* def_cfa_sf */
            st->cfa_reg = rd_uleb(&c);
            st->cfa_off = rd_sleb(&c) * cie->data_align;
            st->cfa_expr = 0;
            break;
        case 0x13:                                          /* def_cfa_offset_sf */
            st->cfa_off = rd_sleb(&c) * cie->data_align;
            break;
        case 0x14:                                          /* val_offset */
            reg = rd_uleb(&c);
            rd_uleb(&c);
            goto other;
        case 0x15:                                          /* val_offset_sf */
            reg = rd_uleb(&c);
            rd_sleb(&c);
            goto other;
        case 0x2e:                                          /* GNU_args_size */
            rd_uleb(&c);
            break;
        case 0x2f:                                          /* GNU_negative_offset_extended */
            reg = rd_uleb(&c);
            off = -(int64_t)rd_uleb(&c) * cie->data_align;
            goto set_offset;
        default:
            return -1;                                      /* unknown: cannot go on */
        }
        goto next;

    set_offset:
        if (reg == DW_RBP) {
            st->bp.how = REG_OFFSET;
            st->bp.off = off;
        }
        if (reg == cie->ra_reg) {
            st->ra.how = REG_OFFSET;
            st->ra.off = off;
        }
        goto next;
    restore:
        if (!init)
            return -1;                                      /* restore inside the CIE */
        if (reg == DW_RBP)
            st->bp = init->bp;
        if (reg == cie->ra_reg)
            st->ra = init->ra;
        goto next;
    other:
        if (reg == DW_RBP)
            st->bp.how = REG_OTHER;
        if (reg == cie->ra_reg)
            st->ra.how = REG_OTHER;
    next:
        if (advance) {
            loc += delta * cie->code_align;
            if (loc > pc)
                return 0;
        }
    }
    return c.bad ? -1 : 0;
}

/* The FDE the search table names for pc, or NULL. */
static const uint8_t *find_fde(const uint8_t *hdr, uint64_t pc)
{
    if (hdr[0] != 1)
        return NULL;
    uint8_t eh_ptr_enc = hdr[1], count_enc = hdr[2], table_enc = hdr[3];
    struct cursor c = {hdr + 4, hdr + 4 + 16, 0};
    rd_encoded(&c, eh_ptr_enc, (uint64_t)(uintptr_t)hdr);
    uint64_t count = rd_encoded(&c, count_enc, (uint64_t)(uintptr_t)hdr);
    if (c.bad || count == 0 || table_enc != PE_TABLE_DATAREL_SDATA4 || count > (1u << 28))
        return NULL;
    const int32_t *table = (const int32_t *)(const void *)c.p;
    uint64_t base = (uint64_t)(uintptr_t)hdr;
    int64_t rel = (int64_t)(pc - base);
    /* last entry whose initial location is <= pc */
    uint64_t lo = 0, hi = count;
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if ((int64_t)table[2 * mid] <= rel)
            lo = mid;
        else
            hi = mid;
    }
    if ((int64_t)table[2 * lo] > rel)
        return NULL;
    return hdr + table[2 * lo + 1];
}

int rs_cfi_rule_at(const uint8_t *eh_frame_hdr, uint64_t pc, struct rs_cfi_rule *out)
{
    const uint8_t *fde = find_fde(eh_frame_hdr, pc), *body, *end;
    struct cie cie;

    memset(out, 0, sizeof(*out));
    out->kind = RS_CFI_NONE;
    if (!fde || !entry_bounds(fde, &body, &end))
        return out->kind;
    struct cursor c = {body, end, 0};
    uint32_t cie_delta = (uint32_t)rd_fixed(&c, 4);
    if (c.bad || cie_delta == 0)
        return out->kind;                                   /* a CIE, not an FDE */
    out->kind = RS_CFI_UNSUPPORTED;
    if (parse_cie(body - cie_delta, &cie) < 0)
        return out->kind;
    uint64_t start = rd_encoded(&c, cie.fde_enc, 0);
    uint64_t range = rd_encoded(&c, (uint8_t)(cie.fde_enc & PE_FORMAT), 0);
    if (c.bad)
        return out->kind;
    if (pc < start || pc - start >= range) {
        out->kind = RS_CFI_NONE;
        return out->kind;
    }
    if (cie.has_aug_data) {
        uint64_t n = rd_uleb(&c);
        if (c.bad || n > (uint64_t)(c.end - c.p))
            return out->kind;
        c.p += n;
    }
    if (cie.signal_frame)
        return out->kind;

    struct frame_state st = {.cfa_reg = DW_RSP, .cfa_off = 8,
                             .bp = {REG_SAME, 0}, .ra = {REG_SAME, 0}};
    if (run_insns(cie.insns, cie.end, &cie, 0, UINT64_MAX, &st, NULL) < 0)
        return out->kind;
    struct frame_state init = st;
    if (run_insns(c.p, c.end, &cie, start, pc, &st, &init) < 0)
        return out->kind;

    if (st.ra.how == REG_UNDEF) {
        out->kind = RS_CFI_END;
        return out->kind;
    }
    if (st.cfa_expr || (st.cfa_reg != DW_RSP && st.cfa_reg != DW_RBP) ||
        st.ra.how != REG_OFFSET || st.ra.off != -8 ||
        (st.bp.how != REG_SAME && st.bp.how != REG_OFFSET) ||
        st.cfa_off <= 0 || st.cfa_off > INT32_MAX ||
        (st.bp.how == REG_OFFSET && (st.bp.off < INT32_MIN || st.bp.off > INT32_MAX || st.bp.off == 0)))
        return out->kind;
    out->kind = RS_CFI_OK;
    out->cfa_reg = st.cfa_reg == DW_RBP ? RS_CFI_REG_BP : RS_CFI_REG_SP;
    out->cfa_off = (int32_t)st.cfa_off;
    out->bp_saved = st.bp.how == REG_OFFSET;
    out->bp_off = (int32_t)st.bp.off;
    return out->kind;
}

#else

int rs_cfi_rule_at(const uint8_t *eh_frame_hdr, uint64_t pc, struct rs_cfi_rule *out)
{
    (void)eh_frame_hdr;
    (void)pc;
    memset(out, 0, sizeof(*out));
    out->kind = RS_CFI_UNSUPPORTED;
    return out->kind;
}

#endif
