/* test_template.c: templates and routes against events, DESIGN.md §4. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "unit.h"
#include <cJSON.h>

#include "cloudevent.h"
#include "config.h"
#include "ledger.h"
#include "route.h"
#include "template.h"
#include "util.h"

#define DOC_CLEANED	"com.storytelling.cleaning.document.cleaned"
#define JOB_COMPLETED	"com.storytelling.cleaning.job.completed"
#define MAX_FIELDS	16

static char err[512];

/* An event as the templates see it: cloudevent_decode()'s output form. */
static const char ctx_json[] =
    "{\"specversion\":\"1.0\",\"id\":\"ev-1\",\"source\":\"stage1\","
    "\"type\":\"t\",\"subject\":\"job/1\",\"traceid\":\"abc\","
    "\"data\":{\"document_id\":\"doc-1\",\"cleaned_text\":\"Once upon\","
    "\"version\":3,\"score\":0.25,\"big\":1e21,\"ok\":true,\"no\":false,"
    "\"batch_id\":null,\"meta\":{\"lang\":\"en\",\"tags\":[\"a\",\"b\"]},"
    "\"items\":[{\"name\":\"first\"},{\"name\":\"second\"}]}}";

static cJSON *
ctx_new(void)
{
	cJSON *ctx = cJSON_Parse(ctx_json);

	ck_assert_ptr_nonnull(ctx);
	return ctx;
}

/* Renders a template string, which must succeed, and compares. */
static void
expect_string(const cJSON *ctx, const char *tmpl, const char *want)
{
	char *s;

	err[0] = '\0';
	s = template_render_string(tmpl, ctx, err, sizeof(err));
	ck_assert_msg(s != NULL, "\"%s\": %s", tmpl, err);
	ck_assert_str_eq(s, want);
	free(s);
}

static void
expect_string_error(const cJSON *ctx, const char *tmpl, const char *want)
{
	char *s;

	err[0] = '\0';
	s = template_render_string(tmpl, ctx, err, sizeof(err));
	ck_assert_msg(s == NULL, "\"%s\" rendered \"%s\"", tmpl, s);
	ck_assert_str_eq(err, want);
}

/* Renders the JSON template text and compares it printed, unformatted. */
static void
expect_tree(const cJSON *ctx, const char *tmpl_json, const char *want)
{
	cJSON *tmpl = cJSON_Parse(tmpl_json), *out;
	char *s;

	ck_assert_ptr_nonnull(tmpl);
	err[0] = '\0';
	out = template_render(tmpl, ctx, err, sizeof(err));
	ck_assert_msg(out != NULL, "%s: %s", tmpl_json, err);
	s = cJSON_PrintUnformatted(out);
	ck_assert_str_eq(s, want);
	cJSON_free(s);
	cJSON_Delete(out);
	cJSON_Delete(tmpl);
}

static void
expect_tree_error(const cJSON *ctx, const char *tmpl_json, const char *want)
{
	cJSON *tmpl = cJSON_Parse(tmpl_json);

	ck_assert_ptr_nonnull(tmpl);
	err[0] = '\0';
	ck_assert_ptr_null(template_render(tmpl, ctx, err, sizeof(err)));
	ck_assert_str_eq(err, want);
	cJSON_Delete(tmpl);
}

START_TEST(test_exact_substitution)
{
	cJSON *ctx = ctx_new();

	/* A whole-string placeholder keeps the value's JSON type. */
	expect_tree(ctx, "\"{{data.meta}}\"",
	    "{\"lang\":\"en\",\"tags\":[\"a\",\"b\"]}");
	expect_tree(ctx, "\"{{data.version}}\"", "3");
	expect_tree(ctx, "\"{{data.score}}\"", "0.25");
	expect_tree(ctx, "\"{{data.batch_id}}\"", "null");
	expect_tree(ctx, "\"{{data.ok}}\"", "true");
	expect_tree(ctx, "\"{{data.no}}\"", "false");
	expect_tree(ctx, "\"{{data.meta.tags}}\"", "[\"a\",\"b\"]");
	expect_tree(ctx, "\"{{id}}\"", "\"ev-1\"");
	expect_tree(ctx, "{\"document\":\"{{data}}\"}",
	    "{\"document\":{\"document_id\":\"doc-1\",\"cleaned_text\":"
	    "\"Once upon\",\"version\":3,\"score\":0.25,\"big\":1e+21,"
	    "\"ok\":true,\"no\":false,\"batch_id\":null,\"meta\":{\"lang\":"
	    "\"en\",\"tags\":[\"a\",\"b\"]},\"items\":[{\"name\":\"first\"},"
	    "{\"name\":\"second\"}]}}");
	cJSON_Delete(ctx);
}
END_TEST

START_TEST(test_interpolation)
{
	cJSON *ctx = ctx_new();

	expect_string(ctx, "doc {{data.document_id}}!", "doc doc-1!");
	expect_string(ctx, "{{data.document_id}}", "doc-1");
	expect_string(ctx, "v{{data.version}}", "v3");	/* no ".0" */
	expect_string(ctx, "s={{data.score}}", "s=0.25");
	expect_string(ctx, "{{data.ok}}/{{data.no}}", "true/false");
	expect_string(ctx, "m={{data.meta}}",
	    "m={\"lang\":\"en\",\"tags\":[\"a\",\"b\"]}");
	expect_string(ctx, "{{source}}/{{id}}", "stage1/ev-1");
	expect_string(ctx, "{{traceid}}", "abc");		/* extension */
	expect_string(ctx, "no placeholders", "no placeholders");
	expect_string(ctx, "", "");
	expect_string(ctx, "a { single } brace", "a { single } brace");
	/* In a tree, a string that is more than a placeholder stays one. */
	expect_tree(ctx, "{\"n\":\"#{{data.version}}\",\"keep\":7,"
	    "\"nil\":null,\"list\":[\"{{subject}}\",\"x{{data.ok}}\",false]}",
	    "{\"n\":\"#3\",\"keep\":7,\"nil\":null,\"list\":[\"job/1\","
	    "\"xtrue\",false]}");
	/* Keys are never templated. */
	expect_tree(ctx, "{\"{{id}}\":\"{{id}}\"}", "{\"{{id}}\":\"ev-1\"}");
	cJSON_Delete(ctx);
}
END_TEST

START_TEST(test_missing_path)
{
	cJSON *ctx = ctx_new();

	expect_string_error(ctx, "key {{data.document}}",
	    "no value at data.document");
	expect_string_error(ctx, "{{time}}", "no value at time");
	expect_tree_error(ctx, "{\"a\":{\"b\":[\"{{data.job_id}}\"]}}",
	    "no value at data.job_id");
	expect_tree_error(ctx, "\"x {{data.nope.deeper}}\"",
	    "no value at data.nope.deeper");
	/* A scalar has no members. */
	expect_string_error(ctx, "{{data.version.x}}",
	    "no value at data.version.x");
	cJSON_Delete(ctx);
}
END_TEST

START_TEST(test_null_interpolation)
{
	cJSON *ctx = ctx_new();

	expect_string_error(ctx, "batch {{data.batch_id}}",
	    "cannot interpolate null value of data.batch_id");
	expect_string_error(ctx, "{{data.batch_id}}",
	    "cannot interpolate null value of data.batch_id");
	expect_tree_error(ctx, "[\"b-{{ data.batch_id }}\"]",
	    "cannot interpolate null value of data.batch_id");
	cJSON_Delete(ctx);
}
END_TEST

START_TEST(test_spaces_in_braces)
{
	cJSON *ctx = ctx_new();

	expect_string(ctx, "{{ id }}", "ev-1");
	expect_string(ctx, "{{id }}-{{  type}}", "ev-1-t");
	expect_string(ctx, "{{\tdata.version\t}}", "3");
	expect_tree(ctx, "\"{{ data.version }}\"", "3");
	cJSON_Delete(ctx);
}
END_TEST

START_TEST(test_array_index)
{
	cJSON *ctx = ctx_new();
	const cJSON *v;

	expect_string(ctx, "{{data.items.0.name}}", "first");
	expect_string(ctx, "{{data.items.1.name}}", "second");
	expect_string(ctx, "{{data.meta.tags.1}}", "b");
	expect_tree(ctx, "\"{{data.items.1}}\"", "{\"name\":\"second\"}");
	expect_string_error(ctx, "{{data.items.2}}",
	    "no value at data.items.2");
	expect_string_error(ctx, "{{data.items.x}}",
	    "no value at data.items.x");
	expect_string_error(ctx, "{{data.items.-1}}",
	    "no value at data.items.-1");

	v = template_lookup(ctx, "data.items.0");
	ck_assert(cJSON_IsObject(v));
	ck_assert_ptr_eq(template_lookup(ctx, "data"),
	    cJSON_GetObjectItem(ctx, "data"));
	ck_assert_ptr_null(template_lookup(ctx, ""));
	ck_assert_ptr_null(template_lookup(ctx, "data."));
	ck_assert_ptr_null(template_lookup(ctx, "nothing"));
	ck_assert_ptr_null(template_lookup(NULL, "id"));
	cJSON_Delete(ctx);
}
END_TEST

START_TEST(test_check)
{
	cJSON *t;

	ck_assert_int_eq(template_check("plain", err, sizeof(err)), 0);
	ck_assert_int_eq(template_check("{{a}} and {{ b.c.0 }}", err,
	    sizeof(err)), 0);
	ck_assert_int_eq(template_check("", err, sizeof(err)), 0);

	ck_assert_int_eq(template_check("{{data.id", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "unterminated \"{{\" at offset 0");
	ck_assert_int_eq(template_check("x {{}}", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "empty path in placeholder at offset 2");
	ck_assert_int_eq(template_check("{{   }}", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "empty path in placeholder at offset 0");
	ck_assert_int_eq(template_check("{data.id}}", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "unmatched \"}}\" at offset 8");
	ck_assert_int_eq(template_check("{{a}} }}", err, sizeof(err)), -1);
	ck_assert_str_eq(err, "unmatched \"}}\" at offset 6");
	ck_assert_int_eq(template_check("{{a..b}}", err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "bad path \"a..b\" at offset 0"));
	ck_assert_int_eq(template_check("{{a b}}", err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "bad path \"a b\""));
	ck_assert_int_eq(template_check("{{ {{a}} }}", err, sizeof(err)), -1);
	ck_assert_int_eq(template_check("{{.a}}", err, sizeof(err)), -1);

	t = cJSON_Parse("{\"ok\":\"{{id}}\",\"n\":1,\"doc\":{\"list\":"
	    "[\"x\",\"{{}}\"]}}");
	ck_assert_int_eq(template_check_tree(t, err, sizeof(err)), -1);
	ck_assert_str_eq(err, "doc.list[1]: empty path in placeholder at "
	    "offset 0");
	cJSON_Delete(t);
	t = cJSON_Parse("{\"a\":[\"{{id}}\",{\"b\":\"{{ data.x }}\"}]}");
	ck_assert_int_eq(template_check_tree(t, err, sizeof(err)), 0);
	cJSON_Delete(t);

	/* A render meets the same syntax rules. */
	expect_string_error(NULL, "{{id", "unterminated \"{{\" at offset 0");
}
END_TEST

/* ---- routes ------------------------------------------------------------ */

static struct config cfg;

static void
cfg_setup(void)
{
	memset(&cfg, 0, sizeof(cfg));
	cfg.nlp_api.base_url = (char *)"http://nlp.internal:8000/";
}

/* Decodes a flat entry from name/value pairs; NULL ends them. */
static void
event(struct cloudevent *ev, ...)
{
	struct entry_field f[MAX_FIELDS];
	char detail[256];
	const char *name;
	size_t n = 0;
	va_list ap;

	va_start(ap, ev);
	while ((name = va_arg(ap, const char *)) != NULL) {
		const char *value = va_arg(ap, const char *);

		ck_assert_uint_lt(n, MAX_FIELDS);
		f[n].name = name;
		f[n].namelen = strlen(name);
		f[n].value = value;
		f[n].valuelen = strlen(value);
		n++;
	}
	va_end(ap);
	ck_assert_msg(cloudevent_decode(f, n, NULL, NULL, ev, detail,
	    sizeof(detail)) == CE_OK, "%s", detail);
}

static void
document_event(struct cloudevent *ev, const char *data)
{
	event(ev, "specversion", "1.0", "type", DOC_CLEANED,
	    "source", "stage1-cleaning-pipeline", "id", "ev-42",
	    "time", "2026-01-05T16:27:08.268110Z", "subject", "",
	    "datacontenttype", "application/json", "data", data, NULL);
}

static const char *
header(const struct request *rq, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < rq->nheaders; i++)
		if (strncmp(rq->headers[i], name, n) == 0 &&
		    rq->headers[i][n] == ':' && rq->headers[i][n + 1] == ' ')
			return rq->headers[i] + n + 2;
	return NULL;
}

/* A route from the essentials; the body is JSON text or NULL. */
static void
route_init(struct route *r, const char *path, const char *key,
    const char *body, enum content_mode mode)
{
	memset(r, 0, sizeof(*r));
	r->name = strdup("test");
	r->method = strdup("POST");
	r->path = strdup(path);
	r->idempotency_key = strdup(key);
	r->body = body != NULL ? cJSON_Parse(body) : NULL;
	r->content_mode = mode;
}

START_TEST(test_route_defaults)
{
	struct route *r;
	size_t n = 0;
	char *s;

	r = route_defaults(&n);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(r[0].name, "document");
	ck_assert_uint_eq(r[0].ntypes, 1);
	ck_assert_str_eq(r[0].types[0], DOC_CLEANED);
	ck_assert_str_eq(r[0].method, "POST");
	ck_assert_str_eq(r[0].path, "/api/v2/nlp/process");
	ck_assert_str_eq(r[0].idempotency_key, "{{data.document_id}}");
	ck_assert_int_eq(r[0].content_mode, CONTENT_BODY);
	s = cJSON_PrintUnformatted(r[0].body);
	ck_assert_str_eq(s, "{\"document_id\":\"{{data.document_id}}\","
	    "\"text\":\"{{data.cleaned_text}}\"}");
	cJSON_free(s);
	ck_assert_str_eq(r[0].success_field, "success");
	ck_assert_str_eq(r[0].job_id_field, "job_id");
	ck_assert_ptr_null(r[0].documents_file);
	ck_assert_int_eq(r[0].line, 0);

	ck_assert_str_eq(r[1].name, "batch");
	ck_assert_str_eq(r[1].types[0], JOB_COMPLETED);
	ck_assert_str_eq(r[1].method, "POST");
	ck_assert_str_eq(r[1].path, "/v2/process/batch");
	ck_assert_str_eq(r[1].idempotency_key, "job:{{data.job_id}}");
	s = cJSON_PrintUnformatted(r[1].body);
	ck_assert_str_eq(s, "{\"input_file\":\"{{data.output_location}}\","
	    "\"batch_id\":\"{{data.batch_id}}\"}");
	cJSON_free(s);
	ck_assert_str_eq(r[1].success_field, "success");
	ck_assert_str_eq(r[1].job_id_field, "job_id");
	ck_assert_str_eq(r[1].documents_file, "{{data.output_location}}");

	/* What config load checks, the defaults pass. */
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(template_check(r[i].idempotency_key, err,
		    sizeof(err)), 0);
		ck_assert_int_eq(template_check_tree(r[i].body, err,
		    sizeof(err)), 0);
		route_free(&r[i]);
		ck_assert_ptr_null(r[i].name);
	}
	free(r);
}
END_TEST

START_TEST(test_route_document_default)
{
	struct cloudevent ev;
	struct request rq;
	struct route *r;
	size_t n;

	r = route_defaults(&n);
	document_event(&ev, "{\"document_id\":\"doc-7\",\"cleaned_text\":"
	    "\"It was a dark night.\",\"version\":2}");
	ck_assert_msg(route_render(&r[0], &cfg, &ev, &rq, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_eq(rq.route, &r[0]);
	ck_assert_str_eq(rq.method, "POST");
	/* Base ends in '/', path starts with one: joined with one. */
	ck_assert_str_eq(rq.url, "http://nlp.internal:8000/api/v2/nlp/process");
	ck_assert_str_eq(rq.idempotency_key, "doc-7");
	ck_assert_str_eq(rq.body, "{\"document_id\":\"doc-7\","
	    "\"text\":\"It was a dark night.\"}");
	ck_assert_uint_eq(rq.bodylen, strlen(rq.body));
	ck_assert_str_eq(rq.content_type, "application/json");
	/* Body mode carries the event id, for tracing. */
	ck_assert_uint_eq(rq.nheaders, 1);
	ck_assert_str_eq(header(&rq, "ce-id"), "ev-42");
	ck_assert_str_eq(rq.document_id, "doc-7");
	ck_assert_ptr_null(rq.job_id);
	ck_assert_ptr_null(rq.batch_id);
	request_free(&rq);
	ck_assert_ptr_null(rq.url);

	/* No trailing slash on the base: one is put in. */
	cfg.nlp_api.base_url = (char *)"https://nlp.internal";
	ck_assert_msg(route_render(&r[0], &cfg, &ev, &rq, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.url, "https://nlp.internal/api/v2/nlp/process");
	request_free(&rq);
	cloudevent_free(&ev);

	/* A numeric document id is a key and a ledger id all the same. */
	document_event(&ev, "{\"document_id\":1234,\"cleaned_text\":\"x\"}");
	ck_assert_msg(route_render(&r[0], &cfg, &ev, &rq, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.idempotency_key, "1234");
	ck_assert_str_eq(rq.document_id, "1234");
	ck_assert_str_eq(rq.body, "{\"document_id\":1234,\"text\":\"x\"}");
	request_free(&rq);
	cloudevent_free(&ev);

	for (size_t i = 0; i < n; i++)
		route_free(&r[i]);
	free(r);
}
END_TEST

START_TEST(test_route_missing_document_id)
{
	struct cloudevent ev;
	struct request rq;
	struct route *r;
	size_t n;

	r = route_defaults(&n);
	document_event(&ev, "{\"cleaned_text\":\"orphan text\"}");
	ck_assert_int_eq(route_render(&r[0], &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "idempotency_key: no value at data.document_id");
	ck_assert_ptr_null(rq.url);
	ck_assert_ptr_null(rq.idempotency_key);
	request_free(&rq);	/* harmless after a failure */
	cloudevent_free(&ev);

	/* The key is there but the body wants more. */
	document_event(&ev, "{\"document_id\":\"d\"}");
	ck_assert_int_eq(route_render(&r[0], &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "body: no value at data.cleaned_text");
	cloudevent_free(&ev);

	/* An empty key would merge unrelated documents in the ledger. */
	document_event(&ev, "{\"document_id\":\"\",\"cleaned_text\":\"x\"}");
	ck_assert_int_eq(route_render(&r[0], &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "idempotency_key: renders to an empty key");
	cloudevent_free(&ev);

	/* A key is a header line: no CR/LF smuggled in through data. */
	document_event(&ev, "{\"document_id\":\"a\\r\\nX-Evil: 1\","
	    "\"cleaned_text\":\"x\"}");
	ck_assert_int_eq(route_render(&r[0], &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "idempotency_key: the rendered key contains a "
	    "control character");
	cloudevent_free(&ev);

	/* A header parser would drop the blanks: the API sees another key. */
	document_event(&ev, "{\"document_id\":\" d\",\"cleaned_text\":\"x\"}");
	ck_assert_int_eq(route_render(&r[0], &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "idempotency_key: the rendered key starts or "
	    "ends with a space");
	cloudevent_free(&ev);

	/* The ledger's index holds keys up to LEDGER_KEY_MAX bytes. */
	for (int len = LEDGER_KEY_MAX; len <= LEDGER_KEY_MAX + 1; len++) {
		char *data = xasprintf("{\"document_id\":\"%0*d\","
		    "\"cleaned_text\":\"x\"}", len, 1);

		document_event(&ev, data);
		free(data);
		if (len == LEDGER_KEY_MAX) {
			ck_assert_msg(route_render(&r[0], &cfg, &ev, &rq, err,
			    sizeof(err)) == 0, "%s", err);
			request_free(&rq);
		} else {
			ck_assert_int_eq(route_render(&r[0], &cfg, &ev, &rq,
			    err, sizeof(err)), -1);
			ck_assert_str_eq(err, "idempotency_key: the rendered "
			    "key is 1025 bytes, over the 1024 the ledger "
			    "indexes");
		}
		cloudevent_free(&ev);
	}

	for (size_t i = 0; i < n; i++)
		route_free(&r[i]);
	free(r);
}
END_TEST

START_TEST(test_route_job_null_batch)
{
	struct cloudevent ev;
	struct request rq;
	struct route *r;
	cJSON *body;
	size_t n;

	r = route_defaults(&n);
	event(&ev, "specversion", "1.0", "type", JOB_COMPLETED,
	    "source", "stage1-cleaning-pipeline", "id", "ev-9",
	    "data", "{\"job_id\":\"4c97a203\",\"batch_id\":null,"
	    "\"documents_processed\":100,"
	    "\"output_location\":\"/shared/stage1/job.jsonl\"}", NULL);
	ck_assert_msg(route_render(&r[1], &cfg, &ev, &rq, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.url, "http://nlp.internal:8000/v2/process/batch");
	ck_assert_str_eq(rq.idempotency_key, "job:4c97a203");
	/* Exact substitution: a null batch id is sent as JSON null. */
	ck_assert_str_eq(rq.body,
	    "{\"input_file\":\"/shared/stage1/job.jsonl\",\"batch_id\":null}");
	body = cJSON_Parse(rq.body);
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(body, "batch_id")));
	cJSON_Delete(body);
	ck_assert_str_eq(rq.job_id, "4c97a203");
	ck_assert_ptr_null(rq.batch_id);
	ck_assert_ptr_null(rq.document_id);
	request_free(&rq);
	cloudevent_free(&ev);

	/* Without output_location (earlier Stage 1): a render error. */
	event(&ev, "specversion", "1.0", "type", JOB_COMPLETED,
	    "source", "s", "id", "ev-10",
	    "data", "{\"job_id\":\"j\",\"batch_id\":\"b-1\"}", NULL);
	ck_assert_int_eq(route_render(&r[1], &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "body: no value at data.output_location");
	cloudevent_free(&ev);

	for (size_t i = 0; i < n; i++)
		route_free(&r[i]);
	free(r);
}
END_TEST

START_TEST(test_route_batch_documents)
{
	struct cloudevent ev;
	struct request rq;
	struct route r;
	cJSON *docs;
	char *path;

	memset(&r, 0, sizeof(r));
	r.name = "batch";
	r.kind = "batch";
	r.path = "/api/v1/documents/batch";
	r.idempotency_key = "job:{{data.job_id}}";
	r.documents_file = "{{data.output_location}}";
	r.content_mode = CONTENT_BODY;
	r.body = cJSON_Parse("{\"documents\":\"{{documents}}\","
	    "\"ids\":\"{{document_ids}}\",\"n\":\"{{data.job_id}}\"}");
	event(&ev, "specversion", "1.0", "type", JOB_COMPLETED,
	    "source", "s", "id", "ev-b", "data", "{\"job_id\":\"J\","
	    "\"output_location\":\"stage1/j.jsonl\"}", NULL);
	docs = cJSON_Parse("[{\"document_id\":\"d1\",\"t\":1},"
	    "{\"document_id\":\"d2\"}]");

	ck_assert_ptr_nonnull(path = route_documents_file(&r, &ev, err,
	    sizeof(err)));
	ck_assert_str_eq(path, "stage1/j.jsonl");
	free(path);

	/* One request: the route's key as is. */
	ck_assert_msg(route_render_batch(&r, &cfg, &ev, docs, 1, 1, NULL, &rq, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.idempotency_key, "job:J");
	ck_assert_str_eq(rq.body, "{\"documents\":[{\"document_id\":\"d1\","
	    "\"t\":1},{\"document_id\":\"d2\"}],\"ids\":[\"d1\",\"d2\"],"
	    "\"n\":\"J\"}");
	request_free(&rq);
	/* A split batch: each request has its own key. */
	ck_assert_msg(route_render_batch(&r, &cfg, &ev, docs, 2, 3, NULL, &rq,
	    err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.idempotency_key, "job:J#2/3");
	request_free(&rq);
	/* Only some of a part's documents: the key says which set. */
	ck_assert_msg(route_render_batch(&r, &cfg, &ev, docs, 2, 3, "0a1b2c3d",
	    &rq, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.idempotency_key, "job:J#2/3~0a1b2c3d");
	request_free(&rq);
	ck_assert_msg(route_render_batch(&r, &cfg, &ev, docs, 1, 1, "0a1b2c3d",
	    &rq, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(rq.idempotency_key, "job:J~0a1b2c3d");
	request_free(&rq);
	/* The event is left as it was: no documents member added. */
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "documents"));
	/* Outside a batch, {{documents}} is a render error. */
	ck_assert_int_eq(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "body: no value at documents");
	cloudevent_free(&ev);
	/* An extension attribute named documents cannot replace the batch. */
	event(&ev, "specversion", "1.0", "type", JOB_COMPLETED,
	    "source", "s", "id", "ev-c", "documents", "evil",
	    "data", "{\"job_id\":\"J\"}", NULL);
	ck_assert_msg(route_render_batch(&r, &cfg, &ev, docs, 1, 1, NULL, &rq, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_null(strstr(rq.body, "evil"));
	request_free(&rq);

	cJSON_Delete(docs);
	cJSON_Delete(r.body);
	cloudevent_free(&ev);
}
END_TEST

START_TEST(test_route_structured)
{
	struct cloudevent ev;
	struct request rq;
	struct route r;
	cJSON *body;

	route_init(&r, "https://hooks.example/{{type}}", "{{source}}/{{id}}",
	    NULL, CONTENT_STRUCTURED);
	document_event(&ev, "{\"document_id\":\"d\",\"cleaned_text\":\"x\"}");
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	/* A full URL is used alone, with its placeholders rendered. */
	ck_assert_str_eq(rq.url, "https://hooks.example/" DOC_CLEANED);
	ck_assert_str_eq(rq.idempotency_key, "stage1-cleaning-pipeline/ev-42");
	ck_assert_str_eq(rq.content_type,
	    "application/cloudevents+json; charset=utf-8");
	ck_assert_uint_eq(rq.nheaders, 0);
	body = cJSON_Parse(rq.body);
	ck_assert_ptr_nonnull(body);
	ck_assert(cJSON_Compare(body, ev.json, 1));
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(body, "data"),
	    "document_id")->valuestring, "d");
	cJSON_Delete(body);
	request_free(&rq);
	cloudevent_free(&ev);
	route_free(&r);
}
END_TEST

START_TEST(test_route_binary)
{
	struct cloudevent ev;
	struct request rq;
	struct route r;

	route_init(&r, "/ingest", "{{id}}", NULL, CONTENT_BINARY);
	event(&ev, "specversion", "1.0", "type", DOC_CLEANED,
	    "source", "stage1-cleaning-pipeline", "id", "ev-1",
	    "time", "2026-01-05T16:27:08Z",
	    "subject", "doc \"caf\xc3\xa9\" 100%",
	    "traceid", "t-1", "datacontenttype", "application/json",
	    "data", "{\"document_id\": \"d\"}", NULL);
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.url, "http://nlp.internal:8000/ingest");
	ck_assert_str_eq(rq.body, "{\"document_id\":\"d\"}");
	ck_assert_uint_eq(rq.bodylen, strlen(rq.body));
	ck_assert_str_eq(rq.content_type, "application/json");
	ck_assert_str_eq(header(&rq, "ce-specversion"), "1.0");
	ck_assert_str_eq(header(&rq, "ce-id"), "ev-1");
	ck_assert_str_eq(header(&rq, "ce-source"), "stage1-cleaning-pipeline");
	ck_assert_str_eq(header(&rq, "ce-type"), DOC_CLEANED);
	ck_assert_str_eq(header(&rq, "ce-time"), "2026-01-05T16:27:08Z");
	/* Space, '"', '%' and non-ASCII bytes are percent-encoded. */
	ck_assert_str_eq(header(&rq, "ce-subject"),
	    "doc%20%22caf%C3%A9%22%20100%25");
	ck_assert_str_eq(header(&rq, "ce-traceid"), "t-1");
	ck_assert_ptr_null(header(&rq, "ce-datacontenttype"));
	ck_assert_ptr_null(header(&rq, "ce-data"));
	ck_assert_uint_eq(rq.nheaders, 7);
	request_free(&rq);
	cloudevent_free(&ev);

	/* Text data goes out raw, under its own content type. */
	event(&ev, "specversion", "1.0", "type", "t", "source", "s",
	    "id", "ev-2", "datacontenttype", "text/plain; charset=utf-8",
	    "data", "plain \"text\"", NULL);
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.body, "plain \"text\"");
	ck_assert_str_eq(rq.content_type, "text/plain; charset=utf-8");
	ck_assert_ptr_null(header(&rq, "ce-subject"));
	ck_assert_uint_eq(rq.nheaders, 4);
	request_free(&rq);
	cloudevent_free(&ev);

	/* No data: an empty body. */
	event(&ev, "specversion", "1.0", "type", "t", "source", "s",
	    "id", "ev-3", NULL);
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.body, "");
	ck_assert_uint_eq(rq.bodylen, 0);
	ck_assert_str_eq(rq.content_type, "application/json");
	request_free(&rq);
	cloudevent_free(&ev);

	/* data_base64 is sent decoded: the binding carries raw bytes. */
	event(&ev, "specversion", "1.0", "type", "t", "source", "s",
	    "id", "ev-4", "data_base64", "AGhp/w==", NULL);
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_uint_eq(rq.bodylen, 4);
	ck_assert_mem_eq(rq.body, "\0hi\xff", 4);
	ck_assert_str_eq(rq.content_type, "application/octet-stream");
	request_free(&rq);
	cloudevent_free(&ev);
	route_free(&r);
}
END_TEST

START_TEST(test_route_url)
{
	struct cloudevent ev;
	struct request rq;
	struct route r;

	document_event(&ev, "{\"document_id\":\"d 1\",\"cleaned_text\":\"x\","
	    "\"host\":\"@evil.example/x\",\"n\":5,\"up\":\"..\","
	    "\"odd\":\"a/b?c=1#d%e\\u00e9'$(x)\"}");

	/* Placeholders in a relative path. */
	route_init(&r, "v1/docs/{{data.n}}", "k", "{}", CONTENT_BODY);
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.url, "http://nlp.internal:8000/v1/docs/5");
	ck_assert_str_eq(rq.body, "{}");
	request_free(&rq);
	route_free(&r);

	/* A rendered path cannot reach another host. */
	route_init(&r, "{{data.host}}", "k", "{}", CONTENT_BODY);
	cfg.nlp_api.base_url = (char *)"http://nlp.internal:8000";
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.url, "http://nlp.internal:8000/@evil.example%2Fx");
	request_free(&rq);
	route_free(&r);

	/* Values are one segment's data: no new segment, query or escape. */
	route_init(&r, "/docs/{{data.document_id}}/{{data.odd}}/{{data.up}}",
	    "k", "{}", CONTENT_BODY);
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.url, "http://nlp.internal:8000/docs/d%201/"
	    "a%2Fb%3Fc=1%23d%25e%C3%A9'$(x)/%2E%2E");
	request_free(&rq);
	route_free(&r);

	/* A space written in the template itself is refused. */
	route_init(&r, "/docs /{{data.n}}", "k", "{}", CONTENT_BODY);
	ck_assert_int_eq(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "path: the rendered URL contains a space or "
	    "control character");
	route_free(&r);

	/* The rendered body is held to nlp_api.max_request_bytes. */
	route_init(&r, "/docs", "k", "{\"text\":\"{{data.cleaned_text}}\"}",
	    CONTENT_BODY);
	cfg.nlp_api.max_request_bytes = 12;
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.body, "{\"text\":\"x\"}");
	request_free(&rq);
	cfg.nlp_api.max_request_bytes = 11;
	ck_assert_int_eq(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "body: the request body is 12 bytes, over "
	    "nlp_api.max_request_bytes (11)");
	cfg.nlp_api.max_request_bytes = 0;
	route_free(&r);

	route_init(&r, "/docs/{{data.missing}}", "k", "{}", CONTENT_BODY);
	ck_assert_int_eq(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "path: no value at data.missing");
	route_free(&r);

	/* The method is the route's; GET is rendered all the same. */
	route_init(&r, "HTTPS://other.example/x", "k", "{\"a\":1}",
	    CONTENT_BODY);
	free(r.method);
	r.method = strdup("PUT");
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.method, "PUT");
	ck_assert_str_eq(rq.url, "HTTPS://other.example/x");
	request_free(&rq);
	free(r.method);
	r.method = NULL;
	ck_assert_msg(route_render(&r, &cfg, &ev, &rq, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_str_eq(rq.method, "POST");
	request_free(&rq);
	route_free(&r);
	cloudevent_free(&ev);
}
END_TEST

static Suite *
template_suite(void)
{
	Suite *s = suite_create("template");
	TCase *tc = tcase_create("template");
	TCase *tr = tcase_create("route");

	tcase_add_test(tc, test_exact_substitution);
	tcase_add_test(tc, test_interpolation);
	tcase_add_test(tc, test_missing_path);
	tcase_add_test(tc, test_null_interpolation);
	tcase_add_test(tc, test_spaces_in_braces);
	tcase_add_test(tc, test_array_index);
	tcase_add_test(tc, test_check);
	suite_add_tcase(s, tc);

	tcase_add_checked_fixture(tr, cfg_setup, NULL);
	tcase_add_test(tr, test_route_defaults);
	tcase_add_test(tr, test_route_document_default);
	tcase_add_test(tr, test_route_missing_document_id);
	tcase_add_test(tr, test_route_job_null_batch);
	tcase_add_test(tr, test_route_batch_documents);
	tcase_add_test(tr, test_route_structured);
	tcase_add_test(tr, test_route_binary);
	tcase_add_test(tr, test_route_url);
	suite_add_tcase(s, tr);
	return s;
}

int
main(void)
{
	return unit_run(template_suite());
}
