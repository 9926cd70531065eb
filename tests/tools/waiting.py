"""Waiting in tests: polling a condition, and a stand-in for systemd's
notify socket. Shared by the integration and packaging suites."""
import array
import os
import shutil
import socket
import tempfile
import time


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls predicate() until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's, recording
    (sender pid, line) in arrival order. Any user may send to it (a
    service runs as its own user)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="srnotify-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)
        self.sock.setblocking(False)
        self.got = []

    def poll(self):
        ucred = array.array("i", [0, 0, 0])
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(ucred.itemsize * 3))
            except BlockingIOError:
                return self.got
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and \
                        kind == socket.SCM_CREDENTIALS:
                    pid = array.array("i", cdata[:12])[0]
            for line in data.decode("utf-8", "replace").splitlines():
                if line:
                    self.got.append((pid, line))

    def lines(self):
        return [line for _, line in self.poll()]

    def wait(self, line, after=-1, timeout=10.0):
        """Waits for line (exact, or a prefix when it ends in "=") at an
        index > after; returns its index."""
        def match(got):
            return got.startswith(line) if line.endswith("=") else \
                got == line

        def found():
            for i, got in enumerate(self.lines()):
                if i > after and match(got):
                    return i + 1
            return None
        return wait_until(found, timeout=timeout,
                          what="sd_notify %r (got %s)"
                          % (line, self.lines())) - 1

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
