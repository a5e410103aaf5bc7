"""Tables inside the store: a DataFrame as a group of 1-D arrays, or as one 2-D float matrix."""
from __future__ import annotations

import functools
from typing import Any

import numcodecs
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import MemoryStore

from .names import TABLE_DIM


def write_table(group: zarr.Group, name: str, table: pd.DataFrame) -> None:
    """Store a DataFrame as a group of 1-D arrays (dimension ``slice``), replacing any old one."""
    sub = group.create_group(name, overwrite=True, attributes={"columns": list(table.columns)})
    n = len(table)
    for column in table.columns:
        values = table[column].to_numpy()
        if values.dtype == object or pd.api.types.is_string_dtype(table[column].dtype):
            values = table[column].astype(str).to_numpy(dtype=object)
            dtype: Any = str
        else:
            dtype = values.dtype
        array = sub.create_array(column, shape=(n,), chunks=(max(n, 1),), dtype=dtype,
                                 dimension_names=(TABLE_DIM,), fill_value="" if dtype is str else None)
        if n:
            array[:] = values


def read_table(group: zarr.Group, name: str) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    sub = group[name]
    columns = sub.attrs["columns"]
    data = {column: sub[column][:] for column in columns}
    return pd.DataFrame({c: (v.astype(object) if v.dtype.kind in "OTU" else v) for c, v in data.items()},
                        columns=columns)


def same_table(group: zarr.Group, name: str, table: pd.DataFrame) -> bool:
    """Whether ``group`` holds the table ``name`` with the same columns and values as ``table``."""
    try:
        old = read_table(group, name)
    except Exception:  # unreadable old table: not the same
        return False
    return list(old.columns) == list(table.columns) and len(old) == len(table) and \
        old.astype(str).equals(table.reset_index(drop=True).astype(str))


def write_table_if_changed(group: zarr.Group, name: str, table: pd.DataFrame) -> bool:
    """Write a table unless ``group`` already holds the same one; return whether it wrote."""
    if name in group and same_table(group, name, table):
        return False
    write_table(group, name, table.reset_index(drop=True))
    return True


#: the matrix's one chunk: float64 little endian, zstd at this level, no checksum (zarr's default)
MATRIX_ZSTD_LEVEL = 0


def write_matrix(group: zarr.Group, name: str, table: pd.DataFrame) -> None:
    """A numeric table as one 2-D float64 array (z, feature): one object, exact for ints < 2**53."""
    array = _create_matrix(group, name, table.shape, tuple(table.columns), _dtypes(table))
    array[:] = table.to_numpy(dtype=np.float64)


def matrix_objects(name: str, table: pd.DataFrame) -> dict[str, bytes]:
    """The objects :func:`write_matrix` writes for ``table`` under ``name``, keyed relative to its group.

    The metadata is rendered by zarr once per shape and columns; the chunk
    is encoded with the array's own codec and, as zarr does, left out when
    every value is the fill value +0.0.

    Examples
    --------
    >>> sorted(matrix_objects("features", pd.DataFrame({"a": [1.0, 2.0]})))
    ['features/c/0/0', 'features/zarr.json']
    """
    values = np.ascontiguousarray(table.to_numpy(dtype=np.float64), dtype="<f8")
    objects = {f"{name}/zarr.json": _matrix_document(table.shape, tuple(table.columns), _dtypes(table))}
    if values.size and values.view(np.uint64).any():  # as zarr: not every value the fill value's bits (+0.0)
        objects[f"{name}/c/0/0"] = numcodecs.Zstd(level=MATRIX_ZSTD_LEVEL, checksum=False).encode(values)
    return objects


def _dtypes(table: pd.DataFrame) -> tuple[str, ...]:
    return tuple(str(table[c].dtype) for c in table.columns)


def _create_matrix(group: zarr.Group, name: str, shape: tuple[int, int], columns: tuple, dtypes: tuple[str, ...]):
    return group.create_array(name, shape=shape, chunks=shape, dtype="float64", dimension_names=("z", "feature"),
                              compressors=[ZstdCodec(level=MATRIX_ZSTD_LEVEL, checksum=False)], overwrite=True,
                              attributes={"columns": list(columns), "dtypes": list(dtypes)})


@functools.lru_cache(maxsize=64)
def _matrix_document(shape: tuple[int, int], columns: tuple, dtypes: tuple[str, ...]) -> bytes:
    found: dict = {}
    _create_matrix(zarr.open_group(MemoryStore(found), mode="w", zarr_format=3), "m", shape, columns, dtypes)
    return found["m/zarr.json"].to_bytes()


def read_matrix(array: zarr.Array) -> pd.DataFrame:
    """Read a table written by :func:`write_matrix`, with its column dtypes."""
    table = pd.DataFrame(array[:], columns=array.attrs["columns"])
    return table.astype(dict(zip(table.columns, array.attrs["dtypes"])))
