"""Prediction: COVID probabilities of stored slices, and the automated path on a patient's folder.

Both feed the network exactly what training fed it: float32 HU slices
(lung only when the checkpoint's model is, with the lung mask of
:func:`ctengine.features.series_features` computed from the series' spacing
and rescale), logits under the same autocast as training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from ..constants import (CLASS_COVID, CLASS_NAMES, CLASS_NORMAL, DEFAULT_INTERCEPT, DEFAULT_SLOPE,
                         PATIENT_COVID_FRACTION)
from ..features import series_features
from .loader import DeviceLoader, SliceLoader, apply_lung_only
from .samples import raw_to_output

#: series of a patient whose selected slices decide (the authors' rule)
DECISION_SERIES = "SR_2"


def covid_probabilities(net, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """COVID probability of every image of ``batches`` (float32 (N, C, y, x) on the net's device), eval mode.

    On CUDA the logits are computed under bfloat16 autocast, as in training.
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    parts = []
    with torch.inference_mode():
        for images in batches:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = net(images)
            parts.append(torch.softmax(logits.float(), 1)[:, CLASS_COVID].cpu().numpy().astype(np.float64))
    net.train(was_training)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def predict_rows(net, store: str | os.PathLike, rows: pd.DataFrame, *, batch_size: int = 16, threads: int = 2,
                 storage_options: dict | None = None, progress: str | None = None) -> np.ndarray:
    """COVID probability of every row (catalog rows with patient, series, z; any target).

    Slices come from the store through :class:`~ctengine.learn.loader.SliceLoader`
    (lung only when ``net.config["lung_only"]``), as in training. ``progress``
    names a progress bar over the slices (None: no bar).
    """
    from tqdm.auto import tqdm

    rows = rows.reset_index(drop=True)
    if "target" not in rows:
        rows = rows.assign(target=0)
    device = next(net.parameters()).device
    with SliceLoader(store, rows, batch_size=batch_size, threads=threads, lung_only=net.config["lung_only"],
                     storage_options=storage_options) as loader, \
            tqdm(total=len(rows), unit="slice", desc=progress, disable=progress is None, leave=False) as bar:
        def images():
            for batch, _, _ in DeviceLoader(loader, str(device)):
                yield batch
                bar.update(len(batch))

        return covid_probabilities(net, images())


def series_inputs(raw: np.ndarray, *, spacing: tuple[float, float] | None, slope: float, intercept: float,
                  lung_only: bool) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features of a series and the network input of its selected slices, as the store's loader gives them.

    Parameters
    ----------
    raw : ndarray
        Raw uint16 series (z, y, x).
    spacing : (float, float) or None
        Pixel spacing (y, x) in mm, None when unknown.
    slope, intercept : float
        Rescale of the series: HU = raw * slope + intercept.
    lung_only : bool
        The checkpoint's rule: pixels outside the lung mask set to raw 0 (air, -1024 HU).

    Returns
    -------
    table : DataFrame
        One row per slice (:func:`ctengine.features.series_features`).
    chosen : ndarray
        Indices (z) of the selected slices.
    inputs : ndarray
        float32 HU (len(chosen), 1, y, x): what the loader feeds for those slices.
    """
    mask, table = series_features(raw, spacing=spacing, slope=slope, intercept=intercept)
    chosen = np.flatnonzero(table["selected"].to_numpy(dtype=bool))
    inputs = np.ascontiguousarray(raw[chosen])
    if lung_only:
        apply_lung_only(inputs, np.asarray(mask)[chosen])
    return table, chosen, raw_to_output(torch.from_numpy(inputs[:, None]), slope, intercept).numpy()


def _tiffs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file())


def series_folder(patient_dir: str | os.PathLike, series: str = DECISION_SERIES) -> Path:
    """The folder of TIFFs :func:`predict_patient` reads: ``patient_dir/series``, else ``patient_dir`` itself.

    Raises
    ------
    ValueError
        When that folder holds no TIFF, naming what it holds instead (patient
        folders of a group, other series) and what to give.
    """
    folder = Path(patient_dir)
    if (folder / series).is_dir():
        folder = folder / series
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: give one patient's folder of SR_k series folders")
    if _tiffs(folder):
        return folder
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if any(name.startswith("SR_") for name in subfolders):
        raise ValueError(f"{folder} has no {series} folder (it has {', '.join(subfolders)}): choose one with --series")
    if subfolders:
        what = "patient folders" if any(name.startswith("patient") for name in subfolders) else "folders"
        listed = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
        raise ValueError(f"{folder} holds {what} ({listed}), not one patient's TIFFs: give one of them, "
                         f"e.g. {folder / subfolders[0]}")
    raise ValueError(f"no TIFF in {folder}: give one patient's folder (its SR_k folders) or one series' folder "
                     f"of IMnnnnn.tif slices")


def predict_patient(patient_dir: str | os.PathLike, *, checkpoint: str | os.PathLike,
                    threshold: float = PATIENT_COVID_FRACTION, series: str = DECISION_SERIES, batch_size: int = 16,
                    device: str = "auto", spacing: tuple[float, float] | None = None, slope: float = DEFAULT_SLOPE,
                    intercept: float = DEFAULT_INTERCEPT) -> dict[str, Any]:
    """The fully automated path on one patient's folder of TIFFs: selection, classification, decision.

    ``patient_dir`` holds ``SR_k`` folders (``series`` is used) or the TIFFs
    of one series (see :func:`series_folder`). Unreadable files are skipped and listed.

    Parameters
    ----------
    patient_dir : path
    checkpoint : path
        A checkpoint of :func:`ctengine.learn.train.train`.
    threshold : float
        The patient is COVID when at least this fraction of its selected slices is.
    series : str
        Series folder used for the decision.
    batch_size : int
    device : {"auto", "cpu", "gpu"}
    spacing : (float, float), optional
        Pixel spacing (y, x) in mm of the series (unknown by default).
    slope, intercept : float
        Rescale of the series (HU = raw * slope + intercept).

    Returns
    -------
    dict
        verdict ("covid"/"normal"), series, slices, selected, covid_slices,
        fraction, threshold, skipped [(file, reason)], and per-slice rows
        (file, instance, selected, dark_count, probability, prediction).
    """
    from .device import resolve_device
    from .model import load_checkpoint

    read = read_patient_series(patient_dir, series)
    net, _ = load_checkpoint(checkpoint, map_location=resolve_device(device))
    return predict_series(net, read, threshold=threshold, batch_size=batch_size, spacing=spacing, slope=slope,
                          intercept=intercept)[0]


def predict_series(net: Any, read: tuple, *, threshold: float = PATIENT_COVID_FRACTION, batch_size: int = 16,
                   spacing: tuple[float, float] | None = None, slope: float = DEFAULT_SLOPE,
                   intercept: float = DEFAULT_INTERCEPT) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`predict_patient` with a loaded network on a series :func:`read_patient_series` read.

    Returns the prediction and the network inputs of the selected slices
    (float32 HU (n, 1, y, x), in the order of the selected rows).
    """
    folder, stack, names, instances, skipped = read
    table, chosen, inputs = series_inputs(stack, spacing=spacing, slope=slope, intercept=intercept,
                                          lung_only=net.config["lung_only"])
    target = next(net.parameters()).device
    probability = np.full(len(table), np.nan)
    probability[chosen] = covid_probabilities(net, (torch.from_numpy(inputs[start:start + batch_size]).to(target)
                                                    for start in range(0, len(chosen), batch_size)))
    covid = int(np.sum(probability[chosen] >= 0.5))
    fraction = covid / len(chosen) if len(chosen) else float("nan")
    keep, counts = table["selected"].to_numpy(dtype=bool), table["dark_count"].to_numpy()
    verdict = CLASS_COVID if len(chosen) and fraction >= threshold else CLASS_NORMAL
    result = {"verdict": CLASS_NAMES[verdict],
              "series": folder.name, "slices": int(len(table)), "selected": int(len(chosen)), "covid_slices": covid,
              "fraction": fraction, "threshold": threshold, "skipped": skipped,
              "rows": [{"file": names[z], "instance": int(instances[z]), "selected": bool(keep[z]),
                        "dark_count": int(counts[z]),
                        "probability": None if np.isnan(probability[z]) else float(probability[z]),
                        "prediction": None if np.isnan(probability[z]) else
                        CLASS_NAMES[CLASS_COVID if probability[z] >= 0.5 else CLASS_NORMAL]}
                       for z in range(len(table))]}
    return result, inputs


def read_patient_series(patient_dir: str | os.PathLike, series: str = DECISION_SERIES
                        ) -> tuple[Path, np.ndarray, list[str], list[int], list[tuple[str, str]]]:
    """The TIFFs of one series of a patient's folder, in instance order.

    ``patient_dir`` holds ``SR_k`` folders (``series`` is read) or the TIFFs
    of one series. Returns (folder, raw stack (z, y, x), file names,
    instances, skipped [(file, reason)]).
    """
    from ..layout import parse_name
    from ..tiffio import BadSliceError, decode_slice

    folder = series_folder(patient_dir, series)
    files = _tiffs(folder)
    images, names, instances, skipped = [], [], [], []
    for path in files:
        try:
            images.append(decode_slice(path.read_bytes(), shape=None))
        except (BadSliceError, OSError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        names.append(path.name)
        key = parse_name(f"g/patient0/{series}/{path.name}")
        instances.append(key.instance if key else len(instances) + 1)
    if not images:
        raise ValueError(f"none of the {len(files)} TIFFs in {folder} is readable ({skipped[0][1]}): give the "
                         f"folder of one series of CT slices")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"slices of {folder} differ in shape: {sorted(shapes)}")
    order = np.argsort(instances, kind="stable")
    return (folder, np.stack([images[i] for i in order]), [names[i] for i in order],
            [int(instances[i]) for i in order], skipped)
