"""Brokers as "nodes" of their own on one machine, for the peers test and
benchmark (docs/multinode.md): a bridge in one network namespace, each
node's eth0 (10.77.0.<i+1>/24) a veth pair into it, each broker in network,
mount (its own /dev/shm), pid and ipc namespaces made here. Addresses exist
only inside those namespaces. Root only.

    nodes = peer_nodes.Net(4)  ...  Node(net, i, root, key, exports, follow)
"""
import json
import os
import signal
import subprocess
import time

import gpubroker

# Set by the caller: the programs to run.
BROKER = None
CTL = None
STALL_MS = 1500
EXTRA_CONFIG = ""


def run(*args):
    subprocess.run(args, check=True, capture_output=True, text=True)


def until(condition, seconds, what):
    """Waits for `condition()` (it is looked at every 20 ms); False after `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    if what:
        print(f"  gave up waiting for {what} after {seconds} s", flush=True)
    return False


class Net:
    """A bridge in namespace <p>-sw; node i's eth0 (10.77.0.<i+1>/24) in
    namespace <p>-<i>, its other end on the bridge."""

    def __init__(self, nodes):
        self.p = f"gpbpeer{os.getpid() % 100000}"
        self.names = [f"{self.p}-sw"] + [f"{self.p}-{i}" for i in range(nodes)]
        for ns in self.names:
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        sw = self.names[0]
        run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", sw, "link", "set", "br0", "up")
        for i in range(nodes):
            ns = self.ns(i)
            run("ip", "link", "add", f"{self.p}a{i}", "type", "veth", "peer", "name", f"{self.p}b{i}")
            run("ip", "link", "set", f"{self.p}a{i}", "netns", ns, "name", "eth0")
            run("ip", "link", "set", f"{self.p}b{i}", "netns", sw)
            run("ip", "-n", sw, "link", "set", f"{self.p}b{i}", "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")

    def ns(self, i):
        return f"{self.p}-{i}"

    @staticmethod
    def ip(i):
        return f"10.77.0.{i + 1}"

    def link(self, i, up):
        run("ip", "-n", self.ns(i), "link", "set", "eth0", "up" if up else "down")

    def limit(self, i, rate):
        """Limits node i's link to `rate` (tc's notation, e.g. 1gbit) each
        way, as a NIC of that speed would; None lifts it."""
        for ns, dev in ((self.ns(i), "eth0"), (self.names[0], f"{self.p}b{i}")):
            if rate is None:
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                               capture_output=True)
            else:
                run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "512kb", "latency", "50ms")

    def lose_inbound(self, i, lose):
        """Drops every packet the bridge sends node i (what reaches it, not
        what it sends: a link that lost one direction), or stops. A token
        bucket of 8 bits a second, one byte deep: this kernel has no netem."""
        dev = f"{self.p}b{i}"
        if lose:
            run("ip", "netns", "exec", self.names[0], "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                "8bit", "burst", "1600", "limit", "1")
        else:
            run("ip", "netns", "exec", self.names[0], "tc", "qdisc", "del", "dev", dev, "root")

    def close(self):
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Node:
    def __init__(self, net, i, root, key, exports=(), follow=(), fanout=0, stall_ms=STALL_MS):
        self.net, self.i = net, i
        self.dir = os.path.join(root, f"node{i}")
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "gpubroker.sock")
        self.log = os.path.join(self.dir, "broker.log")
        self.config = os.path.join(self.dir, "gpubroker.yaml")
        follows = ", ".join(f"{{tree: {t}, from: '{Net.ip(n)}:7400', mode: '0644'}}" for t, n in follow)
        with open(self.config, "w") as f:
            f.write(f"""socket: {{path: {self.socket}}}
default_backend: host
warm_restart: false
peers:
  listen: '{Net.ip(i)}:7400'
  key_file: {key}
  interface: eth0
  stall_timeout_ms: {stall_ms}
  fanout: {fanout}
  export: [{", ".join(exports)}]
  follow: [{follows}]
metrics: {{listen: '127.0.0.1:9464'}}
{EXTRA_CONFIG}""")
        self.proc = None

    def start(self):
        # Its own mount (a /dev/shm of its own), pid and ipc namespaces,
        # inside its network namespace; killed with unshare.
        log = open(self.log, "a")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns(self.i), "unshare", "--mount", "--pid", "--ipc", "--fork",
             "--kill-child", "--mount-proc", "sh", "-c",
             f"mount -t tmpfs tmpfs /dev/shm && exec {BROKER} --config {self.config}"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        until(lambda: self.ready() or self.proc.poll() is not None, 20, f"node {self.i}'s broker")
        return self.ready()

    def ready(self):
        if self.proc.poll() is not None:
            return False
        try:
            gpubroker.connect(self.socket).close()
            return True
        except gpubroker.Error:
            return False

    def broker_pid(self):
        """The broker's pid here (pid 1 in its own namespace)."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:  # ip netns exec runs unshare
            return int(f.read().split()[0])

    def kill(self):
        os.kill(self.broker_pid(), signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def tail(self):
        return self.text()[-2000:]

    def client(self):
        return gpubroker.connect(self.socket)

    def metric(self, labels):
        """The value of gpubroker_peer{labels} on this node's metrics page (in its network), or None."""
        out = subprocess.run(["ip", "netns", "exec", self.net.ns(self.i), "/usr/bin/python3", "-c",
                              "import urllib.request; print(urllib.request.urlopen("
                              "'http://127.0.0.1:9464/metrics', timeout=5).read().decode())"],
                             capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.startswith("gpubroker_peer{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return None

    def peers(self):
        """`gpubrokerctl peers --json` on this node."""
        out = subprocess.run([CTL, "-s", self.socket, "peers", "--json"], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)


