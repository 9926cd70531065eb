/*
 * fuzz_jsonspan.c: the JSON spans the ingress keeps an event's data with
 * (json_member_span, json_skip_value in util.c). They only ever see text
 * cJSON accepted, so the property is: for such text, the span of "data"
 * is itself JSON equal to what cJSON parsed as the member, and walking an
 * array element by element finds as many elements as cJSON did, each
 * equal to cJSON's.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "fuzz.h"
#include "util.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_quiet_log();
	return 0;
}

/*
 * span parses, and to the same value as want: printed alike (a compare
 * by name would stumble on repeated members, which the ingress refuses
 * but this text may hold).
 */
static void
same(const char *span, size_t n, const cJSON *want)
{
	cJSON *got = cJSON_ParseWithLength(span, n);
	char *a, *b;

	if (got == NULL)
		abort();
	a = cJSON_PrintUnformatted(got);
	b = cJSON_PrintUnformatted(want);
	if (a == NULL || b == NULL || strcmp(a, b) != 0)
		abort();
	free(a);
	free(b);
	cJSON_Delete(got);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data, *end = text + size, *span, *p;
	const cJSON *member;
	cJSON *root;
	size_t n;
	bool nul;
	int rv, count = 0;

	/* The ingress refuses NUL bytes (cJSON would cut strings there). */
	if (memchr(text, '\0', size) != NULL)
		return 0;
	/* The ingress bounds the depth before cJSON recurses; so do we. */
	if (json_scan(text, size, 65, &nul) > 64)
		return 0;
	if ((root = cJSON_ParseWithLength(text, size)) == NULL)
		return 0;
	if (cJSON_IsObject(root)) {
		rv = json_member_span(text, size, "data", &span, &n);
		member = cJSON_GetObjectItemCaseSensitive(root, "data");
		if (rv == -1)
			abort();
		/* 0 also when the name is written with escapes. */
		if (rv == 1)
			same(span, n, member);
	} else if (cJSON_IsArray(root)) {
		p = json_skip_ws(text, end) + 1;
		for (;;) {
			const char *next;

			p = json_skip_ws(p, end);
			if (p >= end)
				abort();
			if (*p == ']')
				break;
			if ((next = json_skip_value(p, end)) == NULL)
				abort();
			same(p, (size_t)(next - p),
			    cJSON_GetArrayItem(root, count));
			count++;
			p = json_skip_ws(next, end);
			if (p < end && *p == ',')
				p++;
		}
		if (count != cJSON_GetArraySize(root))
			abort();
	}
	cJSON_Delete(root);
	return 0;
}
