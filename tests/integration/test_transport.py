"""Transport security (issue 9; man stagerelay, TRANSPORT SECURITY): the
ledger over TLS with the server's certificate verified (libpq
sslmode=verify-full), HTTPS to the NLP API with verification on by
default and nlp_api.ca_file naming a private CA, Redis AUTH as an ACL
user with only the rights stagerelay needs, and Redis over TLS through
stunnel (Debian 12's hiredis 0.14 has no TLS).

Every server is real and speaks real TLS: a throw-away CA made with
openssl here, a PostgreSQL cluster that refuses TCP without TLS
(pg_hba.conf hostssl only), tests/tools/mock_nlp.py with --tls-cert, a
redis-server listening with TLS only, and stunnel. The tests assert what
an operator sees: ledger rows, requests at the API, entries left in the
stream, exit statuses, log lines, and the servers' own view (pg_stat_ssl,
CLIENT LIST, ACL LOG, the mock's refused handshakes).
"""

import os
import re
import subprocess

import pytest

import servers
from conftest import (EXIT_CRASH_LOOP, EXIT_OK, EXIT_PENDING, EXIT_STARTUP,
                      GROUP, SRCDIR, Env, wait_until)

OPENSSL = "/usr/bin/openssl"
SLOW = 30.0

# What a failed certificate check looks like in stagerelay's log: libpq
# says "certificate verify failed", libcurl "SSL peer certificate or SSH
# remote key was not OK" (CURLE_PEER_FAILED_VERIFICATION).
CERT_FAILED = re.compile(r"certificate verify failed|SSL peer certificate",
                         re.I)


# ---- a private CA -------------------------------------------------------

def _openssl(*args, cwd):
    r = subprocess.run([OPENSSL] + list(args), cwd=cwd,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, "openssl %s failed:\n%s%s" % (
        " ".join(args), r.stdout, r.stderr)


class CA:
    """A self-signed CA in dir (ca.pem) that signs server certificates."""

    def __init__(self, dir, name):
        self.dir = dir
        self.name = name
        os.makedirs(dir, exist_ok=True)
        self.cert = os.path.join(dir, name + "-ca.pem")
        self.key = os.path.join(dir, name + "-ca.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", self.key, "-out", self.cert, "-days", "2",
                 "-subj", "/CN=stagerelay test CA " + name,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=dir)

    def issue(self, name, san="DNS:localhost,IP:127.0.0.1"):
        """A server certificate for san; returns (cert, key) paths."""
        cert = os.path.join(self.dir, name + ".pem")
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n"
                    "basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n" % san)
        _openssl("req", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", "/CN=" + name,
                 cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert,
                 "-CAkey", self.key, "-set_serial",
                 str(int.from_bytes(os.urandom(8), "big")),
                 "-days", "2", "-extfile", ext, "-out", cert, cwd=self.dir)
        # Readable by PostgreSQL's user (nobody) when it copies them in,
        # and by the servers running as us.
        os.chmod(key, 0o600)
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The test CA with a certificate for localhost and 127.0.0.1, one
    for another name, and an unrelated CA."""
    if not os.access(OPENSSL, os.X_OK):
        pytest.fail("%s not found (Debian package openssl; ./bootstrap "
                    "installs it)" % OPENSSL)
    d = str(tmp_path_factory.mktemp("pki"))
    ca = CA(d, "test")
    other = CA(d, "other")
    return {"ca": ca.cert, "server": ca.issue("localhost"),
            "elsewhere": ca.issue("elsewhere",
                                  san="DNS:elsewhere.invalid"),
            "other_ca": other.cert}


# ---- servers of this module ---------------------------------------------

@pytest.fixture(scope="module")
def tls_pg(pki):
    """PostgreSQL with ssl=on whose pg_hba.conf refuses TCP without TLS."""
    srv = servers.PostgresServer(tls=pki["server"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tls_mock(pki):
    """The mock NLP API over HTTPS (localhost / 127.0.0.1 certificate)."""
    srv = servers.MockNLP(tls=pki["server"] + (pki["ca"],)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tls_redis(pki):
    """redis-server with TLS only: port 0, tls-port."""
    srv = servers.RedisServer(tls=pki["server"] + (pki["ca"],))
    try:
        srv.start()
    except servers.ServerError as e:
        pytest.fail("redis-server with TLS did not start (Debian's is "
                    "built with TLS since bookworm): %s" % e)
    yield srv
    srv.stop()


def make_env(redis_server, pg_server, mock, tmp_path):
    """conftest's Env on servers of this module (the `env` fixture is
    bound to the session's)."""
    redis_server.client().flushall()
    mock.reset()
    dbname = pg_server.create_database()
    return Env(redis_server, pg_server, mock, str(tmp_path), dbname)


@pytest.fixture
def pg_env(redis_server, tls_pg, mock_server, tmp_path):
    e = make_env(redis_server, tls_pg, mock_server, tmp_path)
    try:
        yield e
    finally:
        e.close()
        tls_pg.drop_database(e.dbname)


@pytest.fixture
def https_env(redis_server, pg_server, tls_mock, tmp_path):
    e = make_env(redis_server, pg_server, tls_mock, tmp_path)
    try:
        yield e
    finally:
        e.close()
        pg_server.drop_database(e.dbname)


@pytest.fixture
def tls_redis_env(tls_redis, pg_server, mock_server, tmp_path):
    e = make_env(tls_redis, pg_server, mock_server, tmp_path)
    try:
        yield e
    finally:
        e.close()
        pg_server.drop_database(e.dbname)


def publish_documents(env, prefix, n=3):
    return [env.publisher.document_cleaned("%s-%d" % (prefix, i),
                                           "text %d" % i)
            for i in range(n)]


def assert_triggered(env, pubs):
    ids = [p.data["document_id"] for p in pubs]
    rows = env.rows()
    assert sorted(r["document_id"] for r in rows) == sorted(ids), rows
    assert {r["status"] for r in rows} == {"triggered"}, rows
    got = sorted(r["headers"].get("idempotency-key")
                 for r in env.requests())
    assert got == sorted(ids), env.requests()
    assert env.pending() == 0


def untouched(env, pubs):
    """Nothing of pubs was processed: no request, no ledger row, every
    entry still in the stream, none read by the group."""
    assert env.requests() == []
    assert env.rows() == []
    assert env.redis.xlen(env.publisher.stream) == len(pubs)
    # It never got as far as creating its consumer group.
    assert GROUP not in env.groups()
    assert env.dead_letters() == []


# ---- PostgreSQL over TLS ------------------------------------------------

def tls_dsn(env, rootcert):
    return ("host=localhost port=%d dbname=%s user=postgres "
            "sslmode=verify-full sslrootcert=%s connect_timeout=5"
            % (env.pg.port, env.dbname, rootcert))


def test_ledger_over_tls_with_verify_full(pg_env, pki):
    env = pg_env
    # The cluster refuses TCP without TLS: what succeeds below used it.
    import psycopg2
    with pytest.raises(psycopg2.OperationalError,
                       match="no encryption|SSL off"):
        psycopg2.connect(host="127.0.0.1", port=env.pg.port,
                         dbname=env.dbname, user="postgres",
                         sslmode="disable", connect_timeout=5).close()
    pubs = publish_documents(env, "doc-pgtls")

    d = env.start(ledger={"dsn": tls_dsn(env, pki["ca"])})
    wait_until(lambda: all(env.row_status(p.data["document_id"]) ==
                           "triggered" for p in pubs),
               timeout=SLOW, what="documents triggered over a TLS ledger")
    # The daemon's own sessions, seen from the server: all TLS.
    sessions = env.query(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s "
        "JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = %s AND a.pid <> pg_backend_pid() "
        "AND a.backend_type = 'client backend'", (env.dbname,))
    assert sessions, "stagerelay holds no session on the ledger"
    assert all(s["ssl"] and s["version"].startswith("TLS")
               for s in sessions), sessions
    assert d.stop() == EXIT_OK, d.stderr
    assert_triggered(env, pubs)


def test_ledger_certificate_from_another_ca_stops_the_start(pg_env, pki):
    env = pg_env
    pubs = publish_documents(env, "doc-pgbad", 2)
    config = env.write_config(ledger={"dsn": tls_dsn(env,
                                                     pki["other_ca"])})

    # Supervised: the worker cannot connect, exits, is respawned, and the
    # crash-loop brake stops the master.
    r = env.run("-c", config, timeout=SLOW)

    assert r.returncode == EXIT_CRASH_LOOP, r
    assert re.search(r"ledger: cannot connect:.*certificate verify failed",
                     r.stderr), r
    assert r.log("crash_loop"), r
    untouched(env, pubs)

    # A drain run has no master to wait for it: it says why and exits 1.
    r = env.drain(config, expect=EXIT_STARTUP, timeout=SLOW)
    assert re.search(r"ledger: cannot connect:.*certificate verify failed",
                     r.stderr), r
    untouched(env, pubs)

    # The right CA: everything left behind goes through.
    env.drain(ledger={"dsn": tls_dsn(env, pki["ca"])})
    assert_triggered(env, pubs)


def test_ledger_verify_full_checks_the_host_name(pg_env, pki):
    """verify-full, not just verify-ca: the certificate names localhost
    and 127.0.0.1, so the same server under another name is refused."""
    env = pg_env
    pubs = publish_documents(env, "doc-pgname", 1)
    # hostaddr: where to connect; host: the name the certificate must
    # have.
    dsn = tls_dsn(env, pki["ca"]).replace(
        "host=localhost", "host=elsewhere.invalid hostaddr=127.0.0.1")
    r = env.run("-c", env.write_config(ledger={"dsn": dsn}),
                timeout=SLOW)
    assert r.returncode == EXIT_CRASH_LOOP, r
    assert re.search(r"ledger: cannot connect:.*does not match host name",
                     r.stderr), r
    untouched(env, pubs)


# ---- HTTPS to the NLP API -----------------------------------------------

def https_url(mock):
    return "https://localhost:%d" % mock.port


def test_https_with_ca_file(https_env, pki):
    env = https_env
    pubs = publish_documents(env, "doc-https")

    env.drain(nlp_api={"base_url": https_url(env.mock),
                       "ca_file": pki["ca"]})

    assert_triggered(env, pubs)
    assert env.mock.tls_errors() == []
    assert all(d["outcome"] == "success" and
               d["url"].startswith("https://localhost:")
               for d in env.deliveries()), env.deliveries()


FAIL_FAST = {"retry_delay_seconds": 0.05, "max_retry_delay_seconds": 0.2,
             "max_retries": 100,
             "circuit_breaker": {"failure_threshold": 2, "open_seconds": 1}}


def assert_refused_by_verification(env, pubs, r, why):
    """The certificate was refused: nothing reached the API, each document
    is `failed` with the reason (libcurl's own words: why) and left
    pending (a transient failure: the circuit opened and ended the drain),
    nothing dead-lettered."""
    assert r.returncode == EXIT_PENDING, r
    assert env.requests() == []
    fails = r.log("event_failed")
    assert fails and all(CERT_FAILED.search(f.get("detail", ""))
                         for f in fails), r
    assert all(why in f.get("detail", "") for f in fails), fails
    rows = env.rows()
    assert len(rows) == len(pubs), rows
    for row in rows:
        assert row["status"] == "failed", row
        assert CERT_FAILED.search(row["last_error"] or ""), row
    assert env.pending() == len(pubs)
    assert env.dead_letters() == []
    assert r.log("circuit_opened"), r


def test_https_verification_is_on_by_default(https_env, pki):
    """No ca_file: the system's CA store does not know the test CA."""
    env = https_env
    pubs = publish_documents(env, "doc-noca", 2)

    r = env.drain(expect=None, batch_size=2, nlp_api={
        "base_url": https_url(env.mock)}, **FAIL_FAST)

    assert_refused_by_verification(env, pubs, r, "unable to get local "
                                   "issuer certificate")
    # The mock saw handshakes the client aborted, and why: the client
    # did not know the issuer. (A wrong name is refused after the
    # handshake, by libcurl: the server sees no error then.)
    assert any("unknown ca" in e.lower() for e in env.mock.tls_errors()), \
        env.mock.tls_errors()

    # The CA named: the same entries go through, once each.
    env.mock.reset()
    env.drain(nlp_api={"base_url": https_url(env.mock),
                       "ca_file": pki["ca"]})
    assert_triggered(env, pubs)


def test_https_checks_the_host_name(https_env, pki):
    """The right CA but a certificate for another name: refused too."""
    env = https_env
    other = servers.MockNLP(tls=pki["elsewhere"] + (None,)).start()
    try:
        env.mock = other
        pubs = publish_documents(env, "doc-name", 2)
        r = env.drain(expect=None, batch_size=2, nlp_api={
            "base_url": "https://localhost:%d" % other.port,
            "ca_file": pki["ca"]}, **FAIL_FAST)
        assert_refused_by_verification(env, pubs, r, "subject name")
    finally:
        other.stop()


def test_verify_tls_false_is_warned_about_and_connects(https_env):
    env = https_env
    pubs = publish_documents(env, "doc-noverify", 2)
    config = env.write_config(nlp_api={"base_url": https_url(env.mock),
                                       "verify_tls": False})

    check = env.run("-c", config, "-t")
    assert check.returncode == EXIT_OK, check
    assert "nlp_api.verify_tls is false" in check.stderr, check

    r = env.drain(config)
    assert "nlp_api.verify_tls is false" in r.stderr, r
    assert_triggered(env, pubs)
    assert env.mock.tls_errors() == []


# ---- Redis: an ACL user with a password ---------------------------------

ACL_USER = "stage2"
ACL_PW = "AclPw-Tr4nsp0rt-71c3"
WRONG_PW = "NotIt-Tr4nsp0rt-0b9a"


@pytest.fixture
def acl_user(env):
    """User stage2 on the session's redis-server: its password, the
    stream and dead-letter keys only, stream commands plus what a
    connection needs and EVAL (stagerelay's Lua scripts run stream
    commands on those keys). Deleted afterwards."""
    from conftest import DLQ, STREAM
    r = env.redis
    r.execute_command(
        "ACL", "SETUSER", ACL_USER, "reset", "on", ">" + ACL_PW,
        "~" + STREAM, "~" + DLQ, "resetchannels",
        "-@all", "+@stream", "+eval", "+select")
    r.acl_log_reset()
    try:
        yield ACL_USER
    finally:
        r.execute_command("ACL", "DELUSER", ACL_USER)
        r.acl_log_reset()


def acl_denials(env):
    """ACL LOG entries: denied commands/keys and failed AUTHs."""
    return [{k: v.decode() if isinstance(v, bytes) else v
             for k, v in e.items()} for e in env.redis.acl_log()]


def tcp_ports(pids):
    """Local TCP ports of the sockets the processes pids hold open."""
    inodes = set()
    for pid in pids:
        fd_dir = "/proc/%d/fd" % pid
        for fd in os.listdir(fd_dir):
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def stagerelay_clients(env, d):
    """CLIENT LIST entries of the daemon's workers' connections."""
    ports = tcp_ports(d.worker_pids().values())
    return [c for c in env.redis.client_list()
            if int(c["addr"].rsplit(":", 1)[1]) in ports]


def test_redis_acl_user_and_password(env, acl_user):
    pubs = publish_documents(env, "doc-acl")
    d = env.start(redis_username=ACL_USER, redis_password=ACL_PW,
                  dead_letter_maxlen=1000)
    wait_until(lambda: all(env.row_status(p.data["document_id"]) ==
                           "triggered" for p in pubs),
               timeout=SLOW, what="documents triggered as the ACL user")
    # One dead letter too: XADD to the dead-letter stream as that user.
    env.publisher.malformed("bad_json")
    wait_until(lambda: len(env.dead_letters()) == 1, timeout=SLOW,
               what="a dead letter written as the ACL user")
    clients = stagerelay_clients(env, d)
    assert clients and {c["user"] for c in clients} == {ACL_USER}, clients
    assert d.stop() == EXIT_OK, d.stderr
    assert_triggered(env, pubs)
    # The grants sufficed for everything it did (reads, acks, claims,
    # XINFO, XAUTOCLAIM, the retire script): no denial logged.
    assert acl_denials(env) == []
    assert ACL_PW not in d.stderr + d.stdout


def test_redis_wrong_password_stops_the_start_and_is_not_printed(
        env, acl_user):
    pubs = publish_documents(env, "doc-wrongpw", 2)
    pw_file = os.path.join(env.tmpdir, "redis.pw")
    with open(pw_file, "w") as f:
        f.write(WRONG_PW + "\n")
    os.chmod(pw_file, 0o600)
    config = env.write_config(redis_username=ACL_USER,
                              redis_password_file=pw_file)

    r = env.run("-c", config, timeout=SLOW)

    assert r.returncode == EXIT_CRASH_LOOP, r
    assert re.search(r"redis: AUTH: WRONGPASS", r.stderr), r
    for secret in (WRONG_PW, ACL_PW):
        assert secret not in r.stderr and secret not in r.stdout, r
    # Redis saw the failed logins, as stage2.
    denied = acl_denials(env)
    assert denied and all(e["reason"] == "auth" and
                          e["username"] == ACL_USER for e in denied), denied
    assert env.groups() == {}
    untouched(env, pubs)

    # The right one: the entries left behind go through.
    with open(pw_file, "w") as f:
        f.write(ACL_PW + "\n")
    env.drain(config)
    assert_triggered(env, pubs)


def test_redis_acl_without_username_is_the_default_user(env, acl_user):
    """The password alone authenticates as `default` (AUTH <password>):
    with no password set for it, Redis refuses, so a forgotten
    redis_username is an error, not a silent login as someone else."""
    pubs = publish_documents(env, "doc-nouser", 1)
    r = env.run("-c", env.write_config(redis_password=ACL_PW),
                timeout=SLOW)
    assert r.returncode == EXIT_CRASH_LOOP, r
    assert "redis: AUTH:" in r.stderr, r
    assert ACL_PW not in r.stderr + r.stdout
    untouched(env, pubs)


# ---- Redis over TLS through stunnel -------------------------------------

def man_stunnel_example():
    """The [section] of the stunnel.conf example in stagerelay(8), as
    {key: value}."""
    with open(os.path.join(SRCDIR, "man", "stagerelay.8.in")) as f:
        text = f.read()
    m = re.search(r"TRANSPORT SECURITY(.*?)\n\.Sh ", text, re.S)
    assert m, "stagerelay(8) has no TRANSPORT SECURITY section"
    blocks = re.findall(r"\.Bd -literal[^\n]*\n(.*?)\n\.Ed", m.group(1),
                        re.S)
    conf = [b for b in blocks if "client = yes" in b]
    assert len(conf) == 1, "one stunnel.conf example expected: %r" % blocks
    keys = {}
    for line in conf[0].splitlines():
        line = line.replace("\\&", "").strip()
        if "=" in line and not line.startswith(("#", ";")):
            k, v = line.split("=", 1)
            keys[k.strip()] = v.strip()
    return keys


def test_man_page_stunnel_example_verifies_the_server():
    """The documented stunnel.conf has the settings the test below proves
    working: client mode, the chain and the name checked."""
    keys = man_stunnel_example()
    assert keys.get("client") == "yes", keys
    assert keys.get("verifyChain") == "yes", keys
    for k in ("accept", "connect", "CAfile", "checkHost"):
        assert keys.get(k), (k, keys)
    # The plain side listens on loopback only.
    assert keys["accept"].startswith("127.0.0.1:"), keys


@pytest.fixture
def stunnel(tls_redis, pki):
    tun = servers.Stunnel(tls_redis.port, pki["ca"], check_host="localhost")
    try:
        tun.start()
    except servers.ServerError as e:
        pytest.fail("stunnel did not start: %s (Debian package stunnel4; "
                    "./bootstrap installs it)" % e)
    yield tun
    tun.stop()


def test_redis_over_tls_through_stunnel(tls_redis_env, stunnel):
    env = tls_redis_env
    # The server speaks TLS only: a plain client gets nowhere on its port.
    import redis
    plain = redis.Redis(host="127.0.0.1", port=env.redis_server.port,
                        socket_timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()
    plain.close()

    pubs = publish_documents(env, "doc-stunnel")
    env.publisher.malformed("bad_json")
    d = env.start(redis_host="127.0.0.1", redis_port=stunnel.port)
    wait_until(lambda: all(env.row_status(p.data["document_id"]) ==
                           "triggered" for p in pubs) and
               len(env.dead_letters()) == 1,
               timeout=SLOW, what="documents triggered through stunnel")
    # stunnel carried them, having checked the chain and the name.
    log = stunnel.log()
    assert "Service [redis] accepted connection from 127.0.0.1" in log, log
    assert 'Host name "localhost" matched' in log, log
    assert "Certificate accepted at depth=0: CN=localhost" in log, log
    assert d.stop() == EXIT_OK, d.stderr
    assert_triggered(env, pubs)


def test_stunnel_refuses_a_redis_certificate_of_another_ca(
        tls_redis_env, tls_redis, pki):
    """The tunnel verifies: with the wrong CA it hangs up, and stagerelay
    (which reaches stunnel fine) gets no Redis at all."""
    env = tls_redis_env
    tun = servers.Stunnel(tls_redis.port, pki["other_ca"]).start()
    try:
        pubs = publish_documents(env, "doc-badtunnel", 1)
        r = env.run("-c", env.write_config(redis_host="127.0.0.1",
                                           redis_port=tun.port),
                    timeout=SLOW)
        assert r.returncode == EXIT_CRASH_LOOP, r
        # Connected to stunnel, then cut off at the first command.
        assert re.search(r"redis: XGROUP: (Connection reset by peer|"
                         r"Server closed the connection)", r.stderr), r
        assert re.search(r"certificate verify failed", tun.log()), tun.log()
        untouched(env, pubs)
    finally:
        tun.stop()

