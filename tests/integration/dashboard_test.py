#!/usr/bin/env python3
"""deploy/grafana/gpubroker-dashboard.json against a real Prometheus scraping a
real broker on loopback: every panel's query is evaluated by Prometheus
itself, as Grafana would ask it, and what the broker did shows in the panels
(the slots made, a refusal while draining, attaches, memory held). Every
metric a query names must be on the broker's /metrics page and in
docs/operations.md.

    tests/integration/dashboard_test.py BUILD_DIR
Exits 77 (skipped) without the prometheus binary, unless CI is set.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

BUILD = os.path.abspath(sys.argv[1])
SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CTL = os.path.join(BUILD, "client", "gpubrokerctl")
DASHBOARD = os.path.join(SOURCE, "deploy", "grafana", "gpubroker-dashboard.json")
sys.path.insert(0, os.path.join(SOURCE, "tests", "support"))
from loopback_nodes import free_port  # noqa: E402
failures, passes = [], []


def check(what, condition, detail=""):
    print(f"{'PASS' if condition else 'FAIL'}: {what}" + ("" if condition else f" ({detail})"))
    (passes if condition else failures).append(what)


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def until(what, condition, seconds=60):
    """Polls `condition` (a function) until it is true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # polling a condition, not a delay
    check(what, False, f"not within {seconds} s")
    return None


def ctl(sock, *args):
    return subprocess.run([CTL, "--socket", sock, *args], capture_output=True, text=True)


def queries(dashboard):
    """(panel title, expr) for every target, with Grafana's variables as
    Grafana fills them for "all brokers" and a 20 s rate window."""
    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "20s").replace('"$instance"', '".*"')
            yield p["title"], expr


def main():
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("prometheus is not installed (.ci/deps --tests installs it)")
        sys.exit(1 if os.environ.get("CI") else 77)
    dashboard = json.load(open(DASHBOARD))
    check("the dashboard has panels, each with a query",
          dashboard["panels"] and all(p.get("targets") for p in dashboard["panels"]))
    operations = open(os.path.join(SOURCE, "docs", "operations.md")).read()

    tmp = tempfile.mkdtemp(prefix="gpubroker-dashboard-")
    sock = os.path.join(tmp, "gpubroker.sock")
    log = open(os.path.join(tmp, "broker.log"), "w+")
    broker = subprocess.Popen([os.path.join(BUILD, "broker", "gpubrokerd"), "--socket", sock, "--default-backend",
                               "host", "--metrics-listen", "127.0.0.1:0"], stderr=log)
    prom = None
    try:
        def metrics_port():
            log.seek(0)
            m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", log.read())
            return int(m.group(1)) if m else None
        port = until("the broker says where its metrics are", metrics_port, 20)
        if port is None:
            return
        prom_port = free_port()
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: gpubroker\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
        prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/tsdb",
                                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prometheus.log"), "w"))
        api = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

        at = {}  # once set, every query is evaluated at that instant

        def query(expr):
            try:
                return json.loads(get(api + urllib.parse.quote(expr) +
                                      (f"&time={at['time']:.3f}" if at else "")))
            except (OSError, ValueError) as e:
                return {"status": "error", "error": str(e)}

        def scalar(expr):
            r = query(expr)
            result = r.get("data", {}).get("result", [])
            return float(result[0]["value"][1]) if r.get("status") == "success" and result else None

        # Two scrapes before anything happens, so rates see the change.
        until("Prometheus scrapes the broker", lambda: (scalar("count_over_time(gpubroker_slots[1m])") or 0) >= 2)
        # What a day of use does, twice, with a scrape between, so that each
        # counter and histogram has a rise inside the rate window.
        for phase in (1, 2):
            for i in range(3):
                r = ctl(sock, "create", f"dash/p{phase}s{i}", "--bytes", "512KiB")
                check(f"create dash/p{phase}s{i}", r.returncode == 0, r.stderr)
            waited = ctl(sock, "wait", f"dash/p{phase}s0", "--version", "0", "--timeout", "0")
            check(f"an attach (wait attaches), phase {phase}", waited.returncode == 0, waited.stderr)
            ctl(sock, "drain")
            refused = ctl(sock, "create", "dash/refused", "--bytes", "16")
            check(f"a create while draining is refused (exit 9), phase {phase}", refused.returncode == 9,
                  refused.stderr)
            ctl(sock, "drain", "--off")
            ctl(sock, "show", "dash/missing")  # an error outcome
            # The counters move at once, the gauges at the broker's next tick.
            # Wait for a scrape that holds every step of the phase, the last
            # (the show) included: the rates below see only the rise from
            # phase 1 to phase 2, so a scrape taken before the show would
            # leave its error and its latency out of the window.
            until(f"Prometheus sees phase {phase}",
                  lambda: scalar('gpubroker_refusals_total{reason="draining"}') == phase and
                  scalar('sum(gpubroker_requests_total{type="stat",outcome="not_found"})') == phase and
                  scalar('sum(gpubroker_request_duration_seconds_count{type="stat"})') == phase and
                  scalar("gpubroker_slots") == 3 * phase and scalar("gpubroker_draining") == 0)
        # The panels' rate windows end where phase 2 was seen whole, however
        # long the checks below take on a slow machine.
        at["time"] = time.time()
        # Every metric a query names is on the page (after use: labelled
        # families appear with their first sample) and documented.
        page = get(f"http://127.0.0.1:{port}/metrics")
        names = set(re.findall(r"^(gpubroker_[a-z_]+)", page, re.M))
        for title, expr in queries(dashboard):
            for metric in set(re.findall(r"gpubroker_[a-z_]+", expr)):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                check(f"{title}: {metric} is on the metrics page", metric in names, sorted(names))
                check(f"{title}: {base} is in docs/operations.md", f"`{base}`" in operations)

        results = {}
        for title, expr in queries(dashboard):
            r = query(expr)
            ok = r.get("status") == "success"
            check(f"{title}: Prometheus evaluates {expr}", ok, r.get("error"))
            series = r.get("data", {}).get("result", []) if ok else []
            values = [float(s["value"][1]) for s in series]
            results.setdefault(title, []).extend(zip([s["metric"] for s in series], values))
            if 'backend=~"cuda_.*"' in expr:
                check(f"{title}: no series on a host-only broker", series == [], series)
            else:
                check(f"{title}: has data", bool(series) and all(math.isfinite(v) for v in values), series)
        by = {title: {json.dumps(m, sort_keys=True): v for m, v in rows} for title, rows in results.items()}

        def one(title):
            rows = list(by.get(title, {}).values())
            return rows[0] if len(rows) == 1 else None
        check("Slots shows the six slots", one("Slots") == 6, by.get("Slots"))
        check("Draining shows 0 after drain --off", one("Draining") == 0, by.get("Draining"))
        check("Host memory held counts the 3 MiB", (one("Host memory held") or 0) >= 6 * 524288,
              by.get("Host memory held"))
        refusals = {json.loads(k).get("reason"): v for k, v in by.get("Refusals per second, by reason", {}).items()}
        check("Refusals by reason shows the draining refusal", refusals.get("draining", 0) > 0, refusals)
        errors = {json.loads(k).get("outcome"): v for k, v in
                  by.get("Errors per second, by type and code", {}).items()}
        check("Errors shows the not_found from show", errors.get("not_found", 0) > 0, errors)
        versions = [json.loads(k).get("version") for k in by.get("Version", {})]
        want = json.loads(ctl(sock, "status", "--json").stdout)["version"]
        check("Version carries the broker's version", versions == [want], versions)
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        broker.terminate()
        broker.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
