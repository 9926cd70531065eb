/*
 * trigger.c: a batch's requests made concurrently with libcurl multi.
 *
 * One multi handle per worker keeps connections alive between batches; the
 * easy handles are pooled too, so a steady stream of batches allocates
 * little. Responses are read up to a cap: the API's answer is small, and
 * a runaway body must not grow a worker.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "cloudevent.h"
#include "ledger.h"
#include "log.h"
#include "trigger.h"
#include "util.h"


struct transfer {
	CURL		*easy;
	struct buf	 body;
	long		 retry_after_s;
	size_t		 max_body;	/* nlp_api.max_response_bytes */
	char		 why[CURL_ERROR_SIZE]; /* libcurl's own words */
	bool		 truncated;	/* went over it: transfer abandoned */
	bool		 done;
	size_t		 req;		/* the request it carries */
	struct curl_slist *headers;
	long long	 started_ms;
};

struct trigger {
	const struct config	*cfg;
	CURLM			*multi;
	struct transfer		*pool;
	size_t			 npool;
	void			(*tick)(void *);
	void			*tick_arg;
	char			**headers;	/* nlp_api.headers, "Name: value" */
	size_t			 nheaders;
};

static int curl_initialised;

const char *
trigger_outcome_name(enum trigger_outcome o)
{
	switch (o) {
	case TRIGGER_SUCCESS:
		return "success";
	case TRIGGER_TRANSIENT:
		return "transient";
	default:
		return "permanent";
	}
}

struct trigger *
trigger_new(const struct config *cfg)
{
	struct trigger *t = xcalloc(1, sizeof(*t));

	if (!curl_initialised) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			fatalx("trigger: curl_global_init failed");
		curl_initialised = 1;
	}
	t->cfg = cfg;
	if ((t->multi = curl_multi_init()) == NULL)
		fatalx("trigger: curl_multi_init failed");
	t->nheaders = cfg->nlp_api.nheaders;
	t->headers = xcalloc(t->nheaders + 1, sizeof(*t->headers));
	for (size_t i = 0; i < t->nheaders; i++)
		t->headers[i] = xasprintf("%s: %s", cfg->nlp_api.headers[i].name,
		    cfg->nlp_api.headers[i].value);
	return t;
}

void
trigger_on_tick(struct trigger *t, void (*fn)(void *), void *arg)
{
	t->tick = fn;
	t->tick_arg = arg;
}

void
trigger_free(struct trigger *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->npool; i++) {
		curl_easy_cleanup(t->pool[i].easy);
		buf_free(&t->pool[i].body);
	}
	free(t->pool);
	for (size_t i = 0; i < t->nheaders; i++) {
		/* They hold secrets (Authorization). */
		explicit_bzero(t->headers[i], strlen(t->headers[i]));
		free(t->headers[i]);
	}
	free(t->headers);
	curl_multi_cleanup(t->multi);
	free(t);
}

void
trigger_result_clear(struct trigger_result *r)
{
	free(r->remote_job_id);
	free(r->error);
	memset(r, 0, sizeof(*r));
	r->retry_after_s = -1;
}

static size_t
on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct transfer *x = arg;
	size_t n = size * nmemb;

	if (x->body.len + n > x->max_body) {
		x->truncated = true;
		return 0;	/* abandons the transfer (CURLE_WRITE_ERROR) */
	}
	buf_append(&x->body, ptr, n);
	return n;
}

static size_t
on_header(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct transfer *x = arg;
	size_t n = size * nmemb;

	/* Retry-After: delay-seconds. (An HTTP-date is rare from APIs.) */
	if (n > 12 && strncasecmp(ptr, "Retry-After:", 12) == 0) {
		const char *p = ptr + 12;

		while (p < ptr + n && isspace((unsigned char)*p))
			p++;
		if (p < ptr + n && isdigit((unsigned char)*p))
			x->retry_after_s = strtol(p, NULL, 10);
	}
	return n;
}

/* Short, loggable excerpt of a response body. Caller frees. */
static char *
excerpt(const char *body, size_t len)
{
	struct buf b;
	size_t i;

	buf_init(&b);
	for (i = 0; i < len && i < 200; i++) {
		unsigned char c = (unsigned char)body[i];

		buf_putc(&b, (c < 0x20 || c == 0x7f) ? ' ' : (char)c);
	}
	if (len > 200)
		buf_puts(&b, "...");
	return buf_steal(&b);
}

static bool
transient_status(long status)
{
	return status == 408 || status == 425 || status == 429 ||
	    (status >= 500 && status <= 599);
}

void
trigger_classify(long status, const char *body, size_t bodylen,
    const char *success_field, const char *job_id_field,
    struct trigger_result *out)
{
	cJSON *json = NULL;
	const cJSON *v;
	char *ex;

	out->http_status = status;
	if (body != NULL && bodylen > 0)
		json = cJSON_ParseWithLength(body, bodylen);

	if (status == 409) {
		/* The API already has it: as good as accepted. */
		out->outcome = TRIGGER_SUCCESS;
	} else if (status >= 200 && status <= 299) {
		out->outcome = TRIGGER_SUCCESS;
		/*
		 * The deployed Stage 2 answers 200 with success:false on
		 * failure. A body without the field (or not JSON, e.g. an
		 * empty 202) is taken as success: only an explicit false, or
		 * a non-boolean value, fails.
		 */
		if (success_field != NULL && cJSON_IsObject(json) &&
		    (v = cJSON_GetObjectItemCaseSensitive(json,
		    success_field)) != NULL && !cJSON_IsTrue(v)) {
			const cJSON *e = cJSON_GetObjectItemCaseSensitive(json,
			    "error");

			out->outcome = TRIGGER_PERMANENT;
			if (cJSON_IsString(e))
				out->error = xasprintf("HTTP %ld with %s: %s: %s",
				    status, success_field,
				    cJSON_IsFalse(v) ? "false" : "not true",
				    e->valuestring);
			else {
				ex = excerpt(body, bodylen);
				out->error = xasprintf("HTTP %ld with %s not "
				    "true: %s", status, success_field, ex);
				free(ex);
			}
		}
	} else {
		out->outcome = transient_status(status) ? TRIGGER_TRANSIENT :
		    TRIGGER_PERMANENT;
		ex = excerpt(body ? body : "", body ? bodylen : 0);
		out->error = xasprintf("HTTP %ld%s%s", status,
		    *ex ? ": " : "", ex);
		free(ex);
	}

	if (job_id_field != NULL && cJSON_IsObject(json) &&
	    (v = cJSON_GetObjectItemCaseSensitive(json, job_id_field)) != NULL) {
		if (cJSON_IsString(v) && *v->valuestring != '\0')
			out->remote_job_id = xstrdup(v->valuestring);
		else if (cJSON_IsNumber(v))
			out->remote_job_id = xasprintf("%.0f", v->valuedouble);
		/*
		 * The ledger indexes it and PostgreSQL takes only UTF-8: one
		 * it could not keep is said, not recorded.
		 */
		if (out->remote_job_id != NULL &&
		    (strlen(out->remote_job_id) > LEDGER_KEY_MAX ||
		    str_has_control(out->remote_job_id) ||
		    !cloudevent_utf8_valid(out->remote_job_id,
		    strlen(out->remote_job_id)))) {
			log_warnx("trigger: the answer's %s (%zu bytes) is too "
			    "long for the ledger (%d), or not UTF-8 text; not "
			    "recorded", job_id_field,
			    strlen(out->remote_job_id), LEDGER_KEY_MAX);
			free(out->remote_job_id);
			out->remote_job_id = NULL;
		}
	}
	cJSON_Delete(json);
}

/*
 * A response body over nlp_api.max_response_bytes. An error status stays
 * what it is (a 503's long error page is still a 503); an answer of
 * success whose body cannot be read in full may hide success:false, so
 * it is not taken as success: it fails for good, the limit named.
 */
static void
too_long(const struct trigger *t, long status, struct trigger_result *out)
{
	out->http_status = status;
	if (status < 200 || (status >= 300 && status != 409)) {
		out->outcome = status >= 300 && !transient_status(status) ?
		    TRIGGER_PERMANENT : TRIGGER_TRANSIENT;
		out->error = xasprintf("HTTP %ld with a response body over "
		    "nlp_api.max_response_bytes (%zu)", status,
		    t->cfg->nlp_api.max_response_bytes);
		return;
	}
	out->outcome = status == 409 ? TRIGGER_SUCCESS : TRIGGER_PERMANENT;
	if (status != 409)
		out->error = xasprintf("HTTP %ld with a response body over "
		    "nlp_api.max_response_bytes (%zu): the answer could not be "
		    "read", status, t->cfg->nlp_api.max_response_bytes);
}

/* What every request of this handle shares: set once, not per request. */
static void
handle_init(struct trigger *t, CURL *e)
{
	const struct config *cfg = t->cfg;

	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)cfg->nlp_api.timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)cfg->nlp_api.connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "stagerelay/" PACKAGE_VERSION);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, cfg->nlp_api.verify_tls ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, cfg->nlp_api.verify_tls ? 2L : 0L);
	if (cfg->nlp_api.ca_file != NULL && *cfg->nlp_api.ca_file != '\0')
		curl_easy_setopt(e, CURLOPT_CAINFO, cfg->nlp_api.ca_file);
}

static void
pool_grow(struct trigger *t, size_t n)
{
	if (n <= t->npool)
		return;
	t->pool = xreallocarray(t->pool, n, sizeof(*t->pool));
	for (size_t i = t->npool; i < n; i++) {
		memset(&t->pool[i], 0, sizeof(t->pool[i]));
		if ((t->pool[i].easy = curl_easy_init()) == NULL)
			fatalx("trigger: curl_easy_init failed");
		buf_init(&t->pool[i].body);
		handle_init(t, t->pool[i].easy);
	}
	/* The array may have moved: every handle learns its slot again. */
	for (size_t i = 0; i < n; i++) {
		struct transfer *x = &t->pool[i];

		curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
		x->max_body = t->cfg->nlp_api.max_response_bytes;
		curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
		curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
		curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->why);
	}
	t->npool = n;
}

static void
transfer_setup(struct trigger *t, struct transfer *x, const struct request *rq)
{
	CURL *e = x->easy;
	char *h;

	buf_reset(&x->body);
	x->why[0] = '\0';
	x->retry_after_s = -1;
	x->truncated = false;
	x->headers = NULL;

	h = xasprintf("Content-Type: %s", rq->content_type ?
	    rq->content_type : "application/json");
	x->headers = curl_slist_append(x->headers, h);
	free(h);
	h = xasprintf("Idempotency-Key: %s", rq->idempotency_key);
	x->headers = curl_slist_append(x->headers, h);
	free(h);
	for (size_t i = 0; i < rq->nheaders; i++)
		x->headers = curl_slist_append(x->headers, rq->headers[i]);
	for (size_t i = 0; i < t->nheaders; i++)
		x->headers = curl_slist_append(x->headers, t->headers[i]);
	/* Suppress "Expect: 100-continue": one round trip, not two. */
	x->headers = curl_slist_append(x->headers, "Expect:");

	/* The handle keeps the last request's options: set all that vary. */
	curl_easy_setopt(e, CURLOPT_URL, rq->url);
	if (strcmp(rq->method, "GET") != 0 && strcmp(rq->method, "DELETE") != 0) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)rq->bodylen);
	} else
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
}

/* Request i goes out on pool slot x. */
static void
start(struct trigger *t, struct transfer *x, const struct request *reqs,
    size_t i, struct trigger_result *results)
{
	memset(&results[i], 0, sizeof(results[i]));
	results[i].retry_after_s = -1;
	/* Until a transfer completes, it has not succeeded. */
	results[i].outcome = TRIGGER_TRANSIENT;
	x->req = i;
	x->done = false;
	transfer_setup(t, x, &reqs[i]);
	x->started_ms = now_mono_ms();
	curl_multi_add_handle(t->multi, x->easy);
}

/* Slot x is finished with: free what its request needed. */
static void
finish(struct trigger *t, struct transfer *x)
{
	curl_multi_remove_handle(t->multi, x->easy);
	curl_slist_free_all(x->headers);
	x->headers = NULL;
	/* Drop large response buffers; keep small ones for reuse. */
	if (x->body.cap > 65536)
		buf_free(&x->body);
}

/*
 * At most max_in_flight requests are out at once (a sliding window, not
 * waves: a slow answer holds up one slot, not the next group); each slot
 * keeps its easy handle, and the multi handle its connections.
 */
void
trigger_run(struct trigger *t, const struct request *reqs, size_t n,
    struct trigger_result *results)
{
	size_t window = (size_t)t->cfg->nlp_api.max_in_flight, next = 0;
	int running = 0, msgs;
	CURLMsg *m;

	if (n == 0)
		return;
	if (window == 0 || window > n)
		window = n;
	pool_grow(t, window);
	for (; next < window; next++)
		start(t, &t->pool[next], reqs, next, results);

	do {
		CURLMcode mc = curl_multi_perform(t->multi, &running);

		if (mc != CURLM_OK) {
			log_warnx("trigger: curl_multi_perform: %s",
			    curl_multi_strerror(mc));
			break;
		}
		while ((m = curl_multi_info_read(t->multi, &msgs)) != NULL) {
			struct transfer *x;
			size_t i;
			long status = 0;

			if (m->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE,
			    (char **)&x);
			i = x->req;
			x->done = true;
			results[i].latency_ms = (double)(now_mono_ms() -
			    x->started_ms);
			results[i].retry_after_s = x->retry_after_s;
			if (x->truncated) {
				curl_easy_getinfo(m->easy_handle,
				    CURLINFO_RESPONSE_CODE, &status);
				too_long(t, status, &results[i]);
			} else if (m->data.result != CURLE_OK) {
				/* Timeouts and connection errors: transient. */
				results[i].outcome = TRIGGER_TRANSIENT;
				/*
				 * The error buffer says which: "unable to get
				 * local issuer certificate", not just "not OK".
				 */
				results[i].error = xasprintf("%s%s%s",
				    curl_easy_strerror(m->data.result),
				    x->why[0] != '\0' ? ": " : "", x->why);
			} else {
				curl_easy_getinfo(m->easy_handle,
				    CURLINFO_RESPONSE_CODE, &status);
				trigger_classify(status, x->body.data,
				    x->body.len, reqs[i].route ?
				    reqs[i].route->success_field : NULL,
				    reqs[i].route ?
				    reqs[i].route->job_id_field : NULL,
				    &results[i]);
				results[i].retry_after_s = x->retry_after_s;
			}
			/* m is invalid once its handle is removed. */
			finish(t, x);
			if (t->tick != NULL)
				t->tick(t->tick_arg);
			if (next < n) {
				start(t, x, reqs, next++, results);
				running++;
			}
		}
		if (running > 0)
			curl_multi_poll(t->multi, NULL, 0, 1000, NULL);
	} while (running > 0);

	/* Only after an error: what is still out did not complete. */
	for (size_t k = 0; k < window; k++) {
		struct transfer *x = &t->pool[k];

		if (x->done)
			continue;
		results[x->req].error = xstrdup("transfer did not complete");
		finish(t, x);
		x->done = true;
	}
	for (; next < n; next++) {
		memset(&results[next], 0, sizeof(results[next]));
		results[next].retry_after_s = -1;
		results[next].outcome = TRIGGER_TRANSIENT;
		results[next].error = xstrdup("transfer did not start");
	}
}
