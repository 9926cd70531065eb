/*
 * supervisor.h: the master of the prefork daemon (DESIGN.md §6). Forks one
 * worker per slot, supervises, respawns, reloads, and speaks sd_notify.
 */
#ifndef STAGERELAY_SUPERVISOR_H
#define STAGERELAY_SUPERVISOR_H

#include <stdbool.h>

#include "config.h"

#define EXIT_KILLED	1	/* stop: shutdown_timeout passed, workers killed */
#define EXIT_CRASH_LOOP	70	/* EX_SOFTWARE: workers kept dying */
#define EXIT_NOPERM	77	/* EX_NOPERM: would run workers as root */

struct supervisor_opts {
	const char	*config_path;	/* re-read on SIGHUP */
	int		 workers;	/* -w; 0 = concurrent_tasks */
	bool		 verbose;
	int		 argc;		/* for process titles */
	char		**argv;
};

/*
 * Runs the master until stopped. cfg is loaded and validated; the master
 * takes ownership. Returns the exit code.
 */
int	supervisor_run(struct config *cfg, const struct supervisor_opts *);

/* Process titles: call once early in main(), then set as needed. */
void	proctitle_init(int argc, char **argv);
void	proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sends one sd_notify datagram when NOTIFY_SOCKET is set. */
void	sd_notify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
