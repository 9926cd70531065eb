"""The master's HTTP endpoint: /metrics, /healthz and /readyz (issue 5).

Every test here runs the real daemon with metrics.listen on a free
loopback port and reads what an operator's Prometheus or load balancer
would read.
"""

import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from conftest import EXIT_STARTUP, GROUP, STREAM, wait_until
import publish
import servers

DOC_TYPE = "com.storytelling.cleaning.document.cleaned"
JOB_STARTED = "com.storytelling.cleaning.job.started"


def get(port, path):
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), \
                r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), \
            e.read().decode("utf-8")


# ---- a strict reader of the text exposition format 0.0.4 ----------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)$"
                     % (_NAME, _LABEL, _LABEL))


def _unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1),
                                                    m.group(1)), v)


def parse_exposition(text):
    """{(name, frozenset(labels)): value}; raises AssertionError on any
    departure from the format: HELP and TYPE once per family and before
    its samples, valid names, labels and values, no duplicate series,
    counters named *_total, cumulative histogram buckets ending at +Inf
    equal to _count."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families, samples, current = {}, {}, None
    for n, line in enumerate(text.splitlines(), 1):
        where = "line %d: %r" % (n, line)
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name), where
            assert name not in families, "HELP repeated: " + where
            families[name] = {"help": True, "type": None}
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and families[name]["type"] is None, where
            assert kind in ("counter", "gauge", "histogram"), where
            if kind == "counter":
                assert name.endswith("_total"), where
            families[name]["type"] = kind
            continue
        assert not line.startswith("#") and line, where
        m = _SAMPLE.match(line)
        assert m, "not a sample: " + where
        name = m.group(1)
        family = name
        if families.get(current, {}).get("type") == "histogram":
            family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family == current and families[current]["type"], \
            "sample outside its family: " + where
        labels = dict((k, _unescape(v)) for k, v in re.findall(
            _LABEL, m.group(2) or ""))
        value = float(line.rsplit(" ", 1)[1])
        key = (name, frozenset(labels.items()))
        assert key not in samples, "duplicate series: " + where
        samples[key] = value
    for name, f in families.items():
        if f["type"] != "histogram":
            continue
        series = {}
        for (n, labels), v in samples.items():
            if n == name + "_bucket":
                rest = frozenset((k, x) for k, x in labels if k != "le")
                le = dict(labels)["le"]
                series.setdefault(rest, []).append(
                    (float("inf") if le == "+Inf" else float(le), v))
        for rest, buckets in series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), name + " buckets not cumulative"
            assert buckets[-1][0] == float("inf"), name + " lacks +Inf"
            assert samples[(name + "_count", rest)] == counts[-1]
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset((k, str(v))
                                        for k, v in labels.items())), 0)


# ---- fixtures ------------------------------------------------------------

@pytest.fixture
def port():
    return servers.free_port()


def start(env, port, **overrides):
    cfg = {"metrics": {"listen": "127.0.0.1:%d" % port}}
    cfg.update(overrides)
    d = env.start(env.write_config(**cfg))
    d.wait_log("metrics_listening", listen="127.0.0.1:%d" % port)
    return d


# ---- /metrics --------------------------------------------------------------

def test_metrics_count_what_was_published(env, port):
    pubs = [env.publisher.document_cleaned("doc-m-%d" % i, "text %d" % i)
            for i in range(3)]
    env.publisher.document_cleaned("doc-m-0", "the same document again")
    env.publisher.fields(publish.bad_json())
    env.publisher.job_started("job-m", "batch-m")      # no route: filtered
    d = start(env, port, concurrent_tasks=2)
    wait_until(lambda: env.pending() == 0 and len(env.requests()) == 3,
               what="everything processed")

    status, ctype, text = get(port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    s = parse_exposition(text)
    assert value(s, "stagerelay_events_total", outcome="triggered",
                 type=DOC_TYPE) == 3
    assert value(s, "stagerelay_events_total", outcome="duplicate",
                 type=DOC_TYPE) == 1
    assert value(s, "stagerelay_events_total", outcome="invalid",
                 type="other") == 1
    assert sum(v for (n, l), v in s.items()
               if n == "stagerelay_events_total" and
               ("outcome", "filtered") in l) == 1
    assert value(s, "stagerelay_dead_letters_total",
                 reason="invalid_event") == 1
    assert sum(v for (n, l), v in s.items()
               if n == "stagerelay_trigger_requests_total" and
               ("code", "202") in l) == 3
    assert value(s, "stagerelay_trigger_duration_seconds_count") == 3
    assert value(s, "stagerelay_event_latency_seconds_count") == 3
    assert value(s, "stagerelay_workers_alive") == 2
    assert value(s, "stagerelay_workers_wanted") == 2
    assert any(n == "stagerelay_build_info" for n, _ in s)
    assert value(s, "stagerelay_last_event_timestamp_seconds") > \
        time.time() - 60
    # Worker 1 polls the group: nothing left to read.
    wait_until(lambda: value(parse_exposition(get(port, "/metrics")[2]),
                             "stagerelay_consumer_group_lag") == 0 and
               value(parse_exposition(get(port, "/metrics")[2]),
                     "stagerelay_stream_length") == 6,
               what="group figures polled")
    assert sorted(r["headers"]["idempotency-key"] for r in env.requests()) \
        == sorted(p.data["document_id"] for p in pubs)
    # The shipped Grafana dashboard plots only metrics that exist.
    families = set(re.sub(r"_(bucket|sum|count)$", "", n) for n, _ in s) | \
        set(n for n, _ in s)
    with open(os.path.join(os.environ.get("STAGERELAY_SRCDIR", "."),
                           "packaging", "grafana",
                           "stagerelay-dashboard.json")) as f:
        dashboard = f.read()
    used = set(re.findall(r"stagerelay_[a-z_]+", dashboard))
    assert used and used <= families, used - families
    d.stop()


def test_counters_survive_a_worker_respawn(env, port):
    env.publisher.document_cleaned("doc-r-1", "before")
    d = start(env, port)
    wait_until(lambda: env.pending() == 0 and len(env.requests()) == 1,
               what="first document")
    os.kill(d.worker_pids()[1], signal.SIGKILL)
    wait_until(lambda: value(parse_exposition(get(port, "/metrics")[2]),
                             "stagerelay_worker_restarts_total") == 1,
               timeout=15, what="the restart counted")
    env.publisher.document_cleaned("doc-r-2", "after")
    wait_until(lambda: value(parse_exposition(get(port, "/metrics")[2]),
                             "stagerelay_events_total", outcome="triggered",
                             type=DOC_TYPE) == 2,
               timeout=15, what="both documents counted")
    d.stop()


def test_unknown_path_is_404_and_post_is_405(env, port):
    d = start(env, port)
    status, _, body = get(port, "/nope")
    assert status == 404 and "/metrics" in body
    req = urllib.request.Request("http://127.0.0.1:%d/metrics" % port,
                                 data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    d.stop()


def test_a_busy_metrics_port_stops_the_start_with_a_hint(env, port):
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    try:
        r = env.run("-c", env.write_config(
            metrics={"listen": "127.0.0.1:%d" % port}))
    finally:
        s.close()
    assert r.returncode == EXIT_STARTUP, r
    rec = r.log("metrics_listen_failed", listen="127.0.0.1:%d" % port)
    assert rec and "metrics.listen" in rec[0]["hint"], r


# ---- /healthz and /readyz --------------------------------------------------

def test_healthz_turns_503_when_a_worker_stops_heartbeating(env, port):
    d = start(env, port, concurrent_tasks=2,
              supervisor={"worker_timeout": 2})
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="healthy")
    pid = d.worker_pids()[1]
    os.kill(pid, signal.SIGSTOP)
    try:
        status, _, body = wait_until(
            lambda: (lambda r: r if r[0] == 503 else None)(
                get(port, "/healthz")), timeout=10, what="/healthz 503")
        assert re.search(r"worker \d: (no heartbeat|not running)", body), body
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # The master kills the hung worker and starts another.
    wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=30,
               what="/healthz 200 again")
    d.stop(timeout=20)


def test_readyz_names_postgresql_while_it_is_down(env, port):
    d = start(env, port)
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15,
               what="ready")
    env.pg.stop_process()
    try:
        env.publisher.document_cleaned("doc-pg-down", "needs the ledger")
        status, _, body = wait_until(
            lambda: (lambda r: r if r[0] == 503 else None)(
                get(port, "/readyz")), timeout=15, what="/readyz 503")
        assert "postgresql: unreachable" in body, body
    finally:
        env.pg.start_process()
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=30,
               what="/readyz 200 after PostgreSQL returned")
    wait_until(lambda: env.row_status("doc-pg-down") == "triggered",
               timeout=30, what="the document triggered after all")
    d.stop()


def test_readyz_and_a_warning_when_the_lag_passes_the_threshold(env, port):
    env.mock.behaviour(delay_ms=400)
    for i in range(12):
        env.publisher.document_cleaned("doc-lag-%d" % i, "slow")
    d = start(env, port, batch_size=1, lag_alert_threshold=3)
    status, _, body = wait_until(
        lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/readyz")),
        timeout=15, what="/readyz 503 for lag")
    assert re.search(r"lag: \d+ entries \(lag_alert_threshold 3\)", body), \
        body
    rec = d.wait_log("lag_alert", threshold=3, timeout=15)
    assert int(rec["lag"]) > 3
    env.mock.behaviour()
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=30,
               what="ready once caught up")
    d.stop()


# ---- the start-up line -----------------------------------------------------

def test_startup_settings_line_redacts_the_ledger_password(env, port):
    secret = "s3cret-Pa55"
    d = start(env, port, ledger={"dsn": env.dsn + " password=" + secret})
    rec = d.wait_log("settings")
    assert rec["stream"] == STREAM and rec["group"] == GROUP
    assert rec["metrics"] == "127.0.0.1:%d" % port
    assert "<redacted>" in rec["ledger"], rec
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15,
               what="ready with the password in the DSN")
    assert secret not in get(port, "/metrics")[2]
    d.stop()
    assert secret not in d.stderr
