#!/usr/bin/env python3
"""Runs every benchmark and prints one table: each figure next to its baseline
measured in the same run, the aim, and whether it is met.

    python3 bench/run.py [--build build] [--out DIR] [--quick] [--gpu auto|on|off] [--no-python]
                         [--only NAME,...]   (e.g. --only live_bench,live_sync_bench)

Each benchmark's own output is printed as it runs and kept in DIR (default
<build>/bench-results). Benchmarks report their figures as lines
"summary<TAB>scenario<TAB>ours<TAB>baseline<TAB>unit<TAB>aim"; micro_bench
(Google Benchmark) writes JSON, read here. An aim is one of:
    ratio<=X   ours / baseline <= X        plus<=X    ours - baseline <= X
    max<X      ours < X                    pct>=X     100 * ours / baseline >= X
    speedup>=X baseline / ours >= X        speedup>1  faster than the baseline
    -          no aim: shown for the record
The exit status is non-zero when a benchmark fails, never for a missed aim:
`--quick` (CI) checks that the runner and every benchmark work, not the numbers.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def python_with_torch():
    for py in (os.environ.get("GPUBROKER_PYTHON"), "/usr/bin/python3", shutil.which("python3")):
        if py and os.path.exists(py) and subprocess.run([py, "-c", "import numpy, torch"],
                                                        capture_output=True).returncode == 0:
            return py
    return None


def have_gpu():
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def run(name, argv, out_dir, timeout, env=None):
    """Runs one benchmark, echoing and keeping its output; returns (ok, text)."""
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    start = time.monotonic()
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})}, cwd=ROOT)
        text, ok = p.stdout, p.returncode == 0
        status = f"exit {p.returncode}"
    except subprocess.TimeoutExpired as e:
        text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        ok, status = False, f"timed out after {timeout} s"
    print("\n".join(line for line in text.splitlines() if not line.startswith("summary\t")), flush=True)
    print(f"=== {name}: {status}, {time.monotonic() - start:.1f} s", flush=True)
    with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
        f.write(text)
    return ok, text


def summary_rows(text):
    rows = []
    for line in text.splitlines():
        if line.startswith("summary\t"):
            _, scenario, ours, base, unit, aim = line.split("\t")
            rows.append((scenario, float(ours), None if base == "-" else float(base), unit, aim))
    return rows


def micro_rows(path):
    with open(path) as f:
        data = json.load(f)
    ns = {b["name"]: b["real_time"] * {"ns": 1, "us": 1e3, "ms": 1e6}[b["time_unit"]]
          for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"}
    rows = []
    for n in (1000, 10000):
        base = ns.get(f"BM_UnorderedMapFind/{n}")
        if f"BM_RegistryLookup/{n}" in ns:
            rows.append((f"registry look-up, {n} live slots, names spread over the table (baseline: "
                         "std::unordered_map)", ns[f"BM_RegistryLookup/{n}"], base, "ns", "max<200"))
        if f"BM_RegistryLookupOneName/{n}" in ns:
            rows.append((f"registry look-up, {n} live slots, one name repeated", ns[f"BM_RegistryLookupOneName/{n}"],
                         base, "ns", "max<200"))
        if f"BM_ClientLookup/{n}" in ns:
            rows.append((f"Client::Lookup -> SlotInfo, {n} live slots", ns[f"BM_ClientLookup/{n}"], base, "ns", "-"))
    if "BM_CachedAttach" in ns:
        rows.append(("attach, cached, host slot (baseline: copying a SlotInfo)", ns["BM_CachedAttach"] / 1e3,
                     ns.get("BM_SlotInfoCopy", 0) / 1e3 or None, "us", "max<1"))
    return rows


def verdict(ours, base, aim):
    """(comparison text, verdict) for a row."""
    m = re.fullmatch(r"(ratio|plus|max|pct|speedup)(<=|>=|<|>)([0-9.]+)", aim)
    if base and ours:
        comparison = {"plus": f"{ours - base:+.1f}", "pct": f"{100 * ours / base:.1f}%",
                      "speedup": f"{base / ours:.1f}x faster"}.get(m.group(1) if m else "", f"{ours / base:.2f}x")
    else:
        comparison = ""
    if not m:
        return comparison, ""
    kind, op, limit = m.group(1), m.group(2), float(m.group(3))
    if kind != "max" and not (base and ours):
        return comparison, "no figure" if not ours else "no baseline"
    value = {"ratio": lambda: ours / base, "plus": lambda: ours - base, "max": lambda: ours,
             "pct": lambda: 100 * ours / base, "speedup": lambda: base / ours}[kind]()
    ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit}[op]
    return comparison, "met" if ok else "MISSED"


def fmt(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    p.add_argument("--gpu", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--no-python", action="store_true", help="skip the Python benchmarks")
    p.add_argument("--only", help="run only these benchmarks (comma-separated names)")
    a = p.parse_args()
    build = os.path.abspath(a.build)
    out = a.out or os.path.join(build, "bench-results")
    os.makedirs(out, exist_ok=True)
    gpu = have_gpu() if a.gpu == "auto" else a.gpu == "on"
    py = None if a.no_python else python_with_torch()
    env = {"GPUBROKERD": f"{build}/broker/gpubrokerd", "GPUBROKER_LIBRARY": f"{build}/client/libgpubroker.so"}
    bench = lambda name: os.path.join(build, "bench", name)  # noqa: E731

    rows, failed = [], []

    only = set(a.only.split(",")) if a.only else None

    def take(name, argv, timeout, extra_env=None):
        if only is not None and name not in only:
            return
        ok, text = run(name, argv, out, timeout, extra_env)
        if not ok:
            failed.append(name)
        rows.extend(summary_rows(text))

    take("control_bench", [bench("control_bench"), "--iterations", "500" if a.quick else "20000"], 300)
    if only is not None and "micro_bench" not in only:
        pass
    elif os.path.exists(bench("micro_bench")):
        json_path = os.path.join(out, "micro_bench.json")
        ok, _ = run("micro_bench", [bench("micro_bench"), f"--benchmark_out={json_path}", "--benchmark_out_format=json",
                                    *(["--benchmark_min_time=0.001"] if a.quick else [])], out, 600)
        if ok:
            rows.extend(micro_rows(json_path))
        else:
            failed.append("micro_bench")
    else:
        print("\n=== micro_bench: not built (Google Benchmark missing: apt install libbenchmark-dev)")
    take("scale_bench", [bench("scale_bench"), *(["--quick"] if a.quick else [])], 600)
    take("live_bench", [bench("live_bench"), *(["--quick"] if a.quick else [])], 300)
    if gpu:
        take("gpu_bench", [bench("gpu_bench"), *(["--quick"] if a.quick else [])], 900)
    if py:
        if gpu:
            take("python_attach_bench", [py, os.path.join(HERE, "python_attach_bench.py"), "5" if a.quick else "50"],
                 600, env)
        device = ["--device", "cuda"] if gpu else ["--device", "cpu", "--tensors", "20" if a.quick else "200"]
        take("weight_sync_bench", [py, os.path.join(HERE, "weight_sync_bench.py"), *device], 900, env)
        take("live_sync_bench", [py, os.path.join(HERE, "live_sync_bench.py"), *device,
                                 *(["--quick"] if a.quick else [])], 900, env)
        take("peers_bench", [py, os.path.join(HERE, "peers_bench.py"), build, *(["--quick"] if a.quick else [])],
             900, env)
        if gpu:
            take("peers_gpu_bench", [py, os.path.join(HERE, "peers_gpu_bench.py"), build,
                                     *(["--quick"] if a.quick else [])], 600, env)
    elif not a.no_python:
        print("\n=== Python benchmarks: skipped (no interpreter with numpy and torch)")

    machine = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip() if gpu else "no GPU"
    print(f"\n=== gpubroker benchmarks, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {machine}"
          f"{', quick run' if a.quick else ''}")
    width = max([len(r[0]) for r in rows] + [8])
    print(f"{'scenario':{width}} {'ours':>9} {'baseline':>9} {'unit':5} {'vs baseline':>13} {'aim':>12}  verdict")
    missed = 0
    for scenario, ours, base, unit, aim in rows:
        comparison, v = verdict(ours, base, aim)
        missed += v == "MISSED"
        print(f"{scenario:{width}} {fmt(ours):>9} {fmt(base):>9} {unit:5} {comparison:>13} {aim:>12}  {v}")
    print(f"{len(rows)} figures, {missed} aims missed; outputs in {out}")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
