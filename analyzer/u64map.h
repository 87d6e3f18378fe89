/*
 * u64map: the analyzer's one hash map, from a uint64_t key to a uint64_t
 * value. Open addressing with linear probing over a power-of-two table of
 * interleaved {key, value} entries, kept at most half full; keys are mixed
 * with the murmur3 64-bit finalizer, so aligned addresses and small ids
 * spread alike. Deletion shifts later entries of the probe chain back
 * (no tombstones), so a map survives millions of insert/delete pairs.
 *
 * Every key is allowed, 0 included: the table uses 0 as its empty marker and
 * keeps key 0 in a slot of its own beside the table.
 *
 * When the value is a struct, store an index into an array the caller owns
 * (the usual pattern: `idx = *slot` after u64map_insert, then `arr[idx]`).
 *
 * Value pointers returned by get/insert stay valid until the next call that
 * inserts (insert, put) or deletes; clear and free invalidate them too.
 * Not thread-safe: one map, one thread (or external locking).
 */
#ifndef REFSCOPE_U64MAP_H
#define REFSCOPE_U64MAP_H

#include <stddef.h>
#include <stdint.h>

struct u64map_entry {
    uint64_t key; /* 0 = empty */
    uint64_t val;
};

struct u64map {
    struct u64map_entry *slots;
    size_t mask;      /* capacity - 1; capacity is 0 until the first insert */
    size_t count;     /* entries in slots (key 0 not included)              */
    int has_zero;     /* key 0 is present, its value in zero_val            */
    uint64_t zero_val;
};

/* A zeroed struct u64map is a valid empty map. */
#define U64MAP_INIT {0}

/* Number of keys in the map. */
static inline size_t u64map_count(const struct u64map *m)
{
    return m->count + (m->has_zero ? 1 : 0);
}

/* Makes room for n keys in total without further growth.
 * Returns 0 or -ENOMEM (the map is unchanged then). */
int u64map_reserve(struct u64map *m, size_t n);

/* Pointer to key's value, or NULL when key is absent. The map is not changed;
 * the pointer is writable so a found value can be updated in place. */
uint64_t *u64map_get(const struct u64map *m, uint64_t key);

/* Finds key or inserts it with value val. *slot (when slot is not NULL)
 * receives the pointer to the value, existing or new. Returns 1 when
 * inserted, 0 when the key was already present (its value untouched), or
 * -ENOMEM (nothing inserted, *slot untouched). */
int u64map_insert(struct u64map *m, uint64_t key, uint64_t val, uint64_t **slot);

/* Sets key's value to val, inserting the key when missing. Returns 1 when
 * inserted, 0 when an existing value was replaced, or -ENOMEM. */
int u64map_put(struct u64map *m, uint64_t key, uint64_t val);

/* Removes key. *old (when old is not NULL) receives its value. Returns 1 when
 * removed, 0 when the key was absent. Never allocates, never fails. */
int u64map_delete(struct u64map *m, uint64_t key, uint64_t *old);

/* Iteration: start with *pos = 0 and call until it returns 0; each call that
 * returns 1 stores one entry in *key and *val (either may be NULL). The order
 * is unspecified. The map must not be changed while iterating, except that
 * the value of the entry just returned may be written through u64map_get. */
int u64map_next(const struct u64map *m, size_t *pos, uint64_t *key, uint64_t *val);

/* Removes every key, keeping the table's capacity. */
void u64map_clear(struct u64map *m);

/* Releases the table; the map is empty and reusable afterwards. */
void u64map_free(struct u64map *m);

#endif
