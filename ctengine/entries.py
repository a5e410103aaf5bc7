"""Every entry under the sources, accounted for: a candidate file, quarantined or skipped with its reason.

The walk follows symbolic links to folders and files; each folder is walked
once (keyed by device and inode), so a link cycle or a second link to a
folder is skipped with its reason instead of hanging or counting twice.
Only regular files are candidates, and a file is opened only after
``os.stat`` says it is regular and within the size limit: a named pipe, a
socket or a device (``/dev/zero``) named like a slice is quarantined without
being read. Folders are walked, not listed, except a folder named like a
slice (quarantined) and a Zarr store (skipped).
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable

import numpy as np

from .constants import MAX_TIFF_BYTES

#: metadata CSVs larger than this (bytes) are refused before reading
MAX_CSV_BYTES = 256 * 2**20
ARCHIVE_PART = re.compile(r"^(?P<stem>.+\.zip)\.(?P<part>\d{3})$", re.IGNORECASE)
SLICE_SUFFIXES = (".tif", ".tiff")
NOT_USED = "not a slice (.tif/.tiff), a metadata CSV or a zip archive"


class NotRegularError(ValueError):
    """A path that is not a regular file (folder, named pipe, socket, device); the message says which."""


def is_archive_name(name: str) -> bool:
    """True for ``X.zip`` and split parts ``X.zip.NNN`` (any case)."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return base.lower().endswith(".zip") or ARCHIVE_PART.match(base) is not None


def is_slice_name(name: str) -> bool:
    """True for a name ending in ``.tif`` or ``.tiff`` (any case; a trailing ``/`` ignored)."""
    return name.replace("\\", "/").rstrip("/").lower().endswith(SLICE_SUFFIXES)


def file_kind(mode: int) -> str:
    """Words for the kind of a file from its ``st_mode``."""
    for test, words in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"),
                        (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                        (stat.S_ISBLK, "block device")):
        if test(mode):
            return words
    return "special file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a file for binary reading only if it is a regular file.

    The file is opened without blocking (a named pipe does not wait for a
    writer) and checked with ``fstat`` on the open descriptor, so a file
    swapped for a pipe or device after a scan is refused too.

    Raises
    ------
    NotRegularError
        When the path is a folder, named pipe, socket or device.
    OSError
        When it cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularError(f"not a regular file ({file_kind(mode)})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def prefetch_regular(paths: Iterable[str | os.PathLike]) -> None:
    """Ask the kernel to start reading these files (``posix_fadvise(WILLNEED)``), so a series' files come
    off the disk while the first ones are decoded.

    Only regular files of at most :data:`MAX_TIFF_BYTES` are asked for; anything
    else, or a path that cannot be opened, is left to the read that follows,
    which refuses it with its reason.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            with open_regular(path) as handle:
                if os.fstat(handle.fileno()).st_size <= MAX_TIFF_BYTES:
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        except (OSError, NotRegularError):
            continue


def read_regular(path: str | os.PathLike, *, limit: int = MAX_TIFF_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (refused from its size before reading).

    Raises
    ------
    NotRegularError
        When the path is not a regular file.
    ValueError
        When the file is larger than ``limit`` bytes.
    """
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise ValueError(f"file of {size} bytes exceeds the limit of {limit}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"file grew past the limit of {limit} bytes while read")
    return data


def read_regular_into(path: str | os.PathLike, buffer: np.ndarray, *,
                      limit: int = MAX_TIFF_BYTES) -> tuple[memoryview, np.ndarray]:
    """The bytes of a regular file read into ``buffer`` (uint8), with the checks of :func:`read_regular`.

    Reading into memory that is used again saves the page faults of a new
    buffer per file (about 0.2 ms for a 512 KiB slice). Returns a view of
    the file's bytes and the buffer, a larger new one when ``buffer`` was
    too small; the view is valid until the buffer is read into again.
    """
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise ValueError(f"file of {size} bytes exceeds the limit of {limit}")
        if buffer.nbytes <= size:
            buffer = np.empty(size + 1, np.uint8)
        n = handle.readinto(memoryview(buffer))
    if n > size:  # the file grew while read: read it whole, with the limit
        data = read_regular(path, limit=limit)
        return memoryview(data), buffer
    return memoryview(buffer)[:n], buffer


@dataclass
class Walk:
    """What a walk of the sources found, every entry in exactly one list.

    Attributes
    ----------
    slices : list of str
        Regular files named ``.tif``/``.tiff`` within the size limit.
    csvs : list of str
        Regular files named ``.csv`` within :data:`MAX_CSV_BYTES`.
    archives : list of tuple of str
        Zip archives: one file, or the split parts ``X.zip.NNN`` in order.
    quarantined, skipped : list of (str, str)
        (path, reason) of entries refused and of entries deliberately not read.
    folders : list of str
        The source folders as given (absolute).
    around : list of str
        Where metadata beside the sources is looked for: the parent of each
        source folder, the folder of each file source.
    """

    slices: list[str] = field(default_factory=list)
    csvs: list[str] = field(default_factory=list)
    archives: list[tuple[str, ...]] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    around: list[str] = field(default_factory=list)


def walk(sources: Iterable[str | os.PathLike]) -> Walk:
    """Walk folders, archives and files, following links, and sort every entry.

    Parameters
    ----------
    sources : paths
        Folders, zip archives (or their parts) and files.

    Returns
    -------
    Walk

    Raises
    ------
    FileNotFoundError
        For a source that does not exist (a dangling link given as a source included).
    """
    walker = _Walker()
    for source in sources:
        path = os.path.abspath(os.fspath(source))
        if not os.path.exists(path):
            raise FileNotFoundError(f"source {path!r} does not exist")
        walker.walk(path)
    _classify(walker.files, walker.result)
    return walker.result


def printable(path: str) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class _Walker:
    """The state of one walk: what was found, the folders walked (by device and inode) and the source roots."""

    def __init__(self) -> None:
        self.result = Walk()
        self.seen: dict[tuple[int, int], str] = {}
        self.files: list[tuple[str, int]] = []
        self.roots: list[str] = []

    def walk(self, source: str) -> None:
        """Sort a source and, for a folder, everything under it (depth first, names in order)."""
        if printable(source) == source:
            self.result.around.append(os.path.dirname(source))
            self.roots.append(os.path.realpath(source).rstrip(os.sep) + os.sep)
        stack = [source] if self.entry(source, top=True) else []
        if stack:
            self.result.folders.append(source)
        while stack:
            stack.extend(reversed(self.folder(stack.pop())))

    def entry(self, path: str, *, top: bool = False) -> bool:
        """Sort one entry; True for a folder to walk. A source given by the user (``top``) is followed even
        when it is a link to a folder that holds it."""
        result = self.result
        if printable(path) != path:
            result.quarantined.append((printable(path), "name is not valid UTF-8 (rename it); not read"))
            return False
        try:
            info = os.stat(path)
        except OSError as exc:
            result.quarantined.append((path, _stat_failure(path, exc)))
            return False
        if stat.S_ISREG(info.st_mode):
            self.files.append((path, info.st_size))
            return False
        if not stat.S_ISDIR(info.st_mode):
            result.quarantined.append((path, f"not a regular file ({file_kind(info.st_mode)}); not opened"))
            return False
        key = (info.st_dev, info.st_ino)
        if is_slice_name(path):
            result.quarantined.append((path, "a folder named like a slice file; its contents are not read"))
        elif path.lower().endswith(".zarr"):
            result.skipped.append((path, "a Zarr store folder"))
        elif key in self.seen:
            result.skipped.append((path, f"folder already walked as {self.seen[key]} (symbolic link)"))
        elif not top and os.path.islink(path) and self.holds_a_source(os.path.realpath(path)):
            result.skipped.append((path, f"symbolic link to {os.path.realpath(path)}, a folder holding a source "
                                         "(a cycle)"))
        else:
            self.seen[key] = path
            return True
        return False

    def holds_a_source(self, real: str) -> bool:
        """Whether the folder ``real`` (a link's target) contains a source folder."""
        prefix = real.rstrip(os.sep) + os.sep
        return any(root.startswith(prefix) for root in self.roots)

    def folder(self, path: str) -> list[str]:
        """Sort the entries of one folder; return its subfolders to walk, in name order."""
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            self.result.quarantined.append((path, f"unreadable folder ({exc.strerror or exc})"))
            return []
        return [child for child in (os.path.join(path, n) for n in names) if self.entry(child)]


def _stat_failure(path: str, exc: OSError) -> str:
    if os.path.islink(path):
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return "broken symbolic link (its target does not exist)"
    return f"cannot read ({exc.strerror or exc})"


def _classify(files: list[tuple[str, int]], result: Walk) -> None:
    """Sort regular files by name: slices, CSVs, archive parts, or skipped; sizes checked before any read."""
    parts: dict[str, list[str]] = {}
    done: set[str] = set()
    for path, size in files:
        if path in done:
            result.skipped.append((path, "given more than once"))
            continue
        done.add(path)
        part = ARCHIVE_PART.match(path)
        if part or path.lower().endswith(".zip"):
            parts.setdefault(part["stem"] if part else path, []).append(path)
        elif path.lower().endswith(".csv"):
            _within(path, size, MAX_CSV_BYTES, result.csvs, result)
        elif is_slice_name(path):
            _within(path, size, MAX_TIFF_BYTES, result.slices, result)
        else:
            result.skipped.append((path, NOT_USED))
    result.archives.extend(tuple(sorted(parts[stem])) for stem in sorted(parts))


def _within(path: str, size: int, limit: int, into: list[str], result: Walk) -> None:
    if size > limit:
        result.quarantined.append((path, f"file of {size} bytes exceeds the limit of {limit}; not read"))
    else:
        into.append(path)
