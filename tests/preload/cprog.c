/* An unmodified C program (no profiler API), built -O2 -g without frame pointers, run under
 * LD_PRELOAD=libpyroscope_preload.so by check.sh. Known work in known functions:
 *   c_spin          burns CPU;
 *   c_alloc_temp    mallocs and frees 64 MiB in 4 KiB blocks;
 *   c_leak          mallocs 32 MiB in 64 KiB blocks and keeps them;
 *   c_cxx_like      calloc/realloc/posix_memalign/aligned_alloc, freed;
 * and a thread that leaves through pthread_exit. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) uint64_t c_spin(uint64_t ns) {
    volatile uint64_t x = 1;
    uint64_t end = cpu_ns() + ns;
    while (cpu_ns() < end)
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ull + (uint64_t)i;
    return x;
}

__attribute__((noinline)) size_t c_alloc_temp(size_t total, size_t block) {
    size_t n = 0;
    for (size_t done = 0; done < total; done += block) {
        char *p = malloc(block);
        if (!p) abort();
        memset(p, 1, 64);
        n += (size_t)p[7];
        free(p);
    }
    return n;
}

static void *kept[1024];

__attribute__((noinline)) void c_leak(size_t total, size_t block) {
    size_t i = 0;
    for (size_t done = 0; done < total && i < 1024; done += block) {
        kept[i] = malloc(block);
        memset(kept[i], 2, 64);
        i++;
    }
}

__attribute__((noinline)) void c_cxx_like(int rounds) {
    for (int r = 0; r < rounds; r++) {
        void *a = calloc(16, 1024);
        a = realloc(a, 32 * 1024);
        void *b = NULL;
        if (posix_memalign(&b, 64, 8192) != 0) abort();
        void *c = aligned_alloc(4096, 4096);
        free(a);
        free(b);
        free(c);
    }
}

static void *worker(void *arg) {
    (void)arg;
    c_spin(300 * 1000000ull);
    return NULL;
}

/* Leaves through pthread_exit, which unwinds through the preload library's thread start. */
static void *exiter(void *arg) {
    pthread_exit(arg);
    return NULL;
}

int main(void) {
    pthread_t t, e;
    void *ret = NULL;
    if (pthread_create(&e, NULL, exiter, (void *)0x5eed) != 0 || pthread_join(e, &ret) != 0 || ret != (void *)0x5eed) {
        fprintf(stderr, "pthread_exit's value was lost\n");
        return 1;
    }
    pthread_create(&t, NULL, worker, NULL);
    c_spin(300 * 1000000ull);
    c_alloc_temp(64u << 20, 4096);
    c_leak(32u << 20, 64 * 1024);
    c_cxx_like(2000);
    pthread_join(t, NULL);
    printf("cprog done %p\n", kept[0]);
    return 0;
}
