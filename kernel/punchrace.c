/*
 * Does a reader see zeroes outside a hole being punched?  One thread
 * rewrites 64 KiB of 0xaa (cached in large folios on xfs) and punches an
 * unaligned hole [10560, 20288) in it; another preads page 2 and page 4
 * and checks the bytes outside the hole: [8192, 10560) and [20288, 20480).
 * No MAP_COPY anywhere.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>

static int fd;
static volatile int stop;
static long bad, reads;

static void *reader(void *arg)
{
	unsigned char b[4096];
	int i;

	(void)arg;
	while (!stop) {
		if (pread(fd, b, 4096, 8192) == 4096) {
			for (i = 0; i < 10560 - 8192; i++)
				if (b[i] != 0xaa)
					break;
			if (i < 10560 - 8192) {
				if (!bad)
					printf("PUNCHRACE page 2 byte %d is 0x%02x outside the hole\n",
					       8192 + i, b[i]);
				bad++;
			}
		}
		if (pread(fd, b, 4096, 16384) == 4096) {
			for (i = 20288 - 16384; i < 4096; i++)
				if (b[i] != 0xaa)
					break;
			if (i < 4096) {
				if (!bad)
					printf("PUNCHRACE page 4 byte %d is 0x%02x outside the hole\n",
					       16384 + i, b[i]);
				bad++;
			}
		}
		reads++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static unsigned char buf[65536];
	pthread_t t;
	time_t end;
	long rounds = 0;

	fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		perror("open");
		return 2;
	}
	memset(buf, 0xaa, sizeof(buf));
	if (pwrite(fd, buf, sizeof(buf), 0) != sizeof(buf))
		return 2;
	pthread_create(&t, NULL, reader, NULL);
	end = time(NULL) + (argc > 2 ? atoi(argv[2]) : 20);
	while (time(NULL) < end) {
		if (pwrite(fd, buf, sizeof(buf), 0) != sizeof(buf))
			return 2;
		if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      10560, 9728))
			return 2;
		rounds++;
	}
	stop = 1;
	pthread_join(t, NULL);
	printf("PUNCHRACE rounds=%ld reads=%ld bad=%ld\n", rounds, reads, bad);
	return bad ? 1 : 0;
}
