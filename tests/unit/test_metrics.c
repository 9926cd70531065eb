/* test_metrics.c: counters and their Prometheus exposition, DESIGN.md §7. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "unit.h"

#include "metrics.h"
#include "util.h"

static struct metrics_shm *shm;

static void
shm_setup(void)
{
	shm = xcalloc(1, sizeof(*shm));
	shm->group.lag = -1;
	shm->group.pending = -1;
	shm->group.stream_length = -1;
	shm->group.dead_letter_length = -1;
}

static void
shm_teardown(void)
{
	free(shm);
	shm = NULL;
}

/* ---- a strict validator for the text format 0.0.4 ---------------------- */

#define V_MAX_FAMILIES	64
#define V_MAX_SERIES	4096

struct v_family {
	char	 name[128];
	char	 type[16];
	bool	 help;
	bool	 typed;
	bool	 closed;	/* another family's lines came after it */
};

struct validator {
	struct v_family	 fam[V_MAX_FAMILIES];
	size_t		 nfam;
	struct v_family	*cur;		/* the family whose lines come now */
	char		*series[V_MAX_SERIES];
	size_t		 nseries;
	/* The histogram being read: its buckets so far. */
	double		 last_le;
	double		 last_bucket;
	bool		 inf_seen;
	double		 inf_count;
	bool		 count_seen;
	char		 err[512];
};

static bool
v_fail(struct validator *v, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool
v_fail(struct validator *v, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	n = snprintf(v->err, sizeof(v->err), "line %d: ", line);
	va_start(ap, fmt);
	vsnprintf(v->err + n, sizeof(v->err) - (size_t)n, fmt, ap);
	va_end(ap);
	return false;
}

static bool
name_start(int c)
{
	return isalpha(c) || c == '_' || c == ':';
}

static bool
name_char(int c)
{
	return isalnum(c) || c == '_' || c == ':';
}

static size_t
scan_name(const char *p)
{
	size_t n = 0;

	if (!name_start((unsigned char)p[0]))
		return 0;
	while (name_char((unsigned char)p[n]))
		n++;
	return n;
}

static struct v_family *
v_find(struct validator *v, const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < v->nfam; i++)
		if (strlen(v->fam[i].name) == len &&
		    strncmp(v->fam[i].name, name, len) == 0)
			return &v->fam[i];
	return NULL;
}

static bool
ends_with(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && strncmp(s + len - n, suffix, n) == 0;
}

/* Value: a float strtod reads whole, or +Inf, -Inf, NaN. */
static bool
parse_value(const char *s, double *out)
{
	char *end;

	if (strcmp(s, "+Inf") == 0) {
		*out = INFINITY;
		return true;
	}
	if (strcmp(s, "-Inf") == 0) {
		*out = -INFINITY;
		return true;
	}
	if (strcmp(s, "NaN") == 0) {
		*out = NAN;
		return true;
	}
	if (*s == '\0' || isspace((unsigned char)*s))
		return false;
	/* strtod would take "inf", "nan" and hex: the format does not. */
	if (strspn(s, "0123456789+-.eE") != strlen(s))
		return false;
	*out = strtod(s, &end);
	return *end == '\0';
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
cmp_pair(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Ends the histogram being read, if any: its +Inf bucket and _count. */
static bool
v_close_histogram(struct validator *v, int line)
{
	if (v->cur == NULL || strcmp(v->cur->type, "histogram") != 0)
		return true;
	if (!v->inf_seen)
		return v_fail(v, line, "%s: no le=\"+Inf\" bucket",
		    v->cur->name);
	if (!v->count_seen)
		return v_fail(v, line, "%s: no _count", v->cur->name);
	return true;
}

static bool
v_comment(struct validator *v, int line, const char *l)
{
	struct v_family *f;
	bool help;
	size_t n;
	const char *name, *rest;

	if (strncmp(l, "# HELP ", 7) == 0)
		help = true;
	else if (strncmp(l, "# TYPE ", 7) == 0)
		help = false;
	else
		return v_fail(v, line, "stray comment");
	name = l + 7;
	if ((n = scan_name(name)) == 0 || name[n] != ' ')
		return v_fail(v, line, "bad metric name");
	rest = name + n + 1;
	if ((f = v_find(v, name, n)) == NULL) {
		if (v->nfam == V_MAX_FAMILIES)
			return v_fail(v, line, "too many families");
		f = &v->fam[v->nfam++];
		memcpy(f->name, name, n);
		f->name[n] = '\0';
	}
	if (f != v->cur) {
		if (!v_close_histogram(v, line))
			return false;
		if (v->cur != NULL)
			v->cur->closed = true;
		if (f->closed)
			return v_fail(v, line, "%s: lines not together",
			    f->name);
		v->cur = f;
		v->last_le = -INFINITY;
		v->last_bucket = 0;
		v->inf_seen = v->count_seen = false;
	}
	if (help) {
		if (f->help)
			return v_fail(v, line, "%s: HELP repeated", f->name);
		if (f->typed)
			return v_fail(v, line, "%s: HELP after TYPE", f->name);
		if (*rest == '\0')
			return v_fail(v, line, "%s: empty HELP", f->name);
		f->help = true;
		return true;
	}
	if (f->typed)
		return v_fail(v, line, "%s: TYPE repeated", f->name);
	if (!f->help)
		return v_fail(v, line, "%s: TYPE without HELP", f->name);
	if (strcmp(rest, "counter") != 0 && strcmp(rest, "gauge") != 0 &&
	    strcmp(rest, "histogram") != 0)
		return v_fail(v, line, "%s: type \"%s\"", f->name, rest);
	if (strcmp(rest, "counter") == 0 && !ends_with(f->name, n, "_total"))
		return v_fail(v, line, "counter %s lacks _total", f->name);
	strlcpy_s(f->type, rest, sizeof(f->type));
	f->typed = true;
	return true;
}

/*
 * name{label="value",...} value: the labels are checked and sorted into
 * key, the series' identity. le receives the le label's value, if any.
 */
static bool
v_labels(struct validator *v, int line, const char **pp, struct buf *key,
    char *le, size_t lelen)
{
	char pairs[16][256];
	const char *p = *pp;
	char *q;
	size_t n, i, npairs = 0;

	*le = '\0';
	if (*p != '{')
		return true;
	p++;
	while (*p != '}') {
		if (npairs == 16)
			return v_fail(v, line, "too many labels");
		if ((n = scan_name(p)) == 0 || memchr(p, ':', n) != NULL)
			return v_fail(v, line, "bad label name");
		if (n >= 128 || p[n] != '=' || p[n + 1] != '"')
			return v_fail(v, line, "bad label");
		q = pairs[npairs];
		memcpy(q, p, n + 2);
		q += n + 2;
		p += n + 2;
		for (; *p != '"'; p++) {
			if (*p == '\0' || *p == '\n')
				return v_fail(v, line, "unterminated value");
			if (q >= pairs[npairs] + sizeof(pairs[0]) - 3)
				return v_fail(v, line, "value too long");
			if (*p == '\\') {
				if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
					return v_fail(v, line, "bad escape");
				*q++ = *p++;
			}
			*q++ = *p;
		}
		*q++ = '"';
		*q = '\0';
		if (strncmp(pairs[npairs], "le=", 3) == 0)
			strlcpy_s(le, pairs[npairs] + 4, lelen);
		for (i = 0; i < npairs; i++)
			if (strncmp(pairs[i], pairs[npairs], n + 1) == 0)
				return v_fail(v, line, "label repeated");
		npairs++;
		p++;
		if (*p == ',')
			p++;
		else if (*p != '}')
			return v_fail(v, line, "bad label separator");
	}
	*pp = p + 1;
	qsort(pairs, npairs, sizeof(pairs[0]), cmp_pair);
	buf_putc(key, '{');
	for (i = 0; i < npairs; i++) {
		if (i > 0)
			buf_putc(key, ',');
		buf_puts(key, pairs[i]);
	}
	buf_putc(key, '}');
	if (le[0] != '\0')
		le[strlen(le) - 1] = '\0';	/* the closing quote */
	return true;
}

static bool
v_sample(struct validator *v, int line, const char *l)
{
	struct v_family *f = v->cur;
	struct buf key;
	char le[64];
	const char *p = l, *suffix = "";
	double value, bound;
	size_t n, flen;
	bool ok;

	if ((n = scan_name(p)) == 0)
		return v_fail(v, line, "bad sample name");
	if (f == NULL || !f->typed)
		return v_fail(v, line, "sample before HELP and TYPE");
	flen = strlen(f->name);
	if (strcmp(f->type, "histogram") == 0) {
		if (n > flen && strncmp(p, f->name, flen) == 0)
			suffix = p + flen;
		if (strncmp(suffix, "_bucket", 7) == 0 && n == flen + 7)
			suffix = "_bucket";
		else if (strncmp(suffix, "_sum", 4) == 0 && n == flen + 4)
			suffix = "_sum";
		else if (strncmp(suffix, "_count", 6) == 0 && n == flen + 6)
			suffix = "_count";
		else
			return v_fail(v, line, "sample not of %s", f->name);
	} else if (n != flen || strncmp(p, f->name, n) != 0)
		return v_fail(v, line, "sample not of %s", f->name);

	buf_init(&key);
	buf_append(&key, p, n);
	p += n;
	ok = v_labels(v, line, &p, &key, le, sizeof(le));
	if (ok && (*p != ' ' || p[1] == ' '))
		ok = v_fail(v, line, "want one blank before the value");
	if (ok && !parse_value(p + 1, &value))
		ok = v_fail(v, line, "bad value \"%s\"", p + 1);
	if (ok && v->nseries == V_MAX_SERIES)
		ok = v_fail(v, line, "too many series");
	if (!ok) {
		buf_free(&key);
		return false;
	}
	v->series[v->nseries++] = buf_steal(&key);

	if (strcmp(f->type, "counter") == 0 && !(value >= 0))
		return v_fail(v, line, "negative counter");
	if (strcmp(suffix, "_bucket") == 0) {
		if (le[0] == '\0')
			return v_fail(v, line, "bucket without le");
		if (v->inf_seen)
			return v_fail(v, line, "bucket after le=\"+Inf\"");
		if (!parse_value(le, &bound))
			return v_fail(v, line, "bad le \"%s\"", le);
		if (!(bound > v->last_le))
			return v_fail(v, line, "le not increasing");
		if (value < v->last_bucket)
			return v_fail(v, line, "buckets not cumulative");
		v->last_le = bound;
		v->last_bucket = value;
		if (isinf(bound)) {
			v->inf_seen = true;
			v->inf_count = value;
		}
	} else if (le[0] != '\0')
		return v_fail(v, line, "le outside a bucket");
	if (strcmp(suffix, "_count") == 0) {
		if (!v->inf_seen)
			return v_fail(v, line, "_count before le=\"+Inf\"");
		if (value != v->inf_count)
			return v_fail(v, line, "_count %g != +Inf bucket %g",
			    value, v->inf_count);
		v->count_seen = true;
	}
	return true;
}

/* Checks a whole exposition; on failure says why in err. */
static bool
validate(const char *text, char *err, size_t errlen)
{
	struct validator *v = xcalloc(1, sizeof(*v));
	const char *l = text, *nl;
	char *line;
	int lineno = 0;
	bool ok = true;
	size_t i;

	if (*text == '\0' || text[strlen(text) - 1] != '\n') {
		ok = v_fail(v, 0, "does not end in a newline");
		l = "";
	}
	while (ok && *l != '\0') {
		nl = strchr(l, '\n');
		line = xstrndup(l, (size_t)(nl - l));
		lineno++;
		if (*line == '\0')
			ok = v_fail(v, lineno, "empty line");
		else if (*line == '#')
			ok = v_comment(v, lineno, line);
		else
			ok = v_sample(v, lineno, line);
		free(line);
		l = nl + 1;
	}
	if (ok)
		ok = v_close_histogram(v, lineno);
	for (i = 0; ok && i < v->nfam; i++)
		if (!v->fam[i].typed)
			ok = v_fail(v, lineno, "%s: HELP without TYPE",
			    v->fam[i].name);
	if (ok && v->nseries > 1) {
		qsort(v->series, v->nseries, sizeof(char *), cmp_str);
		for (i = 1; ok && i < v->nseries; i++)
			if (strcmp(v->series[i - 1], v->series[i]) == 0)
				ok = v_fail(v, lineno, "series %s repeated",
				    v->series[i]);
	}
	strlcpy_s(err, ok ? "" : v->err, errlen);
	for (i = 0; i < v->nseries; i++)
		free(v->series[i]);
	free(v);
	return ok;
}

/* ---- helpers ----------------------------------------------------------- */

static char *
render(int nslots, const char *version)
{
	struct buf b;
	char err[512];

	buf_init(&b);
	metrics_render(shm, nslots, version, &b);
	ck_assert_msg(validate(b.data, err, sizeof(err)), "%s\n%s", err,
	    b.data);
	return buf_steal(&b);
}

/* The value of a series written exactly as rendered; NAN when absent. */
static double
value_of(const char *text, const char *series)
{
	size_t n = strlen(series);
	const char *p = text;

	while (p != NULL && *p != '\0') {
		if (strncmp(p, series, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		if ((p = strchr(p, '\n')) != NULL)
			p++;
	}
	return NAN;
}

static void
expect_value(const char *text, const char *series, double want)
{
	double got = value_of(text, series);

	ck_assert_msg(got == want, "%s: got %g, want %g", series, got, want);
}

/* Sums of doubles added in another order differ in the last bits. */
static void
expect_near(const char *text, const char *series, double want)
{
	double got = value_of(text, series);

	ck_assert_msg(fabs(got - want) < 1e-9, "%s: got %.17g, want %.17g",
	    series, got, want);
}

static void
expect_absent(const char *text, const char *series)
{
	ck_assert_msg(isnan(value_of(text, series)), "%s present", series);
}

/* ---- histograms -------------------------------------------------------- */

START_TEST(test_bounds)
{
	static const double want[METRICS_BUCKETS] = {
		0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
		1, 2.5, 5, 10, 30
	};
	size_t i;

	for (i = 0; i < METRICS_BUCKETS; i++)
		ck_assert(metrics_bucket_bounds[i] == want[i]);
}
END_TEST

/* Observes v into a fresh histogram; returns the one bucket it hit. */
static size_t
bucket_of(double v)
{
	struct metrics_histogram h;
	size_t i, hit = SIZE_MAX;

	memset(&h, 0, sizeof(h));
	metrics_observe(&h, v);
	ck_assert_uint_eq(h.count, 1);
	for (i = 0; i <= METRICS_BUCKETS; i++) {
		if (h.bucket[i] == 0)
			continue;
		ck_assert_msg(hit == SIZE_MAX, "%g: two buckets", v);
		ck_assert_uint_eq(h.bucket[i], 1);
		hit = i;
	}
	ck_assert_msg(hit != SIZE_MAX, "%g: no bucket", v);
	return hit;
}

START_TEST(test_observe_buckets)
{
	size_t i;

	/* On a bound: that bound's bucket (le is "less or equal"). */
	for (i = 0; i < METRICS_BUCKETS; i++)
		ck_assert_uint_eq(bucket_of(metrics_bucket_bounds[i]), i);
	/* Just above a bound: the next one. */
	for (i = 0; i < METRICS_BUCKETS; i++)
		ck_assert_uint_eq(bucket_of(nextafter(metrics_bucket_bounds[i],
		    INFINITY)), i + 1);
	ck_assert_uint_eq(bucket_of(0.003), 2);
	ck_assert_uint_eq(bucket_of(0.7), 9);
	ck_assert_uint_eq(bucket_of(30.5), METRICS_BUCKETS);
	ck_assert_uint_eq(bucket_of(86400), METRICS_BUCKETS);
	ck_assert_uint_eq(bucket_of(INFINITY), METRICS_BUCKETS);
	ck_assert_uint_eq(bucket_of(0), 0);
	ck_assert_uint_eq(bucket_of(-1), 0);
	ck_assert_uint_eq(bucket_of(-INFINITY), 0);
	ck_assert_uint_eq(bucket_of(NAN), 0);
}
END_TEST

START_TEST(test_observe_sum)
{
	struct metrics_histogram h;

	memset(&h, 0, sizeof(h));
	metrics_observe(&h, 0.5);
	metrics_observe(&h, 2);
	metrics_observe(&h, -3);	/* as 0 */
	metrics_observe(&h, NAN);	/* as 0 */
	metrics_observe(&h, 40);
	ck_assert_uint_eq(h.count, 5);
	ck_assert(h.sum == 42.5);
	ck_assert_uint_eq(h.bucket[0], 2);
	ck_assert_uint_eq(h.bucket[8], 1);
	ck_assert_uint_eq(h.bucket[10], 1);
	ck_assert_uint_eq(h.bucket[METRICS_BUCKETS], 1);
	/* +Inf is counted; the sum stays finite. */
	metrics_observe(&h, INFINITY);
	ck_assert_uint_eq(h.count, 6);
	ck_assert(h.sum == 42.5);
}
END_TEST

START_TEST(test_histogram_rendered)
{
	static const char *const le[METRICS_BUCKETS + 1] = {
		"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
		"0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"
	};
	static const double obs[] = { 0.001, 0.002, 0.3, 1, 1, 7, 45, 0 };
	char series[128], *out;
	double prev = 0, v;
	size_t i;

	/* Spread over two slots; slot 3 is past nslots and ignored. */
	for (i = 0; i < sizeof(obs) / sizeof(obs[0]); i++)
		metrics_observe(&shm->slot[1 + i % 2].trigger_seconds, obs[i]);
	metrics_observe(&shm->slot[3].trigger_seconds, 1000);
	metrics_observe(&shm->slot[1].latency_seconds, 0.1);
	out = render(2, "1.0");

	for (i = 0; i <= METRICS_BUCKETS; i++) {
		snprintf(series, sizeof(series),
		    "stagerelay_trigger_duration_seconds_bucket{le=\"%s\"}",
		    le[i]);
		v = value_of(out, series);
		ck_assert_msg(!isnan(v), "%s missing", series);
		ck_assert(v >= prev);
		prev = v;
	}
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"0.001\"}", 2);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"0.0025\"}", 3);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"0.25\"}", 3);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"1\"}", 6);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"30\"}", 7);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"+Inf\"}", 8);
	expect_value(out, "stagerelay_trigger_duration_seconds_count", 8);
	expect_near(out, "stagerelay_trigger_duration_seconds_sum",
	    0.001 + 0.002 + 0.3 + 1 + 1 + 7 + 45);
	expect_value(out,
	    "stagerelay_event_latency_seconds_bucket{le=\"0.05\"}", 0);
	expect_value(out,
	    "stagerelay_event_latency_seconds_bucket{le=\"0.1\"}", 1);
	expect_value(out, "stagerelay_event_latency_seconds_count", 1);
	expect_value(out, "stagerelay_event_latency_seconds_sum", 0.1);
	free(out);
}
END_TEST

/* ---- label tables ------------------------------------------------------ */

START_TEST(test_tables)
{
	char long1[300], long2[300], name[32];
	size_t i, ix;

	ck_assert_uint_eq(metrics_type_index(shm, "a"), 0);
	ck_assert_uint_eq(metrics_add_type(shm, "com.x.a"), 1);
	ck_assert_uint_eq(shm->ntypes, 2);
	ck_assert_str_eq(shm->types[0], "other");
	ck_assert_uint_eq(metrics_add_type(shm, "com.x.b"), 2);
	ck_assert_uint_eq(metrics_add_type(shm, "com.x.a"), 1);	/* dedupe */
	ck_assert_uint_eq(shm->ntypes, 3);
	ck_assert_uint_eq(metrics_add_type(shm, "other"), 0);
	ck_assert_uint_eq(metrics_add_type(shm, ""), 0);
	ck_assert_uint_eq(metrics_add_type(shm, NULL), 0);
	ck_assert_uint_eq(shm->ntypes, 3);
	ck_assert_uint_eq(metrics_type_index(shm, "com.x.a"), 1);
	ck_assert_uint_eq(metrics_type_index(shm, "com.x.b"), 2);
	ck_assert_uint_eq(metrics_type_index(shm, "com.x.c"), 0);
	ck_assert_uint_eq(metrics_type_index(shm, "com.x."), 0);
	ck_assert_uint_eq(metrics_type_index(shm, "com.x.ab"), 0);
	ck_assert_uint_eq(metrics_type_index(shm, "other"), 0);
	ck_assert_uint_eq(metrics_type_index(shm, NULL), 0);

	/* Long names are kept truncated and found by what was kept. */
	memset(long1, 'x', sizeof(long1) - 1);
	long1[sizeof(long1) - 1] = '\0';
	memcpy(long2, long1, sizeof(long2));
	long2[200] = 'y';
	ix = metrics_add_type(shm, long1);
	ck_assert_uint_eq(ix, 3);
	ck_assert_uint_eq(strlen(shm->types[ix]), METRICS_NAME_MAX - 1);
	ck_assert_uint_eq(metrics_type_index(shm, long1), ix);
	ck_assert_uint_eq(metrics_add_type(shm, long2), ix);

	/* Full: new names go to "other", old ones are still found. */
	for (i = shm->ntypes; i < METRICS_TYPES; i++) {
		snprintf(name, sizeof(name), "type-%zu", i);
		ck_assert_uint_eq(metrics_add_type(shm, name), i);
	}
	ck_assert_uint_eq(shm->ntypes, METRICS_TYPES);
	ck_assert_uint_eq(metrics_add_type(shm, "one-too-many"), 0);
	ck_assert_uint_eq(shm->ntypes, METRICS_TYPES);
	ck_assert_uint_eq(metrics_type_index(shm, "one-too-many"), 0);
	ck_assert_uint_eq(metrics_type_index(shm, "type-31"), 31);
	ck_assert_uint_eq(metrics_type_index(shm, "com.x.b"), 2);

	/* Routes: the same rules, a smaller table. */
	ck_assert_uint_eq(metrics_route_index(shm, "r"), 0);
	ck_assert_uint_eq(metrics_add_route(shm, "document"), 1);
	ck_assert_str_eq(shm->routes[0], "other");
	ck_assert_uint_eq(metrics_add_route(shm, "document"), 1);
	for (i = shm->nroutes; i < METRICS_ROUTES; i++) {
		snprintf(name, sizeof(name), "route-%zu", i);
		ck_assert_uint_eq(metrics_add_route(shm, name), i);
	}
	ck_assert_uint_eq(metrics_add_route(shm, "late"), 0);
	ck_assert_uint_eq(shm->nroutes, METRICS_ROUTES);
	ck_assert_uint_eq(metrics_route_index(shm, "document"), 1);
	ck_assert_uint_eq(metrics_route_index(shm, "route-15"), 15);
	ck_assert_uint_eq(metrics_route_index(shm, "late"), 0);
}
END_TEST

START_TEST(test_events_out_of_table)
{
	char *out;
	size_t o;

	metrics_add_type(shm, "com.x.a");
	metrics_event(&shm->slot[1], MO_TRIGGERED, 1);
	metrics_event(&shm->slot[2], MO_TRIGGERED, 1);
	metrics_event(&shm->slot[2], MO_TRIGGERED, 0);
	/* An index past the table is shown as "other", not as a new type. */
	metrics_event(&shm->slot[2], MO_DEAD, 7);
	metrics_event(&shm->slot[2], MO_DEAD, METRICS_TYPES + 3);
	metrics_event(&shm->slot[1], MO_COUNT, 1);	/* ignored */
	out = render(2, "1.0");
	expect_value(out, "stagerelay_events_total{outcome=\"triggered\","
	    "type=\"com.x.a\"}", 2);
	expect_value(out, "stagerelay_events_total{outcome=\"triggered\","
	    "type=\"other\"}", 1);
	expect_value(out, "stagerelay_events_total{outcome=\"dead\","
	    "type=\"other\"}", 2);
	expect_absent(out, "stagerelay_events_total{outcome=\"dead\","
	    "type=\"com.x.a\"}");
	/* Every outcome appears, at 0 under "other" when nothing counted. */
	for (o = 0; o < MO_COUNT; o++) {
		char series[128];

		if (o == MO_TRIGGERED || o == MO_DEAD)
			continue;
		snprintf(series, sizeof(series), "stagerelay_events_total{"
		    "outcome=\"%s\",type=\"other\"}", metrics_outcome_name(o));
		expect_value(out, series, 0);
	}
	free(out);
}
END_TEST

/* ---- request codes ----------------------------------------------------- */

START_TEST(test_request_codes)
{
	const struct metrics_code *c;
	struct metrics_slot *s;
	char series[128], *out;
	long code;
	size_t i;

	metrics_add_route(shm, "document");
	s = &shm->slot[1];
	metrics_request(s, 1, 200);
	metrics_request(s, 1, 200);
	metrics_request(s, 1, 0);
	metrics_request(s, 1, 503);
	c = s->requests[1];
	ck_assert_int_eq(c[0].code, 200);
	ck_assert_uint_eq(c[0].n, 2);
	ck_assert_int_eq(c[1].code, 0);
	ck_assert_uint_eq(c[1].n, 1);
	ck_assert_int_eq(c[2].code, 503);
	ck_assert_uint_eq(c[2].n, 1);
	ck_assert_uint_eq(c[3].n, 0);

	/* Fill every entry but the last with new codes 400, 401, ... */
	for (code = 400; code < 400 + METRICS_CODES - 4; code++)
		metrics_request(s, 1, code);
	for (i = 0; i < METRICS_CODES - 1; i++)
		ck_assert_uint_ne(c[i].n, 0);
	ck_assert_uint_eq(c[METRICS_CODES - 1].n, 0);
	/* Then new codes, and nonsense, count as "other"; known ones not. */
	metrics_request(s, 1, 418);
	metrics_request(s, 1, 599);
	metrics_request(s, 1, -1);
	metrics_request(s, 1, 100000);
	metrics_request(s, 1, 200);
	metrics_request(s, 1, 0);
	ck_assert_int_eq(c[METRICS_CODES - 1].code, -1);
	ck_assert_uint_eq(c[METRICS_CODES - 1].n, 4);
	ck_assert_uint_eq(c[0].n, 3);
	ck_assert_uint_eq(c[1].n, 2);

	/* Another slot saw the codes in another order; the sums still meet. */
	metrics_request(&shm->slot[2], 1, 503);
	metrics_request(&shm->slot[2], 1, 200);
	metrics_request(&shm->slot[2], 1, 418);	/* a free entry here */
	metrics_request(&shm->slot[2], 0, 200);
	metrics_request(&shm->slot[2], METRICS_ROUTES + 1, 200);
	/* A route index past the table is shown as "other". */
	metrics_request(&shm->slot[2], 9, 204);

	out = render(2, "1.0");
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"200\"}", 4);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"none\"}", 2);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"503\"}", 2);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"418\"}", 1);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"other\"}", 4);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"other\",code=\"200\"}", 2);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"other\",code=\"204\"}", 1);
	for (code = 400; code < 400 + METRICS_CODES - 4; code++) {
		snprintf(series, sizeof(series), "stagerelay_trigger_requests_"
		    "total{route=\"document\",code=\"%ld\"}", code);
		expect_value(out, series, 1);
	}
	/* Zeros are left out. */
	expect_absent(out, "stagerelay_trigger_requests_total{"
	    "route=\"other\",code=\"none\"}");
	expect_absent(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"204\"}");
	free(out);
}
END_TEST

/* ---- label escaping ---------------------------------------------------- */

static void
expect_escape(const char *in, const char *want)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "");
	metrics_label_escape(&b, in);
	ck_assert_str_eq(b.data, want);
	buf_free(&b);
}

START_TEST(test_label_escape)
{
	expect_escape("plain", "plain");
	expect_escape("", "");
	expect_escape("a\\b", "a\\\\b");
	expect_escape("say \"hi\"", "say \\\"hi\\\"");
	expect_escape("two\nlines\n", "two\\nlines\\n");
	expect_escape("\\\"\n", "\\\\\\\"\\n");
	/* Everything else passes as it is: tabs, CR, braces, UTF-8. */
	expect_escape("t\tr\r{x=\"}", "t\tr\r{x=\\\"}");
	expect_escape("caf\xc3\xa9 \xe2\x86\x92", "caf\xc3\xa9 \xe2\x86\x92");
}
END_TEST

/* ---- dead-letter reasons ----------------------------------------------- */

START_TEST(test_reason_of)
{
	ck_assert_int_eq(metrics_reason_of("invalid_event"), MR_INVALID_EVENT);
	ck_assert_int_eq(metrics_reason_of("invalid_json"), MR_INVALID_EVENT);
	ck_assert_int_eq(metrics_reason_of("invalid_specversion"),
	    MR_INVALID_EVENT);
	ck_assert_int_eq(metrics_reason_of("invalid"), MR_INVALID_EVENT);
	ck_assert_int_eq(metrics_reason_of("too_large"), MR_INVALID_EVENT);
	ck_assert_int_eq(metrics_reason_of("render_error"), MR_RENDER_ERROR);
	ck_assert_int_eq(metrics_reason_of("http_error"), MR_HTTP_ERROR);
	ck_assert_int_eq(metrics_reason_of("rejected"), MR_REJECTED);
	ck_assert_int_eq(metrics_reason_of("retries_exhausted"),
	    MR_RETRIES_EXHAUSTED);
	ck_assert_int_eq(metrics_reason_of("poison"), MR_POISON);
	ck_assert_int_eq(metrics_reason_of("lost"), MR_LOST);
	ck_assert_int_eq(metrics_reason_of("other"), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of("whatever"), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of(""), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of(NULL), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of("Invalid_event"), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of("too_large_x"), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of("poisoned"), MR_OTHER);
	ck_assert_int_eq(metrics_reason_of("lo"), MR_OTHER);

	ck_assert_str_eq(metrics_reason_name(MR_INVALID_EVENT),
	    "invalid_event");
	ck_assert_str_eq(metrics_reason_name(MR_RENDER_ERROR), "render_error");
	ck_assert_str_eq(metrics_reason_name(MR_HTTP_ERROR), "http_error");
	ck_assert_str_eq(metrics_reason_name(MR_REJECTED), "rejected");
	ck_assert_str_eq(metrics_reason_name(MR_RETRIES_EXHAUSTED),
	    "retries_exhausted");
	ck_assert_str_eq(metrics_reason_name(MR_POISON), "poison");
	ck_assert_str_eq(metrics_reason_name(MR_LOST), "lost");
	ck_assert_str_eq(metrics_reason_name(MR_OTHER), "other");

	ck_assert_str_eq(metrics_outcome_name(MO_TRIGGERED), "triggered");
	ck_assert_str_eq(metrics_outcome_name(MO_DUPLICATE), "duplicate");
	ck_assert_str_eq(metrics_outcome_name(MO_FILTERED), "filtered");
	ck_assert_str_eq(metrics_outcome_name(MO_INVALID), "invalid");
	ck_assert_str_eq(metrics_outcome_name(MO_DEAD), "dead");
	ck_assert_str_eq(metrics_outcome_name(MO_OBSERVED), "observed");
	ck_assert_str_eq(metrics_outcome_name(MO_EXPIRED), "expired");
	ck_assert_str_eq(metrics_outcome_name(MO_LOST), "lost");
}
END_TEST

/* ---- the whole exposition ---------------------------------------------- */

START_TEST(test_render_full)
{
	struct metrics_slot *s;
	size_t a, odd;
	char *out;
	int k;

	a = metrics_add_type(shm, "com.storytelling.cleaning.document.cleaned");
	odd = metrics_add_type(shm, "odd\\ \"type\"\nx");
	metrics_add_route(shm, "document");
	metrics_add_route(shm, "job \"x\"");

	for (k = 1; k <= 3; k++) {
		s = &shm->slot[k];
		metrics_event(s, MO_TRIGGERED, a);
		metrics_event(s, MO_DUPLICATE, odd);
		metrics_request(s, 1, 202);
		metrics_request(s, 2, k == 2 ? 0 : 500);
		metrics_observe(&s->trigger_seconds, 0.02 * k);
		metrics_observe(&s->latency_seconds, 0.4 * k);
		metrics_dead_letter(s, "invalid_json");
		metrics_dead_letter(s, k == 3 ? "poison" : "something_new");
		s->retries = (uint64_t)k;
		s->reclaimed = 10;
		s->redis_reconnects = 1;
		s->postgres_reconnects = (uint64_t)(k - 1);
		s->last_event_ms = 1767630428000LL + k * 1000 + 268;
		s->circuit = k - 1;
		s->alive = k != 2;
	}
	/* Slot 4 is past nslots: none of it shows. */
	s = &shm->slot[4];
	metrics_event(s, MO_TRIGGERED, a);
	metrics_request(s, 1, 202);
	s->retries = 1000;
	s->alive = 1;
	s->last_event_ms = 1867630428000LL;
	s->circuit = 1;

	shm->group.lag = 5;
	shm->group.pending = 0;
	shm->group.stream_length = 1200;
	shm->group.dead_letter_length = -1;
	shm->worker_restarts = 2;
	shm->workers_wanted = 4;

	out = render(3, "0.9.1 \"beta\"");
	expect_value(out, "stagerelay_events_total{outcome=\"triggered\","
	    "type=\"com.storytelling.cleaning.document.cleaned\"}", 3);
	expect_value(out, "stagerelay_events_total{outcome=\"duplicate\","
	    "type=\"odd\\\\ \\\"type\\\"\\nx\"}", 3);
	expect_absent(out, "stagerelay_events_total{outcome=\"triggered\","
	    "type=\"other\"}");
	expect_value(out, "stagerelay_events_total{outcome=\"lost\","
	    "type=\"other\"}", 0);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"document\",code=\"202\"}", 3);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"job \\\"x\\\"\",code=\"500\"}", 2);
	expect_value(out, "stagerelay_trigger_requests_total{"
	    "route=\"job \\\"x\\\"\",code=\"none\"}", 1);
	expect_value(out, "stagerelay_trigger_duration_seconds_count", 3);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"0.025\"}", 1);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"0.05\"}", 2);
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"0.1\"}", 3);
	expect_near(out, "stagerelay_trigger_duration_seconds_sum", 0.12);
	expect_value(out, "stagerelay_event_latency_seconds_bucket{le=\"1\"}",
	    2);
	expect_value(out, "stagerelay_event_latency_seconds_count", 3);
	expect_near(out, "stagerelay_event_latency_seconds_sum", 2.4);
	expect_value(out, "stagerelay_retries_total", 6);
	expect_value(out,
	    "stagerelay_dead_letters_total{reason=\"invalid_event\"}", 3);
	expect_value(out, "stagerelay_dead_letters_total{reason=\"other\"}",
	    2);
	expect_value(out, "stagerelay_dead_letters_total{reason=\"poison\"}",
	    1);
	expect_value(out, "stagerelay_dead_letters_total{reason=\"lost\"}", 0);
	expect_value(out,
	    "stagerelay_dead_letters_total{reason=\"retries_exhausted\"}", 0);
	expect_value(out, "stagerelay_reclaimed_entries_total", 30);
	expect_value(out, "stagerelay_reconnects_total{service=\"redis\"}", 3);
	expect_value(out,
	    "stagerelay_reconnects_total{service=\"postgresql\"}", 3);
	expect_value(out, "stagerelay_consumer_group_lag", 5);
	expect_value(out, "stagerelay_consumer_group_pending", 0);
	expect_value(out, "stagerelay_stream_length", 1200);
	expect_absent(out, "stagerelay_dead_letter_stream_length");
	ck_assert_ptr_nonnull(strstr(out,
	    "# TYPE stagerelay_dead_letter_stream_length gauge\n"));
	expect_value(out, "stagerelay_workers_alive", 2);
	expect_value(out, "stagerelay_workers_wanted", 4);
	expect_value(out, "stagerelay_worker_restarts_total", 2);
	expect_value(out, "stagerelay_circuit_state{worker=\"1\"}", 0);
	/* Worker 2 is not running: no circuit to report. */
	expect_absent(out, "stagerelay_circuit_state{worker=\"2\"}");
	expect_value(out, "stagerelay_circuit_state{worker=\"3\"}", 2);
	expect_absent(out, "stagerelay_circuit_state{worker=\"4\"}");
	expect_absent(out, "stagerelay_circuit_state{worker=\"0\"}");
	expect_value(out, "stagerelay_last_event_timestamp_seconds",
	    1767630431.268);
	ck_assert_ptr_nonnull(strstr(out,
	    "\nstagerelay_last_event_timestamp_seconds 1767630431.268\n"));
	expect_value(out,
	    "stagerelay_build_info{version=\"0.9.1 \\\"beta\\\"\"}", 1);
	/* Integers stay integers; le bounds are short. */
	ck_assert_ptr_nonnull(strstr(out, "\nstagerelay_retries_total 6\n"));
	ck_assert_ptr_nonnull(strstr(out, "{le=\"0.0025\"} "));
	ck_assert_ptr_nonnull(strstr(out, "{le=\"1\"} "));
	ck_assert_ptr_nonnull(strstr(out, "{le=\"30\"} "));
	ck_assert_ptr_null(strstr(out, "e+"));
	free(out);
}
END_TEST

START_TEST(test_render_empty)
{
	char *out;
	size_t o;

	/* No tables, no workers, nothing known: still a valid exposition. */
	out = render(0, NULL);
	for (o = 0; o < MO_COUNT; o++) {
		char series[128];

		snprintf(series, sizeof(series), "stagerelay_events_total{"
		    "outcome=\"%s\",type=\"other\"}", metrics_outcome_name(o));
		expect_value(out, series, 0);
	}
	ck_assert_ptr_null(strstr(out, "stagerelay_trigger_requests_total{"));
	expect_value(out,
	    "stagerelay_trigger_duration_seconds_bucket{le=\"+Inf\"}", 0);
	expect_value(out, "stagerelay_trigger_duration_seconds_sum", 0);
	expect_value(out, "stagerelay_trigger_duration_seconds_count", 0);
	expect_value(out, "stagerelay_workers_alive", 0);
	expect_absent(out, "stagerelay_consumer_group_lag");
	expect_absent(out, "stagerelay_last_event_timestamp_seconds");
	expect_value(out, "stagerelay_build_info{version=\"unknown\"}", 1);
	free(out);

	/* All 256 workers. */
	out = render(METRICS_SLOTS - 1, "x");
	expect_absent(out, "stagerelay_circuit_state{worker=\"256\"}");
	free(out);
}
END_TEST

/* The validator catches what it is there to catch. */
START_TEST(test_validator)
{
	static const struct {
		const char	*text;
		const char	*why;
	} bad[] = {
		{ "# HELP a_total x\n# TYPE a_total counter\na_total 1",
		    "newline" },
		{ "a_total 1\n", "before HELP" },
		{ "# TYPE a_total counter\na_total 1\n", "without HELP" },
		{ "# HELP a_total x\na_total 1\n", "before HELP and TYPE" },
		{ "# HELP a x\n# TYPE a counter\na 1\n", "lacks _total" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "# HELP a_total x\na_total 1\n", "HELP repeated" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "# TYPE a_total counter\n", "TYPE repeated" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total{k=\"1\"} 1\na_total{k=\"1\"} 2\n", "repeated" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total{k=\"1\",j=\"2\"} 1\na_total{j=\"2\",k=\"1\"} 2\n",
		    "repeated" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total{k=\"\\t\"} 1\n", "bad escape" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total{k=\"x} 1\n", "unterminated" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total  1\n", "one blank" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total 1.0.0\n", "bad value" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total inf\n", "bad value" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "a_total 1 1767630428\n", "bad value" },
		{ "# HELP a_total x\n# TYPE a_total counter\nb_total 1\n",
		    "not of" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "# HELP g x\n# TYPE g gauge\ng 1\na_total 1\n", "not of" },
		{ "# HELP a_total x\n# TYPE a_total counter\n"
		    "# HELP g x\n# TYPE g gauge\n# HELP a_total y\n",
		    "not together" },
		{ "# HELP g x\n# TYPE g summary\n", "type" },
		{ "# HELP g x\n# TYPE g gauge\n\ng 1\n", "empty line" },
		{ "# HELP g x\n", "without TYPE" },
		{ "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
		    "h_sum 1\nh_count 1\n", "+Inf" },
		{ "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
		    "h_bucket{le=\"+Inf\"} 1\nh_count 1\n", "cumulative" },
		{ "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\n"
		    "h_bucket{le=\"1\"} 1\n", "increasing" },
		{ "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
		    "h_bucket{le=\"+Inf\"} 2\nh_count 3\n", "_count" },
		{ "# HELP h x\n# TYPE h histogram\n"
		    "h_bucket{le=\"+Inf\"} 2\nh_sum 1\n", "no _count" },
		{ "# HELP h x\n# TYPE h histogram\nh 1\n", "not of" },
	};
	static const char good[] =
	    "# HELP a_total x y\n# TYPE a_total counter\n"
	    "a_total{k=\"a\\\\b\\\"c\\n\",j=\"\"} 1\na_total{k=\"2\"} 0\n"
	    "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\n"
	    "h_bucket{le=\"+Inf\"} 2\nh_sum 1.5e-3\nh_count 2\n"
	    "# HELP g x\n# TYPE g gauge\ng -1\n";
	char err[512];
	size_t i;

	ck_assert_msg(validate(good, err, sizeof(err)), "%s", err);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(!validate(bad[i].text, err, sizeof(err)),
		    "accepted:\n%s", bad[i].text);
		ck_assert_msg(strstr(err, bad[i].why) != NULL,
		    "want \"%s\", got \"%s\" for:\n%s", bad[i].why, err,
		    bad[i].text);
	}
}
END_TEST

static Suite *
metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *th = tcase_create("histogram");
	TCase *tt = tcase_create("tables");
	TCase *tr = tcase_create("render");

	tcase_add_checked_fixture(th, shm_setup, shm_teardown);
	tcase_add_test(th, test_bounds);
	tcase_add_test(th, test_observe_buckets);
	tcase_add_test(th, test_observe_sum);
	tcase_add_test(th, test_histogram_rendered);
	suite_add_tcase(s, th);

	tcase_add_checked_fixture(tt, shm_setup, shm_teardown);
	tcase_add_test(tt, test_tables);
	tcase_add_test(tt, test_events_out_of_table);
	tcase_add_test(tt, test_request_codes);
	tcase_add_test(tt, test_label_escape);
	tcase_add_test(tt, test_reason_of);
	suite_add_tcase(s, tt);

	tcase_add_checked_fixture(tr, shm_setup, shm_teardown);
	tcase_add_test(tr, test_render_full);
	tcase_add_test(tr, test_render_empty);
	tcase_add_test(tr, test_validator);
	suite_add_tcase(s, tr);
	return s;
}

int
main(void)
{
	return unit_run(metrics_suite());
}
