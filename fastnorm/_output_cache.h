/*
 * _output_cache.h - part of fastnorm._core (included by _core.pyx): a NumPy memory handler
 * for the large outputs fastnorm allocates, which keeps a few of them once they are freed
 * and hands one out again for the next output of the same size.
 *
 * Why: glibc serves a block of 32 MB or more from fresh mmapped pages every time (its
 * mmap threshold goes no higher), and the first write to a fresh page costs a page fault
 * and the kernel zeroing it.  On the project's VM (Firecracker, which hands memory that
 * stays free back to the host) an allocating float32 RMSNorm of 32768x768 took 22 ms
 * against 8-13 ms into a preallocated out=, and 16x1048576 on 2 threads 70-146 ms for its
 * first calls after a pause.  ONNX Runtime's outputs come from its own arena, which keeps
 * freed blocks the same way.
 *
 * Blocks come from NumPy's default handler and go back to it when the cache does not keep
 * them, so an array made here behaves as any other NumPy array (resize reallocates through
 * the default handler).  Held at most: FN_CACHE_SLOTS blocks and `limit` bytes; the oldest
 * block is released first.  A lock, not the GIL, guards the cache: NumPy frees an array
 * wherever its last reference goes.
 */
#include <stdatomic.h>

#define FN_CACHE_SLOTS 4
#define FN_CACHE_MIN_BYTES ((size_t)32 << 20) /* smaller blocks glibc reuses itself */

static struct {
    atomic_flag lock;
    size_t held, count; /* bytes held, blocks held */
    void *blocks[FN_CACHE_SLOTS];
    size_t sizes[FN_CACHE_SLOTS]; /* oldest first */
    PyDataMemAllocator *numpy;    /* NumPy's default handler */
} fn_cache = {ATOMIC_FLAG_INIT};
static _Atomic size_t fn_cache_limit; /* bytes the cache may hold */

static void fn_cache_lock(void) { while (atomic_flag_test_and_set_explicit(&fn_cache.lock, memory_order_acquire)) {} }
static void fn_cache_unlock(void) { atomic_flag_clear_explicit(&fn_cache.lock, memory_order_release); }

/* Takes slot i's block out into (*block, *bytes), the later slots moving down one; the
 * lock is held. */
static void fn_cache_take(size_t i, void **block, size_t *bytes) {
    *block = fn_cache.blocks[i], *bytes = fn_cache.sizes[i];
    fn_cache.held -= *bytes, fn_cache.count -= 1;
    memmove(fn_cache.blocks + i, fn_cache.blocks + i + 1, (fn_cache.count - i) * sizeof(void *));
    memmove(fn_cache.sizes + i, fn_cache.sizes + i + 1, (fn_cache.count - i) * sizeof(size_t));
}

/* Releases blocks, oldest first, until the cache holds at most `room` bytes and
 * FN_CACHE_SLOTS - free_slots blocks (called with the lock released: freeing takes time). */
static void fn_cache_trim(size_t room, size_t free_slots) {
    void *blocks[FN_CACHE_SLOTS];
    size_t sizes[FN_CACHE_SLOTS], released = 0;
    fn_cache_lock();
    while (fn_cache.count > 0 && (fn_cache.held > room || fn_cache.count + free_slots > FN_CACHE_SLOTS)) {
        fn_cache_take(0, &blocks[released], &sizes[released]);
        released += 1;
    }
    fn_cache_unlock();
    for (size_t i = 0; i < released; ++i) fn_cache.numpy->free(fn_cache.numpy->ctx, blocks[i], sizes[i]);
}

static void *fn_cache_malloc(void *ctx, size_t bytes) {
    void *block = NULL;
    (void)ctx;
    fn_cache_lock();
    for (size_t i = fn_cache.count; i-- > 0;) { /* the newest of that size */
        if (fn_cache.sizes[i] == bytes) {
            fn_cache_take(i, &block, &bytes);
            break;
        }
    }
    fn_cache_unlock();
    return block ? block : fn_cache.numpy->malloc(fn_cache.numpy->ctx, bytes);
}

static void *fn_cache_calloc(void *ctx, size_t count, size_t size) {
    (void)ctx;
    return fn_cache.numpy->calloc(fn_cache.numpy->ctx, count, size);
}

static void *fn_cache_realloc(void *ctx, void *block, size_t bytes) {
    (void)ctx;
    return fn_cache.numpy->realloc(fn_cache.numpy->ctx, block, bytes);
}

static void fn_cache_free(void *ctx, void *block, size_t bytes) {
    size_t limit = atomic_load_explicit(&fn_cache_limit, memory_order_relaxed);
    (void)ctx;
    if (block == NULL || bytes < FN_CACHE_MIN_BYTES || bytes > limit) {
        fn_cache.numpy->free(fn_cache.numpy->ctx, block, bytes);
        return;
    }
    fn_cache_trim(limit - bytes, 1);
    fn_cache_lock();
    if (fn_cache.count < FN_CACHE_SLOTS && fn_cache.held + bytes <= limit) {
        fn_cache.blocks[fn_cache.count] = block, fn_cache.sizes[fn_cache.count] = bytes;
        fn_cache.count += 1, fn_cache.held += bytes;
        block = NULL;
    }
    fn_cache_unlock();
    if (block) /* another thread filled the room meanwhile */
        fn_cache.numpy->free(fn_cache.numpy->ctx, block, bytes);
}

static PyDataMem_Handler fn_cache_handler = {
    "fastnorm_output_cache", 1,
    {NULL, fn_cache_malloc, fn_cache_calloc, fn_cache_realloc, fn_cache_free},
};

/* The handler as the capsule PyDataMem_SetHandler takes (a new reference), or NULL with an
 * exception set.  Reads NumPy's default handler the first time. */
static PyObject *fn_output_cache_handler(void) {
    if (fn_cache.numpy == NULL) {
        PyDataMem_Handler *numpy = (PyDataMem_Handler *)PyCapsule_GetPointer(PyDataMem_DefaultHandler, "mem_handler");
        if (numpy == NULL) return NULL;
        fn_cache.numpy = &numpy->allocator;
    }
    return PyCapsule_New(&fn_cache_handler, "mem_handler", NULL);
}

/* Keep at most `limit` bytes of freed outputs (0: none), releasing what is over it now. */
static void fn_output_cache_set_limit(size_t limit) {
    atomic_store_explicit(&fn_cache_limit, limit, memory_order_relaxed);
    if (fn_cache.numpy) fn_cache_trim(limit, 0);
}

/* The blocks and bytes the cache holds now. */
static void fn_output_cache_state(size_t *count, size_t *held) {
    fn_cache_lock();
    *count = fn_cache.count, *held = fn_cache.held;
    fn_cache_unlock();
}
