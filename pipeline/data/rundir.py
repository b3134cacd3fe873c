"""Stage bookkeeping for `sgaus fit`: each stage saves its output under RUN/stages/<name>/
with a ``stage.json`` holding the hash (key) of its inputs and settings. A stage's key includes
the keys of the stages it reads, so changing a setting re-runs that stage and those after it,
and ``--resume`` reuses a stage only when its key matches (never stale work)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from pipeline.data.files import atomic_dir, check_output_dir, write_json
from pipeline.data.runlock import RunLock
from pipeline.data.schema import read_json
from taichi_sim.errors import SgausError

RUN_FORMAT = "sgaus-run/1"


def hash_key(*parts) -> str:
    """A stable 16-hex-digit hash of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_files(paths) -> str:
    """Hash of files' names, sizes and modification times (cheap, detects replaced data)."""
    items = []
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        items.append((str(p), st.st_size, st.st_mtime_ns))
    return hash_key(items)


class RunDir:
    """A fit's output directory. ``run.json`` holds its format, the dataset, the scene facts, which
    stages the last fit ran and its ``status``: "fitting" while a fit is under way, "complete"
    once the asset is written (so readers can refuse the asset of a fit that did not finish)."""

    def __init__(self, root: str | os.PathLike, resume: bool = False, create: bool = True, overwrite: bool = False,
                 protect=(), writer: bool = False, lock: str | None = None):
        """Open the run at ``root`` (``create``: make it when absent). A ``writer`` (a new fit) may
        use an existing run only with ``resume`` or ``overwrite``; ``protect`` lists what it reads.
        ``lock`` (the operation, e.g. "sgaus fit"): take the run's writer lock first, so that a
        second writer is refused before anything else (pipeline/data/runlock.py); :meth:`release`
        gives it back."""
        self.root = Path(root)
        self.resume = resume
        self.lock: RunLock | None = None
        meta_path = self.root / "run.json"
        if meta_path.exists():
            if lock:
                self.lock = RunLock(self.root, lock).acquire()
            try:
                meta = read_json(meta_path, dict)
                if meta.get("format") != RUN_FORMAT:
                    raise SgausError(
                        f"{self.root} was written by another version of sgaus "
                        f"(format {meta.get('format')!r}, this is {RUN_FORMAT!r}); fit again into a new directory"
                    )
                self.meta = meta
                if writer:  # a new fit into an existing run: allowed with --resume or --overwrite
                    check_output_dir(self.root, "run", overwrite=overwrite, protect=protect, allow_existing=resume)
            except BaseException:
                self.release()
                raise
        elif create:
            check_output_dir(self.root, "run", overwrite=overwrite, protect=protect)
            self.root.mkdir(parents=True, exist_ok=True)
            if lock:
                self.lock = RunLock(self.root, lock).acquire()
            self.meta = {"format": RUN_FORMAT}
            try:
                write_json(meta_path, self.meta)
            except BaseException:
                self.release()
                raise
        else:
            if not self.root.exists():
                raise SgausError(f"no such run directory: {self.root}")
            raise SgausError(f"{self.root} is not an sgaus run (no run.json)")

    def release(self) -> None:
        """Give back the writer lock (when this object took it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def complete(self) -> bool:
        """Whether the last fit into this run finished (runs older than the status field count as finished)."""
        return self.meta.get("status", "complete") == "complete"

    def require_complete(self, use_last_complete: bool = False) -> None:
        """Refuse the run when its last fit did not finish, unless the caller asks for the last
        complete asset (the asset is only ever replaced whole, at the end of a fit)."""
        if self.complete or use_last_complete:
            return
        data = self.meta.get("data", "DATA")
        raise SgausError(f"the last fit into {self.root} did not finish: finish it with `sgaus fit {data} --out "
                         f"{self.root} --resume`, or pass --last-complete to use the asset of the last finished fit")

    def update_meta(self, **kv) -> None:
        self.meta.update(kv)
        write_json(self.root / "run.json", self.meta)

    def stage_dir(self, name: str) -> Path:
        return self.root / "stages" / name

    def stage_key(self, name: str) -> str | None:
        """The key a stage was saved with (None: not saved, or its stage.json is unreadable)."""
        try:
            info = self.stage_json(name)
        except SgausError:
            return None
        return None if info is None else info.get("key")

    def cached(self, name: str, key: str) -> Path | None:
        """The stage's directory when --resume is on and its saved key matches ``key``."""
        if self.resume and self.stage_key(name) == key:
            return self.stage_dir(name)
        return None

    def stage_json(self, name: str) -> dict | None:
        path = self.stage_dir(name) / "stage.json"
        return read_json(path, dict) if path.exists() else None

    @contextlib.contextmanager
    def write_stage(self, name: str, key: str, info: dict | None = None) -> Iterator[Path]:
        """A temporary directory that becomes RUN/stages/<name> only when the block succeeds."""
        with atomic_dir(self.stage_dir(name)) as tmp:
            yield tmp
            write_json(tmp / "stage.json", {"stage": name, "key": key, **(info or {})})
