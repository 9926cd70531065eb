/*
 * log.c: logfmt (default) or JSON lines on stderr or a file.
 *
 * Every line carries ts, level, proc (master / worker N) and msg; outcome
 * lines add the keys that trace an event from Stage 1 to Stage 2.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static struct {
	char		 procname[64];
	enum log_level	 level;
	enum log_format	 format;
	char		*file;
	int		 fd;
	log_hook_fn	 hook;
	void		*hook_arg;
	bool		 holding;	/* log_hold(): lines wait in held */
	struct buf	 held;
} lg = { "stagerelay", LOG_INFO, LOG_FMT_LOGFMT, NULL, 2, NULL, NULL,
    false, { NULL, 0, 0 } };

/* Past this many bytes held lines are written at once. */
#define HELD_MAX	(64 * 1024)

static const char *level_names[] = { "debug", "info", "warn", "error" };

void
log_init(const char *procname, enum log_level level, enum log_format format,
    const char *file)
{
	log_set_procname(procname);
	lg.level = level;
	lg.format = format;
	if (lg.file != NULL && (file == NULL || strcmp(file, lg.file) != 0)) {
		free(lg.file);
		lg.file = NULL;
	}
	if (file != NULL && *file != '\0' && lg.file == NULL) {
		lg.file = xstrdup(file);
		if (log_reopen() == -1)
			fatal("log: cannot open %s", file);
	} else if (file == NULL || *file == '\0') {
		if (lg.fd > 2)
			close(lg.fd);
		lg.fd = 2;
	}
}

void
log_set_procname(const char *name)
{
	strlcpy_s(lg.procname, name ? name : "stagerelay", sizeof(lg.procname));
}

void
log_set_hook(log_hook_fn hook, void *arg)
{
	lg.hook = hook;
	lg.hook_arg = arg;
}

int
log_reopen(void)
{
	int fd;

	if (lg.file == NULL)
		return 0;
	fd = open(lg.file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd == -1)
		return -1;
	if (lg.fd > 2)
		close(lg.fd);
	lg.fd = fd;
	return 0;
}

int
log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	if (strcmp(s, "warning") == 0) {
		*out = LOG_WARN;
		return 0;
	}
	return -1;
}

int
log_format_parse(const char *s, enum log_format *out)
{
	if (strcmp(s, "logfmt") == 0)
		*out = LOG_FMT_LOGFMT;
	else if (strcmp(s, "json") == 0)
		*out = LOG_FMT_JSON;
	else
		return -1;
	return 0;
}

/* logfmt: quote when the value has spaces, quotes, '=' or is empty. */
static void
put_value(struct buf *b, const char *v)
{
	const unsigned char *p;
	int quote = (*v == '\0');

	if (lg.format == LOG_FMT_JSON) {
		buf_putc(b, '"');
	} else {
		for (p = (const unsigned char *)v; *p && !quote; p++)
			if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\')
				quote = 1;
		if (quote)
			buf_putc(b, '"');
	}
	for (p = (const unsigned char *)v; *p; p++) {
		const unsigned char *q = p;

		/* A run that needs no escaping goes in at once. */
		while (*q >= 0x20 && *q != '"' && *q != '\\')
			q++;
		if (q > p) {
			buf_append(b, (const char *)p, (size_t)(q - p));
			p = q;
			if (*p == '\0')
				break;
		}
		switch (*p) {
		case '"':
			buf_puts(b, "\\\"");
			break;
		case '\\':
			buf_puts(b, "\\\\");
			break;
		case '\n':
			buf_puts(b, "\\n");
			break;
		case '\r':
			buf_puts(b, "\\r");
			break;
		case '\t':
			buf_puts(b, "\\t");
			break;
		default:
			if (*p < 0x20)
				buf_printf(b, "\\u%04x", *p);
			else
				buf_putc(b, (char)*p);
		}
	}
	if (lg.format == LOG_FMT_JSON || quote)
		buf_putc(b, '"');
}

static void
put_pair(struct buf *b, const char *k, const char *v)
{
	if (lg.format == LOG_FMT_JSON) {
		buf_puts(b, b->len > 1 ? ",\"" : "\"");
		buf_puts(b, k);
		buf_puts(b, "\":");
	} else {
		if (b->len > 0)
			buf_putc(b, ' ');
		buf_puts(b, k);
		buf_putc(b, '=');
	}
	put_value(b, v);
}

static void
line_start(struct buf *b, enum log_level level, const char *msg)
{
	char ts[64];

	format_utc_ms(ts, sizeof(ts), now_wall_ms());
	if (lg.format == LOG_FMT_JSON)
		buf_putc(b, '{');
	put_pair(b, "ts", ts);
	put_pair(b, "level", level_names[level]);
	put_pair(b, "proc", lg.procname);
	put_pair(b, "msg", msg);
}

/*
 * One write per line, or per group of whole lines, so that lines from
 * several processes do not mix.
 */
static void
write_all(const char *data, size_t len)
{
	ssize_t w;
	size_t off = 0;

	while (off < len) {
		w = write(lg.fd, data + off, len - off);
		if (w <= 0) {
			if (w == -1 && errno == EINTR)
				continue;
			break;
		}
		off += (size_t)w;
	}
}

static void
line_end(struct buf *b)
{
	if (lg.format == LOG_FMT_JSON)
		buf_putc(b, '}');
	buf_putc(b, '\n');
	if (lg.holding && b->len < HELD_MAX) {
		if (lg.held.len + b->len > HELD_MAX)
			log_release_held();
		buf_append(&lg.held, b->data, b->len);
	} else
		write_all(b->data, b->len);
	buf_free(b);
}

void
log_hold(void)
{
	lg.holding = true;
}

/*
 * A write to a file opened for appending lands whole. A pipe or socket
 * that other processes write to too (standard error under a container or
 * a pipeline) only keeps writes of up to PIPE_BUF bytes apart: there the
 * held lines go out in runs of whole lines of at most that size.
 */
void
log_release_held(void)
{
	struct stat st;
	const char *p = lg.held.data, *end = lg.held.data + lg.held.len;

	if (lg.held.len == 0)
		return;
	if (fstat(lg.fd, &st) == 0 && S_ISREG(st.st_mode)) {
		write_all(p, lg.held.len);
		buf_reset(&lg.held);
		return;
	}
	while (p < end) {
		const char *run = p, *nl;

		/* Whole lines while they fit; a longer line goes alone. */
		while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) !=
		    NULL && (nl + 1 - run <= PIPE_BUF || p == run))
			p = nl + 1;
		if (p == run)		/* no newline left: cannot happen */
			p = end;
		write_all(run, (size_t)(p - run));
	}
	buf_reset(&lg.held);
}

void
log_release(void)
{
	log_release_held();
	lg.holding = false;
}

static void
vlog(enum log_level level, int with_errno, const char *fmt, va_list ap)
{
	struct buf b;
	char msg[2048];
	int saved = errno;

	if (level < lg.level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (with_errno) {
		size_t n = strlen(msg);

		snprintf(msg + n, sizeof(msg) - n, ": %s", strerror(saved));
	}
	if (lg.hook != NULL && lg.hook(lg.hook_arg, level, msg)) {
		errno = saved;
		return;
	}
	buf_init(&b);
	line_start(&b, level, msg);
	line_end(&b);
	errno = saved;
}

void
log_event(enum log_level level, const char *name, ...)
{
	struct buf b;
	va_list ap;
	const char *k, *v;

	if (level < lg.level)
		return;
	if (lg.hook != NULL && lg.hook(lg.hook_arg, level, name))
		return;
	buf_init(&b);
	line_start(&b, level, name);
	va_start(ap, name);
	while ((k = va_arg(ap, const char *)) != NULL) {
		v = va_arg(ap, const char *);
		if (v != NULL)
			put_pair(&b, k, v);
	}
	va_end(ap);
	line_end(&b);
}

#define LOGFN(fn, lvl, err)				\
void							\
fn(const char *fmt, ...)				\
{							\
	va_list ap;					\
							\
	va_start(ap, fmt);				\
	vlog(lvl, err, fmt, ap);			\
	va_end(ap);					\
}

LOGFN(log_debug, LOG_DEBUG, 0)
LOGFN(log_info, LOG_INFO, 0)
LOGFN(log_warnx, LOG_WARN, 0)
LOGFN(log_warn, LOG_WARN, 1)
LOGFN(log_errorx, LOG_ERROR, 0)

void
fatalx(const char *fmt, ...)
{
	va_list ap;

	log_release();
	va_start(ap, fmt);
	vlog(LOG_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(1);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;

	log_release();
	va_start(ap, fmt);
	vlog(LOG_ERROR, 1, fmt, ap);
	va_end(ap);
	exit(1);
}
