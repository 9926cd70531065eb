/*
 * fuzz.h: what the libFuzzer targets share. Built by clang only, in
 * make check-fuzz (tests/fuzz/README.md).
 */
#ifndef STAGERELAY_FUZZ_H
#define STAGERELAY_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

int	LLVMFuzzerInitialize(int *argc, char ***argv);
int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Swallows every log line: the targets' output is libFuzzer's own. */
static inline bool
fuzz_log_swallow(void *arg, enum log_level level, const char *msg)
{
	(void)arg;
	(void)level;
	(void)msg;
	return true;
}

static inline void
fuzz_quiet_log(void)
{
	log_set_hook(fuzz_log_swallow, NULL);
}

#endif
