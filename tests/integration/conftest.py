"""Fixtures for stagerelay's integration tests.

Real servers, started here on loopback: one redis-server and one PostgreSQL
cluster per session (as `nobody` when root), a fresh database and an empty
Redis per test. The only stand-in is the NLP API (tests/tools/mock_nlp.py),
reset per test. The binary under test is $STAGERELAY_BIN (default
<repo>/stagerelay); $STAGERELAY_SRCDIR is the repository root.

A missing binary or server is an error that stops the run (exit 99, a
hard error to automake), never a skip.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

SRCDIR = os.path.abspath(os.environ.get("STAGERELAY_SRCDIR") or
                         os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.abspath(os.environ.get("STAGERELAY_BIN") or
                      os.path.join(SRCDIR, "stagerelay"))
TOOLS = os.path.join(SRCDIR, "tests", "tools")
sys.path.insert(0, TOOLS)

import logfmt  # noqa: E402
import publish  # noqa: E402
import servers  # noqa: E402
from waiting import wait_until  # noqa: E402,F401 (tests import it here)

STREAM = publish.DEFAULT_STREAM
GROUP = "stage2-nlp-processor"
DLQ = "stage2:nlp:failed-events"
CONSUMER = "itest"
WORKER = CONSUMER + "-1"          # worker slot 1's consumer name
DOC_ROUTE_PATH = "/api/v2/nlp/process"
BATCH_ROUTE_PATH = "/v2/process/batch"

EXIT_OK, EXIT_PENDING, EXIT_CONFIG = 0, 75, 78
EXIT_STARTUP, EXIT_USAGE, EXIT_CRASH_LOOP, EXIT_NOPERM = 1, 64, 70, 77
RUN_TIMEOUT = 30.0          # seconds any single stagerelay run may take

# Running the consumer as root without -u USER is refused (exit 77) unless
# --allow-root is given. CI runs the tests as root; the launchers below add
# the flag then (harmless with --drain). Commands that run no consumer
# (-t, check-config, ledger, -V, -h) never get it.
ALLOW_ROOT = ["--allow-root"] if os.geteuid() == 0 else []
_NO_CONSUMER = {"-t", "--test", "check-config", "ledger", "-V",
                "--version", "-h", "--help"}


def consumer_argv(args, allow_root=True):
    """[BIN] + args, with --allow-root first when root runs a consumer."""
    args = list(args)
    extra = ALLOW_ROOT if allow_root and not _NO_CONSUMER & set(args) \
        else []
    return [BIN] + extra + args


# ---- prerequisites: fail loudly, never skip ----------------------------

def pytest_sessionstart(session):
    problems = []
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        problems.append("stagerelay binary not found or not executable: %s "
                        "(build it with ./bootstrap or make; or set "
                        "STAGERELAY_BIN)" % BIN)
    for mod in ("redis", "psycopg2", "yaml"):
        try:
            __import__(mod)
        except ImportError:
            problems.append("Python module %s missing (Debian package "
                            "python3-%s; run with /usr/bin/python3)"
                            % (mod, mod))
    if servers.RedisServer().binary is None:
        problems.append("redis-server not found (Debian package "
                        "redis-server)")
    bindir = servers._pg_bindir()
    if not bindir or not os.access(os.path.join(bindir, "postgres"),
                                   os.X_OK):
        problems.append("PostgreSQL server binaries not found (Debian "
                        "package postgresql; or set STAGERELAY_PG_BINDIR)")
    if problems:
        pytest.exit("integration tests cannot run:\n  " +
                    "\n  ".join(problems), returncode=99)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test shows what its background daemons logged."""
    outcome = yield
    report = outcome.get_result()
    e = getattr(item, "funcargs", {}).get("env")
    if report.failed and isinstance(e, Env):
        for i, d in enumerate(e.daemons, 1):
            report.sections.append(("stagerelay daemon %d stderr" % i,
                                    d.stderr))


# ---- session servers ---------------------------------------------------

@pytest.fixture(scope="session")
def redis_server():
    srv = servers.RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def pg_server():
    srv = servers.PostgresServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def mock_server():
    srv = servers.MockNLP("thread").start()
    yield srv
    srv.stop()


# ---- waiting -----------------------------------------------------------

# ---- processes ---------------------------------------------------------

def proc_stat(pid):
    """(state, ppid) of a process from /proc/<pid>/stat, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def is_stagerelay(pid):
    """True if pid is running our binary (guards against pid reuse)."""
    try:
        return os.path.realpath("/proc/%d/exe" % pid) == \
            os.path.realpath(BIN)
    except OSError:
        return False


# ---- running the binary ------------------------------------------------

class Result:
    """A finished stagerelay run."""

    def __init__(self, args, returncode, stdout, stderr):
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.logs = logfmt.parse(stderr)

    def log(self, msg, **match):
        """Log records with msg=msg whose fields equal match."""
        return [r for r in self.logs if r.get("msg") == msg and
                all(r.get(k) == str(v) for k, v in match.items())]

    def __str__(self):
        return ("stagerelay %s -> exit %s\n--- stdout ---\n%s\n"
                "--- stderr ---\n%s" % (" ".join(self.args), self.returncode,
                                        self.stdout, self.stderr))


class Daemon:
    """stagerelay running in the background; stderr collected by a thread."""

    def __init__(self, args, env, allow_root=True, cwd=None, prefix=()):
        """prefix runs the binary through a wrapper that execs it (e.g.
        `ip netns exec NS`), so the Popen pid stays stagerelay's."""
        self.args = args
        self.proc = subprocess.Popen(list(prefix) +
                                     consumer_argv(args, allow_root),
                                     env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     errors="replace")
        self.lines = []
        self.stdout = ""
        self._cond = threading.Condition()
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err.start()
        self._out.start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def _read_stdout(self):
        self.stdout = self.proc.stdout.read()

    @property
    def stderr(self):
        with self._cond:
            return "".join(self.lines)

    @property
    def logs(self):
        return logfmt.parse(self.stderr)

    def log(self, msg, **match):
        return [r for r in self.logs if r.get("msg") == msg and
                all(r.get(k) == str(v) for k, v in match.items())]

    def wait_log(self, msg, timeout=10.0, **match):
        """Waits for a log record msg=msg (with fields equal to match)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.log_locked(msg, match)
                if found:
                    return found[0]
                if self.proc.poll() is not None:
                    raise AssertionError("stagerelay exited (%s) before "
                                         "logging msg=%s\n%s" % (
                                             self.proc.returncode, msg,
                                             "".join(self.lines)))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no msg=%s %s logged within %.1f s"
                                         "\n%s" % (msg, match, timeout,
                                                   "".join(self.lines)))
                self._cond.wait(min(left, 0.1))

    def log_locked(self, msg, match):
        recs = logfmt.parse("".join(self.lines))
        return [r for r in recs if r.get("msg") == msg and
                all(r.get(k) == str(v) for k, v in match.items())]

    @property
    def pid(self):
        return self.proc.pid

    def worker_pids(self):
        """{slot: pid} of the workers the master logged as spawned and
        not (yet) as exited (prefork mode; empty with --drain)."""
        pids = {}
        for r in self.logs:
            if r.get("msg") == "worker_spawned" and r.get("proc") == "master":
                pids[int(r["slot"])] = int(r["pid"])
            elif r.get("msg") == "worker_exited" and \
                    r.get("proc") == "master" and \
                    r.get("slot") != "ingress":
                slot, pid = int(r["slot"]), int(r["pid"])
                if pids.get(slot) == pid:
                    del pids[slot]
        return pids

    def all_worker_pids(self):
        """Every worker pid the master ever logged as spawned."""
        return [int(r["pid"]) for r in self.logs
                if r.get("msg") in ("worker_spawned", "ingress_spawned")
                and "pid" in r]

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signals the daemon and returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("stagerelay did not exit within %.0f s of "
                                 "signal %s\n%s" % (timeout, sig,
                                                    self.stderr))
        self._err.join(5)
        self._out.join(5)
        return self.proc.returncode

    def kill(self):
        """SIGKILLs the master and any worker it left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.all_worker_pids():
            if pid_alive(pid) and is_stagerelay(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _merge(base, over):
    """Recursive dict merge; a value of None in `over` deletes the key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Env:
    """Everything one test needs: servers, a fresh database, a config
    writer, the binary, and views of what a user would observe."""

    def __init__(self, redis_server, pg_server, mock, tmpdir, dbname):
        self.redis_server = redis_server
        self.pg = pg_server
        self.mock = mock
        self.tmpdir = tmpdir
        self.dbname = dbname
        self.dsn = pg_server.dsn_for(dbname)
        self.redis = redis_server.client()
        self.publisher = publish.Publisher(self.redis, STREAM)
        self.daemons = []
        # shared_dir: where Stage 1 leaves the JSONL files of its jobs.
        self.shared = os.path.join(tmpdir, "shared")
        os.makedirs(self.shared, exist_ok=True)
        self._configs = 0
        self._db = None

    # -- configuration --
    def base_config(self):
        return {
            "enabled": True,
            "source_stream": STREAM,
            "redis_host": "127.0.0.1",
            "redis_port": self.redis_server.port,
            "redis_db": 0,
            "consumer_group": GROUP,
            "consumer_name": CONSUMER,
            "consume_events": [],
            "auto_process": True,
            "poll_interval_ms": 100,
            "batch_size": 10,
            "process_backlog": True,
            "retry_failed": True,
            "dead_letter_stream": DLQ,
            "check_already_processed": True,
            "deduplication_ttl_hours": 24,
            "shared_dir": self.shared,
            "nlp_api": {"base_url": self.mock.url, "timeout_ms": 5000,
                        "connect_timeout_ms": 1000},
            "ledger": {"dsn": self.dsn, "schema": "stagerelay"},
            "logging": {"format": "logfmt", "level": "info"},
            # Off unless a test asks for it: no two daemons on one port.
            "metrics": {"listen": ""},
        }

    def write_documents(self, name, document_ids, text="batch text",
                        **kw):
        """A job's JSONL output file in shared_dir, one Stage 1 document
        per line; returns its absolute path."""
        path = os.path.join(self.shared, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for doc_id in document_ids:
                f.write(json.dumps(publish.document(doc_id, text, **kw)))
                f.write("\n")
        return path

    def write_config(self, text=None, name=None, **overrides):
        """Writes a config file and returns its path.

        Without text: the base config (event_consumer: section) merged
        with overrides (nested dicts merge; None removes a key). With
        text: that YAML text as is.
        """
        import yaml
        self._configs += 1
        path = os.path.join(self.tmpdir, name or
                            "stagerelay-%d.yaml" % self._configs)
        if text is None:
            doc = {"event_consumer": _merge(self.base_config(), overrides)}
            text = yaml.safe_dump(doc, sort_keys=False,
                                  default_flow_style=False)
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- the binary --
    def _env(self, extra=None):
        env = dict(os.environ)
        # Nothing from the caller's environment may leak into the config.
        for k in ("EVENT_CONSUMER_ENABLED", "STAGE1_EVENT_STREAM",
                  "NLP_API_TOKEN"):
            env.pop(k, None)
        env.update(extra or {})
        return env

    def run(self, *args, env=None, timeout=RUN_TIMEOUT, allow_root=True):
        """Runs stagerelay to completion; returns a Result. As root, a
        consumer run gets --allow-root unless allow_root is false."""
        args = list(args)
        try:
            p = subprocess.run(consumer_argv(args, allow_root),
                               env=self._env(env),
                               stdin=subprocess.DEVNULL,
                               capture_output=True, text=True,
                               errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stderr.decode("utf-8", "replace") \
                if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise AssertionError("stagerelay %s did not exit within %.0f s"
                                 "\n%s" % (" ".join(args), timeout, out))
        return Result(args, p.returncode, p.stdout, p.stderr)

    def drain(self, config=None, expect=EXIT_OK, env=None,
              timeout=RUN_TIMEOUT, **overrides):
        """stagerelay -c CONFIG --drain; asserts the exit status."""
        if config is None:
            config = self.write_config(**overrides)
        r = self.run("-c", config, "--drain", env=env, timeout=timeout)
        if expect is not None:
            assert r.returncode == expect, \
                "expected exit %s, got %s\n%s" % (expect, r.returncode, r)
        return r

    def start(self, config=None, env=None, args=(), allow_root=True,
              **overrides):
        """stagerelay -c CONFIG [args...] in the background (the prefork
        master unless args hold --drain); returns a Daemon once a worker
        has started and the group exists."""
        if config is None:
            config = self.write_config(**overrides)
        # cwd: a worker killed with SIGABRT may leave a core file.
        d = Daemon(["-c", config] + list(args), self._env(env), allow_root,
                   cwd=self.tmpdir)
        self.daemons.append(d)
        d.wait_log("worker_started")
        # Ready once its group exists: with process_backlog false, an event
        # published before that is (rightly) never seen.
        wait_until(lambda: GROUP in self.groups() or
                   d.proc.poll() is not None, what="consumer group created")
        return d

    # -- what a user observes --
    def requests(self, path=None):
        reqs = self.mock.requests()
        return [r for r in reqs if path is None or r["path"] == path]

    def pending(self, stream=STREAM, group=GROUP):
        """XPENDING summary count (0 when the stream or group is gone)."""
        import redis
        try:
            return self.redis.xpending(stream, group)["pending"]
        except redis.exceptions.ResponseError:
            return 0

    def groups(self, stream=STREAM):
        import redis
        try:
            return {g["name"].decode(): g
                    for g in self.redis.xinfo_groups(stream)}
        except redis.exceptions.ResponseError:
            return {}

    def dead_letters(self, stream=DLQ):
        """[(entry id, {field bytes: value bytes})] of the dead-letter
        stream, oldest first."""
        return [(i.decode(), f) for i, f in self.redis.xrange(stream)]

    def query(self, sql, args=()):
        import psycopg2.extras
        if self._db is None or self._db.closed:
            self._db = self.pg.connect(self.dbname)
        with self._db.cursor(
                cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, args)
            # INSERT/UPDATE without RETURNING: no rows to give back.
            return [dict(r) for r in cur.fetchall()] \
                if cur.description is not None else []

    def table_exists(self, name):
        return bool(self.query("SELECT to_regclass(%s) AS t",
                               ("stagerelay." + name,))[0]["t"])

    def rows(self, where="TRUE", args=()):
        """stagerelay.processed_documents rows, by document_id."""
        if not self.table_exists("processed_documents"):
            return []
        return self.query("SELECT * FROM stagerelay.processed_documents "
                          "WHERE " + where + " ORDER BY document_id", args)

    def row(self, document_id):
        rows = self.rows("document_id = %s", (document_id,))
        assert len(rows) == 1, "expected one ledger row for %r, got %r" % (
            document_id, rows)
        return rows[0]

    def row_status(self, document_id):
        """The ledger status of one key, or None (polling helper)."""
        rows = self.rows("document_id = %s", (document_id,))
        return rows[0]["status"] if rows else None

    def deliveries(self):
        if not self.table_exists("deliveries"):
            return []
        return self.query("SELECT * FROM stagerelay.deliveries "
                          "ORDER BY requested_at, delivery_id")

    def close(self):
        for d in self.daemons:
            d.kill()
        if self._db is not None:
            self._db.close()
        self.redis.close()


@pytest.fixture
def env(redis_server, pg_server, mock_server, tmp_path):
    """A clean world per test: empty Redis, fresh database, reset mock."""
    redis_server.client().flushall()
    mock_server.reset()
    dbname = pg_server.create_database()
    e = Env(redis_server, pg_server, mock_server, str(tmp_path), dbname)
    try:
        yield e
    finally:
        e.close()
        pg_server.drop_database(dbname)
