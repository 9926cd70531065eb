/*
 * config.c: the event_consumer: section of a YAML file, validated.
 *
 * libyaml's document API keeps the position of every node, so each error
 * names file:line:column. The keys of each mapping are described by a
 * table, so one walk does the type checks, the did-you-mean, the duplicate
 * check and the pending-key report. Other top-level sections of the file
 * (Stage 2's own settings) are never looked at.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <grp.h>
#include <sys/stat.h>

#include <yaml.h>
#include <cJSON.h>

#include "config.h"
#include "httpd.h"
#include "log.h"
#include "route.h"
#include "template.h"
#include "util.h"

#define SECTION		"event_consumer"
#define REDACTED	"<redacted>"

/*
 * Keys whose behaviour arrives in a later release: type-checked now,
 * reported by config_warn_pending() when set in the file. Patterns are
 * dotted paths; "[]" stands for any list index and a trailing ".*" for
 * every key below. Shipping a feature means deleting its lines here.
 */
static const struct {
	const char	*key;
	const char	*what;
} pending_table[] = {
	/* Every key is in effect in this release. */
	{ NULL, NULL }
};

enum ktype {
	KT_BOOL,
	KT_INT,		/* int within min..max */
	KT_LONG,	/* long within min..max */
	KT_SIZE,	/* size_t within min..max */
	KT_DOUBLE,	/* double within 0..max */
	KT_STRING,	/* char *; null gives "" (validated afterwards) */
	KT_OPTSTRING,	/* char *; null or "" leaves NULL */
	KT_CHOICE,	/* char *, one of choices, stored as spelled there */
	KT_MODE,	/* enum content_mode, index into choices */
	KT_LIST,	/* char ** at off, size_t count at off2 */
	KT_MAP,		/* nested mapping described by sub */
	KT_HEADERS,	/* nlp_api.headers: name -> value */
	KT_ROUTES,	/* the routes list */
	KT_BODY,	/* any YAML tree, kept as a cJSON template */
	KT_SECRET_FILE	/* a file whose first line fills the char * at off */
};

#define KF_TEMPLATE	0x1	/* string is a template: syntax-checked now */
#define KF_NONEMPTY	0x2	/* optional string: null is absent, "" an error */

struct kdef {
	const char		*name;
	enum ktype		 type;
	size_t			 off;
	size_t			 off2;
	long long		 min;
	long long		 max;
	const char *const	*choices;
	const struct kdef	*sub;
	const char		*alias;	/* the key this name stands for */
	int			 flags;
};

#define CFG(m)	offsetof(struct config, m)
#define RT(m)	offsetof(struct route, m)

#define K_BOOL(n, o)	{ .name = (n), .type = KT_BOOL, .off = (o) }
#define K_INT(n, o, lo, hi) \
	{ .name = (n), .type = KT_INT, .off = (o), .min = (lo), .max = (hi) }
#define K_LONG(n, o, lo, hi) \
	{ .name = (n), .type = KT_LONG, .off = (o), .min = (lo), .max = (hi) }
#define K_SIZE(n, o, lo, hi) \
	{ .name = (n), .type = KT_SIZE, .off = (o), .min = (lo), .max = (hi) }
#define K_DOUBLE(n, o, hi) \
	{ .name = (n), .type = KT_DOUBLE, .off = (o), .max = (hi) }
#define K_STR(n, o)	{ .name = (n), .type = KT_STRING, .off = (o) }
#define K_OPT(n, o)	{ .name = (n), .type = KT_OPTSTRING, .off = (o) }
#define K_CHOICE(n, o, c) \
	{ .name = (n), .type = KT_CHOICE, .off = (o), .choices = (c) }
#define K_MAP(n, s)	{ .name = (n), .type = KT_MAP, .sub = (s) }
#define K_END		{ .name = NULL }

static const char *const log_formats[] = { "logfmt", "json", NULL };
static const char *const log_levels[] = {
	"debug", "info", "warn", "warning", "error", NULL
};
static const char *const http_methods[] = {
	"GET", "POST", "PUT", "PATCH", "DELETE", NULL
};
static const char *const route_kinds[] = { "document", "batch", NULL };
/* Same order as enum content_mode. */
static const char *const content_modes[] = {
	"body", "structured", "binary", NULL
};

/*
 * Ranges are what an operator could sensibly mean; anything outside is a
 * typo (an extra zero, seconds given as milliseconds).
 */
static const struct kdef nlp_api_keys[] = {
	K_STR("base_url", CFG(nlp_api.base_url)),
	K_INT("timeout_ms", CFG(nlp_api.timeout_ms), 100, 3600000),
	K_INT("connect_timeout_ms", CFG(nlp_api.connect_timeout_ms),
	    100, 600000),
	K_INT("max_in_flight", CFG(nlp_api.max_in_flight), 1, 1024),
	K_SIZE("max_request_bytes", CFG(nlp_api.max_request_bytes), 1024,
	    (size_t)1 << 30),
	K_SIZE("max_response_bytes", CFG(nlp_api.max_response_bytes), 1024,
	    (size_t)1 << 30),
	{ .name = "headers", .type = KT_HEADERS },
	K_OPT("ca_file", CFG(nlp_api.ca_file)),
	K_BOOL("verify_tls", CFG(nlp_api.verify_tls)),
	K_END
};

static const struct kdef ledger_keys[] = {
	K_STR("dsn", CFG(ledger.dsn)),			/* "" = libpq environment */
	K_STR("schema", CFG(ledger.schema)),
	K_INT("lease_seconds", CFG(ledger.lease_seconds), 5, 86400),
	K_OPT("password_file", CFG(ledger.password_file)),
	K_END
};

static const struct kdef logging_keys[] = {
	K_CHOICE("format", CFG(logging.format), log_formats),
	K_CHOICE("level", CFG(logging.level), log_levels),
	K_OPT("file", CFG(logging.file)),
	K_END
};

static const struct kdef metrics_keys[] = {
	K_STR("listen", CFG(metrics.listen)),		/* "" disables */
	K_END
};

static const struct kdef ingress_keys[] = {
	K_BOOL("enabled", CFG(ingress.enabled)),
	K_STR("listen", CFG(ingress.listen)),
	K_STR("path", CFG(ingress.path)),
	/* "" is an error: a ${VAR:-} left empty must not turn checks off. */
	{ .name = "secret", .type = KT_OPTSTRING, .off = CFG(ingress.secret),
	    .flags = KF_NONEMPTY },
	{ .name = "secret_file", .type = KT_SECRET_FILE,
	    .off = CFG(ingress.secret) },
	K_SIZE("max_body_bytes", CFG(ingress.max_body_bytes), 1024,
	    (size_t)1 << 30),
	K_INT("max_batch_events", CFG(ingress.max_batch_events), 1, 100000),
	K_LONG("stream_maxlen", CFG(ingress.stream_maxlen), 0, 1000000000),
	K_INT("max_connections", CFG(ingress.max_connections), 1, 1024),
	K_INT("redis_timeout_ms", CFG(ingress.redis_timeout_ms), 100, 600000),
	K_END
};

static const struct kdef supervisor_keys[] = {
	K_INT("worker_timeout", CFG(supervisor.worker_timeout), 1, 3600),
	K_INT("shutdown_timeout", CFG(supervisor.shutdown_timeout), 1, 3600),
	K_END
};

static const struct kdef circuit_breaker_keys[] = {
	K_INT("failure_threshold", CFG(circuit_breaker.failure_threshold),
	    1, 10000),
	K_INT("open_seconds", CFG(circuit_breaker.open_seconds), 1, 3600),
	K_END
};

/* Not templates: the SQL takes $1..$n, the values come from params. */
static const struct kdef route_query_keys[] = {
	K_OPT("sql", RT(documents_query.sql)),
	{ .name = "params", .type = KT_LIST, .off = RT(documents_query.params),
	    .off2 = RT(documents_query.nparams) },
	K_OPT("dsn", RT(documents_query.dsn)),	/* NULL = ledger.dsn */
	K_OPT("password_file", RT(documents_query.password_file)),
	K_INT("timeout_ms", RT(documents_query.timeout_ms), 100, 3600000),
	K_END
};

static const struct kdef route_keys[] = {
	K_OPT("name", RT(name)),
	{ .name = "types", .type = KT_LIST, .off = RT(types),
	    .off2 = RT(ntypes) },
	K_CHOICE("method", RT(method), http_methods),
	{ .name = "path", .type = KT_STRING, .off = RT(path),
	    .flags = KF_TEMPLATE },
	{ .name = "idempotency_key", .type = KT_STRING,
	    .off = RT(idempotency_key), .flags = KF_TEMPLATE },
	{ .name = "body", .type = KT_BODY, .off = RT(body) },
	{ .name = "content_mode", .type = KT_MODE, .off = RT(content_mode),
	    .choices = content_modes },
	K_OPT("success_field", RT(success_field)),
	K_OPT("job_id_field", RT(job_id_field)),
	{ .name = "documents_file", .type = KT_OPTSTRING,
	    .off = RT(documents_file), .flags = KF_TEMPLATE },
	K_MAP("documents_query", route_query_keys),
	K_CHOICE("kind", RT(kind), route_kinds),
	K_END
};

static const struct kdef section_keys[] = {
	/* The proposal's keys. */
	K_BOOL("enabled", CFG(enabled)),
	K_STR("source_stream", CFG(source_stream)),
	K_STR("redis_host", CFG(redis_host)),
	K_INT("redis_port", CFG(redis_port), 1, 65535),
	K_INT("redis_db", CFG(redis_db), 0, 15),
	K_STR("consumer_group", CFG(consumer_group)),
	K_STR("consumer_name", CFG(consumer_name)),
	{ .name = "consume_events", .type = KT_LIST, .off = CFG(consume_events),
	    .off2 = CFG(nconsume_events) },
	K_BOOL("auto_process", CFG(auto_process)),
	K_BOOL("batch_mode", CFG(batch_mode)),
	K_INT("poll_interval_ms", CFG(poll_interval_ms), 1, 600000),
	K_INT("batch_size", CFG(batch_size), 1, 10000),
	K_INT("concurrent_tasks", CFG(concurrent_tasks), 1, 256),
	{ .name = "workers", .type = KT_INT, .off = CFG(concurrent_tasks),
	    .min = 1, .max = 256, .alias = "concurrent_tasks" },
	K_BOOL("retry_failed", CFG(retry_failed)),
	K_INT("max_retries", CFG(max_retries), 0, 1000),
	K_DOUBLE("retry_delay_seconds", CFG(retry_delay_seconds), 86400),
	K_STR("dead_letter_stream", CFG(dead_letter_stream)),
	K_BOOL("process_backlog", CFG(process_backlog)),
	K_INT("backlog_batch_size", CFG(backlog_batch_size), 1, 10000),
	K_DOUBLE("backlog_max_age_hours", CFG(backlog_max_age_hours), 87600),
	K_BOOL("check_already_processed", CFG(check_already_processed)),
	K_DOUBLE("deduplication_ttl_hours", CFG(deduplication_ttl_hours),
	    87600),

	/* stagerelay's own keys. */
	K_OPT("redis_username", CFG(redis_username)),
	K_OPT("redis_password", CFG(redis_password)),
	{ .name = "redis_password_file", .type = KT_SECRET_FILE,
	    .off = CFG(redis_password) },
	K_STR("event_field", CFG(event_field)),
	/* Redis strings stop at 512 MiB. */
	K_SIZE("max_event_bytes", CFG(max_event_bytes), 1024, 536870912),
	K_SIZE("max_entry_fields", CFG(max_entry_fields), 8, 100000),
	/* cJSON stops at 1000 levels on its own, with a vaguer error. */
	K_INT("max_json_depth", CFG(max_json_depth), 2, 512),
	K_STR("shared_dir", CFG(shared_dir)),
	K_INT("max_batch_documents", CFG(max_batch_documents), 1, 1000000),
	K_SIZE("max_documents_file_bytes", CFG(max_documents_file_bytes),
	    1024, (size_t)1 << 34),
	K_SIZE("max_documents_per_file", CFG(max_documents_per_file), 1,
	    100000000),
	K_DOUBLE("max_retry_delay_seconds", CFG(max_retry_delay_seconds),
	    86400),
	K_LONG("dead_letter_maxlen", CFG(dead_letter_maxlen), 0, 1000000000),
	K_INT("claim_interval_ms", CFG(claim_interval_ms), 100, 3600000),
	K_INT("claim_idle_ms", CFG(claim_idle_ms), 1000, 86400000),
	K_INT("max_deliveries", CFG(max_deliveries), 1, 1000),
	K_LONG("lag_alert_threshold", CFG(lag_alert_threshold), 0,
	    1000000000),
	K_INT("idle_alert_minutes", CFG(idle_alert_minutes), 0, 10080),
	K_MAP("nlp_api", nlp_api_keys),
	{ .name = "routes", .type = KT_ROUTES },
	K_MAP("ledger", ledger_keys),
	K_MAP("logging", logging_keys),
	K_MAP("metrics", metrics_keys),
	K_MAP("ingress", ingress_keys),
	K_MAP("supervisor", supervisor_keys),
	K_MAP("circuit_breaker", circuit_breaker_keys),
	K_END
};

/* A key met in the file: for duplicates, pending keys and error lines. */
struct seen {
	char	*path;		/* canonical, e.g. event_consumer.routes[0].path */
	char	*written;	/* as written: an alias keeps its own name */
	int	 line;
	int	 col;
};

/* A *_file key, read once the whole section is known. */
struct secret_file {
	size_t	 off;		/* the char * in struct config it fills */
	char	*file;
	char	*key;		/* dotted path, for messages */
	char	*twin;		/* the key it stands in for */
	int	 line;
	int	 col;
};

struct loader {
	const char		*name;
	char			*err;
	size_t			 errlen;
	bool			 failed;
	yaml_document_t		*doc;
	struct config		*cfg;
	struct seen		*seen;
	size_t			 nseen;
	struct secret_file	*secrets;
	size_t			 nsecrets;
	char			**literal;	/* keys whose secret is in the file */
	size_t			 nliteral;
	bool			 from_file;	/* name is a file to stat */
	bool			 routes_given;
	bool			 stream_from_env;
	int			 section_line;
	int			 section_col;
	size_t			 budget;	/* body nodes left: alias bombs */
	char			 hostname[256];
};

#define BODY_MAX_NODES	100000
#define BODY_MAX_DEPTH	64

static int	parse_map(struct loader *, void *, const struct kdef *,
		    yaml_node_t *, const char *);
static void	literal_note(struct loader *, const char *, const char *,
		    const yaml_node_t *);

/* ---- errors ----------------------------------------------------------- */

static int __attribute__((format(printf, 4, 0)))
vlerr(struct loader *ld, int line, int col, const char *fmt, va_list ap)
{
	char *msg, *full;

	/* The first error is the one that explains the others. */
	if (ld->failed)
		return -1;
	ld->failed = true;
	if (ld->err == NULL || ld->errlen == 0)
		return -1;
	if (vasprintf(&msg, fmt, ap) == -1)
		msg = NULL;
	if (line > 0)
		full = xasprintf("%s:%d:%d: %s", ld->name, line, col,
		    msg ? msg : "error");
	else
		full = xasprintf("%s: %s", ld->name, msg ? msg : "error");
	strlcpy_s(ld->err, full, ld->errlen);
	free(full);
	free(msg);
	return -1;
}

static int __attribute__((format(printf, 4, 5)))
lerr_at(struct loader *ld, int line, int col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlerr(ld, line, col, fmt, ap);
	va_end(ap);
	return -1;
}

static int __attribute__((format(printf, 3, 4)))
lerr(struct loader *ld, const yaml_node_t *n, const char *fmt, ...)
{
	va_list ap;
	int line = 1, col = 1;

	if (n != NULL) {
		line = (int)n->start_mark.line + 1;
		col = (int)n->start_mark.column + 1;
	}
	va_start(ap, fmt);
	vlerr(ld, line, col, fmt, ap);
	va_end(ap);
	return -1;
}

/* Where a key was set, or the section itself when it was left default. */
static const struct seen *
seen_find(const struct loader *ld, const char *path)
{
	for (size_t i = 0; i < ld->nseen; i++)
		if (strcmp(ld->seen[i].path, path) == 0)
			return &ld->seen[i];
	return NULL;
}

static void
seen_add(struct loader *ld, const char *path, const char *written,
    const yaml_node_t *n)
{
	struct seen *s;

	ld->seen = xreallocarray(ld->seen, ld->nseen + 1, sizeof(*ld->seen));
	s = &ld->seen[ld->nseen++];
	s->path = xstrdup(path);
	s->written = xstrdup(written);
	s->line = (int)n->start_mark.line + 1;
	s->col = (int)n->start_mark.column + 1;
}

/* A validation error, placed at the key when the file set it. */
static int __attribute__((format(printf, 3, 4)))
verr(struct loader *ld, const char *key, const char *fmt, ...)
{
	const struct seen *s = seen_find(ld, key);
	va_list ap;

	va_start(ap, fmt);
	if (s != NULL)
		vlerr(ld, s->line, s->col, fmt, ap);
	else
		vlerr(ld, ld->section_line, ld->section_col, fmt, ap);
	va_end(ap);
	return -1;
}

/* ---- small helpers ---------------------------------------------------- */

static yaml_node_t *
node_at(struct loader *ld, int index)
{
	return yaml_document_get_node(ld->doc, index);
}

static const char *
node_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_MAPPING_NODE:
		return "a mapping";
	case YAML_SEQUENCE_NODE:
		return "a list";
	default:
		return "a scalar";
	}
}

static const char *
scalar_text(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* Plain ~, null or nothing at all: YAML's null. */
static bool
is_null(const yaml_node_t *n)
{
	const char *s;

	if (n->type != YAML_SCALAR_NODE ||
	    n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	s = scalar_text(n);
	return *s == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
	    strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

/* Quoted for messages, cut short so a long value does not drown them. */
static char *
shown(const char *s)
{
	size_t n = strlen(s);

	if (n > 60)
		return xasprintf("\"%.57s...\"", s);
	return xasprintf("\"%s\"", s);
}

static int
parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", NULL };
	static const char *const no[] = { "false", "no", "off", NULL };

	for (size_t i = 0; yes[i] != NULL; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

/* Decimal only: 0x10 or 1e3 in an integer key is a mistake, not a trick. */
static int
parse_integer(const char *s, long long *out)
{
	const char *p = s;
	char *end;

	if (*p == '+' || *p == '-')
		p++;
	if (!isdigit((unsigned char)*p))
		return -1;
	for (; *p != '\0'; p++)
		if (!isdigit((unsigned char)*p))
			return -1;
	errno = 0;
	*out = strtoll(s, &end, 10);
	if (errno == ERANGE)
		return 1;
	return 0;
}

/* A YAML/JSON-looking number; strtod alone would take "inf" and hex. */
static bool
looks_numeric(const char *s, bool *integral)
{
	const char *p = s;
	size_t digits = 0;

	*integral = true;
	if (*p == '+' || *p == '-')
		p++;
	while (isdigit((unsigned char)*p)) {
		p++;
		digits++;
	}
	if (*p == '.') {
		*integral = false;
		p++;
		while (isdigit((unsigned char)*p)) {
			p++;
			digits++;
		}
	}
	if (digits == 0)
		return false;
	if (*p == 'e' || *p == 'E') {
		*integral = false;
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!isdigit((unsigned char)*p))
			return false;
		while (isdigit((unsigned char)*p))
			p++;
	}
	return *p == '\0';
}

static int
parse_number(const char *s, double *out)
{
	bool integral;

	if (!looks_numeric(s, &integral))
		return -1;
	errno = 0;
	*out = strtod(s, NULL);
	if (errno == ERANGE || !isfinite(*out))
		return -1;
	return 0;
}

static size_t
edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), d;
	size_t *row = xcalloc(lb + 1, sizeof(*row));

	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];

		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j], best;
			/* Case slips count as typos, not as new words. */
			size_t cost = tolower((unsigned char)a[i - 1]) !=
			    tolower((unsigned char)b[j - 1]);

			best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			if (diag + cost < best)
				best = diag + cost;
			row[j] = best;
			diag = up;
		}
	}
	d = row[lb];
	free(row);
	return d;
}

/* Nearest name within max(2, len/3) edits, or NULL. */
static const char *
nearest(const char *word, const char *const *names, size_t n)
{
	size_t limit = strlen(word) / 3, best = SIZE_MAX;
	const char *found = NULL;

	if (limit < 2)
		limit = 2;
	for (size_t i = 0; i < n; i++) {
		size_t d = edit_distance(word, names[i]);

		if (d <= limit && d < best) {
			best = d;
			found = names[i];
		}
	}
	return found;
}

/* ---- environment ------------------------------------------------------ */

static const char *
env_lookup(struct loader *ld, const char *name)
{
	const char *v = getenv(name);

	/*
	 * HOSTNAME is a shell variable that systemd and cron never export;
	 * the proposal's consumer_name: "${HOSTNAME}" must still work there.
	 */
	if (v == NULL && strcmp(name, "HOSTNAME") == 0) {
		if (gethostname(ld->hostname, sizeof(ld->hostname) - 1) == 0) {
			ld->hostname[sizeof(ld->hostname) - 1] = '\0';
			return ld->hostname;
		}
	}
	return v;
}

/*
 * Expands ${VAR}, ${VAR:-default} (default when unset or empty; it may
 * itself hold ${...}) and $$. Any other $ is kept, so prices and regexes
 * need no escaping.
 */
static int
expand_into(struct loader *ld, const yaml_node_t *n, const char *key,
    const char *in, size_t len, struct buf *b, int depth)
{
	const char *p = in, *lim = in + len;

	if (depth > 8)
		return lerr(ld, n, "%s: ${...} nested too deeply", key);
	while (p < lim) {
		const char *start, *end, *q, *val;
		size_t namelen;
		int nest;
		char *name;

		if (*p != '$' || p + 1 >= lim) {
			buf_putc(b, *p++);
			continue;
		}
		if (p[1] == '$') {
			buf_putc(b, '$');
			p += 2;
			continue;
		}
		if (p[1] != '{') {
			buf_putc(b, *p++);
			continue;
		}
		start = p + 2;
		for (end = start, nest = 0; end < lim; end++) {
			if (end[0] == '$' && end + 1 < lim && end[1] == '{') {
				nest++;
				end++;
			} else if (*end == '}' && nest-- == 0)
				break;
		}
		if (end >= lim)
			return lerr(ld, n, "%s: unterminated ${ (write $$ for "
			    "a literal $)", key);
		for (q = start; q < end && (isalnum((unsigned char)*q) ||
		    *q == '_'); q++)
			;
		namelen = (size_t)(q - start);
		if (namelen == 0 || isdigit((unsigned char)*start) ||
		    (q < end && (end - q < 2 || q[0] != ':' || q[1] != '-')))
			return lerr(ld, n, "%s: bad variable reference "
			    "\"${%.*s}\" (expected ${NAME} or ${NAME:-default})",
			    key, (int)(end - start), start);
		name = xstrndup(start, namelen);
		val = env_lookup(ld, name);
		if (q < end && (val == NULL || *val == '\0')) {
			if (expand_into(ld, n, key, q + 2,
			    (size_t)(end - q - 2), b, depth + 1) == -1) {
				free(name);
				return -1;
			}
		} else if (val == NULL) {
			lerr(ld, n, "%s: environment variable %s is not set "
			    "(export it, or give a default: ${%s:-value})",
			    key, name, name);
			free(name);
			return -1;
		} else
			buf_puts(b, val);
		free(name);
		p = end + 1;
	}
	return 0;
}

/* The scalar's value with the environment expanded; *out is malloc'd. */
static int
scalar_value(struct loader *ld, const yaml_node_t *n, const char *key,
    char **out)
{
	struct buf b;

	*out = NULL;
	if (n->type != YAML_SCALAR_NODE)
		return lerr(ld, n, "%s: expected a scalar, got %s", key,
		    node_kind(n));
	if (strlen(scalar_text(n)) != n->data.scalar.length)
		return lerr(ld, n, "%s: value holds a NUL byte", key);
	buf_init(&b);
	buf_puts(&b, "");
	if (expand_into(ld, n, key, scalar_text(n), n->data.scalar.length,
	    &b, 0) == -1) {
		buf_free(&b);
		return -1;
	}
	*out = buf_steal(&b);
	return 0;
}

/* ---- values ----------------------------------------------------------- */

#define FIELD(base, off, type)	((type *)(void *)((char *)(base) + (off)))

static void
set_string(void *base, size_t off, char *v)
{
	char **p = FIELD(base, off, char *);

	free(*p);
	*p = v;
}

static void
free_list(char **list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

static int
check_template(struct loader *ld, const yaml_node_t *n, const char *key,
    const char *s)
{
	char msg[256];

	msg[0] = '\0';
	if (template_check(s, msg, sizeof(msg)) == -1)
		return lerr(ld, n, "%s: bad template \"%s\": %s", key, s,
		    msg[0] ? msg : "syntax error");
	return 0;
}

static int
parse_typed_scalar(struct loader *ld, void *base, const struct kdef *k,
    const yaml_node_t *v, const char *key)
{
	long long ll = 0;
	double d;
	bool b;
	char *s, *what;
	int r;

	if (v->type != YAML_SCALAR_NODE) {
		static const char *const expect[] = {
			[KT_BOOL] = "a boolean", [KT_INT] = "an integer",
			[KT_LONG] = "an integer", [KT_SIZE] = "an integer",
			[KT_DOUBLE] = "a number"
		};
		const char *e = (size_t)k->type < sizeof(expect) /
		    sizeof(expect[0]) && expect[k->type] ? expect[k->type] :
		    "a string";

		return lerr(ld, v, "%s: expected %s, got %s", key, e,
		    node_kind(v));
	}
	if (scalar_value(ld, v, key, &s) == -1)
		return -1;
	what = shown(s);
	r = -1;
	switch (k->type) {
	case KT_BOOL:
		if (parse_bool(s, &b) == -1) {
			lerr(ld, v, "%s: expected a boolean (true or false), "
			    "got %s", key, what);
			break;
		}
		*FIELD(base, k->off, bool) = b;
		r = 0;
		break;
	case KT_INT:
	case KT_LONG:
	case KT_SIZE:
		switch (parse_integer(s, &ll)) {
		case -1:
			lerr(ld, v, "%s: expected an integer, got %s", key,
			    what);
			goto out;
		case 1:
			lerr(ld, v, "%s: %s is out of range (%lld..%lld)", key,
			    s, k->min, k->max);
			goto out;
		}
		if (ll < k->min || ll > k->max) {
			lerr(ld, v, "%s: %lld is out of range (%lld..%lld)",
			    key, ll, k->min, k->max);
			break;
		}
		if (k->type == KT_INT)
			*FIELD(base, k->off, int) = (int)ll;
		else if (k->type == KT_LONG)
			*FIELD(base, k->off, long) = (long)ll;
		else
			*FIELD(base, k->off, size_t) = (size_t)ll;
		r = 0;
		break;
	case KT_DOUBLE:
		if (parse_number(s, &d) == -1) {
			lerr(ld, v, "%s: expected a number, got %s", key, what);
			break;
		}
		if (d < 0 || d > (double)k->max) {
			lerr(ld, v, "%s: %s is out of range (0..%lld)", key, s,
			    k->max);
			break;
		}
		*FIELD(base, k->off, double) = d;
		r = 0;
		break;
	default:
		abort();
	}
out:
	free(what);
	free(s);
	return r;
}

static int
parse_choice(struct loader *ld, void *base, const struct kdef *k,
    const yaml_node_t *v, const char *key)
{
	struct buf list;
	char *s;
	size_t i;

	if (scalar_value(ld, v, key, &s) == -1)
		return -1;
	for (i = 0; k->choices[i] != NULL; i++)
		if (strcasecmp(s, k->choices[i]) == 0)
			break;
	if (k->choices[i] == NULL) {
		char *what = shown(s);

		buf_init(&list);
		for (size_t j = 0; k->choices[j] != NULL; j++)
			buf_printf(&list, "%s%s", j ? ", " : "",
			    k->choices[j]);
		lerr(ld, v, "%s: expected one of %s, got %s", key, list.data,
		    what);
		buf_free(&list);
		free(what);
		free(s);
		return -1;
	}
	free(s);
	if (k->type == KT_MODE)
		*FIELD(base, k->off, enum content_mode) = (enum content_mode)i;
	else
		set_string(base, k->off, xstrdup(k->choices[i]));
	return 0;
}

static int
parse_list(struct loader *ld, void *base, const struct kdef *k,
    yaml_node_t *v, const char *key)
{
	char ***listp = FIELD(base, k->off, char **);
	size_t *np = FIELD(base, k->off2, size_t);
	yaml_node_item_t *it;

	free_list(*listp, *np);
	*listp = NULL;
	*np = 0;
	if (is_null(v))
		return 0;
	if (v->type != YAML_SEQUENCE_NODE)
		return lerr(ld, v, "%s: expected a list of strings, got %s "
		    "(write [\"value\"] for a single one)", key, node_kind(v));
	for (it = v->data.sequence.items.start;
	    it < v->data.sequence.items.top; it++) {
		yaml_node_t *e = node_at(ld, *it);
		char *ekey = xasprintf("%s[%zu]", key, *np);
		char *s;

		if (e->type != YAML_SCALAR_NODE || is_null(e)) {
			lerr(ld, e, "%s: expected a string, got %s", ekey,
			    is_null(e) ? "null" : node_kind(e));
			free(ekey);
			return -1;
		}
		if (scalar_value(ld, e, ekey, &s) == -1) {
			free(ekey);
			return -1;
		}
		free(ekey);
		*listp = xreallocarray(*listp, *np + 1, sizeof(**listp));
		(*listp)[(*np)++] = s;
		if (*s == '\0')
			return lerr(ld, e, "%s[%zu]: must not be empty", key,
			    *np - 1);
	}
	return 0;
}

/* RFC 9110 token characters. */
static bool
header_name_ok(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) &&
		    strchr("!#$%&'*+-.^_`|~", *s) == NULL)
			return false;
	return true;
}

static int
parse_headers(struct loader *ld, struct config *cfg, yaml_node_t *v,
    const char *key)
{
	yaml_node_pair_t *pair;

	if (is_null(v))
		return 0;
	if (v->type != YAML_MAPPING_NODE)
		return lerr(ld, v, "%s: expected a mapping of header names to "
		    "values, got %s", key, node_kind(v));
	for (pair = v->data.mapping.pairs.start;
	    pair < v->data.mapping.pairs.top; pair++) {
		yaml_node_t *kn = node_at(ld, pair->key);
		yaml_node_t *vn = node_at(ld, pair->value);
		const struct seen *s;
		struct header *h;
		char *canon, *hkey;
		const char *name;
		int r;

		if (kn->type != YAML_SCALAR_NODE)
			return lerr(ld, kn, "%s: header names must be strings, "
			    "not %s", key, node_kind(kn));
		name = scalar_text(kn);
		if (!header_name_ok(name))
			return lerr(ld, kn, "%s: bad header name \"%s\"", key,
			    name);
		/* Header names are case-insensitive: Authorization twice. */
		canon = xasprintf("%s.%s", key, name);
		for (char *c = canon + strlen(key) + 1; *c != '\0'; c++)
			*c = (char)tolower((unsigned char)*c);
		if ((s = seen_find(ld, canon)) != NULL) {
			lerr(ld, kn, "duplicate header %s.%s (first set at "
			    "line %d)", key, name, s->line);
			free(canon);
			return -1;
		}
		hkey = xasprintf("%s.%s", key, name);
		seen_add(ld, canon, hkey, kn);
		free(canon);
		free(hkey);
		hkey = xasprintf("%s.%s", key, name);
		if (vn->type != YAML_SCALAR_NODE || is_null(vn)) {
			lerr(ld, vn, "%s: expected a string, got %s", hkey,
			    is_null(vn) ? "null" : node_kind(vn));
			free(hkey);
			return -1;
		}
		cfg->nlp_api.headers = xreallocarray(cfg->nlp_api.headers,
		    cfg->nlp_api.nheaders + 1, sizeof(*cfg->nlp_api.headers));
		h = &cfg->nlp_api.headers[cfg->nlp_api.nheaders++];
		h->name = xstrdup(name);
		h->value = NULL;
		r = scalar_value(ld, vn, hkey, &h->value);
		/* The value may be a secret: never echo it. */
		if (r == 0 && strpbrk(h->value, "\r\n") != NULL)
			r = lerr(ld, vn, "%s: value must not hold a line break",
			    hkey);
		if (r == 0)
			literal_note(ld, hkey, hkey, vn);
		free(hkey);
		if (r == -1)
			return -1;
	}
	return 0;
}

/*
 * A body template from any YAML tree. Quoted scalars stay strings; plain
 * ones take YAML's reading (true/false, null/~, numbers), as an operator
 * who writes {batch: 10} means the number ten.
 */
static cJSON *
yaml_to_json(struct loader *ld, yaml_node_t *n, const char *key, int depth)
{
	cJSON *j = NULL;

	if (depth > BODY_MAX_DEPTH) {
		lerr(ld, n, "%s: nested too deeply", key);
		return NULL;
	}
	if (ld->budget == 0) {
		lerr(ld, n, "%s: body too large (more than %d nodes; aliases?)",
		    key, BODY_MAX_NODES);
		return NULL;
	}
	ld->budget--;

	switch (n->type) {
	case YAML_SCALAR_NODE: {
		bool plain = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
		bool b, integral;
		double d;
		char *s;

		if (scalar_value(ld, n, key, &s) == -1)
			return NULL;
		if (plain && (*s == '\0' || strcmp(s, "~") == 0 ||
		    strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
		    strcmp(s, "NULL") == 0))
			j = cJSON_CreateNull();
		else if (plain && (strcasecmp(s, "true") == 0 ||
		    strcasecmp(s, "false") == 0) && parse_bool(s, &b) == 0)
			j = cJSON_CreateBool(b);
		else if (plain && looks_numeric(s, &integral) &&
		    parse_number(s, &d) == 0 &&
		    /* Beyond 2^53 a double would silently change the id. */
		    (!integral || fabs(d) <= 9007199254740992.0))
			j = cJSON_CreateNumber(d);
		else {
			if (check_template(ld, n, key, s) == -1) {
				free(s);
				return NULL;
			}
			j = cJSON_CreateString(s);
		}
		free(s);
		break;
	}
	case YAML_SEQUENCE_NODE: {
		size_t i = 0;

		j = cJSON_CreateArray();
		for (yaml_node_item_t *it = n->data.sequence.items.start;
		    j != NULL && it < n->data.sequence.items.top; it++, i++) {
			char *ckey = xasprintf("%s[%zu]", key, i);
			cJSON *c = yaml_to_json(ld, node_at(ld, *it), ckey,
			    depth + 1);

			free(ckey);
			if (c == NULL) {
				cJSON_Delete(j);
				return NULL;
			}
			cJSON_AddItemToArray(j, c);
		}
		break;
	}
	case YAML_MAPPING_NODE:
		j = cJSON_CreateObject();
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
		    j != NULL && p < n->data.mapping.pairs.top; p++) {
			yaml_node_t *kn = node_at(ld, p->key);
			const char *name;
			char *ckey;
			cJSON *c;

			if (kn->type != YAML_SCALAR_NODE) {
				lerr(ld, kn, "%s: keys must be strings, not %s",
				    key, node_kind(kn));
				cJSON_Delete(j);
				return NULL;
			}
			name = scalar_text(kn);
			if (cJSON_GetObjectItemCaseSensitive(j, name) != NULL) {
				lerr(ld, kn, "duplicate key %s.%s", key, name);
				cJSON_Delete(j);
				return NULL;
			}
			ckey = xasprintf("%s.%s", key, name);
			c = yaml_to_json(ld, node_at(ld, p->value), ckey,
			    depth + 1);
			free(ckey);
			if (c == NULL) {
				cJSON_Delete(j);
				return NULL;
			}
			cJSON_AddItemToObject(j, name, c);
		}
		break;
	default:
		lerr(ld, n, "%s: empty node", key);
		return NULL;
	}
	if (j == NULL)
		fatalx("config: out of memory");
	return j;
}

/* Whether the route set any documents_query key (null and {} are none). */
static bool
query_given(struct loader *ld, const char *rkey)
{
	static const char *const subkeys[] = {
		"sql", "params", "dsn", "password_file", "timeout_ms", NULL
	};
	char *k;
	bool given = false;

	for (size_t i = 0; subkeys[i] != NULL && !given; i++) {
		k = xasprintf("%s.documents_query.%s", rkey, subkeys[i]);
		given = seen_find(ld, k) != NULL;
		free(k);
	}
	return given;
}

/*
 * The $n placeholders of sql, as PostgreSQL reads them: not inside a
 * string, a quoted identifier, a dollar-quoted string or a comment.
 * Sets used[n] for each $n (n <= max) and returns the highest, or -1
 * when a number is past max.
 */
static int
sql_placeholders(const char *sql, bool *used, int max)
{
	const char *p = sql;
	int highest = 0;

	while (*p != '\0') {
		if (*p == '\'' || *p == '"') {
			char q = *p;
			/* E'...' strings take backslash escapes. */
			bool esc = q == '\'' && p > sql &&
			    (p[-1] == 'E' || p[-1] == 'e');

			for (p++; *p != '\0'; p++) {
				if (esc && *p == '\\' && p[1] != '\0')
					p++;
				else if (*p == q && p[1] == q)
					p++;
				else if (*p == q)
					break;
			}
			if (*p != '\0')
				p++;
		} else if (p[0] == '-' && p[1] == '-') {
			p += strcspn(p, "\n");
		} else if (p[0] == '/' && p[1] == '*') {
			int depth = 1;

			for (p += 2; *p != '\0' && depth > 0; p++) {
				if (p[0] == '/' && p[1] == '*') {
					depth++;
					p++;
				} else if (p[0] == '*' && p[1] == '/') {
					depth--;
					p++;
				}
			}
		} else if (*p == '$' && isdigit((unsigned char)p[1])) {
			long n = strtol(p + 1, NULL, 10);

			if (n < 1 || n > max)
				return -1;
			used[n] = true;
			if (n > highest)
				highest = (int)n;
			for (p++; isdigit((unsigned char)*p); p++)
				;
		} else if (*p == '$' && (p[1] == '$' || isalpha((unsigned
		    char)p[1]) || p[1] == '_') && (p == sql ||
		    !(isalnum((unsigned char)p[-1]) || p[-1] == '_'))) {
			/* $tag$ ... $tag$ */
			size_t taglen = 1 + strspn(p + 1, "abcdefghijklmnopqrst"
			    "uvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
			const char *end;
			char *tag;

			if (p[taglen] != '$') {
				p++;
				continue;
			}
			tag = xstrndup(p, taglen + 1);
			end = strstr(p + taglen + 1, tag);
			p = end != NULL ? end + taglen + 1 : p + strlen(p);
			free(tag);
		} else
			p++;
	}
	return highest;
}

#define QUERY_PARAMS_MAX	100	/* of a documents query; PostgreSQL
					   takes 65535, no route needs more */

/* A documents_query: complete, and its SQL free of templates. */
static int
check_query(struct loader *ld, const char *rkey, struct route *r)
{
	struct route_query *q = &r->documents_query;
	char *qkey = xasprintf("%s.documents_query", rkey);
	char *sqlkey = xasprintf("%s.sql", qkey);
	char *pkey = xasprintf("%s.params", qkey);
	bool used[QUERY_PARAMS_MAX + 1];
	char msg[256];
	int highest, rv = -1;

	memset(used, 0, sizeof(used));
	if (r->documents_file != NULL) {
		verr(ld, qkey, "%s: a route reads documents_file or "
		    "documents_query, not both (drop one of them)", rkey);
		goto out;
	}
	if (q->sql == NULL) {
		verr(ld, qkey, "%s: missing required key sql (e.g. \"SELECT "
		    "document_id, cleaned_text FROM processed_articles WHERE "
		    "job_id = $1\")", qkey);
		goto out;
	}
	if (strstr(q->sql, "{{") != NULL) {
		verr(ld, sqlkey, "%s: a template ({{...}}) inside the SQL; "
		    "write $1, $2, ... there and list the values in params, "
		    "e.g. params: [\"{{data.job_id}}\"] (they are sent apart "
		    "from the SQL, never spliced into it)", sqlkey);
		goto out;
	}
	if ((highest = sql_placeholders(q->sql, used,
	    QUERY_PARAMS_MAX)) == -1) {
		verr(ld, sqlkey, "%s: a placeholder past $%d", sqlkey,
		    QUERY_PARAMS_MAX);
		goto out;
	}
	if ((size_t)highest != q->nparams) {
		char uses[32];

		if (highest == 0)
			snprintf(uses, sizeof(uses), "no placeholder");
		else
			snprintf(uses, sizeof(uses), "$1..$%d", highest);
		verr(ld, seen_find(ld, pkey) != NULL ? pkey : sqlkey, "%s: the "
		    "sql uses %s but params lists %zu value%s (one template "
		    "per placeholder, in order)", qkey, uses, q->nparams,
		    q->nparams == 1 ? "" : "s");
		goto out;
	}
	for (int i = 1; i < highest; i++)
		if (!used[i]) {
			verr(ld, sqlkey, "%s: $%d is never used but $%d is "
			    "(PostgreSQL cannot tell the type of an unused "
			    "parameter; renumber them)", sqlkey, i, highest);
			goto out;
		}
	for (size_t i = 0; i < q->nparams; i++) {
		msg[0] = '\0';
		if (template_check(q->params[i], msg, sizeof(msg)) == -1) {
			verr(ld, pkey, "%s[%zu]: bad template \"%s\": %s", pkey,
			    i, q->params[i], msg[0] ? msg : "syntax error");
			goto out;
		}
		if (template_refers(q->params[i], "documents") ||
		    template_refers(q->params[i], "document_ids")) {
			verr(ld, pkey, "%s[%zu]: the documents are what the "
			    "query selects; a parameter comes from the event",
			    pkey, i);
			goto out;
		}
	}
	if (q->password_file != NULL && q->dsn == NULL) {
		verr(ld, qkey, "%s: password_file needs a dsn (without one "
		    "the query uses ledger.dsn, password and all)", qkey);
		goto out;
	}
	rv = 0;
out:
	free(qkey);
	free(sqlkey);
	free(pkey);
	return rv;
}

static int
parse_route(struct loader *ld, yaml_node_t *item, size_t idx,
    const char *key, struct route *r)
{
	char *rkey = xasprintf("%s[%zu]", key, idx);
	char msg[256];
	bool documents;
	int rv = -1;

	r->line = (int)item->start_mark.line + 1;
	r->method = xstrdup("POST");
	r->content_mode = CONTENT_BODY;
	r->documents_query.timeout_ms = 30000;
	if (item->type != YAML_MAPPING_NODE) {
		lerr(ld, item, "%s: expected a mapping (one route), got %s",
		    rkey, node_kind(item));
		goto out;
	}
	if (parse_map(ld, r, route_keys, item, rkey) == -1)
		goto out;

	if (r->ntypes == 0) {
		lerr(ld, item, "%s: missing required key types (the event "
		    "types this route handles)", rkey);
		goto out;
	}
	if (r->path == NULL || *r->path == '\0') {
		lerr(ld, item, "%s: missing required key path (e.g. "
		    "/api/v2/nlp/process)", rkey);
		goto out;
	}
	if (r->idempotency_key == NULL || *r->idempotency_key == '\0') {
		lerr(ld, item, "%s: missing required key idempotency_key "
		    "(e.g. \"{{data.document_id}}\")", rkey);
		goto out;
	}
	if (r->content_mode == CONTENT_BODY && r->body == NULL) {
		lerr(ld, item, "%s: missing required key body (or set "
		    "content_mode: structured or binary)", rkey);
		goto out;
	}
	if (r->content_mode != CONTENT_BODY && r->body != NULL) {
		lerr(ld, item, "%s: body is not used with content_mode: %s "
		    "(drop one of them)", rkey,
		    content_modes[r->content_mode]);
		goto out;
	}
	msg[0] = '\0';
	if (r->body != NULL &&
	    template_check_tree(r->body, msg, sizeof(msg)) == -1) {
		lerr(ld, item, "%s.body: bad template: %s", rkey,
		    msg[0] ? msg : "syntax error");
		goto out;
	}
	if (query_given(ld, rkey) && check_query(ld, rkey, r) == -1)
		goto out;
	documents = r->documents_file != NULL || r->documents_query.sql != NULL;
	/* A route that reads documents (a file, a query) triggers batches. */
	if (r->kind == NULL)
		r->kind = xstrdup(documents ? "batch" : "document");
	if (documents && strcmp(r->kind, "batch") != 0) {
		lerr(ld, item, "%s: %s makes a batch route (drop kind: "
		    "document, or the %s)", rkey, r->documents_file != NULL ?
		    "documents_file" : "documents_query",
		    r->documents_file != NULL ? "documents_file" :
		    "documents_query");
		goto out;
	}
	/* The batch is known to a batch route's body, and only there. */
	for (size_t i = 0; i < 2; i++) {
		const char *root = i == 0 ? "documents" : "document_ids";

		if (template_refers(r->idempotency_key, root) ||
		    template_refers(r->path, root) ||
		    template_refers(r->documents_file, root)) {
			lerr(ld, item, "%s: {{%s}} can only be used in the body "
			    "of a batch route", rkey, root);
			goto out;
		}
		if (!documents && template_refers_tree(r->body, root)) {
			lerr(ld, item, "%s.body: {{%s}} needs a documents_file "
			    "or a documents_query (a batch route)", rkey, root);
			goto out;
		}
	}
	if (r->name == NULL)
		r->name = xasprintf("route[%zu]", idx);
	rv = 0;
out:
	free(rkey);
	return rv;
}

static int
parse_routes(struct loader *ld, struct config *cfg, yaml_node_t *v,
    const char *key)
{
	size_t idx = 0;

	if (is_null(v))
		return 0;	/* same as absent: the defaults */
	if (v->type != YAML_SEQUENCE_NODE)
		return lerr(ld, v, "%s: expected a list of routes, got %s", key,
		    node_kind(v));
	if (v->data.sequence.items.start == v->data.sequence.items.top)
		return lerr(ld, v, "%s: no routes: nothing could be triggered "
		    "(remove the key to use the default routes)", key);
	ld->routes_given = true;
	for (yaml_node_item_t *it = v->data.sequence.items.start;
	    it < v->data.sequence.items.top; it++, idx++) {
		yaml_node_t *item = node_at(ld, *it);
		struct route *r;

		/* Counted before parsing, so config_free() sees the parts. */
		cfg->routes = xreallocarray(cfg->routes, cfg->nroutes + 1,
		    sizeof(*cfg->routes));
		r = &cfg->routes[cfg->nroutes++];
		memset(r, 0, sizeof(*r));
		if (parse_route(ld, item, idx, key, r) == -1)
			return -1;
		for (size_t i = 0; i + 1 < cfg->nroutes; i++) {
			if (strcmp(cfg->routes[i].name, r->name) == 0)
				return lerr(ld, item, "%s[%zu]: route name "
				    "\"%s\" already used by the route at "
				    "line %d", key, idx, r->name,
				    cfg->routes[i].line);
		}
	}
	return 0;
}

static int
parse_value(struct loader *ld, void *base, const struct kdef *k,
    yaml_node_t *v, const char *key)
{
	char *s;

	switch (k->type) {
	case KT_BOOL:
	case KT_INT:
	case KT_LONG:
	case KT_SIZE:
	case KT_DOUBLE:
		return parse_typed_scalar(ld, base, k, v, key);
	case KT_STRING:
	case KT_OPTSTRING:
		if (v->type != YAML_SCALAR_NODE)
			return lerr(ld, v, "%s: expected a string, got %s", key,
			    node_kind(v));
		if (is_null(v))
			s = xstrdup("");
		else if (scalar_value(ld, v, key, &s) == -1)
			return -1;
		if (k->type == KT_OPTSTRING && *s == '\0') {
			free(s);
			if ((k->flags & KF_NONEMPTY) && !is_null(v))
				return lerr(ld, v, "%s: is empty (an unset "
				    "${VAR}?); leave the key out instead", key);
			s = NULL;
		}
		set_string(base, k->off, s);
		if (s != NULL && (k->flags & KF_TEMPLATE))
			return check_template(ld, v, key, s);
		return 0;
	case KT_CHOICE:
	case KT_MODE:
		return parse_choice(ld, base, k, v, key);
	case KT_LIST:
		return parse_list(ld, base, k, v, key);
	case KT_MAP:
		if (is_null(v))
			return 0;
		if (v->type != YAML_MAPPING_NODE)
			return lerr(ld, v, "%s: expected a mapping, got %s",
			    key, node_kind(v));
		return parse_map(ld, base, k->sub, v, key);
	case KT_HEADERS:
		return parse_headers(ld, base, v, key);
	case KT_ROUTES:
		return parse_routes(ld, base, v, key);
	case KT_BODY: {
		cJSON **jp = FIELD(base, k->off, cJSON *);

		cJSON_Delete(*jp);
		ld->budget = BODY_MAX_NODES;
		*jp = yaml_to_json(ld, v, key, 0);
		return *jp == NULL ? -1 : 0;
	}
	case KT_SECRET_FILE: {
		struct secret_file *sf;

		if (v->type != YAML_SCALAR_NODE || is_null(v))
			return lerr(ld, v, "%s: expected a file name, got %s",
			    key, is_null(v) ? "null" : node_kind(v));
		if (scalar_value(ld, v, key, &s) == -1)
			return -1;
		if (*s == '\0') {
			free(s);
			return lerr(ld, v, "%s: must not be empty", key);
		}
		ld->secrets = xreallocarray(ld->secrets, ld->nsecrets + 1,
		    sizeof(*ld->secrets));
		sf = &ld->secrets[ld->nsecrets++];
		sf->off = k->off;
		sf->file = s;
		sf->key = xstrdup(key);
		/* redis_password_file stands in for redis_password. */
		sf->twin = xstrndup(key, strlen(key) - strlen("_file"));
		sf->line = (int)v->start_mark.line + 1;
		sf->col = (int)v->start_mark.column + 1;
		return 0;
	}
	}
	abort();
}

static const struct kdef *
kdef_find(const struct kdef *defs, const char *name)
{
	for (; defs->name != NULL; defs++)
		if (strcmp(defs->name, name) == 0)
			return defs;
	return NULL;
}

static int
unknown_key(struct loader *ld, const yaml_node_t *kn, const char *path,
    const char *name, const struct kdef *defs)
{
	const char *names[64], *hit;
	char *deeper = NULL;
	size_t n = 0;
	int r;

	for (const struct kdef *k = defs; k->name != NULL && n < 64; k++)
		names[n++] = k->name;
	if (strcmp(name, "<<") == 0)
		return lerr(ld, kn, "%s: merge keys (<<) are not supported; "
		    "write the keys out", path);
	if ((hit = nearest(name, names, n)) != NULL)
		return lerr(ld, kn, "unknown key %s.%s (did you mean %s?)",
		    path, name, hit);
	/* base_url directly under event_consumer: it lives one level down. */
	for (const struct kdef *k = defs; k->name != NULL; k++) {
		if (k->type == KT_MAP && kdef_find(k->sub, name) != NULL) {
			deeper = xasprintf("%s.%s", k->name, name);
			break;
		}
	}
	if (deeper != NULL) {
		r = lerr(ld, kn, "unknown key %s.%s (did you mean %s?)", path,
		    name, deeper);
		free(deeper);
		return r;
	}
	return lerr(ld, kn, "unknown key %s.%s (the keys are listed in "
	    "stagerelay.yaml(5))", path, name);
}

/* event_consumer.routes[3].documents_file -> ...routes[].documents_file */
static bool
pending_match(const char *pattern, const char *path)
{
	struct buf b;
	size_t plen = strlen(pattern);
	bool match;

	buf_init(&b);
	for (const char *p = path; *p != '\0'; p++) {
		buf_putc(&b, *p);
		if (*p == '[')
			while (isdigit((unsigned char)p[1]))
				p++;
	}
	if (plen >= 2 && strcmp(pattern + plen - 2, ".*") == 0)
		match = strncmp(b.data, pattern, plen - 1) == 0 &&
		    b.data[plen - 1] != '\0';
	else
		match = strcmp(b.data, pattern) == 0;
	buf_free(&b);
	return match;
}

static void
pending_note(struct loader *ld, const char *canon, const char *written,
    const yaml_node_t *kn)
{
	struct config *cfg = ld->cfg;
	struct pending_key *pk;

	for (size_t i = 0; pending_table[i].key != NULL; i++) {
		if (!pending_match(pending_table[i].key, canon))
			continue;
		cfg->pending = xreallocarray(cfg->pending, cfg->npending + 1,
		    sizeof(*cfg->pending));
		pk = &cfg->pending[cfg->npending++];
		pk->key = xstrdup(written);
		pk->what = xstrdup(pending_table[i].what);
		pk->line = (int)kn->start_mark.line + 1;
		return;
	}
}

static int
parse_map(struct loader *ld, void *base, const struct kdef *defs,
    yaml_node_t *map, const char *path)
{
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *kn = node_at(ld, p->key);
		yaml_node_t *vn = node_at(ld, p->value);
		const struct kdef *k;
		const struct seen *s;
		char *canon, *written;
		const char *name;
		int r;

		if (kn->type != YAML_SCALAR_NODE)
			return lerr(ld, kn, "%s: keys must be names, not %s",
			    path, node_kind(kn));
		name = scalar_text(kn);
		if ((k = kdef_find(defs, name)) == NULL)
			return unknown_key(ld, kn, path, name, defs);
		canon = xasprintf("%s.%s", path, k->alias ? k->alias : name);
		written = xasprintf("%s.%s", path, name);
		/* An alias collides with its key: workers is concurrent_tasks. */
		if ((s = seen_find(ld, canon)) != NULL) {
			if (strcmp(s->written, written) == 0)
				lerr(ld, kn, "duplicate key %s (first set at "
				    "line %d)", written, s->line);
			else
				lerr(ld, kn, "duplicate key %s (already set at "
				    "line %d as %s, the same key)", written,
				    s->line, s->written);
			free(canon);
			free(written);
			return -1;
		}
		seen_add(ld, canon, written, kn);
		r = parse_value(ld, base, k, vn, written);
		if (r == 0) {
			pending_note(ld, canon, written, kn);
			literal_note(ld, canon, written, vn);
		}
		free(canon);
		free(written);
		if (r == -1)
			return -1;
	}
	return 0;
}

/* ---- after the walk --------------------------------------------------- */

static void
config_defaults(struct config *cfg)
{
	const char *h;
	char host[256];

	cfg->enabled = true;
	cfg->source_stream = xstrdup("stage1:cleaning:events");
	cfg->redis_host = xstrdup("127.0.0.1");
	cfg->redis_port = 6379;
	cfg->redis_db = 0;
	cfg->consumer_group = xstrdup("stage2-nlp-processor");
	/* The proposal's "${HOSTNAME}", expanded even when not exported. */
	if ((h = getenv("HOSTNAME")) != NULL && *h != '\0')
		cfg->consumer_name = xstrdup(h);
	else if (gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') {
		host[sizeof(host) - 1] = '\0';
		cfg->consumer_name = xstrdup(host);
	} else
		cfg->consumer_name = xstrdup("stagerelay");
	cfg->auto_process = true;
	cfg->batch_mode = false;
	cfg->poll_interval_ms = 1000;
	cfg->batch_size = 100;
	cfg->concurrent_tasks = 1;
	cfg->retry_failed = true;
	cfg->max_retries = 3;
	cfg->retry_delay_seconds = 5;
	cfg->max_retry_delay_seconds = 300;
	cfg->dead_letter_stream = xstrdup("stage2:nlp:failed-events");
	cfg->dead_letter_maxlen = 100000;
	cfg->process_backlog = false;
	cfg->backlog_batch_size = 100;
	cfg->backlog_max_age_hours = 24;
	cfg->check_already_processed = true;
	cfg->deduplication_ttl_hours = 24;

	cfg->event_field = xstrdup("event");
	cfg->max_event_bytes = 1024 * 1024;
	cfg->max_entry_fields = 256;
	cfg->max_json_depth = 64;
	cfg->shared_dir = xstrdup("/shared");
	cfg->max_batch_documents = 500;
	cfg->max_documents_file_bytes = (size_t)64 << 20;
	cfg->max_documents_per_file = 100000;
	cfg->claim_interval_ms = 30000;
	cfg->claim_idle_ms = 60000;
	cfg->max_deliveries = 10;
	cfg->lag_alert_threshold = 1000;
	cfg->idle_alert_minutes = 5;

	cfg->nlp_api.base_url = xstrdup("http://127.0.0.1:8000");
	cfg->nlp_api.timeout_ms = 30000;
	cfg->nlp_api.connect_timeout_ms = 5000;
	cfg->nlp_api.max_in_flight = 64;
	cfg->nlp_api.max_request_bytes = (size_t)16 << 20;
	cfg->nlp_api.max_response_bytes = (size_t)1 << 20;
	cfg->nlp_api.verify_tls = true;

	cfg->ledger.dsn = xstrdup("");
	cfg->ledger.schema = xstrdup("stagerelay");
	cfg->ledger.lease_seconds = 300;

	cfg->logging.format = xstrdup("logfmt");
	cfg->logging.level = xstrdup("info");

	cfg->metrics.listen = xstrdup("127.0.0.1:9464");

	cfg->ingress.listen = xstrdup("127.0.0.1:9466");
	cfg->ingress.path = xstrdup("/v2/events/stage1");
	cfg->ingress.max_body_bytes = (size_t)4 << 20;
	cfg->ingress.max_batch_events = 1000;
	/* No trim: an entry trimmed before the group read it is lost. */
	cfg->ingress.stream_maxlen = 0;
	cfg->ingress.max_connections = 64;
	cfg->ingress.redis_timeout_ms = 5000;

	cfg->supervisor.worker_timeout = 60;
	cfg->supervisor.shutdown_timeout = 30;

	cfg->circuit_breaker.failure_threshold = 5;
	cfg->circuit_breaker.open_seconds = 30;
}

/* The first line of a secret file, without its line ending. */
static int
read_secret(struct loader *ld, const char *file, const char *key, int line,
    int col, char **out)
{
	FILE *f;
	char *text = NULL;
	size_t cap = 0;
	ssize_t n;

	*out = NULL;
	if ((f = fopen(file, "r")) == NULL)
		return lerr_at(ld, line, col, "%s: cannot read %s: %s", key,
		    file, strerror(errno));
	n = getline(&text, &cap, f);
	fclose(f);
	if (n < 0) {
		free(text);
		return lerr_at(ld, line, col, "%s: %s is empty", key, file);
	}
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
		text[--n] = '\0';
	if (n == 0) {
		free(text);
		return lerr_at(ld, line, col, "%s: %s has an empty first line",
		    key, file);
	}
	*out = text;
	return 0;
}

/*
 * Walks a libpq connection string, keyword=value or postgres:// URI.
 * Fills red (when given) with the password replaced by <redacted> and
 * tells whether a password is there. -1 when the string is not
 * understood; the caller then shows none of it.
 */
static int
dsn_scan_pw(const char *dsn, struct buf *red, bool *has_password,
    const char **pw, size_t *pwlen)
{
	const char *p = dsn;

	*has_password = false;
	if (strncmp(p, "postgresql://", 13) == 0 ||
	    strncmp(p, "postgres://", 11) == 0) {
		const char *auth = strstr(p, "://") + 3;
		const char *hostend = auth + strcspn(auth, "/?#");
		const char *at = NULL, *colon;

		for (const char *q = auth; q < hostend; q++)
			if (*q == '@')
				at = q;
		if (red != NULL)
			buf_append(red, p, (size_t)(auth - p));
		if (at != NULL) {
			colon = memchr(auth, ':', (size_t)(at - auth));
			if (colon != NULL) {
				*has_password = true;
				if (pw != NULL) {
					*pw = colon + 1;
					*pwlen = (size_t)(at - colon - 1);
				}
				if (red != NULL) {
					buf_append(red, auth,
					    (size_t)(colon + 1 - auth));
					buf_puts(red, REDACTED);
				}
			} else if (red != NULL)
				buf_append(red, auth, (size_t)(at - auth));
			auth = at;
		}
		p = auth;
		/* Query parameters may carry password=... too. */
		while (*p != '\0') {
			size_t seg = strcspn(p, "?&");

			if (red != NULL)
				buf_append(red, p, seg);
			p += seg;
			if (*p == '\0')
				break;
			if (red != NULL)
				buf_putc(red, *p);
			p++;
			if (strncmp(p, "password=", 9) == 0) {
				*has_password = true;
				if (pw != NULL) {
					*pw = p + 9;
					*pwlen = strcspn(p + 9, "&#");
				}
				if (red != NULL)
					buf_puts(red, "password=" REDACTED);
				p += 9 + strcspn(p + 9, "&#");
			}
		}
		return 0;
	}
	for (;;) {
		const char *kw, *val;
		size_t kwlen;

		while (isspace((unsigned char)*p))
			p++;
		if (*p == '\0')
			return 0;
		kw = p;
		while (isalnum((unsigned char)*p) || *p == '_')
			p++;
		kwlen = (size_t)(p - kw);
		while (isspace((unsigned char)*p))
			p++;
		if (kwlen == 0 || *p != '=')
			return -1;
		p++;
		while (isspace((unsigned char)*p))
			p++;
		val = p;
		if (*p == '\'') {
			for (p++; *p != '\'' && *p != '\0'; p++)
				if (*p == '\\' && p[1] != '\0')
					p++;
			if (*p != '\'')
				return -1;
			p++;
		} else {
			while (*p != '\0' && !isspace((unsigned char)*p)) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				p++;
			}
		}
		if (red != NULL && red->len > 0)
			buf_putc(red, ' ');
		if (kwlen == 8 && strncmp(kw, "password", 8) == 0) {
			*has_password = true;
			if (pw != NULL) {
				*pw = val;
				*pwlen = (size_t)(p - val);
			}
			if (red != NULL)
				buf_puts(red, "password=" REDACTED);
		} else if (red != NULL) {
			buf_append(red, kw, kwlen);
			buf_putc(red, '=');
			buf_append(red, val, (size_t)(p - val));
		}
	}
}

static int
dsn_scan(const char *dsn, struct buf *red, bool *has_password)
{
	return dsn_scan_pw(dsn, red, has_password, NULL, NULL);
}

/* ---- secrets readable by others --------------------------------------- */

/*
 * True when a value as written in the file (before ${...} expansion)
 * holds a secret itself: it is not empty and takes no part from the
 * environment. "Bearer ${TOKEN}" keeps its secret in the environment.
 */
static bool
literal_secret(const char *text, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i + 1 < len; i++) {
		if (text[i] != '$')
			continue;
		if (text[i + 1] == '{')
			return false;
		if (text[i + 1] == '$')
			i++;		/* $$ is a literal $ */
	}
	return true;
}

/* Remembers key when its value, as written, is a secret. */
static void
literal_note(struct loader *ld, const char *canon, const char *written,
    const yaml_node_t *v)
{
	const char *text, *pw = NULL;
	size_t len, pwlen = 0;
	bool has;

	if (v->type != YAML_SCALAR_NODE)
		return;
	text = scalar_text(v);
	len = v->data.scalar.length;
	if (strcmp(canon, SECTION ".ledger.dsn") == 0 || pending_match(
	    SECTION ".routes[].documents_query.dsn", canon)) {
		/* Only the password part of the DSN is a secret. */
		if (dsn_scan_pw(text, NULL, &has, &pw, &pwlen) == -1 || !has ||
		    pw == NULL || !literal_secret(pw, pwlen))
			return;
	} else if (strcmp(canon, SECTION ".redis_password") != 0 &&
	    strcmp(canon, SECTION ".ingress.secret") != 0 &&
	    strncmp(canon, SECTION ".nlp_api.headers.",
	    strlen(SECTION ".nlp_api.headers.")) != 0)
		return;
	else if (!literal_secret(text, len))
		return;
	ld->literal = xreallocarray(ld->literal, ld->nliteral + 1,
	    sizeof(*ld->literal));
	ld->literal[ld->nliteral++] = xstrdup(written);
}

static void __attribute__((format(printf, 2, 3)))
add_warning(struct config *cfg, const char *fmt, ...)
{
	va_list ap;
	char *m;

	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) == -1)
		fatalx("config: out of memory");
	va_end(ap);
	cfg->warnings = xreallocarray(cfg->warnings, cfg->nwarnings + 1,
	    sizeof(*cfg->warnings));
	cfg->warnings[cfg->nwarnings++] = m;
}

/*
 * Who else may read a file: "others" (S_IROTH), or "group NAME" when it
 * is group-readable by a group this process is not in. Root is exempt
 * from the group test: it starts the daemon for the -u user, whose
 * group the file is rightly given to (root:stagerelay 0640).
 */
static const char *
readers(const struct stat *st, char *grp, size_t grplen)
{
	gid_t groups[256];
	struct group *gr;
	int n;

	if (st->st_mode & S_IROTH)
		return "others";
	if (!(st->st_mode & S_IRGRP) || geteuid() == 0 ||
	    st->st_gid == getegid())
		return NULL;
	n = getgroups((int)(sizeof(groups) / sizeof(groups[0])), groups);
	for (int i = 0; i < n; i++)
		if (groups[i] == st->st_gid)
			return NULL;
	if ((gr = getgrgid(st->st_gid)) != NULL)
		snprintf(grp, grplen, "group %s", gr->gr_name);
	else
		snprintf(grp, grplen, "group %u", (unsigned)st->st_gid);
	return grp;
}

static void
perm_warn(struct config *cfg, const char *file, const char *keys,
    bool secret_file)
{
	struct stat st;
	const char *who;
	char grp[300];

	if (stat(file, &st) == -1 || (who = readers(&st, grp,
	    sizeof(grp))) == NULL)
		return;
	if (secret_file)
		add_warning(cfg, "config: %s: %s holds a secret and is "
		    "readable by %s (mode %04o); %s %s", keys, file, who,
		    (unsigned)(st.st_mode & 07777), who[0] == 'o' ?
		    "chmod o-r" : "chmod g-r (or chgrp it to the group "
		    "stagerelay runs as)", file);
	else
		add_warning(cfg, "config: %s holds a secret (%s) and is "
		    "readable by %s (mode %04o); %s %s", file, keys, who,
		    (unsigned)(st.st_mode & 07777), who[0] == 'o' ?
		    "chmod o-r" : "chmod g-r (or chgrp it to the group "
		    "stagerelay runs as)", file);
}

/* Settings that expose the API's traffic: said, not refused. */
static void
check_transport(struct config *cfg)
{
	const char *url = cfg->nlp_api.base_url, *host, *end;
	bool https = strncmp(url, "https://", 8) == 0, loopback;

	if (https && !cfg->nlp_api.verify_tls)
		add_warning(cfg, "config: nlp_api.verify_tls is false: the "
		    "certificate of %s is not checked, so whoever is on the "
		    "way can read and answer the requests; name its CA in "
		    "nlp_api.ca_file instead", url);
	if (https || cfg->nlp_api.nheaders == 0)
		return;
	host = url + 7;
	end = host + strcspn(host, "/?#");
	loopback = (end - host >= 9 && strncmp(host, "127.", 4) == 0) ||
	    strncmp(host, "localhost", 9) == 0 ||
	    strncmp(host, "[::1]", 5) == 0;
	if (!loopback)
		add_warning(cfg, "config: nlp_api.headers are sent in clear "
		    "text to %.*s (http://); use https:// if they hold a "
		    "credential", (int)(end - host), host);
}

/* An ingress open to a network with no signature takes anyone's events. */
static void
check_ingress_exposure(struct config *cfg)
{
	const char *l = cfg->ingress.listen;

	if (!cfg->ingress.enabled || cfg->ingress.secret != NULL ||
	    strncmp(l, "127.", 4) == 0 || strncmp(l, "[::1]:", 6) == 0)
		return;
	add_warning(cfg, "config: the ingress listens on %s without "
	    "ingress.secret: whoever reaches it can append events; set "
	    "ingress.secret_file, or listen on the loopback", l);
}

static void
check_permissions(struct loader *ld, struct config *cfg)
{
	if (ld->from_file && ld->nliteral > 0) {
		struct buf b;

		buf_init(&b);
		for (size_t i = 0; i < ld->nliteral; i++) {
			if (i > 0)
				buf_puts(&b, ", ");
			buf_puts(&b, ld->literal[i]);
		}
		perm_warn(cfg, ld->name, b.data, false);
		buf_free(&b);
	}
	for (size_t i = 0; i < ld->nsecrets; i++)
		perm_warn(cfg, ld->secrets[i].file, ld->secrets[i].key, true);
	if (cfg->ledger.password_file != NULL)
		perm_warn(cfg, cfg->ledger.password_file,
		    SECTION ".ledger.password_file", true);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const char *file = cfg->routes[i].documents_query.password_file;
		char *key;

		if (file == NULL)
			continue;
		key = xasprintf(SECTION ".routes[%zu].documents_query."
		    "password_file", i);
		perm_warn(cfg, file, key, true);
		free(key);
	}
}

/*
 * A password_file joins its DSN (ledger.dsn, a documents_query's dsn),
 * so libpq gets one string.
 */
static int
fold_password(struct loader *ld, char **dsn, const char *file,
    const char *dsnkey, const char *key)
{
	const struct seen *s;
	struct buf b;
	bool has;
	char *pw;

	if (file == NULL)
		return 0;
	if (dsn_scan(*dsn, NULL, &has) == -1)
		return verr(ld, dsnkey, "%s: cannot parse the connection "
		    "string to add the password of %s", dsnkey, key);
	if (has)
		return verr(ld, key, "%s: %s holds a password already (keep "
		    "only one of them)", key, dsnkey);
	s = seen_find(ld, key);
	if (read_secret(ld, file, key, s ? s->line : ld->section_line,
	    s ? s->col : ld->section_col, &pw) == -1)
		return -1;
	buf_init(&b);
	buf_puts(&b, *dsn);
	if (strstr(*dsn, "://") != NULL) {
		buf_putc(&b, strchr(*dsn, '?') ? '&' : '?');
		buf_puts(&b, "password=");
		for (const unsigned char *c = (unsigned char *)pw; *c; c++) {
			if (isalnum(*c) || strchr("-._~", *c) != NULL)
				buf_putc(&b, (char)*c);
			else
				buf_printf(&b, "%%%02X", *c);
		}
	} else {
		if (b.len > 0)
			buf_putc(&b, ' ');
		buf_puts(&b, "password='");
		for (const char *c = pw; *c; c++) {
			if (*c == '\'' || *c == '\\')
				buf_putc(&b, '\\');
			buf_putc(&b, *c);
		}
		buf_putc(&b, '\'');
	}
	explicit_bzero(pw, strlen(pw));
	free(pw);
	explicit_bzero(*dsn, strlen(*dsn));
	free(*dsn);
	*dsn = buf_steal(&b);
	return 0;
}

static int
fold_passwords(struct loader *ld, struct config *cfg)
{
	char *dsnkey, *key;
	int rv = 0;

	if (fold_password(ld, &cfg->ledger.dsn, cfg->ledger.password_file,
	    SECTION ".ledger.dsn", SECTION ".ledger.password_file") == -1)
		return -1;
	for (size_t i = 0; i < cfg->nroutes && rv == 0; i++) {
		struct route_query *q = &cfg->routes[i].documents_query;

		if (q->password_file == NULL)
			continue;
		dsnkey = xasprintf(SECTION ".routes[%zu].documents_query.dsn",
		    i);
		key = xasprintf(SECTION ".routes[%zu].documents_query."
		    "password_file", i);
		rv = fold_password(ld, &q->dsn, q->password_file, dsnkey, key);
		free(dsnkey);
		free(key);
	}
	return rv;
}

static int
apply_env_overrides(struct loader *ld, struct config *cfg)
{
	const char *v;
	bool b;

	/* Empty counts as unset: compose files write VAR= to clear one. */
	if ((v = getenv("EVENT_CONSUMER_ENABLED")) != NULL && *v != '\0') {
		if (parse_bool(v, &b) == -1) {
			char *what = shown(v);

			lerr_at(ld, 0, 0, "environment variable "
			    "EVENT_CONSUMER_ENABLED: expected a boolean (true "
			    "or false), got %s", what);
			free(what);
			return -1;
		}
		cfg->enabled = b;
	}
	if ((v = getenv("STAGE1_EVENT_STREAM")) != NULL && *v != '\0') {
		free(cfg->source_stream);
		cfg->source_stream = xstrdup(v);
		ld->stream_from_env = true;
	}
	return 0;
}

static bool
listen_ok(const char *s)
{
	const char *colon = strrchr(s, ':');
	long long port;

	if (colon == NULL)
		return false;
	if (parse_integer(colon + 1, &port) != 0 || colon[1] == '+' ||
	    colon[1] == '-')
		return false;
	return port >= 1 && port <= 65535;
}

/* The ingress's endpoint: it may face another network than metrics. */
static int
validate_ingress(struct loader *ld, const struct config *cfg)
{
	char herr[256];
	const char *p;

	if (!listen_ok(cfg->ingress.listen) ||
	    httpd_check_listen(cfg->ingress.listen, herr, sizeof(herr)) == -1)
		return verr(ld, SECTION ".ingress.listen", "%s.ingress.listen: "
		    "expected a numeric host:port (e.g. 127.0.0.1:9466 or "
		    "[::]:9466), got \"%s\"", SECTION, cfg->ingress.listen);
	/* An append waiting longer would be taken for a hang. */
	if (cfg->ingress.enabled && (long long)cfg->ingress.redis_timeout_ms >=
	    (long long)cfg->supervisor.worker_timeout * 1000)
		return verr(ld, SECTION ".ingress.redis_timeout_ms", "%s.ingress."
		    "redis_timeout_ms: %d ms must be under "
		    "supervisor.worker_timeout (%d s), or a slow append gets "
		    "the ingress killed as hung", SECTION,
		    cfg->ingress.redis_timeout_ms,
		    cfg->supervisor.worker_timeout);
	if (cfg->ingress.enabled && *cfg->metrics.listen != '\0' &&
	    strcmp(cfg->ingress.listen, cfg->metrics.listen) == 0)
		return verr(ld, SECTION ".ingress.listen", "%s.ingress.listen: "
		    "\"%s\" is metrics.listen too; the ingress listens on an "
		    "address of its own", SECTION, cfg->ingress.listen);
	p = cfg->ingress.path;
	if (p[0] != '/' || strpbrk(p, "?#%") != NULL || str_has_control(p) ||
	    strchr(p, ' ') != NULL)
		return verr(ld, SECTION ".ingress.path", "%s.ingress.path: "
		    "expected an absolute path without query, fragment, "
		    "escapes or spaces (e.g. /v2/events/stage1), got \"%s\"",
		    SECTION, p);
	return 0;
}

static int
validate(struct loader *ld, struct config *cfg)
{
	char herr[256];
	static const struct {
		const char	*key;
		size_t		 off;
	} nonempty[] = {
		{ "source_stream", CFG(source_stream) },
		{ "redis_host", CFG(redis_host) },
		{ "consumer_group", CFG(consumer_group) },
		{ "consumer_name", CFG(consumer_name) },
		{ "dead_letter_stream", CFG(dead_letter_stream) },
		{ "event_field", CFG(event_field) },
		{ "nlp_api.base_url", CFG(nlp_api.base_url) },
		{ "ledger.schema", CFG(ledger.schema) },
	};
	static const struct {
		const char	*key;
		size_t		 off;
	} names[] = {
		{ "source_stream", CFG(source_stream) },
		{ "consumer_group", CFG(consumer_group) },
		{ "consumer_name", CFG(consumer_name) },
		{ "dead_letter_stream", CFG(dead_letter_stream) },
		{ "event_field", CFG(event_field) },
	};
	const char *envnote = ld->stream_from_env ?
	    " (source_stream comes from STAGE1_EVENT_STREAM)" : "";
	const char *p;
	char *key;

	for (size_t i = 0; i < sizeof(nonempty) / sizeof(nonempty[0]); i++) {
		if (**FIELD(cfg, nonempty[i].off, char *) != '\0')
			continue;
		key = xasprintf(SECTION ".%s", nonempty[i].key);
		verr(ld, key, "%s: must not be empty", key);
		free(key);
		return -1;
	}
	/*
	 * Names that reach Redis, the ledger, log lines and metric labels:
	 * each is quoted or escaped where it goes, and still no space or
	 * control character is let in (a newline in a consumer name makes
	 * a log line that lies).
	 */
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *v = *FIELD(cfg, names[i].off, char *);

		for (p = v; *p != '\0'; p++)
			if ((unsigned char)*p <= 0x20 ||
			    (unsigned char)*p == 0x7f)
				break;
		if (*p == '\0')
			continue;
		key = xasprintf(SECTION ".%s", names[i].key);
		verr(ld, key, "%s: a space or control character (0x%02x) at "
		    "byte %zu, after \"%.*s\"; a name here is one word%s", key,
		    (unsigned char)*p, (size_t)(p - v) + 1, (int)(p - v), v,
		    strcmp(names[i].key, "source_stream") == 0 ? envnote : "");
		free(key);
		return -1;
	}
	if (strcmp(cfg->dead_letter_stream, cfg->source_stream) == 0)
		return verr(ld, SECTION ".dead_letter_stream", "%s."
		    "dead_letter_stream: must differ from source_stream "
		    "\"%s\"%s (dead letters would be consumed again)",
		    SECTION, cfg->source_stream, envnote);
	if (strncmp(cfg->nlp_api.base_url, "http://", 7) != 0 &&
	    strncmp(cfg->nlp_api.base_url, "https://", 8) != 0)
		return verr(ld, SECTION ".nlp_api.base_url", "%s.nlp_api."
		    "base_url: must start with http:// or https://, got "
		    "\"%s\"", SECTION, cfg->nlp_api.base_url);
	if (strstr(cfg->nlp_api.base_url, "://")[3] == '\0')
		return verr(ld, SECTION ".nlp_api.base_url", "%s.nlp_api."
		    "base_url: no host in \"%s\"", SECTION,
		    cfg->nlp_api.base_url);
	/* Interpolated into SQL as an identifier: keep it boring. */
	p = cfg->ledger.schema;
	if (!(islower((unsigned char)*p) || *p == '_') || strlen(p) > 63 ||
	    strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(p))
		return verr(ld, SECTION ".ledger.schema", "%s.ledger.schema: "
		    "\"%s\" is not a plain identifier ([a-z_][a-z0-9_]*, at "
		    "most 63 characters)", SECTION, p);
	/* A lease shorter than a request lets another worker claim it. */
	if ((long long)cfg->ledger.lease_seconds * 1000 <=
	    cfg->nlp_api.timeout_ms)
		return verr(ld, SECTION ".ledger.lease_seconds", "%s.ledger."
		    "lease_seconds: %d s must exceed nlp_api.timeout_ms (%d "
		    "ms), or a claim expires while its request is in flight",
		    SECTION, cfg->ledger.lease_seconds,
		    cfg->nlp_api.timeout_ms);
	/* A worker waiting on its query does not beat its heart. */
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct route_query *q = &cfg->routes[i].documents_query;
		int r;

		if (q->sql == NULL || (long long)q->timeout_ms <
		    (long long)cfg->supervisor.worker_timeout * 1000)
			continue;
		key = xasprintf(SECTION ".routes[%zu].documents_query."
		    "timeout_ms", i);
		r = verr(ld, key, "%s: %d ms must be less than "
		    "supervisor.worker_timeout (%d s), or the worker is taken "
		    "for hung while its query runs", key, q->timeout_ms,
		    cfg->supervisor.worker_timeout);
		free(key);
		return r;
	}
	if (cfg->max_retry_delay_seconds < cfg->retry_delay_seconds)
		return verr(ld, SECTION ".max_retry_delay_seconds", "%s."
		    "max_retry_delay_seconds: %g is less than "
		    "retry_delay_seconds (%g)", SECTION,
		    cfg->max_retry_delay_seconds, cfg->retry_delay_seconds);
	/* The form and port first, then the host as the server reads it. */
	if (*cfg->metrics.listen != '\0' && !listen_ok(cfg->metrics.listen))
		return verr(ld, SECTION ".metrics.listen", "%s.metrics.listen: "
		    "expected host:port (e.g. 127.0.0.1:9464) or \"\" to "
		    "disable, got \"%s\"", SECTION, cfg->metrics.listen);
	if (*cfg->metrics.listen != '\0' &&
	    httpd_check_listen(cfg->metrics.listen, herr, sizeof(herr)) == -1)
		return verr(ld, SECTION ".metrics.listen", "%s.metrics.listen: "
		    "%s (a numeric address: the master looks up no names); "
		    "or \"\" to disable", SECTION, herr);
	if (validate_ingress(ld, cfg) == -1)
		return -1;
	/* Else every request fails, as a transient error, for good. */
	if (cfg->nlp_api.ca_file != NULL && *cfg->nlp_api.ca_file != '\0' &&
	    access(cfg->nlp_api.ca_file, R_OK) == -1)
		return verr(ld, SECTION ".nlp_api.ca_file", "%s.nlp_api.ca_file: "
		    "%s: %s", SECTION, cfg->nlp_api.ca_file, strerror(errno));
	if (cfg->shared_dir[0] != '/')
		return verr(ld, SECTION ".shared_dir", "%s.shared_dir: must be "
		    "an absolute path, got \"%s\"", SECTION, cfg->shared_dir);
	/* Without a route the worker acknowledges such events unprocessed. */
	for (size_t i = 0; i < cfg->nconsume_events; i++) {
		if (config_route_for(cfg, cfg->consume_events[i]) != NULL)
			continue;
		key = xasprintf(SECTION ".consume_events");
		verr(ld, key, "%s[%zu]: no route handles \"%s\" (add it to "
		    "the types of a route, or drop it)", key, i,
		    cfg->consume_events[i]);
		free(key);
		return -1;
	}
	return 0;
}

static int
finish(struct loader *ld, struct config *cfg)
{
	if (!ld->routes_given) {
		cfg->routes = route_defaults(&cfg->nroutes);
		if (cfg->routes == NULL || cfg->nroutes == 0)
			return lerr_at(ld, ld->section_line, ld->section_col,
			    "no routes configured and no default routes");
	}
	for (size_t i = 0; i < ld->nsecrets; i++) {
		const struct secret_file *sf = &ld->secrets[i];
		char *pw;

		if (seen_find(ld, sf->twin) != NULL)
			return lerr_at(ld, sf->line, sf->col, "%s: %s is set "
			    "too (keep only one of them)", sf->key, sf->twin);
		if (read_secret(ld, sf->file, sf->key, sf->line, sf->col,
		    &pw) == -1)
			return -1;
		set_string(cfg, sf->off, pw);
	}
	if (fold_passwords(ld, cfg) == -1)
		return -1;
	if (apply_env_overrides(ld, cfg) == -1)
		return -1;
	if (validate(ld, cfg) == -1)
		return -1;
	check_permissions(ld, cfg);
	check_transport(cfg);
	check_ingress_exposure(cfg);
	return 0;
}

/* ---- loading ---------------------------------------------------------- */

static int
load_parser(const char *name, bool from_file, yaml_parser_t *parser,
    struct config *out, char *err, size_t errlen)
{
	yaml_document_t doc;
	yaml_node_t *root, *section = NULL, *sectkey = NULL;
	struct loader ld;
	int rv = -1;

	memset(out, 0, sizeof(*out));
	memset(&ld, 0, sizeof(ld));
	ld.name = name;
	ld.err = err;
	ld.errlen = errlen;
	ld.cfg = out;
	ld.from_file = from_file;
	ld.section_line = 1;
	ld.section_col = 1;
	if (err != NULL && errlen > 0)
		err[0] = '\0';

	if (!yaml_parser_load(parser, &doc)) {
		const char *ctx = parser->context;

		if (parser->error == YAML_READER_ERROR)
			lerr_at(&ld, 0, 0, "invalid YAML: %s at byte %zu",
			    parser->problem ? parser->problem : "read error",
			    parser->problem_offset);
		else if (ctx != NULL)
			lerr_at(&ld, (int)parser->problem_mark.line + 1,
			    (int)parser->problem_mark.column + 1,
			    "invalid YAML: %s (%s at line %d)",
			    parser->problem ? parser->problem : "syntax error",
			    ctx, (int)parser->context_mark.line + 1);
		else
			lerr_at(&ld, (int)parser->problem_mark.line + 1,
			    (int)parser->problem_mark.column + 1,
			    "invalid YAML: %s",
			    parser->problem ? parser->problem : "syntax error");
		return -1;
	}
	ld.doc = &doc;
	out->path = xstrdup(name);
	config_defaults(out);

	/* As PyYAML's safe_load, which Stage 2 reads this file with. */
	if (yaml_document_get_root_node(&doc) != NULL) {
		yaml_document_t next;

		if (!yaml_parser_load(parser, &next)) {
			lerr_at(&ld, (int)parser->problem_mark.line + 1,
			    (int)parser->problem_mark.column + 1,
			    "invalid YAML: %s", parser->problem ?
			    parser->problem : "syntax error");
			goto out;
		}
		if (yaml_document_get_root_node(&next) != NULL) {
			lerr_at(&ld, (int)next.start_mark.line + 1,
			    (int)next.start_mark.column + 1, "a second YAML "
			    "document starts here; expected only one");
			yaml_document_delete(&next);
			goto out;
		}
		yaml_document_delete(&next);
	}

	if ((root = yaml_document_get_root_node(&doc)) == NULL ||
	    is_null(root)) {
		lerr_at(&ld, 1, 1, "no event_consumer: section (the file is "
		    "empty)");
		goto out;
	}
	if (root->type != YAML_MAPPING_NODE) {
		lerr(&ld, root, "top level is %s, expected a mapping holding "
		    "event_consumer:", node_kind(root));
		goto out;
	}
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
	    p < root->data.mapping.pairs.top; p++) {
		yaml_node_t *kn = node_at(&ld, p->key);

		if (kn->type != YAML_SCALAR_NODE ||
		    strcmp(scalar_text(kn), SECTION) != 0)
			continue;	/* Stage 2's own settings */
		if (section != NULL) {
			lerr(&ld, kn, "duplicate key %s (first set at line %d)",
			    SECTION, (int)sectkey->start_mark.line + 1);
			goto out;
		}
		sectkey = kn;
		section = node_at(&ld, p->value);
	}
	if (section == NULL) {
		const char *names[1];
		yaml_node_t *near = NULL;

		names[0] = SECTION;
		for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
		    near == NULL && p < root->data.mapping.pairs.top; p++) {
			yaml_node_t *kn = node_at(&ld, p->key);

			if (kn->type == YAML_SCALAR_NODE &&
			    nearest(scalar_text(kn), names, 1) != NULL)
				near = kn;
		}
		if (near != NULL)
			lerr(&ld, near, "no event_consumer: section (did you "
			    "mean event_consumer instead of %s?)",
			    scalar_text(near));
		else
			lerr(&ld, root, "no event_consumer: section "
			    "(stagerelay reads only that top-level mapping)");
		goto out;
	}
	ld.section_line = (int)sectkey->start_mark.line + 1;
	ld.section_col = (int)sectkey->start_mark.column + 1;
	if (!is_null(section)) {
		/* An empty event_consumer: means every default. */
		if (section->type != YAML_MAPPING_NODE) {
			lerr(&ld, section, "%s: expected a mapping, got %s",
			    SECTION, node_kind(section));
			goto out;
		}
		if (parse_map(&ld, out, section_keys, section, SECTION) == -1)
			goto out;
	}
	if (finish(&ld, out) == -1)
		goto out;
	rv = 0;
out:
	for (size_t i = 0; i < ld.nseen; i++) {
		free(ld.seen[i].path);
		free(ld.seen[i].written);
	}
	free(ld.seen);
	for (size_t i = 0; i < ld.nsecrets; i++) {
		free(ld.secrets[i].file);
		free(ld.secrets[i].key);
		free(ld.secrets[i].twin);
	}
	free(ld.secrets);
	free_list(ld.literal, ld.nliteral);
	yaml_document_delete(&doc);
	if (rv == -1)
		config_free(out);
	return rv;
}

int
config_load(const char *path, struct config *out, char *err, size_t errlen)
{
	yaml_parser_t parser;
	FILE *f;
	int rv;

	memset(out, 0, sizeof(*out));
	if ((f = fopen(path, "rb")) == NULL) {
		if (err != NULL && errlen > 0) {
			char *m = xasprintf("%s: cannot open: %s", path,
			    strerror(errno));

			strlcpy_s(err, m, errlen);
			free(m);
		}
		return -1;
	}
	if (!yaml_parser_initialize(&parser))
		fatalx("config: out of memory");
	yaml_parser_set_input_file(&parser, f);
	rv = load_parser(path, true, &parser, out, err, errlen);
	yaml_parser_delete(&parser);
	fclose(f);
	return rv;
}

int
config_load_string(const char *name, const char *yaml, struct config *out,
    char *err, size_t errlen)
{
	yaml_parser_t parser;
	int rv;

	memset(out, 0, sizeof(*out));
	if (!yaml_parser_initialize(&parser))
		fatalx("config: out of memory");
	yaml_parser_set_input_string(&parser, (const unsigned char *)yaml,
	    strlen(yaml));
	rv = load_parser(name, false, &parser, out, err, errlen);
	yaml_parser_delete(&parser);
	return rv;
}

void
config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->source_stream);
	free(cfg->redis_host);
	free(cfg->redis_username);
	if (cfg->redis_password != NULL) {
		explicit_bzero(cfg->redis_password, strlen(cfg->redis_password));
		free(cfg->redis_password);
	}
	free(cfg->consumer_group);
	free(cfg->consumer_name);
	free_list(cfg->consume_events, cfg->nconsume_events);
	free(cfg->dead_letter_stream);
	free(cfg->event_field);
	free(cfg->shared_dir);
	free(cfg->nlp_api.base_url);
	for (size_t i = 0; i < cfg->nlp_api.nheaders; i++) {
		free(cfg->nlp_api.headers[i].name);
		if (cfg->nlp_api.headers[i].value != NULL) {
			explicit_bzero(cfg->nlp_api.headers[i].value,
			    strlen(cfg->nlp_api.headers[i].value));
			free(cfg->nlp_api.headers[i].value);
		}
	}
	free(cfg->nlp_api.headers);
	free(cfg->nlp_api.ca_file);
	for (size_t i = 0; i < cfg->nroutes; i++)
		route_free(&cfg->routes[i]);
	free(cfg->routes);
	if (cfg->ledger.dsn != NULL) {
		explicit_bzero(cfg->ledger.dsn, strlen(cfg->ledger.dsn));
		free(cfg->ledger.dsn);
	}
	free(cfg->ledger.schema);
	free(cfg->ledger.password_file);
	free(cfg->logging.format);
	free(cfg->logging.level);
	free(cfg->logging.file);
	free(cfg->metrics.listen);
	free(cfg->ingress.listen);
	free(cfg->ingress.path);
	if (cfg->ingress.secret != NULL) {
		explicit_bzero(cfg->ingress.secret, strlen(cfg->ingress.secret));
		free(cfg->ingress.secret);
	}
	for (size_t i = 0; i < cfg->npending; i++) {
		free(cfg->pending[i].key);
		free(cfg->pending[i].what);
	}
	free(cfg->pending);
	free_list(cfg->warnings, cfg->nwarnings);
	memset(cfg, 0, sizeof(*cfg));
}

static void
forget(char **p)
{
	if (*p == NULL)
		return;
	explicit_bzero(*p, strlen(*p));
	free(*p);
	*p = NULL;
}

void
config_forget_secrets(struct config *cfg, enum config_role role)
{
	if (role == CONFIG_ROLE_WORKER) {
		forget(&cfg->ingress.secret);
		return;
	}
	forget(&cfg->ledger.dsn);
	cfg->ledger.dsn = xstrdup("");
	for (size_t i = 0; i < cfg->nroutes; i++)
		forget(&cfg->routes[i].documents_query.dsn);
	for (size_t i = 0; i < cfg->nlp_api.nheaders; i++) {
		forget(&cfg->nlp_api.headers[i].value);
		cfg->nlp_api.headers[i].value = xstrdup("");
	}
}

/* ---- printing --------------------------------------------------------- */

/*
 * A YAML double-quoted scalar. A $ that would start ${...} or $$ is
 * doubled, so the output loads back to the same values.
 */
static void
print_quoted(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		case '$':
			fputs(p[1] == '{' || p[1] == '$' ? "$$" : "$", f);
			break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(f, "\\x%02x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('"', f);
}

/* Shortest text that reads back as the same double. */
static void
print_double(FILE *f, double d)
{
	char tmp[64];

	if (d == floor(d) && fabs(d) < 1e15) {
		fprintf(f, "%.0f", d);
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
		if (strtod(tmp, NULL) == d)
			break;
	}
	fputs(tmp, f);
}

static void
print_str(FILE *f, int ind, const char *key, const char *v)
{
	fprintf(f, "%*s%s: ", ind, "", key);
	if (v == NULL)
		fputs("null", f);
	else
		print_quoted(f, v);
	fputc('\n', f);
}

static void
print_secret(FILE *f, int ind, const char *key, const char *v)
{
	print_str(f, ind, key, v == NULL ? NULL : REDACTED);
}

static void
print_int(FILE *f, int ind, const char *key, long long v)
{
	fprintf(f, "%*s%s: %lld\n", ind, "", key, v);
}

static void
print_bool(FILE *f, int ind, const char *key, bool v)
{
	fprintf(f, "%*s%s: %s\n", ind, "", key, v ? "true" : "false");
}

static void
print_num(FILE *f, int ind, const char *key, double v)
{
	fprintf(f, "%*s%s: ", ind, "", key);
	print_double(f, v);
	fputc('\n', f);
}

static void
print_list(FILE *f, int ind, const char *key, char *const *list, size_t n)
{
	fprintf(f, "%*s%s: [", ind, "", key);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			fputs(", ", f);
		print_quoted(f, list[i]);
	}
	fputs("]\n", f);
}

/* A template tree as a YAML flow node (JSON with YAML-safe strings). */
static void
print_json(FILE *f, const cJSON *j)
{
	const cJSON *c;

	if (cJSON_IsNull(j))
		fputs("null", f);
	else if (cJSON_IsTrue(j))
		fputs("true", f);
	else if (cJSON_IsFalse(j))
		fputs("false", f);
	else if (cJSON_IsNumber(j))
		print_double(f, j->valuedouble);
	else if (cJSON_IsString(j))
		print_quoted(f, j->valuestring);
	else if (cJSON_IsArray(j)) {
		fputc('[', f);
		cJSON_ArrayForEach(c, j) {
			print_json(f, c);
			if (c->next != NULL)
				fputs(", ", f);
		}
		fputc(']', f);
	} else if (cJSON_IsObject(j)) {
		fputc('{', f);
		cJSON_ArrayForEach(c, j) {
			print_quoted(f, c->string);
			fputs(": ", f);
			print_json(f, c);
			if (c->next != NULL)
				fputs(", ", f);
		}
		fputc('}', f);
	} else
		fputs("null", f);
}

char *
config_redacted_dsn(const char *dsn)
{
	struct buf b;
	bool has;

	buf_init(&b);
	buf_puts(&b, "");
	if (dsn_scan(dsn != NULL ? dsn : "", &b, &has) == -1) {
		/* Not understood: better to show nothing than a password. */
		buf_reset(&b);
		buf_puts(&b, REDACTED);
	}
	return buf_steal(&b);
}

static void
print_dsn(FILE *f, int ind, const char *dsn)
{
	char *red = config_redacted_dsn(dsn);

	print_str(f, ind, "dsn", red);
	free(red);
}

void
config_print(FILE *f, const struct config *cfg)
{
	fprintf(f, "# effective configuration");
	if (cfg->path != NULL)
		fprintf(f, " of %s", cfg->path);
	fprintf(f, " (defaults filled in, secrets redacted)\n");
	fprintf(f, SECTION ":\n");

	/* The proposal's keys. */
	print_bool(f, 2, "enabled", cfg->enabled);
	print_str(f, 2, "source_stream", cfg->source_stream);
	print_str(f, 2, "redis_host", cfg->redis_host);
	print_int(f, 2, "redis_port", cfg->redis_port);
	print_int(f, 2, "redis_db", cfg->redis_db);
	print_str(f, 2, "consumer_group", cfg->consumer_group);
	print_str(f, 2, "consumer_name", cfg->consumer_name);
	print_list(f, 2, "consume_events", cfg->consume_events,
	    cfg->nconsume_events);
	print_bool(f, 2, "auto_process", cfg->auto_process);
	print_bool(f, 2, "batch_mode", cfg->batch_mode);
	print_int(f, 2, "poll_interval_ms", cfg->poll_interval_ms);
	print_int(f, 2, "batch_size", cfg->batch_size);
	print_int(f, 2, "concurrent_tasks", cfg->concurrent_tasks);
	print_bool(f, 2, "retry_failed", cfg->retry_failed);
	print_int(f, 2, "max_retries", cfg->max_retries);
	print_num(f, 2, "retry_delay_seconds", cfg->retry_delay_seconds);
	print_str(f, 2, "dead_letter_stream", cfg->dead_letter_stream);
	print_bool(f, 2, "process_backlog", cfg->process_backlog);
	print_int(f, 2, "backlog_batch_size", cfg->backlog_batch_size);
	print_num(f, 2, "backlog_max_age_hours", cfg->backlog_max_age_hours);
	print_bool(f, 2, "check_already_processed",
	    cfg->check_already_processed);
	print_num(f, 2, "deduplication_ttl_hours",
	    cfg->deduplication_ttl_hours);

	/* stagerelay's own keys. */
	print_str(f, 2, "redis_username", cfg->redis_username);
	print_secret(f, 2, "redis_password", cfg->redis_password);
	print_str(f, 2, "event_field", cfg->event_field);
	print_int(f, 2, "max_event_bytes", (long long)cfg->max_event_bytes);
	print_int(f, 2, "max_entry_fields", (long long)cfg->max_entry_fields);
	print_int(f, 2, "max_json_depth", cfg->max_json_depth);
	print_str(f, 2, "shared_dir", cfg->shared_dir);
	print_int(f, 2, "max_batch_documents", cfg->max_batch_documents);
	fprintf(f, "  max_documents_file_bytes: %zu\n",
	    cfg->max_documents_file_bytes);
	print_int(f, 2, "max_documents_per_file",
	    (long long)cfg->max_documents_per_file);
	print_num(f, 2, "max_retry_delay_seconds",
	    cfg->max_retry_delay_seconds);
	print_int(f, 2, "dead_letter_maxlen", cfg->dead_letter_maxlen);
	print_int(f, 2, "claim_interval_ms", cfg->claim_interval_ms);
	print_int(f, 2, "claim_idle_ms", cfg->claim_idle_ms);
	print_int(f, 2, "max_deliveries", cfg->max_deliveries);
	print_int(f, 2, "lag_alert_threshold", cfg->lag_alert_threshold);
	print_int(f, 2, "idle_alert_minutes", cfg->idle_alert_minutes);

	fprintf(f, "  nlp_api:\n");
	print_str(f, 4, "base_url", cfg->nlp_api.base_url);
	print_int(f, 4, "timeout_ms", cfg->nlp_api.timeout_ms);
	print_int(f, 4, "connect_timeout_ms", cfg->nlp_api.connect_timeout_ms);
	print_int(f, 4, "max_in_flight", cfg->nlp_api.max_in_flight);
	print_int(f, 4, "max_request_bytes",
	    (long long)cfg->nlp_api.max_request_bytes);
	print_int(f, 4, "max_response_bytes",
	    (long long)cfg->nlp_api.max_response_bytes);
	if (cfg->nlp_api.nheaders == 0)
		fprintf(f, "    headers: {}\n");
	else {
		fprintf(f, "    headers:\n");
		for (size_t i = 0; i < cfg->nlp_api.nheaders; i++) {
			fprintf(f, "      ");
			print_quoted(f, cfg->nlp_api.headers[i].name);
			fprintf(f, ": \"" REDACTED "\"\n");
		}
	}
	print_str(f, 4, "ca_file", cfg->nlp_api.ca_file);
	print_bool(f, 4, "verify_tls", cfg->nlp_api.verify_tls);

	fprintf(f, "  routes:%s\n", cfg->nroutes == 0 ? " []" : "");
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct route *r = &cfg->routes[i];

		fprintf(f, "    - ");
		print_str(f, 0, "name", r->name);
		print_list(f, 6, "types", r->types, r->ntypes);
		print_str(f, 6, "method", r->method);
		print_str(f, 6, "path", r->path);
		print_str(f, 6, "idempotency_key", r->idempotency_key);
		fprintf(f, "      content_mode: %s\n",
		    (size_t)r->content_mode < 3 ?
		    content_modes[r->content_mode] : "body");
		if (r->body != NULL) {
			fprintf(f, "      body: ");
			print_json(f, r->body);
			fputc('\n', f);
		}
		print_str(f, 6, "success_field", r->success_field);
		print_str(f, 6, "job_id_field", r->job_id_field);
		print_str(f, 6, "documents_file", r->documents_file);
		if (r->documents_query.sql != NULL) {
			const struct route_query *q = &r->documents_query;

			fprintf(f, "      documents_query:\n");
			print_str(f, 8, "sql", q->sql);
			print_list(f, 8, "params", q->params, q->nparams);
			if (q->dsn != NULL)
				print_dsn(f, 8, q->dsn);
			else
				print_str(f, 8, "dsn", NULL);
			print_str(f, 8, "password_file", q->password_file);
			print_int(f, 8, "timeout_ms", q->timeout_ms);
		}
		print_str(f, 6, "kind", r->kind);
	}

	fprintf(f, "  ledger:\n");
	print_dsn(f, 4, cfg->ledger.dsn ? cfg->ledger.dsn : "");
	print_str(f, 4, "schema", cfg->ledger.schema);
	print_int(f, 4, "lease_seconds", cfg->ledger.lease_seconds);
	print_str(f, 4, "password_file", cfg->ledger.password_file);

	fprintf(f, "  logging:\n");
	print_str(f, 4, "format", cfg->logging.format);
	print_str(f, 4, "level", cfg->logging.level);
	print_str(f, 4, "file", cfg->logging.file);

	fprintf(f, "  metrics:\n");
	print_str(f, 4, "listen", cfg->metrics.listen);

	fprintf(f, "  ingress:\n");
	print_bool(f, 4, "enabled", cfg->ingress.enabled);
	print_str(f, 4, "listen", cfg->ingress.listen);
	print_str(f, 4, "path", cfg->ingress.path);
	print_secret(f, 4, "secret", cfg->ingress.secret);
	fprintf(f, "    max_body_bytes: %zu\n", cfg->ingress.max_body_bytes);
	print_int(f, 4, "max_batch_events", cfg->ingress.max_batch_events);
	fprintf(f, "    stream_maxlen: %ld\n", cfg->ingress.stream_maxlen);
	print_int(f, 4, "max_connections", cfg->ingress.max_connections);
	print_int(f, 4, "redis_timeout_ms", cfg->ingress.redis_timeout_ms);

	fprintf(f, "  supervisor:\n");
	print_int(f, 4, "worker_timeout", cfg->supervisor.worker_timeout);
	print_int(f, 4, "shutdown_timeout", cfg->supervisor.shutdown_timeout);

	fprintf(f, "  circuit_breaker:\n");
	print_int(f, 4, "failure_threshold",
	    cfg->circuit_breaker.failure_threshold);
	print_int(f, 4, "open_seconds", cfg->circuit_breaker.open_seconds);
}

void
config_warn_pending(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->npending; i++)
		log_warnx("config: %s (line %d) accepted, not yet in effect: "
		    "%s arrives in a later release", cfg->pending[i].key,
		    cfg->pending[i].line, cfg->pending[i].what);
}

void
config_warn_secrets(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nwarnings; i++)
		log_warnx("%s", cfg->warnings[i]);
}

/* ---- lookups ---------------------------------------------------------- */

const struct route *
config_route_for(const struct config *cfg, const char *type)
{
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct route *r = &cfg->routes[i];

		for (size_t j = 0; j < r->ntypes; j++)
			if (strcmp(r->types[j], "*") == 0 ||
			    strcmp(r->types[j], type) == 0)
				return r;
	}
	return NULL;
}

bool
config_consumes(const struct config *cfg, const char *type)
{
	if (cfg->nconsume_events == 0)
		return true;
	for (size_t i = 0; i < cfg->nconsume_events; i++)
		if (strcmp(cfg->consume_events[i], type) == 0)
			return true;
	return false;
}
