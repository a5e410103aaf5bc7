"""The plain-strip fast path decodes exactly as tifffile and never accepts what decode_slice refuses."""
import io
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image

from ctengine._tiff_plain import copy_plain_strips
from ctengine.tiffio import BadSliceError, decode_slice, decode_slice_into
from conftest import SMALL
from test_tiff_structure import BASES, DAMAGES, damage, image, tiff_bytes

PLAIN = [{}, {"rowsperstrip": 1}, {"rowsperstrip": 7}, {"rowsperstrip": 16}, {"byteorder": ">", "rowsperstrip": 9},
         {"description": "CT slice", "software": "scanner", "resolution": (2.0, 2.0), "datetime": True},
         {"photometric": "miniswhite"}, {"metadata": None}]


def pillow_bytes(array: np.ndarray) -> bytes:
    """A 16-bit grayscale TIFF as Pillow writes it."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


def outcome(fn, data: bytes):
    """(pixels, None) or (None, refusal reason) of a decoder."""
    try:
        return fn(data), None
    except BadSliceError as exc:
        return None, str(exc)


@pytest.mark.parametrize("kwargs", PLAIN, ids=str)
def test_plain_files_take_the_fast_path_bit_exact(kwargs):
    data = tiff_bytes(image(3), **kwargs)
    out = np.full(SMALL, 7, np.uint16)
    assert copy_plain_strips(data, out)
    assert np.array_equal(out, decode_slice(data, shape=SMALL))
    assert np.array_equal(out, image(3))


def test_a_pillow_slice_takes_the_fast_path():
    data = pillow_bytes(image(4))
    out = np.empty(SMALL, np.uint16)
    assert copy_plain_strips(data, out) and np.array_equal(out, image(4))


@pytest.mark.parametrize("kwargs", [{"compression": "zlib"}, {"tile": (32, 32)}, {"bigtiff": True},
                                    {"compression": "zlib", "predictor": True}], ids=str)
def test_other_files_go_to_tifffile_and_decode_the_same(kwargs):
    data = tiff_bytes(image(5), **kwargs)
    assert not copy_plain_strips(data, np.empty(SMALL, np.uint16))
    assert np.array_equal(decode_slice_into(data, np.empty(SMALL, np.uint16)), image(5))


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("how", DAMAGES)
def test_unsound_files_are_refused_with_the_same_reason(base, how):
    data, reason = damage(tiff_bytes(image(), **BASES[base]), how)
    assert not copy_plain_strips(data, np.empty(SMALL, np.uint16))
    with pytest.raises(BadSliceError, match="^" + reason):
        decode_slice_into(data, np.empty(SMALL, np.uint16))


@pytest.mark.parametrize("data, shape", [(tiff_bytes(np.zeros((64, 32), np.uint16)), SMALL),
                                         (tiff_bytes(image().astype(np.int16)), SMALL),
                                         (tiff_bytes(image().astype(np.uint8)), SMALL),
                                         (tiff_bytes(np.zeros((2, *SMALL), np.uint16)), SMALL)], ids=range(4))
def test_wrong_kinds_are_refused_as_decode_slice_refuses_them(data, shape):
    fast, fast_reason = outcome(lambda d: decode_slice_into(d, np.empty(shape, np.uint16)), data)
    slow, slow_reason = outcome(lambda d: decode_slice(d, shape=shape), data)
    assert fast is None and fast_reason == slow_reason


@pytest.mark.parametrize("kwargs", [{"rowsperstrip": 16}, {"byteorder": ">", "rowsperstrip": 9}, {}], ids=str)
def test_mutated_headers_are_accepted_only_when_tifffile_accepts_them_identically(kwargs):
    """1,500 random damages of the header, IFD and tag values: the fast path is never more lenient."""
    sound = tiff_bytes(image(6), **kwargs)
    data_start = min(int(o) for o in tifffile.TiffFile(io.BytesIO(sound)).pages[0].dataoffsets)
    rng = np.random.default_rng(sum(map(ord, str(kwargs))))
    accepted = 0
    for trial in range(1500):
        data = bytearray(sound)
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.1:  # truncate
                data = data[:int(rng.integers(0, len(data)))]
            elif len(data):
                at = int(rng.integers(0, min(len(data), data_start + 16)))
                data[at] = int(rng.integers(0, 256))
        data = bytes(data)
        out = np.empty(SMALL, np.uint16)
        if copy_plain_strips(data, out):
            accepted += 1
            assert np.array_equal(out, decode_slice(data, shape=SMALL)), trial
        fast, fast_reason = outcome(lambda d: decode_slice_into(d, np.empty(SMALL, np.uint16)), data)
        slow, slow_reason = outcome(lambda d: decode_slice(d, shape=SMALL), data)
        assert fast_reason == slow_reason and (fast is None or np.array_equal(fast, slow)), trial
    assert accepted > 0  # some damages leave a sound file (a byte of a tag value nobody reads)


def _with_tag(array: np.ndarray, code: int, dtype: str, count: int, value) -> bytes:
    return tiff_bytes(array, extratags=[(code, dtype, count, value, False)])


@pytest.mark.parametrize("data", [
    _with_tag(image(7), 34412, "B", 8, b"\x00" * 8),          # Zeiss LSM information: tifffile reads it as LSM
    _with_tag(image(7), 530, "H", 2, (2, 2)),                  # YCbCr chroma subsampling
    tiff_bytes(image(7), extratags=[(65000 - k, "H", 1, k, False) for k in range(4090)]),  # over 4,096 tags
], ids=["lsm", "ycbcr_subsampling", "too_many_tags"])
def test_files_tifffile_reads_otherwise_go_to_tifffile(data):
    assert not copy_plain_strips(data, np.empty(SMALL, np.uint16))
    fast, fast_reason = outcome(lambda d: decode_slice_into(d, np.empty(SMALL, np.uint16)), data)
    slow, slow_reason = outcome(lambda d: decode_slice(d, shape=SMALL), data)
    assert fast_reason == slow_reason and (fast is None or np.array_equal(fast, slow))


def test_a_strip_table_in_the_header_is_not_read():
    """tifffile ignores a tag whose values lie in the 8-byte header, and so refuses this file: so must we.

    A 64 x 64 slice of two strips whose byte counts (4,096 each) are read from bytes 4-12: the IFD
    pointer (4,096) and a filler word (4,096). Everything else is sound.
    """
    pixels = image(8).astype("<u2").tobytes()
    ifd, entries = 4096, 9
    strips = ifd + 2 + 12 * entries + 4
    offsets_at = strips + len(pixels)
    tags = [(256, 3, 1, 64), (257, 3, 1, 64), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 2, offsets_at), (277, 3, 1, 1), (278, 3, 1, 32), (279, 4, 2, 4)]
    data = bytearray(offsets_at + 8)
    data[:8] = b"II*\x00" + struct.pack("<I", ifd)
    data[8:12] = struct.pack("<I", 4096)
    struct.pack_into("<H", data, ifd, entries)
    for k, (code, kind, count, value) in enumerate(tags):
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        data[ifd + 2 + 12 * k:ifd + 14 + 12 * k] = struct.pack("<HHI", code, kind, count) + packed
    data[strips:offsets_at] = pixels
    data[offsets_at:] = struct.pack("<II", strips, strips + 4096)
    data = bytes(data)
    assert not copy_plain_strips(data, np.empty(SMALL, np.uint16))
    with pytest.raises(BadSliceError, match="no strip offsets or no strip byte counts"):
        decode_slice_into(data, np.empty(SMALL, np.uint16))
