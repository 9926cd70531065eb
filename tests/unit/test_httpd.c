/*
 * test_httpd.c: the master's HTTP server, as a scraper or probe sees it.
 *
 * The test process runs the server (looping httpd_wait() like the master);
 * a forked child, which first does what a worker does (httpd_close_in_child),
 * makes raw HTTP requests and hands the responses back through a pipe.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1	/* strcasestr */
#endif

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "unit.h"

#include "httpd.h"
#include "util.h"

#define NREQ_MAX	8

struct calls {
	int	n;
};

static int
handler(void *arg, const char *path, struct buf *body,
    const char **content_type)
{
	struct calls *calls = arg;

	calls->n++;
	if (strcmp(path, "/metrics") == 0) {
		*content_type = "text/plain; version=0.0.4; charset=utf-8";
		buf_puts(body, "stagerelay_up 1\n");
		return 200;
	}
	if (strcmp(path, "/healthz") == 0) {
		buf_puts(body, "ok\n");
		return 200;
	}
	buf_puts(body, "not found\n");
	return 404;
}

static struct httpd *
start(const char *listen, struct calls *calls)
{
	char err[256] = "";
	struct httpd *h = httpd_start(listen, handler, calls, err, sizeof(err));

	ck_assert_msg(h != NULL, "httpd_start(%s): %s", listen, err);
	ck_assert_int_gt(httpd_port(h), 0);
	return h;
}

static int
connect_to(int family, int port)
{
	struct sockaddr_storage ss;
	struct timeval tv = { 5, 0 };
	socklen_t len;
	int fd;

	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		sin6->sin6_addr = in6addr_loopback;
		len = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*sin);
	}
	if ((fd = socket(family, SOCK_STREAM, 0)) == -1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&ss, len) == -1) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One request on its own connection; the raw response, or "" on error. */
static char *
request(int family, int port, const char *req)
{
	struct buf resp;
	char chunk[4096];
	ssize_t n;
	int fd;

	buf_init(&resp);
	buf_puts(&resp, "");
	if ((fd = connect_to(family, port)) == -1)
		return buf_steal(&resp);
	if (write(fd, req, strlen(req)) == (ssize_t)strlen(req))
		while ((n = read(fd, chunk, sizeof(chunk))) > 0)
			buf_append(&resp, chunk, (size_t)n);
	close(fd);
	return buf_steal(&resp);
}

/*
 * Makes the requests from a forked child while this process serves them;
 * fills resp[i] (free() them).
 */
static void
exchange(struct httpd *h, int family, const char **reqs, size_t n,
    char **resp)
{
	long long deadline = now_mono_ms() + 3000;
	int pfd[2], status;
	pid_t pid;

	ck_assert_int_eq(pipe(pfd), 0);
	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid == 0) {
		httpd_close_in_child(h);
		close(pfd[0]);
		for (size_t i = 0; i < n; i++) {
			char *r = request(family, httpd_port(h), reqs[i]);
			size_t len = strlen(r);

			if (write(pfd[1], &len, sizeof(len)) != sizeof(len) ||
			    write(pfd[1], r, len) != (ssize_t)len)
				_exit(2);
			free(r);
		}
		_exit(0);
	}
	close(pfd[1]);
	while (waitpid(pid, &status, WNOHANG) == 0) {
		ck_assert_msg(now_mono_ms() < deadline, "client hangs");
		httpd_wait(h, 50);
	}
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (size_t i = 0; i < n; i++) {
		size_t len;

		ck_assert_int_eq(read(pfd[0], &len, sizeof(len)), sizeof(len));
		resp[i] = xmalloc(len + 1);
		ck_assert_int_eq(read(pfd[0], resp[i], len), (ssize_t)len);
		resp[i][len] = '\0';
	}
	close(pfd[0]);
}

static char *
one(struct httpd *h, const char *req)
{
	char *resp;

	exchange(h, AF_INET, &req, 1, &resp);
	return resp;
}

static const char *
body_of(const char *resp)
{
	const char *p = strstr(resp, "\r\n\r\n");

	ck_assert_msg(p != NULL, "no end of headers in: %s", resp);
	return p + 4;
}

/* Open sockets (not just fds: valgrind and Check keep files of their own). */
static int
count_sockets(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	char path[300], target[64];
	ssize_t n;
	int count = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		n = readlink(path, target, sizeof(target) - 1);
		if (n > 0 && strncmp(target, "socket:", 7) == 0)
			count++;
	}
	closedir(d);
	return count;
}

START_TEST(test_get_answers_from_handler)
{
	struct calls calls = { 0 };
	struct httpd *h = start("127.0.0.1:0", &calls);
	const char *reqs[] = {
		"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /healthz HTTP/1.0\r\n\r\n",
	};
	char *resp[2];

	exchange(h, AF_INET, reqs, 2, resp);
	ck_assert_msg(strncmp(resp[0], "HTTP/1.1 200", 12) == 0, "%s", resp[0]);
	ck_assert_ptr_nonnull(strcasestr(resp[0], "\r\nContent-Type: text/plain; "
	    "version=0.0.4; charset=utf-8\r\n"));
	ck_assert_ptr_nonnull(strcasestr(resp[0],
	    "\r\nCache-Control: no-store\r\n"));
	ck_assert_str_eq(body_of(resp[0]), "stagerelay_up 1\n");

	ck_assert_msg(strncmp(resp[1], "HTTP/1.", 7) == 0 &&
	    strncmp(resp[1] + 8, " 200", 4) == 0, "%s", resp[1]);
	ck_assert_ptr_nonnull(strcasestr(resp[1],
	    "\r\nContent-Type: text/plain; charset=utf-8\r\n"));
	ck_assert_str_eq(body_of(resp[1]), "ok\n");
	ck_assert_int_eq(calls.n, 2);
	free(resp[0]);
	free(resp[1]);
	httpd_stop(h);
}
END_TEST

START_TEST(test_unknown_path_is_the_handlers_404)
{
	struct calls calls = { 0 };
	struct httpd *h = start("127.0.0.1:0", &calls);
	char *resp = one(h, "GET /nope HTTP/1.1\r\nHost: x\r\n"
	    "Connection: close\r\n\r\n");

	ck_assert_msg(strncmp(resp, "HTTP/1.1 404", 12) == 0, "%s", resp);
	ck_assert_str_eq(body_of(resp), "not found\n");
	ck_assert_int_eq(calls.n, 1);
	free(resp);
	httpd_stop(h);
}
END_TEST

START_TEST(test_other_methods_are_405_and_bodies_ignored)
{
	static const char *methods[] = { "POST", "PUT", "DELETE", "OPTIONS" };
	struct calls calls = { 0 };
	struct httpd *h = start("127.0.0.1:0", &calls);

	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		char *req = xasprintf("%s /metrics HTTP/1.1\r\nHost: x\r\n"
		    "Connection: close\r\nContent-Type: text/plain\r\n"
		    "Content-Length: 11\r\n\r\nhello world", methods[i]);
		char *resp = one(h, req);

		ck_assert_msg(strncmp(resp, "HTTP/1.1 405", 12) == 0, "%s: %s",
		    methods[i], resp);
		ck_assert_ptr_nonnull(strcasestr(resp,
		    "\r\nAllow: GET, HEAD\r\n"));
		ck_assert_ptr_nonnull(strcasestr(resp,
		    "\r\nCache-Control: no-store\r\n"));
		free(req);
		free(resp);
	}
	ck_assert_int_eq(calls.n, 0);
	httpd_stop(h);
}
END_TEST

START_TEST(test_head_has_headers_but_no_body)
{
	struct calls calls = { 0 };
	struct httpd *h = start("127.0.0.1:0", &calls);
	char *resp = one(h, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n"
	    "Connection: close\r\n\r\n");

	ck_assert_msg(strncmp(resp, "HTTP/1.1 200", 12) == 0, "%s", resp);
	ck_assert_ptr_nonnull(strcasestr(resp, "\r\nContent-Length: 16\r\n"));
	ck_assert_ptr_nonnull(strcasestr(resp, "\r\nContent-Type: text/plain; "
	    "version=0.0.4"));
	ck_assert_str_eq(body_of(resp), "");
	free(resp);
	httpd_stop(h);
}
END_TEST

START_TEST(test_ipv6_loopback)
{
	struct calls calls = { 0 };
	char err[256];
	struct httpd *h;
	char *resp;
	const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n"
	    "Connection: close\r\n\r\n";

	h = httpd_start("[::1]:0", handler, &calls, err, sizeof(err));
	if (h == NULL) {
		/* A host without IPv6 (some containers): nothing to test. */
		ck_assert_msg(strstr(err, "[::1]:0") != NULL, "%s", err);
		return;
	}
	exchange(h, AF_INET6, &req, 1, &resp);
	ck_assert_msg(strncmp(resp, "HTTP/1.1 200", 12) == 0, "%s", resp);
	free(resp);
	httpd_stop(h);
}
END_TEST

START_TEST(test_bad_listen_address_says_why)
{
	static const char *bad[] = {
		"", "9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
		"127.0.0.1:94x4", "1.2.3:9464", "localhost:9464", "::1:9464",
		"[::1:9464", "[::1]9464", "[nonsense]:9464",
	};
	char err[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		ck_assert_ptr_null(httpd_start(bad[i], handler, NULL, err,
		    sizeof(err)));
		ck_assert_msg(strstr(err, "listen address") != NULL, "%s: %s",
		    bad[i], err);
		if (bad[i][0] != '\0')
			ck_assert_msg(strstr(err, bad[i]) != NULL, "%s: %s",
			    bad[i], err);
	}
	ck_assert_ptr_null(httpd_start(NULL, handler, NULL, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "empty"));
}
END_TEST

START_TEST(test_port_in_use_says_which)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	char listen_at[64], port[16], err[256] = "";
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	ck_assert_int_eq(listen(fd, 1), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	snprintf(port, sizeof(port), "%d", ntohs(sin.sin_port));
	snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%s", port);

	ck_assert_ptr_null(httpd_start(listen_at, handler, NULL, err,
	    sizeof(err)));
	ck_assert_msg(strstr(err, "in use") != NULL, "%s", err);
	ck_assert_msg(strstr(err, port) != NULL, "%s", err);
	close(fd);
}
END_TEST

START_TEST(test_address_not_on_this_host)
{
	char err[256] = "";

	/* TEST-NET-1, never a local address. */
	ck_assert_ptr_null(httpd_start("192.0.2.1:9464", handler, NULL, err,
	    sizeof(err)));
	ck_assert_msg(strstr(err, "not on this host") != NULL, "%s", err);
}
END_TEST

START_TEST(test_wait_sleeps_about_the_time_asked)
{
	struct calls calls = { 0 };
	struct httpd *h;
	long long t0, dt;
	int fd;

	t0 = now_mono_ms();
	httpd_wait(NULL, 150);
	dt = now_mono_ms() - t0;
	ck_assert_msg(dt >= 140 && dt < 400, "NULL: slept %lld ms", dt);

	h = start("127.0.0.1:0", &calls);
	t0 = now_mono_ms();
	httpd_wait(h, 150);
	dt = now_mono_ms() - t0;
	ck_assert_msg(dt >= 140 && dt < 400, "idle: slept %lld ms", dt);

	/* A client that sends half a request holds up nothing. */
	fd = connect_to(AF_INET, httpd_port(h));
	ck_assert_int_eq(write(fd, "GET /metr", 9), 9);
	t0 = now_mono_ms();
	httpd_wait(h, 150);
	dt = now_mono_ms() - t0;
	ck_assert_msg(dt >= 140 && dt < 400, "slow client: %lld ms", dt);
	ck_assert_int_eq(calls.n, 0);
	close(fd);
	httpd_stop(h);
}
END_TEST

static void
on_alarm(int sig)
{
	(void)sig;
}

START_TEST(test_wait_returns_when_a_signal_arrives)
{
	struct itimerval it = { { 0, 0 }, { 0, 50 * 1000 } };
	struct sigaction sa;
	struct calls calls = { 0 };
	struct httpd *h = start("127.0.0.1:0", &calls);
	long long t0, dt;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;	/* SA_RESTART or not: select() stops */
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);

	t0 = now_mono_ms();
	setitimer(ITIMER_REAL, &it, NULL);
	httpd_wait(h, 2000);
	dt = now_mono_ms() - t0;
	ck_assert_msg(dt < 1000, "waited %lld ms despite the signal", dt);

	t0 = now_mono_ms();
	setitimer(ITIMER_REAL, &it, NULL);
	httpd_wait(NULL, 2000);
	dt = now_mono_ms() - t0;
	ck_assert_msg(dt < 1000, "NULL: slept %lld ms despite the signal", dt);
	httpd_stop(h);
}
END_TEST

/*
 * A worker forked while a scrape is in flight holds neither the port nor
 * the scraper's connection, and the master serves on undisturbed.
 */
START_TEST(test_close_in_child_leaves_nothing_and_parent_serves)
{
	struct calls calls = { 0 };
	const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
	struct httpd *h;
	struct buf resp;
	char chunk[1024];
	int before, cfd, status;
	ssize_t n;
	pid_t pid;

	before = count_sockets();
	h = start("127.0.0.1:0", &calls);
	cfd = connect_to(AF_INET, httpd_port(h));
	ck_assert_int_ne(cfd, -1);
	/* Accepted and served once, kept alive: a connection fd in MHD. */
	ck_assert_int_eq(write(cfd, req, strlen(req)), (ssize_t)strlen(req));
	buf_init(&resp);
	for (long long end = now_mono_ms() + 2000;
	    strstr(resp.data ? resp.data : "", "ok\n") == NULL &&
	    now_mono_ms() < end; ) {
		httpd_wait(h, 20);
		while ((n = recv(cfd, chunk, sizeof(chunk), MSG_DONTWAIT)) > 0)
			buf_append(&resp, chunk, (size_t)n);
	}
	ck_assert_msg(resp.data != NULL && strstr(resp.data, "ok\n") != NULL,
	    "no first response");
	buf_reset(&resp);

	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid == 0) {
		httpd_close_in_child(h);
		httpd_close_in_child(h);	/* twice is harmless */
		httpd_wait(h, 10);		/* a closed one just sleeps */
		httpd_stop(h);
		/* What is left is the test's own client socket. */
		_exit(count_sockets() == before + 1 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "the child kept descriptors open");

	/* The same kept-alive connection still works in the parent. */
	ck_assert_int_eq(write(cfd, req, strlen(req)), (ssize_t)strlen(req));
	for (long long end = now_mono_ms() + 2000;
	    strstr(resp.data ? resp.data : "", "ok\n") == NULL &&
	    now_mono_ms() < end; ) {
		httpd_wait(h, 20);
		while ((n = recv(cfd, chunk, sizeof(chunk), MSG_DONTWAIT)) > 0)
			buf_append(&resp, chunk, (size_t)n);
	}
	ck_assert_msg(resp.data != NULL && strstr(resp.data, "ok\n") != NULL,
	    "no second response");
	buf_free(&resp);
	close(cfd);
	httpd_stop(h);
	ck_assert_int_eq(count_sockets(), before);	/* stop closed them all */
}
END_TEST

START_TEST(test_null_is_safe)
{
	httpd_close_in_child(NULL);
	httpd_stop(NULL);
	ck_assert_int_eq(httpd_port(NULL), -1);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("httpd");
	TCase *tc = tcase_create("serve");

	tcase_add_test(tc, test_get_answers_from_handler);
	tcase_add_test(tc, test_unknown_path_is_the_handlers_404);
	tcase_add_test(tc, test_other_methods_are_405_and_bodies_ignored);
	tcase_add_test(tc, test_head_has_headers_but_no_body);
	tcase_add_test(tc, test_ipv6_loopback);
	tcase_add_test(tc, test_bad_listen_address_says_why);
	tcase_add_test(tc, test_port_in_use_says_which);
	tcase_add_test(tc, test_address_not_on_this_host);
	tcase_add_test(tc, test_wait_sleeps_about_the_time_asked);
	tcase_add_test(tc, test_wait_returns_when_a_signal_arrives);
	tcase_add_test(tc, test_close_in_child_leaves_nothing_and_parent_serves);
	tcase_add_test(tc, test_null_is_safe);
	suite_add_tcase(s, tc);
	return unit_run(s);
}
