"""What another user's process needs from this checkout and build, copied
into a world-readable temporary directory: the checkout may sit where other
users cannot read (cloned into /root, mode 0700), and a test that runs a
client as another uid must not depend on where it sits.

    staged = stage_for_other_users(source_dir, library_path, extra_files)
    staged.pythonpath, staged.library, staged.path("peer.py")
"""
import atexit
import os
import shutil
import stat
import tempfile


class Staged:
    def __init__(self, directory):
        self.dir = directory
        self.pythonpath = os.path.join(directory, "python")
        self.library = os.path.join(directory, "libgpubroker.so")

    def path(self, name):
        return os.path.join(self.dir, name)

    def env(self):
        """The variables a client process of another user needs."""
        return {"PYTHONPATH": self.pythonpath, "GPUBROKER_LIBRARY": self.library}


def _readable_by_all(root):
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chmod(p, os.stat(p).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def stage_for_other_users(source_dir, library_path, extra_files=()):
    """Copies the Python package (source_dir/python/gpubroker), the client
    library and `extra_files` (paths; copied by base name) into a new 0755
    directory, removed when this process exits."""
    directory = tempfile.mkdtemp(prefix="gpb-staged-")
    atexit.register(shutil.rmtree, directory, True)
    shutil.copytree(os.path.join(source_dir, "python", "gpubroker"), os.path.join(directory, "python", "gpubroker"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(os.path.realpath(library_path), os.path.join(directory, "libgpubroker.so"))
    for f in extra_files:
        shutil.copy2(f, os.path.join(directory, os.path.basename(f)))
    _readable_by_all(directory)
    return Staged(directory)
