/*
 * Call-stack capture for allocation records. A stack id names a
 * deduplicated stack defined once in the trace by an RS_EV_PY_STACK record
 * (Python frames, innermost first, plus an optional native stack id that an
 * RS_EV_NATIVE_STACK record defines). The hooks call rs_stack_current() with
 * the recursion guard held; it never allocates and never calls the Python C API.
 */
#ifndef REFSCOPE_STACK_H
#define REFSCOPE_STACK_H

#include <stdint.h>

/* Stack id for an allocation happening now on this thread; 0 = no stack
 * (stacks off, not Python and not --native, or capture impossible here).
 * `gil_held`: the caller holds the GIL by contract (PyMem MEM and OBJ
 * domains, arenas, the ref tracer), which makes the thread state cheaper to
 * find; libc and RAW hooks pass 0. */
static inline uint32_t rs_stack_current(int gil_held);

/* Object creations (3.13+ ref tracer) and the block they sit in. CPython
 * allocates an object's block and creates the object in it within one C
 * call, so both would capture the same frames: the OBJ wrappers remember
 * the thread's last block and its stack (rs_stack_note_obj_block, only once
 * rs_stack_obj_memo_on() was called), and the creation of an object inside
 * that block takes that stack instead of walking the frames again
 * (rs_stack_for_object; once per block). Objects made without a fresh block
 * (freelists, static memory), and every object with --native (whose native
 * frames differ), are captured as usual. */
void rs_stack_obj_memo_on(void);
void rs_stack_note_obj_block(uint64_t addr, uint64_t size, uint32_t stack);
uint32_t rs_stack_for_object(uint64_t obj);

/* A block freed in the OBJ domain: lets the stack layer forget a dead code
 * object at that address (code objects are reused by address). Inline,
 * below: a look at the block's would-be ob_type, compared with &PyCode_Type,
 * never followed; a block ending a page, whose next page may be unmapped, is
 * not peeked at and goes to the table instead (rs_stack_obj_block_freed). */
static inline void rs_stack_note_obj_free(uint64_t addr);

/* State owned by pystack.c: blocks whose offset in their page is below
 * rs_stack_peek_below (0 while stacks are off) are peeked at, at
 * rs_stack_peek_at (the code object's GC header, if any, + ob_type). */
extern uint32_t rs_stack_peek_below, rs_stack_peek_at;
/* Nonzero while Python or native stacks are captured (pystack.c), and the
 * capture rs_stack_current calls then: with stacks off an allocation costs
 * no call. */
extern int rs_stack_capturing;
uint32_t rs_stack_capture(int gil_held);

static inline uint32_t rs_stack_current(int gil_held)
{
    return __builtin_expect(rs_stack_capturing, 1) ? rs_stack_capture(gil_held) : 0;
}
extern const void *rs_stack_code_type;
void rs_stack_obj_block_freed(uint64_t addr, int is_code);

static inline void rs_stack_note_obj_free(uint64_t addr)
{
    uint32_t below = rs_stack_peek_below;
    if (__builtin_expect((addr & 4095) < below, 1)) {
        if (__builtin_expect(*(const void *const *)(uintptr_t)(addr + rs_stack_peek_at) !=
                             rs_stack_code_type, 1))
            return;
        rs_stack_obj_block_freed(addr, 1);
    } else if (below) {
        rs_stack_obj_block_freed(addr, 0);
    }
}

/* Native capture (preload/unwind.c): id of the deduplicated native stack of
 * the caller, emitting RS_EV_NATIVE_STACK on first sight; 0 when --native is
 * off or unwinding failed. `skip` frames of the shim itself are dropped. */
uint32_t rs_native_stack_current(int skip);

#endif
