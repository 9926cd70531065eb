/* util.c: allocation that aborts on OOM, buffers, clocks. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

static void __attribute__((noreturn))
oom(void)
{
	static const char msg[] = "stagerelay: out of memory\n";

	/* Nothing that allocates: we are out of memory. */
	if (fwrite(msg, 1, sizeof(msg) - 1, stderr) == 0)
		abort();
	abort();
}

void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		oom();
	return p;
}

void *
xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);

	if (p == NULL)
		oom();
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		oom();
	return q;
}

void *
xreallocarray(void *p, size_t nmemb, size_t size)
{
	if (size != 0 && nmemb > SIZE_MAX / size)
		oom();
	return xrealloc(p, nmemb * size);
}

char *
xstrdup(const char *s)
{
	char *p;

	if (s == NULL)
		return NULL;
	if ((p = strdup(s)) == NULL)
		oom();
	return p;
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (r < 0)
		oom();
	return p;
}

void
buf_init(struct buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void
buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b);
}

void
buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data != NULL)
		b->data[0] = '\0';
}

static void
buf_grow(struct buf *b, size_t extra)
{
	size_t want = b->len + extra + 1;

	if (want <= b->cap)
		return;
	if (b->cap == 0)
		b->cap = 64;
	while (b->cap < want)
		b->cap *= 2;
	b->data = xrealloc(b->data, b->cap);
}

void
buf_append(struct buf *b, const char *s, size_t n)
{
	buf_grow(b, n);
	if (n > 0)
		memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
buf_puts(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void
buf_putc(struct buf *b, char c)
{
	if (b->len + 2 > b->cap)
		buf_grow(b, 1);
	b->data[b->len++] = c;
	b->data[b->len] = '\0';
}

void
buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_grow(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

char *
buf_steal(struct buf *b)
{
	char *p;

	if (b->data == NULL)
		return xstrdup("");
	p = b->data;
	buf_init(b);
	return p;
}

long long
now_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long
now_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

size_t
strlcpy_s(char *dst, const char *src, size_t size)
{
	size_t n = strlen(src);

	if (size > 0) {
		size_t c = n >= size ? size - 1 : n;

		memcpy(dst, src, c);
		dst[c] = '\0';
	}
	return n;
}

void
format_utc_ms(char *dst, size_t size, long long unix_ms)
{
	time_t secs = (time_t)(unix_ms / 1000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	snprintf(dst, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
}

/* Seeded per process: ids from outside cannot aim at one probe chain. */
static uint64_t strset_seed;

static uint64_t
fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL ^ strset_seed;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

void
strset_init(struct strset *set, size_t n)
{
	if (strset_seed == 0)
		strset_seed = ((uint64_t)getpid() << 32) ^
		    (uint64_t)now_mono_ms() ^ (uint64_t)(uintptr_t)set;
	set->cap = 16;
	while (set->cap < n * 2)
		set->cap *= 2;
	set->slot = xcalloc(set->cap, sizeof(*set->slot));
}

/* Open addressing; never fuller than half, so a probe ends. */
int
strset_add(struct strset *set, const char *s)
{
	size_t i;

	for (i = fnv1a(s) & (set->cap - 1); set->slot[i] != NULL;
	    i = (i + 1) & (set->cap - 1))
		if (strcmp(set->slot[i], s) == 0)
			return 0;
	set->slot[i] = s;
	return 1;
}

void
strset_free(struct strset *set)
{
	free(set->slot);
	set->slot = NULL;
	set->cap = 0;
}

int
strset_has(const struct strset *set, const char *s)
{
	if (set->cap == 0)
		return 0;
	for (size_t i = fnv1a(s) & (set->cap - 1); set->slot[i] != NULL;
	    i = (i + 1) & (set->cap - 1))
		if (strcmp(set->slot[i], s) == 0)
			return 1;
	return 0;
}

int
json_scan(const char *s, size_t len, int stop, bool *nul_escape)
{
	int depth = 0, deepest = 0;

	*nul_escape = false;
	for (size_t i = 0; i < len; i++) {
		switch (s[i]) {
		case '"':
			/* To the closing quote; an escape takes two bytes. */
			for (i++; i < len && s[i] != '"'; i++) {
				if (s[i] != '\\' || ++i >= len)
					continue;
				if (s[i] == 'u' && i + 4 < len &&
				    memcmp(s + i + 1, "0000", 4) == 0)
					*nul_escape = true;
			}
			break;
		case '[':
		case '{':
			if (++depth > deepest && (deepest = depth) >= stop)
				return deepest;
			break;
		case ']':
		case '}':
			if (depth > 0)
				depth--;
			break;
		}
	}
	return deepest;
}

int
str_has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return 1;
	return 0;
}

/* Blanks as cJSON skips them: any byte up to the space (it accepted the text). */
static bool
json_blank(char c)
{
	return (unsigned char)c <= ' ';
}

const char *
json_skip_ws(const char *p, const char *end)
{
	while (p < end && json_blank(*p))
		p++;
	return p;
}

/* Past the string that starts at the quote p; NULL if it never closes. */
static const char *
json_skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\') {
			if (++p >= end)
				return NULL;
		} else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

const char *
json_skip_value(const char *p, const char *end)
{
	int depth = 0;

	p = json_skip_ws(p, end);
	if (p >= end)
		return NULL;
	if (*p == '"')
		return json_skip_string(p, end);
	if (*p != '{' && *p != '[') {
		/* A number, true, false or null: up to a delimiter. */
		const char *q = p;

		while (q < end && *q != ',' && *q != '}' && *q != ']' &&
		    !json_blank(*q))
			q++;
		return q > p ? q : NULL;
	}
	/* Brackets counted, strings skipped whole: their brackets are text. */
	for (; p < end; p++) {
		if (*p == '"') {
			if ((p = json_skip_string(p, end)) == NULL)
				return NULL;
			p--;
		} else if (*p == '{' || *p == '[')
			depth++;
		else if ((*p == '}' || *p == ']') && --depth == 0)
			return p + 1;
	}
	return NULL;
}

int
json_member_span(const char *text, size_t len, const char *name,
    const char **start, size_t *n)
{
	const char *p = text, *end = text + len, *key, *kend, *v;
	size_t namelen = strlen(name);

	p = json_skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p = json_skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return 0;
	while (p < end) {
		if (*p != '"' || (kend = json_skip_string(p, end)) == NULL)
			return -1;
		key = p + 1;
		p = json_skip_ws(kend, end);
		if (p >= end || *p != ':')
			return -1;
		v = json_skip_ws(p + 1, end);
		if ((p = json_skip_value(v, end)) == NULL)
			return -1;
		/* Names with escapes are compared as written: no match. */
		if ((size_t)(kend - 1 - key) == namelen &&
		    memcmp(key, name, namelen) == 0) {
			*start = v;
			*n = (size_t)(p - v);
			return 1;
		}
		p = json_skip_ws(p, end);
		if (p < end && *p == '}')
			return 0;
		if (p >= end || *p != ',')
			return -1;
		p = json_skip_ws(p + 1, end);
	}
	return -1;
}
