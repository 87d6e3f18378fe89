/*
 * `refscope flamegraph`: allocation stacks as a flame graph.
 *
 * The per-stack model (sites.h) gives each stack a weight for the chosen
 * metric (bytes live at the peak, bytes allocated in total, bytes live at
 * the end). Stacks are merged into one call tree, outermost frame at the
 * root. The tree is written either as a self-contained HTML page (data and
 * viewer inline: no network fetch; click to zoom, search to highlight) or as
 * folded stacks ("outer;...;inner weight" lines) for flamegraph.pl and
 * speedscope.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "itable.h"
#include "sites.h"

#define VIEW_MAX 512

enum metric { BY_PEAK, BY_TOTAL, BY_LIVE };
static const char *const metric_names[] = {"peak", "total", "live"};
static const char *const metric_titles[] = {
    "bytes live at the peak", "bytes allocated in total", "bytes live at the end",
};

struct node {
    char *label;
    uint64_t value;      /* this node and its descendants */
    uint64_t self;
    uint32_t parent;
    uint32_t first_child, next_sibling; /* index + 1 */
    uint8_t native;
};

struct tree {
    struct node *nodes;
    size_t n, cap;
    struct rs_itable by_label; /* nodes but the root, by (parent, label) */
};

static uint64_t label_hash(uint32_t parent, const char *s)
{
    return rs_hash_str(RS_HASH_INIT ^ ((uint64_t)parent * 0x9e3779b97f4a7c15ull), s);
}

static uint64_t node_hash(const void *ctx, uint32_t index)
{
    const struct tree *t = ctx;
    return label_hash(t->nodes[index].parent, t->nodes[index].label);
}

static int tree_add_node(struct tree *t, uint32_t parent, const char *label, int native)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        struct node *p = realloc(t->nodes, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        t->nodes = p;
        t->cap = cap;
    }
    struct node *nd = &t->nodes[t->n];
    memset(nd, 0, sizeof(*nd));
    nd->label = strdup(label);
    if (!nd->label)
        return -ENOMEM;
    nd->parent = parent;
    nd->native = (uint8_t)native;
    if (t->n) {
        struct node *p = &t->nodes[parent];
        nd->next_sibling = p->first_child;
        p->first_child = (uint32_t)t->n + 1;
    }
    return (int)t->n++;
}

/* Child of `parent` with `label`, created when missing. */
static int tree_child(struct tree *t, uint32_t parent, const char *label, int native, uint32_t *out)
{
    if (rs_itable_reserve(&t->by_label, t->n + 1, node_hash, t))
        return -ENOMEM;
    size_t j = rs_itable_start(&t->by_label, label_hash(parent, label));
    for (uint32_t k; (k = t->by_label.slots[j]); j = rs_itable_next(&t->by_label, j)) {
        const struct node *nd = &t->nodes[k - 1];
        if (nd->parent == parent && !strcmp(nd->label, label)) {
            *out = k - 1;
            return 0;
        }
    }
    int idx = tree_add_node(t, parent, label, native);
    if (idx < 0)
        return idx;
    t->by_label.slots[j] = (uint32_t)idx + 1;
    *out = (uint32_t)idx;
    return 0;
}

static void frame_label(const struct rs_frame *f, char *buf, size_t len)
{
    const char *fn = f->function ? f->function : "??";
    size_t n;
    if (f->file) {
        const char *slash = strrchr(f->file, '/');
        snprintf(buf, len, "%s (%s:%u)", fn, slash ? slash + 1 : f->file, f->line);
    } else if (f->native && f->module) {
        const char *slash = strrchr(f->module, '/');
        snprintf(buf, len, "%s [%s]", fn, slash ? slash + 1 : f->module);
    } else {
        snprintf(buf, len, "%s", fn);
    }
    /* ';' separates frames in the folded format */
    for (n = 0; buf[n]; n++)
        if (buf[n] == ';')
            buf[n] = ',';
}

static int build_tree(struct rs_sites_model *m, enum metric by, int native, struct tree *t)
{
    const struct rs_frame *view[VIEW_MAX];
    char label[1024];
    int ret;

    if (tree_add_node(t, 0, "all", 0) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < m->count; i++) {
        const struct rs_stack_metrics *sm = &m->metrics[i];
        uint64_t w = by == BY_PEAK ? sm->peak_bytes : by == BY_TOTAL ? sm->bytes : sm->live_bytes_end;
        if (!w)
            continue;
        int nv = rs_sites_view(m, sm->stack, native, view, VIEW_MAX);
        uint32_t cur = 0;
        t->nodes[0].value += w;
        if (nv == 0) {
            if ((ret = tree_child(t, 0, native ? "[no stack]" : "[no Python stack]", 0, &cur)))
                return ret;
            t->nodes[cur].value += w;
        }
        for (int k = nv - 1; k >= 0; k--) {
            frame_label(view[k], label, sizeof(label));
            if ((ret = tree_child(t, cur, label, view[k]->native, &cur)))
                return ret;
            t->nodes[cur].value += w;
        }
        t->nodes[cur].self += w;
    }
    return 0;
}

static json_t *node_json(const struct tree *t, uint32_t idx)
{
    const struct node *nd = &t->nodes[idx];
    json_t *o = json_object(), *c = json_array();
    json_object_set_new(o, "n", json_string(nd->label));
    json_object_set_new(o, "v", json_integer((json_int_t)nd->value));
    if (nd->native)
        json_object_set_new(o, "k", json_integer(1));
    for (uint32_t ch = nd->first_child; ch; ch = t->nodes[ch - 1].next_sibling)
        json_array_append_new(c, node_json(t, ch - 1));
    json_object_set_new(o, "c", c);
    return o;
}

static void write_folded(FILE *out, const struct tree *t, uint32_t idx, char *path, size_t len, size_t cap)
{
    const struct node *nd = &t->nodes[idx];
    size_t l = len;
    if (idx) {
        size_t n = strlen(nd->label);
        if (len + n + 2 >= cap)
            return; /* deeper than the path buffer: dropped */
        if (len)
            path[l++] = ';';
        memcpy(path + l, nd->label, n);
        l += n;
        path[l] = 0;
        if (nd->self)
            fprintf(out, "%s %llu\n", path, (unsigned long long)nd->self);
    }
    for (uint32_t ch = nd->first_child; ch; ch = t->nodes[ch - 1].next_sibling)
        write_folded(out, t, ch - 1, path, l, cap);
    path[len] = 0;
}

static const char html_head[] =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>refscope flamegraph</title>\n"
    "<style>\n"
    "body{font:13px sans-serif;margin:10px;color:#222}\n"
    "#bar{margin:6px 0}#bar input{width:22em}\n"
    "#info{font:12px monospace;height:1.4em;margin:4px 0;white-space:nowrap;overflow:hidden}\n"
    "#fg{position:relative;width:100%;overflow:hidden}\n"
    ".f{position:absolute;height:17px;line-height:17px;font:11px monospace;overflow:hidden;"
    "white-space:nowrap;box-sizing:border-box;border-right:1px solid #fff;border-bottom:1px solid #fff;"
    "padding-left:2px;cursor:pointer}\n"
    ".f:hover{filter:brightness(85%)}\n.f.m{background:#e35ce3 !important}\n"
    "</style></head><body>\n"
    "<div id=\"title\" style=\"font-weight:bold\"></div>\n"
    "<div id=\"bar\">Search: <input id=\"q\" placeholder=\"function or file substring\"> "
    "<button id=\"reset\">Reset zoom</button> <span id=\"matched\"></span></div>\n"
    "<div id=\"info\">Click a frame to zoom in; click the top bar to zoom out.</div>\n"
    "<div id=\"fg\"></div>\n<script>\nvar DATA = ";

static const char html_tail[] =
    ";\n(function(){\n"
    "var fg=document.getElementById('fg'),info=document.getElementById('info'),"
    "q=document.getElementById('q'),matched=document.getElementById('matched');\n"
    "var root=DATA.root,zoom=root,H=18;\n"
    "(function link(n,p){n.p=p;for(var i=0;i<n.c.length;i++)link(n.c[i],n);})(root,null);\n"
    "document.getElementById('title').textContent='refscope: '+DATA.title+' \\u2014 '+DATA.trace;\n"
    "function fmt(v){var u=['B','KiB','MiB','GiB','TiB'],i=0;while(v>=1024&&i<4){v/=1024;i++;}"
    "return (i?v.toFixed(2):v)+' '+u[i];}\n"
    "function pct(v){return root.v?(100*v/root.v).toFixed(2)+'%':'0%';}\n"
    "function hash(s){var h=0;for(var i=0;i<s.length;i++)h=(h*31+s.charCodeAt(i))|0;return h>>>0;}\n"
    "function color(n){var h=hash(n.n);if(n.k)return 'hsl('+(200+h%40)+',55%,'+(62+h%15)+'%)';"
    "return 'hsl('+(10+h%45)+',85%,'+(55+h%15)+'%)';}\n"
    "function box(n,x,w,y){var d=document.createElement('div');d.className='f';"
    "d.style.left=x+'px';d.style.width=Math.max(w,1)+'px';d.style.top=y+'px';"
    "d.style.background=color(n);d.textContent=w>30?n.n:'';d.title=n.n+'\\n'+fmt(n.v)+' ('+pct(n.v)+')';"
    "d.node=n;if(q.value&&n.n.indexOf(q.value)>=0)d.className='f m';"
    "d.onclick=function(){zoom=(n===zoom&&n.p)?n.p:n;render();};"
    "d.onmouseover=function(){info.textContent=n.n+'  '+fmt(n.v)+' ('+pct(n.v)+')';};fg.appendChild(d);}\n"
    "function render(){fg.innerHTML='';var W=fg.clientWidth||1200,y=0,maxy=0,anc=[];"
    "for(var a=zoom.p;a;a=a.p)anc.unshift(a);"
    "for(var i=0;i<anc.length;i++){box(anc[i],0,W,y);y+=H;}"
    "(function walk(n,x,w,y){if(w<0.5)return;box(n,x,w,y);if(y>maxy)maxy=y;var cx=x;"
    "for(var i=0;i<n.c.length;i++){var cw=n.v?w*n.c[i].v/n.v:0;walk(n.c[i],cx,cw,y+H);cx+=cw;}})(zoom,0,W,y);"
    "fg.style.height=(maxy+H+2)+'px';search();}\n"
    "function search(){var s=q.value;if(!s){matched.textContent='';return;}var tot=0;"
    "(function walk(n,inm){var m=n.n.indexOf(s)>=0;if(m&&!inm)tot+=n.v;"
    "for(var i=0;i<n.c.length;i++)walk(n.c[i],inm||m);})(root,false);"
    "matched.textContent='matched '+fmt(tot)+' ('+pct(tot)+')';}\n"
    "q.oninput=render;document.getElementById('reset').onclick=function(){zoom=root;render();};\n"
    "window.onresize=render;render();\n"
    "})();\n</script>\n</body></html>\n";

int cmd_flamegraph(int argc, char **argv)
{
    static const char *const by_names[] = {"peak", "total", "live", NULL};  /* enum metric */
    static const char *const formats[] = {"html", "collapsed", "folded", NULL};
    int by = BY_PEAK, format = 0, native_flag = 0, status = 1, collapsed;
    const char *out_path = NULL, *trace;
    struct rs_sites_model m;
    struct tree t = {0};
    char err[512] = "";
    FILE *out = NULL;

    const struct rs_opt opts[] = {
        {"output", 'o', RS_OPT_STR, &out_path, 0, 0, NULL},
        {"by", 0, RS_OPT_CHOICE, &by, 0, 0, by_names},
        {"format", 0, RS_OPT_CHOICE, &format, 0, 0, formats},
        {"native", 0, RS_OPT_FLAG, &native_flag, 0, 0, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "flamegraph", opts, "TRACE", 1, 1, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    collapsed = format != 0;
    trace = argv[1];
    if (!out_path)
        out_path = collapsed ? "-" : "flamegraph.html";

    if (rs_sites_build(trace, &m, err, sizeof(err))) {
        fprintf(stderr, "refscope flamegraph: %s\n", err);
        return 1;
    }
    int native = rs_sites_native(&m, native_flag);
    rs_stacks_set_native(m.stacks, native);
    if (build_tree(&m, (enum metric)by, native, &t)) {
        fprintf(stderr, "refscope flamegraph: out of memory\n");
        goto out;
    }
    const char *warnings = rs_stacks_warnings(m.stacks);
    if (warnings)
        fprintf(stderr, "refscope flamegraph: warning: %s\n", warnings);

    out = strcmp(out_path, "-") ? fopen(out_path, "w") : stdout;
    if (!out) {
        fprintf(stderr, "refscope flamegraph: cannot write %s: %s\n", out_path, strerror(errno));
        goto out;
    }
    if (collapsed) {
        char path[65536];
        path[0] = 0;
        write_folded(out, &t, 0, path, 0, sizeof(path));
    } else {
        json_t *data = json_object();
        char title[256];
        snprintf(title, sizeof(title), "%s%s", metric_titles[by], native ? " (Python + native frames)" : "");
        json_object_set_new(data, "title", json_string(title));
        json_object_set_new(data, "trace", json_string(trace));
        json_object_set_new(data, "metric", json_string(metric_names[by]));
        json_object_set_new(data, "warnings", warnings ? json_string(warnings) : json_null());
        json_object_set_new(data, "root", node_json(&t, 0));
        char *text = json_dumps(data, JSON_COMPACT);
        json_decref(data);
        if (!text) {
            fprintf(stderr, "refscope flamegraph: out of memory\n");
            goto out;
        }
        fputs(html_head, out);
        /* inside <script>, "</" could close the element: write "<\/" */
        for (const char *p = text; *p; p++) {
            if (p[0] == '<' && p[1] == '/')
                fputs("<\\", out);
            else
                fputc(*p, out);
        }
        free(text);
        fputs(html_tail, out);
    }
    /* stdout's errors are main.c's to report */
    if (out != stdout && rs_cli_close_output(out, "flamegraph", out_path) < 0) {
        out = NULL;
        goto out;
    }
    out = NULL;
    if (strcmp(out_path, "-"))
        fprintf(stderr, "refscope flamegraph: wrote %s (%zu frames, %s)\n", out_path, t.n - 1,
                metric_titles[by]);
    status = 0;
out:
    if (out && out != stdout)
        fclose(out);
    for (size_t i = 0; i < t.n; i++)
        free(t.nodes[i].label);
    free(t.nodes);
    rs_itable_free(&t.by_label);
    rs_sites_free(&m);
    return status;
}
