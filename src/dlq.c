/*
 * dlq.c: `stagerelay dlq list|replay|purge`, the dead-letter stream for
 * operators.
 *
 * A dead-letter entry holds the original entry's fields, unchanged,
 * followed by the dlq_* fields stream_dead_letter() appends, dlq_reason
 * first (DESIGN.md §3). Replaying one appends the fields before its last
 * dlq_reason to the source stream and deletes it from the dead-letter
 * stream in one Lua script: Redis runs it atomically, so a crash can
 * neither lose the entry nor leave it in both streams.
 *
 * The dead-letter stream is read in pages of PAGE entries, never whole.
 * Ids are paged numerically (the successor or predecessor of the last id
 * seen), which works on every Redis with streams.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <hiredis.h>

#include "cli.h"
#include "config.h"
#include "log.h"
#include "stream.h"
#include "util.h"

#define PAGE		500	/* entries per XRANGE */
#define DEFAULT_COUNT	20	/* list */
#define SID_MAX		48	/* "ms-seq": two 20-digit numbers and a dash */

/* ---- options ------------------------------------------------------------- */

enum {
	OPT_COUNT = 1 << 0,
	OPT_REASON = 1 << 1,
	OPT_JSON = 1 << 2,
	OPT_ALL = 1 << 3,
	OPT_DRY_RUN = 1 << 4,
	OPT_BEFORE = 1 << 5
};

struct opts {
	const char	*cmd;		/* list, replay, purge */
	unsigned	 given;		/* OPT_* seen */
	long		 count;		/* list: 0 = all */
	const char	*reason;	/* NULL = any */
	bool		 json;
	bool		 all;
	bool		 dry_run;
	const char	*before;	/* as given */
	char		**ids;		/* replay: the arguments */
	int		 nids;
};

/* ---- stream ids ---------------------------------------------------------- */

struct sid {
	uint64_t	ms;
	uint64_t	seq;
};

static int
parse_u64(const char *s, size_t len, uint64_t *out)
{
	char buf[24], *end;
	unsigned long long v;

	if (len == 0 || len >= sizeof(buf))
		return -1;
	for (size_t i = 0; i < len; i++)
		if (!isdigit((unsigned char)s[i]))
			return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	v = strtoull(buf, &end, 10);
	if (errno != 0 || *end != '\0')
		return -1;
	*out = v;
	return 0;
}

/* "ms-seq", or "ms" meaning ms-0. Returns 0 or -1. */
static int
sid_parse(const char *s, struct sid *id)
{
	const char *dash = strchr(s, '-');

	if (dash == NULL) {
		id->seq = 0;
		return parse_u64(s, strlen(s), &id->ms);
	}
	if (parse_u64(s, (size_t)(dash - s), &id->ms) == -1)
		return -1;
	return parse_u64(dash + 1, strlen(dash + 1), &id->seq);
}

static void
sid_format(char *buf, size_t len, const struct sid *id)
{
	snprintf(buf, len, "%" PRIu64 "-%" PRIu64, id->ms, id->seq);
}

static int
sid_cmp(const struct sid *a, const struct sid *b)
{
	if (a->ms != b->ms)
		return a->ms < b->ms ? -1 : 1;
	if (a->seq != b->seq)
		return a->seq < b->seq ? -1 : 1;
	return 0;
}

/* The next id up; -1 if there is none. */
static int
sid_next(struct sid *id)
{
	if (id->seq < UINT64_MAX) {
		id->seq++;
		return 0;
	}
	if (id->ms == UINT64_MAX)
		return -1;
	id->ms++;
	id->seq = 0;
	return 0;
}

/* The next id down; -1 if there is none. */
static int
sid_prev(struct sid *id)
{
	if (id->seq > 0) {
		id->seq--;
		return 0;
	}
	if (id->ms == 0)
		return -1;
	id->ms--;
	id->seq = UINT64_MAX;
	return 0;
}

/* ---- text that came from a stream ---------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left), or 0. */
static size_t
utf8_len(const unsigned char *p, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		len = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		len = 3;
		if (p[0] == 0xe0)
			lo = 0xa0;	/* overlong */
		else if (p[0] == 0xed)
			hi = 0x9f;	/* surrogates */
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4;
		if (p[0] == 0xf0)
			lo = 0x90;	/* overlong */
		else if (p[0] == 0xf4)
			hi = 0x8f;	/* beyond U+10FFFF */
	} else
		return 0;
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return len;
}

/*
 * Valid UTF-8 for JSON: a byte that does not start a valid sequence, and
 * NUL (a cJSON string cannot hold it), becomes U+FFFD. Caller frees.
 */
static char *
json_text(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	struct buf b;
	size_t i = 0, n;

	buf_init(&b);
	while (i < len) {
		if (p[i] != 0 && (n = utf8_len(p + i, len - i)) > 0) {
			buf_append(&b, s + i, n);
			i += n;
		} else {
			buf_puts(&b, "\xef\xbf\xbd");
			i++;
		}
	}
	return buf_steal(&b);
}

/*
 * Text for a terminal: printable ASCII and valid UTF-8 as they are,
 * control characters and bytes that are not UTF-8 as \xNN.
 */
static void
buf_text(struct buf *b, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, n;

	while (i < len) {
		n = utf8_len(p + i, len - i);
		/* C0 and C1 controls and DEL steer terminals: escape them. */
		if (n == 0 || (n == 1 && (p[i] < 0x20 || p[i] == 0x7f)) ||
		    (n == 2 && p[i] == 0xc2 && p[i + 1] < 0xa0)) {
			buf_printf(b, "\\x%02x", p[i]);
			i++;
			continue;
		}
		buf_append(b, s + i, n);
		i += n;
	}
}

/* ---- dead-letter entries ------------------------------------------------- */

struct dlq {
	const struct config	*cfg;
	const struct opts	*o;
	struct stream		*stream;	/* owns the connection */
	redisContext		*rc;
	const char		*key;		/* cfg->dead_letter_stream */
};

/* One entry of an XRANGE reply; everything points into the reply. */
struct dl_entry {
	const char		*id;
	const redisReply	*kv;		/* [name, value, ...] */
	size_t			 norig;		/* fields before the dlq_* */
	const redisReply	*reason;	/* dlq_* values; NULL: absent */
	const redisReply	*detail;
	const redisReply	*attempts;
	const redisReply	*http_status;
	const redisReply	*consumer;
	const redisReply	*source_stream;
	const redisReply	*source_id;
	const redisReply	*failed_at;
};

static bool
is_name(const redisReply *r, const char *name)
{
	return r->type == REDIS_REPLY_STRING && r->len == strlen(name) &&
	    memcmp(r->str, name, r->len) == 0;
}

static int
entry_parse(const redisReply *e, struct dl_entry *de)
{
	const redisReply *kv;
	size_t n, i;

	memset(de, 0, sizeof(*de));
	if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
	    e->element[0]->type != REDIS_REPLY_STRING ||
	    e->element[1]->type != REDIS_REPLY_ARRAY)
		return -1;
	de->id = e->element[0]->str;
	de->kv = kv = e->element[1];
	n = kv->elements / 2;
	for (i = 0; i < n; i++)
		if (kv->element[2 * i]->type != REDIS_REPLY_STRING ||
		    kv->element[2 * i + 1]->type != REDIS_REPLY_STRING)
			return -1;
	/*
	 * The trailer starts at the last dlq_reason: an original field may
	 * bear the name too (an entry copied back by hand and failed again).
	 */
	de->norig = n;
	for (i = n; i-- > 0;)
		if (is_name(kv->element[2 * i], "dlq_reason")) {
			de->norig = i;
			break;
		}
	for (i = de->norig; i < n; i++) {
		const redisReply *k = kv->element[2 * i];
		const redisReply *v = kv->element[2 * i + 1];

		if (is_name(k, "dlq_reason"))
			de->reason = v;
		else if (is_name(k, "dlq_detail"))
			de->detail = v;
		else if (is_name(k, "dlq_attempts"))
			de->attempts = v;
		else if (is_name(k, "dlq_http_status"))
			de->http_status = v;
		else if (is_name(k, "dlq_consumer"))
			de->consumer = v;
		else if (is_name(k, "dlq_source_stream"))
			de->source_stream = v;
		else if (is_name(k, "dlq_source_id"))
			de->source_id = v;
		else if (is_name(k, "dlq_failed_at"))
			de->failed_at = v;
	}
	return 0;
}

static bool
entry_selected(const struct dlq *d, const struct dl_entry *e)
{
	return d->o->reason == NULL || (e->reason != NULL &&
	    strcmp(e->reason->str, d->o->reason) == 0);
}

/* Where a replay appends the entry: where it came from. */
static const char *
entry_target(const struct dlq *d, const struct dl_entry *e)
{
	return e->source_stream != NULL && e->source_stream->len > 0 ?
	    e->source_stream->str : d->cfg->source_stream;
}

/* An original field's value, or NULL. */
static const redisReply *
orig_field(const struct dl_entry *e, const char *name)
{
	for (size_t i = 0; i < e->norig; i++)
		if (is_name(e->kv->element[2 * i], name))
			return e->kv->element[2 * i + 1];
	return NULL;
}

/* A dlq_* number: -1 when absent or not a number. */
static long long
val_num(const redisReply *r)
{
	char *end;
	long long v;

	if (r == NULL || r->len == 0)
		return -1;
	errno = 0;
	v = strtoll(r->str, &end, 10);
	return errno != 0 || *end != '\0' ? -1 : v;
}

/* What the event says about itself, as far as it can be read cheaply. */
struct peek {
	char	*id;
	char	*type;
	char	*document_id;
};

static char *
json_scalar(const cJSON *j)
{
	if (cJSON_IsString(j))
		return xstrdup(j->valuestring);
	if (cJSON_IsNumber(j))
		return cJSON_PrintUnformatted(j);
	return NULL;
}

/* Parses a field's value as JSON, unless it is too large to be cheap. */
static cJSON *
parse_json(const struct dlq *d, const redisReply *v)
{
	if (v == NULL || (d->cfg->max_event_bytes > 0 &&
	    v->len > d->cfg->max_event_bytes))
		return NULL;
	return cJSON_ParseWithLength(v->str, v->len);
}

static void
peek_event(const struct dlq *d, const struct dl_entry *e, struct peek *p)
{
	const redisReply *v;
	cJSON *j, *data;

	memset(p, 0, sizeof(*p));
	/* Structured: one field holding the whole CloudEvent. */
	if ((j = parse_json(d, orig_field(e, d->cfg->event_field))) != NULL) {
		p->id = json_scalar(cJSON_GetObjectItemCaseSensitive(j, "id"));
		p->type = json_scalar(cJSON_GetObjectItemCaseSensitive(j,
		    "type"));
		data = cJSON_GetObjectItemCaseSensitive(j, "data");
		p->document_id = json_scalar(
		    cJSON_GetObjectItemCaseSensitive(data, "document_id"));
		cJSON_Delete(j);
		if (p->id != NULL || p->type != NULL)
			return;
	}
	/* Flat: one field per attribute, data as JSON text. */
	if ((v = orig_field(e, "id")) != NULL && p->id == NULL)
		p->id = xstrndup(v->str, v->len);
	if ((v = orig_field(e, "type")) != NULL && p->type == NULL)
		p->type = xstrndup(v->str, v->len);
	if (p->document_id == NULL &&
	    (j = parse_json(d, orig_field(e, "data"))) != NULL) {
		p->document_id = json_scalar(
		    cJSON_GetObjectItemCaseSensitive(j, "document_id"));
		cJSON_Delete(j);
	}
}

static void
peek_free(struct peek *p)
{
	free(p->id);
	free(p->type);
	free(p->document_id);
}

/* ---- Redis --------------------------------------------------------------- */

/*
 * Runs a command; NULL after saying why it failed (what names it, NULL:
 * the command's name and the dead-letter stream).
 */
static redisReply *
command(struct dlq *d, const char *what, int argc, const char **argv,
    const size_t *lens)
{
	redisReply *r;

	r = redisCommandArgv(d->rc, argc, argv, lens);
	if (r != NULL && r->type != REDIS_REPLY_ERROR)
		return r;
	fprintf(stderr, "stagerelay: dlq: redis: ");
	if (what != NULL)
		fprintf(stderr, "%s: ", what);
	else
		fprintf(stderr, "%s %s: ", argv[0], d->key);
	if (r == NULL)
		fprintf(stderr, "%s\n", d->rc->errstr[0] ? d->rc->errstr :
		    "connection lost");
	else {
		fprintf(stderr, "%s\n", r->str);
		freeReplyObject(r);
	}
	return NULL;
}

/* Newest id of the dead-letter stream: 1, 0 when empty, or -1. */
static int
newest(struct dlq *d, struct sid *id)
{
	const char *argv[6] = { "XREVRANGE", d->key, "+", "-", "COUNT", "1" };
	redisReply *r;
	int ret = 0;

	if ((r = command(d, NULL, 6, argv, NULL)) == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
	    r->element[0]->type == REDIS_REPLY_ARRAY &&
	    r->element[0]->elements == 2 &&
	    r->element[0]->element[0]->type == REDIS_REPLY_STRING &&
	    sid_parse(r->element[0]->element[0]->str, id) == 0)
		ret = 1;
	freeReplyObject(r);
	return ret;
}

static long long
length(struct dlq *d)
{
	const char *argv[2] = { "XLEN", d->key };
	redisReply *r;
	long long n = -1;

	if ((r = command(d, NULL, 2, argv, NULL)) == NULL)
		return -1;
	if (r->type == REDIS_REPLY_INTEGER)
		n = r->integer;
	freeReplyObject(r);
	return n;
}

/* 0 go on, 1 stop, -1 stop on an error (said). */
typedef int (*entry_fn)(struct dlq *, const struct dl_entry *, void *);

/*
 * Calls fn for each entry with an id from first to last, both included,
 * oldest first (newest first when reverse), PAGE entries a reply.
 * Returns 0 or -1.
 */
static int
scan(struct dlq *d, struct sid first, struct sid last, bool reverse,
    entry_fn fn, void *arg)
{
	char lo[SID_MAX], hi[SID_MAX], cnt[16];
	const char *argv[6];
	struct dl_entry de;
	struct sid at;
	redisReply *r;
	size_t n;
	int ret;

	snprintf(cnt, sizeof(cnt), "%d", PAGE);
	while (sid_cmp(&first, &last) <= 0) {
		sid_format(lo, sizeof(lo), &first);
		sid_format(hi, sizeof(hi), &last);
		argv[0] = reverse ? "XREVRANGE" : "XRANGE";
		argv[1] = d->key;
		argv[2] = reverse ? hi : lo;
		argv[3] = reverse ? lo : hi;
		argv[4] = "COUNT";
		argv[5] = cnt;
		if ((r = command(d, NULL, 6, argv, NULL)) == NULL)
			return -1;
		if (r->type != REDIS_REPLY_ARRAY) {
			freeReplyObject(r);
			return -1;
		}
		n = r->elements;
		for (size_t i = 0; i < n; i++) {
			const redisReply *e = r->element[i];

			/* at: the last id of the page, to go on from. */
			if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 ||
			    e->element[0]->type != REDIS_REPLY_STRING ||
			    sid_parse(e->element[0]->str, &at) == -1 ||
			    entry_parse(e, &de) == -1)
				continue;
			if ((ret = fn(d, &de, arg)) != 0) {
				freeReplyObject(r);
				return ret < 0 ? -1 : 0;
			}
		}
		freeReplyObject(r);
		if (n < PAGE)
			break;
		if (reverse ? sid_prev(&at) == -1 : sid_next(&at) == -1)
			break;
		if (reverse)
			last = at;
		else
			first = at;
	}
	return 0;
}

/* ---- list ---------------------------------------------------------------- */

/* Entries shown, by reason. */
struct tally {
	struct reason_count {
		char	*reason;
		long	 n;
	}		*rc;
	size_t		 len;
};

static void
tally_add(struct tally *t, const char *reason)
{
	for (size_t i = 0; i < t->len; i++)
		if (strcmp(t->rc[i].reason, reason) == 0) {
			t->rc[i].n++;
			return;
		}
	t->rc = xreallocarray(t->rc, t->len + 1, sizeof(*t->rc));
	t->rc[t->len].reason = xstrdup(reason);
	t->rc[t->len++].n = 1;
}

static int
reason_cmp(const void *a, const void *b)
{
	return strcmp(((const struct reason_count *)a)->reason,
	    ((const struct reason_count *)b)->reason);
}

static void
tally_free(struct tally *t)
{
	for (size_t i = 0; i < t->len; i++)
		free(t->rc[i].reason);
	free(t->rc);
}

struct listing {
	struct tally	 tally;
	char		**out;		/* rendered entries, newest first */
	size_t		  nout;
	long		  shown;
	bool		  streaming;	/* print at once (oldest first) */
};

static void
json_add_text(cJSON *obj, const char *key, const redisReply *v)
{
	char *s;

	if (v == NULL) {
		cJSON_AddNullToObject(obj, key);
		return;
	}
	s = json_text(v->str, v->len);
	cJSON_AddStringToObject(obj, key, s);
	free(s);
}

static void
json_add_str(cJSON *obj, const char *key, const char *str)
{
	char *s;

	if (str == NULL) {
		cJSON_AddNullToObject(obj, key);
		return;
	}
	s = json_text(str, strlen(str));
	cJSON_AddStringToObject(obj, key, s);
	free(s);
}

static void
json_add_num(cJSON *obj, const char *key, long long v)
{
	if (v < 0)
		cJSON_AddNullToObject(obj, key);
	else
		cJSON_AddNumberToObject(obj, key, (double)v);
}

/* One entry as a JSON object on one line. Caller frees. */
static char *
render_json(const struct dlq *d, const struct dl_entry *e)
{
	cJSON *obj = cJSON_CreateObject(), *fields;
	struct peek p;
	long long status = val_num(e->http_status);
	char *s;

	peek_event(d, e, &p);
	cJSON_AddStringToObject(obj, "id", e->id);
	json_add_text(obj, "reason", e->reason);
	json_add_text(obj, "detail", e->detail);
	json_add_text(obj, "failed_at", e->failed_at);
	json_add_num(obj, "attempts", val_num(e->attempts));
	/* dlq_http_status 0: no response. */
	json_add_num(obj, "http_status", status > 0 ? status : -1);
	json_add_text(obj, "consumer", e->consumer);
	json_add_text(obj, "source_stream", e->source_stream);
	json_add_text(obj, "source_id", e->source_id);
	json_add_str(obj, "event_id", p.id);
	json_add_str(obj, "event_type", p.type);
	json_add_str(obj, "document_id", p.document_id);
	cJSON_AddBoolToObject(obj, "replayable", e->reason != NULL &&
	    e->norig > 0);
	fields = cJSON_AddObjectToObject(obj, "fields");
	for (size_t i = 0; i < e->norig; i++) {
		const redisReply *k = e->kv->element[2 * i];
		char *name = json_text(k->str, k->len);

		json_add_text(fields, name, e->kv->element[2 * i + 1]);
		free(name);
	}
	peek_free(&p);
	s = cJSON_PrintUnformatted(obj);
	cJSON_Delete(obj);
	return s;
}

/* buf_text() of a C string; "-" for NULL. */
static void
buf_str(struct buf *b, const char *s)
{
	if (s == NULL)
		buf_putc(b, '-');
	else
		buf_text(b, s, strlen(s));
}

static void
line(struct buf *b, const char *label, const redisReply *v)
{
	buf_printf(b, "  %-12s ", label);
	if (v == NULL || v->len == 0)
		buf_putc(b, '-');
	else
		buf_text(b, v->str, v->len);
	buf_putc(b, '\n');
}

/* One entry as a block of lines. Caller frees. */
static char *
render_human(const struct dlq *d, const struct dl_entry *e)
{
	struct peek p;
	struct buf b;
	long long status = val_num(e->http_status);

	buf_init(&b);
	peek_event(d, e, &p);
	buf_printf(&b, "%s  ", e->id);
	if (e->reason != NULL)
		buf_text(&b, e->reason->str, e->reason->len);
	else
		buf_puts(&b, "(no dlq_reason: not a dead-letter entry)");
	buf_putc(&b, '\n');
	line(&b, "detail", e->detail);
	line(&b, "failed at", e->failed_at);
	line(&b, "attempts", e->attempts);
	if (status > 0)
		buf_printf(&b, "  %-12s %lld\n", "http status", status);
	else
		buf_printf(&b, "  %-12s -\n", "http status");
	buf_printf(&b, "  %-12s ", "source");
	buf_puts(&b, entry_target(d, e));
	buf_putc(&b, ' ');
	if (e->source_id != NULL)
		buf_text(&b, e->source_id->str, e->source_id->len);
	else
		buf_putc(&b, '-');
	buf_putc(&b, '\n');
	line(&b, "consumer", e->consumer);
	if (e->norig == 0)
		buf_printf(&b, "  %-12s none: cannot be replayed\n", "fields");
	else {
		buf_printf(&b, "  %-12s %zu\n", "fields", e->norig);
		buf_printf(&b, "  %-12s ", "event");
		buf_str(&b, p.id);
		buf_putc(&b, ' ');
		buf_str(&b, p.type);
		buf_putc(&b, '\n');
		buf_printf(&b, "  %-12s ", "document");
		buf_str(&b, p.document_id);
		buf_putc(&b, '\n');
	}
	peek_free(&p);
	return buf_steal(&b);
}

static void
list_print(const struct dlq *d, struct listing *l, char *s)
{
	if (d->o->json)
		printf("%s%s", l->shown > 1 ? ",\n" : "", s);
	else
		printf("%s%s", l->shown > 1 ? "\n" : "", s);
	free(s);
}

static int
list_entry(struct dlq *d, const struct dl_entry *e, void *arg)
{
	struct listing *l = arg;
	char *s;

	if (!entry_selected(d, e))
		return 0;
	l->shown++;
	tally_add(&l->tally, e->reason != NULL ? e->reason->str :
	    "(none)");
	s = d->o->json ? render_json(d, e) : render_human(d, e);
	if (l->streaming) {
		list_print(d, l, s);
		return 0;
	}
	l->out = xreallocarray(l->out, l->nout + 1, sizeof(*l->out));
	l->out[l->nout++] = s;
	return l->nout >= (size_t)d->o->count ? 1 : 0;
}

static void
list_summary(struct dlq *d, struct listing *l, long long total)
{
	struct tally *t = &l->tally;
	struct buf b;

	if (l->shown == 0 && (d->o->reason == NULL || total == 0)) {
		printf("no dead-letter entries in %s\n", d->key);
		return;
	}
	if (l->shown == 0) {
		printf("no dead-letter entries with reason %s in %s (%lld in "
		    "all)\n", d->o->reason, d->key, total);
		return;
	}
	printf("\n%ld of %lld dead-letter entries in %s shown; by reason:\n",
	    l->shown, total, d->key);
	qsort(t->rc, t->len, sizeof(*t->rc), reason_cmp);
	buf_init(&b);
	for (size_t i = 0; i < t->len; i++) {
		buf_reset(&b);
		buf_text(&b, t->rc[i].reason, strlen(t->rc[i].reason));
		printf("  %-20s %ld\n", b.data, t->rc[i].n);
	}
	buf_free(&b);
}

/*
 * The newest --count entries (all with --count 0), printed oldest first.
 * --count 0 prints while it pages forward; otherwise the entries are
 * gathered paging backwards from the newest.
 */
static int
cmd_list(struct dlq *d)
{
	struct sid first = { 0, 0 }, last = { UINT64_MAX, UINT64_MAX };
	struct listing l;
	long long total;
	int ret;

	memset(&l, 0, sizeof(l));
	l.streaming = d->o->count == 0;
	if (d->o->json)
		printf("[");
	ret = scan(d, first, last, !l.streaming, list_entry, &l);
	for (size_t i = l.nout; i-- > 0;) {
		/* shown counts the ones printed so far, for the separators. */
		l.shown = (long)(l.nout - i);
		list_print(d, &l, l.out[i]);
	}
	free(l.out);
	if (d->o->json)
		printf("%s]\n", l.shown > 0 ? "\n" : "");
	else if (ret == 0 && (total = length(d)) >= 0)
		list_summary(d, &l, total);
	else
		ret = -1;
	tally_free(&l.tally);
	return ret == 0 ? 0 : 1;
}

/* ---- replay -------------------------------------------------------------- */

/*
 * KEYS[1] the source stream, KEYS[2] the dead-letter stream; ARGV[1] the
 * dead-letter entry, ARGV[2..] the original fields. Nil if the entry is
 * gone (replayed or purged meanwhile), else the new entry's id.
 */
static const char replay_lua[] =
"if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then\n"
"  return false\n"
"end\n"
"local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))\n"
"redis.call('XDEL', KEYS[2], ARGV[1])\n"
"return id\n";

struct replaying {
	long	 selected;
	long	 replayed;
	long	 refused;	/* no original fields */
	long	 errors;
};

static void
say_refused(const struct dl_entry *e, const char *why)
{
	fprintf(stderr, "stagerelay: dlq: not replayed %s (%s): %s\n", e->id,
	    e->reason != NULL ? e->reason->str : "no reason", why);
}

static int
replay_entry(struct dlq *d, const struct dl_entry *e, void *arg)
{
	struct replaying *rp = arg;
	const char *target = entry_target(d, e), **argv;
	size_t *lens, argc = 0;
	char what[SID_MAX + 32];
	redisReply *r;

	if (!entry_selected(d, e))
		return 0;
	rp->selected++;
	if (e->reason == NULL) {
		say_refused(e, "not a dead-letter entry stagerelay wrote");
		rp->refused++;
		return 0;
	}
	if (e->norig == 0) {
		say_refused(e, "it has no original fields to replay, only "
		    "the dlq_* fields");
		rp->refused++;
		return 0;
	}
	if (strcmp(target, d->key) == 0) {
		say_refused(e, "its source stream is the dead-letter stream");
		rp->refused++;
		return 0;
	}
	if (d->o->dry_run) {
		printf("would replay %s -> %s (%s)\n", e->id, target,
		    e->reason->str);
		rp->replayed++;
		return 0;
	}
	argv = xcalloc(6 + 2 * e->norig, sizeof(*argv));
	lens = xcalloc(6 + 2 * e->norig, sizeof(*lens));
#define ARG(s, l) do { argv[argc] = (s); lens[argc] = (l); argc++; } while (0)
	ARG("EVAL", 4);
	ARG(replay_lua, sizeof(replay_lua) - 1);
	ARG("2", 1);
	ARG(target, strlen(target));
	ARG(d->key, strlen(d->key));
	ARG(e->id, strlen(e->id));
	for (size_t i = 0; i < 2 * e->norig; i++)
		ARG(e->kv->element[i]->str, e->kv->element[i]->len);
#undef ARG
	snprintf(what, sizeof(what), "replay of %s", e->id);
	r = command(d, what, (int)argc, argv, lens);
	free(argv);
	free(lens);
	if (r == NULL) {
		rp->errors++;
		/* A lost connection fails every entry after this one too. */
		return d->rc->err ? -1 : 0;
	}
	if (r->type == REDIS_REPLY_STRING) {
		printf("replayed %s -> %s (%s)\n", e->id, r->str,
		    e->reason->str);
		rp->replayed++;
	} else {
		fprintf(stderr, "stagerelay: dlq: %s left %s while it was "
		    "being replayed\n", e->id, d->key);
		rp->errors++;
	}
	freeReplyObject(r);
	return 0;
}

/* Whether ids[i] names the same entry as an earlier argument. */
static bool
named_before(char **ids, int i)
{
	struct sid a, b;

	if (sid_parse(ids[i], &a) == -1)
		return false;
	for (int j = 0; j < i; j++)
		if (sid_parse(ids[j], &b) == 0 && sid_cmp(&a, &b) == 0)
			return true;
	return false;
}

/* One entry named on the command line. */
static void
replay_id(struct dlq *d, const char *arg, struct replaying *rp)
{
	char id[SID_MAX];
	const char *argv[6] = { "XRANGE", d->key, id, id, "COUNT", "1" };
	struct dl_entry de;
	struct sid sid;
	redisReply *r;
	long refused = rp->refused;

	if (sid_parse(arg, &sid) == -1) {
		fprintf(stderr, "stagerelay: dlq: \"%s\" is not a stream "
		    "entry id\n", arg);
		rp->selected++;
		rp->errors++;
		return;
	}
	sid_format(id, sizeof(id), &sid);
	if ((r = command(d, NULL, 6, argv, NULL)) == NULL) {
		rp->selected++;
		rp->errors++;
		return;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
	    entry_parse(r->element[0], &de) == -1) {
		fprintf(stderr, "stagerelay: dlq: no entry %s in %s\n", id,
		    d->key);
		rp->selected++;
		rp->errors++;
	} else if (replay_entry(d, &de, rp) == 0 && rp->refused > refused) {
		/* Named, yet it cannot be replayed: that is an error. */
		rp->errors++;
	}
	freeReplyObject(r);
}

static int
cmd_replay(struct dlq *d)
{
	struct replaying rp;
	struct sid first = { 0, 0 }, last;
	long failed;
	int ret = 0;

	memset(&rp, 0, sizeof(rp));
	if (d->o->nids > 0) {
		for (int i = 0; i < d->o->nids; i++)
			if (!named_before(d->o->ids, i))
				replay_id(d, d->o->ids[i], &rp);
	} else {
		/* Up to the newest entry now, not what fails meanwhile. */
		if ((ret = newest(d, &last)) == 1)
			ret = scan(d, first, last, false, replay_entry, &rp);
		if (ret == -1)
			rp.errors++;
	}
	if (rp.selected == 0 && rp.errors == 0) {
		printf("no dead-letter entries to replay%s%s in %s\n",
		    d->o->reason ? " with reason " : "",
		    d->o->reason ? d->o->reason : "", d->key);
		return 0;
	}
	failed = rp.selected - rp.replayed - rp.refused;
	printf("%s %ld of %ld dead-letter entr%s", d->o->dry_run ?
	    "would replay" : "replayed", rp.replayed, rp.selected,
	    rp.selected == 1 ? "y" : "ies");
	if (rp.refused > 0 && failed > 0)
		printf(" (%ld cannot be replayed, %ld failed)", rp.refused,
		    failed);
	else if (rp.refused > 0)
		printf(" (%ld cannot be replayed)", rp.refused);
	else if (failed > 0)
		printf(" (%ld failed)", failed);
	printf("\n");
	return rp.errors > 0 ? 1 : 0;
}

/* ---- purge --------------------------------------------------------------- */

struct purging {
	char		**ids;		/* to XDEL, up to PAGE */
	size_t		  n;
	long long	  deleted;
};

static int
purge_flush(struct dlq *d, struct purging *pg)
{
	const char **argv;
	redisReply *r;

	if (pg->n == 0)
		return 0;
	argv = xcalloc(pg->n + 2, sizeof(*argv));
	argv[0] = "XDEL";
	argv[1] = d->key;
	for (size_t i = 0; i < pg->n; i++)
		argv[i + 2] = pg->ids[i];
	r = command(d, NULL, (int)pg->n + 2, argv, NULL);
	free(argv);
	for (size_t i = 0; i < pg->n; i++)
		free(pg->ids[i]);
	pg->n = 0;
	if (r == NULL)
		return -1;
	if (r->type == REDIS_REPLY_INTEGER)
		pg->deleted += r->integer;
	freeReplyObject(r);
	return 0;
}

static int
purge_entry(struct dlq *d, const struct dl_entry *e, void *arg)
{
	struct purging *pg = arg;

	if (!entry_selected(d, e))
		return 0;
	if (d->o->dry_run) {
		pg->deleted++;
		return 0;
	}
	if (pg->ids == NULL)
		pg->ids = xcalloc(PAGE, sizeof(*pg->ids));
	pg->ids[pg->n++] = xstrdup(e->id);
	return pg->n < PAGE || purge_flush(d, pg) == 0 ? 0 : -1;
}

/*
 * XTRIM: MAXLEN 0 for --all, MINID for --before (Redis 6.2 on). Returns
 * the number deleted, or -1 when the server cannot (then the caller
 * deletes page by page).
 */
static long long
purge_trim(struct dlq *d, const char *minid)
{
	const char *argv[4] = { "XTRIM", d->key, minid ? "MINID" : "MAXLEN",
	    minid ? minid : "0" };
	redisReply *r;
	long long n = -1;

	if ((r = redisCommandArgv(d->rc, 4, argv, NULL)) == NULL) {
		fprintf(stderr, "stagerelay: dlq: redis: XTRIM %s: %s\n",
		    d->key, d->rc->errstr[0] ? d->rc->errstr :
		    "connection lost");
		return -1;
	}
	if (r->type == REDIS_REPLY_INTEGER)
		n = r->integer;
	else
		log_debug("dlq: XTRIM %s %s: %s; deleting page by page",
		    d->key, argv[2], r->type == REDIS_REPLY_ERROR ? r->str :
		    "unexpected reply");
	freeReplyObject(r);
	return n;
}

static int
cmd_purge(struct dlq *d)
{
	struct sid first = { 0, 0 }, last, before;
	char minid[SID_MAX];
	struct purging pg;
	long long n = -1;
	int ret = 0;

	memset(&pg, 0, sizeof(pg));
	if (d->o->before != NULL) {
		sid_parse(d->o->before, &before);	/* checked already */
		sid_format(minid, sizeof(minid), &before);
	}
	if (!d->o->dry_run && d->o->reason == NULL)
		n = purge_trim(d, d->o->before ? minid : NULL);
	if (n >= 0)
		pg.deleted = n;
	else if (d->rc->err)
		ret = -1;	/* the connection is gone (said) */
	else if ((ret = newest(d, &last)) == 1) {
		/* Only what is there now: not what fails meanwhile. */
		if (d->o->before != NULL && sid_cmp(&before, &last) <= 0) {
			last = before;
			if (sid_prev(&last) == -1)
				ret = 0;	/* nothing is older than 0-0 */
		}
		if (ret == 1)
			ret = scan(d, first, last, false, purge_entry, &pg);
		if (ret == 0)
			ret = purge_flush(d, &pg);
	}
	for (size_t i = 0; i < pg.n; i++)
		free(pg.ids[i]);	/* left by an error */
	free(pg.ids);
	if (ret == -1) {
		if (pg.deleted > 0)
			printf("purged %lld dead-letter entries from %s before "
			    "the error\n", pg.deleted, d->key);
		return 1;
	}
	printf("%s %lld dead-letter entr%s from %s\n", d->o->dry_run ?
	    "would purge" : "purged", pg.deleted, pg.deleted == 1 ? "y" :
	    "ies", d->key);
	return 0;
}

/* ---- the command line ---------------------------------------------------- */

static void
dlq_usage(FILE *f)
{
	fprintf(f,
"usage: stagerelay dlq list [-c file] [--count n] [--reason r] [--json]\n"
"       stagerelay dlq replay [-c file] id ... | --all | --reason r\n"
"                             [--dry-run]\n"
"       stagerelay dlq purge [-c file] --before id | --all [--reason r]\n"
"                            [--dry-run]\n");
}

static int usage_error(const char *, ...)
	    __attribute__((format(printf, 1, 2)));

/* Says what is wrong, then the usage. Returns EXIT_USAGE. */
static int
usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "stagerelay: dlq: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	dlq_usage(stderr);
	return EXIT_USAGE;
}

static const struct {
	unsigned	 bit;
	const char	*name;
} opt_names[] = {
	{ OPT_COUNT, "--count" }, { OPT_REASON, "--reason" },
	{ OPT_JSON, "--json" }, { OPT_ALL, "--all" },
	{ OPT_DRY_RUN, "--dry-run" }, { OPT_BEFORE, "--before" }
};

/* Checks the options against the subcommand. Returns 0 or EXIT_USAGE. */
static int
check_opts(struct opts *o)
{
	unsigned allowed;
	struct sid sid;

	if (strcmp(o->cmd, "list") == 0)
		allowed = OPT_COUNT | OPT_REASON | OPT_JSON;
	else if (strcmp(o->cmd, "replay") == 0)
		allowed = OPT_REASON | OPT_ALL | OPT_DRY_RUN;
	else if (strcmp(o->cmd, "purge") == 0)
		allowed = OPT_REASON | OPT_ALL | OPT_DRY_RUN | OPT_BEFORE;
	else
		return usage_error("unknown subcommand \"%s\"", o->cmd);
	for (size_t i = 0; i < sizeof(opt_names) / sizeof(opt_names[0]); i++)
		if ((o->given & opt_names[i].bit) && !(allowed &
		    opt_names[i].bit))
			return usage_error("%s does not go with %s",
			    opt_names[i].name, o->cmd);
	if (o->nids > 0 && strcmp(o->cmd, "replay") != 0)
		return usage_error("unexpected \"%s\"", o->ids[0]);
	if (strcmp(o->cmd, "replay") == 0 && (o->nids > 0) + o->all +
	    (o->reason != NULL) != 1)
		return usage_error("replay takes entry ids, --all or "
		    "--reason: exactly one of them");
	if (strcmp(o->cmd, "purge") == 0 && (o->before != NULL) + o->all != 1)
		return usage_error("purge takes --before id or --all: one "
		    "of them");
	if (o->before != NULL && sid_parse(o->before, &sid) == -1)
		return usage_error("--before: expected a stream entry id "
		    "(ms-seq or ms), got \"%s\"", o->before);
	if (o->reason != NULL && *o->reason == '\0')
		return usage_error("--reason: expected a reason");
	return 0;
}

int
dlq_main(struct cli *cli, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ "help",	no_argument,		NULL, 'h' },
		{ "count",	required_argument,	NULL, 'n' },
		{ "reason",	required_argument,	NULL, 'r' },
		{ "json",	no_argument,		NULL, 'J' },
		{ "all",	no_argument,		NULL, 'A' },
		{ "dry-run",	no_argument,		NULL, 'D' },
		{ "before",	required_argument,	NULL, 'B' },
		{ NULL,		0,			NULL, 0 }
	};
	struct config cfg;
	struct opts o;
	struct dlq d;
	char *end;
	int ch, code;

	memset(&o, 0, sizeof(o));
	o.count = DEFAULT_COUNT;
	optind = 0;	/* glibc: 0 starts a fresh scan */
	while ((ch = getopt_long(argc, argv, "c:vh", longopts, NULL)) != -1) {
		if (cli_option(cli, ch, optarg))
			continue;
		switch (ch) {
		case 'h':
			dlq_usage(stdout);
			return 0;
		case 'n':
			errno = 0;
			o.count = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end != '\0' ||
			    o.count < 0 || o.count > INT_MAX)
				return usage_error("--count: expected a "
				    "number, 0 for all, got \"%s\"", optarg);
			o.given |= OPT_COUNT;
			break;
		case 'r':
			o.reason = optarg;
			o.given |= OPT_REASON;
			break;
		case 'J':
			o.json = true;
			o.given |= OPT_JSON;
			break;
		case 'A':
			o.all = true;
			o.given |= OPT_ALL;
			break;
		case 'D':
			o.dry_run = true;
			o.given |= OPT_DRY_RUN;
			break;
		case 'B':
			o.before = optarg;
			o.given |= OPT_BEFORE;
			break;
		default:
			dlq_usage(stderr);
			return EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		return usage_error("expected list, replay or purge");
	o.cmd = argv[0];
	o.ids = argv + 1;
	o.nids = argc - 1;
	if ((code = check_opts(&o)) != 0)
		return code;

	if ((code = cli_load(cli, &cfg, "dlq")) != 0)
		return code;
	memset(&d, 0, sizeof(d));
	d.cfg = &cfg;
	d.o = &o;
	d.key = cfg.dead_letter_stream;
	d.stream = stream_new(&cfg, "dlq");
	if ((d.rc = stream_redis(d.stream)) == NULL)
		code = 1;	/* stream_connect() said why */
	else if (strcmp(o.cmd, "list") == 0)
		code = cmd_list(&d);
	else if (strcmp(o.cmd, "replay") == 0)
		code = cmd_replay(&d);
	else
		code = cmd_purge(&d);
	fflush(stdout);
	stream_free(d.stream);
	config_free(&cfg);
	return code;
}
