/*
 * docquery.h: the documents query of a batch route (DESIGN.md §4): a
 * parameterised SQL query, run against a PostgreSQL database (Stage 1's
 * processed_articles, say), whose rows become the batch's documents under
 * the rules of a documents file (docfile.h). This module talks to that
 * database and nothing else; the ledger keeps its own connection.
 *
 * The query runs read-only, in a transaction of its own with a
 * statement_timeout, so it holds nothing between events and works
 * through pgbouncer in transaction pooling.
 */
#ifndef STAGERELAY_DOCQUERY_H
#define STAGERELAY_DOCQUERY_H

#include <stddef.h>

#include "docfile.h"

enum {
	DOCQUERY_REFUSED = DOCFILE_REFUSED,	/* never succeeds as it is */
	DOCQUERY_UNAVAILABLE = DOCFILE_UNAVAILABLE /* may pass: connection,
						   timeout, no table yet */
};

/* The connections of one worker process, one per DSN, opened lazily. */
struct docquery;

/* Never NULL. Opens nothing: connections are made on first use. */
struct docquery	*docquery_new(void);
/* Closes every connection. NULL is fine. */
void		 docquery_free(struct docquery *);

/*
 * Runs sql with the n text values (NULL for SQL NULL) as $1..$n against
 * dsn (a libpq conninfo or URI; "" is libpq's environment), reconnecting
 * first when its connection was lost, and fills out as docfile_read()
 * does: each row an object of column name -> value, with a non-empty
 * string document_id column. timeout_ms is the statement_timeout.
 * Returns 0, or DOCQUERY_REFUSED or DOCQUERY_UNAVAILABLE with err set
 * (never holding the DSN's password). out is released with
 * docfile_free().
 */
int	docquery_run(struct docquery *, const char *dsn, const char *sql,
	    const char *const *values, size_t n, int timeout_ms,
	    const struct docfile_limits *lim, struct docfile *out, char *err,
	    size_t errlen);

/*
 * What an SQLSTATE means for a query: DOCQUERY_UNAVAILABLE for states
 * that pass (connection 08, resources 53, operator intervention 57,
 * including a statement_timeout, transaction rollback 40, system 58,
 * internal XX, and 42P01 undefined_table and 42501
 * insufficient_privilege, which a deploy may fix), DOCQUERY_REFUSED for
 * the rest (syntax, undefined column, bad parameter values, a write in
 * the read-only transaction).
 */
int	docquery_sqlstate_class(const char *sqlstate);

#endif
