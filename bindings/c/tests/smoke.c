/* C tests of libpyroscope: every function, every error path, and many threads pushing and
 * popping labels while the agent samples them. Valid C99 and C++17 (built both ways).
 * Usage: smoke EXPORT_DIR. Prints "N passed, M failed". */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pyroscope.h"

static int passed = 0, failed = 0;

#define CHECK(cond, what)                                                                     \
    do {                                                                                      \
        if (cond) {                                                                           \
            passed++;                                                                         \
        } else {                                                                              \
            failed++;                                                                         \
            fprintf(stderr, "FAIL line %d: %s (last error: %s)\n", __LINE__, what,           \
                    pyroscope_last_error());                                                  \
        }                                                                                     \
    } while (0)

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) uint64_t c_labelled_work(uint64_t ns) {
    volatile uint64_t x = 1;
    uint64_t end = cpu_ns() + ns;
    while (cpu_ns() < end)
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ull + (uint64_t)i;
    return x;
}

static void *label_thread(void *arg) {
    long id = (long)arg;
    char value[32];
    int ok = 1;
    for (int i = 0; i < 2000; i++) {
        snprintf(value, sizeof value, "w%ld", (id + i) % 8);
        if (pyroscope_labels_push("worker", value) != PYROSCOPE_STATUS_OK) ok = 0;
        if (pyroscope_labels_push("vehicle", (i % 2) ? "car" : "bike") != PYROSCOPE_STATUS_OK) ok = 0;
        if (i % 100 == 0) c_labelled_work(2 * 1000000u);
        if (pyroscope_labels_pop() != PYROSCOPE_STATUS_OK) ok = 0;
        if (pyroscope_labels_pop() != PYROSCOPE_STATUS_OK) ok = 0;
    }
    /* Nothing left to pop on this thread. */
    if (pyroscope_labels_pop() != PYROSCOPE_STATUS_INVALID_STATE) ok = 0;
    return (void *)(intptr_t)ok;
}

/* A short thread that takes no labels: registered, it is sampled from its start. */
__attribute__((noinline)) uint64_t c_registered_work(uint64_t ns) {
    volatile uint64_t x = 1;
    uint64_t end = cpu_ns() + ns;
    while (cpu_ns() < end)
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ull + (uint64_t)i;
    return x;
}

static void *registered_thread(void *arg) {
    (void)arg;
    int ok = pyroscope_thread_register() == PYROSCOPE_STATUS_OK;
    c_registered_work(150 * 1000000u);
    return (void *)(intptr_t)ok;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: smoke EXPORT_DIR\n");
        return 2;
    }
    pyroscope_config *cfg = NULL;
    pyroscope_agent *agent = NULL;

    CHECK(pyroscope_version() != NULL && strlen(pyroscope_version()) > 0, "version");

    /* Error paths of config creation. */
    CHECK(pyroscope_config_new(NULL, &cfg) == PYROSCOPE_STATUS_NULL_ARGUMENT, "NULL name");
    CHECK(strlen(pyroscope_last_error()) > 0, "error message set");
    CHECK(pyroscope_config_new("app", NULL) == PYROSCOPE_STATUS_NULL_ARGUMENT, "NULL out");
    CHECK(pyroscope_config_new("\xff\xfe", &cfg) == PYROSCOPE_STATUS_INVALID_UTF8, "invalid UTF-8");
    CHECK(pyroscope_config_from_env(NULL) == PYROSCOPE_STATUS_NULL_ARGUMENT, "from_env NULL out");

    /* An empty name is caught at start with a message. */
    CHECK(pyroscope_config_new("", &cfg) == PYROSCOPE_STATUS_OK, "empty name accepted until start");
    CHECK(pyroscope_agent_start(cfg, &agent) == PYROSCOPE_STATUS_INVALID_ARGUMENT, "empty name rejected");
    CHECK(strstr(pyroscope_last_error(), "application name") != NULL, "empty name message");
    pyroscope_config_free(&cfg);
    CHECK(cfg == NULL, "config_free clears the pointer");
    pyroscope_config_free(&cfg); /* double free: a no-op by design */
    pyroscope_config_free(NULL);

    CHECK(pyroscope_config_new("c-smoke", &cfg) == PYROSCOPE_STATUS_OK, "config_new");
    CHECK(strlen(pyroscope_last_error()) == 0, "error cleared after success");
    /* Setters: NULL handle, NULL strings, invalid values. */
    CHECK(pyroscope_config_set_server_address(NULL, "http://x") == PYROSCOPE_STATUS_NULL_ARGUMENT, "NULL cfg");
    CHECK(pyroscope_config_set_server_address(cfg, NULL) == PYROSCOPE_STATUS_NULL_ARGUMENT, "NULL address");
    CHECK(pyroscope_config_set_tag(cfg, "bad-key", "v") == PYROSCOPE_STATUS_INVALID_ARGUMENT, "bad tag name");
    CHECK(pyroscope_config_set_tag(cfg, "k", "a,b") == PYROSCOPE_STATUS_INVALID_ARGUMENT, "bad tag value");
    CHECK(pyroscope_config_set_tag(cfg, "k", "\xff") == PYROSCOPE_STATUS_INVALID_UTF8, "UTF-8 tag");
    CHECK(pyroscope_config_set_tags(cfg, "region") == PYROSCOPE_STATUS_INVALID_ARGUMENT, "bad tags string");
    CHECK(pyroscope_config_set_tags(cfg, "region=lab,az=1") == PYROSCOPE_STATUS_OK, "tags");
    CHECK(pyroscope_config_set_tag(cfg, "lang", "c") == PYROSCOPE_STATUS_OK, "tag");
    CHECK(pyroscope_config_set_header(cfg, "X-Test", "1") == PYROSCOPE_STATUS_OK, "header");
    CHECK(pyroscope_config_set_basic_auth(cfg, "u", "p") == PYROSCOPE_STATUS_OK, "basic auth");
    CHECK(pyroscope_config_set_auth_token(cfg, "t") == PYROSCOPE_STATUS_OK, "token");
    CHECK(pyroscope_config_set_tenant_id(cfg, "tenant") == PYROSCOPE_STATUS_OK, "tenant");
    CHECK(pyroscope_config_set_request_timeout_ms(cfg, 2000) == PYROSCOPE_STATUS_OK, "timeout");
    CHECK(pyroscope_config_set_use_ingest(cfg, false) == PYROSCOPE_STATUS_OK, "protocol");
    CHECK(pyroscope_config_set_upload_interval_ms(cfg, 60000) == PYROSCOPE_STATUS_OK, "interval");

    /* Invalid numbers are reported by start, with the setting named. */
    CHECK(pyroscope_config_set_sample_rate(cfg, 0) == PYROSCOPE_STATUS_OK, "rate 0 stored");
    CHECK(pyroscope_agent_start(cfg, &agent) == PYROSCOPE_STATUS_INVALID_ARGUMENT, "rate 0 rejected");
    CHECK(strstr(pyroscope_last_error(), "sample rate") != NULL, "rate message");
    CHECK(pyroscope_config_set_sample_rate(cfg, 100) == PYROSCOPE_STATUS_OK, "rate");
    CHECK(pyroscope_config_set_server_address(cfg, "localhost:4040") == PYROSCOPE_STATUS_OK, "address stored");
    CHECK(pyroscope_agent_start(cfg, &agent) == PYROSCOPE_STATUS_INVALID_ARGUMENT, "bad URL rejected");
    CHECK(strstr(pyroscope_last_error(), "server address") != NULL, "URL message");
    CHECK(pyroscope_config_set_server_address(cfg, "http://127.0.0.1:4040") == PYROSCOPE_STATUS_OK, "address");
    CHECK(pyroscope_config_set_signal(cfg, 2 /* SIGINT */, false) == PYROSCOPE_STATUS_OK, "signal stored");
    CHECK(pyroscope_agent_start(cfg, &agent) == PYROSCOPE_STATUS_INVALID_ARGUMENT, "SIGINT rejected");
    CHECK(strstr(pyroscope_last_error(), "signal") != NULL, "signal message");
    CHECK(pyroscope_config_set_memory(NULL, true) == PYROSCOPE_STATUS_NULL_ARGUMENT, "memory NULL cfg");
    pyroscope_config_free(&cfg);

    /* A real agent on the embedded default. */
    CHECK(pyroscope_config_new("c-smoke", &cfg) == PYROSCOPE_STATUS_OK, "config again");
    CHECK(pyroscope_config_set_export_dir(cfg, argv[1]) == PYROSCOPE_STATUS_OK, "export dir");
    CHECK(pyroscope_config_set_tags(cfg, "region=lab") == PYROSCOPE_STATUS_OK, "tags");
    CHECK(pyroscope_config_set_memory(cfg, false) == PYROSCOPE_STATUS_OK, "memory off");
    CHECK(pyroscope_config_set_shutdown_timeout_ms(NULL, 1000) == PYROSCOPE_STATUS_NULL_ARGUMENT, "shutdown NULL cfg");
    /* Generous: under valgrind the last window takes seconds to build, and the checks below
       want every profile written (the bound itself is tested in pyroscope-core/tests/agent.rs). */
    CHECK(pyroscope_config_set_shutdown_timeout_ms(cfg, 120000) == PYROSCOPE_STATUS_OK, "shutdown timeout");
    CHECK(pyroscope_config_set_signal(cfg, 27 /* SIGPROF */, false) == PYROSCOPE_STATUS_OK, "signal");
    CHECK(pyroscope_agent_start(NULL, &agent) == PYROSCOPE_STATUS_NULL_ARGUMENT, "start NULL cfg");
    CHECK(pyroscope_agent_start(cfg, NULL) == PYROSCOPE_STATUS_NULL_ARGUMENT, "start NULL out");
    CHECK(pyroscope_agent_start(cfg, &agent) == PYROSCOPE_STATUS_OK, "start");
    pyroscope_agent *second = NULL;
    CHECK(pyroscope_agent_start(cfg, &second) == PYROSCOPE_STATUS_INVALID_STATE && second == NULL, "one agent at a time");
    pyroscope_config_free(&cfg); /* the agent does not need it any more */

    /* A push always pushes one level, to be popped whatever the status. */
    CHECK(pyroscope_labels_push(NULL, "v") == PYROSCOPE_STATUS_NULL_ARGUMENT, "push NULL key");
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_OK, "pop after a NULL key");
    CHECK(pyroscope_labels_push("bad key", "v") == PYROSCOPE_STATUS_INVALID_ARGUMENT, "push bad key");
    CHECK(strstr(pyroscope_last_error(), "bad key") != NULL, "bad key message");
    CHECK(pyroscope_labels_push("vehicle", "") == PYROSCOPE_STATUS_INVALID_ARGUMENT, "push empty value");
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_OK, "pop after an empty value");
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_OK, "pop after a bad key");
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_INVALID_STATE, "pop on empty");
    /* Values are free text; static tags keep the strict check. */
    CHECK(pyroscope_labels_push("query", "a,b {c}=d e") == PYROSCOPE_STATUS_OK, "free-text value");
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_OK, "pop free-text value");

    PYROSCOPE_WITH_LABEL("vehicle", "scooter") {
        c_labelled_work(100 * 1000000u);
    }
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_INVALID_STATE, "macro popped its label");
    /* The block runs whatever happens to the label, and pops its level. */
    int ran = 0;
    PYROSCOPE_WITH_LABEL("bad key", "x") {
        ran++;
    }
    PYROSCOPE_WITH_LABEL(NULL, "x") {
        ran++;
    }
    CHECK(ran == 2, "the block runs with a rejected label");
    CHECK(pyroscope_labels_pop() == PYROSCOPE_STATUS_INVALID_STATE, "macro popped a rejected label");

    enum { THREADS = 8 };
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, label_thread, (void *)i);
    int all_ok = 1;
    for (int i = 0; i < THREADS; i++) {
        void *ok = NULL;
        pthread_join(threads[i], &ok);
        if (!ok) all_ok = 0;
    }
    CHECK(all_ok, "threads pushing and popping labels");

    pthread_t registered;
    void *registered_ok = NULL;
    pthread_create(&registered, NULL, registered_thread, NULL);
    pthread_join(registered, &registered_ok);
    CHECK(registered_ok != NULL, "thread_register");

    /* Counters: versioned by size, NULL and short structs handled. */
    pyroscope_stats stats;
    memset(&stats, 0, sizeof stats);
    stats.size = sizeof stats;
    CHECK(pyroscope_agent_stats(NULL, &stats) == PYROSCOPE_STATUS_NULL_ARGUMENT, "stats NULL agent");
    CHECK(pyroscope_agent_stats(agent, NULL) == PYROSCOPE_STATUS_NULL_ARGUMENT, "stats NULL out");
    CHECK(pyroscope_agent_stats(agent, &stats) == PYROSCOPE_STATUS_OK, "stats");
    CHECK(stats.size == sizeof stats, "stats size filled");
    CHECK(stats.threads_sampled >= 1, "stats: threads sampled");
    CHECK(stats.labels_rejected_name >= 2 && stats.labels_rejected_value >= 1, "stats: rejected labels counted");
    CHECK(stats.label_sets_live >= 1 && stats.label_sets_overflowed == 0, "stats: label sets");
    pyroscope_stats old_caller;
    memset(&old_caller, 0xab, sizeof old_caller);
    old_caller.size = offsetof(pyroscope_stats, uploads_sent); /* a caller built before uploads_sent */
    CHECK(pyroscope_agent_stats(agent, &old_caller) == PYROSCOPE_STATUS_OK, "stats, older struct");
    CHECK(old_caller.size == offsetof(pyroscope_stats, uploads_sent), "stats: only what the caller knows");
    CHECK(old_caller.uploads_sent == 0xababababababababull, "stats: nothing written past the caller's size");
    old_caller.size = 0;
    CHECK(pyroscope_agent_stats(agent, &old_caller) == PYROSCOPE_STATUS_INVALID_ARGUMENT, "stats size 0");

    CHECK(pyroscope_agent_flush(NULL) == PYROSCOPE_STATUS_NULL_ARGUMENT, "flush NULL");
    CHECK(pyroscope_agent_flush(agent) == PYROSCOPE_STATUS_OK, "flush");
    CHECK(pyroscope_agent_stop(agent) == PYROSCOPE_STATUS_OK, "stop");
    memset(&stats, 0, sizeof stats);
    stats.size = sizeof stats;
    CHECK(pyroscope_agent_stats(agent, &stats) == PYROSCOPE_STATUS_OK, "stats after stop");
    CHECK(stats.samples > 0 && stats.samples_lost == 0, "stats: samples taken, none lost");
    CHECK(stats.profiles >= 1 && stats.uploads_sent == stats.profiles, "stats: every profile written");
    CHECK(stats.uploads_dropped == 0 && stats.uploads_failed == 0 && stats.uploads_retried == 0, "stats: no failures");
    CHECK(pyroscope_agent_stop(agent) == PYROSCOPE_STATUS_INVALID_STATE, "stop after stop");
    CHECK(pyroscope_agent_flush(agent) == PYROSCOPE_STATUS_INVALID_STATE, "flush after stop");
    CHECK(strstr(pyroscope_last_error(), "stopped") != NULL, "stopped message");
    pyroscope_agent_free(&agent);
    CHECK(agent == NULL, "agent_free clears the pointer");
    pyroscope_agent_free(&agent);
    pyroscope_agent_free(NULL);

    /* A new agent after the first was freed. */
    CHECK(pyroscope_config_from_env(&cfg) == PYROSCOPE_STATUS_OK, "from_env");
    pyroscope_config_free(&cfg);

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
