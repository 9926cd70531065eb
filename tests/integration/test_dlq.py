"""`stagerelay dlq list|replay|purge`: the dead-letter stream for operators.

Dead letters are made the way the daemon makes them (a drain run against
the mock API), except where noted. Every test asserts what an operator
observes: what the command prints and exits with, what is left in the
dead-letter stream and the source stream, requests at the API and rows in
the ledger after the next run.
"""

import json
import re

import pytest

import publish
from conftest import (DLQ, EXIT_CONFIG, EXIT_OK, EXIT_USAGE, STREAM,
                      WORKER)
from test_delivery import create_group, read_as
from test_pipeline import RFC3339, b

EXIT_FAILED = 1
NOT_A_FIELD = b"dlq_"          # prefix of the fields the daemon appends


def dlq(env, config, *args):
    """stagerelay dlq ARGS -c CONFIG (options after the subcommand)."""
    return env.run("dlq", *args, "-c", config, allow_root=False)


def by_source(env):
    """{dlq_source_id: (dead-letter entry id, fields)}."""
    return {f[b"dlq_source_id"].decode(): (i, f)
            for i, f in env.dead_letters()}


def original(fields):
    """The fields a dead-letter entry keeps from the original entry."""
    return {k: v for k, v in fields.items() if not k.startswith(NOT_A_FIELD)}


def encoded(pub):
    return {b(k): b(v) for k, v in pub.fields.items()}


def three_dead_letters(env):
    """An invalid entry, a 400 and a 503 (retry_failed off): one dead
    letter each, and a document that went through. Returns the config
    and {reason: Published}."""
    env.mock.rules([{"match": "doc-400", "status": 400, "success": False},
                    {"match": "doc-503", "status": 503, "success": False}])
    pubs = {
        "invalid_event": env.publisher.malformed("bad_json"),
        "http_error": env.publisher.document_cleaned("doc-400", "refused"),
        "retries_exhausted": env.publisher.document_cleaned("doc-503",
                                                            "api down"),
    }
    env.publisher.document_cleaned("doc-ok", "went through")
    config = env.write_config(retry_failed=False)
    env.drain(config)
    env.mock.rules([])
    assert sorted(by_source(env)) == sorted(p.entry_id
                                            for p in pubs.values())
    return config, pubs


def outage_dead_letter(env, config, doc):
    """The API refuses connections while doc is published and drained:
    with retry_failed off it is dead-lettered at once. Returns the
    Published and its dead-letter entry id."""
    env.mock.refuse_connections()
    try:
        pub = env.publisher.document_cleaned(doc, "published during an "
                                             "outage")
        env.drain(config)
    finally:
        env.mock.accept_connections()
    dl_id, fields = by_source(env)[pub.entry_id]
    assert fields[b"dlq_reason"] == b"retries_exhausted"
    assert env.row(doc)["status"] == "dead"
    return pub, dl_id


# ---- list ------------------------------------------------------------------

def test_list_shows_each_dead_letter_with_its_reason_and_event(env):
    config, pubs = three_dead_letters(env)

    r = dlq(env, config, "list")

    assert r.returncode == EXIT_OK, r
    out = r.stdout
    dls = env.dead_letters()
    # One block per entry, oldest first, headed by its id and reason.
    heads = re.findall(r"^(\d+-\d+)  (\S+)$", out, re.M)
    assert heads == [(i, f[b"dlq_reason"].decode()) for i, f in dls], out
    blocks = dict(zip([i for i, _ in heads],
                      re.split(r"^\d+-\d+  \S+\n", out, flags=re.M)[1:]))
    for reason, pub in pubs.items():
        dl_id, fields = by_source(env)[pub.entry_id]
        block = blocks[dl_id]
        assert re.search(r"^  source +%s %s$" % (STREAM, pub.entry_id),
                         block, re.M), block
        assert re.search(r"^  consumer +%s$" % WORKER, block, re.M), block
        assert re.search(r"^  failed at +%s$" % re.escape(
            fields[b"dlq_failed_at"].decode()), block, re.M), block
        assert re.search(r"^  detail +\S", block, re.M), block
        assert re.search(r"^  event +%s %s$" % (pub.id, re.escape(
            publish.DOCUMENT_CLEANED)), block, re.M), block
    assert re.search(r"^  document +doc-400$", blocks[
        by_source(env)[pubs["http_error"].entry_id][0]], re.M)
    assert re.search(r"^  http status +503$", blocks[
        by_source(env)[pubs["retries_exhausted"].entry_id][0]], re.M)
    # The summary counts by reason.
    assert "3 of 3 dead-letter entries in %s shown" % DLQ in out
    for reason in pubs:
        assert re.search(r"^  %s +1$" % reason, out, re.M), out
    # Listing changes nothing.
    assert env.dead_letters() == dls


def test_list_json_has_every_field(env):
    config, pubs = three_dead_letters(env)
    garbage = env.publisher.malformed("binary_garbage")
    env.drain(config)

    r = dlq(env, config, "list", "--json")

    assert r.returncode == EXIT_OK, r
    doc = json.loads(r.stdout)
    dls = env.dead_letters()
    assert [e["id"] for e in doc] == [i for i, _ in dls]
    got = {e["source_id"]: e for e in doc}
    for reason, pub in pubs.items():
        e = got[pub.entry_id]
        _, fields = by_source(env)[pub.entry_id]
        assert e["reason"] == reason
        assert e["detail"] == fields[b"dlq_detail"].decode()
        assert RFC3339.match(e["failed_at"])
        assert e["attempts"] == int(fields[b"dlq_attempts"])
        assert e["consumer"] == WORKER
        assert e["source_stream"] == STREAM
        assert e["event_id"] == pub.id
        assert e["event_type"] == publish.DOCUMENT_CLEANED
        assert e["replayable"] is True
        assert e["fields"] == {k: str(v) for k, v in pub.fields.items()}
    assert got[pubs["http_error"].entry_id]["http_status"] == 400
    assert got[pubs["http_error"].entry_id]["document_id"] == "doc-400"
    assert got[pubs["retries_exhausted"].entry_id]["http_status"] == 503
    assert got[pubs["invalid_event"].entry_id]["http_status"] is None
    # Bytes that are not UTF-8 do not break the JSON.
    e = got[garbage.entry_id]
    assert e["reason"] == "invalid_event"
    assert len(e["fields"]) == 3
    assert all("\ufffd" in k for k in e["fields"]), e["fields"]
    assert e["event_id"] is None and e["document_id"] is None


def test_list_filters_by_reason_and_shows_the_newest_count(env):
    config, pubs = three_dead_letters(env)
    dls = env.dead_letters()
    ids = [i for i, _ in dls]

    r = dlq(env, config, "list", "--reason", "http_error")
    assert r.returncode == EXIT_OK, r
    assert re.findall(r"^(\d+-\d+)  (\S+)$", r.stdout, re.M) == \
        [(by_source(env)[pubs["http_error"].entry_id][0], "http_error")]
    assert "1 of 3 dead-letter entries" in r.stdout

    r = dlq(env, config, "list", "--json", "--reason", "retries_exhausted")
    assert [e["source_id"] for e in json.loads(r.stdout)] == \
        [pubs["retries_exhausted"].entry_id]

    # --count N: the newest N, oldest first.
    r = dlq(env, config, "list", "--count", "2", "--json")
    assert [e["id"] for e in json.loads(r.stdout)] == ids[1:]
    r = dlq(env, config, "list", "--count", "1")
    assert re.findall(r"^(\d+-\d+)  ", r.stdout, re.M) == ids[2:]
    assert "1 of 3 dead-letter entries" in r.stdout
    r = dlq(env, config, "list", "--count", "0", "--json")
    assert [e["id"] for e in json.loads(r.stdout)] == ids

    r = dlq(env, config, "list", "--reason", "poison")
    assert r.returncode == EXIT_OK, r
    assert "no dead-letter entries with reason poison" in r.stdout


def test_list_of_an_empty_dead_letter_stream(env):
    config = env.write_config()

    r = dlq(env, config, "list")
    assert r.returncode == EXIT_OK, r
    assert "no dead-letter entries in %s" % DLQ in r.stdout
    r = dlq(env, config, "list", "--json")
    assert r.returncode == EXIT_OK, r
    assert json.loads(r.stdout) == []


def test_list_pages_through_a_long_stream(env):
    """More entries than one page (500) of XRANGE."""
    config = env.write_config()
    pipe = env.redis.pipeline()
    for n in range(1200):
        pipe.xadd(DLQ, {"n": str(n), "dlq_reason": "poison" if n % 3
                        else "lost", "dlq_source_stream": STREAM,
                        "dlq_source_id": "1-%d" % n})
    pipe.execute()

    r = dlq(env, config, "list", "--count", "0", "--json")
    assert [int(e["fields"].get("n", -1)) for e in json.loads(r.stdout)] \
        == list(range(1200))
    r = dlq(env, config, "list", "--count", "700", "--reason", "lost")
    assert len(re.findall(r"^\d+-\d+  lost$", r.stdout, re.M)) == 400
    assert re.search(r"^  lost +400$", r.stdout, re.M), r.stdout


# ---- replay ----------------------------------------------------------------

@pytest.mark.parametrize("how", ["all", "id"])
def test_replay_after_an_outage_triggers_the_document(env, how):
    """The issue's scenario: the API was down, the entry was dead-lettered;
    once the API is back, replay puts it back in the source stream, and
    the next run triggers it."""
    config = env.write_config(retry_failed=False)
    pub, dl_id = outage_dead_letter(env, config, "doc-outage")
    assert env.requests() == []

    r = dlq(env, config, "replay", *(["--all"] if how == "all" else
                                      [dl_id]))

    assert r.returncode == EXIT_OK, r
    m = re.search(r"^replayed %s -> (\d+-\d+) \(retries_exhausted\)$"
                  % dl_id, r.stdout, re.M)
    assert m, r.stdout
    new_id = m.group(1)
    assert "replayed 1 of 1 dead-letter entry" in r.stdout
    assert env.dead_letters() == []
    # The original fields, byte for byte, as a new entry.
    assert env.redis.xrange(STREAM, new_id, new_id) == \
        [(new_id.encode(), encoded(pub))]

    env.drain(config)

    reqs = env.requests()
    assert [q["headers"]["idempotency-key"] for q in reqs] == ["doc-outage"]
    assert reqs[0]["headers"]["ce-id"] == pub.id
    row = env.row("doc-outage")
    assert row["status"] == "triggered"
    assert row["stream_entry_id"] == new_id
    assert row["remote_job_id"] == reqs[0]["response"]["job_id"]
    assert env.pending() == 0
    assert env.dead_letters() == []


def test_replay_by_id_and_dry_run(env):
    config = env.write_config(retry_failed=False)
    a, a_dl = outage_dead_letter(env, config, "doc-a")
    bb, b_dl = outage_dead_letter(env, config, "doc-b")
    before = env.dead_letters()
    length = env.redis.xlen(STREAM)

    r = dlq(env, config, "replay", a_dl, "--dry-run")
    assert r.returncode == EXIT_OK, r
    assert "would replay %s -> %s (retries_exhausted)" % (a_dl, STREAM) \
        in r.stdout
    assert "would replay 1 of 1 dead-letter entry" in r.stdout
    assert env.dead_letters() == before
    assert env.redis.xlen(STREAM) == length

    r = dlq(env, config, "replay", a_dl)
    assert r.returncode == EXIT_OK, r
    assert [i for i, _ in env.dead_letters()] == [b_dl]

    env.drain(config)
    assert env.row("doc-a")["status"] == "triggered"
    assert env.row("doc-b")["status"] == "dead"
    assert [q["headers"]["idempotency-key"] for q in env.requests()] == \
        ["doc-a"]


def test_replay_by_reason(env):
    config, pubs = three_dead_letters(env)
    dl_id, _ = by_source(env)[pubs["http_error"].entry_id]

    r = dlq(env, config, "replay", "--reason", "http_error")

    assert r.returncode == EXIT_OK, r
    assert re.findall(r"^replayed (\d+-\d+) -> ", r.stdout, re.M) == \
        [dl_id]
    assert sorted(by_source(env)) == sorted(
        [pubs["invalid_event"].entry_id, pubs["retries_exhausted"].entry_id])
    last = env.redis.xrevrange(STREAM, count=1)[0]
    assert last[1] == encoded(pubs["http_error"])

    r = dlq(env, config, "replay", "--reason", "poison")
    assert r.returncode == EXIT_OK, r
    assert "no dead-letter entries to replay with reason poison" in r.stdout


def test_replay_of_an_unknown_id_fails_and_names_it(env):
    config = env.write_config(retry_failed=False)
    pub, dl_id = outage_dead_letter(env, config, "doc-known")

    r = dlq(env, config, "replay", "1-1", dl_id, "not-an-id")

    assert r.returncode == EXIT_FAILED, r
    assert "no entry 1-1 in %s" % DLQ in r.stderr
    assert '"not-an-id" is not a stream entry id' in r.stderr
    # The entry that does exist is replayed all the same.
    assert re.search(r"^replayed %s -> " % dl_id, r.stdout, re.M), r
    assert "replayed 1 of 3 dead-letter entries (2 failed)" in r.stdout
    assert env.dead_letters() == []


def test_a_lost_entry_cannot_be_replayed(env):
    """A lost entry has only its dlq_* fields: named, it is an error;
    with --all it is skipped and stays."""
    create_group(env)
    gone = env.publisher.document_cleaned("doc-gone", "trimmed away")
    read_as(env, WORKER)
    env.redis.xdel(STREAM, gone.entry_id)
    config = env.write_config(retry_failed=False)
    env.drain(config)
    lost_id, fields = by_source(env)[gone.entry_id]
    assert fields[b"dlq_reason"] == b"lost"
    _, ok_id = outage_dead_letter(env, config, "doc-fine")
    length = env.redis.xlen(STREAM)

    r = dlq(env, config, "replay", lost_id)
    assert r.returncode == EXIT_FAILED, r
    assert re.search(r"not replayed %s \(lost\): it has no original fields"
                     % lost_id, r.stderr), r
    assert "replayed 0 of 1 dead-letter entry (1 cannot be replayed)" \
        in r.stdout
    assert env.redis.xlen(STREAM) == length
    assert len(env.dead_letters()) == 2

    r = dlq(env, config, "list", "--reason", "lost")
    assert re.search(r"^  fields +none: cannot be replayed$", r.stdout,
                     re.M), r.stdout
    r = dlq(env, config, "list", "--json")
    assert [e["replayable"] for e in json.loads(r.stdout)] == [False, True]

    r = dlq(env, config, "replay", "--all")
    assert r.returncode == EXIT_OK, r
    assert re.search(r"^replayed %s -> " % ok_id, r.stdout, re.M), r
    assert "not replayed %s (lost)" % lost_id in r.stderr
    assert "replayed 1 of 2 dead-letter entries (1 cannot be replayed)" \
        in r.stdout
    assert [i for i, _ in env.dead_letters()] == [lost_id]


# ---- purge -----------------------------------------------------------------

def test_purge_before_removes_only_older_entries(env):
    config, pubs = three_dead_letters(env)
    dls = env.dead_letters()
    ids = [i for i, _ in dls]

    r = dlq(env, config, "purge", "--before", ids[1], "--dry-run")
    assert r.returncode == EXIT_OK, r
    assert "would purge 1 dead-letter entry from %s" % DLQ in r.stdout
    assert env.dead_letters() == dls

    r = dlq(env, config, "purge", "--before", ids[1])
    assert r.returncode == EXIT_OK, r
    assert "purged 1 dead-letter entry from %s" % DLQ in r.stdout
    assert env.dead_letters() == dls[1:]

    # With a reason: only that reason, older than the id.
    reason = dls[1][1][b"dlq_reason"].decode()
    r = dlq(env, config, "purge", "--before", ids[2], "--reason", "nope")
    assert "purged 0 dead-letter entries" in r.stdout
    r = dlq(env, config, "purge", "--all", "--reason", reason)
    assert r.returncode == EXIT_OK, r
    assert "purged 1 dead-letter entry" in r.stdout
    assert env.dead_letters() == dls[2:]

    r = dlq(env, config, "purge", "--all", "--dry-run")
    assert "would purge 1 dead-letter entry" in r.stdout
    assert env.dead_letters() == dls[2:]
    r = dlq(env, config, "purge", "--all")
    assert r.returncode == EXIT_OK, r
    assert "purged 1 dead-letter entry" in r.stdout
    assert env.dead_letters() == []
    # The source stream is never touched.
    assert env.redis.xlen(STREAM) == 4


# ---- the command line ------------------------------------------------------

@pytest.mark.parametrize("args", [
    [],
    ["frob"],
    ["replay"],
    ["replay", "--all", "--reason", "lost"],
    ["replay", "1-0", "--all"],
    ["replay", "--all", "--json"],
    ["purge"],
    ["purge", "--reason", "lost"],
    ["purge", "--all", "--before", "1-0"],
    ["purge", "--before", "yesterday"],
    ["purge", "--all", "1-0"],
    ["list", "--count", "-1"],
    ["list", "--count", "many"],
    ["list", "--dry-run"],
    ["list", "1-0"],
    ["list", "--bogus"],
], ids=lambda a: " ".join(a) or "nothing")
def test_usage_errors_exit_64_and_change_nothing(env, args):
    config, _ = three_dead_letters(env)
    dls = env.dead_letters()

    r = dlq(env, config, *args)

    assert r.returncode == EXIT_USAGE, r
    assert "usage: stagerelay dlq" in r.stderr
    assert r.stdout == ""
    assert env.dead_letters() == dls


def test_config_before_the_subcommand_bad_config_and_no_redis(env):
    config = env.write_config()
    r = env.run("-c", config, "dlq", "list", allow_root=False)
    assert r.returncode == EXIT_OK, r

    bad = env.write_config(text="event_consumer:\n  redis_portt: 1\n")
    r = dlq(env, bad, "list")
    assert r.returncode == EXIT_CONFIG, r

    import servers
    nowhere = env.write_config(redis_port=servers.free_port())
    for args in (["list"], ["replay", "--all"], ["purge", "--all"]):
        r = dlq(env, nowhere, *args)
        assert r.returncode == EXIT_FAILED, r
        assert "cannot connect" in r.stderr
