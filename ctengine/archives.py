"""Zip archives as distributed: one file or split parts, members read without extracting.

Only regular files are opened (see :func:`ctengine.entries.open_regular`),
members are read up to the size limit, and a member that cannot be a slice
stored safely (unsafe name, link, encrypted, unsupported compression, an
archive inside the archive) is named with its reason before any read.
Deflate64 members (method 9, written by Windows Explorer for large archives)
are inflated with the ``inflate64`` package and their CRC-32 checked.
"""
from __future__ import annotations

import copy
import io
import os
import re
import stat
import zipfile
import zlib

import inflate64
import numpy as np

from .constants import MAX_TIFF_BYTES
from .entries import ARCHIVE_PART, is_archive_name, open_regular

__all__ = ["ARCHIVE_PART", "is_archive_name", "member_refusal", "open_archive", "read_member", "unsafe_member"]
#: zip compression method 9, Deflate64 ("enhanced deflate"), decoded with the inflate64 package
ZIP_DEFLATE64 = 9
#: compression methods read: those the standard library decodes and Deflate64
SUPPORTED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, ZIP_DEFLATE64)
#: compressed bytes inflated at a time (bounds the output of one step to about 16 MiB)
_CHUNK = 1 << 14


class _Concatenated(io.RawIOBase):
    """Several part files read as one seekable file (one part, or the split parts of an archive)."""

    def __init__(self, paths: tuple[str, ...]):
        self._files: list = []
        try:
            for path in paths:
                self._files.append(open_regular(path))
        except BaseException:
            self.close()
            raise
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)]).tolist()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._starts[-1]:
            part = int(np.searchsorted(self._starts, self._pos, side="right")) - 1
            handle = self._files[part]
            handle.seek(self._pos - self._starts[part])
            n = handle.readinto(view[done:done + self._starts[part + 1] - self._pos])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


class _Archive(zipfile.ZipFile):
    """A ZipFile that closes the part files it reads from."""

    def __init__(self, parts: tuple[str, ...]):
        self._parts = _Concatenated(parts)
        try:
            super().__init__(io.BufferedReader(self._parts, buffer_size=1 << 20))
        except BaseException:
            self._parts.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._parts.close()


def open_archive(parts: tuple[str, ...]) -> zipfile.ZipFile:
    """Open a zip archive given as one file or as its split parts in order.

    Raises
    ------
    ValueError
        When a part is not a regular file (:class:`ctengine.entries.NotRegularError`).
    zipfile.BadZipFile
        When the parts do not form a zip archive.
    """
    return _Archive(tuple(parts))


def read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """Read one member, refusing one that declares more than the size limit.

    Parameters
    ----------
    archive : zipfile.ZipFile
        The open archive.
    member : str
        The member's name.

    Returns
    -------
    bytes
        The member's contents, CRC-32 checked.

    Raises
    ------
    ValueError
        When the member declares or holds more than the size limit, or cannot be read safely
        (:func:`member_refusal`).
    zipfile.BadZipFile, zlib.error, EOFError
        When its data is damaged (bad CRC-32, a broken compressed stream, truncated).
    """
    info = archive.getinfo(member)
    refusal = member_refusal(info)
    if refusal is not None:
        raise ValueError(refusal)
    if info.file_size > MAX_TIFF_BYTES:
        raise ValueError(f"member declares {info.file_size} bytes, over the limit of {MAX_TIFF_BYTES}")
    if info.compress_type == ZIP_DEFLATE64:
        return _read_deflate64(archive, info)
    with archive.open(info) as handle:
        data = handle.read(MAX_TIFF_BYTES + 1)
    if len(data) > MAX_TIFF_BYTES:
        raise ValueError(f"member holds more than the limit of {MAX_TIFF_BYTES} bytes")
    return data


def _read_deflate64(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Inflate a Deflate64 member: its raw bytes read through zipfile as if stored, then CRC-32 checked."""
    raw = copy.copy(info)
    raw.compress_type, raw.file_size, raw.CRC = zipfile.ZIP_STORED, info.compress_size, None
    inflater, parts, size = inflate64.Inflater(), [], 0
    with archive.open(raw) as handle:
        while not inflater.eof and (chunk := handle.read(_CHUNK)):
            try:
                parts.append(inflater.inflate(chunk))
            except ValueError as exc:  # inflate64 reports a broken stream as ValueError
                raise zipfile.BadZipFile(f"damaged Deflate64 stream in {info.filename!r} ({exc})") from None
            size += len(parts[-1])
            if size > MAX_TIFF_BYTES:
                raise ValueError(f"member holds more than the limit of {MAX_TIFF_BYTES} bytes")
    data = b"".join(parts)
    if not inflater.eof or len(data) != info.file_size:
        raise EOFError(f"Deflate64 stream of {info.filename!r} ends after {len(data)} of {info.file_size} bytes")
    if zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    return data


def unsafe_member(name: str) -> bool:
    """True for a member name that is absolute or climbs out with '..'."""
    name = name.replace("\\", "/")
    return name.startswith("/") or re.match(r"^[A-Za-z]:", name) is not None or ".." in name.split("/")


def member_refusal(info: zipfile.ZipInfo) -> str | None:
    """Why a (non-folder) member cannot be read safely, from its header alone; None when it can.

    Refused: absolute or ``..`` names, members that are not regular files
    (symbolic links, devices), encrypted members, compression methods the
    standard library cannot decode and archives inside the archive.
    """
    if unsafe_member(info.filename):
        return "unsafe member name (absolute or '..')"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and kind != stat.S_IFREG:
        return "not a regular file inside the archive (symbolic link or special file)"
    if info.flag_bits & 0x1:
        return "encrypted member"
    if info.compress_type not in SUPPORTED_COMPRESSION:
        return (f"compression method {info.compress_type} is not supported (read: stored, deflate, Deflate64, "
                "bzip2, lzma)")
    if is_archive_name(info.filename):
        return "zip archive inside a zip archive is not read (extract it and ingest the inner archive)"
    return None
