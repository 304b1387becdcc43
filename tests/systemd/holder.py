"""A client that lives through the broker's restarts: creates a slot, fills it
with fresh random bytes, and answers commands read line by line from a FIFO,
each answer written as one line to another FIFO.

    python3 holder.py SLOT NBYTES IN_FIFO OUT_FIFO
commands: "check" -> "same" if the view it holds still has its bytes and a
view attached anew through the same client (which reconnects to a restarted
broker and takes its leases again) has them too, else "differ"; "digest" -> the SHA-256 of those bytes; "quit".
"""
import hashlib
import os
import sys

import gpubroker

slot, nbytes, cmd_path, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
client = gpubroker.connect(name="systemd-test-holder")
view = client.create(slot, shape=(nbytes,), dtype="uint8", mode=0o644)
import numpy  # noqa: E402  (after the create: an import error must not hide a broker error)
data = numpy.frombuffer(os.urandom(nbytes), dtype=numpy.uint8)
array = numpy.asarray(view)
array[...] = data
with open(cmd_path) as commands, open(out_path, "w", buffering=1) as out:
    out.write("ready\n")
    for line in commands:
        command = line.strip()
        if command == "check":
            fresh = numpy.asarray(client.attach(slot, readonly=True))
            same = numpy.array_equal(array, data) and numpy.array_equal(fresh, data)
            out.write(("same" if same else "differ") + "\n")
        elif command == "digest":
            out.write(hashlib.sha256(data.tobytes()).hexdigest() + "\n")
        elif command == "quit":
            break
