/*
 * status.c: `stagerelay status [--json] [--watch]`.
 *
 * Three parts, each read on its own so one that fails does not hide the
 * others: the daemon (its Prometheus exposition at metrics.listen), Redis
 * (the stream and the consumer group, directly) and the ledger (counts by
 * status, directly). A part that fails says why with the message the
 * module that failed logged: the log goes to a memory file while we run,
 * and the last warning of each part becomes its error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "status.h"
#include "stream.h"
#include "util.h"

#define SCRAPE_TIMEOUT_MS	2000
#define SCRAPE_MAX_BYTES	(8 * 1024 * 1024)
#define MAX_CIRCUITS		256
#define ERR_MAX			1024

/* Ledger statuses, in the order shown (the table's CHECK constraint). */
static const char *const ledger_statuses[] = {
	"claimed", "triggered", "failed", "dead", "observed", "expired"
};
#define NSTATUSES (sizeof(ledger_statuses) / sizeof(ledger_statuses[0]))

/* Outcomes that count as handled events for events/s. */
static const enum metrics_outcome rate_outcomes[] = {
	MO_TRIGGERED, MO_DUPLICATE, MO_FILTERED, MO_INVALID, MO_DEAD
};

struct daemon_part {
	bool		 enabled;	/* metrics.listen is set */
	bool		 ok;
	char		 url[320];
	char		 err[ERR_MAX];
	char		 version[64];
	long long	 alive, wanted, restarts;	/* -1: not exposed */
	long long	 retries, reclaimed;
	long long	 events[MO_COUNT];
	long long	 dead[MR_COUNT];
	int		 ncircuits;
	int		 circuit_worker[MAX_CIRCUITS];
	int		 circuit_state[MAX_CIRCUITS];
	double		 rate;		/* events/s; NAN: unknown */
};

struct redis_part {
	bool			 ok;
	char			 err[ERR_MAX];
	struct stream_group_info gi;
	struct stream_consumer	*consumers;
	int			 nconsumers;
};

struct ledger_part {
	bool		 ok;
	char		 err[ERR_MAX];
	char		 where[256];
	long long	 count[NSTATUSES];
};

struct snapshot {
	long long		 wall_ms;
	struct daemon_part	 d;
	struct redis_part	 r;
	struct ledger_part	 l;
};

struct status {
	const struct config	*cfg;
	const struct status_opts *opts;
	struct stream		*stream;
	struct ledger		*ledger;
	CURL			*curl;
	char			 last_warning[ERR_MAX];	/* see on_log() */
	/* The previous scrape, for events/s. */
	bool			 have_prev;
	long long		 prev_total;
	long long		 prev_mono_ms;
};

static volatile sig_atomic_t quit;

static void
on_signal(int sig)
{
	(void)sig;
	quit = 1;
}

/* ---- the modules' warnings, captured ------------------------------------ */

/*
 * A failing module's own message ("redis: cannot connect to
 * 127.0.0.1:6379: Connection refused") becomes its part's error; the lines
 * reach stderr only with -v.
 */
static bool
on_log(void *arg, enum log_level level, const char *msg)
{
	struct status *st = arg;

	if (level >= LOG_WARN)
		strlcpy_s(st->last_warning, msg, sizeof(st->last_warning));
	return !st->opts->verbose;
}

/* The last warning since the previous call, if any, goes to why. */
static void
capture_take(struct status *st, char *why, size_t len)
{
	if (why != NULL && len > 0)
		strlcpy_s(why, st->last_warning, len);
	st->last_warning[0] = '\0';
}

/* ---- the daemon: its exposition ----------------------------------------- */

/* http://host:port/metrics for metrics.listen; wildcards mean loopback. */
static void
metrics_url(const char *listen, char *url, size_t len)
{
	const char *colon = strrchr(listen, ':');
	size_t hostlen = colon != NULL ? (size_t)(colon - listen) : 0;
	const char *host = listen;

	if (colon == NULL) {
		snprintf(url, len, "http://%s/metrics", listen);
		return;
	}
	if (hostlen == 0 || (hostlen == 7 && strncmp(listen, "0.0.0.0", 7) == 0))
		host = "127.0.0.1", hostlen = 9;
	else if (hostlen == 4 && strncmp(listen, "[::]", 4) == 0)
		host = "[::1]", hostlen = 5;
	snprintf(url, len, "http://%.*s%s/metrics", (int)hostlen, host, colon);
}

static size_t
on_body(char *p, size_t size, size_t nmemb, void *arg)
{
	struct buf *b = arg;
	size_t n = size * nmemb;

	if (b->len + n > SCRAPE_MAX_BYTES)
		return 0;
	buf_append(b, p, n);
	return n;
}

/* One sample of the exposition: name{k="v",...} value. */
struct sample {
	char	 name[128];
	char	 labels[4][2][128];	/* key, unescaped value */
	int	 nlabels;
	double	 value;
};

/* Parses one sample line; false for anything else. */
static bool
parse_sample(const char *line, struct sample *s)
{
	const char *p = line;
	size_t n = 0;
	char *end;

	memset(s, 0, sizeof(*s));
	while (*p != '\0' && *p != '{' && *p != ' ' && n + 1 < sizeof(s->name))
		s->name[n++] = *p++;
	if (n == 0)
		return false;
	if (*p == '{') {
		p++;
		while (*p != '}') {
			char *k, *v;
			size_t kn = 0, vn = 0;

			if (s->nlabels == 4)
				return false;
			k = s->labels[s->nlabels][0];
			v = s->labels[s->nlabels][1];
			while (*p != '\0' && *p != '=' && kn + 1 < 128)
				k[kn++] = *p++;
			if (*p++ != '=' || *p++ != '"')
				return false;
			for (; *p != '\0' && *p != '"'; p++) {
				if (*p == '\\' && p[1] != '\0') {
					p++;
					if (vn + 1 < 128)
						v[vn++] = *p == 'n' ? '\n' : *p;
				} else if (vn + 1 < 128)
					v[vn++] = *p;
			}
			if (*p++ != '"')
				return false;
			s->nlabels++;
			if (*p == ',')
				p++;
			else if (*p != '}')
				return false;
		}
		p++;
	}
	if (*p++ != ' ')
		return false;
	s->value = strtod(p, &end);
	return end != p;
}

static const char *
label(const struct sample *s, const char *key)
{
	for (int i = 0; i < s->nlabels; i++)
		if (strcmp(s->labels[i][0], key) == 0)
			return s->labels[i][1];
	return NULL;
}

static void
daemon_read(struct daemon_part *d, const char *text)
{
	struct sample s;
	const char *line, *v;
	char *copy, *next;
	long long val;
	size_t i;

	copy = xstrdup(text);
	for (line = copy; line != NULL && *line != '\0'; line = next) {
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (*line == '#' || !parse_sample(line, &s))
			continue;
		val = isfinite(s.value) ? (long long)s.value : -1;
		if (strcmp(s.name, "stagerelay_events_total") == 0) {
			if ((v = label(&s, "outcome")) == NULL)
				continue;
			for (i = 0; i < MO_COUNT; i++)
				if (strcmp(v, metrics_outcome_name(i)) == 0)
					d->events[i] += val;
		} else if (strcmp(s.name, "stagerelay_dead_letters_total") == 0) {
			if ((v = label(&s, "reason")) == NULL)
				continue;
			for (i = 0; i < MR_COUNT; i++)
				if (strcmp(v, metrics_reason_name(i)) == 0)
					d->dead[i] += val;
		} else if (strcmp(s.name, "stagerelay_retries_total") == 0)
			d->retries = val;
		else if (strcmp(s.name, "stagerelay_reclaimed_entries_total") == 0)
			d->reclaimed = val;
		else if (strcmp(s.name, "stagerelay_workers_alive") == 0)
			d->alive = val;
		else if (strcmp(s.name, "stagerelay_workers_wanted") == 0)
			d->wanted = val;
		else if (strcmp(s.name, "stagerelay_worker_restarts_total") == 0)
			d->restarts = val;
		else if (strcmp(s.name, "stagerelay_circuit_state") == 0) {
			if ((v = label(&s, "worker")) == NULL ||
			    d->ncircuits == MAX_CIRCUITS)
				continue;
			d->circuit_worker[d->ncircuits] = atoi(v);
			d->circuit_state[d->ncircuits++] = (int)val;
		} else if (strcmp(s.name, "stagerelay_build_info") == 0 &&
		    (v = label(&s, "version")) != NULL)
			strlcpy_s(d->version, v, sizeof(d->version));
	}
	free(copy);
}

static void
daemon_scrape(struct status *st, struct daemon_part *d)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	struct buf body;
	CURLcode rc;
	long code = 0;
	size_t i;

	d->alive = d->wanted = d->restarts = d->retries = d->reclaimed = -1;
	d->rate = NAN;
	if (st->cfg->metrics.listen == NULL || *st->cfg->metrics.listen == '\0') {
		snprintf(d->err, sizeof(d->err), "daemon: metrics endpoint "
		    "disabled (metrics.listen is \"\")");
		return;
	}
	d->enabled = true;
	metrics_url(st->cfg->metrics.listen, d->url, sizeof(d->url));
	if (st->curl == NULL && (st->curl = curl_easy_init()) == NULL) {
		snprintf(d->err, sizeof(d->err), "daemon: curl_easy_init failed");
		return;
	}
	buf_init(&body);
	curl_easy_reset(st->curl);
	curl_easy_setopt(st->curl, CURLOPT_URL, d->url);
	curl_easy_setopt(st->curl, CURLOPT_TIMEOUT_MS, (long)SCRAPE_TIMEOUT_MS);
	curl_easy_setopt(st->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(st->curl, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(st->curl, CURLOPT_PROTOCOLS_STR, "http");
	curl_easy_setopt(st->curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(st->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(st->curl, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(st->curl, CURLOPT_USERAGENT,
	    "stagerelay-status/" PACKAGE_VERSION);
	rc = curl_easy_perform(st->curl);
	if (rc != CURLE_OK) {
		snprintf(d->err, sizeof(d->err), "daemon: cannot reach %s: %s",
		    d->url, *errbuf ? errbuf : curl_easy_strerror(rc));
		goto out;
	}
	curl_easy_getinfo(st->curl, CURLINFO_RESPONSE_CODE, &code);
	if (code != 200) {
		snprintf(d->err, sizeof(d->err), "daemon: GET %s: HTTP %ld",
		    d->url, code);
		goto out;
	}
	for (i = 0; i < MO_COUNT; i++)
		d->events[i] = 0;
	for (i = 0; i < MR_COUNT; i++)
		d->dead[i] = 0;
	daemon_read(d, body.data != NULL ? body.data : "");
	d->ok = true;
out:
	buf_free(&body);
}

/* events/s from the previous scrape (watch mode only). */
static void
daemon_rate(struct status *st, struct daemon_part *d)
{
	long long total = 0, now = now_mono_ms();
	size_t i;

	if (!d->ok) {
		st->have_prev = false;
		return;
	}
	for (i = 0; i < sizeof(rate_outcomes) / sizeof(rate_outcomes[0]); i++)
		total += d->events[rate_outcomes[i]];
	/* A counter going back: the master restarted; start over. */
	if (st->have_prev && total >= st->prev_total && now > st->prev_mono_ms)
		d->rate = (double)(total - st->prev_total) * 1000.0 /
		    (double)(now - st->prev_mono_ms);
	st->have_prev = true;
	st->prev_total = total;
	st->prev_mono_ms = now;
}

/* ---- Redis and the ledger, directly ------------------------------------- */

static void
redis_read(struct status *st, struct redis_part *r)
{
	int n;

	r->gi.lag = r->gi.pending = r->gi.length = -1;
	r->gi.dead_letter_length = -1;
	if (!stream_connected(st->stream) && stream_connect(st->stream) == -1)
		goto fail;
	if (stream_group_info(st->stream, &r->gi) != 0)
		goto fail;
	if (r->gi.group_exists) {
		if ((n = stream_consumers(st->stream, &r->consumers)) < 0) {
			r->consumers = NULL;
			if (n != STREAM_NOGROUP)
				goto fail;
			n = 0;
		}
		r->nconsumers = n;
	}
	r->ok = true;
	capture_take(st, NULL, 0);
	return;
fail:
	capture_take(st, r->err, sizeof(r->err));
	if (r->err[0] == '\0')
		snprintf(r->err, sizeof(r->err), "redis: %s:%d: request failed",
		    st->cfg->redis_host, st->cfg->redis_port);
}

static void
ledger_read(struct status *st, struct ledger_part *l)
{
	struct ledger_count *c;
	int n;

	n = ledger_counts(st->ledger, STATUS_LEDGER_MINUTES, &c, l->where,
	    sizeof(l->where));
	if (n < 0) {
		capture_take(st, l->err, sizeof(l->err));
		if (l->err[0] == '\0')
			snprintf(l->err, sizeof(l->err), "ledger: %s: query "
			    "failed", l->where);
		return;
	}
	for (int i = 0; i < n; i++)
		for (size_t k = 0; k < NSTATUSES; k++)
			if (strcmp(c[i].status, ledger_statuses[k]) == 0)
				l->count[k] = c[i].documents;
	free(c);
	l->ok = true;
	capture_take(st, NULL, 0);
}

static void
snapshot_take(struct status *st, struct snapshot *s)
{
	memset(s, 0, sizeof(*s));
	s->wall_ms = now_wall_ms();
	daemon_scrape(st, &s->d);
	if (st->opts->watch)
		daemon_rate(st, &s->d);
	redis_read(st, &s->r);
	ledger_read(st, &s->l);
}

static void
snapshot_free(struct snapshot *s)
{
	stream_consumers_free(s->r.consumers, s->r.nconsumers);
	s->r.consumers = NULL;
}

/* Every part answered; a disabled endpoint is nothing to answer. */
static bool
snapshot_ok(const struct snapshot *s)
{
	return (s->d.ok || !s->d.enabled) && s->r.ok && s->l.ok;
}

/* ---- rendering ---------------------------------------------------------- */

static const char *
circuit_name(int state)
{
	switch (state) {
	case 0:
		return "closed";
	case 1:
		return "open";
	case 2:
		return "half-open";
	default:
		return "unknown";
	}
}

static cJSON *
num_or_null(long long v)
{
	return v < 0 ? cJSON_CreateNull() : cJSON_CreateNumber((double)v);
}

static cJSON *
str_or_null(const char *s)
{
	return s != NULL && *s != '\0' ? cJSON_CreateString(s) :
	    cJSON_CreateNull();
}

static cJSON *
json_daemon(const struct daemon_part *d)
{
	cJSON *o = cJSON_CreateObject(), *ev, *dl, *cs, *c;
	size_t i;

	cJSON_AddBoolToObject(o, "enabled", d->enabled);
	cJSON_AddItemToObject(o, "url", str_or_null(d->url));
	cJSON_AddBoolToObject(o, "reachable", d->ok);
	cJSON_AddItemToObject(o, "error", str_or_null(d->err));
	cJSON_AddItemToObject(o, "version", str_or_null(d->ok ? d->version :
	    NULL));
	cJSON_AddItemToObject(o, "workers_alive", num_or_null(d->ok ?
	    d->alive : -1));
	cJSON_AddItemToObject(o, "workers_wanted", num_or_null(d->ok ?
	    d->wanted : -1));
	cJSON_AddItemToObject(o, "worker_restarts", num_or_null(d->ok ?
	    d->restarts : -1));
	if (d->ok) {
		cs = cJSON_AddArrayToObject(o, "circuits");
		for (int k = 0; k < d->ncircuits; k++) {
			c = cJSON_CreateObject();
			cJSON_AddNumberToObject(c, "worker", d->circuit_worker[k]);
			cJSON_AddStringToObject(c, "state",
			    circuit_name(d->circuit_state[k]));
			cJSON_AddItemToArray(cs, c);
		}
		ev = cJSON_AddObjectToObject(o, "events");
		for (i = 0; i < MO_COUNT; i++)
			cJSON_AddNumberToObject(ev, metrics_outcome_name(i),
			    (double)d->events[i]);
		dl = cJSON_AddObjectToObject(o, "dead_letters");
		for (i = 0; i < MR_COUNT; i++)
			cJSON_AddNumberToObject(dl, metrics_reason_name(i),
			    (double)d->dead[i]);
	} else {
		cJSON_AddNullToObject(o, "circuits");
		cJSON_AddNullToObject(o, "events");
		cJSON_AddNullToObject(o, "dead_letters");
	}
	cJSON_AddItemToObject(o, "retries", num_or_null(d->ok ? d->retries :
	    -1));
	cJSON_AddItemToObject(o, "reclaimed", num_or_null(d->ok ?
	    d->reclaimed : -1));
	if (isnan(d->rate))
		cJSON_AddNullToObject(o, "events_per_second");
	else
		cJSON_AddNumberToObject(o, "events_per_second",
		    round(d->rate * 100.0) / 100.0);
	return o;
}

static cJSON *
json_redis(const struct config *cfg, const struct redis_part *r)
{
	cJSON *o = cJSON_CreateObject(), *cs, *c;
	char addr[300];

	snprintf(addr, sizeof(addr), "%s:%d", cfg->redis_host, cfg->redis_port);
	cJSON_AddStringToObject(o, "address", addr);
	cJSON_AddNumberToObject(o, "db", cfg->redis_db);
	cJSON_AddBoolToObject(o, "reachable", r->ok);
	cJSON_AddItemToObject(o, "error", str_or_null(r->err));
	cJSON_AddStringToObject(o, "stream", cfg->source_stream);
	cJSON_AddItemToObject(o, "stream_length", num_or_null(r->gi.length));
	cJSON_AddStringToObject(o, "dead_letter_stream", cfg->dead_letter_stream);
	cJSON_AddItemToObject(o, "dead_letter_length",
	    num_or_null(r->gi.dead_letter_length));
	cJSON_AddStringToObject(o, "group", cfg->consumer_group);
	if (r->ok)
		cJSON_AddBoolToObject(o, "group_exists", r->gi.group_exists);
	else
		cJSON_AddNullToObject(o, "group_exists");
	cJSON_AddItemToObject(o, "lag", num_or_null(r->ok ? r->gi.lag : -1));
	cJSON_AddItemToObject(o, "pending", num_or_null(r->ok ? r->gi.pending :
	    -1));
	if (!r->ok) {
		cJSON_AddNullToObject(o, "consumers");
		return o;
	}
	cs = cJSON_AddArrayToObject(o, "consumers");
	for (int i = 0; i < r->nconsumers; i++) {
		c = cJSON_CreateObject();
		cJSON_AddStringToObject(c, "name", r->consumers[i].name);
		cJSON_AddItemToObject(c, "pending",
		    num_or_null(r->consumers[i].pending));
		cJSON_AddItemToObject(c, "idle_ms",
		    num_or_null(r->consumers[i].idle_ms));
		cJSON_AddItemToArray(cs, c);
	}
	return o;
}

static cJSON *
json_ledger(const struct config *cfg, const struct ledger_part *l)
{
	cJSON *o = cJSON_CreateObject(), *c;

	cJSON_AddItemToObject(o, "database", str_or_null(l->where));
	cJSON_AddStringToObject(o, "schema", cfg->ledger.schema);
	cJSON_AddBoolToObject(o, "reachable", l->ok);
	cJSON_AddItemToObject(o, "error", str_or_null(l->err));
	cJSON_AddNumberToObject(o, "window_minutes", STATUS_LEDGER_MINUTES);
	if (!l->ok) {
		cJSON_AddNullToObject(o, "counts");
		return o;
	}
	c = cJSON_AddObjectToObject(o, "counts");
	for (size_t k = 0; k < NSTATUSES; k++)
		cJSON_AddNumberToObject(c, ledger_statuses[k],
		    (double)l->count[k]);
	return o;
}

static void
render_json(const struct config *cfg, const struct snapshot *s,
    struct buf *b)
{
	cJSON *o = cJSON_CreateObject();
	char ts[64], *text;

	format_utc_ms(ts, sizeof(ts), s->wall_ms);
	cJSON_AddStringToObject(o, "time", ts);
	cJSON_AddBoolToObject(o, "ok", snapshot_ok(s));
	cJSON_AddItemToObject(o, "daemon", json_daemon(&s->d));
	cJSON_AddItemToObject(o, "redis", json_redis(cfg, &s->r));
	cJSON_AddItemToObject(o, "ledger", json_ledger(cfg, &s->l));
	if ((text = cJSON_PrintUnformatted(o)) == NULL)
		fatalx("status: out of memory");
	buf_puts(b, text);
	buf_putc(b, '\n');
	free(text);
	cJSON_Delete(o);
}

/* "-" for unknown, else the number. */
static const char *
n_or_dash(char *tmp, size_t len, long long v)
{
	if (v < 0)
		return "-";
	snprintf(tmp, len, "%lld", v);
	return tmp;
}

static void
idle_text(char *out, size_t len, long long ms)
{
	if (ms < 0)
		snprintf(out, len, "-");
	else if (ms < 60000)
		snprintf(out, len, "%.1fs", (double)ms / 1000.0);
	else if (ms < 3600000)
		snprintf(out, len, "%lldm%02llds", ms / 60000, ms / 1000 % 60);
	else
		snprintf(out, len, "%lldh%02lldm", ms / 3600000,
		    ms / 60000 % 60);
}

#define ROW	"%-12s "	/* the label column */

static void
render_daemon(const struct daemon_part *d, bool watch, struct buf *b)
{
	char t1[32], t2[32], t3[32];
	bool any = false;
	size_t i;

	if (!d->enabled) {
		buf_printf(b, ROW "metrics endpoint disabled (metrics.listen is "
		    "\"\")\n", "daemon");
		return;
	}
	if (!d->ok) {
		buf_printf(b, ROW "unreachable: %s\n", "daemon", d->err);
		return;
	}
	buf_printf(b, ROW "up  %s  version %s\n", "daemon", d->url,
	    *d->version ? d->version : "-");
	buf_printf(b, ROW "%s/%s alive  restarts %s  circuits", "workers",
	    n_or_dash(t1, sizeof(t1), d->alive),
	    n_or_dash(t2, sizeof(t2), d->wanted),
	    n_or_dash(t3, sizeof(t3), d->restarts));
	for (int k = 0; k < d->ncircuits; k++)
		buf_printf(b, " %d:%s", d->circuit_worker[k],
		    circuit_name(d->circuit_state[k]));
	if (d->ncircuits == 0)
		buf_puts(b, " -");
	buf_putc(b, '\n');
	buf_printf(b, ROW, "events");
	for (i = 0; i < MO_COUNT; i++)
		buf_printf(b, "%s%s %lld", i ? "  " : "",
		    metrics_outcome_name(i), d->events[i]);
	buf_putc(b, '\n');
	if (isnan(d->rate))
		snprintf(t1, sizeof(t1), watch ? "-" : "- (--watch)");
	else
		snprintf(t1, sizeof(t1), "%.1f", d->rate);
	buf_printf(b, ROW "events/s %s  retries %s  reclaimed %s\n", "", t1,
	    n_or_dash(t2, sizeof(t2), d->retries),
	    n_or_dash(t3, sizeof(t3), d->reclaimed));
	buf_printf(b, ROW, "dead letters");
	for (i = 0; i < MR_COUNT; i++) {
		if (d->dead[i] == 0)
			continue;
		buf_printf(b, "%s%s %lld", any ? "  " : "",
		    metrics_reason_name(i), d->dead[i]);
		any = true;
	}
	buf_puts(b, any ? "\n" : "none\n");
}

static void
render_redis(const struct config *cfg, const struct redis_part *r,
    struct buf *b)
{
	char t1[32], t2[32], t3[32], t4[32];
	size_t w = 8;

	if (!r->ok) {
		buf_printf(b, ROW "unreachable: %s\n", "redis", r->err);
		return;
	}
	buf_printf(b, ROW "%s:%d db %d  stream %s  group %s%s\n", "redis",
	    cfg->redis_host, cfg->redis_port, cfg->redis_db,
	    cfg->source_stream, cfg->consumer_group,
	    r->gi.group_exists ? "" : " (does not exist)");
	buf_printf(b, ROW "length %s  lag %s  pending %s  dead-letter length "
	    "%s\n", "stream",
	    n_or_dash(t1, sizeof(t1), r->gi.length),
	    n_or_dash(t2, sizeof(t2), r->gi.lag),
	    n_or_dash(t3, sizeof(t3), r->gi.pending),
	    n_or_dash(t4, sizeof(t4), r->gi.dead_letter_length));
	if (r->nconsumers == 0) {
		buf_printf(b, ROW "none\n", "consumers");
		return;
	}
	for (int i = 0; i < r->nconsumers; i++)
		if (strlen(r->consumers[i].name) > w)
			w = strlen(r->consumers[i].name);
	buf_printf(b, ROW "%-*s %9s %9s\n", "consumers", (int)w, "NAME",
	    "PENDING", "IDLE");
	for (int i = 0; i < r->nconsumers; i++) {
		idle_text(t2, sizeof(t2), r->consumers[i].idle_ms);
		buf_printf(b, ROW "%-*s %9s %9s\n", "", (int)w,
		    r->consumers[i].name,
		    n_or_dash(t1, sizeof(t1), r->consumers[i].pending), t2);
	}
}

static void
render_ledger(const struct config *cfg, const struct ledger_part *l,
    struct buf *b)
{
	if (!l->ok) {
		buf_printf(b, ROW "unreachable: %s\n", "ledger", l->err);
		return;
	}
	buf_printf(b, ROW "%s schema %s, documents changed in the last %d "
	    "min\n", "ledger", l->where, cfg->ledger.schema,
	    STATUS_LEDGER_MINUTES);
	buf_printf(b, ROW, "");
	for (size_t k = 0; k < NSTATUSES; k++)
		buf_printf(b, "%s%s %lld", k ? "  " : "", ledger_statuses[k],
		    l->count[k]);
	buf_putc(b, '\n');
}

static void
render_text(const struct config *cfg, const struct snapshot *s, bool watch,
    struct buf *b)
{
	char ts[64];

	format_utc_ms(ts, sizeof(ts), s->wall_ms);
	buf_printf(b, "stagerelay status  %s  %s%s\n", ts, cfg->path,
	    watch ? "  (q to quit)" : "");
	render_daemon(&s->d, watch, b);
	render_redis(cfg, &s->r, b);
	render_ledger(cfg, &s->l, b);
}

/* ---- the loop ----------------------------------------------------------- */

static struct termios saved_tio;
static bool tio_saved;

static void
tty_raw(void)
{
	struct termios t;

	if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tio) == -1)
		return;
	tio_saved = true;
	t = saved_tio;
	/* Keys arrive one at a time and unechoed; ISIG stays: ^C works. */
	t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	t.c_cc[VMIN] = 0;
	t.c_cc[VTIME] = 0;
	tcsetattr(STDIN_FILENO, TCSANOW, &t);
}

static void
tty_restore(void)
{
	if (tio_saved)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
	tio_saved = false;
}

/* Waits until deadline (monotonic ms); true if q was pressed. */
static bool
wait_key(long long deadline)
{
	struct pollfd pfd;
	long long left;
	char c[16];
	ssize_t n;

	while (!quit && (left = deadline - now_mono_ms()) > 0) {
		if (!tio_saved) {
			poll(NULL, 0, (int)left);
			continue;
		}
		pfd.fd = STDIN_FILENO;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		if ((n = read(STDIN_FILENO, c, sizeof(c))) <= 0) {
			/* The terminal went away: no more keys. */
			if (n == 0 || (errno != EINTR && errno != EAGAIN))
				tty_restore();
			continue;
		}
		if (memchr(c, 'q', (size_t)n) != NULL ||
		    memchr(c, 'Q', (size_t)n) != NULL)
			return true;
	}
	return false;
}

/* Writes b to stdout; false once stdout is gone. */
static bool
emit(struct buf *b)
{
	if (b->len > 0 && fwrite(b->data, 1, b->len, stdout) != b->len)
		return false;
	return fflush(stdout) == 0;
}

int
status_run(const struct config *cfg, const struct status_opts *opts)
{
	struct sigaction sa, old_int, old_term, old_hup, old_pipe;
	struct status st;
	struct snapshot snap;
	struct buf b;
	bool clear, ok = true;
	long long next;

	memset(&st, 0, sizeof(st));
	st.cfg = cfg;
	st.opts = opts;
	log_init("status", opts->verbose ? LOG_DEBUG : LOG_WARN, LOG_FMT_LOGFMT,
	    NULL);
	log_set_hook(on_log, &st);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fatalx("status: curl_global_init failed");
	st.stream = stream_new(cfg, "stagerelay-status");
	st.ledger = ledger_new(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group, "stagerelay-status", cfg->source_stream);

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: a signal ends the wait between two rounds. */
	sa.sa_handler = on_signal;
	if (opts->watch) {
		sigaction(SIGINT, &sa, &old_int);
		sigaction(SIGTERM, &sa, &old_term);
		sigaction(SIGHUP, &sa, &old_hup);
	}
	/* A closed stdout ends the loop, never the process mid-tty-change. */
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, &old_pipe);

	clear = opts->watch && !opts->json && isatty(STDOUT_FILENO);
	if (opts->watch)
		tty_raw();
	buf_init(&b);
	next = now_mono_ms();
	do {
		snapshot_take(&st, &snap);
		ok = snapshot_ok(&snap);
		buf_reset(&b);
		if (clear)
			buf_puts(&b, "\033[H\033[2J");
		if (opts->json)
			render_json(cfg, &snap, &b);
		else
			render_text(cfg, &snap, opts->watch, &b);
		snapshot_free(&snap);
		if (!emit(&b))
			break;
		/* A slow round: the next one starts a second after this. */
		if ((next += 1000) < now_mono_ms())
			next = now_mono_ms() + 1000;
	} while (opts->watch && !quit && !wait_key(next) && !quit);
	buf_free(&b);
	tty_restore();

	if (opts->watch) {
		sigaction(SIGINT, &old_int, NULL);
		sigaction(SIGTERM, &old_term, NULL);
		sigaction(SIGHUP, &old_hup, NULL);
	}
	sigaction(SIGPIPE, &old_pipe, NULL);
	if (st.curl != NULL)
		curl_easy_cleanup(st.curl);
	curl_global_cleanup();
	stream_free(st.stream);
	ledger_free(st.ledger);
	log_set_hook(NULL, NULL);
	if (opts->watch)
		return 0;
	return ok ? 0 : 1;
}
