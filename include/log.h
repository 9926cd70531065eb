/*
 * log.h: one line per thing that happened, logfmt (default) or JSON.
 *
 * log_warnx("ledger: claim failed: %s", msg) for free text;
 * log_event(LOG_INFO, "event_triggered", "event_id", id, "doc", doc, NULL)
 * for structured outcome lines (key/value pairs; a NULL key ends the list,
 * a NULL value leaves its pair out).
 */
#ifndef STAGERELAY_LOG_H
#define STAGERELAY_LOG_H

#include <stdbool.h>

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FMT_LOGFMT = 0, LOG_FMT_JSON };

/* Process-wide; safe to call again (e.g. after fork or on reopen). */
void	log_init(const char *procname, enum log_level, enum log_format,
	    const char *file);
void	log_set_procname(const char *);

/*
 * A hook sees every line that passes the level, before it is written: its
 * level and message (the event name for log_event()). Returning true
 * swallows the line. NULL removes it. `stagerelay status` shows a failing
 * part's own warning this way.
 */
typedef bool (*log_hook_fn)(void *arg, enum log_level, const char *msg);
void	log_set_hook(log_hook_fn, void *arg);
int	log_reopen(void);
int	log_level_parse(const char *, enum log_level *);
int	log_format_parse(const char *, enum log_format *);

void	log_debug(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));	/* appends strerror(errno) */
void	log_errorx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	fatalx(const char *, ...) __attribute__((format(printf, 1, 2), noreturn));
void	fatal(const char *, ...) __attribute__((format(printf, 1, 2), noreturn));

/*
 * Structured line: msg=<name> followed by key=value pairs given as
 * const char * pairs; a NULL key ends the list; a NULL value leaves its
 * pair out.
 */
void	log_event(enum log_level, const char *name, ...);

/*
 * log_hold() keeps the lines that follow in memory until log_release()
 * writes them with one write(2) (a worker's round logs one line per
 * event); they are written early past 64 KiB, and by fatal()/fatalx().
 */
void	log_hold(void);
void	log_release(void);
void	log_release_held(void);

#endif
