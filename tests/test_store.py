"""The store contract in ctengine.store: names, rescale defaults, the handle."""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import zarr

from ctengine.store import Store, names, open_store, schema, shard, tables


@pytest.mark.parametrize("url, remote", [
    ("covid.zarr", False), ("/data/covid.zarr", False), ("file:///data/covid.zarr", False),
    ("local:///data/covid.zarr", False), ("s3://bucket/covid.zarr", True), ("gs://bucket/covid.zarr", True),
    ("simplecache::s3://bucket/covid.zarr", True)])
def test_local_or_remote(url, remote):
    assert names.is_remote(url) is remote


@pytest.mark.parametrize("attrs, expected", [
    ({}, (1.0, -1024.0)), ({"slope": None, "intercept": None}, (1.0, -1024.0)),
    ({"slope": 1.0, "intercept": 0.0}, (1.0, 0.0)), ({"slope": 2.0, "intercept": -1000.0}, (2.0, -1000.0))])
def test_rescale_defaults_apply_only_to_missing_values(attrs, expected):
    assert names.rescale(attrs) == expected


def test_shard_index_size_matches_the_encoder():
    stack = np.stack([np.full((4, 4), v, dtype="<u2") for v in range(3)])
    chunks = [shard.encode_chunk(image) for image in stack]
    data = bytes(shard.encode_stack(stack))
    assert len(data) - sum(map(len, chunks)) == names.shard_index_nbytes(3)
    assert shard.shard_index(data, 3)[:, 1].tolist() == [len(c) for c in chunks]


@pytest.mark.parametrize("stack", [
    np.random.default_rng(0).integers(0, 3000, (5, 32, 32)).astype("<u2"),
    np.random.default_rng(1).integers(0, 65536, (3, 32, 32)).astype("<u2"),   # incompressible
    np.random.default_rng(2).integers(0, 3, (4, 32, 32)).astype(np.uint8),    # a lung mask
    np.arange(2 * 16 * 16, dtype=">u2").reshape(2, 16, 16),                    # big endian in
    np.zeros((0, 8, 8), "<u2")], ids=["ct", "incompressible", "mask", "big_endian", "empty"])
def test_a_shard_is_its_chunks_then_the_index_and_crc(stack):
    """The zarr sharding layout: chunk frames in order, (offset, nbytes) uint64 pairs, CRC-32C of the pairs."""
    import google_crc32c

    chunks = [shard.encode_chunk(image) for image in stack]
    sizes = np.array([len(c) for c in chunks], dtype="<u8")
    index = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1).astype("<u8").tobytes()
    crc = np.uint32(google_crc32c.value(index)).astype("<u4").tobytes()
    assert bytes(shard.encode_stack(stack)) == b"".join([*chunks, index, crc])
    stored = stack.dtype.newbyteorder("<")  # the zarr bytes codec of the store: little endian
    np.testing.assert_array_equal(shard.decode_shard(bytes(shard.encode_stack(stack)), stack.shape, dtype=stored),
                                  stack)


def test_paths_of_the_contract():
    assert names.raw_shard_key("patient1", "SR_2") == "patient1/SR_2/0/c/0/0/0"
    assert names.series_path("patient1", "SR_2", names.LUNG_ARRAY) == "patient1/SR_2/labels/lung/0"
    assert names.features_path("/data/covid.zarr/") == "/data/covid.zarr.features"
    assert names.lock_path("file:///data/covid.zarr") == "/data/covid.zarr.lock"


def test_completion_marker():
    assert not names.is_complete(names.incomplete(), "abc")
    assert names.is_complete(names.complete("abc"), "abc")
    assert not names.is_complete(names.complete("abc"), "abd")
    assert not names.is_complete({}, "abc")


def test_a_writable_handle_stores_a_series_that_plain_zarr_reads(tmp_path):
    store = open_store(tmp_path / "s.zarr", mode="a")
    store.initialise()
    stack = np.arange(3 * 8 * 8, dtype="<u2").reshape(3, 8, 8)
    store.begin_series("patient1", "SR_2")
    assert store.completed_series("patient1", "SR_2", "plan") is None
    store.write_series("patient1", "SR_2", stack, {"intercept": 0.0, "slope": 1.0, "spacing_mm": [0.5, 0.5],
                                                   "instances": [1, 2, 3]}, "plan")
    assert store.completed_series("patient1", "SR_2", "plan") is not None
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "s.zarr", mode="r")["patient1/SR_2/0"][:], stack)
    reopened = pickle.loads(pickle.dumps(open_store(tmp_path / "s.zarr")))
    assert isinstance(reopened, Store) and reopened.url == store.url
    np.testing.assert_array_equal(reopened.read_raw("patient1", "SR_2"), stack)
    assert reopened.rescale("patient1", "SR_2") == (1.0, 0.0)
    assert reopened.series("patient1", "SR_2").attrs["intercept"] == 0.0
    assert reopened.spacing("patient1", "SR_2") == (0.5, 0.5)
    assert not reopened.has_lung_mask("patient1", "SR_2")


def test_reading_refuses_a_foreign_group(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(ValueError, match="not a ctengine store"):
        open_store(tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="mode must be"):
        open_store(tmp_path / "other.zarr", mode="w")


def test_a_chunk_missing_from_the_shard_index_is_named_not_allocated(tmp_path):
    """A chunk the index marks missing (nbytes 2**64 - 1) or damaged is refused with its slice and a hint."""
    from ctengine.store import names
    from ctengine.store.chunks import ChunkReader

    store = open_store(tmp_path / "s.zarr", mode="a")
    store.initialise()
    stack = np.arange(3 * 8 * 8, dtype="<u2").reshape(3, 8, 8)
    store.write_series("patient1", "SR_2", stack, {"instances": [1, 2, 3]}, "plan")
    path = store.shard_path("patient1", "SR_2")
    data = bytearray(open(path, "rb").read())
    index = np.frombuffer(data[-names.shard_index_nbytes(3):-4], dtype="<u8").reshape(3, 2).copy()
    index[1] = 2**64 - 1  # slice 1: the sharding codec's "missing chunk"
    data[-names.shard_index_nbytes(3):-4] = index.tobytes()
    import google_crc32c
    data[-4:] = np.uint32(google_crc32c.value(index.tobytes())).astype("<u4").tobytes()
    open(path, "wb").write(bytes(data))
    reader = ChunkReader(open_store(tmp_path / "s.zarr"))
    out = np.empty((8, 8), np.uint16)
    reader.read_into("patient1", "SR_2", 0, 3, out)
    np.testing.assert_array_equal(out, stack[0])
    with pytest.raises(ValueError, match=r"slice z=1 of patient1/SR_2/0 is missing or its index is damaged"):
        reader.read_into("patient1", "SR_2", 1, 3, out)
    reader.close()


def test_a_shard_buffer_is_kept_per_thread_up_to_a_size(monkeypatch):
    """Small shards reuse the thread's buffer (a view lives until the next call); larger ones get their own."""
    from ctengine.store import buffers

    monkeypatch.setattr(shard, "_buffers", buffers.ThreadBuffers())  # this thread keeps nothing yet
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 3000, (4, 32, 32)).astype("<u2") for _ in range(2))
    first = shard.encode_stack(a)
    expected = bytes(first)
    shard.encode_stack(b)
    assert bytes(first) != expected  # the same memory, written again
    monkeypatch.setattr(buffers, "MAX_KEPT_BUFFER_BYTES", 1024)
    first = shard.encode_stack(np.concatenate([a, a]))  # larger than the buffer kept: memory of its own
    expected = bytes(first)
    shard.encode_stack(np.concatenate([b, b]))
    assert bytes(first) == expected


def _zarr_objects(build) -> dict[str, bytes]:
    """What zarr itself writes for ``build`` into an empty in-memory hierarchy."""
    found: dict = {}
    build(zarr.open_group(zarr.storage.MemoryStore(found), mode="w", zarr_format=3))
    return {key: value.to_bytes() for key, value in found.items()}


@pytest.mark.parametrize("n, shape, dtype", [(1, (512, 512), "uint16"), (57, (256, 256), "uint16"),
                                             (3, (64, 33), "uint8"), (0, (512, 512), "uint16")])
def test_a_stack_array_document_is_the_one_zarr_writes(n, shape, dtype):
    written = _zarr_objects(lambda root: schema.create_stack_array(root, n, shape, dtype=dtype, name="a"))
    assert schema.stack_array_document(n, shape, dtype) == written["a/zarr.json"]


@pytest.mark.parametrize("attrs", [{}, {"ctengine": {"complete": True, "plan": "ab"}, "spacing_mm": [0.7, 0.7],
                                        "thickness_mm": None, "kernel": "Lung ü", "instances": list(range(40))}])
def test_a_group_document_is_the_one_zarr_writes(attrs):
    written = _zarr_objects(lambda root: root.create_group("p/s", attributes=attrs))
    assert schema.group_document(attrs) == written["p/s/zarr.json"]


@pytest.mark.parametrize("table", [
    pd.DataFrame({"selected": [True, False, True], "count": np.array([3, 0, 7], np.int64),
                  "mean": [-812.5, np.nan, 1e-300]}),
    pd.DataFrame(np.random.default_rng(3).normal(size=(57, 20)), columns=[f"c{i}" for i in range(20)]),
    pd.DataFrame({"a": [0.0, 0.0], "b": [0, 0]}),  # all fill value: zarr writes no chunk
    pd.DataFrame({"a": [-0.0, 0.0]}),  # -0.0 is not the fill value's bits: zarr writes the chunk
])
def test_matrix_objects_are_the_ones_zarr_writes(table):
    written = _zarr_objects(lambda root: tables.write_matrix(root, "features", table))
    assert tables.matrix_objects("features", table) == {k: v for k, v in written.items() if k != "zarr.json"}
    found: dict = {}
    group = zarr.open_group(zarr.storage.MemoryStore(found), mode="w", zarr_format=3)
    for key, data in tables.matrix_objects("features", table).items():
        found[key] = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(data)
    pd.testing.assert_frame_equal(tables.read_matrix(zarr.open_group(group.store, mode="r")["features"]), table)
