/*
 * Floor of a fanotify permission round trip on this machine: a writer
 * process does 4 KiB pwrite()s on a file marked FAN_PRE_ACCESS by a
 * listener that answers FAN_ALLOW at once, without looking at anything.
 * Every Guard write costs at least this, before any classification.
 *
 *   cc -O2 -o fanotify_roundtrip fanotify_roundtrip.c
 *   ./fanotify_roundtrip FILE 0   # listener sleeps in poll() between events
 *   ./fanotify_roundtrip FILE 1   # listener spins on a non-blocking read()
 *
 * Needs root (FAN_CLASS_PRE_CONTENT) and Linux 6.14+. FILE: an existing
 * file of at least 4 MiB that may be overwritten.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static double pwrite_loop(const char *path, int n) {
    char buf[4096];
    memset(buf, 1, sizeof buf);
    int fd = open(path, O_RDWR);
    if (fd < 0) { perror("open"); exit(1); }
    double t = now_us();
    for (int i = 0; i < n; i++)
        if (pwrite(fd, buf, sizeof buf, (off_t)(i % 1000) * 4096) != sizeof buf) { perror("pwrite"); exit(1); }
    close(fd);
    return (now_us() - t) / n;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s FILE SPIN(0|1)\n", argv[0]); return 2; }
    const char *path = argv[1];
    int spin = atoi(argv[2]), n = 20000;
    double base = pwrite_loop(path, n);
    int g = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE);
    if (g < 0) { perror("fanotify_init"); return 1; }
    if (fanotify_mark(g, FAN_MARK_ADD, FAN_PRE_ACCESS, AT_FDCWD, path)) { perror("fanotify_mark"); return 1; }
    pid_t child = fork();
    if (child == 0) {
        double guarded = pwrite_loop(path, n);
        printf("listener %s: 4 KiB pwrite %.2f us unwatched, %.2f us watched (+%.2f us per round trip)\n",
               spin ? "spinning" : "sleeping", base, guarded, guarded - base);
        exit(0);
    }
    char ev[4096];
    for (;;) {
        if (!spin) {
            struct pollfd p = {g, POLLIN, 0};
            if (poll(&p, 1, 100) == 0) {
                if (waitpid(child, NULL, WNOHANG) == child) break;
                continue;
            }
        }
        ssize_t len = read(g, ev, sizeof ev);
        if (len <= 0) {
            if (waitpid(child, NULL, WNOHANG) == child) break;
            continue;
        }
        for (struct fanotify_event_metadata *m = (void *)ev; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
            struct fanotify_response r = {m->fd, FAN_ALLOW};
            if (write(g, &r, sizeof r) != sizeof r) perror("response");
            close(m->fd);
        }
    }
    return 0;
}
