"""Safe decoding of one COVID-CTset slice (a single-page 16-bit grayscale TIFF).

Every check that can be made from the header is made before any pixel
memory is allocated, so a hostile file (absurd dimensions, truncated strips,
wrong sample format) costs a few hundred bytes of reading, never gigabytes.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import tifffile

from .constants import MAX_SLICE_PIXELS, MAX_TIFF_BYTES, RAW_DTYPE, SLICE_SHAPE


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
        grayscale, wrong or absurd shape, truncated pixel data.
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
            _check_page(page, shape, len(data))
            image = page.asarray()
    except BadSliceError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise BadSliceError(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(image, dtype=RAW_DTYPE)


def _check_page(page: tifffile.TiffPage, shape: tuple[int, int] | None, file_size: int) -> None:
    """Refuse a page from its header alone (no pixel allocation)."""
    if page.samplesperpixel != 1 or len(page.shape) != 2:
        raise BadSliceError(f"not a grayscale image (shape {page.shape}, {page.samplesperpixel} samples per pixel)")
    n_pixels = int(page.shape[0]) * int(page.shape[1])
    if n_pixels > MAX_SLICE_PIXELS:
        raise BadSliceError(f"absurd dimensions {page.shape[0]} x {page.shape[1]}")
    if page.dtype.kind != "u" or page.dtype.itemsize != 2:
        raise BadSliceError(f"pixel type {page.dtype} is not 16-bit unsigned")
    if shape is not None and tuple(page.shape) != tuple(shape):
        raise BadSliceError(f"shape {page.shape[0]} x {page.shape[1]} is not {shape[0]} x {shape[1]}")
    if page.compression == 1:  # uncompressed: the strips must hold every pixel
        stored = sum(int(n) for n in page.databytecounts)
        end = max((int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
        if stored < n_pixels * 2:
            raise BadSliceError(f"pixel data holds {stored} of {n_pixels * 2} bytes")
        if end > file_size:
            raise BadSliceError(f"truncated: pixel data ends at byte {end}, file has {file_size}")


def slice_checksum(image: np.ndarray) -> str:
    """SHA-256 (hex) of the slice's raw pixels as little-endian uint16 in C order."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=RAW_DTYPE)).hexdigest()
