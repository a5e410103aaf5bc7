"""Tables inside the store: a DataFrame as a group of 1-D arrays, or as one 2-D float matrix."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import zarr

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


def write_matrix(group: zarr.Group, name: str, table: pd.DataFrame) -> None:
    """A numeric table as one 2-D float64 array (z, feature): one object, exact for ints < 2**53."""
    array = group.create_array(name, shape=table.shape, chunks=table.shape, dtype="float64",
                               dimension_names=("z", "feature"), overwrite=True,
                               attributes={"columns": list(table.columns),
                                           "dtypes": [str(table[c].dtype) for c in table.columns]})
    array[:] = table.to_numpy(dtype=np.float64)


def read_matrix(array: zarr.Array) -> pd.DataFrame:
    """Read a table written by :func:`write_matrix`, with its column dtypes."""
    table = pd.DataFrame(array[:], columns=array.attrs["columns"])
    return table.astype(dict(zip(table.columns, array.attrs["dtypes"])))
