/*
 * cloudevent.h: a stream entry decoded into a validated CloudEvent 1.0.
 *
 * Two entry layouts are accepted (DESIGN.md §1):
 *  - flat: one field per attribute, as Stage 1 writes them (data holds the
 *    JSON text of the payload);
 *  - structured: one field (event_field, default "event") holding the
 *    whole CloudEvent as JSON, as Stage 2's publisher writes it.
 * Every rule of DESIGN.md §2 is enforced; a broken rule is reported with a
 * sentence naming it, which becomes the dead-letter's dlq_detail.
 */
#ifndef STAGERELAY_CLOUDEVENT_H
#define STAGERELAY_CLOUDEVENT_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

/* One field of a stream entry. Values are binary-safe (not NUL-terminated). */
struct entry_field {
	const char	*name;
	size_t		 namelen;
	const char	*value;
	size_t		 valuelen;
};

/* Why an entry could not be decoded; the string form is the dlq_reason. */
enum cloudevent_error {
	CE_OK = 0,
	CE_INVALID,		/* "invalid_event": a rule of §2 is broken */
	CE_TOO_LARGE		/* "too_large": over a limit of struct ce_limits */
};

struct cloudevent {
	/*
	 * The event in structured form: attributes as strings, extensions,
	 * and "data" as parsed JSON when the content type is JSON (or absent),
	 * otherwise as a string. Owned; templates render against it.
	 */
	cJSON		*json;
	/* Borrowed from json; valid until cloudevent_free(). */
	const char	*id;
	const char	*type;
	const char	*source;
	const char	*subject;	/* NULL when absent or empty */
	const char	*time;		/* NULL when absent or empty */
	const cJSON	*data;		/* NULL when absent */
	long long	 time_ms;	/* event time as Unix ms, or -1 */
};

/* What an entry may not exceed (DESIGN.md §2); 0 means no limit. */
struct ce_limits {
	size_t		 max_bytes;	/* names and values: max_event_bytes */
	size_t		 max_fields;	/* field-value pairs: max_entry_fields */
	int		 max_depth;	/* JSON nesting: max_json_depth */
};

/*
 * Decodes and validates an entry. On success returns CE_OK and fills *ev
 * (release with cloudevent_free()). On failure *ev is empty and detail
 * holds the rule that was broken, e.g. "specversion must be \"1.0\"",
 * or the limit that was exceeded, by its config key. lim may be NULL.
 */
enum cloudevent_error cloudevent_decode(const struct entry_field *fields,
	    size_t nfields, const char *event_field,
	    const struct ce_limits *lim, struct cloudevent *ev, char *detail,
	    size_t detaillen);
void	cloudevent_free(struct cloudevent *);

/* "invalid_event", "too_large". */
const char *cloudevent_error_reason(enum cloudevent_error);

/* Whether data of this content type is JSON (NULL, application/json, +json). */
bool	cloudevent_media_type_is_json(const char *content_type);

/* The 6-bit value of a base64 character (RFC 4648), or -1. */
int	cloudevent_b64_value(unsigned char);

/*
 * A member name that appears twice in one object anywhere in v, or NULL.
 * JSON readers differ on which of the two counts (cJSON takes the first,
 * Python's json the last), so such JSON is refused, not guessed at.
 */
const char *cloudevent_json_duplicate(const cJSON *v);

/* Whether s[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
bool	cloudevent_utf8_valid(const char *s, size_t n);

/* Parses RFC 3339 (seconds required, Z or ±hh:mm); -1 if invalid. */
int	cloudevent_parse_time(const char *, long long *unix_ms);

#endif
