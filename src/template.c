/*
 * template.c: {{path}} templates rendered against a CloudEvent (DESIGN.md §4).
 *
 * One scanner serves the syntax check at config load and rendering, so a
 * template that loads is one that renders the way it was checked. There
 * is no escape for literal braces: a stray "}}" is far more often a typo
 * ("{data.id}}") than intended text, and is refused.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "log.h"
#include "template.h"
#include "util.h"

#define INDEX_DIGITS_MAX	9	/* array indexes fit an int */

struct placeholder {
	const char	*start;		/* the first '{' */
	const char	*end;		/* just past the last '}' */
	const char	*path;		/* blanks around it dropped */
	size_t		 pathlen;
};

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* Segments separated by single dots, none empty, no blanks or braces. */
static bool
path_valid(const char *p, size_t n)
{
	bool seg_empty = true;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c == '.') {
			if (seg_empty)
				return false;
			seg_empty = true;
			continue;
		}
		if (c <= 0x20 || c == 0x7f || c == '{' || c == '}')
			return false;
		seg_empty = false;
	}
	return !seg_empty;
}

/*
 * Finds the first placeholder at or after s (base is the template's start,
 * for offsets in messages). Returns 1 and fills ph, 0 when there is none,
 * -1 on a syntax error.
 */
static int
next_placeholder(const char *base, const char *s, struct placeholder *ph,
    char *err, size_t errlen)
{
	const char *open, *close, *p, *q;

	open = strstr(s, "{{");
	close = strstr(s, "}}");
	if (close != NULL && (open == NULL || close < open)) {
		set_err(err, errlen, "unmatched \"}}\" at offset %td",
		    close - base);
		return -1;
	}
	if (open == NULL)
		return 0;
	if ((close = strstr(open + 2, "}}")) == NULL) {
		set_err(err, errlen, "unterminated \"{{\" at offset %td",
		    open - base);
		return -1;
	}
	for (p = open + 2; p < close && is_blank(*p); p++)
		;
	for (q = close; q > p && is_blank(q[-1]); q--)
		;
	if (p == q) {
		set_err(err, errlen, "empty path in placeholder at offset %td",
		    open - base);
		return -1;
	}
	if (!path_valid(p, (size_t)(q - p))) {
		set_err(err, errlen, "bad path \"%.*s\" at offset %td "
		    "(expected names separated by dots, e.g. "
		    "data.document_id)",
		    (int)(q - p), p, open - base);
		return -1;
	}
	ph->start = open;
	ph->end = close + 2;
	ph->path = p;
	ph->pathlen = (size_t)(q - p);
	return 1;
}

/* Whether s is exactly one placeholder, which ph then describes. */
static bool
exact_placeholder(const char *s, struct placeholder *ph)
{
	if (next_placeholder(s, s, ph, NULL, 0) != 1)
		return false;
	return ph->start == s && *ph->end == '\0';
}

static const cJSON *
member_n(const cJSON *obj, const char *name, size_t len)
{
	for (const cJSON *c = obj->child; c != NULL; c = c->next)
		if (c->string != NULL && strlen(c->string) == len &&
		    memcmp(c->string, name, len) == 0)
			return c;
	return NULL;
}

static const cJSON *
element_n(const cJSON *arr, const char *digits, size_t len)
{
	const cJSON *c;
	long idx = 0;

	if (len == 0 || len > INDEX_DIGITS_MAX)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (digits[i] < '0' || digits[i] > '9')
			return NULL;
		idx = idx * 10 + (digits[i] - '0');
	}
	for (c = arr->child; c != NULL && idx > 0; c = c->next)
		idx--;
	return c;
}

static const cJSON *
lookup_n(const cJSON *ctx, const char *path, size_t len)
{
	const char *p = path, *end = path + len, *dot;
	const cJSON *cur = ctx;

	if (len == 0)
		return NULL;
	while (cur != NULL) {
		if ((dot = memchr(p, '.', (size_t)(end - p))) == NULL)
			dot = end;
		if (cJSON_IsObject(cur))
			cur = member_n(cur, p, (size_t)(dot - p));
		else if (cJSON_IsArray(cur))
			cur = element_n(cur, p, (size_t)(dot - p));
		else
			return NULL;
		if (dot == end)
			break;
		p = dot + 1;
	}
	return cur;
}

const cJSON *
template_lookup(const cJSON *ctx, const char *path)
{
	if (ctx == NULL || path == NULL)
		return NULL;
	return lookup_n(ctx, path, strlen(path));
}

/* Appends v as text: strings raw, everything else in JSON form. */
static int
interpolate(struct buf *b, const cJSON *v, const struct placeholder *ph,
    char *err, size_t errlen)
{
	char *s;

	if (v == NULL) {
		set_err(err, errlen, "no value at %.*s", (int)ph->pathlen,
		    ph->path);
		return -1;
	}
	if (cJSON_IsNull(v)) {
		set_err(err, errlen, "cannot interpolate null value of %.*s",
		    (int)ph->pathlen, ph->path);
		return -1;
	}
	if (cJSON_IsString(v)) {
		buf_puts(b, v->valuestring);
		return 0;
	}
	if (cJSON_IsTrue(v) || cJSON_IsFalse(v)) {
		buf_puts(b, cJSON_IsTrue(v) ? "true" : "false");
		return 0;
	}
	if (!cJSON_IsNumber(v) && !cJSON_IsObject(v) && !cJSON_IsArray(v)) {
		set_err(err, errlen, "cannot interpolate the value of %.*s",
		    (int)ph->pathlen, ph->path);
		return -1;
	}
	/* cJSON's own form: integers without ".0", compact containers. */
	if ((s = cJSON_PrintUnformatted((cJSON *)v)) == NULL)
		fatalx("template: out of memory");
	buf_puts(b, s);
	cJSON_free(s);
	return 0;
}

/*
 * Appends value as one URL path segment's data (RFC 3986 pchar): what is
 * not unreserved, a sub-delim, ':' or '@' is percent-encoded, '/', '?',
 * '#' and '%' included, so a value cannot add a segment, a query or an
 * escape of its own. A value of only dots ("..") is encoded whole: left
 * as it is, the client would resolve it as a relative path.
 */
static void
append_segment(struct buf *b, const char *value, size_t len)
{
	bool dots = len > 0 && strspn(value, ".") == len;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)value[i];

		if (!dots && (isalnum(c) || (c != 0 &&
		    strchr("-._~!$&'()*+,;=:@", c) != NULL)))
			buf_putc(b, (char)c);
		else
			buf_printf(b, "%%%02X", c);
	}
}

static char *
render_string(const char *tmpl, const cJSON *ctx, bool url, char *err,
    size_t errlen)
{
	struct placeholder ph;
	const char *s = tmpl;
	struct buf b, value;
	int r;

	if (tmpl == NULL) {
		set_err(err, errlen, "no template");
		return NULL;
	}
	buf_init(&b);
	buf_init(&value);
	while ((r = next_placeholder(tmpl, s, &ph, err, errlen)) == 1) {
		buf_append(&b, s, (size_t)(ph.start - s));
		buf_reset(&value);
		if (interpolate(url ? &value : &b, lookup_n(ctx, ph.path,
		    ph.pathlen), &ph, err, errlen) == -1) {
			r = -1;
			break;
		}
		if (url)
			append_segment(&b, value.data != NULL ? value.data :
			    "", value.len);
		s = ph.end;
	}
	buf_free(&value);
	if (r == -1) {
		buf_free(&b);
		return NULL;
	}
	buf_puts(&b, s);
	return buf_steal(&b);
}

char *
template_render_string(const char *tmpl, const cJSON *ctx, char *err,
    size_t errlen)
{
	return render_string(tmpl, ctx, false, err, errlen);
}

char *
template_render_url(const char *tmpl, const cJSON *ctx, char *err,
    size_t errlen)
{
	return render_string(tmpl, ctx, true, err, errlen);
}

static cJSON *
must(cJSON *v)
{
	if (v == NULL)
		fatalx("template: out of memory");
	return v;
}

cJSON *
template_render(const cJSON *tmpl, const cJSON *ctx, char *err,
    size_t errlen)
{
	struct placeholder ph;
	const cJSON *v;
	cJSON *out, *item;
	char *s;

	if (tmpl == NULL) {
		set_err(err, errlen, "no template");
		return NULL;
	}
	if (cJSON_IsString(tmpl)) {
		if (exact_placeholder(tmpl->valuestring, &ph)) {
			/* Keeps the value's JSON type, null included. */
			if ((v = lookup_n(ctx, ph.path, ph.pathlen)) == NULL) {
				set_err(err, errlen, "no value at %.*s",
				    (int)ph.pathlen, ph.path);
				return NULL;
			}
			return must(cJSON_Duplicate((cJSON *)v, 1));
		}
		s = template_render_string(tmpl->valuestring, ctx, err, errlen);
		if (s == NULL)
			return NULL;
		out = must(cJSON_CreateString(s));
		free(s);
		return out;
	}
	if (cJSON_IsObject(tmpl) || cJSON_IsArray(tmpl)) {
		out = must(cJSON_IsObject(tmpl) ? cJSON_CreateObject() :
		    cJSON_CreateArray());
		for (const cJSON *c = tmpl->child; c != NULL; c = c->next) {
			item = template_render(c, ctx, err, errlen);
			if (item == NULL) {
				cJSON_Delete(out);
				return NULL;
			}
			/* Keys are copied as they are: never templated. */
			if (cJSON_IsObject(tmpl)) {
				if (!cJSON_AddItemToObject(out, c->string,
				    item))
					fatalx("template: out of memory");
			} else if (!cJSON_AddItemToArray(out, item))
				fatalx("template: out of memory");
		}
		return out;
	}
	return must(cJSON_Duplicate((cJSON *)tmpl, 1));
}

int
template_check(const char *tmpl, char *err, size_t errlen)
{
	struct placeholder ph;
	const char *s = tmpl;
	int r;

	if (tmpl == NULL)
		return 0;
	while ((r = next_placeholder(tmpl, s, &ph, err, errlen)) == 1)
		s = ph.end;
	return r;
}

/* Names where in the tree a bad template sits: "doc.text", "list[2]". */
static int
check_tree(const cJSON *t, struct buf *where, char *err, size_t errlen)
{
	char msg[256];
	size_t mark, i = 0;

	if (cJSON_IsString(t)) {
		if (template_check(t->valuestring, msg, sizeof(msg)) == 0)
			return 0;
		if (where->len > 0)
			set_err(err, errlen, "%s: %s", where->data, msg);
		else
			set_err(err, errlen, "%s", msg);
		return -1;
	}
	if (!cJSON_IsObject(t) && !cJSON_IsArray(t))
		return 0;
	mark = where->len;
	for (const cJSON *c = t->child; c != NULL; c = c->next, i++) {
		if (cJSON_IsObject(t))
			buf_printf(where, "%s%s", mark > 0 ? "." : "",
			    c->string);
		else
			buf_printf(where, "[%zu]", i);
		if (check_tree(c, where, err, errlen) == -1)
			return -1;
		where->len = mark;
		where->data[mark] = '\0';
	}
	return 0;
}

int
template_check_tree(const cJSON *tmpl, char *err, size_t errlen)
{
	struct buf where;
	int r;

	if (tmpl == NULL)
		return 0;
	buf_init(&where);
	r = check_tree(tmpl, &where, err, errlen);
	buf_free(&where);
	return r;
}

/* Whether a placeholder's path is root or lies below it. */
static bool
path_under(const struct placeholder *ph, const char *root)
{
	size_t len = strlen(root);

	return ph->pathlen >= len && strncmp(ph->path, root, len) == 0 &&
	    (ph->pathlen == len || ph->path[len] == '.' ||
	    ph->path[len] == '[');
}

bool
template_refers(const char *tmpl, const char *root)
{
	struct placeholder ph;
	const char *s = tmpl;

	if (tmpl == NULL)
		return false;
	while (next_placeholder(tmpl, s, &ph, NULL, 0) == 1) {
		if (path_under(&ph, root))
			return true;
		s = ph.end;
	}
	return false;
}

bool
template_refers_tree(const cJSON *tmpl, const char *root)
{
	const cJSON *c;

	if (tmpl == NULL)
		return false;
	if (cJSON_IsString(tmpl))
		return template_refers(tmpl->valuestring, root);
	for (c = tmpl->child; c != NULL; c = c->next)
		if ((c->string != NULL && template_refers(c->string, root)) ||
		    template_refers_tree(c, root))
			return true;
	return false;
}
