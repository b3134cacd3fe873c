"""A point cloud from a file: the anchors' positions given by the user (`--set anchor_points=PATH`).

Formats: ``.npy`` (one [N,3] array), ``.npz`` (its array ``x``, as a dataset's
``particles/NNN.npz`` holds, or its only array) and ``.ply`` (the vertices open3d reads: a point
cloud, or a mesh's vertices). Every problem is one line naming the file.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from taichi_sim.errors import SgausError

POINT_FORMATS = (".npy", ".npz", ".ply")


def read_points(path) -> torch.Tensor:
    """[N,3] float32 points of ``path``; finite, N >= 1."""
    path = Path(path)
    if path.suffix.lower() not in POINT_FORMATS:
        raise SgausError(f"{path}: points must be a {', '.join(POINT_FORMATS)} file")
    if not path.is_file():
        raise SgausError(f"{path}: no such points file")
    try:
        if path.suffix.lower() == ".ply":
            import open3d as o3d
            points = np.asarray(o3d.io.read_point_cloud(str(path)).points)
        else:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    names = list(loaded.files)
                    if "x" in names:
                        points = loaded["x"]
                    elif len(names) == 1:
                        points = loaded[names[0]]
                    else:
                        raise SgausError(f"{path}: expected an array named 'x' or a single array, found "
                                         f"{', '.join(names) or 'none'}")
            else:
                points = loaded
    except SgausError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise SgausError(f"{path}: not a readable points file ({err})") from None
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0 or not np.issubdtype(points.dtype, np.number):
        raise SgausError(f"{path}: expected N x 3 numbers, got an array of shape {tuple(points.shape)}")
    if not np.isfinite(points).all():
        raise SgausError(f"{path}: {int((~np.isfinite(points)).any(1).sum())} of its points are not finite")
    return torch.from_numpy(points.astype(np.float32))


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (a stage keyed by it sees a changed file, whatever its name or time)."""
    path = Path(path)
    if not path.is_file():
        raise SgausError(f"{path}: no such points file")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
