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

from pipeline.asset import Asset, load_asset
from pipeline.data.cameras import Cameras, orbit_cameras
from pipeline.data.files import atomic_dir, atomic_file, check_output_dir, write_json
from pipeline.data.gaussians import Gaussians, save_ply
from render.backdrop import BACKGROUNDS
from taichi_sim.binding import apply_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import vec3
from taichi_sim.spring_params import friction_logit
from taichi_sim.spring_rollout import SpringState, rollout_with_retry


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

    def check(self) -> "Edits":
        """SgausError naming the option of the first impossible edit (a non-finite number, a
        negative gravity magnitude or stiffness scale, a friction outside [0, 1]); the CLI calls it
        before the asset is read, :func:`apply_edits` again."""
        if isinstance(self.gravity, (int, float)):
            _finite("--gravity", self.gravity)
            if self.gravity < 0:
                raise SgausError(f"--gravity: a magnitude must not be negative, got {self.gravity:g}")
        elif self.gravity is not None:
            vec3(self.gravity, "--gravity")
        if self.ground_height is not None:
            _finite("--ground-height", self.ground_height)
        if self.friction is not None:
            parse_friction(self.friction)
        if self.velocity is not None:
            vec3(self.velocity, "--velocity")
        _finite("--stiffness-scale", self.stiffness_scale)
        if not self.stiffness_scale > 0:
            raise SgausError(f"--stiffness-scale must be a positive finite number, got {self.stiffness_scale:g}")
        return self


def _finite(option: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SgausError(f"{option}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise SgausError(f"{option}: {v} is not a finite number")
    return v


def parse_gravity(text: str) -> float | tuple:
    """'9.8' -> 9.8 (a magnitude), '0,-9.8,0' -> a vector; anything else is an error."""
    if "," in str(text):
        return vec3(text, "--gravity")
    try:
        value = float(text)
    except ValueError:
        raise SgausError(f"--gravity must be a number or three numbers x,y,z, got {text!r}") from None
    if not math.isfinite(value):
        raise SgausError(f"--gravity must be finite, got {text!r}")
    return value


def parse_friction(text: str) -> str | float:
    t = str(text).strip().lower()
    if t in ("sticky", "smooth"):
        return t
    try:
        v = float(t)
    except ValueError:
        raise SgausError(f"--friction must be sticky, smooth or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise SgausError(f"--friction must lie in [0, 1] (0 = sticky, 1 = smooth), got {v}")
    return v


def simulate_asset(asset: Asset, n_frames: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Forward simulation of the asset: anchor positions [F+1,N,3], Gaussian centres [F+1,G,3],
    and the substeps per frame that were needed (raised automatically on instability)."""
    if n_frames < 0:
        raise SgausError(f"the number of frames must not be negative, got {n_frames}")
    with torch.no_grad():
        traj = rollout_with_retry(asset.model, asset.params, SpringState(asset.model.rest_positions, asset.v0),
                                  n_frames, asset.integrator, progress=progress)
        means = apply_binding(asset.binding, traj.positions)
    return traj.positions, means, traj.substeps


def apply_edits(asset: Asset, edits: Edits) -> Asset:
    """A copy of the asset with the edits applied; raises SgausError for impossible edits."""
    edits.check()
    cfg = asset.model
    changes: dict = {}
    if edits.gravity is not None:
        if isinstance(edits.gravity, (int, float)):
            g = np.asarray(cfg.gravity, dtype=np.float64)
            direction = g / np.linalg.norm(g) if np.linalg.norm(g) > 0 else -np.asarray(cfg.ground_normal, dtype=np.float64)
            changes["gravity"] = tuple(float(x) for x in direction * float(edits.gravity))
        else:
            changes["gravity"] = tuple(float(x) for x in edits.gravity)
        if not all(math.isfinite(x) for x in changes["gravity"]):
            raise SgausError("gravity must be finite")
    if edits.no_ground:
        changes["ground_point"] = None
    elif edits.ground_height is not None:
        normal = np.asarray(cfg.ground_normal, dtype=np.float64)
        lowest = float((asset.model.rest_positions.double().numpy() @ normal).min())
        if edits.ground_height >= lowest:
            raise SgausError(
                f"a ground at height {edits.ground_height:g} lies above the object's lowest point ({lowest:.4g}); "
                "choose a lower --ground-height"
            )
        changes["ground_point"] = tuple(float(x) for x in normal * float(edits.ground_height))
    out = asset.with_physics(**changes) if changes else dataclasses.replace(asset)
    params = out.params
    if edits.friction is not None:
        value = {"sticky": 0.0, "smooth": 1.0}.get(edits.friction, edits.friction)
        params = dataclasses.replace(params, friction_logit=torch.tensor(friction_logit(float(value)),
                                                                         dtype=torch.float32))
    if edits.velocity is not None:
        out = dataclasses.replace(out, v0=torch.tensor(vec3(edits.velocity, "--velocity"), dtype=torch.float32))
    if edits.stiffness_scale != 1.0:
        params = dataclasses.replace(params, log_stiffness=params.log_stiffness + math.log10(edits.stiffness_scale))
        try:
            params.check_finite()
        except SgausError as err:
            raise SgausError(f"--stiffness-scale {edits.stiffness_scale:g}: {err}") from None
    return dataclasses.replace(out, params=params)


def _dataset_camera(asset: Asset, name: str | None, size: int) -> Cameras:
    from pipeline.data.datasets import load_dataset

    data = asset.info.get("data")
    if not data or not Path(data).exists():
        raise SgausError("the asset's dataset is not available for --camera; use --orbit instead")
    cams = load_dataset(data).cameras
    cam = cams[cams.index(name) if name else 0]
    return cam.scaled(min(1.0, size / max(cam.width, cam.height)))


def ground_square(asset: Asset) -> float:
    """Side (scene units) of a ground square in rendered videos and of a cell of the viewer's
    ground grid: a round length near a quarter of the rest anchors' extent."""
    from render.backdrop import nice_square

    return nice_square(asset.model.extent or 1.0)


def render_backdrop(asset: Asset, cams: Cameras, means: torch.Tensor, background="black",
                    ground: bool = True) -> torch.Tensor:
    """RGB [C,H,W,3] of the asset's Gaussians at ``means`` seen by ``cams`` over ``background``
    (black, white, checker or an RGB triple) and, when ``ground`` and the asset's model has a
    ground plane, that plane as a checker of :func:`ground_square` squares under the Gaussians'
    soft contact shadow (render.backdrop)."""
    from render.backdrop import composite_backdrop

    rgb, alpha, depth = asset.gaussians.render_full(cams, means)
    point = asset.model.ground_point if ground else None
    return composite_backdrop(rgb, alpha, depth, cams.viewmats, cams.Ks, point, asset.model.ground_normal,
                              background, ground_square(asset), shadow_points=means if point is not None else None)


def render_frames(asset: Asset, means: torch.Tensor, cams: Cameras, progress: bool, background="black",
                  ground: bool = False) -> list[np.ndarray]:
    """uint8 frames over ``background``; ``ground`` draws the ground plane (:func:`render_backdrop`)."""
    if ground and asset.model.ground_point is None:
        raise SgausError("--ground-grid needs a ground plane, and this simulation has none")
    imgs = []
    for f in tqdm(range(len(means)), desc="render", disable=not progress, leave=False):
        with torch.no_grad():
            rgb = render_backdrop(asset, cams[f % len(cams)], means[f], background, ground)
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


SIMULATION_FORMAT = "sgaus-simulation/1"
LARGE_OUTPUT_GB = 4.0  # above this estimated size `simulate` asks for --yes


def _readable_asset(run, last_complete: bool) -> Asset:
    """The run's asset, refused when the run's last fit did not finish (unless ``last_complete``)."""
    from pipeline.data.rundir import RunDir

    if (Path(run) / "run.json").exists():
        RunDir(run, create=False).require_complete(last_complete)
    return load_asset(run)


def _protected(run, asset: Asset) -> list:
    """What a simulation must never write over: the run, the asset and the dataset it came from."""
    paths = [Path(run)]
    if asset.info.get("data"):
        paths.append(Path(asset.info["data"]))
    return paths


def estimated_bytes(asset: Asset, n_frames: int, size: int) -> int:
    """Rough size of a simulation's output: a PLY per frame (17 float32 per Gaussian), a PNG
    per frame (about 1.5 bytes per pixel) and the anchor trajectories."""
    per_frame = 68 * len(asset.gaussians) + 1.5 * size * size + 12 * asset.model.n_anchors
    return int(n_frames * per_frame)


def simulate(run, out, edits: Edits, n_frames: int | None = None, fps: float | None = None,
             camera: str | None = None, orbit: bool = False, size: int = 384, progress: bool = True,
             log=print, overwrite: bool = False, yes: bool = False, last_complete: bool = False,
             background: str = "black", ground_grid: bool | None = None) -> Path:
    """Simulate the edited asset and write video.mp4, frames/, ply/, anchors.npz, simulation.json.
    ``ground_grid`` None draws the ground when the (edited) scene has one. An ``out`` inside the run
    is listed in RUN/simulations.json and shown in RUN/report.html; the simulation then writes into
    the run and holds its writer lock throughout (pipeline/data/runlock.py)."""
    from pipeline.data.runlock import RunLock

    run_root = Path(run).resolve()
    inside = (run_root / "run.json").is_file() and run_root in Path(out).resolve().parents
    lock = RunLock(run_root, "sgaus simulate").acquire() if inside else None
    try:
        return _simulate(run, out, edits, n_frames, fps, camera, orbit, size, progress, log, overwrite, yes,
                         last_complete, background, ground_grid)
    finally:
        if lock is not None:
            lock.release()


def _simulate(run, out, edits: Edits, n_frames, fps, camera, orbit, size, progress, log, overwrite, yes,
              last_complete, background, ground_grid) -> Path:
    import imageio.v2 as imageio

    asset = apply_edits(_readable_asset(run, last_complete), edits)
    check_output_dir(out, "simulation", overwrite=overwrite, protect=_protected(run, asset))
    if background not in BACKGROUNDS:
        raise SgausError(f"--background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    if ground_grid and asset.model.ground_point is None:
        raise SgausError("--ground-grid needs a ground plane, and this simulation has none (--no-ground?)")
    ground_grid = asset.model.ground_point is not None if ground_grid is None else bool(ground_grid)
    n_frames = int(n_frames if n_frames is not None else asset.info.get("n_frames", 30))
    if n_frames < 1:
        raise SgausError(f"--frames must be at least 1, got {n_frames}")
    if size < 16:
        raise SgausError(f"--size must be at least 16 pixels, got {size}")
    gb = estimated_bytes(asset, n_frames, size) / 1e9
    if gb > LARGE_OUTPUT_GB and not yes:
        raise SgausError(f"{n_frames} frames would write about {gb:.1f} GB into {out}; pass --yes to go ahead, "
                         f"or ask for fewer --frames")
    fps = float(fps if fps is not None else min(30.0, 1.0 / asset.integrator.frame_dt))
    if not (fps > 0 and math.isfinite(fps)):
        raise SgausError(f"--fps must be a positive finite number, got {fps}")
    cams = None if orbit else _dataset_camera(asset, camera, size)
    log(f"simulating {n_frames} frames ({asset.integrator.substeps} substeps per frame)")
    positions, means, substeps = simulate_asset(asset, n_frames - 1, progress=progress)
    if orbit:
        # frame the whole motion: a sphere around every centre of every frame, seen with a 40 degree lens
        pts = means.detach().reshape(-1, 3).numpy()
        lo, hi = pts.min(0), pts.max(0)
        centre = 0.5 * (lo + hi)
        extent = 0.5 * float(np.linalg.norm(hi - lo)) + 1e-6
        cams = orbit_cameras(n_frames, 1.15 * extent / math.sin(math.radians(20.0)), target=centre, width=size,
                             height=size, up=asset.model.ground_normal, prefix="orbit_", digits=3)
    images = render_frames(asset, means, cams, progress, background, ground_grid)
    with atomic_dir(out) as tmp:
        (tmp / "frames").mkdir()
        (tmp / "ply").mkdir()
        for f, img in enumerate(images):
            imageio.imwrite(tmp / "frames" / f"{f:03d}.png", img)
            save_ply(tmp / "ply" / f"{f:03d}.ply", gaussians_at(asset.gaussians, means[f]))
        write_video(tmp / "video.mp4", images, fps)
        with atomic_file(tmp / "anchors.npz", suffix=".npz") as f:
            np.savez(f, positions=positions.numpy().astype(np.float32), frame_dt=asset.integrator.frame_dt)
        write_json(tmp / "simulation.json", {
            "format": SIMULATION_FORMAT, "run": str(Path(run).resolve()), "edits": edits.to_dict(), "frames": n_frames, "fps": fps,
            "substeps": substeps, "gravity": list(asset.model.gravity),
            "ground_point": None if asset.model.ground_point is None else list(asset.model.ground_point),
            "ground_normal": list(asset.model.ground_normal), "v0": asset.v0.tolist(),
            "camera": "orbit" if orbit else cams.names[0], "background": background, "ground_grid": ground_grid,
        })
    run_root, where = Path(run).resolve(), Path(out).resolve()
    if (run_root / "asset" / "physics.json").is_file() and run_root in where.parents:  # listed in the run's report
        from pipeline.report import record_simulation, report_run

        record_simulation(run_root, where.relative_to(run_root).as_posix(), where / "video.mp4", edits=edits.to_dict())
        log(f"report: {report_run(run_root, figures=False)}")
    return Path(out)


def export(run, out, fmt: str, n_frames: int | None = None, progress: bool = True, overwrite: bool = False,
           last_complete: bool = False) -> Path:
    """``ply``: the asset's Gaussians at rest as one PLY file. ``splat-sequence``: a directory of
    per-frame PLY files of the fitted motion (with sequence.json)."""
    asset = _readable_asset(run, last_complete)
    if fmt == "ply":
        out = Path(out)
        if out.suffix.lower() != ".ply":
            raise SgausError(f"--format ply writes one file: give --out a name ending in .ply, not {out}")
        if out.is_dir():
            raise SgausError(f"--out {out} is a directory; --format ply writes one file")
        if out.exists() and not overwrite:
            raise SgausError(f"--out {out} exists; pass --overwrite to replace it")
        save_ply(out, asset.gaussians)
        return out
    if fmt == "splat-sequence":
        check_output_dir(out, "splat-sequence", overwrite=overwrite, protect=_protected(run, asset))
        n_frames = int(n_frames if n_frames is not None else asset.info.get("n_frames", 30))
        if n_frames < 1:
            raise SgausError(f"--frames must be at least 1, got {n_frames}")
        _p, means, _ = simulate_asset(asset, n_frames - 1, progress=progress)
        with atomic_dir(out) as tmp:
            for f in tqdm(range(n_frames), desc="export", disable=not progress, leave=False):
                save_ply(tmp / f"{f:03d}.ply", gaussians_at(asset.gaussians, means[f]))
            write_json(tmp / "sequence.json", {"format": "sgaus-splat-sequence/1", "run": str(Path(run).resolve()),
                                               "frames": n_frames, "frame_dt": asset.integrator.frame_dt})
        return Path(out)
    raise SgausError(f"unknown export format {fmt!r} (ply or splat-sequence)")
