#!/usr/bin/env python3
"""The Prometheus endpoint, scraped with a real HTTP client (urllib) while a
workload of separate client processes runs, and checked against
`gpubrokerctl status --json`: slot, client, lease, allocation and byte gauges;
attach and detach counters and the attach-latency histogram, exactly; and,
as root, refusals by reason (permission, quota) from another uid.

    tests/integration/metrics_test.py BUILD_DIR
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BUILD = os.path.abspath(sys.argv[1])
SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CTL = os.path.join(BUILD, "client", "gpubrokerctl")
# Some clients run as another uid: what they read is staged where they can
# read it (the checkout may be in a directory of mode 0700).
sys.path.insert(0, os.path.join(SOURCE, "tests", "support"))
from staging import stage_for_other_users  # noqa: E402
ENV = {**os.environ, **stage_for_other_users(SOURCE, os.path.join(BUILD, "client", "libgpubroker.so")).env()}
PYTHON = "/usr/bin/python3"
failures = []
passes = []


def check(what, condition, detail=""):
    print(f"{'PASS' if condition else 'FAIL'}: {what}" + ("" if condition else f" ({detail})"))
    (passes if condition else failures).append(what)


def scrape(port, timeout=10):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m:
            values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


def status(sock):
    return json.loads(subprocess.run([CTL, "-s", sock, "status", "--json"], capture_output=True, text=True,
                                     check=True).stdout)


# A client process: `rounds` times, makes a fresh host slot, attaches it in a
# second connection (a message to the broker each time: nothing is mapped
# yet), writes, releases; then holds its connection until stdin closes.
WORKER = r"""
import os, sys, numpy, gpubroker
rounds, tag = int(sys.argv[1]), sys.argv[2]
maker, user = gpubroker.connect(), gpubroker.connect()
for i in range(rounds):
    name = f"w/{tag}/{i}"
    maker.create(name, (4096,), "uint8", mode=0o600, attach=False)
    with user.attach(name) as v:
        numpy.asarray(v)[...] = numpy.frombuffer(os.urandom(4096), dtype=numpy.uint8)
print("done", flush=True)
sys.stdin.read()
"""


def main():
    tmp = tempfile.mkdtemp(prefix="gpb-metrics-")
    os.chmod(tmp, 0o755)
    sock = os.path.join(tmp, "gpubroker.sock")
    log = open(os.path.join(tmp, "log"), "w+")
    broker = subprocess.Popen([os.path.join(BUILD, "broker", "gpubrokerd"), "--socket", sock, "--default-backend",
                               "host", "--metrics-listen", "127.0.0.1:0", "--max-bytes-per-uid", "1MiB"],
                              stderr=log)
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline and broker.poll() is None:
            log.seek(0)
            m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", log.read())
            port = int(m.group(1)) if m else None
            time.sleep(0.02)  # polling for the log line, not a delay
        check("the broker says where its metrics are", port is not None)
        if port is None:
            return
        # Connections that never finish their request (one held the single
        # thread for 30 s): a scrape beside them still answers.
        import socket as sockets
        idle = [sockets.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for conn in idle[:2]:
            conn.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        start = time.monotonic()
        try:
            scrape(port, timeout=5)
            check("a scrape answers beside idle connections", True)
        except OSError as e:
            check("a scrape answers beside idle connections", False, f"{e} after {time.monotonic() - start:.1f} s")
        for conn in idle:
            conn.close()
        rounds, workers = 25, 4
        procs = [subprocess.Popen([PYTHON, "-c", WORKER, str(rounds), str(k)], env={**ENV, "GPUBROKER_SOCKET": sock},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in range(workers)]
        finished = [threading.Event() for _ in procs]
        said = [None] * len(procs)

        def wait_for(k):
            said[k] = procs[k].stdout.readline().strip()
            finished[k].set()
        for k in range(len(procs)):
            threading.Thread(target=wait_for, args=(k,), daemon=True).start()
        scrapes = 0
        while not all(e.is_set() for e in finished):
            scrape(port)  # while the workload runs: every scrape must answer
            scrapes += 1
        check("every worker finished its rounds", said == ["done"] * workers, said)
        check("scraped while the workload ran", scrapes >= 1, scrapes)
        print(f"   ({scrapes} scrapes during the workload)")

        refusals = {}
        if os.geteuid() == 0:
            as_other = ["setpriv", "--reuid=1234", "--regid=1234", "--clear-groups"]
            r = subprocess.run(as_other + [PYTHON, "-c", "import gpubroker; gpubroker.connect().attach('w/0/0')"],
                               env={**ENV, "GPUBROKER_SOCKET": sock}, capture_output=True, text=True)
            check("another uid is refused a 0600 slot", "permission_denied" in r.stderr, r.stderr[-300:])
            r = subprocess.run(as_other + [CTL, "-s", sock, "create", "big", "--bytes", "2MiB"], capture_output=True,
                               text=True)
            check("another uid is refused past its byte quota", "max_bytes_per_uid" in r.stderr, r.stderr)
            refusals = {"permission": 1, "quota": 1}

        # Gauges follow at the broker's next tick: poll until they agree.
        deadline = time.monotonic() + 20
        while True:
            s, m = status(sock), scrape(port)
            gauges = {"slots": m.get("gpubroker_slots"), "leases": m.get("gpubroker_leases"),
                      "allocations": m.get('gpubroker_allocations{backend="host",device="cpu"}'),
                      "bytes_host": m.get('gpubroker_allocated_bytes{backend="host",device="cpu"}'),
                      "clients": m.get("gpubroker_clients"), "closing": m.get("gpubroker_descriptors_closing")}
            # status's own connection is counted; the one before it may still
            # be with the closer at a tick, so nothing waiting is polled for too.
            want = {"slots": s["slots"], "leases": s["leases"], "allocations": s["allocations"],
                    "bytes_host": s["bytes_host"], "clients": s["clients"] - 1, "closing": 0}
            if gauges == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling for the next tick, not a delay
        check("gauges agree with status --json", gauges == want, f"{gauges} vs {want}")
        check("the workload's slots are all there", s["slots"] == rounds * workers, s)
        # Each uid's use against its share, in status and on the page.
        me = os.geteuid()
        usage = {u["uid"]: u for u in s.get("usage", [])}
        mine = usage.get(me, {})
        check("status --json shows this uid's use and its quota",
              mine.get("bytes") == s["bytes_host"] and mine.get("slots") == s["slots"] and
              mine.get("byte_quota") == 1048576, s.get("usage"))
        check("gpubroker_uid_bytes agrees with status",
              m.get(f'gpubroker_uid_bytes{{memory="host",uid="{me}"}}') == mine.get("host_bytes"),
              {k: v for k, v in m.items() if k.startswith("gpubroker_uid")})
        check("gpubroker_uid_slots agrees with status", m.get(f'gpubroker_uid_slots{{uid="{me}"}}') == s["slots"])
        check("the share is on the page: limits.max_bytes_per_uid, over any memory",
              m.get('gpubroker_uid_share_bytes{memory="any"}') == 1048576 and
              m.get('gpubroker_uid_share_bytes{memory="host"}') == 0)
        check("every worker's two connections are counted", gauges["clients"] == 2 * workers, gauges)
        attaches = rounds * workers
        check("gpubroker_attaches_total counts every attach", m.get("gpubroker_attaches_total") == attaches,
              m.get("gpubroker_attaches_total"))
        check("gpubroker_detaches_total counts every release", m.get("gpubroker_detaches_total") == attaches,
              m.get("gpubroker_detaches_total"))
        check("the attach histogram has one sample per attach",
              m.get("gpubroker_attach_duration_seconds_count") == attaches and
              m.get('gpubroker_attach_duration_seconds_bucket{le="+Inf"}') == attaches)
        check("creates counted by outcome", m.get('gpubroker_requests_total{outcome="ok",type="create"}') == attaches)
        check("every detach has a latency sample", m.get('gpubroker_request_duration_seconds_count{type="detach"}') ==
              attaches, m.get('gpubroker_request_duration_seconds_count{type="detach"}'))
        for reason, n in refusals.items():
            check(f"refusals by reason: {reason}", m.get(f'gpubroker_refusals_total{{reason="{reason}"}}') == n,
                  m.get(f'gpubroker_refusals_total{{reason="{reason}"}}'))
        check("nothing waits to be closed", gauges["closing"] == 0, gauges["closing"])
        check("uptime and start time", m.get("gpubroker_uptime_seconds", -1) >= 0 and
              abs(m.get("gpubroker_start_time_seconds", 0) - s["started_ns"] / 1e9) < 1)
        # Anyone may send any message type: unknown ones share one label, so
        # nobody can grow the page with made-up types.
        import socket as sockets
        import struct
        raw = sockets.socket(sockets.AF_UNIX, sockets.SOCK_SEQPACKET)
        raw.connect(sock)
        with open(os.path.join(SOURCE, "common", "wire.h")) as f:
            protocol = int(re.search(r"kProtocolVersion = (\d+);", f.read()).group(1))
        for t in range(200, 260):
            raw.send(struct.pack("<IHHII", 0x4b524247, protocol, t, t, 0))  # header: magic, protocol, type, id, length
            raw.recv(65536)  # the error reply
        raw.close()
        deadline = time.monotonic() + 20
        while 'gpubroker_requests_total{outcome="protocol",type="unknown"}' not in scrape(port) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        page = scrape(port)
        check("unknown message types share one label", not any('type="type ' in k for k in page) and
              page.get('gpubroker_requests_total{outcome="protocol",type="unknown"}', 0) >= 60,
              [k for k in page if "unknown" in k or 'type="type' in k][:5])
        subprocess.run([CTL, "-s", sock, "drain"], check=True)
        deadline = time.monotonic() + 20
        while scrape(port).get("gpubroker_draining") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        check("gpubroker_draining follows drain", scrape(port).get("gpubroker_draining") == 1)
        for p in procs:
            p.stdin.close()
            p.wait()

        # A second broker told to serve metrics where the first one does: it
        # serves without them, says so, and reports itself degraded.
        sock2 = os.path.join(tmp, "second.sock")
        log2 = open(os.path.join(tmp, "log2"), "w+")
        second = subprocess.Popen([os.path.join(BUILD, "broker", "gpubrokerd"), "--socket", sock2,
                                   "--default-backend", "host", "--metrics-listen", f"127.0.0.1:{port}"], stderr=log2)
        try:
            deadline = time.monotonic() + 20
            while subprocess.run([CTL, "-s", sock2, "ls"], capture_output=True).returncode != 0:
                if second.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # polling until it answers
            r = subprocess.run([CTL, "-s", sock2, "status"], capture_output=True, text=True)
            check("a broker whose metrics address is taken still serves, and status says degraded (exit 9)",
                  r.returncode == 9 and ": degraded" in r.stdout and "degraded" in r.stderr, (r.returncode, r.stdout, r.stderr))
            log2.seek(0)
            check("its log says why", "metrics: cannot listen at 127.0.0.1:" in log2.read())
        finally:
            second.terminate()
            second.wait()
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()  # returns early on a failed check it cannot go past; the verdict is here
    print(f"metrics_test: {len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures or not passes else 0)
