import io
import struct

import numpy as np
import pytest
import tifffile

from ctengine.tiffio import BadSliceError, decode_slice, slice_checksum


def tiff_bytes(array, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def test_round_trip_is_bit_exact():
    image = np.random.default_rng(0).integers(0, 65535, (512, 512), dtype=np.uint16)
    assert np.array_equal(decode_slice(tiff_bytes(image)), image)


def test_big_endian_file_gives_native_values():
    image = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    decoded = decode_slice(tiff_bytes(image, byteorder=">"))
    assert decoded.dtype == np.dtype("<u2") and np.array_equal(decoded, image)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"GIF89a" + bytes(100), "not a TIFF"),
    (b"II*\x00" + bytes(4), "page|unreadable"),
])
def test_garbage_is_refused(data, reason):
    with pytest.raises(BadSliceError, match=reason):
        decode_slice(data)


@pytest.mark.parametrize("array, kwargs, reason", [
    (np.zeros((512, 512), np.uint8), {}, "16-bit"),
    (np.zeros((512, 512), np.float32), {}, "16-bit"),
    (np.zeros((512, 512), np.int16), {}, "16-bit"),
    (np.zeros((512, 512, 3), np.uint16), {"photometric": "rgb"}, "grayscale"),
    (np.zeros((256, 512), np.uint16), {}, "shape"),
    (np.zeros((2, 512, 512), np.uint16), {}, "page"),
])
def test_wrong_kinds_of_image_are_refused(array, kwargs, reason):
    with pytest.raises(BadSliceError, match=reason):
        decode_slice(tiff_bytes(array, **kwargs))


def test_truncated_file_is_refused():
    data = tiff_bytes(np.ones((512, 512), np.uint16))
    for cut in (100, len(data) // 2, len(data) - 10):
        with pytest.raises(BadSliceError):
            decode_slice(data[:cut])


def test_absurd_dimensions_are_refused_before_allocation():
    data = bytearray(tiff_bytes(np.ones((8, 8), np.uint16)))
    # patch ImageWidth (256) and ImageLength (257) to 100000 x 100000 in the first IFD
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            fmt = "<H" if kind == 3 else "<I"
            struct.pack_into(fmt, data, entry + 8, 60000)
    with pytest.raises(BadSliceError, match="absurd|shape|truncated|holds"):
        decode_slice(bytes(data), shape=None)


def test_compressed_tiff_is_accepted():
    image = np.random.default_rng(1).integers(0, 4000, (512, 512), dtype=np.uint16)
    assert np.array_equal(decode_slice(tiff_bytes(image, compression="zlib")), image)


def test_checksum_depends_on_pixels_only():
    image = np.arange(16, dtype=np.uint16).reshape(4, 4)
    assert slice_checksum(image) == slice_checksum(image.astype(">u2"))
    assert slice_checksum(image) != slice_checksum(image[::-1])
