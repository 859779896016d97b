"""A directory the kernel refuses to write to, for tests that run as root (where `chmod`
refuses nothing). Plain Python, no jax: the command-line probes in a fresh interpreter
import it too."""

import errno
import os

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def refuse_writes(directory, setattr=setattr) -> None:
    """Make creating or opening for writing anything in `directory` (or below it), and
    making a directory there, raise `PermissionError(EACCES)`, as Linux does for a user
    without write permission on `directory`. `setattr` is `monkeypatch.setattr` in a test
    (undone afterwards), the builtin in a throwaway process.

    It patches `os.open` (which `tempfile` and the lock files use) and `os.mkdir` (which
    `pathlib.Path.mkdir` uses); HDF5 opens files in C, past this.
    """
    directory = os.path.abspath(directory)
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path, itself: bool = False) -> bool:
        path = os.path.abspath(os.fsdecode(path))
        if path == directory:
            return itself
        # As the kernel: a missing directory on the way is ENOENT (left to the real call).
        inner = os.path.commonpath([path, directory]) == directory
        return inner and os.path.isdir(os.path.dirname(path))

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def refusing_open(path, flags, *args, **kwargs):
        if flags & _WRITING and kwargs.get("dir_fd") is None and inside(path, itself=True):
            raise denied(path)  # `itself`: an unnamed file made with O_TMPFILE
        return real_open(path, flags, *args, **kwargs)

    def refusing_mkdir(path, *args, **kwargs):
        if kwargs.get("dir_fd") is None and inside(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    setattr(os, "open", refusing_open)
    setattr(os, "mkdir", refusing_mkdir)
