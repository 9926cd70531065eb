"""The Debian package, built from this tree and installed on this machine.

packaging/build-deb builds the .deb from the working tree; lintian must
find no errors in it. It is then installed with dpkg -i, checked (the
stagerelay user, the files and their modes, conffiles, installed
disabled), run through its SysV init script against a private Redis,
PostgreSQL and the mock NLP API (the session's servers from conftest.py;
systemd is not PID 1 in CI, so the unit is only checked as a file), and
purged.

This needs root and a machine without stagerelay installed: it fails,
never skips, when either is not so. Everything it installs goes again:
the package is purged, the stagerelay user removed if the test created
it, /etc/stagerelay.yaml put back before the purge.
"""

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys

import pytest

SRCDIR = os.path.abspath(os.environ.get("STAGERELAY_SRCDIR") or
                         os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.path.join(SRCDIR, "tests", "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import logfmt  # noqa: E402
import publish  # noqa: E402
import servers  # noqa: E402
import waiting  # noqa: E402

BUILD_DEB = os.path.join(SRCDIR, "packaging", "build-deb")
PKG = "stagerelay"
USER = "stagerelay"
INIT = "/etc/init.d/stagerelay"
CONFIG = "/etc/stagerelay.yaml"
PIDFILE = "/run/stagerelay/stagerelay.pid"
LOGDIR = "/var/log/stagerelay"
LOGFILE = LOGDIR + "/stagerelay.log"
BIN = "/usr/sbin/stagerelay"
UNIT = "/lib/systemd/system/stagerelay.service"

GROUP = "stage2-nlp-processor"
DOC_ROUTE_PATH = "/api/v2/nlp/process"

# Everything the package puts on the system, and what purge must remove.
PACKAGE_PATHS = [
    BIN, CONFIG, INIT, "/etc/default/stagerelay",
    "/etc/logrotate.d/stagerelay", UNIT,
    "/usr/share/man/man8/stagerelay.8.gz",
    "/usr/share/man/man5/stagerelay.yaml.5.gz",
    "/usr/share/man/man7/stagerelay-ledger.7.gz",
    "/usr/share/doc/stagerelay/README.md.gz",
    "/usr/share/doc/stagerelay/copyright",
    "/usr/share/doc/stagerelay/examples/minimal.yaml",
    "/var/lib/stagerelay",
]
CONFFILES = [CONFIG, INIT, "/etc/default/stagerelay",
             "/etc/logrotate.d/stagerelay"]
NOENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}


# ---- helpers -----------------------------------------------------------

def run(argv, timeout=300, env=None, **kw):
    e = dict(os.environ)
    e.update(NOENV)
    e.update(env or {})
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=timeout,
                          env=e, **kw)


def show(p):
    args = p.args if isinstance(p.args, str) else " ".join(p.args)
    return "$ %s\n-> exit %d\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        args, p.returncode, p.stdout, p.stderr)


def need(tool, package):
    if shutil.which(tool) is None:
        pytest.fail("%s not found: install it (apt-get install -y %s)"
                    % (tool, package), pytrace=False)


def need_root():
    if os.geteuid() != 0:
        pytest.fail("the package test installs and purges stagerelay with "
                    "dpkg: run it as root (CI does)", pytrace=False)


def wait_until(predicate, timeout=20.0, what="condition", interval=0.1):
    """waiting.wait_until, with the slower pace of a package's service."""
    return waiting.wait_until(predicate, timeout, interval, what)


def package_status():
    """dpkg's status of the package: "installed", "config-files", ... or
    "not-installed"."""
    p = run(["dpkg-query", "-W", "-f=${db:Status-Status}", PKG])
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() \
        else "not-installed"


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def logs(path=LOGFILE):
    return logfmt.parse(read(path))


def log_lines(msg, path=LOGFILE, **match):
    return [r for r in logs(path) if r.get("msg") == msg and
            all(r.get(k) == str(v) for k, v in match.items())]


def pidfile_pid():
    try:
        return int(read(PIDFILE).strip())
    except ValueError:
        return None


def proc_uid(pid):
    for line in read("/proc/%d/status" % pid).splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def packaged_processes():
    """Pids of processes running the packaged binary."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/exe" % d) == BIN:
                pids.append(int(d))
        except OSError:
            pass
    return pids


def init(action, timeout=120):
    return run([INIT, action], timeout=timeout)


def mode(path):
    st = os.stat(path)
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


# ---- fixtures ----------------------------------------------------------

@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """The binary packages packaging/build-deb makes from this tree."""
    for tool, package in (("dpkg-buildpackage", "dpkg-dev"),
                          ("dh", "debhelper"), ("autoreconf", "autoconf")):
        need(tool, package)
    out = tmp_path_factory.mktemp("deb")
    p = run([BUILD_DEB, str(out)], timeout=1800)
    assert p.returncode == 0, show(p)
    found = {}
    for f in os.listdir(out):
        m = re.fullmatch(r"(stagerelay(?:-dbgsym)?)_([^_]+)_[^_]+\.deb", f)
        if m:
            found[m.group(1)] = os.path.join(out, f)
    assert PKG in found, "no stagerelay .deb in %s:\n%s" % (out, show(p))
    return found


@pytest.fixture(scope="module")
def installed(debs):
    """The package installed with dpkg -i; purged afterwards (and the
    stagerelay user removed if it did not exist before)."""
    need_root()
    status = package_status()
    if status != "not-installed":
        pytest.fail("stagerelay is already on this machine (dpkg status %s)."
                    " This test installs and purges it; remove it first: "
                    "dpkg --purge stagerelay" % status, pytrace=False)
    strays = [p for p in (CONFIG, INIT, "/etc/default/stagerelay", UNIT,
                          BIN) if os.path.exists(p)]
    if strays:
        pytest.fail("files the package would own already exist (a make "
                    "install into /?): %s; remove them first" % strays,
                    pytrace=False)
    try:
        pwd.getpwnam(USER)
        user_existed = True
    except KeyError:
        user_existed = False

    p = run(["dpkg", "-i", debs[PKG]])
    if p.returncode != 0:
        # Dependencies dpkg could not satisfy from what is installed.
        q = run(["apt-get", "install", "-f", "-y", "-q"], timeout=900)
        assert q.returncode == 0, show(p) + "\n" + show(q)
    assert package_status() == "installed", show(p)
    try:
        yield {"deb": debs[PKG], "user_existed": user_existed}
    finally:
        if os.path.exists(INIT) and os.path.exists(PIDFILE):
            init("stop")
        if package_status() != "not-installed":
            run(["dpkg", "--purge", PKG])
        if not user_existed:
            try:
                pwd.getpwnam(USER)
                run(["deluser", "--system", "--quiet", USER])
            except KeyError:
                pass
            try:
                grp.getgrnam(USER)
                run(["delgroup", "--system", "--quiet", USER])
            except KeyError:
                pass


@pytest.fixture
def test_config(installed, redis_server, pg_server, mock_server):
    """/etc/stagerelay.yaml replaced by a configuration for the servers
    above (same file, so its owner and mode stay); the packaged file is
    put back afterwards. Yields (dsn, dbname, metrics port)."""
    import yaml
    with open(CONFIG, "rb") as f:
        original = f.read()
    st = os.stat(CONFIG)
    dbname = pg_server.create_database()
    metrics_port = servers.free_port()
    doc = {"event_consumer": {
        "enabled": True,
        "source_stream": publish.DEFAULT_STREAM,
        "redis_host": "127.0.0.1",
        "redis_port": redis_server.port,
        "consumer_group": GROUP,
        "consumer_name": "debtest",
        "concurrent_tasks": 2,
        "poll_interval_ms": 100,
        "process_backlog": True,
        "dead_letter_stream": "stage2:nlp:failed-events",
        "nlp_api": {"base_url": mock_server.url, "timeout_ms": 5000},
        "ledger": {"dsn": pg_server.dsn_for(dbname)},
        "logging": {"format": "logfmt", "level": "info", "file": LOGFILE},
        "metrics": {"listen": "127.0.0.1:%d" % metrics_port},
    }}
    with open(CONFIG, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    redis_server.client().flushall()
    mock_server.reset()
    try:
        yield pg_server.dsn_for(dbname), dbname, metrics_port
    finally:
        if os.path.exists(PIDFILE):
            init("stop")
        with open(CONFIG, "wb") as f:
            f.write(original)
        os.chown(CONFIG, st.st_uid, st.st_gid)
        os.chmod(CONFIG, stat.S_IMODE(st.st_mode))
        pg_server.drop_database(dbname)


# ---- the tests ---------------------------------------------------------

def test_lintian_finds_no_errors(debs):
    need("lintian", "lintian")
    p = run(["lintian", "--fail-on", "error", "--display-info",
             debs[PKG]], timeout=600)
    errors = [line for line in p.stdout.splitlines()
              if line.startswith("E: ")]
    assert p.returncode == 0 and not errors, show(p)


def test_install_layout(installed):
    pw = pwd.getpwnam(USER)
    if not installed["user_existed"]:
        # As the postinst made it (an existing user is left as it is).
        assert pw.pw_uid < 1000, "not a system user: %r" % (pw,)
        assert pw.pw_dir == "/var/lib/stagerelay", pw
        assert pw.pw_shell == "/usr/sbin/nologin", pw
        assert grp.getgrgid(pw.pw_gid).gr_name == USER, pw

    missing = [p for p in PACKAGE_PATHS if not os.path.exists(p)]
    assert not missing, "not installed: %s" % missing
    assert os.access(BIN, os.X_OK) and os.access(INIT, os.X_OK)
    p = run([BIN, "-V"])
    assert p.returncode == 0 and p.stdout.startswith("stagerelay "), show(p)

    # The man page names the packaged paths, not /usr/local's.
    p = run(["zcat", "/usr/share/man/man8/stagerelay.8.gz"])
    assert "/etc/stagerelay.yaml" in p.stdout and \
        "/usr/local" not in p.stdout, "stagerelay(8) has the wrong paths"
    unit = read(UNIT)
    assert "ExecStart=/usr/sbin/stagerelay -c /etc/stagerelay.yaml" in unit, \
        unit

    # The configuration may hold secrets; logs and home are the user's.
    assert mode(CONFIG) == (0o640, "root", USER)
    assert mode(LOGDIR) == (0o2750, USER, "adm")
    assert mode("/var/lib/stagerelay") == (0o750, USER, USER)
    p = run([BIN, "-t", "-c", CONFIG])
    assert p.returncode == 0, "the packaged configuration does not " \
        "validate\n" + show(p)

    p = run(["dpkg-query", "-W", "-f=${Conffiles}", PKG])
    conffiles = [line.split()[0] for line in p.stdout.splitlines()
                 if line.strip()]
    assert sorted(conffiles) == sorted(CONFFILES), conffiles

    # Installed disabled and not started: no start link in any runlevel,
    # no systemd enablement, no process.
    starts = [os.path.join("/etc/rc%s.d" % rl, f) for rl in "2345S"
              if os.path.isdir("/etc/rc%s.d" % rl)
              for f in os.listdir("/etc/rc%s.d" % rl)
              if re.fullmatch(r"S\d\dstagerelay", f)]
    assert not starts, "enabled at install: %s" % starts
    assert not os.path.exists("/etc/systemd/system/multi-user.target.wants/"
                              "stagerelay.service")
    assert not os.path.exists(PIDFILE) and not packaged_processes()
    p = init("status")
    assert p.returncode == 3, "status of a stopped service\n" + show(p)

    if shutil.which("logrotate"):
        p = run(["logrotate", "--debug", "/etc/logrotate.d/stagerelay"])
        assert p.returncode == 0 and "error" not in p.stderr.lower(), show(p)


def test_service_through_the_init_script(installed, test_config,
                                         redis_server, mock_server,
                                         pg_server, tmp_path):
    dsn, dbname, metrics_port = test_config

    p = init("start")
    assert p.returncode == 0, show(p) + "\n--- log ---\n" + read(LOGFILE)
    pid = wait_until(pidfile_pid, what="the pidfile")
    assert proc_uid(pid) == pwd.getpwnam(USER).pw_uid, \
        "the master does not run as %s" % USER
    assert os.path.realpath("/proc/%d/exe" % pid) == BIN
    wait_until(lambda: len(log_lines("worker_started")) >= 2,
               what="two workers started\n" + read(LOGFILE))
    p = init("status")
    assert p.returncode == 0, show(p)

    # Events go through: one request each, and a ledger row each.
    pub = publish.Publisher(redis_server.client())
    ids = ["deb-doc-%d" % i for i in range(5)]
    for doc_id in ids:
        pub.document_cleaned(doc_id, "text of %s" % doc_id)

    def requested():
        keys = {r["headers"].get("idempotency-key") for r in
                mock_server.requests() if r["path"] == DOC_ROUTE_PATH}
        return keys >= set(ids)
    wait_until(requested, what="the NLP API requests\n" + read(LOGFILE))

    conn = pg_server.connect(dbname)
    try:
        def triggered():
            with conn.cursor() as cur:
                cur.execute("SELECT document_id FROM "
                            "stagerelay.processed_documents WHERE "
                            "status = 'triggered'")
                return {r[0] for r in cur.fetchall()} >= set(ids)
        wait_until(triggered, what="triggered ledger rows")
    finally:
        conn.close()

    # stagerelay status sees the daemon, Redis and the ledger.
    p = run([BIN, "-c", CONFIG, "status", "--json"])
    assert p.returncode == 0, show(p)
    st = json.loads(p.stdout)
    assert st["ok"] is True and st["daemon"]["reachable"] and \
        st["redis"]["reachable"] and st["ledger"]["reachable"], p.stdout

    # logrotate with the packaged rules moves the log aside; its
    # postrotate USR1 makes the master reopen the file, so the reload
    # below is logged in the new one.
    rotated = False
    if shutil.which("logrotate"):
        state = str(tmp_path / "logrotate.state")
        p = run(["logrotate", "-f", "-s", state,
                 "/etc/logrotate.d/stagerelay"])
        assert p.returncode == 0, show(p)
        assert log_lines("worker_started", LOGFILE + ".1"), \
            "the log was not rotated\n" + show(p)
        rotated = True

    # reload: the master validates the file, logs it and replaces its
    # workers one at a time.
    p = init("reload")
    assert p.returncode == 0, show(p)
    wait_until(lambda: log_lines("reloaded"),
               what="msg=reloaded in %s\n%s" % (LOGFILE, read(LOGFILE)))
    assert pidfile_pid() == pid, "reload replaced the master"
    if rotated:
        assert not log_lines("reloaded", LOGFILE + ".1")

    # stop: master and workers gone, pidfile removed.
    p = init("stop")
    assert p.returncode == 0, show(p)
    wait_until(lambda: not packaged_processes(), timeout=30,
               what="every stagerelay process to exit")
    assert not os.path.exists(PIDFILE)
    p = init("status")
    assert p.returncode == 3, show(p)


def test_purge_removes_everything(installed):
    p = run(["dpkg", "--purge", PKG])
    assert p.returncode == 0, show(p)
    assert package_status() == "not-installed"
    left = [p for p in PACKAGE_PATHS + [LOGDIR, "/run/stagerelay",
                                         "/usr/share/doc/stagerelay"]
            if os.path.lexists(p)]
    assert not left, "left after purge: %s" % left
    links = [os.path.join("/etc/rc%s.d" % rl, f) for rl in "0123456S"
             if os.path.isdir("/etc/rc%s.d" % rl)
             for f in os.listdir("/etc/rc%s.d" % rl) if f.endswith(PKG)]
    assert not links, "rc links left after purge: %s" % links
    # Debian keeps a package's system user (files elsewhere may be its);
    # the fixture removes it when this test created it.
    pwd.getpwnam(USER)
