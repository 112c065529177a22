"""Data loading: every bad input gives one DataError line naming the file, line and column."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrema_cli.data.tables import (
    FeatureRanges,
    ImageSchema,
    Standardizer,
    TabularSchema,
    fingerprint,
    load_npz,
    load_table,
)
from fedrema_cli.errors import DataError, FedremaError

SCHEMA = TabularSchema(features=["age", "chol", "sex"], label="target", classes=[0, 1])
GOOD = "age,sex,chol,target\n63,1,233,0\n67,1,286,1\n41,0,204,0\n"


def _csv(tmp_path: Path, text: str | bytes, name: str = "site.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path, schema: TabularSchema = SCHEMA) -> str:
    with pytest.raises(DataError) as info:
        load_table(path, schema)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert isinstance(info.value, FedremaError)
    assert info.value.exit_code == 1
    return message


def test_good_csv_follows_schema_order(tmp_path: Path) -> None:
    x, y = load_table(_csv(tmp_path, GOOD), SCHEMA)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, [[63, 233, 1], [67, 286, 1], [41, 204, 0]])
    np.testing.assert_array_equal(y, [0, 1, 0])


def test_extra_columns_blank_lines_bom_and_quotes_are_fine(tmp_path: Path) -> None:
    text = '\ufeffid,age,sex,chol,target,note\n\n1,63,1,233,0,"a, b"\n2, 67 ,1,286,1.0,x\n\n'
    x, y = load_table(_csv(tmp_path, text), SCHEMA)
    np.testing.assert_array_equal(x[:, 0], [63, 67])
    np.testing.assert_array_equal(y, [0, 1])


def test_semicolon_csv_and_tsv(tmp_path: Path) -> None:
    x, _ = load_table(_csv(tmp_path, GOOD.replace(",", ";")), SCHEMA)
    assert x.shape == (3, 3)
    x, _ = load_table(_csv(tmp_path, GOOD.replace(",", "\t"), "site.tsv"), SCHEMA)
    assert x.shape == (3, 3)


def test_string_classes_map_to_their_position(tmp_path: Path) -> None:
    schema = TabularSchema(features=["a"], label="dx", classes=["healthy", "sick"])
    _, y = load_table(_csv(tmp_path, "a,dx\n1,sick\n2,healthy\n3, sick\n"), schema)
    np.testing.assert_array_equal(y, [1, 0, 1])


def test_missing_file(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.csv")
    assert "no such file" in message


def test_unsupported_suffix(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, GOOD, "site.xlsx"))
    assert "'.xlsx'" in message and ".parquet" in message


def test_ragged_row_too_many_fields(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "age,sex,chol,target\n63,1,233,0\n67,1,286,1,9\n"))
    assert "line 3" in message and "5 fields" in message and "has 4" in message


def test_ragged_row_too_few_fields(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "age,sex,chol,target\n\n63,1,233,0\n67,1,286\n"))
    assert "line 4" in message and "3 fields" in message


def test_binary_junk(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, b"age,sex,chol,target\n63,1,233,0\n\xff\xfe\x00\x01junk\n"))
    assert "line 3" in message and "NUL" in message
    message = _error(_csv(tmp_path, b"age,sex,chol,target\n63,1,233,0\n6\xe97,1,2,0\n"))
    assert "line 3" in message and "UTF-8" in message


def test_corrupt_csv_quote(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, 'age,sex,chol,target\n63,1,"233"x,0\n'))
    assert "line 2" in message and "not valid CSV" in message


def test_missing_label_column_suggests_nearest(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "age,sex,chol,Target\n63,1,233,0\n"))
    assert "label column 'target'" in message
    assert "'age', 'sex', 'chol', 'Target'" in message
    assert "did you mean 'Target'" in message


def test_missing_feature_columns_listed_with_suggestions(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "ages,sex,cholesterol,target\n63,1,233,0\n"))
    assert "feature columns 'age', 'chol'" in message
    assert "the file has columns 'ages', 'sex', 'cholesterol', 'target'" in message
    assert "'ages' for 'age'" in message


def test_non_numeric_value_names_line_column_and_value(tmp_path: Path) -> None:
    text = "age,sex,chol,target\n63,1,233,0\n67,1,high,1\n41,0,204,0\n"
    message = _error(_csv(tmp_path, text))
    assert "line 3, column 'chol': 'high' is not a number" in message


def test_decimal_comma_is_reported(tmp_path: Path) -> None:
    text = 'age,sex,chol,target\n63,1,233,0\n"67,5",1,286,1\n'
    message = _error(_csv(tmp_path, text))
    assert "line 3, column 'age': '67,5' is not a number" in message


def test_empty_and_nan_cells(tmp_path: Path) -> None:
    text = "age,sex,chol,target\n63,1,233,0\n67,1,,1\n41,0,NaN,0\n"
    message = _error(_csv(tmp_path, text))
    assert "line 3, column 'chol': empty or missing value" in message
    assert "1 more bad cell" in message


def test_infinite_value(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "age,sex,chol,target\n63,1,inf,0\n"))
    assert "line 2, column 'chol': 'inf' is not a finite number" in message


def test_first_bad_cell_is_reported_by_line(tmp_path: Path) -> None:
    text = "age,sex,chol,target\n63,1,233,0\n67,x,286,1\nabc,1,204,0\n"
    message = _error(_csv(tmp_path, text))
    assert "line 3, column 'sex'" in message


def test_label_not_in_classes(tmp_path: Path) -> None:
    text = "age,sex,chol,target\n63,1,233,0\n67,1,286,2\n"
    message = _error(_csv(tmp_path, text))
    assert "line 3, column 'target': label '2' is not one of the classes [0, 1]" in message


def test_missing_label(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "age,sex,chol,target\n63,1,233,\n"))
    assert "line 2, column 'target': the label is missing" in message


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    assert "empty" in _error(_csv(tmp_path, ""))
    assert "no data rows" in _error(_csv(tmp_path, "age,sex,chol,target\n"))


def test_duplicate_header(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "age,sex,chol,age,target\n1,1,1,1,0\n"))
    assert "line 1" in message and "duplicate" in message


def test_parquet_round_trip_and_errors(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"age": [63, 67], "sex": [True, False], "chol": [233.0, 286.5], "target": [0, 1]}
    )
    path = tmp_path / "site.parquet"
    frame.to_parquet(path)
    x, y = load_table(path, SCHEMA)
    np.testing.assert_allclose(x, [[63, 233, 1], [67, 286.5, 0]])
    np.testing.assert_array_equal(y, [0, 1])

    frame.assign(chol=["233", "n.d."]).to_parquet(path)  # a text column from a spreadsheet
    assert "row 2, column 'chol': 'n.d.' is not a number" in _error(path)

    frame.assign(chol=[np.nan, 1.0]).to_parquet(path)
    assert "row 1, column 'chol': empty or missing value" in _error(path)

    frame.assign(target=[0, 5]).to_parquet(path)
    assert "row 2, column 'target': label 5 is not one of the classes" in _error(path)

    frame.rename(columns={"target": "label"}).to_parquet(path)
    assert "no label column 'target'" in _error(path)

    frame.iloc[:0].to_parquet(path)
    assert "no rows" in _error(path)

    path.write_bytes(b"PAR1 this is not parquet")
    assert "not a readable Parquet file" in _error(path)


def test_schema_validation() -> None:
    with pytest.raises(ValueError, match="also listed as a feature"):
        TabularSchema(features=["a", "y"], label="y", classes=[0, 1])
    with pytest.raises(ValueError, match="unique"):
        TabularSchema(features=["a", "a"], label="y", classes=[0, 1])
    with pytest.raises(ValueError, match="unique"):
        TabularSchema(features=["a"], label="y", classes=[0, 0])
    schema = TabularSchema(features=["a"], label="y", classes=[0, "x"])
    assert TabularSchema.model_validate_json(schema.model_dump_json()) == schema


def test_standardizer_uses_train_statistics() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 3.0, size=(200, 3))
    train[:, 2] = 7.0  # constant feature (Switzerland's chol is all 0)
    test = rng.normal(5.0, 3.0, size=(50, 3))
    st = Standardizer.fit(train)
    z = st.transform(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(axis=0, ddof=1), 1.0, atol=1e-5)
    assert st.std[2] == 1.0
    np.testing.assert_allclose(z[:, 2], 0.0)
    expected = (test - train.mean(axis=0)) / np.where(
        train.std(axis=0, ddof=1) > 0, train.std(axis=0, ddof=1), 1.0
    )
    np.testing.assert_allclose(st.transform(test), expected, rtol=1e-5, atol=1e-5)
    assert Standardizer.model_validate_json(st.model_dump_json()) == st
    assert Standardizer.fit(train[:1]).std == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="expected shape"):
        st.transform(test[:, :2])


IMG = ImageSchema(input_shape=(1, 8, 8), classes=tuple(range(10)))


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "site.npz"
    np.savez(path, **arrays)
    return path


def _npz_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_npz(path, input_shape=IMG.input_shape, classes=IMG.classes)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_load_npz_good(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 8, 8))
    path = _npz(tmp_path, x=x, y=np.arange(6))
    xs, ys = load_npz(path, input_shape=(1, 8, 8), classes=range(10))
    assert xs.dtype == np.float32 and xs.shape == (6, 1, 8, 8)
    assert ys.dtype == np.int64
    np.testing.assert_array_equal(ys, np.arange(6))
    # A single channel may be stored without its axis; labels map to class positions.
    path = _npz(tmp_path, x=x[:, 0].astype(np.uint8), y=np.array([7, 3, 7, 3, 7, 3]))
    xs, ys = load_npz(path, input_shape=(1, 8, 8), classes=[3, 7])
    assert xs.shape == (6, 1, 8, 8)
    np.testing.assert_array_equal(ys, [1, 0, 1, 0, 1, 0])


def test_load_npz_errors(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 8, 8), np.float32)
    y = np.zeros(4, np.int64)
    assert "no such file" in _npz_error(tmp_path / "missing.npz")
    assert "no array 'y'; the file has arrays ['x', 'labels']" in _npz_error(
        _npz(tmp_path, x=x, labels=y)
    )
    assert "has shape (4, 1, 8, 9), expected (n, 1, 8, 8)" in _npz_error(
        _npz(tmp_path, x=np.zeros((4, 1, 8, 9)), y=y)
    )
    assert "'x' has 4 samples but 'y' has 3 labels" in _npz_error(_npz(tmp_path, x=x, y=y[:3]))
    assert "sample 3 (y[2]) has label 12" in _npz_error(
        _npz(tmp_path, x=x, y=np.array([0, 1, 12, 13]))
    )
    assert "1 more" in _npz_error(_npz(tmp_path, x=x, y=np.array([0, 1, 12, 13])))
    bad_x = x.copy()
    bad_x[1, 0, 0, 0] = np.nan
    assert "sample 2 (x[1])" in _npz_error(_npz(tmp_path, x=bad_x, y=y))
    assert "integer labels" in _npz_error(_npz(tmp_path, x=x, y=np.array([0.5, 1, 2, 3])))
    assert "no samples" in _npz_error(_npz(tmp_path, x=x[:0], y=y[:0]))
    # Object arrays would need pickle: refused, never unpickled.
    assert "not a plain-array .npz" in _npz_error(
        _npz(tmp_path, x=x, y=np.array([0, 1, None, 2], dtype=object))
    )
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable .npz" in _npz_error(junk)


def test_fingerprint(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD)
    assert fingerprint(path) == hashlib.sha256(GOOD.encode()).hexdigest()
    with pytest.raises(DataError, match="no such file"):
        fingerprint(tmp_path / "missing.csv")


def test_public_feature_ranges_map_to_minus_one_one_whatever_the_records() -> None:
    ranges = FeatureRanges(ranges=((20, 80), (0, 1)), source="a code book")
    schema = TabularSchema(
        features=("age", "smoker"), label="y", classes=(0, 1), feature_ranges=ranges
    )
    a = np.array([[20.0, 0.0], [80.0, 1.0], [50.0, 1.0]])
    b = np.array([[31.0, 1.0], [33.0, 1.0]])
    assert schema.standardizer(a) == schema.standardizer(b)  # no record moves the map
    np.testing.assert_allclose(schema.standardizer(a).transform(a), [[-1, -1], [1, 1], [0, 1]])
    assert "a code book" in (schema.fixed_preprocessing or "")
    plain = TabularSchema(features=("age", "smoker"), label="y", classes=(0, 1))
    assert plain.fixed_preprocessing is None
    assert plain.standardizer(a) != plain.standardizer(b)  # fitted: depends on the records


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        (((1, 1), (0, 1)), "low < high"),
        (((0, float("inf")), (0, 1)), "finite"),
        (((0, 1),), "1 ranges for 2 features"),
    ],
)
def test_feature_ranges_that_cannot_scale_are_refused(
    ranges: tuple[tuple[float, float], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TabularSchema(
            features=("a", "b"),
            label="y",
            classes=(0, 1),
            feature_ranges=FeatureRanges(ranges=ranges, source="x"),
        )
