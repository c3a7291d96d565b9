"""Reading a user's table — the vectors task's rows, a series file's time steps — into a float64 array (N, D) with
column names, or a ConfigError that names the config key and the problem. Shared by the tasks that read files.

Formats (task.format, or from the extension with 'auto'):
- npy:          a numeric array (N, D), or (N,) read as one column (N, 1); np.load without pickles.
- csv / tsv:    text, comma / tab separated; a header row when the first row holds a field that is not a number.
                Empty fields and NA, N/A, null, none, nan (any case) are missing values (NaN).
- parquet:      through pyarrow (the `vectors` extra: `pip install "rmflow[vectors]"`); numeric and boolean columns.
- safetensors:  one tensor (N, D) or (N,) of the file, named by task.key (default: the only tensor).

Columns (task.columns): names (tables with a header) or 0-based indices; empty = every numeric column (text columns
are skipped with a warning; a column mixing numbers and text is an error).
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

FORMATS = ("npy", "csv", "tsv", "parquet", "safetensors")
SUFFIXES = {".npy": "npy", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".safetensors": "safetensors"}
MISSING = {"", "na", "n/a", "nan", "null", "none"}


@dataclass
class Table:
    """values: (N, D) float64 (NaN/inf kept: the caller decides); names: D column names (indices for arrays)."""

    values: np.ndarray
    names: list[str]


def fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {message}")


def resolve_format(path: str, fmt: str = "auto") -> str:
    """The format named by task.format, or the one of the file's extension."""
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise fail("task.format", f"cannot tell the format of {path!r} from its extension {suffix or '(none)'!r}; "
                   f"set task.format to one of {', '.join(FORMATS)}")
    return SUFFIXES[suffix]


def load_table(path: str, fmt: str = "auto", columns=(), key: str = "", max_rows: int = 0) -> Table:
    """The table of `path` (its first max_rows rows when > 0), restricted to `columns`."""
    p = Path(path)
    if not p.exists():
        raise fail("task.path", f"{path}: no such file (relative paths are read from the current folder "
                   f"{Path.cwd()})")
    if p.is_dir():
        raise fail("task.path", f"{path} is a folder; give the file of vectors")
    fmt = resolve_format(path, fmt)
    if fmt in ("csv", "tsv"):
        return _delimited(p, "," if fmt == "csv" else "\t", list(columns), max_rows)
    if fmt == "parquet":
        return _parquet(p, list(columns), max_rows)
    if fmt == "npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)   # mapped: max_rows reads only those rows
        except Exception as e:   # noqa: BLE001 — any failure of the reader is a bad file
            raise fail("task.path", f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
        if not isinstance(arr, np.ndarray):
            raise fail("task.path", f"{path}: an .npz archive, not an .npy array; save one array with np.save")
    else:
        arr = _safetensor(p, key)
    return _array_table(arr, path, list(columns), max_rows)


# -------------------------------------------------------------------------------------------------- arrays
def _safetensor(p: Path, key: str) -> np.ndarray:
    try:
        from safetensors.torch import load_file
        tensors = load_file(str(p))
    except Exception as e:   # noqa: BLE001
        raise fail("task.path", f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    names = sorted(tensors)
    if key:
        if key not in tensors:
            raise fail("task.key", f"{p} has no tensor {key!r}; it holds {', '.join(names) or 'none'}")
    elif len(names) != 1:
        raise fail("task.key", f"{p} holds {len(names)} tensors ({', '.join(names[:10])}); choose one with "
                   "task.key=NAME" if names else f"{p} holds no tensor")
    t = tensors[key or names[0]]
    if t.is_complex():
        raise fail("task.path", f"{p}: tensor {key or names[0]!r} is complex; real vectors are needed")
    import torch
    return t.to(torch.float64).numpy()


def _array_table(arr: np.ndarray, path: str, columns: list, max_rows: int) -> Table:
    if arr.dtype.names is not None or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise fail("task.path", f"{path}: an array of dtype {arr.dtype}; a plain numeric array (N, D) is needed")
    if np.iscomplexobj(arr):
        raise fail("task.path", f"{path}: a complex array; real vectors are needed")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise fail("task.path", f"{path}: an array of shape {tuple(arr.shape)}; a table of vectors (N, D) or one "
                   "column (N,) is needed (flatten each item first, e.g. x.reshape(len(x), -1))")
    if max_rows:
        arr = arr[:max_rows]
    names = [str(j) for j in range(arr.shape[1])]
    idx = _pick(columns, names, header=False, path=path) if columns else list(range(arr.shape[1]))
    return Table(np.asarray(arr[:, idx], dtype=np.float64), [names[j] for j in idx])


def _pick(columns: list, names: list[str], header: bool, path: str) -> list[int]:
    """Indices of task.columns entries: a header name, or a 0-based index (an int, or digits)."""
    out = []
    for c in columns:
        if isinstance(c, str) and header and c in names:
            out.append(names.index(c))
        elif isinstance(c, int) or (isinstance(c, str) and c.strip().isdigit()):
            j = int(c)
            if not 0 <= j < len(names):
                raise fail("task.columns", f"column index {j} is out of range: {path} has {len(names)} columns "
                           f"(0..{len(names) - 1})")
            out.append(j)
        else:
            known = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            what = f"its columns are {known}" if header else "it has no column names: give 0-based indices"
            raise fail("task.columns", f"{path} has no column {c!r}; {what}")
    return out


# --------------------------------------------------------------------------------------------- text tables
def _number(cell: str) -> float | None:
    """float of a cell, NaN for a missing value, None for text."""
    s = cell.strip()
    if s.lower() in MISSING:
        return float("nan")
    try:
        return float(s)
    except ValueError:
        return None


def _delimited(p: Path, delimiter: str, columns: list, max_rows: int) -> Table:
    rows, lines, header, width = [], [], None, None
    kind = "csv" if delimiter == "," else "tsv"
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
            for line in reader:
                if not line or all(not c.strip() for c in line):
                    continue
                if width is None:
                    width = len(line)
                    if any(_number(c) is None for c in line):
                        header = [c.strip() for c in line]
                        continue
                if len(line) != width:
                    raise fail("task.path", f"{p}: line {reader.line_num} has {len(line)} fields, the first row has "
                               f"{width} (is task.format right? {kind} was expected)")
                rows.append(line)
                lines.append(reader.line_num)
                if max_rows and len(rows) >= max_rows:
                    break
    except UnicodeDecodeError:
        raise fail("task.path", f"{p}: not a UTF-8 text file (is task.format right?)") from None
    except csv.Error as e:
        raise fail("task.path", f"{p}: not a readable {kind} file ({e})") from None
    if not rows:
        raise fail("task.path", f"{p}: no data rows")
    names = header or [str(j) for j in range(width)]
    chosen = _pick(columns, names, header is not None, str(p)) if columns else list(range(width))
    values, kept, text, mixed = [], [], [], []
    for j in chosen:
        col, n_text, n_numbers, first = _column(rows, j)
        if not n_text:
            values.append(col)
            kept.append(names[j])
            continue
        row, cell = first
        line = f"{names[j]!r} (line {lines[row]}: {cell!r}; {n_text} of {len(rows)} values are not numbers)"
        (mixed if n_numbers else text).append(line)
    if columns and (text or mixed):
        raise fail("task.columns", f"{p}: non-numeric column(s) {'; '.join(text + mixed)}")
    if mixed:
        raise fail("task.path", f"{p}: column(s) mixing numbers and text: {'; '.join(mixed)}; clean them, or "
                   "leave them out by listing the columns to use in task.columns")
    if text:
        warnings.warn(f"{p}: skipping non-numeric column(s) {'; '.join(text)}", stacklevel=3)
    if not values:
        raise fail("task.path", f"{p}: no numeric column")
    return Table(np.stack(values, axis=1), kept)


def _column(rows: list[list[str]], j: int):
    """Column j as (float64 values (N,) with NaN for missing and text cells, number of text cells, number of
    numeric (non-missing) cells, (index into rows, cell) of the first text cell or None)."""
    out, n_text, n_numbers, first = np.empty(len(rows)), 0, 0, None
    for i, r in enumerate(rows):
        v = _number(r[j])
        if v is None:
            n_text += 1
            first = first or (i, r[j])
            v = float("nan")
        elif v == v:
            n_numbers += 1
        out[i] = v
    return out, n_text, n_numbers, first


# ------------------------------------------------------------------------------------------------- parquet
def _parquet(p: Path, columns: list, max_rows: int) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise fail("task.path", f"{p}: reading parquet needs the pyarrow package, which is not installed "
                   "(pip install pyarrow); or save the table as .csv or .npy") from None
    try:
        table = pq.read_table(p)
    except Exception as e:   # noqa: BLE001
        raise fail("task.path", f"{p}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if max_rows:
        table = table.slice(0, max_rows)
    names = [str(n) for n in table.column_names]
    chosen = _pick(columns, names, True, str(p)) if columns else list(range(len(names)))
    numeric = lambda t: (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)   # noqa: E731
                         or pa.types.is_decimal(t))
    text = [f"{names[j]!r} ({table.schema.field(j).type})" for j in chosen if not numeric(table.schema.field(j).type)]
    if text and columns:
        raise fail("task.columns", f"{p}: non-numeric column(s) {', '.join(text)}")
    if text:
        warnings.warn(f"{p}: skipping non-numeric column(s) {', '.join(text)}", stacklevel=3)
    keep = [j for j in chosen if numeric(table.schema.field(j).type)]
    if not keep:
        raise fail("task.path", f"{p}: no numeric column")
    if table.num_rows == 0:
        raise fail("task.path", f"{p}: no data rows")
    cols = [pc.cast(table.column(j), pa.float64()).to_numpy(zero_copy_only=False) for j in keep]
    return Table(np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1), [names[j] for j in keep])
