/*
 * httpd.h: small HTTP servers (libmicrohttpd) driven from a process's own
 * loop, with no threads (the master forks, and a thread in a forking
 * process is trouble):
 *  - the master's GET server for /metrics, /healthz and /readyz: only GET
 *    and HEAD are served (anything else is 405), request bodies are
 *    ignored;
 *  - the ingress process's POST server: whole bodies up to a limit (413
 *    past it), handed to a handler with the request's headers.
 * Every response carries Cache-Control: no-store.
 */
#ifndef STAGERELAY_HTTPD_H
#define STAGERELAY_HTTPD_H

#include <stddef.h>

#include "util.h"
struct httpd;

/*
 * Answers one GET (or HEAD: the body is then dropped by the server).
 * Appends the body to body, may point *content_type at a static string
 * (default "text/plain; charset=utf-8") and returns the HTTP status.
 * Unknown paths are the handler's business: it returns 404.
 */
typedef int (*httpd_handler)(void *arg, const char *path, struct buf *body,
    const char **content_type);

/* A POST request, whole; valid during the handler's call only. */
struct httpd_request;

/* What a POST handler answers: body, content type, Retry-After. */
struct httpd_response {
	struct buf	 body;		/* initialised; freed by the server */
	const char	*content_type;	/* static; NULL: application/json */
	int		 retry_after;	/* seconds; 0: no header */
	const char	*allow;		/* static; an Allow header, or NULL */
};

/* Returns the HTTP status and fills res. */
typedef int (*httpd_post_handler)(void *arg, const struct httpd_request *,
    struct httpd_response *res);

/* A request header by name (case-insensitive), or NULL. Borrowed. */
const char	*httpd_header(const struct httpd_request *, const char *name);

/*
 * Calls fn for each request header in the order received (repeats
 * included) until it returns -1; returns -1 then, else 0.
 */
typedef int (*httpd_header_fn)(void *arg, const char *name,
    const char *value);
int		 httpd_headers(const struct httpd_request *, httpd_header_fn,
		    void *arg);

/* The method, the path (no query string), the body, "addr:port" of the client. */
const char	*httpd_method(const struct httpd_request *);
const char	*httpd_path(const struct httpd_request *);
const char	*httpd_body(const struct httpd_request *, size_t *len);
const char	*httpd_client(const struct httpd_request *);

/* max_body when the body was over it (and is not there), else 0. */
size_t		 httpd_body_too_large(const struct httpd_request *);

/*
 * Binds and listens on an address as httpd_start() reads it and returns
 * the socket (non-blocking, close-on-exec), the port in *port; -1 with
 * the reason in err. The master opens the ingress's socket so, and keeps
 * it across the ingress process's restarts.
 */
int		 httpd_listen(const char *listen, int *port, char *err,
		    size_t errlen);

/*
 * A POST server on a socket from httpd_listen(): the handler sees every
 * request once, whole, whatever its method (it answers 405 itself); a
 * body over max_body is dropped, and the handler told (a declared
 * Content-Length over it at once, before the body is read). At most
 * conn_max connections. httpd_stop() leaves the socket itself open for
 * its owner (no shutdown(), no close() of the master's descriptor).
 * NULL with err set on failure.
 */
struct httpd	*httpd_start_post(int fd, httpd_post_handler, void *arg,
		    size_t max_body, int conn_max, char *err, size_t errlen);

/*
 * Listens on "host:port" with numeric hosts: "127.0.0.1:9464",
 * "[::1]:9464", "[::]:9464" (IPv6 and IPv4), "0.0.0.0:9464" or ":9464"
 * (all IPv4). Port 0 picks a free port (see httpd_port()).
 * Returns NULL with a message in err on failure (bad address, port in
 * use: it says which). httpd_stop() the result.
 */
struct httpd	*httpd_start(const char *listen, httpd_handler, void *arg,
		    char *err, size_t errlen);

/* The port actually listened on (useful after port 0); -1 for NULL. */
int		 httpd_port(const struct httpd *);

/*
 * Serves requests for up to timeout_ms and returns early when a signal
 * arrives, like nanosleep(): it replaces the master's nap. With a NULL
 * httpd it just sleeps.
 */
void		 httpd_wait(struct httpd *, int timeout_ms);

/*
 * To be called in the child right after fork(): closes the listening
 * socket and any connection sockets without disturbing the parent (no
 * shutdown(), no MHD_stop_daemon()), so no worker holds a client's
 * connection or the port open. There is no exec, so FD_CLOEXEC alone
 * would not do. Safe with NULL; the child may then httpd_stop() it,
 * which frees only what is the child's to free.
 */
void		 httpd_close_in_child(struct httpd *);

/*
 * A POST server's graceful end: lets go of the listening socket (new
 * clients wait in its backlog for the next process, or are refused once
 * its owner closed it too) and serves the connections it has for up to
 * timeout_ms, until none is left. httpd_stop() follows.
 */
void		 httpd_drain(struct httpd *, int timeout_ms);

/* Stops serving, closes the sockets and frees the server. NULL-safe. */
void		 httpd_stop(struct httpd *);

/*
 * Checks a listen address the way httpd_start() reads it (numeric host,
 * no DNS): 0, or -1 with the reason in err. Used to validate the config.
 */
int	httpd_check_listen(const char *addr, char *err, size_t errlen);

#endif
