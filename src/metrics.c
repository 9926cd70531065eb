/*
 * metrics.c: shared-memory counters and their Prometheus text exposition
 * (format 0.0.4, DESIGN.md §7).
 *
 * Workers count into their own slot with plain stores: one writer per
 * slot, and a reader that sees a counter a moment late is harmless. The
 * master sums the slots when it renders; it allocates nothing but the
 * output buffer.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "util.h"

const double metrics_bucket_bounds[METRICS_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30
};

/* HTTP codes kept apart when summing slots: 0 (none), 1..999, other. */
#define CODE_SPAN	1001
#define CODE_OTHER_IX	(CODE_SPAN - 1)

static const char *const outcome_names[MO_COUNT] = {
	[MO_TRIGGERED] = "triggered",
	[MO_DUPLICATE] = "duplicate",
	[MO_FILTERED] = "filtered",
	[MO_INVALID] = "invalid",
	[MO_DEAD] = "dead",
	[MO_OBSERVED] = "observed",
	[MO_EXPIRED] = "expired",
	[MO_LOST] = "lost",
};

static const char *const reason_names[MR_COUNT] = {
	[MR_INVALID_EVENT] = "invalid_event",
	[MR_RENDER_ERROR] = "render_error",
	[MR_HTTP_ERROR] = "http_error",
	[MR_REJECTED] = "rejected",
	[MR_RETRIES_EXHAUSTED] = "retries_exhausted",
	[MR_POISON] = "poison",
	[MR_LOST] = "lost",
	[MR_DOCUMENTS_FILE] = "documents_file",
	[MR_DOCUMENTS_QUERY] = "documents_query",
	[MR_LEDGER_REFUSED] = "ledger_refused",
	[MR_OTHER] = "other",
};

/* ---- label tables ---------------------------------------------------- */

/* Names are kept truncated, so compare only what a table can hold. */
static size_t
table_index(const char (*names)[METRICS_NAME_MAX], size_t n, const char *name)
{
	size_t i;

	if (name == NULL)
		return 0;
	for (i = 1; i < n; i++)
		if (strncmp(names[i], name, METRICS_NAME_MAX - 1) == 0)
			return i;
	return 0;
}

static size_t
table_add(char (*names)[METRICS_NAME_MAX], size_t *n, size_t max,
    const char *name)
{
	size_t i;

	if (*n == 0) {
		strlcpy_s(names[0], "other", METRICS_NAME_MAX);
		*n = 1;
	}
	if (name == NULL || *name == '\0' ||
	    strncmp(name, "other", METRICS_NAME_MAX - 1) == 0)
		return 0;
	for (i = 1; i < *n; i++)
		if (strncmp(names[i], name, METRICS_NAME_MAX - 1) == 0)
			return i;
	if (*n >= max)
		return 0;
	strlcpy_s(names[*n], name, METRICS_NAME_MAX);
	return (*n)++;
}

size_t
metrics_type_index(const struct metrics_shm *shm, const char *type)
{
	size_t n = shm->ntypes < METRICS_TYPES ? shm->ntypes : METRICS_TYPES;

	return table_index(shm->types, n, type);
}

size_t
metrics_route_index(const struct metrics_shm *shm, const char *route)
{
	size_t n = shm->nroutes < METRICS_ROUTES ?
	    shm->nroutes : METRICS_ROUTES;

	return table_index(shm->routes, n, route);
}

size_t
metrics_add_type(struct metrics_shm *shm, const char *type)
{
	return table_add(shm->types, &shm->ntypes, METRICS_TYPES, type);
}

size_t
metrics_add_route(struct metrics_shm *shm, const char *route)
{
	return table_add(shm->routes, &shm->nroutes, METRICS_ROUTES, route);
}

/* ---- counting ---------------------------------------------------------- */

void
metrics_event(struct metrics_slot *s, enum metrics_outcome o, size_t type)
{
	if ((unsigned)o >= MO_COUNT)
		return;
	if (type >= METRICS_TYPES)
		type = 0;
	s->events[o][type]++;
}

/*
 * Each route keeps METRICS_CODES - 1 codes in first-seen order; an entry
 * is taken once its n is non-zero, and the last entry counts the rest as
 * code -1. The code is stored before n so the master never sees a counted
 * entry without its code.
 */
void
metrics_request(struct metrics_slot *s, size_t route, long http_status)
{
	struct metrics_code *c;
	int code;
	size_t i;

	if (route >= METRICS_ROUTES)
		route = 0;
	code = (http_status >= 0 && http_status < CODE_OTHER_IX) ?
	    (int)http_status : -1;
	c = s->requests[route];
	if (code != -1) {
		for (i = 0; i < METRICS_CODES - 1; i++) {
			if (c[i].n == 0) {
				c[i].code = code;
				__atomic_store_n(&c[i].n, 1, __ATOMIC_RELEASE);
				return;
			}
			if (c[i].code == code) {
				c[i].n++;
				return;
			}
		}
	}
	c[METRICS_CODES - 1].code = -1;
	__atomic_store_n(&c[METRICS_CODES - 1].n,
	    c[METRICS_CODES - 1].n + 1, __ATOMIC_RELEASE);
}

/* NaN and negative durations (a clock step) count as 0. */
void
metrics_observe(struct metrics_histogram *h, double seconds)
{
	size_t i;

	if (isnan(seconds) || seconds < 0)
		seconds = 0;
	for (i = 0; i < METRICS_BUCKETS; i++)
		if (seconds <= metrics_bucket_bounds[i])
			break;
	h->bucket[i]++;
	h->count++;
	/* An infinite value is counted but would poison the sum for good. */
	if (isfinite(seconds))
		h->sum += seconds;
}

void
metrics_dead_letter(struct metrics_slot *s, const char *dlq_reason)
{
	s->dead_letters[metrics_reason_of(dlq_reason)]++;
}

enum metrics_reason
metrics_reason_of(const char *r)
{
	static const struct {
		const char		*name;
		enum metrics_reason	 reason;
	} map[] = {
		{ "too_large",		MR_INVALID_EVENT },
		{ "render_error",	MR_RENDER_ERROR },
		{ "http_error",		MR_HTTP_ERROR },
		{ "rejected",		MR_REJECTED },
		{ "retries_exhausted",	MR_RETRIES_EXHAUSTED },
		{ "poison",		MR_POISON },
		{ "lost",		MR_LOST },
		{ "documents_file",	MR_DOCUMENTS_FILE },
		{ "documents_query",	MR_DOCUMENTS_QUERY },
		{ "ledger_refused",	MR_LEDGER_REFUSED },
	};
	size_t i;

	if (r == NULL)
		return MR_OTHER;
	if (strncmp(r, "invalid", strlen("invalid")) == 0)
		return MR_INVALID_EVENT;
	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(r, map[i].name) == 0)
			return map[i].reason;
	return MR_OTHER;
}

const char *
metrics_reason_name(enum metrics_reason r)
{
	return (unsigned)r < MR_COUNT ? reason_names[r] : "other";
}

const char *
metrics_outcome_name(enum metrics_outcome o)
{
	return (unsigned)o < MO_COUNT ? outcome_names[o] : "unknown";
}

/* ---- rendering --------------------------------------------------------- */

void
metrics_label_escape(struct buf *b, const char *s)
{
	const char *p;

	if (s == NULL)
		return;
	for (p = s; *p != '\0'; p++) {
		switch (*p) {
		case '\\':
			buf_puts(b, "\\\\");
			break;
		case '"':
			buf_puts(b, "\\\"");
			break;
		case '\n':
			buf_puts(b, "\\n");
			break;
		default:
			buf_putc(b, *p);
			break;
		}
	}
}

/*
 * The shortest %g form that reads back as the same double, without an
 * exponent for whole parts below 1e17: "10" and "1767630431.268", not
 * "1e+01" and "1.767630431268e+09".
 */
static void
put_double(struct buf *b, double v)
{
	char s[400];
	int prec, whole;

	if (isnan(v)) {
		buf_puts(b, "NaN");
		return;
	}
	if (isinf(v)) {
		buf_puts(b, v > 0 ? "+Inf" : "-Inf");
		return;
	}
	for (prec = 1; prec < 17; prec++) {
		snprintf(s, sizeof(s), "%.*g", prec, v);
		if (strtod(s, NULL) == v)
			break;
	}
	if (fabs(v) >= 1 && fabs(v) < 1e17) {
		whole = snprintf(s, sizeof(s), "%.0f", fabs(v));
		if (prec < whole)
			prec = whole;
	}
	snprintf(s, sizeof(s), "%.*g", prec, v);
	buf_puts(b, s);
}

static void
family(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
sample_u(struct buf *b, const char *name, uint64_t v)
{
	buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void
sample_i(struct buf *b, const char *name, long long v)
{
	buf_printf(b, "%s %lld\n", name, v);
}

/* A table's name for index i, or NULL past its end (counted as "other"). */
static const char *
table_name(const char (*names)[METRICS_NAME_MAX], size_t n, size_t max,
    size_t i)
{
	if (i == 0)
		return "other";
	if (i < n && i < max)
		return names[i];
	return NULL;
}

static void
render_events(const struct metrics_shm *shm, int nslots, struct buf *b)
{
	static const char name[] = "stagerelay_events_total";
	uint64_t sum[METRICS_TYPES];
	const char *tname;
	size_t o, t;
	bool any;
	int k;

	family(b, name, "counter", "Events by outcome and CloudEvent type.");
	for (o = 0; o < MO_COUNT; o++) {
		memset(sum, 0, sizeof(sum));
		for (k = 1; k <= nslots; k++)
			for (t = 0; t < METRICS_TYPES; t++) {
				tname = table_name(shm->types, shm->ntypes,
				    METRICS_TYPES, t);
				sum[tname != NULL ? t : 0] +=
				    shm->slot[k].events[o][t];
			}
		any = false;
		for (t = 0; t < METRICS_TYPES; t++) {
			tname = table_name(shm->types, shm->ntypes,
			    METRICS_TYPES, t);
			if (tname == NULL || sum[t] == 0)
				continue;
			buf_printf(b, "%s{outcome=\"%s\",type=\"", name,
			    outcome_names[o]);
			metrics_label_escape(b, tname);
			buf_printf(b, "\"} %llu\n", (unsigned long long)sum[t]);
			any = true;
		}
		if (!any)
			buf_printf(b, "%s{outcome=\"%s\",type=\"other\"} 0\n",
			    name, outcome_names[o]);
	}
}

/* The route a table index is rendered under: past the table, "other". */
static size_t
route_shown(const struct metrics_shm *shm, size_t ix)
{
	return table_name(shm->routes, shm->nroutes, METRICS_ROUTES, ix) !=
	    NULL ? ix : 0;
}

static void
render_requests(const struct metrics_shm *shm, int nslots, struct buf *b)
{
	static const char name[] = "stagerelay_trigger_requests_total";
	uint64_t sum[CODE_SPAN];	/* by code; the last: other */
	const struct metrics_code *c;
	const char *rname;
	uint64_t n;
	size_t r, ix, i;
	int k;

	family(b, name, "counter",
	    "Trigger requests by route and HTTP status (none: no response).");
	for (r = 0; r < METRICS_ROUTES; r++) {
		rname = table_name(shm->routes, shm->nroutes, METRICS_ROUTES,
		    r);
		if (rname == NULL)
			continue;
		memset(sum, 0, sizeof(sum));
		for (k = 1; k <= nslots; k++)
			for (ix = 0; ix < METRICS_ROUTES; ix++) {
				if (route_shown(shm, ix) != r)
					continue;
				c = shm->slot[k].requests[ix];
				for (i = 0; i < METRICS_CODES; i++) {
					n = __atomic_load_n(&c[i].n,
					    __ATOMIC_ACQUIRE);
					if (n == 0)
						continue;
					sum[c[i].code >= 0 &&
					    c[i].code < CODE_OTHER_IX ?
					    (size_t)c[i].code :
					    CODE_OTHER_IX] += n;
				}
			}
		for (i = 0; i < CODE_SPAN; i++) {
			if (sum[i] == 0)
				continue;
			buf_printf(b, "%s{route=\"", name);
			metrics_label_escape(b, rname);
			if (i == 0)
				buf_puts(b, "\",code=\"none\"} ");
			else if (i == CODE_OTHER_IX)
				buf_puts(b, "\",code=\"other\"} ");
			else
				buf_printf(b, "\",code=\"%zu\"} ", i);
			buf_printf(b, "%llu\n", (unsigned long long)sum[i]);
		}
	}
}

/* The histogram's _count is its buckets' total, so +Inf always equals it. */
static void
render_histogram(const struct metrics_shm *shm, int nslots, struct buf *b,
    const char *name, const char *help, size_t offset)
{
	const struct metrics_histogram *h;
	uint64_t bucket[METRICS_BUCKETS + 1] = { 0 }, cum = 0;
	double sum = 0;
	size_t i;
	int k;

	for (k = 1; k <= nslots; k++) {
		h = (const struct metrics_histogram *)
		    ((const char *)&shm->slot[k] + offset);
		for (i = 0; i <= METRICS_BUCKETS; i++)
			bucket[i] += h->bucket[i];
		sum += h->sum;
	}
	family(b, name, "histogram", help);
	for (i = 0; i <= METRICS_BUCKETS; i++) {
		cum += bucket[i];
		buf_printf(b, "%s_bucket{le=\"", name);
		if (i < METRICS_BUCKETS)
			put_double(b, metrics_bucket_bounds[i]);
		else
			buf_puts(b, "+Inf");
		buf_printf(b, "\"} %llu\n", (unsigned long long)cum);
	}
	buf_printf(b, "%s_sum ", name);
	put_double(b, sum);
	buf_printf(b, "\n%s_count %llu\n", name, (unsigned long long)cum);
}

static void
render_gauge_known(struct buf *b, const char *name, const char *help,
    int64_t v)
{
	family(b, name, "gauge", help);
	if (v >= 0)
		sample_i(b, name, (long long)v);
}

void
metrics_render(const struct metrics_shm *shm, int nslots,
    const char *version, struct buf *b)
{
	uint64_t dead[MR_COUNT] = { 0 }, retries = 0, reclaimed = 0;
	uint64_t redis = 0, pg = 0;
	int64_t last_ms = 0;
	long long alive = 0;
	const struct metrics_slot *s;
	size_t i;
	int k;

	if (nslots < 0)
		nslots = 0;
	if (nslots > METRICS_SLOTS - 1)
		nslots = METRICS_SLOTS - 1;
	for (k = 1; k <= nslots; k++) {
		s = &shm->slot[k];
		for (i = 0; i < MR_COUNT; i++)
			dead[i] += s->dead_letters[i];
		retries += s->retries;
		reclaimed += s->reclaimed;
		redis += s->redis_reconnects;
		pg += s->postgres_reconnects;
		if (s->last_event_ms > last_ms)
			last_ms = s->last_event_ms;
		if (s->alive != 0)
			alive++;
	}

	render_events(shm, nslots, b);
	render_requests(shm, nslots, b);
	render_histogram(shm, nslots, b, "stagerelay_trigger_duration_seconds",
	    "Duration of trigger HTTP requests.",
	    offsetof(struct metrics_slot, trigger_seconds));
	render_histogram(shm, nslots, b, "stagerelay_event_latency_seconds",
	    "Time from the stream entry to its trigger.",
	    offsetof(struct metrics_slot, latency_seconds));

	family(b, "stagerelay_retries_total", "counter",
	    "Transient trigger failures held for a retry.");
	sample_u(b, "stagerelay_retries_total", retries);

	family(b, "stagerelay_dead_letters_total", "counter",
	    "Entries written to the dead-letter stream, by reason.");
	for (i = 0; i < MR_COUNT; i++)
		buf_printf(b, "stagerelay_dead_letters_total{reason=\"%s\"} "
		    "%llu\n", reason_names[i], (unsigned long long)dead[i]);

	family(b, "stagerelay_reclaimed_entries_total", "counter",
	    "Pending entries reclaimed from other consumers.");
	sample_u(b, "stagerelay_reclaimed_entries_total", reclaimed);

	family(b, "stagerelay_reconnects_total", "counter",
	    "Reconnections, by service.");
	buf_printf(b, "stagerelay_reconnects_total{service=\"redis\"} %llu\n",
	    (unsigned long long)redis);
	buf_printf(b, "stagerelay_reconnects_total{service=\"postgresql\"} "
	    "%llu\n", (unsigned long long)pg);

	render_gauge_known(b, "stagerelay_consumer_group_lag",
	    "Entries in the stream not yet delivered to the group.",
	    shm->group.lag);
	render_gauge_known(b, "stagerelay_consumer_group_pending",
	    "Entries delivered to the group and not yet acknowledged.",
	    shm->group.pending);
	render_gauge_known(b, "stagerelay_stream_length",
	    "Entries in the stream.", shm->group.stream_length);
	render_gauge_known(b, "stagerelay_dead_letter_stream_length",
	    "Entries in the dead-letter stream.",
	    shm->group.dead_letter_length);

	family(b, "stagerelay_ingress_requests_total", "counter",
	    "Requests the ingress answered, by HTTP status.");
	for (i = 0; i < METRICS_INGRESS_CODES; i++) {
		if (metrics_ingress_codes[i] > 0)
			buf_printf(b, "stagerelay_ingress_requests_total{code="
			    "\"%d\"} %llu\n", metrics_ingress_codes[i],
			    (unsigned long long)shm->ingress.requests[i]);
		else
			buf_printf(b, "stagerelay_ingress_requests_total{code="
			    "\"other\"} %llu\n",
			    (unsigned long long)shm->ingress.requests[i]);
	}
	family(b, "stagerelay_ingress_events_total", "counter",
	    "Events the ingress appended to the source stream.");
	sample_u(b, "stagerelay_ingress_events_total", shm->ingress.events);
	family(b, "stagerelay_ingress_up", "gauge",
	    "1 while the ingress is enabled and its last append reached "
	    "Redis.");
	sample_i(b, "stagerelay_ingress_up", (long long)(shm->ingress.enabled &&
	    shm->ingress.redis_up));

	family(b, "stagerelay_workers_alive", "gauge",
	    "Worker processes running.");
	sample_i(b, "stagerelay_workers_alive", alive);
	family(b, "stagerelay_workers_wanted", "gauge",
	    "Worker processes configured.");
	sample_i(b, "stagerelay_workers_wanted", (long long)shm->workers_wanted);
	family(b, "stagerelay_worker_restarts_total", "counter",
	    "Worker processes restarted by the master.");
	sample_u(b, "stagerelay_worker_restarts_total", shm->worker_restarts);

	family(b, "stagerelay_circuit_state", "gauge",
	    "Trigger circuit breaker per running worker: 0 closed, 1 open, "
	    "2 half-open.");
	for (k = 1; k <= nslots; k++)
		if (shm->slot[k].alive)
			buf_printf(b, "stagerelay_circuit_state{worker=\"%d\"} "
			    "%d\n", k, (int)shm->slot[k].circuit);

	family(b, "stagerelay_last_event_timestamp_seconds", "gauge",
	    "Unix time of the last event a worker handled.");
	if (last_ms > 0) {
		buf_puts(b, "stagerelay_last_event_timestamp_seconds ");
		put_double(b, (double)last_ms / 1000.0);
		buf_putc(b, '\n');
	}

	family(b, "stagerelay_build_info", "gauge",
	    "Build information; the value is always 1.");
	buf_puts(b, "stagerelay_build_info{version=\"");
	metrics_label_escape(b, version != NULL ? version : "unknown");
	buf_puts(b, "\"} 1\n");
}

const int metrics_ingress_codes[METRICS_INGRESS_CODES] = {
	202, 400, 401, 404, 405, 413, 415, 500, 503, -1
};

void
metrics_ingress_request(struct metrics_ingress *mi, int status,
    size_t events)
{
	size_t i;

	for (i = 0; i + 1 < METRICS_INGRESS_CODES; i++)
		if (metrics_ingress_codes[i] == status)
			break;
	mi->requests[i]++;
	mi->events += events;
}
