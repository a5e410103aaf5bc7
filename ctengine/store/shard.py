"""Whole-shard encoding and decoding for the store's raw arrays.

A series is one zarr v3 shard of one-slice chunks. Encoding it here in one
call (blosc in C, no per-chunk Python machinery) and writing it as one
object is what makes ingest run at codec speed; the bytes are exactly what
zarr's ``sharding_indexed`` codec with the chain [bytes, blosc] and index
chain [bytes, crc32c] (index at the end) reads, so plain zarr reads the store.
"""
from __future__ import annotations

import google_crc32c
import imagecodecs
import numcodecs
import numpy as np

from ..constants import RAW_DTYPE
from .buffers import ThreadBuffers
from .names import shard_index_nbytes

#: chosen by measurement on CT phantoms (512 x 512, one thread): lz4-9 + bit shuffle compresses
#: 2.27x at 0.55 ms and decompresses at 0.20 ms per slice; zstd-1 gives 2.53x at 1.04 / 0.59 ms,
#: which made compression and decompression the bottleneck of ingest, features and the loader
BLOSC_CNAME = "lz4"
BLOSC_CLEVEL = 9
BLOSC_SHUFFLE = "bitshuffle"
_EMPTY = np.uint64(2**64 - 1)
_blosc = numcodecs.Blosc()


def encode_chunk(image: np.ndarray, *, clevel: int = BLOSC_CLEVEL, out: memoryview | None = None) -> bytes | memoryview:
    """Blosc (lz4, bit shuffle, typesize = itemsize) frame of one slice, one thread.

    Raw slices are uint16 (typesize 2), lung masks uint8 (typesize 1);
    multi-byte data is encoded little endian, as the zarr ``bytes`` codec.
    With ``out`` (at least the slice's bytes + :data:`FRAME_OVERHEAD`) the
    frame is written there and a view of it returned.
    """
    image = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    return imagecodecs.blosc_encode(image, level=clevel, compressor=BLOSC_CNAME, shuffle=2,
                                    typesize=image.dtype.itemsize, numthreads=1, out=out)


def pixel_crc32c(stack: np.ndarray) -> list[int]:
    """CRC-32C of each slice's little-endian pixels (z, y, x stack), as the series attribute
    :data:`~ctengine.store.names.PIXEL_CRC32C` holds them."""
    stack = np.ascontiguousarray(stack, dtype=stack.dtype.newbyteorder("<"))
    return [int(google_crc32c.value(image)) for image in stack]


def index_crc(index_bytes: bytes) -> bytes:
    """The CRC-32C (4 bytes, little endian) that closes a shard's index."""
    return np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()


#: bytes blosc adds at most to a chunk (BLOSC_MAX_OVERHEAD): the room encode_chunk gives it on its own too,
#: so the frames are the same
FRAME_OVERHEAD = 16
_buffers = ThreadBuffers()


def encode_stack(stack: np.ndarray, *, buffer: str = "shard") -> memoryview:
    """The shard of a (z, y, x) stack: the :func:`encode_chunk` frames in order, then their index and its CRC-32C.

    The chunks are compressed straight into the buffer named ``buffer``,
    kept per thread, so a series costs no new memory (and no page faults);
    the returned view is valid until the thread's next call with the same
    ``buffer`` (see :class:`ThreadBuffers` for the size up to which it is kept).
    """
    bound = stack[0].nbytes + FRAME_OVERHEAD if len(stack) else 0
    view = memoryview(_buffers.get(buffer, len(stack) * bound + shard_index_nbytes(len(stack)), np.uint8))
    index = np.empty((len(stack), 2), dtype="<u8")
    end = 0
    for z, image in enumerate(stack):
        frame = encode_chunk(image, out=view[end:end + bound])
        index[z] = end, len(frame)
        end += len(frame)
    tail = index.tobytes()
    tail += index_crc(tail)
    view[end:end + len(tail)] = tail
    return view[:end + len(tail)]


def shard_index(shard: bytes | memoryview, n_chunks: int) -> np.ndarray:
    """The (n_chunks, 2) offset/nbytes table of a shard; ValueError if its CRC fails."""
    tail = memoryview(shard)[-shard_index_nbytes(n_chunks):]
    index_bytes, crc = bytes(tail[:-4]), bytes(tail[-4:])
    if index_crc(index_bytes) != crc:
        raise ValueError("shard index checksum does not match")
    return np.frombuffer(index_bytes, dtype="<u8").reshape(n_chunks, 2)


def decode_chunk_into(frame: bytes | memoryview, out: np.ndarray) -> np.ndarray:
    """Decompress one chunk straight into ``out`` (a C-contiguous uint16 slice)."""
    _blosc.decode(frame, out=out)
    return out


def decode_shard(shard: bytes, shape: tuple[int, int, int], *, dtype=RAW_DTYPE,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Decode a whole shard to a (z, y, x) stack (raw uint16 by default); missing chunks read as 0."""
    out = np.empty(shape, dtype=dtype) if out is None else out
    view = memoryview(shard)
    for z, (offset, nbytes) in enumerate(shard_index(shard, shape[0])):
        if offset == _EMPTY and nbytes == _EMPTY:
            out[z] = 0
        else:
            decode_chunk_into(view[int(offset):int(offset + nbytes)], out[z])
    return out
