"""Never leave a half-written output, never write over what is not ours.

* Files and directories are written under a temporary name beside their target, then renamed
  (:func:`atomic_file`, :func:`atomic_dir`); they get the permissions ``open`` would give them
  under the user's umask (0644 / 0755 under umask 022), not the 0600 / 0700 of temporary files.
  Temporary names carry the writing process's id, so the left-overs of a killed process are
  recognised and removed by the next write beside them.
* Every command that writes a directory first checks it with :func:`check_output_dir`: it must not
  exist, be empty, or hold a previous output of the same kind (recognised by its marker file and
  format key); ``overwrite`` lets a previous output of the same kind be replaced, never a foreign
  directory, a run, a dataset, or a directory the command reads.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from taichi_sim.errors import SgausError

# what a command writes, the marker file that says a directory holds it, and the marker's format prefix
OUTPUT_KINDS = {
    "dataset": ("scene.json", "sgaus-mpm/"),
    "run": ("run.json", "sgaus-run/"),
    "simulation": ("simulation.json", "sgaus-simulation/"),
    "splat-sequence": ("sequence.json", "sgaus-splat-sequence/"),
    "reconstruction": ("settings.json", "sgaus-reconstruction/"),
    "suite": ("suite.json", "sgaus-suite/"),
    "capture": ("capture.json", "sgaus-capture/"),
}
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(tmp|old)(\.[A-Za-z0-9]+)?$")
# a run's writer lock and its record (pipeline/data/runlock.py): no content of the directory
LOCK_FILES = (".sgaus.lock", ".sgaus.lock.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _share(path: Path, directory: bool = False) -> None:
    """Give a temporary file or directory the mode a plain create would: 0666 / 0777 less the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary files and directories that dead processes left in ``directory``."""
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP.match(p.name)
        if m and not _pid_alive(int(m["pid"])):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    _share(Path(name))
    return Path(name)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (same-directory temp file, then os.replace)."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed onto ``path`` only on success.

    ``suffix`` ends the temporary name, for writers that choose their format from the
    extension or append it when it is missing (imageio, open3d, numpy.savez)."""
    path = Path(path)
    tmp = _tmp_sibling(path, suffix)
    try:
        yield tmp
        _share(tmp)  # writers that re-create the file (numpy, imageio) do so with their own mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path``.

    On any exception the temporary directory is removed and ``path`` is left as it was. The old
    ``path`` is moved aside before the swap and deleted after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    _share(tmp, directory=True)
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def output_kind(directory: Path) -> str | None:
    """The kind of sgaus output ``directory`` holds (by its marker file), or None."""
    for kind, (marker, prefix) in OUTPUT_KINDS.items():
        p = directory / marker
        if p.is_file():
            try:
                doc = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue
            if isinstance(doc, dict) and str(doc.get("format", "")).startswith(prefix):
                return kind
    return None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_dir(out: str | os.PathLike, kind: str, overwrite: bool = False, protect=(), option: str = "--out",
                     allow_existing: bool = False) -> Path:
    """Check, before any work, that the directory ``out`` may receive an output of ``kind``.

    Refused with one line: the current directory or one of its parents; a path under a file or a
    file itself; a place the user cannot write; the directories in ``protect`` (what the command
    reads: a run, a dataset) and anything that contains them; a non-empty directory that is not a
    previous output of ``kind``; a previous output of ``kind`` unless ``overwrite`` (or
    ``allow_existing``, for outputs updated in place such as a run resumed). Returns the path.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    out = Path(out)
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, resolved):
        raise SgausError(f"{option} {out}: the current directory (or one holding it) cannot be an output; "
                         "name a new directory")
    for p in protect:
        p = Path(p).resolve()
        if _is_within(p, resolved):
            raise SgausError(f"{option} {out} would write over {p}, which this command reads; choose another {option}")
    for parent in [resolved, *resolved.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == resolved else f"lies under the file {parent}"
                raise SgausError(f"{option} {out} {what}; name a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SgausError(f"{option} {out}: {parent} is not writable")
            break
    if resolved.is_dir() and any(p for p in resolved.iterdir() if not _TMP.match(p.name) and p.name not in LOCK_FILES):
        found = output_kind(resolved)
        if found != kind:
            held = f"holds an sgaus {found}" if found else "is not empty"
            raise SgausError(f"{option} {out} {held}, not a previous {kind} output; refusing to write into it "
                             f"(choose a new or empty directory)")
        if not (overwrite or allow_existing):
            raise SgausError(f"{option} {out} holds a previous {kind}; pass --overwrite to replace it")
    return out
