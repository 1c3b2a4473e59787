/* The floor of any LD_PRELOAD memory profiler: malloc, calloc, realloc and free interposed and
 * forwarded to glibc, nothing else. `make bench` measures it next to libpyroscope_preload.so.
 *
 * Built with -DCOUNT it also counts allocations and their bytes and prints both to stderr at
 * exit ("allocations=N bytes=B"): the bench driver sizes its workloads with it. */
#include <stddef.h>
#include <stdio.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void __libc_free(void *ptr);

#ifdef COUNT
static unsigned long long allocations, bytes;
#define SEEN(size) (__atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED), \
                    __atomic_fetch_add(&bytes, (size), __ATOMIC_RELAXED))
__attribute__((destructor)) static void report(void) {
    fprintf(stderr, "allocations=%llu bytes=%llu\n", allocations, bytes);
}
#else
#define SEEN(size) ((void)0)
#endif

void *malloc(size_t size) {
    SEEN(size);
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
    SEEN(n * size);
    return __libc_calloc(n, size);
}

void *realloc(void *ptr, size_t size) {
    SEEN(size);
    return __libc_realloc(ptr, size);
}

void free(void *ptr) { __libc_free(ptr); }
