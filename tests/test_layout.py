import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from ctengine import csvs, layout
from conftest import DATASET_CSVS, make_tree


@pytest.mark.parametrize("name, expected", [
    ("COVID-CTset/137covid/patient1/SR_2/IM00010.tif", ("137covid", "patient1", "SR_2", 10)),
    ("137covid/patient1/SR_2/IM00010.tif", ("137covid", "patient1", "SR_2", 10)),
    ("normalcd1_patient169_SR_4_IM00003.tif", ("normalcd1", "patient169", "SR_4", 3)),
    ("some/dir/cdunnormal_patient7_SR_3_IM00121.tif", ("cdunnormal", "patient7", "SR_3", 121)),
])
def test_names_parse(name, expected):
    key = layout.parse_name(name)
    assert (key.group, key.patient, key.series, key.instance) == expected


@pytest.mark.parametrize("name", ["IM00010.tif", "patient1/SR_2/IM00010.tif", "137covid_patient1_IM1.tif",
                                  "137covid/patientX/SR_2/IM00010.tif", "normal1_patient2_SR_2_IM0001.png"])
def test_bad_names_do_not_parse(name):
    assert layout.parse_name(name) is None


def test_flat_name_round_trip():
    key = layout.parse_name("normal4_patient169_SR_2_IM00012.tif")
    assert key.flat_name == "normal4_patient169_SR_2_IM00012.tif"


def test_tree_zip_and_split_zip_give_the_same_files(tmp_path):
    make_tree(tmp_path / "src")
    base = shutil.make_archive(str(tmp_path / "archive"), "zip", tmp_path / "src")
    data = open(base, "rb").read()
    split = tmp_path / "split"
    split.mkdir()
    for i in range(3):  # three parts, read as one
        (split / f"COVID-CTset.zip.{i + 1:03d}").write_bytes(data[i * len(data) // 3:(i + 1) * len(data) // 3])
    keys = ["patient", "series", "instance", "group"]
    tree = layout.scan([tmp_path / "src"]).files[keys]
    zipped = layout.scan([base]).files[keys]
    parts = layout.scan([split]).files
    assert len(tree) == 14
    assert tree.sort_values(keys).reset_index(drop=True).equals(zipped.sort_values(keys).reset_index(drop=True))
    assert parts["archive"].str.count(r"\+").eq(2).all()
    assert len(parts) == len(tree)
    member = parts.iloc[0]
    assert layout.read_source(member["archive"], member["path"])[:2] in (b"II", b"MM")


def test_unsafe_zip_members_are_rejected(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../normal1/patient1/SR_2/IM00001.tif", b"x")
        archive.writestr("/abs/normal1/patient1/SR_2/IM00002.tif", b"x")
        archive.writestr("ok/normal1/patient1/SR_2/IM00003.tif", b"x")
    found = layout.scan([path])
    assert found.files["instance"].tolist() == [3]
    assert sorted(reason for _, reason in found.rejected) == ["unsafe member name (absolute or '..')"] * 2


def test_corrupt_zip_is_reported(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    found = layout.scan([tmp_path])
    assert found.files.empty and "unreadable zip" in found.rejected[0][1]


def test_catalog_keys_by_patient_series_instance_not_group(tmp_path):
    make_tree(tmp_path / "a", series_spec=(("normal1", "patient169", "SR_2", 3),))
    make_tree(tmp_path / "b", series_spec=(("normal4", "patient169", "SR_2", 3),))
    files = layout.scan([tmp_path]).files
    catalog = layout.build_catalog(files)
    assert len(files) == 6 and len(catalog) == 3
    assert set(catalog["group"]) == {"normal1;normal4"}
    assert catalog["source"].iloc[0] == "normal1/patient169/SR_2/IM00001.tif;normal4/patient169/SR_2/IM00001.tif"
    assert catalog["label"].eq("normal").all()


def test_metadata_csvs_are_joined_and_tolerate_na():
    details = csvs.read_details(DATASET_CSVS / "Patient_details.csv")
    metadata = csvs.read_metadata(DATASET_CSVS / "Patients_metadata.csv.gz")
    assert len(details) == 377 and details["label"].value_counts().to_dict() == {"normal": 282, "covid": 95}
    assert details["thickness_SR_4"].isna().sum() == 7
    row = metadata[(metadata.patient == "patient1") & (metadata.series == "SR_2")].iloc[0]
    assert row["spacing_y_mm"] == pytest.approx(0.814453125) and row["kernel"] == "B70s"
    assert row["window_center"] == -600 and row["window_width"] == 1200 and row["intercept"] == -1024
    assert metadata["spacing_x_mm"].between(0.5, 0.9).sum() > 1000


def test_real_label_csv_and_folds(tmp_path):
    labels, problems = csvs.read_labels([DATASET_CSVS / "all.csv.gz"])
    assert problems == [] and len(labels) == 12058
    assert labels["slice_label"].value_counts().to_dict() == {"normal": 9776, "covid": 2282}
    pd.DataFrame({"filename": ["137covid_patient1_SR_2_IM00002.tif", "bad name"],
                  "class": ["covid", "covid"]}).to_csv(tmp_path / "test3.csv", index=False)
    make_tree(tmp_path / "src", series_spec=(("137covid", "patient1", "SR_2", 3),))
    fold_labels, problems = csvs.read_labels([tmp_path / "test3.csv"])
    assert len(problems) == 1
    catalog = layout.build_catalog(layout.scan([tmp_path / "src"]).files, labels=fold_labels)
    assert catalog["labelled"].tolist() == [False, True, False]
    assert catalog["fold3"].eq("test").all() and catalog["fold1"].eq("").all()
    assert catalog["slice_label"].tolist() == ["", "covid", ""]


def test_defaults_when_metadata_is_missing(tree):
    catalog = layout.build_catalog(layout.scan([tree[0]]).files)
    assert catalog["intercept"].eq(-1024).all() and catalog["slope"].eq(1).all()
    assert catalog["thickness_mm"].isna().all()
    assert catalog.groupby(["patient", "series"])["z"].apply(lambda z: z.tolist() == list(range(len(z)))).all()


def test_sources_per_slice_join_every_copy_in_the_order_seen():
    rng = np.random.default_rng(5)
    n = 300
    files = pd.DataFrame({"patient": rng.choice(["patient1", "patient2"], n), "series": rng.choice(["SR_2", "SR_3"], n),
                          "instance": rng.integers(1, 60, n), "group": rng.choice(["covid1", "covid2", "normal1"], n),
                          "name": [f"f{i}.tif" for i in range(n)]}).astype({"patient": "str", "series": "str",
                                                                             "group": "str", "name": "str"})
    key = ["patient", "series", "instance"]
    by_definition = files.groupby(key, sort=True).agg(
        group=("group", lambda s: ";".join(dict.fromkeys(s))), source=("name", lambda s: ";".join(dict.fromkeys(s))))
    got = layout._sources_per_slice(files, key)
    assert files.duplicated(key).sum() > 50  # many slices have several copies
    pd.testing.assert_frame_equal(got, by_definition.reset_index())
