/*
 * dlq.c: placeholder until the subcommand lands.
 */
#include <stdio.h>

#include "cli.h"

int
dlq_main(struct cli *cli, int argc, char **argv)
{
	(void)cli;
	(void)argc;
	fprintf(stderr, "stagerelay: %s: not implemented yet\n", argv[0]);
	return EXIT_USAGE;
}
