/*
 * ledger.c: the PostgreSQL ledger through libpq.
 *
 * Statements name the schema explicitly (no search_path, no session state)
 * so the ledger works through pgbouncer in transaction pooling. Batches
 * travel as parallel text arrays unnested server-side: one round trip per
 * batch whatever its size.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "ledger.h"
#include "log.h"
#include "util.h"

struct ledger {
	char	*dsn;
	char	*schema;	/* as given: a plain identifier */
	char	*group;
	char	*consumer;
	char	*stream;	/* source stream, stored with each row */
	PGconn	*conn;
	char	*sql_claim;
	char	*sql_record;
	char	*sql_note;
	char	*sql_bury;
	char	*qschema;	/* quoted, for the statements built on demand */
	char	 refused[512];	/* why the last LEDGER_REFUSED */
};

/*
 * Migrations, in order; @S@ stands for the schema. Never edit a released
 * one: append a new one.
 */
static const struct migration {
	int		 version;
	const char	*description;
	const char	*sql;
} migrations[] = {
	{ 1, "processed_documents, deliveries, hourly view",
"CREATE TABLE @S@.deliveries (\n"
"  delivery_id     bigserial PRIMARY KEY,\n"
"  consumer_group  text NOT NULL,\n"
"  route           text NOT NULL,\n"
"  method          text NOT NULL,\n"
"  url             text NOT NULL,\n"
"  idempotency_key text,\n"
"  http_status     integer,\n"
"  latency_ms      double precision,\n"
"  outcome         text NOT NULL CHECK (outcome IN ('success','transient','permanent')),\n"
"  remote_job_id   text,\n"
"  error           text,\n"
"  event_id        text,\n"
"  stream_entry_id text,\n"
"  requested_at    timestamptz NOT NULL DEFAULT now()\n"
");\n"
"CREATE TABLE @S@.processed_documents (\n"
"  consumer_group   text NOT NULL,\n"
"  document_id      text NOT NULL,\n"
"  status           text NOT NULL CHECK (status IN ('claimed','triggered','failed','dead','observed','expired')),\n"
"  attempts         integer NOT NULL DEFAULT 0,\n"
"  claimed_by       text,\n"
"  lease_until      timestamptz,\n"
"  event_id         text,\n"
"  event_type       text,\n"
"  event_source     text,\n"
"  event_time       timestamptz,\n"
"  stream           text,\n"
"  stream_entry_id  text,\n"
"  batch_id         text,\n"
"  job_id           text,\n"
"  remote_job_id    text,\n"
"  http_status      integer,\n"
"  last_error       text,\n"
"  last_delivery_id bigint REFERENCES @S@.deliveries (delivery_id) ON DELETE SET NULL,\n"
"  first_seen_at    timestamptz NOT NULL DEFAULT now(),\n"
"  triggered_at     timestamptz,\n"
"  updated_at       timestamptz NOT NULL DEFAULT now(),\n"
"  PRIMARY KEY (consumer_group, document_id)\n"
");\n"
"CREATE INDEX processed_documents_status_updated_idx ON @S@.processed_documents (status, updated_at);\n"
"CREATE INDEX processed_documents_triggered_at_idx ON @S@.processed_documents (triggered_at);\n"
"CREATE INDEX processed_documents_batch_idx ON @S@.processed_documents (batch_id) WHERE batch_id IS NOT NULL;\n"
"CREATE INDEX processed_documents_job_idx ON @S@.processed_documents (job_id) WHERE job_id IS NOT NULL;\n"
"CREATE INDEX processed_documents_remote_job_idx ON @S@.processed_documents (remote_job_id) WHERE remote_job_id IS NOT NULL;\n"
"CREATE INDEX processed_documents_event_idx ON @S@.processed_documents (event_id);\n"
"CREATE INDEX processed_documents_last_delivery_idx ON @S@.processed_documents (last_delivery_id) WHERE last_delivery_id IS NOT NULL;\n"
"CREATE INDEX deliveries_requested_at_idx ON @S@.deliveries (requested_at);\n"
"CREATE INDEX deliveries_key_idx ON @S@.deliveries (consumer_group, idempotency_key);\n"
"CREATE INDEX deliveries_remote_job_idx ON @S@.deliveries (remote_job_id) WHERE remote_job_id IS NOT NULL;\n"
"CREATE VIEW @S@.hourly_summary AS\n"
"  SELECT date_trunc('hour', updated_at) AS hour, consumer_group, status,\n"
"         count(*) AS documents, sum(attempts) AS requests\n"
"    FROM @S@.processed_documents GROUP BY 1, 2, 3;\n"
"COMMENT ON TABLE @S@.processed_documents IS 'One row per document (idempotency key) a consumer group has handled: the durable dedup record stagerelay checks before triggering and updates before acknowledging.';\n"
"COMMENT ON COLUMN @S@.processed_documents.consumer_group IS 'Redis consumer group (one per pipeline stage); dedup is per group.';\n"
"COMMENT ON COLUMN @S@.processed_documents.document_id IS 'The rendered idempotency key of the route: the document id, or job:<job_id> for batch events.';\n"
"COMMENT ON COLUMN @S@.processed_documents.status IS 'claimed (in flight), triggered (NLP accepted it), failed (transient failure, will be retried), dead (gave up; see the dead-letter stream), observed (seen with auto_process off), expired (too old for the backlog).';\n"
"COMMENT ON COLUMN @S@.processed_documents.attempts IS 'HTTP requests made for this document so far.';\n"
"COMMENT ON COLUMN @S@.processed_documents.claimed_by IS 'Consumer name (<consumer_name>-<slot>) holding or last holding the claim.';\n"
"COMMENT ON COLUMN @S@.processed_documents.lease_until IS 'A claim by another consumer is honoured until this time; after it the document can be taken over.';\n"
"COMMENT ON COLUMN @S@.processed_documents.event_id IS 'CloudEvent id of the event that last claimed the document (Stage 1 event id).';\n"
"COMMENT ON COLUMN @S@.processed_documents.event_type IS 'CloudEvent type, e.g. com.storytelling.cleaning.document.cleaned.';\n"
"COMMENT ON COLUMN @S@.processed_documents.event_source IS 'CloudEvent source, e.g. stage1-cleaning-pipeline.';\n"
"COMMENT ON COLUMN @S@.processed_documents.event_time IS 'CloudEvent time (when Stage 1 produced the event), if given.';\n"
"COMMENT ON COLUMN @S@.processed_documents.stream IS 'Redis stream the entry was read from.';\n"
"COMMENT ON COLUMN @S@.processed_documents.stream_entry_id IS 'Redis stream entry id (ms-seq) of the entry.';\n"
"COMMENT ON COLUMN @S@.processed_documents.batch_id IS 'Stage 1 batch id (data.batch_id), if any.';\n"
"COMMENT ON COLUMN @S@.processed_documents.job_id IS 'Stage 1 job id (data.job_id), if any.';\n"
"COMMENT ON COLUMN @S@.processed_documents.remote_job_id IS 'Job id the NLP API returned (route job_id_field).';\n"
"COMMENT ON COLUMN @S@.processed_documents.http_status IS 'HTTP status of the last request, NULL if no response.';\n"
"COMMENT ON COLUMN @S@.processed_documents.last_error IS 'Why the last attempt failed, NULL after success.';\n"
"COMMENT ON COLUMN @S@.processed_documents.last_delivery_id IS 'The deliveries row of the last request made for this document.';\n"
"COMMENT ON COLUMN @S@.processed_documents.first_seen_at IS 'When stagerelay first recorded the document.';\n"
"COMMENT ON COLUMN @S@.processed_documents.triggered_at IS 'When the NLP API accepted the document; the dedup window counts from here.';\n"
"COMMENT ON COLUMN @S@.processed_documents.updated_at IS 'Last change of the row.';\n"
"COMMENT ON TABLE @S@.deliveries IS 'One row per HTTP request stagerelay made to the downstream API.';\n"
"COMMENT ON COLUMN @S@.deliveries.delivery_id IS 'Surrogate key.';\n"
"COMMENT ON COLUMN @S@.deliveries.consumer_group IS 'Redis consumer group that made the request.';\n"
"COMMENT ON COLUMN @S@.deliveries.route IS 'Name of the route (config routes[].name).';\n"
"COMMENT ON COLUMN @S@.deliveries.method IS 'HTTP method.';\n"
"COMMENT ON COLUMN @S@.deliveries.url IS 'Request URL (no credentials).';\n"
"COMMENT ON COLUMN @S@.deliveries.idempotency_key IS 'Idempotency-Key header sent; equals processed_documents.document_id.';\n"
"COMMENT ON COLUMN @S@.deliveries.http_status IS 'Response status, NULL when no response arrived.';\n"
"COMMENT ON COLUMN @S@.deliveries.latency_ms IS 'Request duration in milliseconds.';\n"
"COMMENT ON COLUMN @S@.deliveries.outcome IS 'success, transient (retryable) or permanent (dead-lettered).';\n"
"COMMENT ON COLUMN @S@.deliveries.remote_job_id IS 'Job id returned by the API, if any.';\n"
"COMMENT ON COLUMN @S@.deliveries.error IS 'Why the request failed, NULL on success.';\n"
"COMMENT ON COLUMN @S@.deliveries.event_id IS 'CloudEvent id the request carried (ce-id header).';\n"
"COMMENT ON COLUMN @S@.deliveries.stream_entry_id IS 'Redis stream entry id the request came from.';\n"
"COMMENT ON COLUMN @S@.deliveries.requested_at IS 'When the request was recorded (after it completed).';\n"
"COMMENT ON VIEW @S@.hourly_summary IS 'Documents and requests per hour, consumer group and status.';\n"
	},
	{ 2, "retry schedule: retries, retry_at",
"ALTER TABLE @S@.processed_documents\n"
"  ADD COLUMN retries  integer NOT NULL DEFAULT 0,\n"
"  ADD COLUMN retry_at timestamptz;\n"
"CREATE INDEX processed_documents_retry_idx ON @S@.processed_documents (retry_at) WHERE status = 'failed';\n"
"COMMENT ON COLUMN @S@.processed_documents.retries IS 'Transient failures counted against max_retries; requests that probe an open circuit are not counted.';\n"
"COMMENT ON COLUMN @S@.processed_documents.retry_at IS 'With status failed: no attempt is made before this time (the retry schedule, kept across restarts). NULL otherwise.';\n"
"COMMENT ON COLUMN @S@.deliveries.outcome IS 'How the request ended: success, transient (408, 425, 429, 5xx, timeout or connection error: retried until max_retries) or permanent (any other answer, or a 2xx the route''s success field refused).';\n"
"COMMENT ON COLUMN @S@.processed_documents.status IS 'claimed (in flight), triggered (NLP accepted it), failed (transient failure, retried at retry_at), dead (gave up: permanent failure, retries exhausted or poison; see the dead-letter stream), observed (seen with auto_process off), expired (too old for the backlog).';\n"
	},
	{ 3, "batches: deliveries.documents; backlog_progress",
"ALTER TABLE @S@.deliveries\n"
"  ADD COLUMN documents integer NOT NULL DEFAULT 1;\n"
"CREATE TABLE @S@.backlog_progress (\n"
"  consumer_group text NOT NULL,\n"
"  stream         text NOT NULL,\n"
"  start_id       text NOT NULL,\n"
"  end_id         text NOT NULL,\n"
"  last_id        text,\n"
"  entries_done   bigint NOT NULL DEFAULT 0,\n"
"  started_at     timestamptz NOT NULL DEFAULT now(),\n"
"  updated_at     timestamptz NOT NULL DEFAULT now(),\n"
"  finished_at    timestamptz,\n"
"  owner          text,\n"
"  PRIMARY KEY (consumer_group, stream)\n"
");\n"
"COMMENT ON COLUMN @S@.deliveries.documents IS 'Documents the request carried: 1, or the documents of a batch request (processed_documents rows whose last_delivery_id is this row).';\n"
"COMMENT ON COLUMN @S@.deliveries.idempotency_key IS 'Idempotency-Key header sent: the document id, or for a batch request the route''s key (job:<job_id>), with #<part>/<parts> appended when the batch was split.';\n"
"COMMENT ON COLUMN @S@.processed_documents.document_id IS 'The document id: the rendered idempotency key of a document route, or a document_id line of a batch route''s documents file. Events of a route that is not in effect (batch_mode) are recorded observed under their own key, e.g. job:<job_id>.';\n"
"COMMENT ON COLUMN @S@.processed_documents.event_id IS 'CloudEvent id of the event that last claimed the document: the document event, or the job event whose batch carried it.';\n"
"COMMENT ON COLUMN @S@.processed_documents.status IS 'claimed (in flight), triggered (NLP accepted it), failed (transient failure, retried at retry_at), dead (gave up: permanent failure, retries exhausted or poison; see the dead-letter stream), observed (recorded only: auto_process off, or its route not in effect under batch_mode), expired (older than the backlog age limit; recorded, not triggered).';\n"
"COMMENT ON TABLE @S@.backlog_progress IS 'Where stagerelay process-backlog got to, per consumer group and stream, so --resume continues after last_id.';\n"
"COMMENT ON COLUMN @S@.backlog_progress.start_id IS 'First stream id of the run (--start-id, or - for the beginning).';\n"
"COMMENT ON COLUMN @S@.backlog_progress.end_id IS 'Last stream id of the run (--end-id, or the last entry when the run began).';\n"
"COMMENT ON COLUMN @S@.backlog_progress.last_id IS 'The last entry finished: every entry up to it is accounted for in processed_documents or the dead-letter stream.';\n"
"COMMENT ON COLUMN @S@.backlog_progress.entries_done IS 'Entries finished so far in this run.';\n"
"COMMENT ON COLUMN @S@.backlog_progress.owner IS 'host:pid of the run that last saved progress; a second run on the same stream is refused while it is alive.';\n"
"COMMENT ON COLUMN @S@.backlog_progress.finished_at IS 'When the run reached end_id; NULL while it is unfinished (interrupted runs can be resumed).';\n"
	},
	{ 4, "claim_documents() and record_documents(); no foreign key on last_delivery_id",
"ALTER TABLE @S@.processed_documents\n"
"  DROP CONSTRAINT IF EXISTS processed_documents_last_delivery_id_fkey;\n"
"COMMENT ON COLUMN @S@.processed_documents.last_delivery_id IS 'The deliveries row of the last request made for this document. Not a foreign key (since ledger version 4: the check cost more than half of each record statement); stagerelay ledger purge deletes only deliveries no document refers to.';\n"
"CREATE FUNCTION @S@.claim_documents(\n"
"    p_group text, p_consumer text, p_lease_s integer, p_ttl_hours float8,\n"
"    p_check_done boolean, p_document_ids text[], p_event_ids text[],\n"
"    p_event_types text[], p_event_sources text[], p_event_times timestamptz[],\n"
"    p_entry_ids text[], p_batch_ids text[], p_job_ids text[], p_stream text)\n"
"  RETURNS TABLE (document_id text, claim text, attempts integer,\n"
"                 prev_status text, retries integer, wait_ms bigint,\n"
"                 ord bigint, same_entry boolean)\n"
"  LANGUAGE plpgsql\n"
/*
 * Both functions touch rows by primary key only, so one generic plan per
 * connection serves every call (PostgreSQL's default re-plans each call
 * when array parameters make custom plans look cheaper: measured, that
 * doubled the cost of a small round). Without the enable_* settings a plan
 * made while the table was young (no statistics yet) would scan the whole
 * group on every call as the table grows.
 */
"  SET plan_cache_mode = force_generic_plan\n"
"  SET enable_seqscan = off SET enable_bitmapscan = off\n"
"  AS $claim$\n"
"#variable_conflict use_column\n"
"BEGIN\n"
"  RETURN QUERY\n"
"  WITH input AS (\n"
"    SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::text[],\n"
"                         $10::timestamptz[], $11::text[], $12::text[], $13::text[])\n"
"      WITH ORDINALITY\n"
"      AS t(document_id, event_id, event_type, event_source, event_time,\n"
"           stream_entry_id, batch_id, job_id, ord)\n"
"  ), upsert AS (\n"
"    INSERT INTO @S@.processed_documents AS d\n"
"      (consumer_group, document_id, status, claimed_by, lease_until, event_id,\n"
"       event_type, event_source, event_time, stream, stream_entry_id, batch_id, job_id)\n"
"    SELECT $1, document_id, 'claimed', $2, now() + make_interval(secs => $3::int),\n"
"           event_id, event_type, event_source, event_time, $14, stream_entry_id,\n"
"           batch_id, job_id\n"
"      FROM input\n"
"    ON CONFLICT (consumer_group, document_id) DO UPDATE SET\n"
"      status = 'claimed', claimed_by = excluded.claimed_by,\n"
"      lease_until = excluded.lease_until, retry_at = NULL,\n"
/* a replay, or a new round after the dedup window: a fresh retry budget */
"      retries = CASE WHEN d.status IN ('dead', 'triggered') THEN 0\n"
"                     ELSE d.retries END,\n"
"      event_id = excluded.event_id,\n"
"      event_type = excluded.event_type, event_source = excluded.event_source,\n"
"      event_time = excluded.event_time, stream = excluded.stream,\n"
"      stream_entry_id = excluded.stream_entry_id,\n"
"      batch_id = coalesce(excluded.batch_id, d.batch_id),\n"
"      job_id = coalesce(excluded.job_id, d.job_id), updated_at = now()\n"
/* a failed document is owned again once its retry is due */
"    WHERE (d.status = 'failed' AND (d.retry_at IS NULL OR d.retry_at <= now()))\n"
"       OR d.status IN ('observed', 'expired')\n"
/* our own claim (same stable consumer name: we crashed) or an expired one */
"       OR (d.status = 'claimed' AND (d.claimed_by = excluded.claimed_by\n"
"                                     OR d.lease_until < now()))\n"
/* dead for another entry: a replay from the dead-letter stream */
"       OR (d.status = 'dead' AND d.stream_entry_id IS DISTINCT FROM excluded.stream_entry_id)\n"
"       OR (d.status = 'triggered' AND NOT $5::boolean)\n"
"       OR (d.status = 'triggered' AND $4::float8 > 0\n"
"           AND d.triggered_at < now() - make_interval(secs => $4::float8 * 3600))\n"
"    RETURNING d.document_id, d.attempts, d.retries\n"
"  )\n"
/* d is the row as it was before this statement (one snapshot) */
"  SELECT i.document_id,\n"
"         CASE WHEN u.document_id IS NOT NULL THEN 'owned'\n"
"              WHEN d.status = 'claimed' THEN 'busy'\n"
"              WHEN d.status = 'failed' THEN 'wait'\n"
"              ELSE 'done' END,\n"
"         coalesce(u.attempts, d.attempts, 0), coalesce(d.status, ''),\n"
"         coalesce(u.retries, d.retries, 0),\n"
"         CASE WHEN u.document_id IS NOT NULL THEN 0\n"
"              ELSE coalesce(greatest(0, ceil(extract(epoch FROM\n"
"                   CASE WHEN d.status = 'claimed' THEN d.lease_until\n"
"                        ELSE d.retry_at END - now()) * 1000)), 0)\n"
"         END::bigint, i.ord,\n"
"         coalesce(d.stream_entry_id = i.stream_entry_id, false)\n"
"    FROM input i\n"
"    LEFT JOIN upsert u USING (document_id)\n"
"    LEFT JOIN LATERAL (SELECT * FROM @S@.processed_documents x\n"
"                        WHERE x.consumer_group = $1\n"
"                          AND x.document_id = i.document_id OFFSET 0) d ON true;\n"
"END\n"
"$claim$;\n"
"CREATE FUNCTION @S@.record_documents(\n"
"    p_group text, p_consumer text,\n"
"    p_req_keys text[], p_req_entry_ids text[], p_req_event_ids text[],\n"
"    p_req_routes text[], p_req_methods text[], p_req_urls text[],\n"
"    p_req_http_statuses integer[], p_req_latencies_ms float8[],\n"
"    p_req_outcomes text[], p_req_remote_job_ids text[], p_req_errors text[],\n"
"    p_req_documents integer[],\n"
"    p_document_ids text[], p_statuses text[], p_http_statuses integer[],\n"
"    p_remote_job_ids text[], p_errors text[], p_requests integer[],\n"
"    p_retry_in_ms float8[], p_count_retry boolean[])\n"
"  RETURNS integer\n"
"  LANGUAGE plpgsql\n"
"  SET plan_cache_mode = force_generic_plan\n"
"  SET enable_seqscan = off SET enable_bitmapscan = off\n"
"  SET enable_hashjoin = off SET enable_mergejoin = off\n"
"  AS $record$\n"
"#variable_conflict use_column\n"
"DECLARE\n"
"  ids bigint[];\n"
"  n integer;\n"
"BEGIN\n"
/* a deliveries row per request; ids[k] is request k's, so no join is needed */
"  ids := ARRAY(SELECT nextval('@S@.deliveries_delivery_id_seq'::regclass)\n"
"                 FROM generate_series(1, coalesce(cardinality(p_req_keys), 0)));\n"
"  INSERT INTO @S@.deliveries (delivery_id, consumer_group, route, method, url,\n"
"      idempotency_key, http_status, latency_ms, outcome, remote_job_id,\n"
"      error, event_id, stream_entry_id, documents)\n"
"  SELECT ids[q.k], p_group, q.route, q.method, q.url, q.key, q.http_status,\n"
"         q.latency_ms, q.outcome, q.remote_job_id, q.error, q.event_id,\n"
"         q.entry_id, q.documents\n"
"    FROM unnest(p_req_keys, p_req_entry_ids, p_req_event_ids, p_req_routes,\n"
"                p_req_methods, p_req_urls, p_req_http_statuses,\n"
"                p_req_latencies_ms, p_req_outcomes, p_req_remote_job_ids,\n"
"                p_req_errors, p_req_documents) WITH ORDINALITY\n"
"      AS q(key, entry_id, event_id, route, method, url, http_status,\n"
"           latency_ms, outcome, remote_job_id, error, documents, k);\n"
/*
 * p_requests[i] is the request document i went out in; NULL: none. Each
 * document's row is found by its primary key, in a LATERAL subquery the
 * planner cannot flatten (OFFSET 0); a plain join lets it scan the whole
 * group instead when the table is young and has no statistics yet, and
 * every call then costs O(rows). A row updated meanwhile (its claim taken
 * over) has another ctid and is left alone, as the claimed_by test would.
 * IS NOT DISTINCT FROM keeps the status index out of the plan.
 */
"  UPDATE @S@.processed_documents d SET\n"
"    status = r.status,\n"
"    attempts = d.attempts + CASE WHEN r.req IS NOT NULL THEN 1 ELSE 0 END,\n"
"    retries = d.retries + CASE WHEN r.count_retry THEN 1 ELSE 0 END,\n"
"    retry_at = CASE WHEN r.status = 'failed' AND r.retry_in_ms IS NOT NULL\n"
"               THEN now() + make_interval(secs => r.retry_in_ms / 1000) END,\n"
"    http_status = r.http_status,\n"
"    remote_job_id = coalesce(r.remote_job_id, d.remote_job_id),\n"
"    last_error = r.error,\n"
"    lease_until = NULL,\n"
"    last_delivery_id = coalesce(ids[r.req], d.last_delivery_id),\n"
"    triggered_at = CASE WHEN r.status = 'triggered' THEN now() ELSE d.triggered_at END,\n"
"    updated_at = now()\n"
"    FROM (SELECT t.*, x.tid\n"
"            FROM unnest(p_document_ids, p_statuses, p_http_statuses,\n"
"                        p_remote_job_ids, p_errors, p_requests, p_retry_in_ms,\n"
"                        p_count_retry)\n"
"              AS t(document_id, status, http_status, remote_job_id, error, req,\n"
"                   retry_in_ms, count_retry)\n"
"            CROSS JOIN LATERAL (SELECT x.ctid AS tid\n"
"                                  FROM @S@.processed_documents x\n"
"                                 WHERE x.consumer_group = p_group\n"
"                                   AND x.document_id = t.document_id\n"
"                                OFFSET 0) x) r\n"
"   WHERE d.ctid = r.tid\n"
"     AND d.status IS NOT DISTINCT FROM 'claimed' AND d.claimed_by = p_consumer;\n"
"  GET DIAGNOSTICS n = ROW_COUNT;\n"
"  RETURN n;\n"
"END\n"
"$record$;\n"
"COMMENT ON FUNCTION @S@.claim_documents(text, text, integer, float8, boolean, text[], text[], text[], text[], timestamptz[], text[], text[], text[], text) IS 'Step 5 of a round: claims a batch of documents for a consumer in one statement; one row per input document saying owned, busy, wait or done. Called by stagerelay; a function so that PostgreSQL keeps its plan per connection, also behind a transaction-pooling pgbouncer.';\n"
"COMMENT ON FUNCTION @S@.record_documents(text, text, text[], text[], text[], text[], text[], text[], integer[], float8[], text[], text[], text[], integer[], text[], text[], integer[], text[], text[], integer[], float8[], boolean[]) IS 'Step 8 of a round: records the outcome of every document a consumer claimed (triggered, failed, dead) and one deliveries row per request, in one statement; returns the documents updated.';\n"
	},
};

static const char sql_claim[] =
"SELECT * FROM @S@.claim_documents($1::text, $2::text, $3::integer,\n"
"    $4::float8, $5::boolean, $6::text[], $7::text[], $8::text[], $9::text[],\n"
"    $10::timestamptz[], $11::text[], $12::text[], $13::text[], $14::text)";

/*
 * Documents of one request share a delivery row: those of a batch carry
 * the request's key in delivery_key, a lone document its own id.
 */
static const char sql_record[] =
"SELECT @S@.record_documents($1::text, $2::text,\n"
"    $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],\n"
"    $9::integer[], $10::float8[], $11::text[], $12::text[], $13::text[],\n"
"    $14::integer[],\n"
"    $15::text[], $16::text[], $17::integer[], $18::text[], $19::text[],\n"
"    $20::integer[], $21::float8[], $22::boolean[])";

static const char sql_note[] =
"INSERT INTO @S@.processed_documents AS d\n"
"  (consumer_group, document_id, status, event_id, event_type, event_source,\n"
"   event_time, stream, stream_entry_id, batch_id, job_id, claimed_by)\n"
"SELECT $1, t.document_id, t.status, t.event_id, t.event_type, t.event_source,\n"
"       t.event_time, $12, t.stream_entry_id, t.batch_id, t.job_id, $2\n"
"  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],\n"
"              $8::timestamptz[], $9::text[], $10::text[], $11::text[])\n"
"    AS t(document_id, status, event_id, event_type, event_source, event_time,\n"
"         stream_entry_id, batch_id, job_id)\n"
"ON CONFLICT (consumer_group, document_id) DO UPDATE SET\n"
"  status = excluded.status, event_id = excluded.event_id,\n"
"  stream_entry_id = excluded.stream_entry_id, updated_at = now()\n"
"  WHERE d.status IN ('observed', 'expired')";

/* Poison entries: dead whatever happened before, unless triggered. */
static const char sql_bury[] =
"INSERT INTO @S@.processed_documents AS d\n"
"  (consumer_group, document_id, status, event_id, event_type, event_source,\n"
"   event_time, stream, stream_entry_id, batch_id, job_id, claimed_by, last_error)\n"
"SELECT $1, t.document_id, 'dead', t.event_id, t.event_type, t.event_source,\n"
"       t.event_time, $12, t.stream_entry_id, t.batch_id, t.job_id, $2, t.error\n"
"  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],\n"
"              $8::timestamptz[], $9::text[], $10::text[], $11::text[])\n"
"    AS t(document_id, error, event_id, event_type, event_source, event_time,\n"
"         stream_entry_id, batch_id, job_id)\n"
"ON CONFLICT (consumer_group, document_id) DO UPDATE SET\n"
"  status = 'dead', last_error = excluded.last_error, lease_until = NULL,\n"
"  retry_at = NULL, stream_entry_id = excluded.stream_entry_id,\n"
"  claimed_by = excluded.claimed_by, updated_at = now()\n"
"  WHERE d.status IN ('claimed', 'failed', 'observed', 'expired')";

static const char *status_names[] = {
	"triggered", "failed", "dead", "observed", "expired"
};

const char *
ledger_status_name(enum ledger_status s)
{
	return status_names[s];
}

/* Replaces every @S@ with the quoted schema. Caller frees. */
static char *
with_schema(const char *sql, const char *qschema)
{
	struct buf b;
	const char *p;

	buf_init(&b);
	while ((p = strstr(sql, "@S@")) != NULL) {
		buf_append(&b, sql, (size_t)(p - sql));
		buf_puts(&b, qschema);
		sql = p + 3;
	}
	buf_puts(&b, sql);
	return buf_steal(&b);
}

struct ledger *
ledger_new(const char *dsn, const char *schema, const char *group,
    const char *consumer, const char *stream)
{
	struct ledger *l = xcalloc(1, sizeof(*l));
	char *q;

	l->dsn = xstrdup(dsn ? dsn : "");
	l->schema = xstrdup(schema);
	l->group = xstrdup(group);
	l->consumer = xstrdup(consumer);
	l->stream = xstrdup(stream);
	/* The config admits plain identifiers only; quote anyway. */
	q = xasprintf("\"%s\"", schema);
	l->sql_claim = with_schema(sql_claim, q);
	l->sql_record = with_schema(sql_record, q);
	l->sql_note = with_schema(sql_note, q);
	l->sql_bury = with_schema(sql_bury, q);
	l->qschema = q;
	return l;
}

void
ledger_free(struct ledger *l)
{
	if (l == NULL)
		return;
	if (l->conn != NULL)
		PQfinish(l->conn);
	free(l->dsn);
	free(l->schema);
	free(l->group);
	free(l->consumer);
	free(l->stream);
	free(l->sql_claim);
	free(l->sql_record);
	free(l->sql_note);
	free(l->sql_bury);
	free(l->qschema);
	free(l);
}

const char *
ledger_refusal(const struct ledger *l)
{
	return l->refused;
}

const char *
ledger_schema(const struct ledger *l)
{
	return l->schema;
}

/* PQerrorMessage ends with a newline; logs want one line. */
static const char *
pg_error(const PGconn *conn, const PGresult *res)
{
	static char msg[512];
	const char *m = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
	size_t n;

	if (m == NULL || *m == '\0')
		m = PQerrorMessage(conn);
	strlcpy_s(msg, m ? m : "unknown error", sizeof(msg));
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	for (char *c = msg; *c; c++)
		if (*c == '\n')
			*c = ' ';
	return msg;
}

/* Server notices ("already exists, skipping") go to the debug log. */
static void
on_notice(void *arg, const char *message)
{
	char line[512];
	size_t n;

	(void)arg;
	strlcpy_s(line, message, sizeof(line));
	n = strlen(line);
	while (n > 0 && line[n - 1] == '\n')
		line[--n] = '\0';
	log_debug("ledger: server: %s", line);
}

int
ledger_connect(struct ledger *l)
{
	if (l->conn != NULL) {
		PQfinish(l->conn);
		l->conn = NULL;
	}
	l->conn = PQconnectdb(l->dsn);
	if (PQstatus(l->conn) != CONNECTION_OK) {
		/* libpq's message never includes the password. */
		log_warnx("ledger: cannot connect: %s", pg_error(l->conn, NULL));
		PQfinish(l->conn);
		l->conn = NULL;
		return -1;
	}
	PQsetNoticeProcessor(l->conn, on_notice, NULL);
	log_debug("ledger: connected to %s:%s", PQhost(l->conn), PQport(l->conn));
	return 0;
}

bool
ledger_connected(const struct ledger *l)
{
	return l->conn != NULL && PQstatus(l->conn) == CONNECTION_OK;
}

/* A failed statement on a broken connection: drop it, reconnect later. */
static void
check_broken(struct ledger *l)
{
	if (l->conn != NULL && PQstatus(l->conn) != CONNECTION_OK) {
		PQfinish(l->conn);
		l->conn = NULL;
	}
}

static int
ensure_conn(struct ledger *l)
{
	if (ledger_connected(l))
		return 0;
	return ledger_connect(l);
}

static int
exec_simple(struct ledger *l, const char *sql, const char *what)
{
	PGresult *res = PQexec(l->conn, sql);
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK ||
	    PQresultStatus(res) == PGRES_TUPLES_OK;

	if (!ok)
		log_warnx("ledger: %s: %s", what, pg_error(l->conn, res));
	PQclear(res);
	return ok ? 0 : -1;
}

int
ledger_migrate(struct ledger *l)
{
	char *q, *sql, *lock;
	const char *params[1];
	PGresult *res;
	int version = 0, ret = -1;
	size_t i;

	if (ensure_conn(l) == -1)
		return -1;
	q = xasprintf("\"%s\"", l->schema);
	if (exec_simple(l, "BEGIN", "migrate") == -1)
		goto out;
	/* Transaction-scoped, so it is released even through pgbouncer. */
	lock = xasprintf("stagerelay.migrate.%s", l->schema);
	params[0] = lock;
	res = PQexecParams(l->conn,
	    "SELECT pg_advisory_xact_lock(hashtext($1))", 1, NULL, params,
	    NULL, NULL, 0);
	free(lock);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_warnx("ledger: migrate: lock: %s", pg_error(l->conn, res));
		PQclear(res);
		goto rollback;
	}
	PQclear(res);

	/*
	 * CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when
	 * the schema exists; a DBA may have created it for a less privileged
	 * role, so only create it when it is missing.
	 */
	params[0] = l->schema;
	res = PQexecParams(l->conn,
	    "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, NULL, params,
	    NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_warnx("ledger: migrate: %s", pg_error(l->conn, res));
		PQclear(res);
		goto rollback;
	}
	if (PQntuples(res) == 0) {
		sql = with_schema("CREATE SCHEMA @S@", q);
		if (exec_simple(l, sql, "migrate: create schema") == -1) {
			free(sql);
			PQclear(res);
			goto rollback;
		}
		free(sql);
	}
	PQclear(res);

	sql = with_schema(
	    "CREATE TABLE IF NOT EXISTS @S@.schema_migrations (\n"
	    "  version integer PRIMARY KEY,\n"
	    "  description text NOT NULL,\n"
	    "  applied_at timestamptz NOT NULL DEFAULT now());\n"
	    "COMMENT ON TABLE @S@.schema_migrations IS "
	    "'Ledger schema versions applied by stagerelay ledger migrate.';", q);
	if (exec_simple(l, sql, "migrate: schema") == -1) {
		free(sql);
		goto rollback;
	}
	free(sql);

	sql = with_schema("SELECT coalesce(max(version), 0) FROM @S@.schema_migrations", q);
	res = PQexec(l->conn, sql);
	free(sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_warnx("ledger: migrate: %s", pg_error(l->conn, res));
		PQclear(res);
		goto rollback;
	}
	version = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);

	for (i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
		const struct migration *m = &migrations[i];
		char v[16];
		const char *p[2];

		if (m->version <= version)
			continue;
		sql = with_schema(m->sql, q);
		if (exec_simple(l, sql, "migrate") == -1) {
			free(sql);
			goto rollback;
		}
		free(sql);
		snprintf(v, sizeof(v), "%d", m->version);
		p[0] = v;
		p[1] = m->description;
		sql = with_schema("INSERT INTO @S@.schema_migrations "
		    "(version, description) VALUES ($1, $2)", q);
		res = PQexecParams(l->conn, sql, 2, NULL, p, NULL, NULL, 0);
		free(sql);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			log_warnx("ledger: migrate: %s", pg_error(l->conn, res));
			PQclear(res);
			goto rollback;
		}
		PQclear(res);
		log_info("ledger: schema %s migrated to version %d (%s)",
		    l->schema, m->version, m->description);
		version = m->version;
	}
	if (exec_simple(l, "COMMIT", "migrate: commit") == -1)
		goto out;
	ret = version;
	goto out;
rollback:
	exec_simple(l, "ROLLBACK", "migrate: rollback");
out:
	check_broken(l);
	free(q);
	return ret;
}

/* A PostgreSQL array literal of text: {"a","b",NULL}. */
static void
array_text(struct buf *b, const char *v)
{
	if (b->len > 1)
		buf_putc(b, ',');
	if (v == NULL) {
		buf_puts(b, "NULL");
		return;
	}
	buf_putc(b, '"');
	while (*v != '\0') {
		size_t span = strcspn(v, "\"\\");

		buf_append(b, v, span);
		v += span;
		if (*v == '\0')
			break;
		buf_putc(b, '\\');
		buf_putc(b, *v++);
	}
	buf_putc(b, '"');
}

static void
arrays_open(struct buf *a, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		buf_init(&a[i]);
		buf_putc(&a[i], '{');
	}
}

static void
arrays_close(struct buf *a, size_t n, const char **params)
{
	for (size_t i = 0; i < n; i++) {
		buf_putc(&a[i], '}');
		params[i] = a[i].data;
	}
}

static void
arrays_free(struct buf *a, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf_free(&a[i]);
}

static enum ledger_claim
claim_parse(const char *s)
{
	if (strcmp(s, "owned") == 0)
		return LEDGER_OWNED;
	if (strcmp(s, "busy") == 0)
		return LEDGER_BUSY;
	if (strcmp(s, "wait") == 0)
		return LEDGER_WAIT;
	return LEDGER_DONE;
}

int
ledger_claim(struct ledger *l, struct ledger_doc *docs, size_t n, int lease_s,
    double ttl_hours, bool check_done)
{
	struct buf a[8];
	const char *params[14];
	char lease[16], ttl[32];
	PGresult *res;
	int ret = -1;

	if (n == 0)
		return 0;
	if (ensure_conn(l) == -1)
		return -1;
	arrays_open(a, 8);
	for (size_t i = 0; i < n; i++) {
		array_text(&a[0], docs[i].document_id);
		array_text(&a[1], docs[i].event_id);
		array_text(&a[2], docs[i].event_type);
		array_text(&a[3], docs[i].event_source);
		array_text(&a[4], docs[i].event_time);
		array_text(&a[5], docs[i].entry_id);
		array_text(&a[6], docs[i].batch_id);
		array_text(&a[7], docs[i].job_id);
	}
	arrays_close(a, 8, params + 5);
	snprintf(lease, sizeof(lease), "%d", lease_s);
	snprintf(ttl, sizeof(ttl), "%g", ttl_hours);
	params[0] = l->group;
	params[1] = l->consumer;
	params[2] = lease;
	params[3] = ttl;
	params[4] = check_done ? "true" : "false";
	params[13] = l->stream;
	res = PQexecParams(l->conn, l->sql_claim, 14, NULL, params, NULL,
	    NULL, 0);
	arrays_free(a, 8);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		log_warnx("ledger: claim failed: %s", pg_error(l->conn, res));
		/*
		 * 22xxx data exception, 54xxx program limit exceeded (a key
		 * too long for the index): these documents will never be
		 * taken, and asking again changes nothing.
		 */
		if (state != NULL && (strncmp(state, "22", 2) == 0 ||
		    strncmp(state, "54", 2) == 0)) {
			snprintf(l->refused, sizeof(l->refused), "SQLSTATE "
			    "%s: %s", state, pg_error(l->conn, res));
			ret = LEDGER_REFUSED;
		}
		goto out;
	}
	if ((size_t)PQntuples(res) != n) {
		log_warnx("ledger: claim returned %d rows for %zu documents",
		    PQntuples(res), n);
		goto out;
	}
	/* Rows come back in no promised order: each names its input. */
	for (int r = 0; r < PQntuples(res); r++) {
		long long ord = atoll(PQgetvalue(res, r, 6));
		struct ledger_doc *d;

		if (ord < 1 || (size_t)ord > n ||
		    strcmp(docs[ord - 1].document_id,
		    PQgetvalue(res, r, 0)) != 0) {
			log_warnx("ledger: claim returned a row out of order");
			goto out;
		}
		d = &docs[ord - 1];
		d->claim = claim_parse(PQgetvalue(res, r, 1));
		d->attempts = atoi(PQgetvalue(res, r, 2));
		strlcpy_s(d->prev_status, PQgetvalue(res, r, 3),
		    sizeof(d->prev_status));
		d->retries = atoi(PQgetvalue(res, r, 4));
		d->wait_ms = atoll(PQgetvalue(res, r, 5));
		d->same_entry = strcmp(PQgetvalue(res, r, 7), "t") == 0;
	}
	ret = 0;
out:
	PQclear(res);
	check_broken(l);
	return ret;
}

/*
 * The request document i went out in: a new one of its own, or for a
 * batch's documents (delivery_key set) the request with the same key and
 * entry. reqs[] holds the first document of each request so far; a batch's
 * documents come together, so the search usually stops at the last one.
 */
static size_t
request_of(const struct ledger_doc *docs, size_t i, const size_t *reqs,
    size_t nreqs)
{
	const struct ledger_doc *d = &docs[i];

	if (d->delivery_key == NULL)
		return nreqs;
	for (size_t k = nreqs; k-- > 0;) {
		const struct ledger_doc *r = &docs[reqs[k]];

		if (r->delivery_key != NULL &&
		    strcmp(r->delivery_key, d->delivery_key) == 0 &&
		    strcmp(r->entry_id ? r->entry_id : "",
		    d->entry_id ? d->entry_id : "") == 0)
			return k;
	}
	return nreqs;
}

/*
 * Step 8 in one round trip: a deliveries row per request (the request's
 * values come from its first document) and every document's outcome.
 */
int
ledger_record(struct ledger *l, struct ledger_doc *docs, size_t n)
{
	struct buf a[20];
	const char *params[22];
	size_t *reqs, *req_of, nreqs = 0;
	int *ndocs;
	char num[64];
	PGresult *res;
	int ret = -1;

	if (n == 0)
		return 0;
	if (ensure_conn(l) == -1)
		return -1;
	reqs = xcalloc(n, sizeof(*reqs));
	req_of = xcalloc(n, sizeof(*req_of));
	ndocs = xcalloc(n, sizeof(*ndocs));
	for (size_t i = 0; i < n; i++) {
		size_t k;

		if (!docs[i].requested) {
			req_of[i] = SIZE_MAX;
			continue;
		}
		if ((k = request_of(docs, i, reqs, nreqs)) == nreqs)
			reqs[nreqs++] = i;
		req_of[i] = k;
		ndocs[k]++;
	}
	arrays_open(a, 20);
	for (size_t k = 0; k < nreqs; k++) {
		const struct ledger_doc *d = &docs[reqs[k]];

		array_text(&a[0], d->delivery_key ? d->delivery_key :
		    d->document_id);
		array_text(&a[1], d->entry_id);
		array_text(&a[2], d->event_id);
		array_text(&a[3], d->route ? d->route : "");
		array_text(&a[4], d->method ? d->method : "");
		array_text(&a[5], d->url ? d->url : "");
		snprintf(num, sizeof(num), "%ld", d->http_status);
		array_text(&a[6], d->http_status > 0 ? num : NULL);
		snprintf(num, sizeof(num), "%.3f", d->latency_ms);
		array_text(&a[7], num);
		array_text(&a[8], d->outcome ? d->outcome : "permanent");
		array_text(&a[9], d->remote_job_id);
		array_text(&a[10], d->error);
		snprintf(num, sizeof(num), "%d", ndocs[k]);
		array_text(&a[11], num);
	}
	for (size_t i = 0; i < n; i++) {
		const struct ledger_doc *d = &docs[i];

		array_text(&a[12], d->document_id);
		array_text(&a[13], ledger_status_name(d->status));
		snprintf(num, sizeof(num), "%ld", d->http_status);
		array_text(&a[14], d->http_status > 0 ? num : NULL);
		array_text(&a[15], d->remote_job_id);
		array_text(&a[16], d->error);
		snprintf(num, sizeof(num), "%zu", req_of[i] + 1);
		array_text(&a[17], req_of[i] != SIZE_MAX ? num : NULL);
		snprintf(num, sizeof(num), "%lld", d->retry_in_ms);
		array_text(&a[18], d->status == LEDGER_FAILED &&
		    d->retry_in_ms >= 0 ? num : NULL);
		array_text(&a[19], d->count_retry ? "true" : "false");
	}
	arrays_close(a, 20, params + 2);
	params[0] = l->group;
	params[1] = l->consumer;
	res = PQexecParams(l->conn, l->sql_record, 22, NULL, params, NULL,
	    NULL, 0);
	arrays_free(a, 20);
	free(reqs);
	free(req_of);
	free(ndocs);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		log_warnx("ledger: record failed: %s", pg_error(l->conn, res));
	else {
		if ((size_t)atol(PQgetvalue(res, 0, 0)) != n)
			log_warnx("ledger: recorded %s of %zu documents (claims "
			    "taken over meanwhile)", PQgetvalue(res, 0, 0), n);
		ret = 0;
	}
	PQclear(res);
	check_broken(l);
	return ret;
}

/* Inserts docs as rows of their own (sql_note, sql_bury): same columns. */
static int
insert_docs(struct ledger *l, const char *sql, bool bury,
    struct ledger_doc *docs, size_t n, const char *what)
{
	struct buf a[9];
	const char *params[12];
	PGresult *res;
	int ret = -1;

	if (n == 0)
		return 0;
	if (ensure_conn(l) == -1)
		return -1;
	arrays_open(a, 9);
	for (size_t i = 0; i < n; i++) {
		const struct ledger_doc *d = &docs[i];

		array_text(&a[0], d->document_id);
		array_text(&a[1], bury ? d->error :
		    ledger_status_name(d->status));
		array_text(&a[2], d->event_id);
		array_text(&a[3], d->event_type);
		array_text(&a[4], d->event_source);
		array_text(&a[5], d->event_time);
		array_text(&a[6], d->entry_id);
		array_text(&a[7], d->batch_id);
		array_text(&a[8], d->job_id);
	}
	arrays_close(a, 9, params + 2);
	params[0] = l->group;
	params[1] = l->consumer;
	params[11] = l->stream;
	res = PQexecParams(l->conn, sql, 12, NULL, params, NULL, NULL, 0);
	arrays_free(a, 9);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		log_warnx("ledger: %s failed: %s", what, pg_error(l->conn, res));
	else
		ret = 0;
	PQclear(res);
	check_broken(l);
	return ret;
}

int
ledger_note(struct ledger *l, struct ledger_doc *docs, size_t n)
{
	return insert_docs(l, l->sql_note, false, docs, n, "note");
}

int
ledger_bury(struct ledger *l, struct ledger_doc *docs, size_t n)
{
	return insert_docs(l, l->sql_bury, true, docs, n, "bury");
}

/* Documents of our group by status, changed in the last minutes. */
static const char sql_counts[] =
"SELECT status, count(*) FROM @S@.processed_documents\n"
" WHERE consumer_group = $1\n"
"   AND updated_at >= now() - make_interval(mins => $2::int)\n"
" GROUP BY status ORDER BY status";

/* A DSN keyword's value, else libpq's default (environment included). */
static const char *
conninfo_value(const PQconninfoOption *given, const PQconninfoOption *dflt,
    const char *key)
{
	for (; given != NULL && given->keyword != NULL; given++)
		if (strcmp(given->keyword, key) == 0 && given->val != NULL &&
		    *given->val != '\0')
			return given->val;
	for (; dflt != NULL && dflt->keyword != NULL; dflt++)
		if (strcmp(dflt->keyword, key) == 0 && dflt->val != NULL &&
		    *dflt->val != '\0')
			return dflt->val;
	return NULL;
}

/* host:port/dbname from the DSN; never the user or the password. */
static void
describe(const struct ledger *l, char *where, size_t len)
{
	PQconninfoOption *given, *dflt;
	const char *host, *port, *db;

	given = PQconninfoParse(l->dsn, NULL);
	dflt = PQconndefaults();
	if ((host = conninfo_value(given, dflt, "host")) == NULL &&
	    (host = conninfo_value(given, dflt, "hostaddr")) == NULL)
		host = "localhost";
	port = conninfo_value(given, dflt, "port");
	db = conninfo_value(given, dflt, "dbname");
	snprintf(where, len, "%s:%s/%s", host, port ? port : "5432",
	    db ? db : "?");
	if (given != NULL)
		PQconninfoFree(given);
	if (dflt != NULL)
		PQconninfoFree(dflt);
}

int
ledger_counts(struct ledger *l, int minutes, struct ledger_count **out,
    char *where, size_t wherelen)
{
	const char *params[2];
	char mins[16], *sql, *q;
	PGresult *res;
	int n, ret = -1;

	*out = NULL;
	if (where != NULL && wherelen > 0)
		describe(l, where, wherelen);
	if (ensure_conn(l) == -1)
		return -1;
	snprintf(mins, sizeof(mins), "%d", minutes);
	params[0] = l->group;
	params[1] = mins;
	q = xasprintf("\"%s\"", l->schema);
	sql = with_schema(sql_counts, q);
	free(q);
	res = PQexecParams(l->conn, sql, 2, NULL, params, NULL, NULL, 0);
	free(sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_warnx("ledger: counts failed: %s", pg_error(l->conn, res));
		goto out;
	}
	n = PQntuples(res);
	*out = xcalloc(n > 0 ? (size_t)n : 1, sizeof(**out));
	for (int r = 0; r < n; r++) {
		strlcpy_s((*out)[r].status, PQgetvalue(res, r, 0),
		    sizeof((*out)[r].status));
		(*out)[r].documents = atoll(PQgetvalue(res, r, 1));
	}
	ret = n;
out:
	PQclear(res);
	check_broken(l);
	return ret;
}

/* What a claim would say, written nowhere (process-backlog --dry-run). */
static const char sql_peek[] =
"SELECT CASE\n"
"         WHEN d.document_id IS NULL THEN 'owned'\n"
"         WHEN d.status = 'triggered' AND $2::boolean AND ($3::float8 = 0\n"
"              OR d.triggered_at >= now() - make_interval(secs => $3::float8 * 3600))\n"
"           THEN 'done'\n"
"         WHEN d.status = 'claimed' AND d.lease_until >= now() THEN 'busy'\n"
"         WHEN d.status = 'failed' AND d.retry_at > now() THEN 'wait'\n"
"         WHEN d.status = 'dead' AND d.stream_entry_id = i.stream_entry_id\n"
"           THEN 'done'\n"
"         ELSE 'owned' END, coalesce(d.status, ''), i.ord\n"
"  FROM unnest($4::text[], $5::text[]) WITH ORDINALITY\n"
"       AS i(document_id, stream_entry_id, ord)\n"
"  LEFT JOIN @S@.processed_documents d\n"
"         ON d.consumer_group = $1 AND d.document_id = i.document_id";

int
ledger_peek(struct ledger *l, struct ledger_doc *docs, size_t n,
    double ttl_hours, bool check_done)
{
	struct buf a[2];
	const char *params[5];
	char ttl[32], *sql;
	PGresult *res;
	int ret = -1;

	if (n == 0)
		return 0;
	if (ensure_conn(l) == -1)
		return -1;
	arrays_open(a, 2);
	for (size_t i = 0; i < n; i++) {
		array_text(&a[0], docs[i].document_id);
		array_text(&a[1], docs[i].entry_id);
	}
	arrays_close(a, 2, params + 3);
	snprintf(ttl, sizeof(ttl), "%.6f", ttl_hours);
	params[0] = l->group;
	params[1] = check_done ? "true" : "false";
	params[2] = ttl;
	sql = with_schema(sql_peek, l->qschema);
	res = PQexecParams(l->conn, sql, 5, NULL, params, NULL, NULL, 0);
	free(sql);
	arrays_free(a, 2);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		/* No ledger yet (a dry run creates none): nothing is done. */
		if (state != NULL && strcmp(state, "42P01") == 0) {
			for (size_t i = 0; i < n; i++) {
				docs[i].claim = LEDGER_OWNED;
				docs[i].prev_status[0] = '\0';
			}
			ret = 0;
		} else
			log_warnx("ledger: peek failed: %s",
			    pg_error(l->conn, res));
		goto out;
	}
	for (int r = 0; r < PQntuples(res); r++) {
		long long ord = atoll(PQgetvalue(res, r, 2));

		if (ord < 1 || (size_t)ord > n)
			continue;
		docs[ord - 1].claim = claim_parse(PQgetvalue(res, r, 0));
		strlcpy_s(docs[ord - 1].prev_status, PQgetvalue(res, r, 1),
		    sizeof(docs[ord - 1].prev_status));
	}
	ret = 0;
out:
	PQclear(res);
	check_broken(l);
	return ret;
}

static const char sql_progress_get[] =
"SELECT start_id, end_id, coalesce(last_id, ''), entries_done,\n"
"       finished_at IS NOT NULL, coalesce(owner, ''),\n"
"       extract(epoch FROM now() - updated_at)::bigint\n"
"  FROM @S@.backlog_progress WHERE consumer_group = $1 AND stream = $2";

static const char sql_progress_put[] =
"INSERT INTO @S@.backlog_progress AS p (consumer_group, stream, start_id,\n"
"    end_id, last_id, entries_done, finished_at, owner)\n"
"VALUES ($1, $2, $3, $4, nullif($5, ''), $6::bigint,\n"
"        CASE WHEN $7::boolean THEN now() END, $8)\n"
"ON CONFLICT (consumer_group, stream) DO UPDATE SET\n"
"  start_id = excluded.start_id, end_id = excluded.end_id,\n"
"  last_id = excluded.last_id, entries_done = excluded.entries_done,\n"
"  finished_at = excluded.finished_at, updated_at = now(),\n"
"  owner = excluded.owner,\n"
"  started_at = CASE WHEN excluded.last_id IS NULL THEN now()\n"
"                    ELSE p.started_at END";

int
ledger_progress_get(struct ledger *l, const char *stream,
    struct ledger_progress *p)
{
	const char *params[2] = { l->group, stream };
	char *sql;
	PGresult *res;
	int ret = -1;

	memset(p, 0, sizeof(*p));
	if (ensure_conn(l) == -1)
		return -1;
	sql = with_schema(sql_progress_get, l->qschema);
	res = PQexecParams(l->conn, sql, 2, NULL, params, NULL, NULL, 0);
	free(sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		log_warnx("ledger: reading backlog progress failed: %s",
		    pg_error(l->conn, res));
	else if (PQntuples(res) == 0)
		ret = 0;
	else {
		strlcpy_s(p->start_id, PQgetvalue(res, 0, 0),
		    sizeof(p->start_id));
		strlcpy_s(p->end_id, PQgetvalue(res, 0, 1), sizeof(p->end_id));
		strlcpy_s(p->last_id, PQgetvalue(res, 0, 2),
		    sizeof(p->last_id));
		p->done = atoll(PQgetvalue(res, 0, 3));
		p->finished = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
		strlcpy_s(p->owner, PQgetvalue(res, 0, 5), sizeof(p->owner));
		p->age_s = atoll(PQgetvalue(res, 0, 6));
		ret = 1;
	}
	PQclear(res);
	check_broken(l);
	return ret;
}

int
ledger_progress_put(struct ledger *l, const char *stream,
    const struct ledger_progress *p)
{
	const char *params[8];
	char done[32], *sql;
	PGresult *res;
	int ret = -1;

	if (ensure_conn(l) == -1)
		return -1;
	snprintf(done, sizeof(done), "%lld", p->done);
	params[0] = l->group;
	params[1] = stream;
	params[2] = p->start_id;
	params[3] = p->end_id;
	params[4] = p->last_id;
	params[5] = done;
	params[6] = p->finished ? "true" : "false";
	params[7] = p->owner;
	sql = with_schema(sql_progress_put, l->qschema);
	res = PQexecParams(l->conn, sql, 8, NULL, params, NULL, NULL, 0);
	free(sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		log_warnx("ledger: saving backlog progress failed: %s",
		    pg_error(l->conn, res));
	else
		ret = 0;
	PQclear(res);
	check_broken(l);
	return ret;
}
