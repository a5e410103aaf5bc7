"""xarray views of a store's series: raw values with their coordinates in mm where known."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import names

if TYPE_CHECKING:
    from .handle import Store


def series_array(store: "Store", patient: str, series: str):
    """A dask-backed ``xarray.DataArray`` (instance, y, x) of raw values, mm coordinates where known.

    Where the pixel spacing is unknown, ``y`` and ``x`` count pixels and
    their ``units`` attribute says so (``"pixel"``, with a ``note``);
    ``z_mm`` is there only when the slice thickness is known.
    """
    import dask.array as da
    import xarray as xr

    array = store.raw(patient, series)
    attrs = store.series_attrs(patient, series)
    z, ny, nx = array.shape
    known, thickness = names.spacing(attrs), names.thickness(attrs)
    coords: dict[str, Any] = {"instance": np.asarray(attrs["instances"], dtype=np.int64)}
    for axis, n, step in (("y", ny, known[0] if known else None), ("x", nx, known[1] if known else None)):
        coords[axis] = xr.Variable(axis, np.arange(n) * step if step else np.arange(n),
                                   attrs={"units": "mm"} if step else
                                   {"units": "pixel", "note": "pixel spacing unknown: no metadata for this series"})
    if thickness:
        coords["z_mm"] = ("instance", np.arange(z) * thickness)
    keep = ("thickness_mm", "spacing_mm", "kernel", "window_center", "window_width")
    slope, intercept = names.rescale(attrs)
    return xr.DataArray(da.from_zarr(array), dims=("instance", "y", "x"), coords=coords,
                        name=f"{patient}/{series}",
                        attrs={"units": "raw", "slope": slope, "intercept": intercept,
                               **{k: attrs[k] for k in keep if attrs.get(k) is not None}})
