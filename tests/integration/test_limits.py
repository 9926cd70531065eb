"""Limits an operator can set, each named when it is exceeded.

What a Stage 1 entry may hold (max_event_bytes, max_entry_fields,
max_json_depth) and what a documents file may hold
(max_documents_per_file) are fed hostile entries in test_hostile.py;
here are the limits on the HTTP exchange with the API
(nlp_api.max_request_bytes, nlp_api.max_response_bytes), how values reach
a URL path (percent-encoded, never a new segment), and the ranges the
config loader holds the new keys to. Every test asserts what an operator
observes: dead letters and their reasons, ledger rows, requests at the API,
exit codes and messages.
"""

import random
import re
import string

import pytest

from conftest import EXIT_CONFIG, EXIT_OK

EXIT_CONFIG_ERR = EXIT_CONFIG


def dead_detail(env, pub):
    for _, f in env.dead_letters():
        if f[b"dlq_source_id"] == pub.entry_id.encode():
            return f[b"dlq_reason"].decode(), f[b"dlq_detail"].decode()
    raise AssertionError("%s was not dead-lettered: %r"
                         % (pub.entry_id, env.dead_letters()))


def test_oversized_success_body_is_not_taken_as_success(env):
    """A 2xx answer whose body is over max_response_bytes may hide
    success:false: the document fails for good, the limit named, and the
    transfer is cut short (a 1 MiB answer is not read in full)."""
    big = '{"success": false, "pad": "%s"}' % ("x" * 200000)
    env.mock.rules([{"match": "doc-big", "status": 200, "body": big}])
    big_pub = env.publisher.document_cleaned("doc-big", "answered at length")
    env.publisher.document_cleaned("doc-ok", "answered briefly")
    config = env.write_config(nlp_api={"max_response_bytes": 65536})
    env.drain(config)

    reason, detail = dead_detail(env, big_pub)
    assert reason == "rejected", (reason, detail)
    assert "over nlp_api.max_response_bytes (65536)" in detail, detail
    assert env.row_status("doc-big") == "dead"
    assert env.row_status("doc-ok") == "triggered"
    assert env.pending() == 0


def test_oversized_error_body_keeps_its_status(env):
    """A 503 with a long error page is still a 503: retried, and with
    retries used up dead-lettered as exhausted, the limit named."""
    page = "<html>%s</html>" % ("busy " * 40000)
    env.mock.rules([{"match": "doc-busy", "status": 503, "body": page}])
    pub = env.publisher.document_cleaned("doc-busy", "api busy")
    config = env.write_config(max_retries=1, retry_delay_seconds=0.1,
                              max_retry_delay_seconds=0.1,
                              nlp_api={"max_response_bytes": 4096})
    env.drain(config)

    reason, detail = dead_detail(env, pub)
    assert reason == "retries_exhausted", (reason, detail)
    assert "HTTP 503" in detail and "max_response_bytes (4096)" in detail
    assert len([r for r in env.requests()
                if r["headers"].get("idempotency-key") == "doc-busy"]) == 2


def test_request_body_over_the_limit_is_dead_lettered(env):
    """A rendered body over nlp_api.max_request_bytes is never sent."""
    pub = env.publisher.document_cleaned("doc-long", "y" * 6000)
    env.publisher.document_cleaned("doc-short", "short")
    config = env.write_config(nlp_api={"max_request_bytes": 4096})
    env.drain(config)

    reason, detail = dead_detail(env, pub)
    assert reason == "render_error", (reason, detail)
    assert re.search(r"request body is \d+ bytes, over "
                     r"nlp_api.max_request_bytes \(4096\)", detail), detail
    keys = [r["headers"].get("idempotency-key") for r in env.requests()]
    assert keys == ["doc-short"]
    assert env.pending() == 0


def test_values_in_a_url_path_are_percent_encoded(env):
    """A document id with '/', '?', '#', '%', a space or '..' stays one
    path segment: the API sees it encoded and decodes it to the id."""
    ids = ["a/b", "q?x=1#frag", "100%", "two words", "..", "caf\u00e9"]
    for doc in ids:
        env.publisher.document_cleaned(doc, "odd id")
    config = env.write_config(routes=[{
        "name": "document",
        "types": ["com.storytelling.cleaning.document.cleaned"],
        "path": "/api/v2/documents/{{data.document_id}}/process",
        "idempotency_key": "{{data.document_id}}",
        "body": {"document_id": "{{data.document_id}}"},
    }])
    env.drain(config)

    paths = {r["json"]["document_id"]: r["path"] for r in env.requests()}
    assert sorted(paths) == sorted(ids)
    assert paths["a/b"] == "/api/v2/documents/a%2Fb/process"
    assert paths["q?x=1#frag"] == "/api/v2/documents/q%3Fx=1%23frag/process"
    assert paths["100%"] == "/api/v2/documents/100%25/process"
    assert paths["two words"] == "/api/v2/documents/two%20words/process"
    assert paths[".."] == "/api/v2/documents/%2E%2E/process"
    assert paths["caf\u00e9"] == "/api/v2/documents/caf%C3%A9/process"
    assert sorted(r["document_id"] for r in env.rows()) == sorted(ids)


@pytest.mark.parametrize("key,value,hint", [
    ("max_json_depth", 1000, "512"),
    ("max_json_depth", 1, "2"),
    ("max_entry_fields", 4, "8"),
    ("max_documents_per_file", 0, "1"),
])
def test_limit_keys_are_range_checked(env, key, value, hint):
    config = env.write_config(**{key: value})
    r = env.run("-t", "-c", config)
    assert r.returncode == EXIT_CONFIG_ERR, r
    assert re.search(r"%s:\d+:\d+: .*%s" % (re.escape(config), key),
                     r.stderr), r.stderr
    assert hint in r.stderr, r.stderr


def test_limit_keys_are_shown_by_check_config(env):
    config = env.write_config(max_json_depth=16, max_entry_fields=32,
                              max_documents_per_file=5,
                              nlp_api={"max_request_bytes": 2048,
                                       "max_response_bytes": 8192})
    r = env.run("check-config", "-c", config)
    assert r.returncode == EXIT_OK, r
    for line in ("max_json_depth: 16", "max_entry_fields: 32",
                 "max_documents_per_file: 5", "max_request_bytes: 2048",
                 "max_response_bytes: 8192"):
        assert line in r.stdout, r.stdout


def test_a_document_the_ledger_refuses_is_dead_lettered_alone(env):
    """PostgreSQL refuses a value the decoder let through: a CloudEvents id
    of 3000 random characters is valid, but too long for the ledger's
    B-tree index on event_id (SQLSTATE 54000). The read is claimed again
    event by event: that one is dead-lettered naming the refusal, the
    others in the same read are triggered, nothing stalls."""
    rng = random.Random(54000)
    long_id = "".join(rng.choice(string.ascii_letters + string.digits)
                      for _ in range(3000))
    bad = env.publisher.document_cleaned("doc-long-event-id", "refused",
                                         event_id=long_id)
    for i in range(3):
        env.publisher.document_cleaned("doc-fine-%d" % i, "fine")
    env.drain(env.write_config(batch_size=10))

    reason, detail = dead_detail(env, bad)
    assert reason == "ledger_refused", (reason, detail)
    assert "the ledger refused its documents: SQLSTATE 54000" in detail, \
        detail
    assert env.row_status("doc-long-event-id") is None
    assert sorted(r["document_id"] for r in env.rows()) == [
        "doc-fine-0", "doc-fine-1", "doc-fine-2"]
    assert env.pending() == 0
