/*
 * util.h: allocation that aborts on OOM, and a growable byte buffer.
 */
#ifndef STAGERELAY_UTIL_H
#define STAGERELAY_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* All of these abort the process on allocation failure. Callers free(). */
void	*xmalloc(size_t);
void	*xcalloc(size_t, size_t);
void	*xrealloc(void *, size_t);
void	*xreallocarray(void *, size_t, size_t);
char	*xstrdup(const char *);			/* NULL in, NULL out */
char	*xstrndup(const char *, size_t);
char	*xasprintf(const char *, ...) __attribute__((format(printf, 1, 2)));

/* A NUL-terminated growable buffer. buf_free() releases it. */
struct buf {
	char	*data;
	size_t	 len;
	size_t	 cap;
};

void	 buf_init(struct buf *);
void	 buf_free(struct buf *);
void	 buf_reset(struct buf *);
void	 buf_append(struct buf *, const char *, size_t);
void	 buf_puts(struct buf *, const char *);
void	 buf_putc(struct buf *, char);
void	 buf_printf(struct buf *, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
/* Hands the data to the caller (free() it) and resets the buffer. */
char	*buf_steal(struct buf *);

/* A set of strings (borrowed, not copied) sized for about n of them. */
struct strset {
	const char	**slot;
	size_t		  cap;		/* a power of two, at least 2n */
};
void	 strset_init(struct strset *, size_t n);
int	 strset_add(struct strset *, const char *);	/* 0 if present */
int	 strset_has(const struct strset *, const char *);
void	 strset_free(struct strset *);

/* Monotonic and wall clocks in milliseconds. */
long long	 now_mono_ms(void);
long long	 now_wall_ms(void);
/* "2026-01-05T16:27:08.268Z" (UTC, milliseconds). */
void		 format_utc_ms(char *, size_t, long long unix_ms);

/* Whether s holds a control character (below 0x20, or DEL). */
int	 str_has_control(const char *s);

/*
 * One pass over JSON text before a parser sees it: returns the deepest
 * nesting of arrays and objects ("[[[[" is 4), counting no further than
 * stop, and sets *nul_escape when a string holds the escape \u0000 (cJSON
 * cuts the string there without a word: "a\u0000b" would read as "a").
 * Strings are skipped, their escapes honoured.
 */
int	 json_scan(const char *s, size_t len, int stop, bool *nul_escape);

/*
 * Spans of JSON text that a parser has already accepted (cJSON took it):
 * json_skip_ws() passes blanks; json_skip_value() returns the byte after
 * the value that starts at p, or NULL if the text is not what it should
 * be. They let a caller keep a member's text exactly as written (numbers
 * past 2^53 included) instead of printing it again from a parse tree.
 */
const char *json_skip_ws(const char *p, const char *end);
const char *json_skip_value(const char *p, const char *end);

/*
 * The text of member name in the JSON object that text[0..len) holds:
 * 1 with *start and *n set, 0 when it has no such member, -1 when the
 * text is not an object. Only the top level is looked at; the first of
 * repeated members is returned (callers refuse repeats beforehand).
 */
int	 json_member_span(const char *text, size_t len, const char *name,
	    const char **start, size_t *n);

/* strlcpy-like; always NUL-terminates when size > 0. */
size_t	 strlcpy_s(char *, const char *, size_t);

#endif
