"""Batch routes fed by a query (issue 10): the deployed Stage 1's
job.completed carries no output path, so a route names documents_query,
a parameterised SQL query against Stage 1's processed_articles, whose rows
become the batch's documents under the one document-level ledger, as a
documents file's lines do.

The table lives in a second database on the test server, never in the
ledger's: the documents can only come through the route's own dsn. That
dsn carries a password (the server trusts loopback, so it is not needed
to log in) which must show up nowhere.

Real redis-server and PostgreSQL, the real binary, the mock NLP API.
"""
import re

import psycopg2.extras
import pytest

import publish
from conftest import EXIT_OK, wait_until

DOCUMENT_CLEANED = publish.DOCUMENT_CLEANED
JOB_COMPLETED = publish.JOB_COMPLETED
SECRET = "Qry-s3cret-Pw"

SCHEMA = """
CREATE TABLE processed_articles (
    document_id     text PRIMARY KEY,
    job_id          text NOT NULL,
    batch_id        text,
    cleaned_title   text,
    cleaned_text    text NOT NULL,
    word_count      integer,
    score           numeric,
    big             bigint,
    is_published    boolean,
    entities        jsonb,
    processed_at    timestamptz DEFAULT '2026-01-05 16:27:08+00'
)"""

COLUMNS = ("document_id, job_id, batch_id, cleaned_title, cleaned_text, "
           "word_count, score, big, is_published, entities, processed_at")
SQL = ("SELECT " + COLUMNS + " FROM processed_articles "
       "WHERE job_id = $1 ORDER BY document_id")

DOC_ROUTE = {
    "name": "document", "types": [DOCUMENT_CLEANED],
    "path": "/api/v1/documents",
    "idempotency_key": "{{data.document_id}}",
    "body": {"document": "{{data}}"},
    "success_field": "success", "job_id_field": "job_id"}


def batch_route(dsn, sql=SQL, params=("{{data.job_id}}",)):
    return {
        "name": "batch", "types": [JOB_COMPLETED],
        "path": "/api/v1/documents/batch",
        "idempotency_key": "job:{{data.job_id}}",
        "documents_query": {"sql": sql, "params": list(params),
                            "dsn": dsn},
        "body": {"documents": "{{documents}}",
                 "batch_id": "{{data.batch_id}}"},
        "success_field": "success", "job_id_field": "job_id"}


class Stage1:
    """Stage 1's database: processed_articles in a database of its own."""

    def __init__(self, env):
        self.pg = env.pg
        self.dbname = env.pg.create_database()
        self.dsn = env.pg.dsn_for(self.dbname) + " password=" + SECRET
        self.conn = env.pg.connect(self.dbname)
        self.execute(SCHEMA)

    def execute(self, sql, args=()):
        with self.conn.cursor() as cur:
            cur.execute(sql, args)

    def add(self, job_id, document_ids, batch_id=None, **extra):
        for i, d in enumerate(document_ids):
            row = {"document_id": d, "job_id": job_id, "batch_id": batch_id,
                   "cleaned_title": "Title %s" % d,
                   "cleaned_text": "text of %s" % d, "word_count": 3 + i,
                   "score": "0.5", "big": 42, "is_published": True,
                   "entities": psycopg2.extras.Json(
                       [{"text": "Oslo", "label": "GPE"}])}
            row.update(extra)
            self.execute("INSERT INTO processed_articles (%s) VALUES (%s)"
                         % (", ".join(row), ", ".join(["%s"] * len(row))),
                         list(row.values()))

    def close(self):
        self.conn.close()
        self.pg.drop_database(self.dbname)


@pytest.fixture
def stage1(env):
    s = Stage1(env)
    try:
        yield s
    finally:
        s.close()


def ids(n, prefix):
    return ["%s-%03d" % (prefix, i) for i in range(n)]


def sent_ids(req):
    return [d["document_id"] for d in req["json"]["documents"]]


def key(req):
    return req["headers"]["idempotency-key"]


def no_secret(env, *texts):
    """The DSN's password is in none of the texts, the dead letters, the
    requests or the ledger's errors."""
    for t in texts:
        assert SECRET not in t, t
    for _, fields in env.dead_letters():
        for v in fields.values():
            assert SECRET.encode() not in v, fields
    for q in env.requests():
        assert SECRET not in repr(q)
    for row in env.rows():
        assert SECRET not in repr(row)


def test_a_job_completed_without_a_file_sends_the_rows_of_its_job(env,
                                                                   stage1):
    """The issue's case: the job's rows, and only those, go out in one
    batch request; each is triggered in the ledger."""
    mine, other = ids(3, "doc-qa"), ids(2, "doc-qb")
    stage1.add("job-qa", mine, batch_id="batch-q")
    stage1.add("job-qb", other, batch_id="batch-q")
    job = env.publisher.job_completed("job-qa", "batch-q", 3,
                                      output_location=None)
    routes = [DOC_ROUTE, batch_route(stage1.dsn)]

    r = env.drain(routes=routes, batch_mode=True)

    (req,) = env.requests()
    assert req["path"] == "/api/v1/documents/batch"
    assert key(req) == "job:job-qa"
    assert req["headers"]["ce-id"] == job.id
    assert sent_ids(req) == mine
    # Each row as an object, column by column, in its JSON type; a
    # timestamp as PostgreSQL writes it.
    doc = dict(req["json"]["documents"][1])
    assert re.fullmatch(r"2026-01-0[56] \d\d:27:08[+-]\d\d(:\d\d)?",
                        doc.pop("processed_at")), doc
    assert doc == {
        "document_id": "doc-qa-001", "job_id": "job-qa",
        "batch_id": "batch-q", "cleaned_title": "Title doc-qa-001",
        "cleaned_text": "text of doc-qa-001", "word_count": 4,
        "score": 0.5, "big": 42, "is_published": True,
        "entities": [{"text": "Oslo", "label": "GPE"}]}
    assert req["json"]["batch_id"] == "batch-q"

    rows = {row["document_id"]: row for row in env.rows()}
    assert sorted(rows) == mine          # nothing of job-qb
    for d in mine:
        assert rows[d]["status"] == "triggered"
        assert rows[d]["event_id"] == job.id
        assert rows[d]["job_id"] == "job-qa"
        assert rows[d]["remote_job_id"] == req["response"]["job_id"]
    assert [(x["route"], x["documents"]) for x in env.deliveries()] == \
        [("batch", 3)]
    assert r.log("event_triggered", event_id=job.id, documents=3)
    assert env.pending() == 0
    assert env.dead_letters() == []
    no_secret(env, r.stderr, r.stdout)


def test_values_that_json_cannot_hold_exactly_stay_strings(env, stage1):
    """SQL NULL is null; a bigint past 2^53 and a numeric of more digits
    than a double holds are strings, so no id is rounded."""
    stage1.add("job-qn", ["doc-qn-1"], batch_id=None, big=2 ** 60,
               score="3.14159265358979323846", cleaned_title=None,
               entities=None)
    env.publisher.job_completed("job-qn", None, 1, output_location=None)
    sql = ("SELECT " + COLUMNS + ", 0.1::float8 + 0.2::float8 AS sum, "
           "'NaN'::float8 AS nan, 2.5::real AS r, 100.000::numeric AS n, "
           "(2 ^ 53)::bigint AS top FROM processed_articles "
           "WHERE job_id = $1")

    env.drain(routes=[DOC_ROUTE, batch_route(stage1.dsn, sql=sql)],
              batch_mode=True)

    (req,) = env.requests()
    (doc,) = req["json"]["documents"]
    assert doc["big"] == str(2 ** 60)
    assert doc["score"] == "3.14159265358979323846"
    # A double stays the double it was, to the last digit.
    assert doc["sum"] == 0.30000000000000004
    assert doc["nan"] == "NaN"
    assert doc["r"] == 2.5
    assert doc["n"] == 100
    assert doc["top"] == 2 ** 53
    assert doc["batch_id"] is None and doc["cleaned_title"] is None
    assert doc["entities"] is None
    assert doc["word_count"] == 3


def test_documents_triggered_one_by_one_are_left_out_of_the_batch(env,
                                                                  stage1):
    """As with a documents file: 2 of the job's 5 documents were sent on
    their own (batch_mode off); the job's batch carries the other 3."""
    docs = ids(5, "doc-qd")
    stage1.add("job-qd", docs, batch_id="batch-qd")
    routes = [DOC_ROUTE, batch_route(stage1.dsn)]
    for d in docs[:2]:
        env.publisher.document_cleaned(d, "text of %s" % d, job_id="job-qd")
    env.drain(routes=routes)
    assert sorted(key(q) for q in env.requests()) == docs[:2]
    single = {row["document_id"]: row["remote_job_id"]
              for row in env.rows()}

    job = env.publisher.job_completed("job-qd", "batch-qd", 5,
                                      output_location=None)
    r = env.drain(routes=routes, batch_mode=True)

    reqs = env.requests()[2:]
    assert len(reqs) == 1, reqs
    assert sent_ids(reqs[0]) == docs[2:]
    # Only some of the job: the key names which documents it carries.
    assert re.fullmatch(r"job:job-qd~[0-9a-f]{8}", key(reqs[0])), \
        key(reqs[0])
    rows = {row["document_id"]: row for row in env.rows()}
    assert sorted(rows) == docs
    for d in docs:
        assert rows[d]["status"] == "triggered"
        assert rows[d]["attempts"] == 1
    for d in docs[:2]:
        assert rows[d]["remote_job_id"] == single[d]
        assert rows[d]["event_type"] == DOCUMENT_CLEANED
    for d in docs[2:]:
        assert rows[d]["event_id"] == job.id
    assert r.log("event_triggered", event_id=job.id, documents=3,
                 skipped_documents=2)
    assert env.pending() == 0


def test_documents_sent_in_the_batch_are_not_triggered_again(env, stage1):
    """The other way round: the batch went first; document.cleaned events
    for its documents are duplicates, a document it did not hold is sent."""
    docs = ids(3, "doc-qe")
    stage1.add("job-qe", docs)
    routes = [DOC_ROUTE, batch_route(stage1.dsn)]
    env.publisher.job_completed("job-qe", "b", 3, output_location=None)
    env.drain(routes=routes, batch_mode=True)
    (batch,) = env.requests()
    assert sent_ids(batch) == docs

    again = [env.publisher.document_cleaned(d, "text of %s" % d)
             for d in docs]
    new = env.publisher.document_cleaned("doc-qe-new", "not in the job")
    r = env.drain(routes=routes)

    reqs = env.requests()[1:]
    assert [key(q) for q in reqs] == ["doc-qe-new"]
    for p in again:
        assert r.log("event_duplicate", event_id=p.id)
    assert r.log("event_triggered", event_id=new.id)
    rows = {row["document_id"]: row for row in env.rows()}
    for d in docs:
        assert rows[d]["status"] == "triggered"
        assert rows[d]["event_type"] == JOB_COMPLETED
    assert env.pending() == 0


def test_the_same_job_again_and_a_job_with_no_rows_send_nothing(env, stage1):
    stage1.add("job-qg", ids(2, "doc-qg"))
    routes = [DOC_ROUTE, batch_route(stage1.dsn)]
    env.publisher.job_completed("job-qg", "b", output_location=None)
    env.drain(routes=routes, batch_mode=True)
    assert len(env.requests()) == 1

    again = env.publisher.job_completed("job-qg", "b", output_location=None)
    empty = env.publisher.job_completed("job-none", "b",
                                        output_location=None)
    r = env.drain(routes=routes, batch_mode=True)

    assert len(env.requests()) == 1
    assert r.log("event_duplicate", event_id=again.id,
                 reason="no_new_documents")
    assert r.log("event_filtered", event_id=empty.id, reason="no_documents")
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_the_query_is_selected_by_batch_id_too(env, stage1):
    """Two parameters: the rows of a batch, whatever their job."""
    stage1.add("job-qh1", ["doc-qh-1"], batch_id="batch-qh")
    stage1.add("job-qh2", ["doc-qh-2"], batch_id="batch-qh")
    stage1.add("job-qh3", ["doc-qh-3"], batch_id="other")
    route = batch_route(
        stage1.dsn, sql="SELECT document_id, cleaned_text FROM "
        "processed_articles WHERE batch_id = $2 OR job_id = $1 "
        "ORDER BY document_id",
        params=("{{data.job_id}}", "{{data.batch_id}}"))
    env.publisher.job_completed("job-none", "batch-qh", output_location=None)

    env.drain(routes=[DOC_ROUTE, route], batch_mode=True)

    (req,) = env.requests()
    assert sent_ids(req) == ["doc-qh-1", "doc-qh-2"]


def test_a_connection_the_server_closed_is_opened_again_at_once(env,
                                                                stage1):
    """The worker keeps its connection between events; when the server
    ends it (a restart, idle_session_timeout), the next event reconnects
    instead of waiting out a retry delay."""
    stage1.add("job-qc1", ["doc-qc-1"])
    stage1.add("job-qc2", ["doc-qc-2"])
    d = env.start(routes=[DOC_ROUTE, batch_route(stage1.dsn)],
                  batch_mode=True, retry_delay_seconds=30,
                  max_retry_delay_seconds=30)
    env.publisher.job_completed("job-qc1", "b", output_location=None)
    wait_until(lambda: len(env.requests()) == 1, what="the first batch")

    def ours():
        with stage1.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                        "datname = %s AND application_name = "
                        "'stagerelay-docquery'", (stage1.dbname,))
            return cur.fetchone()[0]
    assert ours() == 1            # one worker, one connection, kept
    assert env.pg.terminate_backends(
        stage1.dbname, keep=[stage1.conn.get_backend_pid()]) == 1
    wait_until(lambda: ours() == 0, what="the connection gone")

    job2 = env.publisher.job_completed("job-qc2", "b", output_location=None)
    wait_until(lambda: len(env.requests()) == 2, timeout=10,
               what="the second batch, without a retry delay")
    assert sent_ids(env.requests()[1]) == ["doc-qc-2"]
    assert d.log("event_deferred", event_id=job2.id) == []
    assert ours() == 1
    wait_until(lambda: env.pending() == 0, what="acknowledged")
    assert d.stop() == EXIT_OK
    no_secret(env, d.stderr)


# ---- queries that fail ---------------------------------------------------

def wrong_port(env, stage1):
    from servers import free_port
    dsn = "host=127.0.0.1 port=%d dbname=x user=postgres password=%s" % (
        free_port(), SECRET)
    return batch_route(dsn), r"cannot connect.*gave up after 4 tries"


def missing_table(env, stage1):
    """Not created yet (a deploy in progress): tried again, then given up."""
    return (batch_route(stage1.dsn, sql="SELECT document_id FROM "
                        "processed_articles_v2 WHERE job_id = $1"),
            r'"processed_articles_v2" does not exist \(SQLSTATE 42P01\) '
            r"\(gave up after 4 tries\)")


def ledger_database(env, stage1):
    """No dsn: the ledger's database, which has no such table."""
    route = batch_route(None)
    del route["documents_query"]["dsn"]
    return route, r'"processed_articles" does not exist.*gave up after 4'


UNAVAILABLE = [wrong_port, missing_table, ledger_database]


@pytest.mark.parametrize("case", UNAVAILABLE,
                         ids=[c.__name__ for c in UNAVAILABLE])
def test_a_query_that_cannot_run_is_tried_again_then_dead_lettered(
        env, stage1, case):
    stage1.add("job-qf", ids(2, "doc-qf"))
    route, why = case(env, stage1)
    job = env.publisher.job_completed("job-qf", "b", output_location=None)
    after = env.publisher.document_cleaned("doc-qf-after", "still flowing")

    r = env.drain(routes=[DOC_ROUTE, route], batch_mode=True,
                  retry_delay_seconds=0.05, max_retry_delay_seconds=0.1)

    deferred = r.log("event_deferred", event_id=job.id,
                     reason="documents_query_unavailable")
    assert len(deferred) == 3, r.stderr
    (dl,) = env.dead_letters()
    fields = dl[1]
    assert fields[b"dlq_reason"] == b"documents_query"
    assert fields[b"dlq_source_id"] == job.entry_id.encode()
    detail = fields[b"dlq_detail"].decode()
    assert re.search(why, detail), detail
    assert env.requests() == []
    assert [row["document_id"] for row in env.rows()] == ["doc-qf-after"]
    assert r.log("event_dead_lettered", event_id=job.id,
                 reason="documents_query")
    assert r.log("event_observed", event_id=after.id)
    assert env.pending() == 0
    no_secret(env, r.stderr, r.stdout)


def refused_column(stage1):
    return (batch_route(stage1.dsn, sql="SELECT document_id, nope FROM "
                        "processed_articles WHERE job_id = $1"), {},
            r'column "nope" does not exist \(SQLSTATE 42703\)$')


def refused_no_document_id(stage1):
    return (batch_route(stage1.dsn, sql="SELECT cleaned_text FROM "
                        "processed_articles WHERE job_id = $1"), {},
            r"the result has no document_id column")


def refused_null_document_id(stage1):
    return (batch_route(stage1.dsn, sql="SELECT CASE WHEN document_id = "
                        "'doc-qr-001' THEN NULL ELSE document_id END AS "
                        "document_id FROM processed_articles WHERE "
                        "job_id = $1 ORDER BY "
                        "processed_articles.document_id"),
            {},
            r"row 2: document_id is not a string")


def refused_duplicate_column(stage1):
    return (batch_route(stage1.dsn, sql="SELECT document_id, job_id, "
                        "batch_id AS job_id FROM processed_articles "
                        "WHERE job_id = $1"), {},
            r'the column "job_id" appears twice')


def refused_too_many(stage1):
    return (batch_route(stage1.dsn), {"max_documents_per_file": 2},
            r"3 documents, more than max_documents_per_file \(2\)")


def refused_write(stage1):
    return (batch_route(stage1.dsn, sql="WITH d AS (DELETE FROM "
                        "processed_articles WHERE job_id = $1 RETURNING "
                        "document_id) SELECT * FROM d"), {},
            r"read-only transaction \(SQLSTATE 25006\)")


REFUSED = [refused_column, refused_no_document_id, refused_null_document_id,
           refused_duplicate_column, refused_too_many, refused_write]


@pytest.mark.parametrize("case", REFUSED, ids=[c.__name__ for c in REFUSED])
def test_a_refused_query_is_dead_lettered_at_once(env, stage1, case):
    stage1.add("job-qr", ids(3, "doc-qr"))
    route, overrides, why = case(stage1)
    job = env.publisher.job_completed("job-qr", "b", output_location=None)

    r = env.drain(routes=[DOC_ROUTE, route], batch_mode=True,
                  retry_delay_seconds=0.05, max_retry_delay_seconds=0.1,
                  **overrides)

    assert r.log("event_deferred", event_id=job.id) == []
    (dl,) = env.dead_letters()
    fields = dl[1]
    assert fields[b"dlq_reason"] == b"documents_query"
    detail = fields[b"dlq_detail"].decode()
    assert re.search(why, detail), detail
    assert env.requests() == []
    assert env.rows() == []
    assert env.pending() == 0
    # The read-only transaction kept the rows.
    with stage1.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM processed_articles")
        assert cur.fetchone()[0] == 3
    no_secret(env, r.stderr)


def test_check_config_shows_the_query_and_hides_the_password(env, stage1):
    cfg = env.write_config(routes=[DOC_ROUTE, batch_route(stage1.dsn)],
                           batch_mode=True)
    r = env.run("-c", cfg, "-t")
    assert r.returncode == EXIT_OK, r
    assert "documents_query:" in r.stdout
    assert "password=<redacted>" in r.stdout
    assert "job_id = $1" in r.stdout
    no_secret(env, r.stdout, r.stderr)
