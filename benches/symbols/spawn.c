/* make bench: runs a command once, then prints "wall_ms peak_rss_kib exit_status" as the last
 * line of its output (after whatever the command printed).
 *
 * A child's peak RSS from wait4 includes the memory of the process it was forked from, up to
 * its exec: measured from the bench driver, a short-lived command such as `sqlite3` would
 * report the driver's size. This launcher is a few hundred KiB, so the figure is the
 * command's own. */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: spawn COMMAND [ARG...]\n");
    return 2;
  }
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 1;
  }
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    _exit(127);
  }
  int status = 0;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) != pid) {
    perror("wait4");
    return 1;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
  fflush(stdout);
  printf("%.3f %ld %d\n", ms, ru.ru_maxrss, status);
  return 0;
}
