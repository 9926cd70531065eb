/*
 * worker.h: one consumer of the group, running the protocol of DESIGN.md §3
 * until told to stop.
 */
#ifndef STAGERELAY_WORKER_H
#define STAGERELAY_WORKER_H

#include <signal.h>
#include <stdbool.h>

#include "config.h"

/* Exit codes (sysexits.h where one fits). */
#define EXIT_PENDING	75	/* EX_TEMPFAIL: --drain left entries pending */

struct worker_opts {
	int			 slot;		/* 1-based; consumer <name>-<slot> */
	bool			 drain;		/* exit once nothing is left to read */
	volatile sig_atomic_t	*stop;		/* set by SIGTERM/SIGINT */
	volatile sig_atomic_t	*reopen;	/* set by SIGUSR1: reopen the log */
};

/* Runs until *stop or, with drain, until drained. Returns an exit code. */
int	worker_run(const struct config *, const struct worker_opts *);

/* The consumer name of a slot: "<consumer_name>-<slot>". Caller frees. */
char	*worker_consumer_name(const struct config *, int slot);

#endif
