/*
 * ledger_admin.h: the ledger's administrative statements: show, stats,
 * reset, purge (`stagerelay ledger ...`, for operators and DBAs).
 *
 * A connection of its own, opened from the config's DSN, never shared
 * with a worker. Every statement is parameterised, names the schema
 * explicitly and is scoped to one consumer group; each is its own
 * transaction (stats excepted: one read-only snapshot), so all of them
 * work through pgbouncer in transaction pooling.
 */
#ifndef STAGERELAY_LEDGER_ADMIN_H
#define STAGERELAY_LEDGER_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

struct ledger_admin;

/*
 * Connects to dsn. schema must be a plain identifier (the config admits
 * no other). Returns NULL after logging why; the message names
 * host:port/dbname, never a user or a password.
 */
struct ledger_admin *ledger_admin_open(const char *dsn, const char *schema,
		    const char *group);
void		 ledger_admin_close(struct ledger_admin *);

/* "host:port/dbname" of the connection: no user, no password. */
const char	*ledger_admin_where(const struct ledger_admin *);

/*
 * One document of the group and the requests made for it: the deliveries
 * whose idempotency_key is the document id, or that are its
 * last_delivery_id (a batch request carrying it), oldest first.
 * On success *out is {"document": {column: value, ...}, "deliveries":
 * [{column: value, ...}, ...]} with every column of both tables, numbers
 * as numbers, timestamps as ISO 8601 strings, NULL as null; the caller
 * owns it (cJSON_Delete()). Returns 1 found, 0 not found (*out NULL),
 * -1 on error (logged).
 */
int	ledger_admin_show(struct ledger_admin *, const char *document_id,
	    cJSON **out);

/* The statuses of processed_documents, in the order they are shown. */
#define LEDGER_NSTATUSES	6
extern const char *const ledger_admin_statuses[LEDGER_NSTATUSES];

struct ledger_hour {
	char		 hour[24];	/* "2026-01-05T16:00:00Z" (UTC) */
	long long	 documents;
};

struct ledger_error_count {
	char		*error;		/* owned by the stats */
	long long	 documents;
};

#define LEDGER_TOP_ERRORS	5

struct ledger_stats {
	double		 since_hours;	/* 0: all time */
	char		 from[24];	/* window start (UTC); "": all */
	char		 to[24];	/* the snapshot's now(), UTC */

	/* Documents of the group whose row changed in the window. */
	/* In the order of ledger_admin_statuses. */
	long long	 status[LEDGER_NSTATUSES];
	long long	 documents;

	/* Deliveries (requests) of the group made in the window. */
	long long	 requests;
	long long	 success, transient, permanent;
	double		 p50_ms, p95_ms, p99_ms; /* NAN: no requests */

	/*
	 * Documents whose triggered_at falls in each hour of the window,
	 * oldest first; with since_hours 0 only hours that have some.
	 */
	struct ledger_hour	*hours;
	size_t			 nhours;

	/* The commonest last_error among failed and dead documents. */
	struct ledger_error_count errors[LEDGER_TOP_ERRORS];
	size_t			 nerrors;
};

/*
 * Fills st over the last since_hours (0: all time), every figure from one
 * read-only snapshot. Release with ledger_stats_free() whatever the
 * result. Returns 0 or -1 (logged).
 */
int	ledger_admin_stats(struct ledger_admin *, double since_hours,
	    struct ledger_stats *st);
void	ledger_stats_free(struct ledger_stats *);

/* What resetting one document did, or would do. */
enum ledger_reset_result {
	LEDGER_RESET_DONE = 0,	/* row deleted: the next event triggers */
	LEDGER_RESET_NOT_FOUND,	/* no row in the group */
	LEDGER_RESET_REFUSED	/* claimed with a live lease, no force */
};

struct ledger_reset {
	const char	*document_id;	/* in; borrowed */

	enum ledger_reset_result result; /* out */
	char		 status[12];	/* the row's, "" if none */
	char		 claimed_by[128]; /* "" if none */
	long long	 lease_left_s;	/* REFUSED: lease left, s */
};

/*
 * Makes docs[0..n) eligible for triggering again by deleting their
 * processed_documents rows; their deliveries stay. A row claimed under a
 * live lease is left alone unless force. dry_run changes nothing and
 * reports what would happen. Ids must be unique. One statement. Returns
 * the number reset (or that would be), or -1 (logged).
 */
int	ledger_admin_reset(struct ledger_admin *, struct ledger_reset *docs,
	    size_t n, bool force, bool dry_run);

struct ledger_purge {
	double		  days;		/* in: older than this */
	const char *const *statuses;	/* in: statuses to delete */
	size_t		  nstatuses;
	bool		  dry_run;	/* in: count, delete nothing */
	long		  batch;	/* in: rows looked at per statement */

	char		  cutoff[24];	/* out: now() - days, UTC */
	long long	  documents;	/* out: deleted, or would be */
	long long	  deliveries;	/* out: deleted, or would be */
};

/*
 * Deletes the group's documents with one of p->statuses whose updated_at
 * is before the cutoff (never a claim whose lease is live), then the
 * group's deliveries requested before the cutoff that no document
 * references any longer. Each table is walked once in key order, p->batch
 * rows per statement, each statement its own transaction. With dry_run,
 * counts the same rows in one snapshot and deletes nothing. Returns 0 or
 * -1 (logged; the batches done stay done and are counted).
 */
int	ledger_admin_purge(struct ledger_admin *, struct ledger_purge *p);

#endif
