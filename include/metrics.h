/*
 * metrics.h: counters the workers keep in shared memory and the master
 * renders in the Prometheus text exposition format 0.0.4 (DESIGN.md §7).
 *
 * The master maps one struct metrics_shm before it forks; each worker
 * writes only its own slot (no locks: one writer per slot, aligned 64-bit
 * words), so a respawned worker goes on counting where its predecessor
 * stopped. Label values that vary (event types, routes, HTTP codes) live in
 * fixed tables; what does not fit is counted under "other".
 */
#ifndef STAGERELAY_METRICS_H
#define STAGERELAY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define METRICS_SLOTS		257	/* slot 0 is the master's; 1..256 */
#define METRICS_TYPES		32	/* event types; index 0 is "other" */
#define METRICS_ROUTES		16	/* routes; index 0 is "other" */
#define METRICS_CODES		16	/* HTTP codes per route; code 0: none */
#define METRICS_NAME_MAX	128	/* longest type or route name kept */

/* Event outcomes, label outcome="..." of stagerelay_events_total. */
enum metrics_outcome {
	MO_TRIGGERED = 0,
	MO_DUPLICATE,
	MO_FILTERED,
	MO_INVALID,
	MO_DEAD,
	MO_OBSERVED,
	MO_EXPIRED,
	MO_LOST,
	MO_COUNT
};

/* Dead-letter reasons, label reason="..." of stagerelay_dead_letters_total. */
enum metrics_reason {
	MR_INVALID_EVENT = 0,	/* every invalid_* and too_large */
	MR_RENDER_ERROR,
	MR_HTTP_ERROR,
	MR_REJECTED,
	MR_RETRIES_EXHAUSTED,
	MR_POISON,
	MR_LOST,
	MR_DOCUMENTS_FILE,	/* a batch route's file refused or unreadable */
	MR_DOCUMENTS_QUERY,	/* a batch route's query refused or failing */
	MR_LEDGER_REFUSED,	/* PostgreSQL refused a document's values */
	MR_OTHER,
	MR_COUNT
};

/* Histogram buckets, upper bounds in seconds; +Inf is implied. */
#define METRICS_BUCKETS	14
extern const double metrics_bucket_bounds[METRICS_BUCKETS];

struct metrics_histogram {
	uint64_t	 bucket[METRICS_BUCKETS + 1];	/* not cumulative; last: +Inf */
	uint64_t	 count;
	double		 sum;				/* seconds */
};

struct metrics_code {
	int		 code;		/* 0: no response; -1: other codes */
	uint64_t	 n;
};

/* What one worker slot counts. */
struct metrics_slot {
	uint64_t		 events[MO_COUNT][METRICS_TYPES];
	struct metrics_code	 requests[METRICS_ROUTES][METRICS_CODES];
	struct metrics_histogram trigger_seconds;	/* request duration */
	struct metrics_histogram latency_seconds;	/* entry time -> trigger */
	uint64_t		 dead_letters[MR_COUNT];
	uint64_t		 retries;		/* transient failures held */
	uint64_t		 reclaimed;		/* entries taken by XAUTOCLAIM */
	uint64_t		 redis_reconnects;
	uint64_t		 postgres_reconnects;
	int64_t			 last_event_ms;		/* wall clock; 0: none yet */
	int32_t			 circuit;		/* 0 closed, 1 open, 2 half-open */
	int32_t			 alive;			/* set by the master */
	int32_t			 redis_up;		/* the worker's view, now */
	int32_t			 postgres_up;
};

/* Consumer-group figures, polled by worker slot 1 (XINFO GROUPS, XLEN). */
struct metrics_group {
	int64_t		 lag;		/* -1: unknown */
	int64_t		 pending;
	int64_t		 stream_length;
	int64_t		 dead_letter_length;
	int64_t		 polled_ms;	/* wall clock of the last poll; 0: never */
	int32_t		 redis_ok;	/* the last poll reached Redis */
	int32_t		 group_ok;	/* ... and the group exists */
};

/* HTTP statuses the ingress answers, label code="..." (last: any other). */
#define METRICS_INGRESS_CODES	10
extern const int metrics_ingress_codes[METRICS_INGRESS_CODES];

/* What the ingress process counts (it alone writes here). */
struct metrics_ingress {
	uint64_t	 requests[METRICS_INGRESS_CODES];
	uint64_t	 events;	/* events appended to the stream */
	int32_t		 enabled;	/* set by the master */
	int32_t		 redis_up;	/* the last append reached Redis */
};

/* Counts one answered ingress request and the events it appended. */
void	metrics_ingress_request(struct metrics_ingress *, int status,
	    size_t events);

/* The whole shared region. */
struct metrics_shm {
	/* Label tables, written by the master before any fork. */
	char			 types[METRICS_TYPES][METRICS_NAME_MAX];
	size_t			 ntypes;		/* including "other" */
	char			 routes[METRICS_ROUTES][METRICS_NAME_MAX];
	size_t			 nroutes;		/* including "other" */

	struct metrics_group	 group;
	struct metrics_ingress	 ingress;
	uint64_t		 worker_restarts;	/* master */
	int32_t			 workers_wanted;	/* master */
	struct metrics_slot	 slot[METRICS_SLOTS];
};

/* Index of a label value; 0 ("other") when not in the table. */
size_t	metrics_type_index(const struct metrics_shm *, const char *type);
size_t	metrics_route_index(const struct metrics_shm *, const char *route);

/* Adds a label value to a table (master, before fork); returns its index. */
size_t	metrics_add_type(struct metrics_shm *, const char *type);
size_t	metrics_add_route(struct metrics_shm *, const char *route);

/* Counting, in a worker's own slot. */
void	metrics_event(struct metrics_slot *, enum metrics_outcome, size_t type);
void	metrics_request(struct metrics_slot *, size_t route, long http_status);
void	metrics_observe(struct metrics_histogram *, double seconds);
void	metrics_dead_letter(struct metrics_slot *, const char *dlq_reason);

/* The reason label for a dlq_reason as written to the dead-letter stream. */
enum metrics_reason metrics_reason_of(const char *dlq_reason);
const char	*metrics_reason_name(enum metrics_reason);
const char	*metrics_outcome_name(enum metrics_outcome);

/*
 * Appends the whole exposition (HELP and TYPE for every family, slots
 * 1..nslots summed unless the family is per worker) to b. version goes
 * into stagerelay_build_info.
 */
void	metrics_render(const struct metrics_shm *, int nslots,
	    const char *version, struct buf *b);

/* Appends s to b escaped as a Prometheus label value (\\, \", \n). */
void	metrics_label_escape(struct buf *b, const char *s);

#endif
