/*
 * fuzz_docfile.c: a JSONL documents file into docfile_read().
 *
 * The input is the file's contents. It is written as docs.jsonl inside a
 * private directory (mkdtemp under $TMPDIR or /tmp, removed at exit) that
 * serves as shared_dir, then read with small limits (2048 bytes a file,
 * 256 a line, 32 documents, nesting 8) so every limit is reachable. Odd-sized inputs are named by
 * absolute path, even-sized ones relative to shared_dir.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "docfile.h"
#include "fuzz.h"

#define MAX_BYTES	2048
#define MAX_LINE	256
#define MAX_DOCUMENTS	32
#define MAX_DEPTH	8

static char	shared[PATH_MAX];
static char	file[PATH_MAX + 16];

static void
cleanup(void)
{
	unlink(file);
	rmdir(shared);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");

	(void)argc;
	(void)argv;
	fuzz_quiet_log();
	snprintf(shared, sizeof(shared), "%s/stagerelay-fuzz-docfile.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(shared) == NULL) {
		perror("fuzz_docfile: mkdtemp");
		abort();
	}
	snprintf(file, sizeof(file), "%s/docs.jsonl", shared);
	atexit(cleanup);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct docfile_limits lim = {
		.max_bytes = MAX_BYTES,
		.max_line = MAX_LINE,
		.max_documents = MAX_DOCUMENTS,
		.max_depth = MAX_DEPTH,
	};
	struct docfile df;
	char err[512];
	int fd, rv;

	if ((fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600)) == -1)
		abort();
	if (size > 0 && write(fd, data, size) != (ssize_t)size)
		abort();
	close(fd);

	memset(&df, 0, sizeof(df));
	err[0] = '\0';
	rv = docfile_read(shared, (size & 1) ? file : "docs.jsonl", &lim, &df,
	    err, sizeof(err));
	if (rv == 0) {
		/* Every kept document has its id, in order. */
		if ((size_t)cJSON_GetArraySize(df.docs) != df.n)
			abort();
		for (size_t i = 0; i < df.n; i++)
			if (df.ids[i] == NULL || df.ids[i][0] == '\0')
				abort();
	} else if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL)
		abort();
	docfile_free(&df);
	return 0;
}
