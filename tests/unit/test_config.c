/* test_config.c: the event_consumer: section, DESIGN.md §8. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include <check.h>

#include "unit.h"

#include "config.h"
#include "log.h"

#define DOC_CLEANED	"com.storytelling.cleaning.document.cleaned"
#define JOB_COMPLETED	"com.storytelling.cleaning.job.completed"

static char err[1024];

static int
load(const char *yaml, struct config *c)
{
	memset(err, 0, sizeof(err));
	return config_load_string("test.yaml", yaml, c, err, sizeof(err));
}

/* Loads yaml, which must fail, and checks the error contains want. */
static void
expect_error(const char *yaml, const char *want)
{
	struct config c;

	ck_assert_msg(load(yaml, &c) == -1, "loaded, wanted error: %s", want);
	ck_assert_msg(strstr(err, want) != NULL, "error \"%s\" lacks \"%s\"",
	    err, want);
}

static char *
print_to_string(const struct config *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	ck_assert_ptr_nonnull(f);
	config_print(f, c);
	fclose(f);
	return text;
}

static const struct pending_key *
find_pending(const struct config *c, const char *key)
{
	for (size_t i = 0; i < c->npending; i++)
		if (strcmp(c->pending[i].key, key) == 0)
			return &c->pending[i];
	return NULL;
}

static char *
srcdir_path(const char *rel)
{
	const char *dir = getenv("STAGERELAY_SRCDIR");
	char *p;

	if (dir == NULL || *dir == '\0')
		dir = ".";
	if (asprintf(&p, "%s/%s", dir, rel) == -1)
		abort();
	return p;
}

static char *
write_temp(const char *content)
{
	char *path = strdup("/tmp/stagerelay-test-XXXXXX");
	int fd = mkstemp(path);

	ck_assert_int_ne(fd, -1);
	ck_assert_int_eq(write(fd, content, strlen(content)),
	    (ssize_t)strlen(content));
	close(fd);
	return path;
}

static const char minimal[] =
    "# stage2/config/settings.yaml\n"
    "event_consumer:\n"
    "  enabled: true\n"
    "  source_stream: \"stage1:cleaning:events\"\n"
    "  consumer_group: \"stage2-nlp-processor\"\n"
    "  auto_process: true\n";

static const char advanced[] =
    "event_consumer:\n"
    "  enabled: true\n"
    "\n"
    "  # Source stream\n"
    "  source_stream: \"stage1:cleaning:events\"\n"
    "  redis_host: \"redis-cache\"\n"
    "  redis_port: 6379\n"
    "  redis_db: 1\n"
    "\n"
    "  consumer_group: \"stage2-nlp-processor\"\n"
    "  consumer_name: \"${HOSTNAME}\"  # Unique per worker\n"
    "\n"
    "  consume_events:\n"
    "    - \"" DOC_CLEANED "\"\n"
    "    - \"" JOB_COMPLETED "\"\n"
    "\n"
    "  auto_process: true\n"
    "  batch_mode: true\n"				/* line 18 */
    "\n"
    "  poll_interval_ms: 1000\n"
    "  batch_size: 10\n"
    "  concurrent_tasks: 4\n"				/* line 22 */
    "\n"
    "  retry_failed: true\n"
    "  max_retries: 3\n"				/* line 25 */
    "  retry_delay_seconds: 5\n"			/* line 26 */
    "  dead_letter_stream: \"stage2:nlp:failed-events\"\n"
    "\n"
    "  process_backlog: false\n"
    "  backlog_batch_size: 100\n"			/* line 30 */
    "  backlog_max_age_hours: 24\n"			/* line 31 */
    "\n"
    "  check_already_processed: true\n"
    "  deduplication_ttl_hours: 24\n";

START_TEST(test_minimal_defaults)
{
	struct config c;

	setenv("HOSTNAME", "node-7", 1);
	ck_assert_msg(load(minimal, &c) == 0, "%s", err);
	ck_assert_str_eq(c.path, "test.yaml");
	ck_assert(c.enabled);
	ck_assert_str_eq(c.source_stream, "stage1:cleaning:events");
	ck_assert_str_eq(c.redis_host, "127.0.0.1");
	ck_assert_int_eq(c.redis_port, 6379);
	ck_assert_int_eq(c.redis_db, 0);
	ck_assert_ptr_null(c.redis_username);
	ck_assert_ptr_null(c.redis_password);
	ck_assert_str_eq(c.consumer_group, "stage2-nlp-processor");
	ck_assert_str_eq(c.consumer_name, "node-7");
	ck_assert_uint_eq(c.nconsume_events, 0);
	ck_assert(c.auto_process);
	ck_assert(!c.batch_mode);
	ck_assert_int_eq(c.poll_interval_ms, 1000);
	ck_assert_int_eq(c.batch_size, 100);
	ck_assert_int_eq(c.concurrent_tasks, 1);
	ck_assert(c.retry_failed);
	ck_assert_int_eq(c.max_retries, 3);
	ck_assert_double_eq(c.retry_delay_seconds, 5);
	ck_assert_double_eq(c.max_retry_delay_seconds, 300);
	ck_assert_str_eq(c.dead_letter_stream, "stage2:nlp:failed-events");
	ck_assert_int_eq(c.dead_letter_maxlen, 100000);
	ck_assert(!c.process_backlog);
	ck_assert_int_eq(c.backlog_batch_size, 100);
	ck_assert_double_eq(c.backlog_max_age_hours, 24);
	ck_assert(c.check_already_processed);
	ck_assert_double_eq(c.deduplication_ttl_hours, 24);
	ck_assert_str_eq(c.event_field, "event");
	ck_assert_uint_eq(c.max_event_bytes, 1024 * 1024);
	ck_assert_str_eq(c.shared_dir, "/shared");
	ck_assert_int_eq(c.claim_interval_ms, 30000);
	ck_assert_int_eq(c.claim_idle_ms, 60000);
	ck_assert_int_eq(c.max_deliveries, 10);
	ck_assert_int_eq(c.lag_alert_threshold, 1000);
	ck_assert_int_eq(c.idle_alert_minutes, 5);
	ck_assert_str_eq(c.nlp_api.base_url, "http://127.0.0.1:8000");
	ck_assert_int_eq(c.nlp_api.timeout_ms, 30000);
	ck_assert_int_eq(c.nlp_api.connect_timeout_ms, 5000);
	ck_assert_int_eq(c.nlp_api.max_in_flight, 64);
	ck_assert_uint_eq(c.nlp_api.nheaders, 0);
	ck_assert_ptr_null(c.nlp_api.ca_file);
	ck_assert(c.nlp_api.verify_tls);
	ck_assert_str_eq(c.ledger.dsn, "");
	ck_assert_str_eq(c.ledger.schema, "stagerelay");
	ck_assert_int_eq(c.ledger.lease_seconds, 300);
	ck_assert_ptr_null(c.ledger.password_file);
	ck_assert_str_eq(c.logging.format, "logfmt");
	ck_assert_str_eq(c.logging.level, "info");
	ck_assert_ptr_null(c.logging.file);
	ck_assert_str_eq(c.metrics.listen, "127.0.0.1:9464");
	ck_assert_int_eq(c.supervisor.worker_timeout, 60);
	ck_assert_int_eq(c.supervisor.shutdown_timeout, 30);
	ck_assert_int_eq(c.circuit_breaker.failure_threshold, 5);
	ck_assert_int_eq(c.circuit_breaker.open_seconds, 30);
	/* No routes: key: the built-in routes of DESIGN.md §4. */
	ck_assert_uint_ge(c.nroutes, 2);
	ck_assert_ptr_nonnull(config_route_for(&c, DOC_CLEANED));
	ck_assert_ptr_nonnull(config_route_for(&c, JOB_COMPLETED));
	ck_assert_uint_eq(c.npending, 0);
	config_free(&c);
}
END_TEST

START_TEST(test_consumer_name_without_hostname_env)
{
	struct config c;
	char host[256];

	/* systemd does not export HOSTNAME: gethostname() stands in. */
	unsetenv("HOSTNAME");
	ck_assert_int_eq(gethostname(host, sizeof(host)), 0);
	ck_assert_msg(load(minimal, &c) == 0, "%s", err);
	ck_assert_str_eq(c.consumer_name, host);
	config_free(&c);
	ck_assert_msg(load("event_consumer:\n  consumer_name: "
	    "\"${HOSTNAME}-a\"\n", &c) == 0, "%s", err);
	ck_assert_str_ne(c.consumer_name, "-a");
	ck_assert_ptr_nonnull(strstr(c.consumer_name, host));
	config_free(&c);
}
END_TEST

START_TEST(test_advanced_values_and_pending)
{
	static const struct {
		const char	*key;
		int		 line;
		const char	*what;
	} want[] = {
		/* Nothing is pending in this release. */
		{ NULL, 0, NULL }
	};
	struct config c;

	setenv("HOSTNAME", "stage2-consumer-0", 1);
	ck_assert_msg(load(advanced, &c) == 0, "%s", err);
	ck_assert_str_eq(c.redis_host, "redis-cache");
	ck_assert_int_eq(c.redis_port, 6379);
	ck_assert_int_eq(c.redis_db, 1);
	ck_assert_str_eq(c.consumer_name, "stage2-consumer-0");
	ck_assert_uint_eq(c.nconsume_events, 2);
	ck_assert_str_eq(c.consume_events[0], DOC_CLEANED);
	ck_assert_str_eq(c.consume_events[1], JOB_COMPLETED);
	ck_assert(c.batch_mode);
	ck_assert_int_eq(c.concurrent_tasks, 4);
	ck_assert_int_eq(c.max_retries, 3);
	ck_assert_double_eq(c.retry_delay_seconds, 5);
	ck_assert_double_eq(c.backlog_max_age_hours, 24);
	ck_assert(!c.process_backlog);

	ck_assert_uint_eq(c.npending, sizeof(want) / sizeof(want[0]) - 1);
	for (size_t i = 0; want[i].key != NULL; i++) {
		const struct pending_key *p = find_pending(&c, want[i].key);

		ck_assert_msg(p != NULL, "%s not pending", want[i].key);
		ck_assert_int_eq(p->line, want[i].line);
		ck_assert_str_eq(p->what, want[i].what);
	}
	/* In effect today: not reported. */
	ck_assert_ptr_null(find_pending(&c, "event_consumer.batch_mode"));
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.backlog_batch_size"));
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.backlog_max_age_hours"));
	ck_assert_ptr_null(find_pending(&c, "event_consumer.poll_interval_ms"));
	ck_assert_ptr_null(find_pending(&c, "event_consumer.batch_size"));
	ck_assert_ptr_null(find_pending(&c, "event_consumer.retry_failed"));
	ck_assert_ptr_null(find_pending(&c, "event_consumer.max_retries"));
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.retry_delay_seconds"));
	config_free(&c);
}
END_TEST

START_TEST(test_pending_nested_keys)
{
	struct config c;

	ck_assert_msg(load(
	    "event_consumer:\n"
	    "  circuit_breaker: {failure_threshold: 3, open_seconds: 10}\n"
	    "  supervisor:\n"
	    "    shutdown_timeout: 5\n"
	    "  metrics: {listen: \"0.0.0.0:9000\"}\n"
	    "  shared_dir: /srv/shared\n"
	    "  routes:\n"
	    "    - types: [a.b]\n"
	    "      path: /x\n"
	    "      idempotency_key: \"{{id}}\"\n"
	    "      documents_file: \"{{data.output_location}}\"\n"
	    "      body: {}\n", &c) == 0, "%s", err);
	ck_assert_int_eq(c.circuit_breaker.failure_threshold, 3);
	/* The circuit breaker is in effect: no warning. */
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.circuit_breaker.failure_threshold"));
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.circuit_breaker.open_seconds"));
	/* The supervisor honours these: no warning. */
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.supervisor.shutdown_timeout"));
	/* The metrics endpoint is in effect: no warning. */
	ck_assert_ptr_null(find_pending(&c, "event_consumer.metrics.listen"));
	/* Batch routes are in effect: no warning. */
	ck_assert_ptr_null(find_pending(&c, "event_consumer.shared_dir"));
	ck_assert_ptr_null(find_pending(&c,
	    "event_consumer.routes[0].documents_file"));
	ck_assert_str_eq(c.routes[0].kind, "batch");
	ck_assert_uint_eq(c.npending, 0);
	config_free(&c);
}
END_TEST

START_TEST(test_warn_pending_logs)
{
	struct config c;
	char *logpath = write_temp(""), *text = NULL;
	size_t cap = 0;
	FILE *f;

	/* The keys once reported as not in effect are all honoured now. */
	ck_assert_msg(load("event_consumer:\n  backlog_batch_size: 5\n"
	    "  backlog_max_age_hours: 2\n  batch_mode: true\n"
	    "  shared_dir: /srv\n", &c) == 0, "%s", err);
	log_init("test", LOG_INFO, LOG_FMT_LOGFMT, logpath);
	config_warn_pending(&c);
	log_warnx("end of test");
	log_init("test", LOG_INFO, LOG_FMT_LOGFMT, NULL);
	f = fopen(logpath, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_gt(getdelim(&text, &cap, '\0', f), 0);
	fclose(f);
	ck_assert_msg(strstr(text, "not yet in effect") == NULL, "log: %s",
	    text);
	ck_assert_ptr_nonnull(strstr(text, "end of test"));
	free(text);
	unlink(logpath);
	free(logpath);
	config_free(&c);
}
END_TEST

START_TEST(test_whole_settings_file)
{
	struct config c;

	/* Stage 2's own sections may hold anything stagerelay would reject. */
	unsetenv("NOT_SET_ANYWHERE");
	ck_assert_msg(load(
	    "api:\n"
	    "  host: 0.0.0.0\n"
	    "  port: not-a-number\n"
	    "database:\n"
	    "  password: \"${NOT_SET_ANYWHERE}\"\n"
	    "logging: {level: INFO, consumer_grup: 1}\n"
	    "event_consumer:\n"
	    "  redis_db: 1\n"
	    "  consume_events: [" DOC_CLEANED "]\n"
	    "events:\n"
	    "  backends: [{type: redis_streams}]\n", &c) == 0, "%s", err);
	ck_assert_int_eq(c.redis_db, 1);
	ck_assert_uint_eq(c.nconsume_events, 1);
	ck_assert_str_eq(c.logging.level, "info");
	config_free(&c);

	/* An empty section means every default. */
	ck_assert_msg(load("api: {}\nevent_consumer:\n", &c) == 0, "%s", err);
	ck_assert_int_eq(c.redis_port, 6379);
	config_free(&c);
}
END_TEST

START_TEST(test_unknown_key)
{
	struct config c;

	ck_assert_int_eq(load(
	    "event_consumer:\n"
	    "  enabled: true\n"
	    "  consumer_grup: x\n", &c), -1);
	ck_assert_str_eq(err, "test.yaml:3:3: unknown key "
	    "event_consumer.consumer_grup (did you mean consumer_group?)");

	expect_error("event_consumer:\n  nlp_api:\n    timout_ms: 5\n",
	    "test.yaml:3:5: unknown key event_consumer.nlp_api.timout_ms "
	    "(did you mean timeout_ms?)");
	/* A key one level too high is found where it lives. */
	expect_error("event_consumer:\n  base_url: http://x\n",
	    "test.yaml:2:3: unknown key event_consumer.base_url (did you mean "
	    "nlp_api.base_url?)");
	/* Nothing close: no guess. */
	ck_assert_int_eq(load("event_consumer:\n  frobnicate: 1\n", &c), -1);
	ck_assert_ptr_nonnull(strstr(err, "test.yaml:2:3: unknown key "
	    "event_consumer.frobnicate"));
	ck_assert_ptr_null(strstr(err, "did you mean"));
	expect_error("event_consumer:\n  routes:\n    - types: [x]\n"
	    "      path: /x\n      idempotency_key: k\n      bdy: {}\n",
	    "test.yaml:6:7: unknown key event_consumer.routes[0].bdy (did you "
	    "mean body?)");
	expect_error("event_consumer:\n  Redis_Port: 1\n",
	    "(did you mean redis_port?)");
	/* A batch route reads a documents file; a document route cannot. */
	expect_error("event_consumer:\n  routes:\n    - types: [x]\n"
	    "      path: /x\n      idempotency_key: k\n      body: {}\n"
	    "      kind: document\n      documents_file: f\n",
	    "test.yaml:3:7: event_consumer.routes[0]: documents_file makes a "
	    "batch route");
	expect_error("event_consumer:\n  routes:\n    - types: [x]\n"
	    "      path: /x\n      idempotency_key: k\n      body: {}\n"
	    "      kind: job\n",
	    "expected one of document, batch, got \"job\"");
	expect_error("event_consumer:\n  routes:\n    - types: [x]\n"
	    "      path: /x\n      idempotency_key: k\n"
	    "      body: {d: \"{{documents}}\"}\n",
	    "test.yaml:3:7: event_consumer.routes[0].body: {{documents}} needs "
	    "a documents_file or a documents_query (a batch route)");
	expect_error("event_consumer:\n  routes:\n    - types: [x]\n"
	    "      path: /x\n      body: {}\n      documents_file: f\n"
	    "      idempotency_key: \"{{document_ids.0}}\"\n",
	    "{{document_ids}} can only be used in the body of a batch route");
}
END_TEST

START_TEST(test_wrong_type)
{
	struct config c;

	ck_assert_int_eq(load(
	    "event_consumer:\n"
	    "  redis_host: redis\n"
	    "\n"
	    "  redis_port: abc\n", &c), -1);
	ck_assert_str_eq(err, "test.yaml:4:15: event_consumer.redis_port: "
	    "expected an integer, got \"abc\"");

	expect_error("event_consumer:\n  enabled: maybe\n",
	    "test.yaml:2:12: event_consumer.enabled: expected a boolean");
	expect_error("event_consumer:\n  batch_size: 1.5\n",
	    "test.yaml:2:15: event_consumer.batch_size: expected an integer, "
	    "got \"1.5\"");
	expect_error("event_consumer:\n  retry_delay_seconds: soon\n",
	    "test.yaml:2:24: event_consumer.retry_delay_seconds: expected a "
	    "number, got \"soon\"");
	expect_error("event_consumer:\n  source_stream: [a, b]\n",
	    "test.yaml:2:18: event_consumer.source_stream: expected a string, "
	    "got a list");
	expect_error("event_consumer:\n  consume_events: " DOC_CLEANED "\n",
	    "test.yaml:2:19: event_consumer.consume_events: expected a list "
	    "of strings");
	expect_error("event_consumer:\n  consume_events: [[a]]\n",
	    "test.yaml:2:20: event_consumer.consume_events[0]: expected a "
	    "string, got a list");
	expect_error("event_consumer:\n  nlp_api: http://x\n",
	    "test.yaml:2:12: event_consumer.nlp_api: expected a mapping, got "
	    "a scalar");
	expect_error("event_consumer:\n  redis_port: 0x10\n",
	    "expected an integer, got \"0x10\"");
	expect_error("event_consumer:\n  logging: {format: xml}\n",
	    "event_consumer.logging.format: expected one of logfmt, json, got "
	    "\"xml\"");
	expect_error("event_consumer: [a]\n",
	    "test.yaml:1:17: event_consumer: expected a mapping, got a list");

	/* Booleans in every spelling YAML 1.1 users write. */
	static const char *const yes[] = { "true", "True", "YES", "on" };
	static const char *const no[] = { "false", "FALSE", "no", "Off" };
	for (size_t i = 0; i < 4; i++) {
		char *y;

		ck_assert_int_ne(asprintf(&y, "event_consumer:\n  enabled: %s\n"
		    "  auto_process: %s\n", yes[i], no[i]), -1);
		ck_assert_msg(load(y, &c) == 0, "%s", err);
		ck_assert(c.enabled);
		ck_assert(!c.auto_process);
		config_free(&c);
		free(y);
	}
}
END_TEST

START_TEST(test_ranges)
{
	expect_error("event_consumer:\n  redis_port: 70000\n",
	    "test.yaml:2:15: event_consumer.redis_port: 70000 is out of range "
	    "(1..65535)");
	expect_error("event_consumer:\n  redis_port: 0\n", "(1..65535)");
	expect_error("event_consumer:\n  redis_db: 16\n", "(0..15)");
	expect_error("event_consumer:\n  batch_size: 0\n", "(1..10000)");
	expect_error("event_consumer:\n  batch_size: 10001\n", "(1..10000)");
	expect_error("event_consumer:\n  poll_interval_ms: 600001\n",
	    "(1..600000)");
	/* BLOCK 0 would mean "forever" to Redis. */
	expect_error("event_consumer:\n  poll_interval_ms: 0\n",
	    "(1..600000)");
	expect_error("event_consumer:\n  concurrent_tasks: 257\n", "(1..256)");
	expect_error("event_consumer:\n  workers: 0\n", "(1..256)");
	expect_error("event_consumer:\n  deduplication_ttl_hours: -1\n",
	    "out of range");
	expect_error("event_consumer:\n  redis_port: 99999999999999999999\n",
	    "out of range");
	expect_error("event_consumer:\n  max_event_bytes: 10\n",
	    "(1024..536870912)");
}
END_TEST

START_TEST(test_duplicate_key)
{
	expect_error("event_consumer:\n  batch_size: 5\n  batch_size: 6\n",
	    "test.yaml:3:3: duplicate key event_consumer.batch_size (first "
	    "set at line 2)");
	expect_error("event_consumer: {}\nevent_consumer: {}\n",
	    "test.yaml:2:1: duplicate key event_consumer");
	expect_error("event_consumer:\n  nlp_api:\n    headers:\n"
	    "      X-Key: a\n      x-key: b\n",
	    "test.yaml:5:7: duplicate header");
}
END_TEST

START_TEST(test_workers_alias)
{
	struct config c;

	ck_assert_msg(load("event_consumer:\n  workers: 6\n", &c) == 0, "%s",
	    err);
	ck_assert_int_eq(c.concurrent_tasks, 6);
	ck_assert_ptr_null(find_pending(&c, "event_consumer.workers"));
	config_free(&c);

	expect_error("event_consumer:\n  concurrent_tasks: 2\n  workers: 3\n",
	    "test.yaml:3:3: duplicate key event_consumer.workers (already set "
	    "at line 2 as event_consumer.concurrent_tasks");
	expect_error("event_consumer:\n  workers: 2\n  concurrent_tasks: 3\n",
	    "test.yaml:3:3: duplicate key event_consumer.concurrent_tasks");
}
END_TEST

START_TEST(test_bad_yaml)
{
	struct config c;

	ck_assert_int_eq(load("event_consumer:\n  enabled: true\n"
	    "  source_stream: [unclosed\n  batch_size: 3\n", &c), -1);
	ck_assert_msg(strncmp(err, "test.yaml:", 10) == 0, "%s", err);
	ck_assert_ptr_nonnull(strstr(err, "invalid YAML"));

	ck_assert_int_eq(load("event_consumer:\n  a: b\n c: d\n", &c), -1);
	ck_assert_msg(strncmp(err, "test.yaml:3:", 12) == 0, "%s", err);
	ck_assert_ptr_nonnull(strstr(err, "invalid YAML"));

	ck_assert_int_eq(load("event_consumer:\n\tenabled: true\n", &c), -1);
	ck_assert_msg(strncmp(err, "test.yaml:2:", 12) == 0, "%s", err);

	/* One document only, as Stage 2's yaml.safe_load demands. */
	expect_error("event_consumer: {}\n---\nevent_consumer: {}\n",
	    "test.yaml:2:1: a second YAML document starts here");
	expect_error("event_consumer: {}\n---\n[\n",
	    "test.yaml:4:1: invalid YAML");
	expect_error("event_consumer: {}\n---\n",
	    "test.yaml:2:1: a second YAML document starts here");
	/* A document end marker alone is still one document. */
	ck_assert_msg(load("event_consumer: {}\n...\n", &c) == 0, "%s", err);
	config_free(&c);
}
END_TEST

START_TEST(test_missing_section)
{
	expect_error("stage2:\n  api: {port: 8000}\n",
	    "no event_consumer: section");
	expect_error("", "no event_consumer: section");
	expect_error("# only a comment\n", "no event_consumer: section");
	expect_error("event_consumers:\n  enabled: true\n",
	    "no event_consumer: section (did you mean event_consumer instead "
	    "of event_consumers?)");
	expect_error("- a\n- b\n", "test.yaml:1:1: top level is a list");
}
END_TEST

START_TEST(test_file_load)
{
	struct config c;
	char *path = write_temp("x: 1\nevent_consumer:\n  redis_db: 3\n");

	ck_assert_msg(config_load(path, &c, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(c.redis_db, 3);
	ck_assert_str_eq(c.path, path);
	config_free(&c);
	unlink(path);
	free(path);

	ck_assert_int_eq(config_load("/nonexistent/stagerelay.yaml", &c, err,
	    sizeof(err)), -1);
	ck_assert_str_eq(err, "/nonexistent/stagerelay.yaml: cannot open: "
	    "No such file or directory");
}
END_TEST

START_TEST(test_env_expansion)
{
	struct config c;

	setenv("SR_HOST", "redis.internal", 1);
	setenv("SR_PORT", "6380", 1);
	setenv("SR_EMPTY", "", 1);
	unsetenv("SR_UNSET");
	ck_assert_msg(load(
	    "event_consumer:\n"
	    "  redis_host: ${SR_HOST}\n"
	    "  redis_port: \"${SR_PORT}\"\n"
	    "  consumer_group: \"${SR_UNSET:-grp}-${SR_EMPTY:-x}\"\n"
	    "  consumer_name: \"${SR_UNSET:-${SR_HOST}}\"\n"
	    "  dead_letter_stream: \"dl$$${SR_PORT}$1$\"\n", &c) == 0,
	    "%s", err);
	ck_assert_str_eq(c.redis_host, "redis.internal");
	ck_assert_int_eq(c.redis_port, 6380);
	ck_assert_str_eq(c.consumer_group, "grp-x");
	ck_assert_str_eq(c.consumer_name, "redis.internal");
	ck_assert_str_eq(c.dead_letter_stream, "dl$6380$1$");
	config_free(&c);

	ck_assert_int_eq(load(
	    "event_consumer:\n"
	    "  enabled: true\n"
	    "  redis_host: \"${SR_UNSET}\"\n", &c), -1);
	ck_assert_str_eq(err, "test.yaml:3:15: event_consumer.redis_host: "
	    "environment variable SR_UNSET is not set (export it, or give a "
	    "default: ${SR_UNSET:-value})");

	expect_error("event_consumer:\n  redis_host: \"${SR_HOST\"\n",
	    "test.yaml:2:15: event_consumer.redis_host: unterminated ${");
	expect_error("event_consumer:\n  redis_host: \"${1X}\"\n",
	    "bad variable reference");
	expect_error("event_consumer:\n  redis_host: \"${SR_HOST-x}\"\n",
	    "bad variable reference");
	/* Expanded text is type-checked like any other. */
	setenv("SR_PORT", "eighty", 1);
	expect_error("event_consumer:\n  redis_port: ${SR_PORT}\n",
	    "event_consumer.redis_port: expected an integer, got \"eighty\"");
}
END_TEST

START_TEST(test_env_overrides)
{
	struct config c;

	setenv("EVENT_CONSUMER_ENABLED", "false", 1);
	setenv("STAGE1_EVENT_STREAM", "stage1:other:events", 1);
	ck_assert_msg(load(minimal, &c) == 0, "%s", err);
	ck_assert(!c.enabled);
	ck_assert_str_eq(c.source_stream, "stage1:other:events");
	config_free(&c);

	setenv("EVENT_CONSUMER_ENABLED", "YES", 1);
	ck_assert_msg(load("event_consumer:\n  enabled: false\n", &c) == 0,
	    "%s", err);
	ck_assert(c.enabled);
	config_free(&c);

	/* Empty is unset: VAR= in a compose file clears the override. */
	setenv("EVENT_CONSUMER_ENABLED", "", 1);
	setenv("STAGE1_EVENT_STREAM", "", 1);
	ck_assert_msg(load("event_consumer:\n  enabled: false\n", &c) == 0,
	    "%s", err);
	ck_assert(!c.enabled);
	ck_assert_str_eq(c.source_stream, "stage1:cleaning:events");
	config_free(&c);

	setenv("EVENT_CONSUMER_ENABLED", "sometimes", 1);
	expect_error(minimal, "EVENT_CONSUMER_ENABLED: expected a boolean");
	ck_assert_ptr_nonnull(strstr(err, "\"sometimes\""));
	unsetenv("EVENT_CONSUMER_ENABLED");

	/* The override is validated like the key it replaces. */
	setenv("STAGE1_EVENT_STREAM", "stage2:nlp:failed-events", 1);
	expect_error(minimal, "must differ from source_stream");
	ck_assert_ptr_nonnull(strstr(err, "STAGE1_EVENT_STREAM"));
	unsetenv("STAGE1_EVENT_STREAM");
}
END_TEST

static const char routes_yaml[] =
    "event_consumer:\n"
    "  consume_events: [" DOC_CLEANED ", " JOB_COMPLETED "]\n"
    "  routes:\n"
    "    - name: doc\n"					/* line 4 */
    "      types: [" DOC_CLEANED "]\n"
    "      method: put\n"
    "      path: /api/v1/documents\n"
    "      idempotency_key: \"{{data.document_id}}\"\n"
    "      success_field: success\n"
    "      body:\n"
    "        document: \"{{data}}\"\n"
    "        quoted_num: \"10\"\n"
    "        single: 'true'\n"
    "        num: 10\n"
    "        neg: -2.5\n"
    "        exp: 1e3\n"
    "        yes_bool: true\n"
    "        no_bool: False\n"
    "        nothing: null\n"
    "        tilde: ~\n"
    "        empty:\n"
    "        word: yes\n"
    "        big: 123456789012345678901234\n"
    "        literal: |\n"
    "          line {{id}}\n"
    "        list: [1, \"2\", three, {k: v}]\n"
    "    - types: [\"*\"]\n"				/* line 27 */
    "      path: https://hooks.example/{{type}}\n"
    "      idempotency_key: \"{{id}}\"\n"
    "      content_mode: structured\n";

START_TEST(test_routes_parse)
{
	const cJSON *b, *x;
	const struct route *r;
	struct config c;

	ck_assert_msg(load(routes_yaml, &c) == 0, "%s", err);
	ck_assert_uint_eq(c.nroutes, 2);

	r = &c.routes[0];
	ck_assert_str_eq(r->name, "doc");
	ck_assert_int_eq(r->line, 4);
	ck_assert_uint_eq(r->ntypes, 1);
	ck_assert_str_eq(r->types[0], DOC_CLEANED);
	ck_assert_str_eq(r->method, "PUT");
	ck_assert_str_eq(r->path, "/api/v1/documents");
	ck_assert_str_eq(r->idempotency_key, "{{data.document_id}}");
	ck_assert_str_eq(r->success_field, "success");
	ck_assert_ptr_null(r->job_id_field);
	ck_assert_ptr_null(r->documents_file);
	ck_assert_int_eq(r->content_mode, CONTENT_BODY);
	b = r->body;
	ck_assert(cJSON_IsObject(b));
	ck_assert_str_eq(cJSON_GetObjectItem(b, "document")->valuestring,
	    "{{data}}");
	x = cJSON_GetObjectItem(b, "quoted_num");
	ck_assert(cJSON_IsString(x));
	ck_assert_str_eq(x->valuestring, "10");
	ck_assert(cJSON_IsString(cJSON_GetObjectItem(b, "single")));
	x = cJSON_GetObjectItem(b, "num");
	ck_assert(cJSON_IsNumber(x));
	ck_assert_double_eq(x->valuedouble, 10);
	ck_assert_double_eq(cJSON_GetObjectItem(b, "neg")->valuedouble, -2.5);
	ck_assert_double_eq(cJSON_GetObjectItem(b, "exp")->valuedouble, 1000);
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(b, "yes_bool")));
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(b, "no_bool")));
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(b, "nothing")));
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(b, "tilde")));
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(b, "empty")));
	/* Only true/false are booleans in a body; yes stays a word. */
	ck_assert_str_eq(cJSON_GetObjectItem(b, "word")->valuestring, "yes");
	/* Too big for a double without changing it: kept as text. */
	ck_assert_str_eq(cJSON_GetObjectItem(b, "big")->valuestring,
	    "123456789012345678901234");
	ck_assert_str_eq(cJSON_GetObjectItem(b, "literal")->valuestring,
	    "line {{id}}\n");
	x = cJSON_GetObjectItem(b, "list");
	ck_assert_int_eq(cJSON_GetArraySize(x), 4);
	ck_assert(cJSON_IsNumber(cJSON_GetArrayItem(x, 0)));
	ck_assert(cJSON_IsString(cJSON_GetArrayItem(x, 1)));
	ck_assert_str_eq(cJSON_GetArrayItem(x, 2)->valuestring, "three");
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(x, 3),
	    "k")->valuestring, "v");

	r = &c.routes[1];
	ck_assert_str_eq(r->name, "route[1]");
	ck_assert_int_eq(r->line, 27);
	ck_assert_str_eq(r->method, "POST");
	ck_assert_int_eq(r->content_mode, CONTENT_STRUCTURED);
	ck_assert_ptr_null(r->body);

	ck_assert_ptr_eq(config_route_for(&c, DOC_CLEANED), &c.routes[0]);
	ck_assert_ptr_eq(config_route_for(&c, JOB_COMPLETED), &c.routes[1]);
	ck_assert_ptr_eq(config_route_for(&c, "anything"), &c.routes[1]);
	config_free(&c);
}
END_TEST

START_TEST(test_route_errors)
{
	struct config c;

	ck_assert_int_eq(load(
	    "event_consumer:\n"
	    "  routes:\n"
	    "    - types: [a.b]\n"
	    "      idempotency_key: \"{{id}}\"\n"
	    "      body: {}\n", &c), -1);
	ck_assert_str_eq(err, "test.yaml:3:7: event_consumer.routes[0]: "
	    "missing required key path (e.g. /api/v2/nlp/process)");

	expect_error("event_consumer:\n  routes:\n    - path: /x\n"
	    "      idempotency_key: k\n      body: {}\n",
	    "event_consumer.routes[0]: missing required key types");
	expect_error("event_consumer:\n  routes:\n    - types: []\n"
	    "      path: /x\n      idempotency_key: k\n      body: {}\n",
	    "event_consumer.routes[0]: missing required key types");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      body: {}\n",
	    "missing required key idempotency_key");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      idempotency_key: k\n",
	    "missing required key body");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      idempotency_key: k\n"
	    "      content_mode: binary\n      body: {a: 1}\n",
	    "body is not used with content_mode: binary");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      idempotency_key: k\n      body: {}\n"
	    "      content_mode: xml\n",
	    "test.yaml:7:21: event_consumer.routes[0].content_mode: expected "
	    "one of body, structured, binary");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      method: FETCH\n      path: /x\n      idempotency_key: k\n"
	    "      body: {}\n",
	    "event_consumer.routes[0].method: expected one of GET, POST");
	/* Templates are checked where they are written. */
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      idempotency_key: \"{{data.id\"\n"
	    "      body: {}\n",
	    "test.yaml:5:24: event_consumer.routes[0].idempotency_key: bad "
	    "template");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      idempotency_key: k\n      body:\n"
	    "        doc:\n          text: \"{{}}\"\n",
	    "test.yaml:8:17: event_consumer.routes[0].body.doc.text: bad "
	    "template");
	expect_error("event_consumer:\n  routes:\n"
	    "    - {name: r, types: [a], path: /x, idempotency_key: k, "
	    "body: {}}\n"
	    "    - {name: r, types: [b], path: /y, idempotency_key: k, "
	    "body: {}}\n",
	    "test.yaml:4:7: event_consumer.routes[1]: route name \"r\" "
	    "already used");
	expect_error("event_consumer:\n  routes: []\n",
	    "event_consumer.routes: no routes");
	expect_error("event_consumer:\n  routes:\n    - just-a-string\n",
	    "event_consumer.routes[0]: expected a mapping");
	expect_error("event_consumer:\n  routes:\n    - types: [a]\n"
	    "      path: /x\n      idempotency_key: k\n"
	    "      body: {a: 1, a: 2}\n",
	    "duplicate key event_consumer.routes[0].body.a");
}
END_TEST

START_TEST(test_route_for_and_consumes)
{
	struct config c;

	ck_assert_msg(load(
	    "event_consumer:\n"
	    "  consume_events: [a.one, b.two]\n"
	    "  routes:\n"
	    "    - {types: [a.one, a.other], path: /a, idempotency_key: k, "
	    "body: {}}\n"
	    "    - {types: [b.two], path: /b, idempotency_key: k, "
	    "body: {}}\n", &c) == 0, "%s", err);
	ck_assert(config_consumes(&c, "a.one"));
	ck_assert(config_consumes(&c, "b.two"));
	ck_assert(!config_consumes(&c, "a.other"));
	ck_assert_str_eq(config_route_for(&c, "a.other")->path, "/a");
	ck_assert_str_eq(config_route_for(&c, "b.two")->path, "/b");
	ck_assert_ptr_null(config_route_for(&c, "c.three"));
	config_free(&c);

	/* No filter: everything is consumed. */
	ck_assert_msg(load(minimal, &c) == 0, "%s", err);
	ck_assert(config_consumes(&c, "whatever.type"));
	config_free(&c);

	/* A consumed type no route handles would be dropped unseen. */
	expect_error("event_consumer:\n  consume_events: [" DOC_CLEANED
	    ", com.storytelling.cleaning.job.started]\n",
	    "event_consumer.consume_events[1]: no route handles "
	    "\"com.storytelling.cleaning.job.started\"");
}
END_TEST

START_TEST(test_headers)
{
	struct config c;

	setenv("SR_TOKEN", "tok-123", 1);
	ck_assert_msg(load(
	    "event_consumer:\n"
	    "  nlp_api:\n"
	    "    base_url: https://nlp.example:8443/\n"
	    "    ca_file: /dev/null\n"
	    "    verify_tls: false\n"
	    "    headers:\n"
	    "      Authorization: \"Bearer ${SR_TOKEN}\"\n"
	    "      X-Source: stagerelay\n", &c) == 0, "%s", err);
	ck_assert_uint_eq(c.nlp_api.nheaders, 2);
	ck_assert_str_eq(c.nlp_api.headers[0].name, "Authorization");
	ck_assert_str_eq(c.nlp_api.headers[0].value, "Bearer tok-123");
	ck_assert_str_eq(c.nlp_api.headers[1].value, "stagerelay");
	ck_assert_str_eq(c.nlp_api.ca_file, "/dev/null");
	ck_assert(!c.nlp_api.verify_tls);
	config_free(&c);

	expect_error("event_consumer:\n  nlp_api:\n    headers: {\"A B\": x}\n",
	    "bad header name \"A B\"");
	expect_error("event_consumer:\n  nlp_api:\n    headers: {A: \"x\\ny\"}\n",
	    "event_consumer.nlp_api.headers.A: value must not hold a line "
	    "break");
	expect_error("event_consumer:\n  nlp_api:\n    headers: [a]\n",
	    "expected a mapping of header names to values");
}
END_TEST

START_TEST(test_print_redacts_secrets)
{
	struct config c;
	char *out;

	setenv("SR_PW", "hunter2-redis", 1);
	ck_assert_msg(load(
	    "event_consumer:\n"
	    "  redis_username: stage2\n"
	    "  redis_password: ${SR_PW}\n"
	    "  nlp_api:\n"
	    "    headers:\n"
	    "      Authorization: \"Bearer hunter2-token\"\n"
	    "  ledger:\n"
	    "    dsn: \"host=db user=relay password='hunter2 pg' dbname=s2\"\n",
	    &c) == 0, "%s", err);
	ck_assert_str_eq(c.redis_password, "hunter2-redis");
	out = print_to_string(&c);
	ck_assert_msg(strstr(out, "hunter2") == NULL, "secret printed:\n%s",
	    out);
	ck_assert_ptr_nonnull(strstr(out, "event_consumer:\n"));
	ck_assert_ptr_nonnull(strstr(out, "  redis_password: \"<redacted>\"\n"));
	ck_assert_ptr_nonnull(strstr(out, "  redis_username: \"stage2\"\n"));
	ck_assert_ptr_nonnull(strstr(out,
	    "\"Authorization\": \"<redacted>\""));
	ck_assert_ptr_nonnull(strstr(out, "dsn: \"host=db user=relay "
	    "password=<redacted> dbname=s2\""));
	/* Every key is shown, defaults included. */
	ck_assert_ptr_nonnull(strstr(out, "  redis_port: 6379\n"));
	ck_assert_ptr_nonnull(strstr(out, "  concurrent_tasks: 1\n"));
	ck_assert_ptr_nonnull(strstr(out, "    open_seconds: 30\n"));
	ck_assert_ptr_nonnull(strstr(out, "  routes:\n    - name: "));
	free(out);
	config_free(&c);

	/* URI form: user:password@ and ?password= both hidden. */
	ck_assert_msg(load(
	    "event_consumer:\n"
	    "  ledger:\n"
	    "    dsn: \"postgresql://relay:hunter2@db:5432/s2?sslmode=require"
	    "&password=hunter2b\"\n", &c) == 0, "%s", err);
	out = print_to_string(&c);
	ck_assert_msg(strstr(out, "hunter2") == NULL, "secret printed:\n%s",
	    out);
	ck_assert_ptr_nonnull(strstr(out, "dsn: \"postgresql://relay:"
	    "<redacted>@db:5432/s2?sslmode=require&password=<redacted>\""));
	free(out);
	config_free(&c);

	/* Without a password nothing is hidden. */
	ck_assert_msg(load("event_consumer:\n  ledger:\n"
	    "    dsn: postgres://relay@db/s2\n", &c) == 0, "%s", err);
	out = print_to_string(&c);
	ck_assert_ptr_nonnull(strstr(out, "dsn: \"postgres://relay@db/s2\""));
	ck_assert_ptr_nonnull(strstr(out, "  redis_password: null\n"));
	free(out);
	config_free(&c);
}
END_TEST

START_TEST(test_print_round_trip)
{
	struct config a, b;
	char *one, *two;

	setenv("HOSTNAME", "h1", 1);
	ck_assert_msg(load(routes_yaml, &a) == 0, "%s", err);
	one = print_to_string(&a);
	ck_assert_msg(load(one, &b) == 0, "%s\n%s", err, one);
	two = print_to_string(&b);
	ck_assert_str_eq(one, two);
	ck_assert_int_eq(cJSON_Compare(a.routes[0].body, b.routes[0].body, 1),
	    1);
	free(one);
	free(two);
	config_free(&a);
	config_free(&b);
}
END_TEST

START_TEST(test_password_files)
{
	struct config c;
	char *pw = write_temp("s3cret-redis\r\nsecond line\n");
	char *pg = write_temp("pg'pass\\word\n");
	char *yaml;

	ck_assert_int_ne(asprintf(&yaml, "event_consumer:\n"
	    "  redis_password_file: %s\n"
	    "  ledger:\n"
	    "    dsn: host=db\n"
	    "    password_file: %s\n", pw, pg), -1);
	ck_assert_msg(load(yaml, &c) == 0, "%s", err);
	free(yaml);
	ck_assert_str_eq(c.redis_password, "s3cret-redis");
	ck_assert_str_eq(c.ledger.dsn, "host=db password='pg\\'pass\\\\word'");
	config_free(&c);

	ck_assert_int_ne(asprintf(&yaml, "event_consumer:\n"
	    "  ledger:\n"
	    "    dsn: postgres://u@db/s2?sslmode=disable\n"
	    "    password_file: %s\n", pg), -1);
	ck_assert_msg(load(yaml, &c) == 0, "%s", err);
	free(yaml);
	ck_assert_str_eq(c.ledger.dsn, "postgres://u@db/s2?sslmode=disable"
	    "&password=pg%27pass%5Cword");
	config_free(&c);

	ck_assert_int_ne(asprintf(&yaml, "event_consumer:\n"
	    "  redis_password: x\n"
	    "  redis_password_file: %s\n", pw), -1);
	expect_error(yaml, "test.yaml:3:24: event_consumer.redis_password_file:"
	    " event_consumer.redis_password is set too");
	free(yaml);

	ck_assert_int_ne(asprintf(&yaml, "event_consumer:\n"
	    "  ledger: {dsn: \"password=x\", password_file: %s}\n", pg), -1);
	expect_error(yaml, "ledger.dsn holds a password already");
	free(yaml);

	expect_error("event_consumer:\n  redis_password_file: /nonexistent/pw\n",
	    "test.yaml:2:24: event_consumer.redis_password_file: cannot read "
	    "/nonexistent/pw");
	unlink(pw);
	unlink(pg);
	free(pw);
	free(pg);
}
END_TEST

/* A job route whose documents come from a query; extra keys follow. */
#define QUERY_ROUTE(extra) \
	"event_consumer:\n" \
	"  routes:\n" \
	"    - types: [" JOB_COMPLETED "]\n" \
	"      path: /api/v1/documents/batch\n" \
	"      idempotency_key: \"job:{{data.job_id}}\"\n" \
	"      body: {documents: \"{{documents}}\"}\n" \
	extra

START_TEST(test_documents_query)
{
	struct config c;
	const struct route_query *q;
	char *out;

	setenv("SQ_PW", "env-pw", 1);
	ck_assert_msg(load(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT document_id, cleaned_text FROM "
	    "processed_articles WHERE job_id = $1 OR (batch_id = $2 AND "
	    "note <> '$3' AND tag = $$x$$ $4 $$) -- $5\"\n"
	    "        params: [\"{{data.job_id}}\", \"{{data.batch_id}}\"]\n"
	    "        dsn: \"host=stage1 user=ro password=${SQ_PW} dbname=s1\"\n"
	    "        timeout_ms: 5000\n"), &c) == 0, "%s", err);
	ck_assert_uint_eq(c.nroutes, 1);
	q = &c.routes[0].documents_query;
	/* $$ reads as $ ($$ escapes the environment's $). */
	ck_assert_ptr_nonnull(strstr(q->sql, "tag = $x$ $4 $"));
	ck_assert_uint_eq(q->nparams, 2);
	ck_assert_str_eq(q->params[1], "{{data.batch_id}}");
	ck_assert_str_eq(q->dsn, "host=stage1 user=ro password=env-pw dbname=s1");
	ck_assert_int_eq(q->timeout_ms, 5000);
	ck_assert_str_eq(c.routes[0].kind, "batch");
	out = print_to_string(&c);
	ck_assert_msg(strstr(out, "env-pw") == NULL, "secret printed:\n%s",
	    out);
	ck_assert_ptr_nonnull(strstr(out, "      documents_query:\n"
	    "        sql: \"SELECT document_id"));
	ck_assert_ptr_nonnull(strstr(out, "        params: [\"{{data.job_id}}\", "
	    "\"{{data.batch_id}}\"]\n"));
	ck_assert_ptr_nonnull(strstr(out, "        dsn: \"host=stage1 user=ro "
	    "password=<redacted> dbname=s1\"\n"));
	ck_assert_ptr_nonnull(strstr(out, "        timeout_ms: 5000\n"));
	free(out);
	config_free(&c);

	/* No dsn: the ledger's; the default timeout. */
	ck_assert_msg(load(QUERY_ROUTE(
	    "      documents_query: {sql: \"SELECT * FROM t WHERE j = $1\", "
	    "params: [\"{{data.job_id}}\"]}\n"), &c) == 0, "%s", err);
	q = &c.routes[0].documents_query;
	ck_assert_ptr_null(q->dsn);
	ck_assert_int_eq(q->timeout_ms, 30000);
	out = print_to_string(&c);
	ck_assert_ptr_nonnull(strstr(out, "        dsn: null\n"));
	free(out);
	config_free(&c);
	unsetenv("SQ_PW");
}
END_TEST

START_TEST(test_documents_query_errors)
{
	/* Both sources of documents. */
	expect_error(QUERY_ROUTE(
	    "      documents_file: \"{{data.output_location}}\"\n"
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"
	    "        params: [\"{{data.job_id}}\"]\n"),
	    "test.yaml:8:7: event_consumer.routes[0]: a route reads "
	    "documents_file or documents_query, not both");
	/* A template in the SQL: never spliced in. */
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = '{{data.job_id}}'\"\n"),
	    "test.yaml:8:9: event_consumer.routes[0].documents_query.sql: a "
	    "template ({{...}}) inside the SQL; write $1, $2, ... there and "
	    "list the values in params");
	/* One value too few, one too many, none at all. */
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1 AND b = $2\"\n"
	    "        params: [\"{{data.job_id}}\"]\n"),
	    "test.yaml:9:9: event_consumer.routes[0].documents_query: the sql "
	    "uses $1..$2 but params lists 1 value (one template per "
	    "placeholder");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"
	    "        params: [\"{{data.job_id}}\", \"{{data.batch_id}}\"]\n"),
	    "test.yaml:9:9: event_consumer.routes[0].documents_query: the sql "
	    "uses $1..$1 but params lists 2 values");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"),
	    "test.yaml:8:9: event_consumer.routes[0].documents_query: the sql "
	    "uses $1..$1 but params lists 0 values");
	/* A $n in a string or a comment is no placeholder. */
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = '$1' /* $2 */\"\n"
	    "        params: [\"{{data.job_id}}\"]\n"),
	    "the sql uses no placeholder but params lists 1 value");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $2\"\n"
	    "        params: [\"{{data.job_id}}\", \"{{data.batch_id}}\"]\n"),
	    "test.yaml:8:9: event_consumer.routes[0].documents_query.sql: $1 "
	    "is never used but $2 is");
	/* kind: document cannot read documents. */
	expect_error(QUERY_ROUTE(
	    "      kind: document\n"
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"
	    "        params: [\"{{data.job_id}}\"]\n"),
	    "test.yaml:3:7: event_consumer.routes[0]: documents_query makes a "
	    "batch route (drop kind: document, or the documents_query)");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        params: [\"{{data.job_id}}\"]\n"),
	    "test.yaml:7:7: event_consumer.routes[0].documents_query: missing "
	    "required key sql");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"
	    "        params: [\"{{data.job_id\"]\n"),
	    "test.yaml:9:9: event_consumer.routes[0].documents_query.params[0]: "
	    "bad template");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"
	    "        params: [\"{{documents}}\"]\n"),
	    "params[0]: the documents are what the query selects");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT 1\"\n"
	    "        password_file: /etc/hostname\n"),
	    "test.yaml:7:7: event_consumer.routes[0].documents_query: "
	    "password_file needs a dsn");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT 1\"\n"
	    "        timeout_ms: 5\n"),
	    "test.yaml:9:21: event_consumer.routes[0].documents_query."
	    "timeout_ms: 5 is out of range (100..3600000)");
	/* The supervisor would take the worker for hung meanwhile. */
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT 1\"\n"
	    "        timeout_ms: 60000\n"),
	    "test.yaml:9:9: event_consumer.routes[0].documents_query."
	    "timeout_ms: 60000 ms must be less than supervisor.worker_timeout "
	    "(60 s)");
	expect_error(QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT 1\"\n"
	    "        dns: host=x\n"),
	    "unknown key event_consumer.routes[0].documents_query.dns (did you "
	    "mean dsn?)");
}
END_TEST

START_TEST(test_documents_query_password_file)
{
	struct config c;
	char *pg = write_temp("q-pass'word\n"), *yaml, *out;

	ck_assert_int_ne(asprintf(&yaml, QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT * FROM t WHERE j = $1\"\n"
	    "        params: [\"{{data.job_id}}\"]\n"
	    "        dsn: host=stage1\n"
	    "        password_file: %s\n"), pg), -1);
	ck_assert_msg(load(yaml, &c) == 0, "%s", err);
	free(yaml);
	ck_assert_str_eq(c.routes[0].documents_query.dsn,
	    "host=stage1 password='q-pass\\'word'");
	out = print_to_string(&c);
	ck_assert_msg(strstr(out, "q-pass") == NULL, "secret printed:\n%s",
	    out);
	free(out);
	config_free(&c);

	ck_assert_int_ne(asprintf(&yaml, QUERY_ROUTE(
	    "      documents_query:\n"
	    "        sql: \"SELECT 1\"\n"
	    "        dsn: \"host=stage1 password=x\"\n"
	    "        password_file: %s\n"), pg), -1);
	expect_error(yaml, "test.yaml:10:9: event_consumer.routes[0]."
	    "documents_query.password_file: event_consumer.routes[0]."
	    "documents_query.dsn holds a password already");
	free(yaml);
	unlink(pg);
	free(pg);
}
END_TEST

/* Loads content from a file of the given mode; returns the file's name. */
static char *
load_mode(const char *content, mode_t mode, struct config *c)
{
	char *path = write_temp(content);

	ck_assert_int_eq(chmod(path, mode), 0);
	ck_assert_msg(config_load(path, c, err, sizeof(err)) == 0, "%s", err);
	return path;
}

static void
expect_no_warning(const char *content, mode_t mode)
{
	struct config c;
	char *path = load_mode(content, mode, &c);

	ck_assert_msg(c.nwarnings == 0, "%s (mode %04o): unexpected %s",
	    content, (unsigned)mode, c.nwarnings ? c.warnings[0] : "");
	config_free(&c);
	unlink(path);
	free(path);
}

/* One warning naming the file, the key and the fix, never the value. */
static void
expect_warning(const char *content, mode_t mode, const char *key,
    const char *secret)
{
	struct config c;
	char *path = load_mode(content, mode, &c), *want;

	ck_assert_msg(c.nwarnings == 1, "%s: %zu warnings", content,
	    c.nwarnings);
	ck_assert_int_ne(asprintf(&want, "config: %s holds a secret (%s) and "
	    "is readable by others (mode %04o); chmod o-r %s", path, key,
	    (unsigned)mode, path), -1);
	ck_assert_str_eq(c.warnings[0], want);
	ck_assert_ptr_null(strstr(c.warnings[0], secret));
	free(want);
	config_free(&c);
	unlink(path);
	free(path);
}

START_TEST(test_readable_secret_warning)
{
	struct config c;
	char *pw, *yaml, *want, *logpath, *text = NULL;
	size_t cap = 0;
	FILE *f;

	setenv("SECRET_PW", "env-pw-value", 1);
	expect_warning("event_consumer:\n  redis_password: hunter2\n", 0644,
	    "event_consumer.redis_password", "hunter2");
	expect_warning("event_consumer:\n  redis_password: hunter2\n", 0604,
	    "event_consumer.redis_password", "hunter2");
	expect_warning("event_consumer:\n  ledger:\n    dsn: \"host=db "
	    "password=pg-lit\"\n", 0644, "event_consumer.ledger.dsn", "pg-lit");
	expect_warning("event_consumer:\n  ledger:\n    dsn: postgres://u:"
	    "pg-lit@db/x\n", 0644, "event_consumer.ledger.dsn", "pg-lit");
	/* A documents query's DSN is a secret as the ledger's is. */
	expect_warning(QUERY_ROUTE("      documents_query:\n"
	    "        sql: \"SELECT 1\"\n"
	    "        dsn: \"host=s1 password=q-lit\"\n"), 0644,
	    "event_consumer.routes[0].documents_query.dsn", "q-lit");
	expect_warning("event_consumer:\n  nlp_api:\n    headers:\n"
	    "      Authorization: Bearer tok-lit\n", 0644,
	    "event_consumer.nlp_api.headers.Authorization", "tok-lit");
	/* $${ is a literal "${", not a reference. */
	expect_warning("event_consumer:\n  redis_password: \"a$${B}\"\n", 0644,
	    "event_consumer.redis_password", "a${B}");
	/* Both keys are named, in file order. */
	expect_warning("event_consumer:\n  redis_password: hunter2\n"
	    "  nlp_api: {headers: {X-Key: k-lit}}\n", 0644,
	    "event_consumer.redis_password, event_consumer.nlp_api.headers."
	    "X-Key", "k-lit");

	/* Not readable by others, or the file's group is ours. */
	expect_no_warning("event_consumer:\n  redis_password: hunter2\n",
	    0600);
	expect_no_warning("event_consumer:\n  redis_password: hunter2\n",
	    0640);
	/* The secret comes from the environment. */
	expect_no_warning("event_consumer:\n  redis_password: "
	    "\"${SECRET_PW}\"\n  nlp_api:\n    headers:\n      Authorization: "
	    "\"Bearer ${SECRET_PW}\"\n  ledger:\n    dsn: \"postgresql://u:"
	    "${SECRET_PW}@db/x?sslmode=disable\"\n", 0644);
	expect_no_warning("event_consumer:\n  ledger:\n    dsn: \"host=db "
	    "password=${SECRET_PW}\"\n", 0644);
	/* No secret at all. */
	expect_no_warning("event_consumer:\n  redis_password: \"\"\n  ledger:\n"
	    "    dsn: host=db user=u\n", 0644);

	/* Root starts the daemon for the -u user the group is given to. */
	if (geteuid() == 0) {
		char *path = write_temp("event_consumer:\n"
		    "  redis_password: hunter2\n");

		ck_assert_int_eq(chown(path, (uid_t)-1, 54321), 0);
		ck_assert_int_eq(chmod(path, 0640), 0);
		ck_assert_msg(config_load(path, &c, err, sizeof(err)) == 0,
		    "%s", err);
		ck_assert_uint_eq(c.nwarnings, 0);
		config_free(&c);
		unlink(path);
		free(path);
	}

	/* A string has no file to be read by others. */
	ck_assert_msg(load("event_consumer:\n  redis_password: hunter2\n",
	    &c) == 0, "%s", err);
	ck_assert_uint_eq(c.nwarnings, 0);
	config_free(&c);

	/* Secret files: world-readable warns, 0600 does not. */
	pw = write_temp("file-secret\n");
	ck_assert_int_eq(chmod(pw, 0644), 0);
	ck_assert_int_ne(asprintf(&yaml, "event_consumer:\n"
	    "  redis_password_file: %s\n  ledger:\n    dsn: host=db\n"
	    "    password_file: %s\n", pw, pw), -1);
	ck_assert_msg(load(yaml, &c) == 0, "%s", err);
	ck_assert_uint_eq(c.nwarnings, 2);
	ck_assert_int_ne(asprintf(&want, "config: event_consumer."
	    "redis_password_file: %s holds a secret and is readable by others "
	    "(mode 0644); chmod o-r %s", pw, pw), -1);
	ck_assert_str_eq(c.warnings[0], want);
	free(want);
	ck_assert_ptr_nonnull(strstr(c.warnings[1],
	    "event_consumer.ledger.password_file: "));
	ck_assert_ptr_null(strstr(c.warnings[1], "file-secret"));

	/* config_warn_secrets() logs them. */
	logpath = write_temp("");
	log_init("test", LOG_INFO, LOG_FMT_LOGFMT, logpath);
	config_warn_secrets(&c);
	log_init("test", LOG_INFO, LOG_FMT_LOGFMT, NULL);
	f = fopen(logpath, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_gt(getdelim(&text, &cap, '\0', f), 0);
	fclose(f);
	ck_assert_ptr_nonnull(strstr(text, "level=warn"));
	ck_assert_ptr_nonnull(strstr(text, "redis_password_file"));
	ck_assert_ptr_null(strstr(text, "file-secret"));
	free(text);
	unlink(logpath);
	free(logpath);
	config_free(&c);

	ck_assert_int_eq(chmod(pw, 0600), 0);
	ck_assert_msg(load(yaml, &c) == 0, "%s", err);
	ck_assert_uint_eq(c.nwarnings, 0);
	config_free(&c);
	free(yaml);
	unlink(pw);
	free(pw);
}
END_TEST

START_TEST(test_validation)
{
	expect_error("event_consumer:\n  source_stream: \"\"\n",
	    "test.yaml:2:3: event_consumer.source_stream: must not be empty");
	expect_error("event_consumer:\n  consumer_group:\n",
	    "event_consumer.consumer_group: must not be empty");
	expect_error("event_consumer:\n  dead_letter_stream: \"\"\n",
	    "event_consumer.dead_letter_stream: must not be empty");
	expect_error("event_consumer:\n  source_stream: s\n"
	    "  dead_letter_stream: s\n",
	    "test.yaml:3:3: event_consumer.dead_letter_stream: must differ "
	    "from source_stream");
	expect_error("event_consumer:\n  nlp_api: {base_url: \"nlp:8000\"}\n",
	    "event_consumer.nlp_api.base_url: must start with http:// or "
	    "https://");
	expect_error("event_consumer:\n  ledger:\n    schema: Stage-Relay\n",
	    "test.yaml:3:5: event_consumer.ledger.schema: \"Stage-Relay\" is "
	    "not a plain identifier");
	expect_error("event_consumer:\n  ledger:\n    schema: 1abc\n",
	    "is not a plain identifier");
	expect_error("event_consumer:\n  metrics: {listen: localhost}\n",
	    "event_consumer.metrics.listen: expected host:port");
	expect_error("event_consumer:\n  ingress: {listen: \"host:80\"}\n",
	    "test.yaml:2:13: event_consumer.ingress.listen: expected a numeric "
	    "host:port");
	expect_error("event_consumer:\n  metrics: {listen: \"127.0.0.1:9500\"}\n"
	    "  ingress: {enabled: true, listen: \"127.0.0.1:9500\"}\n",
	    "event_consumer.ingress.listen: \"127.0.0.1:9500\" is "
	    "metrics.listen too");
	expect_error("event_consumer:\n  ingress: {path: \"/events?x=1\"}\n",
	    "event_consumer.ingress.path: expected an absolute path");
	expect_error("event_consumer:\n  ingress: {path: events}\n",
	    "event_consumer.ingress.path: expected an absolute path");
	expect_error("event_consumer:\n  ingress: {secret: \"${NO_SUCH_VAR_X:-}\"}\n",
	    "event_consumer.ingress.secret: is empty (an unset ${VAR}?)");
	expect_error("event_consumer:\n  ingress: {enabled: true, "
	    "redis_timeout_ms: 60000}\n",
	    "event_consumer.ingress.redis_timeout_ms: 60000 ms must be under "
	    "supervisor.worker_timeout (60 s)");
	expect_error("event_consumer:\n  ingress: {max_batch_events: 0}\n",
	    "ingress.max_batch_events");
	expect_error("event_consumer:\n  ingress: {secret: a, secret_file: /x}\n",
	    "event_consumer.ingress.secret_file: event_consumer.ingress.secret "
	    "is set too");
	expect_error("event_consumer:\n  ledger: {lease_seconds: 10}\n"
	    "  nlp_api: {timeout_ms: 60000}\n",
	    "event_consumer.ledger.lease_seconds: 10 s must exceed");
	expect_error("event_consumer:\n  retry_delay_seconds: 600\n",
	    "max_retry_delay_seconds: 300 is less than retry_delay_seconds");
	expect_error("event_consumer:\n  shared_dir: shared\n",
	    "event_consumer.shared_dir: must be an absolute path");
	expect_error("event_consumer:\n  consumer_group: \"stage 2\"\n",
	    "test.yaml:2:3: event_consumer.consumer_group: a space or control "
	    "character (0x20) at byte 6, after \"stage\"; a name here is one "
	    "word");
	expect_error("event_consumer:\n  consumer_name: \"w1\\nlevel=error\"\n",
	    "event_consumer.consumer_name: a space or control character (0x0a) "
	    "at byte 3, after \"w1\"");
	expect_error("event_consumer:\n  source_stream: \"s\\tx\"\n",
	    "event_consumer.source_stream: a space or control character");
	expect_error("event_consumer:\n  dead_letter_stream: \"d\\x7f\"\n",
	    "event_consumer.dead_letter_stream: a space or control character "
	    "(0x7f)");
	expect_error("event_consumer:\n  event_field: \"my event\"\n",
	    "event_consumer.event_field: a space");
	expect_error("event_consumer:\n  nlp_api:\n"
	    "    ca_file: /nonexistent/ca.pem\n", "test.yaml:3:5: event_consumer.nlp_api.ca_file: /nonexistent/ca.pem: "
	    "No such file or directory");
}
END_TEST

/* Loads yaml, which must succeed with exactly the warnings given. */
static void
expect_transport(const char *yaml, const char *want)
{
	struct config c;

	ck_assert_msg(load(yaml, &c) == 0, "%s", err);
	if (want == NULL)
		ck_assert_msg(c.nwarnings == 0, "%s: unexpected %s", yaml,
		    c.nwarnings ? c.warnings[0] : "");
	else {
		ck_assert_msg(c.nwarnings == 1, "%s: %zu warnings", yaml,
		    c.nwarnings);
		ck_assert_msg(strstr(c.warnings[0], want) != NULL,
		    "\"%s\" lacks \"%s\"", c.warnings[0], want);
	}
	config_free(&c);
}

START_TEST(test_transport_warnings)
{
	expect_transport("event_consumer:\n  nlp_api:\n    base_url: "
	    "https://nlp.example\n    verify_tls: false\n",
	    "config: nlp_api.verify_tls is false: the certificate of "
	    "https://nlp.example is not checked");
	/* Off over plain HTTP changes nothing: nothing to verify. */
	expect_transport("event_consumer:\n  nlp_api:\n    base_url: "
	    "http://nlp.example\n    verify_tls: false\n", NULL);
	expect_transport("event_consumer:\n  nlp_api:\n    base_url: "
	    "http://nlp.example:8000/api\n    headers: {X-Key: k}\n",
	    "config: nlp_api.headers are sent in clear text to "
	    "nlp.example:8000 (http://)");
	expect_transport("event_consumer:\n  nlp_api:\n    base_url: "
	    "http://127.0.0.1:8000\n    headers: {X-Key: k}\n", NULL);
	expect_transport("event_consumer:\n  nlp_api:\n    base_url: "
	    "http://localhost:8000\n    headers: {X-Key: k}\n", NULL);
	expect_transport("event_consumer:\n  nlp_api:\n    base_url: "
	    "https://nlp.example\n    headers: {X-Key: k}\n", NULL);
	/* An ingress another network reaches, and no signature asked. */
	expect_transport("event_consumer:\n  ingress: {enabled: true, "
	    "listen: \"0.0.0.0:9466\"}\n", "config: the ingress listens on "
	    "0.0.0.0:9466 without ingress.secret");
	expect_transport("event_consumer:\n  ingress: {enabled: true, "
	    "listen: \"[::]:9466\", secret: k}\n", NULL);
	expect_transport("event_consumer:\n  ingress: {enabled: true}\n", NULL);
	expect_transport("event_consumer:\n  ingress: {listen: \"0.0.0.0:1\"}\n",
	    NULL);
	/* A short worker_timeout is no error while the ingress is off. */
	expect_transport("event_consumer:\n  supervisor: {worker_timeout: 2}\n",
	    NULL);
}
END_TEST

START_TEST(test_err_buffer)
{
	struct config c;
	char small[16];

	memset(small, 'x', sizeof(small));
	ck_assert_int_eq(config_load_string("t.yaml", "nope: 1\n", &c, small,
	    sizeof(small)), -1);
	ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
	/* A failed load leaves nothing to free, and freeing is harmless. */
	config_free(&c);
	ck_assert_int_eq(config_load_string("t.yaml", "nope: 1\n", &c, NULL,
	    0), -1);
}
END_TEST

START_TEST(test_examples_load)
{
	static const char *const files[] = {
		"etc/stagerelay.yaml",
		"etc/examples/minimal.yaml",
		"etc/examples/advanced.yaml",
		"etc/examples/manual-mode.yaml",
		"etc/examples/settings.yaml",
		"etc/examples/stage3-embeddings.yaml",
	};
	struct config c;

	setenv("HOSTNAME", "example-host", 1);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char *path = srcdir_path(files[i]);

		ck_assert_msg(config_load(path, &c, err, sizeof(err)) == 0,
		    "%s", err);
		if (strstr(path, "manual-mode") != NULL) {
			ck_assert(c.enabled);
			ck_assert(!c.auto_process);
		}
		if (strstr(path, "advanced") != NULL)
			ck_assert_int_eq(c.concurrent_tasks, 4);
		if (strstr(path, "examples/settings") != NULL) {
			ck_assert_str_eq(c.nlp_api.base_url,
			    "http://nlp-orchestrator:8000");
			ck_assert_uint_eq(c.nroutes, 2);
			ck_assert_str_eq(c.routes[0].success_field, "success");
		}
		if (strstr(path, "stage3-embeddings") != NULL) {
			ck_assert_str_eq(c.source_stream, "stage2:nlp:events");
			ck_assert_str_eq(c.event_field, "event");
			ck_assert_str_eq(c.consumer_group, "stage3-embeddings");
			ck_assert_uint_eq(c.nroutes, 2);
		}
		config_free(&c);
		free(path);
	}
}
END_TEST

START_TEST(test_shipped_config_is_the_defaults)
{
	struct config shipped, defaults;
	char *path = srcdir_path("etc/stagerelay.yaml");
	char *a, *b;

	setenv("HOSTNAME", "example-host", 1);
	ck_assert_msg(config_load(path, &shipped, err, sizeof(err)) == 0, "%s",
	    err);
	/* Later-release keys are commented out: a default start is quiet. */
	ck_assert_uint_eq(shipped.npending, 0);
	ck_assert_msg(load("event_consumer: {}\n", &defaults) == 0, "%s", err);
	free(shipped.path);
	shipped.path = strdup("same");
	free(defaults.path);
	defaults.path = strdup("same");
	a = print_to_string(&shipped);
	b = print_to_string(&defaults);
	ck_assert_str_eq(a, b);
	free(a);
	free(b);
	free(path);
	config_free(&shipped);
	config_free(&defaults);
}
END_TEST

/* Runs in each forked test: the caller's environment must not leak in. */
static void
clean_env(void)
{
	unsetenv("EVENT_CONSUMER_ENABLED");
	unsetenv("STAGE1_EVENT_STREAM");
}

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, clean_env, NULL);

	tcase_add_test(tc, test_minimal_defaults);
	tcase_add_test(tc, test_consumer_name_without_hostname_env);
	tcase_add_test(tc, test_advanced_values_and_pending);
	tcase_add_test(tc, test_pending_nested_keys);
	tcase_add_test(tc, test_warn_pending_logs);
	tcase_add_test(tc, test_whole_settings_file);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_wrong_type);
	tcase_add_test(tc, test_ranges);
	tcase_add_test(tc, test_duplicate_key);
	tcase_add_test(tc, test_workers_alias);
	tcase_add_test(tc, test_bad_yaml);
	tcase_add_test(tc, test_missing_section);
	tcase_add_test(tc, test_file_load);
	tcase_add_test(tc, test_env_expansion);
	tcase_add_test(tc, test_env_overrides);
	tcase_add_test(tc, test_routes_parse);
	tcase_add_test(tc, test_route_errors);
	tcase_add_test(tc, test_route_for_and_consumes);
	tcase_add_test(tc, test_headers);
	tcase_add_test(tc, test_print_redacts_secrets);
	tcase_add_test(tc, test_print_round_trip);
	tcase_add_test(tc, test_password_files);
	tcase_add_test(tc, test_documents_query);
	tcase_add_test(tc, test_documents_query_errors);
	tcase_add_test(tc, test_documents_query_password_file);
	tcase_add_test(tc, test_readable_secret_warning);
	tcase_add_test(tc, test_transport_warnings);
	tcase_add_test(tc, test_validation);
	tcase_add_test(tc, test_err_buffer);
	tcase_add_test(tc, test_examples_load);
	tcase_add_test(tc, test_shipped_config_is_the_defaults);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return unit_run(config_suite());
}
