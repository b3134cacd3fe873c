"""`sgaus simulate` and `sgaus export`: the fitted asset re-simulated under edited conditions.

Edits (each optional, combinable): gravity (a magnitude along the fitted gravity's direction, or a
vector), the ground's height or no ground, the ground friction (sticky, smooth or a value in
[0, 1]), the initial velocity, a global stiffness scale, the number of frames. Output: an mp4 and
PNG frames from a dataset camera or an orbiting camera, one 3DGS-layout PLY per frame, and the
anchor trajectories (npz), all written into a temporary directory renamed onto --out at the end.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.asset import Asset, load_asset, simulate_asset
from pipeline.atomic import atomic_dir, atomic_file, write_json
from pipeline.cameras import Cameras, intrinsics_from_fov, look_at
from pipeline.gaussians import Gaussians, save_ply
from taichi_sim.spring_mass import friction_logit


@dataclasses.dataclass
class Edits:
    """Changes to the fitted scene. None keeps the fitted value."""

    gravity: float | tuple | None = None  # magnitude along the fitted direction, or a vector x,y,z
    ground_height: float | None = None  # height of the ground plane along its normal
    no_ground: bool = False
    friction: str | float | None = None  # "sticky", "smooth" or a value in [0, 1]
    velocity: tuple | None = None  # initial velocity x,y,z
    stiffness_scale: float = 1.0  # multiplies every spring's stiffness

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_gravity(text: str) -> float | tuple:
    """'9.8' -> 9.8 (a magnitude), '0,-9.8,0' -> a vector; anything else is an error."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--gravity must be a number or three numbers x,y,z, got {text!r}") from None
    if len(vals) == 1:
        return vals[0]
    if len(vals) == 3:
        return tuple(vals)
    raise ValueError(f"--gravity must be a number or three numbers x,y,z, got {text!r}")


def parse_friction(text: str) -> str | float:
    t = str(text).strip().lower()
    if t in ("sticky", "smooth"):
        return t
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"--friction must be sticky, smooth or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"--friction must lie in [0, 1] (0 = sticky, 1 = smooth), got {v}")
    return v


def apply_edits(asset: Asset, edits: Edits) -> Asset:
    """A copy of the asset with the edits applied; raises ValueError for impossible edits."""
    cfg = asset.config
    changes: dict = {}
    if edits.gravity is not None:
        if isinstance(edits.gravity, (int, float)):
            if edits.gravity < 0:
                raise ValueError(f"a gravity magnitude must not be negative, got {edits.gravity}")
            g = np.asarray(cfg.gravity, dtype=np.float64)
            direction = g / np.linalg.norm(g) if np.linalg.norm(g) > 0 else -np.asarray(cfg.ground_normal, dtype=np.float64)
            changes["gravity"] = tuple(float(x) for x in direction * float(edits.gravity))
        else:
            changes["gravity"] = tuple(float(x) for x in edits.gravity)
        if not all(math.isfinite(x) for x in changes["gravity"]):
            raise ValueError("gravity must be finite")
    if edits.no_ground:
        changes["ground_point"] = None
    elif edits.ground_height is not None:
        normal = np.asarray(cfg.ground_normal, dtype=np.float64)
        lowest = float((asset.model.rest_positions.double().numpy() @ normal).min())
        if edits.ground_height >= lowest:
            raise ValueError(
                f"a ground at height {edits.ground_height:g} lies above the object's lowest point ({lowest:.4g}); "
                "choose a lower --ground-height"
            )
        changes["ground_point"] = tuple(float(x) for x in normal * float(edits.ground_height))
    out = asset.with_config(**changes) if changes else dataclasses.replace(asset)
    if edits.friction is not None:
        value = {"sticky": 0.0, "smooth": 1.0}.get(edits.friction, edits.friction)
        out = dataclasses.replace(out, friction_logit=torch.tensor(friction_logit(float(value)), dtype=torch.float32))
    if edits.velocity is not None:
        out = dataclasses.replace(out, v0=torch.tensor(edits.velocity, dtype=torch.float32))
    if edits.stiffness_scale != 1.0:
        if not edits.stiffness_scale > 0:
            raise ValueError(f"--stiffness-scale must be positive, got {edits.stiffness_scale}")
        out = dataclasses.replace(out, log_stiffness=out.log_stiffness + math.log10(edits.stiffness_scale))
    return out


def orbit_camera_path(centre: np.ndarray, radius: float, n: int, size: int, up=(0.0, 1.0, 0.0),
                      elevation_deg: float = 20.0, fov_deg: float = 40.0) -> Cameras:
    """One camera per frame, circling ``centre`` once over the video."""
    up = np.asarray(up, dtype=np.float64)
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = a - up * (a @ up)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    el = math.radians(elevation_deg)
    views = []
    for i in range(n):
        az = 2 * math.pi * i / max(n, 1)
        d = math.cos(el) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(el) * up
        views.append(look_at(centre + radius * d, centre, up))
    K = intrinsics_from_fov(fov_deg, size, size)
    return Cameras(torch.stack(views), K, size, size, [f"orbit_{i:03d}" for i in range(n)])


def _dataset_camera(asset: Asset, name: str | None, size: int) -> Cameras:
    from pipeline.datasets import load_dataset

    data = asset.info.get("data")
    if not data or not Path(data).exists():
        raise ValueError("the asset's dataset is not available for --camera; use --orbit instead")
    cams = load_dataset(data).cameras
    cam = cams[cams.index(name) if name else 0]
    return cam.scaled(min(1.0, size / max(cam.width, cam.height)))


def render_frames(asset: Asset, means: torch.Tensor, cams: Cameras, progress: bool, background: str = "black",
                  ground: bool = False) -> list[np.ndarray]:
    """Frames over ``background`` (black, white, checker); ``ground`` draws the ground plane as a
    checker with the Gaussians' contact shadow (render.backdrop)."""
    from render import rasterization
    from render.backdrop import composite_backdrop, nice_square

    g, cfg = asset.gaussians, asset.config
    if ground and cfg.ground_point is None:
        raise ValueError("--ground-grid needs a ground plane, and this simulation has none")
    rest = asset.model.rest_positions.detach().double()
    square = nice_square(float((rest.max(0).values - rest.min(0).values).norm()) or 1.0)
    imgs = []
    for f in tqdm(range(len(means)), desc="render", disable=not progress, leave=False):
        cam = cams[f % len(cams)]
        with torch.no_grad():
            rgb, a, d = rasterization(means[f], g.scales(), g.opacities(), g.rgb(), cam.viewmats, cam.Ks,
                                      cam.width, cam.height)
            rgb = composite_backdrop(rgb, a, d, cam.viewmats, cam.Ks, cfg.ground_point if ground else None,
                                     cfg.ground_normal, background, square, shadow_points=means[f] if ground else None)
        imgs.append((rgb[0].clamp(0, 1).numpy() * 255).astype(np.uint8))
    return imgs


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """An mp4 (imageio-ffmpeg) of uint8 frames, padded to a multiple of 16 pixels for the codec."""
    import imageio.v2 as imageio

    h, w = frames[0].shape[:2]
    pad = lambda a: np.pad(a, ((0, (-h) % 16), (0, (-w) % 16), (0, 0)))
    with atomic_file(path, suffix=".mp4") as tmp:
        imageio.mimwrite(tmp, [pad(f) for f in frames], fps=fps, macro_block_size=1)
    return path


def gaussians_at(g: Gaussians, means: torch.Tensor) -> Gaussians:
    out = g.detach_clone()
    out.means = means.detach().clone()
    return out


def simulate(run, out, edits: Edits, n_frames: int | None = None, fps: float | None = None,
             camera: str | None = None, orbit: bool = False, size: int = 384, progress: bool = True,
             log=print, background: str = "black", ground_grid: bool | None = None) -> Path:
    """Simulate the edited asset and write video.mp4, frames/, ply/, anchors.npz, simulation.json.
    ``ground_grid`` None draws the ground when the (edited) scene has one."""
    import imageio.v2 as imageio

    asset = apply_edits(load_asset(run), edits)
    if ground_grid and asset.config.ground_point is None:
        raise ValueError("--ground-grid needs a ground plane, and this simulation has none (--no-ground?)")
    ground_grid = asset.config.ground_point is not None if ground_grid is None else ground_grid
    n_frames = int(n_frames if n_frames is not None else asset.info.get("n_frames", 30))
    if n_frames < 1:
        raise ValueError(f"--frames must be at least 1, got {n_frames}")
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    fps = float(fps if fps is not None else min(30.0, 1.0 / asset.config.frame_dt))
    if fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    cams = None if orbit else _dataset_camera(asset, camera, size)
    log(f"simulating {n_frames} frames ({asset.config.substeps} substeps per frame)")
    positions, means, substeps = simulate_asset(asset, n_frames - 1)
    if orbit:
        # frame the whole motion: a sphere around every centre of every frame, seen with a 40 degree lens
        pts = means.detach().reshape(-1, 3).numpy()
        lo, hi = pts.min(0), pts.max(0)
        centre = 0.5 * (lo + hi)
        extent = 0.5 * float(np.linalg.norm(hi - lo)) + 1e-6
        cams = orbit_camera_path(centre, 1.15 * extent / math.sin(math.radians(20.0)), n_frames, size,
                                 up=asset.config.ground_normal)
    images = render_frames(asset, means, cams, progress, background, ground_grid)
    with atomic_dir(out) as tmp:
        (tmp / "frames").mkdir()
        (tmp / "ply").mkdir()
        for f, img in enumerate(images):
            imageio.imwrite(tmp / "frames" / f"{f:03d}.png", img)
            save_ply(tmp / "ply" / f"{f:03d}.ply", gaussians_at(asset.gaussians, means[f]))
        write_video(tmp / "video.mp4", images, fps)
        with atomic_file(tmp / "anchors.npz", suffix=".npz") as f:
            np.savez(f, positions=positions.numpy().astype(np.float32), frame_dt=asset.config.frame_dt)
        write_json(tmp / "simulation.json", {
            "run": str(Path(run).resolve()), "edits": edits.to_dict(), "frames": n_frames, "fps": fps,
            "substeps": substeps, "gravity": list(asset.config.gravity),
            "ground_point": None if asset.config.ground_point is None else list(asset.config.ground_point),
            "ground_normal": list(asset.config.ground_normal), "v0": asset.v0.tolist(),
            "camera": "orbit" if orbit else cams.names[0], "background": background, "ground_grid": ground_grid,
        })
    return Path(out)


def export(run, out, fmt: str, n_frames: int | None = None, progress: bool = True) -> Path:
    """``ply``: the asset's Gaussians at rest as one PLY file. ``splat-sequence``: a directory of
    per-frame PLY files of the fitted motion."""
    asset = load_asset(run)
    if fmt == "ply":
        out = Path(out)
        if out.suffix.lower() != ".ply":
            raise ValueError(f"--format ply writes one file: give --out a name ending in .ply, not {out}")
        save_ply(out, asset.gaussians)
        return out
    if fmt == "splat-sequence":
        n_frames = int(n_frames if n_frames is not None else asset.info.get("n_frames", 30))
        if n_frames < 1:
            raise ValueError(f"--frames must be at least 1, got {n_frames}")
        _p, means, _ = simulate_asset(asset, n_frames - 1)
        with atomic_dir(out) as tmp:
            for f in tqdm(range(n_frames), desc="export", disable=not progress, leave=False):
                save_ply(tmp / f"{f:03d}.ply", gaussians_at(asset.gaussians, means[f]))
        return Path(out)
    raise ValueError(f"unknown export format {fmt!r} (ply or splat-sequence)")
