/*
 * The GC model: replays GC records, census records, object events and
 * OBJ-domain frees (records of issue 4, events.h) into per-collection and
 * per-generation facts — collections, objects examined, collected,
 * uncollectable, promoted (examined objects still tracked in the next
 * generation when the collection ended, exact), pauses — plus the threshold
 * history and the notes reports must repeat. It also tracks objects (by address) so that `lifetimes` gets
 * one death per object with its type, allocation site and whether it had
 * been promoted to the oldest generation ("tenured").
 *
 * Feed every record in trace order with rs_gcmodel_feed(), then call
 * rs_gcmodel_finish() once; the model is then read through the structs below.
 */
#ifndef REFSCOPE_GCMODEL_H
#define REFSCOPE_GCMODEL_H

#include <stdint.h>
#include "trace_read.h"

#define RS_GC_GENS 3
#define RS_GC_UNKNOWN UINT64_MAX

struct rs_gc_collection {
    uint32_t seq;            /* 1, 2, ... as the shim numbered them          */
    uint8_t  generation;     /* 0x0f = unknown                                */
    uint8_t  flags;          /* RS_GC_F_* (shutdown, whole heap)              */
    uint8_t  complete;       /* STOP seen                                      */
    uint64_t start_ns, pause_ns;
    uint64_t counts[RS_GC_GENS];   /* gc.get_count() at start                */
    uint64_t collected, uncollectable;
    uint64_t examined;       /* census size, RS_GC_UNKNOWN without census      */
    uint64_t promoted;       /* RS_GC_UNKNOWN without census                   */
    uint64_t tenured;        /* of those, objects that reached generation 2
                                from a younger one; RS_GC_UNKNOWN without census */
};

struct rs_gc_generation {
    uint64_t collections;          /* before tracing + traced (not shutdown)  */
    uint64_t collected, uncollectable;
    uint64_t before_tracing;       /* collections in the baseline (get_stats)  */
    uint64_t collected_before_tracing, uncollectable_before_tracing;
    uint64_t traced;               /* collections seen while the program ran   */
    uint64_t shutdown;             /* collections during finalization          */
    uint64_t examined, promoted;   /* over traced collections with a census    */
    uint64_t census_collections;
    uint64_t pause_total_ns, pause_max_ns, pause_p50_ns, pause_p99_ns;
    double   pause_mean_ns;
    double   survival_rate;        /* promoted / examined, -1 when unknown     */
};

struct rs_gc_config_change {
    uint64_t time_ns;
    uint8_t  reason;               /* enum rs_gc_cfg_reason                    */
    uint8_t  enabled;
    uint8_t  nthresh;
    uint64_t thresholds[RS_GC_GENS];
    uint64_t freeze_count;         /* UINT64_MAX: unknown                      */
    char     function[32];         /* "set_threshold", ... or ""               */
};

/* One object (or OBJ-domain block) death, for lifetime reports. */
struct rs_gc_death {
    uint64_t born_ns;              /* RS_GC_UNKNOWN: born before tracing       */
    uint64_t died_ns;
    uint64_t addr;
    uint32_t type;                 /* type id, 0 = unknown                     */
    uint32_t stack;                /* allocation/creation stack id, 0 = none   */
    uint8_t  tenured;              /* had been promoted to the oldest generation */
    uint8_t  from_block;           /* 1 = an OBJ-domain block free, 0 = DESTROY */
    uint8_t  at_shutdown;          /* died during interpreter finalization     */
};

typedef void (*rs_gc_death_fn)(void *arg, const struct rs_gc_death *d);

struct rs_gc_model {
    struct rs_gc_collection *collections;
    uint64_t ncollections;
    struct rs_gc_generation gens[RS_GC_GENS];
    struct rs_gc_config_change *configs;
    uint64_t nconfigs;
    char   **notes;                /* NOTE texts to repeat in every report     */
    uint16_t *note_codes;
    uint32_t nnotes;
    int have_gc;                   /* any GC record                            */
    int have_baseline;
    int census;                    /* census on, in the format this reader knows
                                      (RS_GC_CENSUS_FORMAT)                     */
    int census_format;             /* GC_INFO MODE census byte: 0 = off, 1 = an
                                      older shim's format (not read)            */
    int generational;              /* 0: free-threaded whole-heap collections  */
    int incremental;               /* 3.14.0-3.14.4                            */
    uint64_t tenured_expected;     /* objects SURVIVAL records said were tenured */
    uint64_t tenured_listed;       /* ... and those their TENURED records named;
                                      fewer: census records were lost          */
    uint64_t object_creates;       /* OBJ_CREATE records (3.13+)               */
    uint64_t object_destroys;
    uint64_t shutdown_ns;          /* first shutdown collection, or UINT64_MAX */
    struct rs_gc_model_priv *priv;
};

/* Returns 0 or -ENOMEM. on_death (may be NULL) is called for every object
 * death (OBJ_DESTROY) and every OBJ-domain block free, in trace order. */
int rs_gcmodel_init(struct rs_gc_model *m, rs_gc_death_fn on_death, void *arg);
int rs_gcmodel_feed(struct rs_gc_model *m, const struct rs_event *ev);
/* Computes the per-generation numbers; end_ns = time of the last record. */
int rs_gcmodel_finish(struct rs_gc_model *m, uint64_t end_ns);
void rs_gcmodel_free(struct rs_gc_model *m);

/* Live objects the model still tracks at the end, for reports: calls fn for
 * each object created (3.13+) or block allocated and never freed. */
void rs_gcmodel_foreach_alive(const struct rs_gc_model *m, rs_gc_death_fn fn, void *arg);

#endif
