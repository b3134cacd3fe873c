"""Multi-view video datasets: one writer (``transforms.json``) and readers for three layouts.

Layouts :func:`load_dataset` recognises, by the file found in the dataset directory:

``transforms.json``  ours, nerfstudio style. Intrinsics ``fl_x, fl_y, cx, cy, w, h`` at the top
                     level (shared) or in each frame entry; ``frames`` holds one entry per
                     (camera, frame) with ``file_path``, optional ``mask_path``,
                     ``transform_matrix`` (camera-to-world, OpenGL), ``time``, ``camera`` and
                     ``frame``. Entries without ``camera`` are separate views of frame 0, so a
                     plain nerfstudio capture loads as a one-frame video.
``camera.json``      the Spring-Gaus authors' synthetic layout: a list of ``{camera, K, c2w}``
                     (c2w OpenGL 4x4), images ``<camera>/<frame:03d>.png``.
``all_data.json``    PAC-NeRF: a list of ``{file_path, c2w (3x4 OpenGL), intrinsic (3x3), time}``;
                     entries with the same pose form one camera, frames are the sorted times.

A ``scene.json`` beside it (written by ``sgaus generate-mpm``) is read into ``scene`` (pipeline.data.scene).
A ``static/transforms.json`` beside it (``generate-mpm --static-views``) lists photos of the object in
its frame-0 pose, which :func:`frame0_views` adds to the videos' frame 0 for the object's shape.
Pixel convention: the centre of pixel (u, v) is at (u + 0.5, v + 0.5) (see pipeline.data.cameras),
which is nerfstudio's too, so ``cx = w / 2`` is the image centre in both.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.data.cameras import Cameras
from pipeline.data.files import write_json
from pipeline.data.schema import integer, matrix, number, read_json
from pipeline.data.scene import SceneInfo, read_scene
from taichi_sim.errors import SgausError

LAYOUTS = ("transforms.json", "camera.json", "all_data.json")


# ----------------------------------------------------------------------------- writer
def write_transforms(out_dir, cameras: Cameras, n_frames: int, frame_dt: float,
                     image_pattern: str = "images/{camera}/{frame:03d}.png",
                     mask_pattern: str | None = "masks/{camera}/{frame:03d}.png") -> Path:
    """Write ``out_dir/transforms.json`` (atomically) describing ``n_frames`` frames seen by
    ``cameras``; images are not written. ``image_pattern``/``mask_pattern`` are formatted with
    ``camera`` (the camera's name) and ``frame`` (its index); ``mask_pattern=None`` omits masks.
    Returns the path of the file."""
    n_frames = int(n_frames)
    if n_frames <= 0:
        raise SgausError(f"write_transforms: n_frames must be positive, got {n_frames}")
    if not (frame_dt > 0 and math.isfinite(frame_dt)):
        raise SgausError(f"write_transforms: frame_dt must be a positive number, got {frame_dt}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    Ks = cameras.Ks.double()
    shared = bool(torch.all(Ks == Ks[0]))
    c2w = cameras.opengl_c2w()

    def intrinsics(K: torch.Tensor) -> dict:
        return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}

    doc: dict = {"camera_model": "OPENCV"}
    if shared:
        doc.update(intrinsics(Ks[0]))
    doc.update({"w": cameras.width, "h": cameras.height, "n_frames": n_frames, "frame_dt": float(frame_dt),
                "cameras": list(cameras.names)})
    frames = []
    for f in range(n_frames):
        for c, name in enumerate(cameras.names):
            entry = {"file_path": image_pattern.format(camera=name, frame=f)}
            if mask_pattern:
                entry["mask_path"] = mask_pattern.format(camera=name, frame=f)
            entry["transform_matrix"] = [[float(v) for v in row] for row in c2w[c]]
            if not shared:
                entry.update(intrinsics(Ks[c]))
            entry.update({"time": f * float(frame_dt), "camera": name, "frame": f})
            frames.append(entry)
    doc["frames"] = frames
    return write_json(out_dir / "transforms.json", doc)


# ----------------------------------------------------------------------------- dataset
@dataclass
class VideoDataset:
    """A multi-view video: cameras (fixed over time) and lazily loaded RGBA frames.

    ``files[camera][frame]`` is the image path, ``masks[camera][frame]`` a mask path or None.
    """

    root: Path
    cameras: Cameras
    n_frames: int
    frame_dt: float | None
    scene: SceneInfo | None
    layout: str
    files: list[list[Path]] = field(repr=False)
    masks: list[list[Path | None]] = field(repr=False)

    def _camera_index(self, camera) -> int:
        if isinstance(camera, str):
            return self.cameras.index(camera)
        c = int(camera)
        if not 0 <= c < len(self.cameras):
            raise SgausError(f"camera index {c} out of range (the dataset has {len(self.cameras)} cameras)")
        return c

    def image(self, camera, frame: int, scale: float = 1.0) -> torch.Tensor:
        """RGBA image [H,W,4] float32 in [0,1] of ``camera`` (index or name) at ``frame``.
        Alpha comes from the PNG's alpha channel, else from the mask file, else ones; RGB is
        stored as in the file (straight, not premultiplied). ``scale`` resizes (area when
        shrinking, bilinear when enlarging) to the size of ``cameras_at(scale)``."""
        c = self._camera_index(camera)
        frame = int(frame)
        if not 0 <= frame < self.n_frames:
            raise SgausError(f"frame {frame} out of range (the dataset has {self.n_frames} frames)")
        path = self.files[c][frame]
        img = _read_image(path)
        if img.shape[0] != self.cameras.height or img.shape[1] != self.cameras.width:
            raise SgausError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, the dataset's cameras are "
                             f"{self.cameras.width}x{self.cameras.height}")
        if img.shape[2] == 3:
            mask_path = self.masks[c][frame]
            if mask_path is not None and mask_path.is_file():
                mask = _read_image(mask_path)
                if mask.shape[:2] != img.shape[:2]:
                    raise SgausError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                                     f"{img.shape[1]}x{img.shape[0]}")
                alpha = mask[..., 3:4] if mask.shape[2] == 4 else mask[..., :1]
            else:
                alpha = np.ones_like(img[..., :1])
            img = np.concatenate([img, alpha], axis=-1)
        out = torch.from_numpy(np.ascontiguousarray(img))
        if scale != 1.0:
            out = _resize(out, self.cameras_at(scale))
        return out

    def frame(self, frame: int, cameras=None, scale: float = 1.0) -> torch.Tensor:
        """RGBA images [C,H,W,4] of ``frame`` for ``cameras`` (indices or names; None = all)."""
        idx = range(len(self.cameras)) if cameras is None else cameras
        return torch.stack([self.image(c, frame, scale) for c in idx])

    def cameras_at(self, scale: float) -> Cameras:
        """The cameras for images resized by ``scale``."""
        if not (scale > 0 and math.isfinite(scale)):
            raise SgausError(f"image scale must be a positive number, got {scale}")
        return self.cameras if scale == 1.0 else self.cameras.scaled(scale)


def _read_image(path: Path) -> np.ndarray:
    """float32 [H,W,3 or 4] in [0,1] (grey images become RGB; grey+alpha becomes RGBA)."""
    import imageio.v3 as iio

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        raw = iio.imread(path)
    except Exception as err:  # imageio raises many kinds for a broken file
        raise SgausError(f"{path}: cannot read the image ({err.__class__.__name__}: {err})".splitlines()[0]) from None
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / 65535.0
    elif raw.dtype == bool:
        img = raw.astype(np.float32)
    else:
        img = np.clip(raw.astype(np.float32), 0.0, 1.0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise SgausError(f"{path}: unsupported image shape {raw.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 2:
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=2), img[..., 1:]], axis=2)
    return img


def _resize(img: torch.Tensor, cams: Cameras) -> torch.Tensor:
    h, w = cams.height, cams.width
    x = img.permute(2, 0, 1)[None]
    shrink = h * w < img.shape[0] * img.shape[1]
    if shrink:
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="area")
    else:
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1).contiguous()


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as err:
        raise SgausError(f"{path}: cannot read the image ({err.__class__.__name__})") from None


# ----------------------------------------------------------------------------- readers
def _check_sizes(files: list[list[Path]], width: int | None, height: int | None, source: Path) -> tuple[int, int]:
    """Check frame 0 of every camera exists and all share one size; return (width, height)."""
    for row in files:
        w, h = _image_size(row[0])
        if width is None:
            width, height = w, h
        elif (w, h) != (width, height):
            raise SgausError(f"{row[0]}: image is {w}x{h}, expected {width}x{height} (from {source.name})")
    return int(width), int(height)


def _assemble(root: Path, source: Path, per_camera: dict, what: str) -> tuple[list, list, int]:
    """per_camera: name -> {frame: (image, mask)}; every camera needs frames 0..n-1."""
    if not per_camera:
        raise SgausError(f"{source}: no frames listed")
    n_frames = max(max(frames) for frames in per_camera.values()) + 1
    files, masks = [], []
    for name, frames in per_camera.items():
        if 0 not in frames:
            raise SgausError(f"{source}: camera {name!r} has no frame 0")
        missing = [f for f in range(n_frames) if f not in frames]
        if missing:
            raise SgausError(f"{source}: camera {name!r} lacks frame {missing[0]} of {n_frames} ({what})")
        files.append([frames[f][0] for f in range(n_frames)])
        masks.append([frames[f][1] for f in range(n_frames)])
    return files, masks, n_frames


def _load_transforms(root: Path, path: Path):
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list):
        raise SgausError(f"{path}: expected an object with a 'frames' list")
    if not doc["frames"]:
        raise SgausError(f"{path}: 'frames' is empty")
    per_camera: dict = {}
    poses: dict = {}
    Ks: dict = {}
    times: dict = {}
    width = integer(doc["w"], "'w'", path, low=1) if doc.get("w") is not None else None
    height = integer(doc["h"], "'h'", path, low=1) if doc.get("h") is not None else None
    for i, entry in enumerate(doc["frames"]):
        where = f"frames[{i}]"
        if not isinstance(entry, dict) or "file_path" not in entry or "transform_matrix" not in entry:
            raise SgausError(f"{path}: {where} needs 'file_path' and 'transform_matrix'")
        name = str(entry.get("camera", f"view_{i:03d}"))
        try:
            f = int(entry.get("frame", 0))
        except (TypeError, ValueError):
            raise SgausError(f"{path}: {where} 'frame' must be an integer") from None
        if f < 0:
            raise SgausError(f"{path}: {where} has a negative frame index {f}")
        if f in per_camera.setdefault(name, {}):
            raise SgausError(f"{path}: camera {name!r} lists frame {f} twice")
        mask = root / entry["mask_path"] if entry.get("mask_path") else None
        per_camera[name][f] = (root / entry["file_path"], mask)
        src = entry if "fl_x" in entry else doc
        fx = number(src, "fl_x", path, where, positive=True)
        K = np.array([[fx, 0.0, number(src, "cx", path, where)],
                      [0.0, number(src, "fl_y", path, where, positive=True) if "fl_y" in src else fx,
                       number(src, "cy", path, where)],
                      [0.0, 0.0, 1.0]])
        c2w = matrix(entry["transform_matrix"], ((4, 4), (3, 4)), f"{where} transform_matrix", path)
        check_camera(K, c2w, f"{where} transform_matrix", path)
        if f == 0:
            poses[name], Ks[name] = c2w, K
        if "time" in entry:
            times[f] = number(entry, "time", path, where)
        if entry.get("w") is not None:
            w = integer(entry["w"], f"{where} 'w'", path, low=1)
            h = integer(entry.get("h"), f"{where} 'h'", path, low=1)
            if width is None:
                width, height = w, h
            elif (w, h) != (width, height):
                raise SgausError(f"{path}: {where} is {w}x{h}, other frames are {width}x{height}")
    files, masks, n_frames = _assemble(root, path, per_camera, "transforms.json")
    names = list(per_camera)
    width, height = _check_sizes(files, width, height, path)
    cams = Cameras.from_opengl_c2w(np.stack([_as4x4(poses[n]) for n in names]), np.stack([Ks[n] for n in names]),
                                   width, height, names)
    frame_dt = doc.get("frame_dt")
    if frame_dt is None and n_frames > 1 and 0 in times and 1 in times:
        frame_dt = times[1] - times[0]
    return cams, files, masks, n_frames, (float(frame_dt) if frame_dt else None)


def check_camera(K: np.ndarray, c2w: np.ndarray, what: str, path: Path) -> None:
    """A pinhole camera sgaus can use: positive focal lengths, an invertible rotation part."""
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise SgausError(f"{path}: the focal lengths must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
    if abs(np.linalg.det(c2w[:3, :3])) < 1e-9:
        raise SgausError(f"{path}: {what} has a singular rotation part (not a camera pose)")


def _as4x4(m: np.ndarray) -> np.ndarray:
    if m.shape == (4, 4):
        return m
    return np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], axis=0)


_FRAME_FILE = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


def _load_camera_json(root: Path, path: Path):
    doc = read_json(path)
    if not isinstance(doc, list) or not doc:
        raise SgausError(f"{path}: expected a non-empty list of {{camera, K, c2w}}")
    names, poses, Ks, per_camera = [], [], [], {}
    for i, entry in enumerate(doc):
        where = f"entry {i}"
        if not isinstance(entry, dict) or not {"camera", "K", "c2w"} <= set(entry):
            raise SgausError(f"{path}: {where} needs 'camera', 'K' and 'c2w'")
        name = str(entry["camera"])
        if name in per_camera:
            raise SgausError(f"{path}: camera {name!r} is listed twice")
        names.append(name)
        Ks.append(matrix(entry["K"], ((3, 3),), f"{where} K", path))
        poses.append(_as4x4(matrix(entry["c2w"], ((4, 4), (3, 4)), f"{where} c2w", path)))
        check_camera(Ks[-1], poses[-1], f"{where} c2w", path)
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder of camera {name!r} not found: {folder}")
        frames = {}
        for p in folder.iterdir():
            m = _FRAME_FILE.match(p.name)
            if m:
                frames[int(m.group(1))] = (p, None)
        if not frames:
            raise SgausError(f"{folder}: camera {name!r} has no frames (<frame:03d>.png)")
        per_camera[name] = frames
    files, masks, n_frames = _assemble(root, path, per_camera, "camera.json")
    width, height = _check_sizes(files, None, None, path)
    cams = Cameras.from_opengl_c2w(np.stack(poses), np.stack(Ks), width, height, names)
    return cams, files, masks, n_frames, None


_PAC_FILE = re.compile(r"r_(\d+)_(\d+)\.", re.IGNORECASE)


def _load_all_data(root: Path, path: Path):
    doc = read_json(path)
    if not isinstance(doc, list) or not doc:
        raise SgausError(f"{path}: expected a non-empty list of {{file_path, c2w, intrinsic, time}}")
    entries = []
    for i, entry in enumerate(doc):
        where = f"entry {i}"
        if not isinstance(entry, dict) or not {"file_path", "c2w", "intrinsic", "time"} <= set(entry):
            raise SgausError(f"{path}: {where} needs 'file_path', 'c2w', 'intrinsic' and 'time'")
        c2w = _as4x4(matrix(entry["c2w"], ((3, 4), (4, 4)), f"{where} c2w", path))
        K = matrix(entry["intrinsic"], ((3, 3),), f"{where} intrinsic", path)
        check_camera(K, c2w, f"{where} c2w", path)
        entries.append((root / entry["file_path"], c2w, K, number(entry, "time", path, where)))
    times = sorted({t for *_, t in entries})
    frame_of = {t: f for f, t in enumerate(times)}
    # one camera per distinct pose and intrinsics, in order of first appearance
    keys: dict = {}
    per_camera: dict = {}
    poses, Ks, names = [], [], []
    for file, c2w, K, t in entries:
        key = np.round(np.concatenate([c2w.ravel(), K.ravel()]), 6).tobytes()
        if key not in keys:
            keys[key] = len(names)
            m = _PAC_FILE.search(file.name)
            names.append(f"r_{m.group(1)}" if m else f"cam_{len(names):02d}")
            poses.append(c2w)
            Ks.append(K)
        name = names[keys[key]]
        f = frame_of[t]
        if f in per_camera.setdefault(name, {}):
            raise SgausError(f"{path}: camera {name!r} has two images at time {t}")
        per_camera[name][f] = (file, None)
    if len(set(names)) != len(names):
        names = [f"cam_{i:02d}" for i in range(len(names))]
        per_camera = dict(zip(names, per_camera.values()))
    files, masks, n_frames = _assemble(root, path, per_camera, "all_data.json")
    width, height = _check_sizes(files, None, None, path)
    cams = Cameras.from_opengl_c2w(np.stack(poses), np.stack(Ks), width, height, names)
    frame_dt = times[1] - times[0] if len(times) > 1 else None
    return cams, files, masks, n_frames, frame_dt


_READERS = {"transforms.json": _load_transforms, "camera.json": _load_camera_json, "all_data.json": _load_all_data}


def load_dataset(path) -> VideoDataset:
    """Open the dataset directory ``path`` (or its layout file directly); images stay on disk."""
    path = Path(path)
    if path.is_file() and path.name in _READERS:
        root, layout = path.parent, path.name
    else:
        if not path.exists():
            raise FileNotFoundError(f"dataset not found: {path}")
        if not path.is_dir():
            raise SgausError(f"{path}: not a dataset directory (nor one of {', '.join(LAYOUTS)})")
        root = path
        layout = next((name for name in LAYOUTS if (path / name).is_file()), None)
        if layout is None:
            raise FileNotFoundError(f"{path}: no dataset file found (looked for {', '.join(LAYOUTS)})")
    cams, files, masks, n_frames, frame_dt = _READERS[layout](root, root / layout)
    scene = read_scene(root)
    if frame_dt is None and scene is not None and scene.frame_dt:
        frame_dt = scene.frame_dt
    return VideoDataset(root=root, cameras=cams, n_frames=n_frames, frame_dt=frame_dt, scene=scene, layout=layout,
                        files=files, masks=masks)


STATIC_DIR = "static"


def frame0_views(ds: VideoDataset) -> VideoDataset:
    """Every view of the object as it is at frame 0, as a one-frame dataset: each camera's frame 0
    and, when ``ds`` has a static capture in ``static/`` (written by ``sgaus generate-mpm
    --static-views``: a one-frame transforms.json of photos of the object in its frame-0 pose, in
    the videos' frame of reference and image size), those photos too. Without one, ``ds`` itself."""
    path = ds.root / STATIC_DIR / "transforms.json"
    if not path.is_file():
        return ds
    st = load_dataset(path)
    if st.n_frames != 1:
        raise SgausError(f"{path}: the static photos are views of frame 0, but it lists {st.n_frames} frames")
    size, vsize = (st.cameras.width, st.cameras.height), (ds.cameras.width, ds.cameras.height)
    if size != vsize:
        raise SgausError(f"{path}: the static photos are {size[0]}x{size[1]}, the videos {vsize[0]}x{vsize[1]}; "
                         "they must be the same size")
    clash = sorted(set(st.cameras.names) & set(ds.cameras.names))
    if clash:
        raise SgausError(f"{path}: static photo {clash[0]!r} has the name of a video camera")
    cams = Cameras(torch.cat([ds.cameras.viewmats, st.cameras.viewmats]), torch.cat([ds.cameras.Ks, st.cameras.Ks]),
                   vsize[0], vsize[1], [*ds.cameras.names, *st.cameras.names])
    return VideoDataset(root=ds.root, cameras=cams, n_frames=1, frame_dt=ds.frame_dt, scene=ds.scene,
                        layout=ds.layout, files=[row[:1] for row in ds.files] + st.files,
                        masks=[row[:1] for row in ds.masks] + st.masks)
