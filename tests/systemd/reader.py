"""Attaches SLOT read-only in a fresh process and prints the SHA-256 of its bytes."""
import hashlib
import sys

import numpy

import gpubroker

with gpubroker.connect(name="systemd-test-reader") as client:
    view = client.attach(sys.argv[1], readonly=True)
    print(hashlib.sha256(numpy.asarray(view).tobytes()).hexdigest())
