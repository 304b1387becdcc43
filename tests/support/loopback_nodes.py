"""Brokers on this one machine as peers (docs/multinode.md), talking over
loopback TCP: for the GPU tests and benchmarks of replication, where the
namespaced nodes of peer_nodes.py are not needed (or not allowed).

    node = Node(build, root, "source", key, listen=port, exports=["policy"])
    Node(build, root, "gpu", key, follow=[{"tree": "policy", "from": f"127.0.0.1:{port}"}])
"""
import os
import random
import socket
import subprocess
import time

TIMEOUT_S = 60
_handed_out = set()  # ports free_port() gave: none twice, though not yet bound


def free_port():
    """A loopback TCP port free now, below the kernel's ephemeral range: the
    caller binds it later (a broker, Prometheus), and no connection's
    automatic local port can take it meanwhile, as one from bind(0) could."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    low = min(10000, ephemeral // 2)
    for _ in range(200):
        port = random.randrange(low, ephemeral)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {low}..{ephemeral - 1}")


def until(condition, what):
    """Polls `condition` (a broker's state seen from outside) until true."""
    end = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


class Node:
    def __init__(self, build, root, name, key, listen=None, exports=(), follow=()):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.socket = os.path.join(self.dir, "broker.sock")
        self.log = os.path.join(self.dir, "broker.log")
        config = os.path.join(self.dir, "gpubroker.yaml")
        follows = ", ".join("{" + ", ".join(f"{k}: '{v}'" for k, v in f.items()) + "}" for f in follow)
        with open(config, "w") as f:
            f.write(f"""socket: {{path: {self.socket}}}
registry: {{name: gpbpeersgpu-{os.getpid()}-{name}}}
warm_restart: false
peers:
  {f"listen: '127.0.0.1:{listen}'" if listen else ""}
  key_file: {key}
  interface: lo
  export: [{", ".join(exports)}]
  follow: [{follows}]
""")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([os.path.join(build, "broker", "gpubrokerd"), "--config", config],
                                         stdout=log, stderr=subprocess.STDOUT)
        import gpubroker
        until(lambda: self._answers(gpubroker), f"broker {name}")

    def _answers(self, gpubroker):
        if self.proc.poll() is not None:
            raise SystemExit(f"broker exited ({self.proc.returncode}):\n{self.tail()}")
        try:
            gpubroker.connect(self.socket).close()
            return True
        except gpubroker.Error:
            return False

    def tail(self):
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def exists(client, name):
    """Whether `name` is a slot on the client's broker."""
    import gpubroker
    try:
        client.stat(name)
        return True
    except gpubroker.NotFound:
        return False


def stop_all(nodes, failures):
    """Stops every node; a broker that exits other than 0 is a failure, its log printed."""
    for n in nodes:
        code = n.stop()
        if code != 0:
            failures.append(f"{n.dir}: broker exited {code}")
            print(n.tail())
