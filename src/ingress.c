/*
 * ingress.c: the ingress process (ingress.h).
 *
 * One request, one pass: check the signature, tell the mode from the
 * headers, turn every event into the flat fields Stage 1 would have
 * written, decode those fields exactly as a worker will (so nothing is
 * appended that a worker would dead-letter), append them all or none,
 * answer. The master owns the listening socket: clients queue in its
 * backlog while this process restarts, and nothing here outlives a
 * request but the Redis connection.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cloudevent.h"
#include "httpd.h"
#include "ingress.h"
#include "log.h"
#include "stream.h"
#include "util.h"

#define RETRY_AFTER_S		5	/* Redis unreachable: come back then */
#define RECONNECT_MS		1000
#define NAP_MS			500	/* a heartbeat at least this often */
#define DRAIN_MS		2000	/* stop: open connections served */
#define SIGNATURE_HEADER	"X-Signature-256"

struct ingress {
	const struct config	*cfg;
	struct stream		*stream;
	struct metrics_ingress	*metrics;
	struct worker_shm	*shm;		/* heartbeat */
	struct ce_limits	 lim;
	long long		 next_connect_ms; /* no reconnect before */
};

/* One event as Stage 1 writes it: fields in order, each string owned. */
struct flat {
	struct entry_field	*f;
	size_t			 n;
	size_t			 cap;
};

/* An outcome: status and the sentence the client (and the log) gets. */
struct verdict {
	int	 status;
	char	 detail[600];
};

static const char *const mode_names[] = {
	"binary", "structured", "batch", "unsupported"
};

/* ---- small pieces ------------------------------------------------------ */

static void
flat_add(struct flat *fl, const char *name, size_t namelen, const char *value,
    size_t valuelen)
{
	struct entry_field *e;

	if (fl->n == fl->cap) {
		fl->cap = fl->cap ? fl->cap * 2 : 16;
		fl->f = xreallocarray(fl->f, fl->cap, sizeof(*fl->f));
	}
	e = &fl->f[fl->n++];
	e->name = xstrndup(name, namelen);
	e->namelen = namelen;
	e->value = xstrndup(value, valuelen);
	e->valuelen = valuelen;
}

static void
flat_free(struct flat *fl)
{
	for (size_t i = 0; i < fl->n; i++) {
		free((char *)fl->f[i].name);
		free((char *)fl->f[i].value);
	}
	free(fl->f);
	memset(fl, 0, sizeof(*fl));
}

static int __attribute__((format(printf, 3, 4)))
refuse(struct verdict *v, int status, const char *fmt, ...)
{
	va_list ap;

	v->status = status;
	va_start(ap, fmt);
	vsnprintf(v->detail, sizeof(v->detail), fmt, ap);
	va_end(ap);
	return -1;
}

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

char *
ingress_percent_decode(const char *value, size_t *outlen)
{
	size_t len = strlen(value), k = 0;
	char *out = xmalloc(len + 1);

	for (size_t i = 0; i < len; i++) {
		int hi, lo;

		if (value[i] != '%') {
			out[k++] = value[i];
			continue;
		}
		if (i + 2 >= len ||
		    (hi = hexval((unsigned char)value[i + 1])) == -1 ||
		    (lo = hexval((unsigned char)value[i + 2])) == -1) {
			free(out);
			return NULL;
		}
		out[k++] = (char)(hi << 4 | lo);
		i += 2;
	}
	out[k] = '\0';
	*outlen = k;
	return out;
}

int
ingress_signature_ok(const char *secret, const char *body, size_t len,
    const char *sig)
{
	unsigned char mac[EVP_MAX_MD_SIZE], want[32];
	unsigned int maclen = 0;

	if (sig == NULL || strncasecmp(sig, "sha256=", 7) != 0 ||
	    strlen(sig + 7) != 64)
		return 0;
	for (size_t i = 0; i < 32; i++) {
		int hi = hexval((unsigned char)sig[7 + 2 * i]);
		int lo = hexval((unsigned char)sig[8 + 2 * i]);

		if (hi == -1 || lo == -1)
			return 0;
		want[i] = (unsigned char)(hi << 4 | lo);
	}
	if (HMAC(EVP_sha256(), secret, (int)strlen(secret),
	    (const unsigned char *)body, len, mac, &maclen) == NULL ||
	    maclen != sizeof(want))
		return 0;
	return CRYPTO_memcmp(mac, want, sizeof(want)) == 0;
}

/* The media type alone, lower case, without parameters. */
static void
media_type(const char *ct, char *out, size_t outlen)
{
	size_t k = 0;

	out[0] = '\0';
	if (ct == NULL)
		return;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	for (; *ct != '\0' && *ct != ';' && *ct != ' ' && *ct != '\t' &&
	    k + 1 < outlen; ct++)
		out[k++] = (char)tolower((unsigned char)*ct);
	out[k] = '\0';
}

enum ingress_mode
ingress_mode_of(const char *content_type, int has_ce_specversion)
{
	char mt[128];

	media_type(content_type, mt, sizeof(mt));
	if (strcmp(mt, "application/cloudevents+json") == 0)
		return INGRESS_STRUCTURED;
	if (strcmp(mt, "application/cloudevents-batch+json") == 0)
		return INGRESS_BATCH;
	/* Another event format (cloudevents+avro...) we cannot read. */
	if (strncmp(mt, "application/cloudevents", 23) == 0)
		return INGRESS_UNSUPPORTED;
	return has_ce_specversion ? INGRESS_BINARY : INGRESS_UNSUPPORTED;
}

/* RFC 4648 base64, for a binary-mode body that is not text. */
static char *
base64(const char *s, size_t len)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = (const unsigned char *)s;
	char *out = xmalloc((len + 2) / 3 * 4 + 1), *o = out;
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		*o++ = tab[p[i] >> 2];
		*o++ = tab[(p[i] & 3) << 4 | p[i + 1] >> 4];
		*o++ = tab[(p[i + 1] & 15) << 2 | p[i + 2] >> 6];
		*o++ = tab[p[i + 2] & 63];
	}
	if (i < len) {
		*o++ = tab[p[i] >> 2];
		if (i + 1 < len) {
			*o++ = tab[(p[i] & 3) << 4 | p[i + 1] >> 4];
			*o++ = tab[(p[i + 1] & 15) << 2];
		} else {
			*o++ = tab[(p[i] & 3) << 4];
			*o++ = '=';
		}
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

/*
 * The fields, decoded as a worker will decode them: an event a worker
 * would dead-letter is refused here instead, with the same sentence.
 */
static int
check_flat(struct ingress *ig, const struct flat *fl, const char *prefix,
    struct verdict *v)
{
	struct cloudevent ev;
	enum cloudevent_error e;
	char detail[512];

	e = cloudevent_decode(fl->f, fl->n, ig->cfg->event_field, &ig->lim,
	    &ev, detail, sizeof(detail));
	if (e == CE_OK) {
		cloudevent_free(&ev);
		return 0;
	}
	return refuse(v, e == CE_TOO_LARGE ? 413 : 400, "%s%s", prefix,
	    detail);
}

/* ---- the three modes ---------------------------------------------------- */

struct binary_walk {
	struct flat	*fl;
	struct verdict	*v;
	bool		 failed;
};

/* A header name as a client sent it, fit for a log line and a JSON answer. */
static const char *
printable(const char *s, char *buf, size_t len)
{
	size_t k = 0;

	for (; *s != '\0' && k + 1 < len; s++)
		buf[k++] = (*s > ' ' && *s < 0x7f) ? *s : '?';
	buf[k] = '\0';
	return buf;
}

static int
binary_header(void *arg, const char *name, const char *value)
{
	char shown[64];

	struct binary_walk *w = arg;
	char attr[64], *decoded;
	size_t len, k;

	if (strncasecmp(name, "ce-", 3) != 0)
		return 0;
	for (k = 0; name[3 + k] != '\0' && k + 1 < sizeof(attr); k++)
		attr[k] = (char)tolower((unsigned char)name[3 + k]);
	attr[k] = '\0';
	if (strcmp(attr, "data") == 0 || strcmp(attr, "data_base64") == 0 ||
	    strcmp(attr, "datacontenttype") == 0) {
		refuse(w->v, 400, "header %s: in binary mode %s",
		    printable(name, shown, sizeof(shown)),
		    strcmp(attr, "datacontenttype") == 0 ?
		    "datacontenttype is the Content-Type header" :
		    "the data is the body");
		w->failed = true;
		return -1;
	}
	if ((decoded = ingress_percent_decode(value, &len)) == NULL) {
		refuse(w->v, 400, "header %s: a %% not followed by two hex "
		    "digits (values are percent-encoded)",
		    printable(name, shown, sizeof(shown)));
		w->failed = true;
		return -1;
	}
	flat_add(w->fl, attr, strlen(attr), decoded, len);
	free(decoded);
	return 0;
}

/* Binary mode: the attributes in ce-* headers, the data in the body. */
static int
flatten_binary(struct ingress *ig, const struct httpd_request *req,
    struct flat *fl, struct verdict *v)
{
	struct binary_walk w = { fl, v, false };
	const char *ct = httpd_header(req, "Content-Type"), *body;
	size_t len;

	httpd_headers(req, binary_header, &w);
	if (w.failed)
		return -1;
	if (ct != NULL && *ct != '\0')
		flat_add(fl, "datacontenttype", 15, ct, strlen(ct));
	body = httpd_body(req, &len);
	if (len > 0) {
		bool json = cloudevent_media_type_is_json(ct != NULL &&
		    *ct != '\0' ? ct : NULL);

		if (json || (cloudevent_utf8_valid(body, len) &&
		    memchr(body, '\0', len) == NULL))
			flat_add(fl, "data", 4, body, len);
		else {
			/* Bytes, not text: a flat field holds text. */
			char *b64 = base64(body, len);

			flat_add(fl, "data_base64", 11, b64, strlen(b64));
			free(b64);
		}
	}
	return check_flat(ig, fl, "", v);
}

/*
 * One event in the JSON format (text[0..len), an object): validated as a
 * structured entry, then written out flat. Attributes come from the
 * decoded event; data keeps its text as sent (a number past 2^53 is not
 * rounded by a print from the parse tree).
 */
static int
flatten_structured(struct ingress *ig, const char *text, size_t len,
    const char *prefix, struct flat *fl, struct verdict *v)
{
	struct entry_field one = { "body", 4, text, len };
	struct cloudevent ev;
	enum cloudevent_error e;
	const char *ct, *span;
	char detail[512], num[32];
	size_t spanlen;

	e = cloudevent_decode(&one, 1, "body", &ig->lim, &ev, detail,
	    sizeof(detail));
	if (e != CE_OK)
		return refuse(v, e == CE_TOO_LARGE ? 413 : 400, "%s%s", prefix,
		    detail);
	ct = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev.json,
	    "datacontenttype"));
	for (const cJSON *c = ev.json->child; c != NULL; c = c->next) {
		const char *name = c->string;

		if (strcmp(name, "data") == 0) {
			if (!cloudevent_media_type_is_json(ct)) {
				if (!cJSON_IsString(c)) {
					/* ct lives in ev: say it first. */
					refuse(v, 400, "%sdata must be a string "
					    "when datacontenttype (%s) is not "
					    "JSON", prefix, ct);
					cloudevent_free(&ev);
					return -1;
				}
				flat_add(fl, "data", 4, c->valuestring,
				    strlen(c->valuestring));
			} else if (json_member_span(text, len, "data", &span,
			    &spanlen) == 1)
				flat_add(fl, "data", 4, span, spanlen);
			else {
				/* A name written with escapes: print it. */
				char *printed = cJSON_PrintUnformatted(c);

				if (printed == NULL)
					fatalx("ingress: out of memory");
				flat_add(fl, "data", 4, printed,
				    strlen(printed));
				free(printed);
			}
		} else if (cJSON_IsString(c))
			flat_add(fl, name, strlen(name), c->valuestring,
			    strlen(c->valuestring));
		else if (cJSON_IsBool(c))
			flat_add(fl, name, strlen(name), cJSON_IsTrue(c) ?
			    "true" : "false", cJSON_IsTrue(c) ? 4 : 5);
		else if (cJSON_IsNumber(c)) {
			/* The decoder let only 32-bit Integers through. */
			snprintf(num, sizeof(num), "%ld", (long)c->valuedouble);
			flat_add(fl, name, strlen(name), num, strlen(num));
		}
	}
	cloudevent_free(&ev);
	return check_flat(ig, fl, prefix, v);
}

/* Batch mode: a JSON array of events, each in the JSON format. */
static int
flatten_batch(struct ingress *ig, const char *body, size_t len,
    struct flat **out, size_t *nout, struct verdict *v)
{
	const char *p, *end = body + len, *next, *tail = NULL;
	struct flat *fls = NULL;
	size_t n = 0, cap = 0;
	char prefix[48];
	bool nul = false;
	cJSON *arr;
	int depth;

	*out = NULL;
	*nout = 0;
	/* The array is one level more than each event may have. */
	depth = json_scan(body, len, ig->cfg->max_json_depth + 2, &nul);
	if (depth > ig->cfg->max_json_depth + 1)
		return refuse(v, 413, "the batch nests deeper than "
		    "max_json_depth (%d) allows", ig->cfg->max_json_depth);
	if (nul)
		return refuse(v, 400, "the batch holds the escape \\u0000 in a "
		    "string");
	arr = cJSON_ParseWithLengthOpts(body, len, &tail, 0);
	if (arr == NULL)
		return refuse(v, 400, "the body is not valid JSON");
	if (json_skip_ws(tail, end) != end) {
		cJSON_Delete(arr);
		return refuse(v, 400, "the body has text after the JSON array");
	}
	if (!cJSON_IsArray(arr)) {
		cJSON_Delete(arr);
		return refuse(v, 400, "a batch is a JSON array of events");
	}
	if (cJSON_GetArraySize(arr) > ig->cfg->ingress.max_batch_events) {
		int size = cJSON_GetArraySize(arr);

		cJSON_Delete(arr);
		return refuse(v, 413, "the batch has %d events, "
		    "ingress.max_batch_events is %d", size,
		    ig->cfg->ingress.max_batch_events);
	}
	cJSON_Delete(arr);

	/* The elements' own text: data is kept as written. */
	p = json_skip_ws(body, end) + 1;
	for (;;) {
		p = json_skip_ws(p, end);
		if (p >= end || *p == ']')
			break;
		if ((next = json_skip_value(p, end)) == NULL)
			goto odd;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			fls = xreallocarray(fls, cap, sizeof(*fls));
		}
		memset(&fls[n], 0, sizeof(fls[n]));
		snprintf(prefix, sizeof(prefix), "event[%zu]: ", n);
		if (flatten_structured(ig, p, (size_t)(next - p), prefix,
		    &fls[n++], v) == -1)
			goto fail;
		p = json_skip_ws(next, end);
		if (p < end && *p == ',')
			p++;
	}
	*out = fls;
	*nout = n;
	return 0;
odd:
	refuse(v, 400, "the batch is not valid JSON");
fail:
	for (size_t i = 0; i < n; i++)
		flat_free(&fls[i]);
	free(fls);
	return -1;
}

/* ---- one request -------------------------------------------------------- */

/* A JSON answer, one line; o is consumed. */
static void
answer_json(struct httpd_response *res, cJSON *o)
{
	char *text;

	if ((text = cJSON_PrintUnformatted(o)) == NULL)
		fatalx("ingress: out of memory");
	buf_puts(&res->body, text);
	buf_putc(&res->body, '\n');
	free(text);
	cJSON_Delete(o);
}

static void
answer_error(struct httpd_response *res, const char *detail)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "error", detail);
	answer_json(res, o);
}

static void
answer_accepted(struct httpd_response *res, char (*ids)[48], size_t n)
{
	cJSON *o = cJSON_CreateObject(), *a;

	cJSON_AddNumberToObject(o, "accepted", (double)n);
	a = cJSON_AddArrayToObject(o, "ids");
	for (size_t i = 0; i < n; i++)
		cJSON_AddItemToArray(a, cJSON_CreateString(ids[i]));
	answer_json(res, o);
}

static const char *
field_of(const struct flat *fl, const char *name)
{
	for (size_t i = 0; i < fl->n; i++)
		if (strcmp(fl->f[i].name, name) == 0)
			return fl->f[i].value;
	return NULL;
}

/* Appends the events; 202, or 503 when Redis cannot take them now. */
static int
append(struct ingress *ig, const struct flat *fls, size_t n,
    enum ingress_mode mode, const char *client, struct httpd_response *res)
{
	struct stream_new_entry *entries;
	char (*ids)[48];
	int rv;

	/*
	 * Down, and tried less than RECONNECT_MS ago: answer at once. A
	 * queue of requests must not each wait out a connect timeout.
	 */
	if (n > 0 && !stream_connected(ig->stream) &&
	    now_mono_ms() < ig->next_connect_ms) {
		answer_error(res, "the stream is unreachable; retry later");
		res->retry_after = RETRY_AFTER_S;
		return 503;
	}
	if (n > 0 && !stream_connected(ig->stream))
		ig->next_connect_ms = now_mono_ms() + RECONNECT_MS;
	entries = xcalloc(n ? n : 1, sizeof(*entries));
	ids = xcalloc(n ? n : 1, sizeof(*ids));
	for (size_t i = 0; i < n; i++) {
		entries[i].fields = fls[i].f;
		entries[i].nfields = fls[i].n;
	}
	rv = stream_append(ig->stream, entries, n,
	    ig->cfg->ingress.stream_maxlen, ids);
	free(entries);
	if (rv != 0) {
		ig->metrics->redis_up = rv != STREAM_ERR;
		log_event(LOG_WARN, "ingress_unavailable", "mode",
		    mode_names[mode], "client", client, "detail",
		    rv == STREAM_ERR ? "Redis is unreachable" :
		    "Redis refused the append", (const char *)NULL);
		answer_error(res, rv == STREAM_ERR ? "the stream is "
		    "unreachable; retry later" : "the stream refused the "
		    "events; retry later");
		res->retry_after = RETRY_AFTER_S;
		free(ids);
		return 503;
	}
	ig->metrics->redis_up = 1;
	log_hold();
	for (size_t i = 0; i < n; i++)
		log_event(LOG_INFO, "event_ingested", "event_id",
		    field_of(&fls[i], "id"), "type", field_of(&fls[i], "type"),
		    "stream_id", ids[i], "mode", mode_names[mode], "client",
		    client, (const char *)NULL);
	log_release();
	answer_accepted(res, ids, n);
	free(ids);
	return 202;
}

static int
has_ce_specversion(void *arg, const char *name, const char *value)
{
	(void)value;
	if (strcasecmp(name, "ce-specversion") == 0) {
		*(bool *)arg = true;
		return -1;
	}
	return 0;
}

static int
handle(void *arg, const struct httpd_request *req, struct httpd_response *res)
{
	struct ingress *ig = arg;
	const struct config *cfg = ig->cfg;
	const char *client = httpd_client(req), *body;
	enum ingress_mode mode = INGRESS_UNSUPPORTED;
	struct flat one, *fls = NULL;
	struct verdict v;
	size_t len, n = 0;
	bool binary = false;
	char code[8];
	int status;

	/* Requests served in one pass of the loop beat one by one. */
	ig->shm->heartbeat_ms = now_mono_ms();
	memset(&one, 0, sizeof(one));
	memset(&v, 0, sizeof(v));
	body = httpd_body(req, &len);
	if (strcmp(httpd_path(req), cfg->ingress.path) != 0) {
		refuse(&v, 404, "no events are taken here: POST them to %s",
		    cfg->ingress.path);
		goto refused;
	}
	if (strcmp(httpd_method(req), "POST") != 0) {
		char shown[32];

		refuse(&v, 405, "method %s not allowed: POST events here",
		    printable(httpd_method(req), shown, sizeof(shown)));
		res->allow = "POST";
		goto refused;
	}
	if (httpd_body_too_large(req) != 0) {
		refuse(&v, 413, "the body is over ingress.max_body_bytes (%zu)",
		    httpd_body_too_large(req));
		goto refused;
	}
	/* Before anything of the body is read for its meaning. */
	if (cfg->ingress.secret != NULL &&
	    !ingress_signature_ok(cfg->ingress.secret, body, len,
	    httpd_header(req, SIGNATURE_HEADER))) {
		refuse(&v, 401, httpd_header(req, SIGNATURE_HEADER) == NULL ?
		    "no " SIGNATURE_HEADER " header (sha256=<hex HMAC of the "
		    "body>)" : SIGNATURE_HEADER " does not match the body");
		goto refused;
	}
	httpd_headers(req, has_ce_specversion, &binary);
	mode = ingress_mode_of(httpd_header(req, "Content-Type"), binary);
	/*
	 * The signature covers the body; binary mode's attributes are
	 * headers, which it does not cover: a captured signature would let
	 * anyone send any event type and id. Signed senders use the modes
	 * whose body is the whole event.
	 */
	if (mode == INGRESS_BINARY && cfg->ingress.secret != NULL) {
		refuse(&v, 401, "binary mode's ce-* headers are not covered by "
		    SIGNATURE_HEADER "; with a secret, post structured or batch "
		    "mode (application/cloudevents+json)");
		goto refused;
	}
	switch (mode) {
	case INGRESS_BINARY:
		if (flatten_binary(ig, req, &one, &v) == -1)
			goto refused;
		fls = &one;
		n = 1;
		break;
	case INGRESS_STRUCTURED:
		if (flatten_structured(ig, body, len, "", &one, &v) == -1)
			goto refused;
		fls = &one;
		n = 1;
		break;
	case INGRESS_BATCH:
		if (flatten_batch(ig, body, len, &fls, &n, &v) == -1)
			goto refused;
		break;
	case INGRESS_UNSUPPORTED:
		refuse(&v, 415, "expected ce-* headers (binary mode), "
		    "application/cloudevents+json or "
		    "application/cloudevents-batch+json");
		goto refused;
	}
	status = append(ig, fls, n, mode, client, res);
	for (size_t i = 0; i < n; i++)
		flat_free(&fls[i]);
	if (fls != &one)
		free(fls);
	metrics_ingress_request(ig->metrics, status, status == 202 ? n : 0);
	return status;

refused:
	flat_free(&one);
	snprintf(code, sizeof(code), "%d", v.status);
	log_event(LOG_WARN, "ingress_refused", "status", code, "mode", mode_names[mode], "client", client, "detail", v.detail,
	    (const char *)NULL);
	answer_error(res, v.detail);
	metrics_ingress_request(ig->metrics, v.status, 0);
	return v.status;
}

/* ---- the process -------------------------------------------------------- */

static void
keep_connected(struct ingress *ig)
{
	long long now = now_mono_ms();

	if (stream_connected(ig->stream) || now < ig->next_connect_ms)
		return;
	ig->next_connect_ms = now + RECONNECT_MS;
	ig->metrics->redis_up = stream_connect(ig->stream) == 0;
}

int
ingress_run(const struct config *cfg, const struct ingress_opts *o)
{
	struct ingress ig;
	struct httpd *h;
	char err[256];

	memset(&ig, 0, sizeof(ig));
	ig.cfg = cfg;
	ig.metrics = o->metrics;
	ig.shm = o->shm;
	ig.lim.max_bytes = cfg->max_event_bytes;
	ig.lim.max_fields = cfg->max_entry_fields;
	ig.lim.max_depth = cfg->max_json_depth;
	ig.stream = stream_new(cfg, "ingress");
	stream_set_timeout(ig.stream, cfg->ingress.redis_timeout_ms);

	h = httpd_start_post(o->listen_fd, handle, &ig,
	    cfg->ingress.max_body_bytes, cfg->ingress.max_connections, err,
	    sizeof(err));
	if (h == NULL) {
		log_event(LOG_ERROR, "ingress_failed", "listen", o->listen, "detail", err, (const char *)NULL);
		stream_free(ig.stream);
		return 1;
	}
	log_event(LOG_INFO, "ingress_listening", "listen", o->listen,
	    "path", cfg->ingress.path, "stream", cfg->source_stream,
	    "signature", cfg->ingress.secret != NULL ? "required" : "off",
	    (const char *)NULL);
	keep_connected(&ig);
	while (!*o->stop) {
		o->shm->heartbeat_ms = now_mono_ms();
		if (*o->reopen) {
			*o->reopen = 0;
			if (log_reopen() == -1)
				log_warn("ingress: cannot reopen the log file");
		}
		keep_connected(&ig);
		o->shm->connected = 1;
		httpd_wait(h, NAP_MS);
	}
	/* What was sent before the stop is answered, not cut off. */
	httpd_drain(h, DRAIN_MS);
	httpd_stop(h);
	stream_free(ig.stream);
	log_event(LOG_INFO, "ingress_stopped", (const char *)NULL);
	return 0;
}
