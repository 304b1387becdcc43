"""A trainer and an engine, each with its own connection, through a warm
restart: the engine pins version 1 of a two-buffer tree, the trainer commits
version 2 and then has no buffer free. Answers one line per command read
from a FIFO.

    python3 pinner.py PREFIX IN_FIFO OUT_FIFO
first line: "ready busy" (the trainer finds no buffer before the restart);
"check" -> "<busy|free> <whole|torn> moved <engine version> <trainer version>":
whether the trainer still finds no buffer (the engine's pin carried over the
restart), whether the engine's version 1 still has its bytes and unchanged()
says so, and the versions once the engine moves on and the trainer commits.
"""
import os
import sys

import numpy

import gpubroker

prefix, cmd_path, out_path = sys.argv[1:4]
rng = numpy.random.default_rng(int.from_bytes(os.urandom(8), "little"))
v1, v2, v3 = ({"w": rng.integers(0, 2**62, 65536, dtype=numpy.int64)} for _ in range(3))
trainer = gpubroker.connect(name="pin-trainer")
engine = gpubroker.connect(name="pin-engine")
pub = trainer.publisher(prefix, v1, replace=True)
sub = engine.subscriber(prefix, to="numpy")
held = sub.latest()
assert sub.version == 1, sub.version
pub.update(v2)


def try_update():
    try:
        return pub.update(v3, wait=0)
    except gpubroker.Busy:
        return None


with open(cmd_path) as commands, open(out_path, "w", buffering=1) as out:
    out.write("ready " + ("busy" if try_update() is None else "free") + "\n")
    for line in commands:
        if line.strip() == "check":
            busy = "busy" if try_update() is None else "free"
            whole = "whole" if numpy.array_equal(held["w"], v1["w"]) and sub.unchanged() else "torn"
            sub.latest(timeout=0)
            out.write(f"{busy} {whole} moved {sub.version} {try_update()}\n")
        elif line.strip() == "quit":
            break
