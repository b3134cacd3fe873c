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

from pipeline.atomic import atomic_dir, write_json

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
    """A fit's output directory."""

    def __init__(self, root: str | os.PathLike, resume: bool = False, create: bool = True):
        self.root = Path(root)
        self.resume = resume
        meta_path = self.root / "run.json"
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                raise ValueError(f"{meta_path} is not valid JSON: not an sgaus run") from None
            if meta.get("format") != RUN_FORMAT:
                raise ValueError(
                    f"{self.root} was written by another version of sgaus "
                    f"(format {meta.get('format')!r}, this is {RUN_FORMAT!r}); fit again into a new directory"
                )
            self.meta = meta
        elif create:
            if self.root.exists() and any(self.root.iterdir()):
                raise ValueError(f"{self.root} exists and is not an sgaus run; choose another --out")
            self.root.mkdir(parents=True, exist_ok=True)
            self.meta = {"format": RUN_FORMAT}
            write_json(meta_path, self.meta)
        else:
            raise ValueError(f"{self.root} is not an sgaus run (no run.json)")

    def update_meta(self, **kv) -> None:
        self.meta.update(kv)
        write_json(self.root / "run.json", self.meta)

    def stage_dir(self, name: str) -> Path:
        return self.root / "stages" / name

    def stage_key(self, name: str) -> str | None:
        path = self.stage_dir(name) / "stage.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text()).get("key")
        except json.JSONDecodeError:
            return None

    def cached(self, name: str, key: str) -> Path | None:
        """The stage's directory when --resume is on and its saved key matches ``key``."""
        if self.resume and self.stage_key(name) == key:
            return self.stage_dir(name)
        return None

    @contextlib.contextmanager
    def write_stage(self, name: str, key: str, info: dict | None = None) -> Iterator[Path]:
        """A temporary directory that becomes RUN/stages/<name> only when the block succeeds."""
        with atomic_dir(self.stage_dir(name)) as tmp:
            yield tmp
            write_json(tmp / "stage.json", {"stage": name, "key": key, **(info or {})})
