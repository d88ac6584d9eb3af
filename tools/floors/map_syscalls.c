/*
 * Floor of "map + first byte" on this machine: the bare syscalls each
 * strategy cannot do without, against plain MAP_PRIVATE, interleaved,
 * with the user's open() outside the timing (as in `mapcopy bench`).
 *
 *   MAP_PRIVATE  mmap, touch
 *   guard        reopen via /proc/self/fd (an unarmed description of our
 *                own), fanotify_mark, mmap, MADV_DONTFORK, F_SETSIG and a
 *                read lease taken and dropped (no writer holds the file),
 *                touch
 *   lease        reopen, F_SETSIG, read lease, mmap, MADV_DONTFORK, touch
 *   lazy         dup, anonymous mmap, MADV_HUGEPAGE, MADV_DONTFORK,
 *                UFFDIO_REGISTER, pread + UFFDIO_COPY of the first page,
 *                touch
 *
 *   cc -O2 -o map_syscalls map_syscalls.c && ./map_syscalls FILE [N] [CHURN]
 *
 * With CHURN=1, each measurement is preceded by reading 64 MiB into fresh
 * memory and freeing it (what the bench's copying neighbours do): on this
 * VM freed memory goes back to the host (free page reporting), and the
 * next fresh page costs a trip through the hypervisor.
 *
 * Needs root (pre-content fanotify, userfaultfd of kernel faults).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int reopen(int fd) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    return open(p, O_RDONLY | O_CLOEXEC);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s FILE [N]\n", argv[0]); return 2; }
    const char *path = argv[1];
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    int churn = argc > 3 ? atoi(argv[3]) : 0;
    struct stat st;
    if (stat(path, &st)) { perror("stat"); return 1; }
    size_t len = st.st_size, slack = (2 << 20) - 4096;
    int g = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE);
    int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {UFFD_API, 0, 0};
    if (g < 0 || uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) { perror("fanotify_init/userfaultfd"); return 1; }
    char *page = aligned_alloc(4096, 4096);
    double *t[4];
    const char *name[4] = {"MAP_PRIVATE", "guard", "lease", "lazy"};
    for (int k = 0; k < 4; k++) t[k] = calloc(n, sizeof(double));
    volatile char sink = 0;
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++) {
            if (churn) {
                size_t c = 64 << 20;
                char *junk = mmap(NULL, c, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                int jf = open(path, O_RDONLY);
                for (size_t o = 0; o < c && o < len; o += 1 << 20) pread(jf, junk + o, 1 << 20, o);
                close(jf);
                munmap(junk, c);
            }
            int fd = open(path, O_RDONLY | O_CLOEXEC), own = -1;
            char *p = NULL, *area = NULL;
            double t0 = now_us();
            switch (k) {
            case 0:
                p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
                break;
            case 1:
                own = reopen(fd);
                if (fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_PRE_ACCESS, own, NULL)) { perror("mark"); return 1; }
                p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, own, 0);
                madvise(p, len, MADV_DONTFORK);
                fcntl(own, F_SETSIG, SIGURG);
                if (fcntl(own, F_SETLEASE, F_RDLCK)) { perror("lease"); return 1; }
                fcntl(own, F_SETLEASE, F_UNLCK);
                break;
            case 2:
                own = reopen(fd);
                fcntl(own, F_SETSIG, SIGURG);
                if (fcntl(own, F_SETLEASE, F_RDLCK)) { perror("lease"); return 1; }
                p = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, own, 0);
                madvise(p, len, MADV_DONTFORK);
                break;
            case 3: {
                own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                area = mmap(NULL, len + slack, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
                madvise(area, len + slack, MADV_HUGEPAGE);
                madvise(area, len + slack, MADV_DONTFORK);
                struct uffdio_register r = {{(unsigned long)area, len + slack}, UFFDIO_REGISTER_MODE_MISSING, 0};
                if (ioctl(uffd, UFFDIO_REGISTER, &r)) { perror("UFFDIO_REGISTER"); return 1; }
                p = (char *)(((unsigned long)area + slack) & ~((2UL << 20) - 1));
                pread(own, page, 4096, 0);
                struct uffdio_copy c = {(unsigned long)p, (unsigned long)page, 4096, 0, 0};
                if (ioctl(uffd, UFFDIO_COPY, &c)) { perror("UFFDIO_COPY"); return 1; }
                break;
            }
            }
            sink += p[0];
            t[k][i] = now_us() - t0;
            if (k == 1) fanotify_mark(g, FAN_MARK_REMOVE, FAN_OPEN_PERM | FAN_PRE_ACCESS, own, NULL);
            if (k == 2) fcntl(own, F_SETLEASE, F_UNLCK);
            if (k == 3) {
                struct uffdio_range r = {(unsigned long)area, len + slack};
                ioctl(uffd, UFFDIO_UNREGISTER, &r);
                munmap(area, len + slack);
            } else {
                munmap(p, len);
            }
            if (own >= 0) close(own);
            close(fd);
        }
    }
    for (int k = 0; k < 4; k++) qsort(t[k], n, sizeof(double), cmp);
    for (int k = 0; k < 4; k++)
        printf("%-12s median %6.2f us  min %6.2f us  ratio to MAP_PRIVATE (median) %.2fx\n", name[k],
               t[k][n / 2], t[k][0], t[0][n / 2] / t[k][n / 2]);
    return 0;
}
