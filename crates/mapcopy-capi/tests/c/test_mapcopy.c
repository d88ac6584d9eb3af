/*
 * The C ABI from C: map a file, let another process (a shell started with
 * posix_spawn) rewrite and truncate it, and check every byte is still the
 * original — and that a plain MAP_PRIVATE mapping of the same file, the
 * control, does see the change (so the check can fail). Then the errors.
 *
 * Usage: test_mapcopy DIR   (a directory on the filesystem to test)
 * Exit status 0 when everything held; messages say what did not.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mapcopy.h"

extern char **environ;

static int failures;

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
			fprintf(stderr, __VA_ARGS__);                           \
			fputc('\n', stderr);                                    \
			failures++;                                             \
		}                                                               \
	} while (0)

/* 3 pages and one byte: the last page is partial. */
#define SIZE (3 * 4096 + 1)

static void make_file(const char *path, unsigned char *want)
{
	for (size_t i = 0; i < SIZE; i++)
		want[i] = (unsigned char)('a' + i % 23);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, want, SIZE) != SIZE || close(fd) != 0) {
		perror(path);
		exit(2);
	}
}

/* Another process rewrites the file with other bytes, then truncates it. */
static void rewrite_and_truncate(const char *path)
{
	char script[512];
	snprintf(script, sizeof(script),
		 "head -c %d /dev/zero | tr '\\000' Z > '%s' && truncate -s 0 '%s'", SIZE,
		 path, path);
	char *argv[] = {"sh", "-c", script, NULL};
	pid_t pid;
	int status;
	if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) != 0 ||
	    waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "the writer process failed\n");
		exit(2);
	}
}

static sigjmp_buf on_sigbus;

static void sigbus(int sig)
{
	(void)sig;
	siglongjmp(on_sigbus, 1);
}

/* Does the control — plain MAP_PRIVATE — see the writer? (It must.) */
static int control_changes(const char *path, const unsigned char *want)
{
	int fd = open(path, O_RDONLY);
	volatile unsigned char *p = mmap(NULL, SIZE, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return 0;
	unsigned char first = p[0];
	if (first != want[0])
		return 0;
	rewrite_and_truncate(path);
	signal(SIGBUS, sigbus);
	int changed = 1; /* a SIGBUS counts: the bytes are gone */
	if (sigsetjmp(on_sigbus, 1) == 0)
		changed = p[0] != first;
	signal(SIGBUS, SIG_DFL);
	munmap((void *)p, SIZE);
	return changed;
}

/* Maps with `opts`, lets the writer run, checks every byte. 1 if the
 * strategy cannot be used here (said why), 0 otherwise. */
static int holds(const char *path, const struct mapcopy_options *opts, const char *what)
{
	unsigned char want[SIZE];
	make_file(path, want);
	struct mapcopy_map *m = NULL;
	int rc = mapcopy_open(path, opts, &m);
	if (rc == MAPCOPY_ERR_UNSUPPORTED) {
		printf("%-8s not usable here: %s\n", what, mapcopy_last_error());
		return 1;
	}
	CHECK(rc == MAPCOPY_OK, "%s: mapcopy_open: %d %s", what, rc, mapcopy_last_error());
	if (rc != MAPCOPY_OK)
		return 0;
	CHECK(*mapcopy_last_error() == '\0', "%s: last error after success", what);
	CHECK(mapcopy_len(m) == SIZE, "%s: length %zu", what, mapcopy_len(m));
	const uint8_t *d = mapcopy_data(m);
	/* Read every byte before the writer comes (per-page strategies take
	 * each page's snapshot at its first access). */
	CHECK(memcmp(d, want, SIZE) == 0, "%s: bytes before the writer", what);
	rewrite_and_truncate(path);
	CHECK(memcmp(d, want, SIZE) == 0, "%s: bytes changed after rewrite + truncate", what);
	printf("%-8s held (%s)\n", what, mapcopy_strategy(m));
	mapcopy_close(m);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	char path[4096];
	snprintf(path, sizeof(path), "%s/c-abi-test", argv[1]);
	unsigned char want[SIZE];

	/* The control must be caught. */
	make_file(path, want);
	CHECK(control_changes(path, want), "the control (MAP_PRIVATE) did not see the writer");

	/* Defaults (Auto, point-in-time), then every strategy by name. */
	holds(path, NULL, "auto");
	static const struct {
		int strategy;
		const char *name;
	} named[] = {
		{MAPCOPY_STRATEGY_LEASE, "lease"},     {MAPCOPY_STRATEGY_REFLINK, "reflink"},
		{MAPCOPY_STRATEGY_GUARD, "guard"},     {MAPCOPY_STRATEGY_LAZY, "lazy"},
		{MAPCOPY_STRATEGY_EAGER, "eager"},
	};
	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		struct mapcopy_options o;
		mapcopy_options_init(&o);
		o.strategy = named[i].strategy;
		if (o.strategy == MAPCOPY_STRATEGY_LAZY)
			o.consistency = MAPCOPY_PER_PAGE;
		holds(path, &o, named[i].name);
	}

	/* A sub-range through an fd, populated. */
	make_file(path, want);
	int fd = open(path, O_RDONLY);
	struct mapcopy_options o;
	mapcopy_options_init(&o);
	o.offset = 4096 + 7;
	o.length = 100;
	o.populate = 1;
	struct mapcopy_map *m = NULL;
	int rc = mapcopy_map_fd(fd, &o, &m);
	CHECK(rc == MAPCOPY_OK, "mapcopy_map_fd: %d %s", rc, mapcopy_last_error());
	close(fd); /* the mapping does not need it */
	if (rc == MAPCOPY_OK) {
		rewrite_and_truncate(path);
		CHECK(mapcopy_len(m) == 100 && memcmp(mapcopy_data(m), want + 4096 + 7, 100) == 0,
		      "sub-range by fd changed");
		mapcopy_close(m);
	}

	/* A sealed memfd: Auto maps it with Immutable, nothing kept. */
	int mfd = memfd_create("mapcopy-c", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(mfd >= 0 && write(mfd, want, SIZE) == SIZE &&
		      fcntl(mfd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK) == 0,
	      "sealed memfd: %s", strerror(errno));
	m = NULL;
	rc = mapcopy_map_fd(mfd, NULL, &m);
	CHECK(rc == MAPCOPY_OK, "mapcopy_map_fd(memfd): %d %s", rc, mapcopy_last_error());
	if (rc == MAPCOPY_OK) {
		CHECK(strcmp(mapcopy_strategy(m), "immutable") == 0, "memfd mapped by %s",
		      mapcopy_strategy(m));
		CHECK(pwrite(mfd, "x", 1, 0) < 0 && errno == EPERM, "a write went through the seal");
		CHECK(mapcopy_len(m) == SIZE && memcmp(mapcopy_data(m), want, SIZE) == 0,
		      "sealed memfd mapping differs");
		mapcopy_close(m);
	}
	mapcopy_options_init(&o);
	o.strategy = MAPCOPY_STRATEGY_IMMUTABLE;
	CHECK(mapcopy_open(path, &o, &m) == MAPCOPY_ERR_UNSUPPORTED,
	      "immutable on a writable file: %s", mapcopy_last_error());
	close(mfd);

	/* Errors: codes, messages, errno; nothing handed out. */
	m = NULL;
	CHECK(mapcopy_open(NULL, NULL, &m) == MAPCOPY_ERR_INVALID_INPUT && m == NULL, "NULL path");
	CHECK(*mapcopy_last_error() != '\0', "no message for a NULL path");
	CHECK(mapcopy_open(path, NULL, NULL) == MAPCOPY_ERR_INVALID_INPUT, "NULL out");
	CHECK(mapcopy_open("/nonexistent/mapcopy", NULL, &m) == MAPCOPY_ERR_IO && m == NULL,
	      "missing file");
	CHECK(mapcopy_last_errno() == ENOENT, "errno %d for a missing file",
	      mapcopy_last_errno());
	CHECK(mapcopy_open(argv[1], NULL, &m) == MAPCOPY_ERR_INVALID_INPUT && m == NULL,
	      "a directory: %s", mapcopy_last_error());
	mapcopy_options_init(&o);
	o.strategy = 99;
	CHECK(mapcopy_open(path, &o, &m) == MAPCOPY_ERR_INVALID_INPUT, "strategy 99");
	mapcopy_options_init(&o);
	o.consistency = 7;
	CHECK(mapcopy_open(path, &o, &m) == MAPCOPY_ERR_INVALID_INPUT, "consistency 7");
	make_file(path, want);
	mapcopy_options_init(&o);
	o.offset = 1 << 30;
	CHECK(mapcopy_open(path, &o, &m) == MAPCOPY_ERR_INVALID_INPUT,
	      "offset past the end: %s", mapcopy_last_error());
	CHECK(mapcopy_map_fd(-1, NULL, &m) == MAPCOPY_ERR_INVALID_INPUT, "fd -1");
	mapcopy_options_init(&o);
	o.strategy = MAPCOPY_STRATEGY_LAZY; /* Lazy cannot keep point-in-time */
	rc = mapcopy_open(path, &o, &m);
	CHECK(rc == MAPCOPY_ERR_UNSUPPORTED, "lazy under point-in-time: %d", rc);
	CHECK(mapcopy_data(NULL) == NULL && mapcopy_len(NULL) == 0 &&
		      strcmp(mapcopy_strategy(NULL), "") == 0,
	      "NULL mapping accessors");
	mapcopy_close(NULL);

	unlink(path);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all C ABI checks passed\n");
	return 0;
}
