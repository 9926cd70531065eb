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

    def _launch_on_a_free_port(self, attempts, stop_sig=signal.SIGTERM):
        """_launch() on a fresh free port until it comes up (another
        process may take the port between free_port() and the bind)."""
        last = None
        for _ in range(attempts):
            self.port = free_port()
            try:
                self._launch()
                return self
            except ServerError as e:
                last = e
                _stop_process(self.proc, stop_sig)
        log = _tail(self.logfile)
        self.stop()
        raise ServerError("%s\n%s" % (last, log))


# ---- Redis -------------------------------------------------------------

class RedisServer(_Server):
    """redis-server on 127.0.0.1:<port> in a temp dir; no persistence
    unless asked for.

    persistence: None (nothing is written to disk: a restart loses every
    key), "aof" (appendonly yes, fsync every second and at shutdown) or
    "rdb" (a snapshot written at shutdown and loaded at start).
    bind: more addresses to listen on besides 127.0.0.1 (they must exist;
    protected mode is then off).
    tls: (certfile, keyfile, cafile) makes it listen with TLS only
    (port 0, tls-port <port>, clients not asked for a certificate);
    client() then speaks TLS and verifies the server against cafile.

    Fault injection: stop_process() / start_process() / restart() keep the
    port and the directory, so clients reconnect to the same address;
    restart(keep_data=False) deletes the data files in between.
    """

    def __init__(self, binary=None, persistence=None, bind=(), tls=None):
        if persistence not in (None, "aof", "rdb"):
            raise ValueError("persistence must be None, 'aof' or 'rdb'")
        self.tls = tls
        self.binary = _find(binary or os.environ.get("REDIS_SERVER")
                            or "redis-server", ["/usr/bin/redis-server"])
        self.host = LOOPBACK
        self.bind = list(bind)
        self.persistence = persistence
        self.port = None
        self.dir = None
        self.proc = None
        self.logfile = None

    @property
    def url(self):
        return "redis://%s:%d" % (self.host, self.port)

    def _argv(self):
        if self.tls is None:
            argv = [self.binary, "--port", str(self.port)]
        else:
            cert, key, ca = self.tls
            argv = [self.binary, "--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", cert, "--tls-key-file", key,
                    "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        argv += ["--bind", self.host] + self.bind + ["--dir", self.dir]
        if self.persistence == "aof":
            argv += ["--save", "", "--appendonly", "yes",
                     "--appendfsync", "everysec"]
        elif self.persistence == "rdb":
            # A save point makes redis write the snapshot at shutdown.
            argv += ["--save", "3600 1", "--appendonly", "no",
                     "--dbfilename", "dump.rdb"]
        else:
            argv += ["--save", "", "--appendonly", "no"]
        if self.bind:
            argv += ["--protected-mode", "no"]
        return argv + ["--daemonize", "no", "--logfile", self.logfile]

    def _launch(self, timeout=15.0):
        self.proc = subprocess.Popen(_wrap(self._argv()),
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc, what="redis-server",
                      timeout=timeout)
        self._wait_ready()

    def start(self, attempts=3):
        if self.binary is None:
            raise ServerError("redis-server not found (Debian package "
                              "redis-server; or set REDIS_SERVER)")
        self.dir = tempfile.mkdtemp(prefix="stagerelay-redis-", dir="/tmp")
        self.logfile = os.path.join(self.dir, "redis.log")
        return self._launch_on_a_free_port(attempts)

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
        kw = {}
        if self.tls is not None:
            kw = {"ssl": True, "ssl_ca_certs": self.tls[2],
                  "ssl_cert_reqs": "required"}
        return redis.Redis(host=self.host, port=self.port, db=db,
                           decode_responses=decode_responses,
                           socket_timeout=30, **kw)

    # -- fault injection --
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop_process(self, sig=signal.SIGTERM):
        """Stops redis-server, keeping its directory and port. SIGTERM is
        a clean shutdown (the AOF is flushed, the RDB snapshot written);
        SIGKILL a crash."""
        _stop_process(self.proc, sig)
        self.proc = None

    def wipe_data(self):
        """Deletes the data files (only while stopped)."""
        if self.running:
            raise ServerError("wipe_data() while redis-server runs")
        for name in ("dump.rdb", "appendonly.aof"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        _rmtree(os.path.join(self.dir, "appendonlydir"))

    def start_process(self, timeout=15.0):
        """Starts redis-server again on the same port and directory."""
        if self.running:
            return self
        try:
            self._launch(timeout)
        except ServerError as e:
            raise ServerError("%s\n%s" % (e, _tail(self.logfile)))
        return self

    def restart(self, keep_data=True, down_seconds=0.0, sig=signal.SIGTERM):
        """Stops and starts redis-server on the same port. keep_data
        False deletes the data files in between (a restart "without
        persistence" even when persistence is on)."""
        self.stop_process(sig)
        if not keep_data:
            self.wipe_data()
        if down_seconds:
            time.sleep(down_seconds)
        return self.start_process()

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

    listen: more addresses to listen on besides 127.0.0.1; hba: more
    pg_hba.conf lines (e.g. "host all all 10.231.0.0/16 trust");
    settings: more postgresql.conf settings ("name=value", given to
    postgres as -c).

    tls: (certfile, keyfile) turns on TLS (ssl=on with copies of both in
    the data directory, owned by the server's user, the key mode 0600)
    and makes pg_hba.conf hostssl-only: a TCP connection without TLS is
    refused, so whatever connects over TCP and succeeds used TLS (unix
    socket connections stay trusted).

    Fault injection: stop_process() / start_process() / restart() keep the
    data directory and the port; terminate_backends() ends client
    sessions the way pg_terminate_backend() does.
    """

    def __init__(self, bindir=None, listen=(), hba=(), settings=(),
                 tls=None):
        self.bindir = bindir or _pg_bindir()
        self.host = LOOPBACK
        self.listen = list(listen)
        self.hba = list(hba)
        self.settings = list(settings)
        self.tls = tls
        self.port = None
        self.dir = None
        self.proc = None
        self.logfile = None
        self.user = None
        self._dbs = 0

    @property
    def dsn(self):
        return self.dsn_for("postgres")

    def dsn_for(self, dbname, host=None):
        return ("host=%s port=%d dbname=%s user=postgres"
                % (host or self.host, self.port, dbname))

    def _binary(self, name):
        path = os.path.join(self.bindir or "", name)
        if not self.bindir or not os.access(path, os.X_OK):
            raise ServerError("PostgreSQL %s not found (Debian package "
                              "postgresql; or set STAGERELAY_PG_BINDIR)"
                              % name)
        return path

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def start(self, attempts=3):
        initdb = self._binary("initdb")
        self._binary("postgres")
        self.user = _server_user()
        self.dir = tempfile.mkdtemp(prefix="stagerelay-pg-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.logfile = os.path.join(self.dir, "postgres.log")
        try:
            r = subprocess.run(
                _wrap([initdb, "-D", self.data, "-U", "postgres",
                       "--auth=trust", "-E", "UTF8", "--locale=C",
                       "--no-sync"], self.user),
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
        if self.tls is not None:
            self._install_tls()
        if self.hba:
            # Appended as the cluster's owner wrote the file; root may.
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
                f.write("".join(line + "\n" for line in self.hba))
        return self._launch_on_a_free_port(attempts, signal.SIGINT)

    def _install_tls(self):
        """Certificate and key into the data directory (PostgreSQL wants
        the key owned by its user, mode 0600); pg_hba.conf hostssl-only."""
        cert, key = self.tls
        for src, name, mode in ((cert, "server.crt", 0o644),
                                (key, "server.key", 0o600)):
            dst = os.path.join(self.data, name)
            shutil.copyfile(src, dst)
            os.chmod(dst, mode)
            if self.user is not None:
                os.chown(dst, self.user.pw_uid, self.user.pw_gid)
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "hostssl all all 127.0.0.1/32 trust\n"
                    "hostssl all all ::1/128 trust\n"
                    "hostnossl all all all reject\n")

    def _launch(self):
        argv = [self._binary("postgres"), "-D", self.data,
                "-p", str(self.port),
                "-h", ",".join([self.host] + self.listen), "-k", self.dir,
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
                "-c", "log_min_messages=warning"]
        if self.tls is not None:
            argv += ["-c", "ssl=on", "-c", "ssl_cert_file=server.crt",
                     "-c", "ssl_key_file=server.key"]
        for setting in self.settings:
            argv += ["-c", setting]
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                _wrap(argv, self.user, pdeathsig="QUIT"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.dir)
        wait_for_port(self.port, proc=self.proc, what="postgres")
        self._wait_ready()

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

    # -- fault injection --
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop_process(self, sig=signal.SIGINT, timeout=15.0):
        """Stops the postmaster, keeping the cluster and its port.
        SIGINT: fast shutdown (sessions terminated, clean checkpoint);
        SIGQUIT: immediate shutdown (crash recovery at the next start)."""
        _stop_process(self.proc, sig, timeout=timeout)
        self.proc = None

    def start_process(self, timeout=30.0):
        """Starts the same cluster again on the same port."""
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._launch()
                return self
            except ServerError as e:
                # The old postmaster's socket may linger for a moment.
                _stop_process(self.proc, signal.SIGINT)
                if time.monotonic() > deadline:
                    raise ServerError("%s\n%s" % (e, _tail(self.logfile)))
                time.sleep(0.2)

    def restart(self, down_seconds=0.0, sig=signal.SIGINT):
        self.stop_process(sig)
        if down_seconds:
            time.sleep(down_seconds)
        return self.start_process()

    def terminate_backends(self, dbname=None, keep=()):
        """pg_terminate_backend() on every client session (of dbname, if
        given) but this one and the backend pids in keep; returns how many
        were terminated."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' "
                    "AND NOT (pid = ANY(%s)) "
                    "AND (%s::text IS NULL OR datname = %s)",
                    (list(keep), dbname, dbname))
                return cur.fetchone()[0]
        finally:
            conn.close()

    def stop(self):
        # SIGINT: PostgreSQL's "fast" shutdown.
        _stop_process(self.proc, signal.SIGINT, timeout=15)
        self.proc = None
        _rmtree(self.dir)
        self.dir = None


# ---- stunnel ------------------------------------------------------------

class Stunnel(_Server):
    """stunnel in client mode: plain TCP in on 127.0.0.1:<port>, TLS out
    to connect_host:connect_port, the server's certificate checked
    against cafile (verifyChain) and its name against check_host. How
    stagerelay reaches a Redis that speaks only TLS (hiredis 0.14 has no
    TLS; man stagerelay, TRANSPORT SECURITY).
    """

    def __init__(self, connect_port, cafile, check_host="localhost",
                 connect_host=LOOPBACK, binary=None):
        self.binary = _find(binary or os.environ.get("STUNNEL"),
                            ["/usr/bin/stunnel4", "/usr/bin/stunnel"])
        self.connect = "%s:%d" % (connect_host, connect_port)
        self.cafile = cafile
        self.check_host = check_host
        self.host = LOOPBACK
        self.port = None
        self.dir = None
        self.proc = None
        self.logfile = None
        self.conf = None

    def config_text(self):
        return ("foreground = yes\n"
                "pid = %s\n"
                "output = %s\n"
                "debug = info\n"
                "\n"
                "[redis]\n"
                "client = yes\n"
                "accept = %s:%d\n"
                "connect = %s\n"
                "verifyChain = yes\n"
                "CAfile = %s\n"
                "checkHost = %s\n"
                % (os.path.join(self.dir, "stunnel.pid"), self.logfile,
                   self.host, self.port, self.connect, self.cafile,
                   self.check_host))

    def _launch(self):
        self.conf = os.path.join(self.dir, "stunnel.conf")
        with open(self.conf, "w") as f:
            f.write(self.config_text())
        self.proc = subprocess.Popen(_wrap([self.binary, self.conf]),
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc, what="stunnel")

    def start(self, attempts=3):
        if self.binary is None:
            raise ServerError("stunnel not found (Debian package stunnel4; "
                              "or set STUNNEL)")
        self.dir = tempfile.mkdtemp(prefix="stagerelay-stunnel-",
                                    dir="/tmp")
        self.logfile = os.path.join(self.dir, "stunnel.log")
        return self._launch_on_a_free_port(attempts)

    def log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        _stop_process(self.proc)
        self.proc = None
        _rmtree(self.dir)
        self.dir = None


# ---- the mock NLP API --------------------------------------------------

class MockNLP(_Server):
    """tests/tools/mock_nlp.py, in a thread of this process or as a child.

    Either way it is driven through its /_mock/ control API, so both modes
    behave the same. In thread mode, extra_hosts are more addresses served
    by servers sharing the same state (same recordings and behaviour, one
    port each: see url_for()).
    """

    def __init__(self, mode="thread", host=LOOPBACK, extra_hosts=(),
                 tls=None):
        if mode not in ("thread", "process"):
            raise ValueError("mode must be 'thread' or 'process'")
        if extra_hosts and mode != "thread":
            raise ValueError("extra_hosts needs mode 'thread'")
        self.mode = mode
        self.host = host
        self.extra_hosts = list(extra_hosts)
        # (certfile, keyfile, cafile): HTTPS; the control calls below
        # check the mock's certificate against cafile.
        self.tls = tls
        self.port = None
        self.server = None
        self.extra = {}
        self.proc = None

    @property
    def scheme(self):
        return "http" if self.tls is None else "https"

    @property
    def url(self):
        return "%s://%s:%d" % (self.scheme, self.host, self.port)

    def url_for(self, host):
        """The URL this mock answers at on host (self.host or one of
        extra_hosts)."""
        if host == self.host:
            return self.url
        return self.extra[host].url

    def start(self):
        if self.mode == "thread":
            if HERE not in sys.path:
                sys.path.insert(0, HERE)
            import mock_nlp
            tls = {} if self.tls is None else \
                {"tls_cert": self.tls[0], "tls_key": self.tls[1]}
            self.server = mock_nlp.MockNLPServer(self.host, 0,
                                                 **tls).start()
            self.port = self.server.port
            for h in self.extra_hosts:
                self.extra[h] = mock_nlp.MockNLPServer(
                    h, 0, state=self.server.state, **tls).start()
        else:
            self.port = free_port()
            tls = [] if self.tls is None else \
                ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
            self.proc = subprocess.Popen(
                _wrap([sys.executable, os.path.join(HERE, "mock_nlp.py"),
                       "--port", str(self.port), "--host", self.host]
                      + tls),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            wait_for_port(self.port, self.host, proc=self.proc,
                          what="mock_nlp.py")
        return self

    def stop(self):
        for srv in self.extra.values():
            srv.stop()
        self.extra = {}
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
        ctx = None
        if self.tls is not None:
            import ssl
            ctx = ssl.create_default_context(cafile=self.tls[2]) \
                if self.tls[2] else ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(req, timeout=10,
                                        context=ctx) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise ServerError("mock NLP %s %s: %s %s" % (
                method, path, e.code, e.read().decode("utf-8", "replace")))

    def behaviour(self, **spec):
        """Sets the answer: status, success, delay_ms, count, retry_after,
        body, path, match (see mock_nlp.py)."""
        self._call("POST", "/_mock/behaviour", spec)

    def rules(self, rules):
        """Sets per-request rules checked before the behaviour: a list of
        behaviour dicts, usually with "match" (see mock_nlp.py); [] clears
        them."""
        self._call("POST", "/_mock/rules", {"rules": list(rules)})

    def reset(self):
        self._call("POST", "/_mock/reset", {})

    def requests(self, since=0):
        """Recorded requests, oldest first (control requests excluded);
        since=N skips the first N."""
        if self.server is not None:
            # The same copies the control API would send, without HTTP
            # (and while connections are refused).
            return self.server.requests(since)
        return self._call("GET", "/_mock/requests" +
                          ("?since=%d" % since if since else ""))

    # -- announcing results on a Redis stream, as Stage 2 does --
    def publish(self, stream, redis_port, redis_host=LOOPBACK, redis_db=0,
                repeat=(), **spec):
        """From now on each request answered with success appends a
        Stage-2-layout event (one field "event", the JSON CloudEvent) to
        stream: document.processed for a document, batch.completed for a
        batch. Documents in repeat are announced twice. See mock_nlp.py."""
        doc = {"stream": stream, "repeat": list(repeat),
               "redis": {"host": redis_host, "port": redis_port,
                         "db": redis_db}}
        doc.update(spec)
        self._call("POST", "/_mock/publish", doc)

    def stop_publishing(self):
        self._call("POST", "/_mock/publish", {"enabled": False})

    def announce(self, type_, data, subject=None):
        """Appends one event now (publish() first); returns what was
        appended: {"stream_id", "event_id", "type", "key"}."""
        doc = {"type": type_, "data": data}
        if subject is not None:
            doc["subject"] = subject
        return self._call("POST", "/_mock/announce", doc)

    def announced(self):
        """What the mock appended, oldest first: {"stream_id",
        "event_id", "type", "key"}, or {"error", ...} for a failure."""
        return self._call("GET", "/_mock/announced")

    def tls_errors(self):
        """Why TLS handshakes with the mock failed, oldest first (the
        client's alert as the server saw it, e.g. "... unknown ca")."""
        if self.server is not None:
            return self.server.state.tls_error_list()
        return self._call("GET", "/_mock/tls_errors")

    # -- connection refused --
    def refuse(self, seconds):
        """Connection refused for `seconds` (then it listens again on the
        same port); open connections are cut. Returns at once."""
        if self.server is not None:
            for srv in [self.server] + list(self.extra.values()):
                srv.refuse_for(seconds)
        else:
            self._call("POST", "/_mock/refuse", {"seconds": seconds})

    def refuse_connections(self):
        """Connection refused until accept_connections() (thread mode)."""
        if self.server is None:
            raise ServerError("refuse_connections() needs mode 'thread'; "
                              "use refuse(seconds)")
        for srv in [self.server] + list(self.extra.values()):
            srv.refuse_connections()

    def accept_connections(self):
        for srv in [self.server] + list(self.extra.values()):
            srv.accept_connections()

    @property
    def refusing(self):
        return self.server is not None and self.server.refusing
