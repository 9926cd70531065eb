"""stagerelay end to end: Stage-1-layout events in a real Redis Stream, a
real PostgreSQL ledger, the real binary, and the mock NLP API.

Every test asserts what an operator would observe: requests at the API,
rows in the ledger, entries left pending, entries in the dead-letter
stream, exit statuses and log lines.
"""

import re
import signal

import pytest

import publish
from conftest import (BATCH_ROUTE_PATH, DOC_ROUTE_PATH, EXIT_CONFIG,
                      EXIT_OK, EXIT_PENDING, GROUP, STREAM, WORKER,
                      wait_until)

DOCUMENT_CLEANED = publish.DOCUMENT_CLEANED
JOB_COMPLETED = publish.JOB_COMPLETED
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?"
                     r"(Z|[+-]\d\d:\d\d)$")
DLQ_FIELDS = [b"dlq_reason", b"dlq_detail", b"dlq_attempts",
              b"dlq_http_status", b"dlq_consumer", b"dlq_source_stream",
              b"dlq_source_id", b"dlq_failed_at"]


def b(v):
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def by_key(requests):
    """Requests indexed by their Idempotency-Key header (asserted unique)."""
    out = {}
    for r in requests:
        key = r["headers"].get("idempotency-key")
        assert key not in out, "two requests with Idempotency-Key %r" % key
        out[key] = r
    return out


def assert_dead_letter(entry, pub, reason, stream=STREAM):
    """One dead-letter entry: the original fields byte for byte, and the
    dlq_* fields naming the reason, source and consumer."""
    _, fields = entry
    for k, v in pub.fields.items():
        assert fields.get(b(k)) == b(v), \
            "original field %r not preserved: %r" % (k, fields.get(b(k)))
    for k in DLQ_FIELDS:
        assert k in fields, "dead-letter entry lacks %s: %r" % (k, fields)
    assert fields[b"dlq_reason"] == b(reason), fields
    assert fields[b"dlq_source_stream"] == b(stream)
    assert fields[b"dlq_source_id"] == b(pub.entry_id)
    assert fields[b"dlq_consumer"] == b(WORKER)
    assert RFC3339.match(fields[b"dlq_failed_at"].decode()), \
        fields[b"dlq_failed_at"]
    return fields


# ---- (a) the main path -------------------------------------------------

def test_each_document_cleaned_event_triggers_one_request(env):
    docs = [("doc-%03d" % i, "Cleaned text of document %d." % i)
            for i in range(1, 8)]
    pubs = {d: env.publisher.document_cleaned(d, t) for d, t in docs}

    r = env.drain(batch_size=3)

    reqs = by_key(env.requests())
    assert sorted(reqs) == sorted(pubs)
    for doc, text in docs:
        req = reqs[doc]
        assert req["method"] == "POST"
        assert req["path"] == DOC_ROUTE_PATH
        assert req["headers"]["content-type"].startswith("application/json")
        assert req["json"] == {"document_id": doc, "text": text}
        assert req["headers"]["ce-id"] == pubs[doc].id

    rows = env.rows()
    assert [row["document_id"] for row in rows] == sorted(pubs)
    for row in rows:
        pub, req = pubs[row["document_id"]], reqs[row["document_id"]]
        assert row["status"] == "triggered"
        assert row["remote_job_id"] == req["response"]["job_id"]
        assert row["http_status"] == 202
        assert row["consumer_group"] == GROUP
        assert row["event_id"] == pub.id
        assert row["event_type"] == DOCUMENT_CLEANED
        assert row["event_source"] == publish.SOURCE
        assert row["event_time"] is not None
        assert row["stream"] == STREAM
        assert row["stream_entry_id"] == pub.entry_id
        assert row["attempts"] == 1
        assert row["triggered_at"] is not None
        assert row["last_error"] is None
    assert len({row["remote_job_id"] for row in rows}) == len(docs)

    deliveries = env.deliveries()
    assert len(deliveries) == len(docs)
    for d in deliveries:
        assert d["outcome"] == "success"
        assert d["http_status"] == 202
        assert d["consumer_group"] == GROUP
        assert d["method"] == "POST"
        assert d["url"] == env.mock.url + DOC_ROUTE_PATH
        req = reqs[d["idempotency_key"]]
        assert d["remote_job_id"] == req["response"]["job_id"]
        assert d["event_id"] == pubs[d["idempotency_key"]].id

    assert env.pending() == 0
    assert env.dead_letters() == []
    assert [c["name"] for c in env.redis.xinfo_consumers(STREAM, GROUP)] \
        == [WORKER.encode()]
    for doc, pub in pubs.items():
        logged = r.log("event_triggered", event_id=pub.id)
        assert len(logged) == 1, r
        rec = logged[0]
        assert rec["entry_id"] == pub.entry_id
        assert rec["document_id"] == doc
        assert rec["remote_job_id"] == reqs[doc]["response"]["job_id"]
        assert rec["route"] == "document"
        assert rec["http_status"] == "202"
        assert rec["proc"] == "worker-1"
        assert rec["level"] == "info"
        assert RFC3339.match(rec["ts"]), rec["ts"]


def test_empty_time_and_subject_count_as_absent(env):
    """Stage 1 may write time and subject as empty strings."""
    pub = env.publisher.fields(publish.event_fields(
        DOCUMENT_CLEANED, {"document_id": "doc-e", "cleaned_text": "t"},
        subject="", time=""))
    env.drain()
    assert [r["json"] for r in env.requests()] == \
        [{"document_id": "doc-e", "text": "t"}]
    row = env.row("doc-e")
    assert row["status"] == "triggered"
    assert row["event_id"] == pub.id
    assert row["event_time"] is None
    assert env.pending() == 0


def test_structured_event_is_processed_like_a_flat_one(env):
    """Stage 2's own publisher writes one field `event` with the JSON."""
    fields = publish.structured(
        publish.document_cleaned("doc-s", "structured text"))
    env.publisher.fields(fields)
    env.drain()
    reqs = env.requests()
    assert [r["json"] for r in reqs] == \
        [{"document_id": "doc-s", "text": "structured text"}]
    assert env.row("doc-s")["status"] == "triggered"
    assert env.pending() == 0


def test_409_counts_as_already_processed(env):
    env.mock.behaviour(status=409, success=False)
    env.publisher.document_cleaned("doc-409", "seen before")
    env.drain()
    assert len(env.requests()) == 1
    row = env.row("doc-409")
    assert row["status"] == "triggered"
    assert row["http_status"] == 409
    assert env.pending() == 0
    assert env.dead_letters() == []


# ---- (b) duplicates ----------------------------------------------------

@pytest.mark.parametrize("when", ["same_batch", "next_batch", "next_run"])
def test_republished_document_is_not_triggered_again(env, when):
    first = env.publisher.document_cleaned("doc-dup", "first version")
    if when == "next_run":
        env.drain()
    second = env.publisher.document_cleaned("doc-dup", "published again")
    assert second.id != first.id

    r = env.drain(batch_size=1 if when == "next_batch" else 10)

    reqs = env.requests()
    assert len(reqs) == 1, reqs
    assert reqs[0]["headers"]["ce-id"] == first.id
    assert reqs[0]["json"] == {"document_id": "doc-dup",
                               "text": "first version"}
    row = env.row("doc-dup")
    assert row["status"] == "triggered"
    assert row["event_id"] == first.id
    dup = r.log("event_duplicate", event_id=second.id)
    assert len(dup) == 1, r
    assert dup[0]["document_id"] == "doc-dup"
    assert dup[0]["entry_id"] == second.entry_id
    assert env.pending() == 0
    assert env.dead_letters() == []


# ---- (c) malformed entries ---------------------------------------------

MALFORMED_CASES = [
    # id, builder, config overrides, dlq_reason, patterns dlq_detail matches
    ("bad_json", publish.bad_json, {}, "invalid_event",
     [r"\bdata\b", r"json"]),
    ("specversion_0.3", publish.wrong_specversion, {}, "invalid_event",
     [r"specversion", r"0\.3"]),
    ("missing_id", publish.missing_id, {}, "invalid_event",
     [r"\bid\b", r"missing"]),
    ("empty_type", publish.empty_type, {}, "invalid_event",
     [r"\btype\b"]),
    ("binary_garbage", publish.binary_garbage, {}, "invalid_event",
     [r"utf-?8"]),
    ("oversized_small_limit", lambda: publish.oversized(8192),
     {"max_event_bytes": 4096}, "too_large",
     [r"max_event_bytes|bytes", r"4096"]),
    ("oversized_default_limit", publish.oversized, {}, "too_large",
     [r"max_event_bytes|bytes", r"1048576"]),
    ("no_document_id", publish.missing_document_id, {}, "render_error",
     [r"document_id"]),
]


@pytest.mark.parametrize("kind,builder,overrides,reason,patterns",
                         MALFORMED_CASES,
                         ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_entry_is_dead_lettered_with_the_rule(
        env, kind, builder, overrides, reason, patterns):
    bad = env.publisher.fields(builder())
    env.publisher.document_cleaned("doc-after", "still flowing")

    r = env.drain(**overrides)

    dls = env.dead_letters()
    assert len(dls) == 1, dls
    fields = assert_dead_letter(dls[0], bad, reason)
    detail = fields[b"dlq_detail"].decode("utf-8", "replace")
    for pat in patterns:
        assert re.search(pat, detail, re.I), \
            "dlq_detail %r does not mention %s" % (detail, pat)
    assert fields[b"dlq_attempts"] in (b"0", b""), fields[b"dlq_attempts"]
    # Nothing pending, no request for the bad entry, the next one served.
    assert env.pending() == 0
    reqs = env.requests()
    assert [q["headers"]["idempotency-key"] for q in reqs] == ["doc-after"]
    assert env.row("doc-after")["status"] == "triggered"
    assert [row["document_id"] for row in env.rows()] == ["doc-after"]
    logged = r.log("event_dead_lettered", entry_id=bad.entry_id)
    assert len(logged) == 1, r
    assert logged[0]["reason"] == reason
    assert logged[0]["level"] == "warn"


# ---- (d), (e) permanent failures ---------------------------------------

@pytest.mark.parametrize("route", ["document", "batch"])
def test_http_200_with_success_false_is_dead_lettered_as_rejected(env, route):
    """The deployed Stage 2 API answers 200 even when it fails."""
    env.mock.behaviour(status=200, success=False)
    if route == "document":
        pub, keys = env.publisher.document_cleaned("doc-rej", "no"), \
            ["doc-rej"]
        r = env.drain()
    else:
        keys = ["doc-rej-1", "doc-rej-2"]
        path = env.write_documents("stage1/b.jsonl", keys)
        pub = env.publisher.job_completed("job-rej", "b",
                                          output_location=path)
        r = env.drain(batch_mode=True)

    assert len(env.requests()) == 1
    for key in keys:
        row = env.row(key)
        assert row["status"] == "dead"
        assert row["http_status"] == 200
        assert row["remote_job_id"] is None
    dls = env.dead_letters()
    assert len(dls) == 1
    fields = assert_dead_letter(dls[0], pub, "rejected")
    assert fields[b"dlq_http_status"] == b"200"
    assert fields[b"dlq_attempts"] == b"1"
    assert re.search(r"success", fields[b"dlq_detail"].decode(), re.I)
    assert env.pending() == 0
    assert [d["outcome"] for d in env.deliveries()] == ["permanent"]
    assert r.log("event_dead_lettered", event_id=pub.id, reason="rejected")


@pytest.mark.parametrize("status", [404, 400])
def test_client_error_is_dead_lettered_as_http_error(env, status):
    env.mock.behaviour(status=status)
    pub = env.publisher.document_cleaned("doc-4xx", "no such endpoint")

    r = env.drain()

    assert len(env.requests()) == 1
    row = env.row("doc-4xx")
    assert row["status"] == "dead"
    assert row["http_status"] == status
    dls = env.dead_letters()
    assert len(dls) == 1
    fields = assert_dead_letter(dls[0], pub, "http_error")
    assert fields[b"dlq_http_status"] == b(status)
    assert env.pending() == 0
    deliveries = env.deliveries()
    assert [(d["outcome"], d["http_status"]) for d in deliveries] == \
        [("permanent", status)]
    assert r.log("event_dead_lettered", event_id=pub.id, reason="http_error",
                 http_status=status)


# ---- (f) transient failures --------------------------------------------

TRANSIENT_CASES = [
    ("503", {"status": 503}, {}, r"503"),
    ("429", {"status": 429, "retry_after": 1}, {}, r"429"),
    ("timeout", {"delay_ms": 1500}, {"nlp_api": {"timeout_ms": 300}},
     r"time(d)? ?out"),
]


@pytest.mark.parametrize("kind,behaviour,overrides,error",
                         TRANSIENT_CASES, ids=[c[0] for c in TRANSIENT_CASES])
def test_transient_failure_is_retried_then_dead_lettered(env, kind, behaviour,
                                                        overrides, error):
    """max_retries retries, each with the same Idempotency-Key, then the
    entry is dead-lettered; a Retry-After above the cap waits the cap."""
    env.mock.behaviour(**behaviour)
    pub = env.publisher.document_cleaned("doc-tr", "the API is down")

    r = env.drain(max_retries=2, retry_delay_seconds=0.05,
                  max_retry_delay_seconds=0.2, **overrides)

    reqs = env.requests()
    assert [q["headers"]["idempotency-key"] for q in reqs] == ["doc-tr"] * 3
    assert env.pending() == 0
    row = env.row("doc-tr")
    assert row["status"] == "dead"
    assert (row["attempts"], row["retries"]) == (3, 2)
    assert re.search(error, row["last_error"], re.I), row["last_error"]
    dls = env.dead_letters()
    assert len(dls) == 1
    fields = assert_dead_letter(dls[0], pub, "retries_exhausted")
    assert fields[b"dlq_attempts"] == b"3"
    assert len(r.log("event_failed")) == 2
    assert r.log("event_dead_lettered", event_id=pub.id,
                 reason="retries_exhausted")
    assert [d["outcome"] for d in env.deliveries()] == ["transient"] * 3


def test_an_outage_opens_the_circuit_and_ends_a_drain(env):
    """Connection refused: after failure_threshold failures the circuit
    opens; a drain run stops there and leaves the entries pending (not
    dead-lettered), their retry scheduled in the ledger."""
    import servers
    closed = servers.free_port()          # nothing listens there
    pubs = [env.publisher.document_cleaned("doc-unreach-%d" % i, "nobody")
            for i in range(3)]

    r = env.drain(expect=EXIT_PENDING, batch_size=1,
                  circuit_breaker={"failure_threshold": 2, "open_seconds": 30},
                  nlp_api={"base_url": "http://127.0.0.1:%d" % closed})

    assert r.log("circuit_opened", consumer=WORKER, consecutive_failures="2")
    # Two entries were tried; the third was never read.
    assert env.pending() == 2
    assert len(env.redis.xreadgroup(GROUP, "probe", {STREAM: ">"})[0][1]) == 1
    for p in pubs[:2]:
        row = env.row(p.data["document_id"])
        assert row["status"] == "failed"
        assert row["last_error"]
        assert row["retry_at"] is not None
    assert env.dead_letters() == []
    assert r.log("event_failed", event_id=pubs[0].id)


def test_retry_failed_false_dead_letters_the_first_transient_failure(env):
    env.mock.behaviour(status=503)
    pub = env.publisher.document_cleaned("doc-noretry", "no second chance")

    env.drain(retry_failed=False)

    assert len(env.requests()) == 1
    assert env.row("doc-noretry")["status"] == "dead"
    dls = env.dead_letters()
    assert len(dls) == 1
    fields = assert_dead_letter(dls[0], pub,
                                dls[0][1].get(b"dlq_reason", b"").decode())
    assert fields[b"dlq_http_status"] == b"503"
    assert env.pending() == 0


def test_entry_left_pending_is_triggered_by_the_next_run(env):
    """A restarted worker (same consumer name) drains its own pending list
    first, waits for the retry time the ledger kept, and re-sends with the
    same Idempotency-Key."""
    env.mock.behaviour(status=503, count=1, retry_after=1)
    pub = env.publisher.document_cleaned("doc-again", "second time lucky")
    config = env.write_config(
        circuit_breaker={"failure_threshold": 1, "open_seconds": 30},
        retry_delay_seconds=0.01)

    env.drain(config, expect=EXIT_PENDING)
    assert env.pending() == 1
    assert env.row("doc-again")["status"] == "failed"

    r = env.drain(config)

    reqs = env.requests()
    assert [q["headers"]["idempotency-key"] for q in reqs] == \
        ["doc-again", "doc-again"]
    assert [q["response"]["status"] for q in reqs] == [503, 202]
    row = env.row("doc-again")
    assert row["status"] == "triggered"
    assert row["remote_job_id"] == reqs[1]["response"]["job_id"]
    assert row["attempts"] == 2
    assert env.pending() == 0
    assert r.log("event_triggered", event_id=pub.id)
    assert [d["outcome"] for d in env.deliveries()] == \
        ["transient", "success"]


# ---- (g) the stream vanishes -------------------------------------------

def test_deleted_stream_group_is_recreated_and_consumption_goes_on(env):
    first = env.publisher.document_cleaned("doc-before", "before the DEL")
    d = env.start()
    wait_until(lambda: env.row_status("doc-before") == "triggered",
               what="doc-before triggered")
    wait_until(lambda: env.pending() == 0, what="doc-before acknowledged")

    env.redis.delete(STREAM)          # Stage 1's EXPIRE, or an operator
    wait_until(lambda: GROUP in env.groups(), timeout=10,
               what="the group re-created (XINFO GROUPS)")

    later = [env.publisher.document_cleaned("doc-after-%d" % i, "after")
             for i in range(2)]
    wait_until(lambda: all(env.row_status(p.data["document_id"]) ==
                           "triggered" for p in later),
               what="events after the DEL triggered")
    wait_until(lambda: env.pending() == 0, what="everything acknowledged")

    keys = sorted(r["headers"]["idempotency-key"] for r in env.requests())
    assert keys == ["doc-after-0", "doc-after-1", "doc-before"]
    d.wait_log("event_triggered", timeout=5, event_id=first.id)
    # Loudly: an operator must learn that the group vanished.
    d.wait_log("group_recreated", timeout=1)
    assert d.stop() == EXIT_OK
    assert d.log("worker_stopped")


def test_events_published_right_after_the_stream_vanished_are_not_lost(
        env):
    """Stage 1's EXPIRE takes stream and group; its next XADD re-creates
    the stream without a group. The re-created group must start at the
    beginning of the new stream, whatever process_backlog says (that key is
    about history before the first start), or those events are lost."""
    d = env.start(process_backlog=False)
    env.publisher.document_cleaned("doc-first", "before")
    wait_until(lambda: env.row_status("doc-first") == "triggered",
               what="doc-first triggered")

    # The key vanishes while the worker is blocked in XREADGROUP, and
    # Stage 1 publishes into a new one a moment later.
    wait_until(lambda: env.pending() == 0, what="doc-first acknowledged")
    env.redis.delete(STREAM)
    env.publisher.document_cleaned("doc-right-after", "not lost")

    wait_until(lambda: GROUP in env.groups(), what="group re-created")
    later = env.publisher.document_cleaned("doc-later", "after")
    wait_until(lambda: env.row_status("doc-later") == "triggered",
               what="doc-later triggered")
    wait_until(lambda: env.row_status("doc-right-after") == "triggered",
               timeout=3, what="doc-right-after (published into the new "
               "stream before the group was re-created) triggered")
    d.wait_log("event_triggered", timeout=5, event_id=later.id)
    assert d.stop() == EXIT_OK


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_daemon_gracefully(env, sig):
    d = env.start()
    env.publisher.document_cleaned("doc-sig", "one event")
    wait_until(lambda: env.row_status("doc-sig") == "triggered",
               what="doc-sig triggered")
    assert d.stop(sig) == EXIT_OK
    assert d.log("worker_stopped")
    assert env.pending() == 0


# ---- (h) Stage 2's whole settings.yaml ---------------------------------

SETTINGS_YAML = """\
# stage2/config/settings.yaml
general:
  service_name: "stage2-nlp-processing"
  environment: "test"
  debug: false

api:
  host: "0.0.0.0"
  port: 8000
  workers: 4
  cors_origins: ["*"]

redis:
  host: "redis-cache"
  port: 6379
  db: 1

database:
  postgres:
    host: "postgres"
    database: "stage2_nlp"
    password: "${{POSTGRES_PASSWORD}}"   # Stage 2's own; unset here

nlp:
  spacy_model: "en_core_web_trf"
  ner: {{enabled: true, confidence_threshold: 0.75}}
  batch: {{max_documents: 500, chunk_size: 32}}

events:
  enabled: true
  backends:
    - type: "redis_streams"
      config: {{stream_name: "stage2:nlp:events", max_len: 10000}}

logging:
  level: "INFO"
  format: "json"

event_consumer:
  enabled: true
  source_stream: "stage1:cleaning:events"
  redis_host: "${{ITEST_REDIS_HOST:-127.0.0.1}}"
  redis_port: {redis_port}
  redis_db: 1
  consumer_group: "stage2-nlp-processor"
  consumer_name: "itest"
  consume_events:
    - "com.storytelling.cleaning.document.cleaned"
    - "com.storytelling.cleaning.job.completed"
  auto_process: true
  batch_mode: false
  poll_interval_ms: 100
  batch_size: 10
  retry_failed: true
  dead_letter_stream: "stage2:nlp:failed-events"
  process_backlog: true
  check_already_processed: true
  deduplication_ttl_hours: 24
  nlp_api:
    base_url: "{mock_url}"
    timeout_ms: 5000
    headers:
      X-Request-Source: "stagerelay"
  routes:
    - name: document
      types: [com.storytelling.cleaning.document.cleaned]
      path: /api/v1/documents
      idempotency_key: "{{{{data.document_id}}}}"
      body:
        document: "{{{{data}}}}"
      success_field: success
    - name: batch
      types: [com.storytelling.cleaning.job.completed]
      path: /api/v1/documents/batch
      idempotency_key: "job:{{{{data.job_id}}}}"
      body:
        input_file: "{{{{data.output_location}}}}"
        batch_id: "{{{{data.batch_id}}}}"
      success_field: success
      job_id_field: job_id
  ledger:
    dsn: "{dsn}"
    schema: "stagerelay"
  logging:
    format: "logfmt"
    level: "info"
"""


def test_whole_stage2_settings_yaml_works(env):
    config = env.write_config(SETTINGS_YAML.format(
        redis_port=env.redis_server.port, mock_url=env.mock.url,
        dsn=env.dsn), name="settings.yaml")
    db1 = publish.Publisher(env.redis_server.client(db=1), STREAM)
    doc = db1.document_cleaned("doc-settings", "from settings.yaml")
    job = db1.job_completed("job-s", "batch-s", 10,
                            output_location="/shared/stage1/batch-s.jsonl")

    check = env.run("-t", "-c", config)
    assert check.returncode == EXIT_OK, check
    r = env.drain(config)

    reqs = by_key(env.requests())
    assert sorted(reqs) == ["doc-settings", "job:job-s"]
    assert reqs["doc-settings"]["path"] == "/api/v1/documents"
    assert reqs["doc-settings"]["json"] == {"document": doc.data}
    assert reqs["doc-settings"]["headers"]["x-request-source"] == "stagerelay"
    assert reqs["job:job-s"]["path"] == "/api/v1/documents/batch"
    assert reqs["job:job-s"]["json"] == {
        "input_file": "/shared/stage1/batch-s.jsonl", "batch_id": "batch-s"}
    assert env.row("doc-settings")["status"] == "triggered"
    assert env.row("job:job-s")["remote_job_id"] == \
        reqs["job:job-s"]["response"]["job_id"]
    assert env.pending() == 0
    assert r.log("event_triggered", event_id=job.id)
    # Nothing landed in DB 0.
    assert env.redis.exists(STREAM) == 0


# ---- (i) job events ----------------------------------------------------

def test_job_completed_triggers_a_batch_and_lifecycle_events_are_filtered(
        env):
    """batch_mode: true, the default routes: the job's documents file is
    read and its documents are recorded one row each."""
    job_id, batch_id = "4c97a203-b96a-47d8-88e3-abce1b9855a5", \
        "e2e_validation_20260105_162622"
    docs = ["doc-j1", "doc-j2", "doc-j3"]
    path = env.write_documents("stage1/%s.jsonl" % batch_id, docs,
                               job_id=job_id, batch_id=batch_id)
    started = env.publisher.job_started(job_id, batch_id, 100)
    progress = env.publisher.job_progress(job_id, batch_id, 50, 100)
    completed = env.publisher.job_completed(job_id, batch_id, 3,
                                            output_location=path)

    r = env.drain(batch_mode=True)

    reqs = env.requests()
    assert len(reqs) == 1, reqs
    req = reqs[0]
    assert req["method"] == "POST"
    assert req["path"] == BATCH_ROUTE_PATH
    assert req["json"] == {"input_file": path, "batch_id": batch_id}
    assert req["headers"]["idempotency-key"] == "job:" + job_id
    assert req["headers"]["ce-id"] == completed.id
    rows = env.rows()
    assert [row["document_id"] for row in rows] == docs
    for row in rows:
        assert row["status"] == "triggered"
        assert row["remote_job_id"] == req["response"]["job_id"]
        assert row["batch_id"] == batch_id
        assert row["job_id"] == job_id
        assert row["event_type"] == JOB_COMPLETED
        assert row["event_id"] == completed.id
    (delivery,) = env.deliveries()
    assert delivery["idempotency_key"] == "job:" + job_id
    assert delivery["documents"] == 3
    for p in (started, progress):
        assert r.log("event_filtered", event_id=p.id), r
    assert r.log("event_triggered", event_id=completed.id, route="batch",
                 documents=3)
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_batch_mode_false_records_job_events_and_triggers_documents(env):
    """The default: documents one by one; a job event is only recorded
    (observed, under its own key), and its file is not read."""
    doc = env.publisher.document_cleaned("doc-one", "one by one")
    job = env.publisher.job_completed("job-obs", "batch-obs",
                                      output_location="/nonexistent.jsonl")
    # The deployed Stage 1 names no file: recorded all the same.
    bare = env.publisher.job_completed("job-bare", "batch-bare",
                                       output_location=None)

    r = env.drain()

    assert sorted(by_key(env.requests())) == ["doc-one"]
    assert env.row("doc-one")["status"] == "triggered"
    row = env.row("job:job-obs")
    assert row["status"] == "observed"
    assert row["event_id"] == job.id
    assert r.log("event_observed", event_id=job.id, reason="batch_mode_off")
    assert env.row("job:job-bare")["status"] == "observed"
    assert r.log("event_observed", event_id=bare.id)
    assert r.log("event_triggered", event_id=doc.id)
    assert env.pending() == 0
    assert env.dead_letters() == []


# ---- (j) observe only ----------------------------------------------------

def test_auto_process_false_records_observed_rows_and_sends_nothing(env):
    pubs = [env.publisher.document_cleaned("doc-obs-%d" % i, "watch only")
            for i in range(3)]

    r = env.drain(auto_process=False)

    assert env.requests() == []
    rows = env.rows()
    assert [row["document_id"] for row in rows] == \
        ["doc-obs-0", "doc-obs-1", "doc-obs-2"]
    for row, pub in zip(rows, pubs):
        assert row["status"] == "observed"
        assert row["remote_job_id"] is None
        assert row["event_id"] == pub.id
    assert env.deliveries() == []
    assert env.pending() == 0
    assert env.dead_letters() == []
    assert len(r.log("event_observed")) == 3, r


# ---- (k) check-config --------------------------------------------------

TOKEN = "tok-Sup3rSecret-91f2"
PG_PASSWORD = "pgS3cret-Ledger-7a1"
REDIS_PASSWORD = "rdS3cret-Stream-5c3"


@pytest.mark.parametrize("args", [["-t"], ["check-config"]],
                         ids=["-t", "check-config"])
def test_check_config_prints_the_config_without_secrets(env, args):
    config = env.write_config(
        redis_password="${ITEST_REDIS_PASSWORD}",
        nlp_api={"headers": {"Authorization": "Bearer ${NLP_API_TOKEN}"}},
        ledger={"dsn": env.dsn + " password=" + PG_PASSWORD})

    r = env.run(*args, "-c", config,
                env={"NLP_API_TOKEN": TOKEN,
                     "ITEST_REDIS_PASSWORD": REDIS_PASSWORD})

    assert r.returncode == EXIT_OK, r
    assert "event_consumer:" in r.stdout
    assert STREAM in r.stdout
    assert "Authorization" in r.stdout
    assert env.mock.url in r.stdout
    for secret in (TOKEN, PG_PASSWORD, REDIS_PASSWORD):
        assert secret not in r.stdout + r.stderr, \
            "secret %r printed\n%s" % (secret, r)
    # The check touches nothing.
    assert env.requests() == []
    assert env.groups() == {}


def test_secrets_are_sent_but_never_logged(env):
    config = env.write_config(
        nlp_api={"headers": {"Authorization": "Bearer ${NLP_API_TOKEN}"}},
        ledger={"dsn": env.dsn + " password=" + PG_PASSWORD},
        logging={"level": "debug"})
    env.publisher.document_cleaned("doc-secret", "carry the token")

    r = env.drain(config, env={"NLP_API_TOKEN": TOKEN})

    reqs = env.requests()
    assert [q["headers"].get("authorization") for q in reqs] == \
        ["Bearer " + TOKEN]
    for secret in (TOKEN, PG_PASSWORD):
        assert secret not in r.stdout + r.stderr, \
            "secret %r logged\n%s" % (secret, r)


BAD_CONFIGS = [
    ("unknown_key", "  consumer_gruop: stage2-nlp-processor\n",
     [r"did you mean", r"consumer_group"]),
    ("wrong_type", "  redis_port: lots\n", [r"redis_port"]),
    ("out_of_range", "  batch_size: 0\n", [r"batch_size"]),
]


@pytest.mark.parametrize("kind,line,patterns", BAD_CONFIGS,
                         ids=[c[0] for c in BAD_CONFIGS])
def test_check_config_reports_mistakes_with_file_line_column(
        env, kind, line, patterns):
    text = ("# a config with a mistake on line 5\n"
            "event_consumer:\n"
            "  enabled: true\n"
            "  source_stream: \"stage1:cleaning:events\"\n"
            + line +
            "  auto_process: true\n")
    config = env.write_config(text)

    r = env.run("-t", "-c", config)

    assert r.returncode == EXIT_CONFIG, r
    assert re.search(re.escape(config) + r":5:\d+:", r.stderr), r
    for pat in patterns:
        assert re.search(pat, r.stderr, re.I), r
    # The daemon refuses the same file with the same status.
    assert env.run("-c", config, "--drain").returncode == EXIT_CONFIG


# ---- (l) consume_events ------------------------------------------------

def test_consume_events_filters_out_other_types(env):
    job = env.publisher.job_completed("job-f", "batch-f", 5)
    doc = env.publisher.document_cleaned("doc-f", "only documents")

    r = env.drain(consume_events=[DOCUMENT_CLEANED])

    reqs = env.requests()
    assert [q["headers"]["idempotency-key"] for q in reqs] == ["doc-f"]
    assert r.log("event_filtered", event_id=job.id), r
    assert r.log("event_triggered", event_id=doc.id), r
    assert [row["document_id"] for row in env.rows()] == ["doc-f"]
    assert env.pending() == 0
    assert env.dead_letters() == []


# ---- (m) process_backlog -----------------------------------------------

def test_process_backlog_true_starts_a_new_group_at_the_beginning(env):
    pubs = [env.publisher.document_cleaned("doc-bl-%d" % i, "history")
            for i in range(3)]
    r = env.drain(process_backlog=True)
    assert r.log("group_created", start="0"), r
    assert sorted(q["headers"]["idempotency-key"]
                  for q in env.requests()) == \
        [p.data["document_id"] for p in pubs]
    assert env.pending() == 0


def test_process_backlog_false_starts_a_new_group_at_the_end(env):
    for i in range(3):
        env.publisher.document_cleaned("doc-old-%d" % i, "history")
    config = env.write_config(process_backlog=False)

    r = env.drain(config)
    assert r.log("group_created", start="$"), r
    assert env.requests() == []
    assert env.rows() == []

    # Only what arrives after the group exists is processed.
    new = [env.publisher.document_cleaned("doc-new-%d" % i, "fresh")
           for i in range(2)]
    r = env.drain(config)
    assert not r.log("group_created")
    assert sorted(q["headers"]["idempotency-key"]
                  for q in env.requests()) == ["doc-new-0", "doc-new-1"]
    assert [row["document_id"] for row in env.rows()] == \
        ["doc-new-0", "doc-new-1"]
    assert r.log("event_triggered", event_id=new[0].id)
    assert env.pending() == 0


# ---- environment overrides, enabled, the ledger tool -------------------

def test_event_consumer_enabled_false_does_nothing(env):
    env.publisher.document_cleaned("doc-off", "ignored")
    config = env.write_config()
    r = env.run("-c", config, "--drain",
                env={"EVENT_CONSUMER_ENABLED": "false"})
    assert r.returncode == EXIT_OK, r
    assert env.requests() == []
    assert env.groups() == {}


def test_stage1_event_stream_overrides_source_stream(env):
    other = publish.Publisher(env.redis, "stage1:other:events")
    other.document_cleaned("doc-other", "elsewhere")
    config = env.write_config()
    r = env.run("-c", config, "--drain",
                env={"STAGE1_EVENT_STREAM": "stage1:other:events"})
    assert r.returncode == EXIT_OK, r
    assert [q["headers"]["idempotency-key"] for q in env.requests()] == \
        ["doc-other"]
    assert env.pending("stage1:other:events") == 0


LEDGER_COLUMNS = {
    "processed_documents": {
        "consumer_group", "document_id", "status", "attempts", "claimed_by",
        "lease_until", "event_id", "event_type", "event_source",
        "event_time", "stream", "stream_entry_id", "batch_id", "job_id",
        "remote_job_id", "http_status", "last_error", "first_seen_at",
        "triggered_at", "updated_at", "last_delivery_id"},
    "deliveries": {
        "delivery_id", "consumer_group", "route", "method", "url",
        "idempotency_key", "http_status", "latency_ms", "outcome",
        "remote_job_id", "error", "event_id", "stream_entry_id",
        "requested_at"},
}


def test_ledger_migrate_creates_the_schema_idempotently(env):
    config = env.write_config()
    for _ in range(2):
        r = env.run("ledger", "migrate", "-c", config)
        assert r.returncode == EXIT_OK, r
    for table, columns in LEDGER_COLUMNS.items():
        got = {c["column_name"] for c in env.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'stagerelay' AND table_name = %s",
            (table,))}
        assert columns <= got, "%s lacks %s" % (table, columns - got)
    assert env.rows() == []
