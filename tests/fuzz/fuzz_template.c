/*
 * fuzz_template.c: a template and a context into template_render().
 *
 * Input: template JSON, a NUL byte, context JSON. Without a NUL the whole
 * input is the template and the context is a fixed sample event. Both are
 * parsed with cJSON; input that does not parse is skipped. The template is
 * also syntax-checked, and rendered as text when it is a string.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "fuzz.h"
#include "template.h"

static const char sample_ctx[] =
	"{\"specversion\":\"1.0\",\"id\":\"ev-1\",\"source\":\"stage1\","
	"\"type\":\"com.storytelling.cleaning.document.cleaned\","
	"\"subject\":\"document/doc-1\",\"time\":\"2026-01-05T16:27:08Z\","
	"\"traceid\":\"abc\",\"data\":{\"document_id\":\"doc-1\","
	"\"version\":3,\"score\":0.25,\"batch_id\":null,\"ok\":true,"
	"\"no\":false,\"meta\":{\"tags\":[\"a\",\"b\"]}},"
	"\"documents\":[{\"document_id\":\"d1\"},{\"document_id\":\"d2\"}]}";

static cJSON	*fixed_ctx;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_quiet_log();
	if ((fixed_ctx = cJSON_Parse(sample_ctx)) == NULL)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t tlen = nul != NULL ? (size_t)(nul - data) : size;
	cJSON *tmpl, *ctx = NULL, *out;
	char err[512];

	if ((tmpl = cJSON_ParseWithLength((const char *)data, tlen)) == NULL)
		return 0;
	if (nul != NULL) {
		ctx = cJSON_ParseWithLength((const char *)nul + 1,
		    size - tlen - 1);
		if (ctx == NULL) {
			cJSON_Delete(tmpl);
			return 0;
		}
	}

	err[0] = '\0';
	(void)template_check_tree(tmpl, err, sizeof(err));
	(void)template_refers_tree(tmpl, "documents");
	err[0] = '\0';
	out = template_render(tmpl, ctx != NULL ? ctx : fixed_ctx, err,
	    sizeof(err));
	if (out == NULL && memchr(err, '\0', sizeof(err)) == NULL)
		abort();
	cJSON_Delete(out);
	if (cJSON_IsString(tmpl) && tmpl->valuestring != NULL) {
		char *s;

		(void)template_check(tmpl->valuestring, err, sizeof(err));
		(void)template_refers(tmpl->valuestring, "data");
		s = template_render_string(tmpl->valuestring,
		    ctx != NULL ? ctx : fixed_ctx, err, sizeof(err));
		free(s);
		/* A URL path: what it renders has no byte outside pchar. */
		s = template_render_url(tmpl->valuestring,
		    ctx != NULL ? ctx : fixed_ctx, err, sizeof(err));
		if (s != NULL && strchr(tmpl->valuestring, '/') == NULL &&
		    strchr(tmpl->valuestring, '?') == NULL &&
		    strchr(tmpl->valuestring, '#') == NULL &&
		    (strchr(s, '/') != NULL || strchr(s, '?') != NULL ||
		    strchr(s, '#') != NULL))
			abort();
		free(s);
		(void)template_lookup(ctx != NULL ? ctx : fixed_ctx,
		    tmpl->valuestring);
	}
	cJSON_Delete(ctx);
	cJSON_Delete(tmpl);
	return 0;
}
