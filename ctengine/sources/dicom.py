"""DICOM CT series: headers first (no pixels), series checks, then pixels stored bit-exact.

Headers are read with ``stop_before_pixels``; only the tags listed in
:class:`Header` are kept, so PatientName, PatientBirthDate and every other
tag never leave this module. Files are grouped by (StudyInstanceUID,
SeriesInstanceUID) and ordered by ImagePositionPatient projected on the
slice normal, superior first (file names play no part).

Refused, with the reason (the store's quarantine table): a file that is not
CT, a localizer / scout (ImageType contains LOCALIZER), a file that is not
16-bit grayscale, a compressed transfer syntax with no decoder installed;
a series with mixed sizes, orientations or rescales, with duplicate
positions, gaps or uneven spacing (the positions are named), or that is
not axial within 1 degree.

Stored values (:func:`encode`): when the rescale is a pure integer shift
(slope 1, integer intercept) and every pixel of the series fits,
raw = stored + intercept + 1024 = HU + 1024, the COVID-CTset convention;
otherwise the stored values themselves (uint16 as is, int16 + 32768). Both
are exactly invertible: the offset is recorded and the intercept adjusted
so that HU = raw * slope + intercept holds.
"""
from __future__ import annotations

import functools
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..constants import HU_OFFSET, RAW_DTYPE

__all__ = ["Header", "decoder_available", "encode", "is_dicom_file", "order_series", "read_header",
           "read_pixels"]

#: angle (degrees) within which a slice must be axial and its rows / columns along patient x / y
AXIS_TOLERANCE_DEG = 1.0
#: neighbouring positions closer than this (mm) are duplicates
DUPLICATE_MM = 0.01
#: a step between positions may differ from the median step by this fraction; over 1.5x it is a gap
SPACING_TOLERANCE = 0.1
#: offset that makes int16 values uint16
INT16_OFFSET = 32768
#: SOP class of a DICOMDIR (Media Storage Directory Storage): an index, not an image
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class Header:
    """The tags of one DICOM file that ingest uses (never names, dates of birth or other PHI)."""

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    series_number: str
    modality: str
    image_type: tuple[str, ...]
    transfer_syntax: str
    rows: int
    columns: int
    bits_allocated: int
    pixel_representation: int
    samples: int
    frames: int
    photometric: str
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    spacing_between: float | None
    slope: float
    intercept: float
    kernel: str
    window_center: float | None
    window_width: float | None


def is_dicom_file(path: str) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble (``DICM`` at byte 128)."""
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _first(value: Any) -> Any:
    """The first value of a multi-valued tag (WindowCenter may hold several)."""
    if value is None or value == "":
        return None
    try:
        return value[0] if not isinstance(value, (str, bytes)) and len(value) else value
    except TypeError:
        return value


def _float(value: Any) -> float | None:
    value = _first(value)
    return None if value is None else float(value)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None or value == "" or len(value) != n:
        return None
    return tuple(float(v) for v in value)


def read_header(path: str) -> Header | None:
    """The ingest tags of one file, pixels not read; None for a DICOMDIR (an index of files).

    Raises
    ------
    ValueError
        Not a readable DICOM file, or not an image (no study / series UID).
    """
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on benign tag-value deviations of real scanners
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for files that are not DICOM
        raise ValueError(f"unreadable DICOM ({type(exc).__name__}: {exc})") from None
    meta = getattr(ds, "file_meta", None)
    if str(getattr(meta, "MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
        return None
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        raise ValueError("not a DICOM image (no StudyInstanceUID / SeriesInstanceUID)")
    return Header(
        path=path, study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.get("SOPInstanceUID", "")), patient_id=str(ds.get("PatientID", "") or ""),
        series_number=str(ds.get("SeriesNumber", "") or ""), modality=str(ds.get("Modality", "") or ""),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())), transfer_syntax=syntax,
        rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
        bits_allocated=int(ds.get("BitsAllocated", 0) or 0),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        samples=int(ds.get("SamplesPerPixel", 1) or 1), frames=int(ds.get("NumberOfFrames", 1) or 1),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2), thickness=_float(ds.get("SliceThickness")),
        spacing_between=_float(ds.get("SpacingBetweenSlices")),
        slope=float(_float(ds.get("RescaleSlope")) or 1.0),
        intercept=float(_float(ds.get("RescaleIntercept")) or 0.0),
        kernel=str(_first(ds.get("ConvolutionKernel")) or ""),
        window_center=_float(ds.get("WindowCenter")), window_width=_float(ds.get("WindowWidth")))


@functools.lru_cache(maxsize=64)
def decoder_available(transfer_syntax: str) -> bool:
    """Whether pydicom can decode pixel data of this transfer syntax with what is installed."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def file_problem(header: Header) -> str | None:
    """Why one file cannot be a slice of a stored CT series, or None."""
    if header.modality.upper() != "CT":
        return f"modality {header.modality or 'missing'} is not CT"
    if "LOCALIZER" in header.image_type:
        return "localizer / scout image (ImageType " + "\\".join(header.image_type) + ")"
    if header.samples != 1 or header.bits_allocated != 16 or header.photometric != "MONOCHROME2":
        return (f"not 16-bit grayscale ({header.samples} samples, {header.bits_allocated} bits allocated, "
                f"{header.photometric or 'no photometric interpretation'})")
    if header.frames > 1:
        return f"multi-frame image ({header.frames} frames; enhanced CT is not supported)"
    if header.orientation is None or header.position is None:
        return "no ImageOrientationPatient / ImagePositionPatient"
    if not decoder_available(header.transfer_syntax):
        from pydicom.uid import UID

        return (f"compressed transfer syntax {UID(header.transfer_syntax).name} ({header.transfer_syntax}): "
                f"no decoder installed (pip install 'ctengine[dicom]')")
    return None


def _counts(values: list[Any]) -> str:
    return ", ".join(f"{v}: {n} files" for v, n in Counter(values).most_common())


def in_plane_axes(orientation: tuple[float, ...]) -> tuple[bool, bool, bool]:
    """(transpose, flip_y, flip_x) that bring a slice to the store's (y posterior, x left); ValueError if oblique.

    ``orientation`` is ImageOrientationPatient: the LPS direction of a row
    (column index growing) and of a column (row index growing).
    """
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    limit = np.cos(np.deg2rad(AXIS_TOLERANCE_DEG))
    if abs(normal[2]) < limit * np.linalg.norm(normal):
        raise ValueError(f"not axial within {AXIS_TOLERANCE_DEG:g} degree (ImageOrientationPatient "
                         f"{[round(v, 4) for v in orientation]})")
    if abs(row[0]) >= limit and abs(col[1]) >= limit:
        return False, bool(col[1] < 0), bool(row[0] < 0)
    if abs(row[1]) >= limit and abs(col[0]) >= limit:  # rows run along y: transpose first
        return True, bool(row[1] < 0), bool(col[0] < 0)
    raise ValueError(f"oblique in-plane axes (ImageOrientationPatient {[round(v, 4) for v in orientation]})")


def order_series(headers: list[Header]) -> tuple[list[Header], float | None, tuple[bool, bool, bool]]:
    """Order a series' files superior first; return (files, slice spacing in mm, in-plane axes).

    Raises
    ------
    ValueError
        Mixed sizes, orientations, rescales or pixel representations; not
        axial; duplicate positions, gaps or uneven spacing (positions named).
    """
    for what, values in (("slice sizes", [f"{h.rows}x{h.columns}" for h in headers]),
                         ("orientations", [tuple(round(v, 4) for v in h.orientation) for h in headers]),
                         ("rescales (slope, intercept)", [(h.slope, h.intercept) for h in headers]),
                         ("pixel representations", [h.pixel_representation for h in headers])):
        if len(set(values)) > 1:
            raise ValueError(f"mixed {what} ({_counts(values)})")
    axes = in_plane_axes(headers[0].orientation)
    row, col = np.asarray(headers[0].orientation[:3]), np.asarray(headers[0].orientation[3:])
    normal = np.cross(row, col)
    normal = normal if normal[2] > 0 else -normal  # toward superior
    height = np.array([np.dot(h.position, normal) for h in headers])
    order = np.argsort(-height, kind="stable")
    ordered, height = [headers[i] for i in order], height[order]
    if len(ordered) < 2:
        return ordered, None, axes
    steps = -np.diff(height)
    median = float(np.median(steps))
    duplicates = [f"{height[i]:.2f} mm" for i in np.flatnonzero(steps <= DUPLICATE_MM)]
    if duplicates:
        raise ValueError(f"duplicate slice positions along the normal at {', '.join(duplicates[:5])}"
                         f"{' ...' if len(duplicates) > 5 else ''}")
    gaps = [f"{height[i]:.2f} to {height[i + 1]:.2f} mm" for i in np.flatnonzero(steps > 1.5 * median)]
    if gaps:
        raise ValueError(f"gap in slice positions (step {median:.3g} mm) between {', '.join(gaps[:5])}"
                         f"{' ...' if len(gaps) > 5 else ''}")
    uneven = np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median)
    if len(uneven):
        raise ValueError(f"uneven slice spacing (median {median:.3g} mm; steps "
                         f"{', '.join(f'{steps[i]:.3g}' for i in uneven[:5])} mm)")
    return ordered, median, axes


def read_pixels(headers: list[Header], axes: tuple[bool, bool, bool]) -> np.ndarray:
    """Stored pixel values (int16 or uint16, (z, y, x) in the store's orientation) of ordered files."""
    import pydicom

    transpose, flip_y, flip_x = axes
    slices = []
    for header in headers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(header.path)
            if str(ds.get("SOPInstanceUID", "")) != header.sop_uid:
                raise ValueError(f"{header.path} changed since its header was read")
            image = ds.pixel_array
        image = image.T if transpose else image
        slices.append(image[::-1 if flip_y else 1, ::-1 if flip_x else 1])
    return np.stack(slices)


def encode(stored: np.ndarray, *, slope: float, intercept: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Raw uint16 values of a series' stored values, and the exact mapping (raw = stored + offset).

    Returns
    -------
    (raw, mapping) with mapping: encoding (``"hu+1024"`` or ``"stored"``),
    offset (raw = stored + offset), slope and intercept of the raw values
    (HU = raw * slope + intercept), and the file's own rescale.

    Examples
    --------
    >>> raw, m = encode(np.array([[[-1000, 0]]], dtype=np.int16), slope=1.0, intercept=-1024.0)
    >>> raw.tolist(), m["encoding"], m["offset"], m["intercept"]
    ([[[31768, 32768]]], 'stored', 32768, -33792.0)
    >>> raw, m = encode(np.array([[[0, 2000]]], dtype=np.int16), slope=1.0, intercept=-1024.0)
    >>> raw.tolist(), m["encoding"], m["offset"], m["intercept"]
    ([[[0, 2000]]], 'hu+1024', 0, -1024.0)
    """
    mapping: dict[str, Any] = {"rescale_slope": slope, "rescale_intercept": intercept, "stored_dtype": str(stored.dtype)}
    if slope == 1.0 and float(intercept).is_integer() and stored.size:
        shift = int(intercept) + HU_OFFSET
        if _fits(stored, shift):
            mapping.update(encoding="hu+1024", offset=shift, slope=1.0, intercept=float(-HU_OFFSET))
            return apply_offset(stored, shift), mapping
    offset = INT16_OFFSET if stored.dtype.kind == "i" else 0
    mapping.update(encoding="stored", offset=offset, slope=slope, intercept=float(intercept - offset * slope))
    return apply_offset(stored, offset), mapping


def _fits(stored: np.ndarray, offset: int) -> bool:
    return not stored.size or (int(stored.min()) + offset >= 0 and int(stored.max()) + offset <= 65535)


def apply_offset(stored: np.ndarray, offset: int) -> np.ndarray:
    """raw = stored + offset as uint16 (no wider temporary); ValueError when a value falls outside 0..65535."""
    if stored.dtype.itemsize > 2 or stored.dtype.kind not in "iu":
        raise ValueError(f"stored values of type {stored.dtype} are not 16-bit integers")
    if not _fits(stored, offset):
        raise ValueError(f"values {stored.min()}..{stored.max()} do not fit the stored offset {offset}")
    # modulo 2**16 the sum is exact, and it lies in 0..65535, so it is the sum itself
    return stored.astype(RAW_DTYPE) + RAW_DTYPE.type(offset % 65536)


def relative_name(path: str, root: str) -> str:
    """A source name for the catalog: the path relative to the folder given to ingest."""
    return os.path.relpath(path, root) if root and path.startswith(root) else os.path.basename(path)
