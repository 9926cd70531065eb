"""Batch routes (DESIGN.md §4, issue 6): a job.completed event names a JSONL
file of Stage 1 documents inside shared_dir; every document is claimed in
the one document-level ledger, and only those not already done are sent.

Real redis-server and PostgreSQL, the real binary, the mock NLP API.
"""
import os
import re

import pytest

import publish
from conftest import EXIT_OK, wait_until

DOCUMENT_CLEANED = publish.DOCUMENT_CLEANED
JOB_COMPLETED = publish.JOB_COMPLETED

# The deployed Stage 2 API: documents in the body, a job id back.
DOC_ROUTE = {
    "name": "document", "types": [DOCUMENT_CLEANED],
    "path": "/api/v1/documents",
    "idempotency_key": "{{data.document_id}}",
    "body": {"document": "{{data}}"},
    "success_field": "success", "job_id_field": "job_id"}
BATCH_ROUTE = {
    "name": "batch", "types": [JOB_COMPLETED],
    "path": "/api/v1/documents/batch",
    "idempotency_key": "job:{{data.job_id}}",
    "documents_file": "{{data.output_location}}",
    "body": {"documents": "{{documents}}", "batch_id": "{{data.batch_id}}"},
    "success_field": "success", "job_id_field": "job_id"}
ROUTES = [DOC_ROUTE, BATCH_ROUTE]


def ids(n, prefix="doc-b"):
    return ["%s-%03d" % (prefix, i) for i in range(n)]


def sent_ids(req):
    return [d["document_id"] for d in req["json"]["documents"]]


def key(req):
    return req["headers"]["idempotency-key"]


def test_a_batch_sends_only_the_documents_not_already_triggered(env):
    """The issue's case: 100 documents in the file, 30 of them triggered
    one by one before; the batch request carries exactly the other 70."""
    docs = ids(100)
    path = env.write_documents("stage1/batch-100.jsonl", docs,
                               job_id="job-100", batch_id="batch-100")
    for d in docs[:30]:
        env.publisher.document_cleaned(d, "batch text", job_id="job-100",
                                       batch_id="batch-100")
    env.drain(routes=ROUTES)
    assert sorted(key(q) for q in env.requests()) == docs[:30]
    single = {r["document_id"]: r["remote_job_id"] for r in env.rows()}

    job = env.publisher.job_completed("job-100", "batch-100", 100,
                                      output_location=path)
    r = env.drain(routes=ROUTES, batch_mode=True)

    reqs = env.requests()[30:]
    assert len(reqs) == 1, reqs
    req = reqs[0]
    assert req["path"] == "/api/v1/documents/batch"
    # Only some of the file: the key names which documents it carries.
    assert re.fullmatch(r"job:job-100~[0-9a-f]{8}", key(req)), key(req)
    assert req["headers"]["ce-id"] == job.id
    assert sent_ids(req) == docs[30:]
    # The documents go as Stage 1 wrote them.
    assert req["json"]["documents"][0] == publish.document(
        docs[30], "batch text", job_id="job-100", batch_id="batch-100")
    assert req["json"]["batch_id"] == "batch-100"

    rows = {row["document_id"]: row for row in env.rows()}
    assert sorted(rows) == docs
    for d in docs:
        assert rows[d]["status"] == "triggered"
        assert rows[d]["attempts"] == 1, rows[d]
    for d in docs[:30]:           # untouched by the batch
        assert rows[d]["remote_job_id"] == single[d]
        assert rows[d]["event_type"] == DOCUMENT_CLEANED
    for d in docs[30:]:
        assert rows[d]["remote_job_id"] == req["response"]["job_id"]
        assert rows[d]["event_id"] == job.id
        assert rows[d]["job_id"] == "job-100"
    batch = [x for x in env.deliveries() if x["route"] == "batch"]
    assert [(x["idempotency_key"], x["documents"]) for x in batch] == \
        [(key(req), 70)]
    assert {rows[d]["last_delivery_id"] for d in docs[30:]} == \
        {batch[0]["delivery_id"]}
    assert r.log("event_triggered", event_id=job.id, documents=70,
                 skipped_documents=30)
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_the_same_job_event_again_sends_nothing(env):
    docs = ids(5)
    path = env.write_documents("stage1/again.jsonl", docs)
    env.publisher.job_completed("job-again", "b", output_location=path)
    env.drain(routes=ROUTES, batch_mode=True)
    assert len(env.requests()) == 1

    again = env.publisher.job_completed("job-again", "b",
                                        output_location=path)
    r = env.drain(routes=ROUTES, batch_mode=True)

    assert len(env.requests()) == 1
    assert r.log("event_duplicate", event_id=again.id,
                 reason="no_new_documents")
    assert env.pending() == 0


def test_max_batch_documents_splits_a_file_into_requests(env):
    docs = ids(25)
    path = env.write_documents("stage1/split.jsonl", docs)
    env.publisher.job_completed("job-split", "b", output_location=path)

    env.drain(routes=ROUTES, batch_mode=True, max_batch_documents=10)

    reqs = sorted(env.requests(), key=key)
    assert [key(q) for q in reqs] == \
        ["job:job-split#1/3", "job:job-split#2/3", "job:job-split#3/3"]
    assert [sent_ids(q) for q in reqs] == [docs[:10], docs[10:20], docs[20:]]
    by_key = {d["idempotency_key"]: d for d in env.deliveries()}
    assert {k: d["documents"] for k, d in by_key.items()} == \
        {"job:job-split#1/3": 10, "job:job-split#2/3": 10,
         "job:job-split#3/3": 5}
    rows = {row["document_id"]: row for row in env.rows()}
    for q in reqs:
        delivery = by_key[key(q)]
        for d in sent_ids(q):
            assert rows[d]["status"] == "triggered"
            assert rows[d]["last_delivery_id"] == delivery["delivery_id"]
            assert rows[d]["remote_job_id"] == q["response"]["job_id"]
    assert env.pending() == 0


def test_a_split_batch_retries_only_the_failed_request_under_its_key(env):
    docs = ids(25)
    path = env.write_documents("stage1/split-retry.jsonl", docs)
    env.mock.behaviour(status=503, count=1)      # one of the three fails
    env.publisher.job_completed("job-sr", "b", output_location=path)

    env.drain(routes=ROUTES, batch_mode=True, max_batch_documents=10,
              retry_delay_seconds=0.1, max_retry_delay_seconds=0.2)

    reqs = env.requests()
    assert len(reqs) == 4, [key(q) for q in reqs]
    by = {}
    for q in reqs:
        by.setdefault(key(q), []).append(sent_ids(q))
    assert sorted(by) == ["job:job-sr#1/3", "job:job-sr#2/3",
                          "job:job-sr#3/3"]
    (again,) = [k for k, v in by.items() if len(v) == 2]
    # The same request again: same key, same documents; the others
    # were not resent.
    assert by[again][0] == by[again][1]
    for row in env.rows():
        assert row["status"] == "triggered"
    assert env.pending() == 0


def test_a_transient_failure_retries_the_batch_with_the_same_key(env):
    docs = ids(4)
    path = env.write_documents("stage1/retry.jsonl", docs)
    env.mock.behaviour(status=503, count=1)
    env.publisher.job_completed("job-retry", "b", output_location=path)

    r = env.drain(routes=ROUTES, batch_mode=True, retry_delay_seconds=0.1,
                  max_retry_delay_seconds=0.2)

    reqs = env.requests()
    assert [key(q) for q in reqs] == ["job:job-retry"] * 2
    assert sent_ids(reqs[0]) == sent_ids(reqs[1]) == docs
    assert [(d["outcome"], d["documents"]) for d in env.deliveries()] == \
        [("transient", 4), ("success", 4)]
    for row in env.rows():
        assert row["status"] == "triggered"
        assert row["attempts"] == 2
    assert r.log("event_failed", reason="transient")
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_documents_another_consumer_holds_are_left_out(env):
    docs = ids(3)
    path = env.write_documents("stage1/busy.jsonl", docs)
    assert env.run("-c", env.write_config(), "ledger",
                   "migrate").returncode == EXIT_OK
    env.query("INSERT INTO stagerelay.processed_documents (consumer_group, "
              "document_id, status, claimed_by, lease_until) VALUES "
              "('stage2-nlp-processor', %s, 'claimed', 'other-1', "
              "now() + interval '10 minutes')", (docs[1],))
    env.publisher.job_completed("job-busy", "b", output_location=path)

    env.drain(routes=ROUTES, batch_mode=True)

    (req,) = env.requests()
    assert sent_ids(req) == [docs[0], docs[2]]
    assert key(req).startswith("job:job-busy~")
    # Owed by the other consumer's pending entry, not by this batch.
    assert env.row(docs[1])["status"] == "claimed"
    assert env.row(docs[1])["claimed_by"] == "other-1"
    assert env.pending() == 0


def test_documents_a_dead_consumer_claimed_for_this_entry_are_waited_for(
        env):
    """A consumer died holding this very entry (its claims are live); the
    sweeper hands the entry on. Nobody else owes those documents: the
    event waits for the leases to end instead of dropping them."""
    docs = ids(3)
    path = env.write_documents("stage1/mine.jsonl", docs)
    job = env.publisher.job_completed("job-mine", "b", output_location=path)
    assert env.run("-c", env.write_config(), "ledger",
                   "migrate").returncode == EXIT_OK
    for d in docs[1:]:
        env.query("INSERT INTO stagerelay.processed_documents "
                  "(consumer_group, document_id, status, claimed_by, "
                  "lease_until, stream_entry_id) VALUES "
                  "('stage2-nlp-processor', %s, 'claimed', 'gone-9', "
                  "now() + interval '2 seconds', %s)", (d, job.entry_id))

    r = env.drain(routes=ROUTES, batch_mode=True)

    (req,) = env.requests()
    assert key(req) == "job:job-mine"        # the whole file, once
    assert sent_ids(req) == docs
    assert r.log("event_retry_scheduled", event_id=job.id,
                 reason="claimed_by_another_consumer")
    for row in env.rows():
        assert row["status"] == "triggered"
    assert env.pending() == 0


def test_batch_mode_observes_documents_then_the_batch_sends_them(env):
    docs = ids(3)
    path = env.write_documents("stage1/observed.jsonl", docs)
    singles = [env.publisher.document_cleaned(d, "batch text")
               for d in docs]
    job = env.publisher.job_completed("job-obs", "b", output_location=path)

    r = env.drain(routes=ROUTES, batch_mode=True)

    (req,) = env.requests()
    assert key(req) == "job:job-obs"
    assert sent_ids(req) == docs
    for p in singles:
        assert r.log("event_observed", event_id=p.id,
                     reason="batch_mode_on")
    for row in env.rows():
        assert row["status"] == "triggered"
        assert row["event_id"] == job.id
    assert len(env.rows()) == 3      # one row per document, both modes


def test_an_empty_documents_file_sends_nothing(env):
    path = env.write_documents("stage1/empty.jsonl", [])
    job = env.publisher.job_completed("job-empty", "b", output_location=path)

    r = env.drain(routes=ROUTES, batch_mode=True)

    assert env.requests() == []
    assert r.log("event_filtered", event_id=job.id, reason="no_documents")
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_a_job_without_output_location_is_a_render_error(env):
    job = env.publisher.job_completed("job-x", "batch-x",
                                      output_location=None)

    r = env.drain(batch_mode=True)

    (dl,) = env.dead_letters()
    fields = dl[1]
    assert fields[b"dlq_reason"] == b"render_error"
    assert re.search(r"output_location", fields[b"dlq_detail"].decode())
    assert env.requests() == []
    assert r.log("event_dead_lettered", event_id=job.id,
                 reason="render_error")


# ---- files that must not be read ---------------------------------------

def outside_file(env):
    """A valid documents file outside shared_dir: if anything read it, its
    document would be triggered."""
    path = os.path.join(env.tmpdir, "outside", "docs.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"document_id": "doc-outside", "cleaned_text": "no"}\n')
    return path


def escape_relative(env):
    outside_file(env)
    return "stage1/../../outside/docs.jsonl", r'"\.\."'


def escape_dotdot_passwd(env):
    return "../../etc/passwd", r'"\.\."'


def escape_absolute(env):
    return outside_file(env), r"outside shared_dir"


def escape_symlink_file(env):
    link = os.path.join(env.shared, "stage1", "link.jsonl")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(outside_file(env), link)
    return link, r"outside shared_dir.*symbolic link"


def escape_symlink_dir(env):
    link = os.path.join(env.shared, "jobs")
    os.symlink(os.path.dirname(outside_file(env)), link)
    return "jobs/docs.jsonl", r"outside shared_dir.*symbolic link"


def not_regular_fifo(env):
    path = os.path.join(env.shared, "stage1", "fifo.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    return path, r"not a regular file"


def not_regular_dir(env):
    path = os.path.join(env.shared, "stage1", "dir.jsonl")
    os.makedirs(path)
    return path, r"not a regular file"


def missing(env):
    """Not there, and never comes: tried max_retries more times first."""
    return os.path.join(env.shared, "stage1", "nope.jsonl"), \
        r"No such file.*gave up after 4 tries"


def too_large(env):
    path = env.write_documents("stage1/large.jsonl", ids(40))
    return path, r"max_documents_file_bytes \(1024\)"


def bad_line(env):
    path = env.write_documents("stage1/bad.jsonl", ids(2))
    with open(path, "a") as f:
        f.write("{not json\n")
    return path, r"line 3: not one JSON value"


def no_document_id(env):
    path = env.write_documents("stage1/noid.jsonl", ids(1))
    with open(path, "a") as f:
        f.write('{"cleaned_text": "who am I"}\n')
    return path, r"line 2: document_id is missing"


REFUSED = [escape_relative, escape_dotdot_passwd, escape_absolute,
           escape_symlink_file, escape_symlink_dir, not_regular_fifo,
           not_regular_dir, missing, too_large, bad_line, no_document_id]


@pytest.mark.parametrize("case", REFUSED, ids=[c.__name__ for c in REFUSED])
def test_a_refused_documents_file_is_dead_lettered_and_nothing_sent(env,
                                                                    case):
    location, why = case(env)
    job = env.publisher.job_completed("job-bad", "b",
                                      output_location=location)
    after = env.publisher.document_cleaned("doc-after", "still flowing")

    r = env.drain(routes=ROUTES, batch_mode=True,
                  max_documents_file_bytes=1024, retry_delay_seconds=0.05,
                  max_retry_delay_seconds=0.1)

    (dl,) = env.dead_letters()
    fields = dl[1]
    assert fields[b"dlq_reason"] == b"documents_file"
    assert fields[b"dlq_source_id"] == job.entry_id.encode()
    detail = fields[b"dlq_detail"].decode()
    assert re.search(why, detail), detail
    assert env.requests() == []
    assert env.rows() == [] or [row["document_id"] for row in env.rows()] \
        == ["doc-after"]
    assert r.log("event_dead_lettered", event_id=job.id,
                 reason="documents_file")
    assert r.log("event_observed", event_id=after.id)
    assert env.pending() == 0


def test_a_documents_file_that_appears_late_is_waited_for(env):
    """Stage 1's event can overtake its file (NFS, a rename into place):
    the event is tried again, not dead-lettered."""
    docs = ids(2)
    path = os.path.join(env.shared, "stage1", "late.jsonl")
    job = env.publisher.job_completed("job-late", "b", output_location=path)
    d = env.start(routes=ROUTES, batch_mode=True, retry_delay_seconds=0.5,
                  max_retry_delay_seconds=1, max_retries=20)
    d.wait_log("event_deferred", timeout=10, event_id=job.id,
               reason="documents_file_unavailable")
    assert env.requests() == []
    env.write_documents("stage1/late.jsonl", docs)

    wait_until(lambda: len(env.requests()) == 1, timeout=15,
               what="the batch sent once the file is there")
    assert sent_ids(env.requests()[0]) == docs
    wait_until(lambda: env.pending() == 0, what="acknowledged")
    assert env.dead_letters() == []
    assert d.stop() == EXIT_OK


def test_documents_file_relative_to_shared_dir_and_symlinks_inside(env):
    """A relative path is taken from shared_dir; a symbolic link that stays
    inside it is followed."""
    docs = ids(2)
    env.write_documents("real/docs.jsonl", docs)
    os.symlink(os.path.join(env.shared, "real"),
               os.path.join(env.shared, "alias"))
    env.publisher.job_completed("job-rel", "b",
                                output_location="alias/docs.jsonl")

    env.drain(routes=ROUTES, batch_mode=True)

    (req,) = env.requests()
    assert sent_ids(req) == docs
    wait_until(lambda: env.pending() == 0, what="acknowledged")
