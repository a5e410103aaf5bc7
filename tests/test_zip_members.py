"""Zip members that cannot be read are quarantined with their reason; the rest of their series is stored."""
import io
import struct
import zipfile
import zlib

import inflate64
import numpy as np
import pytest
import tifffile
import zarr

import ctengine
from ctengine.archives import member_refusal, open_archive, read_member
from conftest import SMALL

SERIES = "COVID-CTset/normal1/patient2/SR_2"


def tiff(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 5000, SMALL, dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def member(instance: int) -> str:
    return f"{SERIES}/IM{instance:05d}.tif"


def headers(data: bytes, name: str) -> tuple[int, int]:
    """Offsets of the local header and of the central directory record of member ``name``."""
    encoded = name.encode()
    central = next(i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)
                   and data[i + 46:i + 46 + len(encoded)] == encoded)
    return struct.unpack_from("<I", data, central + 42)[0], central


def patch(data: bytearray, name: str, *, flags: int | None = None, method: int | None = None,
          crc: int | None = None, size: int | None = None) -> None:
    """Rewrite fields of member ``name`` in both its local header and its central directory record."""
    local, central = headers(bytes(data), name)
    for value, fmt, at_local, at_central in ((flags, "<H", 6, 8), (method, "<H", 8, 10), (crc, "<I", 14, 16),
                                             (size, "<I", 22, 24)):
        if value is not None:
            struct.pack_into(fmt, data, local + at_local, value)
            struct.pack_into(fmt, data, central + at_central, value)


def payload(data: bytes, name: str) -> int:
    """Offset of member ``name``'s compressed data."""
    local, _ = headers(data, name)
    name_length, extra_length = struct.unpack_from("<HH", data, local + 26)
    return local + 30 + name_length + extra_length


def deflate64(raw: bytes) -> bytes:
    deflater = inflate64.Deflater()
    return deflater.deflate(raw) + deflater.flush()


def build(path) -> tuple[dict[int, bytes], dict[int, str]]:
    """A series of good members and damaged ones; return the good members' files and the bad ones' reasons."""
    files = {i: tiff(i) for i in range(1, 10)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i, raw in files.items():
            if i in (6, 8):  # Deflate64: its compressed stream stored, the header patched below
                archive.writestr(zipfile.ZipInfo(member(i)), deflate64(raw), compress_type=zipfile.ZIP_STORED)
            else:
                archive.writestr(member(i), raw)
    data = bytearray(path.read_bytes())
    start = payload(bytes(data), member(3))
    data[start + 20:start + 60] = bytes(b ^ 0xFF for b in data[start + 20:start + 60])  # damaged deflate stream
    patch(data, member(4), crc=zlib.crc32(files[4]) ^ 1)                                # CRC mismatch
    patch(data, member(5), flags=0x1)                                                   # encrypted
    for i in (6, 8):
        patch(data, member(i), method=9, crc=zlib.crc32(files[i]), size=len(files[i]))
    start = payload(bytes(data), member(8))
    data[start + 10:start + 40] = bytes(b ^ 0x55 for b in data[start + 10:start + 40])  # damaged Deflate64 stream
    patch(data, member(7), method=99)                                                   # AES, not read
    path.write_bytes(bytes(data))
    good = {i: files[i] for i in (1, 2, 6, 9)}
    return good, {3: "decompress|invalid|Error -3", 4: "Bad CRC-32", 5: "encrypted member",
                  7: "compression method 99 is not supported", 8: "damaged Deflate64 stream"}


def test_good_members_read_bit_exact_and_bad_ones_refused_with_reason(tmp_path):
    good, bad = build(tmp_path / "a.zip")
    with open_archive((str(tmp_path / "a.zip"),)) as archive:
        for i, raw in good.items():
            assert read_member(archive, member(i)) == raw
        for i, reason in bad.items():
            with pytest.raises((ValueError, zipfile.BadZipFile, zlib.error, EOFError), match=reason):
                read_member(archive, member(i))


def test_deflate64_member_is_read_and_checked(tmp_path):
    good, _ = build(tmp_path / "a.zip")
    with open_archive((str(tmp_path / "a.zip"),)) as archive:
        info = archive.getinfo(member(6))
        assert info.compress_type == 9 and member_refusal(info) is None
        assert read_member(archive, member(6)) == good[6]


def test_deflate64_member_with_a_wrong_crc_is_refused(tmp_path):
    good, _ = build(tmp_path / "a.zip")
    data = bytearray((tmp_path / "a.zip").read_bytes())
    patch(data, member(6), crc=zlib.crc32(good[6]) ^ 1)
    (tmp_path / "b.zip").write_bytes(bytes(data))
    with open_archive((str(tmp_path / "b.zip"),)) as archive:
        with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
            read_member(archive, member(6))


def test_one_bad_member_never_costs_its_series(tmp_path, client):
    src = tmp_path / "src"
    src.mkdir()
    good, bad = build(src / "COVID-CTset.zip")
    report = ctengine.ingest([src], tmp_path / "s.zarr", client=client, progress=False, shape=SMALL)
    assert not report.failed_series and report.slices == len(good)
    stored = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["patient2/SR_2/0"][:]
    expected = [tifffile.imread(io.BytesIO(good[i])) for i in sorted(good)]
    assert np.array_equal(stored, np.stack(expected))
    table = ctengine.open_store(tmp_path / "s.zarr").quarantine
    found = dict(zip(table["location"], table["reason"]))
    archive = src / "COVID-CTset.zip"
    assert set(found) == {f"{archive}::{member(i)}" for i in bad}
    for i, reason in bad.items():
        assert any(part in found[f"{archive}::{member(i)}"] for part in reason.split("|")), (i, found)
