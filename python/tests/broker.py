"""A real gpubrokerd for the Python tests, on a temporary socket and registry."""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


class Broker:
    def __init__(self, *extra_args, metrics=False):
        """metrics=True: with its Prometheus endpoint on a free loopback port
        (requests() reads it)."""
        self.dir = tempfile.mkdtemp(prefix="gpbpy-")
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "broker.sock")
        self.registry = f"gpbpy-{os.getpid()}-{id(self) & 0xffff}"
        exe = os.environ["GPUBROKERD"]
        args = ["--log-level", "warn"]
        self.log = None
        if metrics:
            args = ["--log-level", "info", "--metrics-listen", "127.0.0.1:0"]
            self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen([exe, "--socket", self.socket, "--registry", self.registry, *args, *extra_args],
                                     stderr=self.log)
        deadline = time.monotonic() + 10
        while not self._answers():  # polls a condition: the socket accepting
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gpubrokerd did not start")
            time.sleep(0.005)
        self.metrics_port = None
        while metrics and self.metrics_port is None:  # polls for the log line
            self.log.seek(0)
            m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", self.log.read())
            self.metrics_port = int(m.group(1)) if m else None
            if time.monotonic() > deadline:
                raise RuntimeError("gpubrokerd did not say where its metrics are")
            time.sleep(0.005)

    def requests(self):
        """Requests the broker has answered so far, of every type (its metrics)."""
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(r"^gpubroker_requests_total\{[^}]*\} (\S+)$", text, re.M))

    def _answers(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(timeout=30)
        return self.proc.returncode

    def peer(self, *args, uid=None):
        """Starts tests/peer.py in a new interpreter, talking over pipes; as
        user and group `uid` if given (root only)."""
        here = os.path.dirname(os.path.abspath(__file__))
        script, env = os.path.join(here, "peer.py"), None
        as_user = {}
        if uid is not None:
            # What the other user reads is staged where it can read it (the
            # checkout may be in a directory of mode 0700).
            staged = _staged_for_other_users()
            script, env = staged.path("peer.py"), {**os.environ, **staged.env()}
            as_user = {"user": uid, "group": uid, "extra_groups": []}
        return subprocess.Popen([sys.executable, script, self.socket, *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, **as_user)


_STAGED = []


def _staged_for_other_users():
    if not _STAGED:
        here = os.path.dirname(os.path.abspath(__file__))
        source = os.path.abspath(os.path.join(here, "..", ".."))
        sys.path.insert(0, os.path.join(source, "tests", "support"))
        from staging import stage_for_other_users
        _STAGED.append(stage_for_other_users(source, os.environ["GPUBROKER_LIBRARY"], [os.path.join(here, "peer.py")]))
    return _STAGED[0]


def finish(proc):
    """Closes a peer's pipes and returns its exit status."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe:
            pipe.close()
    return proc.wait(timeout=60)
