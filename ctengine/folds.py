"""Patient-disjoint five-fold splits in the COVID-CTset paper's protocol.

Protocol (Rahimzadeh et al. 2021, see FACTS.md "Five folds"):

- every COVID patient is in the test split of exactly one fold (about 20 %
  of the COVID patients per fold, balanced by image count);
- the training split is balanced between the classes by image count: the
  other COVID patients plus just enough normal patients to match their
  images; every remaining normal patient goes to test, so most normal
  patients are test patients;
- a validation split is taken from the training patients of each class
  (whole patients, about ``validation_fraction`` of the training images);
- a patient is never on two sides of a fold, in any series.

Images are counted per row, so a slice listed under two groups (the real
dataset's duplicate series) counts twice, as in the paper's tables.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .constants import LABELS

__all__ = ["SPLITS", "fold_summary", "make_folds", "write_fold_csvs"]

#: split names, in the order of the CSV files of one fold
SPLITS = ("train", "validation", "test")


def _patient_table(patients: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """One row per patient: class (covid if any image is covid) and image count."""
    df = pd.DataFrame({"patient": np.asarray(patients, dtype=object), "label": np.asarray(labels, dtype=object)})
    bad = sorted(set(df["label"]) - set(LABELS))
    if bad:
        raise ValueError(f"labels must be one of {LABELS}, got {bad[:5]!r}")
    g = df.groupby("patient", sort=True)
    return pd.DataFrame({"covid": g["label"].agg(lambda s: bool((s == "covid").any())), "images": g.size()})


def _take_until(order: Sequence[str], images: pd.Series, target: float) -> list[str]:
    """Walk ``order`` and keep each patient whose images bring the total closer to ``target``.

    The first patient is always kept; patients that would overshoot more than
    they help are skipped, and the walk stops once the target is reached.
    """
    chosen: list[str] = []
    total = 0
    for p in order:
        if total >= target:
            break
        n = int(images[p])
        if not chosen or abs(total + n - target) <= abs(total - target):
            chosen.append(p)
            total += n
    return chosen


def make_folds(patients: Sequence[str], labels: Sequence[str], *, n_folds: int = 5,
               validation_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Assign every image to train / validation / test in each of ``n_folds`` folds.

    Parameters
    ----------
    patients : patient ID of each image (one entry per labelled image row).
    labels : class of each image, "covid" or "normal".
    n_folds : number of folds (5 in the paper).
    validation_fraction : share of each class's training images moved to validation (whole patients).
    seed : seeds the shuffles; the same inputs and seed give the same folds.

    Returns
    -------
    pandas.DataFrame
        One row per input image (same order), columns ``fold1`` .. ``fold{n}`` holding
        "train", "validation" or "test".

    Raises
    ------
    ValueError
        On unequal lengths, unknown labels, ``n_folds`` < 2 or a fraction outside [0, 0.5].

    Examples
    --------
    >>> pts = [f"p{i}" for i in range(10) for _ in range(3)]
    >>> lab = ["covid"] * 15 + ["normal"] * 15
    >>> f = make_folds(pts, lab, n_folds=5)
    >>> sorted(f["fold1"].unique())
    ['test', 'train', 'validation']
    >>> [int((f[c] == "test")[:15].sum()) for c in f]   # each COVID patient (3 images) tested once
    [3, 3, 3, 3, 3]
    """
    if len(patients) != len(labels):
        raise ValueError(f"patients and labels differ in length: {len(patients)} != {len(labels)}")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}")
    if not 0.0 <= validation_fraction <= 0.5:
        raise ValueError(f"validation_fraction must be in [0, 0.5], got {validation_fraction!r}")
    table = _patient_table(patients, labels)
    rng = np.random.default_rng(seed)
    covid = table.index[table["covid"]].to_numpy()
    normal = table.index[~table["covid"]].to_numpy()
    images = table["images"]
    # COVID patients to test folds: largest first, each to the fold with the fewest images so far
    order = rng.permutation(covid)
    order = sorted(order, key=lambda p: -int(images[p]))
    fold_of: dict[str, int] = {}
    load = np.zeros(n_folds)
    count = np.zeros(n_folds)
    for p in order:
        k = int(np.lexsort((count, load))[0])
        fold_of[p] = k
        load[k] += images[p]
        count[k] += 1
    split = pd.DataFrame(index=table.index, columns=[f"fold{k + 1}" for k in range(n_folds)], dtype=object)
    for k in range(n_folds):
        col = f"fold{k + 1}"
        train_c = [p for p in covid if fold_of[p] != k]
        target = float(images[train_c].sum()) if train_c else 0.0
        train_n = _take_until(list(rng.permutation(normal)), images, target) if target > 0 else []
        split[col] = "test"
        split.loc[train_c + train_n, col] = "train"
        for group in (train_c, train_n):
            if len(group) < 2 or validation_fraction == 0.0:
                continue
            want = validation_fraction * float(images[group].sum())
            val = _take_until(list(rng.permutation(group)), images, want)[: len(group) - 1]
            split.loc[val, col] = "validation"
    patient_index = np.asarray(patients, dtype=object)
    return split.loc[patient_index].reset_index(drop=True)


def fold_summary(patients: Sequence[str], labels: Sequence[str], folds: pd.DataFrame) -> pd.DataFrame:
    """Patients and images per fold, split and class (the layout of FACTS.md "Five folds")."""
    df = pd.DataFrame({"patient": np.asarray(patients, dtype=object), "label": np.asarray(labels, dtype=object)})
    rows = []
    for col in folds.columns:
        s = folds[col].to_numpy()
        for split in SPLITS:
            for label in LABELS:
                m = (s == split) & (df["label"].to_numpy() == label)
                rows.append({"fold": col, "split": split, "label": label,
                             "patients": int(df.loc[m, "patient"].nunique()), "images": int(m.sum())})
    return pd.DataFrame(rows)


def write_fold_csvs(out_dir: str | os.PathLike, filenames: Sequence[str], labels: Sequence[str],
                    folds: pd.DataFrame) -> list[Path]:
    """Write ``train{k}.csv``, ``validation{k}.csv``, ``test{k}.csv`` (columns filename,class) per fold."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"filename": np.asarray(filenames, dtype=object), "class": np.asarray(labels, dtype=object)})
    written = []
    for k, col in enumerate(folds.columns, start=1):
        s = folds[col].to_numpy()
        for split in SPLITS:
            path = out / f"{split}{k}.csv"
            frame[s == split].to_csv(path, index=False)
            written.append(path)
    return written
