/*
 * supervisor.c: the master process (DESIGN.md §6).
 *
 * The master parses the config, maps the slots' shared state, and forks one
 * worker per slot; it never opens a Redis, PostgreSQL or HTTP connection,
 * so none can cross a fork. Signal handlers only set flags; the loop below
 * reaps, respawns with backoff, kills hung workers, reloads and stops, and
 * in between serves /metrics, /healthz and /readyz from what the workers
 * wrote into shared memory (its listening socket is closed in every child).
 * With ingress.enabled one more child, the ingress, serves CloudEvents over
 * HTTP on a socket the master opened and keeps across its restarts.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "httpd.h"
#include "ingress.h"
#include "log.h"
#include "metrics.h"
#include "supervisor.h"
#include "util.h"
#include "worker.h"

#define SLOTS_MAX		256
#define INGRESS_SLOT		(SLOTS_MAX + 1)	/* the ingress process */
#define SLOT_LAST		INGRESS_SLOT
#define BACKOFF_MIN_MS		1000
#define BACKOFF_MAX_MS		60000
#define STABLE_RUN_MS		30000	/* a run this long resets the backoff */
#define CRASH_WINDOW_MS		60000
#define CRASHES_PER_WORKER	3	/* in the window, times workers: brake */
#define HUNG_KILL_GRACE_MS	5000	/* ABRT, then KILL after this */

enum slot_state {
	SLOT_EMPTY = 0,		/* no process, none wanted */
	SLOT_RUNNING,
	SLOT_WAITING,		/* dead, respawn at respawn_at */
	SLOT_STOPPING,		/* told to exit; not respawned */
	SLOT_RESTARTING,	/* told to exit for a reload; respawn at once */
	SLOT_CONFIG_ERROR	/* exited 78: never respawned */
};

struct slot {
	enum slot_state	 state;
	pid_t		 pid;
	long long	 started_ms;
	long long	 respawn_at_ms;
	long long	 abrt_at_ms;	/* hung: when ABRT was sent, or 0 */
	int		 backoff_ms;
	bool		 restart;	/* reload: restart when its turn comes */
};

static volatile sig_atomic_t sig_stop, sig_hup, sig_ttin, sig_ttou,
    sig_usr1, sig_chld;
/* Worker-side flags (the child's handlers). */
static volatile sig_atomic_t child_stop, child_reopen;

static struct {
	struct config		*cfg;
	const struct supervisor_opts *opts;
	struct slot		 slots[SLOT_LAST + 1];	/* 1-based */
	struct worker_shm	*shm;			/* SLOT_LAST + 1 entries */
	struct metrics_shm	*metrics;		/* mapped before fork too */
	struct httpd		*httpd;			/* NULL: metrics.listen "" */
	int			 ingress_fd;		/* -1: no ingress */
	char			*ingress_listen;	/* what ingress_fd is bound to */
	int			 workers;		/* wanted */
	int			 pipe_r, pipe_w;	/* parent-death pipe */
	long long		 crashes[(SLOTS_MAX + 1) * CRASHES_PER_WORKER];
	size_t			 ncrashes;
	unsigned long		 restarts;
	bool			 ready_sent;
	bool			 reloading;
	long long		 watchdog_ms;		/* 0 = off */
	long long		 watchdog_last;
	long long		 status_last;
	pid_t			 master_pid;
} m;

/* ---- process titles ---------------------------------------------------- */

static char	*title_base;
static size_t	 title_len;

void
proctitle_init(int argc, char **argv)
{
	char *end;

	if (argc < 1 || argv[0] == NULL)
		return;
	/* Only the argv area: environ stays where it is. */
	end = argv[argc - 1] + strlen(argv[argc - 1]);
	title_base = argv[0];
	title_len = (size_t)(end - argv[0]);
}

void
proctitle_set(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	prctl(PR_SET_NAME, buf + (strncmp(buf, "stagerelay: ", 12) == 0 ?
	    12 : 0), 0, 0, 0);
	if (title_base == NULL || title_len < 2)
		return;
	memset(title_base, '\0', title_len);
	strlcpy_s(title_base, buf, title_len);
}

/* ---- sd_notify ---------------------------------------------------------- */

void
sd_notify_send(const char *fmt, ...)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t len;
	char msg[512];
	va_list ap;
	int fd;

	if (path == NULL || *path == '\0')
		return;
	if ((path[0] != '/' && path[0] != '@') ||
	    strlen(path) >= sizeof(sun.sun_path))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path));
	if (path[0] == '@')
		sun.sun_path[0] = '\0';		/* abstract namespace */
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1)
		return;
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL,
	    (struct sockaddr *)&sun, len) == -1)
		log_debug("sd_notify: %s", strerror(errno));
	close(fd);
}

/* ---- signals ------------------------------------------------------------ */

static void
on_master_signal(int sig)
{
	switch (sig) {
	case SIGTERM:
	case SIGINT:
		sig_stop = 1;
		break;
	case SIGHUP:
		sig_hup = 1;
		break;
	case SIGTTIN:
		sig_ttin = 1;
		break;
	case SIGTTOU:
		sig_ttou = 1;
		break;
	case SIGUSR1:
		sig_usr1 = 1;
		break;
	case SIGCHLD:
		sig_chld = 1;
		break;
	}
}

static void
on_child_signal(int sig)
{
	if (sig == SIGUSR1)
		child_reopen = 1;
	else
		child_stop = 1;
}

static void
set_handler(int sig, void (*fn)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = flags;
	sa.sa_handler = fn;
	sigaction(sig, &sa, NULL);
}

/* ---- workers ------------------------------------------------------------ */

/* The ingress's part of child_main(), once it is a child of its own. */
static void __attribute__((noreturn))
ingress_child(void)
{
	struct ingress_opts opts;
	int code;

	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	if (getppid() != m.master_pid)
		_exit(0);
	config_forget_secrets(m.cfg, CONFIG_ROLE_INGRESS);
	log_set_procname("ingress");
	proctitle_set("stagerelay: ingress (%s)", m.ingress_listen);
	memset(&opts, 0, sizeof(opts));
	opts.listen_fd = m.ingress_fd;
	opts.listen = m.ingress_listen;
	opts.stop = &child_stop;
	opts.reopen = &child_reopen;
	opts.shm = &m.shm[INGRESS_SLOT];
	opts.metrics = &m.metrics->ingress;
	close(m.pipe_r);
	code = ingress_run(m.cfg, &opts);	/* closes its copy of the socket */
#ifdef STAGERELAY_DEBUG
	config_free(m.cfg);
#endif
	exit(code);
}

/* "3", or "ingress", for log lines. */
static const char *
slot_name(int slot, char *buf, size_t len)
{
	if (slot == INGRESS_SLOT)
		snprintf(buf, len, "ingress");
	else
		snprintf(buf, len, "%d", slot);
	return buf;
}

static void __attribute__((noreturn))
child_main(int slot)
{
	struct worker_opts opts;
	char proc[32];
	int code;

	/* A worker of its own: its signals, its title, no systemd socket. */
	set_handler(SIGTERM, on_child_signal, SA_RESTART);
	set_handler(SIGINT, on_child_signal, SA_RESTART);
	set_handler(SIGUSR1, on_child_signal, SA_RESTART);
	set_handler(SIGHUP, SIG_IGN, 0);
	set_handler(SIGTTIN, SIG_IGN, 0);
	set_handler(SIGTTOU, SIG_IGN, 0);
	set_handler(SIGCHLD, SIG_DFL, 0);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	close(m.pipe_w);
	httpd_close_in_child(m.httpd);
	if (slot == INGRESS_SLOT)
		ingress_child();
	if (m.ingress_fd != -1)
		close(m.ingress_fd);	/* only the ingress serves it */
	config_forget_secrets(m.cfg, CONFIG_ROLE_WORKER);
	/* The master dying sends us TERM; the pipe covers the race before. */
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	if (getppid() != m.master_pid)
		_exit(0);

	snprintf(proc, sizeof(proc), "worker-%d", slot);
	log_set_procname(proc);
	proctitle_set("stagerelay: worker %d (%s-%d)", slot,
	    m.cfg->consumer_name, slot);

	memset(&opts, 0, sizeof(opts));
	opts.slot = slot;
	opts.stop = &child_stop;
	opts.reopen = &child_reopen;
	opts.shm = &m.shm[slot];
	opts.workers = &m.shm[0].workers;
	opts.metrics = m.metrics;
	opts.master_fd = m.pipe_r;
	code = worker_run(m.cfg, &opts);
#ifdef STAGERELAY_DEBUG
	config_free(m.cfg);
#endif
	exit(code);
}

static void
spawn(int slot)
{
	struct slot *s = &m.slots[slot];
	char pidbuf[16], slotbuf[16], cons[256];
	pid_t pid;

	m.shm[slot].heartbeat_ms = now_mono_ms();
	m.shm[slot].connected = 0;
	fflush(NULL);
	if ((pid = fork()) == -1) {
		log_warn("master: fork for slot %d", slot);
		s->state = SLOT_WAITING;
		s->respawn_at_ms = now_mono_ms() + BACKOFF_MIN_MS;
		return;
	}
	if (pid == 0)
		child_main(slot);
	s->pid = pid;
	s->state = SLOT_RUNNING;
	s->started_ms = now_mono_ms();
	s->abrt_at_ms = 0;
	snprintf(pidbuf, sizeof(pidbuf), "%d", (int)pid);
	if (slot == INGRESS_SLOT) {
		log_event(LOG_INFO, "ingress_spawned", "pid", pidbuf, "listen",
		    m.cfg->ingress.listen, (const char *)NULL);
		return;
	}
	snprintf(slotbuf, sizeof(slotbuf), "%d", slot);
	snprintf(cons, sizeof(cons), "%s-%d", m.cfg->consumer_name, slot);
	log_event(LOG_INFO, "worker_spawned", "slot", slotbuf, "pid", pidbuf,
	    "consumer", cons, (const char *)NULL);
}

static int
slot_of(pid_t pid)
{
	for (int i = 1; i <= SLOT_LAST; i++)
		if (m.slots[i].pid == pid && m.slots[i].state != SLOT_EMPTY &&
		    m.slots[i].state != SLOT_WAITING &&
		    m.slots[i].state != SLOT_CONFIG_ERROR)
			return i;
	return 0;
}

static int
crashes_in_window(long long now)
{
	size_t k = 0;

	for (size_t i = 0; i < m.ncrashes; i++)
		if (now - m.crashes[i] < CRASH_WINDOW_MS)
			m.crashes[k++] = m.crashes[i];
	m.ncrashes = k;
	return (int)k;
}

static void
note_crash(long long now)
{
	if (m.ncrashes == sizeof(m.crashes) / sizeof(m.crashes[0])) {
		memmove(m.crashes, m.crashes + 1,
		    (m.ncrashes - 1) * sizeof(m.crashes[0]));
		m.ncrashes--;
	}
	m.crashes[m.ncrashes++] = now;
}

/* Returns true when the crash-loop brake fires. */
static bool
reap(void)
{
	long long now = now_mono_ms();
	bool brake = false;
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		int slot = slot_of(pid);
		struct slot *s;
		char status[32], slotbuf[16], pidbuf[16], delay[24];
		bool crashed;

		if (slot == 0)
			continue;
		s = &m.slots[slot];
		if (WIFSIGNALED(st))
			snprintf(status, sizeof(status), "signal:%d",
			    WTERMSIG(st));
		else
			snprintf(status, sizeof(status), "exit:%d",
			    WEXITSTATUS(st));
		slot_name(slot, slotbuf, sizeof(slotbuf));
		snprintf(pidbuf, sizeof(pidbuf), "%d", (int)pid);
		s->pid = 0;

		if (s->state == SLOT_STOPPING) {
			log_event(LOG_INFO, "worker_exited", "slot", slotbuf,
			    "pid", pidbuf, "status", status, (const char *)NULL);
			s->state = SLOT_EMPTY;
			continue;
		}
		if (s->state == SLOT_RESTARTING) {
			log_event(LOG_INFO, "worker_exited", "slot", slotbuf,
			    "pid", pidbuf, "status", status, "reason", "reload",
			    (const char *)NULL);
			/* A slot retired meanwhile (TTOU) is not restarted. */
			if (slot <= m.workers ||
			    (slot == INGRESS_SLOT && m.ingress_fd != -1))
				spawn(slot);
			else
				s->state = SLOT_EMPTY;
			continue;
		}
		if (WIFEXITED(st) && WEXITSTATUS(st) == CONFIG_EXIT_ERROR) {
			log_event(LOG_ERROR, "worker_exited", "slot", slotbuf,
			    "pid", pidbuf, "status", status,
			    "detail", "configuration error: not respawned",
			    (const char *)NULL);
			s->state = SLOT_CONFIG_ERROR;
			continue;
		}
		crashed = !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		log_event(crashed ? LOG_WARN : LOG_INFO, "worker_exited",
		    "slot", slotbuf, "pid", pidbuf, "status", status,
		    (const char *)NULL);
		if (now - s->started_ms >= STABLE_RUN_MS)
			s->backoff_ms = 0;
		s->backoff_ms = s->backoff_ms == 0 ? BACKOFF_MIN_MS :
		    s->backoff_ms * 2;
		if (s->backoff_ms > BACKOFF_MAX_MS)
			s->backoff_ms = BACKOFF_MAX_MS;
		s->state = SLOT_WAITING;
		s->respawn_at_ms = now + s->backoff_ms;
		m.restarts++;
		m.metrics->worker_restarts = m.restarts;
		note_crash(now);
		snprintf(delay, sizeof(delay), "%d", s->backoff_ms);
		log_event(LOG_INFO, "worker_respawn", "slot", slotbuf,
		    "delay_ms", delay, (const char *)NULL);
		if (crashes_in_window(now) >= CRASHES_PER_WORKER *
		    (m.workers + (m.ingress_fd != -1))) {
			char n[16], w[16];

			snprintf(n, sizeof(n), "%zu", m.ncrashes);
			snprintf(w, sizeof(w), "%d", CRASH_WINDOW_MS / 1000);
			log_event(LOG_ERROR, "crash_loop", "crashes", n,
			    "window_s", w, "detail", "workers keep dying; "
			    "stopping so the service manager can take over",
			    (const char *)NULL);
			brake = true;
		}
	}
	return brake;
}

static void
check_heartbeats(void)
{
	long long now = now_mono_ms();
	long long limit = (long long)m.cfg->supervisor.worker_timeout * 1000;

	for (int i = 1; i <= SLOT_LAST; i++) {
		struct slot *s = &m.slots[i];
		long long age;
		char slotbuf[16], pidbuf[16], agebuf[24];

		if (s->pid == 0 || (s->state != SLOT_RUNNING &&
		    s->state != SLOT_STOPPING && s->state != SLOT_RESTARTING))
			continue;
		if (s->abrt_at_ms != 0) {
			if (now - s->abrt_at_ms >= HUNG_KILL_GRACE_MS)
				kill(s->pid, SIGKILL);
			continue;
		}
		age = now - m.shm[i].heartbeat_ms;
		if (limit <= 0 || age <= limit)
			continue;
		slot_name(i, slotbuf, sizeof(slotbuf));
		snprintf(pidbuf, sizeof(pidbuf), "%d", (int)s->pid);
		snprintf(agebuf, sizeof(agebuf), "%lld", age);
		log_event(LOG_WARN, "worker_hung", "slot", slotbuf, "pid",
		    pidbuf, "heartbeat_age_ms", agebuf, (const char *)NULL);
		/* ABRT leaves a core to look at; KILL follows if ignored. */
		kill(s->pid, SIGABRT);
		kill(s->pid, SIGCONT);
		s->abrt_at_ms = now;
	}
}

static void
respawn_due(void)
{
	long long now = now_mono_ms();

	for (int i = 1; i <= m.workers; i++) {
		struct slot *s = &m.slots[i];

		if (s->state == SLOT_EMPTY ||
		    (s->state == SLOT_WAITING && now >= s->respawn_at_ms))
			spawn(i);
	}
	if (m.ingress_fd != -1 && (m.slots[INGRESS_SLOT].state == SLOT_EMPTY ||
	    (m.slots[INGRESS_SLOT].state == SLOT_WAITING &&
	    now >= m.slots[INGRESS_SLOT].respawn_at_ms)))
		spawn(INGRESS_SLOT);
}

static int
alive(void)
{
	int n = 0;

	for (int i = 1; i <= SLOT_LAST; i++)
		if (m.slots[i].pid != 0)
			n++;
	return n;
}

static int
connected(void)
{
	int n = 0;

	for (int i = 1; i <= m.workers; i++)
		if (m.slots[i].state == SLOT_RUNNING && m.shm[i].connected)
			n++;
	return n;
}

static void
send_status(bool force)
{
	long long now = now_mono_ms();

	if (!force && now - m.status_last < 5000)
		return;
	m.status_last = now;
	sd_notify_send("STATUS=workers %d/%d connected, %lu restarts",
	    connected(), m.workers, m.restarts);
}

static void
signal_all(int sig)
{
	for (int i = 1; i <= SLOT_LAST; i++)
		if (m.slots[i].pid != 0)
			kill(m.slots[i].pid, sig);
}

static void
retire(int slot)
{
	struct slot *s = &m.slots[slot];

	if (s->pid != 0) {
		s->state = SLOT_STOPPING;
		kill(s->pid, SIGTERM);
	} else
		s->state = SLOT_EMPTY;
}

static void
set_workers(int n, const char *why)
{
	char w[16];

	if (n < 1)
		n = 1;
	if (n > SLOTS_MAX)
		n = SLOTS_MAX;
	for (int i = n + 1; i <= m.workers; i++)
		retire(i);
	if (n != m.workers) {
		m.workers = n;
		m.shm[0].workers = n;
		m.metrics->workers_wanted = n;
		snprintf(w, sizeof(w), "%d", n);
		log_event(LOG_INFO, "workers_changed", "workers", w,
		    "reason", why, (const char *)NULL);
		send_status(true);
	}
}

static void	metrics_tables(const struct config *);

/*
 * The ingress's socket, opened by the master (at start-up, or by a reload
 * that enables it) and kept while the ingress process comes and goes.
 */
static int
ingress_open(const struct config *cfg)
{
	char err[256];
	int port;

	if (!cfg->ingress.enabled)
		return 0;
	m.ingress_fd = httpd_listen(cfg->ingress.listen, &port, err,
	    sizeof(err));
	if (m.ingress_fd == -1) {
		log_event(LOG_ERROR, "ingress_listen_failed", "listen",
		    cfg->ingress.listen, "detail", err, "hint", "set "
		    "ingress.listen to a free address, or ingress.enabled: "
		    "false", (const char *)NULL);
		return -1;
	}
	m.ingress_listen = xstrdup(cfg->ingress.listen);
	m.metrics->ingress.enabled = 1;
	return 0;
}

static void
ingress_close(void)
{
	if (m.ingress_fd != -1)
		close(m.ingress_fd);
	m.ingress_fd = -1;
	free(m.ingress_listen);
	m.ingress_listen = NULL;
	m.metrics->ingress.enabled = 0;
}

/* A reload: the socket stays where it is; the process takes the config. */
static void
ingress_reload(const struct config *next)
{
	struct slot *s = &m.slots[INGRESS_SLOT];

	if (!next->ingress.enabled) {
		if (m.ingress_fd != -1) {
			ingress_close();
			retire(INGRESS_SLOT);
		}
		return;
	}
	if (m.ingress_fd == -1) {
		if (ingress_open(next) == -1)
			log_event(LOG_WARN, "reload_partial", "key",
			    "ingress.enabled", "detail", "the ingress stays "
			    "off: its address could not be opened",
			    (const char *)NULL);
		return;
	}
	if (strcmp(next->ingress.listen, m.ingress_listen) != 0)
		log_event(LOG_WARN, "reload_partial", "key", "ingress.listen",
		    "detail", "the ingress keeps its address until a restart",
		    (const char *)NULL);
	/* At once: its clients wait in the socket's backlog meanwhile. */
	if (s->state == SLOT_RUNNING && s->pid != 0) {
		s->state = SLOT_RESTARTING;
		kill(s->pid, SIGTERM);
	}
}

static void
reload(void)
{
	struct config *next;
	char err[1024];

	sd_notify_send("RELOADING=1");
	next = xcalloc(1, sizeof(*next));
	if (config_load(m.opts->config_path, next, err, sizeof(err)) == -1) {
		log_event(LOG_ERROR, "reload_failed", "detail", err,
		    "action", "keeping the running configuration",
		    (const char *)NULL);
		free(next);
		sd_notify_send("READY=1");
		return;
	}
	config_warn_pending(next);
	config_warn_secrets(next);
	if (strcmp(next->metrics.listen ? next->metrics.listen : "",
	    m.cfg->metrics.listen ? m.cfg->metrics.listen : "") != 0)
		log_event(LOG_WARN, "reload_partial", "key", "metrics.listen",
		    "detail", "the endpoint keeps its address until a restart",
		    (const char *)NULL);
	ingress_reload(next);
	config_free(m.cfg);
	free(m.cfg);
	m.cfg = next;
	metrics_tables(m.cfg);		/* new types and routes get labels */
	if (m.opts->workers == 0)
		set_workers(m.cfg->concurrent_tasks, "reload");
	/* Restart the workers one at a time: the group never goes empty. */
	for (int i = 1; i <= m.workers; i++)
		if (m.slots[i].state == SLOT_RUNNING)
			m.slots[i].restart = true;
	m.reloading = true;
}

/* One restart at a time; the next starts once its predecessor connected. */
static void
rolling_restart(void)
{
	bool busy = false, left = false;

	if (!m.reloading)
		return;
	for (int i = 1; i <= m.workers; i++) {
		struct slot *s = &m.slots[i];

		if (s->state == SLOT_RESTARTING ||
		    (s->state == SLOT_RUNNING && !m.shm[i].connected &&
		    !s->restart))
			busy = true;
		if (s->restart)
			left = true;
	}
	if (busy)
		return;
	if (!left) {
		m.reloading = false;
		log_event(LOG_INFO, "reloaded", "config", m.opts->config_path,
		    (const char *)NULL);
		sd_notify_send("READY=1");
		send_status(true);
		return;
	}
	for (int i = 1; i <= m.workers; i++) {
		struct slot *s = &m.slots[i];

		if (!s->restart)
			continue;
		s->restart = false;
		if (s->state == SLOT_RUNNING && s->pid != 0) {
			s->state = SLOT_RESTARTING;
			kill(s->pid, SIGTERM);
			return;
		}
	}
}

/* The settings that matter when reading the logs later; no secrets. */
static void
log_settings(const struct config *cfg)
{
	char batch[16], poll[16], retries[16], *dsn;

	snprintf(batch, sizeof(batch), "%d", cfg->batch_size);
	snprintf(poll, sizeof(poll), "%d", cfg->poll_interval_ms);
	snprintf(retries, sizeof(retries), "%d", cfg->max_retries);
	dsn = config_redacted_dsn(cfg->ledger.dsn);
	log_event(LOG_INFO, "settings", "stream", cfg->source_stream,
	    "group", cfg->consumer_group, "consumer_name", cfg->consumer_name,
	    "batch_size", batch, "poll_interval_ms", poll,
	    "max_retries", retries, "nlp_api", cfg->nlp_api.base_url,
	    "ledger", dsn, "schema", cfg->ledger.schema,
	    "dead_letter_stream", cfg->dead_letter_stream,
	    "metrics", cfg->metrics.listen != NULL &&
	    *cfg->metrics.listen != '\0' ? cfg->metrics.listen : "off",
	    (const char *)NULL);
	free(dsn);
}

/* ---- /metrics, /healthz, /readyz --------------------------------------- */

/* Label tables: every type a route or consume_events names, every route. */
static void
metrics_tables(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nconsume_events; i++)
		metrics_add_type(m.metrics, cfg->consume_events[i]);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		metrics_add_route(m.metrics, cfg->routes[i].name);
		for (size_t j = 0; j < cfg->routes[i].ntypes; j++)
			metrics_add_type(m.metrics, cfg->routes[i].types[j]);
	}
}

/* 200 while every wanted worker runs and beats within worker_timeout. */
static int
healthz(struct buf *body)
{
	long long now = now_mono_ms();
	long long limit = (long long)m.cfg->supervisor.worker_timeout * 1000;
	int bad = 0;

	for (int i = 1; i <= m.workers; i++) {
		const struct slot *s = &m.slots[i];

		if (s->state != SLOT_RUNNING) {
			buf_printf(body, "worker %d: not running\n", i);
			bad++;
		} else if (now - m.shm[i].heartbeat_ms > limit) {
			buf_printf(body, "worker %d: no heartbeat for %lld ms "
			    "(worker_timeout %d s)\n", i,
			    now - m.shm[i].heartbeat_ms,
			    m.cfg->supervisor.worker_timeout);
			bad++;
		}
	}
	if (m.ingress_fd != -1) {
		const struct slot *s = &m.slots[INGRESS_SLOT];

		if (s->state != SLOT_RUNNING) {
			buf_printf(body, "ingress: not running\n");
			bad++;
		} else if (now - m.shm[INGRESS_SLOT].heartbeat_ms > limit) {
			buf_printf(body, "ingress: no heartbeat for %lld ms "
			    "(worker_timeout %d s)\n",
			    now - m.shm[INGRESS_SLOT].heartbeat_ms,
			    m.cfg->supervisor.worker_timeout);
			bad++;
		}
	}
	if (bad == 0)
		buf_printf(body, "ok: %d workers heartbeating%s\n", m.workers,
		    m.ingress_fd != -1 ? ", ingress too" : "");
	return bad == 0 ? 200 : 503;
}

/*
 * 200 only when Redis, the stream and group, and PostgreSQL are reachable,
 * no circuit is open and the lag is under lag_alert_threshold; the body
 * names every check that failed.
 */
static int
readyz(struct buf *body)
{
	const struct metrics_group *g = &m.metrics->group;
	long long wall = now_wall_ms();
	size_t start = body->len;

	for (int i = 1; i <= m.workers; i++) {
		const struct metrics_slot *ms = &m.metrics->slot[i];

		if (m.slots[i].state != SLOT_RUNNING || !m.shm[i].connected) {
			buf_printf(body, "worker %d: not connected yet\n", i);
			continue;
		}
		if (!ms->redis_up)
			buf_printf(body, "redis: unreachable (worker %d)\n", i);
		if (!ms->postgres_up)
			buf_printf(body, "postgresql: unreachable (worker %d)\n",
			    i);
		if (ms->circuit != 0)
			buf_printf(body, "circuit: %s (worker %d)\n",
			    ms->circuit == 1 ? "open" : "half-open", i);
	}
	if (m.ingress_fd != -1 && m.slots[INGRESS_SLOT].state == SLOT_RUNNING &&
	    m.shm[INGRESS_SLOT].connected && !m.metrics->ingress.redis_up)
		buf_printf(body, "ingress: redis unreachable\n");
	if (g->polled_ms == 0 || wall - g->polled_ms > 5000)
		buf_printf(body, "redis: no figures from worker 1 for %s\n",
		    g->polled_ms == 0 ? "ever" : "over 5 s");
	else if (!g->redis_ok)
		buf_printf(body, "redis: unreachable\n");
	else if (!g->group_ok)
		buf_printf(body, "stream: %s or group %s missing\n",
		    m.cfg->source_stream, m.cfg->consumer_group);
	else if (m.cfg->lag_alert_threshold > 0 &&
	    g->lag > m.cfg->lag_alert_threshold)
		buf_printf(body, "lag: %lld entries (lag_alert_threshold %ld)\n",
		    (long long)g->lag, m.cfg->lag_alert_threshold);
	if (body->len > start)
		return 503;
	buf_printf(body, "ready: lag %lld, %d workers\n", (long long)g->lag,
	    m.workers);
	return 200;
}

static int
serve(void *arg, const char *path, struct buf *body, const char **ctype)
{
	(void)arg;
	for (int i = 1; i <= SLOTS_MAX; i++)
		m.metrics->slot[i].alive = m.slots[i].state == SLOT_RUNNING;
	if (strcmp(path, "/metrics") == 0) {
		*ctype = "text/plain; version=0.0.4; charset=utf-8";
		metrics_render(m.metrics, SLOTS_MAX, PACKAGE_VERSION, body);
		return 200;
	}
	if (strcmp(path, "/healthz") == 0)
		return healthz(body);
	if (strcmp(path, "/readyz") == 0)
		return readyz(body);
	buf_printf(body, "not found: try /metrics, /healthz or /readyz\n");
	return 404;
}

/* Waits up to ms, serving HTTP meanwhile; a signal cuts it short. */
static void
nap_ms(int ms)
{
	httpd_wait(m.httpd, ms);
}

/* Returns 0 when every worker drained, 1 when some had to be killed. */
static int
shutdown_all(void)
{
	long long deadline;
	int killed = 0;

	sd_notify_send("STOPPING=1");
	log_event(LOG_INFO, "master_stopping", "workers_alive",
	    alive() ? "yes" : "no", (const char *)NULL);
	/*
	 * The ingress's socket closes once the ingress, draining, lets go
	 * of its copy: new clients are refused, not left waiting.
	 */
	ingress_close();
	for (int i = 1; i <= SLOT_LAST; i++) {
		if (m.slots[i].pid != 0)
			m.slots[i].state = SLOT_STOPPING;
		else if (m.slots[i].state != SLOT_EMPTY)
			m.slots[i].state = SLOT_EMPTY;
	}
	signal_all(SIGTERM);
	deadline = now_mono_ms() +
	    (long long)m.cfg->supervisor.shutdown_timeout * 1000;
	while (alive() > 0) {
		reap();
		if (alive() == 0)
			break;
		if (now_mono_ms() >= deadline) {
			log_warnx("master: shutdown_timeout (%d s) passed; "
			    "killing %d worker(s)",
			    m.cfg->supervisor.shutdown_timeout, alive());
			signal_all(SIGKILL);
			killed = 1;
			deadline = now_mono_ms() + 60000;
		}
		nap_ms(50);
	}
	return killed;
}

int
supervisor_run(struct config *cfg, const struct supervisor_opts *opts)
{
	int pfd[2], code = 0, nconfig_err;
	const char *wd;
	char w[16];

	memset(&m, 0, sizeof(m));
	m.cfg = cfg;
	m.opts = opts;
	m.master_pid = getpid();
	m.ingress_fd = -1;
	m.workers = opts->workers > 0 ? opts->workers : cfg->concurrent_tasks;
	if (m.workers > SLOTS_MAX)
		m.workers = SLOTS_MAX;
	/* Mapped before any fork: the workers' heartbeats live here. */
	m.shm = mmap(NULL, sizeof(*m.shm) * (SLOT_LAST + 1),
	    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m.shm == MAP_FAILED)
		fatal("master: mmap");
	m.shm[0].workers = m.workers;	/* slot 0: the master's own */
	m.metrics = mmap(NULL, sizeof(*m.metrics), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m.metrics == MAP_FAILED)
		fatal("master: mmap");
	m.metrics->workers_wanted = m.workers;
	m.metrics->group.lag = m.metrics->group.pending = -1;
	m.metrics->group.stream_length = -1;
	m.metrics->group.dead_letter_length = -1;
	metrics_tables(cfg);
	if (cfg->metrics.listen != NULL && *cfg->metrics.listen != '\0') {
		char err[256];

		m.httpd = httpd_start(cfg->metrics.listen, serve, NULL, err,
		    sizeof(err));
		if (m.httpd == NULL) {
			log_event(LOG_ERROR, "metrics_listen_failed", "listen",
			    cfg->metrics.listen, "detail", err, "hint",
			    "set metrics.listen to a free address, or \"\" to "
			    "disable the endpoint", (const char *)NULL);
			munmap(m.metrics, sizeof(*m.metrics));
			munmap(m.shm, sizeof(*m.shm) * (SLOT_LAST + 1));
			config_free(m.cfg);
			free(m.cfg);
			return 1;
		}
		log_event(LOG_INFO, "metrics_listening", "listen",
		    cfg->metrics.listen, "paths", "/metrics /healthz /readyz",
		    (const char *)NULL);
	}
	if (ingress_open(cfg) == -1) {
		httpd_stop(m.httpd);
		munmap(m.metrics, sizeof(*m.metrics));
		munmap(m.shm, sizeof(*m.shm) * (SLOT_LAST + 1));
		config_free(m.cfg);
		free(m.cfg);
		return 1;
	}
	if (pipe2(pfd, O_CLOEXEC) == -1)
		fatal("master: pipe");
	m.pipe_r = pfd[0];
	m.pipe_w = pfd[1];
	if ((wd = getenv("WATCHDOG_USEC")) != NULL) {
		const char *wp = getenv("WATCHDOG_PID");

		if (wp == NULL || atol(wp) == (long)getpid())
			m.watchdog_ms = atoll(wd) / 1000 / 2;
	}

	set_handler(SIGTERM, on_master_signal, 0);
	set_handler(SIGINT, on_master_signal, 0);
	set_handler(SIGHUP, on_master_signal, 0);
	set_handler(SIGTTIN, on_master_signal, 0);
	set_handler(SIGTTOU, on_master_signal, 0);
	set_handler(SIGUSR1, on_master_signal, 0);
	set_handler(SIGCHLD, on_master_signal, SA_NOCLDSTOP);
	set_handler(SIGPIPE, SIG_IGN, 0);

	log_set_procname("master");
	proctitle_set("stagerelay: master");
	snprintf(w, sizeof(w), "%d", m.workers);
	log_event(LOG_INFO, "master_started", "workers", w,
	    "config", opts->config_path, "version", PACKAGE_VERSION,
	    (const char *)NULL);
	log_settings(cfg);

	for (;;) {
		if (sig_stop)
			break;
		if (sig_usr1) {
			sig_usr1 = 0;
			if (log_reopen() == -1)
				log_warn("master: cannot reopen the log file");
			signal_all(SIGUSR1);
		}
		if (sig_hup) {
			sig_hup = 0;
			reload();
		}
		if (sig_ttin) {
			sig_ttin = 0;
			set_workers(m.workers + 1, "SIGTTIN");
		}
		if (sig_ttou) {
			sig_ttou = 0;
			set_workers(m.workers - 1, "SIGTTOU");
		}
		sig_chld = 0;
		if (reap()) {
			code = EXIT_CRASH_LOOP;
			break;
		}
		nconfig_err = 0;
		for (int i = 1; i <= m.workers; i++)
			if (m.slots[i].state == SLOT_CONFIG_ERROR)
				nconfig_err++;
		if (nconfig_err == m.workers) {
			log_errorx("master: every worker failed on its "
			    "configuration; exiting");
			code = CONFIG_EXIT_ERROR;
			break;
		}
		respawn_due();
		check_heartbeats();
		rolling_restart();
		if (!m.ready_sent && connected() == m.workers) {
			m.ready_sent = true;
			log_event(LOG_INFO, "master_ready", "workers", w,
			    (const char *)NULL);
			sd_notify_send("READY=1\nMAINPID=%d", (int)getpid());
			send_status(true);
		}
		send_status(false);
		if (m.watchdog_ms > 0 &&
		    now_mono_ms() - m.watchdog_last >= m.watchdog_ms) {
			m.watchdog_last = now_mono_ms();
			sd_notify_send("WATCHDOG=1");
		}
		if (!sig_chld && !sig_stop && !sig_hup && !sig_ttin &&
		    !sig_ttou && !sig_usr1)
			nap_ms(100);
	}

	if (shutdown_all() != 0 && code == 0)
		code = EXIT_KILLED;
	log_event(LOG_INFO, "master_stopped", "status", code == 0 ? "ok" :
	    code == EXIT_CRASH_LOOP ? "crash_loop" : code == EXIT_KILLED ?
	    "workers_killed" : "config_error", (const char *)NULL);
	close(m.pipe_r);
	close(m.pipe_w);
	ingress_close();
	httpd_stop(m.httpd);
	munmap(m.metrics, sizeof(*m.metrics));
	munmap(m.shm, sizeof(*m.shm) * (SLOT_LAST + 1));
	config_free(m.cfg);
	free(m.cfg);
	return code;
}
