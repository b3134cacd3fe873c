"""Real captures: a static capture (COLMAP model, images, masks) and N calibrated videos of the
object moving, read into one in-memory :class:`Capture` and prepared as two sgaus datasets.

Two layouts are read as they are (:func:`read_capture`):

``capture.json`` (sgaus' own, format ``sgaus-capture/1``; paths relative to the file)::

    {"format": "sgaus-capture/1",
     "static": {"colmap": "static/sparse", "images": "static/images", "masks": "static/masks"},
     "fps": 30, "frames": 30, "fit_frames": 20, "contact_frame": 7,
     "views": [{"name": "cam0", "video": "dynamic/cam0.mp4", "masks": "dynamic/masks/cam0",
                "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "dist": [k1, k2, p1, p2],
                "rvec": [3], "tvec": [3], "offset": 0}, ...],
     "gravity": [0, 0, 9.81], "ground": {"point": [0, 0, 0], "normal": [0, 0, -1]},
     "ground_truth": "ground_truth"}

  A view gives ``video`` (an mp4 or any file ffmpeg reads) or ``frames`` (a folder of images,
  sorted by name, or a list of files); ``masks`` (a folder of PNGs, one per frame in the same
  order, or a list) unless the frames are RGBA with the mask in their alpha channel. Intrinsics
  ``K`` and ``dist`` are OpenCV's (a chessboard calibration's camera matrix and distortion
  coefficients; the centre of the upper-left pixel at 0, 0); extrinsics map the dynamic frame to
  the camera, OpenCV axes: ``rvec``/``tvec`` (Rodrigues, as cv2.calibrateCamera returns them) or
  ``world_to_camera`` (3x4 or 4x4). ``offset``: frames of that view's video before frame 0 of the
  synchronised sequence. ``frames``: frames used (default: every frame all views share; views of
  unequal length after their offsets need it). ``ground`` may be ``"board"``: the calibration
  board's plane z = 0, its normal towards the cameras, gravity 9.81 m/s^2 against it (the default
  when neither ground nor gravity is given); or ``"rest"`` when the board was not on the floor:
  the fit estimates the plane the object comes to rest on (normal against ``gravity``, or the
  board's normal when gravity is not given; the height from the static Gaussians registered onto
  the last frame's masks). Static images are masked by ``masks/<stem>.png``
  (white = object), or a mask file of the image's own name.

The Spring-Gaus authors' real-capture layout (a directory with ``static/colmap/<obj>/cameras.bin,
images.bin``, ``static/images/<obj>/``, ``static/masks/<obj>/`` and ``dynamic/cameras_calib.json``,
``dynamic/sync.json``, ``dynamic/sequences/<obj>/<seq>.json`` with ``hit_frame`` and a list of
frame files per camera, ``dynamic/videos_images/<cam>/``, ``dynamic/videos_masks/<cam>/``):
cameras_calib.json holds ``rvecs``/``tvecs`` per camera (board to camera); a camera without
``K``/``mtx`` and ``dist`` gets the authors' intrinsics (the static focal length scaled by the
image sizes, the principal point at the centre, no distortion); 120 fps unless the sequence file
says ``fps``; the ground is the board (their board lies on the floor).

:func:`prepare_capture` writes the undistorted, resized static views as a one-frame dataset and
the synchronised dynamic views as a video dataset with masks and scene.json (gravity, ground,
frame time, split, contact frame), both in sgaus' transforms.json layout, so every stage reads
them like any dataset. Everything is checked (:func:`check_capture`) before anything is written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.colmap import opencv_matrix, read_model
from pipeline.data.files import atomic_dir, write_json
from pipeline.data.schema import integer, matrix, number, read_json, vector3
from taichi_sim.errors import SgausError

CAPTURE_FORMAT = "sgaus-capture/1"
PREPARED_FORMAT = "sgaus-capture-prepared/1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".exr")
AUTHORS_FPS = 120.0  # the authors' real captures (config/real_capture/*.yaml: FREQ 120)
AUTHORS_FIT_FRAMES = 50  # their FRAME_ALL
GRAVITY = 9.81
# ground_source of a capture whose ground is estimated by the fit (capture.json "ground": "rest"):
# the plane under the object where it comes to rest, normal against gravity
GROUND_AT_REST = "estimated: the plane the object comes to rest on"


@dataclass
class StaticView:
    name: str
    image: Path
    mask: Path
    K: np.ndarray  # [3,3] sgaus pixel convention
    dist: np.ndarray  # OpenCV coefficients
    viewmat: np.ndarray  # [4,4] world (static frame) to camera, OpenCV axes
    width: int
    height: int


@dataclass
class DynamicView:
    name: str
    K: np.ndarray  # [3,3] sgaus pixel convention
    dist: np.ndarray
    viewmat: np.ndarray  # [4,4] dynamic frame to camera
    width: int
    height: int
    frames: list | None = None  # image files, or None with ``video``
    video: Path | None = None
    masks: list | None = None  # mask files, or None: the frames' alpha channel
    offset: int = 0
    n_available: int = 0  # frames of the video or folder (before the offset)


@dataclass
class Capture:
    root: Path
    layout: str  # "capture.json" or "spring-gaus"
    static: list
    views: list
    fps: float
    n_frames: int
    fit_frames: int
    gravity: tuple
    ground_point: tuple
    ground_normal: tuple
    ground_source: str
    contact_frame: int | None = None
    ground_truth: Path | None = None
    skipped_static: list = field(default_factory=list)  # images in the folder the model does not hold
    static_model: Path | None = None  # the COLMAP model's directory

    def source_files(self) -> list[Path]:
        files = [self.root / "capture.json"] if self.layout == "capture.json" else []
        for v in self.static:
            files += [v.image, v.mask]
        for v in self.views:
            files += list(v.frames or []) + ([v.video] if v.video else []) + list(v.masks or [])
        return files


# ----------------------------------------------------------------------------- helpers
def is_capture(path) -> bool:
    """Whether ``path`` holds a capture in one of the layouts read here."""
    p = Path(path)
    return (p / "capture.json").is_file() or _authors_object(p, quiet=True) is not None


def _rel(root: Path, value, what: str, path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise SgausError(f"{path}: {what} must be a path (a string)")
    p = Path(value)
    return p if p.is_absolute() else root / p


def _image_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise SgausError(f"{folder}: {what} folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise SgausError(f"{folder}: no images in the {what} folder")
    return files


def _static_mask(masks: Path, name: str) -> Path | None:
    for cand in (masks / (Path(name).with_suffix(".png")), masks / name, masks / (name + ".png")):
        if cand.is_file():
            return cand
    return None


def _extrinsics(entry: dict, what: str, path: Path) -> np.ndarray:
    import cv2

    if "world_to_camera" in entry:
        m = matrix(entry["world_to_camera"], ((3, 4), (4, 4)), f"{what} 'world_to_camera'", path)
        M = np.eye(4)
        M[:3] = m[:3]
    else:
        for key in ("rvec", "tvec"):
            if key not in entry:
                raise SgausError(f"{path}: {what} needs 'rvec' and 'tvec' (or 'world_to_camera')")
        rvec = matrix(np.asarray(entry["rvec"], dtype=object).tolist(), ((3,), (3, 1), (1, 3)), f"{what} 'rvec'", path)
        tvec = matrix(np.asarray(entry["tvec"], dtype=object).tolist(), ((3,), (3, 1), (1, 3)), f"{what} 'tvec'", path)
        M = np.eye(4)
        M[:3, :3] = cv2.Rodrigues(rvec.reshape(3, 1))[0]
        M[:3, 3] = tvec.reshape(3)
    R = M[:3, :3]
    if abs(np.linalg.det(R) - 1) > 1e-3 or np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
        raise SgausError(f"{path}: {what} extrinsics are not a rotation and a translation")
    return M


def _intrinsics(entry: dict, what: str, path: Path):
    """(K in sgaus' convention, OpenCV distortion) from an OpenCV calibration entry, or None."""
    key = next((k for k in ("K", "mtx", "camera_matrix") if k in entry), None)
    if key is None:
        return None
    K = matrix(entry[key], ((3, 3),), f"{what} '{key}'", path).copy()
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise SgausError(f"{path}: {what} '{key}' must have positive focal lengths")
    K[0, 2] += 0.5  # OpenCV's pixel centres at integers -> sgaus' at half integers
    K[1, 2] += 0.5
    dkey = next((k for k in ("dist", "dist_coeffs", "distortion") if k in entry), None)
    dist = np.zeros(4) if dkey is None else np.asarray(
        matrix(entry[dkey], ((4,), (5,), (8,), (1, 4), (1, 5), (1, 8)), f"{what} '{dkey}'", path)).reshape(-1)
    return K, dist


def _count_video_frames(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video."""
    import imageio_ffmpeg

    if not path.is_file():
        raise SgausError(f"{path}: video not found")
    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
        n, _secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as err:  # ffmpeg reports many kinds of failure
        raise SgausError(f"{path}: cannot read the video ({err.__class__.__name__})") from None
    w, h = meta["size"]
    return int(n), int(w), int(h)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    if not path.is_file():
        raise SgausError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as err:
        raise SgausError(f"{path}: cannot read the image ({err.__class__.__name__})") from None


def _board_up(views: list, path: Path) -> tuple:
    """The board's normal (the z axis) on the cameras' side."""
    centres = np.stack([-v.viewmat[:3, :3].T @ v.viewmat[:3, 3] for v in views])
    side = float(np.median(centres[:, 2]))
    if abs(side) < 1e-9:
        raise SgausError(f"{path}: the cameras lie in the board's plane; give 'ground' and 'gravity'")
    return (0.0, 0.0, 1.0 if side > 0 else -1.0)


def _ground(doc: dict, views: list, path: Path) -> tuple[tuple, tuple, tuple, str]:
    """(gravity, ground point, unit ground normal pointing up, source). With ``"ground": "rest"``
    the normal is against gravity (given, or else the board's normal) and the point is a
    placeholder: the fit estimates the height (:data:`GROUND_AT_REST`)."""
    ground = doc.get("ground", "board" if doc.get("gravity") is None else None)
    if ground is None:
        raise SgausError(f"{path}: 'gravity' is given without 'ground' (a point and a normal, \"board\" or \"rest\")")
    if ground == "board":
        up = _board_up(views, path)
        point, source = (0.0, 0.0, 0.0), "the calibration board's plane z = 0"
    elif ground == "rest":
        if doc.get("gravity") is not None:
            g = np.asarray(vector3(doc["gravity"], "'gravity'", path, nonzero=True))
            up = tuple(-g / np.linalg.norm(g))
        else:
            up = _board_up(views, path)
        point, source = (0.0, 0.0, 0.0), GROUND_AT_REST
    elif isinstance(ground, dict):
        for key in ("point", "normal"):
            if key not in ground:
                raise SgausError(f"{path}: 'ground' has no '{key}'")
        point = vector3(ground["point"], "'ground.point'", path)
        n = np.asarray(vector3(ground["normal"], "'ground.normal'", path, nonzero=True))
        up, source = tuple(n / np.linalg.norm(n)), "capture.json"
    else:
        raise SgausError(f"{path}: 'ground' must be {{point, normal}}, \"board\" or \"rest\", got {ground!r}")
    if doc.get("gravity") is not None:
        gravity = vector3(doc["gravity"], "'gravity'", path)
    else:
        gravity = tuple(-GRAVITY * c for c in up)
    if np.dot(gravity, up) >= 0:
        raise SgausError(f"{path}: gravity {gravity} does not point into the ground (normal {tuple(up)})")
    return gravity, tuple(point), tuple(float(c) for c in up), source


# ----------------------------------------------------------------------------- static part
def _static_views(model_dir: Path, images: Path, masks: Path, log) -> tuple[list, list]:
    model = read_model(model_dir)
    if not images.is_dir():
        raise SgausError(f"{images}: static image folder not found")
    views = []
    for im in sorted(model.images.values(), key=lambda i: i.name):
        file = images / im.name
        if not file.is_file():
            raise SgausError(f"{model_dir}: the COLMAP model lists image {im.name!r}, which is not in {images}")
        mask = _static_mask(masks, im.name)
        if mask is None:
            raise SgausError(f"{masks}: no mask for the static image {im.name!r} (expected "
                             f"{Path(im.name).with_suffix('.png')})")
        cam = model.cameras[im.camera_id]
        views.append(StaticView(Path(im.name).stem, file, mask, cam.K(), cam.distortion(), im.viewmat(),
                                cam.width, cam.height))
    listed = {im.name for im in model.images.values()}
    skipped = sorted(p.name for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in listed)
    if skipped and log:
        log(f"{len(skipped)} static image(s) are not in the COLMAP model (not registered) and are left out: "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}")
    if len(views) < 3:
        raise SgausError(f"{model_dir}: the static capture needs at least 3 registered images, got {len(views)}")
    return views, skipped


# ----------------------------------------------------------------------------- capture.json
def _read_capture_json(root: Path, log) -> Capture:
    path = root / "capture.json"
    doc = read_json(path, dict)
    if doc.get("format") != CAPTURE_FORMAT:
        raise SgausError(f"{path}: 'format' must be {CAPTURE_FORMAT!r}, got {doc.get('format')!r}")
    st = doc.get("static")
    if not isinstance(st, dict) or not {"colmap", "images", "masks"} <= set(st):
        raise SgausError(f"{path}: 'static' must name 'colmap', 'images' and 'masks'")
    static, skipped = _static_views(_rel(root, st["colmap"], "'static.colmap'", path),
                                    _rel(root, st["images"], "'static.images'", path),
                                    _rel(root, st["masks"], "'static.masks'", path), log)
    fps = number(doc, "fps", path, "frames per second", positive=True)
    entries = doc.get("views")
    if not isinstance(entries, list) or not entries:
        raise SgausError(f"{path}: 'views' must be a non-empty list")
    views = []
    for i, e in enumerate(entries):
        what = f"views[{i}]"
        if not isinstance(e, dict) or "name" not in e:
            raise SgausError(f"{path}: {what} must be an object with a 'name'")
        what = f"view {e['name']!r}"
        intr = _intrinsics(e, what, path)
        if intr is None:
            raise SgausError(f"{path}: {what} needs 'K' (3x3, OpenCV convention)")
        v = DynamicView(str(e["name"]), intr[0], intr[1], _extrinsics(e, what, path), 0, 0,
                        offset=integer(e.get("offset", 0), f"{what} 'offset'", path, low=0))
        if "video" in e:
            v.video = _rel(root, e["video"], f"{what} 'video'", path)
        elif "frames" in e:
            fr = e["frames"]
            v.frames = ([_rel(root, f, f"{what} 'frames'", path) for f in fr] if isinstance(fr, list)
                        else _image_files(_rel(root, fr, f"{what} 'frames'", path), f"{what} frames"))
        else:
            raise SgausError(f"{path}: {what} needs 'video' or 'frames'")
        if "masks" in e:
            m = e["masks"]
            v.masks = ([_rel(root, f, f"{what} 'masks'", path) for f in m] if isinstance(m, list)
                       else _image_files(_rel(root, m, f"{what} 'masks'", path), f"{what} masks"))
        elif v.video is not None:
            raise SgausError(f"{path}: {what} is a video and needs 'masks' (a folder with one mask per frame)")
        views.append(v)
    if len({v.name for v in views}) != len(views):
        raise SgausError(f"{path}: two views share a name")
    gravity, point, normal, source = _ground(doc, views, path)
    gt = _rel(root, doc["ground_truth"], "'ground_truth'", path) if doc.get("ground_truth") else None
    n_frames = integer(doc["frames"], "'frames'", path, low=2) if doc.get("frames") is not None else None
    fit = integer(doc["fit_frames"], "'fit_frames'", path, low=2) if doc.get("fit_frames") is not None else None
    contact = integer(doc["contact_frame"], "'contact_frame'", path, low=0) if doc.get("contact_frame") is not None else None
    cap = Capture(root, "capture.json", static, views, fps, n_frames or 0, fit or 0, gravity, point, normal, source,
                  contact, gt, skipped, _rel(root, st["colmap"], "'static.colmap'", path))
    return _finish(cap, path, n_frames, fit)


# ----------------------------------------------------------------------------- authors' layout
def _authors_object(root: Path, quiet: bool = False) -> str | None:
    colmap = root / "static" / "colmap"
    if not (colmap.is_dir() and (root / "dynamic" / "cameras_calib.json").is_file()):
        return None
    objects = sorted(p.name for p in colmap.iterdir() if p.is_dir())
    if len(objects) != 1:
        if quiet:
            return objects[0] if objects else None
        raise SgausError(f"{colmap}: expected the COLMAP model of one object, found {len(objects)} "
                         f"({', '.join(objects) or 'none'})")
    return objects[0]


def _read_authors(root: Path, log, sequence: str | None = None) -> Capture:
    obj = _authors_object(root)
    static, skipped = _static_views(root / "static" / "colmap" / obj, root / "static" / "images" / obj,
                                    root / "static" / "masks" / obj, log)
    dyn = root / "dynamic"
    calib_path = dyn / "cameras_calib.json"
    calib = read_json(calib_path, dict)
    seq_dir = dyn / "sequences" / obj
    seqs = sorted(seq_dir.glob("*.json")) if seq_dir.is_dir() else []
    if sequence is not None:
        seqs = [s for s in seqs if s.stem == str(sequence)]
    if not seqs:
        raise SgausError(f"{seq_dir}: no sequence file{'' if sequence is None else f' {sequence}.json'}")
    seq_path = seqs[0]
    if len(seqs) > 1 and log:
        log(f"{seq_dir} holds {len(seqs)} sequences; using {seq_path.name}")
    seq = read_json(seq_path, dict)
    if (dyn / "sync.json").is_file():
        read_json(dyn / "sync.json")  # checked; its offsets are already in the sequence's frame lists
    names = [k for k in seq if isinstance(seq[k], list)]
    missing = [n for n in names if n not in calib]
    if missing:
        raise SgausError(f"{calib_path}: no calibration for camera {missing[0]!r} of {seq_path.name}")
    if not names:
        raise SgausError(f"{seq_path}: no camera lists frames")
    cam0 = next(iter(read_model(root / "static" / "colmap" / obj).cameras.values()))
    views = []
    for name in names:
        entry = calib[name]
        if not isinstance(entry, dict):
            raise SgausError(f"{calib_path}: camera {name!r} must be an object with 'rvecs' and 'tvecs'")
        e = {"rvec": entry.get("rvecs", entry.get("rvec")), "tvec": entry.get("tvecs", entry.get("tvec"))}
        if e["rvec"] is None or e["tvec"] is None:
            raise SgausError(f"{calib_path}: camera {name!r} needs 'rvecs' and 'tvecs'")
        frames = [dyn / "videos_images" / name / str(f) for f in seq[name]]
        masks = [dyn / "videos_masks" / name / Path(str(f)).with_suffix(".png") for f in seq[name]]
        viewmat = _extrinsics(e, f"camera {name!r}", calib_path)
        intr = _intrinsics(entry, f"camera {name!r}", calib_path)
        if not frames:
            raise SgausError(f"{seq_path}: camera {name!r} lists no frames")
        w, h = _image_size(frames[0])
        if intr is None:  # the authors' rule: static focal scaled to the video, centred principal point
            K0 = cam0.K()
            intr = (np.array([[K0[0, 0] * w / cam0.width, 0, w / 2], [0, K0[1, 1] * h / cam0.height, h / 2],
                              [0, 0, 1.0]]), np.zeros(4))
        views.append(DynamicView(name, intr[0], intr[1], viewmat, w, h, frames=frames, masks=masks))
    fps = number(seq, "fps", seq_path, "frames per second", positive=True) if "fps" in seq else AUTHORS_FPS
    contact = integer(seq["hit_frame"], "'hit_frame'", seq_path, low=0) if seq.get("hit_frame") is not None else None
    gravity, point, normal, source = _ground({}, views, calib_path)
    gt = root / "ground_truth" if (root / "ground_truth" / "particles").is_dir() else None
    cap = Capture(root, "spring-gaus", static, views, fps, 0, 0, gravity, point, normal, source, contact, gt, skipped,
                  root / "static" / "colmap" / obj)
    n = len(frames)
    return _finish(cap, seq_path, None, min(AUTHORS_FIT_FRAMES, n - 1) if n > 2 else None)


# ----------------------------------------------------------------------------- checks
def _finish(cap: Capture, path: Path, n_frames: int | None, fit: int | None) -> Capture:
    """Check every dynamic view (files, sizes, frame counts) and settle the frames used."""
    sizes = set()
    for v in cap.views:
        if v.video is not None:
            v.n_available, v.width, v.height = _count_video_frames(v.video)
        else:
            missing = [f for f in v.frames if not f.is_file()]
            if missing:
                raise SgausError(f"view {v.name!r}: frame file not found: {missing[0]}")
            v.n_available = len(v.frames)
            v.width, v.height = _image_size(v.frames[0])
        if v.masks is not None:
            gone = [m for m in v.masks if not m.is_file()]
            if gone:
                raise SgausError(f"view {v.name!r}: mask file not found: {gone[0]}")
            if len(v.masks) < v.n_available:
                raise SgausError(f"view {v.name!r}: {v.n_available} frames but only {len(v.masks)} masks")
            mw, mh = _image_size(v.masks[0])
            if (mw, mh) != (v.width, v.height):
                raise SgausError(f"view {v.name!r}: masks are {mw}x{mh}, its frames {v.width}x{v.height}")
        elif v.frames is not None and v.frames[0].suffix.lower() != ".png":
            raise SgausError(f"view {v.name!r}: no 'masks' and its frames are not RGBA PNGs (the mask is their alpha)")
        sizes.add((v.width, v.height))
    if len(sizes) > 1:
        raise SgausError(f"{path}: the dynamic views differ in size ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                         "resize them to one size")
    lengths = {v.name: v.n_available - v.offset for v in cap.views}
    if n_frames is None:
        if len(set(lengths.values())) > 1:
            raise SgausError(f"{path}: the views have unequal lengths after their offsets "
                             f"({', '.join(f'{k}: {n}' for k, n in lengths.items())} frames); give 'frames' "
                             "(the frames to use) to take the first of each")
        n_frames = next(iter(lengths.values()))
    short = {k: n for k, n in lengths.items() if n < n_frames}
    if short:
        k, n = next(iter(short.items()))
        raise SgausError(f"view {k!r} has {n} frames after its offset, fewer than the {n_frames} frames asked for")
    if n_frames < 2:
        raise SgausError(f"{path}: the dynamic views need at least 2 frames, got {n_frames}")
    cap.n_frames = int(n_frames)
    cap.fit_frames = int(fit) if fit else min(20, cap.n_frames)
    if not 2 <= cap.fit_frames <= cap.n_frames:
        raise SgausError(f"{path}: fit_frames must lie in [2, {cap.n_frames}], got {cap.fit_frames}")
    if cap.contact_frame is not None and cap.contact_frame >= cap.n_frames:
        cap.contact_frame = None
    static_sizes = {(v.width, v.height) for v in cap.static}
    if len(static_sizes) > 1:
        raise SgausError(f"{path}: the static images differ in size ({len(static_sizes)} sizes); sgaus needs one")
    for v in cap.static:
        if _image_size(v.image) != (v.width, v.height):
            raise SgausError(f"{v.image}: image is {_image_size(v.image)}, its COLMAP camera {v.width}x{v.height}")
    return cap


def read_capture(path, log=None, sequence: str | None = None, layout: str | None = None) -> Capture:
    """The capture in the directory ``path`` (capture.json, else the authors' layout; ``layout``
    "capture.json" or "spring-gaus" chooses), every file checked; one SgausError line naming the
    file and what is wrong otherwise."""
    root = Path(path)
    if not root.is_dir():
        raise SgausError(f"{root}: capture directory not found")
    if layout == "spring-gaus":
        if _authors_object(root, quiet=True) is None:
            raise SgausError(f"{root}: not in the Spring-Gaus layout (static/colmap/<obj>/ and dynamic/cameras_calib.json)")
        return _read_authors(root, log, sequence)
    if (root / "capture.json").is_file():
        return _read_capture_json(root, log)
    if _authors_object(root, quiet=True) is not None:
        return _read_authors(root, log, sequence)
    raise SgausError(f"{root}: not a capture (no capture.json, nor the Spring-Gaus layout static/colmap/<obj>/ "
                     "with dynamic/cameras_calib.json)")


# ----------------------------------------------------------------------------- images
def undistort(img: np.ndarray, K: np.ndarray, dist: np.ndarray, interpolation=None) -> np.ndarray:
    """``img`` [H,W,C] seen through the pinhole camera K (sgaus convention) without distortion."""
    import cv2

    if not np.any(dist):
        return img
    Kcv = opencv_matrix(K)
    h, w = img.shape[:2]
    mx, my = cv2.initUndistortRectifyMap(Kcv, np.asarray(dist, np.float64), None, Kcv, (w, h), cv2.CV_32FC1)
    out = cv2.remap(img, mx, my, interpolation if interpolation is not None else cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(img.shape)


def undistort_points(uv: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Pixels [N,2] of a distorted camera -> where the undistorted pinhole K sees them (sgaus convention)."""
    import cv2

    Kcv = opencv_matrix(K)
    pts = (np.asarray(uv, np.float64) - 0.5).reshape(-1, 1, 2)
    out = cv2.undistortPoints(pts, Kcv, np.asarray(dist, np.float64), P=Kcv).reshape(-1, 2)
    return out + 0.5


def _read(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        raw = iio.imread(path)
    except Exception as err:
        raise SgausError(f"{path}: cannot read the image ({err.__class__.__name__})") from None
    img = raw.astype(np.float32) / (65535.0 if raw.dtype == np.uint16 else 255.0)
    return img[..., None] if img.ndim == 2 else img


def _mask_of(img: np.ndarray) -> np.ndarray:
    """[H,W] in [0,1] from a mask image (grey, RGB or with alpha: white = object)."""
    if img.shape[2] in (2, 4):
        return img[..., -1]
    return img[..., :3].mean(-1) if img.shape[2] >= 3 else img[..., 0]


def _video_frames(path: Path, first: int, count: int):
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    try:
        for i, buf in enumerate(gen):
            if i >= first + count:
                break
            if i >= first:
                yield np.frombuffer(buf, np.uint8).reshape(h, w, 3).astype(np.float32) / 255.0
    finally:
        gen.close()


def working_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    s = 1.0 if not max_side or max(width, height) <= max_side else max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s)), s


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    if img.shape[1] == w and img.shape[0] == h:
        return img
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return out.reshape(h, w, *img.shape[2:])


def _rgba_u8(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (np.clip(np.concatenate([rgb[..., :3], mask[..., None]], -1), 0, 1) * 255 + 0.5).astype(np.uint8)


def _scaled_K(K: np.ndarray, w0: int, h0: int, w: int, h: int) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    K[0] *= w / w0
    K[1] *= h / h0
    K[2] = [0, 0, 1]
    return K


# ----------------------------------------------------------------------------- prepare
def prepare_capture(cap: Capture, out, max_side: int = 0, progress: bool = False,
                    info: dict | None = None) -> tuple[Path, Path]:
    """Write ``out/static`` (one frame, every registered static image, undistorted and masked: RGB
    with the mask as alpha) and ``out/dynamic`` (the synchronised views, undistorted, with masks and
    scene.json: gravity, ground, frame time, split, contact frame; ground-truth particles when the
    capture has them), each image resized to ``max_side`` (0: as they are), and ``out/prepared.json``
    (``info``). Atomic: ``out`` appears whole or not at all. Returns (static dataset, dynamic dataset)."""
    import imageio.v3 as iio
    import torch
    from tqdm.auto import tqdm

    from pipeline.data.cameras import Cameras
    from pipeline.data.datasets import write_transforms

    out = Path(out)
    with atomic_dir(out) as tmp:
        # static: one frame seen by every registered image
        v0 = cap.static[0]
        w, h, _s = working_size(v0.width, v0.height, max_side)
        names = [v.name for v in cap.static]
        if len(set(names)) != len(names):
            names = [f"{i:04d}_{v.name}" for i, v in enumerate(cap.static)]
        Ks = np.stack([_scaled_K(v.K, v.width, v.height, w, h) for v in cap.static])
        cams = Cameras(torch.tensor(np.stack([v.viewmat for v in cap.static]), dtype=torch.float32),
                       torch.tensor(Ks, dtype=torch.float32), w, h, names)
        (tmp / "static" / "images").mkdir(parents=True)
        for name, v in tqdm(list(zip(names, cap.static)), desc="static images", disable=not progress, leave=False):
            rgb = _read(v.image)[..., :3]
            mask = _mask_of(_read(v.mask))
            if mask.shape != rgb.shape[:2]:
                raise SgausError(f"{v.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                                 f"{rgb.shape[1]}x{rgb.shape[0]}")
            rgb, mask = undistort(rgb, v.K, v.dist), undistort(mask, v.K, v.dist)
            iio.imwrite(tmp / "static" / "images" / f"{name}.png", _rgba_u8(_resize(rgb, w, h), _resize(mask, w, h)))
        write_transforms(tmp / "static", cams, 1, 1.0, image_pattern="images/{camera}.png", mask_pattern=None)
        # dynamic: the synchronised sequence
        d0 = cap.views[0]
        w, h, _s = working_size(d0.width, d0.height, max_side)
        dcams = Cameras(torch.tensor(np.stack([v.viewmat for v in cap.views]), dtype=torch.float32),
                        torch.tensor(np.stack([_scaled_K(v.K, v.width, v.height, w, h) for v in cap.views]),
                                     dtype=torch.float32), w, h, [v.name for v in cap.views])
        dyn = tmp / "dynamic"
        for v in tqdm(cap.views, desc="dynamic views", disable=not progress, leave=False):
            (dyn / "images" / v.name).mkdir(parents=True)
            (dyn / "masks" / v.name).mkdir(parents=True)
            if v.video is not None:
                frames = _video_frames(v.video, v.offset, cap.n_frames)
            else:
                frames = (_read(p) for p in v.frames[v.offset:v.offset + cap.n_frames])
            count = 0
            for f, img in enumerate(frames):
                if v.masks is not None:
                    mask = _mask_of(_read(v.masks[v.offset + f]))
                elif img.shape[2] == 4:
                    mask = img[..., 3]
                else:
                    raise SgausError(f"view {v.name!r}: frame {f} has no alpha channel and the view no masks")
                if mask.shape != img.shape[:2]:
                    raise SgausError(f"view {v.name!r}: the mask of frame {f} is {mask.shape[1]}x{mask.shape[0]}, "
                                     f"the frame {img.shape[1]}x{img.shape[0]}")
                rgb, mask = undistort(img[..., :3], v.K, v.dist), undistort(mask, v.K, v.dist)
                rgb, mask = _resize(rgb, w, h), _resize(mask, w, h)
                iio.imwrite(dyn / "images" / v.name / f"{f:03d}.png", _rgba_u8(rgb, mask))
                iio.imwrite(dyn / "masks" / v.name / f"{f:03d}.png", (np.clip(mask, 0, 1) * 255 + 0.5).astype(np.uint8))
                count += 1
            if count < cap.n_frames:
                raise SgausError(f"view {v.name!r}: its video gave {count} frames after offset {v.offset}, "
                                 f"{cap.n_frames} are needed")
        write_transforms(dyn, dcams, cap.n_frames, 1.0 / cap.fps)
        scene = {"format": PREPARED_FORMAT, "capture": str(cap.root.resolve()), "layout": cap.layout,
                 "gravity": list(cap.gravity), "ground": {"point": list(cap.ground_point),
                                                          "normal": list(cap.ground_normal)},
                 "ground_source": cap.ground_source, "frame_dt": 1.0 / cap.fps, "n_frames": cap.n_frames,
                 "contact_frame": cap.contact_frame, "split": {"fit": [0, cap.fit_frames],
                                                               "future": [cap.fit_frames, cap.n_frames]}}
        if cap.ground_truth is not None and (cap.ground_truth / "particles").is_dir():
            import shutil

            (dyn / "particles").mkdir()
            for f in range(cap.n_frames):
                src = cap.ground_truth / "particles" / f"{f:03d}.npz"
                if not src.is_file():
                    raise SgausError(f"{src}: ground-truth particles missing for frame {f}")
                shutil.copyfile(src, dyn / "particles" / src.name)
        write_json(dyn / "scene.json", scene)
        write_json(tmp / "prepared.json", {"format": PREPARED_FORMAT, **(info or {})})
    return out / "static", out / "dynamic"


# ----------------------------------------------------------------------------- converter
def write_capture_json(cap: Capture, out) -> Path:
    """Write ``out/capture.json`` describing ``cap`` (paths relative to ``out`` where they can be),
    so a capture in the authors' layout reads as sgaus' own; the image files are not copied."""
    import cv2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        try:
            return os.path.relpath(Path(p).resolve(), out.resolve())
        except ValueError:  # another drive
            return str(Path(p).resolve())

    s0 = cap.static[0]
    views = []
    for v in cap.views:
        Kcv = opencv_matrix(v.K)
        source = {"video": rel(v.video)} if v.video is not None else {"frames": [rel(f) for f in v.frames]}
        entry = {"name": v.name, **source, **({"masks": [rel(m) for m in v.masks]} if v.masks is not None else {}),
                 "K": Kcv.tolist(), "dist": [float(c) for c in v.dist],
                 "rvec": cv2.Rodrigues(v.viewmat[:3, :3])[0].reshape(3).tolist(), "tvec": v.viewmat[:3, 3].tolist(),
                 "offset": v.offset}
        views.append(entry)
    doc = {"format": CAPTURE_FORMAT,
           "static": {"colmap": rel(cap.static_model), "images": rel(s0.image.parent), "masks": rel(s0.mask.parent)},
           "fps": cap.fps, "frames": cap.n_frames, "fit_frames": cap.fit_frames, "contact_frame": cap.contact_frame,
           "views": views, "gravity": list(cap.gravity),
           "ground": "rest" if cap.ground_source == GROUND_AT_REST else
           {"point": list(cap.ground_point), "normal": list(cap.ground_normal)}}
    if doc["contact_frame"] is None:
        del doc["contact_frame"]
    if cap.ground_truth is not None:
        doc["ground_truth"] = rel(cap.ground_truth)
    return write_json(out / "capture.json", doc)


def capture_summary(cap: Capture) -> str:
    v = cap.views[0]
    return (f"static: {len(cap.static)} images {cap.static[0].width}x{cap.static[0].height}; dynamic: "
            f"{len(cap.views)} views {v.width}x{v.height}, {cap.n_frames} frames at {cap.fps:g} fps "
            f"({cap.fit_frames} fitted); ground: {cap.ground_source}, gravity "
            f"({', '.join(f'{g:.2f}' for g in cap.gravity)})")
