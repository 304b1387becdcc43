"""Creates SLOT (NBYTES, mode 0644) in a fresh process, fills it with fresh
random bytes, prints their SHA-256 and exits; the slot outlives it."""
import hashlib
import os
import sys

import numpy

import gpubroker

slot, nbytes = sys.argv[1], int(sys.argv[2])
data = numpy.frombuffer(os.urandom(nbytes), dtype=numpy.uint8)
with gpubroker.connect(name="systemd-test-fill") as client:
    numpy.asarray(client.create(slot, shape=(nbytes,), dtype="uint8", mode=0o644))[...] = data
print(hashlib.sha256(data.tobytes()).hexdigest())
