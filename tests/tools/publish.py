#!/usr/bin/python3
"""publish.py: append Stage-1-layout CloudEvents to a Redis Stream.

Stage 1 (cleaning) writes one stream field per CloudEvent attribute
(DESIGN.md §1):

    XADD stage1:cleaning:events MAXLEN ~ 10000 *
      specversion "1.0"  type <type>  source "stage1-cleaning-pipeline"
      id <uuid4>  time "2026-01-05T16:27:08.268110Z"  subject "job/<job_id>"
      datacontenttype "application/json"  data <JSON text>

The builders below (document_cleaned, job_started, job_progress,
job_completed, and the malformed samples) return such a field mapping;
publish() appends one. Publisher bundles a client and a stream.

Command line:

    publish.py --redis-port P [--stream S] --demo
        the proposal's backlog: 350 events (documents, re-published
        duplicates, job lifecycle events, 6 malformed entries)
    publish.py --redis-port P --documents N
        N document.cleaned events
    publish.py --redis-port P --malformed KIND   (KIND: see --help)
"""

import argparse
import datetime
import json
import random
import sys
import uuid

DEFAULT_STREAM = "stage1:cleaning:events"
SOURCE = "stage1-cleaning-pipeline"
MAXLEN = 10000

PREFIX = "com.storytelling.cleaning."
DOCUMENT_CLEANED = PREFIX + "document.cleaned"
JOB_STARTED = PREFIX + "job.started"
JOB_PROGRESS = PREFIX + "job.progress"
JOB_COMPLETED = PREFIX + "job.completed"
JOB_FAILED = PREFIX + "job.failed"

# Marks "compute the default" where None means "leave the field out".
DEFAULT = object()


def rfc3339_now():
    """The time Stage 1 writes: UTC, microseconds, 'Z'."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_fields(type_, data, *, subject="", event_id=None, time=None,
                 source=SOURCE, specversion="1.0",
                 datacontenttype="application/json", extensions=None):
    """One field per attribute, in Stage 1's order.

    data: a JSON-serialisable object (written as JSON text), a str/bytes
    written as is, or None (the field is left out, as Stage 1 does for an
    empty payload). Attributes given as None are left out.
    """
    fields = {
        "specversion": specversion,
        "type": type_,
        "source": source,
        "id": event_id if event_id is not None else str(uuid.uuid4()),
        "time": time if time is not None else rfc3339_now(),
        "subject": subject,
        "datacontenttype": datacontenttype,
    }
    for k, v in (extensions or {}).items():
        fields[k] = v
    if data is not None:
        fields["data"] = data if isinstance(data, (str, bytes)) \
            else json.dumps(data, ensure_ascii=False)
    return {k: v for k, v in fields.items() if v is not None}


def _job_subject(job_id):
    return "job/%s" % job_id if job_id else ""


def document(document_id, text, *, job_id=None, batch_id=None, title=None,
             version=1, extra=None):
    """A Stage 1 document: document.cleaned's data, and one line of a
    job's JSONL output file."""
    data = {
        "document_id": document_id,
        "job_id": job_id,
        "batch_id": batch_id,
        "cleaned_title": title if title is not None
        else "Document %s" % document_id,
        "cleaned_text": text,
        "cleaned_author": "Stage 1 Fixtures",
        "cleaned_publication_date": "2026-01-05",
        "version": version,
        "entities": [],
        "word_count": len(text.split()) if isinstance(text, str) else 0,
    }
    if job_id is None:
        del data["job_id"]
    if batch_id is None:
        del data["batch_id"]
    data.update(extra or {})
    return data


def document_cleaned(document_id, text, *, job_id=None, batch_id=None,
                     title=None, version=1, event_id=None, time=None,
                     extra=None):
    """com.storytelling.cleaning.document.cleaned for one document."""
    data = document(document_id, text, job_id=job_id, batch_id=batch_id,
                    title=title, version=version, extra=extra)
    return event_fields(DOCUMENT_CLEANED, data,
                        subject=_job_subject(job_id), event_id=event_id,
                        time=time)


def job_started(job_id, batch_id, documents_total=100, *, event_id=None):
    data = {"job_id": job_id, "batch_id": batch_id,
            "documents_total": documents_total,
            "started_at": rfc3339_now()}
    return event_fields(JOB_STARTED, data, subject=_job_subject(job_id),
                        event_id=event_id)


def job_progress(job_id, batch_id, documents_processed, documents_total,
                 *, event_id=None):
    pct = round(100.0 * documents_processed / documents_total, 1) \
        if documents_total else 100.0
    data = {"job_id": job_id, "batch_id": batch_id,
            "documents_processed": documents_processed,
            "documents_total": documents_total, "progress_percent": pct}
    return event_fields(JOB_PROGRESS, data, subject=_job_subject(job_id),
                        event_id=event_id)


def job_completed(job_id, batch_id, documents_processed=100,
                  documents_failed=0, documents_total=None, *,
                  output_location=DEFAULT, processing_time_ms=41150.82,
                  event_id=None):
    """job.completed; output_location defaults to the proposal's
    /shared/stage1/<batch_id>.jsonl (None leaves it out, as Stage 1's own
    events do)."""
    if documents_total is None:
        documents_total = documents_processed + documents_failed
    data = {"job_id": job_id, "batch_id": batch_id,
            "documents_processed": documents_processed,
            "documents_failed": documents_failed,
            "documents_total": documents_total,
            "processing_time_ms": processing_time_ms}
    if output_location is DEFAULT:
        output_location = "/shared/stage1/%s.jsonl" % (batch_id or job_id)
    if output_location is not None:
        data["output_location"] = output_location
    return event_fields(JOB_COMPLETED, data, subject=_job_subject(job_id),
                        event_id=event_id)


def structured(fields, event_field="event"):
    """The same event in structured mode: one field holding the whole JSON
    CloudEvent (how Stage 2's own publisher writes)."""
    ev = {k: v for k, v in fields.items() if k != "data"}
    if "data" in fields:
        ev["data"] = json.loads(fields["data"])
    return {event_field: json.dumps(ev, ensure_ascii=False)}


# ---- malformed samples -------------------------------------------------
# Each returns the fields of one entry that breaks one rule. The rule is
# named so tests can expect it in dlq_detail.

def bad_json(document_id="doc-bad-json"):
    """data is not JSON (truncated text)."""
    f = document_cleaned(document_id, "never mind")
    f["data"] = '{"document_id": "%s", "cleaned_text": "trunc' % document_id
    return f


def wrong_specversion(document_id="doc-specversion"):
    """specversion "0.3" (CloudEvents 1.0 demands "1.0")."""
    f = document_cleaned(document_id, "an old producer")
    f["specversion"] = "0.3"
    return f


def missing_id(document_id="doc-missing-id"):
    """The required attribute id is absent."""
    f = document_cleaned(document_id, "no event id")
    del f["id"]
    return f


def empty_type(document_id="doc-empty-type"):
    """type present but empty."""
    f = document_cleaned(document_id, "no type")
    f["type"] = ""
    return f


def binary_garbage():
    """Field names and values that are not UTF-8 at all."""
    return {
        b"\xff\xfe\x00garbage": b"\x80\x81\x82\xc3\x28\x00\xfe",
        b"\xc0\xaf": bytes(range(0xf0, 0x100)),
        b"\xe2\x28\xa1": b"\x00\x01\x02\x03",
    }


def oversized(size=1024 * 1024 + 64 * 1024, document_id="doc-oversized"):
    """A document.cleaned entry of more than `size` bytes (default > 1 MiB,
    the default max_event_bytes)."""
    unit = "lorem ipsum dolor sit amet "
    text = (unit * (size // len(unit) + 1))[:size]
    return document_cleaned(document_id, text)


def missing_document_id():
    """A valid CloudEvent whose data lacks document_id: the route cannot
    render its key (render_error, not invalid_event)."""
    f = document_cleaned("unused", "a document without an id")
    data = json.loads(f["data"])
    del data["document_id"]
    f["data"] = json.dumps(data)
    return f


# kind -> (builder, dlq_reason the consumer must give)
MALFORMED = {
    "bad_json": (bad_json, "invalid_event"),
    "specversion_0.3": (wrong_specversion, "invalid_event"),
    "missing_id": (missing_id, "invalid_event"),
    "binary_garbage": (binary_garbage, "invalid_event"),
    "oversized": (oversized, "too_large"),
    "empty_type": (empty_type, "invalid_event"),
}


# ---- publishing --------------------------------------------------------

def publish(client, fields, stream=DEFAULT_STREAM, maxlen=MAXLEN):
    """XADD stream MAXLEN ~ maxlen * fields...; returns the entry id."""
    entry_id = client.xadd(stream, fields, id="*", maxlen=maxlen,
                           approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


class Published:
    """What was appended: entry id, event id (None if absent), fields."""

    def __init__(self, entry_id, fields):
        self.entry_id = entry_id
        self.fields = fields
        self.id = fields.get("id") if isinstance(fields.get("id"), str) \
            else None
        self.type = fields.get("type")
        try:
            self.data = json.loads(fields["data"])
        except (KeyError, TypeError, ValueError):
            self.data = None

    def __repr__(self):
        return "Published(%s, %s, %s)" % (self.entry_id, self.type, self.id)


class Publisher:
    """A client and a stream: publisher.document_cleaned("doc-1", "text")."""

    def __init__(self, client, stream=DEFAULT_STREAM, maxlen=MAXLEN):
        self.client = client
        self.stream = stream
        self.maxlen = maxlen

    def fields(self, fields):
        return Published(publish(self.client, fields, self.stream,
                                 self.maxlen), fields)

    def document_cleaned(self, document_id, text, **kw):
        return self.fields(document_cleaned(document_id, text, **kw))

    def job_started(self, *a, **kw):
        return self.fields(job_started(*a, **kw))

    def job_progress(self, *a, **kw):
        return self.fields(job_progress(*a, **kw))

    def job_completed(self, *a, **kw):
        return self.fields(job_completed(*a, **kw))

    def malformed(self, kind, **kw):
        return self.fields(MALFORMED[kind][0](**kw))


# ---- the proposal's backlog --------------------------------------------

SENTENCES = [
    "The harbour lights came on one by one as the ferry pulled away.",
    "Officials confirmed the bridge will reopen after the spring repairs.",
    "A local archive published letters written during the long winter.",
    "The festival drew record crowds despite the steady rain.",
    "Researchers traced the river's old course using satellite images.",
    "The council voted to extend library hours in the northern districts.",
    "Fishermen reported an unusually early return of the herring shoals.",
    "A retired teacher recorded the village's oral histories on tape.",
    "The museum restored a nineteenth-century map of the coastline.",
    "Volunteers planted three thousand trees along the new cycle path.",
]

DEMO_JOBS = 4
DEMO_DOCS_PER_JOB = 80
DEMO_DUPLICATES_PER_JOB = 2


def demo_backlog(seed=20260105):
    """The proposal's 350-event backlog as a list of (label, fields).

    4 jobs of 80 documents each: job.started, 40 documents, job.progress,
    40 documents, job.progress, 2 documents re-published (same document
    id, new event id), job.completed; plus the 6 malformed samples spread
    through the stream. 4*(1+80+2+2+1) + 6 = 350.
    """
    rng = random.Random(seed)
    events = []
    malformed = list(MALFORMED)
    doc_no = 0
    for j in range(1, DEMO_JOBS + 1):
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        batch_id = "batch_20260105_%02d" % j
        events.append(("job.started",
                       job_started(job_id, batch_id, DEMO_DOCS_PER_JOB)))
        docs = []
        for k in range(DEMO_DOCS_PER_JOB):
            doc_no += 1
            doc_id = "doc-%04d" % doc_no
            text = " ".join(rng.sample(SENTENCES, 2))
            docs.append((doc_id, text))
            events.append(("document.cleaned",
                           document_cleaned(doc_id, text, job_id=job_id,
                                            batch_id=batch_id)))
            if (k + 1) % (DEMO_DOCS_PER_JOB // 2) == 0:
                events.append(("job.progress",
                               job_progress(job_id, batch_id, k + 1,
                                            DEMO_DOCS_PER_JOB)))
            # A malformed entry now and then, as real streams have them.
            if malformed and k == 20 + 30 * (len(malformed) % 2):
                kind = malformed.pop(0)
                events.append(("malformed:" + kind, MALFORMED[kind][0]()))
        for doc_id, text in rng.sample(docs, DEMO_DUPLICATES_PER_JOB):
            events.append(("document.cleaned (re-published)",
                           document_cleaned(doc_id, text, job_id=job_id,
                                            batch_id=batch_id)))
        events.append(("job.completed",
                       job_completed(job_id, batch_id, DEMO_DOCS_PER_JOB)))
    for kind in malformed:
        events.append(("malformed:" + kind, MALFORMED[kind][0]()))
    return events


def publish_demo(client, stream=DEFAULT_STREAM, out=sys.stdout):
    events = demo_backlog()
    counts = {}
    for label, fields in events:
        publish(client, fields, stream)
        counts[label] = counts.get(label, 0) + 1
    out.write("published %d events to %s:\n" % (len(events), stream))
    for label in sorted(counts):
        out.write("  %5d  %s\n" % (counts[label], label))
    out.write("stream length now %d\n" % client.xlen(stream))
    return events


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Append Stage-1-layout CloudEvents to a Redis Stream.")
    ap.add_argument("--redis-host", default="127.0.0.1")
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--redis-db", type=int, default=0)
    ap.add_argument("--stream", default=DEFAULT_STREAM)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--demo", action="store_true",
                      help="the proposal's 350-event backlog")
    what.add_argument("--documents", type=int, metavar="N",
                      help="N document.cleaned events")
    what.add_argument("--malformed", choices=sorted(MALFORMED),
                      help="one malformed entry")
    args = ap.parse_args(argv)

    import redis
    client = redis.Redis(host=args.redis_host, port=args.redis_port,
                         db=args.redis_db)
    try:
        client.ping()
    except redis.exceptions.RedisError as e:
        sys.stderr.write("publish.py: cannot reach Redis at %s:%d: %s\n"
                         % (args.redis_host, args.redis_port, e))
        return 1
    if args.demo:
        publish_demo(client, args.stream)
    elif args.documents is not None:
        for i in range(1, args.documents + 1):
            doc_id = "doc-%s-%d" % (uuid.uuid4().hex[:8], i)
            p = Publisher(client, args.stream).document_cleaned(
                doc_id, SENTENCES[i % len(SENTENCES)])
            print("%s %s document_id=%s" % (p.entry_id, p.id, doc_id))
    else:
        p = Publisher(client, args.stream).malformed(args.malformed)
        print("%s malformed:%s" % (p.entry_id, args.malformed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
