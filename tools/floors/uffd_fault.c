/*
 * Floor of a userfaultfd round trip on this machine: one thread reads one
 * byte from 10,000 random pages of a 1 GiB registered range; a handler
 * thread fills each 4 KiB page with pread() + UFFDIO_COPY from FILE and
 * nothing else. Every Lazy random first touch costs at least this.
 *
 *   cc -O2 -pthread -o uffd_fault uffd_fault.c
 *   ./uffd_fault FILE 0   # handler sleeps in poll() between faults
 *   ./uffd_fault FILE 1   # handler spins on a non-blocking read()
 *
 * Needs root (or vm.unprivileged_userfaultfd=1). FILE: at least 1 GiB.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int uffd, spin, file;
static char *base;

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void *handler(void *arg) {
    (void)arg;
    char *page = aligned_alloc(4096, 4096);
    for (;;) {
        if (!spin) {
            struct pollfd p = {uffd, POLLIN, 0};
            poll(&p, 1, -1);
        }
        struct uffd_msg m;
        if (read(uffd, &m, sizeof m) != sizeof m) continue;
        unsigned long addr = m.arg.pagefault.address & ~4095UL;
        if (pread(file, page, 4096, addr - (unsigned long)base) != 4096) { perror("pread"); exit(1); }
        struct uffdio_copy c = {addr, (unsigned long)page, 4096, 0, 0};
        if (ioctl(uffd, UFFDIO_COPY, &c)) { perror("UFFDIO_COPY"); exit(1); }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s FILE SPIN(0|1)\n", argv[0]); return 2; }
    spin = atoi(argv[2]);
    size_t len = 1UL << 30;
    file = open(argv[1], O_RDONLY);
    if (file < 0) { perror("open"); return 1; }
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC | (spin ? O_NONBLOCK : 0));
    if (uffd < 0) { perror("userfaultfd"); return 1; }
    struct uffdio_api api = {UFFD_API, 0, 0};
    if (ioctl(uffd, UFFDIO_API, &api)) { perror("UFFDIO_API"); return 1; }
    base = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct uffdio_register r = {{(unsigned long)base, len}, UFFDIO_REGISTER_MODE_MISSING, 0};
    if (ioctl(uffd, UFFDIO_REGISTER, &r)) { perror("UFFDIO_REGISTER"); return 1; }
    pthread_t t;
    pthread_create(&t, NULL, handler, NULL);
    int n = 10000;
    unsigned long x = 12345;
    volatile char sink = 0;
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        sink += base[((x >> 20) % (len / 4096)) * 4096];
    }
    printf("handler %s: %.2f us per random 4 KiB first touch\n", spin ? "spinning" : "sleeping", (now_us() - t0) / n);
    return 0;
}
