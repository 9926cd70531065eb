/*
 * ledger_admin.c: the ledger's administrative statements, through libpq:
 * show, stats, reset and purge, for `stagerelay ledger ...`.
 *
 * Like ledger.c: statements name the schema explicitly (@S@ stands for
 * it, quoted), carry every value as a parameter, and keep no session
 * state, so they work through pgbouncer in transaction pooling. Every
 * statement is scoped to one consumer group.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <libpq-fe.h>

#include "ledger_admin.h"
#include "log.h"
#include "util.h"

struct ledger_admin {
	PGconn	*conn;
	char	*qschema;	/* "schema", quoted */
	char	*group;
	char	 where[256];	/* host:port/dbname */
};

const char *const ledger_admin_statuses[LEDGER_NSTATUSES] = {
	"claimed", "triggered", "failed", "dead", "observed", "expired"
};

/* ---- show ---------------------------------------------------------------- */

/*
 * The row and its requests as JSON built by the server: every column,
 * present and future, with its type. A batch request that carried the
 * document has another idempotency key (job:...) but is the document's
 * last_delivery_id. Without a row (reset, purged) the requests made
 * under its key are still shown.
 */
static const char sql_show[] =
"WITH doc AS (\n"
"  SELECT * FROM @S@.processed_documents\n"
"   WHERE consumer_group = $1 AND document_id = $2\n"
")\n"
"SELECT (SELECT to_json(doc) FROM doc),\n"
"       (SELECT coalesce(json_agg(l ORDER BY l.requested_at, l.delivery_id),\n"
"                        '[]'::json)\n"
"          FROM @S@.deliveries l\n"
"         WHERE l.consumer_group = $1\n"
"           AND (l.idempotency_key = $2\n"
"                OR l.delivery_id = (SELECT last_delivery_id FROM doc)))";

/* ---- stats --------------------------------------------------------------- */

/* $2: the window in hours, 0 = all time; now() is the snapshot's. */
#define IN_WINDOW(col) \
	"($2::float8 = 0\n" \
	"     OR " col " >= now() - make_interval(secs => $2::float8 * 3600))"

/* $1: the window in hours. */
static const char sql_stats_window[] =
"SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),\n"
"       CASE WHEN $1::float8 > 0 THEN\n"
"         to_char((now() - make_interval(secs => $1::float8 * 3600))\n"
"                 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')\n"
"       ELSE '' END";

static const char sql_stats_status[] =
"SELECT status, count(*) FROM @S@.processed_documents\n"
" WHERE consumer_group = $1 AND " IN_WINDOW("updated_at") "\n"
" GROUP BY status";

static const char sql_stats_requests[] =
"SELECT count(*),\n"
"       count(*) FILTER (WHERE outcome = 'success'),\n"
"       count(*) FILTER (WHERE outcome = 'transient'),\n"
"       count(*) FILTER (WHERE outcome = 'permanent'),\n"
"       percentile_cont(0.50) WITHIN GROUP (ORDER BY latency_ms),\n"
"       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),\n"
"       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)\n"
"  FROM @S@.deliveries\n"
" WHERE consumer_group = $1 AND " IN_WINDOW("requested_at");

/*
 * By triggered_at, whatever the status is now: a document re-claimed
 * since was still triggered in that hour. Hours in UTC.
 */
static const char sql_stats_hours[] =
"SELECT to_char(date_trunc('hour', triggered_at AT TIME ZONE 'UTC'),\n"
"               'YYYY-MM-DD\"T\"HH24:00:00\"Z\"') AS hour, count(*)\n"
"  FROM @S@.processed_documents\n"
" WHERE consumer_group = $1 AND triggered_at IS NOT NULL\n"
"   AND " IN_WINDOW("triggered_at") "\n"
" GROUP BY 1 ORDER BY 1";

static const char sql_stats_errors[] =
"SELECT last_error, count(*) FROM @S@.processed_documents\n"
" WHERE consumer_group = $1 AND status IN ('failed', 'dead')\n"
"   AND last_error IS NOT NULL AND " IN_WINDOW("updated_at") "\n"
" GROUP BY last_error ORDER BY 2 DESC, 1 LIMIT 5";

/* ---- reset --------------------------------------------------------------- */

/*
 * Resetting deletes the document's row rather than setting a status the
 * claim re-owns. The claim (sql_claim in ledger.c) inserts a row that
 * does not exist and owns it, whatever event or entry brings the
 * document; every status it takes over comes with a condition: failed
 * only once retry_at is due (and keeps the retries spent), dead only for
 * another stream entry (a re-delivery of the dead entry itself is
 * "done"), triggered only outside the dedup window. observed and expired
 * are taken unconditionally, but would tell DBAs, `stats` and the note
 * statement something that did not happen. No row is the one state every
 * claim owns, now and after the claim changes, and it comes with a fresh
 * retry budget. The deliveries stay (history; `show` still finds them by
 * key); a deliveries row points nowhere, so nothing dangles.
 *
 * A claim with a live lease is in flight: deleting it would let a second
 * consumer send the document while the first is still sending, and the
 * first one's outcome would be recorded nowhere. Only force does it.
 * The lease is checked in the DELETE itself, so a claim that arrives
 * meanwhile is re-checked against the row it wrote.
 *
 * $1 group, $2 ids, $3 force, $4 dry run.
 */
#define RESETTABLE(a) \
	"($3::boolean OR " a ".status <> 'claimed'\n" \
	"     OR " a ".lease_until IS NULL OR " a ".lease_until <= now())"

static const char sql_reset[] =
"WITH ids AS (\n"
"  SELECT * FROM unnest($2::text[]) WITH ORDINALITY AS t(document_id, n)\n"
"), del AS (\n"
"  DELETE FROM @S@.processed_documents d USING ids\n"
"   WHERE NOT $4::boolean AND d.consumer_group = $1\n"
"     AND d.document_id = ids.document_id\n"
"     AND " RESETTABLE("d") "\n"
"  RETURNING d.document_id, d.status\n"
")\n"
/* d is the row as it was before this statement (one snapshot) */
"SELECT i.document_id,\n"
"       CASE WHEN x.document_id IS NOT NULL THEN 'reset'\n"
"            WHEN d.document_id IS NULL THEN 'not_found'\n"
"            WHEN $4::boolean AND " RESETTABLE("d") " THEN 'reset'\n"
"            ELSE 'refused' END,\n"
"       coalesce(x.status, d.status, ''), coalesce(d.claimed_by, ''),\n"
"       coalesce(greatest(0,\n"
"                ceil(extract(epoch FROM d.lease_until - now()))), 0)::bigint\n"
"  FROM ids i\n"
"  LEFT JOIN del x USING (document_id)\n"
"  LEFT JOIN @S@.processed_documents d\n"
"         ON d.consumer_group = $1 AND d.document_id = i.document_id\n"
" ORDER BY i.n";

/* ---- purge --------------------------------------------------------------- */

/*
 * The cutoff is computed once, on the server's clock, and travels as a
 * UTC timestamp in ISO form (read the same whatever the DateStyle), so
 * every batch and the dry run draw the same line.
 */
static const char sql_purge_cutoff[] =
"SELECT to_char(c AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'),\n"
"       to_char(c AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')\n"
"  FROM (SELECT now() - make_interval(secs => $1::float8 * 86400)) AS t(c)";

/* $1 group, $2 statuses, $3 cutoff. A live claim is never purged. */
#define PURGEABLE \
	"d.consumer_group = $1 AND d.status = ANY ($2::text[])\n" \
	"   AND d.updated_at < ($3::timestamp AT TIME ZONE 'UTC')\n" \
	"   AND (d.status <> 'claimed' OR d.lease_until IS NULL\n" \
	"        OR d.lease_until <= now())"

/*
 * Batches walk the table in key order, each looking at the next $4 rows
 * after the last key of the one before ($5; NULL to start) and deleting
 * those that qualify. A batch never meets the rows, live or dead, that
 * earlier ones passed, so each costs the same however big the table is
 * (a "DELETE ... LIMIT n" loop would rescan them: quadratic). The rows
 * go by primary key (= ANY of an array: index lookups, never a join that
 * might scan the table), and the DELETE checks PURGEABLE again, so a row
 * a consumer claimed meanwhile is waited for and then kept.
 */
static const char sql_purge_documents[] =
"WITH w AS (\n"
"  SELECT d.document_id, " PURGEABLE " AS doomed\n"
"    FROM @S@.processed_documents d\n"
"   WHERE d.consumer_group = $1\n"
"     AND ($5::text IS NULL OR d.document_id > $5::text)\n"
"   ORDER BY d.document_id LIMIT $4::int\n"
"), gone AS (\n"
"  DELETE FROM @S@.processed_documents d\n"
"   WHERE d.consumer_group = $1\n"
"     AND d.document_id = ANY (ARRAY(SELECT document_id FROM w WHERE doomed))\n"
"     AND " PURGEABLE "\n"
"  RETURNING 1\n"
")\n"
"SELECT (SELECT count(*) FROM w), (SELECT max(document_id) FROM w),\n"
"       (SELECT count(*) FROM gone)";

/*
 * After the documents: the group's requests that no document (of any
 * group) points at any longer. Only new deliveries rows are ever
 * referenced anew, so what is old and unreferenced stays so. The walk
 * is by delivery_id, $4 after the last batch's, up to $5, the newest id
 * older than the cutoff. The reference check sits in the select list, so
 * it stays one index probe per row (a WHERE would let the planner hash
 * all of processed_documents for every batch).
 */
static const char sql_purge_deliveries[] =
"WITH w AS (\n"
"  SELECT l.delivery_id,\n"
"         l.consumer_group = $1\n"
"         AND l.requested_at < ($2::timestamp AT TIME ZONE 'UTC')\n"
"         AND NOT EXISTS (SELECT 1 FROM @S@.processed_documents d\n"
"                          WHERE d.last_delivery_id = l.delivery_id) AS doomed\n"
"    FROM @S@.deliveries l\n"
"   WHERE l.delivery_id > $4::bigint AND l.delivery_id <= $5::bigint\n"
"   ORDER BY l.delivery_id LIMIT $3::int\n"
"), gone AS (\n"
"  DELETE FROM @S@.deliveries l\n"
"   WHERE l.delivery_id = ANY (ARRAY(SELECT delivery_id FROM w WHERE doomed))\n"
"  RETURNING 1\n"
")\n"
"SELECT (SELECT count(*) FROM w), (SELECT max(delivery_id) FROM w),\n"
"       (SELECT count(*) FROM gone)";

/* $1 group, $2 cutoff: where the walk over deliveries ends. */
static const char sql_purge_last_delivery[] =
"SELECT coalesce(max(delivery_id), 0) FROM @S@.deliveries\n"
" WHERE consumer_group = $1\n"
"   AND requested_at < ($2::timestamp AT TIME ZONE 'UTC')";

static const char sql_count_documents[] =
"SELECT count(*) FROM @S@.processed_documents d\n"
" WHERE " PURGEABLE;

/* The deliveries that would be unreferenced once the documents are gone. */
static const char sql_count_deliveries[] =
"SELECT count(*) FROM @S@.deliveries l\n"
" WHERE l.consumer_group = $1\n"
"   AND l.requested_at < ($3::timestamp AT TIME ZONE 'UTC')\n"
"   AND NOT EXISTS (SELECT 1 FROM @S@.processed_documents d\n"
"                    WHERE d.last_delivery_id = l.delivery_id\n"
"                      AND NOT (" PURGEABLE "))";

/* ---- helpers ------------------------------------------------------------- */

/* Replaces every @S@ with the quoted schema. Caller frees. */
static char *
with_schema(const struct ledger_admin *la, const char *sql)
{
	struct buf b;
	const char *p;

	buf_init(&b);
	while ((p = strstr(sql, "@S@")) != NULL) {
		buf_append(&b, sql, (size_t)(p - sql));
		buf_puts(&b, la->qschema);
		sql = p + 3;
	}
	buf_puts(&b, sql);
	return buf_steal(&b);
}

/* libpq's messages span lines; a log line wants one. */
static const char *
one_line(const char *m, char *out, size_t len)
{
	size_t n;

	strlcpy_s(out, m != NULL && *m != '\0' ? m : "unknown error", len);
	for (char *c = out; *c; c++)
		if (*c == '\n' || *c == '\t')
			*c = ' ';
	n = strlen(out);
	while (n > 0 && out[n - 1] == ' ')
		out[--n] = '\0';
	return out;
}

/* Says why a statement failed, and what to do if the schema is missing. */
static void
warn_result(const struct ledger_admin *la, const PGresult *res,
    const char *what)
{
	char msg[512];
	const char *m = res != NULL ? PQresultErrorMessage(res) : NULL;
	const char *state = res != NULL ?
	    PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	if (m == NULL || *m == '\0')
		m = PQerrorMessage(la->conn);
	one_line(m, msg, sizeof(msg));
	/* undefined_table, invalid_schema_name */
	if (state != NULL && (strcmp(state, "42P01") == 0 ||
	    strcmp(state, "3F000") == 0))
		log_warnx("ledger: %s: %s (schema %s at %s not migrated? run "
		    "stagerelay ledger migrate)", what, msg, la->qschema,
		    la->where);
	else
		log_warnx("ledger: %s: %s", what, msg);
}

/* Runs sql (with @S@) with text parameters; NULL after logging why. */
static PGresult *
query(struct ledger_admin *la, const char *sql, int nparams,
    const char *const *params, ExecStatusType want, const char *what)
{
	char *s = with_schema(la, sql);
	PGresult *res;

	res = PQexecParams(la->conn, s, nparams, NULL, params, NULL, NULL, 0);
	free(s);
	if (PQresultStatus(res) != want) {
		warn_result(la, res, what);
		PQclear(res);
		return NULL;
	}
	return res;
}

static int
command(struct ledger_admin *la, const char *sql, const char *what)
{
	PGresult *res = PQexec(la->conn, sql);
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok)
		warn_result(la, res, what);
	PQclear(res);
	return ok ? 0 : -1;
}

/* A PostgreSQL text array literal: {"a","b"}. Caller frees. */
static char *
text_array(const char *const *v, size_t n)
{
	struct buf b;

	buf_init(&b);
	buf_putc(&b, '{');
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			buf_putc(&b, ',');
		buf_putc(&b, '"');
		for (const char *c = v[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				buf_putc(&b, '\\');
			buf_putc(&b, *c);
		}
		buf_putc(&b, '"');
	}
	buf_putc(&b, '}');
	return buf_steal(&b);
}

static void
server_notice(void *arg, const char *message)
{
	char line[512];

	(void)arg;
	log_debug("ledger: server: %s", one_line(message, line, sizeof(line)));
}

/* ---- connection ---------------------------------------------------------- */

struct ledger_admin *
ledger_admin_open(const char *dsn, const char *schema, const char *group)
{
	struct ledger_admin *la;
	char msg[512];
	PGconn *conn;

	conn = PQconnectdb(dsn != NULL ? dsn : "");
	if (conn == NULL) {
		log_warnx("ledger: cannot connect: out of memory");
		return NULL;
	}
	la = xcalloc(1, sizeof(*la));
	la->conn = conn;
	/* PQhost and friends answer for a failed connection too. */
	snprintf(la->where, sizeof(la->where), "%s:%s/%s",
	    PQhost(conn) != NULL && *PQhost(conn) ? PQhost(conn) : "localhost",
	    PQport(conn) != NULL && *PQport(conn) ? PQport(conn) : "5432",
	    PQdb(conn) != NULL ? PQdb(conn) : "?");
	if (PQstatus(conn) != CONNECTION_OK) {
		/* libpq's message never includes the password. */
		log_warnx("ledger: cannot connect to %s: %s", la->where,
		    one_line(PQerrorMessage(conn), msg, sizeof(msg)));
		PQfinish(conn);
		free(la);
		return NULL;
	}
	PQsetNoticeProcessor(conn, server_notice, NULL);
	/* The config admits plain identifiers only; quote anyway. */
	la->qschema = xasprintf("\"%s\"", schema);
	la->group = xstrdup(group);
	log_debug("ledger: connected to %s, schema %s, group %s", la->where,
	    schema, group);
	return la;
}

void
ledger_admin_close(struct ledger_admin *la)
{
	if (la == NULL)
		return;
	PQfinish(la->conn);
	free(la->qschema);
	free(la->group);
	free(la);
}

const char *
ledger_admin_where(const struct ledger_admin *la)
{
	return la->where;
}

/* ---- show ---------------------------------------------------------------- */

int
ledger_admin_show(struct ledger_admin *la, const char *document_id,
    cJSON **out)
{
	const char *params[2] = { la->group, document_id };
	cJSON *doc, *dels;
	PGresult *res;
	int found;

	*out = NULL;
	if ((res = query(la, sql_show, 2, params, PGRES_TUPLES_OK,
	    "show")) == NULL)
		return -1;
	found = !PQgetisnull(res, 0, 0);
	doc = found ? cJSON_Parse(PQgetvalue(res, 0, 0)) : cJSON_CreateNull();
	dels = cJSON_Parse(PQgetvalue(res, 0, 1));
	PQclear(res);
	if (doc == NULL || dels == NULL) {
		log_warnx("ledger: show: the server's JSON does not parse");
		cJSON_Delete(doc);
		cJSON_Delete(dels);
		return -1;
	}
	*out = cJSON_CreateObject();
	cJSON_AddItemToObject(*out, "document", doc);
	cJSON_AddItemToObject(*out, "deliveries", dels);
	return found;
}

/* ---- stats --------------------------------------------------------------- */

static double
number_or_nan(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NAN :
	    strtod(PQgetvalue(res, row, col), NULL);
}

int
ledger_admin_stats(struct ledger_admin *la, double since_hours,
    struct ledger_stats *st)
{
	const char *params[2];
	char hours[64];
	PGresult *res;
	int ret = -1;

	memset(st, 0, sizeof(*st));
	st->since_hours = since_hours;
	st->p50_ms = st->p95_ms = st->p99_ms = NAN;
	snprintf(hours, sizeof(hours), "%.17g", since_hours);
	params[0] = la->group;
	params[1] = hours;

	/* One snapshot, so the figures add up; now() is the same throughout. */
	if (command(la, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
	    "stats") == -1)
		return -1;

	if ((res = query(la, sql_stats_window, 1, params + 1,
	    PGRES_TUPLES_OK, "stats")) == NULL)
		goto out;
	strlcpy_s(st->to, PQgetvalue(res, 0, 0), sizeof(st->to));
	strlcpy_s(st->from, PQgetvalue(res, 0, 1), sizeof(st->from));
	PQclear(res);

	if ((res = query(la, sql_stats_status, 2, params, PGRES_TUPLES_OK,
	    "stats: documents")) == NULL)
		goto out;
	for (int r = 0; r < PQntuples(res); r++) {
		long long n = atoll(PQgetvalue(res, r, 1));

		for (size_t k = 0; k < LEDGER_NSTATUSES; k++)
			if (strcmp(PQgetvalue(res, r, 0),
			    ledger_admin_statuses[k]) == 0)
				st->status[k] = n;
		st->documents += n;
	}
	PQclear(res);

	if ((res = query(la, sql_stats_requests, 2, params, PGRES_TUPLES_OK,
	    "stats: requests")) == NULL)
		goto out;
	st->requests = atoll(PQgetvalue(res, 0, 0));
	st->success = atoll(PQgetvalue(res, 0, 1));
	st->transient = atoll(PQgetvalue(res, 0, 2));
	st->permanent = atoll(PQgetvalue(res, 0, 3));
	st->p50_ms = number_or_nan(res, 0, 4);
	st->p95_ms = number_or_nan(res, 0, 5);
	st->p99_ms = number_or_nan(res, 0, 6);
	PQclear(res);

	if ((res = query(la, sql_stats_hours, 2, params, PGRES_TUPLES_OK,
	    "stats: hours")) == NULL)
		goto out;
	st->nhours = (size_t)PQntuples(res);
	st->hours = xcalloc(st->nhours, sizeof(*st->hours));
	for (size_t i = 0; i < st->nhours; i++) {
		strlcpy_s(st->hours[i].hour, PQgetvalue(res, (int)i, 0),
		    sizeof(st->hours[i].hour));
		st->hours[i].documents = atoll(PQgetvalue(res, (int)i, 1));
	}
	PQclear(res);

	if ((res = query(la, sql_stats_errors, 2, params, PGRES_TUPLES_OK,
	    "stats: errors")) == NULL)
		goto out;
	for (int r = 0; r < PQntuples(res) && r < LEDGER_TOP_ERRORS; r++) {
		st->errors[r].error = xstrdup(PQgetvalue(res, r, 0));
		st->errors[r].documents = atoll(PQgetvalue(res, r, 1));
		st->nerrors++;
	}
	PQclear(res);
	ret = 0;
out:
	/* Read only: ending it either way is the same. */
	command(la, ret == 0 ? "COMMIT" : "ROLLBACK", "stats: end");
	return ret;
}

void
ledger_stats_free(struct ledger_stats *st)
{
	free(st->hours);
	st->hours = NULL;
	st->nhours = 0;
	for (size_t i = 0; i < st->nerrors; i++)
		free(st->errors[i].error);
	st->nerrors = 0;
}

/* ---- reset --------------------------------------------------------------- */

int
ledger_admin_reset(struct ledger_admin *la, struct ledger_reset *docs,
    size_t n, bool force, bool dry_run)
{
	const char **ids, *params[4];
	char *arr;
	PGresult *res;
	int done = 0;

	if (n == 0)
		return 0;
	ids = xcalloc(n, sizeof(*ids));
	for (size_t i = 0; i < n; i++)
		ids[i] = docs[i].document_id;
	arr = text_array(ids, n);
	free(ids);
	params[0] = la->group;
	params[1] = arr;
	params[2] = force ? "true" : "false";
	params[3] = dry_run ? "true" : "false";
	res = query(la, sql_reset, 4, params, PGRES_TUPLES_OK, "reset");
	free(arr);
	if (res == NULL)
		return -1;
	if ((size_t)PQntuples(res) != n) {
		log_warnx("ledger: reset returned %d rows for %zu documents",
		    PQntuples(res), n);
		PQclear(res);
		return -1;
	}
	/* In the order given (WITH ORDINALITY). */
	for (size_t i = 0; i < n; i++) {
		struct ledger_reset *d = &docs[i];
		const char *what = PQgetvalue(res, (int)i, 1);

		if (strcmp(what, "reset") == 0) {
			d->result = LEDGER_RESET_DONE;
			done++;
		} else if (strcmp(what, "refused") == 0)
			d->result = LEDGER_RESET_REFUSED;
		else
			d->result = LEDGER_RESET_NOT_FOUND;
		strlcpy_s(d->status, PQgetvalue(res, (int)i, 2),
		    sizeof(d->status));
		strlcpy_s(d->claimed_by, PQgetvalue(res, (int)i, 3),
		    sizeof(d->claimed_by));
		d->lease_left_s = atoll(PQgetvalue(res, (int)i, 4));
	}
	PQclear(res);
	return done;
}

/* ---- purge --------------------------------------------------------------- */

/*
 * Runs a walking batch statement (sql_purge_*) until a batch looks at
 * fewer rows than its limit: params[after] is first, then the last key
 * the batch before saw.
 */
static int
walk(struct ledger_admin *la, const char *sql, const char **params,
    int after, const char *first, long limit, long long *count,
    const char *what)
{
	PGresult *res;
	char *last = NULL;
	long long seen, n;
	int ret = -1;

	do {
		params[after] = last != NULL ? last : first;
		if ((res = query(la, sql, 5, params, PGRES_TUPLES_OK,
		    what)) == NULL)
			goto out;
		seen = atoll(PQgetvalue(res, 0, 0));
		n = atoll(PQgetvalue(res, 0, 2));
		*count += n;
		if (seen > 0) {
			free(last);
			last = xstrdup(PQgetvalue(res, 0, 1));
		}
		PQclear(res);
		log_debug("ledger: %s: %lld deleted of %lld rows looked at",
		    what, n, seen);
	} while (seen >= limit);
	ret = 0;
out:
	free(last);
	return ret;
}

static long long
count_of(struct ledger_admin *la, const char *sql, int nparams,
    const char *const *params, const char *what)
{
	PGresult *res;
	long long n;

	if ((res = query(la, sql, nparams, params, PGRES_TUPLES_OK,
	    what)) == NULL)
		return -1;
	n = atoll(PQgetvalue(res, 0, 0));
	PQclear(res);
	return n;
}

/* The documents, then the deliveries they leave unreferenced. */
static int
purge_run(struct ledger_admin *la, struct ledger_purge *p,
    const char *statuses, const char *cutoff, const char *limit)
{
	const char *params[5];
	char maxid[32];
	long long m;

	params[0] = la->group;
	params[1] = statuses;
	params[2] = cutoff;
	params[3] = limit;
	if (walk(la, sql_purge_documents, params, 4, NULL, p->batch,
	    &p->documents, "purge: documents") == -1)
		return -1;

	params[1] = cutoff;
	if ((m = count_of(la, sql_purge_last_delivery, 2, params,
	    "purge: deliveries")) == -1)
		return -1;
	if (m == 0)
		return 0;
	snprintf(maxid, sizeof(maxid), "%lld", m);
	params[2] = limit;
	params[4] = maxid;
	/* delivery_id is a bigserial: every id is above 0. */
	return walk(la, sql_purge_deliveries, params, 3, "0", p->batch,
	    &p->deliveries, "purge: deliveries");
}

int
ledger_admin_purge(struct ledger_admin *la, struct ledger_purge *p)
{
	const char *params[3];
	char days[64], limit[32], cutoff[40], *statuses;
	PGresult *res;
	long long n;
	int ret = -1;

	p->documents = p->deliveries = 0;
	p->cutoff[0] = '\0';
	if (p->batch < 1)
		p->batch = 1;
	snprintf(days, sizeof(days), "%.17g", p->days);
	snprintf(limit, sizeof(limit), "%ld", p->batch);

	/* A dry run counts both in one snapshot. */
	if (p->dry_run && command(la, "BEGIN ISOLATION LEVEL REPEATABLE READ "
	    "READ ONLY", "purge") == -1)
		return -1;
	params[0] = days;
	if ((res = query(la, sql_purge_cutoff, 1, params, PGRES_TUPLES_OK,
	    "purge")) == NULL)
		goto end;
	strlcpy_s(cutoff, PQgetvalue(res, 0, 0), sizeof(cutoff));
	strlcpy_s(p->cutoff, PQgetvalue(res, 0, 1), sizeof(p->cutoff));
	PQclear(res);

	statuses = text_array(p->statuses, p->nstatuses);
	if (!p->dry_run)
		ret = purge_run(la, p, statuses, cutoff, limit);
	else {
		params[0] = la->group;
		params[1] = statuses;
		params[2] = cutoff;
		if ((n = count_of(la, sql_count_documents, 3, params,
		    "purge: documents")) >= 0) {
			p->documents = n;
			if ((n = count_of(la, sql_count_deliveries, 3, params,
			    "purge: deliveries")) >= 0) {
				p->deliveries = n;
				ret = 0;
			}
		}
	}
	free(statuses);
end:
	if (p->dry_run)
		command(la, "ROLLBACK", "purge: end");
	return ret;
}
