/*
 * ledgercmd.c: `stagerelay ledger ...`, the ledger tools for operators
 * and DBAs: migrate, show, stats, reset and purge. This file parses the
 * command line and prints; the statements are in ledger.c (migrate) and
 * ledger_admin.c (the rest).
 */
#include <ctype.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cli.h"
#include "config.h"
#include "ledger.h"
#include "ledger_admin.h"
#include "log.h"
#include "util.h"

#define PURGE_BATCH	10000	/* rows per DELETE: short locks */
#define MAX_DAYS	1000000.0	/* purge --older-than */
#define MAX_HOURS	10000000.0	/* stats --since */

/* The options, and which subcommand takes which. */
enum {
	O_JSON		= 1 << 0,
	O_SINCE		= 1 << 1,
	O_DRY_RUN	= 1 << 2,
	O_FORCE		= 1 << 3,
	O_OLDER		= 1 << 4,
	O_STATUS	= 1 << 5,
	O_BATCH		= 1 << 6
};

struct ledger_opts {
	int		 given;		/* O_* */
	double		 since_hours;
	double		 older_days;
	long		 batch;
	const char	*statuses[LEDGER_NSTATUSES];
	size_t		 nstatuses;
	char		**args;		/* after the subcommand */
	int		 nargs;
};

static const char usage_lines[] =
"usage: stagerelay ledger migrate\n"
"       stagerelay ledger show DOCUMENT_ID [--json]\n"
"       stagerelay ledger stats [--since HOURS] [--json]\n"
"       stagerelay ledger reset DOCUMENT_ID ... [--dry-run] [--force]\n"
"       stagerelay ledger purge --older-than DAYS [--status STATUS[,...]]\n"
"                               [--dry-run] [--batch N]\n"
"       (each also takes -c FILE and -v)\n";

/* ---- argument checks ----------------------------------------------------- */

/* A plain decimal: digits, with at most one point ("30", "0.5", ".5"). */
static int
parse_decimal(const char *s, double *out)
{
	const char *p = s;
	size_t digits = 0;

	for (; isdigit((unsigned char)*p); p++)
		digits++;
	if (*p == '.')
		for (p++; isdigit((unsigned char)*p); p++)
			digits++;
	if (digits == 0 || *p != '\0')
		return -1;
	*out = strtod(s, NULL);
	return 0;
}

/* --status triggered,dead --status observed: each name once. */
static int
add_statuses(struct ledger_opts *o, const char *arg)
{
	char *copy = xstrdup(arg), *tok, *save = NULL;
	size_t k;
	int ret = 0;

	for (tok = strtok_r(copy, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save)) {
		for (k = 0; k < LEDGER_NSTATUSES; k++)
			if (strcmp(tok, ledger_admin_statuses[k]) == 0)
				break;
		if (k == LEDGER_NSTATUSES) {
			fprintf(stderr, "stagerelay: ledger purge: --status: "
			    "no status \"%s\" (claimed, triggered, failed, "
			    "dead, observed, expired)\n", tok);
			ret = -1;
			break;
		}
		for (size_t i = 0; i < o->nstatuses; i++)
			if (o->statuses[i] == ledger_admin_statuses[k])
				goto next;
		o->statuses[o->nstatuses++] = ledger_admin_statuses[k];
next:		;
	}
	if (ret == 0 && o->nstatuses == 0) {
		fprintf(stderr, "stagerelay: ledger purge: --status: expected "
		    "a status\n");
		ret = -1;
	}
	free(copy);
	return ret;
}

/* ---- printing ------------------------------------------------------------ */

/* A value on one line: control characters would break the layout. */
static void
put_text(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			fputs("\\n", stdout);
		else if (*s == '\t')
			putchar(' ');
		else if ((unsigned char)*s < 0x20 || *s == 0x7f)
			putchar('?');
		else
			putchar(*s);
	}
}

static void
put_value(const cJSON *v)
{
	char *text;

	if (v == NULL || cJSON_IsNull(v))
		fputs("-", stdout);
	else if (cJSON_IsString(v))
		put_text(v->valuestring);
	else if ((text = cJSON_PrintUnformatted(v)) != NULL) {
		put_text(text);
		free(text);
	}
}

static void
put_field(const char *name, const cJSON *v, int width)
{
	printf("%s:%*s", name, width - (int)strlen(name) + 1, "");
	put_value(v);
	putchar('\n');
}

/* The columns of a delivery, in the order a reader wants them. */
static const char *const delivery_columns[] = {
	"requested_at", "route", "method", "url", "idempotency_key",
	"http_status", "latency_ms", "outcome", "remote_job_id", "error",
	"event_id", "stream_entry_id"
};
#define NDELIVERY_COLUMNS \
	(sizeof(delivery_columns) / sizeof(delivery_columns[0]))

/* Shown in the header or the same for every delivery. */
static int
delivery_column_listed(const char *name)
{
	if (strcmp(name, "delivery_id") == 0 ||
	    strcmp(name, "consumer_group") == 0)
		return 1;
	for (size_t i = 0; i < NDELIVERY_COLUMNS; i++)
		if (strcmp(name, delivery_columns[i]) == 0)
			return 1;
	return 0;
}

static void
print_show_text(const cJSON *o)
{
	const cJSON *doc = cJSON_GetObjectItemCaseSensitive(o, "document");
	const cJSON *dels = cJSON_GetObjectItemCaseSensitive(o, "deliveries");
	const cJSON *c, *d;
	int width = (int)strlen("deliveries"), n, i = 0;

	cJSON_ArrayForEach(c, doc)
		if ((int)strlen(c->string) > width)
			width = (int)strlen(c->string);
	cJSON_ArrayForEach(d, dels)
		cJSON_ArrayForEach(c, d)
			if ((int)strlen(c->string) > width)
				width = (int)strlen(c->string);

	cJSON_ArrayForEach(c, doc)
		put_field(c->string, c, width);
	n = cJSON_GetArraySize(dels);
	if (n == 0) {
		printf("%s%s:%*snone\n", cJSON_IsNull(doc) ? "" : "\n",
		    "deliveries", width - (int)strlen("deliveries") + 1, "");
		return;
	}
	cJSON_ArrayForEach(d, dels) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(d,
		    "delivery_id");

		if (i > 0 || !cJSON_IsNull(doc))
			putchar('\n');
		printf("delivery ");
		put_value(id);
		printf(" (%d of %d, oldest first)\n", ++i, n);
		for (size_t k = 0; k < NDELIVERY_COLUMNS; k++)
			if ((c = cJSON_GetObjectItemCaseSensitive(d,
			    delivery_columns[k])) != NULL)
				put_field(delivery_columns[k], c, width);
		/* Columns a later migration adds. */
		cJSON_ArrayForEach(c, d)
			if (!delivery_column_listed(c->string))
				put_field(c->string, c, width);
	}
}

static void
print_json(cJSON *o)
{
	char *text = cJSON_PrintUnformatted(o);

	if (text == NULL)
		fatalx("ledger: out of memory");
	printf("%s\n", text);
	free(text);
}

#define ROW	"%-12s "	/* the label column, as in `status` */

static void
ms_text(char *out, size_t len, const char *name, double ms)
{
	if (isnan(ms))
		snprintf(out, len, "%s -", name);
	else
		snprintf(out, len, "%s %.1f ms", name, ms);
}

static void
print_stats_text(const struct config *cfg, const char *where,
    const struct ledger_stats *st)
{
	char p50[48], p95[48], p99[48];
	int w = 1;

	printf(ROW "%s schema %s, group %s\n", "ledger", where,
	    cfg->ledger.schema, cfg->consumer_group);
	if (st->since_hours > 0)
		printf(ROW "last %g h: %s .. %s\n", "window", st->since_hours,
		    st->from, st->to);
	else
		printf(ROW "all time, until %s\n", "window", st->to);
	printf(ROW "%lld", "documents", st->documents);
	for (size_t k = 0; k < LEDGER_NSTATUSES; k++)
		printf("  %s %lld", ledger_admin_statuses[k], st->status[k]);
	putchar('\n');
	printf(ROW "%lld  success %lld  transient %lld  permanent %lld\n",
	    "requests", st->requests, st->success, st->transient,
	    st->permanent);
	ms_text(p50, sizeof(p50), "p50", st->p50_ms);
	ms_text(p95, sizeof(p95), "p95", st->p95_ms);
	ms_text(p99, sizeof(p99), "p99", st->p99_ms);
	printf(ROW "%s  %s  %s\n", "latency", p50, p95, p99);

	if (st->nhours == 0)
		printf(ROW "none\n", "triggered/h");
	for (size_t i = 0; i < st->nhours; i++)
		printf(ROW "%s  %lld\n", i == 0 ? "triggered/h" : "",
		    st->hours[i].hour, st->hours[i].documents);

	for (size_t i = 0; i < st->nerrors; i++) {
		int digits = snprintf(NULL, 0, "%lld", st->errors[i].documents);

		if (digits > w)
			w = digits;
	}
	if (st->nerrors == 0)
		printf(ROW "none\n", "top errors");
	for (size_t i = 0; i < st->nerrors; i++) {
		printf(ROW "%*lld  ", i == 0 ? "top errors" : "", w,
		    st->errors[i].documents);
		put_text(st->errors[i].error);
		putchar('\n');
	}
}

static cJSON *
number_or_null(double v)
{
	return isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
}

static void
print_stats_json(const struct config *cfg, const char *where,
    const struct ledger_stats *st)
{
	cJSON *o = cJSON_CreateObject(), *docs, *reqs, *lat, *arr, *e;

	cJSON_AddStringToObject(o, "ledger", where);
	cJSON_AddStringToObject(o, "schema", cfg->ledger.schema);
	cJSON_AddStringToObject(o, "consumer_group", cfg->consumer_group);
	cJSON_AddNumberToObject(o, "since_hours", st->since_hours);
	if (*st->from != '\0')
		cJSON_AddStringToObject(o, "from", st->from);
	else
		cJSON_AddNullToObject(o, "from");
	cJSON_AddStringToObject(o, "to", st->to);
	docs = cJSON_AddObjectToObject(o, "documents");
	cJSON_AddNumberToObject(docs, "total", (double)st->documents);
	for (size_t k = 0; k < LEDGER_NSTATUSES; k++)
		cJSON_AddNumberToObject(docs, ledger_admin_statuses[k],
		    (double)st->status[k]);
	reqs = cJSON_AddObjectToObject(o, "requests");
	cJSON_AddNumberToObject(reqs, "total", (double)st->requests);
	cJSON_AddNumberToObject(reqs, "success", (double)st->success);
	cJSON_AddNumberToObject(reqs, "transient", (double)st->transient);
	cJSON_AddNumberToObject(reqs, "permanent", (double)st->permanent);
	lat = cJSON_AddObjectToObject(o, "latency_ms");
	cJSON_AddItemToObject(lat, "p50", number_or_null(st->p50_ms));
	cJSON_AddItemToObject(lat, "p95", number_or_null(st->p95_ms));
	cJSON_AddItemToObject(lat, "p99", number_or_null(st->p99_ms));
	arr = cJSON_AddArrayToObject(o, "triggered_per_hour");
	for (size_t i = 0; i < st->nhours; i++) {
		e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "hour", st->hours[i].hour);
		cJSON_AddNumberToObject(e, "documents",
		    (double)st->hours[i].documents);
		cJSON_AddItemToArray(arr, e);
	}
	arr = cJSON_AddArrayToObject(o, "top_errors");
	for (size_t i = 0; i < st->nerrors; i++) {
		e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "error", st->errors[i].error);
		cJSON_AddNumberToObject(e, "documents",
		    (double)st->errors[i].documents);
		cJSON_AddItemToArray(arr, e);
	}
	print_json(o);
	cJSON_Delete(o);
}

/* ---- the subcommands ----------------------------------------------------- */

static int
cmd_migrate(const struct config *cfg, const struct ledger_opts *o)
{
	struct ledger *l;
	int v;

	(void)o;
	l = ledger_new(cfg->ledger.dsn, cfg->ledger.schema, cfg->consumer_group,
	    "ledger-migrate", cfg->source_stream);
	v = ledger_migrate(l);
	if (v >= 0)
		printf("ledger schema %s at version %d\n", cfg->ledger.schema,
		    v);
	ledger_free(l);
	return v < 0 ? 1 : 0;
}

/* 0 shown, 1 not found (its past requests, if any, still shown). */
static int
cmd_show(const struct config *cfg, const struct ledger_opts *o)
{
	struct ledger_admin *la;
	const char *id = o->args[0];
	cJSON *out;
	int found;

	if ((la = ledger_admin_open(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group)) == NULL)
		return 1;
	found = ledger_admin_show(la, id, &out);
	ledger_admin_close(la);
	if (found == -1)
		return 1;
	if (!found)
		fprintf(stderr, "stagerelay: ledger show: no document \"%s\" "
		    "in consumer group %s%s\n", id, cfg->consumer_group,
		    cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(out,
		    "deliveries")) > 0 ? " (reset or purged); the requests "
		    "made for it follow" : "");
	if (o->given & O_JSON)
		print_json(out);
	else if (found || cJSON_GetArraySize(
	    cJSON_GetObjectItemCaseSensitive(out, "deliveries")) > 0)
		print_show_text(out);
	cJSON_Delete(out);
	return found ? 0 : 1;
}

static int
cmd_stats(const struct config *cfg, const struct ledger_opts *o)
{
	struct ledger_admin *la;
	struct ledger_stats st;
	int ret;

	if ((la = ledger_admin_open(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group)) == NULL)
		return 1;
	ret = ledger_admin_stats(la, (o->given & O_SINCE) ? o->since_hours :
	    24, &st);
	if (ret == 0 && (o->given & O_JSON))
		print_stats_json(cfg, ledger_admin_where(la), &st);
	else if (ret == 0)
		print_stats_text(cfg, ledger_admin_where(la), &st);
	ledger_stats_free(&st);
	ledger_admin_close(la);
	return ret == 0 ? 0 : 1;
}

/* 0 every document reset, 1 one was not found or refused. */
static int
cmd_reset(const struct config *cfg, const struct ledger_opts *o)
{
	bool dry = o->given & O_DRY_RUN, force = o->given & O_FORCE;
	struct ledger_admin *la;
	struct ledger_reset *docs;
	size_t n = 0;
	int code = 0;

	/* Each id once, in the order given. */
	docs = xcalloc((size_t)o->nargs, sizeof(*docs));
	for (int i = 0; i < o->nargs; i++) {
		size_t k;

		for (k = 0; k < n; k++)
			if (strcmp(docs[k].document_id, o->args[i]) == 0)
				break;
		if (k == n)
			docs[n++].document_id = o->args[i];
	}
	if ((la = ledger_admin_open(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group)) == NULL) {
		free(docs);
		return 1;
	}
	if (ledger_admin_reset(la, docs, n, force, dry) == -1) {
		ledger_admin_close(la);
		free(docs);
		return 1;
	}
	ledger_admin_close(la);
	for (size_t i = 0; i < n; i++) {
		const struct ledger_reset *d = &docs[i];

		switch (d->result) {
		case LEDGER_RESET_DONE:
			printf("%s %s (was %s)\n", dry ? "would reset" :
			    "reset", d->document_id, d->status);
			break;
		case LEDGER_RESET_NOT_FOUND:
			fprintf(stderr, "stagerelay: ledger reset: %s: not "
			    "found in consumer group %s\n", d->document_id,
			    cfg->consumer_group);
			code = 1;
			break;
		case LEDGER_RESET_REFUSED:
			fprintf(stderr, "stagerelay: ledger reset: %s: "
			    "refused: claimed by %s, lease live for %lld s "
			    "more (in flight; --force resets it anyway)\n",
			    d->document_id, *d->claimed_by ? d->claimed_by :
			    "?", d->lease_left_s);
			code = 1;
			break;
		}
	}
	free(docs);
	return code;
}

static int
cmd_purge(const struct config *cfg, const struct ledger_opts *o)
{
	static const char *const defaults[] = {
		"triggered", "dead", "observed", "expired"
	};
	struct ledger_admin *la;
	struct ledger_purge p;
	struct buf names;
	const char *verb;
	int ret;

	memset(&p, 0, sizeof(p));
	p.days = o->older_days;
	p.dry_run = o->given & O_DRY_RUN;
	p.batch = (o->given & O_BATCH) ? o->batch : PURGE_BATCH;
	if (o->nstatuses > 0) {
		p.statuses = o->statuses;
		p.nstatuses = o->nstatuses;
	} else {
		p.statuses = defaults;
		p.nstatuses = sizeof(defaults) / sizeof(defaults[0]);
	}
	if ((la = ledger_admin_open(cfg->ledger.dsn, cfg->ledger.schema,
	    cfg->consumer_group)) == NULL)
		return 1;
	ret = ledger_admin_purge(la, &p);
	ledger_admin_close(la);
	if (ret == -1 && (p.dry_run || *p.cutoff == '\0'))
		return 1;

	/* What was done is said even when a later batch failed. */
	buf_init(&names);
	for (size_t i = 0; i < p.nstatuses; i++)
		buf_printf(&names, "%s%s", i ? ", " : "", p.statuses[i]);
	verb = p.dry_run ? "would delete" : "deleted";
	printf("%s %lld documents (%s) of group %s last changed before %s\n",
	    verb, p.documents, names.data, cfg->consumer_group, p.cutoff);
	printf("%s %lld deliveries requested before %s that no document "
	    "references\n", verb, p.deliveries, p.cutoff);
	buf_free(&names);
	return ret == 0 ? 0 : 1;
}

static const struct subcommand {
	const char	*name;
	int		 options;	/* O_* it takes */
	int		 min_args, max_args;	/* -1: no limit */
	const char	*args;		/* for the error message */
	int		(*run)(const struct config *,
			    const struct ledger_opts *);
} subcommands[] = {
	{ "migrate", 0, 0, 0, "no arguments", cmd_migrate },
	{ "show", O_JSON, 1, 1, "one DOCUMENT_ID", cmd_show },
	{ "stats", O_SINCE | O_JSON, 0, 0, "no arguments", cmd_stats },
	{ "reset", O_DRY_RUN | O_FORCE, 1, -1, "DOCUMENT_ID ...", cmd_reset },
	{ "purge", O_OLDER | O_STATUS | O_DRY_RUN | O_BATCH, 0, 0,
	    "no arguments", cmd_purge },
};

static const char *const option_names[] = {
	"--json", "--since", "--dry-run", "--force", "--older-than",
	"--status", "--batch"
};

static int usage_error(const char *, ...)
    __attribute__((format(printf, 1, 2)));

/* "stagerelay: ledger<what>", then the usage lines. */
static int
usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("stagerelay: ledger", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fputs(usage_lines, stderr);
	return EXIT_USAGE;
}

int
ledgercmd_main(struct cli *cli, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "verbose",	no_argument,		NULL, 'v' },
		{ "json",	no_argument,		NULL, 'J' },
		{ "since",	required_argument,	NULL, 'S' },
		{ "dry-run",	no_argument,		NULL, 'n' },
		{ "force",	no_argument,		NULL, 'f' },
		{ "older-than",	required_argument,	NULL, 'O' },
		{ "status",	required_argument,	NULL, 's' },
		{ "batch",	required_argument,	NULL, 'B' },
		{ NULL,		0,			NULL, 0 }
	};
	const struct subcommand *sc = NULL;
	struct ledger_opts o;
	struct config cfg;
	char *end;
	int ch, code;

	memset(&o, 0, sizeof(o));
	optind = 0;	/* glibc: 0 starts a fresh scan */
	while ((ch = getopt_long(argc, argv, "c:v", longopts, NULL)) != -1) {
		if (cli_option(cli, ch, optarg))
			continue;
		switch (ch) {
		case 'J':
			o.given |= O_JSON;
			break;
		case 'S':
			if (parse_decimal(optarg, &o.since_hours) == -1 ||
			    o.since_hours > MAX_HOURS)
				return usage_error(": --since: expected a "
				    "number of hours (0 = all time), got "
				    "\"%s\"", optarg);
			o.given |= O_SINCE;
			break;
		case 'n':
			o.given |= O_DRY_RUN;
			break;
		case 'f':
			o.given |= O_FORCE;
			break;
		case 'O':
			if (parse_decimal(optarg, &o.older_days) == -1 ||
			    o.older_days <= 0 || o.older_days > MAX_DAYS)
				return usage_error(": --older-than: expected a "
				    "positive number of days, got \"%s\"",
				    optarg);
			o.given |= O_OLDER;
			break;
		case 's':
			if (add_statuses(&o, optarg) == -1) {
				fputs(usage_lines, stderr);
				return EXIT_USAGE;
			}
			o.given |= O_STATUS;
			break;
		case 'B':
			o.batch = strtol(optarg, &end, 10);
			if (!isdigit((unsigned char)*optarg) || *end != '\0' ||
			    o.batch < 1 || o.batch > 1000000)
				return usage_error(": --batch: expected a "
				    "number of rows 1..1000000, got \"%s\"",
				    optarg);
			o.given |= O_BATCH;
			break;
		default:
			fputs(usage_lines, stderr);
			return EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		return usage_error(": expected a subcommand");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]);
	    i++)
		if (strcmp(argv[0], subcommands[i].name) == 0)
			sc = &subcommands[i];
	if (sc == NULL)
		return usage_error(": unknown subcommand \"%s\"",
		    argv[0]);
	for (size_t i = 0; i < sizeof(option_names) / sizeof(option_names[0]);
	    i++)
		if ((o.given & (1 << i)) && !(sc->options & (1 << i)))
			return usage_error(" %s: %s does not go with it",
			    sc->name, option_names[i]);
	o.args = argv + 1;
	o.nargs = argc - 1;
	if (o.nargs < sc->min_args ||
	    (sc->max_args >= 0 && o.nargs > sc->max_args))
		return usage_error(" %s: expected %s", sc->name, sc->args);
	if ((sc->options & O_OLDER) && !(o.given & O_OLDER))
		return usage_error(" %s: --older-than DAYS is required",
		    sc->name);

	if ((code = cli_load(cli, &cfg, "ledger")) != 0)
		return code;
	code = sc->run(&cfg, &o);
	config_free(&cfg);
	return code;
}
