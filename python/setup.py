"""Copies libgpubroker.so into the package when a build tree is at hand
($GPUBROKER_BUILD_DIR, or ../build), so `pip install ./python` yields a
self-contained package. Without one, the package loads the system's
libgpubroker.so.0 or $GPUBROKER_LIBRARY at import time."""
import os
import pathlib
import shutil

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 has its own; before that it comes with `wheel`
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        here = pathlib.Path(__file__).resolve().parent
        build = pathlib.Path(os.environ.get("GPUBROKER_BUILD_DIR", here.parent / "build"))
        libs = sorted((build / "client").glob("libgpubroker.so.*.*.*"))
        if libs:
            target = pathlib.Path(self.build_lib) / "gpubroker" / "libgpubroker.so"
            shutil.copy2(libs[-1], target)


class PlatformWheel(bdist_wheel):
    """The package carries a compiled library: its wheel is for this
    platform (py3-none-linux_x86_64, say), not py3-none-any, and installs
    under platlib."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True  # the bundled library: build into platlib, not purelib


setup(distclass=BinaryDistribution, cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel})
