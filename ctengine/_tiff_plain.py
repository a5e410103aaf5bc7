"""The fast path of :func:`ctengine.tiffio.decode_slice_into`: a plain slice's strips copied straight out.

COVID-CTset slices are single-page, uncompressed, 16-bit grayscale TIFFs.
For such a file the header is parsed here with ``struct`` (a few dozen
microseconds, where tifffile's page objects take about 0.2 ms) and the
pixels are copied from the strips into the caller's buffer. Every check of
:func:`ctengine.tiffio.decode_slice` that applies to such a file is made
here too (magic, one IFD, shape, sample type, strip table complete, every
strip inside the file, outside the header, the IFD and the values of the
tags, no two strips sharing bytes, each strip exactly its size).

The path only ever accepts: any file it does not fully understand (tiles,
compression, predictors, BigTIFF, several IFDs, an unusual tag type) or
that fails a check returns False, and the caller decodes it with tifffile,
which gives the reason of a refusal.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from .constants import MAX_SLICE_PIXELS, MAX_TIFF_BYTES

#: bytes per value of each TIFF field type (classic TIFF)
_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
#: tags whose presence sends a file to tifffile: tiles, SubIFDs, YCbCr subsampling, image depth (volumes),
#: Zeiss LSM information (tifffile then reads the file as LSM)
_NOT_PLAIN = frozenset({322, 323, 324, 325, 330, 530, 32997, 32998, 34412})
#: tags in an IFD above which tifffile refuses a file as suspicious
_MAX_TAGS = 4096
#: tags that must be absent or hold 1: SamplesPerPixel, PlanarConfiguration, Predictor, SampleFormat,
#: FillOrder, Compression
_MUST_BE_ONE = (277, 284, 317, 339, 266, 259)
#: the tags this path reads; a file naming one of them twice goes to tifffile
_READ = frozenset({256, 257, 258, 262, 273, 278, 279, *_MUST_BE_ONE})
_HEADER = 8


def copy_plain_strips(data: bytes | bytearray | memoryview, out: np.ndarray) -> bool:
    """Copy the pixels of a plain slice into ``out`` (C-contiguous uint16 (y, x)); False if not plain or not sound.

    ``out`` is written only when the file is accepted.
    """
    n = len(data)
    if n < _HEADER or n > MAX_TIFF_BYTES:
        return False
    magic = bytes(data[:4])
    order = "<" if magic == b"II*\x00" else ">" if magic == b"MM\x00*" else None
    if order is None:
        return False
    tags = _read_ifd(data, order)
    if tags is None:
        return False
    values, foreign = tags
    strips = _strip_table(values, out.shape, n, foreign)
    if strips is None:
        return False
    flat = out.reshape(-1)
    columns = out.shape[1]
    for row, rows, offset in strips:
        flat[row * columns:(row + rows) * columns] = np.frombuffer(data, dtype=f"{order}u2", count=rows * columns,
                                                                   offset=offset)
    return True


def _read_ifd(data, order: str) -> tuple[dict[int, tuple[int, ...]], list[tuple[int, int]]] | None:
    """({tag: values} of the only IFD, byte ranges that no strip may touch), or None."""
    n = len(data)
    (ifd,) = struct.unpack_from(f"{order}I", data, 4)
    if ifd < _HEADER or ifd + 2 > n:
        return None
    (count,) = struct.unpack_from(f"{order}H", data, ifd)
    end = ifd + 2 + 12 * count + 4
    if count == 0 or count > _MAX_TAGS or end > n or struct.unpack_from(f"{order}I", data, end - 4)[0] != 0:
        return None
    values: dict[int, tuple[int, ...]] = {}
    foreign = [(ifd, end)]
    for k in range(count):
        code, kind, items, inline = struct.unpack_from(f"{order}HHI4s", data, ifd + 2 + 12 * k)
        size = _TYPE_BYTES.get(kind)
        if size is None or code in _NOT_PLAIN or (code in values and code in _READ):
            return None
        nbytes = size * items
        if nbytes > 4:
            (where,) = struct.unpack_from(f"{order}I", inline)
            if where < _HEADER or where + nbytes > n:  # tifffile ignores a tag whose values are in the header
                return None
            foreign.append((where, where + nbytes))
        if kind in (3, 4) and items and code in _READ:
            fmt = f"{order}{items}{'H' if kind == 3 else 'I'}"
            values[code] = struct.unpack_from(fmt, data, where) if nbytes > 4 else struct.unpack_from(fmt, inline)
        else:
            values[code] = ()
    return values, foreign


def _strip_table(values: dict[int, tuple[int, ...]], shape: tuple[int, ...], n: int,
                 foreign: list[tuple[int, int]]) -> list[tuple[int, int, int]] | None:
    """(first row, rows, byte offset) of every strip of a sound plain slice of ``shape``, else None."""
    def scalar(code: int, default: int | None = None) -> int | None:
        found = values.get(code)
        if found is None:
            return default
        return found[0] if len(found) == 1 else None

    rows, columns = scalar(257), scalar(256)
    if rows is None or columns is None or (rows, columns) != tuple(shape) or rows * columns > MAX_SLICE_PIXELS:
        return None
    if scalar(258) != 16 or scalar(262) not in (0, 1) or any(scalar(code, 1) != 1 for code in _MUST_BE_ONE):
        return None
    offsets, counts = values.get(273, ()), values.get(279, ())
    per_strip = min(scalar(278, rows) or 0, rows)
    if per_strip <= 0 or not offsets or len(offsets) != len(counts) or len(offsets) != math.ceil(rows / per_strip):
        return None
    strip_bytes = per_strip * columns * 2
    last_bytes = (rows - (len(offsets) - 1) * per_strip) * columns * 2
    strips = []
    for i, (offset, count) in enumerate(zip(offsets, counts)):
        allowed = (last_bytes, strip_bytes) if i == len(offsets) - 1 else (strip_bytes,)
        if offset < _HEADER or count not in allowed or offset + count > n:
            return None
        if any(offset < end and start < offset + count for start, end in foreign):
            return None
        strips.append((i * per_strip, min(per_strip, rows - i * per_strip), offset))
    spans = sorted(zip(offsets, counts))
    if any(a + c > b for (a, c), (b, _) in zip(spans, spans[1:])):
        return None
    return strips
