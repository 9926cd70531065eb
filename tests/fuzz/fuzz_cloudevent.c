/*
 * fuzz_cloudevent.c: stream entries into cloudevent_decode(), both layouts.
 *
 * Input: the first byte selects the call, the rest is the entry: records
 * separated by '\n', each "name=value" (split at the first '='; a record
 * without '=' is a field with an empty value; empty records are skipped).
 * Values may hold NUL bytes. A record named after the event field makes
 * it the structured layout (Stage 2's publisher: the whole CloudEvent as
 * JSON, other fields beside it ignored); without one it is the flat layout
 * (Stage 1: one field per attribute, data as JSON text).
 *   bit 0 of the first byte: event_field "ce" (else NULL: the default,
 *     "event");
 *   bit 1: max_bytes 256 (else no limit);
 *   bit 2: max_json_depth 8 and max_entry_fields 16 (else none).
 * So "0" then a newline starts a readable seed with the defaults.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cloudevent.h"
#include "fuzz.h"

#define MAX_FIELDS	64

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_quiet_log();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct entry_field f[MAX_FIELDS];
	struct ce_limits limits = { 0 };
	struct cloudevent ev;
	const char *p, *lim, *event_field = NULL;
	char detail[512], *copy, *out;
	size_t nf = 0, max_bytes;
	unsigned mode;

	if (size == 0)
		return 0;
	mode = data[0];
	max_bytes = (mode & 2) ? 256 : 0;
	/* A copy of exactly the entry's bytes, so ASan sees any over-read. */
	if ((copy = malloc(size > 1 ? size - 1 : 1)) == NULL)
		return 0;
	memcpy(copy, data + 1, size - 1);
	p = copy;
	lim = copy + (size - 1);

	if (mode & 1)
		event_field = "ce";
	while (p < lim && nf < MAX_FIELDS) {
		const char *eol = memchr(p, '\n', (size_t)(lim - p));
		const char *eq;

		if (eol == NULL)
			eol = lim;
		if (eol == p) {
			p++;
			continue;
		}
		eq = memchr(p, '=', (size_t)(eol - p));
		f[nf].name = p;
		if (eq == NULL) {
			f[nf].namelen = (size_t)(eol - p);
			f[nf].value = eol;
			f[nf].valuelen = 0;
		} else {
			f[nf].namelen = (size_t)(eq - p);
			f[nf].value = eq + 1;
			f[nf].valuelen = (size_t)(eol - eq - 1);
		}
		nf++;
		p = eol < lim ? eol + 1 : lim;
	}

	memset(&ev, 0, sizeof(ev));
	detail[0] = '\0';
	limits.max_bytes = max_bytes;
	if (mode & 4) {
		limits.max_depth = 8;
		limits.max_fields = 16;
	}
	if (cloudevent_decode(f, nf, event_field, &limits, &ev, detail,
	    sizeof(detail)) == CE_OK) {
		/* Touch what the worker reads next. */
		if ((out = cJSON_PrintUnformatted(ev.json)) != NULL)
			free(out);
		if (ev.time != NULL)
			(void)cloudevent_parse_time(ev.time, &ev.time_ms);
	} else if (memchr(detail, '\0', sizeof(detail)) == NULL)
		abort();	/* the detail must be a terminated string */
	cloudevent_free(&ev);
	free(copy);
	return 0;
}
