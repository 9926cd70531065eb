/*
 * httpd.h: the master's small HTTP server (libmicrohttpd) for /metrics,
 * /healthz and /readyz, driven from the master's loop: no threads of its
 * own (the master forks, and a thread in a forking process is trouble).
 *
 * Only GET and HEAD are served (anything else is 405); request bodies are
 * ignored; every response carries Cache-Control: no-store.
 */
#ifndef STAGERELAY_HTTPD_H
#define STAGERELAY_HTTPD_H

#include <stddef.h>

struct buf;	/* util.h */
struct httpd;

/*
 * Answers one GET (or HEAD: the body is then dropped by the server).
 * Appends the body to body, may point *content_type at a static string
 * (default "text/plain; charset=utf-8") and returns the HTTP status.
 * Unknown paths are the handler's business: it returns 404.
 */
typedef int (*httpd_handler)(void *arg, const char *path, struct buf *body,
    const char **content_type);

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

/* Stops serving, closes the sockets and frees the server. NULL-safe. */
void		 httpd_stop(struct httpd *);

/*
 * Checks a listen address the way httpd_start() reads it (numeric host,
 * no DNS): 0, or -1 with the reason in err. Used to validate the config.
 */
int	httpd_check_listen(const char *addr, char *err, size_t errlen);

#endif
