"""Pinhole cameras, OpenCV convention internally.

World-to-camera matrices (``viewmats``) map world points into a camera frame with +x right,
+y down and +z forward (OpenCV). Pixel (u, v) of an image covers [u, u+1) x [v, v+1) and its
centre is at (u + 0.5, v + 0.5); a point at camera coordinates (x, y, z) lands at
``(fx * x / z + cx, fy * y / z + cy)``. Datasets written in the OpenGL camera-to-world
convention (+x right, +y up, looking down -z: nerfstudio, Blender, PAC-NeRF) are converted
with :meth:`Cameras.from_opengl_c2w` and back with :meth:`Cameras.opengl_c2w`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from taichi_sim.errors import SgausError

# OpenGL camera axes -> OpenCV camera axes (flip y and z).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass
class Cameras:
    """A batch of C cameras sharing one image size."""

    viewmats: torch.Tensor  # [C, 4, 4] world-to-camera, OpenCV
    Ks: torch.Tensor  # [C, 3, 3] intrinsics in pixels
    width: int
    height: int
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.viewmats = torch.as_tensor(self.viewmats, dtype=torch.float32)
        self.Ks = torch.as_tensor(self.Ks, dtype=torch.float32)
        if self.viewmats.ndim == 2:
            self.viewmats = self.viewmats[None]
        if self.Ks.ndim == 2:
            self.Ks = self.Ks[None].expand(len(self.viewmats), 3, 3).clone()
        if self.viewmats.shape[1:] != (4, 4) or self.Ks.shape[1:] != (3, 3):
            raise SgausError("cameras need viewmats [C,4,4] and Ks [C,3,3]")
        if len(self.viewmats) != len(self.Ks):
            raise SgausError(f"{len(self.viewmats)} camera poses but {len(self.Ks)} intrinsics")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise SgausError(f"image size must be positive, got {self.width} x {self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if not self.names:
            self.names = [f"cam_{i:02d}" for i in range(len(self.viewmats))]
        if len(self.names) != len(self.viewmats):
            raise SgausError("one name per camera is needed")

    def __len__(self) -> int:
        return len(self.viewmats)

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, slice):
            idx = list(range(len(self)))[idx]
        idx = list(idx)
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height, [self.names[i] for i in idx])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SgausError(f"no camera named {name!r} (cameras: {', '.join(self.names)})") from None

    def to(self, device) -> "Cameras":
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height, list(self.names))

    @classmethod
    def from_opengl_c2w(cls, c2w, Ks, width: int, height: int, names=None) -> "Cameras":
        """Build from OpenGL camera-to-world matrices [C,4,4] (or [C,3,4])."""
        c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
        if c2w.ndim == 2:
            c2w = c2w[None]
        if c2w.shape[1:] == (3, 4):
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(len(c2w), 1, 4)
            c2w = torch.cat([c2w, bottom], dim=1)
        if c2w.shape[1:] != (4, 4):
            raise SgausError(f"camera-to-world matrices must be 4x4 or 3x4, got {tuple(c2w.shape[1:])}")
        viewmats = torch.linalg.inv(c2w @ _GL_TO_CV)
        return cls(viewmats.float(), torch.as_tensor(np.asarray(Ks), dtype=torch.float32), width, height, list(names or []))

    def opengl_c2w(self) -> torch.Tensor:
        """OpenGL camera-to-world matrices [C,4,4] (float64)."""
        return torch.linalg.inv(self.viewmats.double()) @ _GL_TO_CV

    def centers(self) -> torch.Tensor:
        """Camera centres in world coordinates [C,3]."""
        return torch.linalg.inv(self.viewmats.double())[:, :3, 3].float()

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (e.g. 0.5 halves width and height)."""
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        Ks = self.Ks.clone()
        Ks[:, 0] *= sx
        Ks[:, 1] *= sy
        return Cameras(self.viewmats.clone(), Ks, w, h, list(self.names))

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points [N,3] -> pixel coordinates [C,N,2] and depths [C,N]."""
        pts = torch.as_tensor(points, dtype=torch.float32)
        cam = torch.einsum("cij,nj->cni", self.viewmats[:, :3, :3], pts) + self.viewmats[:, None, :3, 3]
        z = cam[..., 2]
        uv = torch.einsum("cij,cnj->cni", self.Ks, cam)
        return uv[..., :2] / z[..., None], z


def intrinsics_from_fov(fov_x_deg: float, width: int, height: int) -> torch.Tensor:
    """Intrinsics [3,3] for a horizontal field of view, square pixels, centred principal point."""
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[fx, 0.0, width / 2], [0.0, fx, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-camera matrix [4,4] (OpenCV) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking along up: pick any perpendicular
        right = np.cross(forward, [1.0, 0.0, 0.0] if abs(forward[0]) < 0.9 else [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return torch.tensor(M, dtype=torch.float32)


def orbit_cameras(
    n: int,
    radius: float,
    target=(0.0, 0.0, 0.0),
    elevation_deg: float = 20.0,
    fov_deg: float = 40.0,
    width: int = 512,
    height: int = 512,
    up=(0.0, 1.0, 0.0),
    azimuth0_deg: float = 0.0,
    elevation_jitter_deg: float = 0.0,
    prefix: str = "cam_",
    digits: int = 2,
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth on a circle around ``target`` (y up by default),
    named ``prefix`` + index (``digits`` wide); as a video, one orbit over n frames.

    ``elevation_jitter_deg`` alternates the elevation up and down by that much, so that a ring
    of cameras also sees the object from different heights.
    """
    if n <= 0:
        raise SgausError(f"the number of views must be positive, got {n}")
    target = np.asarray(target, dtype=np.float64)
    up_v = np.asarray(up, dtype=np.float64)
    up_v /= np.linalg.norm(up_v)
    a = np.array([1.0, 0.0, 0.0]) if abs(up_v[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = a - up_v * (a @ up_v)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up_v, e1)
    views = []
    for i in range(n):
        az = math.radians(azimuth0_deg + 360.0 * i / n)
        el = math.radians(elevation_deg + (elevation_jitter_deg if i % 2 else -elevation_jitter_deg))
        d = math.cos(el) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(el) * up_v
        views.append(look_at(target + radius * d, target, up_v))
    K = intrinsics_from_fov(fov_deg, width, height)
    return Cameras(torch.stack(views), K, width, height, [f"{prefix}{i:0{digits}d}" for i in range(n)])


def check_elevation(elevation, name: str = "an elevation range") -> tuple[float, float]:
    """(low, high) elevations in degrees, checked: two finite numbers, low <= high, both strictly
    between -90 and 90 (a camera straight above or below has no azimuth to look along)."""
    try:
        lo, hi = (float(v) for v in elevation)
    except (TypeError, ValueError):
        raise SgausError(f"{name} must be two numbers LOW,HIGH in degrees, got {elevation!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and -90 < lo <= hi < 90):
        raise SgausError(f"{name} must satisfy -90 < LOW <= HIGH < 90 degrees, got {lo:g},{hi:g}")
    return lo, hi


def hemisphere_cameras(n: int, centre, radius: float, up, fov_x: float, width: int, height: int,
                       prefix: str = "IMG_", digits: int = 4, elevation=(10.0, 70.0)) -> Cameras:
    """``n`` cameras on a golden-angle spiral around ``centre`` at elevations spread evenly over
    ``elevation`` (degrees above the plane normal to ``up``; by default 10 to 70, the upper
    hemisphere: a person walking around an object on a table; a negative bound also looks from
    below), all looking at it from ``radius`` away, named ``prefix`` + index (``digits`` wide)."""
    if n <= 0:
        raise SgausError(f"the number of views must be positive, got {n}")
    lo_el, hi_el = check_elevation(elevation)
    centre = np.asarray(centre, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = a - up * (a @ up)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    mats = []
    golden = math.pi * (3 - math.sqrt(5))
    for i in range(n):
        el = math.radians(lo_el + (hi_el - lo_el) * (i + 0.5) / n)
        az = i * golden
        d = math.cos(el) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(el) * up
        mats.append(look_at(centre + radius * d, centre, up))
    K = intrinsics_from_fov(fov_x, width, height)
    return Cameras(torch.stack(mats), K, width, height, [f"{prefix}{i:0{digits}d}" for i in range(n)])
