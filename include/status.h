/*
 * status.h: `stagerelay status`, what the daemon's metrics endpoint, Redis
 * and the ledger say right now, as a terminal view or one JSON object.
 * The Redis and ledger parts are read directly, so they work without a
 * running daemon.
 */
#ifndef STAGERELAY_STATUS_H
#define STAGERELAY_STATUS_H

#include <stdbool.h>

#include "config.h"

#define STATUS_LEDGER_MINUTES	60	/* ledger counts cover this window */

struct status_opts {
	bool	json;		/* one JSON object (per line with watch) */
	bool	watch;		/* redraw every second until q or a signal */
	bool	verbose;	/* also pass the modules' warnings to stderr */
};

/*
 * Shows the status once, or until q, SIGINT or SIGTERM with watch.
 * Returns 0 when every part was reachable (a disabled metrics endpoint
 * counts as reachable), 1 when one was not; 0 when a watch is ended.
 */
int	status_run(const struct config *, const struct status_opts *);

#endif
