"""stagerelay process-backlog (issue 6): the stream's history through the
same decode -> route -> ledger -> trigger path, independent of the group;
and process_backlog's age limit at start-up.

Real redis-server and PostgreSQL, the real binary, the mock NLP API.
"""
import collections
import json
import re
import signal
import subprocess
import time

import publish
from conftest import (EXIT_OK, EXIT_USAGE, GROUP, STREAM, consumer_argv,
                      wait_until)

EXIT_DEAD_LETTERED, EXIT_INTERRUPTED = 65, 75
HOUR_MS = 3600 * 1000


def keys(reqs):
    return [q["headers"]["idempotency-key"] for q in reqs]


def backlog(env, *args, config=None, **overrides):
    return env.run("process-backlog", "-c",
                   config or env.write_config(**overrides), *args)


def summary(r):
    """The counts of the closing summary line."""
    line = [x for x in r.stdout.splitlines()
            if x.startswith("process-backlog:") and "entries of" in x][-1]
    return {what: int(n) for n, what in re.findall(
        r"(\d+) (triggered|duplicates|expired|observed|filtered|invalid|"
        r"dead-lettered|already dead-lettered)", line)}


def test_the_proposals_350_event_backlog_triggers_each_document_once(env):
    events = publish.demo_backlog()
    for _, fields in events:
        publish.publish(env.redis, fields)
    labels = collections.Counter(label for label, _ in events)
    documents = sorted({json.loads(f["data"])["document_id"]
                        for label, f in events
        if label.startswith("document.cleaned")})
    malformed = sum(n for k, n in labels.items()
                    if k.startswith("malformed:"))

    r = backlog(env)

    assert r.returncode == EXIT_DEAD_LETTERED, r
    assert sorted(keys(env.requests())) == documents
    assert len(documents) == labels["document.cleaned"]
    got = summary(r)
    assert got["triggered"] == len(documents)
    assert got["duplicates"] == labels["document.cleaned (re-published)"]
    assert got["observed"] == labels["job.completed"]   # batch_mode: false
    assert got["invalid"] + got["dead-lettered"] == malformed
    assert len(env.dead_letters()) == malformed
    rows = env.rows("status = 'triggered'")
    assert sorted(row["document_id"] for row in rows) == documents
    # Independent of the group: none was created, nothing acknowledged.
    assert GROUP not in env.groups()
    (progress,) = env.query("SELECT * FROM stagerelay.backlog_progress")
    assert progress["finished_at"] is not None
    assert progress["entries_done"] == len(events)

    again = backlog(env)
    assert again.returncode == EXIT_OK, again      # nothing new refused
    assert len(env.requests()) == len(documents)     # nothing new sent
    assert summary(again)["triggered"] == 0
    assert summary(again)["duplicates"] == \
        len(documents) + labels["document.cleaned (re-published)"]
    # What the first run dead-lettered is not added again.
    assert summary(again)["already dead-lettered"] == malformed
    assert len(env.dead_letters()) == malformed


def test_max_age_hours_expires_old_entries(env):
    now = int(time.time() * 1000)
    old = []
    for i, age_h in enumerate((72, 50)):
        fields = publish.document_cleaned("doc-old-%d" % i, "old news")
        env.redis.xadd(STREAM, fields, id="%d-0" % (now - age_h * HOUR_MS))
        old.append("doc-old-%d" % i)
    fresh = [env.publisher.document_cleaned("doc-fresh-%d" % i, "news")
             for i in range(2)]

    r = backlog(env, "--max-age-hours", "48")

    assert r.returncode == EXIT_OK, r
    assert sorted(keys(env.requests())) == ["doc-fresh-0", "doc-fresh-1"]
    for d in old:
        row = env.row(d)
        assert row["status"] == "expired"
        assert row["remote_job_id"] is None
    for p in fresh:
        assert env.row(p.data["document_id"])["status"] == "triggered"
    assert summary(r)["expired"] == 2
    assert env.deliveries() and len(env.deliveries()) == 2

    # Without the limit, the expired documents are owed after all.
    r = backlog(env, "--max-age-hours", "0")
    assert r.returncode == EXIT_OK, r
    assert sorted(keys(env.requests()[2:])) == old
    assert env.row("doc-old-0")["status"] == "triggered"


def test_resume_after_sigint_finishes_without_repeats(env):
    docs = ["doc-rs-%03d" % i for i in range(150)]
    for d in docs:
        env.publisher.document_cleaned(d, "resumable")
    config = env.write_config()

    p = subprocess.Popen(consumer_argv(
        ["process-backlog", "-c", config, "--rate", "60",
         "--batch-size", "10"]), env=env._env(None),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(env.requests()) >= 30, timeout=20,
               what="some of the backlog sent")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == EXIT_INTERRUPTED, (out, err)
    assert "--resume" in out
    first = len(env.requests())
    assert 30 <= first < len(docs)
    (progress,) = env.query("SELECT * FROM stagerelay.backlog_progress")
    assert progress["finished_at"] is None
    assert progress["entries_done"] == first

    r = backlog(env, "--resume", config=config)

    assert r.returncode == EXIT_OK, r
    sent = keys(env.requests())
    assert sorted(sent) == docs          # each exactly once
    assert summary(r)["triggered"] == len(docs) - first
    assert summary(r)["duplicates"] == 0
    r = backlog(env, "--resume", config=config)
    assert r.returncode == EXIT_OK
    assert "no unfinished run" in r.stdout


def test_a_second_run_on_the_same_stream_is_refused_while_one_works(env):
    for i in range(40):
        env.publisher.document_cleaned("doc-lock-%02d" % i, "one run")
    config = env.write_config()
    p = subprocess.Popen(consumer_argv(
        ["process-backlog", "-c", config, "--rate", "20",
         "--batch-size", "5"]), env=env._env(None),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(env.requests()) >= 5, timeout=20,
                   what="the first run under way")
        r = backlog(env, config=config)
        assert r.returncode == 1, r
        assert re.search(r"another run \(.*:%d\) is working on" % p.pid,
                         r.stderr), r.stderr
        r = backlog(env, "--resume", config=config)
        assert r.returncode == 1, r
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=20)
    assert p.returncode == EXIT_INTERRUPTED
    # Once it is gone, --resume takes over and finishes, each document once.
    r = backlog(env, "--resume", config=config)
    assert r.returncode == EXIT_OK, r
    assert sorted(keys(env.requests())) == \
        ["doc-lock-%02d" % i for i in range(40)]


def test_dry_run_prints_what_would_be_triggered_and_changes_nothing(env):
    env.publisher.document_cleaned("doc-d1", "one")
    env.publisher.document_cleaned("doc-d2", "two")
    env.publisher.malformed("bad_json")

    r = backlog(env, "--dry-run")

    assert r.returncode == EXIT_DEAD_LETTERED, r
    would = [x for x in r.stdout.splitlines()
             if x.startswith("would trigger")]
    assert len(would) == 2 and "doc-d1" in would[0] and "doc-d2" in would[1]
    assert any(x.startswith("would dead-letter") for x in
               r.stdout.splitlines())
    assert env.requests() == []
    assert env.dead_letters() == []
    assert not env.table_exists("processed_documents")

    # With a ledger, a document already done would be skipped.
    assert backlog(env, "--end-id", env.redis.xrange(STREAM)[0][0]
                   .decode()).returncode == EXIT_OK
    r = backlog(env, "--dry-run")
    lines = r.stdout.splitlines()
    assert any(x.startswith("would skip") and "doc-d1" in x for x in lines)
    assert [x for x in lines if x.startswith("would trigger")][0] \
        .split()[3] == "doc-d2"
    assert len(env.requests()) == 1


def test_usage_errors_exit_64(env):
    config = env.write_config()
    for args in (["--batch-size", "0"], ["--rate", "-1"],
                 ["--start-id", "yesterday"], ["--max-age-hours", "x"],
                 ["--resume", "--start-id", "1-0"], ["extra"]):
        r = env.run("process-backlog", "-c", config, *args)
        assert r.returncode == EXIT_USAGE, (args, r)
    assert env.requests() == []


def test_an_old_entry_whose_document_another_entry_holds_is_not_expired_over_it(
        env):
    """Expiring is an outcome like any other: recorded under a claim. A
    document another consumer holds is waited for, not written over."""
    now = int(time.time() * 1000)
    fields = publish.document_cleaned("doc-held", "old")
    env.redis.xadd(STREAM, fields, id="%d-0" % (now - 30 * HOUR_MS))
    assert env.run("-c", env.write_config(), "ledger",
                   "migrate").returncode == EXIT_OK
    env.query("INSERT INTO stagerelay.processed_documents (consumer_group, "
              "document_id, status, claimed_by, lease_until) VALUES "
              "('stage2-nlp-processor', 'doc-held', 'claimed', 'other-1', "
              "now() + interval '2 seconds')")

    r = env.drain(process_backlog=True, backlog_max_age_hours=24)

    assert r.log("event_busy", document_id="doc-held")
    assert r.log("event_expired", document_id="doc-held")
    assert env.row("doc-held")["status"] == "expired"
    assert env.requests() == []
    assert env.pending() == 0


def test_process_backlog_at_start_expires_history_older_than_the_limit(
        env):
    now = int(time.time() * 1000)
    fields = publish.document_cleaned("doc-ancient", "old")
    env.redis.xadd(STREAM, fields, id="%d-0" % (now - 30 * HOUR_MS))
    env.publisher.document_cleaned("doc-recent", "new")

    r = env.drain(process_backlog=True, backlog_max_age_hours=24)

    assert keys(env.requests()) == ["doc-recent"]
    assert env.row("doc-ancient")["status"] == "expired"
    assert r.log("event_expired", document_id="doc-ancient",
                 reason="older_than_backlog_max_age")
    assert env.pending() == 0
