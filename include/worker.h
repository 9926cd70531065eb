/*
 * worker.h: one consumer of the group, running the protocol of DESIGN.md §3
 * until told to stop.
 */
#ifndef STAGERELAY_WORKER_H
#define STAGERELAY_WORKER_H

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>

#include "config.h"
#include "metrics.h"
#include "stream.h"
#include "ledger.h"

/* Exit codes (sysexits.h where one fits). */
#define EXIT_PENDING	75	/* EX_TEMPFAIL: --drain left entries pending */

/* A slot's shared state, mapped by the master before fork. */
struct worker_shm {
	volatile long long	 heartbeat_ms;	/* CLOCK_MONOTONIC, set each round */
	volatile int		 connected;	/* 1 once Redis and the ledger are up */
	volatile int		 workers;	/* slot 0 only: workers wanted */
};

/* Exit code of a worker whose first connection failed: a crash. */
#define EXIT_CONNECT	1

struct worker_opts {
	int			 slot;		/* 1-based; consumer <name>-<slot> */
	bool			 drain;		/* exit once nothing is left to read */
	volatile sig_atomic_t	*stop;		/* set by SIGTERM/SIGINT */
	volatile sig_atomic_t	*reopen;	/* set by SIGUSR1: reopen the log */
	struct worker_shm	*shm;		/* NULL when unsupervised */
	volatile int		*workers;	/* workers wanted, or NULL */
	struct metrics_shm	*metrics;	/* NULL when unsupervised */
	int			 master_fd;	/* read end of the master's pipe, or -1 */
	struct metrics_slot	*tally;		/* unsupervised: count here */
};

/* Runs until *stop or, with drain, until drained. Returns an exit code. */
int	worker_run(const struct config *, const struct worker_opts *);

/* The consumer name of a slot: "<consumer_name>-<slot>". Caller frees. */
char	*worker_consumer_name(const struct config *, int slot);

/*
 * process-backlog: the round over entries read with XRANGE. Nothing is
 * acknowledged, reclaimed or touched in the group; entries whose id is
 * older than expire_before_ms (wall clock; 0: none) are recorded expired.
 * The consumer is "<consumer_name>-backlog". Outcomes are counted in
 * opts->tally. worker_backlog_close() frees it.
 */
struct worker	*worker_backlog_open(const struct config *,
		    const struct worker_opts *, long long expire_before_ms,
		    bool dry_run);
int		 worker_backlog_connect(struct worker *);	/* 0 or -1 */
/* One round; a dry run prints what it would do to out. */
void		 worker_backlog_round(struct worker *,
		    const struct stream_entry *, size_t n, FILE *out);
/* Runs held retries until none is left or *stop; returns how many are. */
size_t		 worker_backlog_settle(struct worker *);
/* Entries refused again that the dead-letter stream already holds. */
size_t		 worker_backlog_dead_again(const struct worker *);
struct stream	*worker_backlog_stream(struct worker *);
struct ledger	*worker_backlog_ledger(struct worker *);
void		 worker_backlog_close(struct worker *);

#endif
