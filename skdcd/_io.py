"""File input and output: atomic writes and the command line's data files.

``save`` and the command line write atomically; ``skdcd.cli`` documents :func:`read_data`
and :class:`CLIError`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place.

    A failure half-way leaves any previous file at ``path`` intact and no temporary file.
    An existing file keeps its permissions; a new one gets the umask's. Anything at
    ``path`` that is not a regular file (a device, a FIFO, a folder) is refused with a
    ``ValueError``, never replaced.
    """
    path = Path(path)
    mode = existing_file_mode(path)
    # a short temporary name: a file name near the system's limit must still work
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                               prefix=".skdcd-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600 files
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def existing_file_mode(path: str | os.PathLike) -> int | None:
    """The permission bits of the regular file at ``path``, or None if there is none.

    Raises ``ValueError`` if ``path`` exists but is not a regular file.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{os.fspath(path)!r} exists and is not a regular file; "
                         "refusing to replace it.")
    return stat.S_IMODE(info.st_mode)


class CLIError(Exception):
    """A failure to report as one line on stderr, with exit status ``code``.

    Examples
    --------
    >>> error = CLIError("--out expects a file name", code=2)
    >>> str(error), error.code
    ('--out expects a file name', 2)
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------- input and output
def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path) -> np.ndarray:
    """Rows of a CSV file as floats; the first row is a header when no field is a number."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows: list[list[float]] = []
    width, header_seen = None, False
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            for fields in reader:
                line = reader.line_num
                if not any(s.strip() for s in fields):
                    continue  # blank line
                values = [_parse_float(s.strip()) for s in fields]
                if not rows and not header_seen and all(v is None for v in values):
                    header_seen, width = True, len(fields)
                    continue
                if width is None:
                    width = len(fields)
                if len(fields) != width:
                    raise CLIError(f"{path}, line {line}: expected {width} fields like the "
                                   f"first row, got {len(fields)}")
                for j, (text, value) in enumerate(zip(fields, values, strict=True)):
                    if not text.strip():
                        raise CLIError(f"{path}, line {line}, column {j + 1}: empty field "
                                       "(missing values are not supported; drop or impute "
                                       "these rows)")
                    if value is None:
                        raise CLIError(f"{path}, line {line}, column {j + 1}: not a number: "
                                       f"{text.strip()[:40]!r}")
                    if not math.isfinite(value):
                        raise CLIError(f"{path}, line {line}, column {j + 1}: {text.strip()} "
                                       "(NaN and infinite values are not supported; drop or "
                                       "impute these rows)")
                rows.append(values)  # type: ignore[arg-type]
        except csv.Error as exc:
            raise CLIError(f"{path}, line {reader.line_num}: malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise CLIError(f"{path} is not a UTF-8 text CSV file ({exc.reason}); "
                           "use a .npy file for binary data") from exc
    if not rows:
        raise CLIError(f"{path} holds no data rows")
    return np.asarray(rows, dtype=np.float64)


def read_data(path: str) -> np.ndarray:
    """Read DATA (CSV or ``.npy``) as a finite float array of shape (n_samples, n_features).

    Parameters
    ----------
    path : str
        A ``.npy`` file, or else a CSV file (tab-separated when it ends in ``.tsv``).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        The data.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = str(Path(tmp) / "data.csv")
    ...     np.savetxt(path, [[1.0, 2.0], [3.0, 4.5]], delimiter=",", header="x0,x1",
    ...                comments="")
    ...     X = read_data(path)  # the header row is skipped
    >>> X
    array([[1. , 2. ],
           [3. , 4.5]])
    """
    p = Path(path)
    if not p.exists():
        raise CLIError(f"data file not found: {path}")
    if p.is_dir():
        raise CLIError(f"{path} is a folder, not a data file")
    if not p.is_file():  # a device or a FIFO could be endless, or never end
        raise CLIError(f"{path} is not a regular file")
    if p.suffix.lower() != ".npy":
        return _read_csv(p)
    try:
        X = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CLIError(f"cannot read {path} as a .npy array: {exc}") from exc
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise CLIError(f"{path}: expected a 2-D array (n_samples, n_features), "
                       f"got shape {getattr(X, 'shape', None)}")
    if X.dtype.kind not in "iuf":
        raise CLIError(f"{path}: expected a numeric array, got dtype {X.dtype}")
    X = X.astype(np.float64)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"{path} holds no data (shape {X.shape})")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise CLIError(f"{path}: row {bad[0] + 1} (and {bad.size - 1} more) holds NaN or "
                       "infinite values; drop or impute these rows")
    return X


def _check_out(path: str, suffixes: Sequence[str] | None = None, option: str = "--out") -> Path:
    """Validate the output path of ``option`` before any work is done."""
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise CLIError(f"{option} {path}: the file name must end in one of "
                       f"{', '.join(suffixes)}", code=2)
    if p.is_dir():
        raise CLIError(f"{option} {path} is a folder")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: folder {parent} does not exist")
    try:
        existing_file_mode(p)
    except ValueError as exc:
        raise CLIError(f"{option} {path} exists and is not a regular file (a device, a FIFO, "
                       "...); refusing to replace it") from exc
    return p


def _save_array(path: Path, X: np.ndarray, names: Sequence[str]) -> None:
    if path.suffix.lower() == ".npy":
        write_atomic(path, lambda f: np.save(f, X))
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        write_atomic(path, lambda f: np.savetxt(f, X, delimiter=delimiter, fmt="%.10g",
                                                 header=delimiter.join(names), comments=""))


def _feature_names(model: Any) -> list[str]:
    names = getattr(model, "feature_names_in_", None)
    return ([str(n) for n in names] if names is not None
            else [f"x{j}" for j in range(model.n_features_in_)])
