"""The chaos suite (issue 4; DESIGN.md §3): delivery guarantees under
faults, end to end.

One scenario harness (Scenario) publishes a few thousand Stage-1
document.cleaned events -- with re-published duplicates (same document
id, new event id) and malformed entries -- from a background thread while
the test injects faults from the main thread, waits for the drain (the
group has delivered every entry and has nothing pending), and then checks
what an operator can observe:

  * every valid document has exactly one ledger row, in `triggered`
    (`dead` only where the mock refused it permanently, or for the one
    poison entry), and a triggered row's remote job id is one the mock
    gave out for that document;
  * the mock saw each valid document at least once, and every request
    carried Idempotency-Key == its document id (so repeats carry the
    same key);
  * the group's pending list is empty;
  * every malformed entry is in the dead-letter stream with its reason;
  * no dead-letter entry for a document the mock accepted, and no
    dead-letter entry but those expected (an outage must not fill it);
  * the daemon is still running and stops cleanly (exit 0).

A failure prints what differs: documents missing or in the wrong state,
pending entries, dead-letter reasons, the faults injected and when.

Servers are private to this module: a Redis with AOF persistence per test
(the session one is never restarted), one PostgreSQL cluster for the
module (stopped and started again by some tests), a mock per test. The
two-hosts test makes its own: two network namespaces joined to this one
by veth pairs (10.231.<x>.1 here, .2 there; root and `ip` needed), and a
Redis, a PostgreSQL and a mock listening on 127.0.0.1 and both veth
addresses.

Each test also asserts that its fault happened with work outstanding (or
was otherwise observed), so that it cannot pass without testing anything.
Every wait polls with a timeout; no sleep is asserted as a speed.

Run:  STAGERELAY_BIN=$PWD/stagerelay STAGERELAY_SRCDIR=$PWD \
          tests/integration/run -k chaos -x

Environment:
    STAGERELAY_CHAOS_EVENTS   events per scenario (default 2000)
    STAGERELAY_CHAOS_TIMEOUT  seconds to wait for a drain (default 180)
    STAGERELAY_CHAOS_SEED     random seed (default: random, printed on
                              failure)
"""

import collections
import json
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest
import redis

import logfmt
import publish
import servers
from conftest import (DLQ, EXIT_OK, GROUP, STREAM, Daemon, Env, _merge,
                      pid_alive, wait_until)

EVENTS = int(os.environ.get("STAGERELAY_CHAOS_EVENTS") or 2000)
DRAIN_TIMEOUT = float(os.environ.get("STAGERELAY_CHAOS_TIMEOUT") or 180)
SEED = os.environ.get("STAGERELAY_CHAOS_SEED")
PUBLISH_SECONDS = 5.0       # events are spread over this long
WORKERS = 3
# The supervisor stops (exit 70) at 3 x workers crashes within 60 s:
# one test never kills more workers than this.
KILL_BUDGET = 3 * WORKERS - 1

CHAOS_CONFIG = {
    "concurrent_tasks": WORKERS,
    "batch_size": 20,
    "poll_interval_ms": 100,
    "retry_failed": True,
    "max_retries": 1000,            # an outage must not exhaust retries
    "retry_delay_seconds": 0.1,
    "max_retry_delay_seconds": 1,
    "circuit_breaker": {"failure_threshold": 5, "open_seconds": 1},
    "claim_interval_ms": 500,
    "claim_idle_ms": 2000,
    # Only the poison test lowers it: an innocent entry in the batch of a
    # worker killed several times must not count as poison.
    "max_deliveries": 20,
    "ledger": {"lease_seconds": 5},
    "nlp_api": {"timeout_ms": 1000, "connect_timeout_ms": 500},
}

# Malformed kinds mixed into a scenario: builder(document_id) and reason.
MALFORMED_KINDS = [
    ("bad_json", lambda d: publish.bad_json(d), "invalid_event"),
    ("specversion_0.3", lambda d: publish.wrong_specversion(d),
     "invalid_event"),
    ("missing_id", lambda d: publish.missing_id(d), "invalid_event"),
    ("empty_type", lambda d: publish.empty_type(d), "invalid_event"),
    ("binary_garbage", lambda d: publish.binary_garbage(), "invalid_event"),
    ("no_document_id", lambda d: publish.missing_document_id(),
     "render_error"),
]
PERMANENT_REASONS = {"rejected", "http_error"}


# ---- servers and the env fixture --------------------------------------

def redis_persistence(mode):
    """Decorator: this test's Redis runs with persistence mode (None for
    none at all; the default is "aof")."""
    def mark(fn):
        fn.redis_persistence = mode
        return fn
    return mark


@pytest.fixture(scope="module")
def chaos_pg():
    srv = servers.PostgresServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def chaos_redis(request):
    mode = getattr(request.function, "redis_persistence", "aof")
    srv = servers.RedisServer(persistence=mode).start()
    yield srv
    srv.stop()


@pytest.fixture
def chaos_mock():
    m = servers.MockNLP("thread").start()
    yield m
    m.stop()


@pytest.fixture
def env(chaos_redis, chaos_pg, chaos_mock, tmp_path):
    """conftest's Env on this module's servers (named env so that a
    failing test shows the daemons' stderr)."""
    if not chaos_pg.running:            # a test died mid-outage
        chaos_pg.start_process()
    dbname = chaos_pg.create_database()
    e = Env(chaos_redis, chaos_pg, chaos_mock, str(tmp_path), dbname)
    try:
        yield e
    finally:
        abort_scenarios(e)
        e.close()
        if not chaos_pg.running:
            chaos_pg.start_process()
        chaos_pg.drop_database(dbname)


def abort_scenarios(env):
    """Stops the publishers of env's scenarios: none may outlive its test
    (the next test's Redis could get the same port)."""
    for sc in env.__dict__.get("chaos_scenarios", []):
        sc.abort()


# ---- small observers ----------------------------------------------------

def eid(entry_id):
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def b2s(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


class Workers:
    """Live worker pids of a Daemon, from its log, parsed incrementally
    (a chaos run logs thousands of lines)."""

    def __init__(self, daemon):
        self.d = daemon
        self.seen = 0
        self.pids = {}
        self.exits = []         # (slot, pid, status)
        self.crash_loop = False

    def update(self):
        with self.d._cond:
            new = self.d.lines[self.seen:]
            self.seen = len(self.d.lines)
        for line in new:
            if "proc=master" not in line:
                continue
            r = logfmt.parse_line(line)
            if r is None:
                continue
            if r["msg"] == "worker_spawned":
                self.pids[int(r["slot"])] = int(r["pid"])
            elif r["msg"] == "worker_exited":
                slot, pid = int(r["slot"]), int(r["pid"])
                self.exits.append((slot, pid, r.get("status")))
                if self.pids.get(slot) == pid:
                    del self.pids[slot]
            elif r["msg"] == "crash_loop":
                self.crash_loop = True
        return dict(self.pids)

    def exited(self, pid):
        self.update()
        return [e for e in self.exits if e[1] == pid]


def log_records(daemon, *msgs):
    """Records of daemon's log with msg in msgs (substring prefilter)."""
    out = []
    for line in daemon.stderr.splitlines():
        if not any(m in line for m in msgs):
            continue
        r = logfmt.parse_line(line)
        if r is not None and r["msg"] in msgs:
            out.append(r)
    return out


# ---- the scenario harness ----------------------------------------------

class Item:
    """One planned stream entry."""

    __slots__ = ("n", "kind", "doc", "bad_kind", "reason", "fields",
                 "entry_id", "epoch", "at")

    def __init__(self, n, kind, doc, bad_kind=None, reason=None):
        self.n = n
        self.kind = kind            # "doc", "dup" or "bad"
        self.doc = doc              # document id (None for some bad ones)
        self.bad_kind = bad_kind
        self.reason = reason
        self.fields = None
        self.entry_id = None
        self.epoch = None
        self.at = None


class Scenario:
    """Publishes a mixed stream in the background while a test injects
    faults, waits for the drain and checks the invariants.

    Typical use:

        sc = Scenario(env, "kill")
        d = sc.start_daemon()
        sc.start_publishing()
        ... faults, from the main thread (see below) ...
        sc.finish()           # drain + invariants, fails with a report

    Faults that restart servers run in the main thread: servers.py gives
    its children a parent-death signal, which a short-lived thread would
    trigger. While the publisher lock (sc.lock) is held no entry is being
    published; a Redis restart happens under it, so no XADD straddles one
    (hence no entry whose fate is unknown).
    """

    def __init__(self, env, name, events=None, dup_rate=0.05,
                 bad_rate=0.02, publish_seconds=PUBLISH_SECONDS,
                 seed=None):
        self.env = env
        self.name = name
        self.seed = int(SEED) if SEED else \
            (seed if seed is not None else random.randrange(1 << 30))
        self.rng = random.Random(self.seed)
        self.events = events or EVENTS
        self.publish_seconds = publish_seconds
        self.plan = self._plan(self.events, dup_rate, bad_rate)
        self.lock = threading.Lock()
        self.epoch = 0
        self.first_epoch = 0        # items before this epoch were lost
        self.published = []
        self.publish_retries = 0
        self.publish_error = None
        self.done = threading.Event()
        self._thread = None
        self.t0 = time.monotonic()
        self.faults = []            # (seconds since start, text)
        self.daemons = []           # must be alive at the end
        self.refused = {}           # doc -> dlq reason (permanent refusal)
        self.poison = {}            # doc -> entry id
        self.extra_problems = []
        self.config = None
        self._abort = threading.Event()
        # The env's finalizer stops the publisher (abort_scenarios()).
        env.__dict__.setdefault("chaos_scenarios", []).append(self)

    # -- the plan --
    def doc_id(self, i):
        return "chaos-%s-%05d" % (self.name, i)

    def _plan(self, total, dup_rate, bad_rate):
        n_dup = int(round(total * dup_rate))
        n_bad = max(len(MALFORMED_KINDS), int(round(total * bad_rate)))
        n_doc = total - n_dup - n_bad
        seq = [Item(0, "doc", self.doc_id(i)) for i in range(1, n_doc + 1)]
        # A duplicate goes somewhere after its original.
        for k in range(n_dup):
            pos = self.rng.randrange(len(seq))
            while seq[pos].kind != "doc":
                pos = self.rng.randrange(len(seq))
            at = self.rng.randint(pos + 1, len(seq))
            seq.insert(at, Item(0, "dup", seq[pos].doc))
        for k in range(n_bad):
            kind, _, reason = MALFORMED_KINDS[k % len(MALFORMED_KINDS)]
            doc = "chaos-%s-bad-%04d" % (self.name, k)
            seq.insert(self.rng.randint(0, len(seq)),
                       Item(0, "bad", doc, kind, reason))
        for n, it in enumerate(seq):
            it.n = n
        return seq

    def valid_docs(self):
        return sorted({it.doc for it in self.plan if it.kind != "bad"})

    def fault(self, text):
        t = time.monotonic() - self.t0
        self.faults.append((t, text))

    # -- the daemon --
    def make_config(self, **overrides):
        self.config = self.env.write_config(**_merge(CHAOS_CONFIG,
                                                     overrides))
        return self.config

    def start_daemon(self, config=None, **overrides):
        if config is None:
            config = self.config or self.make_config(**overrides)
        d = self.env.start(config)
        self.daemons.append(d)
        return d

    # -- publishing --
    def start_publishing(self, items=None):
        """Publishes the plan (or items, a slice of it) in a thread; by
        default whatever of the plan was not published yet."""
        if items is None:
            items = [it for it in self.plan if it.entry_id is None]
        if not self.published:
            self.t0 = time.monotonic()      # fault times count from here
        self.done.clear()
        self._thread = threading.Thread(target=self._publish, args=(items,),
                                        name="chaos-publisher",
                                        daemon=True)
        self._thread.start()

    def _publish(self, items):
        client = self.env.redis_server.client()
        maxlen = max(publish.MAXLEN, 4 * self.events)
        start = time.monotonic()
        step = self.publish_seconds / max(1, len(items))
        try:
            for k, it in enumerate(items):
                ahead = start + k * step - time.monotonic()
                if ahead > 0 and self._abort.wait(ahead):
                    return
                if self._abort.is_set():
                    return
                if it.fields is None:
                    it.fields = self._fields(it)
                deadline = time.monotonic() + 60
                while True:
                    with self.lock:
                        try:
                            it.entry_id = publish.publish(
                                client, it.fields, STREAM, maxlen)
                            it.epoch = self.epoch
                            it.at = time.monotonic() - self.t0
                            self.published.append(it)
                            break
                        except (redis.exceptions.ConnectionError,
                                redis.exceptions.TimeoutError,
                                redis.exceptions.BusyLoadingError):
                            # Never under a fault (those hold the lock);
                            # a lost reply would make a double entry.
                            self.publish_retries += 1
                    if time.monotonic() > deadline:
                        raise AssertionError("cannot publish for 60 s")
                    if self._abort.wait(0.05):
                        return
        except BaseException as e:          # reported by finish()
            self.publish_error = "%s: %s" % (type(e).__name__, e)
        finally:
            client.close()
            self.done.set()

    def abort(self):
        """Stops the publisher (test teardown)."""
        self._abort.set()
        if self._thread is not None:
            self._thread.join(10)

    def _fields(self, it):
        if it.kind == "bad":
            builder = dict((k, b) for k, b, _ in MALFORMED_KINDS)[it.bad_kind]
            return builder(it.doc)
        text = publish.SENTENCES[it.n % len(publish.SENTENCES)]
        return publish.document_cleaned(it.doc, text)

    def publish_now(self, item):
        """Publishes one extra item synchronously (added to the plan)."""
        item.n = len(self.plan)
        self.plan.append(item)
        item.fields = self._fields(item)
        with self.lock:
            item.entry_id = publish.publish(self.env.redis, item.fields,
                                            STREAM)
            item.epoch = self.epoch
            item.at = time.monotonic() - self.t0
            self.published.append(item)
        return item

    def published_fraction(self):
        return len(self.published) / max(1, len(self.plan))

    def wait_published(self, fraction, timeout=60):
        wait_until(lambda: self.published_fraction() >= fraction or
                   self.done.is_set(), timeout=timeout, interval=0.01,
                   what="%.0f%% of the events published" % (100 * fraction))

    def sleep_until(self, seconds):
        """Sleeps until `seconds` after the scenario started."""
        left = self.t0 + seconds - time.monotonic()
        if left > 0:
            time.sleep(left)

    # -- observing --
    def backlog(self):
        """(pending, undelivered) of the group right now; None if Redis
        cannot tell."""
        r = self.env.redis
        try:
            info = r.xinfo_stream(STREAM)
            groups = {b2s(g["name"]): g for g in r.xinfo_groups(STREAM)}
        except redis.exceptions.RedisError:
            return None
        g = groups.get(GROUP)
        if g is None:
            return None
        last = eid(info["last-generated-id"])
        delivered = eid(g["last-delivered-id"])
        return g["pending"], last > delivered

    def drained(self):
        if not self.done.is_set():
            return False
        b = self.backlog()
        return b is not None and b[0] == 0 and not b[1]

    def dead_daemons(self):
        return [d for d in self.daemons if d.proc.poll() is not None]

    def wait_drained(self, timeout=DRAIN_TIMEOUT):
        """Waits for the drain; returns None or why it did not come."""
        deadline = time.monotonic() + timeout
        while True:
            if self.drained():
                return None
            dead = self.dead_daemons()
            if dead and not self.drained():
                # Nothing will drain it any more.
                return "daemon exited (%s) before the drain" % ", ".join(
                    str(d.proc.returncode) for d in dead)
            if time.monotonic() > deadline:
                return "no drain within %.0f s (backlog: pending, " \
                    "undelivered = %s)" % (timeout, self.backlog())
            time.sleep(0.1)

    # -- the invariants --
    def finish(self, timeout=DRAIN_TIMEOUT, stop=True):
        """Waits for the publisher and the drain, checks the invariants
        and stops the daemons; fails with a report listing every
        violation."""
        self.done.wait(timeout)
        if self._thread is not None:
            self._thread.join(5)
        if not self.done.is_set():
            self.extra_problems.append("the publisher did not finish")
        not_drained = self.wait_drained(timeout)
        problems, facts = self.check()
        if not_drained:
            problems.insert(0, not_drained)
        if self.publish_error:
            problems.insert(0, "publisher failed: " + self.publish_error)
        problems[0:0] = self.extra_problems
        if stop:
            for d in self.daemons:
                try:
                    code = d.stop(timeout=30) if d.proc.poll() is None \
                        else d.proc.returncode
                except AssertionError as e:
                    code = str(e).splitlines()[0]
                if code != EXIT_OK:
                    problems.append("daemon pid %d exited %s (expected a "
                                    "clean stop, 0)" % (d.pid, code))
        if problems:
            raise AssertionError(self.report(problems, facts))
        return facts

    def relevant(self, it):
        return it.epoch is not None and it.epoch >= self.first_epoch

    def check(self):
        """(problems, facts): every invariant violated, and what was
        observed."""
        env = self.env
        problems = []
        pub = [it for it in self.published if self.relevant(it)]
        expect_docs = sorted({it.doc for it in pub if it.kind != "bad"})
        known_docs = {it.doc for it in self.plan if it.kind != "bad"}
        bad_items = [it for it in pub if it.kind == "bad"]
        rows = {r["document_id"]: r for r in rows_of(env)}
        reqs = env.requests()

        # -- the requests --
        by_doc = collections.defaultdict(list)
        for r in reqs:
            key = r["headers"].get("idempotency-key")
            body = r["json"] if isinstance(r["json"], dict) else {}
            doc = body.get("document_id")
            if key is None or key != doc:
                problems.append("request n=%s for document %r carried "
                                "Idempotency-Key %r" % (r["n"], doc, key))
            if key not in known_docs:
                problems.append("request n=%s for a document never "
                                "published validly: %r" % (r["n"], key))
            by_doc[key].append(r)
        jobs = {k: {r["response"]["job_id"] for r in rs
                    if r["response"]["job_id"]} for k, rs in by_doc.items()}
        # Accepted: a success answer that went out (not one still held
        # back by a delay, nor one whose client had gone).
        accepted = {k for k, rs in by_doc.items()
                    if any(r["response"]["job_id"] and
                           r.get("delivered") for r in rs)}

        # -- the ledger --
        missing, wrong, badjob, unseen = [], [], [], []
        for doc in expect_docs:
            row = rows.get(doc)
            want = "dead" if doc in self.refused or doc in self.poison \
                else "triggered"
            if row is None:
                missing.append(doc)
            elif row["status"] != want:
                wrong.append((doc, row["status"], want, row))
            elif want == "triggered" and \
                    row["remote_job_id"] not in jobs.get(doc, ()):
                badjob.append((doc, row["remote_job_id"],
                               sorted(jobs.get(doc, ()))))
            if doc not in by_doc:
                unseen.append(doc)
        if missing:
            problems.append("%d documents have no ledger row: %s"
                            % (len(missing), sample(missing)))
        if wrong:
            counts = collections.Counter((s, w) for _, s, w, _ in wrong)
            problems.append("%d documents in the wrong ledger state "
                            "(status, expected: count) %s; e.g. %s" % (
                                len(wrong), dict(counts),
                                "; ".join(row_brief(r)
                                          for _, _, _, r in wrong[:8])))
        # Lost with a non-persistent restart: whatever is left of those
        # must still be coherent.
        for doc, row in rows.items():
            if doc in known_docs and doc not in expect_docs and \
                    row["status"] == "triggered" and \
                    row["remote_job_id"] not in jobs.get(doc, ()):
                badjob.append((doc, row["remote_job_id"], None))
        if badjob:
            problems.append("%d triggered rows name a job id the mock never "
                            "gave that document: %s"
                            % (len(badjob), sample(badjob)))
        if unseen:
            problems.append("%d documents never reached the NLP API: %s"
                            % (len(unseen), sample(unseen)))
        strays = sorted(set(rows) - known_docs)
        if strays:
            problems.append("ledger rows for documents never published "
                            "validly: %s" % sample(strays))

        # -- pending --
        pend = pending_entries(env)
        if pend:
            problems.append("%d entries still pending: %s" % (
                len(pend), sample(["%s consumer=%s idle=%dms deliveries=%d"
                                   % p for p in pend])))

        # -- the dead-letter stream --
        dls = dead_letters(env)
        by_source = collections.defaultdict(list)
        for d in dls:
            by_source[d["source_id"]].append(d)
        entry_doc = {it.entry_id: it for it in pub}
        lost_bad = []
        for it in bad_items:
            got = by_source.get(it.entry_id)
            if not got:
                lost_bad.append("%s (%s, want %s)" % (it.entry_id,
                                                      it.bad_kind,
                                                      it.reason))
            elif not any(d["reason"] == it.reason for d in got):
                problems.append("malformed entry %s (%s) dead-lettered as "
                                "%s, want %s" % (it.entry_id, it.bad_kind,
                                                 [d["reason"] for d in got],
                                                 it.reason))
        if lost_bad:
            problems.append("%d malformed entries are not in the "
                            "dead-letter stream: %s"
                            % (len(lost_bad), sample(lost_bad)))
        unexpected = []
        for d in dls:
            it = entry_doc.get(d["source_id"])
            doc = d["document_id"] or (it.doc if it else None)
            if doc in accepted:
                problems.append("dead-letter entry %s (reason %s) for %s, "
                                "which the NLP API accepted" % (
                                    d["id"], d["reason"], doc))
                continue
            if it is not None and it.kind == "bad":
                continue
            if doc in self.refused and d["reason"] in PERMANENT_REASONS:
                continue
            if doc in self.poison and d["reason"] == "poison":
                continue
            if it is None and self.first_epoch > 0 and \
                    doc in known_docs and d["reason"] == "lost":
                continue
            unexpected.append("%s reason=%s doc=%s detail=%s" % (
                d["source_id"], d["reason"], doc, d["detail"][:80]))
        if unexpected:
            problems.append("%d unexpected dead-letter entries: %s"
                            % (len(unexpected), sample(unexpected)))
        for doc, reason in sorted(self.refused.items()):
            if doc in expect_docs and not any(
                    d["document_id"] == doc and d["reason"] == reason
                    for d in dls):
                problems.append("refused document %s not dead-lettered as "
                                "%s" % (doc, reason))
        for doc, entry in sorted(self.poison.items()):
            if not any(d["source_id"] == entry and d["reason"] == "poison"
                       for d in dls):
                problems.append("poison entry %s (%s) not dead-lettered as "
                                "poison; its dead letters: %s" % (
                                    entry, doc,
                                    [d["reason"] for d in
                                     by_source.get(entry, [])]))

        # -- the daemons --
        for d in self.daemons:
            if d.proc.poll() is not None:
                problems.append("daemon pid %d exited %s during the run%s"
                                % (d.pid, d.proc.returncode,
                                   " (crash-loop brake)"
                                   if log_records(d, "crash_loop") else ""))

        facts = {
            "published": len(self.published),
            "relevant": len(pub),
            "documents": len(expect_docs),
            "requests": len(reqs),
            "resent": sum(len(v) - 1 for v in by_doc.values() if len(v) > 1),
            "statuses": dict(collections.Counter(r["response"]["status"]
                                                 for r in reqs)),
            "ledger": dict(collections.Counter(r["status"]
                                               for r in rows.values())),
            "dead_letters": dict(collections.Counter(d["reason"]
                                                     for d in dls)),
            "by_doc": by_doc,
            "rows": rows,
            "dls": dls,
        }
        return problems, facts

    def report(self, problems, facts):
        lines = ["chaos scenario %r (seed %d, %d events planned, %d "
                 "published, %d publish retries) violated %d invariant(s):"
                 % (self.name, self.seed, len(self.plan),
                    len(self.published), self.publish_retries,
                    len(problems))]
        lines += ["  - " + p for p in problems]
        lines.append("observed: " + ", ".join(
            "%s=%s" % (k, facts[k]) for k in
            ("relevant", "documents", "requests", "resent", "statuses",
             "ledger", "dead_letters")))
        try:
            lines.append("group: %s" % {
                k: b2s(v) if isinstance(v, bytes) else v
                for k, v in self.env.groups().get(GROUP, {}).items()})
            lines.append("consumers: %s" % [
                (b2s(c["name"]), c["pending"], c["idle"])
                for c in self.env.redis.xinfo_consumers(STREAM, GROUP)])
        except redis.exceptions.RedisError as e:
            lines.append("group: (%s)" % e)
        lines.append("faults injected (seconds since start):")
        lines += ["  %6.2f  %s" % f for f in self.faults] or ["  (none)"]
        for i, d in enumerate(self.env.daemons, 1):
            recs = log_records(d, "crash_loop", "worker_exited",
                               "group_recreated")
            lines.append("daemon %d (pid %d, %s): %d worker exits%s" % (
                i, d.pid, "running" if d.proc.poll() is None
                else "exit %s" % d.proc.returncode,
                len([r for r in recs if r["msg"] == "worker_exited"]),
                ", CRASH LOOP" if any(r["msg"] == "crash_loop"
                                      for r in recs) else ""))
            errs = [ln for ln in d.stderr.splitlines()
                    if "level=error" in ln]
            if errs:
                lines.append("  last errors: " + " | ".join(errs[-5:]))
        return "\n".join(lines)


def sample(xs, n=12):
    xs = list(xs)
    more = " ... (%d more)" % (len(xs) - n) if len(xs) > n else ""
    return ", ".join(str(x) for x in xs[:n]) + more


def row_brief(r):
    return "%s status=%s attempts=%s claimed_by=%s last_error=%r" % (
        r["document_id"], r["status"], r.get("attempts"),
        r.get("claimed_by"), (r.get("last_error") or "")[:60])


def rows_of(env):
    """Ledger rows through a fresh connection (the env's may have been
    cut by a fault)."""
    import psycopg2.extras
    conn = env.pg.connect(env.dbname)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) \
                as cur:
            cur.execute("SELECT to_regclass('stagerelay.processed_documents')"
                        " AS t")
            if not cur.fetchone()["t"]:
                return []
            cur.execute("SELECT * FROM stagerelay.processed_documents "
                        "WHERE consumer_group = %s", (GROUP,))
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def pending_entries(env, consumer=None):
    """[(entry id, consumer, idle ms, deliveries)] of the group's PEL."""
    kw = {"consumername": consumer} if consumer else {}
    try:
        got = env.redis.xpending_range(STREAM, GROUP, "-", "+", 100000, **kw)
    except redis.exceptions.ResponseError:
        return []
    return [(b2s(p["message_id"]), b2s(p["consumer"]),
             p["time_since_delivered"], p["times_delivered"]) for p in got]


def dead_letters(env):
    out = []
    for i, f in env.redis.xrange(DLQ):
        doc = None
        try:
            data = json.loads(f.get(b"data", b"").decode("utf-8"))
            if isinstance(data, dict):
                doc = data.get("document_id")
        except (ValueError, UnicodeDecodeError):
            pass
        out.append({"id": b2s(i), "source_id": b2s(f.get(b"dlq_source_id")),
                    "reason": b2s(f.get(b"dlq_reason")),
                    "detail": b2s(f.get(b"dlq_detail") or b""),
                    "document_id": doc})
    return out


def outstanding(backlog):
    """True if a backlog() sample shows work not yet done."""
    return bool(backlog and (backlog[0] or backlog[1]))


def kill_worker(sc, workers, pid, why=""):
    """SIGKILLs one worker pid and waits for the master to reap it."""
    busy = len(pending_entries(sc.env, consumer=None))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    sc.fault("kill -9 worker pid %d %s(group pending %d)" % (pid, why, busy))
    wait_until(lambda: workers.exited(pid), timeout=10,
               what="the master reaping worker %d" % pid)
    return True


# ---- 0. no faults: the harness itself ----------------------------------

def test_chaos_baseline_without_faults(env):
    """The same scenario with nothing broken: the invariants hold, and
    nothing is sent twice (a harness check as much as a daemon one)."""
    sc = Scenario(env, "baseline")
    sc.start_daemon()
    sc.start_publishing()
    facts = sc.finish()
    assert facts["resent"] == 0, "requests repeated without any fault"
    assert facts["requests"] == facts["documents"]


# ---- 1. kill -9 of workers and of the master ---------------------------

def test_chaos_kill_random_workers_every_second(env):
    sc = Scenario(env, "killw")
    env.mock.behaviour(delay_ms=20)         # requests in flight
    d = sc.start_daemon()
    workers = Workers(d)
    wait_until(lambda: len(workers.update()) == WORKERS,
               what="%d workers" % WORKERS)
    sc.start_publishing()
    kills, busy_kills = [], 0
    rng = random.Random(sc.seed)
    while len(kills) < KILL_BUDGET and not sc.drained():
        time.sleep(1.0)
        live = workers.update()
        if not live:
            continue
        slot = rng.choice(sorted(live))
        pid = live[slot]
        held = pending_entries(env, consumer="itest-%d" % slot)
        if kill_worker(sc, workers, pid, "slot %d holding %d " % (
                slot, len(held))):
            kills.append(pid)
            busy_kills += bool(held)
    sc.finish()
    assert len(kills) >= 4, "only %d kills landed before the drain" \
        % len(kills)
    assert busy_kills >= 1, "no kill hit a worker with entries in flight"
    for pid in kills:
        assert workers.exited(pid)[0][2] == "signal:9"
    assert not workers.crash_loop


def test_chaos_kill_master_and_workers_and_restart(env):
    sc = Scenario(env, "killm")
    env.mock.behaviour(delay_ms=20)
    d = sc.start_daemon()
    sc.start_publishing()
    restarts, busy = 0, 0
    for at in (1.2, 2.6, 4.0):
        sc.sleep_until(at)
        workers = Workers(d)
        pids = list(workers.update().values())
        backlog = sc.backlog()
        busy += outstanding(backlog)
        d.kill()                            # master first, then workers
        wait_until(lambda: not any(pid_alive(p) for p in pids),
                   timeout=10, what="workers of the killed master gone")
        sc.fault("kill -9 master %d and workers %s (backlog %s)"
                 % (d.pid, pids, backlog))
        sc.daemons.remove(d)
        d = sc.start_daemon()
        restarts += 1
    sc.finish()
    assert restarts == 3
    assert busy, "the master was never killed with work outstanding"


# ---- 2. Redis restarts -------------------------------------------------

def test_chaos_redis_restart_with_persistence(env):
    sc = Scenario(env, "redisp")
    env.mock.behaviour(delay_ms=10)
    sc.start_daemon()
    sc.start_publishing()
    busy = 0
    for at in (1.5, 3.5):
        sc.sleep_until(at)
        with sc.lock:
            before = env.redis.xlen(STREAM)
            backlog = sc.backlog()
            busy += outstanding(backlog)
            env.redis_server.restart(keep_data=True, down_seconds=1.0)
            after = env.redis.xlen(STREAM)
            sc.fault("redis restarted with its AOF, 1 s down (backlog %s; "
                     "stream length %d -> %d)" % (backlog, before, after))
        assert after == before, "the AOF lost entries: harness defect"
    sc.finish()
    assert busy, "Redis never restarted with work outstanding"


@redis_persistence(None)
def test_chaos_redis_restart_without_persistence(env):
    sc = Scenario(env, "redisn")
    env.mock.behaviour(delay_ms=10)
    d = sc.start_daemon()
    sc.start_publishing()
    sc.wait_published(0.4)
    with sc.lock:
        backlog = sc.backlog()
        env.redis_server.restart(keep_data=True, down_seconds=1.0)
        assert not env.redis.exists(STREAM), "the stream survived a " \
            "restart without persistence: harness defect"
        sc.epoch = sc.first_epoch = 1
        sc.fault("redis restarted empty (backlog before %s)" % (backlog,))
        # Publish again only once the group is back: entries added before
        # a group created at '$' would be skipped, which is not what this
        # test is about.
        try:
            wait_until(lambda: GROUP in env.groups(), timeout=30,
                       what="the consumer group recreated")
            sc.fault("group exists again")
        except AssertionError as e:
            sc.extra_problems.append(str(e))
    facts = sc.finish()
    assert facts["relevant"] > 0.4 * len(sc.plan), facts["relevant"]
    # The daemon made the group again (on NOGROUP, or when it
    # reconnected) and said so loudly.
    made = log_records(d, "group_recreated")
    assert made and all(r["level"] == "warn" for r in made), \
        "no worker logged group_recreated after the restart: %s" % made


# ---- 3. PostgreSQL ------------------------------------------------------

def test_chaos_postgres_stopped_for_seconds(env):
    sc = Scenario(env, "pgstop")
    env.mock.behaviour(delay_ms=10)
    sc.start_daemon()
    sc.start_publishing()
    sc.sleep_until(1.5)
    backlog = sc.backlog()
    env.pg.stop_process()
    sc.fault("postgres stopped (fast shutdown; backlog %s)" % (backlog,))
    time.sleep(4.0)
    during = sc.backlog()
    env.pg.start_process()
    sc.fault("postgres started again on port %d (backlog %s)"
             % (env.pg.port, during))
    sc.finish()
    assert outstanding(backlog) or outstanding(during), \
        "PostgreSQL went away while the daemon had nothing to do"


def test_chaos_postgres_backends_terminated(env):
    sc = Scenario(env, "pgterm")
    env.mock.behaviour(delay_ms=10)
    sc.start_daemon()
    sc.start_publishing()
    total = 0
    for k in range(8):
        sc.sleep_until(1.0 + 0.6 * k)
        n = env.pg.terminate_backends(env.dbname)
        total += n
        sc.fault("pg_terminate_backend: %d sessions" % n)
    sc.finish()
    assert total >= 8, "the daemon had hardly any sessions to terminate " \
        "(%d): nothing was tested" % total


# ---- 4. the NLP API misbehaving ----------------------------------------

def test_chaos_nlp_503_bursts_with_retry_after(env):
    sc = Scenario(env, "n503")
    sc.start_daemon()
    sc.start_publishing()
    for at in (1.0, 3.0, 5.0):
        sc.sleep_until(at)
        env.mock.behaviour(status=503, retry_after=1)
        sc.fault("mock: 503 with Retry-After: 1")
        sc.sleep_until(at + 1.2)
        env.mock.behaviour()
        sc.fault("mock: healthy")
    facts = sc.finish()
    assert facts["statuses"].get(503, 0) >= 5, facts["statuses"]
    # Retry-After 1 (= max_retry_delay_seconds): a document answered 503
    # is not asked again for a second. Documents re-published as
    # duplicates are left out (another worker may hold the other event).
    dups = {it.doc for it in sc.plan if it.kind == "dup"}
    early = []
    for doc, rs in facts["by_doc"].items():
        if doc in dups:
            continue
        for a, nxt in zip(rs, rs[1:]):
            if a["response"]["status"] == 503 and \
                    nxt["time"] - a["time"] < 0.9:
                early.append("%s after %.2f s" % (doc,
                                                  nxt["time"] - a["time"]))
    assert not early, "Retry-After not honoured: %s" % sample(early)


def test_chaos_nlp_slower_than_timeout(env):
    sc = Scenario(env, "nslow")
    sc.start_daemon()
    sc.start_publishing()
    for at in (1.0, 3.5):
        sc.sleep_until(at)
        env.mock.behaviour(delay_ms=1600)   # timeout_ms is 1000
        sc.fault("mock: answers after 1.6 s")
        sc.sleep_until(at + 1.5)
        env.mock.behaviour()
        sc.fault("mock: prompt")
    facts = sc.finish()
    slow = [r for rs in facts["by_doc"].values() for r in rs
            if r["response"]["delay_ms"] >= 1600]
    assert len(slow) >= 5, "hardly any request hit the slow mock"
    # Each timed-out document was asked again and recorded with the job
    # id of a later, answered request.
    for r in slow:
        doc = r["headers"]["idempotency-key"]
        row = facts["rows"][doc]
        assert row["remote_job_id"] != r["response"]["job_id"], \
            "%s recorded the job id of a request it gave up on" % doc


def test_chaos_nlp_connection_refused(env):
    sc = Scenario(env, "nrefuse")
    env.mock.behaviour(delay_ms=10)
    sc.start_daemon()
    sc.start_publishing()
    busy, late = 0, []
    for at in (1.0, 3.5):
        sc.sleep_until(at)
        backlog = sc.backlog()
        busy += outstanding(backlog)
        env.mock.refuse_connections()
        sc.fault("mock: connection refused (backlog %s)" % (backlog,))
        sc.sleep_until(at + 2.3)
        # Back-pressure: with the circuit open the workers stop reading,
        # so what was published meanwhile waits in the stream.
        late.append(sc.backlog())
        sc.sleep_until(at + 2.5)
        env.mock.accept_connections()
        assert servers.port_open(env.mock.port)
        sc.fault("mock: listening again (backlog before: %s)"
                 % (late[-1],))
    sc.finish()
    assert busy, "the mock went away while the daemon had nothing to do"
    # Published during the first outage (still publishing): not read.
    pending, undelivered = late[0]
    assert undelivered, "the workers kept reading new entries while " \
        "the NLP API refused connections (no back-pressure)"
    assert pending <= 4 * WORKERS * CHAOS_CONFIG["batch_size"], \
        "%d entries taken during the outage (no back-pressure)" % pending


def test_chaos_nlp_refuses_some_documents_permanently(env):
    sc = Scenario(env, "nrefused")
    docs = sc.valid_docs()
    rng = random.Random(sc.seed)
    chosen = rng.sample(docs, max(4, len(docs) // 50))
    half = len(chosen) // 2
    for doc in chosen[:half]:
        sc.refused[doc] = "rejected"        # 202, success false
    for doc in chosen[half:]:
        sc.refused[doc] = "http_error"      # 422
    env.mock.rules([{"match": chosen[:half], "success": False},
                    {"match": chosen[half:], "status": 422}])
    env.mock.behaviour(delay_ms=10)
    sc.start_daemon()
    sc.start_publishing()
    facts = sc.finish()
    # The refusals reached the API and nothing else was refused.
    assert set(chosen) <= set(facts["by_doc"])
    assert facts["ledger"].get("dead", 0) == len(chosen), facts["ledger"]


# ---- 5. poison ------------------------------------------------------------

def test_chaos_poison_entry_dead_lettered_after_max_deliveries(env):
    max_deliveries = 3
    sc = Scenario(env, "poison")
    poison = "chaos-poison-doc"
    # Its request never comes back: every time it arrives, the worker
    # holding the entry is killed (a worker that keeps crashing on it).
    env.mock.rules([{"match": poison, "delay_ms": 30000}])
    env.mock.behaviour(delay_ms=10)
    # A timeout far beyond the time it takes to notice the request and
    # kill its worker, even on a loaded machine: the entry is redelivered
    # by a crash each time, never retried after a timeout.
    # Sweepers and leases wait longer than the request: the respawned
    # worker (same consumer name) takes the entry up from its own list.
    sc.start_daemon(max_deliveries=max_deliveries,
                    nlp_api={"timeout_ms": 20000},
                    claim_idle_ms=30000, ledger={"lease_seconds": 30},
                    supervisor={"worker_timeout": 60})
    d = sc.daemons[0]
    workers = Workers(d)
    wait_until(lambda: len(workers.update()) == WORKERS, what="workers")
    # Alone in the stream first, then the rest streams in around it.
    it = sc.publish_now(Item(0, "doc", poison))
    sc.poison[poison] = it.entry_id
    wait_until(lambda: any(r["headers"].get("idempotency-key") == poison
                           for r in env.requests()), timeout=15,
               what="the poison request")
    sc.start_publishing()
    seen, kills = 0, 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and kills < KILL_BUDGET:
        reqs = env.mock.requests(since=seen)
        seen += len(reqs)
        arrivals = [r for r in reqs
                    if r["headers"].get("idempotency-key") == poison]
        for _ in arrivals:
            holders = [p for p in pending_entries(env)
                       if p[0] == it.entry_id]
            live = workers.update()
            if not holders:
                continue
            consumer = holders[0][1]
            slot = int(consumer.rsplit("-", 1)[1])
            if slot in live:
                if kill_worker(sc, workers, live[slot],
                               "slot %d, holding the poison entry "
                               "(delivered %d times) " % (
                                   slot, holders[0][3])):
                    kills += 1
        if any(x["source_id"] == it.entry_id for x in dead_letters(env)):
            sc.fault("poison entry dead-lettered")
            break
        time.sleep(0.02)
    facts = sc.finish()
    poison_reqs = facts["by_doc"].get(poison, [])
    assert kills >= 1
    assert len(poison_reqs) <= max_deliveries, \
        "the poison document was sent %d times (max_deliveries %d)" % (
            len(poison_reqs), max_deliveries)
    dl = [x for x in facts["dls"] if x["source_id"] == it.entry_id]
    assert [x["reason"] for x in dl] == ["poison"], dl


# ---- 6. everything at once -------------------------------------------------

def test_chaos_combined(env):
    sc = Scenario(env, "combined", publish_seconds=7.0)
    docs = sc.valid_docs()
    chosen = random.Random(sc.seed).sample(docs, max(2, len(docs) // 100))
    for doc in chosen:
        sc.refused[doc] = "rejected"
    env.mock.rules([{"match": chosen, "success": False}])
    env.mock.behaviour(delay_ms=15)
    d = sc.start_daemon()
    workers = Workers(d)
    wait_until(lambda: len(workers.update()) == WORKERS, what="workers")
    sc.start_publishing()
    rng = random.Random(sc.seed + 1)

    def kill_one():
        live = workers.update()
        if live:
            slot = rng.choice(sorted(live))
            kill_worker(sc, workers, live[slot], "slot %d " % slot)

    def burst_503():
        env.mock.behaviour(status=503, retry_after=1)
        sc.fault("mock: 503 + Retry-After")

    def healthy():
        env.mock.behaviour(delay_ms=15)
        sc.fault("mock: healthy")

    def slow():
        env.mock.behaviour(delay_ms=1600)
        sc.fault("mock: slower than timeout_ms")

    def terminate():
        sc.fault("pg_terminate_backend: %d sessions"
                 % env.pg.terminate_backends(env.dbname))

    def refuse():
        env.mock.refuse(1.5)
        sc.fault("mock: connection refused for 1.5 s")

    def redis_restart():
        with sc.lock:
            env.redis_server.restart(keep_data=True, down_seconds=0.5)
        sc.fault("redis restarted with its AOF")

    def pg_restart():
        env.pg.stop_process()
        sc.fault("postgres stopped")
        time.sleep(2.0)
        env.pg.start_process()
        sc.fault("postgres started")

    timeline = [(0.8, kill_one), (1.2, burst_503), (2.0, healthy),
                (2.3, terminate), (2.6, kill_one), (3.0, refuse),
                (4.0, redis_restart), (4.6, slow), (5.6, healthy),
                (5.8, kill_one), (6.2, pg_restart), (8.5, terminate),
                (9.0, kill_one)]
    for at, action in timeline:
        sc.sleep_until(at)
        action()
    facts = sc.finish()
    assert facts["statuses"].get(503, 0) > 0
    assert not workers.crash_loop


# ---- 7. two hosts ------------------------------------------------------

_netns_serial = 0


def _ip(*args, check=True):
    return subprocess.run(["ip"] + list(args), capture_output=True,
                          text=True, check=check)


def _netns_pids(ns):
    r = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


def _netns_kill_all(ns):
    for pid in _netns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _netns_cleanup_stale():
    """Namespaces left by an earlier run that died (its pid is gone)."""
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"srchaos-(\d+)-", name)
        if m and not pid_alive(int(m.group(1))):
            _netns_kill_all(name)
            _ip("netns", "del", name, check=False)


def _free_subnets(n):
    used = set(re.findall(r"inet 10\.231\.(\d+)\.",
                          _ip("-o", "-4", "addr", check=False).stdout))
    free = [x for x in range(1, 255) if str(x) not in used]
    if len(free) < n:
        raise RuntimeError("no free 10.231.x.0/24 subnets")
    return free[:n]


class Host:
    """A network namespace joined to the root namespace by a veth pair:
    root side 10.231.<x>.1/24, namespace side 10.231.<x>.2/24."""

    def __init__(self, name, ns, veth_root, veth_ns, subnet):
        self.name = name
        self.ns = ns
        self.veth_root = veth_root
        self.veth_ns = veth_ns
        self.root_addr = "10.231.%d.1" % subnet
        self.addr = "10.231.%d.2" % subnet

    def setup(self):
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.veth_root, "type", "veth", "peer", "name",
            self.veth_ns)
        _ip("link", "set", self.veth_ns, "netns", self.ns)
        _ip("addr", "add", self.root_addr + "/24", "dev", self.veth_root)
        _ip("link", "set", self.veth_root, "up")
        _ip("-n", self.ns, "addr", "add", self.addr + "/24", "dev",
            self.veth_ns)
        _ip("-n", self.ns, "link", "set", self.veth_ns, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")

    def teardown(self):
        _netns_kill_all(self.ns)
        _ip("netns", "del", self.ns, check=False)
        _ip("link", "del", self.veth_root, check=False)

    def can_reach(self, host, port):
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns, "/usr/bin/python3", "-c",
             "import socket,sys; socket.create_connection((sys.argv[1], "
             "int(sys.argv[2])), timeout=3).close()", host, str(port)],
            capture_output=True, text=True)
        return r.returncode == 0


@pytest.fixture
def two_hosts():
    global _netns_serial
    if os.geteuid() != 0:
        pytest.fail("the two-hosts test needs root (ip netns)")
    _netns_cleanup_stale()
    _netns_serial += 1
    tag = "%d%02d" % (os.getpid() % 100000, _netns_serial % 100)
    hosts = []
    try:
        for letter, subnet in zip("ab", _free_subnets(2)):
            h = Host("host" + letter,
                     "srchaos-%d-%s%s" % (os.getpid(), tag, letter),
                     "src%s%s" % (tag, letter), "srn%s%s" % (tag, letter),
                     subnet)
            hosts.append(h)
            h.setup()
        yield hosts
    finally:
        for h in hosts:
            h.teardown()


@pytest.fixture
def two_host_env(two_hosts, tmp_path):
    addrs = [h.root_addr for h in two_hosts]
    rs = servers.RedisServer(persistence=None, bind=addrs).start()
    pg = servers.PostgresServer(listen=addrs,
                                hba=["host all all 10.231.0.0/16 trust"])
    mock = None
    e = None
    try:
        pg.start()
        mock = servers.MockNLP("thread", extra_hosts=addrs).start()
        dbname = pg.create_database()
        e = Env(rs, pg, mock, str(tmp_path), dbname)
        yield e, two_hosts
    finally:
        if e is not None:
            abort_scenarios(e)
            e.close()
        for h in two_hosts:
            _netns_kill_all(h.ns)
        if mock is not None:
            mock.stop()
        pg.stop()
        rs.stop()


def test_chaos_two_hosts_one_dies_the_other_reclaims(two_host_env, request):
    env, hosts = two_host_env
    # conftest's report hook shows the daemons' stderr of funcargs["env"].
    request.node.funcargs["env"] = env
    for h in hosts:
        for what, port in (("Redis", env.redis_server.port),
                           ("PostgreSQL", env.pg.port),
                           ("the mock", env.mock.extra[h.root_addr].port)):
            assert h.can_reach(h.root_addr, port), \
                "namespace %s cannot reach %s at %s:%d: harness defect" \
                % (h.ns, what, h.root_addr, port)
    sc = Scenario(env, "hosts")
    env.mock.behaviour(delay_ms=30)
    for h in hosts:
        config = env.write_config(**_merge_chaos(
            consumer_name=h.name, redis_host=h.root_addr,
            nlp_api={"base_url": env.mock.url_for(h.root_addr)},
            ledger={"dsn": env.pg.dsn_for(env.dbname, host=h.root_addr)}))
        d = Daemon(["-c", config], env._env(), cwd=env.tmpdir,
                   prefix=["ip", "netns", "exec", h.ns])
        env.daemons.append(d)
        h.daemon = d
        d.wait_log("worker_started", timeout=15)
        assert set(_netns_pids(h.ns)) >= {d.pid}, "not in %s" % h.ns
    wait_until(lambda: len(consumer_names(env)) == 2 * WORKERS, timeout=15,
               what="both hosts' consumers in the group (have %s)"
               % consumer_names(env))
    a, b = hosts
    sc.daemons = [b.daemon]
    sc.start_publishing()
    # Kill host A outright once it is holding work.
    sc.sleep_until(1.5)
    wait_until(lambda: [p for p in pending_entries(env)
                        if p[1].startswith(a.name + "-")], timeout=10,
               interval=0.005, what="host A holding entries")
    pids = _netns_pids(a.ns)
    _netns_kill_all(a.ns)
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10,
               what="every process of %s gone" % a.ns)
    left = [p for p in pending_entries(env) if p[1].startswith(a.name + "-")]
    sc.fault("host A (%s) killed: %d processes, %d entries pending for it"
             % (a.ns, len(pids), len(left)))
    facts = sc.finish()
    assert left, "host A held nothing when it died: nothing to reclaim"
    # Host B took every entry A left: each shows up in B's log.
    blog = b.daemon.stderr
    unclaimed = [p[0] for p in left if "entry_id=%s" % p[0] not in blog]
    assert not unclaimed, "host B never handled %d of the entries host A " \
        "left: %s" % (len(unclaimed), sample(unclaimed))
    assert facts["requests"] >= facts["documents"]


def consumer_names(env):
    try:
        return sorted(b2s(c["name"])
                      for c in env.redis.xinfo_consumers(STREAM, GROUP))
    except redis.exceptions.ResponseError:
        return []


def _merge_chaos(**overrides):
    return _merge(CHAOS_CONFIG, overrides)
