"""Who is in a synthetic cohort: patients, groups, series, slice counts and metadata.

Two modes:

- ``patients=N``: N patients (about a quarter COVID), each a copy of a
  random real patient's thickness, kernels, spacing and demographics;
- ``like="covid-ctset"``: the real 377 patients (or a ``fraction`` of
  them) with their own groups, thickness, kernels, spacing, details and
  metadata, and exactly the real number of slices per class (15,589 of
  COVID patients, 48,260 of normal ones; scaled with the patient subset).

Slice counts come from the scan length and the slice increment
(``max(thickness, 3 mm)``: the thin 1.5 mm series are reconstructed every
3 mm), scaled per class so the totals are exact. The real per-patient
facts live in ``covid_ctset.csv`` next to this module, derived from the
dataset's public CSVs by ``reference_table``.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import GROUPS_COVID, GROUPS_NORMAL, MULTI_SEP, SERIES, SLICE_SHAPE
from .phantom import KERNEL_NOISE_HU

__all__ = ["CohortPlan", "PatientPlan", "SeriesPlan", "DETAIL_COLUMNS", "META_ATTRS", "REAL_SLICES",
           "load_reference", "plan_cohort", "reference_table"]

#: columns of Patient_details.csv
DETAIL_COLUMNS = ("Patient ID", "SEX", "AGE", "Date", "COVID-19 Infection", "SR_2 Folder thickness(mm)",
                  "SR_3 Folder thickness(mm)", "SR_4 Folder thickness(mm)")
#: per-series attributes written to Patients_metadata.csv (as ``<series> <attr>``)
META_ATTRS = ("BitsStored", "Columns", "ConvolutionKernel", "PixelSpacing", "RescaleIntercept", "RescaleSlope",
              "Rows", "SliceThickness", "WindowCenter", "WindowCenterWidthExplanation", "WindowWidth")
#: unique slices of the real dataset per class (FACTS.md "Size")
REAL_SLICES = {"covid": 15_589, "normal": 48_260}
REAL_PATIENTS = {"covid": 95, "normal": 282}
#: fallback thickness (mm) and kernel of a series whose metadata is N/A
DEFAULT_SERIES = {"SR_2": (6.0, "B70s"), "SR_3": (5.0, "B30s"), "SR_4": (1.5, "B70s")}
#: slices of a series never fall below this (the lungs must close at both ends)
MIN_SLICES = 12
#: scan length (mm) mean and sd; thin series are reconstructed every THIN_INCREMENT mm
SCAN_MM = (266.0, 28.0)
THIN_INCREMENT = 3.0
NA = "N/A"
#: a flat slice name, ``<group>_<patient>_<SR_k>_IMnnnnn.tif``
FLAT_NAME = r"^(?P<group>.+?)_(?P<patient>patient\d+)_(?P<series>SR_\d)_IM(?P<im>\d+)\.tif$"
_REFERENCE = Path(__file__).with_name("covid_ctset.csv")


@dataclass
class SeriesPlan:
    """One series to render and where to write it."""
    patient: str
    series: str
    groups: tuple[str, ...]
    n_slices: int
    thickness_mm: float
    kernel: str
    spacing_mm: float
    covid: bool
    seed: int
    anatomy_seed: int
    scan_length_mm: float
    body_width_mm: float
    lesion_burden: float | None = None


@dataclass
class PatientPlan:
    """One patient: class, groups, the details and metadata rows, and three series."""
    patient: str
    covid: bool
    details: dict[str, str]
    metadata: dict[str, str]
    series: list[SeriesPlan] = field(default_factory=list)
    normal_labels: int | None = None   # labelled SR_2 slices of a normal patient (real count in like-mode)

    @property
    def groups(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.series:
            seen.update(dict.fromkeys(s.groups))
        return tuple(seen)


@dataclass
class CohortPlan:
    """Every patient of a cohort, in the order of Patient_details.csv."""
    patients: list[PatientPlan]
    seed: int
    shape: tuple[int, int] = SLICE_SHAPE

    @property
    def series(self) -> list[SeriesPlan]:
        return [s for p in self.patients for s in p.series]

    def slices(self, covid: bool | None = None) -> int:
        """Unique slices (a series written under two groups counts once)."""
        return sum(s.n_slices for s in self.series if covid is None or s.covid == covid)


def reference_table(details: str | os.PathLike, metadata: str | os.PathLike, labels: str | os.PathLike) -> pd.DataFrame:
    """Per-patient facts of the real dataset from its public CSVs (the content of ``covid_ctset.csv``).

    Columns: the Patient_details.csv columns, ``<series> <attr>`` for ``META_ATTRS``, and per series
    ``<series> groups`` (groups holding it in all.csv, joined by ``;``) and ``<series> labelled``
    (unique labelled slices). Every cell is a string as written in the source files.
    """
    det = pd.read_csv(details, dtype=str, keep_default_na=False)
    meta = pd.read_csv(metadata, dtype=str, keep_default_na=False).set_index("Patient ID")
    lab = pd.read_csv(labels, dtype=str, keep_default_na=False)
    parts = lab["filename"].str.extract(FLAT_NAME)
    bad = parts.isna().any(axis=1)
    if bad.any():
        raise ValueError(f"unexpected file names in {labels}: {lab['filename'][bad].head(3).tolist()}")
    out = det[list(DETAIL_COLUMNS)].copy()
    for attr in META_ATTRS:
        for s in SERIES:
            col = f"{s} {attr}"
            out[col] = out["Patient ID"].map(meta[col]).fillna(NA) if col in meta else NA
    groups = parts.groupby(["patient", "series"])["group"].agg(lambda g: MULTI_SEP.join(sorted(set(g))))
    counts = parts.drop_duplicates(["patient", "series", "im"]).groupby(["patient", "series"]).size()
    for s in SERIES:
        out[f"{s} groups"] = [groups.get((p, s), "") for p in out["Patient ID"]]
        out[f"{s} labelled"] = [str(int(counts.get((p, s), 0))) for p in out["Patient ID"]]
    return out


def load_reference(like: str) -> pd.DataFrame:
    """The real per-patient table: ``"covid-ctset"`` (bundled) or a folder holding the dataset's three CSVs."""
    if like == "covid-ctset":
        return pd.read_csv(_REFERENCE, dtype=str, keep_default_na=False)
    d = Path(like)
    if d.is_dir() and all((d / n).is_file() for n in ("Patient_details.csv", "Patients_metadata.csv", "all.csv")):
        return reference_table(d / "Patient_details.csv", d / "Patients_metadata.csv", d / "all.csv")
    raise ValueError(f"like must be 'covid-ctset' or a folder with Patient_details.csv, Patients_metadata.csv "
                     f"and all.csv, got {like!r}")


def _float(cell: str) -> float | None:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def _spacing(cell: str) -> float | None:
    if cell.startswith("[") and cell.endswith("]"):
        return _float(cell[1:-1].split(",")[0])
    return None


def _increment(thickness: float) -> float:
    return max(thickness, THIN_INCREMENT)


def _exact_counts(raw: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integers proportional to ``raw`` (each >= minimum) that sum exactly to ``total`` (largest remainder)."""
    if total < minimum * raw.size:
        raise ValueError(f"{total} slices cannot fill {raw.size} series of at least {minimum}")
    fixed = np.zeros(raw.size, bool)
    out = np.zeros(raw.size, np.int64)
    while True:
        free = ~fixed
        rest = total - minimum * int(fixed.sum())
        x = raw[free] * rest / raw[free].sum()
        if (x >= minimum).all():
            base = np.floor(x).astype(np.int64)
            order = np.argsort(-(x - base), kind="stable")
            base[order[: rest - int(base.sum())]] += 1
            out[free] = base
            out[fixed] = minimum
            return out
        idx = np.flatnonzero(free)[x < minimum]
        fixed[idx] = True


def _series_settings(row: dict[str, str], s: str) -> tuple[float, str, float | None]:
    th = _float(row[f"{s} Folder thickness(mm)"]) or _float(row[f"{s} SliceThickness"]) or DEFAULT_SERIES[s][0]
    kernel = row[f"{s} ConvolutionKernel"]
    if kernel not in KERNEL_NOISE_HU:
        kernel = DEFAULT_SERIES[s][1]
    return th, kernel, _spacing(row[f"{s} PixelSpacing"])


def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _pnum(patient: str) -> int:
    """Stable number of a patient ID (its digits, or a CRC of the name)."""
    tail = patient.removeprefix("patient")
    return int(tail) if tail.isdigit() else zlib.crc32(patient.encode())


def plan_cohort(*, patients: int | None = None, slices_per_series: int | None = None, like: str | None = None,
                fraction: float = 1.0, seed: int = 0, shape: tuple[int, int] = SLICE_SHAPE,
                covid_ratio: float | None = None) -> CohortPlan:
    """Plan a cohort (see module docstring); nothing is rendered or written.

    Raises ValueError for no mode or both modes, ``patients`` < 1, ``fraction`` outside (0, 1],
    ``slices_per_series`` < 4 or a ``covid_ratio`` outside [0, 1].
    """
    if (patients is None) == (like is None):
        raise ValueError(f"give exactly one of patients or like, got patients={patients!r}, like={like!r}")
    if slices_per_series is not None and (int(slices_per_series) != slices_per_series or slices_per_series < 4):
        raise ValueError(f"slices_per_series must be an int >= 4, got {slices_per_series!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if like is None and fraction != 1.0:
        raise ValueError(f"fraction applies to like-mode only, got fraction={fraction!r} with patients={patients!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if covid_ratio is not None and not 0.0 <= covid_ratio <= 1.0:
        raise ValueError(f"covid_ratio must be in [0, 1], got {covid_ratio!r}")
    ref = load_reference(like if like is not None else "covid-ctset")
    rng = np.random.default_rng([seed, 11])
    if like is not None:
        rows, groups_of = _like_rows(ref, fraction, rng)
    else:
        if int(patients) != patients or patients < 1:
            raise ValueError(f"patients must be an int >= 1, got {patients!r}")
        rows, groups_of = _sampled_rows(ref, int(patients), rng, covid_ratio)
    plans = [_patient_plan(r, groups_of[r["Patient ID"]], seed, like is not None) for r in rows]
    if slices_per_series is not None:
        for s in (s for p in plans for s in p.series):
            s.n_slices = int(slices_per_series)
    elif like is not None:
        for cls, covid in (("covid", True), ("normal", False)):
            chosen = [s for p in plans for s in p.series if s.covid == covid]
            if not chosen:
                continue
            n_pat = sum(p.covid == covid for p in plans)
            total = round(REAL_SLICES[cls] * n_pat / REAL_PATIENTS[cls])
            raw = np.array([s.scan_length_mm / _increment(s.thickness_mm) for s in chosen])
            for s, n in zip(chosen, _exact_counts(raw, total, MIN_SLICES)):
                s.n_slices = int(n)
    for p in plans:
        sr2 = p.series[0]
        if p.covid and like is not None:
            real = int(ref.loc[ref["Patient ID"] == p.patient, "SR_2 labelled"].iloc[0] or 0)
            sr2_burden = real / max(0.8 * sr2.n_slices, 1.0)   # lungs span about 80 % of the scan
            for s in p.series:
                s.lesion_burden = float(np.clip(sr2_burden, 0.05, 0.9))
    return CohortPlan(plans, seed, tuple(shape))


def _like_rows(ref: pd.DataFrame, fraction: float, rng: np.random.Generator):
    keep = np.zeros(len(ref), bool)
    for cls in ("Positive", "Negative"):
        idx = np.flatnonzero(ref["COVID-19 Infection"].to_numpy() == cls)
        n = len(idx) if fraction >= 1.0 else max(1, round(fraction * len(idx)))
        keep[rng.choice(idx, size=n, replace=False)] = True
    rows = ref[keep].to_dict("records")
    groups_of = {}
    for r in rows:
        covid = r["COVID-19 Infection"] == "Positive"
        union = [g for s in SERIES for g in r[f"{s} groups"].split(MULTI_SEP) if g]
        primary = union[0] if union else str(rng.choice(GROUPS_COVID if covid else GROUPS_NORMAL))
        groups_of[r["Patient ID"]] = {s: tuple(r[f"{s} groups"].split(MULTI_SEP)) if r[f"{s} groups"] else (primary,)
                                      for s in SERIES}
    return rows, groups_of


def _sampled_rows(ref: pd.DataFrame, n: int, rng: np.random.Generator, covid_ratio: float | None):
    ratio = covid_ratio if covid_ratio is not None else REAL_PATIENTS["covid"] / sum(REAL_PATIENTS.values())
    n_covid = round(n * ratio)
    if 0.0 < ratio < 1.0 and n >= 2:   # both classes present; from 4 patients on, two COVID patients
        n_covid = min(max(n_covid, 2 if n >= 4 else 1), n - 1)   # so a fold testing one trains on the other
    complete = ref[~ref.isin([NA]).any(axis=1)]
    rows, groups_of = [], {}
    normal_groups = ref.loc[ref["COVID-19 Infection"] == "Negative", "SR_2 groups"]
    normal_groups = normal_groups[~normal_groups.str.contains(MULTI_SEP)]
    covid_groups = ref.loc[ref["COVID-19 Infection"] == "Positive", "SR_2 groups"]
    dup_done = n < 4
    for i in range(n):
        covid = i < n_covid
        pool = complete[complete["COVID-19 Infection"] == ("Positive" if covid else "Negative")]
        r = dict(pool.iloc[int(rng.integers(len(pool)))])
        r["Patient ID"] = f"patient{i + 1}"
        g = str(rng.choice((covid_groups if covid else normal_groups).to_numpy()))
        series_groups = {s: (g,) for s in SERIES}
        if not covid and not dup_done:   # one normal series under a second group, as in the real data
            second = "normal4" if g != "normal4" else "normal1"
            series_groups["SR_2"] = tuple(sorted((g, second)))
            dup_done = True
        rows.append(r)
        groups_of[r["Patient ID"]] = series_groups
    return rows, groups_of


def _patient_plan(r: dict[str, str], groups: dict[str, tuple[str, ...]], seed: int, like: bool) -> PatientPlan:
    pid = r["Patient ID"]
    covid = r["COVID-19 Infection"] == "Positive"
    num = _pnum(pid)
    prng = np.random.default_rng([seed, 13, num])
    length = float(np.clip(prng.normal(*SCAN_MM), 200.0, 340.0))
    settings = {s: _series_settings(r, s) for s in SERIES}
    spacings = [sp for _, _, sp in settings.values() if sp is not None]
    ref_spacing = spacings[0] if spacings else 0.75
    body = 512.0 * ref_spacing * float(prng.uniform(0.78, 0.92))
    plan = PatientPlan(pid, covid, {c: r[c] for c in DETAIL_COLUMNS},
                       {"Patient ID": pid, **{f"{s} {a}": r[f"{s} {a}"] for a in META_ATTRS for s in SERIES}})
    aseed = _seed(seed, num)
    for k, s in enumerate(SERIES):
        th, kernel, sp = settings[s]
        plan.series.append(SeriesPlan(
            patient=pid, series=s, groups=groups[s], n_slices=max(MIN_SLICES, round(length / _increment(th))),
            thickness_mm=th, kernel=kernel, spacing_mm=sp if sp is not None else ref_spacing, covid=covid,
            seed=_seed(seed, num, k + 2), anatomy_seed=aseed, scan_length_mm=length, body_width_mm=body))
    if not covid and like:
        plan.normal_labels = int(_float(r["SR_2 labelled"]) or 0) or None
    return plan
