/* test_cloudevent.c: entries decoded into CloudEvents, DESIGN.md §1-2. */
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
#include "util.h"

#define MAX_FIELDS	32
#define JOB_COMPLETED	"com.storytelling.cleaning.job.completed"

/* The proposal's sample event, as Stage 1 writes it: one field each. */
#define SAMPLE_DATA \
	"{\"job_id\": \"4c97a203-b96a-47d8-88e3-abce1b9855a5\", " \
	"\"batch_id\": \"e2e_validation_20260105_162622\", " \
	"\"documents_processed\": 100, \"documents_failed\": 0, " \
	"\"documents_total\": 100, \"processing_time_ms\": 41150.82}"

static char detail[512];

/* Decodes the fields as an entry, the detail landing in detail[]. */
static enum cloudevent_error
decode_fields(struct cloudevent *ev, const char *event_field, size_t max,
    const struct entry_field *f, size_t n)
{
	struct ce_limits lim = { .max_bytes = max };

	memset(detail, 0, sizeof(detail));
	return cloudevent_decode(f, n, event_field, &lim, ev, detail,
	    sizeof(detail));
}

/* Fields from name/value pairs; a NULL name ends them. */
static size_t
collect(struct entry_field *f, va_list ap)
{
	const char *name;
	size_t n = 0;

	while ((name = va_arg(ap, const char *)) != NULL) {
		const char *value = va_arg(ap, const char *);

		ck_assert_uint_lt(n, MAX_FIELDS);
		f[n].name = name;
		f[n].namelen = strlen(name);
		f[n].value = value;
		f[n].valuelen = strlen(value);
		n++;
	}
	return n;
}

static enum cloudevent_error
decode(struct cloudevent *ev, ...)
{
	struct entry_field f[MAX_FIELDS];
	enum cloudevent_error e;
	va_list ap;
	size_t n;

	va_start(ap, ev);
	n = collect(f, ap);
	va_end(ap);
	e = decode_fields(ev, NULL, 0, f, n);
	if (e != CE_OK)
		ck_assert_ptr_null(ev->json);
	return e;
}

/*
 * The sample entry with some attributes replaced, added or (value NULL)
 * removed; overrides are name/value pairs ended by NULL.
 */
static enum cloudevent_error
sample(struct cloudevent *ev, ...)
{
	static const char *base[][2] = {
		{ "specversion", "1.0" },
		{ "type", JOB_COMPLETED },
		{ "source", "stage1-cleaning-pipeline" },
		{ "id", "088f1957-5c19-4953-81d9-a9f5de3c6b47" },
		{ "time", "2026-01-05T16:27:08.268110Z" },
		{ "subject", "job/4c97a203-b96a-47d8-88e3-abce1b9855a5" },
		{ "datacontenttype", "application/json" },
		{ "data", SAMPLE_DATA },
	};
	struct entry_field f[MAX_FIELDS];
	const char *name, *value;
	size_t n = 0;
	va_list ap;

	for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
		f[n].name = base[i][0];
		f[n].namelen = strlen(base[i][0]);
		f[n].value = base[i][1];
		f[n].valuelen = strlen(base[i][1]);
		n++;
	}
	va_start(ap, ev);
	while ((name = va_arg(ap, const char *)) != NULL) {
		size_t i;

		value = va_arg(ap, const char *);
		for (i = 0; i < n; i++)
			if (strcmp(f[i].name, name) == 0)
				break;
		if (value == NULL) {
			if (i < n) {
				memmove(&f[i], &f[i + 1],
				    (n - i - 1) * sizeof(f[0]));
				n--;
			}
			continue;
		}
		if (i == n) {
			ck_assert_uint_lt(n, MAX_FIELDS);
			n++;
		}
		f[i].name = name;
		f[i].namelen = strlen(name);
		f[i].value = value;
		f[i].valuelen = strlen(value);
	}
	va_end(ap);
	return decode_fields(ev, NULL, 0, f, n);
}

/* The sample with one change must fail with exactly this detail. */
#define expect_invalid(want, ...) do {					\
	struct cloudevent ev_;						\
	ck_assert_int_eq(sample(&ev_, __VA_ARGS__, NULL), CE_INVALID);	\
	ck_assert_ptr_null(ev_.json);					\
	ck_assert_str_eq(detail, want);					\
} while (0)

#define expect_valid(...) do {						\
	struct cloudevent ev_;						\
	ck_assert_msg(sample(&ev_, __VA_ARGS__, NULL) == CE_OK, "%s",	\
	    detail);							\
	cloudevent_free(&ev_);						\
} while (0)

static const char *
str_member(const cJSON *obj, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

START_TEST(test_flat_stage1_sample)
{
	struct cloudevent ev;
	const cJSON *c;
	const char *order[] = { "specversion", "id", "source", "type",
	    "datacontenttype", "subject", "time", "data" };
	size_t i = 0;

	ck_assert_msg(sample(&ev, NULL) == CE_OK, "%s", detail);
	ck_assert_str_eq(detail, "");
	ck_assert_str_eq(ev.id, "088f1957-5c19-4953-81d9-a9f5de3c6b47");
	ck_assert_str_eq(ev.type, JOB_COMPLETED);
	ck_assert_str_eq(ev.source, "stage1-cleaning-pipeline");
	ck_assert_str_eq(ev.subject,
	    "job/4c97a203-b96a-47d8-88e3-abce1b9855a5");
	ck_assert_str_eq(ev.time, "2026-01-05T16:27:08.268110Z");
	ck_assert_int_eq(ev.time_ms, 1767630428268LL);

	/* data is the parsed payload, not its text. */
	ck_assert(cJSON_IsObject(ev.data));
	ck_assert_str_eq(str_member(ev.data, "job_id"),
	    "4c97a203-b96a-47d8-88e3-abce1b9855a5");
	ck_assert_double_eq(cJSON_GetObjectItem(ev.data,
	    "processing_time_ms")->valuedouble, 41150.82);
	ck_assert_ptr_eq(ev.data, cJSON_GetObjectItem(ev.json, "data"));
	ck_assert_str_eq(str_member(ev.json, "specversion"), "1.0");
	ck_assert_str_eq(str_member(ev.json, "datacontenttype"),
	    "application/json");

	/* Canonical order, whatever the entry's. */
	for (c = ev.json->child; c != NULL; c = c->next, i++) {
		ck_assert_uint_lt(i, sizeof(order) / sizeof(order[0]));
		ck_assert_str_eq(c->string, order[i]);
	}
	ck_assert_uint_eq(i, sizeof(order) / sizeof(order[0]));
	cloudevent_free(&ev);
	ck_assert_ptr_null(ev.json);
	cloudevent_free(&ev);	/* twice is harmless */
}
END_TEST

START_TEST(test_flat_empty_optional_absent)
{
	struct cloudevent ev;

	/* Stage 1 writes "" for a job without subject or time. */
	ck_assert_msg(sample(&ev, "time", "", "subject", "",
	    "datacontenttype", "", "dataschema", "", NULL) == CE_OK, "%s",
	    detail);
	ck_assert_ptr_null(ev.subject);
	ck_assert_ptr_null(ev.time);
	ck_assert_int_eq(ev.time_ms, -1);
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "time"));
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "subject"));
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "datacontenttype"));
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "dataschema"));
	/* No content type: the data is still JSON. */
	ck_assert(cJSON_IsObject(ev.data));
	cloudevent_free(&ev);

	/* Stage 1 leaves data out when the payload is empty. */
	ck_assert_msg(sample(&ev, "data", NULL, NULL) == CE_OK, "%s", detail);
	ck_assert_ptr_null(ev.data);
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "data"));
	cloudevent_free(&ev);
	ck_assert_msg(sample(&ev, "data", "", NULL) == CE_OK, "%s", detail);
	ck_assert_ptr_null(ev.data);
	cloudevent_free(&ev);
}
END_TEST

START_TEST(test_missing_required)
{
	expect_invalid("required attribute specversion is missing",
	    "specversion", NULL);
	expect_invalid("required attribute id is missing", "id", NULL);
	expect_invalid("required attribute source is missing", "source", NULL);
	expect_invalid("required attribute type is missing", "type", NULL);
}
END_TEST

START_TEST(test_specversion)
{
	expect_invalid("specversion must be \"1.0\" (got \"0.3\")",
	    "specversion", "0.3");
	expect_invalid("specversion must be \"1.0\" (got \"1.0 \")",
	    "specversion", "1.0 ");
	expect_invalid("required attribute specversion is empty",
	    "specversion", "");
}
END_TEST

START_TEST(test_empty_required)
{
	expect_invalid("required attribute id is empty", "id", "");
	expect_invalid("required attribute source is empty", "source", "");
	expect_invalid("required attribute type is empty", "type", "");
}
END_TEST

START_TEST(test_control_characters)
{
	/* A CloudEvents String has no control characters: no header splits. */
	expect_invalid("attribute id contains a control character (U+000A)",
	    "id", "a\nb");
	expect_invalid("attribute subject contains a control character "
	    "(U+0085)", "subject", "x\xc2\x85");
	expect_invalid("attribute subject contains a noncharacter (U+FFFF)",
	    "subject", "\xef\xbf\xbf");
}
END_TEST

START_TEST(test_source_uri_reference)
{
	expect_valid("source", "https://example.com/stage1");
	expect_valid("source", "/stage1/cleaning");
	expect_valid("source", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66");
	expect_valid("source", "stage1%20cleaning");
	expect_invalid("source \"stage1 cleaning\" is not a URI-reference",
	    "source", "stage1 cleaning");
	expect_invalid("source \"a\\\"b\" is not a URI-reference",
	    "source", "a\"b");
	expect_invalid("source \"100%\" is not a URI-reference",
	    "source", "100%");
	/* A colon in the first segment reads as a scheme, and 1x is none. */
	expect_invalid("source \"1x:y\" is not a URI-reference",
	    "source", "1x:y");
	expect_invalid("source \":y\" is not a URI-reference", "source", ":y");
}
END_TEST

START_TEST(test_bad_time)
{
	expect_invalid("time \"2026-13-01T00:00:00Z\" is not RFC 3339",
	    "time", "2026-13-01T00:00:00Z");
	/* Seconds are required. */
	expect_invalid("time \"2026-01-05T16:27Z\" is not RFC 3339",
	    "time", "2026-01-05T16:27Z");
	expect_invalid("time \"2026-01-05T16:27:08+24:00\" is not RFC 3339",
	    "time", "2026-01-05T16:27:08+24:00");
	expect_invalid("time \"2026-01-05T16:27:08+05:60\" is not RFC 3339",
	    "time", "2026-01-05T16:27:08+05:60");
	expect_invalid("time \"2026-02-29T00:00:00Z\" is not RFC 3339",
	    "time", "2026-02-29T00:00:00Z");
	expect_invalid("time \"2026-04-31T00:00:00Z\" is not RFC 3339",
	    "time", "2026-04-31T00:00:00Z");
	expect_invalid("time \"2026-01-05T24:00:00Z\" is not RFC 3339",
	    "time", "2026-01-05T24:00:00Z");
	expect_invalid("time \"2026-01-05T16:27:08\" is not RFC 3339",
	    "time", "2026-01-05T16:27:08");
	expect_invalid("time \"2026-01-05 16:27:08Z\" is not RFC 3339",
	    "time", "2026-01-05 16:27:08Z");
	expect_invalid("time \"2026-01-05T16:27:08.Z\" is not RFC 3339",
	    "time", "2026-01-05T16:27:08.Z");
	expect_invalid("time \"2026-01-05T16:27:08Zjunk\" is not RFC 3339",
	    "time", "2026-01-05T16:27:08Zjunk");
	expect_invalid("time \"1767630428\" is not RFC 3339",
	    "time", "1767630428");
}
END_TEST

START_TEST(test_parse_time)
{
	long long ms;

	ck_assert_int_eq(cloudevent_parse_time("2026-01-05T16:27:08.268110Z",
	    &ms), 0);
	ck_assert_int_eq(ms, 1767630428268LL);
	/* Lower case t and z are RFC 3339 too. */
	ck_assert_int_eq(cloudevent_parse_time("2026-01-05t16:27:08.268z",
	    &ms), 0);
	ck_assert_int_eq(ms, 1767630428268LL);
	ck_assert_int_eq(cloudevent_parse_time("2024-02-29T23:59:59+05:30",
	    &ms), 0);
	ck_assert_int_eq(ms, 1709231399000LL);
	ck_assert_int_eq(cloudevent_parse_time("1970-01-01T00:00:00Z", &ms), 0);
	ck_assert_int_eq(ms, 0);
	ck_assert_int_eq(cloudevent_parse_time("1969-12-31T00:00:00-23:59",
	    &ms), 0);
	ck_assert_int_eq(ms, -60000);
	ck_assert_int_eq(cloudevent_parse_time("2000-02-29T00:00:00.5Z", &ms),
	    0);
	ck_assert_int_eq(ms, 951782400500LL);
	ck_assert_int_eq(cloudevent_parse_time("1900-02-29T00:00:00Z", &ms),
	    -1);
	ck_assert_int_eq(cloudevent_parse_time("2026-00-10T00:00:00Z", &ms),
	    -1);
	ck_assert_int_eq(cloudevent_parse_time("2026-01-00T00:00:00Z", &ms),
	    -1);
	ck_assert_int_eq(cloudevent_parse_time("2026-01-05T16:27:08+0530",
	    &ms), -1);
	ck_assert_int_eq(cloudevent_parse_time("", &ms), -1);
	ck_assert_int_eq(cloudevent_parse_time("2026-01-0", &ms), -1);
	ck_assert_int_eq(cloudevent_parse_time(NULL, &ms), -1);
}
END_TEST

START_TEST(test_datacontenttype)
{
	expect_valid("datacontenttype", "application/json; charset=utf-8");
	expect_valid("datacontenttype", "text/plain;charset=\"utf-8\"",
	    "data", "plain");
	expect_invalid("datacontenttype \"json\" is not a media type "
	    "(type/subtype)", "datacontenttype", "json");
	expect_invalid("datacontenttype \"application/\" is not a media type "
	    "(type/subtype)", "datacontenttype", "application/");
	expect_invalid("datacontenttype \"application/json; charset\" is not "
	    "a media type (type/subtype)", "datacontenttype",
	    "application/json; charset");
	expect_invalid("datacontenttype \"text /plain\" is not a media type "
	    "(type/subtype)", "datacontenttype", "text /plain");
}
END_TEST

START_TEST(test_dataschema)
{
	expect_valid("dataschema", "https://schemas.example/job.json");
	expect_valid("dataschema", "urn:example:job:1");
	expect_invalid("dataschema \"schemas/job.json\" is not an absolute "
	    "URI", "dataschema", "schemas/job.json");
	expect_invalid("dataschema \"not a uri\" is not an absolute URI",
	    "dataschema", "not a uri");
	expect_invalid("dataschema \"https:\" is not an absolute URI",
	    "dataschema", "https:");
}
END_TEST

START_TEST(test_extensions)
{
	struct cloudevent ev;

	ck_assert_msg(sample(&ev, "traceparent", "00-abc-def-01",
	    "partitionkey", "", NULL) == CE_OK, "%s", detail);
	ck_assert_str_eq(str_member(ev.json, "traceparent"), "00-abc-def-01");
	ck_assert_str_eq(str_member(ev.json, "partitionkey"), "");
	cloudevent_free(&ev);

	expect_invalid("extension name \"Bad-Name\" must match [a-z0-9]{1,20}",
	    "Bad-Name", "x");
	expect_invalid("extension name \"abcdefghijklmnopqrstu\" must match "
	    "[a-z0-9]{1,20}", "abcdefghijklmnopqrstu", "x");
	expect_invalid("extension name \"\" must match [a-z0-9]{1,20}",
	    "", "x");
	/* Core names are case-sensitive: ID is an (invalid) extension. */
	expect_invalid("extension name \"ID\" must match [a-z0-9]{1,20}",
	    "ID", "x");
	expect_valid("abcdefghijklmnopqrst", "twenty characters");
}
END_TEST

START_TEST(test_data_and_base64)
{
	struct cloudevent ev;

	expect_invalid("data and data_base64 are both present",
	    "data_base64", "aGVsbG8=");
	expect_invalid("data_base64 is not valid base64",
	    "data", NULL, "data_base64", "a");
	expect_invalid("data_base64 is not valid base64",
	    "data", NULL, "data_base64", "aGVsbG8=x");
	expect_invalid("data_base64 is not valid base64",
	    "data", NULL, "data_base64", "aGV=sbG8");
	expect_invalid("data_base64 is not valid base64",
	    "data", NULL, "data_base64", "a===");

	ck_assert_msg(sample(&ev, "data", NULL, "datacontenttype",
	    "application/octet-stream", "data_base64", "aGVsbG8=", NULL) ==
	    CE_OK, "%s", detail);
	ck_assert_ptr_null(ev.data);
	ck_assert_str_eq(str_member(ev.json, "data_base64"), "aGVsbG8=");
	cloudevent_free(&ev);
	expect_valid("data", NULL, "data_base64", "aGVsbG8");
}
END_TEST

START_TEST(test_data_invalid_json)
{
	expect_invalid("data is not valid JSON (datacontenttype "
	    "application/json)", "data", "{\"document_id\": ");
	expect_invalid("data is not valid JSON (datacontenttype "
	    "application/json)", "data", "{} trailing");
	expect_invalid("data is not valid JSON (datacontenttype "
	    "application/vnd.stage1+json)", "datacontenttype",
	    "application/vnd.stage1+json", "data", "nope");
	expect_invalid("data is not valid JSON (no datacontenttype, so JSON "
	    "is assumed)", "datacontenttype", NULL, "data", "nope");
}
END_TEST

START_TEST(test_data_non_json_kept_as_string)
{
	struct cloudevent ev;

	ck_assert_msg(sample(&ev, "datacontenttype", "text/plain",
	    "data", "{not json", NULL) == CE_OK, "%s", detail);
	ck_assert(cJSON_IsString(ev.data));
	ck_assert_str_eq(ev.data->valuestring, "{not json");
	cloudevent_free(&ev);

	/* Any +json type is parsed, even a scalar. */
	ck_assert_msg(sample(&ev, "datacontenttype",
	    "Application/Vnd.Stage1+JSON; charset=utf-8", "data", "42", NULL) ==
	    CE_OK, "%s", detail);
	ck_assert(cJSON_IsNumber(ev.data));
	ck_assert_int_eq(ev.data->valueint, 42);
	cloudevent_free(&ev);
}
END_TEST

START_TEST(test_structured_valid)
{
	struct cloudevent ev;
	const cJSON *v;

	ck_assert_msg(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":\"e-1\","
	    "\"source\":\"/stage2/nlp\","
	    "\"type\":\"com.storytelling.nlp.document.processed\","
	    "\"time\":\"2026-01-05T16:27:08Z\",\"subject\":\"\","
	    "\"dataschema\":null,\"sequence\":7,\"replay\":false,"
	    "\"traceid\":\"t\",\"data\":{\"document_id\":\"d1\","
	    "\"entities\":[1,2]}}",
	    "producer", "stage2", NULL) == CE_OK, "%s", detail);
	ck_assert_str_eq(ev.id, "e-1");
	ck_assert_str_eq(ev.source, "/stage2/nlp");
	ck_assert_ptr_null(ev.subject);
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "dataschema"));
	ck_assert_int_eq(ev.time_ms, 1767630428000LL);
	v = cJSON_GetObjectItem(ev.json, "sequence");
	ck_assert(cJSON_IsNumber(v));
	ck_assert_int_eq(v->valueint, 7);
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(ev.json, "replay")));
	ck_assert_str_eq(str_member(ev.data, "document_id"), "d1");
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(ev.data,
	    "entities")), 2);
	/* Fields beside the event one are not attributes. */
	ck_assert_ptr_null(cJSON_GetObjectItem(ev.json, "producer"));
	cloudevent_free(&ev);

	/* Data of a non-JSON type stays what the JSON said it was. */
	ck_assert_msg(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\","
	    "\"type\":\"t\",\"datacontenttype\":\"text/plain\","
	    "\"data\":\"hi\"}", NULL) == CE_OK, "%s", detail);
	ck_assert_str_eq(ev.data->valuestring, "hi");
	cloudevent_free(&ev);

	/* An event field beside specversion is an extension (flat). */
	ck_assert_msg(sample(&ev, "event", "hello", NULL) == CE_OK, "%s",
	    detail);
	ck_assert_str_eq(str_member(ev.json, "event"), "hello");
	cloudevent_free(&ev);
}
END_TEST

START_TEST(test_structured_invalid)
{
	struct cloudevent ev;

	ck_assert_int_eq(decode(&ev, "event", "[1,2]", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "field event must hold a JSON object (got "
	    "array)");
	ck_assert_int_eq(decode(&ev, "event", "\"1.0\"", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "field event must hold a JSON object (got "
	    "string)");
	ck_assert_int_eq(decode(&ev, "event", "{not json", NULL), CE_INVALID);
	ck_assert_ptr_nonnull(strstr(detail, "field event is not valid JSON"));
	ck_assert_int_eq(decode(&ev, "event", "{} {}", NULL), CE_INVALID);
	ck_assert_ptr_nonnull(strstr(detail, "field event is not valid JSON"));
	ck_assert_int_eq(decode(&ev, "event", "", NULL), CE_INVALID);
	ck_assert_ptr_nonnull(strstr(detail, "field event is not valid JSON"));

	ck_assert_int_eq(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":5,\"source\":\"s\","
	    "\"type\":\"t\"}",
	    NULL), CE_INVALID);
	ck_assert_str_eq(detail, "attribute id must be a string (got number)");
	ck_assert_int_eq(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":null,\"source\":\"s\","
	    "\"type\":\"t\"}", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "required attribute id is missing");
	ck_assert_int_eq(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":\"i\",\"source\":\"s\","
	    "\"type\":\"t\",\"ext\":{\"a\":1}}", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "extension ext must be a string, number or "
	    "boolean (got object)");
	ck_assert_int_eq(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":\"i\",\"id\":\"j\","
	    "\"source\":\"s\",\"type\":\"t\"}", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "attribute \"id\" appears more than once in "
	    "field event");
	ck_assert_int_eq(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":\"i\",\"source\":\"s\","
	    "\"type\":\"t\",\"data\":1,\"data_base64\":\"AA==\"}", NULL),
	    CE_INVALID);
	ck_assert_str_eq(detail, "data and data_base64 are both present");
	ck_assert_int_eq(decode(&ev, "event",
	    "{\"specversion\":\"1.0\",\"id\":\"i\",\"source\":\"s\","
	    "\"type\":\"t\",\"data\":\"\xff\"}", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "data is not valid UTF-8");
}
END_TEST

START_TEST(test_binary_garbage)
{
	static const struct entry_field bad_value[] = {
		{ "specversion", 11, "1.0", 3 },
		{ "id", 2, "x", 1 },
		{ "source", 6, "s", 1 },
		{ "type", 4, "t", 1 },
		{ "subject", 7, "\xc3\x28", 2 },
	};
	static const struct entry_field bad_name[] = {
		{ "specversion", 11, "1.0", 3 },
		{ "\xff\xfe\x01", 3, "x", 1 },
	};
	static const struct entry_field nul_value[] = {
		{ "specversion", 11, "1.0", 3 },
		{ "id", 2, "a\0b", 3 },
	};
	static const struct entry_field overlong[] = {
		{ "specversion", 11, "1.0", 3 },
		{ "id", 2, "\xc0\xaf", 2 },	/* overlong '/' */
	};
	static const struct entry_field surrogate[] = {
		{ "specversion", 11, "1.0", 3 },
		{ "id", 2, "\xed\xa0\x80", 3 },
	};
	struct entry_field f[8];
	struct cloudevent ev;
	char name[8][16], value[8][64];

	ck_assert_int_eq(decode_fields(&ev, NULL, 0, bad_value, 5), CE_INVALID);
	ck_assert_str_eq(detail, "attribute \"subject\" is not valid UTF-8");
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, bad_name, 2), CE_INVALID);
	ck_assert_str_eq(detail, "field name \"\\xff\\xfe\\x01\" is not valid "
	    "UTF-8 text");
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, nul_value, 2), CE_INVALID);
	ck_assert_str_eq(detail, "attribute \"id\" contains a NUL byte");
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, overlong, 2), CE_INVALID);
	ck_assert_str_eq(detail, "attribute \"id\" is not valid UTF-8");
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, surrogate, 2), CE_INVALID);
	ck_assert_str_eq(detail, "attribute \"id\" is not valid UTF-8");
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, NULL, 0), CE_INVALID);
	ck_assert_str_eq(detail, "entry has no fields");

	/* Random entries: never accepted, never a crash, details loggable. */
	srandom(20260105);
	for (int round = 0; round < 2000; round++) {
		size_t n = 1 + (size_t)random() % 8;

		for (size_t i = 0; i < n; i++) {
			size_t nl = (size_t)random() % sizeof(name[i]);
			size_t vl = (size_t)random() % sizeof(value[i]);

			for (size_t j = 0; j < nl; j++)
				name[i][j] = (char)random();
			for (size_t j = 0; j < vl; j++)
				value[i][j] = (char)random();
			f[i].name = name[i];
			f[i].namelen = nl;
			f[i].value = value[i];
			f[i].valuelen = vl;
		}
		ck_assert_int_eq(decode_fields(&ev, NULL, 0, f, n), CE_INVALID);
		ck_assert_ptr_null(ev.json);
		ck_assert_uint_gt(strlen(detail), 0);
		for (const char *p = detail; *p != '\0'; p++)
			ck_assert_msg(*p >= 0x20 && *p < 0x7f,
			    "unprintable byte in detail \"%s\"", detail);
	}
}
END_TEST

START_TEST(test_detail_truncated)
{
	char big[300];

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	{
		struct cloudevent ev;

		ck_assert_int_eq(sample(&ev, "specversion", big, NULL),
		    CE_INVALID);
	}
	ck_assert_uint_lt(strlen(detail), 120);
	ck_assert_ptr_nonnull(strstr(detail, "xxx...\")"));
}
END_TEST

START_TEST(test_too_large)
{
	static const struct entry_field f[] = {
		{ "specversion", 11, "1.0", 3 },	/* 14 */
		{ "id", 2, "abcdefgh", 8 },		/* 10 */
		{ "source", 6, "s", 1 },		/* 7 */
		{ "type", 4, "t", 1 },			/* 5 */
	};
	struct cloudevent ev;

	ck_assert_int_eq(decode_fields(&ev, NULL, 35, f, 4), CE_TOO_LARGE);
	ck_assert_str_eq(detail, "entry is 36 bytes, max_event_bytes is 35");
	ck_assert_ptr_null(ev.json);
	ck_assert_str_eq(cloudevent_error_reason(CE_TOO_LARGE), "too_large");
	ck_assert_int_eq(decode_fields(&ev, NULL, 36, f, 4), CE_OK);
	cloudevent_free(&ev);
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, f, 4), CE_OK);
	cloudevent_free(&ev);
}
END_TEST

/* A Stage 1 entry (flat layout) whose data field is data. */
static enum cloudevent_error
decode_data(struct cloudevent *ev, const struct ce_limits *lim,
    const char *data)
{
	const struct entry_field f[] = {
		{ "specversion", 11, "1.0", 3 },
		{ "id", 2, "e1", 2 },
		{ "source", 6, "s", 1 },
		{ "type", 4, "t", 1 },
		{ "data", 4, data, strlen(data) },
	};

	memset(detail, 0, sizeof(detail));
	return cloudevent_decode(f, 5, NULL, lim, ev, detail, sizeof(detail));
}

/* A structured entry: the required attributes, then members (",..."). */
static enum cloudevent_error
decode_event(struct cloudevent *ev, const struct ce_limits *lim,
    const char *members)
{
	char *event = xasprintf("{\"specversion\":\"1.0\",\"id\":\"e1\","
	    "\"source\":\"s\",\"type\":\"t\"%s}", members);
	struct entry_field f[1] = { { "event", 5, event, strlen(event) } };
	enum cloudevent_error rv;

	memset(detail, 0, sizeof(detail));
	rv = cloudevent_decode(f, 1, NULL, lim, ev, detail, sizeof(detail));
	free(event);
	return rv;
}

START_TEST(test_field_and_depth_limits)
{
	static const char deep[] = "{\"doc\":{\"a\":[[\"]]]]\\\"[[\"]]}}";
	static const char members[] = ",\"data\":"
	    "{\"doc\":{\"a\":[[\"]]]]\\\"[[\"]]}}";
	struct ce_limits lim = { .max_fields = 4 };
	struct cloudevent ev;

	ck_assert_int_eq(decode_data(&ev, &lim, deep), CE_TOO_LARGE);
	ck_assert_str_eq(detail, "entry has 5 fields, max_entry_fields is 4");
	ck_assert_ptr_null(ev.json);

	/* data is 4 deep: the brackets in the string do not count. */
	lim.max_fields = 5;
	lim.max_depth = 4;
	ck_assert_msg(decode_data(&ev, &lim, deep) == CE_OK, "%s", detail);
	cloudevent_free(&ev);
	lim.max_depth = 3;
	ck_assert_int_eq(decode_data(&ev, &lim, deep), CE_TOO_LARGE);
	ck_assert_str_eq(detail, "data nests JSON deeper than max_json_depth "
	    "(3)");

	/* Structured: the event object itself is one level more. */
	lim.max_depth = 5;
	ck_assert_msg(decode_event(&ev, &lim, members) == CE_OK, "%s", detail);
	cloudevent_free(&ev);
	lim.max_depth = 4;
	ck_assert_int_eq(decode_event(&ev, &lim, members), CE_TOO_LARGE);
	ck_assert_str_eq(detail, "field event nests JSON deeper than "
	    "max_json_depth (4)");
}
END_TEST

/* cJSON would cut "d\u0000x" to "d": a different document, silently. */
START_TEST(test_nul_escape_is_refused)
{
	struct cloudevent ev;

	ck_assert_int_eq(decode_data(&ev, NULL, "{\"document_id\":"
	    "\"d\\u0000x\"}"), CE_INVALID);
	ck_assert_str_eq(detail, "data holds \\u0000 (a NUL character) in a "
	    "string");
	ck_assert_int_eq(decode_event(&ev, NULL, ",\"data\":{\"document_id\":"
	    "\"d\\u0000x\"}"), CE_INVALID);
	ck_assert_str_eq(detail, "field event holds \\u0000 (a NUL character) "
	    "in a string");

	/* An escaped backslash before u0000 is text, not the escape. */
	ck_assert_msg(decode_data(&ev, NULL, "{\"document_id\":"
	    "\"d\\\\u0000x\"}") == CE_OK, "%s", detail);
	ck_assert_str_eq(cJSON_GetObjectItem(ev.data, "document_id")->
	    valuestring, "d\\u0000x");
	cloudevent_free(&ev);
}
END_TEST

/* Number extensions are CloudEvents Integers: whole, signed 32 bits. */
START_TEST(test_integer_extensions)
{
	static const struct {
		const char	*value;
		bool		 ok;
	} cases[] = {
		{ "7", true }, { "-2147483648", true }, { "2147483647", true },
		{ "1e3", true }, { "3.5", false }, { "2147483648", false },
		{ "-2147483649", false }, { "1e300", false },
	};
	struct cloudevent ev;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *members = xasprintf(",\"seq\":%s", cases[i].value);
		enum cloudevent_error rv = decode_event(&ev, NULL, members);

		free(members);
		if (cases[i].ok) {
			ck_assert_msg(rv == CE_OK, "%s: %s", cases[i].value,
			    detail);
			cloudevent_free(&ev);
			continue;
		}
		ck_assert_msg(rv == CE_INVALID, "%s passed", cases[i].value);
		ck_assert_msg(strstr(detail, "extension seq must be an integer "
		    "from -2147483648 to 2147483647") != NULL, "%s", detail);
	}
}
END_TEST

/* cJSON reads the first of two members, Python's json the last. */
START_TEST(test_duplicate_members_in_data)
{
	struct cloudevent ev;

	ck_assert_int_eq(decode_data(&ev, NULL, "{\"document_id\":\"a\","
	    "\"meta\":[{\"k\":1,\"k\":2}],\"x\":1}"), CE_INVALID);
	ck_assert_str_eq(detail, "data has the member \"k\" twice in one "
	    "object");
	ck_assert_int_eq(decode_data(&ev, NULL, "{\"document_id\":\"a\","
	    "\"document_id\":\"b\"}"), CE_INVALID);
	ck_assert_str_eq(detail, "data has the member \"document_id\" twice "
	    "in one object");
	ck_assert_int_eq(decode_event(&ev, NULL, ",\"data\":{\"document_id\":"
	    "\"a\",\"document_id\":\"b\"}"), CE_INVALID);
	ck_assert_str_eq(detail, "data has the member \"document_id\" twice "
	    "in one object");

	/* The same name in two objects is fine. */
	ck_assert_msg(decode_data(&ev, NULL, "{\"a\":{\"k\":1},"
	    "\"b\":{\"k\":2}}") == CE_OK, "%s", detail);
	cloudevent_free(&ev);
}
END_TEST

START_TEST(test_duplicate_fields)
{
	struct cloudevent ev;

	ck_assert_int_eq(decode(&ev, "specversion", "1.0", "id", "a",
	    "source", "s", "type", "t", "id", "b", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "field \"id\" appears more than once");
	/* Even when both say the same. */
	ck_assert_int_eq(decode(&ev, "specversion", "1.0", "id", "a",
	    "source", "s", "type", "t", "type", "t", NULL), CE_INVALID);
	ck_assert_str_eq(detail, "field \"type\" appears more than once");
}
END_TEST

START_TEST(test_custom_event_field)
{
	static const char json[] = "{\"specversion\":\"1.0\",\"id\":\"c\","
	    "\"source\":\"s\",\"type\":\"t\",\"data\":[1]}";
	struct entry_field f[1] = { { "payload", 7, json, sizeof(json) - 1 } };
	struct cloudevent ev;

	ck_assert_msg(decode_fields(&ev, "payload", 0, f, 1) == CE_OK, "%s",
	    detail);
	ck_assert_str_eq(ev.id, "c");
	ck_assert(cJSON_IsArray(ev.data));
	cloudevent_free(&ev);

	/* With the default name, "payload" is just a (flat) extension. */
	ck_assert_int_eq(decode_fields(&ev, NULL, 0, f, 1), CE_INVALID);
	ck_assert_str_eq(detail, "required attribute specversion is missing");
	f[0].name = "event";
	f[0].namelen = 5;
	ck_assert_int_eq(decode_fields(&ev, "payload", 0, f, 1), CE_INVALID);
	ck_assert_str_eq(detail, "required attribute specversion is missing");
}
END_TEST

START_TEST(test_error_reason)
{
	ck_assert_str_eq(cloudevent_error_reason(CE_INVALID), "invalid_event");
	ck_assert_str_eq(cloudevent_error_reason(CE_TOO_LARGE), "too_large");
}
END_TEST

static Suite *
cloudevent_suite(void)
{
	Suite *s = suite_create("cloudevent");
	TCase *tc = tcase_create("decode");

	tcase_add_test(tc, test_flat_stage1_sample);
	tcase_add_test(tc, test_flat_empty_optional_absent);
	tcase_add_test(tc, test_missing_required);
	tcase_add_test(tc, test_specversion);
	tcase_add_test(tc, test_empty_required);
	tcase_add_test(tc, test_control_characters);
	tcase_add_test(tc, test_source_uri_reference);
	tcase_add_test(tc, test_bad_time);
	tcase_add_test(tc, test_parse_time);
	tcase_add_test(tc, test_datacontenttype);
	tcase_add_test(tc, test_dataschema);
	tcase_add_test(tc, test_extensions);
	tcase_add_test(tc, test_data_and_base64);
	tcase_add_test(tc, test_data_invalid_json);
	tcase_add_test(tc, test_data_non_json_kept_as_string);
	tcase_add_test(tc, test_structured_valid);
	tcase_add_test(tc, test_structured_invalid);
	tcase_add_test(tc, test_binary_garbage);
	tcase_add_test(tc, test_detail_truncated);
	tcase_add_test(tc, test_too_large);
	tcase_add_test(tc, test_field_and_depth_limits);
	tcase_add_test(tc, test_nul_escape_is_refused);
	tcase_add_test(tc, test_duplicate_members_in_data);
	tcase_add_test(tc, test_integer_extensions);
	tcase_add_test(tc, test_duplicate_fields);
	tcase_add_test(tc, test_custom_event_field);
	tcase_add_test(tc, test_error_reason);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return unit_run(cloudevent_suite());
}
