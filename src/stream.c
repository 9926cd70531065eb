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
	ctv.tv_sec = 5;
	ctv.tv_usec = 0;
	s->rc = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, ctv);
	if (s->rc == NULL || s->rc->err) {
		log_warnx("redis: cannot connect to %s:%d: %s", cfg->redis_host,
		    cfg->redis_port, s->rc ? s->rc->errstr : "out of memory");
		stream_disconnect(s);
		return -1;
	}
	/* A blocking read must not time out on the client side first. */
	rw_ms = (long long)cfg->poll_interval_ms + 10000;
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
 * Reply shape: [[stream, [[id, [f, v, f, v...]], ...]]], or nil on
 * timeout. A pending entry deleted meanwhile comes back as [id, nil].
 */
int
stream_read(struct stream *s, const char *start, int count, int block_ms,
    struct stream_batch *out)
{
	const char *argv[12];
	char cnt[16], blk[16];
	redisReply *r, *entries;
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
	entries = r->element[0]->element[1];
	out->reply = r;
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
