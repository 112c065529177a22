"""Loading a site's data with errors a data manager can act on.

A hospital's export is the most likely thing to be wrong, and it is checked on a machine where
nobody from the federation can look at it. So every problem is reported as one line naming the
file, the line (counted as a person counts lines in the CSV, header = line 1) and the column.

>>> schema = TabularSchema(features=["age", "chol"], label="target", classes=[0, 1])
>>> schema.num_features
2
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedrema_cli.errors import DataError
from fedrema_cli.suggest import closest

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DataError",
    "FeatureRanges",
    "ImageSchema",
    "Standardizer",
    "TabularSchema",
    "csv_bytes",
    "fingerprint",
    "load_npz",
    "load_table",
    "npz_bytes",
]

# Cells that people (and pandas, R, Excel exports) write for "no value".
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "#n/a", "-nan"})
_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
_MAX_SHOWN_COLUMNS = 20


def _check_classes(classes: Sequence[Any]) -> None:
    if not classes:
        raise ValueError("classes must not be empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {list(classes)}")
    if any(isinstance(c, bool) for c in classes):
        raise ValueError("classes must be ints or strings, not booleans")


class FeatureRanges(BaseModel):
    """A plausible ``[low, high]`` per feature, fixed by the federation from public knowledge.

    Each site maps ``[low, high]`` to ``[-1, 1]``. The map is the same for every dataset, so
    the DP-SGD guarantee covers preprocessing as well; statistics fitted on a site's records
    (`Standardizer.fit`) are a function of those records that no privacy accounting covers.
    The ranges must come from domain knowledge (clinical reference ranges, a code book), never
    from the records themselves. Values outside a range are kept, not clipped: per-sample
    gradient clipping already bounds what one record can do.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ranges: tuple[tuple[float, float], ...] = Field(min_length=1)
    source: str = Field(min_length=1)

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        for k, (lo, hi) in enumerate(v):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range {k + 1} must have finite low < high, got [{lo}, {hi}]")
        return v

    def standardizer(self) -> Standardizer:
        """The ``(x - centre) / half-width`` map, as the Standardizer every site applies."""
        return Standardizer(
            mean=tuple((lo + hi) / 2 for lo, hi in self.ranges),
            std=tuple((hi - lo) / 2 for lo, hi in self.ranges),
        )


class TabularSchema(BaseModel):
    """Which columns are features (in model input order), which is the label, which labels exist.

    The label's position in ``classes`` is the class index the model predicts. With
    ``feature_ranges`` every site scales features by the same public ranges; without, each
    site standardizes with its own training statistics (FLamby's way, not covered by DP).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[str, ...] = Field(min_length=1)
    label: str
    classes: tuple[int | str, ...]
    feature_ranges: FeatureRanges | None = None

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: tuple[int | str, ...]) -> tuple[int | str, ...]:
        _check_classes(v)
        return v

    @model_validator(mode="after")
    def _columns(self) -> TabularSchema:
        if len(set(self.features)) != len(self.features):
            raise ValueError("feature names must be unique")
        if self.label in self.features:
            raise ValueError(f"label {self.label!r} is also listed as a feature")
        if self.feature_ranges and len(self.feature_ranges.ranges) != len(self.features):
            raise ValueError(
                f"feature_ranges has {len(self.feature_ranges.ranges)} ranges for "
                f"{len(self.features)} features"
            )
        return self

    @property
    def fixed_preprocessing(self) -> str | None:
        """What sites do to records before training if it depends on no record, else None."""
        if self.feature_ranges is None:
            return None
        return (
            "every feature scaled from the federation's public ranges to [-1, 1] "
            f"(ranges from: {self.feature_ranges.source})"
        )

    def standardizer(self, x_train: np.ndarray) -> Standardizer:
        """The public ranges' map if the federation fixed them, else ``x_train``'s statistics."""
        if self.feature_ranges is not None:
            return self.feature_ranges.standardizer()
        return Standardizer.fit(x_train)

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ImageSchema(BaseModel):
    """Image inputs: C×H×W per sample and the label values (class index = position)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_shape: tuple[int, int, int]
    classes: tuple[int, ...]

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        _check_classes(v)
        return v

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(d < 1 for d in v):
            raise ValueError(f"input_shape must be positive, got {v}")
        return v

    @property
    def fixed_preprocessing(self) -> str:
        """Images go in as stored (float32 pixels): nothing is fitted on any record."""
        return "none: images are used as stored, as float32 pixel values"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------
# Tables


def _shorten(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "…" + text[-3:]


def _list_columns(columns: Sequence[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:_MAX_SHOWN_COLUMNS])
    more = len(columns) - _MAX_SHOWN_COLUMNS
    return shown + (f" and {more} more" if more > 0 else "")


def _check_columns(path: Path, columns: Sequence[str], schema: TabularSchema) -> None:
    """Missing label or feature columns: list what is there and suggest the nearest names."""
    present = set(columns)
    missing_label = schema.label not in present
    missing = [f for f in schema.features if f not in present]
    if not (missing_label or missing):
        return
    parts = []
    if missing_label:
        parts.append(f"label column {schema.label!r}")
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        parts.append(f"feature {noun} " + ", ".join(repr(m) for m in missing))
    hints = []
    for name in ([schema.label] if missing_label else []) + missing:
        guess = closest(name, columns)
        if guess is not None:
            hints.append(f"{guess!r} for {name!r}")
    hint = f"; did you mean {', '.join(hints)}?" if hints else ""
    raise DataError(
        f"{path}: no {' and no '.join(parts)}; the file has columns {_list_columns(columns)}{hint}"
    )


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text (BOM tolerated); binary junk is reported with its line."""
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: contains a NUL byte; this is not a text CSV file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: bytes that are not UTF-8 text "
            f"(byte {exc.start + 1}); save the file as UTF-8 CSV"
        ) from exc


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and each row's 1-based line number; ragged rows are an error."""
    text = _decode(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    first_line = text.split("\n", 1)[0]
    if delimiter == "," and "," not in first_line:
        # European spreadsheet exports often use ';' (or a tab) when ',' is the decimal mark.
        for alt in (";", "\t"):
            if alt in first_line:
                delimiter = alt
                break
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    previous_end = 0
    try:
        for record in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in record]
                header_line = start
                continue
            if len(record) != len(header):
                raise DataError(
                    f"{path}: line {start}: {len(record)} fields, but the header "
                    f"(line {header_line}) has {len(header)}; check for a missing or extra "
                    f"separator {delimiter!r}"
                )
            rows.append(record)
            lines.append(start)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from exc
    assert header is not None
    empty = [i + 1 for i, c in enumerate(header) if not c]
    if empty:
        raise DataError(f"{path}: line {header_line}: header field {empty[0]} has no column name")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: line {header_line}: duplicate column names {dupes}")
    return header, rows, lines


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable Parquet file ({reason})") from exc
    return table.to_pandas()


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in _MISSING_TOKENS
    try:
        return bool(value != value)  # NaN (float, numpy, NaT) is the only value unequal to itself
    except (TypeError, ValueError):
        return True  # pandas.NA refuses to be compared: it is a missing-value marker


def _to_float(value: object) -> float | None:
    """A finite float, or None when the cell is not a number."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _label_index(value: object, classes: Sequence[int | str]) -> int | None:
    """Position of the label in ``classes``; numeric labels match '1', '1.0' and 1 alike."""
    if isinstance(value, str):
        value = value.strip()
    for i, c in enumerate(classes):
        if isinstance(c, str):
            if str(value) == c:
                return i
        else:
            number = _to_float(value)
            if number is not None and number == c:
                return i
    return None


def _fast_floats(values: Sequence[object]) -> np.ndarray | None:
    """Whole column as finite float64 when every cell parses; None sends us to the slow path."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 and np.isfinite(arr).all() else None


def _feature_problems(name: str, j: int, values: Sequence[object]) -> list[tuple[int, int, str]]:
    problems = []
    for i, value in enumerate(values):
        if _is_missing(value):
            problems.append((i, j, f"column {name!r}: empty or missing value"))
        elif _to_float(value) is None:
            kind = "not a finite number" if _looks_infinite(value) else "not a number"
            problems.append((i, j, f"column {name!r}: {_shorten(value)} is {kind}"))
    return problems


def _labels(
    name: str, j: int, values: Sequence[object], classes: Sequence[int | str]
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    y = np.full(len(values), -1, dtype=np.int64)
    if all(not isinstance(c, str) for c in classes):
        numbers = _fast_floats(values)
        if numbers is not None:
            for k, c in enumerate(classes):
                y[numbers == c] = k
            if (y >= 0).all():
                return y, []
    problems = []
    for i, value in enumerate(values):
        if _is_missing(value):
            problems.append((i, j, f"column {name!r}: the label is missing"))
            continue
        idx = _label_index(value, classes)
        if idx is None:
            problems.append(
                (
                    i,
                    j,
                    f"column {name!r}: label {_shorten(value)} is not one of the classes "
                    f"{list(classes)}",
                )
            )
        else:
            y[i] = idx
    return y, problems


def _convert(
    path: Path,
    columns: dict[str, Sequence[object]],
    schema: TabularSchema,
    where: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Check every cell; report the first bad cell (by row) and how many more there are."""
    x = np.empty((len(where), schema.num_features), dtype=np.float64)
    problems: list[tuple[int, int, str]] = []  # (row, column order, message)
    for j, name in enumerate(schema.features):
        numbers = _fast_floats(columns[name])
        if numbers is None:
            problems += _feature_problems(name, j, columns[name])
        else:
            x[:, j] = numbers
    y, label_problems = _labels(
        schema.label, schema.num_features, columns[schema.label], schema.classes
    )
    problems += label_problems
    if problems:
        row, _, message = min(problems)
        more = len(problems) - 1
        suffix = f" ({more} more bad cell{'s' if more > 1 else ''} in this file)" if more else ""
        raise DataError(f"{path}: {where[row]}, {message}{suffix}")
    return x.astype(np.float32), y


def _looks_infinite(value: object) -> bool:
    try:
        return math.isinf(float(str(value).strip()))
    except ValueError:
        return False


def load_table(path: str | Path, schema: TabularSchema) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV/TSV or Parquet table into ``X`` float32 ``[n, f]`` (schema feature order) and
    ``y`` int64 ``[n]`` (index into ``schema.classes``); any problem raises a one-line DataError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES and suffix not in _PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
            "use .csv, .tsv, .parquet or .pq"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    columns: dict[str, Sequence[object]]
    if suffix in _CSV_SUFFIXES:
        header, rows, lines = _read_csv(path, _CSV_SUFFIXES[suffix])
        _check_columns(path, header, schema)
        if not rows:
            raise DataError(f"{path}: has a header but no data rows")
        position = {name: k for k, name in enumerate(header)}
        wanted = (*schema.features, schema.label)
        columns = {name: [r[position[name]] for r in rows] for name in wanted}
        where = [f"line {line}" for line in lines]
    else:
        frame = _read_parquet(path)
        names = [str(c) for c in frame.columns]
        _check_columns(path, names, schema)
        if len(frame) == 0:
            raise DataError(f"{path}: the table has no rows")
        frame.columns = names
        columns = {name: frame[name].tolist() for name in (*schema.features, schema.label)}
        where = [f"row {i + 1}" for i in range(len(frame))]
    return _convert(path, columns, schema, where)


class Standardizer(BaseModel):
    """Per-feature mean/std fitted on a site's train split and kept at the site.

    FLamby standardizes each centre with the statistics of that centre's train split (torch's
    unbiased std). We do the same, except that a constant feature gets std 1 instead of
    FLamby's ``std + 1e-9``, so a value absent from train cannot blow up to ~1e9 at test time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Statistics of ``x`` ``[n, f]`` (sample std, ddof=1; std 0 or n < 2 → 1)."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"need a non-empty [n, f] array, got shape {arr.shape}")
        mean = arr.mean(axis=0)
        if arr.shape[0] < 2:
            std = np.ones(arr.shape[1])
        else:
            std = arr.std(axis=0, ddof=1)
            std = np.where(std > 1e-12, std, 1.0)
        return cls(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` as float32."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.mean):
            raise ValueError(f"expected shape (n, {len(self.mean)}), got {arr.shape}")
        return ((arr - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Images


def load_npz(
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    classes: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` ``[n, C, H, W]`` and ``y`` ``[n]`` from an ``.npz`` without unpickling.

    Returns ``x`` float32 and ``y`` int64 as the index of each label in ``classes``. For one
    channel, ``x`` may also be stored as ``[n, H, W]``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise DataError(
                    f"{path}: no array {' or '.join(repr(m) for m in missing)}; "
                    f"the file has arrays {keys}"
                )
            x = archive["x"]
            y = archive["y"]
    except DataError:
        raise
    except ValueError as exc:
        reason = str(exc).splitlines()[0]
        raise DataError(f"{path}: not a plain-array .npz file ({reason})") from exc
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, ...
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from exc

    c, h, w = input_shape
    if x.ndim == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
        x = x[:, None, :, :]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path}: array 'x' has shape {tuple(x.shape)}, expected (n, {c}, {h}, {w})"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{path}: array 'x' has dtype {x.dtype}, expected numbers")
    if y.ndim != 1:
        raise DataError(f"{path}: array 'y' has shape {tuple(y.shape)}, expected (n,)")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: 'x' has {x.shape[0]} samples but 'y' has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    x = x.astype(np.float32)
    finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DataError(f"{path}: sample {i + 1} (x[{i}]) contains NaN or infinite values")
    if not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{path}: array 'y' has dtype {y.dtype}, expected integer labels")
    lookup = {int(cls): i for i, cls in enumerate(classes)}
    index = np.array([lookup.get(int(v), -1) for v in y], dtype=np.int64)
    bad = np.flatnonzero(index < 0)
    if bad.size:
        i = int(bad[0])
        more = f" ({bad.size - 1} more)" if bad.size > 1 else ""
        raise DataError(
            f"{path}: sample {i + 1} (y[{i}]) has label {int(y[i])}, not one of the classes "
            f"{list(classes)}{more}"
        )
    return x, index


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A table as the CSV bytes `load_table` reads back (header, no index, '\\n' lines)."""
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def split_paths(
    written: Mapping[str, Path], sites: Iterable[str], suffix: str
) -> dict[str, dict[str, Path]]:
    """``{site: {"train": path, "test": path}}`` of files written as ``<site>_<split><suffix>``
    (what every bundled dataset's writer returns)."""
    return {s: {k: written[f"{s}_{k}{suffix}"] for k in ("train", "test")} for s in sites}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Arrays as ``.npz`` bytes (numeric arrays only: `load_npz` refuses pickled objects)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def fingerprint(path: str | Path) -> str:
    """sha256 (hex) of the file's bytes, recorded in the privacy ledger for what was trained on."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    return h.hexdigest()
