"""Copies libgpubroker.so into the package when a build tree is at hand
($GPUBROKER_BUILD_DIR, or ../build), so `pip install ./python` yields a
self-contained package. Without one, the package loads the system's
libgpubroker.so.0 or $GPUBROKER_LIBRARY at import time."""
import os
import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        here = pathlib.Path(__file__).resolve().parent
        build = pathlib.Path(os.environ.get("GPUBROKER_BUILD_DIR", here.parent / "build"))
        libs = sorted((build / "client").glob("libgpubroker.so.*.*.*"))
        if libs:
            target = pathlib.Path(self.build_lib) / "gpubroker" / "libgpubroker.so"
            shutil.copy2(libs[-1], target)


setup(cmdclass={"build_py": BuildPyWithLibrary})
