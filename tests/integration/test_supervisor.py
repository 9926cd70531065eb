"""The prefork supervisor (issue 3, DESIGN.md §6), end to end.

`stagerelay -c FILE [-w N] [-d] [-p PIDFILE] [-u USER] [--allow-root]` runs
a master (proc=master in the log) that forks N workers; slot s consumes as
"<consumer_name>-<s>" and logs proc=worker-<s>. These tests drive the real
binary against real Redis and PostgreSQL servers and the mock NLP API, send
it the signals an operator or init system would, and assert only what an
operator can observe: XINFO CONSUMERS, XPENDING, ledger rows, requests at
the API, pids, exit statuses, log lines and sd_notify datagrams.

Every wait polls with a timeout; nothing relies on a fixed sleep.
"""

import collections
import os
import pwd
import re
import signal
import time

import pytest
import redis

import servers
from conftest import (CONSUMER, DOC_ROUTE_PATH, EXIT_CRASH_LOOP,
                      EXIT_NOPERM, EXIT_OK, GROUP, STREAM, Daemon,
                      is_stagerelay,
                      pid_alive, proc_stat, wait_until)

import logfmt
import publish
from waiting import NotifySocket


def name(slot):
    return "%s-%d" % (CONSUMER, slot)


# ---- observing -----------------------------------------------------------

def consumers(env):
    """Consumer names in the group (XINFO CONSUMERS), sorted."""
    try:
        return sorted(c["name"].decode()
                      for c in env.redis.xinfo_consumers(STREAM, GROUP))
    except redis.exceptions.ResponseError:
        return []


def wait_consumers(env, n, timeout=15.0):
    want = [name(s) for s in range(1, n + 1)]
    wait_until(lambda: consumers(env) == want, timeout=timeout,
               what="XINFO CONSUMERS == %s (have %s)"
               % (want, consumers(env)))


def pending_ids(env, consumer=None):
    """Entry ids in the group's PEL (of one consumer, or all)."""
    kw = {"consumername": consumer} if consumer else {}
    try:
        return {p["message_id"].decode() for p in env.redis.xpending_range(
            STREAM, GROUP, "-", "+", 100000, **kw)}
    except redis.exceptions.ResponseError:
        return set()


def eid(entry_id):
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def last_delivered(env):
    g = env.groups().get(GROUP)
    return eid(g["last-delivered-id"].decode()) if g else (0, 0)


def keys_of(reqs):
    return [r["headers"].get("idempotency-key") for r in reqs]


def publish_docs(env, n, prefix):
    """n document.cleaned events; {document_id: Published}."""
    out = {}
    for i in range(1, n + 1):
        doc = "%s-%03d" % (prefix, i)
        out[doc] = env.publisher.document_cleaned(
            doc, publish.SENTENCES[i % len(publish.SENTENCES)])
    return out


def triggered(env):
    return {r["document_id"] for r in env.rows() if r["status"] == "triggered"}


def wait_all_triggered(env, docs, timeout=30.0):
    want = set(docs)
    wait_until(lambda: want <= triggered(env) and env.pending() == 0,
               timeout=timeout,
               what="all %d documents triggered and acknowledged "
               "(%d triggered, %d pending)" % (
                   len(want), len(want & triggered(env)), env.pending()))


def wait_pids(d, n, timeout=15.0):
    """Waits for n live workers (by the master's log); {slot: pid}."""
    return wait_until(lambda: len(d.worker_pids()) == n and d.worker_pids(),
                      timeout=timeout,
                      what="%d workers (have %s)" % (n, d.worker_pids()))


def wait_respawned(d, slot, old_pid, timeout=15.0):
    """Waits until slot runs a pid other than old_pid; returns it."""
    return wait_until(
        lambda: d.worker_pids().get(slot) not in (None, old_pid) and
        d.worker_pids()[slot], timeout=timeout,
        what="slot %d respawned (old pid %d)" % (slot, old_pid))


def wait_gone(pids, timeout=10.0):
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=timeout,
               what="pids %s gone (alive: %s)"
               % (sorted(pids), [p for p in pids if pid_alive(p)]))


def kill_leftovers(pids):
    """SIGKILLs our own stagerelay processes still around (cleanup)."""
    for pid in pids:
        if pid_alive(pid) and is_stagerelay(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_pid(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def file_logs(path):
    try:
        with open(path, errors="replace") as f:
            return logfmt.parse(f.read())
    except FileNotFoundError:
        return []


def index_of(records, msg, **match):
    for i, r in enumerate(records):
        if r.get("msg") == msg and all(r.get(k) == str(v)
                                       for k, v in match.items()):
            return i
    return None


# ---- 1. N workers, stable names, the work split --------------------------

def test_four_workers_split_the_stream_and_trigger_each_document_once(env):
    env.mock.behaviour(delay_ms=20)
    d = env.start(args=["-w", "4"])
    wait_consumers(env, 4)
    pids = wait_pids(d, 4)
    assert sorted(pids) == [1, 2, 3, 4]
    assert len(set(pids.values())) == 4
    for slot, pid in pids.items():
        assert pid_alive(pid)
        assert proc_stat(pid)[1] == d.pid, "worker %d is not the master's " \
            "child" % slot
        spawned = d.log("worker_spawned", slot=slot, pid=pid)
        assert spawned and spawned[0]["consumer"] == name(slot)
        assert d.log("worker_started", proc="worker-%d" % slot,
                     consumer=name(slot))
    d.wait_log("master_ready", proc="master")

    docs = publish_docs(env, 200, "doc-w4")
    wait_all_triggered(env, docs)

    keys = keys_of(env.requests())
    assert len(keys) == 200
    assert sorted(set(keys)) == sorted(docs)
    rows = env.rows()
    assert [r["document_id"] for r in rows] == sorted(docs)
    assert all(r["status"] == "triggered" and r["attempts"] == 1
               for r in rows)
    assert env.pending() == 0
    assert consumers(env) == [name(s) for s in range(1, 5)]
    # The work was shared: triggered by more than one worker.
    by_proc = collections.Counter(r["proc"]
                                  for r in d.log("event_triggered"))
    assert sum(by_proc.values()) == 200, by_proc
    assert set(by_proc) <= {"worker-%d" % s for s in range(1, 5)}, by_proc
    assert len(by_proc) > 1, "one worker did all the work: %s" % by_proc

    assert d.stop() == EXIT_OK
    assert d.log("master_stopped", proc="master")
    wait_gone(pids.values())


@pytest.mark.parametrize("overrides,args,n", [
    ({"concurrent_tasks": 2}, [], 2),
    ({"workers": 3}, [], 3),
    ({"concurrent_tasks": 3}, ["-w", "1"], 1),
], ids=["concurrent_tasks", "workers_alias", "-w_overrides"])
def test_worker_count_from_config_or_command_line(env, overrides, args, n):
    d = env.start(args=args, **overrides)
    d.wait_log("master_ready")
    wait_consumers(env, n)
    assert sorted(wait_pids(d, n)) == list(range(1, n + 1))
    assert d.stop() == EXIT_OK


# ---- 2. kill -9 of a worker mid-stream -----------------------------------

def test_killed_worker_is_respawned_under_its_name_and_nothing_is_lost(env):
    env.mock.behaviour(delay_ms=200)
    d = env.start(args=["-w", "2"], batch_size=10)
    wait_consumers(env, 2)
    wait_pids(d, 2)
    docs = publish_docs(env, 60, "doc-kill")
    doc_of = {p.entry_id: doc for doc, p in docs.items()}

    # Work in flight in a slot: entries delivered to it, requests sent.
    def busy_slot():
        if not env.requests():
            return None
        for slot in (1, 2):
            if pending_ids(env, name(slot)):
                return slot
        return None
    slot = wait_until(busy_slot, timeout=10, what="a worker busy")
    old = d.worker_pids()[slot]
    os.kill(old, signal.SIGKILL)
    ex = d.wait_log("worker_exited", slot=slot, pid=old)
    assert ex["status"] == "signal:9", ex
    left = pending_ids(env, name(slot))   # what the dead worker left
    assert left, "slot %d had nothing pending when killed" % slot

    rs = d.wait_log("worker_respawn", slot=slot)
    assert int(rs["delay_ms"]) == 1000, rs
    new = wait_respawned(d, slot, old)
    assert d.log("worker_spawned", slot=slot, pid=new)[0]["consumer"] == \
        name(slot)
    wait_all_triggered(env, docs)

    # Same consumer name: no new consumer, and its pending list drained
    # (nothing else claims other consumers' entries).
    assert consumers(env) == [name(1), name(2)]
    assert env.pending() == 0
    assert not pid_alive(old)

    keys = collections.Counter(keys_of(env.requests()))
    assert set(keys) == set(docs), "requests for unknown keys: %s" % (
        set(keys) - set(docs))
    dups = {k for k, c in keys.items() if c > 1}
    killed_batch = {doc_of[e] for e in left}
    assert dups <= killed_batch, \
        "sent twice but not in the killed batch: %s" % (dups - killed_batch)
    assert max(keys.values()) <= 2, keys.most_common(3)

    rows = env.rows()
    assert [r["document_id"] for r in rows] == sorted(docs)
    for r in rows:
        assert r["status"] == "triggered", r
        assert 1 <= r["attempts"] <= keys[r["document_id"]], r
    success = collections.Counter(x["idempotency_key"]
                                  for x in env.deliveries()
                                  if x["outcome"] == "success")
    assert success == collections.Counter(list(docs)), \
        "each document must be recorded triggered exactly once"
    assert d.stop() == EXIT_OK


# ---- 3. hung workers -----------------------------------------------------

def test_stopped_worker_is_detected_as_hung_killed_and_respawned(env):
    d = env.start(args=["-w", "1"], supervisor={"worker_timeout": 2})
    old = wait_pids(d, 1)[1]
    t0 = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    try:
        hung = d.wait_log("worker_hung", timeout=10, slot=1, pid=old)
        assert int(hung["heartbeat_age_ms"]) >= 2000, hung
        assert hung["proc"] == "master"
        ex = d.wait_log("worker_exited", timeout=15, slot=1, pid=old)
        # ABRT stays pending in a stopped process: KILL 5 s later.
        assert ex["status"] in ("signal:6", "signal:9"), ex
        new = wait_respawned(d, 1, old)
        assert time.monotonic() - t0 < 20
        assert not pid_alive(old)
        assert d.log("worker_spawned", slot=1, pid=new)[0]["consumer"] \
            == name(1)

        pub = env.publisher.document_cleaned("doc-after-hang", "alive")
        wait_all_triggered(env, ["doc-after-hang"], timeout=15)
        assert keys_of(env.requests()) == ["doc-after-hang"]
        # The ledger row is written before the log line is read here.
        d.wait_log("event_triggered", timeout=5, event_id=pub.id,
                   proc="worker-1")
    finally:
        kill_leftovers([old])
    assert d.stop() == EXIT_OK


def test_worker_stalled_in_a_request_is_killed_and_the_entry_redone(env):
    # Only the first request stalls (10 s; the client would wait 30 s).
    env.mock.behaviour(delay_ms=10000, count=1)
    d = env.start(args=["-w", "1"], supervisor={"worker_timeout": 2},
                  nlp_api={"timeout_ms": 30000})
    old = wait_pids(d, 1)[1]
    pub = env.publisher.document_cleaned("doc-stalled", "a slow answer")
    wait_until(lambda: env.requests(), what="the stalled request")

    hung = d.wait_log("worker_hung", timeout=10, slot=1, pid=old)
    assert int(hung["heartbeat_age_ms"]) >= 2000, hung
    ex = d.wait_log("worker_exited", timeout=15, slot=1, pid=old)
    assert ex["status"] in ("signal:6", "signal:9"), ex
    wait_respawned(d, 1, old)

    # The respawned slot drains its own pending list: same key again.
    wait_all_triggered(env, ["doc-stalled"], timeout=15)
    reqs = env.requests()
    assert keys_of(reqs) == ["doc-stalled", "doc-stalled"]
    assert reqs[1]["headers"]["ce-id"] == pub.id
    assert env.row("doc-stalled")["remote_job_id"] == \
        reqs[1]["response"]["job_id"]
    assert env.pending() == 0
    assert d.stop() == EXIT_OK


# ---- 4. SIGHUP -----------------------------------------------------------

RELOADED_PATH = "/api/v9/reloaded"
RELOADED_ROUTES = [{
    "name": "document",
    "types": [publish.DOCUMENT_CLEANED],
    "path": RELOADED_PATH,
    "idempotency_key": "{{data.document_id}}",
    "body": {"document_id": "{{data.document_id}}",
             "text": "{{data.cleaned_text}}"},
}]


def test_sighup_keeps_the_old_config_on_error_and_applies_a_valid_one(env):
    config = env.write_config(name="live.yaml")
    d = env.start(config, args=["-w", "2"])
    wait_consumers(env, 2)
    before = wait_pids(d, 2)
    env.publisher.document_cleaned("doc-hup-0", "before any reload")
    wait_all_triggered(env, ["doc-hup-0"])

    # A broken file: logged with file:line, the old config stays.
    with open(config) as f:
        text = f.read()
    assert "  batch_size: 10\n" in text
    with open(config, "w") as f:
        f.write(text.replace("  batch_size: 10\n", "  batch_size: 0\n"))
    os.kill(d.pid, signal.SIGHUP)
    failed = d.wait_log("reload_failed", proc="master")
    assert re.search(re.escape(config) + r":\d+", failed["detail"]), failed
    assert "batch_size" in failed["detail"], failed
    env.publisher.document_cleaned("doc-hup-1", "after a bad reload")
    wait_all_triggered(env, ["doc-hup-1"])
    assert d.proc.poll() is None
    assert d.worker_pids() == before, "workers restarted on a bad config"
    assert not d.log("reloaded")

    # A valid change: new route path, smaller batches.
    env.write_config(name="live.yaml", routes=RELOADED_ROUTES, batch_size=3)
    mark = len(d.logs)
    os.kill(d.pid, signal.SIGHUP)
    # Entries published while the workers restart are not lost.
    during = publish_docs(env, 20, "doc-hup-during")
    d.wait_log("reloaded", timeout=15, proc="master")
    wait_until(lambda: set(d.worker_pids()) == {1, 2} and
               not set(d.worker_pids().values()) & set(before.values()),
               timeout=20, what="both workers replaced (were %s, now %s)"
               % (before, d.worker_pids()))
    new = d.worker_pids()
    env.publisher.document_cleaned("doc-hup-2", "after a good reload")
    docs = ["doc-hup-0", "doc-hup-1", "doc-hup-2"] + list(during)
    wait_all_triggered(env, docs)

    reqs = env.requests()
    keys = keys_of(reqs)
    assert sorted(keys) == sorted(docs), "lost or repeated: %s" % (
        collections.Counter(keys).most_common(3))
    path = {k: r["path"] for k, r in zip(keys, reqs)}
    assert path["doc-hup-0"] == path["doc-hup-1"] == DOC_ROUTE_PATH
    assert path["doc-hup-2"] == RELOADED_PATH
    assert all(path[k] in (DOC_ROUTE_PATH, RELOADED_PATH) for k in during)
    assert env.pending() == 0

    # One at a time: the second old worker exits only after the first
    # replacement was spawned (never both slots down).
    recs = [r for r in d.logs[mark:] if r.get("proc") == "master"]
    exits = sorted(i for i, r in enumerate(recs)
                   if r.get("msg") == "worker_exited" and
                   int(r["pid"]) in before.values())
    spawns = sorted(i for i, r in enumerate(recs)
                    if r.get("msg") == "worker_spawned" and
                    int(r["pid"]) in new.values())
    assert len(exits) == 2 and len(spawns) == 2, recs
    assert exits[1] > spawns[0], "both workers stopped at once:\n%s" % (
        "\n".join("%s slot=%s pid=%s" % (r["msg"], r.get("slot"),
                                         r.get("pid")) for r in recs))
    assert not [r for r in recs if r.get("msg") == "worker_respawn"], \
        "a reload restart counted as a crash"
    assert d.stop() == EXIT_OK


# ---- 5. SIGTERM with requests in flight ----------------------------------

def test_sigterm_finishes_in_flight_work_and_exits_0(env):
    env.mock.behaviour(delay_ms=500)
    config = env.write_config(supervisor={"shutdown_timeout": 10})
    d = env.start(config, args=["-w", "2"])
    wait_consumers(env, 2)
    pids = wait_pids(d, 2)
    docs = publish_docs(env, 40, "doc-term")
    wait_until(lambda: len(env.requests()) >= 2, what="requests in flight")

    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=15) == EXIT_OK
    assert time.monotonic() - t0 < 10, "exceeded shutdown_timeout"
    assert d.log("master_stopped", proc="master")
    wait_gone(pids.values())

    # No entry triggered at the API yet neither recorded nor pending; an
    # entry acknowledged only with its triggered ledger row.
    requested = set(keys_of(env.requests()))
    assert requested <= set(docs)
    status = {r["document_id"]: r["status"] for r in env.rows()}
    pend = pending_ids(env)
    delivered_up_to = last_delivered(env)
    for doc, pub in docs.items():
        acked = eid(pub.entry_id) <= delivered_up_to and \
            pub.entry_id not in pend
        if doc in requested:
            assert (acked and status.get(doc) == "triggered") or \
                pub.entry_id in pend, \
                "%s was sent, but is neither recorded nor pending" % doc
        if acked:
            assert status.get(doc) == "triggered", \
                "%s acknowledged without a triggered row" % doc
    # In-flight work was finished, not abandoned.
    assert pend == set(), "left pending after a graceful stop: %s" % pend
    assert all(status.get(k) == "triggered" for k in requested)

    # The next run finishes the rest, sending nothing twice. --drain is
    # the single-process mode: no master, slot 1.
    env.mock.behaviour()
    r = env.drain(config)
    assert not [x for x in r.logs if x.get("proc") == "master"], r
    assert {x.get("proc") for x in r.log("event_triggered")} == {"worker-1"}
    assert triggered(env) == set(docs)
    assert env.pending() == 0
    keys = keys_of(env.requests())
    assert sorted(keys) == sorted(docs)


def test_sigterm_kills_workers_still_busy_after_shutdown_timeout(env):
    env.mock.behaviour(delay_ms=10000, count=1)
    config = env.write_config(supervisor={"shutdown_timeout": 1},
                              nlp_api={"timeout_ms": 30000})
    d = env.start(config, args=["-w", "1"])
    pid = wait_pids(d, 1)[1]
    env.publisher.document_cleaned("doc-slow-stop", "never answered")
    wait_until(lambda: env.requests(), what="the slow request")

    t0 = time.monotonic()
    code = d.stop(signal.SIGTERM, timeout=10)
    assert time.monotonic() - t0 < 5, "shutdown_timeout 1 s not enforced"
    # Not every worker drained: the stop says so.
    assert code == 1, d.stderr
    assert d.log("master_stopped", status="workers_killed"), d.stderr
    ex = d.log("worker_exited", slot=1, pid=pid)
    assert ex and ex[0]["status"] == "signal:9", d.stderr
    assert not pid_alive(pid)
    # Killed before recording: still pending, not recorded as triggered.
    assert env.pending() == 1
    assert env.row_status("doc-slow-stop") != "triggered"

    env.drain(config)
    assert env.row_status("doc-slow-stop") == "triggered"
    assert keys_of(env.requests()) == ["doc-slow-stop"] * 2
    assert env.pending() == 0


# ---- 6. TTIN / TTOU ------------------------------------------------------

def test_ttin_adds_a_worker_and_ttou_removes_one_never_below_one(env):
    config = env.write_config()
    d = env.start(config, args=["-w", "2"])
    wait_consumers(env, 2)
    first = wait_pids(d, 2)[1]

    os.kill(d.pid, signal.SIGTTIN)
    d.wait_log("workers_changed", proc="master", workers=3)
    pids = wait_pids(d, 3)
    assert sorted(pids) == [1, 2, 3]
    assert d.log("worker_spawned", slot=3)[-1]["consumer"] == name(3)
    wait_consumers(env, 3)

    os.kill(d.pid, signal.SIGTTOU)
    d.wait_log("workers_changed", proc="master", workers=2)
    assert sorted(wait_pids(d, 2)) == [1, 2]
    os.kill(d.pid, signal.SIGTTOU)
    d.wait_log("workers_changed", proc="master", workers=1)
    assert sorted(wait_pids(d, 1)) == [1]

    # At one worker TTOU changes nothing. A SIGHUP with a broken file
    # (reload_failed) marks that the master has handled it; then TTIN
    # makes two again.
    os.kill(d.pid, signal.SIGTTOU)
    with open(config, "w") as f:
        f.write("event_consumer: [not, a, mapping\n")
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log("reload_failed")
    assert sorted(d.worker_pids()) == [1]
    os.kill(d.pid, signal.SIGTTIN)
    wait_until(lambda: len(d.log("workers_changed", workers=2)) == 2,
               what="workers_changed workers=2 after TTOU at 1, TTIN")
    changed = [int(r["workers"]) for r in d.log("workers_changed")]
    dedup = [w for i, w in enumerate(changed)
             if i == 0 or w != changed[i - 1]]
    assert dedup == [3, 2, 1, 2], changed
    assert sorted(wait_pids(d, 2)) == [1, 2]
    assert d.worker_pids()[1] == first, "slot 1 was never to be touched"
    assert not d.log("worker_respawn"), "a removal counted as a crash"

    env.publisher.document_cleaned("doc-ttin", "still consuming")
    wait_all_triggered(env, ["doc-ttin"])
    assert d.stop() == EXIT_OK


# ---- 7. the crash-loop brake ---------------------------------------------

def test_crash_loop_brake_stops_the_master_with_exit_70(env):
    closed = servers.free_port()          # nothing listens there
    config = env.write_config(ledger={
        "dsn": "host=127.0.0.1 port=%d dbname=nope user=postgres "
               "connect_timeout=2" % closed})
    t0 = time.monotonic()
    r = env.run("-c", config, "-w", "1", timeout=30)
    elapsed = time.monotonic() - t0

    assert r.returncode == EXIT_CRASH_LOOP, r
    assert elapsed < 15, "crash loop took %.1f s\n%s" % (elapsed, r)
    brake = r.log("crash_loop", proc="master")
    assert brake, r
    assert int(brake[0]["crashes"]) >= 3, brake
    assert brake[0]["window_s"] == "60", brake
    exits = r.log("worker_exited", proc="master")
    assert len(exits) >= 3, r
    assert all(x["status"] == "exit:1" for x in exits), exits
    delays = [int(x["delay_ms"]) for x in r.log("worker_respawn")]
    assert delays[:2] == [1000, 2000], delays
    wait_gone([int(x["pid"]) for x in r.log("worker_spawned")], timeout=5)


# ---- 8. sd_notify --------------------------------------------------------

@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


def test_sd_notify_ready_reloading_stopping_in_order(env, notify):
    d = env.start(args=["-w", "2"], env={"NOTIFY_SOCKET": notify.path})
    ready = notify.wait("READY=1", timeout=15)
    # READY=1 once every worker connected: both consumers read by now.
    wait_consumers(env, 2, timeout=5)
    os.kill(d.pid, signal.SIGHUP)
    reloading = notify.wait("RELOADING=1", after=ready)
    ready2 = notify.wait("READY=1", after=reloading, timeout=20)
    assert d.stop() == EXIT_OK
    stopping = notify.wait("STOPPING=1", after=ready2, timeout=5)

    got = notify.poll()
    lines = [line for _, line in got]
    assert ready < reloading < ready2 < stopping, lines
    assert lines.index("STOPPING=1") == stopping, lines
    status = [line for line in lines if line.startswith("STATUS=")]
    assert any("workers" in s for s in status), lines
    senders = {pid for pid, _ in got}
    assert senders == {d.pid}, "datagrams from %s; only the master (%d) " \
        "may notify" % (senders, d.pid)


def test_sd_notify_watchdog_when_watchdog_usec_is_set(env, notify):
    d = env.start(args=["-w", "1"], env={"NOTIFY_SOCKET": notify.path,
                                         "WATCHDOG_USEC": "1000000"})
    first = notify.wait("WATCHDOG=1", timeout=5)
    notify.wait("WATCHDOG=1", after=first, timeout=5)
    assert d.stop() == EXIT_OK
    assert {pid for pid, _ in notify.poll()} == {d.pid}


# ---- 9. pidfile and -d ---------------------------------------------------

def test_pidfile_is_locked_against_a_second_instance_and_removed(env):
    pidfile = os.path.join(env.tmpdir, "stagerelay.pid")
    config = env.write_config()
    d = env.start(config, args=["-p", pidfile])
    wait_until(lambda: read_pid(pidfile) == d.pid,
               what="pidfile holding the master's pid")

    r = env.run("-c", config, "-p", pidfile, timeout=15)
    assert r.returncode != 0, r
    assert re.search(r"pid ?file|already running|lock", r.stderr, re.I) \
        or pidfile in r.stderr, r
    assert not r.log("worker_started"), r
    assert read_pid(pidfile) == d.pid, "the loser touched the pidfile"
    assert d.proc.poll() is None

    env.publisher.document_cleaned("doc-pid", "still the only one")
    wait_all_triggered(env, ["doc-pid"])
    assert d.stop() == EXIT_OK
    assert not os.path.exists(pidfile), "pidfile left behind"


def test_daemonize_detaches_writes_the_pidfile_and_stops_on_sigterm(env):
    pidfile = os.path.join(env.tmpdir, "daemon.pid")
    logfile = os.path.join(env.tmpdir, "daemon.log")
    config = env.write_config(logging={"file": logfile})

    r = env.run("-c", config, "-d", "-p", pidfile, timeout=15)
    assert r.returncode == EXIT_OK, r
    pid = wait_until(lambda: read_pid(pidfile), timeout=10,
                     what="the daemon's pidfile")
    workers = []
    try:
        assert pid_alive(pid) and is_stagerelay(pid)
        assert proc_stat(pid)[1] != os.getpid()
        assert os.getsid(pid) != os.getsid(0), "no new session (setsid)"
        wait_until(lambda: [x for x in file_logs(logfile)
                            if x["msg"] == "worker_started"],
                   what="worker_started in %s" % logfile)
        workers = [int(x["pid"]) for x in file_logs(logfile)
                   if x["msg"] == "worker_spawned"]
        assert workers

        env.publisher.document_cleaned("doc-daemon", "detached")
        wait_all_triggered(env, ["doc-daemon"])

        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid) and
                   not os.path.exists(pidfile), timeout=15,
                   what="daemon stopped and pidfile removed")
        wait_gone(workers)
        assert [x for x in file_logs(logfile)
                if x["msg"] == "master_stopped"]
    finally:
        kill_leftovers([pid] + workers)


# ---- 10. root ------------------------------------------------------------

def test_root_without_user_needs_allow_root(env):
    config = env.write_config()
    if os.geteuid() == 0:
        r = env.run("-c", config, "-w", "1", allow_root=False, timeout=15)
        assert r.returncode == EXIT_NOPERM, r
        assert "--allow-root" in r.stderr, r
        assert not r.log("worker_started"), r
        assert env.groups() == {}
    else:
        d = env.start(config, args=["-w", "1"], allow_root=False)
        env.publisher.document_cleaned("doc-user", "not root")
        wait_all_triggered(env, ["doc-user"])
        assert d.stop() == EXIT_OK


def test_user_flag_runs_the_workers_unprivileged(env):
    if os.geteuid() != 0:
        pytest.skip("-u needs root")
    nobody = pwd.getpwnam("nobody")
    d = env.start(args=["-w", "1", "-u", "nobody"], allow_root=False)
    pid = wait_pids(d, 1)[1]
    with open("/proc/%d/status" % pid) as f:
        uids = [ln.split()[1:] for ln in f if ln.startswith("Uid:")][0]
    assert set(uids) == {str(nobody.pw_uid)}, uids
    env.publisher.document_cleaned("doc-nobody", "unprivileged")
    wait_all_triggered(env, ["doc-nobody"])
    assert d.stop() == EXIT_OK


# ---- 11. parent death ----------------------------------------------------

def test_workers_exit_when_the_master_is_killed(env):
    d = env.start(args=["-w", "2"])
    pids = wait_pids(d, 2)
    for pid in pids.values():
        assert proc_stat(pid)[1] == d.pid
    d.proc.kill()
    d.proc.wait(5)
    try:
        wait_gone(pids.values(), timeout=5)
    finally:
        kill_leftovers(pids.values())


# ---- SIGUSR1 -------------------------------------------------------------

def test_sigusr1_reopens_the_log_files(env):
    logfile = os.path.join(env.tmpdir, "relay.log")
    config = env.write_config(logging={"file": logfile})
    # env.start() waits on stderr; this daemon logs to its file.
    d = Daemon(["-c", config, "-w", "2"], env._env(), cwd=env.tmpdir)
    env.daemons.append(d)
    wait_until(lambda: len([x for x in file_logs(logfile)
                            if x["msg"] == "worker_started"]) == 2,
               what="two workers started in %s" % logfile)
    wait_consumers(env, 2)
    rotated = logfile + ".1"
    os.rename(logfile, rotated)
    os.kill(d.pid, signal.SIGUSR1)
    wait_until(lambda: os.path.exists(logfile), what="log file reopened")

    # By the time a first round is through, every worker has seen the
    # signal; the second round must log to the new file only.
    wait_all_triggered(env, publish_docs(env, 10, "doc-usr1-a"))
    second = publish_docs(env, 10, "doc-usr1-b")
    wait_all_triggered(env, second)
    ids = {p.id for p in second.values()}

    def in_file(path):
        return [x for x in file_logs(path)
                if x["msg"] == "event_triggered" and x.get("event_id") in ids]
    wait_until(lambda: len(in_file(logfile)) == 10,
               what="the second round logged in the reopened file")
    assert not in_file(rotated), "still writing to the rotated file"
    assert d.stop() == EXIT_OK
    assert [x for x in file_logs(logfile) if x["msg"] == "master_stopped"], \
        "the master did not reopen its log file"
