"""Chaining stages: two stagerelay instances, one after the other.

    Stage 1 events (flat layout) -> stage1:cleaning:events
      -> instance A (group stage2-nlp-processor) -> the mock NLP API,
         which announces each result as Stage 2 does: one field "event"
         holding the JSON CloudEvent, on stage2:nlp:events
      -> instance B (group stage3-embeddings, started from
         etc/examples/stage3-embeddings.yaml with this test's addresses)
      -> a second mock, the embeddings API.

What a user observes: every document reaches the embeddings API, under its
document id as Idempotency-Key and with the NLP job id Stage 2 answered;
both groups' rows in the one ledger schema are triggered; nothing pending
in either group; no dead letters. A document Stage 2 announces twice is
sent once (ledger dedup), and a worker of B killed while its request is in
flight is respawned and finishes the job, re-sending only what was in
flight, under the same key.
"""

import os
import signal
import time

import yaml

import mock_nlp
import servers
from conftest import DLQ, GROUP, SRCDIR, STREAM, wait_until

EXAMPLE = os.path.join(SRCDIR, "etc", "examples", "stage3-embeddings.yaml")
STAGE2_STREAM = "stage2:nlp:events"
STAGE3_GROUP = "stage3-embeddings"
STAGE3_DLQ = "stage3:embeddings:failed-events"
STAGE3_CONSUMER = "stage3-itest"
EMBED_PATH = "/api/v1/embeddings"
NLP_PATH = "/api/v2/nlp/process"        # A's default document route


def stage3_config(env, embeddings):
    """The shipped example, with only where things are replaced."""
    with open(EXAMPLE) as f:
        doc = yaml.safe_load(f)
    ec = doc["event_consumer"]
    # The example's own stream, layout, group and routes are kept as is.
    assert ec["source_stream"] == STAGE2_STREAM
    assert ec["event_field"] == "event"
    assert ec["consumer_group"] == STAGE3_GROUP
    assert ec["dead_letter_stream"] == STAGE3_DLQ
    assert ec["ledger"]["schema"] == "stagerelay"
    for key in ("redis_host", "redis_port", "redis_db", "consumer_name",
                "shared_dir"):
        assert key in ec, key
    ec.update(redis_host="127.0.0.1", redis_port=env.redis_server.port,
              redis_db=0, consumer_name=STAGE3_CONSUMER,
              shared_dir=env.shared)
    ec["nlp_api"]["base_url"] = embeddings.url
    ec["ledger"]["dsn"] = env.dsn
    ec["metrics"]["listen"] = ""
    return env.write_config(text=yaml.safe_dump(doc, sort_keys=False),
                            name="stage3.yaml")


def requests_by_key(reqs):
    out = {}
    for r in reqs:
        out.setdefault(r["headers"].get("idempotency-key"), []).append(r)
    return out


def group_rows(env, group):
    return {r["document_id"]: r for r in
            env.rows("consumer_group = %s", (group,))}


def test_chain_stage1_to_stage3(env):
    docs = ["doc-%03d" % i for i in range(40)]
    first, second = docs[:20], docs[20:]
    repeated, stalled = "doc-007", "doc-025"
    embeddings = servers.MockNLP("thread").start()
    try:
        # Stage 2's API announces its results on the next stream.
        env.mock.publish(STAGE2_STREAM, env.redis_server.port,
                         repeat=[repeated])
        a = env.start(concurrent_tasks=2)
        b = env.start(config=stage3_config(env, embeddings))
        wait_until(lambda: STAGE3_GROUP in env.groups(STAGE2_STREAM),
                   what="B's group on " + STAGE2_STREAM)
        wait_until(lambda: len(b.worker_pids()) == 2,
                   what="B's two workers (the example's concurrent_tasks)")

        # -- first half, with one document announced twice --
        for d in first:
            env.publisher.document_cleaned(d, "text of %s" % d)
        wait_until(lambda: len(env.mock.announced()) == len(first) + 1,
                   what="Stage 2 announcing the first half")
        wait_until(lambda: sorted(
            k for k, r in group_rows(env, STAGE3_GROUP).items()
            if r["status"] == "triggered") == first and
            env.pending(STAGE2_STREAM, STAGE3_GROUP) == 0,
            timeout=20, what="B triggering the first half")
        assert [n["key"] for n in env.mock.announced()].count(repeated) == 2
        b.wait_log("event_duplicate", document_id=repeated)
        got = requests_by_key(embeddings.requests())
        assert sorted(got) == first
        for d in first:
            assert len(got[d]) == 1, (d, got[d])

        # -- second half: kill a B worker while its request is in flight --
        embeddings.rules([{"match": stalled, "delay_ms": 3000, "count": 1}])
        for d in second:
            env.publisher.document_cleaned(d, "text of %s" % d)
        wait_until(lambda: stalled in requests_by_key(embeddings.requests()),
                   timeout=20, what="the stalled request at the API")
        holder = group_rows(env, STAGE3_GROUP)[stalled]
        assert holder["status"] == "claimed", holder
        slot = int(holder["claimed_by"].rsplit("-", 1)[1])
        victim = b.worker_pids()[slot]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        b.wait_log("worker_exited", pid=victim)

        wait_until(lambda: sorted(
            k for k, r in group_rows(env, STAGE3_GROUP).items()
            if r["status"] == "triggered") == docs and
            env.pending(STAGE2_STREAM, STAGE3_GROUP) == 0,
            timeout=25, what="B triggering every document")
        assert slot in b.worker_pids() and b.worker_pids()[slot] != victim

        # -- batch.completed: recorded, nothing sent (batch_mode false) --
        env.mock.announce(mock_nlp.BATCH_COMPLETED,
                          {"batch_id": "batch-chain", "job_id": "nlp-j",
                           "documents_processed": len(docs),
                           "documents_failed": 0, "document_ids": docs,
                           "output_location": "stage2/batch-chain.jsonl"})
        wait_until(lambda: env.row_status("batch:batch-chain") == "observed",
                   what="batch.completed observed by B")

        # What the embeddings API saw: every document, under its id;
        # twice only for what was in flight at the kill, same key.
        reqs = embeddings.requests()
        assert all(r["path"] == EMBED_PATH for r in reqs), \
            [r["path"] for r in reqs]
        got = requests_by_key(reqs)
        assert sorted(got) == docs
        assert len(got[stalled]) == 2, got[stalled]
        for d in docs:
            assert len(got[d]) <= 2, (d, len(got[d]))
            if len(got[d]) == 2:
                assert d in second and got[d][0]["time"] < killed_at, d
        # ... carrying the NLP job id Stage 2 answered for the document.
        nlp_job = {r["json"]["document_id"]: r["response"]["job_id"]
                   for r in env.mock.requests() if r["path"] == NLP_PATH}
        assert sorted(nlp_job) == docs
        announced = env.mock.announced()
        for d in docs:
            events = {n["event_id"] for n in announced if n["key"] == d}
            for r in got[d]:
                assert r["json"]["document_id"] == d
                assert r["json"]["nlp_job_id"] == nlp_job[d], r["json"]
                assert r["json"]["source_event_id"] in events, r["json"]

        # The ledger: one schema, a row per document in each group.
        for group in (GROUP, STAGE3_GROUP):
            rows = group_rows(env, group)
            docs_rows = {k: v for k, v in rows.items()
                         if not k.startswith("batch:")}
            assert sorted(docs_rows) == docs, group
            assert {r["status"] for r in docs_rows.values()} == \
                {"triggered"}, group
        assert group_rows(env, STAGE3_GROUP)["batch:batch-chain"][
            "status"] == "observed"
        assert env.pending(STREAM, GROUP) == 0
        assert env.pending(STAGE2_STREAM, STAGE3_GROUP) == 0
        assert env.dead_letters(DLQ) == []
        assert env.dead_letters(STAGE3_DLQ) == []
        assert not [n for n in announced if "error" in n]

        assert b.stop() == 0
        assert a.stop() == 0
    finally:
        embeddings.stop()
