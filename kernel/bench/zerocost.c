// SPDX-License-Identifier: GPL-2.0
/*
 * Zero-cost benchmark for MAP_COPY: write-path and fault-path costs with no
 * copy mapping anywhere (run on the unpatched and the patched kernel, same
 * config, same VM), then what a copy mapping costs its writers and its
 * mapper, and that nothing lingers once the copies are gone (patched
 * kernel only).
 *
 *   zerocost DIR     (DIR on ext4; prints one line per measurement:
 *                     name  median  min  max  unit, over REPS repetitions)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_COPY
#ifdef __hppa__
#define MAP_COPY 0x20 /* 0x04 is MAP_FIXED there */
#else
#define MAP_COPY 0x04
#endif
#endif

#define REPS 7

static char path[4096];
static size_t psize;

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "zerocost: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void report(const char *name, double *v, const char *unit)
{
	qsort(v, REPS, sizeof(*v), cmp);
	printf("%-34s %10.1f %10.1f %10.1f  %s\n", name, v[REPS / 2], v[0],
	       v[REPS - 1], unit);
	fflush(stdout);
}

static int make_file(size_t len)
{
	static char buf[1 << 20];
	size_t done;
	int fd;

	unlink(path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		die("open");
	memset(buf, 0x5a, sizeof(buf));
	for (done = 0; done < len; done += sizeof(buf))
		if (pwrite(fd, buf, sizeof(buf), done) != sizeof(buf))
			die("pwrite");
	fsync(fd);
	return fd;
}

/* ns per 4 KiB pwrite to a cached page */
static double pwrite_4k(int fd, int n)
{
	static char b[4096];
	double t = now_ns();
	int i;

	for (i = 0; i < n; i++)
		if (pwrite(fd, b, sizeof(b), (i % 256) * 4096) != sizeof(b))
			die("pwrite");
	return (now_ns() - t) / n;
}

/* ns per 4 KiB of a sequential buffered write of @mb MiB */
static double buffered(int fd, int mb)
{
	static char b[1 << 20];
	double t = now_ns();
	int i;

	for (i = 0; i < mb; i++)
		if (pwrite(fd, b, sizeof(b), (off_t)i << 20) != sizeof(b))
			die("pwrite");
	return (now_ns() - t) / (mb * 256.0);
}

static double odirect(int n)
{
	int fd = open(path, O_RDWR | O_DIRECT);
	void *b;
	double t;
	int i;

	if (fd < 0 || posix_memalign(&b, 4096, 4096))
		die("O_DIRECT open");
	memset(b, 1, 4096);
	t = now_ns();
	for (i = 0; i < n; i++)
		if (pwrite(fd, b, 4096, (i % 256) * 4096) != 4096)
			die("O_DIRECT pwrite");
	t = (now_ns() - t) / n;
	close(fd);
	free(b);
	return t;
}

/* ns per page: map @pages, read one byte of each page, unmap */
static double faults(int fd, int type, size_t pages, int write)
{
	volatile char *m;
	double t = now_ns();
	size_t i;

	m = mmap(NULL, pages * psize, PROT_READ | PROT_WRITE, type, fd, 0);
	if (m == MAP_FAILED)
		die("mmap");
	for (i = 0; i < pages; i++) {
		if (write)
			m[i * psize] = 1;
		else
			(void)m[i * psize];
	}
	munmap((void *)m, pages * psize);
	return (now_ns() - t) / pages;
}

/* ns per truncate to 0 + 64 KiB rewrite */
static double truncates(int fd, int n)
{
	static char b[65536];
	double t = now_ns();
	int i;

	for (i = 0; i < n; i++) {
		if (ftruncate(fd, 0) || pwrite(fd, b, sizeof(b), 0) != sizeof(b))
			die("truncate");
	}
	return (now_ns() - t) / n;
}

/* ns per mmap + first byte + munmap of a 1 MiB file range */
static double map_first_byte(int fd, int type, int n)
{
	double t = now_ns();
	int i;

	for (i = 0; i < n; i++) {
		volatile char *m = mmap(NULL, 1 << 20, PROT_READ, type, fd, 0);

		if (m == MAP_FAILED)
			die("mmap first byte");
		(void)m[0];
		munmap((void *)m, 1 << 20);
	}
	return (now_ns() - t) / n;
}

int main(int argc, char **argv)
{
	double v[REPS];
	int fd, r, copy_ok;
	void *probe;

	psize = getpagesize();
	snprintf(path, sizeof(path), "%s/zerocost.%d", argc > 1 ? argv[1] : ".",
		 getpid());
	printf("%-34s %10s %10s %10s  unit (%d repetitions)\n", "measurement",
	       "median", "min", "max", REPS);

	fd = make_file(16 << 20);
	for (r = 0; r < REPS; r++)
		v[r] = pwrite_4k(fd, 20000);
	report("pwrite 4 KiB (cached)", v, "ns/op");
	for (r = 0; r < REPS; r++)
		v[r] = buffered(fd, 64);
	report("buffered write 64 MiB", v, "ns/4KiB");
	for (r = 0; r < REPS; r++)
		v[r] = odirect(1000);
	report("O_DIRECT pwrite 4 KiB", v, "ns/op");
	for (r = 0; r < REPS; r++)
		v[r] = faults(fd, MAP_SHARED, 4096, 0);
	report("MAP_SHARED read fault", v, "ns/page");
	for (r = 0; r < REPS; r++)
		v[r] = faults(fd, MAP_SHARED, 4096, 1);
	report("MAP_SHARED write fault", v, "ns/page");
	for (r = 0; r < REPS; r++)
		v[r] = faults(fd, MAP_PRIVATE, 4096, 0);
	report("MAP_PRIVATE read fault", v, "ns/page");
	for (r = 0; r < REPS; r++)
		v[r] = faults(fd, MAP_PRIVATE, 4096, 1);
	report("MAP_PRIVATE write (COW) fault", v, "ns/page");
	for (r = 0; r < REPS; r++)
		v[r] = map_first_byte(fd, MAP_PRIVATE, 2000);
	report("MAP_PRIVATE map+first byte", v, "ns/op");
	close(fd);
	fd = make_file(1 << 20);
	for (r = 0; r < REPS; r++)
		v[r] = truncates(fd, 2000);
	report("ftruncate 0 + 64 KiB write", v, "ns/op");
	close(fd);

	/* With a copy mapping (needs the patched kernel). */
	fd = make_file(16 << 20);
	probe = mmap(NULL, psize, PROT_READ, MAP_COPY, fd, 0);
	copy_ok = probe != MAP_FAILED;
	if (!copy_ok) {
		printf("# no MAP_COPY (%s): copy-mapping rows skipped\n",
		       strerror(errno));
		close(fd);
		unlink(path);
		return 0;
	}
	munmap(probe, psize);
	for (r = 0; r < REPS; r++)
		v[r] = map_first_byte(fd, MAP_COPY, 2000);
	report("MAP_COPY map+first byte", v, "ns/op");
	for (r = 0; r < REPS; r++)
		v[r] = pwrite_4k(fd, 20000);
	report("pwrite 4 KiB, file had a copy", v, "ns/op");
	for (r = 0; r < REPS; r++) {
		/* a fresh untouched copy of 256 pages; each pwrite copies one */
		char *m = mmap(NULL, 256 * psize, PROT_READ, MAP_COPY, fd, 0);

		if (m == MAP_FAILED)
			die("mmap copy");
		v[r] = pwrite_4k(fd, 256);
		munmap(m, 256 * psize);
	}
	report("pwrite 4 KiB, page shared w/ copy", v, "ns/op");
	for (r = 0; r < REPS; r++) {
		char *m = mmap(NULL, 256 * psize, PROT_READ, MAP_COPY, fd, 0);

		if (m == MAP_FAILED)
			die("mmap copy");
		pwrite_4k(fd, 256);	/* every page now private */
		v[r] = pwrite_4k(fd, 256);
		munmap(m, 256 * psize);
	}
	report("pwrite 4 KiB, copy already private", v, "ns/op");
	/*
	 * Every copy is gone: the file must cost what a file that never had
	 * one costs (the rows at the top of the same run).
	 */
	for (r = 0; r < REPS; r++)
		v[r] = pwrite_4k(fd, 20000);
	report("pwrite 4 KiB, copies dropped", v, "ns/op");
	for (r = 0; r < REPS; r++)
		v[r] = faults(fd, MAP_SHARED, 4096, 1);
	report("MAP_SHARED write fault, dropped", v, "ns/page");
	close(fd);
	unlink(path);
	return 0;
}
