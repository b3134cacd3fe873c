"""COLMAP sparse models (cameras, images, points3D), binary ``.bin`` or text ``.txt``, read by a
small reader of our own (tested against files written by pycolmap).

COLMAP's conventions: an image's pose is ``cam_from_world`` (quaternion qw qx qy qz, translation
t), the OpenCV camera frame (+x right, +y down, +z forward), so it is sgaus' world-to-camera
matrix as it is. Pixel coordinates put the centre of the upper-left pixel at (0.5, 0.5), as sgaus
does (pipeline.data.cameras), so cx, cy carry over unchanged; OpenCV puts it at (0, 0), so the
principal point is shifted by 0.5 px on the way to and from OpenCV (:func:`opencv_matrix`).

Camera models read: SIMPLE_PINHOLE (f cx cy), PINHOLE (fx fy cx cy), SIMPLE_RADIAL (f cx cy k),
RADIAL (f cx cy k1 k2), OPENCV (fx fy cx cy k1 k2 p1 p2) and FULL_OPENCV (fx fy cx cy k1 k2 p1 p2
k3 k4 k5 k6): their distortion is OpenCV's (``distortion`` below) and images are undistorted
with OpenCV. Fisheye and other models are refused with one line naming the model.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taichi_sim.errors import SgausError

# model id -> (name, number of parameters); the ids COLMAP writes in cameras.bin
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
          4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
          8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
          11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
_N_PARAMS = {name: n for name, n in MODELS.values()}


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, as COLMAP stores them

    def K(self) -> np.ndarray:
        """Intrinsics [3,3] in sgaus' (and COLMAP's) pixel convention."""
        p = self.params
        if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        else:
            fx, fy, cx, cy = p[:4]
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    def distortion(self) -> np.ndarray:
        """OpenCV distortion coefficients (k1, k2, p1, p2[, k3, k4, k5, k6]); zeros for pinholes."""
        p = self.params
        if self.model in ("SIMPLE_PINHOLE", "PINHOLE"):
            return np.zeros(4)
        if self.model == "SIMPLE_RADIAL":
            return np.array([p[3], 0.0, 0.0, 0.0])
        if self.model == "RADIAL":
            return np.array([p[3], p[4], 0.0, 0.0])
        if self.model == "OPENCV":
            return np.array(p[4:8])
        return np.array(p[4:12])  # FULL_OPENCV: k1 k2 p1 p2 k3 k4 k5 k6, OpenCV's rational model


@dataclass
class ColmapImage:
    image_id: int
    name: str
    camera_id: int
    qvec: np.ndarray  # qw qx qy qz of cam_from_world
    tvec: np.ndarray  # translation of cam_from_world

    def viewmat(self) -> np.ndarray:
        """World-to-camera matrix [4,4] (OpenCV camera axes)."""
        M = np.eye(4)
        M[:3, :3] = quat_to_rotmat(self.qvec)
        M[:3, 3] = self.tvec
        return M


@dataclass
class ColmapModel:
    root: Path
    cameras: dict  # camera_id -> ColmapCamera
    images: dict  # image_id -> ColmapImage
    points: np.ndarray  # [P,3] float64 (may be empty)
    colors: np.ndarray  # [P,3] uint8


def quat_to_rotmat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def opencv_matrix(K: np.ndarray) -> np.ndarray:
    """K in OpenCV's pixel convention (centre of the upper-left pixel at 0, 0) from sgaus'."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


# ----------------------------------------------------------------------------- binary
class _Reader:
    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise SgausError(f"{self.path}: truncated COLMAP binary file")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise SgausError(f"{self.path}: truncated COLMAP binary file (unterminated image name)")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s


def _check_model(path: Path, model: str, n_params: int | None = None) -> None:
    if model not in SUPPORTED:
        raise SgausError(f"{path}: COLMAP camera model {model} is not supported (sgaus reads "
                         f"{', '.join(SUPPORTED)}; undistort the images with `colmap image_undistorter` first)")
    if n_params is not None and n_params != _N_PARAMS[model]:
        raise SgausError(f"{path}: camera model {model} needs {_N_PARAMS[model]} parameters, got {n_params}")


def _cameras_bin(path: Path) -> dict:
    r = _Reader(path)
    out = {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, w, h = r.read("iiQQ")
        if model_id not in MODELS:
            raise SgausError(f"{path}: unknown COLMAP camera model id {model_id}")
        name, n = MODELS[model_id]
        params = np.array(r.read("d" * n))
        _check_model(path, name)
        out[cam_id] = ColmapCamera(cam_id, name, int(w), int(h), params)
    return out


def _images_bin(path: Path) -> dict:
    r = _Reader(path)
    out = {}
    for _ in range(r.read("Q")[0]):
        image_id = r.read("I")[0]
        q = np.array(r.read("dddd"))
        t = np.array(r.read("ddd"))
        cam_id = r.read("I")[0]
        name = r.string()
        n2d = r.read("Q")[0]
        r.pos += n2d * 24  # x, y (double), point3D_id (int64)
        if r.pos > len(r.data):
            raise SgausError(f"{path}: truncated COLMAP binary file")
        out[image_id] = ColmapImage(image_id, name, cam_id, q, t)
    return out


def _points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(path)
    pts, cols = [], []
    for _ in range(r.read("Q")[0]):
        vals = r.read("QdddBBBd")
        pts.append(vals[1:4])
        cols.append(vals[4:7])
        track = r.read("Q")[0]
        r.pos += track * 8
    return np.array(pts, dtype=np.float64).reshape(-1, 3), np.array(cols, dtype=np.uint8).reshape(-1, 3)


# ----------------------------------------------------------------------------- text
def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("#")]


def _cameras_txt(path: Path) -> dict:
    out = {}
    for i, ln in enumerate(_lines(path)):
        w = ln.split()
        try:
            cam_id, model, width, height = int(w[0]), w[1], int(w[2]), int(w[3])
            params = np.array([float(v) for v in w[4:]])
        except (IndexError, ValueError):
            raise SgausError(f"{path}: malformed camera line {i + 1}: {ln[:60]!r}") from None
        if model not in _N_PARAMS:
            raise SgausError(f"{path}: unknown COLMAP camera model {model!r}")
        _check_model(path, model, len(params))
        out[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return out


def _images_txt(path: Path) -> dict:
    out = {}
    # two lines per image; the second (points2D) may be empty, so the text is split by line, not filtered
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if not ln.startswith("#")]
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        w = lines[i].split()
        try:
            image_id = int(w[0])
            q = np.array([float(v) for v in w[1:5]])
            t = np.array([float(v) for v in w[5:8]])
            cam_id = int(w[8])
            name = " ".join(w[9:])
        except (IndexError, ValueError):
            raise SgausError(f"{path}: malformed image line {lines[i][:60]!r}") from None
        if not name:
            raise SgausError(f"{path}: image {image_id} has no name")
        out[image_id] = ColmapImage(image_id, name, cam_id, q, t)
        i += 2
    return out


def _points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pts, cols = [], []
    for ln in _lines(path):
        w = ln.split()
        try:
            pts.append([float(v) for v in w[1:4]])
            cols.append([int(v) for v in w[4:7]])
        except (IndexError, ValueError):
            raise SgausError(f"{path}: malformed point line {ln[:60]!r}") from None
    return np.array(pts, dtype=np.float64).reshape(-1, 3), np.array(cols, dtype=np.uint8).reshape(-1, 3)


def read_model(root) -> ColmapModel:
    """The COLMAP model in the directory ``root`` (cameras, images, points3D; .bin preferred when
    both are there). Every image's camera must be in the model and every quaternion non-zero."""
    root = Path(root)
    if not root.is_dir():
        raise SgausError(f"{root}: COLMAP model directory not found")
    if (root / "cameras.bin").is_file() and (root / "images.bin").is_file():
        cams, images = _cameras_bin(root / "cameras.bin"), _images_bin(root / "images.bin")
        pts = _points_bin(root / "points3D.bin") if (root / "points3D.bin").is_file() else None
    elif (root / "cameras.txt").is_file() and (root / "images.txt").is_file():
        cams, images = _cameras_txt(root / "cameras.txt"), _images_txt(root / "images.txt")
        pts = _points_txt(root / "points3D.txt") if (root / "points3D.txt").is_file() else None
    else:
        raise SgausError(f"{root}: no COLMAP model (cameras.bin and images.bin, or cameras.txt and images.txt)")
    if not images:
        raise SgausError(f"{root}: the COLMAP model has no images")
    for im in images.values():
        if im.camera_id not in cams:
            raise SgausError(f"{root}: image {im.name!r} uses camera {im.camera_id}, which the model does not hold")
        if not (np.all(np.isfinite(im.qvec)) and np.linalg.norm(im.qvec) > 0 and np.all(np.isfinite(im.tvec))):
            raise SgausError(f"{root}: image {im.name!r} has an invalid pose")
    points, colors = pts if pts is not None else (np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    return ColmapModel(root, cams, images, points, colors)
