/*
 * stream.c: Redis Streams through hiredis (synchronous: a worker does one
 * thing at a time, and the blocking read is the only wait).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis.h>

#include "log.h"
#include "stream.h"
#include "util.h"

struct stream {
	const struct config	*cfg;
	char			*consumer;
	redisContext		*rc;
	int			 timeout_ms;	/* 0: poll_interval_ms + 10 s */
};

struct stream *
stream_new(const struct config *cfg, const char *consumer)
{
	struct stream *s = xcalloc(1, sizeof(*s));

	s->cfg = cfg;
	s->consumer = xstrdup(consumer);
	return s;
}

void
stream_free(struct stream *s)
{
	if (s == NULL)
		return;
	stream_disconnect(s);
	free(s->consumer);
	free(s);
}

void
stream_disconnect(struct stream *s)
{
	if (s->rc != NULL) {
		redisFree(s->rc);
		s->rc = NULL;
	}
}

bool
stream_connected(const struct stream *s)
{
	return s->rc != NULL;
}

/* Runs a command; logs and disconnects on transport errors. */
static redisReply *
command(struct stream *s, int argc, const char **argv, const size_t *lens)
{
	redisReply *r;

	if (s->rc == NULL && stream_connect(s) == -1)
		return NULL;
	r = redisCommandArgv(s->rc, argc, argv, lens);
	if (r == NULL) {
		log_warnx("redis: %s: %s", argv[0],
		    s->rc->errstr[0] ? s->rc->errstr : "connection lost");
		stream_disconnect(s);
	}
	return r;
}

static int
simple_ok(redisReply *r, const char *what)
{
	if (r == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ERROR) {
		log_warnx("redis: %s: %s", what, r->str);
		freeReplyObject(r);
		return -1;
	}
	freeReplyObject(r);
	return 0;
}

int
stream_connect(struct stream *s)
{
	const struct config *cfg = s->cfg;
	struct timeval ctv, rtv;
	long long rw_ms;
	char db[16];

	stream_disconnect(s);
	/* 5 s, or less when every command must be quick (the ingress). */
	ctv.tv_sec = s->timeout_ms > 0 && s->timeout_ms < 5000 ?
	    s->timeout_ms / 1000 : 5;
	ctv.tv_usec = s->timeout_ms > 0 && s->timeout_ms < 5000 ?
	    (s->timeout_ms % 1000) * 1000 : 0;
	s->rc = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, ctv);
	if (s->rc == NULL || s->rc->err) {
		log_warnx("redis: cannot connect to %s:%d: %s", cfg->redis_host,
		    cfg->redis_port, s->rc ? s->rc->errstr : "out of memory");
		stream_disconnect(s);
		return -1;
	}
	/* A blocking read must not time out on the client side first. */
	rw_ms = s->timeout_ms > 0 ? s->timeout_ms :
	    (long long)cfg->poll_interval_ms + 10000;
	rtv.tv_sec = rw_ms / 1000;
	rtv.tv_usec = (rw_ms % 1000) * 1000;
	redisSetTimeout(s->rc, rtv);
	redisEnableKeepAlive(s->rc);

	if (cfg->redis_password != NULL && *cfg->redis_password != '\0') {
		const char *argv[3] = { "AUTH", NULL, NULL };
		int argc = 0;

		argv[argc++] = "AUTH";
		if (cfg->redis_username != NULL && *cfg->redis_username != '\0')
			argv[argc++] = cfg->redis_username;
		argv[argc++] = cfg->redis_password;
		/* Never log the password: only the server's message. */
		if (simple_ok(command(s, argc, argv, NULL), "AUTH") == -1) {
			stream_disconnect(s);
			return -1;
		}
	}
	if (cfg->redis_db != 0) {
		const char *argv[2] = { "SELECT", db };

		snprintf(db, sizeof(db), "%d", cfg->redis_db);
		if (simple_ok(command(s, 2, argv, NULL), "SELECT") == -1) {
			stream_disconnect(s);
			return -1;
		}
	}
	log_debug("redis: connected to %s:%d db %d", cfg->redis_host,
	    cfg->redis_port, cfg->redis_db);
	return 0;
}

int
stream_create_group(struct stream *s, bool from_start)
{
	const char *argv[6] = { "XGROUP", "CREATE", s->cfg->source_stream,
	    s->cfg->consumer_group, from_start ? "0" : "$", "MKSTREAM" };
	redisReply *r;
	int ret;

	if ((r = command(s, 6, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type == REDIS_REPLY_ERROR) {
		if (strncmp(r->str, "BUSYGROUP", 9) == 0)
			ret = 0;
		else {
			log_warnx("redis: XGROUP CREATE %s %s: %s",
			    s->cfg->source_stream, s->cfg->consumer_group,
			    r->str);
			ret = STREAM_ERR;
		}
	} else
		ret = 1;
	freeReplyObject(r);
	return ret;
}

/*
 * The group is gone: NOGROUP, or (Redis 7) UNBLOCKED when the key was
 * deleted or expired while we were blocked reading it.
 */
static int
is_nogroup(const redisReply *r)
{
	return r->type == REDIS_REPLY_ERROR &&
	    (strncmp(r->str, "NOGROUP", 7) == 0 ||
	    strncmp(r->str, "UNBLOCKED", 9) == 0);
}

/*
 * Fills out from an array of entries [[id, [f, v, ...]], ...] inside
 * reply, which out now owns. A pending entry deleted from the stream
 * comes back as [id, nil] (nfields 0); other odd elements are skipped.
 */
static void
parse_entries(const redisReply *entries, redisReply *reply,
    struct stream_batch *out)
{
	out->reply = reply;
	out->entries = xcalloc(entries->elements ? entries->elements : 1,
	    sizeof(*out->entries));
	for (size_t i = 0; i < entries->elements; i++) {
		redisReply *e = entries->element[i], *kv;
		struct stream_entry *se = &out->entries[out->n];

		if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
		    e->element[0]->type != REDIS_REPLY_STRING)
			continue;
		se->id = e->element[0]->str;
		kv = e->element[1];
		if (kv->type != REDIS_REPLY_ARRAY) {
			out->n++;	/* deleted: nfields 0 */
			continue;
		}
		se->nfields = kv->elements / 2;
		se->fields = xcalloc(se->nfields ? se->nfields : 1,
		    sizeof(*se->fields));
		for (size_t j = 0; j < se->nfields; j++) {
			redisReply *k = kv->element[2 * j];
			redisReply *v = kv->element[2 * j + 1];

			se->fields[j].name = k->str ? k->str : "";
			se->fields[j].namelen = k->str ? k->len : 0;
			se->fields[j].value = v->str ? v->str : "";
			se->fields[j].valuelen = v->str ? v->len : 0;
		}
		out->n++;
	}
}

/*
 * Reply shape: [[stream, [[id, [f, v, f, v...]], ...]]], or nil on
 * timeout. A pending entry deleted meanwhile comes back as [id, nil].
 */
int
stream_read(struct stream *s, const char *start, int count, int block_ms,
    struct stream_batch *out)
{
	const char *argv[12];
	char cnt[16], blk[16];
	redisReply *r;
	int argc = 0;

	memset(out, 0, sizeof(*out));
	snprintf(cnt, sizeof(cnt), "%d", count);
	argv[argc++] = "XREADGROUP";
	argv[argc++] = "GROUP";
	argv[argc++] = s->cfg->consumer_group;
	argv[argc++] = s->consumer;
	argv[argc++] = "COUNT";
	argv[argc++] = cnt;
	if (block_ms >= 0) {
		snprintf(blk, sizeof(blk), "%d", block_ms);
		argv[argc++] = "BLOCK";
		argv[argc++] = blk;
	}
	argv[argc++] = "STREAMS";
	argv[argc++] = s->cfg->source_stream;
	argv[argc++] = start;

	if ((r = command(s, argc, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type == REDIS_REPLY_NIL) {
		freeReplyObject(r);
		return 0;
	}
	if (is_nogroup(r)) {
		freeReplyObject(r);
		return STREAM_NOGROUP;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
	    r->element[0]->type != REDIS_REPLY_ARRAY ||
	    r->element[0]->elements != 2 ||
	    r->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
		log_warnx("redis: XREADGROUP: unexpected reply%s%s",
		    r->type == REDIS_REPLY_ERROR ? ": " : "",
		    r->type == REDIS_REPLY_ERROR ? r->str : "");
		freeReplyObject(r);
		return STREAM_ERR;
	}
	parse_entries(r->element[0]->element[1], r, out);
	return (int)out->n;
}

void
stream_batch_free(struct stream_batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		free(b->entries[i].fields);
	free(b->entries);
	if (b->reply != NULL)
		freeReplyObject(b->reply);
	memset(b, 0, sizeof(*b));
}

int
stream_ack(struct stream *s, const char *const *ids, size_t n)
{
	const char **argv;
	redisReply *r;
	int ret;

	if (n == 0)
		return 0;
	argv = xcalloc(n + 3, sizeof(*argv));
	argv[0] = "XACK";
	argv[1] = s->cfg->source_stream;
	argv[2] = s->cfg->consumer_group;
	for (size_t i = 0; i < n; i++)
		argv[i + 3] = ids[i];
	r = command(s, (int)n + 3, argv, NULL);
	free(argv);
	ret = simple_ok(r, "XACK");
	return ret == 0 ? 0 : STREAM_ERR;
}

int
stream_dead_letter(struct stream *s, const struct stream_entry *e,
    const struct dead_letter *dl)
{
	const char **argv;
	size_t *lens, argc = 0, max;
	char maxlen[24], attempts[16], status[24], failed_at[64];
	redisReply *r;

	format_utc_ms(failed_at, sizeof(failed_at), now_wall_ms());
	snprintf(maxlen, sizeof(maxlen), "%ld", s->cfg->dead_letter_maxlen);
	snprintf(attempts, sizeof(attempts), "%d", dl->attempts);
	snprintf(status, sizeof(status), "%ld", dl->http_status);

	max = 6 + 2 * e->nfields + 16;
	argv = xcalloc(max, sizeof(*argv));
	lens = xcalloc(max, sizeof(*lens));
#define ARG(str, len) do { argv[argc] = (str); lens[argc] = (len); argc++; } while (0)
#define SARG(str) ARG((str), strlen(str))
	SARG("XADD");
	SARG(s->cfg->dead_letter_stream);
	if (s->cfg->dead_letter_maxlen > 0) {
		SARG("MAXLEN");
		SARG("~");
		SARG(maxlen);
	}
	SARG("*");
	/* The original fields first, unchanged, so the entry can be replayed. */
	for (size_t i = 0; i < e->nfields; i++) {
		ARG(e->fields[i].name, e->fields[i].namelen);
		ARG(e->fields[i].value, e->fields[i].valuelen);
	}
	SARG("dlq_reason");
	SARG(dl->reason);
	SARG("dlq_detail");
	SARG(dl->detail ? dl->detail : "");
	SARG("dlq_attempts");
	SARG(attempts);
	SARG("dlq_http_status");
	SARG(status);
	SARG("dlq_consumer");
	SARG(s->consumer);
	SARG("dlq_source_stream");
	SARG(s->cfg->source_stream);
	SARG("dlq_source_id");
	SARG(e->id);
	SARG("dlq_failed_at");
	SARG(failed_at);
#undef SARG
#undef ARG
	r = command(s, (int)argc, argv, lens);
	free(argv);
	free(lens);
	return simple_ok(r, "XADD dead-letter") == 0 ? 0 : STREAM_ERR;
}

void
stream_set_timeout(struct stream *s, int ms)
{
	struct timeval tv;

	s->timeout_ms = ms;
	if (s->rc != NULL) {
		tv.tv_sec = ms / 1000;
		tv.tv_usec = (ms % 1000) * 1000;
		redisSetTimeout(s->rc, tv);
	}
}

/* Queues one XADD (redisAppendCommandArgv: the reply is read later). */
static int
append_xadd(struct stream *s, const struct stream_new_entry *e, long maxlen)
{
	const char **argv;
	size_t *lens, argc = 0;
	char ml[24];
	int rv;

	argv = xcalloc(6 + 2 * e->nfields, sizeof(*argv));
	lens = xcalloc(6 + 2 * e->nfields, sizeof(*lens));
	argv[argc++] = "XADD";
	argv[argc++] = s->cfg->source_stream;
	if (maxlen > 0) {
		snprintf(ml, sizeof(ml), "%ld", maxlen);
		argv[argc++] = "MAXLEN";
		argv[argc++] = "~";
		argv[argc++] = ml;
	}
	argv[argc++] = "*";
	for (size_t i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	for (size_t i = 0; i < e->nfields; i++) {
		argv[argc] = e->fields[i].name;
		lens[argc++] = e->fields[i].namelen;
		argv[argc] = e->fields[i].value;
		lens[argc++] = e->fields[i].valuelen;
	}
	rv = redisAppendCommandArgv(s->rc, (int)argc, argv, lens);
	free(argv);
	free(lens);
	return rv == REDIS_OK ? 0 : -1;
}

/* Errors of a server that cannot take writes now, where another may. */
static bool
failover_error(const char *msg)
{
	return strncmp(msg, "READONLY", 8) == 0 ||
	    strncmp(msg, "LOADING", 7) == 0 ||
	    strncmp(msg, "MASTERDOWN", 10) == 0;
}

int
stream_append(struct stream *s, const struct stream_new_entry *entries,
    size_t n, long maxlen, char (*ids)[48])
{
	redisReply *r = NULL, *ids_reply;
	size_t nreplies = 0;
	bool multi = n > 1, failover = false;
	int rv = 0;

	if (n == 0)
		return 0;
	if (s->rc == NULL && stream_connect(s) == -1)
		return STREAM_ERR;
	/*
	 * MULTI on its own first: were it refused (an ACL without it), the
	 * XADDs that follow would run one by one, not all or none.
	 */
	if (multi) {
		const char *argv[1] = { "MULTI" };

		if (simple_ok(command(s, 1, argv, NULL), "MULTI") == -1)
			return s->rc == NULL ? STREAM_ERR : STREAM_REFUSED;
	}
	/* Then the XADDs and EXEC, pipelined: one round trip. */
	for (size_t i = 0; i < n; i++)
		if (append_xadd(s, &entries[i], maxlen) == -1)
			goto lost;
	if (multi && redisAppendCommand(s->rc, "EXEC") != REDIS_OK)
		goto lost;
	nreplies = multi ? n + 1 : 1;
	for (size_t i = 0; i < nreplies; i++) {
		void *reply = NULL;

		if (redisGetReply(s->rc, &reply) != REDIS_OK || reply == NULL)
			goto lost;
		r = reply;
		if (i + 1 < nreplies) {
			/* +QUEUED per XADD, or an error now (EXEC aborts). */
			if (r->type == REDIS_REPLY_ERROR && rv == 0) {
				log_warnx("redis: XADD: %s", r->str);
				rv = STREAM_REFUSED;
				failover = failover_error(r->str);
			}
			freeReplyObject(r);
			r = NULL;
		}
	}
	if (rv != 0)
		goto done;
	if (r->type == REDIS_REPLY_ERROR) {
		log_warnx("redis: %s: %s", multi ? "EXEC" : "XADD", r->str);
		rv = STREAM_REFUSED;
		goto done;
	}
	if (!multi) {
		if (r->type != REDIS_REPLY_STRING)
			goto odd;
		strlcpy_s(ids[0], r->str, sizeof(ids[0]));
		goto done;
	}
	ids_reply = r;
	if (ids_reply->type != REDIS_REPLY_ARRAY || ids_reply->elements != n)
		goto odd;
	for (size_t i = 0; i < n; i++) {
		const redisReply *e = ids_reply->element[i];

		if (e->type == REDIS_REPLY_ERROR) {
			log_warnx("redis: XADD: %s", e->str);
			rv = STREAM_REFUSED;
			goto done;
		}
		if (e->type != REDIS_REPLY_STRING)
			goto odd;
		strlcpy_s(ids[i], e->str, sizeof(ids[i]));
	}
	goto done;
odd:
	log_warnx("redis: XADD: unexpected reply (type %d)", r->type);
	rv = STREAM_REFUSED;
done:
	/*
	 * A replica after a failover, or a server still loading: another
	 * connection (the address may now lead to the new primary) may
	 * take the next append; this one never will.
	 */
	if (rv == STREAM_REFUSED && (failover ||
	    (r != NULL && r->type == REDIS_REPLY_ERROR &&
	    failover_error(r->str))))
		stream_disconnect(s);
	if (r != NULL)
		freeReplyObject(r);
	return rv;
lost:
	log_warnx("redis: XADD: %s", s->rc->errstr[0] ? s->rc->errstr :
	    "connection lost");
	stream_disconnect(s);
	return STREAM_ERR;
}

long
stream_pending_count(struct stream *s)
{
	/* The summary form: [count, min, max, [[consumer, n], ...]]. */
	const char *argv[3] = { "XPENDING", s->cfg->source_stream,
	    s->cfg->consumer_group };
	redisReply *r, *per;
	long n = -1;

	if ((r = command(s, 3, argv, NULL)) == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
		n = 0;
		per = r->element[3];
		for (size_t i = 0; per->type == REDIS_REPLY_ARRAY &&
		    i < per->elements; i++) {
			redisReply *c = per->element[i];

			if (c->type == REDIS_REPLY_ARRAY && c->elements == 2 &&
			    c->element[0]->type == REDIS_REPLY_STRING &&
			    strcmp(c->element[0]->str, s->consumer) == 0 &&
			    c->element[1]->type == REDIS_REPLY_STRING)
				n = strtol(c->element[1]->str, NULL, 10);
		}
	}
	freeReplyObject(r);
	return n;
}

/* An error reply: NOGROUP (the key or group vanished) or STREAM_ERR. */
static int
reply_error(struct stream *s, redisReply *r, const char *what)
{
	int ret = is_nogroup(r) ? STREAM_NOGROUP : STREAM_ERR;

	if (ret == STREAM_ERR)
		log_warnx("redis: %s: %s", what, r->type == REDIS_REPLY_ERROR ?
		    r->str : "unexpected reply");
	(void)s;
	freeReplyObject(r);
	return ret;
}

int
stream_pending_own(struct stream *s, const char *start, const char *end,
    int count, struct stream_pending **out)
{
	const char *argv[7];
	char cnt[16];
	redisReply *r;
	int n = 0;

	*out = NULL;
	snprintf(cnt, sizeof(cnt), "%d", count);
	argv[0] = "XPENDING";
	argv[1] = s->cfg->source_stream;
	argv[2] = s->cfg->consumer_group;
	argv[3] = start;
	argv[4] = end;
	argv[5] = cnt;
	argv[6] = s->consumer;
	if ((r = command(s, 7, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XPENDING");
	*out = xcalloc(r->elements ? r->elements : 1, sizeof(**out));
	/* [[id, consumer, idle-ms, deliveries], ...] */
	for (size_t i = 0; i < r->elements; i++) {
		redisReply *e = r->element[i];

		if (e->type != REDIS_REPLY_ARRAY || e->elements != 4 ||
		    e->element[0]->type != REDIS_REPLY_STRING ||
		    e->element[0]->len >= sizeof((*out)[n].id))
			continue;
		memcpy((*out)[n].id, e->element[0]->str, e->element[0]->len + 1);
		(*out)[n].idle_ms = e->element[2]->integer;
		(*out)[n].deliveries = e->element[3]->integer;
		n++;
	}
	freeReplyObject(r);
	return n;
}

/* XCLAIM s g me 0 ids... [JUSTID]: the reply is returned as is. */
static redisReply *
xclaim(struct stream *s, const char *const *ids, size_t n, bool justid)
{
	const char **argv = xcalloc(n + 6, sizeof(*argv));
	redisReply *r;
	size_t argc = 0;

	argv[argc++] = "XCLAIM";
	argv[argc++] = s->cfg->source_stream;
	argv[argc++] = s->cfg->consumer_group;
	argv[argc++] = s->consumer;
	argv[argc++] = "0";
	for (size_t i = 0; i < n; i++)
		argv[argc++] = ids[i];
	if (justid)
		argv[argc++] = "JUSTID";
	r = command(s, (int)argc, argv, NULL);
	free(argv);
	return r;
}

int
stream_claim(struct stream *s, const char *const *ids, size_t n,
    struct stream_batch *out)
{
	redisReply *r;

	memset(out, 0, sizeof(*out));
	if (n == 0)
		return 0;
	if ((r = xclaim(s, ids, n, false)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XCLAIM");
	parse_entries(r, r, out);
	return (int)out->n;
}

int
stream_touch(struct stream *s, const char *const *ids, size_t n)
{
	redisReply *r;
	int got;

	if (n == 0)
		return 0;
	if ((r = xclaim(s, ids, n, true)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XCLAIM JUSTID");
	got = (int)r->elements;
	freeReplyObject(r);
	return got;
}

int
stream_autoclaim(struct stream *s, const char *cursor, int count,
    struct stream_batch *out, char *next, size_t nextlen,
    struct stream_ids *deleted)
{
	const char *argv[8];
	char cnt[16], idle[24];
	redisReply *r, *del;

	memset(out, 0, sizeof(*out));
	memset(deleted, 0, sizeof(*deleted));
	snprintf(cnt, sizeof(cnt), "%d", count);
	snprintf(idle, sizeof(idle), "%d", s->cfg->claim_idle_ms);
	argv[0] = "XAUTOCLAIM";
	argv[1] = s->cfg->source_stream;
	argv[2] = s->cfg->consumer_group;
	argv[3] = s->consumer;
	argv[4] = idle;
	argv[5] = cursor;
	argv[6] = "COUNT";
	argv[7] = cnt;
	if ((r = command(s, 8, argv, NULL)) == NULL)
		return STREAM_ERR;
	/* [next-cursor, [entries], [deleted ids]] (Redis >= 7) */
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    r->element[1]->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XAUTOCLAIM");
	strlcpy_s(next, r->element[0]->str, nextlen);
	if (r->elements >= 3 && (del = r->element[2])->type ==
	    REDIS_REPLY_ARRAY && del->elements > 0) {
		deleted->ids = xcalloc(del->elements, sizeof(*deleted->ids));
		for (size_t i = 0; i < del->elements; i++)
			if (del->element[i]->type == REDIS_REPLY_STRING)
				deleted->ids[deleted->n++] =
				    xstrdup(del->element[i]->str);
	}
	parse_entries(r->element[1], r, out);
	return (int)out->n;
}

void
stream_ids_free(struct stream_ids *ids)
{
	for (size_t i = 0; i < ids->n; i++)
		free(ids->ids[i]);
	free(ids->ids);
	memset(ids, 0, sizeof(*ids));
}

/* A field of an XINFO reply map (a flat [key, value, ...] array), or NULL. */
static const redisReply *
map_get(const redisReply *m, const char *key)
{
	for (size_t j = 0; m->type == REDIS_REPLY_ARRAY && j + 1 < m->elements;
	    j += 2) {
		const redisReply *k = m->element[j];

		if (k->type == REDIS_REPLY_STRING && strcmp(k->str, key) == 0)
			return m->element[j + 1];
	}
	return NULL;
}

/* An integer field of an XINFO reply map, or -1 (absent, nil: unknown). */
static long long
map_int(const redisReply *m, const char *key)
{
	const redisReply *v = map_get(m, key);

	return v != NULL && v->type == REDIS_REPLY_INTEGER ? v->integer : -1;
}

/* A string field of an XINFO reply map, or NULL. */
static const char *
map_str(const redisReply *m, const char *key)
{
	const redisReply *v = map_get(m, key);

	return v != NULL && v->type == REDIS_REPLY_STRING ? v->str : NULL;
}

int
stream_consumers(struct stream *s, struct stream_consumer **out)
{
	const char *argv[4] = { "XINFO", "CONSUMERS", s->cfg->source_stream,
	    s->cfg->consumer_group };
	redisReply *r;
	int n = 0;

	*out = NULL;
	if ((r = command(s, 4, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XINFO CONSUMERS");
	*out = xcalloc(r->elements ? r->elements : 1, sizeof(**out));
	/* Each consumer is a flat map: name, pending, idle[, inactive]. */
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *c = r->element[i];
		struct stream_consumer *sc = &(*out)[n];
		const char *name;

		if ((name = map_str(c, "name")) == NULL)
			continue;
		sc->name = xstrdup(name);
		sc->pending = map_int(c, "pending");
		sc->idle_ms = map_int(c, "idle");
		n++;
	}
	freeReplyObject(r);
	return n;
}

void
stream_consumers_free(struct stream_consumer *c, int n)
{
	for (int i = 0; i < n; i++)
		free(c[i].name);
	free(c);
}

/*
 * Deleting a consumer drops its pending entries, so the check and the
 * delete happen in one script: atomically, nothing pending or nothing done.
 */
static const char delconsumer_lua[] =
"if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then\n"
"  return -1\n"
"end\n"
"return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])";

int
stream_remove_consumer(struct stream *s, const char *name)
{
	const char *argv[6] = { "EVAL", delconsumer_lua, "1",
	    s->cfg->source_stream, s->cfg->consumer_group, name };
	redisReply *r;
	int ret;

	if ((r = command(s, 6, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_INTEGER)
		return reply_error(s, r, "XGROUP DELCONSUMER");
	ret = r->integer < 0 ? 0 : 1;
	freeReplyObject(r);
	return ret;
}

struct stream_entry *
stream_entry_dup(const struct stream_entry *e)
{
	size_t size = sizeof(*e) + strlen(e->id) + 1, idlen;
	struct stream_entry *d;
	char *p;

	size += e->nfields * sizeof(*e->fields);
	for (size_t i = 0; i < e->nfields; i++)
		size += e->fields[i].namelen + e->fields[i].valuelen + 2;
	d = xmalloc(size);
	d->nfields = e->nfields;
	d->fields = e->nfields ? (struct entry_field *)(d + 1) : NULL;
	p = (char *)(d + 1) + e->nfields * sizeof(*e->fields);
	idlen = strlen(e->id) + 1;
	memcpy(p, e->id, idlen);
	d->id = p;
	p += idlen;
	for (size_t i = 0; i < e->nfields; i++) {
		const struct entry_field *f = &e->fields[i];

		memcpy(p, f->name, f->namelen);
		p[f->namelen] = '\0';
		d->fields[i].name = p;
		d->fields[i].namelen = f->namelen;
		p += f->namelen + 1;
		memcpy(p, f->value, f->valuelen);
		p[f->valuelen] = '\0';
		d->fields[i].value = p;
		d->fields[i].valuelen = f->valuelen;
		p += f->valuelen + 1;
	}
	return d;
}

int
stream_create_consumer(struct stream *s)
{
	const char *argv[5] = { "XGROUP", "CREATECONSUMER",
	    s->cfg->source_stream, s->cfg->consumer_group, s->consumer };
	redisReply *r;

	if ((r = command(s, 5, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_INTEGER)
		return reply_error(s, r, "XGROUP CREATECONSUMER");
	freeReplyObject(r);
	return 0;
}

int
stream_entry_exists(struct stream *s, const char *id)
{
	const char *argv[6] = { "XRANGE", s->cfg->source_stream, id, id,
	    "COUNT", "1" };
	redisReply *r;
	int ret;

	if ((r = command(s, 6, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XRANGE");
	ret = r->elements > 0 ? 1 : 0;
	freeReplyObject(r);
	return ret;
}

static long long
xlen(struct stream *s, const char *key)
{
	const char *argv[2] = { "XLEN", key };
	redisReply *r;
	long long n = -1;

	if ((r = command(s, 2, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type == REDIS_REPLY_INTEGER)
		n = r->integer;
	freeReplyObject(r);
	return n;
}

int
stream_group_info(struct stream *s, struct stream_group_info *gi)
{
	const char *argv[3] = { "XINFO", "GROUPS", s->cfg->source_stream };
	redisReply *r;

	gi->lag = gi->pending = -1;
	gi->group_exists = false;
	if ((gi->length = xlen(s, s->cfg->source_stream)) == STREAM_ERR)
		return STREAM_ERR;
	if ((gi->dead_letter_length = xlen(s, s->cfg->dead_letter_stream)) ==
	    STREAM_ERR)
		return STREAM_ERR;
	if ((r = command(s, 3, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type == REDIS_REPLY_ERROR) {
		freeReplyObject(r);	/* no such key: no group either */
		return 0;
	}
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements;
	    i++) {
		const redisReply *g = r->element[i];
		const char *name = map_str(g, "name");

		if (name == NULL || strcmp(name, s->cfg->consumer_group) != 0)
			continue;
		gi->group_exists = true;
		gi->pending = map_int(g, "pending");
		gi->lag = map_int(g, "lag");
	}
	freeReplyObject(r);
	return 0;
}

struct redisContext *
stream_redis(struct stream *s)
{
	if (s->rc == NULL && stream_connect(s) == -1)
		return NULL;
	return s->rc;
}

int
stream_range(struct stream *s, const char *start, const char *end, int count,
    struct stream_batch *out)
{
	const char *argv[6];
	char cnt[16];
	redisReply *r;

	memset(out, 0, sizeof(*out));
	snprintf(cnt, sizeof(cnt), "%d", count);
	argv[0] = "XRANGE";
	argv[1] = s->cfg->source_stream;
	argv[2] = start;
	argv[3] = end;
	argv[4] = "COUNT";
	argv[5] = cnt;
	if ((r = command(s, 6, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XRANGE");
	parse_entries(r, r, out);
	return (int)out->n;
}

int
stream_last_id(struct stream *s, char *id, size_t idlen)
{
	const char *argv[6] = { "XREVRANGE", s->cfg->source_stream, "+", "-",
	    "COUNT", "1" };
	redisReply *r;
	int ret = 0;

	if ((r = command(s, 6, argv, NULL)) == NULL)
		return STREAM_ERR;
	if (r->type != REDIS_REPLY_ARRAY)
		return reply_error(s, r, "XREVRANGE");
	if (r->elements > 0 && r->element[0]->type == REDIS_REPLY_ARRAY &&
	    r->element[0]->elements == 2 &&
	    r->element[0]->element[0]->type == REDIS_REPLY_STRING) {
		strlcpy_s(id, r->element[0]->element[0]->str, idlen);
		ret = 1;
	}
	freeReplyObject(r);
	return ret;
}

long long
stream_length(struct stream *s)
{
	return xlen(s, s->cfg->source_stream);
}

int
stream_dead_letter_sources(struct stream *s, struct stream_ids *out)
{
	const char *argv[6];
	char from[64];
	redisReply *r;
	size_t cap = 0;

	memset(out, 0, sizeof(*out));
	strlcpy_s(from, "-", sizeof(from));
	for (;;) {
		argv[0] = "XRANGE";
		argv[1] = s->cfg->dead_letter_stream;
		argv[2] = from;
		argv[3] = "+";
		argv[4] = "COUNT";
		argv[5] = "1000";
		if ((r = command(s, 6, argv, NULL)) == NULL)
			goto fail;
		if (r->type != REDIS_REPLY_ARRAY) {
			reply_error(s, r, "XRANGE");
			goto fail;
		}
		for (size_t i = 0; i < r->elements; i++) {
			const redisReply *e = r->element[i], *kv;
			const char *src = NULL, *id = NULL;

			if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
			    (kv = e->element[1])->type != REDIS_REPLY_ARRAY)
				continue;
			/* The last dlq_* fields are the ones stagerelay added. */
			for (size_t j = 0; j + 1 < kv->elements; j += 2) {
				const char *k = kv->element[j]->str;

				if (k == NULL || kv->element[j + 1]->str == NULL)
					continue;
				if (strcmp(k, "dlq_source_stream") == 0)
					src = kv->element[j + 1]->str;
				else if (strcmp(k, "dlq_source_id") == 0)
					id = kv->element[j + 1]->str;
			}
			if (src == NULL || id == NULL ||
			    strcmp(src, s->cfg->source_stream) != 0)
				continue;
			if (out->n == cap) {
				cap = cap ? cap * 2 : 64;
				out->ids = xreallocarray(out->ids, cap,
				    sizeof(*out->ids));
			}
			out->ids[out->n++] = xstrdup(id);
		}
		if (r->elements > 0)
			snprintf(from, sizeof(from), "(%s",
			    r->element[r->elements - 1]->element[0]->str);
		if (r->elements < 1000) {
			freeReplyObject(r);
			return (int)out->n;
		}
		freeReplyObject(r);
	}
fail:
	stream_ids_free(out);
	return STREAM_ERR;
}
