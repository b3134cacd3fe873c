"""Checks shared by every reader of a file format: each failure is an SgausError of one line that
names the file and the field. The readers themselves (datasets.py, scene.py, the asset, the run
directory, the settings) say what each format holds."""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from taichi_sim.errors import SgausError


def read_json(path: Path, kind: type | None = None):
    """The JSON document in ``path``; ``kind`` (dict or list), when given, is its required type."""
    path = Path(path)
    if not path.is_file():
        raise SgausError(f"{path}: file not found")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SgausError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise SgausError(f"{path}: not a text file") from None
    if kind is not None and not isinstance(doc, kind):
        raise SgausError(f"{path}: expected a JSON {'object' if kind is dict else 'list'}")
    return doc


def read_yaml(path: Path, kind: type | None = dict):
    """The YAML document in ``path`` (None for an empty file when ``kind`` is None, else {} for a
    mapping); ``kind`` is its required type."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SgausError(f"{path}: file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SgausError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if doc is None and kind is dict:
        doc = {}
    if kind is not None and not isinstance(doc, kind):
        raise SgausError(f"{path} must hold a {'mapping' if kind is dict else kind.__name__}")
    return doc


def non_finite(values, item: str = "index") -> str | None:
    """Where ``values`` is not finite, for a message: 'NaN at anchor 3' (``item`` names what an
    index counts), 'inf at index (2, 0)', or 'NaN' for a scalar; None when every value is finite."""
    a = np.asarray(values)
    if a.dtype.kind not in "fc":
        return None
    bad = np.argwhere(~np.isfinite(a))
    if len(bad) == 0:
        return None
    v = a[tuple(bad[0])]
    text = "NaN" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    if a.ndim == 0:
        return text
    where = str(int(bad[0][0])) if a.ndim == 1 else "(" + ", ".join(str(int(i)) for i in bad[0]) + ")"
    return f"{text} at {item} {where}"


def matrix(value, shapes: tuple[tuple[int, ...], ...], what: str, path: Path, item: str = "index") -> np.ndarray:
    """A finite float64 array of one of ``shapes``; a non-finite entry is named with its index
    (``item``: what the first index counts, e.g. "anchor")."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SgausError(f"{path}: {what} is not a numeric array") from None
    if m.shape not in shapes:
        wanted = " or ".join("x".join(map(str, s)) or "a number" for s in shapes)
        raise SgausError(f"{path}: {what} must be {wanted}, got shape {m.shape}")
    bad = non_finite(m, item)
    if bad:
        raise SgausError(f"{path}: {what} holds {bad}")
    return m


def number(entry: dict, key: str, path: Path, where: str, low: float | None = None, positive: bool = False) -> float:
    """entry[key] as a finite float (>= low, or > 0 with ``positive``)."""
    if key not in entry or entry[key] is None:
        raise SgausError(f"{path}: '{key}' missing ({where})")
    try:
        value = float(entry[key])
    except (TypeError, ValueError):
        raise SgausError(f"{path}: '{key}' must be a number ({where}), got {entry[key]!r}") from None
    if not math.isfinite(value) or (positive and value <= 0) or (low is not None and value < low):
        need = "a positive number" if positive else (f"a number >= {low:g}" if low is not None else "finite")
        raise SgausError(f"{path}: '{key}' must be {need} ({where}), got {entry[key]!r}")
    return value


def vector3(value, what: str, path: Path, nonzero: bool = False) -> tuple[float, float, float]:
    v = matrix(value, ((3,),), what, path)
    if nonzero and not np.linalg.norm(v) > 0:
        raise SgausError(f"{path}: {what} must not be the zero vector")
    return tuple(float(c) for c in v)


def integer(value, what: str, path: Path, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
        raise SgausError(f"{path}: {what} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise SgausError(f"{path}: {what} must be >= {low}, got {value}")
    return int(value)


def load_npz(path: Path, arrays: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Arrays of an .npz file: ``arrays`` maps each name to (ndim, kind) with kind "f" (finite
    floats) or "i" (integers); a missing, truncated or malformed file, a missing array, a wrong
    rank or a non-finite value is one SgausError naming the file and the array."""
    path = Path(path)
    if not path.is_file():
        raise SgausError(f"{path}: file not found")
    out = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for name, (ndim, kind) in arrays.items():
                if name not in z.files:
                    raise SgausError(f"{path}: the array '{name}' is missing")
                a = z[name]
                if a.ndim != ndim:
                    raise SgausError(f"{path}: '{name}' must have {ndim} dimensions, got shape {a.shape}")
                if kind == "f" and a.dtype.kind not in "fiu":
                    raise SgausError(f"{path}: '{name}' holds non-numeric values ({a.dtype})")
                if kind == "f" and non_finite(a):
                    raise SgausError(f"{path}: '{name}' holds {non_finite(a)}")
                if kind == "i" and a.dtype.kind not in "iu":
                    raise SgausError(f"{path}: '{name}' must hold integers, got {a.dtype}")
                out[name] = a
            for name in z.files:
                if name not in out:
                    out[name] = z[name]
    except SgausError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise SgausError(f"{path}: not a readable .npz file ({err.__class__.__name__})") from None
    return out
