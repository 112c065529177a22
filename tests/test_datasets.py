"""Bundled datasets: FLamby's heart-disease split, the label-skew partition, the registry."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opacus.validators import ModuleValidator

from fedrema_cli.data.datasets import DATASETS, get_dataset
from fedrema_cli.data.datasets import heart_disease as hd
from fedrema_cli.data.datasets import imbalanced as im
from fedrema_cli.data.datasets import label_skew as ls
from fedrema_cli.data.tables import Standardizer, load_npz, load_table
from fedrema_cli.errors import DataError, UsageError
from fedrema_cli.learning.models import build_model

DATA_DIR = Path(__file__).resolve().parents[1] / "examples" / "heart_disease" / "data"

# The sha256s recorded when the files were obtained (PROVENANCE.md).
CHECKSUMS = {
    "processed.cleveland.data": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    "processed.hungarian.data": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    "processed.switzerland.data": (
        "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314"
    ),
    "processed.va.data": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
    "heart-disease.names": "ec7ed5aa4ed8321097808f47b836301c2a0c36f3bb09c40b8b43b622363e6b61",
    "flamby_reference_results/heart_seed42.csv": (
        "7b0b243cad9a1e2180f0c8a8538c10579dc4767e154885a7b4afdb746af0336d"
    ),
    "flamby_reference_results/heart_seed43.csv": (
        "9e4104ea72bc4ebb83654c0e6dffc63ebd074c3a5ee8b28495ee0cb7c4ef9510"
    ),
    "flamby_reference_results/heart_seed44.csv": (
        "79059cdc1cbf729579ca0702ab0b1758f11eee3425b2140ef29885e2e7599292"
    ),
    "flamby_reference_results/heart_seed45.csv": (
        "4a49e8475b21e49199b3076df3e808e159cf4ae4d55f6e6768bf4ef7ea11f3aa"
    ),
    "flamby_reference_results/heart_seed46.csv": (
        "d5a5de26d0bf44fb80e50866395e4c4d9886d788bfd73a8dcfcd9e731cf06662"
    ),
    "flamby_reference_results/results_dp_fed_heart_disease.csv": (
        "2139e50f867ea39e8648820a96b956767803084498421f0d8ac7fd1ac1ac2396"
    ),
    "flamby_reference_results/results_perso_vs_normal.csv": (
        "e401bf7b0ba8122a0711b070282c44d12a0fd2a7a61bda107b39e2d0d50e1bb2"
    ),
}


@pytest.fixture(scope="module")
def centers() -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    return hd.load_centers()


# --------------------------------------------------------------------------------- heart disease


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_shipped_files_match_provenance(name: str) -> None:
    digest = hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest()
    assert digest == CHECKSUMS[name]
    assert digest in (DATA_DIR / "PROVENANCE.md").read_text(encoding="utf-8")


def test_raw_checksums_in_code_match_provenance() -> None:
    for name, digest in hd.RAW_FILES.values():
        assert CHECKSUMS[name] == digest


def test_split_sizes_are_flambys(centers: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    sizes = {site: (len(tr), len(te)) for site, (tr, te) in centers.items()}
    assert sizes == {
        "cleveland": (199, 104),
        "hungary": (172, 89),
        "switzerland": (30, 16),
        "va": (85, 45),
    }
    assert sizes == hd.EXPECTED_SPLIT
    assert {s: tr + te for s, (tr, te) in sizes.items()} == hd.EXPECTED_ROWS
    assert sum(tr + te for tr, te in sizes.values()) == 740


def test_thirteen_named_features(centers: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    assert hd.FEATURES == (
        "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
        "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2",
    )  # fmt: skip
    assert hd.SCHEMA.features == hd.FEATURES and hd.SCHEMA.label == "target"
    for train, test in centers.values():
        for frame in (train, test):
            assert list(frame.columns) == [*hd.FEATURES, "target"]
            assert not frame.isna().any().any()
            assert set(frame["target"].unique()) <= {0, 1}
            for col in ("cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2"):
                assert set(frame[col].unique()) <= {0, 1}
            assert (frame[["cp_2", "cp_3", "cp_4"]].sum(axis=1) <= 1).all()


def test_train_and_test_are_disjoint_and_in_file_order(
    centers: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
) -> None:
    for train, test in centers.values():
        assert not set(train.index) & set(test.index)
        assert train.index.is_monotonic_increasing and test.index.is_monotonic_increasing


def test_label_rates_match_provenance(
    centers: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
) -> None:
    # PROVENANCE.md gives the raw-file positive rates; dropping rows with a NaN moves them a bit.
    raw_rates = {"cleveland": 0.46, "hungary": 0.36, "switzerland": 0.93, "va": 0.74}
    for site, (train, test) in centers.items():
        rate = pd.concat([train, test])["target"].mean()
        assert abs(rate - raw_rates[site]) < 0.06, (site, rate)
    # Stratified sites keep the rate in both halves; Switzerland keeps its lone negative in test.
    for site in ("cleveland", "hungary", "va"):
        train, test = centers[site]
        assert abs(train["target"].mean() - test["target"].mean()) < 0.02
    swiss_train, swiss_test = centers["switzerland"]
    assert swiss_train["target"].sum() == 30 and swiss_test["target"].sum() == 15


def test_matches_an_independent_pooled_encoding(
    centers: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
) -> None:
    """FLamby one-hot encodes the pooled table with pandas; our fixed categories must agree."""
    frames = []
    for site in hd.SITES:
        raw = pd.read_csv(DATA_DIR / hd.RAW_FILES[site][0], header=None)
        raw = raw.replace("?", np.nan).drop(columns=[10, 11, 12]).dropna().apply(pd.to_numeric)
        frames.append(raw)
    pooled = pd.concat(frames, ignore_index=True)
    dummies = pd.get_dummies(pooled.iloc[:, :-1], columns=[2, 6], drop_first=True).astype(float)
    ours = pd.concat([pd.concat([tr, te]).sort_index() for tr, te in centers.values()])
    np.testing.assert_array_equal(dummies.to_numpy(), ours[list(hd.FEATURES)].to_numpy(float))
    np.testing.assert_array_equal((pooled.iloc[:, -1] > 0).astype(int), ours["target"])


def test_tampered_or_missing_raw_data_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(DATA_DIR, copy)
    path = copy / "processed.va.data"
    path.write_bytes(path.read_bytes().replace(b"63,1,4,140", b"64,1,4,140", 1))
    with pytest.raises(DataError, match="differs from the UCI original"):
        hd.load_centers(copy)
    (copy / "processed.va.data").unlink()
    with pytest.raises(DataError, match="missing raw file for site 'va'"):
        hd.load_centers(copy)
    with pytest.raises(DataError, match="data directory not found"):
        hd.load_centers(tmp_path / "absent")


def test_site_files_load_with_the_schema(tmp_path: Path) -> None:
    paths = hd.write_site_files(tmp_path)
    assert set(paths) == set(hd.SITES)
    for site, files in paths.items():
        x_train, y_train = load_table(files["train"], hd.SCHEMA)
        x_test, y_test = load_table(files["test"], hd.SCHEMA)
        assert (len(y_train), len(y_test)) == hd.EXPECTED_SPLIT[site]
        assert x_train.shape[1] == 13
        st = Standardizer.fit(x_train)
        z = st.transform(x_test)
        assert np.isfinite(z).all()
    swiss = load_table(paths["switzerland"]["train"], hd.SCHEMA)[0]
    assert Standardizer.fit(swiss).std[hd.FEATURES.index("chol")] == 1.0  # all zeros


def test_default_model_spec_fits_the_schema() -> None:
    assert hd.MODEL_SPEC.in_features == len(hd.FEATURES)
    assert hd.MODEL_SPEC.num_classes == hd.SCHEMA.num_classes
    assert ModuleValidator.validate(build_model(hd.MODEL_SPEC, seed=0), strict=True) == []


# ------------------------------------------------------------------------------------ label skew


@pytest.fixture(scope="module")
def partition() -> ls.LabelSkewPartition:
    return ls.make_partition(seed=0)


def test_blocks() -> None:
    assert [ls.block_of(i, 10) for i in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [ls.block_of(i, 20) for i in range(20)] == [b for b in range(5) for _ in range(4)]
    with pytest.raises(ValueError):
        ls.block_of(10, 10)


def test_class_budget_follows_by_s() -> None:
    budget = ls.class_budget(20, 500)  # FedReMa's own setting: 10 IID per class + 400 grouped
    assert (budget.sum(axis=1) == 500).all()
    assert budget[0].tolist() == [144, 143, 143, 10, 10, 10, 10, 10, 10, 10]
    assert budget[19].tolist() == [143, 10, 10, 10, 10, 10, 10, 10, 144, 143]


def test_sizes(partition: ls.LabelSkewPartition) -> None:
    n = partition.samples_per_site
    assert n == ls.max_samples_per_site(10)
    assert list(partition.sites) == [f"site{i:02d}" for i in range(10)]
    for site in partition.sites.values():
        assert len(site.y_train) + len(site.y_test) == n
        assert len(site.y_test) == int(np.ceil(0.2 * n))
        assert site.x_train.shape == (len(site.y_train), 1, 8, 8)
        assert site.x_train.dtype == np.float32 and site.y_train.dtype == np.int64
        assert site.x_train.min() >= -1.0 and site.x_train.max() <= 1.0


def test_dominant_classes_per_block(partition: ls.LabelSkewPartition) -> None:
    for name, site in partition.sites.items():
        labels = np.concatenate([site.y_train, site.y_test])
        counts = np.bincount(labels, minlength=10)
        top3 = tuple(sorted(np.argsort(counts)[-3:].tolist()))
        assert top3 == tuple(sorted(partition.dominant_classes(name)))
        assert partition.dominant_classes(name) == ls.LABEL_GROUPS[partition.blocks[name]]
        assert (counts > 0).all()  # the IID part covers every class
        assert counts[list(partition.dominant_classes(name))].sum() >= 0.75 * len(labels)
        train_counts = np.bincount(site.y_train, minlength=10)
        assert tuple(sorted(np.argsort(train_counts)[-3:].tolist())) == top3


def test_no_image_is_shared_by_default(partition: ls.LabelSkewPartition) -> None:
    assert partition.reused_classes == ()
    images = np.concatenate(
        [np.concatenate([s.x_train, s.x_test]) for s in partition.sites.values()]
    ).reshape(-1, 64)
    assert len(np.unique(images, axis=0)) == len(images)  # the digits set has no duplicates


def test_determinism_by_seed(partition: ls.LabelSkewPartition) -> None:
    again = ls.make_partition(seed=0)
    other = ls.make_partition(seed=1)
    for name in partition.sites:
        for a, b in zip(partition.sites[name], again.sites[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(partition.sites[n].x_train, other.sites[n].x_train)
        for n in partition.sites
    )


def test_twenty_sites_and_oversubscription() -> None:
    part = ls.make_partition(20, seed=3)
    assert len(part.sites) == 20 and part.reused_classes == ()
    assert part.blocks["site07"] == 1 and part.dominant_classes("site19") == (8, 9, 0)
    big = ls.make_partition(20, 100, seed=3)
    # Even digits are in two label groups: their demand exceeds what the digits set holds.
    assert big.reused_classes == (0, 2, 4, 6, 8)
    for site in big.sites.values():
        assert len(site.y_train) + len(site.y_test) == 100
    with pytest.raises(ValueError, match="only"):
        ls.make_partition(5, 700)  # 201 zeros wanted by one site


def test_write_site_files_round_trip(tmp_path: Path) -> None:
    paths = ls.write_site_files(tmp_path, n_sites=10, samples_per_site=60, seed=5)
    part = ls.make_partition(10, 60, seed=5)
    meta = json.loads((tmp_path / "partition.json").read_text())
    assert meta["n_sites"] == 10 and meta["seed"] == 5
    for name, files in paths.items():
        x, y = load_npz(
            files["train"], input_shape=ls.SCHEMA.input_shape, classes=ls.SCHEMA.classes
        )
        np.testing.assert_array_equal(x, part.sites[name].x_train)
        np.testing.assert_array_equal(y, part.sites[name].y_train)
        assert meta["sites"][name]["block"] == part.blocks[name]
    assert ModuleValidator.validate(build_model(ls.MODEL_SPEC, seed=0), strict=True) == []


# ------------------------------------------------------------------------- imbalanced (cancer)


@pytest.fixture(scope="module")
def cancer_sites() -> dict[str, im.SiteTables]:
    return im.make_sites(seed=0)


def test_cancer_labels_are_malignant_one() -> None:
    from sklearn.datasets import load_breast_cancer

    table = im.load_table()
    assert len(table) == 569 and int(table[im.LABEL].sum()) == 212  # 212 malignant
    raw = load_breast_cancer()
    np.testing.assert_array_equal(table[im.LABEL].to_numpy(), raw.target == 0)
    np.testing.assert_array_equal(table["radius"].to_numpy(), raw.data[:, 0])


def test_cancer_sites_have_the_minority_rates(cancer_sites: dict[str, im.SiteTables]) -> None:
    assert tuple(cancer_sites) == im.SITES
    for site, tables in cancer_sites.items():
        both = pd.concat([tables.train, tables.test])
        rate = both[im.LABEL].mean()
        assert abs(rate - im.MINORITY_RATES[site]) < 0.01, (site, rate)
        assert 0.05 <= rate <= 0.2 + 0.01
        # Stratified 2/3 - 1/3: the test part holds at least one malignant record.
        assert tables.test[im.LABEL].sum() >= 1
        assert abs(len(tables.test) / len(both) - im.TEST_FRACTION) < 0.02
    benign = sum(int((t.train[im.LABEL] == 0).sum() + (t.test[im.LABEL] == 0).sum())
                 for t in cancer_sites.values())  # fmt: skip
    assert benign == 357


def test_no_record_is_at_two_sites_or_in_both_splits(
    cancer_sites: dict[str, im.SiteTables],
) -> None:
    rows = [i for t in cancer_sites.values() for i in (*t.train.index, *t.test.index)]
    assert len(rows) == len(set(rows))


def test_cancer_sites_are_redrawn_by_seed(cancer_sites: dict[str, im.SiteTables]) -> None:
    again = im.make_sites(seed=0)
    other = im.make_sites(seed=1)
    for site in im.SITES:
        pd.testing.assert_frame_equal(again[site].train, cancer_sites[site].train)
        assert len(other[site].train) == len(cancer_sites[site].train)
    assert any(not other[s].train.index.equals(cancer_sites[s].train.index) for s in im.SITES)


def test_cancer_ranges_cover_the_documented_ranges() -> None:
    """RANGES contain the min/max scikit-learn documents for each feature (and the data)."""
    import re

    from sklearn.datasets import load_breast_cancer

    descr = load_breast_cancer().DESCR
    table = im.load_table()
    for source, column in im.SOURCE_FEATURES.items():
        name = source.removeprefix("mean ")
        row = re.search(rf"^{re.escape(name)} \(mean\):\s+([\d.]+)\s+([\d.]+)", descr, re.M)
        assert row is not None, name
        lo, hi = im.RANGES[column]
        assert lo <= float(row.group(1)) and float(row.group(2)) <= hi
        assert lo <= table[column].min() and table[column].max() <= hi
        assert hi - lo <= 2.5 * (float(row.group(2)) - float(row.group(1)))  # not arbitrary


def test_cancer_files_load_with_public_scaling(tmp_path: Path) -> None:
    paths = im.write_site_files(tmp_path, seed=2)
    meta = json.loads((tmp_path / "partition.json").read_text())
    for site, files in paths.items():
        x_train, y_train = load_table(files["train"], im.SCHEMA)
        x_test, y_test = load_table(files["test"], im.SCHEMA)
        assert meta["sites"][site]["train"] == {"n": len(y_train), "malignant": int(y_train.sum())}
        assert meta["sites"][site]["test"] == {"n": len(y_test), "malignant": int(y_test.sum())}
        z = im.SCHEMA.standardizer(x_train).transform(np.concatenate([x_train, x_test]))
        assert np.abs(z).max() <= 1.0  # inside the public ranges
        # The map is the public one, not fitted to this site.
        assert im.SCHEMA.standardizer(x_train) == im.SCHEMA.standardizer(x_test)
    assert im.MODEL_SPEC.in_features == len(im.FEATURES)


# -------------------------------------------------------------------------------------- registry


def test_registry(tmp_path: Path) -> None:
    assert set(DATASETS) == {"heart-disease", "label-skew", im.NAME}
    heart = get_dataset("heart-disease")
    assert heart.kind == "tabular" and heart.sites == hd.SITES and heart.blocks is None
    skew = get_dataset("label-skew")
    assert skew.kind == "image" and skew.blocks is not None
    assert skew.blocks == {f"site{i:02d}": i // 2 for i in range(10)}
    for info in DATASETS.values():
        files = info.prepare(tmp_path / info.name, 0)
        assert set(files) == set(info.sites)
        assert all(p["train"].is_file() and p["test"].is_file() for p in files.values())
    cancer = get_dataset(im.NAME)
    assert cancer.kind == "tabular" and cancer.sites == im.SITES and cancer.schema is im.SCHEMA
    with pytest.raises(UsageError, match="known: breast-cancer-imbalanced, heart-disease, label"):
        get_dataset("mnist")


def test_cli_commands_start_without_sklearn() -> None:
    """Every `init`/`approve` loads the dataset registry; sklearn (about a second per process
    in the example scripts and the kill sweep) is imported only when a dataset is written."""
    code = "import sys, fedrema_cli.roles.onboarding; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prepare_data_on_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """A write that fails half-way (here: a file-size limit, as a full disk would) leaves each
    site file complete or absent, never a CSV that loads as fewer patients."""
    import resource
    import signal

    whole = tmp_path / "whole"
    hd.write_site_files(whole)
    limit = 4096  # below every site's training file, above the smallest test file
    assert (whole / "cleveland_train.csv").stat().st_size > limit

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fedrema_cli", "prepare-data", "heart-disease", "--out", out]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_disk)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    left = sorted(p.name for p in out.iterdir())
    assert all(not n.startswith(".") for n in left), left  # no temporary file left behind
    for name in left:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
