/*
 * main.c: the command line. Parses flags and subcommands, loads the
 * configuration, and hands over to the worker (or the ledger tools).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagerelay.h"
#include "cli.h"
#include "status.h"
#include "supervisor.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG	SYSCONFDIR "/stagerelay.yaml"

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
"usage: stagerelay [-dv] [-c file] [-w n] [-p pidfile] [-u user] [--allow-root]\n"
"                                                run the daemon (master + workers)\n"
"       stagerelay [-v] [-c file] --drain        one worker, until drained\n"
"       stagerelay -t [-c file]                  check the config and print it\n"
"       stagerelay check-config [-c file]        same as -t\n"
"       stagerelay ledger migrate [-c file]      create or upgrade the ledger\n"
"       stagerelay ledger show [-c file] DOCUMENT_ID [--json]\n"
"                                                a document and its requests\n"
"       stagerelay ledger stats [-c file] [--since HOURS] [--json]\n"
"                                                the ledger over a window\n"
"       stagerelay ledger reset [-c file] DOCUMENT_ID... [--dry-run] [--force]\n"
"                                                trigger documents again\n"
"       stagerelay ledger purge [-c file] --older-than DAYS [--status S,...]\n"
"                               [--dry-run] [--batch N]\n"
"                                                delete old ledger rows\n"
"       stagerelay status [-c file] [--json] [--watch]\n"
"                                                workers, lag, pending, ledger\n"
"       stagerelay dlq list [-c file] [--count n] [--reason r] [--json]\n"
"                                                show dead-letter entries\n"
"       stagerelay dlq replay [-c file] id ... | --all | --reason r\n"
"                             [--dry-run]        put them back in the stream\n"
"       stagerelay dlq purge [-c file] --before id | --all [--reason r]\n"
"                            [--dry-run]         delete them\n"
"       stagerelay -V | -h\n"
"\n"
"  -c, --config FILE   configuration file (default %s)\n"
"  -t, --test          validate the configuration, print it (secrets\n"
"                      redacted) and exit: 0 valid, 78 invalid\n"
"  -w, --workers N     number of workers (default: concurrent_tasks)\n"
"  -d, --daemon        detach (SysV init); log to logging.file or nowhere\n"
"  -p, --pidfile FILE  write the master's pid, locked; removed on exit\n"
"  -u, --user USER     drop privileges to USER after reading the config\n"
"      --allow-root    let workers run as root (refused otherwise)\n"
"      --drain         exit once the own pending list and the stream are\n"
"                      drained (75 if entries were left pending)\n"
"      --json          status: one JSON object (a line per second with\n"
"                      --watch)\n"
"      --watch         status: redraw every second until q or ^C\n"
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
	config_warn_secrets(&cfg);
	fprintf(stderr, "stagerelay: configuration %s is valid\n", path);
	config_free(&cfg);
	return 0;
}

/* check-config [-c file]: -t as a subcommand. */
static int
cmd_check_config(struct cli *cli, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ NULL,		0,			NULL, 0 }
	};
	int ch;

	optind = 0;	/* glibc: 0 starts a fresh scan */
	while ((ch = getopt_long(argc, argv, "c:v", longopts, NULL)) != -1) {
		if (cli_option(cli, ch, optarg))
			continue;
		switch (ch) {
		default:
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "stagerelay: check-config: unexpected \"%s\"\n",
		    argv[optind]);
		return EXIT_USAGE;
	}
	return cmd_check(cli->config_path);
}

/* 0 all parts reachable, 1 one was not, 78 a bad config. */
static int
cmd_status(struct cli *cli, int argc, char **argv, struct status_opts *so)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ "json",	no_argument,		NULL, 'J' },
		{ "watch",	no_argument,		NULL, 'W' },
		{ NULL,		0,			NULL, 0 }
	};
	struct config cfg;
	int ch, code;

	optind = 0;	/* glibc: 0 starts a fresh scan */
	while ((ch = getopt_long(argc, argv, "c:v", longopts, NULL)) != -1) {
		if (cli_option(cli, ch, optarg))
			continue;
		switch (ch) {
		case 'J':
			so->json = true;
			break;
		case 'W':
			so->watch = true;
			break;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "stagerelay: status: unexpected \"%s\"\n",
		    argv[optind]);
		return EXIT_USAGE;
	}
	if (load(cli->config_path, &cfg) == -1)
		return CONFIG_EXIT_ERROR;
	so->verbose = cli->verbose;
	code = status_run(&cfg, so);
	config_free(&cfg);
	return code;
}

struct run_opts {
	const char	*path;
	bool		 drain;
	bool		 verbose;
	bool		 daemonize;
	bool		 allow_root;
	const char	*pidfile;
	const char	*user;
	int		 workers;
	int		 argc;
	char		**argv;
};

static int pidfile_fd = -1;
static char *pidfile_path;
static pid_t pidfile_owner;

/* Created and locked before forking; removed only by the master. */
static int
pidfile_open(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

	if (fd == -1) {
		log_warn("pidfile: cannot open %s", path);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		char buf[32] = "";

		if (read(fd, buf, sizeof(buf) - 1) < 0)
			buf[0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		log_errorx("pidfile: %s is locked: stagerelay is already running"
		    "%s%s", path, *buf ? " as pid " : "", buf);
		close(fd);
		return -1;
	}
	pidfile_fd = fd;
	pidfile_path = xstrdup(path);
	return 0;
}

static void
pidfile_write(void)
{
	char buf[32];
	int n;

	if (pidfile_fd == -1)
		return;
	pidfile_owner = getpid();
	n = snprintf(buf, sizeof(buf), "%d\n", (int)pidfile_owner);
	if (ftruncate(pidfile_fd, 0) == -1 ||
	    pwrite(pidfile_fd, buf, (size_t)n, 0) != n)
		log_warn("pidfile: cannot write %s", pidfile_path);
}

static void
pidfile_remove(void)
{
	if (pidfile_fd == -1 || getpid() != pidfile_owner)
		return;
	if (unlink(pidfile_path) == -1 && errno != ENOENT)
		log_warn("pidfile: cannot remove %s", pidfile_path);
	close(pidfile_fd);
	pidfile_fd = -1;
	free(pidfile_path);
	pidfile_path = NULL;
}

/* Double fork and setsid, for SysV init scripts. */
static void
daemonize(void)
{
	pid_t pid;
	int fd;

	if ((pid = fork()) == -1)
		fatal("daemon: fork");
	if (pid > 0)
		_exit(0);
	if (setsid() == -1)
		fatal("daemon: setsid");
	if ((pid = fork()) == -1)
		fatal("daemon: fork");
	if (pid > 0)
		_exit(0);
	if (chdir("/") == -1)
		fatal("daemon: chdir /");
	umask(027);
	if ((fd = open("/dev/null", O_RDWR)) != -1) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
}

static int
drop_privileges(const char *user)
{
	struct passwd *pw;

	if ((pw = getpwnam(user)) == NULL) {
		fprintf(stderr, "stagerelay: no such user \"%s\"\n", user);
		return -1;
	}
	if (setgroups(1, &pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		fprintf(stderr, "stagerelay: cannot become %s: %s\n", user,
		    strerror(errno));
		return -1;
	}
	if (setuid(0) != -1) {
		fprintf(stderr, "stagerelay: could regain root after "
		    "dropping to %s\n", user);
		return -1;
	}
	return 0;
}

static int
cmd_run(const struct run_opts *ro)
{
	struct config *cfg = xcalloc(1, sizeof(*cfg));
	struct supervisor_opts so;
	struct worker_opts opts;
	struct sigaction sa;
	int code;

	if (load(ro->path, cfg) == -1) {
		free(cfg);
		return CONFIG_EXIT_ERROR;
	}
	if (ro->user != NULL && drop_privileges(ro->user) == -1) {
		config_free(cfg);
		free(cfg);
		return EXIT_NOPERM;
	}
	if (geteuid() == 0 && !ro->allow_root) {
		fprintf(stderr, "stagerelay: refusing to run workers as root; "
		    "use -u USER, or --allow-root if you mean it\n");
		config_free(cfg);
		free(cfg);
		return EXIT_NOPERM;
	}
	setup_logging(cfg, ro->verbose, ro->drain ? "worker-1" : "master");
	config_warn_pending(cfg);
	config_warn_secrets(cfg);
	if (!cfg->enabled) {
		log_event(LOG_WARN, "consumer_disabled",
		    "detail", "event_consumer.enabled is false; nothing to do",
		    (const char *)NULL);
		config_free(cfg);
		free(cfg);
		return 0;
	}
	if (!cfg->auto_process)
		log_warnx("config: auto_process is false: events are recorded "
		    "as observed and acknowledged, nothing is triggered");

	if (!ro->drain) {
		if (ro->pidfile != NULL && pidfile_open(ro->pidfile) == -1) {
			config_free(cfg);
			free(cfg);
			return 1;
		}
		if (ro->daemonize)
			daemonize();
		pidfile_write();
		memset(&so, 0, sizeof(so));
		so.config_path = ro->path;
		so.workers = ro->workers;
		so.verbose = ro->verbose;
		so.argc = ro->argc;
		so.argv = ro->argv;
		code = supervisor_run(cfg, &so);
		pidfile_remove();
		return code;
	}

	if (cfg->ingress.enabled)
		log_warnx("config: ingress.enabled: a --drain run takes no "
		    "events over HTTP; only the daemon runs the ingress");
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

	memset(&opts, 0, sizeof(opts));
	opts.slot = 1;
	opts.drain = true;
	opts.stop = &stop_requested;
	opts.reopen = &reopen_requested;
	opts.master_fd = -1;
	code = worker_run(cfg, &opts);
	config_free(cfg);
	free(cfg);
	return code;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "test",	no_argument,		NULL, 't' },
		{ "drain",	no_argument,		NULL, 'D' },
		{ "workers",	required_argument,	NULL, 'w' },
		{ "daemon",	no_argument,		NULL, 'd' },
		{ "pidfile",	required_argument,	NULL, 'p' },
		{ "user",	required_argument,	NULL, 'u' },
		{ "allow-root",	no_argument,		NULL, 'R' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ "json",	no_argument,		NULL, 'J' },
		{ "watch",	no_argument,		NULL, 'W' },
		{ "version",	no_argument,		NULL, 'V' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 }
	};
	struct run_opts ro;
	struct status_opts so;
	struct cli cli;
	const char *path = DEFAULT_CONFIG;
	bool test = false, drain = false, verbose = false;
	char *end;
	long n;
	int ch;

	memset(&ro, 0, sizeof(ro));
	memset(&so, 0, sizeof(so));
	ro.argc = argc;
	ro.argv = argv;
	proctitle_init(argc, argv);
	/* "+": options after a subcommand's name are the subcommand's. */
	while ((ch = getopt_long(argc, argv, "+c:tvVhw:dp:u:", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 'w':
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || *end != '\0' || n < 1 || n > 256) {
				fprintf(stderr, "stagerelay: -w: expected a "
				    "number of workers 1..256, got \"%s\"\n",
				    optarg);
				return EXIT_USAGE;
			}
			ro.workers = (int)n;
			break;
		case 'd':
			ro.daemonize = true;
			break;
		case 'p':
			ro.pidfile = optarg;
			break;
		case 'u':
			ro.user = optarg;
			break;
		case 'R':
			ro.allow_root = true;
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
		case 'J':
			so.json = true;
			break;
		case 'W':
			so.watch = true;
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

	cli.config_path = path;
	cli.verbose = verbose;
	if ((so.json || so.watch) &&
	    (argc == 0 || strcmp(argv[0], "status") != 0)) {
		fprintf(stderr, "stagerelay: --json and --watch go with "
		    "\"status\"\n");
		usage(EXIT_USAGE);
	}
	if (test)
		return cmd_check(path);
	if (argc > 0 && strcmp(argv[0], "status") == 0)
		return cmd_status(&cli, argc, argv, &so);
	if (argc > 0 && strcmp(argv[0], "check-config") == 0)
		return cmd_check_config(&cli, argc, argv);
	if (argc > 0 && strcmp(argv[0], "ledger") == 0)
		return ledgercmd_main(&cli, argc, argv);
	if (argc > 0 && strcmp(argv[0], "dlq") == 0)
		return dlq_main(&cli, argc, argv);
	if (argc > 0 && strcmp(argv[0], "process-backlog") == 0)
		return backlog_main(&cli, argc, argv);
	if (argc > 0 && strcmp(argv[0], "run") != 0) {
		fprintf(stderr, "stagerelay: unknown command \"%s\"\n",
		    argv[0]);
		usage(EXIT_USAGE);
	}
	/* Process titles overwrite argv: keep our own copies. */
	ro.path = xstrdup(path);
	ro.pidfile = xstrdup(ro.pidfile);
	ro.user = xstrdup(ro.user);
	ro.drain = drain;
	ro.verbose = verbose;
	ch = cmd_run(&ro);
	free((char *)ro.path);
	free((char *)ro.pidfile);
	free((char *)ro.user);
	return ch;
}
