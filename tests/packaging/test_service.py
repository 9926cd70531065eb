"""The systemd unit, the SysV init script and the logrotate rules (issue 7).

Each is used the way its init system would use it and judged by what an
operator sees: systemd-analyze's verdict, exit statuses, sd_notify
datagrams, pidfiles, process owners, requests at the API, lines in the
log file. systemd is not PID 1 here, so the unit's commands are run by
this test as systemd would run them (User=, Group=, UMask=, a clean
environment, NOTIFY_SOCKET, WATCHDOG_USEC); the sandboxing settings are
checked by systemd-analyze here, and emulated in test_sandbox.py.
"""

import grp
import os
import re
import signal
import subprocess
import time

import pytest

import logfmt
from conftest import (BIN, BUILDDIR, EXIT_CONFIG, EXIT_OK, INIT_DEFAULTS,
                      INIT_SCRIPT, LOGROTATE, MAN_PAGES, SERVICE_PATH,
                      SRCDIR, UNIT, Service, children_of_any, exec_argv,
                      is_our_binary, need_file, need_root, need_tool,
                      pid_alive, run, service_env, show, timespan_s,
                      unit_value, uids_of, wait_until)


# ---- the unit, statically ----------------------------------------------

def default_shutdown_timeout():
    """supervisor.shutdown_timeout of the shipped configuration."""
    p = run([BIN, "-t", "-c", os.path.join(SRCDIR, "etc", "stagerelay.yaml")])
    assert p.returncode == 0, show(p)
    m = re.search(r"^\s*shutdown_timeout:\s*(\d+)\s*$", p.stdout, re.M)
    assert m, "no shutdown_timeout in stagerelay -t output:\n" + p.stdout
    return int(m.group(1))


def test_unit_is_generated_with_real_paths(unit):
    with open(UNIT) as f:
        text = f.read()
    assert not re.search(r"@[a-z_]+@", text), \
        "unsubstituted @...@ left in %s" % UNIT
    pre = exec_argv(unit_value(unit, "Service", "ExecStartPre"))
    start = exec_argv(unit_value(unit, "Service", "ExecStart"))
    for argv in (pre, start):
        assert os.path.isabs(argv[0]) and \
            os.path.basename(argv[0]) == "stagerelay", argv
        assert "-c" in argv, argv
        conf = argv[argv.index("-c") + 1]
        assert os.path.isabs(conf) and conf.endswith("/stagerelay.yaml"), \
            argv
    # The check runs the same binary on the same file as the daemon.
    assert pre[0] == start[0] and "-t" in pre, (pre, start)
    assert pre[pre.index("-c") + 1] == start[start.index("-c") + 1]


def test_unit_settings_fit_the_daemon(unit):
    svc = unit["Service"]
    start = exec_argv(unit_value(unit, "Service", "ExecStart"))
    # systemd tracks the master itself and runs it as User=: no detaching,
    # no pidfile, no privilege drop of its own.
    for flag in ("-d", "--daemon", "-p", "--pidfile", "-u", "--user",
                 "--allow-root"):
        assert flag not in start, "ExecStart has %s: %s" % (flag, start)
    assert unit_value(unit, "Service", "Type") == "notify"
    assert unit_value(unit, "Service", "NotifyAccess") == "main"
    assert unit_value(unit, "Service", "KillMode") == "mixed"
    assert unit_value(unit, "Service", "Restart") == "on-failure"
    assert unit_value(unit, "Service", "User")
    assert unit_value(unit, "Service", "Group")
    reload_ = exec_argv(unit_value(unit, "Service", "ExecReload"))
    assert os.path.basename(reload_[0]) == "kill" and \
        reload_[1:] == ["-HUP", "$MAINPID"], reload_
    # A configuration error (78) is not retried; a crash loop (70) is.
    prevent = " ".join(svc.get("RestartPreventExitStatus", [])).split()
    assert "78" in prevent and "70" not in prevent, prevent
    # The master pings the watchdog (see the lifecycle test).
    assert timespan_s(unit_value(unit, "Service", "WatchdogSec")) >= 10
    # systemd must not KILL workers that are still draining.
    stop = timespan_s(unit_value(unit, "Service", "TimeoutStopSec"))
    assert stop > default_shutdown_timeout(), \
        "TimeoutStopSec=%ss is not above shutdown_timeout" % stop
    docs = " ".join(unit["Unit"].get("Documentation", [])).split()
    assert sorted(docs) == sorted("man:%s(%d)" % (p.rsplit(".", 1)[0], s)
                                  for p, s in MAN_PAGES.items()), docs
    assert unit_value(unit, "Service", "CapabilityBoundingSet") == ""
    assert unit_value(unit, "Service", "ProtectSystem") == "strict"


def test_systemd_analyze_verify_is_clean(unit, tmp_path):
    """The generated unit, with one change: its ExecStart binary (not
    installed here) is the build's; Documentation= is checked against the
    built man pages through MANPATH."""
    sa = need_tool("systemd-analyze", "systemd")
    need_tool("man", "man-db")
    installed = exec_argv(unit_value(unit, "Service", "ExecStart"))[0]
    with open(UNIT) as f:
        text = f.read()
    copy = tmp_path / "stagerelay.service"
    copy.write_text(text.replace(installed, BIN))
    for page, section in MAN_PAGES.items():
        built = os.path.join(BUILDDIR, "man", page)
        need_file(built, "build the man pages with make")
        d = tmp_path / "man" / ("man%d" % section)
        d.mkdir(parents=True, exist_ok=True)
        (d / page).write_bytes(open(built, "rb").read())
    p = run([sa, "verify", str(copy)],
            env=dict(os.environ, MANPATH=str(tmp_path / "man")))
    ours = [line for line in (p.stdout + p.stderr).splitlines()
            if "stagerelay" in line]
    assert p.returncode == 0 and not ours, show(p)


# ---- the unit's commands, run as systemd runs them -----------------------

def in_world(argv, world, config):
    """argv of a unit command with the installed binary and configuration
    replaced by the test's copies; every other word unchanged."""
    out = [world.bin] + list(argv[1:])
    out[out.index("-c") + 1] = config
    return out


def run_as(user, argv, env, umask=0o027, timeout=60):
    return subprocess.run(argv, env=env, cwd="/", user=user.uid,
                          group=user.gid, extra_groups=[], umask=umask,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=timeout)


def unit_umask(unit):
    return int(unit_value(unit, "Service", "UMask") or "0022", 8)


def test_exec_start_pre_refuses_a_broken_config_with_78(unit, world):
    pre = exec_argv(unit_value(unit, "Service", "ExecStartPre"))
    start = exec_argv(unit_value(unit, "Service", "ExecStart"))
    env = service_env(world.user)
    umask = unit_umask(unit)

    good = world.write_config()
    p = run_as(world.user, in_world(pre, world, good), env, umask)
    assert p.returncode == EXIT_OK, show(p)

    broken = world.write_config("broken.yaml", batch_size="many")
    p = run_as(world.user, in_world(pre, world, broken), env, umask)
    assert p.returncode == EXIT_CONFIG, show(p)
    assert "broken.yaml" in p.stderr and "batch_size" in p.stderr, show(p)
    # ExecStart itself also exits 78, which RestartPreventExitStatus=
    # keeps systemd from retrying.
    p = run_as(world.user, in_world(start, world, broken), env, umask)
    assert p.returncode == EXIT_CONFIG, show(p)
    assert str(EXIT_CONFIG) in unit_value(unit, "Service",
                                          "RestartPreventExitStatus").split()


def test_exec_start_lifecycle_under_notify(unit, world, notify_socket):
    """READY=1 once the workers are connected, events triggered, HUP via
    ExecReload gives RELOADING=1 then READY=1, WATCHDOG=1 at half
    WATCHDOG_USEC, TERM gives STOPPING=1 and exit 0; only the main process
    notifies, and every process runs as the unit's user."""
    n = notify_socket
    user = world.user
    config = world.write_config()
    start = exec_argv(unit_value(unit, "Service", "ExecStart"))
    env = service_env(user, {"NOTIFY_SOCKET": n.path,
                             "WATCHDOG_USEC": "2000000"})
    svc = Service(in_world(start, world, config), user, env,
                  unit_umask(unit))
    world.note_pid(svc.pid)
    try:
        ready = n.wait("READY=1", timeout=30)
        assert "MAINPID=%d" % svc.pid in n.lines(), n.lines()
        workers = wait_until(lambda: len(children_of_any([svc.pid])) >= 2
                             and children_of_any([svc.pid]),
                             what="two workers under the master")
        for pid in [svc.pid] + workers:
            world.note_pid(pid)
            assert set(uids_of(pid)) == {user.uid}, \
                "pid %d runs as uids %s, not %s" % (pid, uids_of(pid),
                                                     user.name)

        # Pings at half the interval: two within about 1 s of each other.
        first = n.wait("WATCHDOG=1", timeout=5)
        t0 = time.monotonic()
        n.wait("WATCHDOG=1", after=first, timeout=5)
        assert time.monotonic() - t0 < 2.0

        world.publisher.document_cleaned("doc-unit-1", "first text")
        world.wait_triggered("doc-unit-1")

        # ExecReload, as systemd runs it (as User=, $MAINPID filled in).
        reload_ = [w.replace("$MAINPID", str(svc.pid)) for w in
                   exec_argv(unit_value(unit, "Service", "ExecReload"))]
        p = run_as(user, reload_, service_env(user))
        assert p.returncode == 0, show(p)
        reloading = n.wait("RELOADING=1", after=ready, timeout=15)
        n.wait("READY=1", after=reloading, timeout=30)
        svc.wait_log("reloaded", timeout=30)
        world.publisher.document_cleaned("doc-unit-2", "second text")
        world.wait_triggered("doc-unit-2")

        # KillMode=mixed: TERM to the main process only.
        os.kill(svc.pid, signal.SIGTERM)
        stop_s = timespan_s(unit_value(unit, "Service", "TimeoutStopSec"))
        assert svc.wait_exit(timeout=stop_s) == EXIT_OK, svc.output
        n.wait("STOPPING=1", after=reloading, timeout=2)
        wait_until(lambda: not any(pid_alive(p) for p in workers),
                   what="workers %s gone" % workers)
        senders = {pid for pid, _ in n.poll()}
        assert senders == {svc.pid}, \
            "datagrams from %s; NotifyAccess=main hears only %d" % (
                senders, svc.pid)
    finally:
        svc.kill()


# ---- the SysV init script ------------------------------------------------

class InitScript:
    """packaging/sysvinit/stagerelay with a defaults file of the test's
    own (STAGERELAY_DEFAULTS), pointing at the world's binary, config,
    pidfile and log directory."""

    def __init__(self, world, **settings):
        need_root("the init script starts the daemon as %s" % world.user.name)
        need_tool("start-stop-daemon", "dpkg")
        self.world = world
        self.pidfile = os.path.join(world.dir, "run", "stagerelay.pid")
        self.logdir = os.path.join(world.dir, "log")
        self.logfile = os.path.join(self.logdir, "stagerelay.log")
        self.config = world.write_config(logging={"file": self.logfile})
        self.defaults = os.path.join(world.mkdir("default"), "stagerelay")
        values = {"DAEMON": world.bin, "CONFIG": self.config,
                  "USER": world.user.name, "PIDFILE": self.pidfile,
                  "LOGDIR": self.logdir, "STOP_TIMEOUT": "20",
                  "START_TIMEOUT": "15", "DAEMON_OPTS": ""}
        values.update(settings)
        with open(self.defaults, "w") as f:
            for k, v in values.items():
                f.write("%s=%s\n" % (k, _sh_quote(v)))

    def __call__(self, action, timeout=90):
        env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8",
               "STAGERELAY_DEFAULTS": self.defaults,
               # Never hand over to systemctl, even on a systemd host.
               "SYSTEMCTL_SKIP_REDIRECT": "1"}
        return run([INIT_SCRIPT, action], env=env, timeout=timeout)

    def pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def log(self, msg):
        try:
            with open(self.logfile) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return [r for r in logfmt.parse(text) if r.get("msg") == msg]

    def wait_log(self, msg, count=1, timeout=20.0):
        wait_until(lambda: len(self.log(msg)) >= count, timeout=timeout,
                   what="%d x msg=%s in %s" % (count, msg, self.logfile))


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def _sh_quote(v):
    return "'" + str(v).replace("'", "'\\''") + "'"


@pytest.fixture
def init(world):
    script = InitScript(world)
    yield script
    if script.pid():
        world.note_pid(script.pid())
        script("stop")


def test_init_script_passes_sh_n_and_shellcheck():
    sh = need_tool("sh", "dash")
    sc = need_tool("shellcheck", "shellcheck")
    assert os.access(INIT_SCRIPT, os.X_OK), "%s is not executable" % \
        INIT_SCRIPT
    p = run([sh, "-n", INIT_SCRIPT])
    assert p.returncode == 0, show(p)
    p = run([sc, "-x", INIT_SCRIPT])
    assert p.returncode == 0, show(p)
    # Sourced by the script: its assignments look unused on their own.
    p = run([sc, "-s", "sh", "-e", "SC2034", INIT_DEFAULTS])
    assert p.returncode == 0, show(p)
    with open(INIT_SCRIPT) as f:
        header = f.read().split("### END INIT INFO")[0]
    for field in ("Provides:", "Required-Start:", "Should-Start:",
                  "Default-Start:", "Default-Stop:"):
        assert field in header, "LSB header lacks %s" % field


def test_init_script_start_status_reload_stop(init, world):
    user = world.user
    p = init("start")
    assert p.returncode == 0, show(p)
    pid = init.pid()
    assert pid and pid_alive(pid) and is_our_binary(pid, world.bin), \
        "pidfile %s: %r\n%s" % (init.pidfile, pid, show(p))
    world.note_pid(pid)
    # Detached, running as the user, pidfile written by the user.
    assert set(uids_of(pid)) == {user.uid}, uids_of(pid)
    assert os.stat(init.pidfile).st_uid == user.uid
    assert os.stat(os.path.dirname(init.pidfile)).st_uid == user.uid
    init.wait_log("master_ready")

    world.publisher.document_cleaned("doc-init-1", "init text")
    world.wait_triggered("doc-init-1")

    p = init("status")
    assert p.returncode == 0 and "is running" in p.stdout, show(p)
    # A second start finds it running and leaves it alone.
    p = init("start")
    assert p.returncode == 0 and init.pid() == pid, show(p)

    p = init("reload")
    assert p.returncode == 0, show(p)
    init.wait_log("reloaded", timeout=30)
    assert init.pid() == pid

    # A broken file: reload and restart refuse, the daemon runs on.
    with open(init.config) as f:
        good = f.read()
    world.write_config(os.path.basename(init.config),
                       text=good.replace("batch_size: 10",
                                         "batch_size: many"))
    for action in ("reload", "restart"):
        p = init(action)
        assert p.returncode != 0 and "batch_size" in p.stderr, show(p)
        assert init.pid() == pid and pid_alive(pid), show(p)
    assert len(init.log("reloaded")) == 1
    world.write_config(os.path.basename(init.config), text=good)

    workers = children_of_any([pid])
    assert workers, "no workers under master %d" % pid
    p = init("stop")
    assert p.returncode == 0, show(p)
    assert not pid_alive(pid), "master %d still running after stop" % pid
    wait_until(lambda: not any(pid_alive(w) for w in workers),
               what="workers %s gone" % workers)
    assert not os.path.exists(init.pidfile)
    assert init.log("master_stopped")[-1].get("status") == "ok"

    p = init("status")
    assert p.returncode == 3, show(p)
    p = init("stop")
    assert p.returncode == 0, show(p)


def test_init_script_restart_replaces_the_master(init, world):
    p = init("start")
    assert p.returncode == 0, show(p)
    old = init.pid()
    world.note_pid(old)
    p = init("restart")
    assert p.returncode == 0, show(p)
    new = init.pid()
    world.note_pid(new)
    assert new and new != old and pid_alive(new) and not pid_alive(old)
    world.publisher.document_cleaned("doc-restart", "after restart")
    world.wait_triggered("doc-restart")


def test_init_script_disabled_starts_nothing(world):
    init = InitScript(world, ENABLED="no")
    p = init("start")
    assert p.returncode == 0 and "ENABLED=no" in p.stdout + p.stderr, \
        show(p)
    assert not os.path.exists(init.pidfile)


# ---- logrotate ---------------------------------------------------------

def installed_rules(path, text):
    """The rules as a package installs them: logrotate ignores a file
    that group or others may write (as a checkout may have it)."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def test_logrotate_rules_parse(service_user, tmp_path):
    lr = need_tool("logrotate", "logrotate")
    conf = installed_rules(str(tmp_path / "stagerelay"), read(LOGROTATE))
    p = run([lr, "-d", "-s", str(tmp_path / "state"), conf])
    out = p.stdout + p.stderr
    assert p.returncode == 0, show(p)
    assert not re.search(r"^error:", out, re.M), show(p)
    assert "/var/log/stagerelay/stagerelay.log" in out, show(p)


def test_logrotate_rotation_reopens_the_log(init, world):
    """The rules, with the log and pidfile paths pointed at the test's,
    rotate the file for real; after the postrotate USR1 the daemon writes
    to the new file, created 0640 user:adm."""
    lr = need_tool("logrotate", "logrotate")
    p = init("start")
    assert p.returncode == 0, show(p)
    world.note_pid(init.pid())
    init.wait_log("master_ready")
    world.publisher.document_cleaned("doc-before-rotate", "old file")
    world.wait_triggered("doc-before-rotate")
    init.wait_log("event_triggered")

    with open(LOGROTATE) as f:
        rules = f.read()
    assert "/var/log/stagerelay/stagerelay.log" in rules
    assert "/run/stagerelay/stagerelay.pid" in rules
    rules = rules.replace("/var/log/stagerelay/stagerelay.log",
                          init.logfile)
    rules = rules.replace("/run/stagerelay/stagerelay.pid", init.pidfile)
    conf = installed_rules(os.path.join(world.dir, "logrotate.conf"), rules)
    # systemctl show on a systemd host finds no such unit running: the
    # pidfile is used.
    p = run([lr, "-f", "-s", os.path.join(world.dir, "logrotate.state"),
             conf])
    assert p.returncode == 0, show(p)

    rotated = init.logfile + ".1"
    with open(rotated) as f:
        assert "doc-before-rotate" in f.read()
    st = os.stat(init.logfile)
    assert (st.st_mode & 0o777, st.st_uid) == (0o640, world.user.uid)
    assert grp.getgrgid(st.st_gid).gr_name == "adm"

    # The reopen reaches each worker at the top of its next round: a line
    # or two may still go to the rotated file (delaycompress keeps it
    # plain), none is lost, and soon every line goes to the new file.
    published = []

    def in_new_file():
        doc = "doc-after-rotate-%d" % (len(published) + 1)
        world.publisher.document_cleaned(doc, "new file")
        published.append(doc)
        world.wait_triggered(doc)
        time.sleep(0.2)
        return doc in read(init.logfile)
    wait_until(in_new_file, timeout=15, interval=0.3,
               what="a line in the new %s after the postrotate USR1"
               % init.logfile)
    both = read(rotated) + read(init.logfile)
    for doc in published:
        assert ("document_id=%s " % doc) in both, "no log line for %s" % doc
    world.publisher.document_cleaned("doc-last", "new file")
    world.wait_triggered("doc-last")
    wait_until(lambda: "doc-last" in read(init.logfile),
               what="doc-last logged in the new file")
    assert "doc-last" not in read(rotated)
