"""scene.json and the ground-truth particles of a dataset (written by ``sgaus generate-mpm``).

scene.json holds, among the generator's own records: ``gravity`` [3], ``ground`` {point [3],
normal [3], mode, friction}, ``frame_dt``, ``n_frames``, ``contact_frame`` (first frame touching
the ground, or null), ``split`` {fit: [0, F], future: [F, n]} and ``generator`` {name, version}.
Every field sgaus uses is checked here (types, shapes, finiteness, ranges), so a malformed file
is one line naming the file and the field. ``particles/<frame:03d>.npz`` holds ``x`` [P,3] and
optionally ``surface`` [P] (bool) and ``part`` [P].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.schema import integer, load_npz, number, read_json, vector3
from taichi_sim.errors import SgausError


@dataclass(frozen=True)
class SceneInfo:
    """What a dataset's scene.json says about the physical scene (None where it says nothing)."""

    gravity: tuple | None = None
    ground_point: tuple | None = None
    ground_normal: tuple | None = None
    frame_dt: float | None = None
    n_frames: int | None = None
    fit_frames: int | None = None
    contact_frame: int | None = None
    generator_version: int | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)


def parse_scene(doc: dict, path: Path) -> SceneInfo:
    """The checked :class:`SceneInfo` of a scene.json document."""
    if not isinstance(doc, dict):
        raise SgausError(f"{path}: expected a JSON object")
    info: dict = {}
    if doc.get("gravity") is not None:
        info["gravity"] = vector3(doc["gravity"], "'gravity'", path)
    if doc.get("ground") is not None:
        ground = doc["ground"]
        if not isinstance(ground, dict):
            raise SgausError(f"{path}: 'ground' must be an object with 'point' and 'normal'")
        for key in ("point", "normal"):
            if key not in ground:
                raise SgausError(f"{path}: 'ground' has no '{key}'")
        info["ground_point"] = vector3(ground["point"], "'ground.point'", path)
        info["ground_normal"] = vector3(ground["normal"], "'ground.normal'", path, nonzero=True)
    if doc.get("frame_dt") is not None:
        info["frame_dt"] = number(doc, "frame_dt", path, "the time between frames", positive=True)
    if doc.get("n_frames") is not None:
        info["n_frames"] = integer(doc["n_frames"], "'n_frames'", path, low=1)
    if doc.get("contact_frame") is not None:
        info["contact_frame"] = integer(doc["contact_frame"], "'contact_frame'", path, low=0)
    split = doc.get("split")
    if split is not None:
        fit = split.get("fit") if isinstance(split, dict) else None
        if not (isinstance(fit, (list, tuple)) and len(fit) == 2):
            raise SgausError(f"{path}: 'split.fit' must be [first, end] frames")
        info["fit_frames"] = integer(fit[1], "'split.fit' end", path, low=0)
    generator = doc.get("generator")
    if isinstance(generator, dict) and generator.get("version") is not None:
        info["generator_version"] = integer(generator["version"], "'generator.version'", path, low=1)
    return SceneInfo(**info, raw=doc)


def read_scene(root: str | Path) -> SceneInfo | None:
    """The dataset's scene.json, checked; None when the dataset has none."""
    path = Path(root) / "scene.json"
    if not path.exists():
        return None
    return parse_scene(read_json(path, dict), path)


def particles_path(root: str | Path, frame: int) -> Path:
    return Path(root) / "particles" / f"{int(frame):03d}.npz"


def has_particles(root: str | Path) -> bool:
    return (Path(root) / "particles").is_dir()


def load_particles(root: str | Path, frame: int, surface_only: bool = True) -> np.ndarray:
    """Ground-truth particle positions [P,3] of ``frame`` (the surface particles when the file
    flags them and ``surface_only``); a missing or malformed file is an SgausError naming it."""
    path = particles_path(root, frame)
    arrays = load_npz(path, {"x": (2, "f")})
    x = arrays["x"]
    if x.shape[1] != 3 or len(x) == 0:
        raise SgausError(f"{path}: 'x' must be a non-empty [P,3] array, got shape {x.shape}")
    surface = arrays.get("surface")
    if surface_only and surface is not None:
        if surface.shape != (len(x),):
            raise SgausError(f"{path}: 'surface' must be [P={len(x)}], got shape {surface.shape}")
        if surface.any():
            x = x[surface.astype(bool)]
    return x
