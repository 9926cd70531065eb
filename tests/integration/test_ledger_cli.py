"""stagerelay ledger show, stats, reset and purge: the ledger tools for
operators and DBAs, against a ledger filled by real runs.

Every test asserts what the person at the terminal observes: the text and
JSON the commands print, their exit statuses, and what the ledger and the
NLP API see afterwards. Times in the past are made by moving updated_at,
triggered_at and requested_at back with plain SQL, as a DBA would find
them after weeks of running.
"""

import json
import re

import pytest

from conftest import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, GROUP

EXIT_NOT_FOUND = 1      # also: refused, PostgreSQL unreachable
ALL_STATUSES = ["claimed", "triggered", "failed", "dead", "observed",
                "expired"]

# Retries fast enough for --drain to wait for them.
FAST = {"retry_delay_seconds": 0.05, "max_retry_delay_seconds": 0.2,
        "max_retries": 3}


def ledger(env, config, *args):
    return env.run("-c", config, "ledger", *args)


def parse_show(text):
    """The human view of `ledger show`: the document's "column: value"
    lines, then one dict per delivery (its header line included as
    "_header"), oldest first."""
    sections = [s for s in text.strip("\n").split("\n\n") if s]
    out = []
    for s in sections:
        fields = {}
        for line in s.splitlines():
            if line.startswith("delivery "):
                fields["_header"] = line
                continue
            key, sep, value = line.partition(":")
            assert sep, "not a column: value line: %r" % line
            fields[key] = value.strip()
        out.append(fields)
    return out


def ages(env, where, days, args=()):
    """Moves the matching documents, and the requests made for them, days
    into the past. Returns the document ids moved."""
    rows = env.query(
        "UPDATE stagerelay.processed_documents "
        "   SET updated_at = now() - make_interval(days => %s), "
        "       triggered_at = triggered_at - make_interval(days => %s) "
        " WHERE " + where + " RETURNING document_id",
        (days, days) + tuple(args))
    ids = [r["document_id"] for r in rows]
    env.query("UPDATE stagerelay.deliveries "
              "   SET requested_at = now() - make_interval(days => %s) "
              " WHERE idempotency_key = ANY(%s) RETURNING delivery_id",
              (days, ids))
    return ids


# ---- show ------------------------------------------------------------------

def test_show_prints_the_document_and_the_requests_made_for_it(env):
    env.mock.behaviour(status=500, success=False, count=1)
    pub = env.publisher.document_cleaned("doc-show", "text")
    config = env.write_config(**FAST)
    env.drain(config)
    reqs = env.requests()
    assert len(reqs) == 2, reqs

    r = ledger(env, config, "show", "doc-show")

    assert r.returncode == EXIT_OK, r
    doc, *dels = parse_show(r.stdout)
    row = env.row("doc-show")
    assert set(doc) == set(row), "every column, one per line"
    assert doc["document_id"] == "doc-show"
    assert doc["consumer_group"] == GROUP
    assert doc["status"] == "triggered"
    assert doc["attempts"] == "2"
    assert doc["event_id"] == pub.id
    assert doc["stream_entry_id"] == pub.entry_id
    assert doc["remote_job_id"] == reqs[1]["response"]["job_id"]
    assert doc["http_status"] == "202"
    assert doc["last_error"] == "-"
    # The failed request first, the one that succeeded last.
    assert [d["outcome"] for d in dels] == ["transient", "success"]
    assert [d["http_status"] for d in dels] == ["500", "202"]
    assert "1 of 2" in dels[0]["_header"]
    for d in dels:
        assert d["url"] == env.mock.url + "/api/v2/nlp/process"
        assert d["route"] == "document"
        assert d["requested_at"] != "-"
        assert float(d["latency_ms"]) >= 0
    assert dels[0]["error"] != "-"
    assert dels[1]["error"] == "-"
    assert dels[1]["remote_job_id"] == doc["remote_job_id"]
    assert r.stderr == ""

    j = ledger(env, config, "show", "doc-show", "--json")

    assert j.returncode == EXIT_OK, j
    assert j.stdout.count("\n") == 1
    obj = json.loads(j.stdout)
    assert set(obj) == {"document", "deliveries"}
    assert obj["document"]["document_id"] == "doc-show"
    assert obj["document"]["status"] == "triggered"
    assert obj["document"]["attempts"] == 2
    assert obj["document"]["last_error"] is None
    assert obj["document"]["remote_job_id"] == doc["remote_job_id"]
    assert [d["outcome"] for d in obj["deliveries"]] == \
        ["transient", "success"]
    assert [d["http_status"] for d in obj["deliveries"]] == [500, 202]
    assert obj["deliveries"][1]["delivery_id"] == \
        obj["document"]["last_delivery_id"]
    assert all(isinstance(d["latency_ms"], (int, float))
               for d in obj["deliveries"])


def test_show_an_unknown_document_exits_1(env):
    env.publisher.document_cleaned("doc-known", "text")
    config = env.write_config()
    env.drain(config)

    r = ledger(env, config, "show", "doc-unknown")

    assert r.returncode == EXIT_NOT_FOUND, r
    assert r.stdout == ""
    assert "doc-unknown" in r.stderr
    assert "no document" in r.stderr

    j = ledger(env, config, "show", "doc-unknown", "--json")
    assert j.returncode == EXIT_NOT_FOUND, j
    assert json.loads(j.stdout) == {"document": None, "deliveries": []}


def test_show_is_scoped_to_the_consumer_group(env):
    env.publisher.document_cleaned("doc-group", "text")
    env.drain()
    other = env.write_config(consumer_group="stage3-other")

    r = ledger(env, other, "show", "doc-group")

    assert r.returncode == EXIT_NOT_FOUND, r
    assert "stage3-other" in r.stderr


# ---- reset -----------------------------------------------------------------

def test_ledger_reset_makes_a_document_eligible_again(env):
    config = env.write_config()
    env.publisher.document_cleaned("doc-again", "first")
    env.drain(config)
    assert len(env.requests()) == 1

    # Published again: a duplicate, nothing is sent.
    dup = env.publisher.document_cleaned("doc-again", "second")
    r = env.drain(config)
    assert len(env.requests()) == 1
    assert r.log("event_duplicate", event_id=dup.id), r

    reset = ledger(env, config, "reset", "doc-again")

    assert reset.returncode == EXIT_OK, reset
    assert reset.stdout == "reset doc-again (was triggered)\n"
    assert env.rows("document_id = %s", ("doc-again",)) == []
    # The history stays, and show still finds it.
    assert len(env.deliveries()) == 1
    s = ledger(env, config, "show", "doc-again")
    assert s.returncode == EXIT_NOT_FOUND, s
    assert "reset or purged" in s.stderr
    (delivery,) = parse_show(s.stdout)
    assert delivery["outcome"] == "success"

    # Published again: triggered again.
    third = env.publisher.document_cleaned("doc-again", "third")
    env.drain(config)

    reqs = env.requests()
    assert len(reqs) == 2, reqs
    assert reqs[1]["headers"]["idempotency-key"] == "doc-again"
    assert reqs[1]["json"] == {"document_id": "doc-again", "text": "third"}
    row = env.row("doc-again")
    assert row["status"] == "triggered"
    assert row["event_id"] == third.id
    assert len(env.deliveries()) == 2
    assert env.pending() == 0


def test_reset_reports_unknown_ids_and_dry_run_changes_nothing(env):
    config = env.write_config()
    for d in ("doc-r1", "doc-r2"):
        env.publisher.document_cleaned(d, "text")
    env.drain(config)

    dry = ledger(env, config, "reset", "doc-r1", "doc-nope", "--dry-run")

    assert dry.returncode == EXIT_NOT_FOUND, dry
    assert dry.stdout == "would reset doc-r1 (was triggered)\n"
    assert "doc-nope: not found" in dry.stderr
    assert [r["status"] for r in env.rows()] == ["triggered", "triggered"]

    r = ledger(env, config, "reset", "doc-r1", "doc-nope", "doc-r2",
               "doc-r1")

    assert r.returncode == EXIT_NOT_FOUND, r
    assert r.stdout == ("reset doc-r1 (was triggered)\n"
                        "reset doc-r2 (was triggered)\n")
    assert "doc-nope: not found" in r.stderr
    assert env.rows() == []


def test_reset_refuses_a_claim_in_flight_unless_forced(env):
    config = env.write_config()
    for d in ("doc-live", "doc-stale"):
        env.publisher.document_cleaned(d, "text")
    env.drain(config)
    env.query("UPDATE stagerelay.processed_documents SET status = 'claimed',"
              "       claimed_by = 'elsewhere-3', lease_until = CASE "
              "       WHEN document_id = 'doc-live' THEN now() + '5 min'::interval "
              "       ELSE now() - '1 min'::interval END RETURNING document_id")

    r = ledger(env, config, "reset", "doc-live", "doc-stale")

    assert r.returncode == EXIT_NOT_FOUND, r
    assert r.stdout == "reset doc-stale (was claimed)\n"
    assert "doc-live: refused" in r.stderr
    assert "elsewhere-3" in r.stderr
    assert "--force" in r.stderr
    assert env.row("doc-live")["status"] == "claimed"

    forced = ledger(env, config, "reset", "doc-live", "--force")

    assert forced.returncode == EXIT_OK, forced
    assert forced.stdout == "reset doc-live (was claimed)\n"
    assert env.rows() == []


# ---- purge -----------------------------------------------------------------

def test_purge_removes_only_what_it_says(env):
    config = env.write_config(**FAST)
    # doc-retried: a transient failure, then success.
    env.mock.rules([{"match": "doc-retried", "status": 503,
                     "success": False, "count": 1}])
    for d in ("old-triggered", "old-dead", "old-observed", "old-failed",
              "old-claimed", "old-claimed-live", "new-triggered",
              "doc-retried"):
        env.publisher.document_cleaned(d, "text")
    env.drain(config)
    assert len(env.deliveries()) == 9
    env.query("UPDATE stagerelay.processed_documents SET status = CASE "
              "  WHEN document_id = 'old-dead' THEN 'dead' "
              "  WHEN document_id = 'old-observed' THEN 'observed' "
              "  WHEN document_id = 'old-failed' THEN 'failed' "
              "  ELSE 'claimed' END, "
              "  lease_until = CASE WHEN document_id = 'old-claimed-live' "
              "  THEN now() + '10 min'::interval "
              "  ELSE now() - '1 day'::interval END "
              " WHERE document_id IN ('old-dead', 'old-observed', "
              "   'old-failed', 'old-claimed', 'old-claimed-live') "
              "RETURNING document_id")
    moved = ages(env, "document_id LIKE 'old-%%'", 40)
    assert len(moved) == 6
    # doc-retried stays recent; only its first, failed, request is old.
    env.query("UPDATE stagerelay.deliveries SET requested_at = now() - "
              "'40 days'::interval WHERE delivery_id = (SELECT "
              "min(delivery_id) FROM stagerelay.deliveries WHERE "
              "idempotency_key = 'doc-retried') RETURNING delivery_id")
    # Another stage's ledger in the same schema: never touched.
    env.query("INSERT INTO stagerelay.processed_documents (consumer_group,"
              " document_id, status, updated_at) VALUES ('stage3-other', "
              "'old-triggered', 'triggered', now() - '400 days'::interval) "
              "RETURNING document_id")
    before_rows, before_dels = env.rows(), env.deliveries()

    dry = ledger(env, config, "purge", "--older-than", "30", "--dry-run")

    assert dry.returncode == EXIT_OK, dry
    assert re.search(r"^would delete 3 documents \(triggered, dead, "
                     r"observed, expired\) of group %s last changed before "
                     r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$" % GROUP,
                     dry.stdout, re.M), dry.stdout
    assert re.search(r"^would delete 4 deliveries requested before \S+ "
                     r"that no document references$", dry.stdout,
                     re.M), dry.stdout
    assert env.rows() == before_rows
    assert env.deliveries() == before_dels

    # One row per statement: the batches loop until none is left.
    r = ledger(env, config, "purge", "--older-than", "30.5", "--batch", "1")

    assert r.returncode == EXIT_OK, r
    assert re.search(r"^deleted 3 documents ", r.stdout, re.M), r.stdout
    assert re.search(r"^deleted 4 deliveries ", r.stdout, re.M), r.stdout
    left = {(x["consumer_group"], x["document_id"]): x["status"]
            for x in env.rows()}
    assert left == {
        (GROUP, "old-failed"): "failed",
        (GROUP, "old-claimed"): "claimed",
        (GROUP, "old-claimed-live"): "claimed",
        (GROUP, "new-triggered"): "triggered",
        (GROUP, "doc-retried"): "triggered",
        ("stage3-other", "old-triggered"): "triggered",
    }
    # Requests of purged documents are gone; those still referenced (and
    # the recent ones) stay.
    kept = sorted((d["idempotency_key"], d["outcome"])
                  for d in env.deliveries())
    assert kept == [("doc-retried", "success"),
                    ("new-triggered", "success"),
                    ("old-claimed", "success"),
                    ("old-claimed-live", "success"),
                    ("old-failed", "success")]
    for row in env.rows("consumer_group = %s", (GROUP,)):
        assert row["last_delivery_id"] is not None

    # Named explicitly, claimed and failed rows go too, but never a claim
    # whose lease is live.
    r = ledger(env, config, "purge", "--older-than", "30",
               "--status", "claimed,failed")

    assert r.returncode == EXIT_OK, r
    assert re.search(r"^deleted 2 documents \(claimed, failed\)", r.stdout,
                     re.M), r.stdout
    assert re.search(r"^deleted 2 deliveries ", r.stdout, re.M), r.stdout
    assert sorted(x["document_id"] for x in env.rows(
        "consumer_group = %s", (GROUP,))) == \
        ["doc-retried", "new-triggered", "old-claimed-live"]


def test_purge_of_nothing_old_deletes_nothing(env):
    env.publisher.document_cleaned("doc-fresh", "text")
    config = env.write_config()
    env.drain(config)

    r = ledger(env, config, "purge", "--older-than", "0.5")

    assert r.returncode == EXIT_OK, r
    assert "deleted 0 documents" in r.stdout
    assert "deleted 0 deliveries" in r.stdout
    assert env.row("doc-fresh")["status"] == "triggered"
    assert len(env.deliveries()) == 1


# ---- stats -----------------------------------------------------------------

def test_stats_numbers_match_what_was_processed(env):
    config = env.write_config()
    env.mock.rules([{"match": "doc-bad", "status": 400, "success": False}])
    for d in ("doc-1", "doc-2", "doc-3", "doc-bad"):
        env.publisher.document_cleaned(d, "text")
    env.drain(config)
    # Known latencies, so the percentiles can be checked exactly.
    env.query("UPDATE stagerelay.deliveries SET latency_ms = CASE "
              "idempotency_key WHEN 'doc-1' THEN 10 WHEN 'doc-2' THEN 20 "
              "WHEN 'doc-3' THEN 30 ELSE 40 END RETURNING delivery_id")

    r = ledger(env, config, "stats", "--json")

    assert r.returncode == EXIT_OK, r
    s = json.loads(r.stdout)
    assert s["consumer_group"] == GROUP
    assert s["since_hours"] == 24
    assert s["documents"] == {"total": 4, "claimed": 0, "triggered": 3,
                              "failed": 0, "dead": 1, "observed": 0,
                              "expired": 0}
    assert s["requests"] == {"total": 4, "success": 3, "transient": 0,
                             "permanent": 1}
    # percentile_cont over 10, 20, 30, 40.
    assert s["latency_ms"]["p50"] == pytest.approx(25)
    assert s["latency_ms"]["p95"] == pytest.approx(38.5)
    assert s["latency_ms"]["p99"] == pytest.approx(39.7)
    assert sum(h["documents"] for h in s["triggered_per_hour"]) == 3
    for h in s["triggered_per_hour"]:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:00:00Z$", h["hour"]), h
    assert len(s["top_errors"]) == 1
    assert s["top_errors"][0]["documents"] == 1
    assert "400" in s["top_errors"][0]["error"]

    text = ledger(env, config, "stats")

    assert text.returncode == EXIT_OK, text
    out = text.stdout
    assert re.search(r"^documents\s+4  claimed 0  triggered 3  failed 0  "
                     r"dead 1  observed 0  expired 0$", out, re.M), out
    assert re.search(r"^requests\s+4  success 3  transient 0  "
                     r"permanent 1$", out, re.M), out
    assert re.search(r"^latency\s+p50 25\.0 ms  p95 38\.5 ms  "
                     r"p99 39\.7 ms$", out, re.M), out
    assert re.search(r"^triggered/h\s+\S+Z  3$", out, re.M), out
    assert re.search(r"^top errors\s+1  .*400", out, re.M), out


def test_stats_since_counts_only_the_window(env):
    config = env.write_config()
    for d in ("doc-now", "doc-old"):
        env.publisher.document_cleaned(d, "text")
    env.drain(config)
    ages(env, "document_id = %s", 2, ("doc-old",))

    day = json.loads(ledger(env, config, "stats", "--json").stdout)
    week = json.loads(ledger(env, config, "stats", "--since", "168",
                             "--json").stdout)
    ever = ledger(env, config, "stats", "--since", "0", "--json")

    assert day["documents"]["triggered"] == 1
    assert day["requests"]["total"] == 1
    assert week["documents"]["triggered"] == 2
    assert week["requests"]["total"] == 2
    assert sum(h["documents"] for h in week["triggered_per_hour"]) == 2
    assert len(week["triggered_per_hour"]) == 2
    assert ever.returncode == EXIT_OK, ever
    ever = json.loads(ever.stdout)
    assert ever["since_hours"] == 0 and ever["from"] is None
    assert ever["documents"]["total"] == 2


def test_stats_of_an_empty_ledger(env):
    config = env.write_config()
    assert env.run("-c", config, "ledger", "migrate").returncode == EXIT_OK

    r = ledger(env, config, "stats")

    assert r.returncode == EXIT_OK, r
    assert re.search(r"^documents\s+0  claimed 0", r.stdout, re.M)
    assert re.search(r"^latency\s+p50 -  p95 -  p99 -$", r.stdout, re.M)
    assert re.search(r"^triggered/h\s+none$", r.stdout, re.M)
    assert re.search(r"^top errors\s+none$", r.stdout, re.M)


# ---- errors ----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["show"],
    ["show", "a", "b"],
    ["show", "a", "--since", "3"],
    ["stats", "extra"],
    ["stats", "--since", "soon"],
    ["stats", "--since", "-1"],
    ["stats", "--bogus"],
    ["reset"],
    ["reset", "a", "--json"],
    ["purge"],
    ["purge", "--dry-run"],
    ["purge", "--older-than", "0"],
    ["purge", "--older-than", "-3"],
    ["purge", "--older-than", "1e3"],
    ["purge", "--older-than", "nan"],
    ["purge", "--older-than", "ten"],
    ["purge", "--older-than", "3", "--status", "bogus"],
    ["purge", "--older-than", "3", "--batch", "0"],
    ["purge", "--older-than", "3", "doc"],
    ["migrate", "extra"],
], ids=lambda a: " ".join(a) or "nothing")
def test_usage_errors_exit_64(env, args):
    config = env.write_config()

    r = ledger(env, config, *args)

    assert r.returncode == EXIT_USAGE, r
    assert "usage: stagerelay ledger" in r.stderr
    assert r.stdout == ""
    # Nothing was done: the ledger was not even created.
    assert not env.table_exists("processed_documents")


def test_unreachable_ledger_exits_1_without_the_password(env):
    config = env.write_config(ledger={
        "dsn": "host=127.0.0.1 port=1 dbname=nope user=relay "
               "password=s3cr3t-pw connect_timeout=3"})

    for args in (["show", "doc"], ["stats"], ["reset", "doc"],
                 ["purge", "--older-than", "7"]):
        r = ledger(env, config, *args)
        assert r.returncode == EXIT_NOT_FOUND, r
        assert "cannot connect to 127.0.0.1:1/nope" in r.stderr, r
        assert "s3cr3t-pw" not in r.stderr + r.stdout
        assert r.stdout == ""


def test_bad_config_exits_78(env):
    config = env.write_config(text="event_consumer:\n  no_such_key: 1\n")

    r = ledger(env, config, "stats")

    assert r.returncode == EXIT_CONFIG, r


def test_a_ledger_never_migrated_says_so_and_stays_untouched(env):
    config = env.write_config()

    for args in (["show", "doc"], ["stats"], ["reset", "doc"],
                 ["purge", "--older-than", "7"]):
        r = ledger(env, config, *args)
        assert r.returncode == EXIT_NOT_FOUND, r
        assert "stagerelay ledger migrate" in r.stderr, r
    assert not env.table_exists("processed_documents")
