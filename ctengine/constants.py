"""Dataset constants of COVID-CTset and the dtypes ctengine uses everywhere.

Units: raw = stored uint16 value, HU = raw * slope + intercept (slope 1,
intercept -1024 for COVID-CTset), mm for spacing and thickness.
"""
from __future__ import annotations

import numpy as np

#: dtype of a stored slice (raw units)
RAW_DTYPE = np.dtype("<u2")
#: shape (y, x) of a COVID-CTset slice
SLICE_SHAPE = (512, 512)
#: raw = HU + HU_OFFSET for every series whose metadata is known
HU_OFFSET = 1024
DEFAULT_SLOPE = 1.0
DEFAULT_INTERCEPT = -1024.0

#: series folders of each patient
SERIES = ("SR_2", "SR_3", "SR_4")
#: patient and slice labels as the dataset spells them (its CSV files, the catalog's "label"
#: column); the classifier's class indices are CLASS_NAMES below
LABELS = ("covid", "normal")
#: groups seen in the whole-dataset tree
GROUPS_COVID = ("137covid", "157covid")
GROUPS_NORMAL = ("normal1", "normal2", "normal3", "normal4", "normal5",
                 "normalcd1", "normalcd2", "normalcd3", "cdnormal4", "cdunnormal")

#: the authors' CT selection: dark pixels raw < 300 in rows 240..339, cols 120..369
SELECTION_ROWS = slice(240, 340)
SELECTION_COLS = slice(120, 370)
SELECTION_DARK_RAW = 300
SELECTION_DIVISOR = 1.5

#: lung mask values
MASK_BACKGROUND = 0
MASK_RIGHT_LUNG = 1  # patient's right = image left
MASK_LEFT_LUNG = 2

#: size limits for input files (refused before any allocation)
MAX_TIFF_BYTES = 64 * 2**20
MAX_SLICE_PIXELS = 4096 * 4096

#: largest buffer a worker thread keeps for the next series (a stack, a shard): larger series get memory of
#: their own, returned after use, so a worker does not hold a huge volume's memory between tasks
MAX_KEPT_BUFFER_BYTES = 256 * 2**20
#: separator of multi-valued catalog cells (source names, groups)
MULTI_SEP = ";"

#: devices of every command and function: "auto" picks the GPU when one is usable
DEVICES = ("auto", "cpu", "gpu")

#: classifier output indices (logit / probability columns): 0 normal, 1 covid
CLASS_NORMAL = 0
CLASS_COVID = 1
#: label of each class index, so CLASS_NAMES[CLASS_COVID] == "covid" (the one list of class names)
CLASS_NAMES = ("normal", "covid")
#: lung window (centre, width) in HU used by the "window" normalisation
LUNG_WINDOW_HU = (-600.0, 1500.0)
#: the authors' patient rule: COVID when at least this fraction of the
#: selected SR_2 slices are classified COVID
PATIENT_COVID_FRACTION = 0.10

#: mediastinal window (centre, width) in HU for the "window" normalisation
MEDIASTINUM_WINDOW_HU = (40.0, 400.0)
#: default divisor of the "fixed" normalisation: the full 16-bit range, so
#: every raw value maps into [0, 1] (COVID-CTset raw values exceed 4095)
FIXED_DIVISOR_RAW = 65535.0

#: fixed per-slice HU histogram of the statistics kernel: 64 equal bins over
#: [-1024, 200] HU (numpy.histogram edges, last bin closed)
HU_HIST_RANGE = (-1024.0, 200.0)
HU_HIST_BINS = 64
#: bin width in HU of the entropy / uniformity histogram (pyradiomics binWidth)
ENTROPY_BIN_WIDTH_HU = 25.0
#: pyradiomics' epsilon in entropy: numpy.spacing(1)
ENTROPY_EPS = 2.220446049250313e-16
#: upper (exclusive) HU bounds of the density classes: emphysema < -950,
#: aerated [-950, -700), ground glass [-700, -300), consolidation [-300, 50)
HU_EMPHYSEMA_BELOW = -950.0
HU_AERATED_BELOW = -700.0
HU_GROUND_GLASS_BELOW = -300.0
HU_CONSOLIDATION_BELOW = 50.0
#: percentiles reported per slice by the statistics kernel
STATS_PERCENTILES = (10, 25, 50, 75, 90)

#: lung mask (kernels.lung_mask): raw pixels with HU below LUNG_LOW_HU are
#: air-like candidates; HU below LUNG_AIR_HU is "pure air" (outside, trachea,
#: bowel gas, table): a component whose median is below it is not lung
LUNG_LOW_HU = -400.0
LUNG_AIR_HU = HU_EMPHYSEMA_BELOW
#: pixel spacing (mm) assumed for a 512-pixel-wide slice when none is given;
#: smaller or larger images scale it by 512 / max(height, width)
LUNG_DEFAULT_SPACING_MM = 0.7
#: smallest lung component kept (mm^2) and smallest pure-air blob treated as
#: an airway lumen / gas pocket inside a candidate (mm^2)
LUNG_MIN_AREA_MM2 = 100.0
LUNG_AIRWAY_MIN_AREA_MM2 = 30.0
#: half size (mm) of the rectangle of the per-lung closing that brings
#: pleural lesions back into the mask
LUNG_CLOSING_MM = 15.0
#: a hole in a lung (or a region the closing adds) that is mostly soft tissue,
#: HU >= LUNG_TISSUE_HU (liver or spleen dome, heart), stays out of the mask;
#: smaller ones than LUNG_TISSUE_HOLE_MM2 (vessels, nodules up to about
#: 22 mm, the area of a 22.6 mm disc) are lung
LUNG_TISSUE_HU = 20.0
LUNG_TISSUE_HOLE_MM2 = 400.0
#: half width (mm) of the band around the body midline searched for the
#: column that separates right and left lung
LUNG_SPLIT_WINDOW_MM = 40.0
#: whole-series lung mask: largest airway cross-section (mm^2) followed down
#: from the trachea, thickness (mm) of the airway wall dropped with it, and
#: the largest distance (mm) of the trachea's centroid from the body midline
LUNG_AIRWAY_MAX_AREA_MM2 = 700.0
LUNG_AIRWAY_WALL_MM = 3.0
LUNG_TRACHEA_MIDLINE_MM = 25.0
#: a 3-D component of the mask smaller than this fraction of the largest one
#: is not lung (gas below the diaphragm, islands)
LUNG_MIN_VOLUME_FRACTION = 0.05
