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
    POST /_mock/reset      clear recordings, counters and behaviour
    GET  /_mock/requests   JSON list of recorded requests, oldest first

Standalone:   mock_nlp.py --port P [--host 127.0.0.1]   (prints its URL)
Imported:     srv = MockNLPServer(port=0); srv.start(); srv.url; srv.stop()
"""

import argparse
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL_PREFIX = "/_mock/"
BEHAVIOUR_KEYS = {"status", "success", "delay_ms", "count", "retry_after",
                  "body", "path"}


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
            self.jobs = 0

    def set_behaviour(self, spec):
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
        with self.lock:
            self.behaviour = dict(spec)
            self.remaining = count

    def begin(self, record):
        """Records a request and decides its answer (one atomic step)."""
        with self.lock:
            record["n"] = len(self.requests) + 1
            self.requests.append(record)
            b = self.behaviour
            if b is not None and not record["path"].startswith(
                    b.get("path", "")):
                b = None
            if b is not None and self.remaining is not None:
                if self.remaining <= 0:
                    b = None
                else:
                    self.remaining -= 1
                    if self.remaining == 0:
                        self.behaviour, self.remaining = None, None
            b = b or {}
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
                                  "body": body.decode("utf-8", "replace")}
            return {"status": status, "body": body, "content_type": ctype,
                    "delay_ms": b.get("delay_ms", 0),
                    "retry_after": b.get("retry_after")}

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps(self.requests))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-nlp/1.0"
    # An idle keep-alive connection is closed after this many seconds.
    timeout = 60

    def setup(self):
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
            return self._send_json(200, state.snapshot())
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
        except OSError:
            # The client gave up (timeout): nothing left to answer.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class MockNLPServer(ThreadingHTTPServer):
    """The mock in this process: start() serves from a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    # The default backlog (5) drops SYNs when a client opens many
    # connections at once (libcurl multi): a 1 s retransmit each.
    request_queue_size = 128

    def __init__(self, host="127.0.0.1", port=0, verbose=False):
        super().__init__((host, port), Handler)
        self.state = MockState()
        self.verbose = verbose
        self._thread = None

    @property
    def port(self):
        return self.server_address[1]

    @property
    def url(self):
        return "http://%s:%d" % (self.server_address[0], self.port)

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever,
                                        name="mock-nlp", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self.shutdown()
            self._thread.join(10)
            self._thread = None
        self.server_close()

    # Direct access for in-process users (same semantics as /_mock/).
    def requests(self):
        return self.state.snapshot()

    def reset(self):
        self.state.reset()

    def set_behaviour(self, **spec):
        self.state.set_behaviour(spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True,
                    help="TCP port (0 = any free port)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log every request to stderr")
    args = ap.parse_args(argv)
    srv = MockNLPServer(args.host, args.port, verbose=args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(srv.url, flush=True)
    try:
        srv.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
