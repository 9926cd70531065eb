"""servers.py: private Redis, PostgreSQL and mock NLP servers on loopback.

Used by the integration tests (tests/integration/conftest.py) and by
`make demo` (tests/tools/demo). Every server lives in its own temporary
directory under /tmp, listens on 127.0.0.1 on a free port, and is gone
(process and directory) after stop(). Child processes get a parent-death
signal, so even a SIGKILLed test run leaves no servers behind.

PostgreSQL refuses to run as root: when this process is root, initdb and
postgres run as the unprivileged user `nobody` (STAGERELAY_PG_USER
overrides), in a directory that user owns.

Environment:
    REDIS_SERVER          redis-server binary (default: from PATH, then
                          /usr/bin/redis-server)
    STAGERELAY_PG_BINDIR  directory holding initdb and postgres (default:
                          the newest /usr/lib/postgresql/*/bin)
    STAGERELAY_PG_USER    user to run PostgreSQL as when root (nobody)
"""

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be found, started or reached."""


# ---- ports -------------------------------------------------------------

def free_port(host=LOOPBACK):
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port, host=LOOPBACK):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port, host=LOOPBACK, timeout=15.0, proc=None, what=None):
    """Waits until host:port accepts connections.

    Raises ServerError on timeout, or as soon as proc (a Popen) exits.
    """
    deadline = time.monotonic() + timeout
    what = what or "%s:%d" % (host, port)
    while True:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise ServerError("%s exited with status %s before listening"
                              % (what, proc.returncode))
        if time.monotonic() > deadline:
            raise ServerError("%s: nothing listening after %.0f s"
                              % (what, timeout))
        time.sleep(0.02)


# ---- processes ---------------------------------------------------------

def _find(binary, candidates):
    if binary and os.path.isabs(binary):
        if os.access(binary, os.X_OK):
            return binary
        return None
    found = shutil.which(binary) if binary else None
    if found:
        return found
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    return None


def _wrap(argv, user=None, pdeathsig="TERM"):
    """Runs argv through setpriv: drop to user (if given), die with us."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    if not os.access(setpriv, os.X_OK):
        if user is not None:
            raise ServerError("setpriv (util-linux) is needed to run "
                              "PostgreSQL as %s" % user.pw_name)
        return list(argv)
    pre = [setpriv]
    if user is not None:
        pre += ["--reuid", str(user.pw_uid), "--regid", str(user.pw_gid),
                "--clear-groups"]
    if pdeathsig:
        pre += ["--pdeathsig", pdeathsig]
    return pre + list(argv)


def _stop_process(proc, sig=signal.SIGTERM, timeout=10.0):
    """Signals proc, waits, and SIGKILLs it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    except ProcessLookupError:
        pass


def _tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _rmtree(path):
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


class _Server:
    """Context-manager plumbing shared by the servers."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---- Redis -------------------------------------------------------------

class RedisServer(_Server):
    """redis-server on 127.0.0.1:<port>, no persistence, in a temp dir."""

    def __init__(self, binary=None):
        self.binary = _find(binary or os.environ.get("REDIS_SERVER")
                            or "redis-server", ["/usr/bin/redis-server"])
        self.host = LOOPBACK
        self.port = None
        self.dir = None
        self.proc = None
        self.logfile = None

    @property
    def url(self):
        return "redis://%s:%d" % (self.host, self.port)

    def start(self, attempts=3):
        if self.binary is None:
            raise ServerError("redis-server not found (Debian package "
                              "redis-server; or set REDIS_SERVER)")
        self.dir = tempfile.mkdtemp(prefix="stagerelay-redis-", dir="/tmp")
        self.logfile = os.path.join(self.dir, "redis.log")
        last = None
        for _ in range(attempts):
            self.port = free_port()
            argv = [self.binary, "--port", str(self.port), "--bind",
                    self.host, "--dir", self.dir, "--save", "",
                    "--appendonly", "no", "--daemonize", "no",
                    "--logfile", self.logfile]
            self.proc = subprocess.Popen(_wrap(argv), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            try:
                wait_for_port(self.port, proc=self.proc, what="redis-server")
                self._wait_ready()
                return self
            except ServerError as e:
                last = e
                _stop_process(self.proc)
        log = _tail(self.logfile)
        self.stop()
        raise ServerError("%s\n%s" % (last, log))

    def _wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except Exception as e:  # redis.exceptions.* (LOADING, ...)
                if time.monotonic() > deadline:
                    raise ServerError("redis-server not ready: %s" % e)
            time.sleep(0.02)

    def client(self, db=0, decode_responses=False):
        import redis
        return redis.Redis(host=self.host, port=self.port, db=db,
                           decode_responses=decode_responses,
                           socket_timeout=30)

    def stop(self):
        _stop_process(self.proc)
        self.proc = None
        _rmtree(self.dir)
        self.dir = None


# ---- PostgreSQL --------------------------------------------------------

def _pg_bindir():
    env = os.environ.get("STAGERELAY_PG_BINDIR")
    if env:
        return env

    def version(path):
        m = re.search(r"/postgresql/(\d+)/bin$", path)
        return int(m.group(1)) if m else 0

    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
            if os.access(os.path.join(d, "postgres"), os.X_OK)]
    if dirs:
        return max(dirs, key=version)
    pg = shutil.which("postgres")
    return os.path.dirname(pg) if pg else None


def _server_user():
    """The pwd entry to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("STAGERELAY_PG_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServerError("running as root and there is no user %r to run "
                          "PostgreSQL as (set STAGERELAY_PG_USER)" % name)


class PostgresServer(_Server):
    """A throw-away PostgreSQL cluster on 127.0.0.1:<port>.

    initdb --auth=trust -U postgres; the unix socket lives in the cluster's
    temp dir; fsync is off (nothing here needs to survive a crash).
    """

    def __init__(self, bindir=None):
        self.bindir = bindir or _pg_bindir()
        self.host = LOOPBACK
        self.port = None
        self.dir = None
        self.proc = None
        self.logfile = None
        self.user = None
        self._dbs = 0

    @property
    def dsn(self):
        return self.dsn_for("postgres")

    def dsn_for(self, dbname):
        return ("host=%s port=%d dbname=%s user=postgres"
                % (self.host, self.port, dbname))

    def _binary(self, name):
        path = os.path.join(self.bindir or "", name)
        if not self.bindir or not os.access(path, os.X_OK):
            raise ServerError("PostgreSQL %s not found (Debian package "
                              "postgresql; or set STAGERELAY_PG_BINDIR)"
                              % name)
        return path

    def start(self, attempts=3):
        initdb, postgres = self._binary("initdb"), self._binary("postgres")
        self.user = _server_user()
        self.dir = tempfile.mkdtemp(prefix="stagerelay-pg-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        try:
            r = subprocess.run(
                _wrap([initdb, "-D", data, "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--locale=C", "--no-sync"], self.user),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd=self.dir, timeout=120)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ServerError("initdb did not finish within 120 s")
        if r.returncode != 0:
            out = r.stdout.decode("utf-8", "replace")
            self.stop()
            raise ServerError("initdb failed (status %d):\n%s"
                              % (r.returncode, out))
        last = None
        for _ in range(attempts):
            self.port = free_port()
            argv = [postgres, "-D", data, "-p", str(self.port),
                    "-h", self.host, "-k", self.dir,
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                    "-c", "log_min_messages=warning"]
            with open(self.logfile, "ab") as log:
                self.proc = subprocess.Popen(
                    _wrap(argv, self.user, pdeathsig="QUIT"),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    cwd=self.dir)
            try:
                wait_for_port(self.port, proc=self.proc, what="postgres")
                self._wait_ready()
                return self
            except ServerError as e:
                last = e
                _stop_process(self.proc, signal.SIGINT)
        log = _tail(self.logfile)
        self.stop()
        raise ServerError("%s\n%s" % (last, log))

    def _wait_ready(self, timeout=30.0):
        import psycopg2
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError("postgres exited with status %s"
                                  % self.proc.returncode)
            try:
                psycopg2.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as e:
                if time.monotonic() > deadline:
                    raise ServerError("postgres not ready: %s" % e)
            time.sleep(0.05)

    def connect(self, dbname="postgres", autocommit=True):
        import psycopg2
        conn = psycopg2.connect(self.dsn_for(dbname), connect_timeout=10)
        conn.autocommit = autocommit
        return conn

    def create_database(self, name=None):
        """Creates an empty database and returns its name."""
        if name is None:
            self._dbs += 1
            name = "t%d_%d" % (os.getpid(), self._dbs)
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError("database name %r: use [a-z_][a-z0-9_]*" % name)
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute('CREATE DATABASE "%s" TEMPLATE template0' % name)
        finally:
            conn.close()
        return name

    def drop_database(self, name):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        finally:
            conn.close()

    def stop(self):
        # SIGINT: PostgreSQL's "fast" shutdown.
        _stop_process(self.proc, signal.SIGINT, timeout=15)
        self.proc = None
        _rmtree(self.dir)
        self.dir = None


# ---- the mock NLP API --------------------------------------------------

class MockNLP(_Server):
    """tests/tools/mock_nlp.py, in a thread of this process or as a child.

    Either way it is driven through its /_mock/ control API, so both modes
    behave the same.
    """

    def __init__(self, mode="thread", host=LOOPBACK):
        if mode not in ("thread", "process"):
            raise ValueError("mode must be 'thread' or 'process'")
        self.mode = mode
        self.host = host
        self.port = None
        self.server = None
        self.proc = None

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def start(self):
        if self.mode == "thread":
            if HERE not in sys.path:
                sys.path.insert(0, HERE)
            import mock_nlp
            self.server = mock_nlp.MockNLPServer(self.host, 0).start()
            self.port = self.server.port
        else:
            self.port = free_port()
            self.proc = subprocess.Popen(
                _wrap([sys.executable, os.path.join(HERE, "mock_nlp.py"),
                       "--port", str(self.port), "--host", self.host]),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            wait_for_port(self.port, self.host, proc=self.proc,
                          what="mock_nlp.py")
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None
        _stop_process(self.proc)
        self.proc = None

    def _call(self, method, path, doc=None):
        data = None if doc is None else json.dumps(doc).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise ServerError("mock NLP %s %s: %s %s" % (
                method, path, e.code, e.read().decode("utf-8", "replace")))

    def behaviour(self, **spec):
        """Sets the answer: status, success, delay_ms, count, retry_after,
        body, path (see mock_nlp.py)."""
        self._call("POST", "/_mock/behaviour", spec)

    def reset(self):
        self._call("POST", "/_mock/reset", {})

    def requests(self):
        """Recorded requests, oldest first (control requests excluded)."""
        return self._call("GET", "/_mock/requests")
