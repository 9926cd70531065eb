/*
 * trigger.h: the HTTP requests of a batch, made concurrently (libcurl multi,
 * connections reused), and their responses classified (DESIGN.md §3 step 7).
 */
#ifndef STAGERELAY_TRIGGER_H
#define STAGERELAY_TRIGGER_H

#include <stddef.h>

#include "config.h"
#include "route.h"

enum trigger_outcome {
	TRIGGER_SUCCESS = 0,	/* 2xx (+ success field true), or 409 */
	TRIGGER_TRANSIENT,	/* 408, 425, 429, 5xx, timeout, connection error */
	TRIGGER_PERMANENT	/* any other status */
};

struct trigger_result {
	enum trigger_outcome outcome;
	long		 http_status;	/* 0 when no response */
	double		 latency_ms;
	char		*remote_job_id;	/* owned, NULL if none */
	char		*error;		/* owned, NULL on success */
	long		 retry_after_s;	/* Retry-After, or -1 */
};

struct trigger;

/* Returns a handle (never NULL; aborts on OOM). trigger_free() it. */
struct trigger	*trigger_new(const struct config *);
void		 trigger_free(struct trigger *);

/*
 * Called each time one of trigger_run()'s requests completes: a read with
 * more requests than the window shows its worker alive while they keep
 * completing, and a request that stalls (no completion) does not.
 */
void	trigger_on_tick(struct trigger *, void (*)(void *), void *);

/* Runs n requests concurrently and fills results[0..n). */
void	trigger_run(struct trigger *, const struct request *reqs, size_t n,
	    struct trigger_result *results);
void	trigger_result_clear(struct trigger_result *);

/*
 * Classifies a completed HTTP exchange. Sets out->outcome, out->error
 * (why it failed) and out->remote_job_id (from job_id_field when the body
 * is JSON). success_field/job_id_field may be NULL.
 */
void	trigger_classify(long status, const char *body, size_t bodylen,
	    const char *success_field, const char *job_id_field,
	    struct trigger_result *out);

const char *trigger_outcome_name(enum trigger_outcome);

#endif
