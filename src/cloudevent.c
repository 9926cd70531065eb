/*
 * cloudevent.c: a stream entry decoded into a validated CloudEvent 1.0.
 *
 * Both layouts (flat fields, or one structured JSON field) are first turned
 * into one cJSON object of attributes, then a single validator enforces the
 * rules of DESIGN.md §2 and builds the event in a canonical order. The
 * first broken rule is described in one sentence: it becomes the
 * dead-letter's dlq_detail, so it quotes offending values escaped and
 * truncated, safe to log.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>

#include "cloudevent.h"
#include "log.h"
#include "util.h"

/* Value bytes quoted in a detail; room for each as \xNN, "..." and NUL. */
#define QUOTE_MAX	64
#define QUOTE_BUF	(QUOTE_MAX * 4 + 8)
#define EXT_NAME_MAX	20

struct decoder {
	char	*detail;
	size_t	 detaillen;
	bool	 flat;
	int	 max_depth;	/* 0: cJSON's own limit only */
};

/* A name to look for twice; not NUL-terminated in the flat layout. */
struct name_ref {
	const char	*name;
	size_t		 len;
};

static const char *const core_attributes[] = {
	"specversion", "id", "source", "type", "datacontenttype", "dataschema",
	"subject", "time", "data", "data_base64"
};

static enum cloudevent_error fail(struct decoder *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static enum cloudevent_error
fail(struct decoder *d, const char *fmt, ...)
{
	va_list ap;

	if (d->detaillen > 0) {
		va_start(ap, fmt);
		vsnprintf(d->detail, d->detaillen, fmt, ap);
		va_end(ap);
	}
	return CE_INVALID;
}

/*
 * JSON text before the parser (which recurses) sees it: no deeper than
 * max_json_depth, and no \u0000, which cJSON would silently cut a string
 * at. what names the text for the detail.
 */
static enum cloudevent_error
pre_parse(struct decoder *d, const char *what, const char *s, size_t len)
{
	int stop = d->max_depth > 0 ? d->max_depth + 1 : INT_MAX;
	bool nul;

	if (json_scan(s, len, stop, &nul) >= stop) {
		if (d->detaillen > 0)
			snprintf(d->detail, d->detaillen, "%s nests JSON "
			    "deeper than max_json_depth (%d)", what,
			    d->max_depth);
		return CE_TOO_LARGE;
	}
	if (nul)
		return fail(d, "%s holds \\u0000 (a NUL character) in a "
		    "string", what);
	return CE_OK;
}

/*
 * Escapes s for a detail: printable ASCII as is (with " and \ escaped),
 * everything else as \xNN, at most QUOTE_MAX bytes of it. Details end up
 * in logs and in the dead-letter stream, where raw bytes do harm.
 */
static const char *
quote(char *dst, size_t size, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0, n = len > QUOTE_MAX ? QUOTE_MAX : len;

	for (i = 0; i < n && o + 5 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			dst[o++] = '\\';
			dst[o++] = (char)c;
		} else if (c >= 0x20 && c < 0x7f)
			dst[o++] = (char)c;
		else {
			dst[o++] = '\\';
			dst[o++] = 'x';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 0xf];
		}
	}
	if (i < len && o + 4 < size) {
		memcpy(dst + o, "...", 3);
		o += 3;
	}
	dst[o] = '\0';
	return dst;
}

static bool
name_is(const char *name, size_t len, const char *want)
{
	return strlen(want) == len && memcmp(name, want, len) == 0;
}

static bool
is_core(const char *name)
{
	for (size_t i = 0; i < sizeof(core_attributes) /
	    sizeof(core_attributes[0]); i++)
		if (strcmp(name, core_attributes[i]) == 0)
			return true;
	return false;
}

static const char *
json_kind(const cJSON *v)
{
	if (cJSON_IsString(v))
		return "string";
	if (cJSON_IsNumber(v))
		return "number";
	if (cJSON_IsBool(v))
		return "boolean";
	if (cJSON_IsNull(v))
		return "null";
	if (cJSON_IsObject(v))
		return "object";
	if (cJSON_IsArray(v))
		return "array";
	return "invalid value";
}

/* cJSON returns NULL only when malloc fails; xmalloc's policy applies. */
static void
add(cJSON *obj, const char *name, cJSON *item)
{
	if (item == NULL || !cJSON_AddItemToObject(obj, name, item))
		fatalx("cloudevent: out of memory");
}

/*
 * Decodes one UTF-8 sequence of s (n > 0 bytes left) into *cp. Returns its
 * length, or 0 when malformed: overlong forms, surrogates and code points
 * past U+10FFFF are refused (RFC 3629).
 */
static size_t
utf8_next(const unsigned char *s, size_t n, unsigned int *cp)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		*cp = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		*cp = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		unsigned char cc = s[i];

		if (cc < (i == 1 ? lo : 0x80) || cc > (i == 1 ? hi : 0xbf))
			return 0;
		*cp = (*cp << 6) | (cc & 0x3f);
	}
	return len;
}

static bool
utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	unsigned int cp;
	size_t l;

	while (n > 0) {
		/* ASCII, eight bytes at a time: most text is. */
		if (n >= 8) {
			uint64_t word;

			memcpy(&word, p, sizeof(word));
			if ((word & UINT64_C(0x8080808080808080)) == 0) {
				p += 8;
				n -= 8;
				continue;
			}
		}
		if ((l = utf8_next(p, n, &cp)) == 0)
			return false;
		p += l;
		n -= l;
	}
	return true;
}

/* Every string in a JSON tree (member names included) is valid UTF-8. */
static bool
json_utf8_valid(const cJSON *v)
{
	if (v->string != NULL && !utf8_valid(v->string, strlen(v->string)))
		return false;
	if (cJSON_IsString(v) &&
	    !utf8_valid(v->valuestring, strlen(v->valuestring)))
		return false;
	for (const cJSON *c = v->child; c != NULL; c = c->next)
		if (!json_utf8_valid(c))
			return false;
	return true;
}

/*
 * The CloudEvents String type excludes the control characters
 * U+0000-U+001F and U+007F-U+009F and the noncharacters. Besides being the
 * rule, this keeps CR/LF out of anything that may become a header.
 */
static enum cloudevent_error
check_string(struct decoder *d, const char *attr, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s), l;
	unsigned int cp;

	while (n > 0) {
		if ((l = utf8_next(p, n, &cp)) == 0)
			return fail(d, "attribute %s is not valid UTF-8", attr);
		if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			return fail(d, "attribute %s contains a control "
			    "character (U+%04X)", attr, cp);
		if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe)
			return fail(d, "attribute %s contains a noncharacter "
			    "(U+%04X)", attr, cp);
		p += l;
		n -= l;
	}
	return CE_OK;
}

static int
name_cmp(const void *a, const void *b)
{
	const struct name_ref *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int r;

	if ((r = memcmp(x->name, y->name, n)) != 0)
		return r;
	return (x->len > y->len) - (x->len < y->len);
}

/* Sorted, so an entry with many fields costs n log n, not n^2. */
static const struct name_ref *
find_duplicate(struct name_ref *names, size_t n)
{
	if (n < 2)
		return NULL;
	qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 1; i < n; i++)
		if (name_cmp(&names[i - 1], &names[i]) == 0)
			return &names[i];
	return NULL;
}

bool
cloudevent_utf8_valid(const char *s, size_t n)
{
	return utf8_valid(s, n);
}

const char *
cloudevent_json_duplicate(const cJSON *v)
{
	struct name_ref *names;
	const struct name_ref *dup;
	const char *found = NULL;
	size_t n = 0;

	if (!cJSON_IsObject(v) && !cJSON_IsArray(v))
		return NULL;
	for (const cJSON *c = v->child; c != NULL; c = c->next) {
		if ((found = cloudevent_json_duplicate(c)) != NULL)
			return found;
		n++;
	}
	if (!cJSON_IsObject(v) || n < 2)
		return NULL;
	/* Most objects are small: compared pairwise, nothing allocated. */
	if (n <= 16) {
		for (const cJSON *a = v->child; a != NULL; a = a->next)
			for (const cJSON *b = a->next; b != NULL; b = b->next)
				if (strcmp(a->string, b->string) == 0)
					return b->string;
		return NULL;
	}
	names = xcalloc(n, sizeof(*names));
	n = 0;
	for (const cJSON *c = v->child; c != NULL; c = c->next) {
		names[n].name = c->string;
		names[n++].len = strlen(c->string);
	}
	if ((dup = find_duplicate(names, n)) != NULL)
		found = dup->name;
	free(names);
	return found;
}

/* RFC 2045 token characters: printable ASCII but tspecials. */
static bool
is_tchar(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

static const char *
skip_token(const char *p)
{
	while (is_tchar((unsigned char)*p))
		p++;
	return p;
}

static const char *
skip_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* RFC 2046 type/subtype, then ;name=value parameters (token or quoted). */
static bool
media_type_valid(const char *s)
{
	const char *p = s, *q;

	if ((q = skip_token(p)) == p || *q != '/')
		return false;
	p = q + 1;
	if ((q = skip_token(p)) == p)
		return false;
	p = q;
	for (;;) {
		p = skip_ows(p);
		if (*p == '\0')
			return true;
		if (*p++ != ';')
			return false;
		p = skip_ows(p);
		if ((q = skip_token(p)) == p || *q != '=')
			return false;
		p = q + 1;
		if (*p == '"') {
			for (p++; *p != '"'; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				if (*p == '\0' || (*p != '\t' &&
				    ((unsigned char)*p < 0x20 ||
				    (unsigned char)*p == 0x7f)))
					return false;
			}
			p++;
		} else if ((q = skip_token(p)) == p)
			return false;
		else
			p = q;
	}
}

bool
cloudevent_media_type_is_json(const char *ct)
{
	size_t n;

	if (ct == NULL)
		return true;
	n = strcspn(ct, "; \t");
	if (n == strlen("application/json") &&
	    strncasecmp(ct, "application/json", n) == 0)
		return true;
	return n >= 5 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

static bool
is_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	    (c >= 'A' && c <= 'F');
}

static bool
is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 3986 characters: unreserved, reserved, and %XX escapes. */
static bool
uri_chars_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	for (; *p != '\0'; p++) {
		if (*p == '%') {
			if (!is_hex(p[1]) || !is_hex(p[2]))
				return false;
			p += 2;
		} else if (!is_alpha(*p) && !is_digit(*p) &&
		    strchr("-._~:/?#[]@!$&'()*+,;=", *p) == NULL)
			return false;
	}
	return true;
}

/* Length of a leading "scheme:" (without the colon), or 0. */
static size_t
scheme_len(const char *s)
{
	size_t n = 0;

	if (!is_alpha((unsigned char)s[0]))
		return 0;
	while (is_alpha((unsigned char)s[n]) || is_digit((unsigned char)s[n]) ||
	    s[n] == '+' || s[n] == '-' || s[n] == '.')
		n++;
	return s[n] == ':' ? n : 0;
}

/*
 * A URI-reference: a URI, or a relative reference whose first segment
 * holds no colon (else it would read as a scheme).
 */
static bool
uri_reference_valid(const char *s)
{
	size_t n = strcspn(s, ":/?#");

	if (!uri_chars_valid(s))
		return false;
	return s[n] != ':' || (n > 0 && scheme_len(s) == n);
}

static bool
absolute_uri_valid(const char *s)
{
	size_t n = scheme_len(s);

	return uri_chars_valid(s) && n > 0 && s[n + 1] != '\0';
}

int
cloudevent_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* RFC 4648 base64; padding may be left out, but not misplaced. */
static bool
base64_valid(const char *s)
{
	size_t n = strlen(s), pad = 0;

	if (n % 4 == 1)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '=')
			pad++;
		else if (pad > 0 ||
		    cloudevent_b64_value((unsigned char)s[i]) == -1)
			return false;
	}
	return pad == 0 || (pad <= 2 && n % 4 == 0);
}

static bool
extension_name_valid(const char *s)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++)
		if (!is_digit((unsigned char)s[n]) &&
		    (s[n] < 'a' || s[n] > 'z'))
			return false;
	return n >= 1 && n <= EXT_NAME_MAX;
}

static int
parse_digits(const char **pp, int n, int *out)
{
	const char *p = *pp;
	int v = 0;

	for (int i = 0; i < n; i++, p++) {
		if (!is_digit((unsigned char)*p))
			return -1;
		v = v * 10 + (*p - '0');
	}
	*pp = p;
	*out = v;
	return 0;
}

/* Advances past c if it is next; never past the terminating NUL. */
static int
expect(const char **pp, char c)
{
	if (**pp != c)
		return -1;
	(*pp)++;
	return 0;
}

static int
days_in_month(int y, int m)
{
	static const int days[] = {
		31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
	};

	if (m == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
		return 29;
	return days[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date; no TZ involved. */
static long long
days_from_civil(long long y, int m, int d)
{
	long long era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

int
cloudevent_parse_time(const char *s, long long *unix_ms)
{
	const char *p = s;
	int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0, ms = 0, scale;
	long long secs;

	if (s == NULL)
		return -1;
	if (parse_digits(&p, 4, &y) == -1 || expect(&p, '-') == -1 ||
	    parse_digits(&p, 2, &mo) == -1 || expect(&p, '-') == -1 ||
	    parse_digits(&p, 2, &d) == -1)
		return -1;
	if (*p != 'T' && *p != 't')
		return -1;
	p++;
	if (parse_digits(&p, 2, &h) == -1 || expect(&p, ':') == -1 ||
	    parse_digits(&p, 2, &mi) == -1 || expect(&p, ':') == -1 ||
	    parse_digits(&p, 2, &sec) == -1)
		return -1;
	if (*p == '.') {
		p++;
		if (!is_digit((unsigned char)*p))
			return -1;
		/* Milliseconds from the first three digits; the rest drops. */
		for (scale = 100; is_digit((unsigned char)*p); p++) {
			ms += (*p - '0') * scale;
			scale /= 10;
		}
	}
	if (*p == 'Z' || *p == 'z')
		p++;
	else if (*p == '+' || *p == '-') {
		sign = *p++ == '-' ? -1 : 1;
		if (parse_digits(&p, 2, &oh) == -1 || expect(&p, ':') == -1 ||
		    parse_digits(&p, 2, &om) == -1)
			return -1;
	} else
		return -1;
	if (*p != '\0')
		return -1;

	/* A leap second (:60) is allowed and counts into the next minute. */
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) ||
	    h > 23 || mi > 59 || sec > 60 || oh > 23 || om > 59)
		return -1;
	secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	secs -= (long long)sign * (oh * 3600 + om * 60);
	if (unix_ms != NULL)
		*unix_ms = secs * 1000 + ms;
	return 0;
}

/* Flat layout: every field is an attribute, its value a string. */
static enum cloudevent_error
collect_flat(struct decoder *d, const struct entry_field *fields,
    size_t nfields, cJSON **out)
{
	char q[QUOTE_BUF];
	cJSON *attrs;

	attrs = cJSON_CreateObject();
	if (attrs == NULL)
		fatalx("cloudevent: out of memory");
	for (size_t i = 0; i < nfields; i++) {
		const struct entry_field *f = &fields[i];
		char *name, *value;

		if (!utf8_valid(f->value, f->valuelen)) {
			cJSON_Delete(attrs);
			return fail(d, "attribute \"%s\" is not valid UTF-8",
			    quote(q, sizeof(q), f->name, f->namelen));
		}
		if (memchr(f->value, '\0', f->valuelen) != NULL) {
			cJSON_Delete(attrs);
			return fail(d, "attribute \"%s\" contains a NUL byte",
			    quote(q, sizeof(q), f->name, f->namelen));
		}
		name = xstrndup(f->name, f->namelen);
		value = xstrndup(f->value, f->valuelen);
		add(attrs, name, cJSON_CreateString(value));
		free(value);
		free(name);
	}
	*out = attrs;
	return CE_OK;
}

/* Structured layout: one field holding the event as a JSON object. */
static enum cloudevent_error
collect_structured(struct decoder *d, const struct entry_field *f,
    const char *event_field, cJSON **out)
{
	struct name_ref *names;
	const struct name_ref *dup;
	enum cloudevent_error rv;
	const char *end = NULL;
	char q[QUOTE_BUF], *text;
	cJSON *attrs, *c;
	size_t n = 0;

	if (memchr(f->value, '\0', f->valuelen) != NULL)
		return fail(d, "field %s contains a NUL byte", event_field);
	snprintf(q, sizeof(q), "field %s", event_field);
	if ((rv = pre_parse(d, q, f->value, f->valuelen)) != CE_OK)
		return rv;
	text = xstrndup(f->value, f->valuelen);
	attrs = cJSON_ParseWithOpts(text, &end, 1);
	if (attrs == NULL) {
		size_t at = 0;

		if (end != NULL && end >= text)
			at = (size_t)(end - text);
		free(text);
		return fail(d, "field %s is not valid JSON (error at byte %zu)",
		    event_field, at);
	}
	free(text);
	if (!cJSON_IsObject(attrs)) {
		fail(d, "field %s must hold a JSON object (got %s)",
		    event_field, json_kind(attrs));
		cJSON_Delete(attrs);
		return CE_INVALID;
	}

	for (c = attrs->child; c != NULL; c = c->next) {
		if (!utf8_valid(c->string, strlen(c->string))) {
			fail(d, "attribute name \"%s\" is not valid UTF-8",
			    quote(q, sizeof(q), c->string, strlen(c->string)));
			cJSON_Delete(attrs);
			return CE_INVALID;
		}
		if (!json_utf8_valid(c)) {
			if (strcmp(c->string, "data") == 0)
				fail(d, "data is not valid UTF-8");
			else
				fail(d, "attribute \"%s\" is not valid UTF-8",
				    quote(q, sizeof(q), c->string,
				    strlen(c->string)));
			cJSON_Delete(attrs);
			return CE_INVALID;
		}
		n++;
	}

	/* cJSON keeps repeated members; which one would count is a guess. */
	names = xcalloc(n > 0 ? n : 1, sizeof(*names));
	n = 0;
	for (c = attrs->child; c != NULL; c = c->next) {
		names[n].name = c->string;
		names[n++].len = strlen(c->string);
	}
	if ((dup = find_duplicate(names, n)) != NULL) {
		fail(d, "attribute \"%s\" appears more than once in field %s",
		    quote(q, sizeof(q), dup->name, dup->len), event_field);
		free(names);
		cJSON_Delete(attrs);
		return CE_INVALID;
	}
	free(names);
	*out = attrs;
	return CE_OK;
}

/*
 * An attribute that must be a string when present. Null, and the empty
 * string Stage 1 writes for "no value", count as absent.
 */
static enum cloudevent_error
get_string(struct decoder *d, const cJSON *attrs, const char *name,
    bool required, const char **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(attrs, name);

	*out = NULL;
	if (v == NULL || cJSON_IsNull(v)) {
		if (required)
			return fail(d, "required attribute %s is missing",
			    name);
		return CE_OK;
	}
	if (!cJSON_IsString(v))
		return fail(d, "attribute %s must be a string (got %s)", name,
		    json_kind(v));
	if (*v->valuestring == '\0') {
		if (required)
			return fail(d, "required attribute %s is empty", name);
		return CE_OK;
	}
	if (check_string(d, name, v->valuestring) != CE_OK)
		return CE_INVALID;
	*out = v->valuestring;
	return CE_OK;
}

static enum cloudevent_error
add_extensions(struct decoder *d, const cJSON *attrs, cJSON *ev)
{
	char q[QUOTE_BUF];

	for (const cJSON *c = attrs->child; c != NULL; c = c->next) {
		if (is_core(c->string))
			continue;
		if (!extension_name_valid(c->string))
			return fail(d, "extension name \"%s\" must match "
			    "[a-z0-9]{1,20}", quote(q, sizeof(q), c->string,
			    strlen(c->string)));
		if (cJSON_IsNull(c))
			continue;
		if (cJSON_IsString(c)) {
			if (check_string(d, c->string, c->valuestring) != CE_OK)
				return CE_INVALID;
		} else if (cJSON_IsNumber(c)) {
			/* A CloudEvents Integer: whole, signed 32 bits. */
			double v = c->valuedouble;

			/* The range first: the cast is undefined past it. */
			if (!(v >= -2147483648.0 && v <= 2147483647.0) ||
			    v != (double)(long)v)
				return fail(d, "extension %s must be an "
				    "integer from -2147483648 to 2147483647 "
				    "(got %.17g)", c->string, v);
		} else if (!cJSON_IsBool(c))
			return fail(d, "extension %s must be a string, number "
			    "or boolean (got %s)", c->string, json_kind(c));
		add(ev, c->string, cJSON_Duplicate(c, 0));
	}
	return CE_OK;
}

static enum cloudevent_error
add_data(struct decoder *d, cJSON *attrs, const char *ct, cJSON *ev)
{
	cJSON *data, *b64, *parsed;
	const char *end = NULL, *dup;
	enum cloudevent_error rv;
	char q[QUOTE_BUF];

	data = cJSON_GetObjectItemCaseSensitive(attrs, "data");
	b64 = cJSON_GetObjectItemCaseSensitive(attrs, "data_base64");
	if (data != NULL && cJSON_IsNull(data))
		data = NULL;
	if (b64 != NULL && cJSON_IsNull(b64))
		b64 = NULL;
	/* Stage 1 leaves data out when the payload is empty; "" means that. */
	if (d->flat && data != NULL && *data->valuestring == '\0')
		data = NULL;
	if (d->flat && b64 != NULL && *b64->valuestring == '\0')
		b64 = NULL;

	if (data != NULL && b64 != NULL)
		return fail(d, "data and data_base64 are both present");
	if (b64 != NULL) {
		if (!cJSON_IsString(b64))
			return fail(d, "data_base64 must be a string (got %s)",
			    json_kind(b64));
		if (!base64_valid(b64->valuestring))
			return fail(d, "data_base64 is not valid base64");
		add(ev, "data_base64", cJSON_CreateString(b64->valuestring));
		return CE_OK;
	}
	if (data == NULL)
		return CE_OK;
	if (!d->flat) {
		/* Any JSON value, taken over as it is. */
		if ((dup = cloudevent_json_duplicate(data)) != NULL)
			return fail(d, "data has the member \"%s\" twice in "
			    "one object", quote(q, sizeof(q), dup,
			    strlen(dup)));
		add(ev, "data", cJSON_DetachItemViaPointer(attrs, data));
		return CE_OK;
	}
	if (!cloudevent_media_type_is_json(ct)) {
		add(ev, "data", cJSON_CreateString(data->valuestring));
		return CE_OK;
	}
	if ((rv = pre_parse(d, "data", data->valuestring,
	    strlen(data->valuestring))) != CE_OK)
		return rv;
	parsed = cJSON_ParseWithOpts(data->valuestring, &end, 1);
	if (parsed == NULL) {
		if (ct == NULL)
			return fail(d, "data is not valid JSON (no "
			    "datacontenttype, so JSON is assumed)");
		return fail(d, "data is not valid JSON (datacontenttype %s)",
		    ct);
	}
	/* Readers differ on which one counts: the API may take the last. */
	if ((dup = cloudevent_json_duplicate(parsed)) != NULL) {
		fail(d, "data has the member \"%s\" twice in one object",
		    quote(q, sizeof(q), dup, strlen(dup)));
		cJSON_Delete(parsed);
		return CE_INVALID;
	}
	add(ev, "data", parsed);
	return CE_OK;
}

/* Checks attrs against DESIGN.md §2 and builds the event in ev->json. */
static enum cloudevent_error
validate(struct decoder *d, cJSON *attrs, struct cloudevent *ev)
{
	const char *specversion, *id, *source, *type, *ct, *schema, *subject;
	const char *time;
	enum cloudevent_error rv;
	const cJSON *v;
	char q[QUOTE_BUF];
	cJSON *out;

	if (get_string(d, attrs, "specversion", true, &specversion) != CE_OK)
		return CE_INVALID;
	if (strcmp(specversion, "1.0") != 0)
		return fail(d, "specversion must be \"1.0\" (got \"%s\")",
		    quote(q, sizeof(q), specversion, strlen(specversion)));
	if (get_string(d, attrs, "id", true, &id) != CE_OK ||
	    get_string(d, attrs, "source", true, &source) != CE_OK ||
	    get_string(d, attrs, "type", true, &type) != CE_OK)
		return CE_INVALID;
	if (!uri_reference_valid(source))
		return fail(d, "source \"%s\" is not a URI-reference",
		    quote(q, sizeof(q), source, strlen(source)));

	if (get_string(d, attrs, "datacontenttype", false, &ct) != CE_OK)
		return CE_INVALID;
	if (ct != NULL && !media_type_valid(ct))
		return fail(d, "datacontenttype \"%s\" is not a media type "
		    "(type/subtype)", quote(q, sizeof(q), ct, strlen(ct)));
	if (get_string(d, attrs, "dataschema", false, &schema) != CE_OK)
		return CE_INVALID;
	if (schema != NULL && !absolute_uri_valid(schema))
		return fail(d, "dataschema \"%s\" is not an absolute URI",
		    quote(q, sizeof(q), schema, strlen(schema)));
	if (get_string(d, attrs, "subject", false, &subject) != CE_OK)
		return CE_INVALID;
	if (get_string(d, attrs, "time", false, &time) != CE_OK)
		return CE_INVALID;
	if (time != NULL && cloudevent_parse_time(time, &ev->time_ms) == -1)
		return fail(d, "time \"%s\" is not RFC 3339",
		    quote(q, sizeof(q), time, strlen(time)));

	if ((out = cJSON_CreateObject()) == NULL)
		fatalx("cloudevent: out of memory");
	add(out, "specversion", cJSON_CreateString(specversion));
	add(out, "id", cJSON_CreateString(id));
	add(out, "source", cJSON_CreateString(source));
	add(out, "type", cJSON_CreateString(type));
	if (ct != NULL)
		add(out, "datacontenttype", cJSON_CreateString(ct));
	if (schema != NULL)
		add(out, "dataschema", cJSON_CreateString(schema));
	if (subject != NULL)
		add(out, "subject", cJSON_CreateString(subject));
	if (time != NULL)
		add(out, "time", cJSON_CreateString(time));
	if ((rv = add_extensions(d, attrs, out)) != CE_OK ||
	    (rv = add_data(d, attrs, ct, out)) != CE_OK) {
		cJSON_Delete(out);
		return rv;
	}

	ev->json = out;
	ev->id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(out,
	    "id"));
	ev->source = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(out,
	    "source"));
	ev->type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(out,
	    "type"));
	if ((v = cJSON_GetObjectItemCaseSensitive(out, "subject")) != NULL)
		ev->subject = v->valuestring;
	if ((v = cJSON_GetObjectItemCaseSensitive(out, "time")) != NULL)
		ev->time = v->valuestring;
	ev->data = cJSON_GetObjectItemCaseSensitive(out, "data");
	return CE_OK;
}

enum cloudevent_error
cloudevent_decode(const struct entry_field *fields, size_t nfields,
    const char *event_field, const struct ce_limits *lim,
    struct cloudevent *ev, char *detail, size_t detaillen)
{
	static const struct ce_limits none;
	struct decoder d = { detail, detaillen, true, 0 };
	const struct entry_field *structured = NULL;
	const struct name_ref *dup;
	struct name_ref *names;
	enum cloudevent_error rv;
	bool has_specversion = false;
	cJSON *attrs = NULL;
	char q[QUOTE_BUF];
	size_t total = 0;

	memset(ev, 0, sizeof(*ev));
	ev->time_ms = -1;
	if (detaillen > 0)
		detail[0] = '\0';
	if (event_field == NULL || *event_field == '\0')
		event_field = "event";

	if (lim == NULL)
		lim = &none;
	d.max_depth = lim->max_depth;

	/* First, before any work is spent on it. */
	for (size_t i = 0; i < nfields; i++)
		total += fields[i].namelen + fields[i].valuelen;
	if (lim->max_bytes != 0 && total > lim->max_bytes) {
		if (detaillen > 0)
			snprintf(detail, detaillen, "entry is %zu bytes, "
			    "max_event_bytes is %zu", total, lim->max_bytes);
		return CE_TOO_LARGE;
	}
	if (lim->max_fields != 0 && nfields > lim->max_fields) {
		if (detaillen > 0)
			snprintf(detail, detaillen, "entry has %zu fields, "
			    "max_entry_fields is %zu", nfields,
			    lim->max_fields);
		return CE_TOO_LARGE;
	}
	if (nfields == 0)
		return fail(&d, "entry has no fields");

	for (size_t i = 0; i < nfields; i++) {
		const struct entry_field *f = &fields[i];

		if (!utf8_valid(f->name, f->namelen) ||
		    memchr(f->name, '\0', f->namelen) != NULL)
			return fail(&d, "field name \"%s\" is not valid UTF-8 "
			    "text", quote(q, sizeof(q), f->name, f->namelen));
		if (name_is(f->name, f->namelen, event_field))
			structured = f;
		else if (name_is(f->name, f->namelen, "specversion"))
			has_specversion = true;
	}
	names = xcalloc(nfields, sizeof(*names));
	for (size_t i = 0; i < nfields; i++) {
		names[i].name = fields[i].name;
		names[i].len = fields[i].namelen;
	}
	if ((dup = find_duplicate(names, nfields)) != NULL) {
		fail(&d, "field \"%s\" appears more than once",
		    quote(q, sizeof(q), dup->name, dup->len));
		free(names);
		return CE_INVALID;
	}
	free(names);

	/*
	 * Structured: other fields beside the event one are not part of the
	 * event (a publisher may add its own); they are left alone.
	 */
	if (structured != NULL && !has_specversion) {
		d.flat = false;
		rv = collect_structured(&d, structured, event_field, &attrs);
	} else
		rv = collect_flat(&d, fields, nfields, &attrs);
	if (rv == CE_OK)
		rv = validate(&d, attrs, ev);
	cJSON_Delete(attrs);
	if (rv != CE_OK)
		cloudevent_free(ev);
	return rv;
}

void
cloudevent_free(struct cloudevent *ev)
{
	if (ev == NULL)
		return;
	cJSON_Delete(ev->json);
	memset(ev, 0, sizeof(*ev));
	ev->time_ms = -1;
}

const char *
cloudevent_error_reason(enum cloudevent_error e)
{
	switch (e) {
	case CE_OK:
		return "ok";
	case CE_INVALID:
		return "invalid_event";
	case CE_TOO_LARGE:
		return "too_large";
	}
	return "invalid_event";
}
