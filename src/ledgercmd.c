/*
 * ledgercmd.c: `stagerelay ledger ...`, the ledger tools for operators
 * and DBAs.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "ledger.h"

static int
cmd_migrate(const struct config *cfg)
{
	struct ledger *l;
	int v;

	l = ledger_new(cfg->ledger.dsn, cfg->ledger.schema, cfg->consumer_group,
	    "ledger-migrate", cfg->source_stream);
	v = ledger_migrate(l);
	if (v >= 0)
		printf("ledger schema %s at version %d\n", cfg->ledger.schema,
		    v);
	ledger_free(l);
	return v < 0 ? 1 : 0;
}

int
ledgercmd_main(struct cli *cli, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ NULL,		0,			NULL, 0 }
	};
	struct config cfg;
	int ch, code;

	optind = 0;	/* glibc: 0 starts a fresh scan */
	while ((ch = getopt_long(argc, argv, "c:v", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			cli->config_path = optarg;
			break;
		case 'v':
			cli->verbose = true;
			break;
		default:
			return EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1 || strcmp(argv[0], "migrate") != 0) {
		fprintf(stderr, "stagerelay: ledger: expected \"migrate\"\n");
		return EXIT_USAGE;
	}
	if ((code = cli_load(cli, &cfg, "ledger")) != 0)
		return code;
	code = cmd_migrate(&cfg);
	config_free(&cfg);
	return code;
}
