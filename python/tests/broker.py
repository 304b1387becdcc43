"""A real gpubrokerd for the Python tests, on a temporary socket and registry."""
import os
import socket
import subprocess
import sys
import tempfile
import time


class Broker:
    def __init__(self, *extra_args):
        self.dir = tempfile.mkdtemp(prefix="gpbpy-")
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "broker.sock")
        self.registry = f"gpbpy-{os.getpid()}-{id(self) & 0xffff}"
        exe = os.environ["GPUBROKERD"]
        self.proc = subprocess.Popen([exe, "--socket", self.socket, "--registry", self.registry,
                                      "--log-level", "warn", *extra_args])
        deadline = time.monotonic() + 10
        while not self._answers():  # polls a condition: the socket accepting
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gpubrokerd did not start")
            time.sleep(0.005)

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
        as_user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
        return subprocess.Popen([sys.executable, os.path.join(here, "peer.py"), self.socket, *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, **as_user)


def finish(proc):
    """Closes a peer's pipes and returns its exit status."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe:
            pipe.close()
    return proc.wait(timeout=60)
