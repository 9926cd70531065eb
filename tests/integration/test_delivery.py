"""Delivery guarantees (DESIGN.md §3), end to end: retries with backoff,
the circuit breaker, the retry schedule across restarts, the XAUTOCLAIM
sweeper, lost and poison entries, retiring consumers of vanished slots,
ledger leases, and reconnecting to Redis and PostgreSQL.

Delivery counts and idle times are fabricated with plain Redis commands
(a "ghost" consumer reads entries with XREADGROUP, XCLAIM ... RETRYCOUNT
sets how often they count as delivered), exactly what a crashed consumer
would have left behind. Every test asserts what an operator observes:
requests at the API (their Idempotency-Key and order), ledger rows,
XPENDING, the dead-letter stream, exit statuses and log lines.
"""

import re
import time

import pytest
import redis

from conftest import (CONSUMER, EXIT_OK, EXIT_PENDING, GROUP, STREAM,
                      WORKER, wait_until)
from test_pipeline import DLQ_FIELDS, RFC3339, assert_dead_letter, b

# Small timings: every wait below is bounded by a generous wait_until.
FAST = {
    "retry_delay_seconds": 0.05,
    "max_retry_delay_seconds": 2,
    "max_retries": 5,
    "claim_idle_ms": 1000,
    "claim_interval_ms": 200,
    "max_deliveries": 3,
    "circuit_breaker": {"failure_threshold": 1000, "open_seconds": 1},
}
SLOW = 30.0         # wait_until timeout for anything the daemon must do


def cfg(**over):
    """FAST merged with over (one level deep for nested dicts)."""
    out = dict(FAST)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = dict(out[k], **v)
        else:
            out[k] = v
    return out


# ---- observing -------------------------------------------------------------

def keys(reqs):
    """The Idempotency-Key of each request, in arrival order."""
    return [r["headers"].get("idempotency-key") for r in reqs]


def reqs_for(env, key):
    return [r for r in env.requests()
            if r["headers"].get("idempotency-key") == key]


def xpending(env, consumer=None):
    """{entry id: (consumer, idle ms, times delivered)} of the group."""
    kw = {"consumername": consumer} if consumer else {}
    try:
        rows = env.redis.xpending_range(STREAM, GROUP, "-", "+", 10000, **kw)
    except redis.exceptions.ResponseError:
        return {}
    return {p["message_id"].decode(): (p["consumer"].decode(),
                                       p["time_since_delivered"],
                                       p["times_delivered"]) for p in rows}


def consumers(env):
    """{consumer name: pending count} (XINFO CONSUMERS)."""
    try:
        return {c["name"].decode(): c["pending"]
                for c in env.redis.xinfo_consumers(STREAM, GROUP)}
    except redis.exceptions.ResponseError:
        return {}


def dlq_by_source(env):
    """Dead-letter entries by dlq_source_id."""
    return {f[b"dlq_source_id"].decode(): (i, f)
            for i, f in env.dead_letters()}


# ---- fabricating what other consumers left behind -------------------------

def create_group(env):
    env.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)


def read_as(env, consumer, count=100):
    """XREADGROUP as consumer: the entries become its pending entries
    (delivered once). Returns their ids."""
    got = env.redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)
    return [i.decode() for _, entries in got for i, _ in entries]


def set_delivered(env, consumer, entry_id, times, idle_ms=None):
    """XCLAIM ... RETRYCOUNT: entry_id is pending for consumer, delivered
    `times` times (and idle for idle_ms)."""
    args = ["XCLAIM", STREAM, GROUP, consumer, "0", entry_id,
            "RETRYCOUNT", str(times)]
    if idle_ms is not None:
        args += ["IDLE", str(idle_ms)]
    assert env.redis.execute_command(*args), "XCLAIM %s failed" % entry_id


def migrate(env, config):
    r = env.run("-c", config, "ledger", "migrate")
    assert r.returncode == EXIT_OK, r


def insert_claim(env, doc, claimed_by, lease_seconds):
    """A processed_documents row claimed by another consumer, its lease
    ending lease_seconds from now (negative: already over). Returns
    lease_until as epoch seconds."""
    row = env.query(
        "INSERT INTO stagerelay.processed_documents "
        "(consumer_group, document_id, status, claimed_by, lease_until) "
        "VALUES (%s, %s, 'claimed', %s, "
        "now() + make_interval(secs => %s)) "
        "RETURNING extract(epoch FROM lease_until)::float8 AS t",
        (GROUP, doc, claimed_by, lease_seconds))
    return row[0]["t"]


# ---- retries --------------------------------------------------------------

@pytest.mark.parametrize("failure", ["500", "503", "429", "408", "timeout"])
def test_transient_failure_is_retried_with_the_same_key(env, failure):
    if failure == "timeout":
        env.mock.behaviour(delay_ms=1500, count=1)
        over = {"nlp_api": {"timeout_ms": 300}}
    else:
        env.mock.behaviour(status=int(failure), success=False, count=1)
        over = {}
    pub = env.publisher.document_cleaned("doc-t", "transient")

    r = env.drain(**cfg(**over))

    reqs = env.requests()
    assert keys(reqs) == ["doc-t", "doc-t"]
    assert reqs[0]["headers"]["ce-id"] == reqs[1]["headers"]["ce-id"] \
        == pub.id
    row = env.row("doc-t")
    assert row["status"] == "triggered"
    assert row["attempts"] == 2
    assert row["retries"] == 1
    assert row["retry_at"] is None
    assert row["last_error"] is None
    assert row["remote_job_id"] == reqs[1]["response"]["job_id"]
    failed = r.log("event_failed", document_id="doc-t")
    assert len(failed) == 1, r
    assert failed[0]["reason"] == "transient"
    if failure != "timeout":
        assert failed[0]["http_status"] == failure
    assert 0 <= int(failed[0]["retry_in_ms"]) <= 50
    assert [d["outcome"] for d in env.deliveries()] == \
        ["transient", "success"]
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_backoff_is_capped_exponential_full_jitter(env):
    """Retry n waits uniform in [0, min(max, base * 2^(n-1))]: every
    logged wait lies under its ceiling, the waits spread over the whole
    range (full jitter, not "equal jitter" in [ceiling/2, ceiling]), and
    the next request really comes no sooner than planned."""
    env.mock.behaviour(status=503, success=False)
    docs = ["doc-b%d" % i for i in range(8)]
    for doc in docs:
        env.publisher.document_cleaned(doc, "backoff")

    r = env.drain(**cfg(retry_delay_seconds=0.1,
                        max_retry_delay_seconds=0.3, max_retries=3))

    reqs = env.requests()
    assert sorted(keys(reqs)) == sorted(docs * 4)
    ratios = []
    for doc in docs:
        failed = r.log("event_failed", document_id=doc)
        assert [f["attempts"] for f in failed] == ["1", "2", "3"], str(r)
        waits = [int(f["retry_in_ms"]) for f in failed]
        for n, (wait, ceiling) in enumerate(zip(waits, [100, 200, 300]), 1):
            assert 0 <= wait <= ceiling, \
                "%s: retry %d planned in %d ms, ceiling %d ms" % (
                    doc, n, wait, ceiling)
            ratios.append(wait / ceiling)
        times = [x["time"] for x in reqs
                 if x["headers"]["idempotency-key"] == doc]
        for n in range(3):
            gap = times[n + 1] - times[n]
            assert gap >= waits[n] / 1000.0 - 0.02, \
                "%s: retry %d came %.3f s after the failure, planned " \
                "%d ms" % (doc, n + 1, gap, waits[n])
        row = env.row(doc)
        assert (row["status"], row["attempts"], row["retries"]) == \
            ("dead", 4, 3)
    assert min(ratios) < 0.5 < max(ratios), ratios
    assert len(set(ratios)) > 1, ratios
    assert len(env.dead_letters()) == 8


def test_retries_exhausted_dead_letters_the_entry(env):
    env.mock.behaviour(status=500, success=False)
    pub = env.publisher.document_cleaned("doc-x", "always failing")

    r = env.drain(**cfg(max_retries=2))

    assert keys(env.requests()) == ["doc-x"] * 3
    row = env.row("doc-x")
    assert row["status"] == "dead"
    assert row["attempts"] == 3
    assert row["retries"] == 2
    assert row["retry_at"] is None
    assert row["http_status"] == 500
    assert row["last_error"]
    dl = env.dead_letters()
    assert len(dl) == 1
    fields = assert_dead_letter(dl[0], pub, "retries_exhausted")
    assert fields[b"dlq_attempts"] == b"3"
    assert fields[b"dlq_http_status"] == b"500"
    assert b"max_retries 2" in fields[b"dlq_detail"], fields
    # Each request's own outcome, the last one included.
    assert [d["outcome"] for d in env.deliveries()] == ["transient"] * 3
    assert env.pending() == 0
    assert len(r.log("event_dead_lettered", document_id="doc-x",
                     reason="retries_exhausted")) == 1, r


def test_connection_refused_is_transient(env):
    """No API listening at all: retried, then retries_exhausted."""
    import servers
    port = servers.free_port()
    pub = env.publisher.document_cleaned("doc-c", "nobody listens")

    r = env.drain(**cfg(max_retries=1, nlp_api={
        "base_url": "http://127.0.0.1:%d" % port}))

    assert len(r.log("event_failed", document_id="doc-c")) == 1, r
    row = env.row("doc-c")
    assert (row["status"], row["attempts"], row["retries"]) == \
        ("dead", 2, 1)
    assert row["http_status"] is None
    fields = assert_dead_letter(env.dead_letters()[0], pub,
                                "retries_exhausted")
    assert fields[b"dlq_attempts"] == b"2"
    assert env.pending() == 0


def test_retry_after_is_a_floor_and_a_drain_waits_for_it(env):
    env.mock.behaviour(status=503, success=False, retry_after=1, count=1)
    env.publisher.document_cleaned("doc-ra", "come back later")

    r = env.drain(**cfg(retry_delay_seconds=0.05))

    reqs = env.requests()
    assert keys(reqs) == ["doc-ra", "doc-ra"]
    assert reqs[1]["time"] - reqs[0]["time"] >= 0.95, reqs
    failed = r.log("event_failed", document_id="doc-ra")
    assert [f["retry_in_ms"] for f in failed] == ["1000"], r
    assert env.row("doc-ra")["status"] == "triggered"
    assert env.pending() == 0


def test_retry_after_is_capped_by_max_retry_delay(env):
    env.mock.behaviour(status=429, success=False, retry_after=3600, count=1)
    env.publisher.document_cleaned("doc-cap", "not an hour")

    r = env.drain(**cfg(max_retry_delay_seconds=0.5))

    failed = r.log("event_failed", document_id="doc-cap")
    assert [f["retry_in_ms"] for f in failed] == ["500"], r
    reqs = env.requests()
    assert keys(reqs) == ["doc-cap", "doc-cap"]
    assert reqs[1]["time"] - reqs[0]["time"] >= 0.45
    assert env.row("doc-cap")["status"] == "triggered"


def test_a_waiting_retry_blocks_nothing_and_keeps_its_claim(env):
    """While doc-slow waits 4 s for its retry, new entries are triggered,
    and its claim is refreshed (idle time reset, delivery count kept), so
    the other worker's sweeper (claim_idle_ms 1 s) never takes it."""
    env.mock.behaviour(status=503, success=False, retry_after=4, count=1)
    d = env.start(args=["-w", "2"], **cfg(max_retry_delay_seconds=5))
    slow = env.publisher.document_cleaned("doc-slow", "waits")
    failed = d.wait_log("event_failed", document_id="doc-slow",
                        timeout=SLOW)
    owner = failed["consumer"]

    row = env.row("doc-slow")
    assert row["status"] == "failed"
    assert (row["attempts"], row["retries"]) == (1, 1)
    assert row["retry_at"] is not None and \
        row["retry_at"] > row["updated_at"]
    assert row["last_error"]

    fast = [env.publisher.document_cleaned("doc-fast-%d" % i, "new")
            for i in range(3)]
    wait_until(lambda: all(env.row_status(p.data["document_id"]) ==
                           "triggered" for p in fast), timeout=SLOW,
               what="new entries triggered while doc-slow waits")
    # Sample the held entry for over claim_idle_ms.
    samples = []
    while env.row_status("doc-slow") == "failed":
        p = xpending(env).get(slow.entry_id)
        if p is not None:
            samples.append(p + (time.monotonic(),))
        time.sleep(0.1)
    wait_until(lambda: env.row_status("doc-slow") == "triggered",
               timeout=SLOW, what="doc-slow triggered")
    assert samples[-1][3] - samples[0][3] >= 1.5, \
        "sampled for less than claim_idle_ms + 0.5 s: %r" % samples
    assert {s[0] for s in samples} == {owner}, samples
    assert {s[2] for s in samples} == {1}, samples
    assert max(s[1] for s in samples) < 1000, \
        "held entry went idle for %d ms: its claim was not refreshed" % \
        max(s[1] for s in samples)

    ks = keys(env.requests())
    assert ks[0] == "doc-slow" and ks[-1] == "doc-slow", ks
    assert sorted(ks[1:-1]) == ["doc-fast-0", "doc-fast-1", "doc-fast-2"]
    assert d.log("entries_reclaimed") == [], d.stderr
    wait_until(lambda: env.pending() == 0, timeout=SLOW, what="all acked")
    assert d.stop() == EXIT_OK


# ---- the circuit breaker --------------------------------------------------

def test_circuit_opens_probes_and_closes(env):
    env.mock.behaviour(status=503, success=False)
    first = [env.publisher.document_cleaned("doc-o%d" % i, "outage")
             for i in range(5)]
    d = env.start(**cfg(max_retries=1, circuit_breaker={
        "failure_threshold": 3, "open_seconds": 1}))
    opened = d.wait_log("circuit_opened", timeout=SLOW)
    assert opened["consecutive_failures"] == "3"
    later = [env.publisher.document_cleaned("doc-n%d" % i, "queued")
             for i in range(3)]
    # Two probes fail: each reopens the circuit, none uses up a retry.
    wait_until(lambda: len(d.log("circuit_opened")) >= 3, timeout=SLOW,
               what="two failed probes")
    assert d.log("circuit_closed") == []
    assert env.dead_letters() == [], "an outage filled the dead-letter stream"
    assert env.pending() == 5, "entries were read while the circuit was open"
    assert set(xpending(env)) == {p.entry_id for p in first}

    env.mock.behaviour(status=202)      # the API is back
    d.wait_log("circuit_closed", timeout=SLOW)
    wait_until(lambda: env.pending() == 0 and
               len(env.rows("status = 'triggered'")) == 8,
               timeout=SLOW, what="everything triggered")

    reqs = env.requests()
    failing = [r for r in reqs if r["response"]["status"] == 503]
    # Five from the first batch, then only probes, one per open period.
    assert sorted(keys(failing[:5])) == ["doc-o%d" % i for i in range(5)]
    probes = failing[5:]
    assert len(probes) >= 2
    for a, c in zip(probes, probes[1:]):
        assert c["time"] - a["time"] >= 0.9, \
            "probes %.3f s apart with open_seconds 1" % (c["time"] - a["time"])
    assert len(d.log("circuit_half_open")) >= len(probes)
    # The new entries were read only after the circuit closed.
    first_new = min(i for i, k in enumerate(keys(reqs)) if k.startswith(
        "doc-n"))
    assert all(r["response"]["status"] != 503 for r in reqs[first_new:])
    for p in first:
        doc = p.data["document_id"]
        row = env.row(doc)
        assert row["status"] == "triggered"
        assert row["retries"] == 1, "probe failures counted: %r" % row
        assert row["attempts"] == len(reqs_for(env, doc))
    for p in later:
        assert env.row(p.data["document_id"])["attempts"] == 1
    assert env.dead_letters() == []
    assert d.stop() == EXIT_OK


def test_circuit_open_ends_a_drain_run_with_entries_pending(env):
    env.mock.behaviour(status=503, success=False)
    pubs = [env.publisher.document_cleaned("doc-d%d" % i, "outage")
            for i in range(3)]
    env.publisher.document_cleaned("doc-unread", "after the batch")

    r = env.drain(expect=EXIT_PENDING, **cfg(batch_size=3, circuit_breaker={
        "failure_threshold": 2, "open_seconds": 1}))

    assert len(r.log("circuit_opened")) == 1, r
    assert sorted(keys(env.requests())) == ["doc-d0", "doc-d1", "doc-d2"]
    assert set(xpending(env)) == {p.entry_id for p in pubs}
    for p in pubs:
        row = env.row(p.data["document_id"])
        assert row["status"] == "failed"
        assert row["retry_at"] is not None
        assert (row["attempts"], row["retries"]) == (1, 1)
    assert env.row_status("doc-unread") is None
    assert env.dead_letters() == []
    assert r.log("worker_stopped", pending="3"), r


def test_retry_schedule_survives_a_restart(env):
    env.mock.behaviour(status=503, success=False, retry_after=3, count=1)
    pub = env.publisher.document_cleaned("doc-r", "restart me")
    config = env.write_config(**cfg(max_retry_delay_seconds=10))
    d = env.start(config)
    d.wait_log("event_failed", document_id="doc-r", timeout=SLOW)
    assert d.stop() == EXIT_OK
    due = env.query("SELECT extract(epoch FROM retry_at)::float8 AS t, "
                    "status FROM stagerelay.processed_documents "
                    "WHERE document_id = 'doc-r'")[0]
    assert due["status"] == "failed"
    assert set(xpending(env)) == {pub.entry_id}

    r = env.drain(config)

    waits = r.log("event_retry_scheduled", document_id="doc-r",
                  reason="retry_not_due")
    assert waits, r
    reqs = env.requests()
    assert keys(reqs) == ["doc-r", "doc-r"]
    assert reqs[1]["time"] >= due["t"] - 0.05, \
        "retried %.3f s before its retry_at" % (due["t"] - reqs[1]["time"])
    row = env.row("doc-r")
    assert (row["status"], row["attempts"], row["retries"]) == \
        ("triggered", 2, 1)
    assert env.pending() == 0


# ---- the sweeper: reclaimed, lost and poison entries ----------------------

def test_sweeper_reclaims_entries_a_dead_consumer_left(env):
    create_group(env)
    pubs = [env.publisher.document_cleaned("doc-g%d" % i, "orphan")
            for i in range(3)]
    assert read_as(env, "ghost-7") == [p.entry_id for p in pubs]

    d = env.start(**cfg())
    rec = d.wait_log("entries_reclaimed", timeout=SLOW)
    assert rec["count"] == "3"
    assert rec["first_id"] == pubs[0].entry_id
    assert rec["last_id"] == pubs[2].entry_id
    assert rec["consumer"] == WORKER
    wait_until(lambda: env.pending() == 0, timeout=SLOW, what="all acked")

    assert sorted(keys(env.requests())) == ["doc-g0", "doc-g1", "doc-g2"]
    for p in pubs:
        row = env.row(p.data["document_id"])
        assert row["status"] == "triggered"
        assert row["claimed_by"] == WORKER
        assert row["stream_entry_id"] == p.entry_id
    # Not a slot of ours: never removed, even with nothing pending.
    assert consumers(env).get("ghost-7") == 0
    assert env.dead_letters() == []
    assert d.stop() == EXIT_OK


def test_entries_deleted_while_pending_are_dead_lettered_as_lost(env):
    create_group(env)
    gone = env.publisher.document_cleaned("doc-gone", "trimmed away")
    env.publisher.document_cleaned("doc-kept", "still there")
    read_as(env, "ghost-7")
    assert env.redis.xdel(STREAM, gone.entry_id) == 1

    d = env.start(**cfg())
    lost = d.wait_log("entry_lost", timeout=SLOW)
    assert lost["entry_id"] == gone.entry_id
    wait_until(lambda: env.row_status("doc-kept") == "triggered",
               timeout=SLOW, what="doc-kept triggered")
    wait_until(lambda: env.pending() == 0, timeout=SLOW, what="PEL empty")

    dls = dlq_by_source(env)
    assert list(dls) == [gone.entry_id]
    _, fields = dls[gone.entry_id]
    assert fields[b"dlq_reason"] == b"lost"
    assert fields[b"dlq_source_stream"] == b(STREAM)
    assert fields[b"dlq_consumer"] == b(WORKER)
    assert RFC3339.match(fields[b"dlq_failed_at"].decode())
    assert not set(fields) - set(DLQ_FIELDS), \
        "a lost entry has no original fields: %r" % fields
    assert keys(env.requests()) == ["doc-kept"]
    assert env.row_status("doc-gone") is None
    assert d.stop() == EXIT_OK


def test_entry_deleted_from_our_own_pending_list_is_noted_as_lost(env):
    """The predecessor with our name died holding an entry that was then
    trimmed: the restart must not forget it silently."""
    create_group(env)
    gone = env.publisher.document_cleaned("doc-own-gone", "trimmed away")
    kept = env.publisher.document_cleaned("doc-own-kept", "still there")
    assert read_as(env, WORKER) == [gone.entry_id, kept.entry_id]
    env.redis.xdel(STREAM, gone.entry_id)

    r = env.drain(**cfg())

    assert keys(env.requests()) == ["doc-own-kept"]
    assert env.pending() == 0
    assert [e["entry_id"] for e in r.log("entry_lost")] == \
        [gone.entry_id], str(r)
    assert list(dlq_by_source(env)) == [gone.entry_id]
    assert dlq_by_source(env)[gone.entry_id][1][b"dlq_reason"] == b"lost"
    assert env.row("doc-own-kept")["stream_entry_id"] == kept.entry_id


def test_poison_in_own_pending_list_at_start(env):
    """max_deliveries 3. Left pending for our own name: A delivered 3
    times (poison: dead-lettered unprocessed), B twice (a suspect:
    processed, alone), C once (processed first, with the batch)."""
    create_group(env)
    a = env.publisher.document_cleaned("doc-A", "kills its worker")
    bb = env.publisher.document_cleaned("doc-B", "delivered twice")
    c = env.publisher.document_cleaned("doc-C", "delivered once")
    assert read_as(env, WORKER) == [a.entry_id, bb.entry_id, c.entry_id]
    set_delivered(env, WORKER, a.entry_id, 3)
    set_delivered(env, WORKER, bb.entry_id, 2)
    env.publisher.document_cleaned("doc-new", "never read before")

    r = env.drain(**cfg(max_deliveries=3))

    assert keys(env.requests()) == ["doc-C", "doc-B", "doc-new"]
    dls = env.dead_letters()
    assert len(dls) == 1
    fields = assert_dead_letter(dls[0], a, "poison")
    m = re.search(rb"delivered (\d+) times", fields[b"dlq_detail"])
    assert m and int(m.group(1)) >= 3, fields[b"dlq_detail"]
    assert b"max_deliveries 3" in fields[b"dlq_detail"]
    row = env.row("doc-A")
    assert row["status"] == "dead"
    assert row["attempts"] == 0
    assert row["last_error"].startswith("poison"), row
    for doc in ("doc-B", "doc-C", "doc-new"):
        assert env.row(doc)["status"] == "triggered"
    assert len(r.log("event_dead_lettered", reason="poison",
                     entry_id=a.entry_id)) == 1, r
    assert env.pending() == 0


def test_poison_among_reclaimed_entries(env):
    """XAUTOCLAIM counts a delivery: an entry delivered max_deliveries
    times before is poison; one delivered max_deliveries - 1 times is not."""
    create_group(env)
    bad = env.publisher.document_cleaned("doc-bad", "poison")
    edge = env.publisher.document_cleaned("doc-edge", "one left")
    env.publisher.document_cleaned("doc-ok", "fine")
    read_as(env, "ghost-7")
    set_delivered(env, "ghost-7", bad.entry_id, 3, idle_ms=5000)
    set_delivered(env, "ghost-7", edge.entry_id, 2, idle_ms=5000)

    d = env.start(**cfg(max_deliveries=3))
    wait_until(lambda: env.pending() == 0, timeout=SLOW, what="PEL empty")
    wait_until(lambda: env.row_status("doc-bad") == "dead", timeout=SLOW,
               what="doc-bad marked dead")

    assert sorted(keys(env.requests())) == ["doc-edge", "doc-ok"]
    dls = env.dead_letters()
    assert len(dls) == 1
    fields = assert_dead_letter(dls[0], bad, "poison")
    assert b"delivered 4 times" in fields[b"dlq_detail"], fields
    row = env.row("doc-bad")
    assert row["last_error"].startswith("poison"), row
    assert row["attempts"] == 0
    assert env.row_status("doc-edge") == "triggered"
    assert env.row_status("doc-ok") == "triggered"
    assert d.stop() == EXIT_OK


# ---- consumers of vanished slots --------------------------------------------

def test_consumers_of_vanished_slots_are_removed(env):
    """-w 1: itest-2 (idle, nothing pending) goes; itest-3 goes only after
    the sweeper took its pending entry; other names stay."""
    create_group(env)
    for name in ("%s-2" % CONSUMER, "ghost-7", "%s-2b" % CONSUMER):
        env.redis.execute_command("XGROUP", "CREATECONSUMER", STREAM, GROUP,
                                  name)
    held = env.publisher.document_cleaned("doc-held", "slot 3 had it")
    assert read_as(env, "%s-3" % CONSUMER) == [held.entry_id]

    d = env.start(args=["-w", "1"], **cfg())
    d.wait_log("consumer_removed", name="%s-2" % CONSUMER, timeout=SLOW)
    d.wait_log("consumer_removed", name="%s-3" % CONSUMER, timeout=SLOW)

    assert [r["reason"] for r in d.log("consumer_removed")] == \
        ["slot_gone", "slot_gone"]
    # itest-3 was removed only once its entry had been taken and done.
    assert keys(env.requests()) == ["doc-held"]
    assert env.row("doc-held")["claimed_by"] == WORKER
    msgs = [(r["msg"], r.get("name")) for r in d.logs]
    assert msgs.index(("entries_reclaimed", None)) < \
        msgs.index(("consumer_removed", "%s-3" % CONSUMER))
    # Several more sweeps, all names idle > claim_idle_ms: the other
    # names are never removed.
    time.sleep(1.5)
    assert sorted(consumers(env)) == sorted(["ghost-7", "%s-2b" % CONSUMER,
                                             WORKER])
    assert env.pending() == 0
    assert d.stop() == EXIT_OK


# ---- ledger leases --------------------------------------------------------

def test_live_lease_of_another_consumer_is_waited_for(env):
    config = env.write_config(**cfg(retry_delay_seconds=0.05))
    migrate(env, config)
    lease_live = insert_claim(env, "doc-live", "other-7", 3.5)
    insert_claim(env, "doc-expired", "other-8", -1)
    env.publisher.document_cleaned("doc-live", "leased")
    env.publisher.document_cleaned("doc-expired", "lease over")

    r = env.drain(config)

    reqs = env.requests()
    assert keys(reqs) == ["doc-expired", "doc-live"]
    assert reqs[1]["time"] >= lease_live - 0.05, \
        "triggered %.3f s before the lease ended" % (
            lease_live - reqs[1]["time"])
    busy = r.log("event_busy", document_id="doc-live")
    assert busy and all(x["reason"] == "claimed_by_another_consumer"
                        for x in busy), r
    # Looked at again at least once a second, not only at the end.
    assert len(busy) >= 2, r
    assert r.log("event_busy", document_id="doc-expired") == []
    for doc in ("doc-live", "doc-expired"):
        row = env.row(doc)
        assert row["status"] == "triggered"
        assert row["claimed_by"] == WORKER
        assert row["attempts"] == 1
    assert env.pending() == 0


# ---- reconnecting ---------------------------------------------------------

def daemon_backends(env):
    return env.query("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                     "AND pid <> pg_backend_pid()", (env.dbname,))


def test_redis_connections_killed_mid_flight(env):
    """The Redis connection dies while a request is in flight: the
    triggered document is recorded, its XACK fails, the entry is tried
    again, found done and acknowledged; one request only."""
    env.mock.behaviour(delay_ms=1500, count=1)
    d = env.start(**cfg())
    env.publisher.document_cleaned("doc-k1", "in flight")
    wait_until(lambda: env.requests(), timeout=SLOW, what="request arrived")
    killed = env.redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
    assert killed >= 1
    d.wait_log("connection_restored", service="redis", timeout=SLOW)
    wait_until(lambda: env.pending() == 0 and
               env.row_status("doc-k1") == "triggered",
               timeout=SLOW, what="doc-k1 triggered and acknowledged")
    more = [env.publisher.document_cleaned("doc-k%d" % i, "after")
            for i in (2, 3)]
    wait_until(lambda: all(env.row_status(p.data["document_id"]) ==
                           "triggered" for p in more) and env.pending() == 0,
               timeout=SLOW, what="later entries triggered")

    assert keys(env.requests()) == ["doc-k1", "doc-k2", "doc-k3"]
    assert env.row("doc-k1")["attempts"] == 1
    # Acknowledged on the second look, found done in the ledger.
    d.wait_log("event_duplicate", timeout=5, document_id="doc-k1")
    assert env.dead_letters() == []
    assert d.stop() == EXIT_OK


def test_postgresql_backend_terminated_mid_flight(env):
    """The ledger connection dies while a request is in flight: the
    outcome cannot be recorded, so the entry is not acknowledged; it is
    sent again with the same Idempotency-Key once the ledger is back."""
    env.mock.behaviour(delay_ms=1500, count=1)
    d = env.start(**cfg())
    pub = env.publisher.document_cleaned("doc-p1", "in flight")
    wait_until(lambda: env.requests(), timeout=SLOW, what="request arrived")
    pids = [x["pid"] for x in daemon_backends(env)]
    assert pids
    for pid in pids:
        env.query("SELECT pg_terminate_backend(%s) AS ok", (pid,))
    # Still unacknowledged: nothing recorded it yet.
    assert set(xpending(env)) == {pub.entry_id}
    d.wait_log("connection_restored", service="postgresql", timeout=SLOW)
    wait_until(lambda: env.pending() == 0 and
               env.row_status("doc-p1") == "triggered",
               timeout=SLOW, what="doc-p1 triggered and acknowledged")
    env.publisher.document_cleaned("doc-p2", "after")
    wait_until(lambda: env.row_status("doc-p2") == "triggered" and
               env.pending() == 0, timeout=SLOW, what="doc-p2 triggered")

    reqs = env.requests()
    assert keys(reqs) == ["doc-p1", "doc-p1", "doc-p2"]
    assert reqs[0]["headers"]["ce-id"] == reqs[1]["headers"]["ce-id"]
    row = env.row("doc-p1")
    assert row["remote_job_id"] == reqs[1]["response"]["job_id"]
    assert env.dead_letters() == []
    assert d.stop() == EXIT_OK
