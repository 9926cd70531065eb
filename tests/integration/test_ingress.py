"""The ingress: CloudEvents over HTTP into the stream (issue 10).

A webhook POST (the proposal's Option B endpoint, /v2/events/stage1) in
any of the CloudEvents HTTP binding's three modes is validated, appended
to the source stream in Stage 1's flat layout and only then answered 202;
the daemon's own workers consume it like any entry Stage 1 wrote. What a
user observes: the HTTP status and body, the entries in the stream, the
requests at the NLP API, the ledger rows, nothing pending, the log lines,
and the metrics.
"""

import hashlib
import hmac
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid

import publish
import servers
from conftest import (DLQ, DOC_ROUTE_PATH, GROUP, STREAM, Daemon,
                      pid_alive, wait_until)

INGRESS_PATH = "/v2/events/stage1"
DOC_TYPE = publish.DOCUMENT_CLEANED


def post(port, body, headers=None, path=INGRESS_PATH, method="POST",
         timeout=10):
    """(status, parsed JSON body or text, headers) of one request."""
    if isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data=body if method == "POST" else None,
                                 headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text, hdrs = r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        status, text, hdrs = e.code, e.read().decode(), e.headers
    try:
        return status, json.loads(text), hdrs
    except ValueError:
        return status, text, hdrs


def structured(doc_id, text="ingress text", event_id=None, **extra):
    """A document.cleaned event in the JSON format."""
    ev = {"specversion": "1.0", "type": DOC_TYPE,
          "source": "stage1-cleaning-pipeline",
          "id": event_id or str(uuid.uuid4()),
          "time": publish.rfc3339_now(), "subject": "job/j-ingress",
          "datacontenttype": "application/json",
          "data": publish.document(doc_id, text)}
    ev.update(extra)
    return ev


def binary_headers(doc_id, event_id=None, **ce):
    h = {"ce-specversion": "1.0", "ce-type": DOC_TYPE,
         "ce-source": "stage1-cleaning-pipeline",
         "ce-id": event_id or str(uuid.uuid4()),
         "Content-Type": "application/json"}
    h.update({"ce-" + k: v for k, v in ce.items()})
    return h


def ingress_config(env, port, **over):
    ingress = {"enabled": True, "listen": "127.0.0.1:%d" % port}
    ingress.update(over.pop("ingress", {}))
    return env.write_config(ingress=ingress, **over)


def start(env, **over):
    port = servers.free_port()
    d = env.start(ingress_config(env, port, **over))
    d.wait_log("ingress_listening")
    return d, port


def flat_entries(env):
    return [(i.decode(), {k.decode(): v.decode("utf-8", "replace")
                          for k, v in f.items()})
            for i, f in env.redis.xrange(STREAM)]


def doc_ids_sent(env):
    return sorted(r["json"]["document_id"] for r in env.requests(
        DOC_ROUTE_PATH))


def settled(env, n):
    """n documents triggered, nothing pending."""
    wait_until(lambda: len(env.requests(DOC_ROUTE_PATH)) >= n and
               env.pending() == 0 and
               len([r for r in env.rows() if r["status"] == "triggered"])
               >= n, what="%d documents triggered, nothing pending" % n)


# ---- the three modes -----------------------------------------------------

def test_binary_structured_and_batch_each_triggered_once(env):
    d, port = start(env)

    # Binary: attributes in ce-* headers, percent-encoded where they must
    # be (HTTP binding 3.1.3.2): "job/café 1" arrives decoded.
    bin_doc = publish.document("doc-bin", "binary text")
    st, body, _ = post(port, json.dumps(bin_doc), binary_headers(
        "doc-bin", event_id="ev-bin", subject="job/caf%C3%A9%201",
        time="2026-01-05T16:27:08.268110Z", sequence="7"))
    assert st == 202, body
    assert body["accepted"] == 1 and len(body["ids"]) == 1

    # Structured, with a number past 2^53 in data: kept as written.
    ev = structured("doc-struct", event_id="ev-struct")
    ev["data"]["checksum"] = 12345678901234567890
    st, body, _ = post(port, json.dumps(ev), {
        "Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert st == 202, body

    # Batch: three events, one request, all appended.
    batch = [structured("doc-b%d" % i, event_id="ev-b%d" % i)
             for i in range(3)]
    st, body, _ = post(port, json.dumps(batch), {
        "Content-Type": "application/cloudevents-batch+json"})
    assert st == 202, body
    assert body["accepted"] == 3 and len(set(body["ids"])) == 3

    settled(env, 5)
    time.sleep(0.5)         # nothing more arrives
    assert doc_ids_sent(env) == ["doc-b0", "doc-b1", "doc-b2", "doc-bin",
                                 "doc-struct"]
    for r in env.rows():
        assert r["status"] == "triggered", r
    assert env.pending() == 0
    assert env.dead_letters() == []

    # In the stream: Stage 1's flat layout, one field per attribute.
    entries = dict((f["id"], f) for _, f in flat_entries(env))
    b = entries["ev-bin"]
    assert b["specversion"] == "1.0" and b["type"] == DOC_TYPE
    assert b["subject"] == "job/café 1"
    assert b["sequence"] == "7"
    assert b["datacontenttype"] == "application/json"
    assert json.loads(b["data"]) == bin_doc
    s = entries["ev-struct"]
    assert "12345678901234567890" in s["data"]
    assert "event" not in s          # not the structured layout
    assert set(entries) == {"ev-bin", "ev-struct", "ev-b0", "ev-b1",
                            "ev-b2"}

    # The API saw the event ids the client gave.
    by_doc = {r["json"]["document_id"]: r for r in env.requests(
        DOC_ROUTE_PATH)}
    assert by_doc["doc-bin"]["headers"]["ce-id"] == "ev-bin"
    assert by_doc["doc-b2"]["headers"]["ce-id"] == "ev-b2"

    wait_until(lambda: len(d.log("event_ingested")) == 5,
               what="every event logged")
    ingested = d.log("event_ingested")
    assert sorted(r["event_id"] for r in ingested) == sorted(entries)
    assert {r["mode"] for r in ingested} == {"binary", "structured",
                                             "batch"}


def test_same_event_posted_twice_triggers_once(env):
    """A webhook retried after a lost 202: two entries, one trigger."""
    d, port = start(env)
    ev = json.dumps(structured("doc-twice", event_id="ev-twice"))
    hdrs = {"Content-Type": "application/cloudevents+json"}
    assert post(port, ev, hdrs)[0] == 202
    settled(env, 1)
    assert post(port, ev, hdrs)[0] == 202
    wait_until(lambda: env.redis.xlen(STREAM) == 2 and env.pending() == 0
               and d.log("event_duplicate"), what="second entry acked")
    time.sleep(0.5)
    assert doc_ids_sent(env) == ["doc-twice"]
    assert env.row("doc-twice")["status"] == "triggered"


# ---- what is refused, and that nothing of it is appended -----------------

def test_refusals_name_the_rule_and_append_nothing(env):
    d, port = start(env, ingress={"max_body_bytes": 4096},
                    metrics={"listen": "127.0.0.1:%d" %
                             servers.free_port()})
    doc = json.dumps(publish.document("doc-x", "x"))
    cases = [
        # A percent escape that decodes to bytes that are not UTF-8.
        (400, "not valid UTF-8", doc,
         binary_headers("doc-x", subject="caf%C3%28")),
        (400, "percent-encoded", doc,
         binary_headers("doc-x", subject="100%")),
        (400, "percent-encoded", doc,
         binary_headers("doc-x", subject="%G1")),
        (400, 'specversion must be "1.0"', doc,
         binary_headers("doc-x", specversion="0.3")),
        (400, "the data is the body", doc,
         dict(binary_headers("doc-x"), **{"ce-data": "{}"})),
        (400, "data is not valid JSON", "{not json",
         binary_headers("doc-x")),
        (400, "required attribute id is missing",
         json.dumps({k: v for k, v in structured("doc-x").items()
                     if k != "id"}),
         {"Content-Type": "application/cloudevents+json"}),
        (400, "not valid JSON", "{\"specversion\":",
         {"Content-Type": "application/cloudevents+json"}),
        # Text data must be a string; its media type named in the answer.
        (400, "data must be a string when datacontenttype (text/plain) is "
         "not JSON", json.dumps(structured("doc-x", datacontenttype=
                                           "text/plain")),
         {"Content-Type": "application/cloudevents+json"}),
        (400, "must match [a-z0-9]{1,20}",
         json.dumps(structured("doc-x", **{"Bad_Name": "v"})),
         {"Content-Type": "application/cloudevents+json"}),
        # One bad event spoils the batch: all or none.
        (400, "event[1]: time", json.dumps([
            structured("doc-ok"), structured("doc-x", time="yesterday")]),
         {"Content-Type": "application/cloudevents-batch+json"}),
        (400, "a batch is a JSON array", json.dumps(structured("doc-x")),
         {"Content-Type": "application/cloudevents-batch+json"}),
        (400, "text after the JSON array",
         json.dumps([structured("doc-x")]) + " []",
         {"Content-Type": "application/cloudevents-batch+json"}),
        (415, "application/cloudevents+json", doc,
         {"Content-Type": "application/json"}),
        (415, "application/cloudevents+json", doc,
         {"Content-Type": "application/cloudevents+avro"}),
        (413, "ingress.max_body_bytes (4096)", "x" * 5000,
         {"Content-Type": "application/cloudevents+json"}),
    ]
    for status, words, body, headers in cases:
        st, answer, _ = post(port, body, headers)
        assert st == status, (words, st, answer)
        assert words in answer["error"], (words, answer)
    st, answer, hdrs = post(port, doc, path="/elsewhere",
                            headers=binary_headers("doc-x"))
    assert st == 404 and INGRESS_PATH in answer["error"]
    st, _, hdrs = post(port, None, method="GET")
    assert st == 405 and hdrs["Allow"] == "POST"

    assert env.redis.xlen(STREAM) == 0
    time.sleep(0.5)
    assert env.requests() == []
    assert env.dead_letters() == []
    # The log is read by a thread: wait for the last line to arrive.
    wait_until(lambda: len(d.log("ingress_refused")) >= len(cases) + 2,
               what="every refusal logged")
    refused = d.log("ingress_refused")
    assert len(refused) == len(cases) + 2    # and the 404, the 405
    assert all(r["client"].startswith("127.0.0.1:") for r in refused)

    metrics = urllib.request.urlopen(
        "http://%s/metrics" % d.log("metrics_listening")[0]["listen"]
    ).read().decode()
    assert 'stagerelay_ingress_requests_total{code="400"} 13' in metrics
    assert 'stagerelay_ingress_requests_total{code="415"} 2' in metrics
    assert 'stagerelay_ingress_requests_total{code="413"} 1' in metrics
    assert 'stagerelay_ingress_requests_total{code="404"} 1' in metrics
    assert 'stagerelay_ingress_requests_total{code="405"} 1' in metrics
    assert 'stagerelay_ingress_requests_total{code="202"} 0' in metrics
    assert "stagerelay_ingress_events_total 0" in metrics


def test_max_event_bytes_and_batch_size_are_named(env):
    d, port = start(env, max_event_bytes=2048,
                    ingress={"max_batch_events": 2})
    big = structured("doc-big", text="y" * 4000)
    st, answer, _ = post(port, json.dumps(big),
                         {"Content-Type": "application/cloudevents+json"})
    assert st == 413 and "max_event_bytes is 2048" in answer["error"]
    st, answer, _ = post(port, json.dumps([structured("a"), structured("b"),
                                           structured("c")]),
                         {"Content-Type":
                          "application/cloudevents-batch+json"})
    assert st == 413 and "ingress.max_batch_events is 2" in answer["error"]
    assert env.redis.xlen(STREAM) == 0


# ---- signatures ----------------------------------------------------------

def test_signature_required_when_a_secret_is_set(env):
    secret = "s3cr3t-ingress-key-%s" % uuid.uuid4().hex
    secret_file = os.path.join(env.tmpdir, "ingress.secret")
    with open(secret_file, "w") as f:
        f.write(secret + "\n")
    os.chmod(secret_file, 0o600)
    d, port = start(env, ingress={"secret_file": secret_file})
    body = json.dumps(structured("doc-signed", event_id="ev-signed"))
    sig = "sha256=" + hmac.new(secret.encode(), body.encode(),
                               hashlib.sha256).hexdigest()
    ct = {"Content-Type": "application/cloudevents+json"}

    st, answer, _ = post(port, body, ct)
    assert st == 401 and "no X-Signature-256" in answer["error"]
    wrong = "sha256=" + hmac.new(b"other", body.encode(),
                                 hashlib.sha256).hexdigest()
    st, answer, _ = post(port, body, dict(ct, **{"X-Signature-256": wrong}))
    assert st == 401 and "does not match" in answer["error"]
    # The signature covers the body: the same header, another body.
    st, _, _ = post(port, body.replace("doc-signed", "doc-forged"),
                    dict(ct, **{"X-Signature-256": sig}))
    assert st == 401
    assert env.redis.xlen(STREAM) == 0

    # Binary mode's attributes are headers, which the signature does not
    # cover: with a secret it is refused, even with a good signature.
    doc = json.dumps(publish.document("doc-bin-signed", "x"))
    st, answer, _ = post(port, doc, dict(binary_headers("doc-bin-signed"), **{
        "X-Signature-256": "sha256=" + hmac.new(
            secret.encode(), doc.encode(), hashlib.sha256).hexdigest()}))
    assert st == 401 and "binary mode" in answer["error"], answer
    assert env.redis.xlen(STREAM) == 0

    st, answer, _ = post(port, body, dict(ct, **{
        "X-Signature-256": sig.upper().replace("SHA256=", "sha256=")}))
    assert st == 202, answer
    settled(env, 1)
    assert doc_ids_sent(env) == ["doc-signed"]
    assert d.log("ingress_listening")[0]["signature"] == "required"
    assert secret not in d.stderr
    r = env.run("-c", d.args[1], "check-config")
    assert secret not in r.stdout + r.stderr


# ---- Redis away, and the ingress process replaced ------------------------

def test_redis_down_is_503_and_a_retry_succeeds(env, tmp_path):
    own = servers.RedisServer().start()
    try:
        port = servers.free_port()
        cfg = ingress_config(env, port, redis_port=own.port)
        d = Daemon(["-c", cfg], env._env(), cwd=env.tmpdir)
        env.daemons.append(d)
        d.wait_log("ingress_listening")
        d.wait_log("worker_started")
        client = own.client()
        body = json.dumps(structured("doc-503", event_id="ev-503"))
        ct = {"Content-Type": "application/cloudevents+json"}

        own.stop_process()
        st, answer, hdrs = post(port, body, ct)
        assert st == 503, answer
        assert hdrs["Retry-After"] == "5"
        assert "unreachable" in answer["error"]
        d.wait_log("ingress_unavailable")

        own.start_process()
        client = own.client()
        # The client retries as told; Redis is back, so it is accepted.
        deadline = time.monotonic() + 15
        while True:
            st, answer, _ = post(port, body, ct)
            if st == 202 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert st == 202, answer
        wait_until(lambda: any(r["json"]["document_id"] == "doc-503"
                               for r in env.requests(DOC_ROUTE_PATH)),
                   timeout=30, what="doc-503 triggered")
        assert client.xlen(STREAM) == 1
        wait_until(lambda: client.xpending(STREAM, GROUP)["pending"] == 0,
                   what="nothing pending")
        assert doc_ids_sent(env) == ["doc-503"]
        assert client.xlen(DLQ) == 0
    finally:
        own.stop()


def test_ingress_killed_is_respawned_and_clients_wait(env):
    d, port = start(env)
    first = int(d.wait_log("ingress_spawned")["pid"])
    os.kill(first, signal.SIGKILL)
    # Posted at once: the master's socket holds the connection until the
    # new ingress process (after the respawn backoff) takes it.
    st, answer, _ = post(port, json.dumps(structured("doc-after-kill")),
                         {"Content-Type": "application/cloudevents+json"},
                         timeout=15)
    assert st == 202, answer
    d.wait_log("worker_exited", slot="ingress", pid=first,
               status="signal:9")
    wait_until(lambda: len(d.log("ingress_spawned")) == 2,
               what="the ingress respawned")
    spawned = [int(r["pid"]) for r in d.log("ingress_spawned")]
    assert len(spawned) == 2 and spawned[0] == first
    assert not pid_alive(first) and pid_alive(spawned[1])
    settled(env, 1)
    assert doc_ids_sent(env) == ["doc-after-kill"]

    # A reload restarts it too, on the same socket, with the new secret.
    cfg = ingress_config(env, port, ingress={"secret": "reloaded-key"})
    os.replace(cfg, d.args[1])
    os.kill(d.pid, signal.SIGHUP)
    wait_until(lambda: len(d.log("ingress_spawned")) == 3,
               what="ingress restarted by the reload")
    d.wait_log("ingress_listening", signature="required")
    st, _, _ = post(port, json.dumps(structured("doc-unsigned")),
                    {"Content-Type": "application/cloudevents+json"})
    assert st == 401
    assert d.stop() == 0
    assert d.log("ingress_stopped")


def test_ingress_listen_in_use_stops_the_start(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        r = env.run("-c", ingress_config(env, taken))
    assert r.returncode == 1, r
    fail = r.log("ingress_listen_failed")
    assert fail and "already in use" in fail[0]["detail"], r


# ---- data that is not JSON, and Redis refusing the append ----------------

def test_text_and_bytes_are_kept_as_sent(env):
    """A text/plain payload stays text; bytes that are not text travel as
    data_base64 (a flat field holds text), decoded back byte-exact."""
    d, port = start(env, consume_events=[DOC_TYPE])
    # Not types the route handles (text has no document_id): acked.
    ev = structured("doc-text", event_id="ev-text",
                    datacontenttype="text/plain; charset=utf-8",
                    data="plain words, not JSON", type="com.example.note")
    st, answer, _ = post(port, json.dumps(ev),
                         {"Content-Type": "application/cloudevents+json"})
    assert st == 202, answer
    raw = bytes(range(256))
    hdrs = binary_headers("doc-bytes", event_id="ev-bytes")
    hdrs["Content-Type"] = "application/octet-stream"
    hdrs["ce-type"] = "com.example.blob"       # not consumed: acked
    st, answer, _ = post(port, raw, hdrs)
    assert st == 202, answer

    entries = {f["id"]: f for _, f in flat_entries(env)}
    assert entries["ev-text"]["data"] == "plain words, not JSON"
    assert entries["ev-text"]["datacontenttype"] == \
        "text/plain; charset=utf-8"
    assert "data" not in entries["ev-bytes"]
    import base64
    assert base64.b64decode(entries["ev-bytes"]["data_base64"]) == raw
    # Both are valid entries to a worker: nothing dead-lettered.
    wait_until(lambda: env.pending() == 0 and env.redis.xlen(STREAM) == 2,
               what="both entries read and acknowledged")
    assert env.dead_letters() == []


def test_a_batch_redis_refuses_is_503_and_appends_none(env):
    d, port = start(env)
    # The stream's key holds a string: every XADD is WRONGTYPE.
    env.redis.delete(STREAM)
    env.redis.set(STREAM, "not a stream")
    batch = json.dumps([structured("doc-r%d" % i) for i in range(3)])
    ct = {"Content-Type": "application/cloudevents-batch+json"}
    st, answer, hdrs = post(port, batch, ct)
    assert st == 503, answer
    assert hdrs["Retry-After"] == "5"
    assert "refused" in answer["error"]
    d.wait_log("ingress_unavailable", detail="Redis refused the append")
    assert env.redis.type(STREAM) == b"string"

    # Once the key is a stream again, the retried batch goes in whole.
    env.redis.delete(STREAM)
    st, answer, _ = post(port, batch, ct)
    assert st == 202, answer
    wait_until(lambda: len(env.requests(DOC_ROUTE_PATH)) == 3 and
               env.pending() == 0, timeout=30,
               what="the batch triggered once the group is back")
    assert doc_ids_sent(env) == ["doc-r0", "doc-r1", "doc-r2"]
