/*
 * cli.c: what the subcommands share: loading the config and logging to
 * the terminal.
 */
#include <stdio.h>

#include "cli.h"
#include "config.h"
#include "log.h"

int
cli_load(const struct cli *cli, struct config *cfg, const char *proc)
{
	enum log_level level = LOG_INFO;
	enum log_format format = LOG_FMT_LOGFMT;
	char err[1024];

	if (config_load(cli->config_path, cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "stagerelay: %s\n", err);
		return CONFIG_EXIT_ERROR;
	}
	if (cfg->logging.level != NULL)
		log_level_parse(cfg->logging.level, &level);
	if (cfg->logging.format != NULL)
		log_format_parse(cfg->logging.format, &format);
	if (cli->verbose)
		level = LOG_DEBUG;
	/* A tool run talks to the terminal, whatever logging.file says. */
	log_init(proc, level, format, NULL);
	return 0;
}

bool
cli_option(struct cli *cli, int ch, const char *arg)
{
	if (ch == 'c')
		cli->config_path = arg;
	else if (ch == 'v')
		cli->verbose = true;
	else
		return false;
	return true;
}
