/*
 * worker.c: the consumer loop of DESIGN.md §3.
 *
 * A round: read entries (own pending list first, then new ones), decode,
 * filter, route, claim in the ledger, trigger concurrently, record the
 * outcomes in the ledger, dead-letter what cannot succeed, and acknowledge
 * only what the ledger (or the dead-letter stream) now accounts for.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "cloudevent.h"
#include "ledger.h"
#include "log.h"
#include "route.h"
#include "stream.h"
#include "trigger.h"
#include "util.h"
#include "worker.h"

/* What becomes of an entry at the end of its round. */
enum fate {
	FATE_ACK = 0,		/* accounted for: XACK */
	FATE_DEAD,		/* dead-letter, then XACK */
	FATE_PENDING,		/* leave pending: retried later */
	FATE_NOTE,		/* record observed, then XACK */
	FATE_CLAIM		/* claim in the ledger, then trigger */
};

struct item {
	const struct stream_entry *entry;
	struct cloudevent	 ev;
	bool			 decoded;
	struct request		 req;
	bool			 rendered;
	struct ledger_doc	 doc;
	char			 event_time[64];
	struct trigger_result	 res;
	bool			 triggered;	/* a request was made */
	enum fate		 fate;
	const char		*outcome;	/* log msg: event_triggered, ... */
	const char		*reason;	/* dlq_reason or filter reason */
	char			 detail[512];
};

struct worker {
	const struct config		*cfg;
	const struct worker_opts	*opts;
	char				*consumer;
	struct stream			*stream;
	struct ledger			*ledger;
	struct trigger			*trigger;
	bool				 own_pending;	/* draining own PEL */
	char				*pel_cursor;
	bool				 trouble;	/* back off before the next read */
	int				 backoff_ms;
};

char *
worker_consumer_name(const struct config *cfg, int slot)
{
	return xasprintf("%s-%d", cfg->consumer_name, slot);
}

/* Sleeps up to ms, waking early when told to stop. */
static void
nap(const struct worker *w, int ms)
{
	struct timespec ts = { 0, 50 * 1000000L };

	for (int slept = 0; slept < ms && !*w->opts->stop; slept += 50)
		nanosleep(&ts, NULL);
}

static void
trouble(struct worker *w)
{
	w->trouble = true;
}

/* Capped exponential backoff for Redis/PostgreSQL trouble. */
static void
back_off(struct worker *w)
{
	w->backoff_ms = w->backoff_ms == 0 ? 250 : w->backoff_ms * 2;
	if (w->backoff_ms > 30000)
		w->backoff_ms = 30000;
	nap(w, w->backoff_ms);
}

static void
dead(struct item *it, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
dead(struct item *it, const char *reason, const char *fmt, ...)
{
	va_list ap;

	it->fate = FATE_DEAD;
	it->reason = reason;
	it->outcome = "event_dead_lettered";
	va_start(ap, fmt);
	vsnprintf(it->detail, sizeof(it->detail), fmt, ap);
	va_end(ap);
}

static void
ack(struct item *it, const char *outcome, const char *reason)
{
	it->fate = FATE_ACK;
	it->outcome = outcome;
	it->reason = reason;
}

/* Steps 2-4: decode and validate, filter, route and render. */
static void
prepare(struct worker *w, struct item *it)
{
	const struct config *cfg = w->cfg;
	const struct route *route;
	enum cloudevent_error ce;
	char err[512];

	if (it->entry->nfields == 0) {
		/* Deleted (trimmed) while pending: nothing left to process. */
		ack(it, "entry_lost", "deleted_before_processing");
		return;
	}
	ce = cloudevent_decode(it->entry->fields, it->entry->nfields,
	    cfg->event_field, cfg->max_event_bytes, &it->ev, it->detail,
	    sizeof(it->detail));
	if (ce != CE_OK) {
		it->fate = FATE_DEAD;
		it->reason = cloudevent_error_reason(ce);
		it->outcome = "event_dead_lettered";
		return;
	}
	it->decoded = true;
	if (!config_consumes(cfg, it->ev.type)) {
		ack(it, "event_filtered", "not_in_consume_events");
		return;
	}
	if ((route = config_route_for(cfg, it->ev.type)) == NULL) {
		ack(it, "event_filtered", "no_route");
		return;
	}
	if (route_render(route, cfg, &it->ev, &it->req, err,
	    sizeof(err)) == -1) {
		dead(it, "render_error", "route %s: %s", route->name, err);
		return;
	}
	it->rendered = true;

	it->doc.document_id = it->req.idempotency_key;
	it->doc.event_id = it->ev.id;
	it->doc.event_type = it->ev.type;
	it->doc.event_source = it->ev.source;
	if (it->ev.time_ms >= 0) {
		/* Normalised, so PostgreSQL never rejects a whole batch. */
		format_utc_ms(it->event_time, sizeof(it->event_time),
		    it->ev.time_ms);
		it->doc.event_time = it->event_time;
	}
	it->doc.entry_id = it->entry->id;
	it->doc.batch_id = it->req.batch_id;
	it->doc.job_id = it->req.job_id;
	it->doc.route = route->name;
	it->doc.method = it->req.method;
	it->doc.url = it->req.url;

	if (!cfg->auto_process) {
		it->fate = FATE_NOTE;
		it->doc.status = LEDGER_OBSERVED;
		it->outcome = "event_observed";
		return;
	}
	it->fate = FATE_CLAIM;
}

/* A key twice in one batch: the first occurrence speaks for both. */
static void
dedupe_batch(struct item *items, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (items[i].fate != FATE_CLAIM)
			continue;
		for (size_t j = 0; j < i; j++) {
			if (items[j].fate == FATE_CLAIM &&
			    strcmp(items[j].doc.document_id,
			    items[i].doc.document_id) == 0) {
				ack(&items[i], "event_duplicate", "same_batch");
				break;
			}
		}
	}
}

/* Gathers items of one fate into a contiguous array of ledger docs. */
static size_t
gather(struct item *items, size_t n, enum fate fate, struct ledger_doc *docs,
    size_t *map)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		if (items[i].fate != fate)
			continue;
		docs[k] = items[i].doc;
		map[k++] = i;
	}
	return k;
}

/* Step 5: one round trip claims every key of the batch. */
static void
claim(struct worker *w, struct item *items, size_t n, struct ledger_doc *docs,
    size_t *map)
{
	size_t k = gather(items, n, FATE_CLAIM, docs, map);

	if (k == 0)
		return;
	if (ledger_claim(w->ledger, docs, k, w->cfg->ledger.lease_seconds,
	    w->cfg->deduplication_ttl_hours,
	    w->cfg->check_already_processed) == -1) {
		/* Unaccounted for: stays pending, read again after backoff. */
		for (size_t i = 0; i < k; i++) {
			items[map[i]].fate = FATE_PENDING;
			items[map[i]].outcome = "event_deferred";
			items[map[i]].reason = "ledger_unavailable";
		}
		trouble(w);
		return;
	}
	for (size_t i = 0; i < k; i++) {
		struct item *it = &items[map[i]];

		it->doc.claim = docs[i].claim;
		it->doc.attempts = docs[i].attempts;
		memcpy(it->doc.prev_status, docs[i].prev_status,
		    sizeof(it->doc.prev_status));
		switch (docs[i].claim) {
		case LEDGER_OWNED:
			break;
		case LEDGER_DONE:
			ack(it, "event_duplicate", it->doc.prev_status);
			break;
		case LEDGER_BUSY:
			it->fate = FATE_PENDING;
			it->outcome = "event_busy";
			it->reason = "claimed_by_another_consumer";
			break;
		}
	}
}

/* Steps 6-7: trigger the owned requests concurrently and classify. */
static void
trigger(struct worker *w, struct item *items, size_t n)
{
	struct request *reqs;
	struct trigger_result *res;
	size_t *map, k = 0;

	reqs = xcalloc(n, sizeof(*reqs));
	res = xcalloc(n, sizeof(*res));
	map = xcalloc(n, sizeof(*map));
	for (size_t i = 0; i < n; i++) {
		if (items[i].fate != FATE_CLAIM)
			continue;
		reqs[k] = items[i].req;		/* shallow: trigger only reads */
		map[k++] = i;
	}
	trigger_run(w->trigger, reqs, k, res);
	for (size_t i = 0; i < k; i++) {
		struct item *it = &items[map[i]];

		it->res = res[i];
		it->triggered = true;
		it->doc.requested = true;
		it->doc.http_status = res[i].http_status;
		it->doc.latency_ms = res[i].latency_ms;
		it->doc.remote_job_id = res[i].remote_job_id;
		it->doc.error = res[i].error;
		switch (res[i].outcome) {
		case TRIGGER_SUCCESS:
			it->doc.status = LEDGER_TRIGGERED;
			ack(it, "event_triggered", NULL);
			break;
		case TRIGGER_PERMANENT:
			it->doc.status = LEDGER_DEAD;
			dead(it, res[i].http_status >= 200 &&
			    res[i].http_status <= 299 ? "rejected" :
			    "http_error", "%s", res[i].error ? res[i].error :
			    "permanent failure");
			break;
		case TRIGGER_TRANSIENT:
			if (!w->cfg->retry_failed) {
				it->doc.status = LEDGER_DEAD;
				dead(it, "retries_exhausted",
				    "retry_failed is off: %s", res[i].error ?
				    res[i].error : "transient failure");
				break;
			}
			it->doc.status = LEDGER_FAILED;
			it->fate = FATE_PENDING;
			it->outcome = "event_failed";
			it->reason = "transient";
			break;
		}
	}
	free(reqs);
	free(res);
	free(map);
}

/* Step 8: one round trip records every outcome of the batch. */
static void
record(struct worker *w, struct item *items, size_t n, struct ledger_doc *docs,
    size_t *map)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		if (!items[i].triggered)
			continue;
		docs[k] = items[i].doc;
		map[k++] = i;
	}
	if (k == 0)
		return;
	if (ledger_record(w->ledger, docs, k) == 0)
		return;
	/*
	 * Requests were made but not recorded: acknowledge nothing. The
	 * entries are redelivered and re-triggered with the same
	 * Idempotency-Key (DESIGN.md §3, crash windows).
	 */
	for (size_t i = 0; i < k; i++) {
		items[map[i]].fate = FATE_PENDING;
		items[map[i]].outcome = "event_deferred";
		items[map[i]].reason = "ledger_unavailable";
	}
	trouble(w);
}

static void
note(struct worker *w, struct item *items, size_t n, struct ledger_doc *docs,
    size_t *map)
{
	size_t k = gather(items, n, FATE_NOTE, docs, map);

	if (k == 0)
		return;
	if (ledger_note(w->ledger, docs, k) == 0) {
		for (size_t i = 0; i < k; i++)
			items[map[i]].fate = FATE_ACK;
		return;
	}
	for (size_t i = 0; i < k; i++) {
		items[map[i]].fate = FATE_PENDING;
		items[map[i]].outcome = "event_deferred";
		items[map[i]].reason = "ledger_unavailable";
	}
	trouble(w);
}

static void
dead_letter(struct worker *w, struct item *items, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		struct dead_letter dl;

		if (it->fate != FATE_DEAD)
			continue;
		dl.reason = it->reason;
		dl.detail = it->detail;
		dl.attempts = it->doc.attempts + (it->triggered ? 1 : 0);
		dl.http_status = it->res.http_status;
		if (stream_dead_letter(w->stream, it->entry, &dl) == 0)
			continue;
		it->fate = FATE_PENDING;
		it->outcome = "event_deferred";
		it->reason = "dead_letter_failed";
		trouble(w);
	}
}

/* Step 9: one XACK for everything the round accounted for. */
static void
acknowledge(struct worker *w, struct item *items, size_t n)
{
	const char **ids = xcalloc(n, sizeof(*ids));
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (items[i].fate == FATE_ACK || items[i].fate == FATE_DEAD)
			ids[k++] = items[i].entry->id;
	if (k > 0 && stream_ack(w->stream, ids, k) == -1) {
		/* Redelivered later, then found done in the ledger. */
		log_warnx("worker: XACK of %zu entries failed; they will be "
		    "redelivered and found done", k);
		trouble(w);
	}
	free(ids);
}

static void
log_outcome(struct worker *w, const struct item *it)
{
	char status[24], latency[32], attempts[16];
	enum log_level lvl = LOG_INFO;

	if (it->outcome == NULL)
		return;
	snprintf(status, sizeof(status), "%ld", it->res.http_status);
	snprintf(latency, sizeof(latency), "%.1f", it->res.latency_ms);
	snprintf(attempts, sizeof(attempts), "%d",
	    it->doc.attempts + (it->triggered ? 1 : 0));
	if (it->fate == FATE_DEAD || it->fate == FATE_PENDING)
		lvl = LOG_WARN;
	log_event(lvl, it->outcome,
	    "entry_id", it->entry->id,
	    "event_id", it->decoded ? it->ev.id : NULL,
	    "type", it->decoded ? it->ev.type : NULL,
	    "document_id", it->rendered ? (it->req.document_id ?
		it->req.document_id : it->req.idempotency_key) : NULL,
	    "key", it->rendered ? it->req.idempotency_key : NULL,
	    "route", it->rendered ? it->req.route->name : NULL,
	    "remote_job_id", it->res.remote_job_id,
	    "http_status", it->triggered && it->res.http_status ? status : NULL,
	    "latency_ms", it->triggered ? latency : NULL,
	    "attempts", it->triggered ? attempts : NULL,
	    "reason", it->reason,
	    "detail", it->fate == FATE_DEAD ? it->detail :
		(it->res.error ? it->res.error : NULL),
	    "consumer", w->consumer,
	    (const char *)NULL);
}

static void
process(struct worker *w, const struct stream_batch *batch)
{
	size_t n = batch->n;
	struct item *items = xcalloc(n, sizeof(*items));
	struct ledger_doc *docs = xcalloc(n, sizeof(*docs));
	size_t *map = xcalloc(n, sizeof(*map));

	for (size_t i = 0; i < n; i++) {
		items[i].entry = &batch->entries[i];
		items[i].res.retry_after_s = -1;
		prepare(w, &items[i]);			/* steps 2-4 */
	}
	dedupe_batch(items, n);
	note(w, items, n, docs, map);			/* auto_process: false */
	claim(w, items, n, docs, map);			/* step 5 */
	trigger(w, items, n);				/* steps 6-7 */
	record(w, items, n, docs, map);			/* step 8 */
	dead_letter(w, items, n);
	acknowledge(w, items, n);			/* step 9 */

	for (size_t i = 0; i < n; i++) {
		log_outcome(w, &items[i]);
		if (items[i].decoded)
			cloudevent_free(&items[i].ev);
		if (items[i].rendered)
			request_free(&items[i].req);
		trigger_result_clear(&items[i].res);
	}
	free(items);
	free(docs);
	free(map);
}

static int
connect_all(struct worker *w)
{
	static bool migrated;
	int r;

	if (!stream_connected(w->stream) && stream_connect(w->stream) == -1)
		return -1;
	if (!ledger_connected(w->ledger) && ledger_connect(w->ledger) == -1)
		return -1;
	/* Every worker migrates once; the advisory lock serialises them. */
	if (!migrated) {
		if (ledger_migrate(w->ledger) < 0)
			return -1;
		migrated = true;
	}
	/* The group is created once; NOGROUP later means it vanished. */
	if ((r = stream_create_group(w->stream, w->cfg->process_backlog)) < 0)
		return -1;
	if (r == 1)
		log_event(LOG_INFO, "group_created",
		    "stream", w->cfg->source_stream,
		    "group", w->cfg->consumer_group,
		    "start", w->cfg->process_backlog ? "0" : "$",
		    (const char *)NULL);
	return 0;
}

/* The master holds the pipe's write end: EOF means it died. */
static bool
master_gone(const struct worker_opts *opts)
{
	struct pollfd pfd;

	if (opts->master_fd < 0)
		return false;
	pfd.fd = opts->master_fd;
	pfd.events = POLLIN;
	pfd.revents = 0;
	return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLIN));
}

static void
set_cursor(struct worker *w, const char *id)
{
	free(w->pel_cursor);
	w->pel_cursor = xstrdup(id);
}

int
worker_run(const struct config *cfg, const struct worker_opts *opts)
{
	struct worker w;
	struct stream_batch batch;
	bool connected = false, ever_connected = false;
	long left;
	char pend[24];
	int n, code = 0;

	memset(&w, 0, sizeof(w));
	w.cfg = cfg;
	w.opts = opts;
	w.consumer = worker_consumer_name(cfg, opts->slot);
	w.stream = stream_new(cfg, w.consumer);
	w.ledger = ledger_new(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group, w.consumer, cfg->source_stream);
	w.trigger = trigger_new(cfg);
	w.own_pending = true;		/* step 1: own pending list first */
	set_cursor(&w, "0");

	log_event(LOG_INFO, "worker_started", "consumer", w.consumer,
	    "stream", cfg->source_stream, "group", cfg->consumer_group,
	    (const char *)NULL);
	while (!*opts->stop) {
		if (opts->shm != NULL)
			opts->shm->heartbeat_ms = now_mono_ms();
		if (master_gone(opts)) {
			log_warnx("worker: the master is gone; exiting");
			break;
		}
		if (opts->reopen != NULL && *opts->reopen) {
			*opts->reopen = 0;
			if (log_reopen() == -1)
				log_warn("log: cannot reopen the log file");
		}
		if (w.trouble) {
			back_off(&w);
			w.trouble = false;
			/* Whatever was left pending is ours to read again. */
			w.own_pending = true;
			set_cursor(&w, "0");
			if (*opts->stop)
				break;
		}
		if (!connected) {
			if (connect_all(&w) == -1) {
				/*
				 * Supervised, a worker that never connected
				 * exits: the master's backoff and crash-loop
				 * brake handle a server that is not there.
				 */
				if (opts->shm != NULL && !ever_connected) {
					code = EXIT_CONNECT;
					break;
				}
				trouble(&w);
				continue;
			}
			connected = true;
			ever_connected = true;
			if (opts->shm != NULL)
				opts->shm->connected = 1;
		}
		if (w.own_pending)
			n = stream_read(w.stream, w.pel_cursor, cfg->batch_size,
			    -1, &batch);
		else
			n = stream_read(w.stream, ">", cfg->batch_size,
			    cfg->poll_interval_ms, &batch);
		if (n == STREAM_NOGROUP) {
			/* Stage 1's EXPIRE (or a DEL) took the group along. */
			int r = stream_create_group(w.stream, true);

			log_event(LOG_WARN, "group_recreated",
			    "stream", cfg->source_stream,
			    "group", cfg->consumer_group,
			    "result", r >= 0 ? "ok" : "failed",
			    (const char *)NULL);
			if (r < 0)
				trouble(&w);
			w.own_pending = true;
			set_cursor(&w, "0");
			continue;
		}
		if (n < 0) {
			connected = false;
			trouble(&w);
			continue;
		}
		w.backoff_ms = 0;
		if (n == 0) {
			stream_batch_free(&batch);
			if (w.own_pending) {
				w.own_pending = false;	/* own list drained */
				continue;
			}
			if (opts->drain)
				break;
			continue;
		}
		if (w.own_pending)
			set_cursor(&w, batch.entries[batch.n - 1].id);
		process(&w, &batch);
		stream_batch_free(&batch);
	}

	left = stream_connected(w.stream) ? stream_pending_count(w.stream) : -1;
	if (opts->drain && left != 0)
		code = EXIT_PENDING;
	snprintf(pend, sizeof(pend), "%ld", left);
	log_event(LOG_INFO, "worker_stopped", "consumer", w.consumer,
	    "pending", left >= 0 ? pend : "unknown", (const char *)NULL);
	stream_free(w.stream);
	ledger_free(w.ledger);
	trigger_free(w.trigger);
	free(w.pel_cursor);
	free(w.consumer);
	return code;
}
