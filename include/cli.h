/*
 * cli.h: what the subcommands share. `stagerelay [-c file] [-v] CMD
 * [options] [args]`: -c and -v may come before the subcommand's name or
 * among its options; each subcommand parses the rest of its argv itself.
 */
#ifndef STAGERELAY_CLI_H
#define STAGERELAY_CLI_H

#include <stdbool.h>

#include "config.h"

#define EXIT_USAGE	64	/* EX_USAGE: a bad flag or argument */

struct cli {
	const char	*config_path;
	bool		 verbose;
};

/*
 * -c FILE and -v among a subcommand's options (getopt_long's ch and
 * optarg): taken into cli. Returns true when ch was one of them.
 */
bool	cli_option(struct cli *, int ch, const char *arg);

/*
 * Loads the config and logs to stderr as proc (the config's logging
 * format and level; debug with -v). Returns 0, or CONFIG_EXIT_ERROR after
 * printing why; cfg is then not to be freed.
 */
int	cli_load(const struct cli *, struct config *cfg, const char *proc);

/* The subcommands, argv[0] being their name. Each returns an exit code. */
int	dlq_main(struct cli *, int argc, char **argv);		/* dlq.c */
int	ledgercmd_main(struct cli *, int argc, char **argv);	/* ledgercmd.c */
int	backlog_main(struct cli *, int argc, char **argv);	/* backlog.c */

#endif
