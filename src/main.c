/*
 * main.c: the command line. Parses flags and subcommands, loads the
 * configuration, and hands over to the worker (or the ledger tools).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagerelay.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG	SYSCONFDIR "/stagerelay.yaml"

#define EXIT_USAGE	64	/* EX_USAGE */

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reopen_requested;

static void
on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void
on_reopen(int sig)
{
	(void)sig;
	reopen_requested = 1;
}

static void __attribute__((noreturn))
usage(int code)
{
	FILE *f = code == 0 ? stdout : stderr;

	fprintf(f,
"usage: stagerelay [-v] [-c file] [--drain]      run the consumer\n"
"       stagerelay -t [-c file]                  check the config and print it\n"
"       stagerelay check-config [-c file]        same as -t\n"
"       stagerelay ledger migrate [-c file]      create or upgrade the ledger\n"
"       stagerelay -V | -h\n"
"\n"
"  -c, --config FILE   configuration file (default %s)\n"
"  -t, --test          validate the configuration, print it (secrets\n"
"                      redacted) and exit: 0 valid, 78 invalid\n"
"      --drain         exit once the own pending list and the stream are\n"
"                      drained (75 if entries were left pending)\n"
"  -v, --verbose       log at debug level\n"
"  -V, --version       print the version\n"
"  -h, --help          this text\n", DEFAULT_CONFIG);
	exit(code);
}

static int
load(const char *path, struct config *cfg)
{
	char err[1024];

	if (config_load(path, cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "stagerelay: %s\n", err);
		return -1;
	}
	return 0;
}

static void
setup_logging(const struct config *cfg, bool verbose, const char *proc)
{
	enum log_level level = LOG_INFO;
	enum log_format format = LOG_FMT_LOGFMT;

	if (cfg->logging.level != NULL)
		log_level_parse(cfg->logging.level, &level);
	if (cfg->logging.format != NULL)
		log_format_parse(cfg->logging.format, &format);
	if (verbose)
		level = LOG_DEBUG;
	log_init(proc, level, format, cfg->logging.file);
}

static int
cmd_check(const char *path)
{
	struct config cfg;

	if (load(path, &cfg) == -1)
		return CONFIG_EXIT_ERROR;
	config_print(stdout, &cfg);
	fflush(stdout);
	config_warn_pending(&cfg);
	fprintf(stderr, "stagerelay: configuration %s is valid\n", path);
	config_free(&cfg);
	return 0;
}

static int
cmd_ledger(const char *path, int argc, char **argv, bool verbose)
{
	struct config cfg;
	struct ledger *l;
	int v, code = 0;

	if (argc < 1 || strcmp(argv[0], "migrate") != 0) {
		fprintf(stderr, "stagerelay: ledger: expected \"migrate\"\n");
		return EXIT_USAGE;
	}
	if (load(path, &cfg) == -1)
		return CONFIG_EXIT_ERROR;
	setup_logging(&cfg, verbose, "ledger");
	l = ledger_new(cfg.ledger.dsn, cfg.ledger.schema, cfg.consumer_group,
	    "ledger-migrate", cfg.source_stream);
	if ((v = ledger_migrate(l)) < 0)
		code = 1;
	else
		printf("ledger schema %s at version %d\n", cfg.ledger.schema, v);
	ledger_free(l);
	config_free(&cfg);
	return code;
}

static int
cmd_run(const char *path, bool drain, bool verbose)
{
	struct config cfg;
	struct worker_opts opts;
	struct sigaction sa;
	struct ledger *l;
	int code;

	if (load(path, &cfg) == -1)
		return CONFIG_EXIT_ERROR;
	setup_logging(&cfg, verbose, "worker-1");
	config_warn_pending(&cfg);
	if (!cfg.enabled) {
		log_event(LOG_WARN, "consumer_disabled",
		    "detail", "event_consumer.enabled is false; nothing to do",
		    (const char *)NULL);
		config_free(&cfg);
		return 0;
	}
	if (!cfg.auto_process)
		log_warnx("config: auto_process is false: events are recorded "
		    "as observed and acknowledged, nothing is triggered");

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	/* SA_RESTART: a blocking read completes; the loop then sees the flag. */
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_reopen;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	/* Migrations on start too, under the advisory lock. */
	l = ledger_new(cfg.ledger.dsn, cfg.ledger.schema, cfg.consumer_group,
	    "migrate", cfg.source_stream);
	if (ledger_migrate(l) < 0) {
		ledger_free(l);
		config_free(&cfg);
		log_errorx("ledger: migration failed; not starting");
		return 1;
	}
	ledger_free(l);

	memset(&opts, 0, sizeof(opts));
	opts.slot = 1;
	opts.drain = drain;
	opts.stop = &stop_requested;
	opts.reopen = &reopen_requested;
	code = worker_run(&cfg, &opts);
	config_free(&cfg);
	return code;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "test",	no_argument,		NULL, 't' },
		{ "drain",	no_argument,		NULL, 'D' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ "version",	no_argument,		NULL, 'V' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 }
	};
	const char *path = DEFAULT_CONFIG;
	bool test = false, drain = false, verbose = false;
	int ch;

	while ((ch = getopt_long(argc, argv, "c:tvVh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test = true;
			break;
		case 'D':
			drain = true;
			break;
		case 'v':
			verbose = true;
			break;
		case 'V':
			printf("stagerelay %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(0);
		default:
			usage(EXIT_USAGE);
		}
	}
	argc -= optind;
	argv += optind;

	if (test)
		return cmd_check(path);
	if (argc == 0 || strcmp(argv[0], "run") == 0)
		return cmd_run(path, drain, verbose);
	if (strcmp(argv[0], "check-config") == 0)
		return cmd_check(path);
	if (strcmp(argv[0], "ledger") == 0)
		return cmd_ledger(path, argc - 1, argv + 1, verbose);
	fprintf(stderr, "stagerelay: unknown command \"%s\"\n", argv[0]);
	usage(EXIT_USAGE);
}
