"""The systemd unit's sandbox lets the daemon work (issue 9).

systemd is not PID 1 here, so the unit's sandboxing is checked two ways,
both with the settings read from the generated unit (a change to the unit
is a change to what these tests demand):

- SystemCallFilter=: the daemon runs a whole lifecycle under strace (start,
  an event triggered, HUP reload through ExecReload=, a worker SIGKILLed
  and respawned, TERM), as does ExecStartPre=; every system call any of
  their processes made must be one the unit's filter, expanded by
  systemd-analyze syscall-filter, allows. So must the socket families
  (RestrictAddressFamilies=), memory protections
  (MemoryDenyWriteExecute=) and namespaces (RestrictNamespaces=) used.
- The file system and privileges: the daemon runs in a mount namespace
  built like the unit's (ProtectSystem=, ReadWritePaths=, PrivateTmp=,
  ProtectHome=, PrivateDevices=, ProtectProc=, ProtectKernelTunables=;
  unit_sandbox.py) as the unit's user through setpriv (NoNewPrivileges=,
  CapabilityBoundingSet=) with UMask=, and must start, trigger events,
  log to the file the unit lets it write, reload and stop with exit 0.
"""

import json
import os
import re
import shlex
import signal
import sys
import urllib.request

import pytest

import logfmt
import servers
from conftest import (EXIT_OK, Service, children_of_any, exec_argv,
                      is_our_binary, need_root, need_tool, pid_alive,
                      proc_status, run, service_env, show, timespan_s,
                      uids_of, unit_value, wait_until)
from test_service import in_world, unit_umask

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT_SANDBOX = os.path.join(HERE, "unit_sandbox.py")


# ---- the world's ledger ------------------------------------------------

def ledger_status(world, document_id):
    """The ledger status of a document, or None (polling helper)."""
    db = world.pg.connect(world.dbname)
    try:
        with db.cursor() as cur:
            cur.execute("SELECT to_regclass('stagerelay.processed_documents')")
            if cur.fetchone()[0] is None:
                return None
            cur.execute("SELECT status FROM stagerelay.processed_documents "
                        "WHERE document_id = %s", (document_id,))
            rows = cur.fetchall()
    finally:
        db.close()
    return rows[0][0] if rows else None


def trigger(world, document_id):
    """Publishes an event; returns once the API got the request and the
    ledger says triggered."""
    world.publisher.document_cleaned(document_id, "text of " + document_id)
    world.wait_triggered(document_id, timeout=30)
    wait_until(lambda: ledger_status(world, document_id) == "triggered",
               timeout=15, what="ledger row %s triggered (is %r)" % (
                   document_id, ledger_status(world, document_id)))


def by_name(world, **overrides):
    """Configuration overrides reaching the servers as "localhost", not
    127.0.0.1: a real configuration names hosts, and resolving them
    (nsswitch, /etc/hosts, curl's resolver) must work in the sandbox too."""
    overrides.update(
        redis_host="localhost",
        nlp_api={"base_url": "http://localhost:%d" % world.mock.port},
        ledger={"dsn": world.pg.dsn_for(world.dbname, host="localhost")})
    return overrides


def workers_of(master, n):
    return wait_until(lambda: len(children_of_any([master])) >= n and
                      sorted(children_of_any([master])), timeout=30,
                      what="%d workers under the master %d" % (n, master))


# ---- SystemCallFilter= -------------------------------------------------

class SyscallGroups:
    """systemd-analyze syscall-filter's groups, nested groups expanded."""

    def __init__(self, analyze):
        self.analyze = analyze
        self.raw = {}

    def _members(self, group):
        if group not in self.raw:
            p = run([self.analyze, "syscall-filter", group])
            assert p.returncode == 0, show(p)
            lines = [ln.strip() for ln in p.stdout.splitlines()[1:]]
            self.raw[group] = [ln for ln in lines
                               if ln and not ln.startswith("#")]
            assert self.raw[group], "systemd-analyze lists nothing in %s:" \
                "\n%s" % (group, show(p))
        return self.raw[group]

    def expand(self, item, via=()):
        """{syscall: (item, nested group, ...)} for a name or @group."""
        if not item.startswith("@"):
            return {item: via + (item,)}
        out = {}
        for member in self._members(item):
            for name, path in self.expand(member, via + (item,)).items():
                out.setdefault(name, path)
        return out


def syscall_filter(unit, groups):
    """The unit's SystemCallFilter= lines as systemd combines them (see
    systemd.exec(5)): an empty value resets; the first line decides
    allow-list or deny-list ("~"); an allow-list always includes
    @default; later lines add to or take from that one list. Returns
    allowed(name) -> (bool, why)."""
    lines = unit.get("Service", {}).get("SystemCallFilter", [])
    listed, allow_list, ops = {}, None, []
    for value in lines:
        if not value.strip():
            listed, allow_list, ops = {}, None, []
            continue
        invert = value.startswith("~")
        words = value.lstrip("~").split()
        if allow_list is None:
            allow_list = not invert
            if allow_list:
                words = ["@default"] + words
        for word in words:
            item = word.split(":", 1)[0]     # ~@foo:EPERM
            for name, path in groups.expand(item).items():
                # systemd: a line of the list's own kind adds, the other
                # kind removes.
                if invert != allow_list:
                    listed[name] = ("~" if invert else "") + \
                        " > ".join(path)
                else:
                    listed.pop(name, None)
                    ops.append((name, "~" + " > ".join(path)))
    removed = dict(ops)

    def allowed(name):
        if allow_list is None:
            return True, "no SystemCallFilter="
        if allow_list:
            if name in listed:
                return True, listed[name]
            if name in removed:
                return False, "removed by SystemCallFilter=%s" % \
                    removed[name]
            return False, "not in the allow-list (SystemCallFilter=%s)" % \
                " ".join(v for v in lines if not v.startswith("~"))
        if name in listed:
            return False, "denied by SystemCallFilter=%s" % listed[name]
        return True, "not denied"
    return allowed


TRACE_LINE = re.compile(r"^(\d+)\s+([a-z_][a-z0-9_]*)\((.*)$")


def traced_calls(path, binary):
    """[(pid, syscall, rest of line)] of an strace -f log, from the exec
    of binary on (what strace itself did before that is not the
    daemon's)."""
    calls, started = [], False
    with open(path, errors="replace") as f:
        for line in f:
            m = TRACE_LINE.match(line)
            if not m:
                continue        # "<... resumed>", "--- SIGCHLD", "+++"
            if not started:
                started = m.group(2) == "execve" and \
                    m.group(3).startswith('"%s"' % binary)
                if not started:
                    continue
            calls.append((int(m.group(1)), m.group(2), m.group(3)))
    assert started, "no execve of %s in %s" % (binary, path)
    return calls


def test_the_daemon_uses_only_syscalls_the_unit_allows(unit, world,
                                                        notify_socket):
    need_root("strace -u runs the daemon as the unit's user")
    strace = need_tool("strace", "strace")
    analyze = need_tool("systemd-analyze", "systemd")
    user = world.user
    n = notify_socket
    umask = unit_umask(unit)
    # The metrics endpoint on too: its listener is part of the daemon.
    metrics_port = servers.free_port()
    config = world.write_config(**by_name(
        world, metrics={"listen": "127.0.0.1:%d" % metrics_port}))
    traces = {}         # command -> (trace file, its binary)

    def traced(what, argv):
        traces[what] = (os.path.join(world.dir, what + ".strace"), argv[0])
        return [strace, "-f", "-qq", "-s", "64", "-o", traces[what][0],
                "-u", user.name]

    # The filter applies to every Exec*= command, not only ExecStart=.
    pre = in_world(exec_argv(unit_value(unit, "Service", "ExecStartPre")),
                   world, config)
    p = run(traced("ExecStartPre", pre) + pre, env=service_env(user),
            umask=umask, cwd="/")
    assert p.returncode == EXIT_OK, show(p)

    start = in_world(exec_argv(unit_value(unit, "Service", "ExecStart")),
                     world, config)
    # strace runs as root and execs the daemon as the user; it follows
    # every fork and exits with the daemon's status. The daemon is
    # strace's child: sh names it in WATCHDOG_PID and execs it (what sh
    # did before is left out of the trace).
    env = service_env(user, {"NOTIFY_SOCKET": n.path})
    watchdog = ["/bin/sh", "-c", "WATCHDOG_USEC=2000000 WATCHDOG_PID=$$; "
                'export WATCHDOG_USEC WATCHDOG_PID; exec "$@"', "sh"]
    svc = Service(traced("ExecStart", start) + watchdog + start, user,
                  env, umask, drop=False)
    try:
        master = wait_until(
            lambda: [p for p in children_of_any([svc.pid])
                     if is_our_binary(p, world.bin)],
            timeout=15, what="the daemon under strace")[0]
        world.note_pid(master)
        n.wait("READY=1", timeout=45)
        workers = workers_of(master, 2)
        for pid in [master] + workers:
            world.note_pid(pid)
            assert set(uids_of(pid)) == {user.uid}, (pid, uids_of(pid))
        n.wait("WATCHDOG=1", timeout=5)

        trigger(world, "doc-sc-1")
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                    % metrics_port, timeout=10) as r:
            assert r.status == 200 and b"stagerelay_" in r.read()

        reload_ = [w.replace("$MAINPID", str(master)) for w in
                   exec_argv(unit_value(unit, "Service", "ExecReload"))]
        p = run(traced("ExecReload", reload_) + reload_,
                env=service_env(user), umask=umask, cwd="/")
        assert p.returncode == EXIT_OK, show(p)
        svc.wait_log("reloaded", timeout=45)
        trigger(world, "doc-sc-2")

        # A crashed worker is reaped and replaced.
        victim = workers_of(master, 2)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: any(r.get("pid") == str(victim) and
                               r.get("status") == "signal:9"
                               for r in svc.log("worker_exited")),
                   timeout=15, what="worker_exited pid=%d status=signal:9"
                   "\n%s" % (victim, svc.output))
        svc.wait_log("worker_respawn", timeout=15)
        wait_until(lambda: victim not in children_of_any([master]) and
                   len(children_of_any([master])) >= 2, timeout=30,
                   what="worker %d replaced" % victim)
        for pid in children_of_any([master]):
            world.note_pid(pid)
        trigger(world, "doc-sc-3")

        os.kill(master, signal.SIGTERM)
        stop_s = timespan_s(unit_value(unit, "Service", "TimeoutStopSec"))
        assert svc.wait_exit(timeout=stop_s) == EXIT_OK, svc.output
        stopped = svc.log("master_stopped")
        assert stopped and stopped[-1].get("status") == "ok", svc.output
    finally:
        svc.kill()

    allowed = syscall_filter(unit, SyscallGroups(analyze))
    calls, refused = [], {}
    for what, (path, binary) in traces.items():
        got = traced_calls(path, binary)
        used = sorted({name for _, name, _ in got})
        sys.stdout.write("%s syscalls (%d): %s\n" % (what, len(used),
                                                      " ".join(used)))
        for name in used:
            ok, why = allowed(name)
            if not ok:
                refused.setdefault(name, [why]).append(what)
        calls += got
    # Master, two workers, a respawned one (and the reload's).
    pids = {pid for pid, _, _ in traced_calls(*traces["ExecStart"])}
    assert len(pids) >= 4, "ExecStart's trace follows only pids %s" % \
        sorted(pids)
    assert not refused, \
        "system calls the unit's SystemCallFilter= refuses " \
        "(SystemCallErrorNumber=%s):\n  %s" % (
            unit_value(unit, "Service", "SystemCallErrorNumber"),
            "\n  ".join("%s: %s (used by %s)" % (
                name, v[0], ", ".join(v[1:]))
                for name, v in sorted(refused.items())))

    # RestrictAddressFamilies=: the families of every socket().
    families = unit_value(unit, "Service", "RestrictAddressFamilies")
    if families:
        permitted = set(families.lstrip("~").split())
        used_families = {rest.split(",", 1)[0] for _, name, rest in calls
                         if name == "socket"}
        sys.stdout.write("socket families used: %s\n"
                         % " ".join(sorted(used_families)))
        bad = used_families - permitted if not families.startswith("~") \
            else used_families & permitted
        assert not bad, "socket families %s outside " \
            "RestrictAddressFamilies=%s" % (sorted(bad), families)

    # MemoryDenyWriteExecute=: no writable+executable mapping, no
    # mprotect() adding PROT_EXEC (systemd's seccomp rules).
    if unit_value(unit, "Service", "MemoryDenyWriteExecute") == "yes":
        wx = [(pid, name, rest) for pid, name, rest in calls
              if (name == "mmap" and "PROT_WRITE" in rest and
                  "PROT_EXEC" in rest) or
              (name in ("mprotect", "pkey_mprotect") and
               "PROT_EXEC" in rest)]
        assert not wx, "MemoryDenyWriteExecute=yes refuses: %s" % wx

    # RestrictNamespaces=yes: no new namespace of any kind.
    if unit_value(unit, "Service", "RestrictNamespaces") == "yes":
        ns = [(pid, name, rest) for pid, name, rest in calls
              if name in ("unshare", "setns") or
              (name in ("clone", "clone3") and "CLONE_NEW" in rest)]
        assert not ns, "RestrictNamespaces=yes refuses: %s" % ns


# ---- the file system and privileges --------------------------------------

# ReadWritePaths= of the unit -> the world's stand-in (a directory the
# test's configuration points the daemon at). The unit lists only the log
# directory (logging.file); under Type=notify there is no pidfile and so
# no /run/stagerelay. The real /var/log/stagerelay is the host's, not the
# test's: world/log, created as the package's postinst creates the real
# one, takes its place. A path the unit gains here fails the test until
# it has a stand-in.
RW_STANDINS = {"/var/log/stagerelay": "log"}


def read_write_paths(unit, world):
    out = []
    for value in unit.get("Service", {}).get("ReadWritePaths", []):
        if not value.strip():
            out = []
            continue
        for word in shlex.split(value):
            optional = word.startswith("-")
            path = word.lstrip("-+")
            if path not in RW_STANDINS:
                pytest.fail("ReadWritePaths=%s has no stand-in in this "
                            "test: add it to RW_STANDINS" % path,
                            pytrace=False)
            out.append({"path": os.path.join(world.dir, RW_STANDINS[path]),
                        "optional": optional})
    return out


def bounding_set(unit):
    """setpriv --bounding-set= for CapabilityBoundingSet=, or None."""
    values = unit.get("Service", {}).get("CapabilityBoundingSet")
    if values is None:
        return None
    caps = set()
    for value in values:
        if not value.strip():
            caps = set()
            continue
        if value.startswith("~"):
            pytest.fail("CapabilityBoundingSet=~... not emulated",
                        pytrace=False)
        caps |= {c.lower().replace("cap_", "") for c in value.split()}
    return ",".join(["-all"] + ["+" + c for c in sorted(caps)])


def yes(unit, key, default="no"):
    v = (unit_value(unit, "Service", key) or default).lower()
    return v in ("yes", "true", "1", "on")


def sandbox_spec(unit, world, keep_in_tmp):
    home = (unit_value(unit, "Service", "ProtectHome") or "no").lower()
    system = (unit_value(unit, "Service", "ProtectSystem") or "no").lower()
    return {
        "protect_system": {"true": "yes", "false": "no"}.get(system, system),
        "read_write": read_write_paths(unit, world),
        "private_tmp": yes(unit, "PrivateTmp"),
        "keep_in_tmp": keep_in_tmp,
        "protect_home": {"true": "yes", "false": "no"}.get(home, home),
        "private_devices": yes(unit, "PrivateDevices"),
        "protect_proc": unit_value(unit, "Service", "ProtectProc") or
        "default",
        "protect_kernel_tunables": yes(unit, "ProtectKernelTunables") or
        yes(unit, "ProtectControlGroups"),
        "umask": unit_umask(unit),
        "user": world.user.name,
        "group": world.user.group,
        # User= other than root implies it with SystemCallFilter= too.
        "no_new_privs": yes(unit, "NoNewPrivileges") or
        bool(unit.get("Service", {}).get("SystemCallFilter")),
        "bounding_set": bounding_set(unit),
    }


def sandboxed(spec, argv):
    return [need_tool("unshare", "util-linux"), "--mount", "--propagation",
            "private", sys.executable, UNIT_SANDBOX, json.dumps(spec),
            "--"] + list(argv)


# Run inside the sandbox as the user: what the service would find.
PROBE = r"""
import errno, json, os, sys
world, logdir, state, marker = sys.argv[1:5]
def writable(d):
    p = os.path.join(d, ".probe-%d" % os.getpid())
    try:
        open(p, "w").close()
    except OSError as e:
        return errno.errorcode[e.errno]
    os.unlink(p)
    return "ok"
def listing(d):
    try:
        return sorted(os.listdir(d))
    except OSError as e:
        return errno.errorcode[e.errno]
st = dict(l.rstrip("\n").split(":\t", 1) for l in open("/proc/self/status")
          if ":\t" in l)
json.dump({
    "etc": writable("/etc"), "world_etc": writable(world + "/etc"),
    "usr": writable("/usr"), "log": writable(logdir),
    "tmp": writable("/tmp"), "var_tmp": writable("/var/tmp"),
    "marker": os.path.exists(marker), "home": listing("/home"),
    "root": listing("/root"), "dev": listing("/dev"),
    "pid1": os.path.exists("/proc/1"),
    "state": writable(state),
    "proc_sys_ro": bool(os.statvfs("/proc/sys/kernel").f_flag &
                        os.ST_RDONLY),
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
    "groups": os.getgroups(), "umask": os.umask(0),
    "cap_bnd": st["CapBnd"], "cap_eff": st["CapEff"],
    "cap_prm": st["CapPrm"], "no_new_privs": st["NoNewPrivs"],
}, sys.stdout)
"""


def file_log(path, msg):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [r for r in logfmt.parse(text) if r.get("msg") == msg]


def test_the_daemon_runs_in_the_units_sandbox(unit, world, notify_socket):
    need_root("building the unit's mount namespace and dropping to its "
              "user")
    for tool, package in (("unshare", "util-linux"),
                          ("setpriv", "util-linux"),
                          ("mount", "mount"), ("mknod", "coreutils")):
        need_tool(tool, package)
    user = world.user
    n = notify_socket
    # As the package installs /var/log/stagerelay (postinst).
    logdir = world.mkdir("log", mode=0o2750)
    os.chown(logdir, user.uid, user.gid)
    logfile = os.path.join(logdir, "stagerelay.log")
    # The user's own, but not in ReadWritePaths=: read-only in there.
    state = world.mkdir("state", mode=0o750)
    os.chown(state, user.uid, user.gid)
    config = world.write_config(**by_name(world,
                                          logging={"file": logfile}))
    # A file in the host's /tmp that a private /tmp must hide.
    marker = os.path.join("/tmp", "stagerelay-sandbox-marker-%d" %
                          os.getpid())
    open(marker, "w").close()
    # The world stands in for /etc, /usr/sbin and /var/log, and the
    # notify socket for /run/systemd/notify; both live in the host's /tmp
    # here, so they are bound into the private /tmp at the same paths.
    spec = sandbox_spec(unit, world, [world.dir, n.dir])
    assert spec["read_write"], "the unit's ReadWritePaths= lost the log " \
        "directory: logging.file would have nowhere to go"
    env = service_env(user)
    try:
        # The sandbox itself, as the service would find it.
        p = run(sandboxed(spec, [sys.executable, "-c", PROBE, world.dir,
                                 logdir, state, marker]), env=env,
                timeout=30)
        assert p.returncode == 0, show(p)
        got = json.loads(p.stdout)
    finally:
        os.unlink(marker)
    expect = {
        "etc": "EROFS", "usr": "EROFS", "world_etc": "EROFS",
        "state": "EROFS", "log": "ok",
        "tmp": "ok", "var_tmp": "ok", "marker": False,
        "uid": user.uid, "euid": user.uid, "gid": user.gid,
        "umask": spec["umask"], "no_new_privs": "1",
    }
    if spec["protect_home"] == "yes":
        expect.update(home="EACCES", root="EACCES")
    if spec["private_devices"]:
        expect["dev"] = sorted(["null", "zero", "full", "random", "urandom",
                                "tty", "shm", "mqueue", "fd", "stdin",
                                "stdout", "stderr"])
    if spec["protect_proc"] == "invisible":
        expect["pid1"] = False
    if spec["protect_kernel_tunables"]:
        expect["proc_sys_ro"] = True
    if spec["bounding_set"] == "-all":
        expect.update(cap_bnd="0" * 16, cap_eff="0" * 16, cap_prm="0" * 16)
    assert {k: got[k] for k in expect} == expect, \
        "the emulated sandbox is not the unit's:\n%s" % show(p)

    start = in_world(exec_argv(unit_value(unit, "Service", "ExecStart")),
                     world, config)
    env = service_env(user, {"NOTIFY_SOCKET": n.path,
                             "WATCHDOG_USEC": "4000000"})
    # unshare, unit_sandbox.py and setpriv each exec the next: the pid
    # is the daemon's master, as ExecStart's is.
    svc = Service(sandboxed(spec, start), user, env, unit_umask(unit),
                  drop=False)
    world.note_pid(svc.pid)
    try:
        ready = n.wait("READY=1", timeout=30)
        assert is_our_binary(svc.pid, world.bin), svc.output
        assert "MAINPID=%d" % svc.pid in n.lines(), n.lines()
        workers = workers_of(svc.pid, 2)
        own_ns = os.readlink("/proc/self/ns/mnt")
        for pid in [svc.pid] + workers:
            world.note_pid(pid)
            st = proc_status(pid)
            assert set(uids_of(pid)) == {user.uid}, (pid, st)
            assert st["NoNewPrivs"] == "1", (pid, st)
            if spec["bounding_set"] == "-all":
                assert st["CapBnd"] == "0" * 16, (pid, st)
            assert os.readlink("/proc/%d/ns/mnt" % pid) != own_ns, pid
        wait_until(lambda: file_log(logfile, "master_ready"), timeout=15,
                   what="master_ready in %s" % logfile)

        trigger(world, "doc-sb-1")

        os.kill(svc.pid, signal.SIGHUP)
        reloading = n.wait("RELOADING=1", after=ready, timeout=15)
        n.wait("READY=1", after=reloading, timeout=30)
        wait_until(lambda: file_log(logfile, "reloaded"), timeout=30,
                   what="reloaded in %s" % logfile)
        trigger(world, "doc-sb-2")

        os.kill(svc.pid, signal.SIGTERM)
        stop_s = timespan_s(unit_value(unit, "Service", "TimeoutStopSec"))
        assert svc.wait_exit(timeout=stop_s) == EXIT_OK, \
            svc.output + open(logfile, errors="replace").read()
        wait_until(lambda: not any(pid_alive(p) for p in workers),
                   what="workers %s gone" % workers)
    finally:
        svc.kill()
    stopped = file_log(logfile, "master_stopped")
    assert stopped and stopped[-1].get("status") == "ok", \
        open(logfile, errors="replace").read()
    # Created by the daemon inside ReadWritePaths=, with UMask= applied.
    st = os.stat(logfile)
    assert st.st_uid == user.uid, st
    assert st.st_mode & spec["umask"] == 0, oct(st.st_mode)
    triggered = [r.get("document_id") for r in
                 file_log(logfile, "event_triggered")]
    assert {"doc-sb-1", "doc-sb-2"} <= set(triggered), triggered
