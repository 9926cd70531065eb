/*
 * httpd.c: HTTP servers, libmicrohttpd in external-select mode: the
 * master's GET endpoints (/metrics, /healthz, /readyz) and the ingress
 * process's POST endpoint.
 *
 * MHD runs no thread: httpd_wait() selects on its sockets in place of the
 * process's nap and lets it do one non-blocking pass at a time, so a slow
 * client costs the loop nothing but its turn. We bind the listening socket
 * ourselves and hand it to MHD: errors then say exactly what went wrong
 * (the port in use, an address not on this host), port 0 works, and we
 * know every descriptor a forked child must close.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "httpd.h"
#include "log.h"
#include "util.h"

#define CONN_MAX		16	/* scrapes and probes, not traffic */
#define CONN_TIMEOUT_S		10
#define CONN_MEMORY		(16 * 1024)	/* per connection: headers */
#define POST_CONN_MEMORY	(64 * 1024)	/* room for many ce-* headers */
#define LISTEN_BACKLOG		128	/* the ingress's clients queue here
					   while its process restarts */
#define CONTENT_TYPE_DEFAULT	"text/plain; charset=utf-8"

struct httpd {
	struct MHD_Daemon	*mhd;
	int			 listen_fd;
	int			 port;
	httpd_handler		 handler;	/* GET server, or NULL */
	httpd_post_handler	 post;		/* POST server, or NULL */
	void			*arg;
	size_t			 max_body;
	bool			 closed;	/* by httpd_close_in_child() */
	bool			 shared_fd;	/* the socket is the master's */
	bool			 quiesced;	/* listening socket let go */
	int			 conn_max;
	int			*conn_fds;	/* conn_max of them; -1: free */
};

/* A request body as it arrives (POST server). */
struct upload {
	struct buf	 body;
	bool		 too_large;	/* over max_body: dropped, 413 */
};

/* Marks a request answered at once (413 on its Content-Length). */
static struct upload answered_early;

struct httpd_request {
	const char		*method;
	const char		*path;
	const char		*body;
	size_t			 bodylen;
	bool			 too_large;	/* over max_body: no body */
	size_t			 max_body;
	char			 client[INET6_ADDRSTRLEN + 8];
	struct MHD_Connection	*conn;
};

/*
 * A child's copy of the parent's daemon: never stopped (that would shut
 * down the parent's connections), kept reachable so LeakSanitizer does not
 * count it as the child's leak.
 */
static struct MHD_Daemon *abandoned_in_child;

static void
nap(long long ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000L;
	nanosleep(&ts, NULL);	/* a signal cuts it short: good */
}

static void __attribute__((format(printf, 2, 0)))
mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	log_warnx("httpd: %s", msg);
}

/* "host:port", "[v6]:port" or ":port" into a socket address. */
static int
parse_listen(const char *addr, struct sockaddr_storage *ss,
    socklen_t *sslen, char *err, size_t errlen);

int
httpd_check_listen(const char *addr, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;

	return parse_listen(addr, &ss, &sslen, err, errlen);
}

static int
parse_listen(const char *addr, struct sockaddr_storage *ss,
    socklen_t *sslen, char *err, size_t errlen)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	char host[INET6_ADDRSTRLEN + 1];
	const char *colon, *p;
	size_t hostlen;
	bool v6 = false;
	long port = 0;

	memset(ss, 0, sizeof(*ss));
	if (addr == NULL || *addr == '\0') {
		snprintf(err, errlen, "listen address is empty: expected "
		    "host:port, e.g. 127.0.0.1:9464 or [::1]:9464");
		return -1;
	}
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');

		if (rb == NULL || rb[1] != ':')
			goto bad;
		v6 = true;
		hostlen = (size_t)(rb - addr - 1);
		memcpy(host, addr + 1, hostlen < sizeof(host) ?
		    hostlen : sizeof(host) - 1);
		colon = rb + 1;
	} else {
		if ((colon = strchr(addr, ':')) == NULL ||
		    strchr(colon + 1, ':') != NULL)
			goto bad;	/* no port, or IPv6 without [] */
		hostlen = (size_t)(colon - addr);
		memcpy(host, addr, hostlen < sizeof(host) ?
		    hostlen : sizeof(host) - 1);
	}
	if (hostlen >= sizeof(host))
		goto bad;
	host[hostlen] = '\0';

	if (colon[1] == '\0')
		goto bad;
	for (p = colon + 1; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || (port = port * 10 + (*p - '0')) >
		    65535) {
			snprintf(err, errlen, "listen address \"%s\": bad port "
			    "(0-65535)", addr);
			return -1;
		}
	}

	if (v6) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			goto badhost;
		*sslen = sizeof(*sin6);
	} else {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		if (hostlen == 0)
			sin->sin_addr.s_addr = htonl(INADDR_ANY);
		else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			goto badhost;
		*sslen = sizeof(*sin);
	}
	return 0;

badhost:
	snprintf(err, errlen, "listen address \"%s\": \"%s\" is not a numeric "
	    "%s address", addr, host, v6 ? "IPv6" : "IPv4");
	return -1;
bad:
	snprintf(err, errlen, "listen address \"%s\": expected host:port, e.g. "
	    "127.0.0.1:9464, [::1]:9464 or :9464", addr);
	return -1;
}

static int
open_listener(const char *addr, const struct sockaddr_storage *ss,
    socklen_t sslen, int *port, char *err, size_t errlen)
{
	struct sockaddr_storage bound;
	socklen_t boundlen = sizeof(bound);
	int fd, one = 1, zero = 0, saved;
	unsigned want = ntohs(ss->ss_family == AF_INET6 ?
	    ((const struct sockaddr_in6 *)ss)->sin6_port :
	    ((const struct sockaddr_in *)ss)->sin_port);

	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (fd == -1) {
		snprintf(err, errlen, "listen %s: socket: %s", addr,
		    strerror(errno));
		return -1;
	}
	/* A restarted master must not wait out its old connections' TIME_WAIT. */
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* [::] serves IPv4 too, whatever the host's bindv6only says. */
	if (ss->ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
		    sizeof(zero));
	if (bind(fd, (const struct sockaddr *)ss, sslen) == -1) {
		saved = errno;
		if (saved == EADDRINUSE)
			snprintf(err, errlen, "listen %s: port %u is already in "
			    "use (another stagerelay or exporter?)", addr,
			    want);
		else if (saved == EADDRNOTAVAIL)
			snprintf(err, errlen, "listen %s: address is not on "
			    "this host", addr);
		else if (saved == EACCES)
			snprintf(err, errlen, "listen %s: port %u needs "
			    "privileges", addr, want);
		else
			snprintf(err, errlen, "listen %s: bind: %s", addr,
			    strerror(saved));
		close(fd);
		return -1;
	}
	if (listen(fd, LISTEN_BACKLOG) == -1 ||
	    getsockname(fd, (struct sockaddr *)&bound, &boundlen) == -1) {
		snprintf(err, errlen, "listen %s: %s", addr, strerror(errno));
		close(fd);
		return -1;
	}
	*port = ntohs(bound.ss_family == AF_INET6 ?
	    ((struct sockaddr_in6 *)&bound)->sin6_port :
	    ((struct sockaddr_in *)&bound)->sin_port);
	return fd;
}

static enum MHD_Result
respond(struct MHD_Connection *c, unsigned int status, const char *body,
    size_t len, const char *content_type, const char *allow, int retry_after)
{
	char ra[16];
	struct MHD_Response *r;
	enum MHD_Result ret;

	/* Copied: the caller's buffer is freed before MHD sends it. */
	r = MHD_create_response_from_buffer(len, (void *)(len ? body : ""),
	    MHD_RESPMEM_MUST_COPY);
	if (r == NULL) {
		log_warnx("httpd: cannot create a response");
		return MHD_NO;	/* MHD closes the connection */
	}
	if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
	    content_type) != MHD_YES ||
	    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL,
	    "no-store") != MHD_YES ||
	    (allow != NULL && MHD_add_response_header(r,
	    MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES))
		log_warnx("httpd: cannot add a response header");
	if (retry_after > 0) {
		snprintf(ra, sizeof(ra), "%d", retry_after);
		if (MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER,
		    ra) != MHD_YES)
			log_warnx("httpd: cannot add a response header");
	}
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_data_size, void **req_cls)
{
	static int seen;
	struct httpd *h = cls;
	const char *content_type = CONTENT_TYPE_DEFAULT;
	struct buf body;
	enum MHD_Result ret;
	int status;

	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
	    strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
		static const char msg[] = "method not allowed\n";

		/* Answered before its body is read: MHD then closes. */
		if (*req_cls != NULL) {
			*upload_data_size = 0;
			return MHD_YES;
		}
		*req_cls = &seen;
		return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, msg,
		    sizeof(msg) - 1, CONTENT_TYPE_DEFAULT, "GET, HEAD", 0);
	}
	/*
	 * A GET is answered once the whole request is in: answering on the
	 * first call (headers only) would make MHD close the connection
	 * instead of keeping it alive for the next scrape. A body is ignored.
	 */
	if (*req_cls == NULL) {
		*req_cls = &seen;
		return MHD_YES;
	}
	if (*upload_data_size != 0) {
		*upload_data_size = 0;
		return MHD_YES;
	}

	/* HEAD too: MHD sends the headers (Content-Length included) only. */
	buf_init(&body);
	status = h->handler(h->arg, url, &body, &content_type);
	if (status < 100 || status > 599) {
		log_warnx("httpd: %s %s: handler returned status %d, sending 500",
		    method, url, status);
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
	if (content_type == NULL)
		content_type = CONTENT_TYPE_DEFAULT;
	ret = respond(c, (unsigned int)status, body.data, body.len,
	    content_type, NULL, 0);
	buf_free(&body);
	return ret;
}

static void
client_address(struct MHD_Connection *c, char *out, size_t outlen)
{
	const union MHD_ConnectionInfo *ci;
	const struct sockaddr *sa;
	char host[INET6_ADDRSTRLEN];

	snprintf(out, outlen, "unknown");
	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (ci == NULL || (sa = ci->client_addr) == NULL)
		return;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host)))
			snprintf(out, outlen, "%s:%u", host,
			    ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 =
		    (const struct sockaddr_in6 *)sa;

		if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host)))
			snprintf(out, outlen, "[%s]:%u", host,
			    ntohs(in6->sin6_port));
	}
}

/* Hands a whole request (or one refused for its size) to the handler. */
static enum MHD_Result
call_post(struct httpd *h, struct MHD_Connection *c, const char *url,
    const char *method, const struct upload *u, bool too_large)
{
	struct httpd_request req;
	struct httpd_response res;
	enum MHD_Result ret;
	int status;

	memset(&req, 0, sizeof(req));
	req.method = method;
	req.path = url;
	req.body = u != NULL && u->body.data != NULL ? u->body.data : "";
	req.bodylen = u != NULL ? u->body.len : 0;
	req.too_large = too_large;
	req.max_body = h->max_body;
	req.conn = c;
	client_address(c, req.client, sizeof(req.client));
	memset(&res, 0, sizeof(res));
	buf_init(&res.body);
	status = h->post(h->arg, &req, &res);
	if (status < 100 || status > 599) {
		log_warnx("httpd: %s %s: handler returned status %d, "
		    "sending 500", method, url, status);
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
	ret = respond(c, (unsigned int)status, res.body.data, res.body.len,
	    res.content_type != NULL ? res.content_type : "application/json",
	    res.allow, res.retry_after);
	buf_free(&res.body);
	return ret;
}

/*
 * The POST server: the body is gathered up to max_body (a declared
 * Content-Length over it is refused before anything is read), then the
 * handler sees the whole request once, whatever its method.
 */
static enum MHD_Result
on_post_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_data_size, void **req_cls)
{
	struct httpd *h = cls;
	struct upload *u = *req_cls;
	const char *cl;

	if (u == NULL) {
		cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
		    MHD_HTTP_HEADER_CONTENT_LENGTH);
		/* Answered now: MHD then closes instead of reading it all. */
		if (cl != NULL && strtoull(cl, NULL, 10) > h->max_body) {
			*req_cls = &answered_early;
			return call_post(h, c, url, method, NULL, true);
		}
		u = xcalloc(1, sizeof(*u));
		buf_init(&u->body);
		*req_cls = u;
		return MHD_YES;
	}
	if (u == &answered_early) {
		*upload_data_size = 0;	/* MHD should not call again; if so */
		return MHD_YES;
	}
	if (*upload_data_size != 0) {
		/* Chunked, or a Content-Length that lied: counted here. */
		if (!u->too_large && u->body.len + *upload_data_size <=
		    h->max_body)
			buf_append(&u->body, upload_data, *upload_data_size);
		else {
			u->too_large = true;
			buf_free(&u->body);
			buf_init(&u->body);
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	return call_post(h, c, url, method, u, u->too_large);
}

static void
on_post_completed(void *cls, struct MHD_Connection *c, void **req_cls,
    enum MHD_RequestTerminationCode code)
{
	const struct httpd *h = cls;
	struct upload *u = *req_cls;

	(void)c;
	(void)code;
	/* A GET server's req_cls is its static marker, never an upload. */
	if (h->post != NULL && u != NULL && u != &answered_early) {
		buf_free(&u->body);
		free(u);
		*req_cls = NULL;
	}
}

const char *
httpd_header(const struct httpd_request *req, const char *name)
{
	return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

struct header_walk {
	httpd_header_fn	 fn;
	void		*arg;
	int		 rv;
};

static enum MHD_Result
walk_header(void *cls, enum MHD_ValueKind kind, const char *key,
    const char *value)
{
	struct header_walk *w = cls;

	(void)kind;
	if (w->fn(w->arg, key, value != NULL ? value : "") == -1) {
		w->rv = -1;
		return MHD_NO;
	}
	return MHD_YES;
}

int
httpd_headers(const struct httpd_request *req, httpd_header_fn fn,
    void *arg)
{
	struct header_walk w = { fn, arg, 0 };

	MHD_get_connection_values(req->conn, MHD_HEADER_KIND, walk_header, &w);
	return w.rv;
}

const char *
httpd_client(const struct httpd_request *req)
{
	return req->client;
}

const char *
httpd_path(const struct httpd_request *req)
{
	return req->path;
}

const char *
httpd_method(const struct httpd_request *req)
{
	return req->method;
}

size_t
httpd_body_too_large(const struct httpd_request *req)
{
	return req->too_large ? req->max_body : 0;
}

const char *
httpd_body(const struct httpd_request *req, size_t *len)
{
	*len = req->bodylen;
	return req->body;
}

/* Keeps track of the connection sockets a forked child has to close. */
static void
on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
    enum MHD_ConnectionNotificationCode code)
{
	struct httpd *h = cls;
	const union MHD_ConnectionInfo *ci;
	int *slot;

	if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		if ((slot = *socket_context) != NULL)
			*slot = -1;
		*socket_context = NULL;
		return;
	}
	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (ci == NULL)
		return;
	for (int i = 0; i < h->conn_max; i++) {
		if (h->conn_fds[i] == -1) {
			h->conn_fds[i] = ci->connect_fd;
			*socket_context = &h->conn_fds[i];
			return;
		}
	}
	/* MHD_OPTION_CONNECTION_LIMIT makes this unreachable. */
	log_warnx("httpd: more than %d connections: fd %d not tracked",
	    h->conn_max, ci->connect_fd);
}

int
httpd_listen(const char *listen, int *port, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;

	if (parse_listen(listen, &ss, &sslen, err, errlen) == -1)
		return -1;
	return open_listener(listen, &ss, sslen, port, err, errlen);
}

/* MHD on a bound socket; h is filled but for the handlers. */
static int
start_mhd(struct httpd *h, int fd, int conn_max, size_t conn_memory,
    const char *what, char *err, size_t errlen)
{
	struct sockaddr_storage bound;
	socklen_t boundlen = sizeof(bound);
	unsigned int flags = MHD_USE_ERROR_LOG;	/* no thread flag: external select */

	if (getsockname(fd, (struct sockaddr *)&bound, &boundlen) == -1) {
		snprintf(err, errlen, "%s: getsockname: %s", what,
		    strerror(errno));
		return -1;
	}
	if (bound.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h->listen_fd = fd;
	h->port = ntohs(bound.ss_family == AF_INET6 ?
	    ((struct sockaddr_in6 *)&bound)->sin6_port :
	    ((struct sockaddr_in *)&bound)->sin_port);
	h->conn_max = conn_max;
	h->conn_fds = xcalloc((size_t)conn_max, sizeof(*h->conn_fds));
	for (int i = 0; i < conn_max; i++)
		h->conn_fds[i] = -1;
	/* on_post_completed() frees a POST server's uploads, nothing else. */
	h->mhd = MHD_start_daemon(flags, 0, NULL, NULL,
	    h->post != NULL ? on_post_request : on_request, h,
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned int)conn_max,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)CONN_TIMEOUT_S,
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, conn_memory,
	    MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
	    MHD_OPTION_NOTIFY_COMPLETED, on_post_completed, h,
	    MHD_OPTION_END);
	if (h->mhd == NULL) {
		snprintf(err, errlen, "%s: libmicrohttpd failed to start",
		    what);
		free(h->conn_fds);
		return -1;
	}
	return 0;
}

struct httpd *
httpd_start(const char *listen, httpd_handler handler, void *arg, char *err,
    size_t errlen)
{
	struct httpd *h;
	int fd, port;

	if ((fd = httpd_listen(listen, &port, err, errlen)) == -1)
		return NULL;
	h = xcalloc(1, sizeof(*h));
	h->handler = handler;
	h->arg = arg;
	if (start_mhd(h, fd, CONN_MAX, CONN_MEMORY, listen, err,
	    errlen) == -1) {
		snprintf(err, errlen, "listen %s: libmicrohttpd failed to start",
		    listen);
		close(fd);
		free(h);
		return NULL;
	}
	return h;
}

struct httpd *
httpd_start_post(int fd, httpd_post_handler handler, void *arg,
    size_t max_body, int conn_max, char *err, size_t errlen)
{
	struct httpd *h;

	h = xcalloc(1, sizeof(*h));
	h->post = handler;
	h->arg = arg;
	h->max_body = max_body;
	h->shared_fd = true;
	if (start_mhd(h, fd, conn_max, POST_CONN_MEMORY, "ingress", err,
	    errlen) == -1) {
		free(h);
		return NULL;
	}
	return h;
}

int
httpd_port(const struct httpd *h)
{
	return h != NULL ? h->port : -1;
}

void
httpd_wait(struct httpd *h, int timeout_ms)
{
	long long deadline, left;
	MHD_UNSIGNED_LONG_LONG mhd_ms;
	fd_set rs, ws, es;
	MHD_socket maxfd;
	struct timeval tv;

	if (h == NULL || h->closed) {
		nap(timeout_ms);
		return;
	}
	deadline = now_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	do {
		left = deadline - now_mono_ms();
		if (left < 0)
			left = 0;
		FD_ZERO(&rs);
		FD_ZERO(&ws);
		FD_ZERO(&es);
		maxfd = MHD_INVALID_SOCKET;
		if (MHD_get_fdset2(h->mhd, &rs, &ws, &es, &maxfd,
		    FD_SETSIZE) != MHD_YES) {
			/* Only with a descriptor past FD_SETSIZE: no fd leak
			 * in the master could get us here quietly. */
			log_warnx("httpd: cannot get the sockets to wait on");
			nap(left);
			return;
		}
		if (MHD_get_timeout(h->mhd, &mhd_ms) == MHD_YES &&
		    mhd_ms < (MHD_UNSIGNED_LONG_LONG)left)
			left = (long long)mhd_ms;
		tv.tv_sec = (time_t)(left / 1000);
		tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
		if (select(maxfd + 1, &rs, &ws, &es, &tv) == -1) {
			if (errno == EINTR)
				return;	/* a signal: the loop has work */
			log_warn("httpd: select");
			nap(deadline - now_mono_ms());
			return;
		}
		/* Non-blocking: one pass over whatever is ready or timed out. */
		MHD_run_from_select(h->mhd, &rs, &ws, &es);
	} while (now_mono_ms() < deadline);
}

void
httpd_close_in_child(struct httpd *h)
{
	if (h == NULL || h->closed)
		return;
	/* close(), never shutdown(): the parent's sockets stay as they are. */
	for (int i = 0; i < h->conn_max; i++) {
		if (h->conn_fds[i] != -1) {
			close(h->conn_fds[i]);
			h->conn_fds[i] = -1;
		}
	}
	close(h->listen_fd);
	h->listen_fd = -1;
	abandoned_in_child = h->mhd;
	h->mhd = NULL;
	h->closed = true;
}

/*
 * The master keeps the socket for the next ingress process: MHD lets go
 * of it, and only our descriptor is closed (no shutdown()).
 */
static void
quiesce(struct httpd *h)
{
	MHD_socket fd;

	if (h->quiesced)
		return;
	h->quiesced = true;
	if ((fd = MHD_quiesce_daemon(h->mhd)) != MHD_INVALID_SOCKET)
		close(fd);
}

void
httpd_drain(struct httpd *h, int timeout_ms)
{
	const union MHD_DaemonInfo *di;
	long long deadline = now_mono_ms() + timeout_ms;

	if (h == NULL || h->mhd == NULL || h->closed)
		return;
	quiesce(h);
	while (now_mono_ms() < deadline) {
		di = MHD_get_daemon_info(h->mhd,
		    MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
		if (di == NULL || di->num_connections == 0)
			return;
		httpd_wait(h, 50);
	}
}

void
httpd_stop(struct httpd *h)
{
	if (h == NULL)
		return;
	if (h->mhd != NULL && h->shared_fd)
		quiesce(h);
	if (h->mhd != NULL)
		MHD_stop_daemon(h->mhd);	/* closes the listening socket too */
	free(h->conn_fds);
	free(h);
}
