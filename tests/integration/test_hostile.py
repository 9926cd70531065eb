"""A hostile-input corpus (issue 9): entries and documents files written
to hurt, interleaved with valid events, against the real daemon.

Every hostile entry is either dead-lettered, with a dlq_detail that says
what is wrong (the broken attribute, the limit's key), or processed
correctly; the daemon never crashes (the master logs no worker_exited
for a crash, no worker_respawn, worker_hung or crash_loop; it stops with
exit 0) and never stalls (nothing pending, lag 0); the ledger holds
exactly the documents that should be there, and the mock API received
exactly one request per such document, its document_id byte for byte.

Decisions the corpus pins down (see DESIGN.md §2, §4 and
stagerelay.yaml(5)):

- A member twice in one JSON object (the structured event, anything in
  its data, a documents file line) is refused, never "first wins" or
  "last wins": cJSON reads the first, Python's json the last, so the API
  could see another document than the ledger recorded.
- A document_id need not be a string: the key is the value's JSON text
  (5 -> "5"), the body keeps its JSON type ("{{path}}" whole). null is a
  render error; so is a key that would hold a control character (it is
  a header and the ledger's key) and an empty key.
- A path that resolves to an array inside a longer string (the
  idempotency key, "tags={{data.tags}}") is its compact JSON text; used
  whole in a body it stays an array; a path that goes on through an
  array by name, or does not exist, is a render error naming the path.
- In Stage 1's layout, data under a datacontenttype that is not JSON is a
  string: {{data.document_id}} does not exist (render error). In the
  structured layout, an object under such a datacontenttype is taken as
  it is: the JSON format spec (§3.1.2) lets a reader fail there (MAY),
  it does not make it.
- The key the API sees must be the ledger's: a document_id too long for
  the ledger's index, or edged with blanks (which header parsers drop),
  is processed under one key in both places or dead-lettered naming the
  problem (either is accepted; a stall is not).
- A documents file line must be JSON text: a raw NUL inside a string (a
  C reader cuts the id there) or bytes that are not UTF-8 refuse the
  file like any other broken line.
- An extension whose value is a JSON number must be a CloudEvents
  Integer: whole and within 32 bits (core spec, type system). Its
  spelling is not policed: 1e3 is the Integer 1000 (JSON format §2.2
  asks writers for the integer component only; a reader that takes the
  value loses nothing).
"""

import json
import os
import random
import re
import string
import time

import publish
from conftest import DLQ, EXIT_OK, GROUP, STREAM, wait_until

DOCUMENT_CLEANED = publish.DOCUMENT_CLEANED
JOB_COMPLETED = publish.JOB_COMPLETED
TEMPLATE_TYPE = "com.storytelling.test.hostile.template"
DOC_PATH = "/api/v2/nlp/process"
TEMPLATE_PATH = "/api/t/"
BATCH_PATH = "/api/v1/documents/batch"

MAX_EVENT_BYTES = 1048576       # the defaults the corpus runs against
MAX_ENTRY_FIELDS = 256
MAX_JSON_DEPTH = 64
MAX_DOCUMENTS_PER_FILE = 100000

DOC_ROUTE = {
    "name": "document", "types": [DOCUMENT_CLEANED],
    "path": DOC_PATH,
    "idempotency_key": "{{data.document_id}}",
    "body": {"document_id": "{{data.document_id}}",
             "text": "{{data.cleaned_text}}"}}
# A path, a key and a body that reach into data: missing paths, arrays.
TEMPLATE_ROUTE = {
    "name": "template", "types": [TEMPLATE_TYPE],
    "path": TEMPLATE_PATH + "{{data.section}}",
    "idempotency_key": "t:{{data.key}}",
    "body": {"key": "{{data.key}}", "tags": "{{data.tags}}",
             "label": "tags={{data.tags}}",
             "owner": "{{data.meta.owner.name}}"}}
BATCH_ROUTE = {
    "name": "batch", "types": [JOB_COMPLETED],
    "path": BATCH_PATH,
    "idempotency_key": "job:{{data.job_id}}",
    "documents_file": "{{data.output_location}}",
    "body": {"documents": "{{documents}}", "batch_id": "{{data.batch_id}}"}}

# What the master logs when a worker dies or hangs (src/supervisor.c).
CRASH_SIGNS = ("worker_respawn", "worker_hung", "crash_loop")

# document_ids that are odd but legal: each must reach the API and the
# ledger byte for byte, in both layouts.
ODD_IDS = [
    "it's",
    'say "hi"',
    "'; DROP TABLE documents; --",
    "Robert'); DROP TABLE stagerelay.processed_documents;--",
    "$(rm -rf /)",
    "`reboot`",
    "%00",
    "%s%n%x%p",
    "back\\slash\\",
    "{{data.cleaned_text}}",
    "<script>alert(1)</script>",
    "\u00fcn\u00efc\u00f6d\u00e9 \u2014 \u6587\u66f8 \U0001f4c4",
    "../../etc/passwd",
    "a/b?c=d#e&f",
    "null",
    "line\u2028separator",
    "next\u0085line",
    "\u202eright-to-left",
    "\\\"" + "[" * 80 + "{" * 80,       # brackets in a string: no depth
]

# document_ids that cannot be a key: (id, what dlq_detail must say).
BAD_IDS = [
    ("line\nbreak", r"idempotency_key: .*control character"),
    ("carriage\rreturn", r"idempotency_key: .*control character"),
    ("tab\there", r"idempotency_key: .*control character"),
    ("del\x7f", r"idempotency_key: .*control character"),
    ("esc\x1b[31mred", r"idempotency_key: .*control character"),
    ("", r"idempotency_key: renders to an empty key"),
]


def b(v):
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def compact(v):
    """JSON text as cJSON prints it unformatted."""
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def doc(document_id, text=None, **kw):
    """document.cleaned in Stage 1's layout: {attribute: str}."""
    return publish.document_cleaned(
        document_id, "text of %s" % document_id if text is None else text,
        **kw)


def changed(fields, changes):
    """A copy of fields with changes applied (None removes a field)."""
    out = dict(fields)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def with_data(fields, data_text):
    return changed(fields, {"data": data_text})


KEEP = object()


def event(document_id, text=None, data=KEEP, **changes):
    """document.cleaned as a structured event (a dict); data=None leaves
    data out, a change to None removes that attribute."""
    f = doc(document_id, text)
    ev = {k: v for k, v in f.items() if k != "data"}
    if data is KEEP:
        ev["data"] = json.loads(f["data"])
    elif data is not None:
        ev["data"] = data
    for k, v in changes.items():
        if v is None:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


def structured(ev):
    """The entry of a structured event: one field `event`."""
    text = ev if isinstance(ev, (str, bytes)) else \
        json.dumps(ev, ensure_ascii=False)
    return {"event": text}


def nested(depth, leaf="x"):
    """JSON text of `depth` nested arrays around a string, written out
    (json.dumps would recurse)."""
    return "[" * depth + json.dumps(leaf) + "]" * depth


def data_text(document_id, extra_members=""):
    """A document's JSON text with members spliced in verbatim."""
    return '{"document_id": %s, "cleaned_text": "t"%s}' % (
        json.dumps(document_id), extra_members)


class Corpus:
    """Entries published in order, each hostile one followed by a valid
    document, and what must become of each."""

    def __init__(self, env):
        self.env = env
        self.dead = {}          # entry id -> (label, pairs, reason, pats)
        self.ok = {}            # key -> (label, entry id, path, body)
        self.either = {}        # entry id -> dead's and ok's values
        self.valid_n = 0

    def xadd(self, fields):
        """XADD with the fields as given (bytes, duplicates, order kept);
        returns (entry id, [(name, value)] as bytes)."""
        pairs = fields if isinstance(fields, list) else list(fields.items())
        pairs = [(b(k), b(v)) for k, v in pairs]
        args = []
        for k, v in pairs:
            args += [k, v]
        entry_id = self.env.redis.execute_command("XADD", STREAM, "*", *args)
        return entry_id.decode(), pairs

    def valid(self):
        """A valid document, in the two layouts by turns."""
        self.valid_n += 1
        d = "valid-%03d" % self.valid_n
        f = doc(d, "valid text %d" % self.valid_n)
        if self.valid_n % 2 == 0:
            f = publish.structured(f)
        self._ok("valid", f, d, DOC_PATH,
                 {"document_id": d, "text": "valid text %d" % self.valid_n})

    def _ok(self, label, fields, key, path, body):
        assert key not in self.ok, "corpus error: key %r twice" % key
        entry_id, _ = self.xadd(fields)
        self.ok[key] = (label, entry_id, path, body)

    def expect_dead(self, label, fields, reason, *patterns):
        entry_id, pairs = self.xadd(fields)
        self.dead[entry_id] = (label, pairs, reason, patterns)
        self.valid()

    def expect_either(self, label, fields, key, body, reason, *patterns):
        """Processed like expect_ok, or dead-lettered like expect_dead:
        either is a correct outcome, a stall or a wrong request is not."""
        entry_id, pairs = self.xadd(fields)
        self.either[entry_id] = (label, pairs, reason, patterns, key,
                                 DOC_PATH, body)
        self.valid()

    def expect_ok(self, label, fields, key, body, path=DOC_PATH):
        self._ok(label, fields, key, path, body)
        self.valid()

    def expect_doc(self, label, fields, document_id, text):
        """A document.cleaned entry that must be triggered as is."""
        self.expect_ok(label, fields, document_id if isinstance(
            document_id, str) else compact(document_id),
            {"document_id": document_id, "text": text})


def header_text(value):
    """http.server decodes header bytes as Latin-1: back to the bytes
    curl sent, read as UTF-8."""
    return value.encode("latin-1").decode("utf-8", "replace")


def raw_dead_letters(env):
    """[(entry id, [(name, value), ...])] of the dead-letter stream with
    repeated field names kept (redis-py's dict would merge them)."""
    client = env.redis_server.client()
    client.set_response_callback("XRANGE", lambda r, **kw: r)
    out = []
    for entry_id, flat in client.execute_command("XRANGE", DLQ, "-", "+"):
        out.append((entry_id.decode(),
                    [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]))
    client.close()
    return out


def split_dead_letter(pairs):
    """(original fields, {dlq_* name: value}): the trailer starts at the
    last dlq_reason, so an original field named dlq_* stays original."""
    at = max(i for i, (k, _) in enumerate(pairs) if k == b"dlq_reason")
    return pairs[:at], {k.decode(): v for k, v in pairs[at:]}


def run_and_settle(env, corpus, config):
    """Starts the prefork daemon (two workers), waits until every entry is
    settled, stops it; returns the Daemon."""
    d = env.start(config)
    ndead = len(corpus.dead)
    total = env.redis.xlen(STREAM)

    def settled():
        g = env.groups().get(GROUP)
        if g is None or d.proc.poll() is not None:
            return d.proc.poll() is not None
        # Acknowledged only once its dead letter or ledger row is
        # written: all read and none pending is all settled.
        return (g["entries-read"] == total and g["lag"] == 0 and
                g["pending"] == 0 and env.pending() == 0)
    try:
        wait_until(settled, timeout=20, interval=0.2,
                   what="every entry read, settled and acknowledged")
    except AssertionError as e:
        labels = {i: v[0] for i, v in corpus.dead.items()}
        labels.update({i: v[0] for i, v in corpus.either.items()})
        labels.update({v[1]: v[0] for v in corpus.ok.values()})
        stuck = [labels.get(p["message_id"].decode(), "?")
                 for p in env.redis.xpending_range(STREAM, GROUP, "-", "+",
                                                   1000)]
        raise AssertionError("%s: group %r, %d of %d dead letters, %d of %d "
                             "requests; still pending: %s" % (
                                 e, env.groups().get(GROUP),
                                 env.redis.xlen(DLQ), ndead,
                                 len(env.requests()), len(corpus.ok),
                                 stuck))
    assert d.proc.poll() is None, "the daemon exited\n%s" % d.stderr
    # Nothing more comes: no late duplicate, no entry coming back.
    time.sleep(0.7)
    g = env.groups()[GROUP]
    assert (g["pending"], g["lag"]) == (0, 0), g
    assert g["entries-read"] == total, (g, total)
    assert d.stop() == EXIT_OK, d.stderr
    return d


def assert_no_crash(d):
    """The master saw no worker die, hang or crash-loop, and every worker
    it started stopped cleanly (exit 0 on SIGTERM)."""
    for msg in CRASH_SIGNS:
        assert not d.log(msg), "%s logged:\n%s" % (msg, d.stderr)
    exits = d.log("worker_exited")
    assert exits, d.stderr
    for rec in exits:
        assert rec["status"] == "exit:0" and rec["level"] == "info", \
            "a worker died: %r\n%s" % (rec, d.stderr)
    spawned = d.log("worker_spawned")
    assert len(spawned) == len(exits) == 2, d.stderr
    errors = [r for r in d.logs if r.get("level") in ("error", "fatal")]
    assert errors == [], "errors logged: %r" % errors


def assert_outcomes(env, corpus, d, ledger=True):
    """Dead letters, requests and (with ledger) ledger rows exactly as the
    corpus says: one row per request key."""
    failures = []

    # Dead letters: exactly the hostile entries expected, each once,
    # with its reason, a detail saying what is wrong, and its original
    # fields byte for byte.
    got = {}
    for dl_id, pairs in raw_dead_letters(env):
        original, trailer = split_dead_letter(pairs)
        src = trailer["dlq_source_id"].decode()
        if src in got:
            failures.append("entry %s dead-lettered twice" % src)
        got[src] = (original, trailer)
    # An entry that may go either way is judged by the way it went.
    for entry_id, (label, pairs, reason, patterns, key, path,
                   body) in corpus.either.items():
        if entry_id in got:
            corpus.dead[entry_id] = (label, pairs, reason, patterns)
        else:
            corpus.ok[key] = (label, entry_id, path, body)
    corpus.either = {}
    for entry_id, (label, pairs, reason, patterns) in corpus.dead.items():
        if entry_id not in got:
            failures.append("%s (%s): not dead-lettered" % (label, entry_id))
            continue
        original, trailer = got[entry_id]
        detail = trailer["dlq_detail"].decode("utf-8", "replace")
        if trailer["dlq_reason"].decode() != reason:
            failures.append("%s: reason %s, expected %s (%s)" % (
                label, trailer["dlq_reason"].decode(), reason, detail))
        for pat in patterns:
            if not re.search(pat, detail):
                failures.append("%s: detail %r does not match %r" % (
                    label, detail, pat))
        if original != pairs:
            failures.append("%s: original fields not kept byte for byte"
                            % label)
        if trailer["dlq_source_stream"] != STREAM.encode():
            failures.append("%s: dlq_source_stream %r" % (
                label, trailer["dlq_source_stream"]))
        # Details go to logs: printable, one line, bounded.
        if not re.fullmatch(r"[\x20-\x7e]{1,600}", detail):
            failures.append("%s: detail not one printable line: %r" % (
                label, detail))
        if not d.log("event_dead_lettered", entry_id=entry_id,
                     reason=reason):
            failures.append("%s: no event_dead_lettered log line" % label)
    for src in set(got) - set(corpus.dead):
        label = [v[0] for v in corpus.ok.values() if v[1] == src]
        failures.append("%s (%s) dead-lettered: %s %r" % (
            label, src, got[src][1]["dlq_reason"].decode(),
            got[src][1]["dlq_detail"].decode("utf-8", "replace")))

    # Requests: one per document that should go through, keyed and
    # carrying its document_id byte for byte.
    reqs = {}
    for q in env.requests():
        key = header_text(q["headers"].get("idempotency-key", ""))
        reqs.setdefault(key, []).append(q)
    for key, (label, entry_id, path, body) in corpus.ok.items():
        qs = reqs.get(key, [])
        if len(qs) != 1:
            failures.append("%s: %d requests with key %r" % (
                label, len(qs), key))
            continue
        q = qs[0]
        if "\ufffd" in q["body"] or q["json"] != body:
            failures.append("%s: body %r, expected %r" % (
                label, q["body"], body))
        if not q["path"].startswith(path):
            failures.append("%s: path %r" % (label, q["path"]))
    for key in set(reqs) - set(corpus.ok):
        failures.append("unexpected request(s) with key %r: %r" % (
            key, [q["body"][:200] for q in reqs[key]]))

    # The ledger: exactly those documents, triggered, from their entry.
    rows = {r["document_id"]: r for r in env.rows()} if ledger else {}
    for key, (label, entry_id, _, _) in corpus.ok.items():
        if not ledger:
            break
        row = rows.get(key)
        if row is None:
            failures.append("%s: no ledger row for %r" % (label, key))
        elif row["status"] != "triggered" or \
                row["stream_entry_id"] != entry_id:
            failures.append("%s: ledger row %r" % (label, {
                k: row[k] for k in ("status", "stream_entry_id",
                                    "last_error")}))
    for key in set(rows) - set(corpus.ok):
        failures.append("unexpected ledger row %r: %s" % (
            key, rows[key]["status"]))

    assert not failures, "\n".join(failures)


# ---- the corpus of single entries --------------------------------------

def invalid_utf8(c):
    bad = b"\xff\xfe"
    f = doc("utf8-source")
    c.expect_dead("utf-8: source", changed(f, {"source": b"stage1-" + bad}),
                  "invalid_event", r'attribute "source" is not valid UTF-8')
    c.expect_dead("utf-8: overlong subject",
                  changed(doc("utf8-subject"), {"subject": b"job/\xc0\xaf"}),
                  "invalid_event", r'attribute "subject" is not valid UTF-8')
    c.expect_dead("utf-8: surrogate in an extension",
                  changed(doc("utf8-ext"), {"traceid": b"\xed\xa0\x80"}),
                  "invalid_event", r'attribute "traceid" is not valid UTF-8')
    c.expect_dead("utf-8: in data",
                  with_data(doc("x"), b'{"document_id": "utf8-data-'
                            + bad + b'", "cleaned_text": "t"}'),
                  "invalid_event", r'attribute "data" is not valid UTF-8')
    c.expect_dead("utf-8: past U+10FFFF in data",
                  with_data(doc("x"), b'{"document_id": "utf8-f4-\xf4\x90'
                            b'\x80\x80", "cleaned_text": "t"}'),
                  "invalid_event", r'attribute "data" is not valid UTF-8')
    c.expect_dead("utf-8: truncated at the end of data",
                  with_data(doc("x"), b'{"document_id": "utf8-end", '
                            b'"cleaned_text": "t"}\xe2\x82'),
                  "invalid_event", r'attribute "data" is not valid UTF-8')
    c.expect_dead("utf-8: a field name",
                  changed(doc("utf8-name"), {b"ext\xff": "v"}),
                  "invalid_event", r'field name "ext\\xff" is not valid '
                  r'UTF-8')
    ev = json.dumps(event("utf8-structured-data")).encode()
    c.expect_dead("utf-8: structured, in data",
                  structured(ev.replace(b"utf8-structured-data",
                                        b"utf8-structured-\xff")),
                  "invalid_event", r"data is not valid UTF-8")
    ev = json.dumps(event("utf8-structured-id", id="evt-XX")).encode()
    c.expect_dead("utf-8: structured, in id",
                  structured(ev.replace(b"evt-XX", b"evt-\xc3\x28")),
                  "invalid_event", r'attribute "id" is not valid UTF-8')
    ev = json.dumps(event("utf8-structured-name", ext="v")).encode()
    c.expect_dead("utf-8: structured, an attribute name",
                  structured(ev.replace(b'"ext"', b'"ex\xfft"')),
                  "invalid_event", r'attribute name "ex\\xfft" is not '
                  r'valid UTF-8')
    c.expect_dead("utf-8: nothing but garbage",
                  publish.binary_garbage(), "invalid_event",
                  r"field name .* is not valid UTF-8")


def nul_bytes(c):
    c.expect_dead("NUL: in type",
                  changed(doc("nul-type"), {"type": DOCUMENT_CLEANED.encode()
                                            + b"\x00.evil"}),
                  "invalid_event", r'attribute "type" contains a NUL byte')
    c.expect_dead("NUL: raw, in data's document_id",
                  with_data(doc("x"), b'{"document_id": "nul-raw\x00hidden"'
                            b', "cleaned_text": "t"}'),
                  "invalid_event", r'attribute "data" contains a NUL byte')
    c.expect_dead("NUL: \\u0000 in data's document_id",
                  with_data(doc("x"), data_text("nul-esc\x00hidden")),
                  "invalid_event", r"data holds \\u0000")
    c.expect_dead("NUL: in a field name",
                  changed(doc("nul-name"), {b"ext\x00": "v"}),
                  "invalid_event", r'field name "ext\\x00" is not valid '
                  r'UTF-8')
    ev = json.dumps(event("nul-structured-raw")).encode()
    c.expect_dead("NUL: raw, structured",
                  structured(ev.replace(b"nul-structured-raw",
                                        b"nul-structured\x00raw")),
                  "invalid_event", r"field event contains a NUL byte")
    c.expect_dead("NUL: \\u0000 in a structured document_id",
                  structured(event("nul-structured\x00esc")),
                  "invalid_event", r"field event holds \\u0000")
    c.expect_dead("NUL: \\u0000 in a structured id",
                  structured(event("nul-structured-id", id="evt\x00x")),
                  "invalid_event", r"field event holds \\u0000")


def sizes_and_limits(c):
    big = 10 * 1024 * 1024
    c.expect_dead("10 MB data",
                  doc("big-flat", "x" * big), "too_large",
                  r"entry is \d+ bytes, max_event_bytes is %d"
                  % MAX_EVENT_BYTES)
    c.expect_dead("10 MB structured event",
                  structured(event("big-structured", "y" * big)),
                  "too_large", r"max_event_bytes is %d" % MAX_EVENT_BYTES)
    c.expect_dead("10 MB field name",
                  changed(doc("big-name"), {"n" * big: "v"}),
                  "too_large", r"max_event_bytes is %d" % MAX_EVENT_BYTES)

    many = [(k, v) for k, v in doc("fields-1000").items()]
    many += [("x%d" % i, "v") for i in range(1000 - len(many))]
    c.expect_dead("1000 fields", many, "too_large",
                  r"entry has 1000 fields, max_entry_fields is %d"
                  % MAX_ENTRY_FIELDS)
    many = list(structured(event("fields-structured")).items())
    many += [("pad%d" % i, "v") for i in range(999)]
    c.expect_dead("1000 fields beside a structured event", many,
                  "too_large", r"max_entry_fields is %d" % MAX_ENTRY_FIELDS)
    # At the limit: processed.
    at = [(k, v) for k, v in doc("fields-256").items()]
    at += [("x%d" % i, "v") for i in range(MAX_ENTRY_FIELDS - len(at))]
    c.expect_doc("256 fields", at, "fields-256", "text of fields-256")

    # Nesting: a million brackets cost a scan, not the stack.
    c.expect_dead("100000 [ as data",
                  with_data(doc("x"), "[" * 100000), "too_large",
                  r"data nests JSON deeper than max_json_depth \(%d\)"
                  % MAX_JSON_DEPTH)
    c.expect_dead("100000 balanced levels in data",
                  with_data(doc("x"), data_text(
                      "deep-balanced", ', "n": ' + nested(100000))),
                  "too_large", r"data nests JSON deeper than "
                  r"max_json_depth \(%d\)" % MAX_JSON_DEPTH)
    c.expect_dead("100000 { in a structured event",
                  structured('{"specversion": "1.0", "data": '
                             + "{" * 100000),
                  "too_large", r"event nests JSON deeper than "
                  r"max_json_depth \(%d\)" % MAX_JSON_DEPTH)
    c.expect_dead("65 levels in data",
                  with_data(doc("x"), data_text(
                      "depth-65", ', "n": ' + nested(MAX_JSON_DEPTH))),
                  "too_large", r"max_json_depth \(%d\)" % MAX_JSON_DEPTH)
    # data is level 1 in Stage 1's layout; the event object is level 1
    # in the structured one, its data level 2.
    c.expect_doc("64 levels in data",
                 with_data(doc("x"), data_text(
                     "depth-64", ', "n": ' + nested(MAX_JSON_DEPTH - 1))),
                 "depth-64", "t")
    ten = json.loads(nested(9, "leaf"))
    c.expect_doc("10 levels in data",
                 doc("depth-10", extra={"n": ten}), "depth-10",
                 "text of depth-10")
    c.expect_doc("10 levels in data, structured",
                 structured(event("depth-10-structured", data={
                     "document_id": "depth-10-structured",
                     "cleaned_text": "t", "n": ten})),
                 "depth-10-structured", "t")
    c.expect_doc("64 levels in a structured event",
                 structured('{"specversion": "1.0", "type": %s, "source": '
                            '"s", "id": "depth-64-s", "data": %s}' % (
                                json.dumps(DOCUMENT_CLEANED), data_text(
                                    "depth-64-structured", ', "n": ' +
                                    nested(MAX_JSON_DEPTH - 2)))),
                 "depth-64-structured", "t")
    c.expect_dead("65 levels in a structured event",
                  structured('{"specversion": "1.0", "type": %s, "source": '
                             '"s", "id": "depth-65-s", "data": %s}' % (
                                 json.dumps(DOCUMENT_CLEANED), data_text(
                                     "depth-65-structured", ', "n": ' +
                                     nested(MAX_JSON_DEPTH - 1)))),
                  "too_large", r"event nests JSON deeper than "
                  r"max_json_depth \(%d\)" % MAX_JSON_DEPTH)


def wrong_types(c):
    for attr, value, kind in [("id", 5, "number"), ("source", True,
                                                    "boolean"),
                              ("specversion", 1.0, "number"),
                              ("type", [DOCUMENT_CLEANED], "array"),
                              ("time", 1767630428, "number"),
                              ("subject", {"job": 1}, "object"),
                              ("datacontenttype", 7, "number"),
                              ("dataschema", False, "boolean")]:
        c.expect_dead("structured: %s is a %s" % (attr, kind),
                      structured(event("type-" + attr, **{attr: value})),
                      "invalid_event", r"attribute %s must be a string "
                      r"\(got %s\)" % (attr, kind))
    c.expect_dead("structured: data_base64 is a number",
                  structured(event("b64-num", data_base64=5, data=None)),
                  "invalid_event", r"data_base64 must be a string "
                  r"\(got number\)")
    c.expect_dead("structured: an extension is an object",
                  structured(event("ext-obj", meta={"a": 1})),
                  "invalid_event", r"extension meta must be a string, "
                  r"number or boolean \(got object\)")
    c.expect_dead("structured: an extension is an array",
                  structured(event("ext-arr", tags=["a"])),
                  "invalid_event", r"extension tags must be .*\(got array\)")
    # In data: a key is the value's JSON text; the body keeps its type.
    c.expect_doc("document_id is a number",
                 with_data(doc("x"), '{"document_id": 5, "cleaned_text": '
                           '12345}'), 5, 12345)
    c.expect_doc("document_id is a boolean, structured",
                 structured(event("x", data={"document_id": True,
                                             "cleaned_text": "t"})),
                 True, "t")
    c.expect_doc("document_id is an object",
                 with_data(doc("x"), '{"document_id": {"$ne": null}, '
                           '"cleaned_text": "t"}'), {"$ne": None}, "t")
    c.expect_dead("document_id is null",
                  with_data(doc("x"), '{"document_id": null, '
                            '"cleaned_text": "t"}'), "render_error",
                  r"route document: idempotency_key: cannot interpolate "
                  r"null value of data\.document_id")


def duplicate_keys(c):
    ev = json.dumps(event("dup-attr", id="evt-dup-1"))
    c.expect_dead("structured: id twice",
                  structured(ev[:-1] + ', "id": "evt-dup-2"}'),
                  "invalid_event", r'attribute "id" appears more than '
                  r'once in field event')
    ev = json.dumps(event("dup-data-attr"))
    c.expect_dead("structured: data twice",
                  structured(ev[:-1] + ', "data": {"document_id": '
                             '"dup-data-2", "cleaned_text": "t"}}'),
                  "invalid_event", r'attribute "data" appears more than '
                  r'once')
    c.expect_dead("structured: document_id twice in data",
                  structured(json.dumps(event("x", data="@@"))
                             .replace('"@@"', '{"document_id": "dup-a", '
                                      '"document_id": "dup-b", '
                                      '"cleaned_text": "t"}')),
                  "invalid_event", r'data has the member "document_id" '
                  r'twice in one object')
    c.expect_dead("document_id twice in data",
                  with_data(doc("x"), '{"document_id": "dup-c", '
                            '"cleaned_text": "t", "document_id": "dup-d"}'),
                  "invalid_event", r'data has the member "document_id" '
                  r'twice in one object')
    c.expect_dead("a member twice deep in data",
                  with_data(doc("x"), data_text(
                      "dup-deep", ', "entities": [{"t": 1, "t": 2}]')),
                  "invalid_event", r'data has the member "t" twice')
    f = doc("dup-field")
    c.expect_dead("a field twice in one entry",
                  list(f.items()) + [("source", "elsewhere")],
                  "invalid_event", r'field "source" appears more than once')


def cloudevents_rules(c):
    for attr in ("id", "source", "specversion", "type"):
        c.expect_dead("missing %s" % attr,
                      changed(doc("missing-" + attr), {attr: None}),
                      "invalid_event",
                      r"required attribute %s is missing" % attr)
        c.expect_dead("empty %s" % attr,
                      changed(doc("empty-" + attr), {attr: ""}),
                      "invalid_event",
                      r"required attribute %s is empty" % attr)
    c.expect_dead("structured: id null",
                  structured(dict(event("null-id"), id=None)),
                  "invalid_event", r"required attribute id is missing")
    c.expect_dead("nothing but unknown fields", {"foo": "bar"},
                  "invalid_event",
                  r"required attribute specversion is missing")
    for v in ("0.3", "2.0", "1.0 ", "1", "v1.0"):
        c.expect_dead("specversion %r" % v,
                      changed(doc("specversion-" + v), {"specversion": v}),
                      "invalid_event",
                      r'specversion must be "1\.0" \(got "%s"\)'
                      % re.escape(v))
    c.expect_dead("structured: specversion 0.3",
                  structured(event("specversion-s", specversion="0.3")),
                  "invalid_event", r'specversion must be "1\.0"')
    for v in ("stage 1 cleaning", "1:2", "%zz", "a\\b", "<source>"):
        c.expect_dead("source %r" % v,
                      changed(doc("source-" + v), {"source": v}),
                      "invalid_event",
                      r'source "%s" is not a URI-reference'
                      % re.escape(v.replace("\\", "\\\\")))
    for v in ("2026-01-05 16:27:08Z", "2026-01-05T16:27Z",
              "2026-02-30T00:00:00Z", "2026-01-05T16:27:08+24:00",
              "2026-01-05T16:27:08", "yesterday", "2026-01-05T25:00:00Z",
              "2026-13-01T00:00:00Z", "2026-01-05T16:27:08.Z",
              "1767630428"):
        c.expect_dead("time %r" % v, changed(doc("time-" + v), {"time": v}),
                      "invalid_event",
                      r'time "%s" is not RFC 3339' % re.escape(v))
    for i, v in enumerate(("2026-01-05T16:27:08.123456789+23:59",
                           "2016-12-31T23:59:60Z", "2026-01-05t16:27:08z")):
        d = "time-ok-%d" % i
        c.expect_doc("time %r is RFC 3339" % v, doc(d, time=v), d,
                     "text of " + d)
    for v in ("json", "application/", "text/plain; charset",
              "application/json;;"):
        c.expect_dead("datacontenttype %r" % v,
                      changed(doc("ct-" + v), {"datacontenttype": v}),
                      "invalid_event",
                      r'datacontenttype "%s" is not a media type'
                      % re.escape(v))
    for v in ("not a uri", "/relative/schema", "urn:"):
        c.expect_dead("dataschema %r" % v,
                      changed(doc("schema-" + v), {"dataschema": v}),
                      "invalid_event",
                      r'dataschema "%s" is not an absolute URI'
                      % re.escape(v))
    c.expect_dead("subject with a newline",
                  changed(doc("subject-nl"), {"subject": "job/1\nX: y"}),
                  "invalid_event", r"attribute subject contains a control "
                  r"character \(U\+000A\)")
    c.expect_dead("id with CR LF (a header to be)",
                  changed(doc("id-crlf"), {"id": "evt\r\nX-Injected: 1"}),
                  "invalid_event", r"attribute id contains a control "
                  r"character \(U\+000D\)")
    c.expect_dead("type with a C1 control",
                  changed(doc("type-c1"), {"type": "a\u0085b"}),
                  "invalid_event", r"attribute type contains a control "
                  r"character \(U\+0085\)")
    c.expect_dead("type with a noncharacter",
                  changed(doc("type-nonchar"), {"type": "a\ufffeb"}),
                  "invalid_event", r"attribute type contains a "
                  r"noncharacter \(U\+FFFE\)")
    for name in ("Traceparent", "a" * 21, "trace-id", "trace_id",
                 "dlq_reason", "\u00e9t\u00e9"):
        c.expect_dead("extension name %r" % name,
                      changed(doc("ext-" + name), {name: "forged"}),
                      "invalid_event",
                      r'extension name "%s" must match \[a-z0-9\]\{1,20\}'
                      % re.escape(name) if name.isascii() else
                      r"extension name .* must match \[a-z0-9\]\{1,20\}")
    c.expect_dead("structured: extension name 'Bad'",
                  structured(event("ext-s", Bad="x")), "invalid_event",
                  r'extension name "Bad" must match')
    c.expect_doc("extension name of 20 characters",
                 changed(doc("ext-20"), {"abcdefghij0123456789": "v"}),
                 "ext-20", "text of ext-20")
    c.expect_dead("data and data_base64",
                  changed(doc("both"), {"data_base64": "eyJhIjoxfQ=="}),
                  "invalid_event", r"data and data_base64 are both present")
    c.expect_dead("data_base64 not base64",
                  changed(doc("b64"), {"data": None,
                                       "data_base64": "!!not base64!!"}),
                  "invalid_event", r"data_base64 is not valid base64")
    c.expect_dead("data_base64 only: no data.document_id",
                  changed(doc("b64-only"), {"data": None,
                                            "data_base64": "eyJhIjoxfQ=="}),
                  "render_error", r"no value at data\.document_id")
    c.expect_dead("data not JSON",
                  with_data(doc("x"), '{"document_id": "trunc'),
                  "invalid_event", r"data is not valid JSON "
                  r"\(datacontenttype application/json\)")
    c.expect_dead("data with trailing garbage",
                  with_data(doc("x"), data_text("trailing") + " }{"),
                  "invalid_event", r"data is not valid JSON")
    c.expect_dead("data not JSON, no datacontenttype",
                  changed(doc("x"), {"datacontenttype": None,
                                     "data": "<xml/>"}),
                  "invalid_event", r"data is not valid JSON \(no "
                  r"datacontenttype, so JSON is assumed\)")
    # Not JSON by its datacontenttype: data is a string in this layout.
    c.expect_dead("datacontenttype text/plain, data an object's text",
                  changed(doc("ct-text-flat"),
                          {"datacontenttype": "text/plain"}),
                  "render_error", r"route document: idempotency_key: no "
                  r"value at data\.document_id")
    c.expect_doc("structured: datacontenttype text/plain, data an object",
                 structured(event("ct-text-structured",
                                  datacontenttype="text/plain")),
                 "ct-text-structured", "text of ct-text-structured")
    c.expect_doc("datacontenttype application/ld+json",
                 changed(doc("ct-ld"),
                         {"datacontenttype": "application/ld+json"}),
                 "ct-ld", "text of ct-ld")
    for text, kind in (("[]", "array"), ('"an event"', "string"),
                       ("null", "null"), ("5", "number")):
        c.expect_dead("structured: event is a %s" % kind,
                      structured(text), "invalid_event",
                      r"field event must hold a JSON object \(got %s\)"
                      % kind)
    c.expect_dead("structured: truncated JSON",
                  structured(json.dumps(event("trunc-s"))[:-20]),
                  "invalid_event",
                  r"field event is not valid JSON \(error at byte \d+\)")
    c.expect_dead("structured: empty", structured(""), "invalid_event",
                  r"field event is not valid JSON")


def document_ids(c):
    for i, d in enumerate(ODD_IDS):
        c.expect_doc("odd id %r" % d[:40], doc(d, d), d, d)
        s = "structured:" + d
        c.expect_doc("odd id %r, structured" % d[:40],
                     structured(event(s, s)), s, s)
    for d, why in BAD_IDS:
        c.expect_dead("bad id %r" % d, doc(d, "t"), "render_error",
                      r"route document: " + why)
        c.expect_dead("bad id %r, structured" % d,
                      structured(event(d, "t")), "render_error",
                      r"route document: " + why)


def templates(c):
    def ev(key, **data):
        fields = publish.event_fields(TEMPLATE_TYPE, dict(data, key=key))
        return fields

    good = {"section": "s1", "tags": ["x", 'y"z', 1],
            "meta": {"owner": {"name": "ann"}}}
    c.expect_ok("template: all there", ev("k1", **good), "t:k1",
                {"key": "k1", "tags": ["x", 'y"z', 1],
                 "label": "tags=" + compact(["x", 'y"z', 1]),
                 "owner": "ann"}, path=TEMPLATE_PATH + "s1")
    # An array where the key wants text: its compact JSON (man page:
    # "an object or array as compact JSON"); whole in a body: an array.
    c.expect_ok("template: the key resolves to an array",
                ev(["k", 2], **good), "t:" + compact(["k", 2]),
                {"key": ["k", 2], "tags": ["x", 'y"z', 1],
                 "label": "tags=" + compact(["x", 'y"z', 1]),
                 "owner": "ann"}, path=TEMPLATE_PATH + "s1")
    c.expect_dead("template: a body path is missing",
                  ev("k2", section="s1", tags=[]), "render_error",
                  r"route template: body: no value at "
                  r"data\.meta\.owner\.name")
    c.expect_dead("template: a path's path is missing",
                  ev("k3", tags=[], meta=good["meta"]), "render_error",
                  r"route template: path: no value at data\.section")
    c.expect_dead("template: a path goes on through an array",
                  ev("k4", section="s1", tags=[],
                     meta={"owner": [{"name": "ann"}]}), "render_error",
                  r"route template: body: no value at "
                  r"data\.meta\.owner\.name")
    c.expect_dead("template: the key is null", ev(None, **good),
                  "render_error", r"route template: idempotency_key: "
                  r"cannot interpolate null value of data\.key")
    fields = publish.event_fields(TEMPLATE_TYPE, [good])
    c.expect_dead("template: data is an array", fields, "render_error",
                  r"route template: idempotency_key: no value at data\.key")


def test_hostile_entries_are_dead_lettered_or_processed(env):
    """The corpus of single entries, in both layouts, each followed by a
    valid document; two workers under the master."""
    c = Corpus(env)
    for part in (invalid_utf8, nul_bytes, sizes_and_limits, wrong_types,
                 duplicate_keys, cloudevents_rules, document_ids,
                 templates):
        part(c)
    config = env.write_config(routes=[DOC_ROUTE, TEMPLATE_ROUTE],
                              concurrent_tasks=2, batch_size=10)

    d = run_and_settle(env, c, config)

    assert_no_crash(d)
    assert_outcomes(env, c, d)


def run_documents(env, c):
    config = env.write_config(routes=[DOC_ROUTE], concurrent_tasks=2)
    d = run_and_settle(env, c, config)
    assert_no_crash(d)
    assert_outcomes(env, c, d)


def test_long_document_ids_are_processed_or_dead_lettered(env):
    """A document_id is the ledger's key, and a btree index holds at most
    about 2.7 kB of one (less compressed). A long id is processed under
    the same key in the ledger and at the API, or dead-lettered naming
    the limit; never may it hold up the valid documents read with it."""
    c = Corpus(env)
    rng = random.Random(20260105)
    for n in (2000, 3000, 10240):
        d = "long-%d-" % n + "".join(rng.choice(string.ascii_letters +
                                                string.digits)
                                     for _ in range(n))
        c.expect_either("a %d-byte document_id" % n, doc(d, "long"), d,
                        {"document_id": d, "text": "long"}, "render_error",
                        r"route document: idempotency_key: .*\d+ bytes")
    d = "long-repetitive-" + "ab" * 5120
    c.expect_either("a 10 kB document_id that compresses", doc(d, "long"),
                    d, {"document_id": d, "text": "long"}, "render_error",
                    r"route document: idempotency_key: .*\d+ bytes")

    run_documents(env, c)


def test_document_ids_edged_with_blanks_keep_one_key(env):
    """The key is also the Idempotency-Key header, whose parsers drop
    leading and trailing blanks (RFC 9110 §5.5): "  a" and "a" would be
    two documents to the ledger and one to the API. Such an id is
    processed under its trimmed key in both places, or dead-lettered."""
    c = Corpus(env)
    for d in ("  leading blanks", "trailing blanks  ", " both "):
        c.expect_either("a document_id %r" % d, doc(d, "edged"), d.strip(),
                        {"document_id": d, "text": "edged"}, "render_error",
                        r"route document: idempotency_key: .*(blank|space|"
                        r"whitespace)")
    c.expect_dead("a document_id of blanks", doc("   ", "blank"),
                  "render_error", r"route document: idempotency_key: ")

    run_documents(env, c)


class Jobs(Corpus):
    """job.completed events: valid jobs whose documents have odd ids, and
    jobs naming hostile documents files, one valid job after each."""

    def __init__(self, env):
        super().__init__(env)
        self.jobs = 0
        self.documents = []     # every document of the valid jobs

    def valid(self):
        self.jobs += 1
        job = "job-ok-%d" % self.jobs
        ids = ["%s %s" % (job, d) for d in
               ("plain", "it's", 'say "hi"', "'; DROP TABLE documents; --",
                "$(rm -rf /)", "`id`", "\u6587\u66f8 \U0001f4c4", "%00",
                "back\\slash", "{{documents}}")]
        path = self.env.write_documents("stage1/%s.jsonl" % job, ids,
                                        job_id=job, batch_id="b-" + job)
        self._ok(job, publish.job_completed(job, "b-" + job, len(ids),
                                            output_location=path),
                 "job:" + job, BATCH_PATH,
                 {"documents": [publish.document(i, "batch text",
                                                 job_id=job,
                                                 batch_id="b-" + job)
                                for i in ids], "batch_id": "b-" + job})
        self.documents.extend(ids)

    def job(self, label, location, reason, *patterns):
        """A job naming location (None: no output_location)."""
        self.expect_dead(label, publish.job_completed(
            "job-%d-hostile" % (self.jobs + 1), "b",
            output_location=location), reason, *patterns)

    def file(self, label, name, content, *patterns):
        """A job naming a file of content, refused as documents_file."""
        path = os.path.join(self.env.shared, "stage1", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        self.job(label, path, "documents_file", *patterns)


def run_jobs(env, c):
    """Runs a Jobs corpus (batch_mode) and checks it: requests and dead
    letters as for single entries; the ledger holds one row per document
    of the valid files, none of a refused file's."""
    config = env.write_config(routes=[DOC_ROUTE, BATCH_ROUTE],
                              batch_mode=True, concurrent_tasks=2,
                              max_retries=1, retry_delay_seconds=0.05,
                              max_retry_delay_seconds=0.1)
    d = run_and_settle(env, c, config)

    assert_no_crash(d)
    assert_outcomes(env, c, d, ledger=False)
    rows = {r["document_id"]: r["status"] for r in env.rows()}
    assert rows == {i: "triggered" for i in c.documents}, \
        sorted(set(rows) ^ set(c.documents))


def test_hostile_documents_files_are_dead_lettered(env):
    """Files of garbage, of a million lines, and broken in every way the
    reader checks, between valid jobs."""
    c = Jobs(env)
    c.valid()
    rng = random.Random(9)
    c.file("binary garbage", "garbage.jsonl",
           b"\x89PNG\r\n\x1a\n" + rng.randbytes(256 * 1024),
           r"route batch: line 1: not valid UTF-8")
    line = b'{"document_id": "m", "cleaned_text": "x"}\n'
    c.file("a million lines", "million.jsonl", line * 1000000,
           r"route batch: 1000000 documents, more than "
           r"max_documents_per_file \(%d\)" % MAX_DOCUMENTS_PER_FILE)
    c.file("one line too many", "over.jsonl",
           b"".join(b'{"document_id": "o-%d"}\n' % i
                    for i in range(MAX_DOCUMENTS_PER_FILE + 1)),
           r"%d documents, more than max_documents_per_file"
           % (MAX_DOCUMENTS_PER_FILE + 1))
    c.file("100000 [ on a line", "deep.jsonl",
           b'{"document_id": "deep-ok"}\n' + b"[" * 100000 + b"\n",
           r"line 2: nests JSON deeper than max_json_depth \(%d\)"
           % MAX_JSON_DEPTH)
    c.file("a line over max_event_bytes", "long-line.jsonl",
           b'{"document_id": "long", "cleaned_text": "'
           + b"z" * (2 * MAX_EVENT_BYTES) + b'"}\n',
           r"line 1: \d+ bytes, over the line limit \(max_event_bytes "
           r"%d\)" % MAX_EVENT_BYTES)
    c.file("document_id twice on a line", "dup.jsonl",
           b'{"document_id": "dup-1", "document_id": "dup-2"}\n',
           r'line 1: the member "document_id" appears twice')
    c.file("document_id a number", "number.jsonl",
           b'{"document_id": "n-1"}\n{"document_id": 5}\n',
           r"line 2: document_id is not a string")
    c.file("a line that is an array", "array.jsonl",
           b'["document_id", "a-1"]\n', r"line 1: expected a JSON object")
    c.file("document_id with a tab", "tab.jsonl",
           b'{"document_id": "tab\\there"}\n',
           r"line 1: document_id contains a control character")
    c.file("\\u0000 in a document_id", "nul-escape.jsonl",
           b'{"document_id": "nul\\u0000hidden"}\n',
           r"line 1: a string holds \\u0000")
    # The path: missing, a control character, an array where a path
    # should be (the key text is its compact JSON: no such file, tried
    # max_retries more times).
    c.job("no output_location", None, "render_error",
          r"route batch: documents_file: no value at data\.output_location")
    c.job("a newline in the path", "stage1/a\nb.jsonl", "documents_file",
          r"the documents file path contains a control character")
    c.job("output_location an array", ["stage1/job-ok-1.jsonl"],
          "documents_file", r'\["stage1/job-ok-1\.jsonl"\].*No such file'
          r".*gave up after 2 tries")

    run_jobs(env, c)


def test_documents_files_that_are_json_but_not_text(env):
    """Lines that cJSON reads but that are not JSON text: a raw NUL inside
    a string (RFC 8259 wants control characters escaped; read as C text
    the id is cut there) and bytes that are not UTF-8 (PostgreSQL refuses
    them). The ledger and the API must not get another id than the file
    holds, and one bad file must not hold up the jobs read with it."""
    c = Jobs(env)
    c.valid()
    c.file("a raw NUL inside a document_id", "nul-raw.jsonl",
           b'{"document_id": "nul-raw\x00hidden", "cleaned_text": "x"}\n',
           r"route batch: line 1: ")
    c.file("invalid UTF-8 in a document_id", "utf8.jsonl",
           b'{"document_id": "utf8-\xff\xfe", "cleaned_text": "x"}\n',
           r"route batch: line 1: .*UTF-8")
    c.file("invalid UTF-8 in a document's text", "utf8-text.jsonl",
           b'{"document_id": "utf8-text", "cleaned_text": "\xc3\x28"}\n',
           r"route batch: line 1: .*UTF-8")

    run_jobs(env, c)


# ---- CloudEvents Integer extensions --------------------------------------

def test_extension_numbers_must_be_cloudevents_integers(env):
    """CloudEvents has no floating point type: a JSON number extension is
    an Integer, "only the integer component optionally prefixed with a
    minus sign" (JSON format §2.2), within a signed 32-bit range (core
    spec, type system). 3.5 and 2^31 are not CloudEvents values. 1e3 is
    read as the whole number it is (1000), not refused for its spelling:
    the value is what the type system constrains, and the event is passed
    on with 1000."""
    c = Corpus(env)
    for name, text in (("fraction", "3.5"), ("toobig", "2147483648"),
                       ("toosmall", "-2147483649")):
        ev = json.dumps(event("ext-num-" + name, seq="@@"))
        c.expect_dead("extension %s" % text,
                      structured(ev.replace('"@@"', text)),
                      "invalid_event", r"extension seq")
    ev = json.dumps(event("ext-num-ok", seq="@@"))
    c.expect_doc("extension -2147483648", structured(
        ev.replace('"@@"', "-2147483648")), "ext-num-ok",
        "text of ext-num-ok")
    ev = json.dumps(event("ext-num-exponent", seq="@@"))
    c.expect_doc("extension 1e3", structured(ev.replace('"@@"', "1e3")),
                 "ext-num-exponent", "text of ext-num-exponent")

    run_documents(env, c)
