#!/usr/bin/python3
"""mock_nlp.py: a programmable stand-in for the Stage 2 NLP API.

The only stand-in the integration tests and the demo use: Redis and
PostgreSQL are real servers, the NLP API is this.

It speaks HTTP/1.1 with keep-alive (libcurl reuses connections), records
every request (method, path, headers, body, arrival time) and answers by
default

    202 {"success": true, "job_id": "job-<n>"}

where <n> counts the requests answered with a job id since the last reset.

Control endpoints (never recorded):

    POST /_mock/behaviour  {"status": 500, "success": false, "delay_ms": 2000,
                            "count": N, "retry_after": 3, "body": "raw text",
                            "path": "/api/v2/"}
        Replaces the current behaviour. Every key is optional:
          status       HTTP status to answer (default 202)
          success      the JSON "success" field (default: status < 400)
          delay_ms     wait this long before answering (the request is
                       recorded on arrival, before the wait)
          count        apply to the next N requests, then revert to the
                       default; absent = until changed
          retry_after  add a Retry-After header (seconds)
          body         answer this raw text instead of the JSON document
          path         only requests whose path starts with this are
                       affected (and counted); others get the default
          match        a string or a list of strings: only requests whose
                       Idempotency-Key header equals one of them are
                       affected (and counted); others get the default
    POST /_mock/rules  {"rules": [behaviour, ...]}
        Per-request rules checked before the behaviour, first match wins
        (each rule is a behaviour spec, usually with "match"; a rule with
        a count stops matching once used up). Lets a test refuse a few
        documents or stall one while the behaviour changes for the rest.
        An empty list removes them.
    POST /_mock/refuse {"seconds": S}
        Connection refused for S seconds: the listening socket is closed
        and every open connection shut down (in-flight requests are never
        answered), then it listens again on the same address. The answer
        comes before the refusal starts.
    POST /_mock/publish {"redis": {"host": "127.0.0.1", "port": P, "db": 0},
                         "stream": "stage2:nlp:events", "maxlen": 10000,
                         "source": "stage2-nlp-processing",
                         "repeat": ["doc-3"]}
        Announces results the way the real Stage 2 service does: from now
        on, after each request answered with success (a job id), the mock
        appends a CloudEvent to the Redis stream in Stage 2's layout, ONE
        field "event" holding the whole JSON event (specversion, id,
        source, type, time, subject, datacontenttype, data):
          a request naming one document (body "document_id", or
          "document": {"document_id": ...}) announces
            com.storytelling.nlp.document.processed
            {"document_id", "job_id" (the job id answered), "batch_id"
             (or null), "version", "entity_count", "event_count",
             "processed_at"}
          a request carrying "documents": [{document_id, ...}, ...]
          announces
            com.storytelling.nlp.batch.completed
            {"batch_id", "job_id", "documents_processed",
             "documents_failed", "document_ids"}
        Only "stream" is required (redis defaults to 127.0.0.1:6379 db 0,
        maxlen to 10000, source as above). Documents listed in "repeat"
        are announced twice, as a Stage 2 that re-announces a result
        would. {"enabled": false} stops announcing. Needs python3-redis.
    POST /_mock/announce {"type": T, "data": {...}, "subject": S}
        Appends one such event now (publish must be on): e.g. a
        batch.completed for documents processed one by one.
    GET  /_mock/announced  JSON list of what was appended, oldest first:
                           {"stream_id", "event_id", "type", "key"} (key:
                           the document id, or "batch:<batch_id>"), or
                           {"error"} where an announcement failed
    POST /_mock/reset      clear recordings, counters, behaviour, rules,
                           TLS errors and announcing
    GET  /_mock/requests[?since=N]
                           JSON list of recorded requests, oldest first
                           (from the (N+1)th on)
    GET  /_mock/tls_errors JSON list of the reasons TLS handshakes failed
                           (with --tls-cert), oldest first: a client that
                           refused the certificate shows up here as the
                           alert it sent ("... unknown ca"), and never in
                           the requests (a connection closed before any
                           handshake, e.g. a port probe, shows as an EOF)

Each recorded request carries "response" (status, job_id, body,
delay_ms, retry_after: the answer, decided on arrival) and, once done, "answered_at" (epoch seconds) and
"delivered" (false when writing the answer failed because the client
had gone, e.g. after its timeout; best effort: a write into a connection
the client just closed may still succeed).

With --tls-cert FILE --tls-key FILE (PEM) it speaks HTTPS instead; the
TLS handshake happens in the connection's own thread, so a client that
stalls or refuses the certificate holds up no one else.

Standalone:   mock_nlp.py --port P [--host 127.0.0.1]
                          [--tls-cert FILE --tls-key FILE]  (prints its URL)
Imported:     srv = MockNLPServer(port=0); srv.start(); srv.url; srv.stop()
"""

import argparse
import datetime
import json
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL_PREFIX = "/_mock/"
BEHAVIOUR_KEYS = {"status", "success", "delay_ms", "count", "retry_after",
                  "body", "path", "match"}
PUBLISH_KEYS = {"redis", "stream", "maxlen", "source", "repeat", "enabled"}
STAGE2_SOURCE = "stage2-nlp-processing"
DOCUMENT_PROCESSED = "com.storytelling.nlp.document.processed"
BATCH_COMPLETED = "com.storytelling.nlp.batch.completed"


class BadRequest(Exception):
    pass


class MockState:
    """Recordings and behaviour, shared by all handler threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.requests = []
            self.behaviour = None
            self.remaining = None
            self.rules = []
            self.jobs = 0
            self.tls_errors = []
            self.publisher = None
            self.announced = []

    @staticmethod
    def _check(spec):
        """Validates a behaviour spec; returns a normalised copy."""
        if not isinstance(spec, dict):
            raise BadRequest("behaviour must be a JSON object")
        unknown = set(spec) - BEHAVIOUR_KEYS
        if unknown:
            raise BadRequest("unknown behaviour keys: %s"
                             % ", ".join(sorted(unknown)))
        status = spec.get("status", 202)
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise BadRequest("status must be an integer 100..599")
        count = spec.get("count")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise BadRequest("count must be a non-negative integer")
        for key in ("delay_ms", "retry_after"):
            v = spec.get(key)
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                raise BadRequest("%s must be a non-negative number" % key)
        if "body" in spec and not isinstance(spec["body"], str):
            raise BadRequest("body must be a string")
        spec = dict(spec)
        if "match" in spec:
            m = spec["match"]
            if isinstance(m, str):
                m = [m]
            if not isinstance(m, list) or \
                    not all(isinstance(x, str) for x in m):
                raise BadRequest("match must be a string or a list of "
                                 "strings")
            spec["match"] = set(m)
        return spec

    def set_behaviour(self, spec):
        spec = self._check(spec)
        with self.lock:
            self.behaviour = spec
            self.remaining = spec.get("count")

    def set_rules(self, rules):
        if not isinstance(rules, list):
            raise BadRequest("rules must be a list of behaviour objects")
        checked = [self._check(r) for r in rules]
        with self.lock:
            self.rules = [[r, r.get("count")] for r in checked]

    @staticmethod
    def _applies(spec, record):
        if not record["path"].startswith(spec.get("path", "")):
            return False
        if "match" in spec and \
                record["headers"].get("idempotency-key") not in spec["match"]:
            return False
        return True

    def _pick(self, record):
        """The spec answering record (lock held), counting it down."""
        for rule in self.rules:
            spec, left = rule
            if not self._applies(spec, record) or left == 0:
                continue
            if left is not None:
                rule[1] = left - 1
            return spec
        b = self.behaviour
        if b is not None and not self._applies(b, record):
            b = None
        if b is not None and self.remaining is not None:
            if self.remaining <= 0:
                b = None
            else:
                self.remaining -= 1
                if self.remaining == 0:
                    self.behaviour, self.remaining = None, None
        return b

    def begin(self, record):
        """Records a request and decides its answer (one atomic step)."""
        with self.lock:
            record["n"] = len(self.requests) + 1
            self.requests.append(record)
            b = self._pick(record) or {}
            status = b.get("status", 202)
            success = b.get("success", status < 400)
            job_id = None
            if "body" in b:
                body = b["body"].encode("utf-8")
                ctype = "text/plain; charset=utf-8"
            else:
                doc = {"success": success}
                if success:
                    self.jobs += 1
                    job_id = "job-%d" % self.jobs
                    doc["job_id"] = job_id
                else:
                    doc["error"] = "mock: configured failure (HTTP %d)" % status
                body = json.dumps(doc).encode("utf-8")
                ctype = "application/json"
            record["response"] = {"status": status, "job_id": job_id,
                                  "body": body.decode("utf-8", "replace"),
                                  "delay_ms": b.get("delay_ms", 0),
                                  "retry_after": b.get("retry_after")}
            return {"status": status, "body": body, "content_type": ctype,
                    "delay_ms": b.get("delay_ms", 0),
                    "retry_after": b.get("retry_after")}

    def done(self, record, delivered):
        """Notes that record was answered (or that its client had gone)."""
        with self.lock:
            record["answered_at"] = time.time()
            record["delivered"] = delivered

    def tls_error(self, reason):
        with self.lock:
            self.tls_errors.append(reason)

    def tls_error_list(self):
        with self.lock:
            return list(self.tls_errors)

    # -- announcing results on a Redis stream, as Stage 2 does --
    def set_publish(self, spec):
        """Turns announcing on (or off with "enabled": false)."""
        if not isinstance(spec, dict):
            raise BadRequest("publish must be a JSON object")
        unknown = set(spec) - PUBLISH_KEYS
        if unknown:
            raise BadRequest("unknown publish keys: %s"
                             % ", ".join(sorted(unknown)))
        if spec.get("enabled", True) is False:
            with self.lock:
                self.publisher = None
            return
        stream = spec.get("stream")
        if not isinstance(stream, str) or not stream:
            raise BadRequest("stream must be a non-empty string")
        conn = spec.get("redis") or {}
        repeat = spec.get("repeat", [])
        if not isinstance(conn, dict) or not isinstance(repeat, list):
            raise BadRequest("redis must be an object, repeat a list")
        import redis   # python3-redis: only when announcing
        client = redis.Redis(host=conn.get("host", "127.0.0.1"),
                             port=int(conn.get("port", 6379)),
                             db=int(conn.get("db", 0)),
                             socket_timeout=5)
        with self.lock:
            self.publisher = {"client": client, "stream": stream,
                              "maxlen": int(spec.get("maxlen", 10000)),
                              "source": spec.get("source", STAGE2_SOURCE),
                              "repeat": set(repeat)}

    def _append(self, pub, type_, data, subject, key):
        now = datetime.datetime.now(datetime.timezone.utc)
        event = {"specversion": "1.0", "id": str(uuid.uuid4()),
                 "source": pub["source"], "type": type_,
                 "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                 "datacontenttype": "application/json", "data": data}
        if subject:
            event["subject"] = subject
        try:
            sid = pub["client"].xadd(pub["stream"],
                                     {"event": json.dumps(event)},
                                     maxlen=pub["maxlen"],
                                     approximate=True)
            note = {"stream_id": sid.decode(), "event_id": event["id"],
                    "type": type_, "key": key}
        except Exception as e:   # redis errors, a stopped server
            note = {"error": "%s: %s" % (type(e).__name__, e),
                    "type": type_, "key": key}
        with self.lock:
            self.announced.append(note)
        return note

    def announce(self, type_, data, subject=None):
        """Appends one event now; raises BadRequest when not publishing."""
        with self.lock:
            pub = self.publisher
        if pub is None:
            raise BadRequest("not publishing: POST /_mock/publish first")
        if not isinstance(type_, str) or not type_:
            raise BadRequest("type must be a non-empty string")
        key = data.get("document_id") if isinstance(data, dict) else None
        if type_ == BATCH_COMPLETED and isinstance(data, dict):
            key = "batch:%s" % data.get("batch_id")
        return self._append(pub, type_, data, subject, key)

    def announce_result(self, record):
        """After a successful answer: announces what Stage 2 would."""
        with self.lock:
            pub = self.publisher
        job_id = record.get("response", {}).get("job_id")
        if pub is None or job_id is None:
            return
        req = record.get("json")
        req = req if isinstance(req, dict) else {}
        now = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        if isinstance(req.get("documents"), list):
            ids = [d.get("document_id") for d in req["documents"]
                   if isinstance(d, dict)]
            data = {"batch_id": req.get("batch_id"), "job_id": job_id,
                    "documents_processed": len(ids),
                    "documents_failed": 0, "document_ids": ids}
            self._append(pub, BATCH_COMPLETED, data, "job/%s" % job_id,
                         "batch:%s" % data["batch_id"])
            return
        doc = req.get("document") if isinstance(req.get("document"),
                                                dict) else req
        doc_id = doc.get("document_id")
        if not isinstance(doc_id, str):
            with self.lock:
                self.announced.append({"error": "no document_id in the "
                                       "request to " + record["path"],
                                       "type": DOCUMENT_PROCESSED,
                                       "key": None})
            return
        data = {"document_id": doc_id, "job_id": job_id,
                "batch_id": doc.get("batch_id"),
                "version": doc.get("version", 1),
                "entity_count": 0, "event_count": 0,
                "processed_at": now}
        times = 2 if doc_id in pub["repeat"] else 1
        for _ in range(times):
            self._append(pub, DOCUMENT_PROCESSED, data,
                         "document/%s" % doc_id, doc_id)

    def announced_list(self):
        with self.lock:
            return json.loads(json.dumps(self.announced))

    def snapshot(self, since=0):
        """Copies of the recorded requests (from index `since` on)."""
        with self.lock:
            return json.loads(json.dumps(self.requests[since:]))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-nlp/1.0"
    # An idle keep-alive connection is closed after this many seconds.
    timeout = 60

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            # Here, not in accept(): a client that never completes the
            # handshake must not stall the serving loop.
            self.request.settimeout(self.timeout)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                self.server.state.tls_error(str(e))
                raise
        super().setup()
        # Headers and body go out in two writes: without NODELAY, Nagle
        # and the client's delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("mock_nlp: %s - %s\n"
                             % (self.address_string(), fmt % args))

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n",
                                                             b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status, body, content_type="application/json",
              extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status, doc):
        self._send(status, json.dumps(doc).encode("utf-8"))

    def _control(self, body):
        state = self.server.state
        path = self.path.split("?", 1)[0]
        if path == "/_mock/requests" and self.command == "GET":
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            since = 0
            for part in query.split("&"):
                if part.startswith("since=") and part[6:].isdigit():
                    since = int(part[6:])
            return self._send_json(200, state.snapshot(since))
        if path == "/_mock/tls_errors" and self.command == "GET":
            return self._send_json(200, state.tls_error_list())
        if path == "/_mock/announced" and self.command == "GET":
            return self._send_json(200, state.announced_list())
        if path == "/_mock/publish" and self.command == "POST":
            try:
                state.set_publish(json.loads(body.decode("utf-8") or "{}"))
            except (ValueError, TypeError, BadRequest) as e:
                return self._send_json(400, {"ok": False, "error": str(e)})
            return self._send_json(200, {"ok": True})
        if path == "/_mock/announce" and self.command == "POST":
            try:
                doc = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(doc, dict):
                    raise BadRequest("expected {\"type\": ..., "
                                     "\"data\": ...}")
                note = state.announce(doc.get("type"), doc.get("data"),
                                      doc.get("subject"))
            except (ValueError, BadRequest) as e:
                return self._send_json(400, {"ok": False, "error": str(e)})
            return self._send_json(200, dict(note, ok="error" not in note))
        if path == "/_mock/reset" and self.command == "POST":
            state.reset()
            return self._send_json(200, {"ok": True})
        if path == "/_mock/behaviour" and self.command == "POST":
            try:
                spec = json.loads(body.decode("utf-8") or "{}")
                state.set_behaviour(spec)
            except (ValueError, BadRequest) as e:
                return self._send_json(400, {"ok": False, "error": str(e)})
            return self._send_json(200, {"ok": True})
        if path == "/_mock/rules" and self.command == "POST":
            try:
                doc = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(doc, dict):
                    raise BadRequest("expected {\"rules\": [...]}")
                state.set_rules(doc.get("rules", []))
            except (ValueError, BadRequest) as e:
                return self._send_json(400, {"ok": False, "error": str(e)})
            return self._send_json(200, {"ok": True})
        if path == "/_mock/refuse" and self.command == "POST":
            try:
                doc = json.loads(body.decode("utf-8") or "{}")
                seconds = doc.get("seconds") if isinstance(doc, dict) \
                    else None
                if not isinstance(seconds, (int, float)) or \
                        not 0 < seconds <= 3600:
                    raise BadRequest("seconds must be a number in (0, 3600]")
            except (ValueError, BadRequest) as e:
                return self._send_json(400, {"ok": False, "error": str(e)})
            self.close_connection = True
            self._send_json(200, {"ok": True})
            self.server.refuse_for(seconds)
            return None
        if path == "/_mock/health":
            return self._send_json(200, {"ok": True})
        return self._send_json(404, {"ok": False,
                                     "error": "unknown control endpoint"})

    def _handle(self):
        arrived = time.time()
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return self._send_json(400, {"success": False,
                                         "error": "unreadable body"})
        if self.path.startswith(CONTROL_PREFIX):
            return self._control(body)
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = headers[key] + ", " + value if key in headers \
                else value
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if body else None
        except ValueError:
            parsed = None
        record = {"method": self.command, "path": self.path,
                  "headers": headers, "body": text, "json": parsed,
                  "time": arrived,
                  "client": "%s:%d" % self.client_address[:2]}
        answer = self.server.state.begin(record)
        if answer["delay_ms"]:
            time.sleep(answer["delay_ms"] / 1000.0)
        extra = {}
        if answer["retry_after"] is not None:
            extra["Retry-After"] = str(int(answer["retry_after"]))
        try:
            self._send(answer["status"], answer["body"],
                       answer["content_type"], extra)
            self.wfile.flush()
            delivered = True
        except OSError:
            # The client gave up (timeout): nothing left to answer.
            self.close_connection = True
            delivered = False
        self.server.state.done(record, delivered)
        if delivered:
            self.server.state.announce_result(record)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class MockNLPServer(ThreadingHTTPServer):
    """The mock in this process: start() serves from a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    # The default backlog (5) drops SYNs when a client opens many
    # connections at once (libcurl multi): a 1 s retransmit each.
    request_queue_size = 128

    def __init__(self, host="127.0.0.1", port=0, verbose=False, state=None,
                 tls_cert=None, tls_key=None):
        super().__init__((host, port), Handler)
        self.ssl_context = None
        if tls_cert is not None:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(tls_cert, tls_key)
        # Several servers (addresses) may share one state.
        self.state = state if state is not None else MockState()
        self.verbose = verbose
        self._thread = None
        self._conns = set()
        self._conns_lock = threading.Lock()
        self._listen_lock = threading.Lock()
        self.refusing = False

    def get_request(self):
        conn, addr = super().get_request()
        if self.ssl_context is not None:
            # The handshake is the handler's (Handler.setup).
            conn = self.ssl_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    # -- open connections, so that a refusal can cut them --
    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def refuse_connections(self):
        """Stops listening (connect() now fails with ECONNREFUSED) and
        shuts down every open connection. Not from the serving thread."""
        with self._listen_lock:
            if self.refusing:
                return
            self.refusing = True
            if self._thread is not None:
                self.shutdown()
                self._thread.join(10)
                self._thread = None
            self.socket.close()
            with self._conns_lock:
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept_connections(self):
        """Listens again on the same address after refuse_connections()."""
        import socketserver
        with self._listen_lock:
            if not self.refusing:
                return
            self.socket = socket.socket(self.address_family,
                                        self.socket_type)
            # TCPServer's bind (SO_REUSEADDR): HTTPServer's would look
            # the host name up again.
            socketserver.TCPServer.server_bind(self)
            self.server_activate()
            self.refusing = False
            self._start_thread()

    def refuse_for(self, seconds):
        """Refuses connections from now on; a helper thread listens again
        after `seconds`. Not from the serving thread."""
        self.refuse_connections()

        def later():
            time.sleep(seconds)
            self.accept_connections()
        threading.Thread(target=later, name="mock-nlp-refuse",
                         daemon=True).start()

    def handle_error(self, request, client_address):
        # A connection cut by a refusal, or a client that hung up, is not
        # worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    @property
    def port(self):
        return self.server_address[1]

    @property
    def url(self):
        return "%s://%s:%d" % ("http" if self.ssl_context is None
                               else "https", self.server_address[0],
                               self.port)

    def _start_thread(self):
        # A short poll interval: shutdown() (a refusal) takes effect fast.
        self._thread = threading.Thread(target=self.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="mock-nlp", daemon=True)
        self._thread.start()

    def start(self):
        self._start_thread()
        return self

    def stop(self):
        with self._listen_lock:
            if self._thread is not None:
                self.shutdown()
                self._thread.join(10)
                self._thread = None
            self.server_close()
            self.refusing = False

    # Direct access for in-process users (same semantics as /_mock/).
    def requests(self, since=0):
        return self.state.snapshot(since)

    def reset(self):
        self.state.reset()

    def set_behaviour(self, **spec):
        self.state.set_behaviour(spec)

    def set_rules(self, rules):
        self.state.set_rules(rules)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True,
                    help="TCP port (0 = any free port)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log every request to stderr")
    ap.add_argument("--tls-cert", metavar="FILE",
                    help="serve HTTPS with this PEM certificate (chain)")
    ap.add_argument("--tls-key", metavar="FILE",
                    help="the PEM private key of --tls-cert")
    args = ap.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    srv = MockNLPServer(args.host, args.port, verbose=args.verbose,
                        tls_cert=args.tls_cert, tls_key=args.tls_key)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(srv.url, flush=True)
    # Served from a thread, so that /_mock/refuse can stop and restart
    # the serving loop.
    srv.start()
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
