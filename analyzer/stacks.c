/*
 * Stack resolution, offline (analyzer/stacks.h).
 *
 * Model. Feeding keeps four tables built from the trace's definition
 * records: code objects (RS_EV_PY_CODE), Python stacks (RS_EV_PY_STACK),
 * native stacks (RS_EV_NATIVE_STACK, with the ordinal at which each was
 * defined) and the module map (RS_EV_MODULE_MAP, each module with the
 * ordinals of its load and unload). Nothing is symbolized while feeding.
 *
 * Resolving a stack id happens once per id (cached): Python frames come from
 * the code table; native return addresses are mapped to the module that held
 * them when the stack was defined, symbolized with libdw (one offline Dwfl per
 * module, opened lazily, at the module's recorded load bias, so addresses
 * are runtime addresses; inlined frames from dwarf_getscopes), then the
 * Python frames are spliced in place of the interpreter's eval-loop frames:
 * one _PyEval_EvalFrameDefault C frame runs the run of Python frames that
 * ends at an RS_PYFRAME_ENTRY frame (3.11+); when no frame carries the flag
 * (older shims) each eval frame runs one Python frame. A module whose file is
 * gone or whose build-id differs from the recorded one is never symbolized:
 * its frames read "[libfoo.so+0x1234]" and a warning says why.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>

#include "grow.h"
#include "itable.h"
#include "stacks.h"
#include "u64map.h"

/* ---- small containers ------------------------------------------------------------- */

#define VEC(T) struct { T *v; size_t n, cap; }

#define VEC_PUSH(vec, val) \
    (rs_grow((void **)&(vec).v, &(vec).cap, (vec).n + 1, sizeof(*(vec).v)) ? -ENOMEM : \
     ((vec).v[(vec).n++] = (val), 0))

/* The id tables map a record's id to its table index + 1; 0 = absent. */
static uint32_t id_lookup(const struct u64map *m, uint32_t id)
{
    const uint64_t *v = u64map_get(m, id);
    return v ? (uint32_t)*v : 0;
}

/* interned strings: equal strings share one pointer for the table's life */
struct strpool {
    char **slots;
    size_t cap, used;
};

static const char *strpool_intern(struct strpool *sp, const char *s, size_t n)
{
    if ((sp->used + 1) * 2 > sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 1024;
        char **slots = calloc(cap, sizeof(*slots));
        if (!slots)
            return NULL;
        for (size_t i = 0; i < sp->cap; i++) {
            if (!sp->slots[i])
                continue;
            size_t j = rs_hash_bytes(RS_HASH_INIT, sp->slots[i], strlen(sp->slots[i])) & (cap - 1);
            while (slots[j])
                j = (j + 1) & (cap - 1);
            slots[j] = sp->slots[i];
        }
        free(sp->slots);
        sp->slots = slots;
        sp->cap = cap;
    }
    size_t i = rs_hash_bytes(RS_HASH_INIT, s, n) & (sp->cap - 1);
    for (; sp->slots[i]; i = (i + 1) & (sp->cap - 1))
        if (!strncmp(sp->slots[i], s, n) && sp->slots[i][n] == 0)
            return sp->slots[i];
    char *copy = malloc(n + 1);
    if (!copy)
        return NULL;
    memcpy(copy, s, n);
    copy[n] = 0;
    sp->slots[i] = copy;
    sp->used++;
    return copy;
}

static void strpool_free(struct strpool *sp)
{
    for (size_t i = 0; i < sp->cap; i++)
        free(sp->slots[i]);
    free(sp->slots);
}

/* ---- tables ------------------------------------------------------------------------- */

struct code {
    const char *file, *function;
};

struct pyframe {
    uint32_t code, line, flags;
};

struct pystack {
    uint32_t native;
    uint32_t first, count;   /* into pyframes */
    int resolved;            /* cache: `out` holds the frames */
    uint32_t out_count;
    struct rs_frame *out;
};

struct nstack {
    uint64_t ordinal;
    uint32_t first, count;   /* into ips */
};

struct module {
    uint64_t bias, start, size;
    uint64_t load_ord, close_ord;
    uint8_t build_id[64];
    uint8_t build_id_len;
    const char *path;
    const char *base;        /* basename */
    int state;               /* 0 not opened, 1 symbolizing, -1 unusable */
    int is_shim;
    Dwfl *dwfl;
    Dwfl_Module *mod;
};

/* symbolized native address: a run of frames (inline chain, innermost first) */
struct symaddr {
    uint64_t ip;
    uint32_t module;         /* index + 1; 0 = no module */
    uint32_t first, count;   /* into symframes */
};

struct rs_stacks {
    struct strpool strings;
    VEC(struct code) codes;
    struct u64map code_ids;
    VEC(struct pyframe) pyframes;
    VEC(struct pystack) pystacks;
    struct u64map pystack_ids;
    VEC(uint64_t) ips;
    VEC(struct nstack) nstacks;
    struct u64map nstack_ids;
    VEC(struct module) modules;
    VEC(struct rs_frame) symframes;
    VEC(struct symaddr) symaddrs;
    struct rs_itable symaddr_index; /* symaddrs by (ip, module) */
    VEC(struct rs_frame) scratch;
    char *warnings;
    size_t warnings_len;
    int python_only;           /* rs_stacks_set_native(s, 0) */
};

struct rs_stacks *rs_stacks_new(void)
{
    return calloc(1, sizeof(struct rs_stacks));
}

void rs_stacks_free(struct rs_stacks *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->modules.n; i++)
        if (s->modules.v[i].dwfl)
            dwfl_end(s->modules.v[i].dwfl);
    strpool_free(&s->strings);
    free(s->codes.v);
    u64map_free(&s->code_ids);
    free(s->pyframes.v);
    for (size_t i = 0; i < s->pystacks.n; i++)
        free(s->pystacks.v[i].out);
    free(s->pystacks.v);
    u64map_free(&s->pystack_ids);
    free(s->ips.v);
    free(s->nstacks.v);
    u64map_free(&s->nstack_ids);
    free(s->modules.v);
    free(s->symframes.v);
    free(s->symaddrs.v);
    rs_itable_free(&s->symaddr_index);
    free(s->scratch.v);
    free(s->warnings);
    free(s);
}

static void warn_once(struct rs_stacks *s, const char *fmt, const char *arg)
{
    char line[1024];
    snprintf(line, sizeof(line), fmt, arg);
    if (s->warnings && strstr(s->warnings, line))
        return;
    size_t n = strlen(line);
    char *w = realloc(s->warnings, s->warnings_len + n + 2);
    if (!w)
        return;
    if (s->warnings_len)
        w[s->warnings_len++] = '\n';
    memcpy(w + s->warnings_len, line, n + 1);
    s->warnings = w;
    s->warnings_len += n;
}

void rs_stacks_set_native(struct rs_stacks *s, int native)
{
    s->python_only = !native;
}

const char *rs_stacks_warnings(const struct rs_stacks *s)
{
    return s->warnings;
}

/* ---- feeding ------------------------------------------------------------------------ */

struct reader {
    const uint8_t *p;
    uint32_t len, off;
    int bad;
};

static uint64_t rd_le(struct reader *r, unsigned n)
{
    uint64_t v = 0;
    if (r->off + n > r->len) {
        r->bad = 1;
        return 0;
    }
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)r->p[r->off + i] << (8 * i);
    r->off += n;
    return v;
}

static const char *rd_str(struct rs_stacks *s, struct reader *r)
{
    uint32_t n = (uint32_t)rd_le(r, 2);
    if (r->bad || r->off + n > r->len) {
        r->bad = 1;
        return NULL;
    }
    const char *str = strpool_intern(&s->strings, (const char *)r->p + r->off, n);
    r->off += n;
    return str;
}

static int feed_code(struct rs_stacks *s, struct reader *r)
{
    struct code c;
    uint32_t id = (uint32_t)rd_le(r, 4);
    rd_le(r, 4);  /* first line */
    rd_le(r, 8);  /* address */
    c.file = rd_str(s, r);
    c.function = rd_str(s, r);
    if (r->bad || !id)
        return -EPROTO;
    if (VEC_PUSH(s->codes, c))
        return -ENOMEM;
    return u64map_put(&s->code_ids, id, (uint32_t)s->codes.n) < 0 ? -ENOMEM : 0;
}

static int feed_pystack(struct rs_stacks *s, struct reader *r)
{
    struct pystack ps = {0};
    uint32_t id = (uint32_t)rd_le(r, 4);
    ps.native = (uint32_t)rd_le(r, 4);
    uint32_t n = (uint32_t)rd_le(r, 2);
    rd_le(r, 2);
    if (r->bad || !id)
        return -EPROTO;
    ps.first = (uint32_t)s->pyframes.n;
    for (uint32_t i = 0; i < n; i++) {
        struct pyframe f;
        f.code = (uint32_t)rd_le(r, 4);
        f.line = (uint32_t)rd_le(r, 4);
        f.flags = (uint32_t)rd_le(r, 4);
        if (r->bad)
            return -EPROTO;
        if (VEC_PUSH(s->pyframes, f))
            return -ENOMEM;
    }
    ps.count = n;
    if (VEC_PUSH(s->pystacks, ps))
        return -ENOMEM;
    return u64map_put(&s->pystack_ids, id, (uint32_t)s->pystacks.n) < 0 ? -ENOMEM : 0;
}

static int feed_nstack(struct rs_stacks *s, struct reader *r, uint64_t ordinal)
{
    struct nstack ns = {ordinal, (uint32_t)s->ips.n, 0};
    uint32_t id = (uint32_t)rd_le(r, 4);
    uint32_t n = (uint32_t)rd_le(r, 2);
    rd_le(r, 2);
    if (r->bad || !id)
        return -EPROTO;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t ip = rd_le(r, 8);
        if (r->bad)
            return -EPROTO;
        if (VEC_PUSH(s->ips, ip))
            return -ENOMEM;
    }
    ns.count = n;
    if (VEC_PUSH(s->nstacks, ns))
        return -ENOMEM;
    return u64map_put(&s->nstack_ids, id, (uint32_t)s->nstacks.n) < 0 ? -ENOMEM : 0;
}

static int feed_module(struct rs_stacks *s, struct reader *r, uint64_t ordinal)
{
    struct module m = {0};
    uint8_t event = (uint8_t)rd_le(r, 1);
    m.build_id_len = (uint8_t)rd_le(r, 1);
    rd_le(r, 2);
    rd_le(r, 4);
    m.bias = rd_le(r, 8);
    m.start = rd_le(r, 8);
    m.size = rd_le(r, 8);
    if (m.build_id_len > 64 || r->off + m.build_id_len > r->len)
        return -EPROTO;
    memcpy(m.build_id, r->p + r->off, m.build_id_len);
    r->off += m.build_id_len;
    m.path = rd_str(s, r);
    if (r->bad)
        return -EPROTO;
    if (event == RS_MODULE_DLCLOSE) {
        for (size_t i = s->modules.n; i-- > 0;) {
            struct module *o = &s->modules.v[i];
            if (o->close_ord == UINT64_MAX && o->start == m.start && o->size == m.size) {
                o->close_ord = ordinal;
                break;
            }
        }
        return 0;
    }
    const char *slash = m.path ? strrchr(m.path, '/') : NULL;
    m.base = slash ? slash + 1 : (m.path ? m.path : "");
    m.is_shim = !strncmp(m.base, "librefscope", 11);
    m.load_ord = ordinal;
    m.close_ord = UINT64_MAX;
    return VEC_PUSH(s->modules, m);
}

int rs_stacks_feed(struct rs_stacks *s, const struct rs_event *ev)
{
    struct reader r = {ev->payload, ev->payload_len, 0, 0};

    switch (ev->kind) {
    case RS_EV_PY_CODE:
        return feed_code(s, &r);
    case RS_EV_PY_STACK:
        return feed_pystack(s, &r);
    case RS_EV_NATIVE_STACK:
        return feed_nstack(s, &r, ev->ordinal);
    case RS_EV_MODULE_MAP:
        return feed_module(s, &r, ev->ordinal);
    default:
        return 0;
    }
}

/* ---- symbolization -------------------------------------------------------------------- */

static const Dwfl_Callbacks offline_callbacks = {
    .find_elf = dwfl_build_id_find_elf,
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .section_address = dwfl_offline_section_address,
};

static int module_open(struct rs_stacks *s, struct module *m)
{
    const unsigned char *bits;
    GElf_Addr vaddr;

    if (m->state)
        return m->state;
    m->state = -1;
    if (!m->path || m->path[0] != '/') {
        return -1;
    }
    if (access(m->path, R_OK)) {
        warn_once(s, "%s is not readable: its frames are not symbolized", m->path);
        return -1;
    }
    m->dwfl = dwfl_begin(&offline_callbacks);
    if (!m->dwfl)
        return -1;
    dwfl_report_begin(m->dwfl);
    m->mod = dwfl_report_elf(m->dwfl, m->base, m->path, -1, m->bias, false);
    dwfl_report_end(m->dwfl, NULL, NULL);
    if (!m->mod) {
        warn_once(s, "%s: not an ELF file libdw can read: its frames are not symbolized", m->path);
        return -1;
    }
    int n = dwfl_module_build_id(m->mod, &bits, &vaddr);
    if (m->build_id_len && (n != m->build_id_len || memcmp(bits, m->build_id, (size_t)n))) {
        warn_once(s, "%s changed since the trace was taken (build-id differs): its frames are not symbolized",
                  m->path);
        return -1;
    }
    m->state = 1;
    return 1;
}

static const char *die_name(Dwarf_Die *die)
{
    Dwarf_Attribute attr;
    const char *name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_linkage_name, &attr));
    if (!name)
        name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &attr));
    return name;
}

/* "name@@GLIBC_2.2.5" -> "name" (copied into buf when it has a version) */
static const char *strip_symbol_version(const char *name, char *buf, size_t len)
{
    const char *at = strchr(name, '@');
    if (!at)
        return name;
    snprintf(buf, len, "%.*s", (int)(at - name), name);
    return buf;
}

static int push_symframe(struct rs_stacks *s, const char *function, const char *file,
                         uint32_t line, int inlined, uint64_t ip, const struct module *m)
{
    struct rs_frame f = {
        .function = function ? strpool_intern(&s->strings, function, strlen(function)) : NULL,
        .file = file ? strpool_intern(&s->strings, file, strlen(file)) : NULL,
        .line = line,
        .native = 1,
        .inlined = (uint8_t)inlined,
        .ip = ip,
        .module = m ? m->path : NULL,
    };
    return VEC_PUSH(s->symframes, f);
}

/* The chain of function and inlined-subroutine DIEs holding pc, outermost
 * first, found by descending only into DIEs whose ranges hold pc (much
 * cheaper than dwarf_getscopes, which visits the whole CU). Returns depth. */
#define MAX_SCOPES 64
static int find_scopes(Dwarf_Die *parent, Dwarf_Addr pc, Dwarf_Die *chain, int depth)
{
    Dwarf_Die child;
    if (dwarf_child(parent, &child) != 0)
        return depth;
    do {
        int tag = dwarf_tag(&child);
        switch (tag) {
        case DW_TAG_subprogram:
        case DW_TAG_inlined_subroutine:
        case DW_TAG_lexical_block:
            if (dwarf_haspc(&child, pc) == 1) {
                if (tag != DW_TAG_lexical_block && depth < MAX_SCOPES)
                    chain[depth++] = child;
                return find_scopes(&child, pc, chain, depth);
            }
            break;
        case DW_TAG_namespace:
        case DW_TAG_class_type:
        case DW_TAG_structure_type:
        case DW_TAG_module: {
            int d = find_scopes(&child, pc, chain, depth);
            if (d > depth)
                return d;
            break;
        }
        default:
            break;
        }
    } while (dwarf_siblingof(&child, &child) == 0);
    return depth;
}

/* Appends the frames of one return address (innermost inline first). */
static int symbolize(struct rs_stacks *s, struct module *m, uint64_t ip)
{
    char fallback[512];
    uint64_t pc = ip - 1;
    size_t before = s->symframes.n;

    if (m && !m->is_shim && module_open(s, m) > 0) {
        Dwarf_Addr bias = 0;
        const char *file = NULL;
        int line = 0;
        Dwfl_Line *dl = dwfl_module_getsrc(m->mod, pc);
        if (dl)
            file = dwfl_lineinfo(dl, NULL, &line, NULL, NULL, NULL);

        const char *symname = NULL;   /* ELF symbol lookup is a linear scan: only when needed */
        GElf_Off off;
        GElf_Sym sym;
        Dwarf_Die *cudie = dwfl_module_addrdie(m->mod, pc, &bias);
        Dwarf_Die chain[MAX_SCOPES];
        int nchain = cudie ? find_scopes(cudie, pc - bias, chain, 0) : 0;
        Dwarf_Files *files = NULL;
        size_t nfiles = 0;
        if (cudie && dwarf_getsrcfiles(cudie, &files, &nfiles))
            files = NULL;
        /* innermost scope first: inlined subroutines, then the function */
        for (int i = nchain - 1; i >= 0; i--) {
            Dwarf_Die *sc = &chain[i];
            if (dwarf_tag(sc) == DW_TAG_inlined_subroutine) {
                if (push_symframe(s, die_name(sc), file, (uint32_t)line, 1, ip, m))
                    return -ENOMEM;
                Dwarf_Attribute attr;
                Dwarf_Word v = 0;
                file = NULL;
                line = 0;
                if (files && !dwarf_formudata(dwarf_attr(sc, DW_AT_call_file, &attr), &v))
                    file = dwarf_filesrc(files, v, NULL, NULL);
                if (!dwarf_formudata(dwarf_attr(sc, DW_AT_call_line, &attr), &v))
                    line = (int)v;
            } else {
                const char *name = die_name(sc);
                if (!name)
                    name = symname = dwfl_module_addrinfo(m->mod, pc, &off, &sym, NULL, NULL, NULL);
                if (push_symframe(s, name, file, (uint32_t)line, 0, ip, m))
                    return -ENOMEM;
                break;
            }
        }
        if (s->symframes.n == before || s->symframes.v[s->symframes.n - 1].inlined) {
            /* no DWARF subprogram: the ELF symbol table names it */
            if (!symname)
                symname = dwfl_module_addrinfo(m->mod, pc, &off, &sym, NULL, NULL, NULL);
            if (symname)
                symname = strip_symbol_version(symname, fallback, sizeof(fallback));
            else {
                snprintf(fallback, sizeof(fallback), "[%s+0x%llx]", m->base,
                         (unsigned long long)(ip - m->bias));
                symname = fallback;
            }
            if (push_symframe(s, symname, file, (uint32_t)line, 0, ip, m))
                return -ENOMEM;
        }
        return 0;
    }
    if (m && m->is_shim) {
        /* our own frame: name it by the ELF symbol, which the shim exports
         * only for the interposed functions */
        const char *name = NULL;
        if (module_open(s, m) > 0) {
            GElf_Off off;
            GElf_Sym sym;
            name = dwfl_module_addrinfo(m->mod, pc, &off, &sym, NULL, NULL, NULL);
        }
        return push_symframe(s, name ? name : "[refscope]", NULL, 0, 0, ip, m);
    }
    if (m)
        snprintf(fallback, sizeof(fallback), "[%s+0x%llx]", m->base, (unsigned long long)(ip - m->bias));
    else
        snprintf(fallback, sizeof(fallback), "[0x%llx]", (unsigned long long)ip);
    return push_symframe(s, fallback, NULL, 0, 0, ip, m);
}

static struct module *module_for(struct rs_stacks *s, uint64_t ip, uint64_t ordinal)
{
    struct module *later = NULL;
    for (size_t i = s->modules.n; i-- > 0;) {
        struct module *m = &s->modules.v[i];
        if (ip < m->start || ip - m->start >= m->size)
            continue;
        if (m->load_ord <= ordinal && ordinal < m->close_ord)
            return m;
        if (m->load_ord > ordinal)
            later = m;   /* loaded by a dlopen still running at the time */
    }
    return later;
}

static uint64_t symaddr_hash(uint64_t ip, uint32_t module)
{
    return (ip * 0x9e3779b97f4a7c15ull) ^ module;
}

static uint64_t symaddr_hash_of(const void *ctx, uint32_t index)
{
    const struct symaddr *a = &((const struct rs_stacks *)ctx)->symaddrs.v[index];
    return symaddr_hash(a->ip, a->module);
}

static int symaddr_get(struct rs_stacks *s, uint64_t ip, uint64_t ordinal, const struct symaddr **out)
{
    struct module *m = module_for(s, ip, ordinal);
    uint32_t mod = m ? (uint32_t)(m - s->modules.v) + 1 : 0;

    if (rs_itable_reserve(&s->symaddr_index, s->symaddrs.n + 1, symaddr_hash_of, s))
        return -ENOMEM;
    size_t j = rs_itable_start(&s->symaddr_index, symaddr_hash(ip, mod));
    for (uint32_t k; (k = s->symaddr_index.slots[j]); j = rs_itable_next(&s->symaddr_index, j)) {
        const struct symaddr *a = &s->symaddrs.v[k - 1];
        if (a->ip == ip && a->module == mod) {
            *out = a;
            return 0;
        }
    }
    struct symaddr a = {ip, mod, (uint32_t)s->symframes.n, 0};
    int ret = symbolize(s, m, ip);
    if (ret)
        return ret;
    a.count = (uint32_t)(s->symframes.n - a.first);
    if (VEC_PUSH(s->symaddrs, a))
        return -ENOMEM;
    s->symaddr_index.slots[j] = (uint32_t)s->symaddrs.n;
    *out = &s->symaddrs.v[s->symaddrs.n - 1];
    return 0;
}

/* ---- resolution and splicing ------------------------------------------------------------ */

static const char *const allocator_entries[] = {
    "malloc", "calloc", "realloc", "reallocarray", "free", "posix_memalign",
    "aligned_alloc", "memalign", "valloc", "pvalloc",
};

static int is_allocator_entry(const char *name)
{
    for (size_t i = 0; name && i < sizeof(allocator_entries) / sizeof(allocator_entries[0]); i++)
        if (!strcmp(name, allocator_entries[i]))
            return 1;
    return 0;
}

static int is_eval_loop(const char *name)
{
    return name && !strncmp(name, "_PyEval_EvalFrameDefault", 24);
}

static int push_pyframe(struct rs_stacks *s, const struct pyframe *pf)
{
    uint32_t idx = id_lookup(&s->code_ids, pf->code);
    const struct code *c = idx ? &s->codes.v[idx - 1] : NULL;
    struct rs_frame f = {
        .function = c && c->function ? c->function : "<unknown code>",
        .file = c ? c->file : NULL,
        .line = pf->line,
    };
    return VEC_PUSH(s->scratch, f);
}

static int resolve_into_scratch(struct rs_stacks *s, const struct pystack *ps)
{
    const struct pyframe *py = ps->count ? s->pyframes.v + ps->first : NULL;
    uint32_t npy = ps->count, pi = 0;
    int has_entry = 0;
    int ret;

    for (uint32_t i = 0; i < npy; i++)
        has_entry |= (py[i].flags & RS_PYFRAME_ENTRY) != 0;

    uint32_t nidx = ps->native && !s->python_only ? id_lookup(&s->nstack_ids, ps->native) : 0;
    if (nidx) {
        const struct nstack ns = s->nstacks.v[nidx - 1];
        for (uint32_t k = 0; k < ns.count; k++) {
            const struct symaddr *a;
            if ((ret = symaddr_get(s, s->ips.v[ns.first + k], ns.ordinal, &a)))
                return ret;
            const struct rs_frame *chain = s->symframes.v + a->first;
            const struct rs_frame *outer = &chain[a->count - 1];
            const struct module *m = a->module ? &s->modules.v[a->module - 1] : NULL;
            if (m && m->is_shim) {
                /* keep only the interposed allocator the program called */
                if (is_allocator_entry(outer->function) && VEC_PUSH(s->scratch, *outer))
                    return -ENOMEM;
                continue;
            }
            if (is_eval_loop(outer->function) && pi < npy) {
                /* this C frame ran the Python frames up to the next ENTRY */
                for (;;) {
                    uint32_t flags = py[pi].flags;
                    if ((ret = push_pyframe(s, &py[pi++])))
                        return ret;
                    if (!has_entry || (flags & RS_PYFRAME_ENTRY) || pi >= npy)
                        break;
                }
                continue;
            }
            for (uint32_t c = 0; c < a->count; c++)
                if (VEC_PUSH(s->scratch, chain[c]))
                    return -ENOMEM;
        }
    }
    /* Python frames left over (no native stack, or fewer eval frames than
     * runs): they are the outermost ones */
    for (; pi < npy; pi++)
        if ((ret = push_pyframe(s, &py[pi])))
            return ret;
    return 0;
}

int rs_stacks_resolve(struct rs_stacks *s, uint32_t id, const struct rs_frame **frames)
{
    *frames = NULL;
    uint32_t idx = id ? id_lookup(&s->pystack_ids, id) : 0;
    if (!idx)
        return 0;
    struct pystack *ps = &s->pystacks.v[idx - 1];
    if (!ps->resolved) {
        s->scratch.n = 0;
        if (resolve_into_scratch(s, ps))
            return 0;
        if (s->scratch.n) {
            ps->out = malloc(s->scratch.n * sizeof(*ps->out));
            if (!ps->out)
                return 0;
            memcpy(ps->out, s->scratch.v, s->scratch.n * sizeof(*ps->out));
        }
        ps->out_count = (uint32_t)s->scratch.n;
        ps->resolved = 1;
    }
    *frames = ps->out;
    return (int)ps->out_count;
}
