"""Store keys (patient, series) of sources that are not COVID-CTset trees.

The store is keyed ``<patient>/<series>`` with lower-case patient keys
(``patient12``) and series keys ``SR_<k>``. Other sources map onto the same
form:

- DICOM: patient = the sanitised PatientID, series = ``SR_<SeriesNumber>``;
  a series without SeriesNumber, and every series whose key would collide
  with another one (same PatientID and SeriesNumber, different
  SeriesInstanceUID), gets ``SR_<SeriesNumber or x>_<8 hex digits of the
  SHA-1 of the SeriesInstanceUID>``; a file without PatientID gets
  ``dicom-<8 hex digits of the SHA-1 of the StudyInstanceUID>``.
- NIfTI / NRRD: patient = the sanitised file name without its extension,
  series = ``SR_1``.

Sanitising lower-cases, replaces every character outside ``[a-z0-9._-]`` by
``-`` and strips leading dots and dashes; a key that would be a name of the
store itself (``catalog``, ``quarantine``) or is empty gets the prefix ``p-``.
"""
from __future__ import annotations

import hashlib
import re

from ..store import names

__all__ = ["patient_key", "series_key", "short_hash", "volume_keys"]

_BAD = re.compile(r"[^a-z0-9._-]+")
_RESERVED = {names.CATALOG, names.QUARANTINE, names.LABELS_GROUP}
MAX_KEY_LENGTH = 64
#: file extensions of volume sources, longest first
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr")


def short_hash(text: str) -> str:
    """First 8 hex digits of the SHA-1 of ``text``.

    Examples
    --------
    >>> short_hash("1.2.3")
    '6f9f3348'
    """
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def sanitise(text: str) -> str:
    """A store key from free text: lower case, ``[a-z0-9._-]`` only, at most 64 characters.

    Examples
    --------
    >>> sanitise("LIDC-IDRI-0001")
    'lidc-idri-0001'
    >>> sanitise("Catalog")
    'p-catalog'
    """
    key = _BAD.sub("-", text.strip().lower()).lstrip(".-")[:MAX_KEY_LENGTH]
    return f"p-{key}" if not key or key in _RESERVED else key


def patient_key(patient_id: str | None, study_uid: str) -> str:
    """Patient key of a DICOM file from its PatientID (or StudyInstanceUID when there is none)."""
    if patient_id and patient_id.strip():
        return sanitise(patient_id)
    return f"dicom-{short_hash(study_uid)}"


def series_key(series_number: str | int | None, series_uid: str, *, collides: bool = False) -> str:
    """Series key of a DICOM series: ``SR_<SeriesNumber>``, with a UID hash when missing or colliding.

    Examples
    --------
    >>> series_key("3000566", "1.2.3")
    'SR_3000566'
    >>> series_key(None, "1.2.3")
    'SR_x_6f9f3348'
    """
    number = re.sub(r"[^0-9A-Za-z]+", "", str(series_number)) if series_number not in (None, "") else ""
    if number and not collides:
        return f"SR_{number}"
    return f"SR_{number or 'x'}_{short_hash(series_uid)}"


def volume_keys(path: str) -> tuple[str, str]:
    """(patient, series) of a NIfTI / NRRD file: its sanitised name without extension, ``SR_1``.

    Examples
    --------
    >>> volume_keys("/data/cxr.nii.gz")
    ('cxr', 'SR_1')
    """
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for ext in VOLUME_EXTENSIONS:
        if lower.endswith(ext):
            base = base[: -len(ext)]
            break
    return sanitise(base), "SR_1"
