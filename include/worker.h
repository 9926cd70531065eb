/*
 * worker.h: one consumer of the group, running the protocol of DESIGN.md §3
 * until told to stop.
 */
#ifndef STAGERELAY_WORKER_H
#define STAGERELAY_WORKER_H

#include <signal.h>
#include <stdbool.h>

#include "config.h"
#include "metrics.h"

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
};

/* Runs until *stop or, with drain, until drained. Returns an exit code. */
int	worker_run(const struct config *, const struct worker_opts *);

/* The consumer name of a slot: "<consumer_name>-<slot>". Caller frees. */
char	*worker_consumer_name(const struct config *, int slot);

#endif
