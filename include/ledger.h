/*
 * ledger.h: the PostgreSQL ledger (DESIGN.md §5). One row per
 * (consumer_group, document_id) in processed_documents, one row per HTTP
 * request in deliveries. Every batch costs one round trip to claim and one
 * to record. Only parameterised statements; no session state between
 * transactions (works through pgbouncer in transaction pooling).
 */
#ifndef STAGERELAY_LEDGER_H
#define STAGERELAY_LEDGER_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The longest document key, in bytes. The ledger's unique index holds the
 * key, and a B-tree entry must fit a third of a page (about 2700 bytes);
 * batch chunk keys add "#k/n". Longer keys are refused before the ledger
 * is asked.
 */
#define LEDGER_KEY_MAX	1024

struct ledger;

/* What a claim says about a document key. */
enum ledger_claim {
	LEDGER_OWNED = 0,	/* new, failed earlier, or its lease expired: ours */
	LEDGER_DONE,		/* already triggered in the dedup window */
	LEDGER_BUSY,		/* live claim by another consumer */
	LEDGER_WAIT		/* failed earlier; its retry is not due yet */
};

/* Final statuses a worker writes. */
enum ledger_status {
	LEDGER_TRIGGERED = 0,
	LEDGER_FAILED,		/* transient failure; claim released */
	LEDGER_DEAD,		/* gave up; dead-lettered */
	LEDGER_OBSERVED,	/* auto_process: false */
	LEDGER_EXPIRED		/* too old for the backlog */
};

/* One document of a batch; strings are borrowed and may be NULL. */
struct ledger_doc {
	const char	*document_id;	/* the idempotency key */
	const char	*event_id;
	const char	*event_type;
	const char	*event_source;
	const char	*event_time;	/* RFC 3339 */
	const char	*entry_id;	/* stream entry id */
	const char	*batch_id;
	const char	*job_id;

	/* Filled by ledger_claim(). */
	enum ledger_claim claim;
	int		 attempts;	/* requests made before this one */
	int		 retries;	/* transient failures counted so far */
	long long	 wait_ms;	/* BUSY: lease left; WAIT: until due */
	bool		 same_entry;	/* the row names this stream entry */
	char		 prev_status[12];

	/* Set by the caller before ledger_record(). */
	enum ledger_status status;
	const char	*route;
	const char	*method;
	const char	*url;
	long		 http_status;	/* 0 = no response */
	double		 latency_ms;
	const char	*remote_job_id;
	const char	*error;
	bool		 requested;	/* a delivery row is written */
	const char	*outcome;	/* of the request: success, transient, permanent */
	const char	*delivery_key;	/* a batch's documents: the request's
					   key (one deliveries row for all);
					   NULL: document_id */
	bool		 count_retry;	/* FAILED: counts against max_retries */
	long long	 retry_in_ms;	/* FAILED: next attempt due; -1 none */
};

/*
 * Connects (lazily reconnecting later). schema must be a plain identifier.
 * Never NULL.
 */
struct ledger	*ledger_new(const char *dsn, const char *schema,
		    const char *group, const char *consumer, const char *stream);
void		 ledger_free(struct ledger *);
int		 ledger_connect(struct ledger *);
bool		 ledger_connected(const struct ledger *);

/*
 * Creates or upgrades the schema under a transaction-scoped advisory lock,
 * so concurrent starts apply each migration once. Returns the schema
 * version, or -1.
 */
int	ledger_migrate(struct ledger *);

/*
 * Claims docs[0..n) in one round trip; fills claim, attempts, prev_status.
 * Keys must be unique within the call. lease_s: how long our claim holds;
 * ttl_hours: dedup window (0 = forever); check_done false re-owns
 * documents already triggered. Returns 0, -1 (the ledger is unreachable
 * or failed: try again later), or LEDGER_REFUSED when PostgreSQL refuses
 * the documents themselves (a data exception or a program limit, such
 * as a key too long for the index): asking again changes nothing, and
 * ledger_refusal() says why.
 */
#define LEDGER_REFUSED	(-2)
int	ledger_claim(struct ledger *, struct ledger_doc *docs, size_t n,
	    int lease_s, double ttl_hours, bool check_done);
const char *ledger_refusal(const struct ledger *);

/*
 * Records the outcome of docs[0..n) (status, and a deliveries row where
 * requested) in one transaction and one round trip. Only rows we still
 * hold the claim on are updated. Returns 0 or -1.
 */
int	ledger_record(struct ledger *, struct ledger_doc *docs, size_t n);

/*
 * Records documents seen but not triggered (observed, expired) without
 * overwriting an existing row. Returns 0 or -1.
 */
int	ledger_note(struct ledger *, struct ledger_doc *docs, size_t n);

/*
 * Marks poison entries' documents dead with docs[i].error as the reason,
 * inserting rows that do not exist; a triggered row is left alone.
 * Returns 0 or -1.
 */
int	ledger_bury(struct ledger *, struct ledger_doc *docs, size_t n);

/* How many of our group's documents have a status (ledger_counts). */
struct ledger_count {
	char		 status[12];
	long long	 documents;
};

/*
 * Counts our consumer group's documents by status among those whose row
 * changed (updated_at) in the last minutes. *out is allocated, one element
 * per status present (free() it; NULL on error). where, if not NULL,
 * receives "host:port/dbname" from the DSN and libpq's defaults, never a
 * user or password. Returns the number of statuses, or -1.
 */
int	ledger_counts(struct ledger *, int minutes, struct ledger_count **out,
	    char *where, size_t wherelen);

/*
 * What ledger_claim() would say of docs[0..n) (claim, prev_status), with
 * nothing written: process-backlog --dry-run. A live claim counts as busy
 * whoever holds it. Returns 0 or -1.
 */
int	ledger_peek(struct ledger *, struct ledger_doc *docs, size_t n,
	    double ttl_hours, bool check_done);

/* Where process-backlog got to on a stream (backlog_progress). */
struct ledger_progress {
	char		 start_id[48];
	char		 end_id[48];
	char		 last_id[48];	/* "": nothing finished yet */
	long long	 done;		/* entries finished */
	bool		 finished;
	char		 owner[128];	/* host:pid of the run saving it */
	long long	 age_s;		/* get: seconds since it was saved */
};

/* 1 found, 0 no run recorded, -1 error. */
int	ledger_progress_get(struct ledger *, const char *stream,
	    struct ledger_progress *);
/* Saves it (a new run when last_id is ""). Returns 0 or -1. */
int	ledger_progress_put(struct ledger *, const char *stream,
	    const struct ledger_progress *);

const char *ledger_status_name(enum ledger_status);
const char *ledger_schema(const struct ledger *);

#endif
