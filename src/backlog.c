/*
 * backlog.c: `stagerelay process-backlog`, the proposal's Phase 2. The
 * stream's history is read with XRANGE, independent of the consumer
 * group, and each page goes through the worker's round (decode, route,
 * ledger, trigger, ledger), so documents already done are skipped. Where
 * a run got to is kept in the ledger (backlog_progress) after every page,
 * so --resume continues after the last entry it finished.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "stream.h"
#include "util.h"
#include "worker.h"

#define EXIT_DEAD_LETTERED	65	/* EX_DATAERR: entries were dead-lettered */
#define EXIT_INTERRUPTED	75	/* EX_TEMPFAIL: stopped; --resume goes on */
#define LOG_EVERY_MS		5000	/* progress lines when not on a tty */

static volatile sig_atomic_t stop_requested;

static void
on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

struct backlog_opts {
	const char	*stream;
	const char	*start_id;
	const char	*end_id;
	int		 batch_size;	/* 0: backlog_batch_size */
	double		 max_age_hours;	/* < 0: backlog_max_age_hours */
	double		 rate;		/* entries/s; 0: unlimited */
	bool		 dry_run;
	bool		 resume;
};

struct progress {
	long long	 total;		/* entries in the range at the start */
	long long	 done;
	long long	 started_ms;	/* monotonic */
	long long	 shown_ms;
	bool		 tty;
};

static void __attribute__((noreturn))
usage_exit(void)
{
	fprintf(stderr, "usage: stagerelay process-backlog [-c file] "
	    "[--stream S] [--start-id ID]\n"
	    "           [--end-id ID] [--batch-size N] [--max-age-hours H] "
	    "[--rate N]\n"
	    "           [--dry-run] [--resume]\n");
	exit(EXIT_USAGE);
}

static bool
parse_number(const char *s, double max, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return errno == 0 && end != s && *end == '\0' && *out >= 0 &&
	    *out <= max;
}

/* A stream id as XRANGE takes it: "ms" or "ms-seq". */
static bool
valid_id(const char *s)
{
	const char *p = s;

	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9')
		p++;
	if (*p == '-') {
		p++;
		if (*p < '0' || *p > '9')
			return false;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	return *p == '\0' && strlen(s) < 40;
}

static int
parse_args(struct cli *cli, int argc, char **argv, struct backlog_opts *o)
{
	static const struct option longopts[] = {
		{ "config",		required_argument,	NULL, 'c' },
		{ "verbose",		no_argument,		NULL, 'v' },
		{ "stream",		required_argument,	NULL, 'S' },
		{ "start-id",		required_argument,	NULL, 's' },
		{ "end-id",		required_argument,	NULL, 'e' },
		{ "batch-size",		required_argument,	NULL, 'b' },
		{ "max-age-hours",	required_argument,	NULL, 'a' },
		{ "rate",		required_argument,	NULL, 'r' },
		{ "dry-run",		no_argument,		NULL, 'n' },
		{ "resume",		no_argument,		NULL, 'R' },
		{ "help",		no_argument,		NULL, 'h' },
		{ NULL,			0,			NULL, 0 }
	};
	double d;
	int ch;

	memset(o, 0, sizeof(*o));
	o->max_age_hours = -1;
	optind = 0;	/* glibc: 0 starts a fresh scan */
	while ((ch = getopt_long(argc, argv, "c:v", longopts, NULL)) != -1) {
		if (cli_option(cli, ch, optarg))
			continue;
		switch (ch) {
		case 'S':
			o->stream = optarg;
			break;
		case 's':
		case 'e':
			if (!valid_id(optarg)) {
				fprintf(stderr, "stagerelay: process-backlog: "
				    "--%s: expected a stream id (ms or ms-seq), "
				    "got \"%s\"\n", ch == 's' ? "start-id" :
				    "end-id", optarg);
				return EXIT_USAGE;
			}
			*(ch == 's' ? &o->start_id : &o->end_id) = optarg;
			break;
		case 'b':
			if (!parse_number(optarg, 10000, &d) || d < 1 ||
			    d != (int)d) {
				fprintf(stderr, "stagerelay: process-backlog: "
				    "--batch-size: expected 1..10000, got "
				    "\"%s\"\n", optarg);
				return EXIT_USAGE;
			}
			o->batch_size = (int)d;
			break;
		case 'a':
			if (!parse_number(optarg, 87600, &o->max_age_hours)) {
				fprintf(stderr, "stagerelay: process-backlog: "
				    "--max-age-hours: expected 0..87600 (0: no "
				    "limit), got \"%s\"\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'r':
			if (!parse_number(optarg, 1e7, &o->rate) ||
			    o->rate <= 0) {
				fprintf(stderr, "stagerelay: process-backlog: "
				    "--rate: expected entries per second > 0, "
				    "got \"%s\"\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			o->dry_run = true;
			break;
		case 'R':
			o->resume = true;
			break;
		case 'h':
		default:
			usage_exit();
		}
	}
	if (optind < argc) {
		fprintf(stderr, "stagerelay: process-backlog: unexpected "
		    "\"%s\"\n", argv[optind]);
		return EXIT_USAGE;
	}
	if (o->resume && (o->start_id != NULL || o->end_id != NULL)) {
		fprintf(stderr, "stagerelay: process-backlog: --resume takes "
		    "the range of the run it continues; drop --start-id and "
		    "--end-id\n");
		return EXIT_USAGE;
	}
	return 0;
}

/*
 * Whether the run that saved progress as owner ("host:pid") may still be
 * at work: on this host its process is asked; elsewhere, it is believed
 * alive for STALE_S after it last saved.
 */
#define STALE_S		600
static bool
owner_alive(const char *owner, long long age_s)
{
	char host[256];
	const char *colon = strrchr(owner, ':');
	long pid;

	if (*owner == '\0' || colon == NULL)
		return false;
	if (gethostname(host, sizeof(host)) == 0 &&
	    strlen(host) == (size_t)(colon - owner) &&
	    strncmp(owner, host, strlen(host)) == 0) {
		pid = strtol(colon + 1, NULL, 10);
		return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
	}
	return age_s < STALE_S;
}

/* Entries in [start, end]: one pass of ids (XRANGE pages). */
static long long
count_range(struct stream *s, const char *start, const char *end)
{
	struct stream_batch b;
	char from[64];
	long long total = 0;
	int n;

	strlcpy_s(from, start, sizeof(from));
	for (;;) {
		if ((n = stream_range(s, from, end, 1000, &b)) < 0)
			return -1;
		total += n;
		if (n > 0)
			snprintf(from, sizeof(from), "(%s", b.entries[n - 1].id);
		stream_batch_free(&b);
		if (n < 1000)
			return total;
	}
}

static long long
sum(const struct metrics_slot *t, enum metrics_outcome o)
{
	long long n = 0;

	for (size_t i = 0; i < METRICS_TYPES; i++)
		n += (long long)t->events[o][i];
	return n;
}

static void
show_progress(struct progress *p, bool last)
{
	long long now = now_mono_ms(), secs;
	double rate;
	char done[24], total[24], r[32], eta[24];

	if (!last && now - p->shown_ms < (p->tty ? 200 : LOG_EVERY_MS))
		return;
	p->shown_ms = now;
	secs = (now - p->started_ms) / 1000;
	rate = now > p->started_ms ? p->done * 1000.0 /
	    (double)(now - p->started_ms) : 0;
	if (p->tty) {
		int width = 30, filled = p->total > 0 ?
		    (int)(width * p->done / p->total) : width;

		fprintf(stderr, "\r[%.*s%*s] %lld/%lld %3d%% %7.0f/s ",
		    filled, "##############################", width - filled,
		    "", p->done, p->total, p->total > 0 ?
		    (int)(100 * p->done / p->total) : 100, rate);
		if (rate > 0 && p->done < p->total)
			fprintf(stderr, "ETA %llds   ", (long long)((p->total -
			    p->done) / rate + 0.5));
		else
			fprintf(stderr, "%llds        ", secs);
		if (last)
			fputc('\n', stderr);
		return;
	}
	snprintf(done, sizeof(done), "%lld", p->done);
	snprintf(total, sizeof(total), "%lld", p->total);
	snprintf(r, sizeof(r), "%.1f", rate);
	snprintf(eta, sizeof(eta), "%lld", rate > 0 ? (long long)((p->total -
	    p->done) / rate + 0.5) : 0);
	log_event(LOG_INFO, "backlog_progress", "done", done, "total", total,
	    "rate", r, "eta_s", eta, (const char *)NULL);
}

/* Keeps to --rate: sleeps until done entries are due. */
static void
pace(const struct progress *p, double rate)
{
	long long due, now;
	struct timespec ts;

	if (rate <= 0)
		return;
	due = p->started_ms + (long long)(p->done * 1000.0 / rate);
	while (!stop_requested && (now = now_mono_ms()) < due) {
		ts.tv_sec = 0;
		ts.tv_nsec = (due - now > 100 ? 100 : due - now) * 1000000L;
		nanosleep(&ts, NULL);
	}
}

static enum log_format
log_format_of(const struct config *cfg)
{
	enum log_format format = LOG_FMT_LOGFMT;

	if (cfg->logging.format != NULL)
		log_format_parse(cfg->logging.format, &format);
	return format;
}

static int
run(const struct config *cfg, const struct backlog_opts *o)
{
	struct metrics_slot *tally = xcalloc(1, sizeof(*tally));
	struct worker_opts wo;
	struct ledger_progress lp;
	struct progress p;
	struct stream_batch b;
	struct worker *w;
	struct stream *s;
	struct ledger *l;
	double max_age = o->max_age_hours >= 0 ? o->max_age_hours :
	    cfg->backlog_max_age_hours;
	int batch = o->batch_size > 0 ? o->batch_size :
	    cfg->backlog_batch_size, n, code = 0, got;
	char from[64], end[64], me[256] = "";
	long long expired, dead, invalid;
	bool complete = false;

	memset(&wo, 0, sizeof(wo));
	wo.slot = 0;
	wo.stop = &stop_requested;
	wo.master_fd = -1;
	wo.tally = tally;
	w = worker_backlog_open(cfg, &wo, max_age > 0 ? now_wall_ms() -
	    (long long)(max_age * 3600000.0) : 0, o->dry_run);
	s = worker_backlog_stream(w);
	l = worker_backlog_ledger(w);
	if (worker_backlog_connect(w) == -1) {
		log_warnx("process-backlog: cannot reach Redis or the ledger");
		code = 1;
		goto out;
	}
	if (o->rate > 0 && o->rate < batch)
		batch = o->rate < 1 ? 1 : (int)o->rate;

	memset(&lp, 0, sizeof(lp));
	if (!o->dry_run || o->resume) {
		char host[200] = "";

		if ((got = ledger_progress_get(l, cfg->source_stream, &lp)) < 0) {
			code = 1;
			goto out;
		}
		/* One run per group and stream: two would claim as one. */
		if (got == 1 && !lp.finished && owner_alive(lp.owner,
		    lp.age_s)) {
			fprintf(stderr, "stagerelay: process-backlog: another "
			    "run (%s) is working on %s for group %s (progress "
			    "saved %llds ago); wait for it or stop it\n",
			    lp.owner, cfg->source_stream, cfg->consumer_group,
			    lp.age_s);
			code = 1;
			goto out;
		}
		(void)gethostname(host, sizeof(host) - 1);
		snprintf(me, sizeof(me), "%s:%ld", host, (long)getpid());
	}
	if (o->resume) {
		if (got == 0 || lp.finished) {
			printf("process-backlog: %s: no unfinished run to "
			    "resume\n", cfg->source_stream);
			goto out;
		}
		if (lp.last_id[0] != '\0')
			snprintf(from, sizeof(from), "(%s", lp.last_id);
		else
			strlcpy_s(from, lp.start_id, sizeof(from));
		strlcpy_s(end, lp.end_id, sizeof(end));
	} else {
		strlcpy_s(from, o->start_id != NULL ? o->start_id : "-",
		    sizeof(from));
		if (o->end_id != NULL)
			strlcpy_s(end, o->end_id, sizeof(end));
		else if ((got = stream_last_id(s, end, sizeof(end))) < 0) {
			code = 1;
			goto out;
		} else if (got == 0) {
			printf("process-backlog: %s is empty: nothing to do\n",
			    cfg->source_stream);
			goto out;
		}
		memset(&lp, 0, sizeof(lp));
		strlcpy_s(lp.start_id, from, sizeof(lp.start_id));
		strlcpy_s(lp.end_id, end, sizeof(lp.end_id));
		strlcpy_s(lp.owner, me, sizeof(lp.owner));
		/* A new run: what an earlier one got to is forgotten. */
		if (!o->dry_run && ledger_progress_put(l, cfg->source_stream,
		    &lp) == -1) {
			code = 1;
			goto out;
		}
	}

	strlcpy_s(lp.owner, me, sizeof(lp.owner));
	memset(&p, 0, sizeof(p));
	p.tty = isatty(STDERR_FILENO) == 1;
	/* The whole stream: XLEN says it; a range is counted by its ids. */
	if ((p.total = !o->resume && o->start_id == NULL && o->end_id == NULL ?
	    stream_length(s) : count_range(s, from, end)) < 0) {
		code = 1;
		goto out;
	}
	p.started_ms = p.shown_ms = now_mono_ms();
	log_event(LOG_INFO, "backlog_started", "stream", cfg->source_stream,
	    "from", from, "to", end, "dry_run", o->dry_run ? "true" : "false",
	    (const char *)NULL);

	while (!stop_requested) {
		if ((n = stream_range(s, from, end, batch, &b)) < 0) {
			log_warnx("process-backlog: reading %s failed",
			    cfg->source_stream);
			code = 1;
			break;
		}
		if (n == 0) {
			stream_batch_free(&b);
			complete = true;
			break;
		}
		worker_backlog_round(w, b.entries, b.n, stdout);
		/* The page is finished once its retries are settled. */
		if (worker_backlog_settle(w) > 0) {
			stream_batch_free(&b);
			break;		/* stopped: this page is redone */
		}
		snprintf(from, sizeof(from), "(%s", b.entries[n - 1].id);
		strlcpy_s(lp.last_id, b.entries[n - 1].id, sizeof(lp.last_id));
		lp.done += n;
		p.done += n;
		stream_batch_free(&b);
		if (!o->dry_run && ledger_progress_put(l, cfg->source_stream,
		    &lp) == -1)
			log_warnx("process-backlog: progress not saved; "
			    "--resume would redo this page");
		show_progress(&p, false);
		pace(&p, o->rate);
	}
	if (complete && !o->dry_run) {
		lp.finished = true;
		(void)ledger_progress_put(l, cfg->source_stream, &lp);
	}
	show_progress(&p, true);

	expired = sum(tally, MO_EXPIRED);
	dead = sum(tally, MO_DEAD);
	invalid = sum(tally, MO_INVALID);
	printf("process-backlog: %s%lld entries of %s: %lld triggered, "
	    "%lld duplicates, %lld expired, %lld observed, %lld filtered, "
	    "%lld invalid, %lld dead-lettered, %zu already dead-lettered\n",
	    o->dry_run ? "(dry run) " : "", p.done, cfg->source_stream,
	    sum(tally, MO_TRIGGERED), sum(tally, MO_DUPLICATE), expired,
	    sum(tally, MO_OBSERVED), sum(tally, MO_FILTERED), invalid, dead,
	    worker_backlog_dead_again(w));
	if (code != 0)
		goto out;
	if (!complete) {
		if (o->dry_run)
			printf("process-backlog: (dry run) stopped after %s\n",
			    lp.last_id[0] ? lp.last_id : "no entry");
		else
			printf("process-backlog: stopped after %s; run again "
			    "with --resume to continue\n", lp.last_id[0] ?
			    lp.last_id : "no entry");
		code = EXIT_INTERRUPTED;
	} else if (dead + invalid > 0)
		code = EXIT_DEAD_LETTERED;
out:
	worker_backlog_close(w);
	free(tally);
	return code;
}

int
backlog_main(struct cli *cli, int argc, char **argv)
{
	struct backlog_opts o;
	struct sigaction sa;
	struct config cfg;
	int code;

	if ((code = parse_args(cli, argc, argv, &o)) != 0)
		return code;
	if ((code = cli_load(cli, &cfg, "backlog")) != 0)
		return code;
	/* A progress bar on the terminal: one line per event would tear it. */
	if (isatty(STDERR_FILENO) == 1 && !cli->verbose)
		log_init("backlog", LOG_WARN, log_format_of(&cfg), NULL);
	if (o.stream != NULL) {
		free(cfg.source_stream);
		cfg.source_stream = xstrdup(o.stream);
	}
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	code = run(&cfg, &o);
	config_free(&cfg);
	return code;
}
