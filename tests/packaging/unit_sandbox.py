"""Sets up, inside a fresh mount namespace, the file system a systemd unit's
sandboxing settings give its service, then execs the command through
setpriv as the unit's user with no capabilities and no new privileges.

    unshare --mount --propagation private \\
        python3 unit_sandbox.py SPEC-JSON -- COMMAND...

SPEC (built from the unit by test_sandbox.py) holds the settings and the
paths they apply to. The steps follow systemd's own order closely enough
for a service's point of view: private /tmp, /var/tmp and /dev, hidden
homes, then everything read-only (ProtectSystem=strict), then the
ReadWritePaths= writable again, then /proc and the kernel tunables.
Every step that fails stops here with exit 71: a half-built sandbox must
not run the daemon. Root only; the namespace goes away with the command.
"""

import json
import os
import subprocess
import sys

EXIT_SETUP = 71


def die(msg):
    sys.stderr.write("unit_sandbox: %s\n" % msg)
    sys.exit(EXIT_SETUP)


def sh(*argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        die("%s: %s" % (" ".join(argv), (p.stderr or p.stdout).strip()))


def mount_points():
    """Every mount point of this namespace, parents first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, octal-escaped (\040 a space).
            mp = line.split()[4]
            out.append(mp.encode().decode("unicode_escape")
                       .encode("latin-1").decode())
    return out


def under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def private_tmp(keep):
    """A fresh tmpfs on /tmp and /var/tmp. The test's world (standing in
    for /etc, /usr/sbin and /var/log) lives under the host's /tmp: it is
    bound back in at the same path, through a descriptor opened before the
    tmpfs hides it; nothing else of the host's /tmp stays visible."""
    fds = {}
    for path in keep:
        if under(path, "/tmp"):
            fds[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
            os.set_inheritable(fds[path], True)
    for d in ("/tmp", "/var/tmp"):
        if os.path.isdir(d):
            sh("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev",
               "tmpfs", d)
    for path, fd in fds.items():
        os.makedirs(path, exist_ok=True)
        # --no-canonicalize: mount(8) would resolve the fd link to the
        # path, which now names the empty directory in the tmpfs.
        sh("mount", "--no-canonicalize", "--bind", "/proc/self/fd/%d" % fd,
           path, pass_fds=[fd])
        os.close(fd)


def protect_home(mode):
    """yes: /home, /root, /run/user empty and inaccessible; read-only;
    tmpfs: empty."""
    for d in ("/home", "/root", "/run/user"):
        if not os.path.isdir(d):
            continue
        if mode == "yes":
            sh("mount", "-t", "tmpfs", "-o", "ro,mode=000,nosuid,nodev",
               "tmpfs", d)
        elif mode == "read-only":
            sh("mount", "--rbind", d, d)
            sh("mount", "-o", "remount,bind,ro", d)
        elif mode == "tmpfs":
            sh("mount", "-t", "tmpfs", "-o", "ro,mode=755,nosuid,nodev",
               "tmpfs", d)
        else:
            die("ProtectHome=%s not emulated" % mode)


# PrivateDevices=yes: the API pseudo devices only.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7),
           "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def private_devices():
    sh("mount", "-t", "tmpfs", "-o", "mode=755,nosuid,noexec", "tmpfs",
       "/dev")
    for name, (major, minor) in DEVICES.items():
        sh("mknod", "-m", "666", "/dev/" + name, "c", str(major), str(minor))
    for d in ("shm", "mqueue"):
        os.mkdir("/dev/" + d)
    sh("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs",
       "/dev/shm")
    for name, target in (("fd", "/proc/self/fd"),
                         ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, "/dev/" + name)


def read_only(keep_writable):
    """ProtectSystem=strict: every mount read-only, except the API file
    systems (/dev, /proc, /sys: other settings cover those) and the
    private /tmp and /var/tmp."""
    for mp in mount_points():
        if any(under(mp, top) for top in ("/dev", "/proc", "/sys")):
            continue
        if mp in keep_writable:
            continue
        sh("mount", "-o", "remount,bind,ro", mp)


def read_only_dirs(dirs):
    """ProtectSystem=yes/full: only these trees read-only."""
    for d in dirs:
        if os.path.isdir(d):
            sh("mount", "--rbind", d, d)
            for mp in mount_points():
                if under(mp, d):
                    sh("mount", "-o", "remount,bind,ro", mp)


def read_write(paths):
    for p in paths:
        if not os.path.isdir(p["path"]):
            if p["optional"]:
                continue
            die("ReadWritePaths=%s does not exist" % p["path"])
        sh("mount", "--bind", p["path"], p["path"])
        sh("mount", "-o", "remount,bind,rw", p["path"])


def kernel_tunables():
    """ProtectKernelTunables= (and ProtectControlGroups=): /sys and
    /proc/sys read-only."""
    for mp in mount_points():
        if under(mp, "/sys"):
            sh("mount", "-o", "remount,bind,ro", mp)
    sh("mount", "--bind", "/proc/sys", "/proc/sys")
    sh("mount", "-o", "remount,bind,ro", "/proc/sys")


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        die("usage: unit_sandbox.py SPEC-JSON -- COMMAND...")
    spec = json.loads(argv[1])
    command = argv[3:]
    if os.geteuid() != 0:
        die("needs root")

    writable = set()
    if spec["private_tmp"]:
        private_tmp(spec["keep_in_tmp"])
        writable |= {"/tmp", "/var/tmp"}
    if spec["protect_home"] != "no":
        protect_home(spec["protect_home"])
    if spec["private_devices"]:
        private_devices()
    if spec["protect_system"] == "strict":
        read_only(writable)
    elif spec["protect_system"] in ("yes", "full"):
        read_only_dirs(["/usr", "/boot", "/efi"] +
                       (["/etc"] if spec["protect_system"] == "full" else []))
    elif spec["protect_system"] != "no":
        die("ProtectSystem=%s not emulated" % spec["protect_system"])
    read_write(spec["read_write"])
    if spec["protect_proc"] != "default":
        sh("mount", "-t", "proc", "-o",
           "nosuid,nodev,noexec,hidepid=" + spec["protect_proc"], "proc",
           "/proc")
    if spec["protect_kernel_tunables"]:
        kernel_tunables()

    os.umask(spec["umask"])
    os.chdir("/")
    setpriv = ["setpriv", "--reuid=" + spec["user"],
               "--regid=" + spec["group"], "--init-groups"]
    if spec["no_new_privs"]:
        setpriv.append("--no-new-privs")
    if spec["bounding_set"] is not None:
        setpriv.append("--bounding-set=" + spec["bounding_set"])
    setpriv += ["--inh-caps=-all", "--"]
    try:
        os.execvp("setpriv", setpriv + command)
    except OSError as e:
        die("exec setpriv: %s" % e)


if __name__ == "__main__":
    main(sys.argv)
