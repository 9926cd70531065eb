/*
 * config.h: the event_consumer: section of a YAML file, validated.
 *
 * The file may be Stage 2's whole settings.yaml; only the event_consumer
 * mapping is read. Every key of the integration proposal keeps its name and
 * meaning; stagerelay's own keys sit beside them (nlp_api, routes, ledger,
 * logging, metrics, supervisor, limits). See stagerelay.yaml(5).
 */
#ifndef STAGERELAY_CONFIG_H
#define STAGERELAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <cJSON.h>

#define CONFIG_EXIT_ERROR	78	/* EX_CONFIG: never respawned */

enum content_mode {
	CONTENT_BODY = 0,	/* render route->body as JSON */
	CONTENT_STRUCTURED,	/* forward the CloudEvent as application/cloudevents+json */
	CONTENT_BINARY		/* forward data with ce-* headers */
};

struct header {
	char	*name;
	char	*value;		/* may hold a secret: never logged or printed */
};

/*
 * A batch route's documents query (docquery.h): sql names its values
 * $1..$n, and params holds one template per $n, rendered against the
 * event and sent apart from the SQL.
 */
struct route_query {
	char		 *sql;		/* NULL: the route has no query */
	char		**params;	/* templates; nparams == highest $n */
	size_t		  nparams;
	char		 *dsn;		/* NULL: the ledger's (ledger.dsn);
					   may hold a password: never logged */
	char		 *password_file; /* optional; folded into dsn */
	int		  timeout_ms;	/* statement_timeout; default 30000 */
};

struct route {
	char		 *name;		/* "route[N]" unless given */
	char		**types;	/* event types this route handles */
	size_t		  ntypes;
	char		 *method;	/* default POST */
	char		 *path;		/* joined to nlp_api.base_url (or a full URL) */
	char		 *idempotency_key;	/* template string, required */
	cJSON		 *body;		/* template tree (NULL when content_mode != body) */
	enum content_mode content_mode;
	char		 *success_field;	/* optional JSON bool that must be true */
	char		 *job_id_field;		/* optional: remote job id to store */
	char		 *documents_file;	/* optional template: a JSONL file in shared_dir */
	struct route_query documents_query; /* optional: instead of a file */
	char		 *kind;		/* "document" or "batch" (default: batch
					   when documents_file or
					   documents_query is set) */
	int		  line;		/* where the route starts in the file */
};

/* A key set in the file whose behaviour arrives in a later release. */
struct pending_key {
	char	*key;		/* dotted path, e.g. "event_consumer.max_retries" */
	char	*what;		/* which part of stagerelay will honour it */
	int	 line;
};

struct config {
	char		*path;		/* the file read */

	/* The proposal's keys. */
	bool		 enabled;		/* default true */
	char		*source_stream;		/* default "stage1:cleaning:events" */
	char		*redis_host;		/* default "127.0.0.1" */
	int		 redis_port;		/* default 6379 */
	int		 redis_db;		/* default 0 */
	char		*redis_username;	/* optional (ACL user) */
	char		*redis_password;	/* secret; or redis_password_file */
	char		*consumer_group;	/* default "stage2-nlp-processor" */
	char		*consumer_name;		/* default "${HOSTNAME}" expanded */
	char		**consume_events;	/* empty = all types */
	size_t		 nconsume_events;
	bool		 auto_process;		/* default true; false = observe only */
	bool		 batch_mode;		/* default false */
	int		 poll_interval_ms;	/* XREADGROUP BLOCK; default 1000 */
	int		 batch_size;		/* XREADGROUP COUNT; default 100 */
	int		 concurrent_tasks;	/* workers; default 1 */
	bool		 retry_failed;		/* default true */
	int		 max_retries;		/* default 3 */
	double		 retry_delay_seconds;	/* default 5 */
	double		 max_retry_delay_seconds; /* default 300 */
	char		*dead_letter_stream;	/* default "stage2:nlp:failed-events" */
	long		 dead_letter_maxlen;	/* default 100000; 0 = no trim */
	bool		 process_backlog;	/* default false */
	int		 backlog_batch_size;	/* default 100 */
	double		 backlog_max_age_hours;	/* default 24; 0 = no limit */
	bool		 check_already_processed; /* default true */
	double		 deduplication_ttl_hours; /* default 24; 0 = forever */

	/* stagerelay's own keys. */
	char		*event_field;		/* structured layout field, default "event" */
	size_t		 max_event_bytes;	/* default 1 MiB */
	size_t		 max_entry_fields;	/* default 256 */
	int		 max_json_depth;	/* default 64 */
	char		*shared_dir;		/* default "/shared" */
	int		 max_batch_documents;	/* per batch request; default 500 */
	size_t		 max_documents_file_bytes; /* default 64 MiB */
	size_t		 max_documents_per_file; /* default 100000 */
	int		 claim_interval_ms;	/* default 30000 */
	int		 claim_idle_ms;		/* default 60000 */
	int		 max_deliveries;	/* default 10 */
	long		 lag_alert_threshold;	/* default 1000 */
	int		 idle_alert_minutes;	/* default 5 */

	struct {
		char		*base_url;	/* default "http://127.0.0.1:8000" */
		int		 timeout_ms;	/* default 30000 */
		int		 connect_timeout_ms; /* default 5000 */
		int		 max_in_flight;	/* per worker; default 64 */
		size_t		 max_request_bytes; /* default 16 MiB */
		size_t		 max_response_bytes; /* default 1 MiB */
		struct header	*headers;
		size_t		 nheaders;
		char		*ca_file;	/* optional */
		bool		 verify_tls;	/* default true */
	} nlp_api;

	struct route	*routes;		/* defaults of DESIGN.md §4 if absent */
	size_t		 nroutes;

	struct {
		char	*dsn;		/* default "" (libpq environment) */
		char	*schema;	/* default "stagerelay" */
		int	 lease_seconds;	/* default 300 */
		char	*password_file;	/* optional */
	} ledger;

	struct {
		char	*format;	/* "logfmt" (default) or "json" */
		char	*level;		/* "info" (default) */
		char	*file;		/* NULL = stderr */
	} logging;

	struct {
		char	*listen;	/* default "127.0.0.1:9464"; "" disables */
	} metrics;

	/* CloudEvents over HTTP into source_stream (the ingress process). */
	struct {
		bool	 enabled;		/* default false */
		char	*listen;		/* default "127.0.0.1:9466" */
		char	*path;			/* default "/v2/events/stage1" */
		char	*secret;		/* HMAC key, or secret_file; NULL:
						   no signature checked */
		size_t	 max_body_bytes;	/* default 4 MiB */
		int	 max_batch_events;	/* default 1000 */
		long	 stream_maxlen;		/* XADD MAXLEN ~; default 0: none */
		int	 max_connections;	/* default 64 */
		int	 redis_timeout_ms;	/* default 5000 */
	} ingress;

	struct {
		int	 worker_timeout;	/* seconds, default 60 */
		int	 shutdown_timeout;	/* seconds, default 30 */
	} supervisor;

	struct {
		int	failure_threshold;	/* default 5 */
		int	open_seconds;		/* default 30 */
	} circuit_breaker;

	struct pending_key *pending;	/* keys set but not in effect yet */
	size_t		 npending;
	char		**warnings;	/* secrets readable by others: */
	size_t		 nwarnings;	/* see config_warn_secrets() */
};

/*
 * Loads and validates path. On error returns -1 and writes
 * "file:line:column: message (hint)" into err. On success *out owns
 * everything; release with config_free(). Environment overrides
 * EVENT_CONSUMER_ENABLED and STAGE1_EVENT_STREAM are applied.
 */
int	 config_load(const char *path, struct config *out, char *err,
	    size_t errlen);
/* Same, from a string (name is used in messages). */
int	 config_load_string(const char *name, const char *yaml,
	    struct config *out, char *err, size_t errlen);
void	 config_free(struct config *);

/* Which process a forked child is, for config_forget_secrets(). */
enum config_role {
	CONFIG_ROLE_WORKER,	/* Redis, the ledger, the API */
	CONFIG_ROLE_INGRESS	/* Redis and ingress.secret only */
};

/*
 * Zeroes and drops the secrets a child of this role never uses, right
 * after the fork: the ingress faces another network and needs no ledger
 * password or API token; a worker needs no ingress.secret.
 */
void	 config_forget_secrets(struct config *, enum config_role);

/* Prints the effective configuration as YAML, secrets redacted. */
void	 config_print(FILE *, const struct config *);

/* A libpq DSN with its password replaced by <redacted>. Caller frees. */
char	*config_redacted_dsn(const char *dsn);

/* Logs one warning per key in cfg->pending ("accepted, not yet in effect"). */
void	 config_warn_pending(const struct config *);

/*
 * Logs cfg->warnings: the config file holds a secret (redis_password, a
 * password in ledger.dsn, an nlp_api.headers value, as written and not
 * from ${VAR}) or a *_file secret file, and others may read it.
 */
void	 config_warn_secrets(const struct config *);

/* Route for an event type, or NULL. */
const struct route *config_route_for(const struct config *, const char *type);

/* True if the consume_events filter lets this type through. */
bool	 config_consumes(const struct config *, const char *type);

#endif
