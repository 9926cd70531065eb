/*
 * worker.c: the consumer loop of DESIGN.md §3.
 *
 * A round: read entries (own pending list first, then new ones), decode,
 * filter, route, claim in the ledger, trigger concurrently, record the
 * outcomes in the ledger, dead-letter what cannot succeed, and acknowledge
 * only what the ledger (or the dead-letter stream) now accounts for.
 *
 * Around the rounds: entries that must be tried again are held in memory
 * with a due time (the retry schedule) and their claim in the group is kept
 * fresh; a sweeper reclaims entries other consumers left idle; a circuit
 * breaker stops reading while the API keeps failing; entries delivered too
 * often are dead-lettered as poison before they are processed again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "cloudevent.h"
#include "docfile.h"
#include "docquery.h"
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
	FATE_PENDING,		/* hold: tried again after retry_ms */
	FATE_NOTE,		/* record observed, then XACK */
	FATE_CLAIM		/* claim in the ledger, then trigger */
};

/* One request of a batch route's event: some of its documents. */
struct part {
	struct request		 req;
	struct trigger_result	 res;
	size_t			*docs;		/* indexes into item.docs */
	size_t			 n;
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
	bool			 expire;	/* older than the backlog age limit */
	bool			 record_only;	/* ours: recorded, not triggered */
	enum fate		 fate;
	long long		 retry_ms;	/* FATE_PENDING: hold this long */
	const char		*outcome;	/* log msg: event_triggered, ... */
	const char		*reason;	/* dlq_reason or filter reason */
	char			 detail[512];

	/* A batch route's event: the documents of its file, and requests. */
	bool			 batch;
	struct docfile		 file;
	struct ledger_doc	*docs;		/* file.n: one per document */
	bool			*owned;		/* docs[i] is ours to send */
	size_t			 nowned;
	size_t			 nskipped;	/* done or busy elsewhere */
	struct part		*parts;
	size_t			 nparts;
};

/* An entry waiting in this worker's pending list for its next round. */
struct held {
	struct stream_entry	*entry;		/* own copy */
	long long		 due_ms;	/* CLOCK_MONOTONIC */
};

enum circuit_state {
	CIRCUIT_CLOSED = 0,	/* requests flow */
	CIRCUIT_OPEN,		/* no requests until until_ms */
	CIRCUIT_HALF_OPEN	/* one probe at a time */
};

struct worker {
	const struct config		*cfg;
	const struct worker_opts	*opts;
	char				*consumer;
	struct stream			*stream;
	struct ledger			*ledger;
	struct trigger			*trigger;
	struct docquery			*docquery;	/* batch routes' queries */
	bool				 trouble;	/* back off before the next read */
	int				 backoff_ms;
	bool				 redis_lost;	/* log when it is back */
	bool				 ledger_lost;
	bool				 group_seen;	/* it existed once */
	uint64_t			 rng;

	/* The retry schedule: entries held for a later round. */
	struct held			*held;
	size_t				 nheld;
	size_t				 held_max;	/* stop reading new ones */
	long long			 next_touch_ms;

	/* Step 1 after a start: our own pending list, page by page. */
	bool				 recovering;
	struct stream_pending		*page;
	int				 npage;
	char				 page_after[64];

	/* The XAUTOCLAIM sweeper. */
	long long			 next_sweep_ms;
	bool				 sweeping;
	char				 sweep_cursor[48];

	struct {
		enum circuit_state	 state;
		int			 failures;	/* consecutive transient */
		long long		 until_ms;
	} circuit;

	/* Counters in the master's shared memory (or a private slot). */
	struct metrics_shm		*shm;
	struct metrics_slot		*m;
	cJSON				*no_documents;	/* [] */

	/*
	 * Entries whose documents file could not be read (or whose query
	 * could not be run) yet: tries so far.
	 */
	struct file_wait {
		char		 id[48];
		int		 tries;
	}				*file_waits;
	size_t				 nfile_waits;

	/* Entries older than this (wall ms) are recorded expired; 0: none. */
	long long			 expire_before_ms;
	bool				 backlog;	/* read by XRANGE: no XACK */
	bool				 dry_run;	/* backlog: touch nothing */
	struct stream_ids		 dead_ids;	/* backlog: in the dead-letter */
	struct strset			 dead_known;	/* stream already */
	size_t				 dead_again;	/* met again, not re-added */
	long long			 next_poll_ms;	/* slot 1: group figures */
	long long			 lag_warned_ms;
	long long			 idle_since_ms;	/* wall: lag > 0 since */
	long long			 idle_warned_ms;
};

/* Where an unsupervised worker (--drain) counts: nobody reads it. */
static struct metrics_slot unsupervised;

char *
worker_consumer_name(const struct config *cfg, int slot)
{
	return xasprintf("%s-%d", cfg->consumer_name, slot);
}

static void
beat(const struct worker *w)
{
	if (w->opts->shm != NULL)
		w->opts->shm->heartbeat_ms = now_mono_ms();
}

/* The trigger's tick: a read whose requests keep completing is alive. */
static void
beat_tick(void *arg)
{
	beat(arg);
}

/* Sleeps up to ms, waking early when told to stop; a nap is not a hang. */
static void
nap(const struct worker *w, long long ms)
{
	struct timespec ts = { 0, 50 * 1000000L };

	for (long long slept = 0; slept < ms && !*w->opts->stop; slept += 50) {
		if (ms - slept < 50)
			ts.tv_nsec = (long)(ms - slept) * 1000000L;
		nanosleep(&ts, NULL);
		beat(w);
	}
}

static void
trouble(struct worker *w)
{
	w->trouble = true;
}

/*
 * Capped exponential backoff for Redis/PostgreSQL trouble. The cap stays
 * under claim_idle_ms so held entries are touched before a sweeper of
 * another consumer could take them.
 */
static void
back_off(struct worker *w)
{
	int cap = w->cfg->claim_idle_ms / 3;

	if (cap > 30000)
		cap = 30000;
	if (cap < 250)
		cap = 250;
	w->backoff_ms = w->backoff_ms == 0 ? 250 : w->backoff_ms * 2;
	if (w->backoff_ms > cap)
		w->backoff_ms = cap;
	nap(w, w->backoff_ms);
}

/* xorshift64*: jitter only, seeded per process. */
static uint64_t
rnd(struct worker *w)
{
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 2685821657736338717ULL;
}

/*
 * The wait before retry number n (1-based): full jitter over an
 * exponential ceiling, uniform in [0, min(cap, base * 2^(n-1))]; a
 * Retry-After from the server is a floor. Both are capped.
 */
static long long
retry_delay_ms(struct worker *w, int n, long retry_after_s)
{
	double cap = w->cfg->max_retry_delay_seconds * 1000.0;
	double ceiling = w->cfg->retry_delay_seconds * 1000.0;
	double d;

	for (int i = 1; i < n && ceiling < cap; i++)
		ceiling *= 2;
	if (ceiling > cap)
		ceiling = cap;
	d = ceiling * (double)(rnd(w) >> 11) / (double)(1ULL << 53);
	if (retry_after_s >= 0 && retry_after_s * 1000.0 > d)
		d = retry_after_s * 1000.0;
	if (d > cap)
		d = cap;
	return (long long)d;
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

/* Not accounted for this round: held and tried again after ms. */
static void
defer(struct item *it, const char *outcome, const char *reason, long long ms)
{
	it->fate = FATE_PENDING;
	it->outcome = outcome;
	it->reason = reason;
	it->retry_ms = ms;
}

/* The stream entry's id is its time in ms: "<ms>-<seq>". */
static long long
entry_time_ms(const char *id)
{
	return strtoll(id, NULL, 10);
}

/* Steps 2-4: decode and validate, filter, route and render. */
static void
prepare(struct worker *w, struct item *it)
{
	const struct config *cfg = w->cfg;
	const struct route *route;
	const struct ce_limits ce_lim = {
		.max_bytes = cfg->max_event_bytes,
		.max_fields = cfg->max_entry_fields,
		.max_depth = cfg->max_json_depth,
	};
	enum cloudevent_error ce;
	bool expired, observe;
	char err[512];

	if (it->entry->nfields == 0) {
		/* Deleted (trimmed) while pending: only its id is left. */
		dead(it, "lost", "entry deleted from the stream before it was "
		    "processed");
		it->outcome = "entry_lost";
		return;
	}
	ce = cloudevent_decode(it->entry->fields, it->entry->nfields,
	    cfg->event_field, &ce_lim, &it->ev, it->detail,
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
	it->batch = strcmp(route->kind, "batch") == 0;
	expired = w->expire_before_ms > 0 &&
	    entry_time_ms(it->entry->id) < w->expire_before_ms;
	observe = !cfg->auto_process || it->batch != cfg->batch_mode;
	/* Recorded only: the key is all it needs, not a request. */
	if ((expired || observe ? route_render_key(route, &it->ev, &it->req,
	    err, sizeof(err)) : it->batch ? route_render_batch(route, cfg,
	    &it->ev, w->no_documents, 1, 1, NULL, &it->req, err,
	    sizeof(err)) :
	    route_render(route, cfg, &it->ev, &it->req, err,
	    sizeof(err))) == -1) {
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
	it->doc.retry_in_ms = -1;

	if (expired) {
		/*
		 * Backlog older than backlog_max_age_hours: recorded, not
		 * triggered, under a claim like any other outcome, so a
		 * document another entry owes (or whose retry is ours) is
		 * not written over.
		 */
		it->fate = FATE_CLAIM;
		it->expire = true;
		it->doc.status = LEDGER_EXPIRED;
		it->batch = false;
		return;
	}
	if (observe) {
		/* Observe only; batch_mode: the other kind of route triggers. */
		it->fate = FATE_NOTE;
		it->doc.status = LEDGER_OBSERVED;
		it->outcome = "event_observed";
		it->reason = !cfg->auto_process ? "auto_process_off" :
		    cfg->batch_mode ? "batch_mode_on" : "batch_mode_off";
		it->batch = false;
		return;
	}
	it->fate = FATE_CLAIM;
}

/* Counts one more failed read of an entry's file; returns the count. */
static int
file_wait_bump(struct worker *w, const char *id)
{
	for (size_t i = 0; i < w->nfile_waits; i++)
		if (strcmp(w->file_waits[i].id, id) == 0)
			return ++w->file_waits[i].tries;
	w->file_waits = xreallocarray(w->file_waits, w->nfile_waits + 1,
	    sizeof(*w->file_waits));
	strlcpy_s(w->file_waits[w->nfile_waits].id, id,
	    sizeof(w->file_waits[0].id));
	w->file_waits[w->nfile_waits].tries = 1;
	return w->file_waits[w->nfile_waits++].tries;
}

static void
file_wait_drop(struct worker *w, const char *id)
{
	for (size_t i = 0; i < w->nfile_waits; i++)
		if (strcmp(w->file_waits[i].id, id) == 0) {
			w->file_waits[i] = w->file_waits[--w->nfile_waits];
			return;
		}
}

/*
 * A batch route's documents query, its values rendered from the event:
 * a docquery_run() code, or 1 when the values cannot be rendered (a
 * render error, err set).
 */
static int
query_documents(struct worker *w, struct item *it,
    const struct docfile_limits *lim, char *err, size_t errlen)
{
	const struct route *route = it->req.route;
	const struct route_query *q = &route->documents_query;
	char **values;
	int rc;

	if ((values = route_documents_query_params(route, &it->ev, err,
	    errlen)) == NULL)
		return 1;
	rc = docquery_run(w->docquery, q->dsn != NULL ? q->dsn :
	    w->cfg->ledger.dsn, q->sql, (const char *const *)values,
	    q->nparams, q->timeout_ms, lim, &it->file, err, errlen);
	route_params_free(values, q->nparams);
	return rc;
}

/*
 * A batch route's documents, from its file or its query, read and
 * refused where they must be (DESIGN.md §4): each becomes a ledger
 * document of the event, claimed with the rest of the round.
 */
static void
load_documents(struct worker *w, struct item *it)
{
	const struct config *cfg = w->cfg;
	const struct route *route = it->req.route;
	const struct docfile_limits file_lim = {
		.max_bytes = cfg->max_documents_file_bytes,
		.max_line = cfg->max_event_bytes,
		.max_documents = cfg->max_documents_per_file,
		.max_depth = cfg->max_json_depth,
	};
	const char *what;
	char err[512], *path;
	bool query;
	int rc, n;

	/* Not rendered (dead already, observed): route may be unset. */
	if (it->fate != FATE_CLAIM || !it->batch)
		return;
	query = route->documents_query.sql != NULL;
	what = query ? "documents_query" : "documents_file";
	if (route->documents_file == NULL && !query) {
		it->batch = false;	/* kind: batch, one request as is */
		return;
	}
	if (query) {
		if ((rc = query_documents(w, it, &file_lim, err,
		    sizeof(err))) == 1) {
			dead(it, "render_error", "route %s: %s", route->name,
			    err);
			return;
		}
	} else {
		if ((path = route_documents_file(route, &it->ev, err,
		    sizeof(err))) == NULL) {
			dead(it, "render_error", "route %s: %s", route->name,
			    err);
			return;
		}
		rc = docfile_read(cfg->shared_dir, path, &file_lim, &it->file,
		    err, sizeof(err));
		free(path);
	}
	if (rc == DOCFILE_UNAVAILABLE) {
		/*
		 * Not there yet, the mount hiccups, the database is down or
		 * its table not created yet: tried again.
		 */
		n = file_wait_bump(w, it->entry->id);
		if (cfg->retry_failed && n <= cfg->max_retries) {
			snprintf(it->detail, sizeof(it->detail), "route %.64s: "
			    "%.400s", route->name, err);
			defer(it, "event_deferred", query ?
			    "documents_query_unavailable" :
			    "documents_file_unavailable",
			    retry_delay_ms(w, n, -1));
			return;
		}
		file_wait_drop(w, it->entry->id);
		dead(it, what, "route %s: %s (gave up after %d tries)",
		    route->name, err, n);
		return;
	}
	file_wait_drop(w, it->entry->id);
	if (rc == DOCFILE_REFUSED) {
		dead(it, what, "route %s: %s", route->name, err);
		return;
	}
	if (it->file.n == 0) {
		ack(it, "event_filtered", "no_documents");
		return;
	}
	it->docs = xcalloc(it->file.n, sizeof(*it->docs));
	it->owned = xcalloc(it->file.n, sizeof(*it->owned));
	for (size_t i = 0; i < it->file.n; i++) {
		it->docs[i] = it->doc;
		it->docs[i].document_id = it->file.ids[i];
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

/* The ledger did not answer: nothing is acknowledged, all is held. */
static void
ledger_down(struct worker *w, struct item *items, const size_t *map, size_t k)
{
	for (size_t i = 0; i < k; i++)
		defer(&items[map[i]], "event_deferred", "ledger_unavailable", 0);
	w->ledger_lost = true;
	trouble(w);
}

/* What the ledger said of a lone document: the item's fate. */
static void
claimed_one(struct item *it, const struct ledger_doc *d, long long recheck)
{
	it->doc.claim = d->claim;
	it->doc.attempts = d->attempts;
	it->doc.retries = d->retries;
	it->doc.wait_ms = d->wait_ms;
	memcpy(it->doc.prev_status, d->prev_status,
	    sizeof(it->doc.prev_status));
	switch (d->claim) {
	case LEDGER_OWNED:
		break;
	case LEDGER_DONE:
		ack(it, "event_duplicate", it->doc.prev_status);
		break;
	case LEDGER_BUSY:
		/* A live claim elsewhere: look again soon, or at its end. */
		defer(it, "event_busy", "claimed_by_another_consumer",
		    d->wait_ms + 50 < recheck ? d->wait_ms + 50 : recheck);
		break;
	case LEDGER_WAIT:
		/* Failed earlier; the ledger keeps its schedule. */
		defer(it, "event_retry_scheduled", "retry_not_due",
		    d->wait_ms + 10);
		break;
	}
}

/*
 * What the ledger said of a batch's documents. Ours are sent; done ones,
 * and those another entry's claim holds (that entry is pending, so the
 * document is owed there), are left out. A document whose claim or
 * retry belongs to this very entry (a consumer that died on it, or our
 * own failure) holds the whole event back until the lease ends or the
 * retry is due: nobody else owes it.
 */
static void
claimed_batch(struct item *it, long long recheck)
{
	long long wait = -1;
	const char *why = "retry_not_due";

	it->nowned = 0;
	it->doc.attempts = it->doc.retries = 0;
	for (size_t j = 0; j < it->file.n; j++) {
		const struct ledger_doc *d = &it->docs[j];

		it->owned[j] = d->claim == LEDGER_OWNED;
		if (it->owned[j]) {
			it->nowned++;
			if (d->attempts > it->doc.attempts)
				it->doc.attempts = d->attempts;
			if (d->retries > it->doc.retries)
				it->doc.retries = d->retries;
		} else if (d->claim == LEDGER_WAIT && d->wait_ms > wait)
			wait = d->wait_ms;
		else if (d->claim == LEDGER_BUSY && d->same_entry &&
		    (d->wait_ms < recheck ? d->wait_ms + 40 : recheck) > wait) {
			wait = d->wait_ms < recheck ? d->wait_ms + 40 : recheck;
			why = "claimed_by_another_consumer";
		}
	}
	it->nskipped = it->file.n - it->nowned;
	if (wait >= 0)
		defer(it, "event_retry_scheduled", why, wait + 10);
	else if (it->nowned == 0)
		ack(it, "event_duplicate", "no_new_documents");
}

/*
 * Step 5: one round trip claims every document of the round. A document
 * met twice in one round (two events, or an event and a batch) is
 * claimed once: a lone event repeating one is acknowledged as a
 * duplicate (the first speaks for it), a batch leaves it out.
 */
static void
claim(struct worker *w, struct item *items, size_t n)
{
	struct ledger_doc *docs;
	struct strset seen;
	size_t total = 0, k = 0, *map, *sub;
	long long recheck;
	int rc = 0;

	for (size_t i = 0; i < n; i++)
		if (items[i].fate == FATE_CLAIM)
			total += items[i].batch ? items[i].file.n : 1;
	if (total == 0)
		return;
	docs = xcalloc(total, sizeof(*docs));
	map = xcalloc(total, sizeof(*map));
	sub = xcalloc(total, sizeof(*sub));
	strset_init(&seen, total);
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];

		if (it->fate != FATE_CLAIM)
			continue;
		if (!it->batch) {
			if (!strset_add(&seen, it->doc.document_id)) {
				ack(it, "event_duplicate", "same_batch");
				continue;
			}
			docs[k] = it->doc;
			map[k] = i;
			sub[k++] = SIZE_MAX;
			continue;
		}
		for (size_t j = 0; j < it->file.n; j++) {
			/* Not ours this round: left out like a busy one. */
			it->docs[j].claim = LEDGER_BUSY;
			it->docs[j].same_entry = false;
			if (!strset_add(&seen, it->docs[j].document_id))
				continue;
			docs[k] = it->docs[j];
			map[k] = i;
			sub[k++] = j;
		}
	}
	strset_free(&seen);
	if (k > 0 && (rc = ledger_claim(w->ledger, docs, k,
	    w->cfg->ledger.lease_seconds, w->cfg->deduplication_ttl_hours,
	    w->cfg->check_already_processed)) == LEDGER_REFUSED) {
		/*
		 * PostgreSQL refuses a document itself (input checks should
		 * have caught it): the round is claimed again item by item,
		 * so only the item that carries it is dead-lettered.
		 */
		size_t left = 0;

		for (size_t i = 0; i < n; i++)
			left += items[i].fate == FATE_CLAIM;
		if (left == 1) {
			for (size_t i = 0; i < n; i++)
				if (items[i].fate == FATE_CLAIM)
					dead(&items[i], "ledger_refused", "the "
					    "ledger refused its documents: %s",
					    ledger_refusal(w->ledger));
		} else
			for (size_t i = 0; i < n; i++)
				if (items[i].fate == FATE_CLAIM)
					claim(w, &items[i], 1);
		goto out;
	}
	if (rc == -1) {
		/* Every item still claiming is held. */
		for (size_t i = 0; i < n; i++)
			if (items[i].fate == FATE_CLAIM)
				defer(&items[i], "event_deferred",
				    "ledger_unavailable", 0);
		w->ledger_lost = true;
		trouble(w);
		goto out;
	}
	recheck = (long long)(w->cfg->retry_delay_seconds * 1000);
	if (recheck < 1000)
		recheck = 1000;
	for (size_t x = 0; x < k; x++) {
		struct item *it = &items[map[x]];

		if (sub[x] == SIZE_MAX)
			claimed_one(it, &docs[x], recheck);
		else {
			struct ledger_doc *d = &it->docs[sub[x]];

			d->claim = docs[x].claim;
			d->attempts = docs[x].attempts;
			d->retries = docs[x].retries;
			d->wait_ms = docs[x].wait_ms;
			d->same_entry = docs[x].same_entry;
			memcpy(d->prev_status, docs[x].prev_status,
			    sizeof(d->prev_status));
		}
	}
	for (size_t i = 0; i < n; i++)
		if (items[i].fate == FATE_CLAIM && items[i].batch)
			claimed_batch(&items[i], recheck);
out:
	free(docs);
	free(map);
	free(sub);
}

/* FNV-1a over the ids a request carries: names a partial chunk. */
static uint32_t
ids_digest(const struct item *it, const struct part *pt)
{
	uint32_t h = 2166136261u;

	for (size_t x = 0; x < pt->n; x++) {
		for (const char *p = it->file.ids[pt->docs[x]]; *p != '\0'; p++)
			h = (h ^ (unsigned char)*p) * 16777619u;
		h = (h ^ '\n') * 16777619u;
	}
	return h;
}

/*
 * A batch's requests. The file is cut into chunks of max_batch_documents
 * lines, request k of n carrying chunk k's documents still owed, keyed
 * "<key>#k/n" (the plain key when n is 1). The cut depends on the file
 * alone, so a retry sends a chunk under the key it had before, with the
 * same documents or fewer. A render error dead-letters the event.
 */
static void
plan_parts(struct worker *w, struct item *it)
{
	size_t per = (size_t)w->cfg->max_batch_documents, chunks, j = 0;
	const cJSON *c;
	char err[512], tag[16];
	bool partial;

	if (it->fate != FATE_CLAIM || !it->batch)
		return;
	chunks = (it->file.n + per - 1) / per;
	if (per > it->file.n)
		per = it->file.n;
	it->parts = xcalloc(chunks, sizeof(*it->parts));
	c = it->file.docs->child;
	for (size_t k = 0; k < chunks; k++) {
		struct part *pt = &it->parts[it->nparts];
		cJSON *docs = cJSON_CreateArray();
		size_t end = j + per < it->file.n ? j + per : it->file.n;

		pt->docs = xcalloc(per, sizeof(*pt->docs));
		pt->res.retry_after_s = -1;
		for (; j < end; j++, c = c->next) {
			if (!it->owned[j])
				continue;
			cJSON_AddItemReferenceToArray(docs, (cJSON *)c);
			pt->docs[pt->n++] = j;
		}
		if (pt->n == 0) {	/* all done or held elsewhere */
			free(pt->docs);
			memset(pt, 0, sizeof(*pt));
			cJSON_Delete(docs);
			continue;
		}
		it->nparts++;
		/*
		 * Only some of the chunk is owed: a key of its own, so an API
		 * that honours keys never answers one set with another's.
		 */
		partial = pt->n < end - k * per;
		if (partial)
			snprintf(tag, sizeof(tag), "%08x", ids_digest(it, pt));
		if (route_render_batch(it->req.route, w->cfg, &it->ev, docs,
		    k + 1, chunks, partial ? tag : NULL, &pt->req, err,
		    sizeof(err)) == -1) {
			cJSON_Delete(docs);
			dead(it, "render_error", "route %s: %s",
			    it->req.route->name, err);
			return;
		}
		cJSON_Delete(docs);
	}
}

/* The state, and its copy in the counters the master shows. */
static void
circuit_set(struct worker *w, enum circuit_state state)
{
	w->circuit.state = state;
	w->m->circuit = (int32_t)state;
}

/* The circuit breaker sees every response in order. */
static void
circuit_result(struct worker *w, bool transient)
{
	const struct config *cfg = w->cfg;
	char n[16], secs[16];

	if (!transient) {
		w->circuit.failures = 0;
		if (w->circuit.state != CIRCUIT_CLOSED) {
			circuit_set(w, CIRCUIT_CLOSED);
			log_event(LOG_INFO, "circuit_closed", "consumer",
			    w->consumer, (const char *)NULL);
		}
		return;
	}
	w->circuit.failures++;
	if (w->circuit.state == CIRCUIT_OPEN ||
	    (w->circuit.state == CIRCUIT_CLOSED &&
	    w->circuit.failures < cfg->circuit_breaker.failure_threshold))
		return;
	/* Threshold reached, or the probe failed: (re)open. */
	circuit_set(w, CIRCUIT_OPEN);
	w->circuit.until_ms = now_mono_ms() +
	    (long long)cfg->circuit_breaker.open_seconds * 1000;
	snprintf(n, sizeof(n), "%d", w->circuit.failures);
	snprintf(secs, sizeof(secs), "%d", cfg->circuit_breaker.open_seconds);
	log_event(LOG_WARN, "circuit_opened", "consumer", w->consumer,
	    "consecutive_failures", n, "open_seconds", secs,
	    (const char *)NULL);
}

/* A transient failure: retried on the schedule, or given up. */
static void
transient(struct worker *w, struct item *it, bool counted)
{
	const struct config *cfg = w->cfg;
	const char *err = it->res.error ? it->res.error : "transient failure";
	int retries = it->doc.retries + (counted ? 1 : 0);

	if (!cfg->retry_failed) {
		it->doc.status = LEDGER_DEAD;
		dead(it, "retries_exhausted", "retry_failed is off: %s", err);
		return;
	}
	if (retries > cfg->max_retries) {
		it->doc.status = LEDGER_DEAD;
		dead(it, "retries_exhausted", "gave up after %d retries "
		    "(max_retries %d): %s", retries - 1, cfg->max_retries, err);
		return;
	}
	it->doc.status = LEDGER_FAILED;
	it->doc.count_retry = counted;
	it->doc.retry_in_ms = retry_delay_ms(w, retries > 0 ? retries : 1,
	    it->res.retry_after_s);
	defer(it, "event_failed", "transient", it->doc.retry_in_ms);
}

/* One response in the counters (and, unless quiet, the breaker). */
static void
observe(struct worker *w, const struct item *it, const struct request *req,
    const struct trigger_result *res, bool quiet)
{
	metrics_request(w->m, w->shm != NULL ? metrics_route_index(w->shm,
	    req->route->name) : 0, res->http_status);
	metrics_observe(&w->m->trigger_seconds, res->latency_ms / 1000.0);
	if (res->outcome == TRIGGER_SUCCESS)
		metrics_observe(&w->m->latency_seconds, (double)(now_wall_ms() -
		    entry_time_ms(it->entry->id)) / 1000.0);
	if (!quiet)
		circuit_result(w, res->outcome == TRIGGER_TRANSIENT);
}

/* A failed answer: rejected (2xx refused by success_field) or not. */
static const char *
permanent_reason(const struct trigger_result *res)
{
	return res->http_status >= 200 && res->http_status <= 299 ?
	    "rejected" : "http_error";
}

/* A lone document's request: its answer is the event's fate. */
static void
settle_one(struct worker *w, struct item *it, bool counted)
{
	it->triggered = true;
	it->doc.requested = true;
	it->doc.http_status = it->res.http_status;
	it->doc.latency_ms = it->res.latency_ms;
	it->doc.remote_job_id = it->res.remote_job_id;
	it->doc.error = it->res.error;
	it->doc.outcome = trigger_outcome_name(it->res.outcome);
	switch (it->res.outcome) {
	case TRIGGER_SUCCESS:
		it->doc.status = LEDGER_TRIGGERED;
		ack(it, "event_triggered", NULL);
		break;
	case TRIGGER_PERMANENT:
		it->doc.status = LEDGER_DEAD;
		dead(it, permanent_reason(&it->res), "%s", it->res.error ?
		    it->res.error : "permanent failure");
		break;
	case TRIGGER_TRANSIENT:
		transient(w, it, counted);
		break;
	}
}

static void
result_copy(struct trigger_result *dst, const struct trigger_result *src)
{
	*dst = *src;
	dst->remote_job_id = xstrdup(src->remote_job_id);
	dst->error = xstrdup(src->error);
}

/*
 * A batch's requests: each document takes its request's answer; the
 * event takes the worst (a permanent failure, else a transient one).
 * Documents a request delivered stay triggered when the event is retried
 * or dead-lettered for another request's failure.
 */
static void
settle_batch(struct worker *w, struct item *it, bool counted)
{
	const struct part *worst = NULL;

	for (size_t p = 0; p < it->nparts; p++) {
		enum trigger_outcome o = it->parts[p].res.outcome;

		if (o == TRIGGER_SUCCESS || (worst != NULL &&
		    (worst->res.outcome == TRIGGER_PERMANENT ||
		    o == TRIGGER_TRANSIENT)))
			continue;
		worst = &it->parts[p];
	}
	result_copy(&it->res, worst != NULL ? &worst->res : &it->parts[0].res);
	it->triggered = true;
	if (worst == NULL) {
		it->doc.status = LEDGER_TRIGGERED;
		ack(it, "event_triggered", NULL);
	} else if (worst->res.outcome == TRIGGER_PERMANENT) {
		it->doc.status = LEDGER_DEAD;
		dead(it, permanent_reason(&worst->res), "request %s (%zu "
		    "documents): %s", worst->req.idempotency_key, worst->n,
		    worst->res.error ? worst->res.error : "permanent failure");
	} else
		transient(w, it, counted);

	for (size_t p = 0; p < it->nparts; p++) {
		const struct part *pt = &it->parts[p];

		for (size_t x = 0; x < pt->n; x++) {
			struct ledger_doc *d = &it->docs[pt->docs[x]];

			d->requested = true;
			d->delivery_key = pt->req.idempotency_key;
			d->url = pt->req.url;
			d->http_status = pt->res.http_status;
			d->latency_ms = pt->res.latency_ms;
			d->remote_job_id = pt->res.remote_job_id;
			d->error = pt->res.error;
			d->outcome = trigger_outcome_name(pt->res.outcome);
			d->status = pt->res.outcome == TRIGGER_SUCCESS ?
			    LEDGER_TRIGGERED : it->doc.status;
			d->count_retry = d->status == LEDGER_FAILED &&
			    it->doc.count_retry;
			d->retry_in_ms = it->doc.retry_in_ms;
		}
	}
}

/* Steps 6-7: trigger the owned requests concurrently and classify. */
static void
trigger(struct worker *w, struct item *items, size_t n)
{
	struct request *reqs;
	struct trigger_result *res;
	size_t k = 0;
	/* Probes of an open circuit do not use up an entry's retries. */
	bool counted = w->circuit.state == CIRCUIT_CLOSED;

	for (size_t i = 0; i < n; i++)
		if (items[i].fate == FATE_CLAIM)
			k += items[i].batch ? items[i].nparts : 1;
	if (k == 0)
		return;
	reqs = xcalloc(k, sizeof(*reqs));
	res = xcalloc(k, sizeof(*res));
	k = 0;
	for (size_t i = 0; i < n; i++) {
		if (items[i].fate != FATE_CLAIM)
			continue;
		if (!items[i].batch)
			reqs[k++] = items[i].req;	/* shallow: only read */
		for (size_t p = 0; items[i].batch && p < items[i].nparts; p++)
			reqs[k++] = items[i].parts[p].req;
	}
	/* At most nlp_api.max_in_flight at once, each with its timeout. */
	trigger_run(w->trigger, reqs, k, res);
	k = 0;
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];

		if (it->fate != FATE_CLAIM)
			continue;
		if (!it->batch) {
			it->res = res[k++];
			observe(w, it, &it->req, &it->res, false);
			settle_one(w, it, counted);
			continue;
		}
		/* The breaker hears a batch once: as its worst answer. */
		for (size_t p = 0; p < it->nparts; p++) {
			it->parts[p].res = res[k++];
			observe(w, it, &it->parts[p].req, &it->parts[p].res,
			    true);
		}
		settle_batch(w, it, counted);
		circuit_result(w, it->res.outcome == TRIGGER_TRANSIENT);
	}
	free(reqs);
	free(res);
}

/*
 * Step 8: one round trip records every outcome of the round: each lone
 * document, and each document of a batch (those a render error stopped
 * are dead with the event).
 */
static void
record(struct worker *w, struct item *items, size_t n)
{
	struct ledger_doc *docs;
	size_t total = 0, k = 0, *map;

	for (size_t i = 0; i < n; i++)
		total += items[i].batch ? items[i].nowned : 1;
	docs = xcalloc(total + 1, sizeof(*docs));
	map = xcalloc(total + 1, sizeof(*map));
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];

		if (!it->batch) {
			if (!it->triggered && !it->record_only)
				continue;
			docs[k] = it->doc;
			map[k++] = i;
			continue;
		}
		if (it->nowned == 0 || (!it->triggered && it->fate != FATE_DEAD))
			continue;
		for (size_t j = 0; j < it->file.n; j++) {
			if (!it->owned[j])
				continue;
			if (!it->triggered) {
				it->docs[j].status = LEDGER_DEAD;
				it->docs[j].error = it->detail;
			}
			docs[k] = it->docs[j];
			map[k++] = i;
		}
	}
	/*
	 * Requests were made but not recorded: acknowledge nothing. The
	 * entries are tried again with the same Idempotency-Key (DESIGN.md
	 * §3, crash windows).
	 */
	if (k > 0 && ledger_record(w->ledger, docs, k) == -1)
		ledger_down(w, items, map, k);
	free(docs);
	free(map);
}

static void
note(struct worker *w, struct item *items, size_t n, struct ledger_doc *docs,
    size_t *map)
{
	size_t k = gather(items, n, FATE_NOTE, docs, map);

	if (k == 0)
		return;
	if (ledger_note(w->ledger, docs, k) == -1) {
		ledger_down(w, items, map, k);
		return;
	}
	for (size_t i = 0; i < k; i++)
		items[map[i]].fate = FATE_ACK;
}

static void
dead_letter(struct worker *w, struct item *items, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		struct dead_letter dl;

		if (it->fate != FATE_DEAD)
			continue;
		if (strset_has(&w->dead_known, it->entry->id)) {
			/* A backlog run meets what an earlier one refused. */
			ack(it, "event_already_dead_lettered", it->reason);
			w->dead_again++;
			continue;
		}
		dl.reason = it->reason;
		dl.detail = it->detail;
		dl.attempts = it->doc.attempts + (it->triggered ? 1 : 0);
		dl.http_status = it->res.http_status;
		if (stream_dead_letter(w->stream, it->entry, &dl) == 0)
			continue;
		defer(it, "event_deferred", "dead_letter_failed", 0);
		w->redis_lost = true;
		trouble(w);
	}
}

/* Step 9: one XACK for everything the round accounted for. */
static void
acknowledge(struct worker *w, struct item *items, size_t n)
{
	const char **ids;
	size_t k = 0;

	if (w->backlog)
		return;		/* read by XRANGE, not through the group */
	ids = xcalloc(n, sizeof(*ids));
	for (size_t i = 0; i < n; i++)
		if (items[i].fate == FATE_ACK || items[i].fate == FATE_DEAD)
			ids[k++] = items[i].entry->id;
	if (k > 0 && stream_ack(w->stream, ids, k) == -1) {
		/* Held and tried again: then found done and acknowledged. */
		log_warnx("worker: XACK of %zu entries failed; they will be "
		    "tried again and found done", k);
		for (size_t i = 0; i < n; i++)
			if (items[i].fate == FATE_ACK ||
			    items[i].fate == FATE_DEAD)
				items[i].fate = FATE_PENDING;
		w->redis_lost = true;
		trouble(w);
	}
	free(ids);
}

static void
log_outcome(struct worker *w, const struct item *it)
{
	char status[24], latency[32], attempts[16], retry[24], sent[24];
	char skipped[24];
	enum log_level lvl = LOG_INFO;

	if (it->outcome == NULL)
		return;
	snprintf(status, sizeof(status), "%ld", it->res.http_status);
	snprintf(latency, sizeof(latency), "%.1f", it->res.latency_ms);
	snprintf(attempts, sizeof(attempts), "%d",
	    it->doc.attempts + (it->triggered ? 1 : 0));
	snprintf(retry, sizeof(retry), "%lld", it->retry_ms);
	snprintf(sent, sizeof(sent), "%zu", it->nowned);
	snprintf(skipped, sizeof(skipped), "%zu", it->nskipped +
	    it->file.repeated);
	if (it->fate == FATE_DEAD || (it->fate == FATE_PENDING &&
	    it->triggered) || (it->fate == FATE_PENDING &&
	    strcmp(it->outcome, "event_deferred") == 0))
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
	    "documents", it->batch && it->docs != NULL ? sent : NULL,
	    "skipped_documents", it->batch && it->docs != NULL ? skipped : NULL,
	    "retry_in_ms", it->fate == FATE_PENDING ? retry : NULL,
	    "reason", it->reason,
	    "detail", it->fate == FATE_DEAD || it->detail[0] != '\0' ?
		it->detail : (it->res.error ? it->res.error : NULL),
	    "consumer", w->consumer,
	    (const char *)NULL);
}

static size_t
type_index(const struct worker *w, const char *type)
{
	return w->shm != NULL ? metrics_type_index(w->shm, type) : 0;
}

/* One event's outcome in the counters (the log line's twin). */
static void
count(struct worker *w, const struct item *it)
{
	size_t type = it->decoded ? type_index(w, it->ev.type) : 0;
	const char *o = it->outcome;

	if (o == NULL)
		return;
	if (it->fate == FATE_DEAD) {
		enum metrics_reason r = metrics_reason_of(it->reason);

		metrics_event(w->m, r == MR_INVALID_EVENT ? MO_INVALID :
		    r == MR_LOST ? MO_LOST : MO_DEAD, type);
		metrics_dead_letter(w->m, it->reason);
	} else if (strcmp(o, "event_triggered") == 0)
		metrics_event(w->m, MO_TRIGGERED, type);
	else if (strcmp(o, "event_duplicate") == 0)
		metrics_event(w->m, MO_DUPLICATE, type);
	else if (strcmp(o, "event_filtered") == 0)
		metrics_event(w->m, MO_FILTERED, type);
	else if (strcmp(o, "event_observed") == 0)
		metrics_event(w->m, MO_OBSERVED, type);
	else if (strcmp(o, "event_expired") == 0)
		metrics_event(w->m, MO_EXPIRED, type);
	else if (strcmp(o, "event_failed") == 0)
		w->m->retries++;
	else
		return;		/* held: counted when it is settled */
	w->m->last_event_ms = now_wall_ms();
}

static struct held *
find_held(struct worker *w, const char *id)
{
	for (size_t i = 0; i < w->nheld; i++)
		if (strcmp(w->held[i].entry->id, id) == 0)
			return &w->held[i];
	return NULL;
}

/* Holds a copy of e, due in ms; an entry already held is rescheduled. */
static void
hold(struct worker *w, const struct stream_entry *e, long long ms)
{
	struct held *h;

	if ((h = find_held(w, e->id)) != NULL) {
		h->due_ms = now_mono_ms() + ms;
		return;
	}
	w->held = xreallocarray(w->held, w->nheld + 1, sizeof(*w->held));
	h = &w->held[w->nheld++];
	h->entry = stream_entry_dup(e);
	h->due_ms = now_mono_ms() + ms;
}

static long long
next_due(const struct worker *w)
{
	long long due = -1;

	for (size_t i = 0; i < w->nheld; i++)
		if (due < 0 || w->held[i].due_ms < due)
			due = w->held[i].due_ms;
	return due;
}

/*
 * Takes up to max held entries due by now (their order does not matter:
 * a round takes them together). With probe, only the one due soonest, if
 * it is due. Caller frees the entries.
 */
static size_t
take_due(struct worker *w, long long now, size_t max, bool probe,
    struct stream_entry **out)
{
	size_t k = 0, i = 0;

	if (probe && w->nheld > 0) {
		size_t best = 0;

		for (i = 1; i < w->nheld; i++)
			if (w->held[i].due_ms < w->held[best].due_ms)
				best = i;
		if (w->held[best].due_ms > now)
			return 0;
		out[k++] = w->held[best].entry;
		w->held[best] = w->held[--w->nheld];
		return k;
	}
	while (i < w->nheld && k < max) {
		if (w->held[i].due_ms > now) {
			i++;
			continue;
		}
		out[k++] = w->held[i].entry;
		w->held[i] = w->held[--w->nheld];
	}
	return k;
}

/* Releases what a round gave an item. */
static void
item_clear(struct item *it)
{
	if (it->decoded)
		cloudevent_free(&it->ev);
	if (it->rendered)
		request_free(&it->req);
	trigger_result_clear(&it->res);
	for (size_t p = 0; p < it->nparts; p++) {
		request_free(&it->parts[p].req);
		trigger_result_clear(&it->parts[p].res);
		free(it->parts[p].docs);
	}
	free(it->parts);
	free(it->docs);
	free(it->owned);
	docfile_free(&it->file);
}

/* Runs one round over entries (steps 2-9), then holds what is left. */
static void
process(struct worker *w, const struct stream_entry *entries, size_t n)
{
	struct item *items = xcalloc(n, sizeof(*items));
	struct ledger_doc *docs = xcalloc(n, sizeof(*docs));
	size_t *map = xcalloc(n, sizeof(*map));

	for (size_t i = 0; i < n; i++) {
		items[i].entry = &entries[i];
		items[i].res.retry_after_s = -1;
		prepare(w, &items[i]);			/* steps 2-4 */
	}
	note(w, items, n, docs, map);			/* observe only */
	for (size_t i = 0; i < n; i++)
		load_documents(w, &items[i]);		/* batch routes */
	claim(w, items, n);				/* step 5 */
	for (size_t i = 0; i < n; i++) {
		if (items[i].expire && items[i].fate == FATE_CLAIM) {
			ack(&items[i], "event_expired",
			    "older_than_backlog_max_age");
			items[i].record_only = true;
		}
		plan_parts(w, &items[i]);
	}
	trigger(w, items, n);				/* steps 6-7 */
	record(w, items, n);				/* step 8 */
	dead_letter(w, items, n);
	acknowledge(w, items, n);			/* step 9 */

	log_hold();				/* one write for the round */
	for (size_t i = 0; i < n; i++) {
		if (items[i].fate == FATE_PENDING)
			hold(w, items[i].entry, items[i].retry_ms);
		log_outcome(w, &items[i]);
		count(w, &items[i]);
		item_clear(&items[i]);
	}
	log_release();
	free(items);
	free(docs);
	free(map);
}

/* Redis or the group failed us: reconnect (or re-create) and go on. */
static void
redis_trouble(struct worker *w, int err)
{
	if (err == STREAM_NOGROUP) {
		/* Stage 1's EXPIRE (or a DEL) took the group along. */
		int r = stream_create_group(w->stream, true);

		log_event(LOG_WARN, "group_recreated",
		    "stream", w->cfg->source_stream,
		    "group", w->cfg->consumer_group,
		    "result", r >= 0 ? "ok" : "failed",
		    (const char *)NULL);
		/* The old pending list went with it; held copies remain. */
		w->recovering = false;
		w->sweeping = false;
		if (r >= 0)
			return;
	}
	w->redis_lost = true;
	trouble(w);
}

/*
 * Entries delivered more than max_deliveries times keep stopping the
 * worker that processes them: dead-lettered untouched, acknowledged, and
 * only then (when it is safe to fail) marked dead in the ledger.
 */
static void
poison(struct worker *w, const struct stream_entry *entries,
    const long long *deliveries, size_t n)
{
	const char **ids = xcalloc(n, sizeof(*ids));
	struct ledger_doc *docs = xcalloc(n, sizeof(*docs));
	struct item *items = xcalloc(n, sizeof(*items));
	char times[24], detail[256];
	size_t k = 0, nd = 0;

	for (size_t i = 0; i < n; i++) {
		struct dead_letter dl = { "poison", detail, 0, 0 };

		snprintf(detail, sizeof(detail), "delivered %lld times "
		    "(max_deliveries %d) without being acknowledged; not "
		    "processed again", deliveries[i], w->cfg->max_deliveries);
		if (stream_dead_letter(w->stream, &entries[i], &dl) == -1) {
			w->redis_lost = true;
			trouble(w);
			break;		/* still pending: next start or sweep */
		}
		ids[k++] = entries[i].id;
		metrics_event(w->m, MO_DEAD, 0);
		metrics_dead_letter(w->m, "poison");
		snprintf(times, sizeof(times), "%lld", deliveries[i]);
		log_event(LOG_WARN, "event_dead_lettered",
		    "entry_id", entries[i].id, "reason", "poison",
		    "deliveries", times, "consumer", w->consumer,
		    (const char *)NULL);
	}
	if (k > 0 && stream_ack(w->stream, ids, k) == -1) {
		w->redis_lost = true;
		trouble(w);
		k = 0;
	}
	/* Acknowledged: now the entry may be decoded to name its document. */
	for (size_t i = 0; i < k; i++) {
		struct item *it = &items[i];

		it->entry = &entries[i];
		prepare(w, it);
		if (!it->rendered)
			continue;
		it->doc.error = "poison: delivered too often without being "
		    "acknowledged";
		docs[nd++] = it->doc;
	}
	if (nd > 0 && ledger_bury(w->ledger, docs, nd) == -1)
		log_warnx("worker: poison entries dead-lettered, but the ledger "
		    "could not mark their documents dead");
	for (size_t i = 0; i < k; i++)
		item_clear(&items[i]);
	free(items);
	free(docs);
	free(ids);
}

/* Ids Redis dropped from a pending list: deleted before anyone read them. */
static void
lost(struct worker *w, const struct stream_ids *ids)
{
	for (size_t i = 0; i < ids->n; i++) {
		struct stream_entry e = { ids->ids[i], NULL, 0 };
		struct dead_letter dl = { "lost", "entry deleted from the "
		    "stream before it was processed", 0, 0 };

		log_event(LOG_WARN, "entry_lost", "entry_id", e.id,
		    "consumer", w->consumer, (const char *)NULL);
		metrics_event(w->m, MO_LOST, 0);
		if (stream_dead_letter(w->stream, &e, &dl) == 0)
			metrics_dead_letter(w->m, "lost");
		else
			log_warnx("worker: could not note lost entry %s in the "
			    "dead-letter stream", e.id);
	}
}

/*
 * Splits claimed entries into poison (deliveries over the limit) and the
 * rest, processed as a round. deliveries[i] is what Redis counts now.
 */
static void
triage(struct worker *w, const struct stream_batch *b,
    const struct stream_pending *p, int np, long long limit)
{
	struct stream_entry *ok = xcalloc(b->n + 1, sizeof(*ok));
	struct stream_entry *bad = xcalloc(b->n + 1, sizeof(*bad));
	long long *times = xcalloc(b->n + 1, sizeof(*times));
	size_t nok = 0, nbad = 0;

	for (size_t i = 0; i < b->n; i++) {
		long long d = 1;

		for (int j = 0; j < np; j++)
			if (strcmp(p[j].id, b->entries[i].id) == 0)
				d = p[j].deliveries;
		if (d > limit) {
			times[nbad] = d;
			bad[nbad++] = b->entries[i];
		} else
			ok[nok++] = b->entries[i];
	}
	if (nbad > 0)
		poison(w, bad, times, nbad);
	if (nok > 0)
		process(w, ok, nok);
	free(ok);
	free(bad);
	free(times);
}

/*
 * Step 1: our own pending list, left by the process that had our consumer
 * name before us. XPENDING tells how often each entry was delivered, and
 * nothing is read with XREADGROUP, which would count a delivery for the
 * whole page. Entries delivered once are processed in batches; entries
 * delivered before (their worker died on them, perhaps) one at a time, so
 * an entry that kills its worker is the only one whose count keeps
 * rising until it reaches max_deliveries and is dead-lettered as poison.
 */
static void
recover_step(struct worker *w)
{
	const char **ids;
	struct stream_batch b;
	struct stream_pending *picked;
	struct stream_ids gone;
	size_t k = 0;
	int n;

	if (w->npage == 0) {
		free(w->page);
		w->page = NULL;
		n = stream_pending_own(w->stream, w->page_after, "+",
		    w->cfg->batch_size * 4, &w->page);
		if (n < 0) {
			redis_trouble(w, n);
			return;
		}
		if (n == 0) {
			w->recovering = false;	/* drained: read new entries */
			return;
		}
		w->npage = n;
		snprintf(w->page_after, sizeof(w->page_after), "(%s",
		    w->page[n - 1].id);
	}
	ids = xcalloc((size_t)w->npage, sizeof(*ids));
	picked = xcalloc((size_t)w->npage, sizeof(*picked));
	gone.ids = xcalloc((size_t)w->npage, sizeof(*gone.ids));
	gone.n = 0;
	/* Poison, and the once-delivered, up to a batch. */
	for (int i = 0; i < w->npage; i++) {
		struct stream_pending *p = &w->page[i];

		if (p->deliveries < 0)		/* taken already */
			continue;
		if (p->deliveries >= w->cfg->max_deliveries ||
		    (p->deliveries <= 1 && k < (size_t)w->cfg->batch_size)) {
			picked[k] = *p;
			ids[k++] = p->id;
			p->deliveries = -1;
		}
	}
	/* None of those: one suspect, alone. */
	for (int i = 0; k == 0 && i < w->npage; i++) {
		if (w->page[i].deliveries < 0)
			continue;
		picked[k] = w->page[i];
		ids[k++] = w->page[i].id;
		w->page[i].deliveries = -1;
	}
	if (k == 0) {
		w->npage = 0;		/* page done: next one */
		goto out;
	}
	/* Counted as a delivery now, so a crash in this round counts. */
	if ((n = stream_claim(w->stream, ids, k, &b)) < 0) {
		for (int i = 0; i < w->npage; i++)	/* redo the page */
			for (size_t j = 0; j < k; j++)
				if (strcmp(w->page[i].id, picked[j].id) == 0)
					w->page[i].deliveries =
					    picked[j].deliveries;
		redis_trouble(w, n);
		goto out;
	}
	/*
	 * Redis drops ids deleted from the stream from the pending list. An
	 * id can also be missing because another consumer's sweeper took it
	 * and acknowledged it meanwhile: only an entry no longer in the
	 * stream is lost.
	 */
	for (size_t j = 0; j < k; j++) {
		bool found = false;

		for (size_t i = 0; i < b.n && !found; i++)
			found = strcmp(b.entries[i].id, picked[j].id) == 0;
		if (!found && stream_entry_exists(w->stream, picked[j].id) == 0)
			gone.ids[gone.n++] = picked[j].id;
	}
	lost(w, &gone);
	if (n > 0) {
		/* Delivered once more by the claim: count it as such. */
		for (size_t j = 0; j < k; j++)
			picked[j].deliveries++;
		triage(w, &b, picked, (int)k, w->cfg->max_deliveries);
	}
	stream_batch_free(&b);
out:
	free(gone.ids);		/* the strings belong to picked */
	free(ids);
	free(picked);
}

/*
 * One XAUTOCLAIM page: entries another consumer left idle for
 * claim_idle_ms (it died, hangs, or its slot is gone) become ours and go
 * through the normal round; the ledger decides whether they are still
 * owed. Entries we hold ourselves are only kept, not processed twice.
 */
static void
sweep_step(struct worker *w)
{
	struct stream_batch b, mine;
	struct stream_ids deleted;
	struct stream_pending *p = NULL;
	char next[48], nbuf[24];
	int n, np = 0;

	n = stream_autoclaim(w->stream, w->sweep_cursor, w->cfg->batch_size,
	    &b, next, sizeof(next), &deleted);
	if (n < 0) {
		w->sweeping = false;
		redis_trouble(w, n);
		return;
	}
	lost(w, &deleted);
	stream_ids_free(&deleted);
	memset(&mine, 0, sizeof(mine));
	mine.entries = xcalloc(b.n + 1, sizeof(*mine.entries));
	for (size_t i = 0; i < b.n; i++)
		if (find_held(w, b.entries[i].id) == NULL)
			mine.entries[mine.n++] = b.entries[i];
	if (mine.n > 0) {
		w->m->reclaimed += mine.n;
		snprintf(nbuf, sizeof(nbuf), "%zu", mine.n);
		log_event(LOG_INFO, "entries_reclaimed", "count", nbuf,
		    "first_id", mine.entries[0].id,
		    "last_id", mine.entries[mine.n - 1].id,
		    "consumer", w->consumer, (const char *)NULL);
		/* Our held entries may lie in between: count them in. */
		np = stream_pending_own(w->stream, mine.entries[0].id,
		    mine.entries[mine.n - 1].id, (int)(b.n + w->nheld) + 16,
		    &p);
		triage(w, &mine, p, np > 0 ? np : 0, w->cfg->max_deliveries);
	}
	free(mine.entries);
	free(p);
	stream_batch_free(&b);
	strlcpy_s(w->sweep_cursor, next, sizeof(w->sweep_cursor));
	if (strcmp(next, "0-0") == 0)
		w->sweeping = false;
}

/*
 * Consumers of slots that no longer exist (fewer workers now) are removed
 * once their pending list is empty, which the sweepers see to. Only slot 1
 * does this, and only for names of our own <consumer_name>-<slot> form.
 */
static void
retire_consumers(struct worker *w)
{
	struct stream_consumer *c;
	size_t plen = strlen(w->cfg->consumer_name);
	int n;

	if (w->opts->slot != 1 || w->opts->workers == NULL)
		return;
	if ((n = stream_consumers(w->stream, &c)) < 0) {
		redis_trouble(w, n);
		return;
	}
	for (int i = 0; i < n; i++) {
		const char *name = c[i].name, *p;
		long slot;

		if (strncmp(name, w->cfg->consumer_name, plen) != 0 ||
		    name[plen] != '-' || !isdigit((unsigned char)name[plen + 1]))
			continue;
		for (p = name + plen + 1; isdigit((unsigned char)*p); p++)
			;
		slot = strtol(name + plen + 1, NULL, 10);
		if (*p != '\0' || slot <= *w->opts->workers ||
		    c[i].pending != 0 || c[i].idle_ms < w->cfg->claim_idle_ms)
			continue;
		if (stream_remove_consumer(w->stream, name) == 1)
			log_event(LOG_INFO, "consumer_removed", "name", name,
			    "reason", "slot_gone", (const char *)NULL);
	}
	stream_consumers_free(c, n);
}

/*
 * Keeps our claim on held entries fresh (XCLAIM ... JUSTID to ourselves)
 * so no sweeper takes an entry that only waits for its retry. Only
 * entries still in our own pending list are touched: one another consumer
 * took meanwhile is not taken back.
 */
static void
touch(struct worker *w)
{
	struct stream_pending *p;
	const char **ids;
	size_t k = 0;
	int n;

	if (w->nheld == 0)
		return;
	/*
	 * Our pending list is at most what we hold, one round, and what a
	 * predecessor left (bounded the same way) not yet recovered.
	 */
	n = stream_pending_own(w->stream, "-", "+", (int)(w->nheld +
	    w->held_max) + 2 * w->cfg->batch_size + 64, &p);
	if (n < 0) {
		redis_trouble(w, n);
		return;
	}
	ids = xcalloc(w->nheld, sizeof(*ids));
	for (int i = 0; i < n; i++) {
		const struct held *h = find_held(w, p[i].id);

		if (h != NULL)
			ids[k++] = h->entry->id;
	}
	if (k > 0 && (n = stream_touch(w->stream, ids, k)) < 0)
		redis_trouble(w, n);
	free(ids);
	free(p);
}

/* A connection that was lost is back: say so and count it. */
static void
restored(struct worker *w, bool *lost, const char *service,
    uint64_t *reconnects)
{
	if (!*lost)
		return;
	*lost = false;
	(*reconnects)++;
	log_event(LOG_INFO, "connection_restored", "service", service,
	    "consumer", w->consumer, (const char *)NULL);
}

static int
connect_all(struct worker *w)
{
	static bool migrated;
	int r;

	if (!stream_connected(w->stream)) {
		if (stream_connect(w->stream) == -1)
			return -1;
		restored(w, &w->redis_lost, "redis", &w->m->redis_reconnects);
	}
	w->redis_lost = false;
	if (!ledger_connected(w->ledger)) {
		if (ledger_connect(w->ledger) == -1) {
			w->ledger_lost = true;
			return -1;
		}
		restored(w, &w->ledger_lost, "postgresql",
		    &w->m->postgres_reconnects);
	}
	w->ledger_lost = false;
	/* Every worker migrates once; the advisory lock serialises them. */
	if (!migrated) {
		if (ledger_migrate(w->ledger) < 0)
			return -1;
		migrated = true;
	}
	/* The group is created once; NOGROUP later means it vanished. */
	/* Re-created (it vanished): all of the new stream is ours to read. */
	if ((r = stream_create_group(w->stream, w->group_seen ||
	    w->cfg->process_backlog)) < 0)
		return -1;
	if (r == 1 && w->group_seen)
		/* Redis came back without it (no persistence), or a DEL. */
		log_event(LOG_WARN, "group_recreated",
		    "stream", w->cfg->source_stream,
		    "group", w->cfg->consumer_group,
		    "result", "ok", (const char *)NULL);
	else if (r == 1)
		log_event(LOG_INFO, "group_created",
		    "stream", w->cfg->source_stream,
		    "group", w->cfg->consumer_group,
		    "start", w->cfg->process_backlog ? "0" : "$",
		    (const char *)NULL);
	w->group_seen = true;
	return stream_create_consumer(w->stream) == 0 ? 0 : -1;
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

/*
 * Slot 1 polls the group's figures for the master's /metrics and /readyz
 * once a second, and warns (at most every ten minutes) when the group
 * lags by more than lag_alert_threshold, or when entries wait but nothing
 * was consumed for idle_alert_minutes.
 */
static void
poll_group(struct worker *w, long long now)
{
	const struct config *cfg = w->cfg;
	struct metrics_group *g = &w->shm->group;
	struct stream_group_info gi;
	long long last = 0, wall = now_wall_ms();
	char lag[24], n[24];

	if (w->opts->slot != 1 || now < w->next_poll_ms)
		return;
	w->next_poll_ms = now + 1000;
	if (stream_group_info(w->stream, &gi) < 0) {
		g->redis_ok = 0;
		return;		/* the worker's own reads notice it too */
	}
	g->lag = gi.lag;
	g->pending = gi.pending;
	g->stream_length = gi.length;
	g->dead_letter_length = gi.dead_letter_length;
	g->group_ok = gi.group_exists;
	g->redis_ok = 1;
	g->polled_ms = wall;

	snprintf(lag, sizeof(lag), "%lld", gi.lag);
	if (cfg->lag_alert_threshold > 0 && gi.lag > cfg->lag_alert_threshold &&
	    (w->lag_warned_ms == 0 || now - w->lag_warned_ms >= 600000)) {
		w->lag_warned_ms = now;
		snprintf(n, sizeof(n), "%ld", cfg->lag_alert_threshold);
		log_event(LOG_WARN, "lag_alert", "lag", lag, "threshold", n,
		    "group", cfg->consumer_group, (const char *)NULL);
	}
	/*
	 * Idle: entries wait (lag > 0) and nothing was consumed since they
	 * began to wait, or since the last event, whichever is later.
	 */
	if (gi.lag <= 0) {
		w->idle_since_ms = 0;
		return;
	}
	if (w->idle_since_ms == 0)
		w->idle_since_ms = wall;
	for (int i = 1; i < METRICS_SLOTS; i++)
		if (w->shm->slot[i].last_event_ms > last)
			last = w->shm->slot[i].last_event_ms;
	if (last < w->idle_since_ms)
		last = w->idle_since_ms;
	if (cfg->idle_alert_minutes > 0 && wall - last >=
	    (long long)cfg->idle_alert_minutes * 60000 &&
	    (w->idle_warned_ms == 0 || now - w->idle_warned_ms >= 600000)) {
		w->idle_warned_ms = now;
		snprintf(n, sizeof(n), "%d", cfg->idle_alert_minutes);
		log_event(LOG_WARN, "idle_alert", "lag", lag, "minutes", n,
		    "group", cfg->consumer_group, (const char *)NULL);
	}
}

/* Held entries due now (one probe when half open): a round of their own. */
static bool
run_due(struct worker *w, long long now)
{
	struct stream_entry **due, *batch;
	bool probe = w->circuit.state == CIRCUIT_HALF_OPEN;
	size_t k;

	if (w->nheld == 0 || w->circuit.state == CIRCUIT_OPEN)
		return false;
	due = xcalloc((size_t)w->cfg->batch_size, sizeof(*due));
	k = take_due(w, now, (size_t)w->cfg->batch_size, probe, due);
	if (k > 0) {
		batch = xcalloc(k, sizeof(*batch));
		for (size_t i = 0; i < k; i++)
			batch[i] = *due[i];
		process(w, batch, k);
		free(batch);
		for (size_t i = 0; i < k; i++)
			free(due[i]);
	}
	free(due);
	return k > 0;
}

/* An open circuit whose time is up lets one probe through. */
static void
circuit_tick(struct worker *w, long long now)
{
	if (w->circuit.state != CIRCUIT_OPEN || now < w->circuit.until_ms)
		return;
	circuit_set(w, CIRCUIT_HALF_OPEN);
	log_event(LOG_INFO, "circuit_half_open", "consumer", w->consumer,
	    (const char *)NULL);
}

/* How long the next blocking read may wait, in ms; -1: do not block. */
static int
read_block_ms(const struct worker *w, long long now)
{
	long long block = w->cfg->poll_interval_ms, due;

	if ((due = next_due(w)) >= 0 && due - now < block)
		block = due - now;
	if (w->next_touch_ms - now < block && w->nheld > 0)
		block = w->next_touch_ms - now;
	if (w->next_sweep_ms - now < block)
		block = w->next_sweep_ms - now;
	return block <= 0 ? -1 : (int)block;	/* BLOCK 0 would wait forever */
}

/* What every worker starts with; it owns consumer from here on. */
static void
worker_init(struct worker *w, const struct config *cfg,
    const struct worker_opts *opts, char *consumer, struct metrics_slot *m)
{
	memset(w, 0, sizeof(*w));
	w->cfg = cfg;
	w->opts = opts;
	w->consumer = consumer;
	w->stream = stream_new(cfg, w->consumer);
	w->ledger = ledger_new(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group, w->consumer, cfg->source_stream);
	w->trigger = trigger_new(cfg);
	trigger_on_tick(w->trigger, beat_tick, w);
	w->docquery = docquery_new();	/* connects on first use */
	if ((w->no_documents = cJSON_CreateArray()) == NULL)
		fatalx("worker: out of memory");
	w->m = m;
	circuit_set(w, CIRCUIT_CLOSED);
	w->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)now_wall_ms() ^
	    0x9e3779b97f4a7c15ULL;
}

/* Everything worker_init() and the rounds since gave the worker. */
static void
worker_release(struct worker *w)
{
	for (size_t i = 0; i < w->nheld; i++)
		free(w->held[i].entry);
	free(w->held);
	free(w->file_waits);
	free(w->page);
	stream_free(w->stream);
	ledger_free(w->ledger);
	trigger_free(w->trigger);
	docquery_free(w->docquery);
	cJSON_Delete(w->no_documents);
	strset_free(&w->dead_known);
	stream_ids_free(&w->dead_ids);
	free(w->consumer);
}

int
worker_run(const struct config *cfg, const struct worker_opts *opts)
{
	struct worker w;
	struct stream_batch batch;
	bool connected = false, ever_connected = false;
	long long now, touch_every;
	long left;
	char pend[24];
	int n, code = 0;

	worker_init(&w, cfg, opts, worker_consumer_name(cfg, opts->slot),
	    opts->metrics != NULL ? &opts->metrics->slot[opts->slot] :
	    &unsupervised);
	w.shm = opts->metrics;
	w.held_max = (size_t)cfg->batch_size * 10 > 100 ?
	    (size_t)cfg->batch_size * 10 : 100;
	w.recovering = true;		/* step 1: own pending list first */
	/* process_backlog: history older than the age limit is expired. */
	if (cfg->process_backlog && cfg->backlog_max_age_hours > 0)
		w.expire_before_ms = now_wall_ms() -
		    (long long)(cfg->backlog_max_age_hours * 3600000.0);
	strlcpy_s(w.page_after, "-", sizeof(w.page_after));
	touch_every = cfg->claim_idle_ms / 3 > 100 ? cfg->claim_idle_ms / 3 : 100;
	w.next_touch_ms = now_mono_ms() + touch_every;
	w.next_sweep_ms = now_mono_ms() + cfg->claim_interval_ms;

	log_event(LOG_INFO, "worker_started", "consumer", w.consumer,
	    "stream", cfg->source_stream, "group", cfg->consumer_group,
	    (const char *)NULL);
	while (!*opts->stop) {
		beat(&w);
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
			if (*opts->stop)
				break;
		}
		if (!connected || !stream_connected(w.stream) ||
		    !ledger_connected(w.ledger)) {
			if (connect_all(&w) == -1) {
				/*
				 * Supervised, a worker that never connected
				 * exits: the master's backoff and crash-loop
				 * brake handle a server that is not there. A
				 * drain run has no one to wait for it: it says
				 * why and exits 1 too.
				 */
				if ((opts->shm != NULL || opts->drain) &&
				    !ever_connected) {
					code = EXIT_CONNECT;
					break;
				}
				w.m->redis_up = stream_connected(w.stream);
				w.m->postgres_up = ledger_connected(w.ledger);
				trouble(&w);
				continue;
			}
			connected = true;
			ever_connected = true;
			if (opts->shm != NULL)
				opts->shm->connected = 1;
		}
		w.m->redis_up = stream_connected(w.stream);
		w.m->postgres_up = ledger_connected(w.ledger);
		now = now_mono_ms();
		if (w.shm != NULL)
			poll_group(&w, now);
		if (now >= w.next_touch_ms) {
			touch(&w);
			w.next_touch_ms = now + touch_every;
		}
		circuit_tick(&w, now);
		/* Step 1 sends requests too: not through an open circuit. */
		if (w.recovering && (w.circuit.state == CIRCUIT_CLOSED ||
		    (w.circuit.state == CIRCUIT_HALF_OPEN && w.nheld == 0))) {
			recover_step(&w);
			continue;
		}
		if (w.sweeping || (now >= w.next_sweep_ms &&
		    w.circuit.state == CIRCUIT_CLOSED)) {
			if (!w.sweeping) {
				w.sweeping = true;
				strlcpy_s(w.sweep_cursor, "0-0",
				    sizeof(w.sweep_cursor));
			}
			sweep_step(&w);
			if (!w.sweeping) {
				retire_consumers(&w);
				w.next_sweep_ms = now_mono_ms() +
				    cfg->claim_interval_ms;
			}
			continue;
		}
		if (run_due(&w, now))
			continue;
		if (w.circuit.state == CIRCUIT_OPEN) {
			if (opts->drain)
				break;		/* an outage ends a drain run */
			nap(&w, w.circuit.until_ms - now < cfg->poll_interval_ms ?
			    w.circuit.until_ms - now : cfg->poll_interval_ms);
			continue;
		}
		if (w.nheld >= w.held_max || w.recovering ||
		    (w.circuit.state == CIRCUIT_HALF_OPEN && w.nheld > 0)) {
			/* Back-pressure: finish what is held first. */
			n = read_block_ms(&w, now);
			nap(&w, n < 0 ? 1 : n);
			continue;
		}
		n = stream_read(w.stream, ">",
		    w.circuit.state == CIRCUIT_HALF_OPEN ? 1 : cfg->batch_size,
		    read_block_ms(&w, now), &batch);
		if (n < 0) {
			if (n != STREAM_NOGROUP)
				connected = false;
			redis_trouble(&w, n);
			continue;
		}
		w.backoff_ms = 0;
		if (n == 0) {
			stream_batch_free(&batch);
			if (opts->drain && w.nheld == 0)
				break;
			continue;
		}
		process(&w, batch.entries, batch.n);
		stream_batch_free(&batch);
	}

	left = stream_connected(w.stream) ? stream_pending_count(w.stream) : -1;
	if (opts->drain && left != 0 && code != EXIT_CONNECT)
		code = EXIT_PENDING;
	snprintf(pend, sizeof(pend), "%ld", left);
	log_event(LOG_INFO, "worker_stopped", "consumer", w.consumer,
	    "pending", left >= 0 ? pend : "unknown", (const char *)NULL);
	worker_release(&w);
	return code;
}

/*
 * process-backlog (backlog.c): entries read with XRANGE go through the
 * same round as the group's, but nothing is acknowledged (they were not
 * read through the group) and nothing is reclaimed or touched.
 */
struct worker *
worker_backlog_open(const struct config *cfg, const struct worker_opts *opts,
    long long expire_before_ms, bool dry_run)
{
	struct worker *w = xmalloc(sizeof(*w));

	worker_init(w, cfg, opts, xasprintf("%s-backlog", cfg->consumer_name),
	    opts->tally != NULL ? opts->tally : &unsupervised);
	w->expire_before_ms = expire_before_ms;
	w->backlog = true;
	w->dry_run = dry_run;
	return w;
}

struct stream *
worker_backlog_stream(struct worker *w)
{
	return w->stream;
}

struct ledger *
worker_backlog_ledger(struct worker *w)
{
	return w->ledger;
}

int
worker_backlog_connect(struct worker *w)
{
	if (stream_connect(w->stream) == -1 || ledger_connect(w->ledger) == -1)
		return -1;
	if (stream_dead_letter_sources(w->stream, &w->dead_ids) < 0)
		return -1;
	strset_init(&w->dead_known, w->dead_ids.n);
	for (size_t i = 0; i < w->dead_ids.n; i++)
		strset_add(&w->dead_known, w->dead_ids.ids[i]);
	if (w->dry_run)
		return 0;	/* a dry run creates nothing either */
	return ledger_migrate(w->ledger) < 0 ? -1 : 0;
}

/* --dry-run: what a round would do, written nowhere; printed to out. */
static void
dry_round(struct worker *w, const struct stream_entry *entries, size_t n,
    FILE *out)
{
	struct item *items = xcalloc(n, sizeof(*items));

	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		struct ledger_doc *docs;
		size_t nd;

		it->entry = &entries[i];
		it->res.retry_after_s = -1;
		prepare(w, it);
		load_documents(w, it);
		if (it->fate == FATE_DEAD && strset_has(&w->dead_known,
		    it->entry->id)) {
			fprintf(out, "already dead-lettered %s: %s\n",
			    it->entry->id, it->reason);
			ack(it, "event_already_dead_lettered", it->reason);
			w->dead_again++;
		} else if (it->fate == FATE_DEAD) {
			fprintf(out, "would dead-letter %s: %s: %s\n",
			    it->entry->id, it->reason, it->detail);
		} else if (it->fate == FATE_NOTE) {
			fprintf(out, "would record %s %s as %s\n",
			    it->entry->id, it->doc.document_id,
			    ledger_status_name(it->doc.status));
			it->outcome = it->doc.status == LEDGER_EXPIRED ?
			    "event_expired" : "event_observed";
		} else if (it->fate == FATE_CLAIM) {
			docs = it->batch ? it->docs : &it->doc;
			nd = it->batch ? it->file.n : 1;
			if (ledger_peek(w->ledger, docs, nd,
			    w->cfg->deduplication_ttl_hours,
			    w->cfg->check_already_processed) == -1) {
				fprintf(out, "cannot tell %s %s: the ledger did "
				    "not answer\n", it->entry->id,
				    it->doc.document_id);
				item_clear(it);
				continue;
			}
			it->nowned = 0;
			for (size_t j = 0; j < nd; j++)
				if (docs[j].claim == LEDGER_OWNED)
					it->nowned++;
			if (it->nowned > 0 && it->expire) {
				ack(it, "event_expired",
				    "older_than_backlog_max_age");
				fprintf(out, "would record %s %s as expired\n",
				    it->entry->id, it->doc.document_id);
			} else if (it->nowned == 0) {
				ack(it, "event_duplicate", "already_done");
				fprintf(out, "would skip %s %s (%s)\n",
				    it->entry->id, it->doc.document_id,
				    docs[0].prev_status[0] ?
				    docs[0].prev_status : "busy");
			} else {
				ack(it, "event_triggered", NULL);
				fprintf(out, "would trigger %s %s %s %s",
				    it->entry->id, it->doc.document_id,
				    it->req.method, it->req.url);
				if (it->batch)
					fprintf(out, " (%zu of %zu documents)",
					    it->nowned, nd);
				fputc('\n', out);
			}
		}
		count(w, it);
		item_clear(it);
	}
	free(items);
}

void
worker_backlog_round(struct worker *w, const struct stream_entry *entries,
    size_t n, FILE *out)
{
	long long now;

	/* An open circuit: no new requests until it lets a probe through. */
	while (w->circuit.state == CIRCUIT_OPEN && !*w->opts->stop) {
		now = now_mono_ms();
		nap(w, w->circuit.until_ms > now ? w->circuit.until_ms - now : 1);
		circuit_tick(w, now_mono_ms());
	}
	if (w->dry_run)
		dry_round(w, entries, n, out);
	else
		process(w, entries, n);
}

size_t
worker_backlog_settle(struct worker *w)
{
	long long now, due;

	while (w->nheld > 0 && !*w->opts->stop) {
		/* Redis or the ledger failed: back off before anything else. */
		if (w->trouble) {
			back_off(w);
			w->trouble = false;
			if (!stream_connected(w->stream))
				(void)stream_connect(w->stream);
			if (!ledger_connected(w->ledger))
				(void)ledger_connect(w->ledger);
			continue;
		}
		now = now_mono_ms();
		circuit_tick(w, now);
		if (run_due(w, now))
			continue;
		due = next_due(w);
		if (w->circuit.state == CIRCUIT_OPEN &&
		    w->circuit.until_ms > due)
			due = w->circuit.until_ms;
		nap(w, due > now ? due - now : 1);
	}
	return w->nheld;
}

void
worker_backlog_close(struct worker *w)
{
	if (w == NULL)
		return;
	worker_release(w);
	free(w);
}

size_t
worker_backlog_dead_again(const struct worker *w)
{
	return w->dead_again;
}
