/*
 * docquery.c: a batch route's documents query, run against PostgreSQL.
 *
 * Each DSN gets one connection per worker process, opened on first use
 * (never before a fork) and dropped when it breaks, so the next event
 * reconnects. A query runs in BEGIN READ ONLY with SET LOCAL
 * statement_timeout and is rolled back: it can change nothing and leaves
 * no session state behind. Rows become documents through docfile_add(),
 * under the rules a documents file's lines obey.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <libpq-fe.h>

#include "cloudevent.h"
#include "docquery.h"
#include "log.h"
#include "util.h"

/* Type OIDs from PostgreSQL's pg_type.dat: fixed since 7.x. */
#define OID_BOOL	16
#define OID_INT8	20
#define OID_INT2	21
#define OID_INT4	23
#define OID_JSON	114
#define OID_FLOAT4	700
#define OID_FLOAT8	701
#define OID_NUMERIC	1700
#define OID_JSONB	3802

/* Beyond 2^53 a double no longer holds every integer. */
#define EXACT_INT_MAX	9007199254740992.0

struct conn {
	char		*dsn;
	PGconn		*pg;
};

struct docquery {
	struct conn	*conns;
	size_t		 nconns;
};

struct docquery *
docquery_new(void)
{
	return xcalloc(1, sizeof(struct docquery));
}

void
docquery_free(struct docquery *q)
{
	if (q == NULL)
		return;
	for (size_t i = 0; i < q->nconns; i++) {
		if (q->conns[i].pg != NULL)
			PQfinish(q->conns[i].pg);
		/* The DSN may hold a password. */
		explicit_bzero(q->conns[i].dsn, strlen(q->conns[i].dsn));
		free(q->conns[i].dsn);
	}
	free(q->conns);
	free(q);
}

/* libpq's messages end in a newline and may span lines: one line out. */
static void
one_line(char *dst, size_t len, const char *m)
{
	size_t n;

	strlcpy_s(dst, m != NULL && *m != '\0' ? m : "unknown error", len);
	n = strlen(dst);
	while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
		dst[--n] = '\0';
	for (char *c = dst; *c != '\0'; c++)
		if (*c == '\n' || *c == '\t')
			*c = ' ';
}

static void
conn_drop(struct conn *c)
{
	if (c->pg != NULL)
		PQfinish(c->pg);
	c->pg = NULL;
}

static struct conn *
conn_find(struct docquery *q, const char *dsn)
{
	for (size_t i = 0; i < q->nconns; i++)
		if (strcmp(q->conns[i].dsn, dsn) == 0)
			return &q->conns[i];
	q->conns = xreallocarray(q->conns, q->nconns + 1, sizeof(*q->conns));
	q->conns[q->nconns].dsn = xstrdup(dsn);
	q->conns[q->nconns].pg = NULL;
	return &q->conns[q->nconns++];
}

/* Server notices go to the debug log, as the ledger's do. */
static void
on_notice(void *arg, const char *message)
{
	char line[512];

	(void)arg;
	one_line(line, sizeof(line), message);
	log_debug("docquery: server: %s", line);
}

/*
 * The DSN is expanded first, so what follows it wins: the encoding is
 * always UTF-8 (documents go on as JSON); connect_timeout comes before
 * it and is only a default, as is the application name.
 */
static int
conn_open(struct conn *c, char *err, size_t errlen)
{
	static const char *const keys[] = {
		"connect_timeout", "dbname", "client_encoding",
		"fallback_application_name", NULL
	};
	const char *values[] = {
		"10", c->dsn, "UTF8", "stagerelay-docquery", NULL
	};
	char msg[400];

	if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_OK)
		return 0;
	conn_drop(c);
	c->pg = PQconnectdbParams(keys, values, 1);
	if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK) {
		/* libpq's message never holds the password. */
		one_line(msg, sizeof(msg), c->pg != NULL ?
		    PQerrorMessage(c->pg) : "out of memory");
		snprintf(err, errlen, "documents_query: cannot connect: %s",
		    msg);
		conn_drop(c);
		return -1;
	}
	PQsetNoticeProcessor(c->pg, on_notice, NULL);
	log_debug("docquery: connected to %s:%s", PQhost(c->pg),
	    PQport(c->pg));
	return 0;
}

int
docquery_sqlstate_class(const char *st)
{
	static const char *const passing_classes[] = {
		"08", "40", "53", "57", "58", "XX", NULL
	};

	if (st == NULL || strlen(st) != 5)
		return DOCQUERY_UNAVAILABLE;	/* no answer to judge */
	if (strcmp(st, "42P01") == 0 || strcmp(st, "42501") == 0)
		return DOCQUERY_UNAVAILABLE;
	for (size_t i = 0; passing_classes[i] != NULL; i++)
		if (strncmp(st, passing_classes[i], 2) == 0)
			return DOCQUERY_UNAVAILABLE;
	return DOCQUERY_REFUSED;
}

/*
 * Why a statement failed, and whether that may pass. A connection that
 * broke is dropped here, so the next event reconnects.
 */
static int
failed(struct conn *c, const PGresult *res, const char *what, char *err,
    size_t errlen)
{
	const char *st = res != NULL ?
	    PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *m = res != NULL ?
	    PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	char msg[400];
	int rc;

	one_line(msg, sizeof(msg), m != NULL ? m : PQerrorMessage(c->pg));
	if (PQstatus(c->pg) != CONNECTION_OK) {
		snprintf(err, errlen, "documents_query: %s: connection lost: "
		    "%s", what, msg);
		conn_drop(c);
		return DOCQUERY_UNAVAILABLE;
	}
	rc = docquery_sqlstate_class(st);
	snprintf(err, errlen, "documents_query: %s: %s (SQLSTATE %s)", what,
	    msg, st != NULL ? st : "none");
	return rc;
}

static int
exec_command(struct conn *c, const char *sql, const char *what, char *err,
    size_t errlen)
{
	PGresult *res = PQexec(c->pg, sql);
	int rc = 0;

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = failed(c, res, what, err, errlen);
	PQclear(res);
	return rc;
}

/*
 * Whether a numeric text reads back from a double unchanged: an integer
 * up to 2^53, or at most 15 significant digits (DBL_DIG) otherwise.
 */
static bool
exact_double(const char *s, double d)
{
	size_t digits = 0, zeros = 0;
	bool integral = strpbrk(s, ".eE") == NULL, lead = true;

	if (!isfinite(d))
		return false;
	if (integral)
		return fabs(d) <= EXACT_INT_MAX;
	for (const char *p = s; *p != '\0' && *p != 'e' && *p != 'E'; p++) {
		if (!isdigit((unsigned char)*p))
			continue;
		if (lead && *p == '0')
			continue;
		lead = false;
		/* Trailing zeros (a numeric's scale) cost no precision. */
		if (*p == '0')
			zeros++;
		else {
			digits += zeros + 1;
			zeros = 0;
		}
	}
	return digits <= 15;
}

/* Whether s is a number as JSON writes one (RFC 8259 section 6). */
static bool
json_number(const char *s)
{
	if (*s == '-')
		s++;
	if (*s == '0')
		s++;
	else if (isdigit((unsigned char)*s))
		while (isdigit((unsigned char)*s))
			s++;
	else
		return false;
	if (*s == '.') {
		if (!isdigit((unsigned char)*++s))
			return false;
		while (isdigit((unsigned char)*s))
			s++;
	}
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!isdigit((unsigned char)*s))
			return false;
		while (isdigit((unsigned char)*s))
			s++;
	}
	return *s == '\0';
}

/* One column's value as JSON; NULL with err set. */
static cJSON *
value_of(const PGresult *res, int row, int col, const char *where,
    const struct docfile_limits *lim, char *err, size_t errlen)
{
	const char *v = PQgetvalue(res, row, col), *name = PQfname(res, col);
	size_t len = (size_t)PQgetlength(res, row, col);
	int stop = lim->max_depth > 1 ? lim->max_depth : INT_MAX;
	cJSON *j;
	char *end;
	double d;
	bool nul;

	if (PQgetisnull(res, row, col))
		return cJSON_CreateNull();
	switch (PQftype(res, col)) {
	case OID_BOOL:
		return cJSON_CreateBool(v[0] == 't');
	case OID_INT2:
	case OID_INT4:
	case OID_INT8:
	case OID_FLOAT4:
	case OID_FLOAT8:
	case OID_NUMERIC:
		errno = 0;
		d = strtod(v, &end);
		/*
		 * NaN, Infinity, and what a double would round: a string. A
		 * real or double precision was a double already. The text
		 * goes out as PostgreSQL wrote it: cJSON prints a double
		 * with 15 digits and would round the last ones.
		 */
		if (errno == 0 && *end == '\0' && end != v && isfinite(d) &&
		    json_number(v) && (PQftype(res, col) == OID_FLOAT4 ||
		    PQftype(res, col) == OID_FLOAT8 || exact_double(v, d)))
			return cJSON_CreateRaw(v);
		return cJSON_CreateString(v);
	case OID_JSON:
	case OID_JSONB:
		/* The row's object is one level more. */
		if (json_scan(v, len, stop, &nul) >= stop) {
			snprintf(err, errlen, "%s: column %s nests JSON deeper "
			    "than max_json_depth (%d)", where, name,
			    lim->max_depth);
			return NULL;
		}
		if (nul) {
			snprintf(err, errlen, "%s: column %s holds \\u0000 (a "
			    "NUL character)", where, name);
			return NULL;
		}
		if ((j = cJSON_ParseWithLength(v, len)) == NULL)
			snprintf(err, errlen, "%s: column %s: JSON that cannot "
			    "be read", where, name);
		return j;
	default:
		/* client_encoding is UTF8; checked all the same. */
		if (!cloudevent_utf8_valid(v, len)) {
			snprintf(err, errlen, "%s: column %s: not valid UTF-8",
			    where, name);
			return NULL;
		}
		return cJSON_CreateString(v);
	}
}

/* The result's shape, refused before any row is looked at. */
static int
check_columns(const PGresult *res, char *err, size_t errlen)
{
	int ncols = PQnfields(res), id = -1;

	for (int i = 0; i < ncols; i++) {
		const char *name = PQfname(res, i);

		if (strcmp(name, "document_id") == 0)
			id = i;
		for (int k = 0; k < i; k++)
			if (strcmp(PQfname(res, k), name) == 0) {
				snprintf(err, errlen, "documents_query: the "
				    "column \"%.64s\" appears twice in the "
				    "result (give one of them another name "
				    "with AS)", name);
				return -1;
			}
	}
	if (id == -1) {
		snprintf(err, errlen, "documents_query: the result has no "
		    "document_id column (select one, e.g. SELECT id AS "
		    "document_id, ...)");
		return -1;
	}
	return 0;
}

/* Every row into a document, under a documents file's rules. */
static int
documents_of(const PGresult *res, const struct docfile_limits *lim,
    struct docfile *out, char *err, size_t errlen)
{
	struct docfile_builder b;
	int nrows = PQntuples(res), ncols = PQnfields(res), rv = 0;
	size_t total = 0;
	char where[32], msg[400];

	if (check_columns(res, err, errlen) == -1)
		return -1;
	if (docfile_begin(&b, out, (size_t)nrows, lim, msg,
	    sizeof(msg)) == -1) {
		snprintf(err, errlen, "documents_query: %s", msg);
		return -1;
	}
	for (int r = 0; r < nrows && rv == 0; r++) {
		size_t bytes = 0;
		cJSON *doc;

		snprintf(where, sizeof(where), "row %d", r + 1);
		for (int c = 0; c < ncols; c++)
			bytes += (size_t)PQgetlength(res, r, c);
		total += bytes;
		if (lim->max_line != 0 && bytes > lim->max_line) {
			snprintf(err, errlen, "documents_query: %s: %zu bytes, "
			    "over the row limit (max_event_bytes %zu)", where,
			    bytes, lim->max_line);
			rv = -1;
			break;
		}
		if (lim->max_bytes != 0 && total > lim->max_bytes) {
			snprintf(err, errlen, "documents_query: the result is "
			    "over max_documents_file_bytes (%zu) at %s",
			    lim->max_bytes, where);
			rv = -1;
			break;
		}
		doc = cJSON_CreateObject();
		for (int c = 0; c < ncols && rv == 0; c++) {
			cJSON *v = value_of(res, r, c, where, lim, msg,
			    sizeof(msg));

			if (v == NULL) {
				snprintf(err, errlen, "documents_query: %s",
				    msg);
				rv = -1;
			} else
				cJSON_AddItemToObject(doc, PQfname(res, c), v);
		}
		if (rv == -1) {
			cJSON_Delete(doc);
			break;
		}
		if ((rv = docfile_add(&b, doc, where, msg,
		    sizeof(msg))) == -1)
			snprintf(err, errlen, "documents_query: %s", msg);
	}
	docfile_end(&b, rv);
	return rv;
}

int
docquery_run(struct docquery *q, const char *dsn, const char *sql,
    const char *const *values, size_t n, int timeout_ms,
    const struct docfile_limits *lim, struct docfile *out, char *err,
    size_t errlen)
{
	struct conn *c = conn_find(q, dsn != NULL ? dsn : "");
	PGresult *res;
	char set[64];
	bool reused;
	int rc;

	memset(out, 0, sizeof(*out));
	if (n > INT_MAX) {
		snprintf(err, errlen, "documents_query: too many parameters");
		return DOCQUERY_REFUSED;
	}
	reused = c->pg != NULL;
	if (conn_open(c, err, errlen) == -1)
		return DOCQUERY_UNAVAILABLE;
	/*
	 * A connection kept between events may have been closed by the
	 * server meanwhile (a restart, idle_session_timeout, pgbouncer):
	 * that costs one reconnection, not a retry delay.
	 */
	if ((rc = exec_command(c, "BEGIN READ ONLY", "begin", err,
	    errlen)) != 0 && reused && c->pg == NULL) {
		if (conn_open(c, err, errlen) == -1)
			return DOCQUERY_UNAVAILABLE;
		rc = exec_command(c, "BEGIN READ ONLY", "begin", err, errlen);
	}
	if (rc != 0)
		return rc;
	snprintf(set, sizeof(set), "SET LOCAL statement_timeout = %d",
	    timeout_ms);
	if ((rc = exec_command(c, set, "statement_timeout", err,
	    errlen)) != 0) {
		if (c->pg != NULL)
			(void)exec_command(c, "ROLLBACK", "rollback", set,
			    sizeof(set));
		return rc;
	}
	res = PQexecParams(c->pg, sql, (int)n, NULL, values, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		rc = documents_of(res, lim, out, err, errlen) == -1 ?
		    DOCQUERY_REFUSED : 0;
	else if (PQresultStatus(res) == PGRES_COMMAND_OK) {
		snprintf(err, errlen, "documents_query: the statement returns "
		    "no rows (it must be a query, e.g. SELECT)");
		rc = DOCQUERY_REFUSED;
	} else
		rc = failed(c, res, "query", err, errlen);
	PQclear(res);
	/* Read only: nothing to keep, and an aborted transaction ends too. */
	if (c->pg != NULL) {
		char ignored[256];

		if (exec_command(c, "ROLLBACK", "rollback", ignored,
		    sizeof(ignored)) != 0 && rc == 0)
			log_debug("docquery: %s", ignored);
	}
	return rc;
}
