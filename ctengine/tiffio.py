"""Safe decoding of one COVID-CTset slice (a single-page 16-bit grayscale TIFF).

Every check that can be made from the header is made before any pixel
memory is allocated, so a hostile file (absurd dimensions, truncated strips,
wrong sample format) costs a few hundred bytes of reading, never gigabytes.
The structure is checked before decoding (:func:`check_structure`): a file
whose strips or tiles are missing, empty, outside the file or inside its
header or IFDs would otherwise decode with zero-filled or foreign rows.
"""
from __future__ import annotations

import hashlib
import io
import math
import struct

import numpy as np
import tifffile

from ._tiff_plain import copy_plain_strips
from .constants import MAX_SLICE_PIXELS, MAX_TIFF_BYTES, RAW_DTYPE, SLICE_SHAPE


#: the tags holding the pixel data tables: (offsets, byte counts) of strips and of tiles
STRIP_TAGS = (273, 279)
TILE_TAGS = (324, 325)
#: predictors for floating-point samples (a 16-bit unsigned slice cannot use them)
FLOAT_PREDICTORS = (3, 34894, 34895)
#: IFDs followed along the chain before a file is refused (a slice has one)
MAX_IFDS = 64


class BadSliceError(ValueError):
    """A file that is not a valid COVID-CTset slice; the message is the reason."""


def decode_slice(data: bytes, *, shape: tuple[int, int] | None = SLICE_SHAPE) -> np.ndarray:
    """Decode a TIFF held in memory into a raw uint16 (y, x) array.

    Parameters
    ----------
    data : bytes
        The whole file.
    shape : tuple of int or None
        Required (y, x) shape; None accepts any 2-D shape within the size limit.

    Returns
    -------
    numpy.ndarray
        Raw values (uint16, little endian, C order).

    Raises
    ------
    BadSliceError
        With the reason: empty, not a TIFF, several pages, not 16-bit unsigned
        grayscale, wrong or absurd shape, unsound structure (see
        :func:`check_structure`), undecodable pixel data.
    """
    if len(data) == 0:
        raise BadSliceError("empty file")
    if len(data) > MAX_TIFF_BYTES:
        raise BadSliceError(f"file of {len(data)} bytes exceeds the limit of {MAX_TIFF_BYTES}")
    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise BadSliceError("not a TIFF file (bad magic bytes)")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if len(tif.pages) != 1:
                raise BadSliceError(f"expected one page, found {len(tif.pages)}")
            page = tif.pages[0]
            _check_page(page, shape)
            check_structure(page, data)
            image = page.asarray()
    except BadSliceError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise BadSliceError(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(image, dtype=RAW_DTYPE)


def decode_slice_into(data: bytes | bytearray | memoryview, out: np.ndarray) -> np.ndarray:
    """Decode a TIFF held in memory into ``out``, with the checks and refusals of :func:`decode_slice`.

    A plain slice (one page, uncompressed 16-bit grayscale strips) is
    copied straight from its strips (:mod:`ctengine._tiff_plain`); any
    other file goes through :func:`decode_slice`. The slice's shape must be
    ``out.shape``.

    Parameters
    ----------
    data : bytes-like
        The whole file.
    out : numpy.ndarray
        C-contiguous uint16 (y, x) buffer; raw values, native byte order.

    Returns
    -------
    numpy.ndarray
        ``out``.

    Raises
    ------
    BadSliceError
        As :func:`decode_slice` (``out`` may then hold anything).

    Examples
    --------
    >>> buffer = io.BytesIO()
    >>> tifffile.imwrite(buffer, np.arange(12, dtype=np.uint16).reshape(3, 4))
    >>> decode_slice_into(buffer.getvalue(), np.empty((3, 4), np.uint16))[1]
    array([4, 5, 6, 7], dtype=uint16)
    """
    if out.dtype != RAW_DTYPE or out.ndim != 2 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous 2-D {RAW_DTYPE} array, got {out.dtype} {out.shape}")
    if not copy_plain_strips(data, out):
        out[...] = decode_slice(bytes(data), shape=out.shape)
    return out


def _check_page(page: tifffile.TiffPage, shape: tuple[int, int] | None) -> None:
    """Refuse a page from its header alone (no pixel allocation)."""
    if page.samplesperpixel != 1 or len(page.shape) != 2:
        raise BadSliceError(f"not a grayscale image (shape {page.shape}, {page.samplesperpixel} samples per pixel)")
    n_pixels = int(page.shape[0]) * int(page.shape[1])
    if n_pixels > MAX_SLICE_PIXELS:
        raise BadSliceError(f"absurd dimensions {page.shape[0]} x {page.shape[1]}")
    if page.dtype.kind != "u" or page.dtype.itemsize != 2 or page.bitspersample != 16:
        raise BadSliceError(f"pixel type {page.dtype} ({page.bitspersample} bits per sample) is not 16-bit "
                            "unsigned")
    if page.predictor in FLOAT_PREDICTORS:
        raise BadSliceError(f"floating-point predictor {int(page.predictor)} for integer samples")
    if shape is not None and tuple(page.shape) != tuple(shape):
        raise BadSliceError(f"shape {page.shape[0]} x {page.shape[1]} is not {shape[0]} x {shape[1]}")


def check_structure(page: tifffile.TiffPage, data: bytes) -> None:
    """Refuse a page whose pixel data is not laid out soundly, for any compression.

    The strip or tile table is read from the tags as written (not the
    repaired ``page.dataoffsets``): it must be complete (``ceil(rows /
    RowsPerStrip)`` strips, or ``ceil(rows / TileLength) * ceil(columns /
    TileWidth)`` tiles), and every segment must have a non-zero offset and
    byte count and lie inside the file, outside the header, the IFDs, the
    values of the tags and the other segments (two segments sharing bytes
    are refused too). The IFD chain must end without a loop. Each segment
    must decode to exactly its size (rows x columns x samples x bytes per
    sample; the last strip may hold a whole strip), checked from the byte
    counts when uncompressed and by decompressing each segment otherwise
    (image codecs such as JPEG carry their own dimensions and are not
    decompressed here).

    Parameters
    ----------
    page : tifffile.TiffPage
        The parsed page (its header checked: one 16-bit sample per pixel).
    data : bytes
        The whole file the page was parsed from.

    Raises
    ------
    BadSliceError
        With the reason, naming the segment by its index in the table
        (from 0): ``"strip 3 offset 0"``, ``"tile 2 byte count 0"``,
        ``"strip 5 points into the IFD"``, ``"the IFD chain loops back to
        byte 8"``, ``"tile table holds 3 of 4 tiles"``.

    Examples
    --------
    >>> import io, struct
    >>> buffer = io.BytesIO()
    >>> tifffile.imwrite(buffer, np.zeros((32, 32), np.uint16), rowsperstrip=8)
    >>> data = bytearray(buffer.getvalue())
    >>> with tifffile.TiffFile(io.BytesIO(data)) as tif:
    ...     check_structure(tif.pages[0], bytes(data))  # sound: nothing to say
    ...     offsets = tif.pages[0].tags["StripOffsets"].valueoffset
    >>> struct.pack_into("<I", data, offsets + 4 * 2, 0)  # strip 2 now starts at byte 0
    >>> with tifffile.TiffFile(io.BytesIO(data)) as tif:
    ...     check_structure(tif.pages[0], bytes(data))
    Traceback (most recent call last):
    ...
    ctengine.tiffio.BadSliceError: strip 2 offset 0
    """
    fmt = page.parent.tiff
    header = 16 if fmt.is_bigtiff else 8
    ifds = _ifd_chain(data, fmt, header)
    kind, (offsets_tag, counts_tag) = ("tile", TILE_TAGS) if page.is_tiled else ("strip", STRIP_TAGS)
    if offsets_tag not in page.tags or counts_tag not in page.tags:
        raise BadSliceError(f"no {kind} offsets or no {kind} byte counts")
    offsets, counts = _values(page.tags[offsets_tag]), _values(page.tags[counts_tag])
    if len(offsets) != len(counts):
        raise BadSliceError(f"{len(offsets)} {kind} offsets but {len(counts)} {kind} byte counts")
    sizes = _segment_sizes(page, len(offsets))
    foreign = [(start, end, "the IFD" if len(ifds) == 1 else f"IFD {i}") for i, (start, end) in enumerate(ifds)]
    foreign += [(tag.valueoffset, tag.valueoffset + tag.valuebytecount, f"the values of tag {tag.name}")
                for tag in page.tags if tag.valuebytecount > fmt.tagoffsetthreshold]
    for i, (offset, count) in enumerate(zip(offsets, counts)):
        if offset == 0:
            raise BadSliceError(f"{kind} {i} offset 0")
        if count == 0:
            raise BadSliceError(f"{kind} {i} byte count 0")
        if offset < header:
            raise BadSliceError(f"{kind} {i} points into the {header}-byte header")
        if offset + count > len(data):
            raise BadSliceError(f"truncated: {kind} {i} ends at byte {offset + count}, the file has {len(data)}")
        for start, end, words in foreign:
            if offset < end and start < offset + count:
                raise BadSliceError(f"{kind} {i} points into {words}")
    order = sorted(range(len(offsets)), key=offsets.__getitem__)
    for first, second in zip(order, order[1:]):
        if offsets[first] + counts[first] > offsets[second]:
            raise BadSliceError(f"{kind} {min(first, second)} overlaps {kind} {max(first, second)}")
    _check_decoded_sizes(page, data, kind, offsets, counts, sizes)


def _ifd_chain(data: bytes, fmt, header: int) -> list[tuple[int, int]]:
    """The byte ranges of the IFDs along the chain; refused when it loops or leaves the file."""
    (offset,) = struct.unpack_from(fmt.offsetformat, data, header - fmt.offsetsize)
    ranges: list[tuple[int, int]] = []
    while offset:
        if any(start <= offset < end for start, end in ranges):
            raise BadSliceError(f"the IFD chain loops back to byte {offset}")
        if len(ranges) == MAX_IFDS:
            raise BadSliceError(f"more than {MAX_IFDS} IFDs")
        if offset < header or offset + fmt.tagnosize > len(data):
            raise BadSliceError(f"IFD {len(ranges)} at byte {offset} is outside the file ({len(data)} bytes)")
        (entries,) = struct.unpack_from(fmt.tagnoformat, data, offset)
        end = offset + fmt.tagnosize + entries * fmt.tagsize + fmt.offsetsize
        if end > len(data):
            raise BadSliceError(f"IFD {len(ranges)} at byte {offset} ({entries} entries) runs past the end of "
                                f"the file ({len(data)} bytes)")
        ranges.append((offset, end))
        (offset,) = struct.unpack_from(fmt.offsetformat, data, end - fmt.offsetsize)
    return ranges


def _values(tag) -> tuple[int, ...]:
    value = tag.value
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list, np.ndarray)) else (int(value),)


def _segment_sizes(page: tifffile.TiffPage, n: int) -> list[tuple[int, ...]]:
    """The decoded sizes (bytes) each segment may have; refused when the table is incomplete."""
    rows, columns = int(page.imagelength), int(page.imagewidth)
    item = page.samplesperpixel * page.dtype.itemsize
    if page.is_tiled:
        length, width = int(page.tilelength), int(page.tilewidth)
        if length * width > MAX_SLICE_PIXELS:  # each tile is decoded whole: bound it before any allocation
            raise BadSliceError(f"absurd tile size {length} x {width}")
        expected = math.ceil(rows / length) * math.ceil(columns / width)
        if n != expected:
            raise BadSliceError(f"tile table holds {n} of {expected} tiles ({length} x {width} tiles for "
                                f"{rows} x {columns})")
        return [(length * width * item,)] * n
    per_strip = min(int(page.tags.valueof(278, rows)), rows)
    if per_strip <= 0:
        raise BadSliceError(f"RowsPerStrip {per_strip}")
    if n * per_strip < rows:
        raise BadSliceError(f"{n} strips of {per_strip} rows cover {n * per_strip} of {rows} rows")
    if n != math.ceil(rows / per_strip):
        raise BadSliceError(f"{n} strips of {per_strip} rows for {rows} rows")
    strip, last = per_strip * columns * item, (rows - (n - 1) * per_strip) * columns * item
    return [(strip,)] * (n - 1) + [(last, strip)]


def _check_decoded_sizes(page: tifffile.TiffPage, data: bytes, kind: str, offsets: tuple[int, ...],
                         counts: tuple[int, ...], sizes: list[tuple[int, ...]]) -> None:
    """Each segment decodes to exactly its size: from its byte count, or by decompressing it."""
    if page.compression in tifffile.TIFF.IMAGE_COMPRESSIONS:
        return
    decompress = None if page.compression == 1 else tifffile.TIFF.DECOMPRESSORS[page.compression]
    for i, (offset, count, allowed) in enumerate(zip(offsets, counts, sizes)):
        size = count
        if decompress is not None:  # the output is bounded: one byte more than the largest size allowed
            try:
                size = len(decompress(data[offset:offset + count], out=max(allowed) + 1))
            except Exception as exc:  # each codec raises its own error type
                raise BadSliceError(f"{kind} {i} does not decode ({type(exc).__name__}: {exc})") from None
        if size not in allowed:
            verb = "holds" if decompress is None else "decodes to"
            raise BadSliceError(f"{kind} {i} {verb} {size} bytes, not {allowed[0]}")


def slice_checksum(image: np.ndarray) -> str:
    """SHA-256 (hex) of the slice's raw pixels as little-endian uint16 in C order."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=RAW_DTYPE)).hexdigest()
