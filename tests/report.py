#!/usr/bin/env python3
"""Per-binary counts of the last ctest run in a build directory: passed,
failed and skipped cases of each test program (from the line of counts each
one prints last), and every skipped case with its reason.

    tests/report.py BUILD_DIR [--allow-skip REGEX]

Exit 0, or 1 when ctest recorded a failure, when a program that should print
counts printed none, or (with --allow-skip) when a case skipped for a reason
that REGEX does not match: a run that requires a feature fails on a skip.
"""
import argparse
import os
import re
import sys

COUNTS = re.compile(r"^(?:\S+: )?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$", re.M)
GTEST_SKIP = re.compile(r"^\S+:\d+: Skipped\n(.*)\n\[  SKIPPED \] (\S+)", re.M)
PY_SKIP = re.compile(r"^(\S+) \((\S+)\) \.\.\. skipped '(.*)'$", re.M)
SCRIPT_SKIP = re.compile(r"^skipped: (.*)$", re.M)  # a whole script that exits 77


def sections(log):
    """(name, output, outcome) of each test in ctest's LastTest.log."""
    parts = re.split(r"^\d+/\d+ Testing: (\S+)\n", log, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        m = re.search(r"^Output:\n-+\n(.*?)^<end of output>$", body, re.M | re.S)
        outcome = re.search(r"^Test (Passed|Failed)", body, re.M)
        yield name, m.group(1) if m else "", outcome.group(1) if outcome else "Failed"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--allow-skip", help="a regular expression every skip reason must match")
    args = ap.parse_args()
    path = os.path.join(args.build, "Testing", "Temporary", "LastTest.log")
    if not os.path.exists(path):
        sys.exit(f"report.py: no {path}: run ctest in {args.build} first")
    with open(path, errors="replace") as f:
        log = f.read()
    bad = []
    rows = []
    for name, output, outcome in sections(log):
        counts = COUNTS.findall(output)
        skips = [(case, reason) for reason, case in GTEST_SKIP.findall(output)]
        skips += [(ident, reason) for _, ident, reason in PY_SKIP.findall(output)]
        if counts:
            passed, failed, skipped = (int(x or 0) for x in counts[-1])
        else:
            passed = failed = skipped = None
            skips += [("(all)", reason) for reason in SCRIPT_SKIP.findall(output)]
            if skips:
                passed, failed, skipped = 0, 0, len(skips)
        verdict = "failed" if outcome == "Failed" or failed else "skipped" if skipped else "passed"
        rows.append((name, verdict, passed, failed, skipped))
        if outcome == "Failed":
            bad.append(f"{name}: failed")
        for case, reason in skips:
            allowed = args.allow_skip is not None and re.search(args.allow_skip, reason)
            print(f"  skipped {name} {case}: {reason}" + ("" if args.allow_skip is None or allowed
                                                            else "  <- not allowed in this run"))
            if args.allow_skip is not None and not allowed:
                bad.append(f"{name}: {case} skipped ({reason})")
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'test'.ljust(width)}  verdict  passed  failed  skipped")
    for name, verdict, passed, failed, skipped in rows:
        cells = "      -       -        -" if passed is None else f"{passed:8d}{failed:8d}{skipped:9d}"
        print(f"{name.ljust(width)}  {verdict:7s}{cells}")
    total = [sum(r[i] or 0 for r in rows) for i in (2, 3, 4)]
    print(f"cases: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    for b in bad:
        print("NOT OK:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
