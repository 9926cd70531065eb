/*
 * ingress.h: the ingress process: CloudEvents over HTTP (the CloudEvents
 * HTTP protocol binding: binary, structured and batch mode) appended to
 * source_stream in Stage 1's flat layout, where the workers consume them
 * like any other entry. A webhook so gets the stream's backlog, retries
 * and ledger: 202 is answered only once Redis has accepted the XADD.
 */
#ifndef STAGERELAY_INGRESS_H
#define STAGERELAY_INGRESS_H

#include <signal.h>
#include <stddef.h>

#include "config.h"
#include "metrics.h"
#include "worker.h"

struct ingress_opts {
	int			 listen_fd;	/* the master's listening socket */
	const char		*listen;	/* the address it is bound to */
	volatile sig_atomic_t	*stop;		/* SIGTERM/SIGINT */
	volatile sig_atomic_t	*reopen;	/* SIGUSR1: reopen the log */
	struct worker_shm	*shm;		/* heartbeat */
	struct metrics_ingress	*metrics;
};

/* Serves until *stop; returns an exit code (0, or 1 when it cannot serve). */
int	ingress_run(const struct config *, const struct ingress_opts *);

/* How a request carried its events (the CloudEvents HTTP binding). */
enum ingress_mode {
	INGRESS_BINARY = 0,	/* ce-* headers, data in the body */
	INGRESS_STRUCTURED,	/* application/cloudevents+json */
	INGRESS_BATCH,		/* application/cloudevents-batch+json */
	INGRESS_UNSUPPORTED	/* none of those: 415 */
};

/*
 * The mode of a request from its Content-Type (may be NULL) and whether
 * it has a ce-specversion header.
 */
enum ingress_mode ingress_mode_of(const char *content_type,
	    int has_ce_specversion);

/*
 * Percent-decodes a ce-* header value (HTTP binding 3.1.3.2) into a
 * malloc'd string (*outlen bytes, NUL-terminated); NULL when a '%' is
 * not followed by two hex digits. UTF-8 is the decoder's to check.
 */
char	*ingress_percent_decode(const char *value, size_t *outlen);

/*
 * Whether sig ("sha256=<64 hex digits>", any case) is the HMAC-SHA256 of
 * body under secret; compared in constant time.
 */
int	ingress_signature_ok(const char *secret, const char *body, size_t len,
	    const char *sig);

#endif
