/*
 * fuzz_config.c: YAML into config_load().
 *
 * The input is the whole file. It goes into a memfd made once, read back
 * through /proc/self/fd/N, so nothing is left on disk. The environment is
 * replaced at start by a small fake one (PATH and the sanitizers' and
 * symbolizer's variables kept), so ${VAR} expands to nothing real.
 * A config may name a *_file secret; it is read, never printed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

extern char **environ;

static int	memfd = -1;
static char	path[64];

/* Variables kept from the real environment: none is a secret. */
static int
keep(const char *kv)
{
	static const char *const prefixes[] = {
		"PATH=", "ASAN_", "UBSAN_", "LSAN_", "LLVM_SYMBOLIZER", NULL
	};

	for (size_t i = 0; prefixes[i] != NULL; i++)
		if (strncmp(kv, prefixes[i], strlen(prefixes[i])) == 0)
			return 1;
	return 0;
}

static void
fake_environment(void)
{
	char **kept;
	size_t n = 0, k = 0;

	for (char **e = environ; *e != NULL; e++)
		n++;
	if ((kept = calloc(n + 1, sizeof(*kept))) == NULL)
		abort();
	for (char **e = environ; *e != NULL; e++)
		if (keep(*e) && (kept[k] = strdup(*e)) != NULL)
			k++;
	clearenv();
	for (size_t i = 0; i < k; i++) {
		putenv(kept[i]);	/* putenv keeps the string */
	}
	free(kept);
	setenv("HOSTNAME", "fuzz-host", 1);
	setenv("FUZZ", "value", 1);
	setenv("FUZZ_EMPTY", "", 1);
	setenv("FUZZ_PASSWORD", "not-a-secret", 1);
	setenv("FUZZ_PORT", "6380", 1);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_quiet_log();
	fake_environment();
	if ((memfd = memfd_create("fuzz_config.yaml", 0)) == -1) {
		perror("fuzz_config: memfd_create");
		abort();
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config cfg;
	char err[1024];

	if (ftruncate(memfd, 0) == -1 ||
	    pwrite(memfd, data, size, 0) != (ssize_t)size)
		abort();
	memset(&cfg, 0, sizeof(cfg));
	err[0] = '\0';
	if (config_load(path, &cfg, err, sizeof(err)) == 0) {
		FILE *null = fopen("/dev/null", "w");

		if (null != NULL) {
			config_print(null, &cfg);
			fclose(null);
		}
		config_free(&cfg);
	} else if (memchr(err, '\0', sizeof(err)) == NULL || err[0] == '\0')
		abort();	/* a failure always says why */
	return 0;
}
