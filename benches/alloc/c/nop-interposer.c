/* The floor of any LD_PRELOAD memory profiler: malloc and free interposed and forwarded to
 * glibc, nothing else. `make bench` measures it next to libpyroscope_preload.so. */
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);

void *malloc(size_t size) { return __libc_malloc(size); }

void free(void *ptr) { __libc_free(ptr); }
