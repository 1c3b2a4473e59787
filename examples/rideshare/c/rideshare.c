/* The rideshare story service in C: GET /car, /bike, /scooter on 127.0.0.1:$PORT.
 *
 * REGION (us-east, eu-north, ap-south) is a static tag; `vehicle` is set per request with the
 * C API inside find_nearest_vehicle; only eu-north busy-waits in mutex_lock; only us-east's
 * worker pool leaks memory in do_work. Profiling is configured by the PYROSCOPE_* variables;
 * memory profiles come from the preload library (see ./run). SIGTERM/SIGINT flush and exit. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pyroscope.h"

static volatile sig_atomic_t stop_requested = 0;
static const char *region = "us-east";
static int listen_fd = -1;

static void on_term(int sig) {
    (void)sig;
    stop_requested = 1;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Burns CPU for about `ms` of wall time. */
__attribute__((noinline)) static uint64_t burn(uint64_t ms) {
    volatile uint64_t x = 0x9e3779b9u;
    uint64_t end = now_ns() + ms * 1000000u;
    while (now_ns() < end)
        for (int i = 0; i < 2000; i++) x = (x << 5 | x >> 59) ^ (uint64_t)i;
    return x;
}

/* A lock held too long elsewhere: spin until it "frees". */
__attribute__((noinline)) uint64_t mutex_lock(uint64_t ms) {
    /* Work after the call keeps gcc from turning it into a tail jump (which drops this frame). */
    return burn(ms) + 1;
}

__attribute__((noinline)) uint64_t check_driver_availability(uint64_t ms) {
    uint64_t x = burn(ms / 2);
    if (strcmp(region, "eu-north") == 0) x ^= mutex_lock(ms * 4);
    return x;
}

__attribute__((noinline)) uint64_t find_nearest_vehicle(const char *vehicle, uint64_t ms) {
    uint64_t x = 0;
    PYROSCOPE_WITH_LABEL("vehicle", vehicle) {
        x = burn(ms);
        x ^= check_driver_availability(ms);
    }
    return x;
}

/* The leak: results kept "for later", never read, never freed. */
static pthread_mutex_t results_lock = PTHREAD_MUTEX_INITIALIZER;
static void **results = NULL;
static size_t n_results = 0, cap_results = 0;

__attribute__((noinline)) uint64_t do_work(void) {
    char *scratch = malloc(16 * 1024);
    if (!scratch) return 0;
    memset(scratch, 7, 16 * 1024);
    uint64_t x = burn(2) ^ (uint64_t)scratch[100];
    free(scratch);
    if (strcmp(region, "us-east") == 0) {
        char *kept = malloc(32 * 1024);
        if (kept) {
            memset(kept, (int)x, 32 * 1024);
            pthread_mutex_lock(&results_lock);
            if (n_results == cap_results) {
                cap_results = cap_results ? cap_results * 2 : 64;
                results = realloc(results, cap_results * sizeof *results);
            }
            results[n_results++] = kept;
            pthread_mutex_unlock(&results_lock);
        }
    }
    return x;
}

static void *worker(void *arg) {
    (void)arg;
    struct timespec pause = {0, 50 * 1000000};
    while (!stop_requested) {
        do_work();
        nanosleep(&pause, NULL);
    }
    return NULL;
}

static void respond(int fd, int status, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, status == 200 ? "OK" : "Not Found", strlen(body));
    if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0) {
        /* the client went away */
    }
}

static void serve(int fd) {
    char req[1024];
    ssize_t n = read(fd, req, sizeof req - 1);
    if (n <= 0) return;
    req[n] = 0;
    char path[64] = "";
    if (sscanf(req, "GET %63s", path) != 1) return respond(fd, 404, "bad request\n");
    const char *vehicle = path[0] == '/' ? path + 1 : path;
    if (strcmp(vehicle, "car") == 0 || strcmp(vehicle, "bike") == 0 || strcmp(vehicle, "scooter") == 0) {
        find_nearest_vehicle(vehicle, 10);
        char body[128];
        snprintf(body, sizeof body, "%s found in %s\n", vehicle, region);
        respond(fd, 200, body);
    } else {
        respond(fd, 404, "try /car, /bike or /scooter\n");
    }
}

static void *handler(void *arg) {
    (void)arg;
    while (!stop_requested) {
        struct pollfd p = {listen_fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) continue;
        /* The connection itself is served with blocking reads and writes. */
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        serve(fd);
        close(fd);
    }
    return NULL;
}

int main(void) {
    if (getenv("REGION")) region = getenv("REGION");
    int port = getenv("PORT") ? atoi(getenv("PORT")) : 5000;

    pyroscope_config *cfg = NULL;
    pyroscope_agent *agent = NULL;
    if (pyroscope_config_from_env(&cfg) != PYROSCOPE_STATUS_OK ||
        (!getenv("PYROSCOPE_APPLICATION_NAME") &&
         pyroscope_config_set_application_name(cfg, "ride-sharing-app") != PYROSCOPE_STATUS_OK) ||
        pyroscope_config_set_tag(cfg, "region", region) != PYROSCOPE_STATUS_OK ||
        pyroscope_agent_start(cfg, &agent) != PYROSCOPE_STATUS_OK) {
        fprintf(stderr, "rideshare-c: cannot start profiling: %s\n", pyroscope_last_error());
        return 2;
    }
    pyroscope_config_free(&cfg);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listen_fd, 64) != 0) {
        fprintf(stderr, "rideshare-c: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 2;
    }
    /* Several threads poll this socket: accept must not block the ones that lose the race. */
    fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
    fprintf(stderr, "rideshare-c: region=%s listening on http://127.0.0.1:%d\n", region, port);

    pthread_t workers[2], handlers[4];
    for (int i = 0; i < 2; i++) pthread_create(&workers[i], NULL, worker, NULL);
    for (int i = 0; i < 4; i++) pthread_create(&handlers[i], NULL, handler, NULL);
    for (int i = 0; i < 4; i++) pthread_join(handlers[i], NULL);
    for (int i = 0; i < 2; i++) pthread_join(workers[i], NULL);
    pyroscope_agent_stop(agent);
    pyroscope_agent_free(&agent);
    fprintf(stderr, "rideshare-c: region=%s stopped\n", region);
    return 0;
}
