"""A TIFF is accepted only when its strips, tiles and IFD chain are sound, for every compression."""
import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
import zarr

import ctengine
from ctengine.tiffio import BadSliceError, decode_slice
from conftest import SMALL, make_tree

SERIES = "COVID-CTset/normal1/patient2/SR_2"
#: the three files damaged: 4 strips of 16 rows, uncompressed or deflate, and 4 tiles of 32 x 32
BASES = {"plain": {"rowsperstrip": 16}, "deflate": {"rowsperstrip": 16, "compression": "zlib"},
         "tiled": {"tile": (32, 32)}}
FORMATS = {1: "B", 3: "H", 4: "I", 16: "Q"}


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5000, SMALL, dtype=np.uint16)


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def layout(data: bytes) -> dict:
    """Where the tags and the IFD of the only page lie in ``data``."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        tags = {tag.code: (tag.offset, tag.valueoffset, tag.dtype, tag.count) for tag in page.tags}
        next_ifd = page.offset + tif.tiff.tagnosize + len(page.tags) * tif.tiff.tagsize
        return {"byteorder": tif.tiff.byteorder, "ifd": page.offset, "next": next_ifd, "tags": tags,
                "offsetformat": tif.tiff.offsetformat, "tiled": page.is_tiled}


def set_value(data: bytearray, code: int, index: int, value: int) -> None:
    """Overwrite value ``index`` of tag ``code`` (e.g. the offset of strip ``index``)."""
    where = layout(bytes(data))
    _, valueoffset, dtype, _ = where["tags"][code]
    fmt = where["byteorder"] + FORMATS[int(dtype)]
    struct.pack_into(fmt, data, valueoffset + index * struct.calcsize(fmt), value)


def get_value(data: bytes, code: int, index: int) -> int:
    where = layout(data)
    _, valueoffset, dtype, _ = where["tags"][code]
    fmt = where["byteorder"] + FORMATS[int(dtype)]
    return struct.unpack_from(fmt, data, valueoffset + index * struct.calcsize(fmt))[0]


def tables(data: bytes) -> tuple[str, int, int]:
    """The kind of segment and the codes of its offsets and byte counts tags."""
    return ("tile", 324, 325) if layout(data)["tiled"] else ("strip", 273, 279)


def drop_last_segment(data: bytearray) -> None:
    """Shorten the offsets and byte counts tables by one entry (their count field)."""
    where = layout(bytes(data))
    for code in tables(bytes(data))[1:]:
        offset, _, _, count = where["tags"][code]
        struct.pack_into(where["byteorder"] + "I", data, offset + 4, count - 1)


def damage(data: bytes, how: str) -> tuple[bytes, str]:
    """A damaged copy of ``data`` and the reason it must be refused with."""
    out = bytearray(data)
    kind, offsets, counts = tables(data)
    where = layout(data)
    if how == "offset 0":
        set_value(out, offsets, 2, 0)
        return bytes(out), f"{kind} 2 offset 0"
    if how == "byte count 0":  # for tiles: a missing tile
        set_value(out, counts, 2, 0)
        return bytes(out), f"{kind} 2 byte count 0"
    if how == "into the header":
        set_value(out, offsets, 1, 4)
        return bytes(out), f"{kind} 1 points into the 8-byte header"
    if how == "into the IFD":
        set_value(out, offsets, 3, where["ifd"] + 2)
        return bytes(out), f"{kind} 3 points into the IFD"
    if how == "beyond EOF":
        set_value(out, offsets, 0, len(data) + 100)
        end = len(data) + 100 + get_value(data, counts, 0)
        return bytes(out), f"truncated: {kind} 0 ends at byte {end}, the file has {len(data)}"
    if how == "IFD loop":
        struct.pack_into(where["offsetformat"], out, where["next"], where["ifd"])
        return bytes(out), f"the IFD chain loops back to byte {where['ifd']}"
    if how == "table short":
        drop_last_segment(out)
        if kind == "tile":
            return bytes(out), "tile table holds 3 of 4 tiles"
        return bytes(out), "3 strips of 16 rows cover 48 of 64 rows"
    raise AssertionError(how)


DAMAGES = ["offset 0", "byte count 0", "into the header", "into the IFD", "beyond EOF", "IFD loop", "table short"]


@pytest.mark.parametrize("kwargs", [
    {}, {"rowsperstrip": 1}, {"rowsperstrip": 7}, {"compression": "zlib"},
    {"compression": "zlib", "predictor": True, "rowsperstrip": 5}, {"compression": "lzw"},
    {"compression": "packbits"}, {"compression": "zstd"}, {"compression": "lzma"}, {"tile": (32, 32)},
    {"tile": (48, 48)}, {"tile": (16, 32), "compression": "zlib"}, {"byteorder": ">", "rowsperstrip": 9},
    {"bigtiff": True}, {"bigtiff": True, "tile": (32, 32), "compression": "zlib"},
], ids=str)
def test_sound_flavours_decode_bit_exact(kwargs):
    assert np.array_equal(decode_slice(tiff_bytes(image(), **kwargs), shape=SMALL), image())


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("how", DAMAGES)
def test_unsound_structure_is_refused_with_its_reason(base, how):
    data, reason = damage(tiff_bytes(image(), **BASES[base]), how)
    with pytest.raises(BadSliceError, match="^" + reason):
        decode_slice(data, shape=SMALL)


def test_uncompressed_strip_one_row_short_is_refused():
    data = bytearray(tiff_bytes(image(), rowsperstrip=16))
    set_value(data, 279, 1, 15 * 64 * 2)
    with pytest.raises(BadSliceError, match="^strip 1 holds 1920 bytes, not 2048"):
        decode_slice(bytes(data), shape=SMALL)


def test_compressed_strip_that_decodes_short_is_refused():
    data = bytearray(tiff_bytes(image(), rowsperstrip=16, compression="zlib"))
    short = zlib.compress(bytes(15 * 64 * 2))  # a sound stream of 15 rows where 16 belong
    start = get_value(bytes(data), 273, 1)
    assert len(short) <= get_value(bytes(data), 279, 1)
    data[start:start + len(short)] = short
    set_value(data, 279, 1, len(short))
    with pytest.raises(BadSliceError, match="^strip 1 decodes to 1920 bytes, not 2048"):
        decode_slice(bytes(data), shape=SMALL)


def test_strip_in_the_values_of_a_tag_is_refused():
    data = bytearray(tiff_bytes(image(), rowsperstrip=16))
    set_value(data, 273, 0, layout(bytes(data))["tags"][279][1])
    with pytest.raises(BadSliceError, match="^strip 0 points into the values of tag StripByteCounts"):
        decode_slice(bytes(data), shape=SMALL)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("moved, onto, reason", [(2, 2, "2 overlaps {kind} 3"), (0, 2, "0 overlaps {kind} 2")])
def test_segments_sharing_bytes_are_refused(base, moved, onto, reason):
    data = bytearray(tiff_bytes(image(), **BASES[base]))
    kind, offsets, _ = tables(bytes(data))
    set_value(data, offsets, moved, get_value(bytes(data), offsets, onto) + (moved == onto))
    with pytest.raises(BadSliceError, match="^" + kind + " " + reason.format(kind=kind)):
        decode_slice(bytes(data), shape=SMALL)


def test_bits_per_sample_other_than_16_is_refused():
    data = bytearray(tiff_bytes(image()))
    _, valueoffset, _, _ = layout(bytes(data))["tags"][258]
    struct.pack_into("<H", data, valueoffset, 15)
    with pytest.raises(BadSliceError, match="15 bits per sample"):
        decode_slice(bytes(data), shape=SMALL)


def test_absurd_tile_size_is_refused_before_allocation():
    data = bytearray(tiff_bytes(image(), tile=(32, 32)))
    for code in (322, 323):  # TileWidth, TileLength
        _, valueoffset, dtype, _ = layout(bytes(data))["tags"][code]
        struct.pack_into("<" + FORMATS[int(dtype)], data, valueoffset, 32768)
    with pytest.raises(BadSliceError, match="absurd tile size 32768 x 32768"):
        decode_slice(bytes(data), shape=SMALL)


def test_floating_point_predictor_on_integers_is_refused():
    data = bytearray(tiff_bytes(image(), compression="zlib", predictor=True))
    _, valueoffset, _, _ = layout(bytes(data))["tags"][317]
    struct.pack_into("<H", data, valueoffset, 3)
    with pytest.raises(BadSliceError, match="floating-point predictor 3"):
        decode_slice(bytes(data), shape=SMALL)


def test_unsound_files_are_quarantined_and_the_sound_ones_stored_bit_exact(tmp_path, client):
    src = tmp_path / "src"
    images = make_tree(src, shape=SMALL, series_spec=(("normal1", "patient2", "SR_2", 3),))
    series = src / SERIES
    expected, reasons, instance = [images[("patient2", "SR_2", i)] for i in (1, 2, 3)], {}, 4
    for base, kwargs in BASES.items():  # the undamaged flavours are stored beside the damaged ones
        (series / f"IM{instance:05d}.tif").write_bytes(tiff_bytes(image(instance), **kwargs))
        expected.append(image(instance))
        instance += 1
    for base, kwargs in BASES.items():
        for how in DAMAGES:
            data, reason = damage(tiff_bytes(image(instance), **kwargs), how)
            path = series / f"IM{instance:05d}.tif"
            path.write_bytes(data)
            reasons[str(path)] = reason
            instance += 1
    report = ctengine.ingest([src], tmp_path / "s.zarr", client=client, progress=False, shape=SMALL)
    assert not report.failed_series and report.slices == len(expected)
    stored = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["patient2/SR_2/0"][:]
    assert np.array_equal(stored, np.stack(expected))
    table = ctengine.open_store(tmp_path / "s.zarr").quarantine
    found = dict(zip(table["location"], table["reason"]))
    assert set(found) == set(reasons)
    for path, reason in reasons.items():
        assert found[path].startswith(reason), (path, found[path], reason)
