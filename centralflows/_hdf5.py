"""An HDF5 file seen from outside HDF5: its superblock, its writer's lock, and safe opening.

What a run file needs to survive its writer being killed, two writers racing, or the file
being cut short, without HDF5's single-writer/multiple-reader (SWMR) machinery hanging or
refusing:

- **The writer's lock**: a writer holds an exclusive `flock` on `.<name>.lock` beside the
  file for as long as it writes. The kernel releases it when the writer dies, even by
  SIGKILL, so "is a writer alive?" has a reliable answer, and the file names its writer.
- **The superblock** (the first 48 bytes of a file written with `libver="latest"`) holds
  the status flags that HDF5 sets while a file is open for writing, and the size HDF5
  expects the file to have. A writer killed in SWMR mode leaves the flags set, and HDF5
  then refuses a plain `h5py.File(path, "r")`; with no writer alive they are stale and
  are cleared here (what `h5clear -s` does).
- **Bounded SWMR reads**: a SWMR reader retries a metadata read whose checksum fails (the
  writer may be rewriting it) with exponential back-off, by default 100 times: more than
  half an hour on a file that is simply corrupt. Reads here allow few attempts.
"""

import contextlib
import ctypes
import datetime
import errno
import fcntl
import io
import json
import os
import pathlib
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import h5py

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SUPERBLOCK_BYTES = 48  # version 2 or 3 with 8-byte offsets: 12 + 4 addresses + checksum
_FLAGS_BYTE = 11
_SWMR_READ_ATTEMPTS = 24  # worst case about 2^24 ns of back-off in all: 20 ms
_LOCK_WAIT = 1.0  # seconds a writer waits for readers' brief shared locks to go


class WriterBusyError(RuntimeError):
    """Raised when a run file is being written by another live process."""


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum of HDF5's metadata."""
    m = 0xFFFFFFFF
    a = b = c = (0xDEADBEEF + len(data) + initval) & m
    words = lambda i: (int.from_bytes(data[i + j : i + j + 4], "little") for j in (0, 4, 8))
    i = 0
    while len(data) - i > 12:
        x, y, z = words(i)
        a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
        a = ((a - c) & m) ^ _rot(c, 4)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 6)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 8)
        b = (b + a) & m
        a = ((a - c) & m) ^ _rot(c, 16)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 19)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 4)
        b = (b + a) & m
        i += 12
    if i == len(data):
        return c
    tail = data[i:] + bytes(12 - (len(data) - i))
    x, y, z = (int.from_bytes(tail[j : j + 4], "little") for j in (0, 4, 8))
    a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
    c = ((c ^ b) - _rot(b, 14)) & m
    a = ((a ^ c) - _rot(c, 11)) & m
    b = ((b ^ a) - _rot(a, 25)) & m
    c = ((c ^ b) - _rot(b, 16)) & m
    a = ((a ^ c) - _rot(c, 4)) & m
    b = ((b ^ a) - _rot(a, 14)) & m
    c = ((c ^ b) - _rot(b, 24)) & m
    return c


class Superblock:
    """The fields of a version-2/3 superblock that matter here."""

    def __init__(self, raw: bytes, size: int):
        self.raw = raw
        self.size = size  # of the file, in bytes
        self.flags = raw[_FLAGS_BYTE]
        self.stored_eof = struct.unpack_from("<Q", raw, 12 + 2 * 8)[0]

    def patched(self, *, flags: int, eof: int | None = None) -> bytes:
        """The superblock with other status flags (and end-of-file address), checksummed."""
        raw = bytearray(self.raw)
        raw[_FLAGS_BYTE] = flags
        if eof is not None:
            struct.pack_into("<Q", raw, 12 + 2 * 8, eof)
        raw[44:48] = lookup3(bytes(raw[:44])).to_bytes(4, "little")
        return bytes(raw)


def read_superblock(path: pathlib.Path) -> Superblock | str:
    """The file's superblock, or a sentence saying why it has none that can be read."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(_SUPERBLOCK_BYTES)
    if size == 0:
        return "it is empty (0 bytes)"
    if not raw.startswith(_SIGNATURE[: len(raw)]) or len(raw) < len(_SIGNATURE):
        if _SIGNATURE.startswith(raw):
            return f"it is cut short inside the HDF5 signature ({size} bytes)"
        return "it does not start with the HDF5 signature"
    if raw[8] not in (2, 3) or raw[9] != 8 or raw[10] != 8:
        return f"its superblock has version {raw[8]} (run files have version 3)"
    if len(raw) < _SUPERBLOCK_BYTES:
        return f"it is cut short inside its superblock (the first 48 bytes): {size} bytes"
    if lookup3(raw[:44]) != int.from_bytes(raw[44:48], "little"):
        return "its superblock (the first 48 bytes) fails its checksum: it is corrupt"
    return Superblock(raw, size)


def _lock_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.lock")


def _describe_holder(lock: pathlib.Path) -> str:
    try:
        info = json.loads(lock.read_text())
        if info["pid"] == os.getpid() and info["host"] == socket.gethostname():
            return f"this process, pid {info['pid']}, through another writer still open"
        return (
            f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']!r}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say which"


def _same_file(fd: int, path: pathlib.Path) -> bool:
    """Whether `fd` is still the file at `path` (a releasing holder unlinks it)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class WriterLock:
    """The exclusive lock a run file's writer holds on `.<name>.lock` while it writes."""

    def __init__(self, fd: int, lock: pathlib.Path):
        """Private: use [`WriterLock.acquire`][]."""
        self._fd: int | None = fd
        self.lock = lock

    @classmethod
    def acquire(cls, path: pathlib.Path) -> "WriterLock":
        """Lock `path` for writing, or raise `WriterBusyError` naming the live writer."""
        lock = _lock_path(path)
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:  # perhaps a reader, for milliseconds
                    time.sleep(0.05)
                    continue
                raise WriterBusyError(
                    f"Run file {str(path)!r} is being written by another process "
                    f"({_describe_holder(lock)}); wait for it to finish or stop it (its "
                    f"lock: {str(lock)!r})."
                ) from None
            if not _same_file(fd, lock):  # released and unlinked meanwhile: again
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            return cls(fd, lock)

    def release(self) -> None:
        """Unlock (and remove the lock file); releasing twice is harmless."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock.unlink()
            os.close(self._fd)
            self._fd = None


def live_writer(path: pathlib.Path) -> str | None:
    """A description of the live process writing `path`, or `None` if there is none."""
    lock = _lock_path(path)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:  # unreadable: assume the worst
        return _describe_holder(lock)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(lock)
    finally:
        os.close(fd)
    return None


def clear_stale_flags(path: pathlib.Path) -> bool:
    """Clear the "open for writing" flags that a killed writer left in `path`'s superblock,
    if no writer is alive and the file may be written; `True` if they are clear now."""
    superblock = read_superblock(path)
    if isinstance(superblock, str) or superblock.flags == 0:
        return True
    lock = _lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # e.g. a directory we may not write: leave the file as it is
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a live writer: the flags are its own
            return False
        superblock = read_superblock(path)  # again, now that no writer can start
        if isinstance(superblock, str) or superblock.flags == 0:
            return True
        try:
            with path.open("r+b") as f:
                f.write(superblock.patched(flags=0))
        except PermissionError:
            return False
        with contextlib.suppress(BlockingIOError):  # no one else: tidy the lock away
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, lock):
                lock.unlink()
        return True
    finally:
        os.close(fd)


class _PatchedReader(io.RawIOBase):
    """A read-only view of a file with another superblock `head`: one that says the file is
    closed (and, to read a file cut short, as long as it is): HDF5 then opens it without
    SWMR (one read attempt, no back-off), and a read past the end fails at once."""

    def __init__(self, path: pathlib.Path, head: bytes):
        self._file = path.open("rb")
        self._head = head

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        start = self._file.tell()
        view = memoryview(buffer).cast("B")
        count = self._file.readinto(view)
        if start < len(self._head) and count:
            end = min(len(self._head), start + count)
            view[: end - start] = self._head[start:end]
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


@contextlib.contextmanager
def open_patched(
    path: pathlib.Path, superblock: Superblock, *, whole: bool = False
) -> Iterator[h5py.File]:
    """Open `path` read-only as if no writer had left it open (nothing is written to it);
    `whole=True`: also as if it were as long as HDF5 expects (to read what survives of a
    file cut short)."""
    head = superblock.patched(flags=0, eof=superblock.size if whole else None)
    with _PatchedReader(path, head) as raw, h5py.File(raw, "r") as file:
        yield file


def _set_read_attempts(fapl: h5py.h5p.PropFAID, attempts: int) -> None:
    """`H5Pset_metadata_read_attempts`, which h5py does not wrap, through the HDF5 library
    h5py loaded (on Linux; elsewhere HDF5's default stays)."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split()[-1] for line in maps if "libhdf5" in line and "_hl" not in line}
        for name in names:
            setter = ctypes.CDLL(name).H5Pset_metadata_read_attempts
            setter.argtypes = [ctypes.c_int64, ctypes.c_uint]
            if setter(fapl.id, attempts) >= 0:
                return
    except (OSError, AttributeError):
        pass


def open_swmr(path: pathlib.Path) -> h5py.File:
    """Open `path` for reading while a writer writes it (SWMR), with few read attempts."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    _set_read_attempts(fapl, _SWMR_READ_ATTEMPTS)
    flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))


def is_disk_full(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) says that the disk is full."""
    while error is not None:
        text = str(error)
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            "No space left on device" in text or "errno = 28" in text
        ):
            return True
        error = error.__cause__ or error.__context__
    return False
