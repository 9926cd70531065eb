/*
 * route.c: an event turned into the HTTP request of its route (DESIGN.md §4).
 *
 * Everything an event contributes to a request goes through templates; what
 * could smuggle a second header or another host in (CR/LF, spaces, a path
 * that rewrites the authority) is refused here, as a render error, so the
 * entry is dead-lettered instead of sent.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>

#include "cloudevent.h"
#include "config.h"
#include "ledger.h"
#include "log.h"
#include "route.h"
#include "template.h"
#include "util.h"

#define CT_JSON		"application/json"
#define CT_OCTETS	"application/octet-stream"
#define CT_CLOUDEVENT	"application/cloudevents+json; charset=utf-8"

/* Attributes that are not sent as ce-* headers in binary mode. */
static const char *const not_headers[] = {
	"datacontenttype", "data", "data_base64"
};

static char *
print_json(const cJSON *v)
{
	char *s, *copy;

	/* Copied, so request_free() can free() it whatever cJSON's hooks. */
	if ((s = cJSON_PrintUnformatted((cJSON *)v)) == NULL)
		fatalx("route: out of memory");
	copy = xstrdup(s);
	cJSON_free(s);
	return copy;
}

/* An attribute or id as text: strings raw, numbers and booleans as JSON. */
static char *
scalar_text(const cJSON *v)
{
	if (cJSON_IsString(v))
		return xstrdup(v->valuestring);
	if (cJSON_IsNumber(v) || cJSON_IsBool(v))
		return print_json(v);
	return NULL;
}

static bool
is_full_url(const char *s)
{
	return strncasecmp(s, "http://", 7) == 0 ||
	    strncasecmp(s, "https://", 8) == 0;
}

/* data_base64 was validated by the decoder; stops at padding. */
static char *
base64_decode(const char *s, size_t *len)
{
	char *out = xmalloc(strlen(s) / 4 * 3 + 4);
	unsigned int acc = 0;
	size_t n = 0;
	int bits = 0, v;

	for (; *s != '\0' && *s != '='; s++) {
		if ((v = cloudevent_b64_value((unsigned char)*s)) == -1)
			continue;
		acc = (acc << 6) | (unsigned int)v;
		if ((bits += 6) >= 8) {
			bits -= 8;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	out[n] = '\0';
	*len = n;
	return out;
}

/*
 * The CloudEvents HTTP binding: bytes outside printable ASCII, space, '"'
 * and '%' are percent-encoded (UTF-8 bytes one by one).
 */
static char *
percent_encode(const char *s)
{
	struct buf b;

	buf_init(&b);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '%')
			buf_printf(&b, "%%%02X", c);
		else
			buf_putc(&b, (char)c);
	}
	return buf_steal(&b);
}

static void
add_header(struct request *rq, const char *name, const char *value)
{
	char *enc = percent_encode(value);

	rq->headers = xreallocarray(rq->headers, rq->nheaders + 1,
	    sizeof(*rq->headers));
	rq->headers[rq->nheaders++] = xasprintf("ce-%s: %s", name, enc);
	free(enc);
}

static int
render_key(const struct route *r, const cJSON *ctx, struct request *rq,
    char *err, size_t errlen)
{
	char msg[512];
	size_t n;

	msg[0] = '\0';
	rq->idempotency_key = template_render_string(r->idempotency_key,
	    ctx, msg, sizeof(msg));
	if (rq->idempotency_key == NULL) {
		snprintf(err, errlen, "idempotency_key: %s", msg);
		return -1;
	}
	if (*rq->idempotency_key == '\0') {
		snprintf(err, errlen, "idempotency_key: renders to an empty "
		    "key");
		return -1;
	}
	/* It is sent as a header and is the ledger's key: one line only. */
	if (str_has_control(rq->idempotency_key)) {
		snprintf(err, errlen, "idempotency_key: the rendered key "
		    "contains a control character");
		return -1;
	}
	/* A header parser drops them: the API would see another key. */
	n = strlen(rq->idempotency_key);
	if (rq->idempotency_key[0] == ' ' ||
	    rq->idempotency_key[n - 1] == ' ') {
		snprintf(err, errlen, "idempotency_key: the rendered key "
		    "starts or ends with a space");
		return -1;
	}
	if (n > LEDGER_KEY_MAX) {
		snprintf(err, errlen, "idempotency_key: the rendered key is %zu "
		    "bytes, over the %d the ledger indexes", n,
		    LEDGER_KEY_MAX);
		return -1;
	}
	return 0;
}

/*
 * base_url + path with exactly one '/' between them. Always putting the
 * slash there means a rendered path can extend the URL's path but never
 * its authority ("@evil.example" stays a path segment).
 */
static int
render_url(const struct route *r, const struct config *cfg, const cJSON *ctx,
    struct request *rq, char *err, size_t errlen)
{
	const char *base = cfg->nlp_api.base_url, *p;
	char msg[512], *path;
	size_t blen;

	msg[0] = '\0';
	if ((path = template_render_url(r->path, ctx, msg,
	    sizeof(msg))) == NULL) {
		snprintf(err, errlen, "path: %s", msg);
		return -1;
	}
	if (is_full_url(r->path) || base == NULL || *base == '\0')
		rq->url = path;
	else {
		blen = strlen(base);
		if (base[blen - 1] == '/')
			blen--;
		p = *path == '/' ? path + 1 : path;
		rq->url = xasprintf("%.*s/%s", (int)blen, base, p);
		free(path);
	}
	for (p = rq->url; *p != '\0'; p++) {
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f) {
			snprintf(err, errlen, "path: the rendered URL contains "
			    "a space or control character");
			return -1;
		}
	}
	return 0;
}

static int
render_body(const struct route *r, const cJSON *ctx, struct request *rq,
    char *err, size_t errlen)
{
	char msg[512];
	cJSON *body;

	if (r->body == NULL) {
		snprintf(err, errlen, "body: the route has no body");
		return -1;
	}
	msg[0] = '\0';
	if ((body = template_render(r->body, ctx, msg,
	    sizeof(msg))) == NULL) {
		snprintf(err, errlen, "body: %s", msg);
		return -1;
	}
	rq->body = print_json(body);
	cJSON_Delete(body);
	rq->content_type = xstrdup(CT_JSON);
	return 0;
}

/* The binary content mode: data as the body, attributes as ce-* headers. */
static void
render_binary(const struct cloudevent *ev, struct request *rq)
{
	const cJSON *ct, *b64, *c;
	const char *type = NULL;
	char *text;

	ct = cJSON_GetObjectItemCaseSensitive(ev->json, "datacontenttype");
	if (cJSON_IsString(ct))
		type = ct->valuestring;
	b64 = cJSON_GetObjectItemCaseSensitive(ev->json, "data_base64");

	if (ev->data != NULL) {
		if (!cloudevent_media_type_is_json(type) &&
		    cJSON_IsString(ev->data))
			rq->body = xstrdup(ev->data->valuestring);
		else
			rq->body = print_json(ev->data);
		rq->bodylen = strlen(rq->body);
	} else if (cJSON_IsString(b64))
		rq->body = base64_decode(b64->valuestring, &rq->bodylen);
	else
		rq->body = xstrdup("");
	if (type != NULL)
		rq->content_type = xstrdup(type);
	else
		rq->content_type = xstrdup(cJSON_IsString(b64) ? CT_OCTETS :
		    CT_JSON);

	for (c = ev->json->child; c != NULL; c = c->next) {
		bool skip = false;

		for (size_t i = 0; i < sizeof(not_headers) /
		    sizeof(not_headers[0]); i++)
			if (strcmp(c->string, not_headers[i]) == 0)
				skip = true;
		if (skip || (text = scalar_text(c)) == NULL)
			continue;
		add_header(rq, c->string, text);
		free(text);
	}
}

/* data.<name> as text for the ledger, or NULL when there is none. */
static char *
data_id(const struct cloudevent *ev, const char *name)
{
	const cJSON *v;
	char *s;

	if (!cJSON_IsObject(ev->data))
		return NULL;
	v = cJSON_GetObjectItemCaseSensitive(ev->data, name);
	if (v == NULL || cJSON_IsBool(v) || (s = scalar_text(v)) == NULL)
		return NULL;
	if (*s == '\0') {
		free(s);
		return NULL;
	}
	return s;
}

/* Renders r's request for ev; templates see ctx (the event, or more). */
static int
render(const struct route *r, const struct config *cfg,
    const struct cloudevent *ev, const cJSON *ctx, struct request *out,
    char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	out->route = r;
	if (errlen > 0)
		err[0] = '\0';
	if (ev == NULL || ev->json == NULL) {
		snprintf(err, errlen, "no event to render");
		return -1;
	}

	out->method = xstrdup(r->method != NULL && *r->method != '\0' ?
	    r->method : "POST");
	if (render_key(r, ctx, out, err, errlen) == -1 ||
	    render_url(r, cfg, ctx, out, err, errlen) == -1)
		goto fail;
	switch (r->content_mode) {
	case CONTENT_BODY:
		if (render_body(r, ctx, out, err, errlen) == -1)
			goto fail;
		/* Lets the API trace the request back to the Stage 1 event. */
		add_header(out, "id", ev->id);
		break;
	case CONTENT_STRUCTURED:
		out->body = print_json(ev->json);
		out->content_type = xstrdup(CT_CLOUDEVENT);
		break;
	case CONTENT_BINARY:
		render_binary(ev, out);
		break;
	default:
		snprintf(err, errlen, "unknown content mode %d",
		    (int)r->content_mode);
		goto fail;
	}
	if (r->content_mode != CONTENT_BINARY)
		out->bodylen = strlen(out->body);
	if (cfg->nlp_api.max_request_bytes != 0 &&
	    out->bodylen > cfg->nlp_api.max_request_bytes) {
		snprintf(err, errlen, "body: the request body is %zu bytes, "
		    "over nlp_api.max_request_bytes (%zu)", out->bodylen,
		    cfg->nlp_api.max_request_bytes);
		goto fail;
	}

	out->document_id = data_id(ev, "document_id");
	out->job_id = data_id(ev, "job_id");
	out->batch_id = data_id(ev, "batch_id");
	return 0;

fail:
	request_free(out);
	return -1;
}

int
route_render(const struct route *r, const struct config *cfg,
    const struct cloudevent *ev, struct request *out, char *err,
    size_t errlen)
{
	return render(r, cfg, ev, ev != NULL ? ev->json : NULL, out, err,
	    errlen);
}

int
route_render_key(const struct route *r, const struct cloudevent *ev,
    struct request *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	out->route = r;
	if (errlen > 0)
		err[0] = '\0';
	out->method = xstrdup(r->method != NULL && *r->method != '\0' ?
	    r->method : "POST");
	if (render_key(r, ev->json, out, err, errlen) == -1) {
		request_free(out);
		return -1;
	}
	out->document_id = data_id(ev, "document_id");
	out->job_id = data_id(ev, "job_id");
	out->batch_id = data_id(ev, "batch_id");
	return 0;
}

char *
route_documents_file(const struct route *r, const struct cloudevent *ev,
    char *err, size_t errlen)
{
	char msg[512], *path;

	msg[0] = '\0';
	if (r->documents_file == NULL) {
		snprintf(err, errlen, "the route has no documents_file");
		return NULL;
	}
	if ((path = template_render_string(r->documents_file, ev->json, msg,
	    sizeof(msg))) == NULL)
		snprintf(err, errlen, "documents_file: %s", msg);
	return path;
}

char **
route_documents_query_params(const struct route *r,
    const struct cloudevent *ev, char *err, size_t errlen)
{
	const struct route_query *q = &r->documents_query;
	char msg[512], **values;

	values = xcalloc(q->nparams + 1, sizeof(*values));
	for (size_t i = 0; i < q->nparams; i++) {
		msg[0] = '\0';
		if ((values[i] = template_render_string(q->params[i], ev->json,
		    msg, sizeof(msg))) == NULL) {
			snprintf(err, errlen, "documents_query.params[%zu]: %s",
			    i, msg);
			route_params_free(values, q->nparams);
			return NULL;
		}
	}
	return values;
}

void
route_params_free(char **values, size_t n)
{
	if (values == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(values[i]);
	free(values);
}

int
route_render_batch(const struct route *r, const struct config *cfg,
    const struct cloudevent *ev, const cJSON *documents, size_t part,
    size_t nparts, const char *tag, struct request *out, char *err,
    size_t errlen)
{
	cJSON *ctx, *ids;
	const cJSON *c;
	char *key;
	int rv;

/* The event's members by reference, and the batch beside them. */
	if ((ctx = cJSON_CreateObject()) == NULL ||
	    (ids = cJSON_CreateArray()) == NULL)
		fatalx("route: out of memory");
	/* An event attribute may not pass itself off as the batch. */
	for (c = ev->json->child; c != NULL; c = c->next)
		if (strcmp(c->string, "documents") != 0 &&
		    strcmp(c->string, "document_ids") != 0)
			cJSON_AddItemReferenceToObject(ctx, c->string,
			    (cJSON *)c);
	for (c = documents->child; c != NULL; c = c->next)
		cJSON_AddItemToArray(ids, cJSON_CreateString(
		    cJSON_GetObjectItemCaseSensitive(c,
		    "document_id")->valuestring));
	cJSON_AddItemReferenceToObject(ctx, "documents", (cJSON *)documents);
	cJSON_AddItemToObject(ctx, "document_ids", ids);
	rv = render(r, cfg, ev, ctx, out, err, errlen);
	cJSON_Delete(ctx);
	if (rv == 0 && (nparts > 1 || tag != NULL)) {
		/* Each request of a split batch has a key of its own. */
		if (nparts > 1)
			key = xasprintf("%s#%zu/%zu%s%s", out->idempotency_key,
			    part, nparts, tag ? "~" : "", tag ? tag : "");
		else
			key = xasprintf("%s~%s", out->idempotency_key, tag);
		free(out->idempotency_key);
		out->idempotency_key = key;
	}
	return rv;
}

void
request_free(struct request *rq)
{
	if (rq == NULL)
		return;
	free(rq->method);
	free(rq->url);
	free(rq->idempotency_key);
	free(rq->body);
	free(rq->content_type);
	for (size_t i = 0; i < rq->nheaders; i++)
		free(rq->headers[i]);
	free(rq->headers);
	free(rq->document_id);
	free(rq->job_id);
	free(rq->batch_id);
	memset(rq, 0, sizeof(*rq));
}

static void
default_route(struct route *r, const char *name, const char *type,
    const char *path, const char *key, const char *body,
    const char *documents_file)
{
	memset(r, 0, sizeof(*r));
	r->name = xstrdup(name);
	r->types = xcalloc(1, sizeof(*r->types));
	r->types[0] = xstrdup(type);
	r->ntypes = 1;
	r->method = xstrdup("POST");
	r->path = xstrdup(path);
	r->idempotency_key = xstrdup(key);
	if ((r->body = cJSON_Parse(body)) == NULL)
		fatalx("route: default route %s: bad body", name);
	r->content_mode = CONTENT_BODY;
	/* The deployed Stage 2 answers failures 200 {"success": false}. */
	r->success_field = xstrdup("success");
	r->job_id_field = xstrdup("job_id");
	r->documents_file = xstrdup(documents_file);
	r->kind = xstrdup(documents_file != NULL ? "batch" : "document");
	r->line = 0;
}

struct route *
route_defaults(size_t *n)
{
	struct route *r = xcalloc(2, sizeof(*r));

	default_route(&r[0], "document",
	    "com.storytelling.cleaning.document.cleaned",
	    "/api/v2/nlp/process", "{{data.document_id}}",
	    "{\"document_id\":\"{{data.document_id}}\","
	    "\"text\":\"{{data.cleaned_text}}\"}", NULL);
	default_route(&r[1], "batch",
	    "com.storytelling.cleaning.job.completed",
	    "/v2/process/batch", "job:{{data.job_id}}",
	    "{\"input_file\":\"{{data.output_location}}\","
	    "\"batch_id\":\"{{data.batch_id}}\"}",
	    "{{data.output_location}}");
	*n = 2;
	return r;
}

void
route_free(struct route *r)
{
	if (r == NULL)
		return;
	free(r->name);
	for (size_t i = 0; i < r->ntypes; i++)
		free(r->types[i]);
	free(r->types);
	free(r->method);
	free(r->path);
	free(r->idempotency_key);
	cJSON_Delete(r->body);
	free(r->success_field);
	free(r->job_id_field);
	free(r->documents_file);
	free(r->documents_query.sql);
	for (size_t i = 0; i < r->documents_query.nparams; i++)
		free(r->documents_query.params[i]);
	free(r->documents_query.params);
	if (r->documents_query.dsn != NULL) {
		explicit_bzero(r->documents_query.dsn,
		    strlen(r->documents_query.dsn));
		free(r->documents_query.dsn);
	}
	free(r->documents_query.password_file);
	free(r->kind);
	memset(r, 0, sizeof(*r));
}
