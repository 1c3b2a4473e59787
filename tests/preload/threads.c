/* Thread churn under LD_PRELOAD=libpyroscope_preload.so, run by check.sh with every allocation
 * sampled (PYROSCOPE_ALLOC_SAMPLE_BYTES=1): each thread's registration with the profiler, and
 * glibc's own allocations as the thread-local state behind it is set up and torn down, happen
 * with the allocation hook sampling. Each thread allocates a little and burns a little CPU, so
 * that the CPU timer holds its state too. Prints `threads done N` at the end. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *churn_thread(void *arg) {
    uintptr_t sum = (uintptr_t)arg;
    for (int i = 0; i < 16; i++) {
        char *p = malloc(64 + (size_t)i * 32);
        if (!p) abort();
        memset(p, i, 64);
        sum += (uintptr_t)p[3];
        free(p);
    }
    volatile uint64_t x = sum;
    uint64_t end = cpu_ns() + 2000000; /* 2 ms of CPU: the 100 Hz timer fires in some threads */
    while (cpu_ns() < end) x = x * 6364136223846793005ull + 1;
    return (void *)(uintptr_t)(x & 1);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 200;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, churn_thread, (void *)(uintptr_t)i) != 0) abort();
        if (pthread_join(t, NULL) != 0) abort();
    }
    printf("threads done %d\n", n);
    return 0;
}
