/* Built -O2 -g without frame pointers: the unwinder must use .eh_frame here. */
#include <stdint.h>
#include <time.h>

/* The dlopen'ed copy is built with -DPREFIX=d_ so its frames can be told apart. */
#ifndef PREFIX
#define PREFIX c_
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define NAME(x) CAT(PREFIX, x)

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) uint64_t NAME(leaf_spin)(uint64_t ns) {
    volatile uint64_t x = 1;
    uint64_t end = thread_cpu_ns() + ns;
    while (thread_cpu_ns() < end)
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ull + (uint64_t)i;
    return x;
}

__attribute__((noinline)) uint64_t NAME(middle)(uint64_t ns) {
    uint64_t buf[16];
    for (int i = 0; i < 16; i++) buf[i] = (uint64_t)i * ns;
    uint64_t r = NAME(leaf_spin)(ns);
    return r + buf[(int)(r & 15)];
}

__attribute__((noinline)) uint64_t NAME(outer)(uint64_t ns) {
    uint64_t r = NAME(middle)(ns);
    return r ^ 0x5a5a;
}
