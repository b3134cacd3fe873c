"""`sgaus generate-mpm`: a synthetic multi-view video of an elastic object simulated with MLS-MPM.

The object (a built-in shape or a mesh) is filled with particles, dropped onto a ground plane
and simulated (taichi_sim.mpm); every frame each particle is rendered as a small isotropic
Gaussian coloured by a texture fixed in the object's rest frame (flat, or with ``shading``
Lambert-shaded under a fixed light), from cameras orbiting the scene. The dataset directory
holds transforms.json, images/<camera>/<frame>.png (RGBA on black), masks/<camera>/<frame>.png,
particles/<frame>.npz (ground-truth positions) and scene.json, and with ``static_views`` static/
(photos of frame 0 from the upper hemisphere, for the object's shape). It is written into a
temporary directory and renamed at the end, so bad options write nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data.files import atomic_dir, write_json
from pipeline.data.cameras import Cameras, check_elevation, hemisphere_cameras, orbit_cameras
from pipeline.shapes import SHAPES, ParticleObject, fill_object, shape_names, split_halves
from taichi_sim.errors import SgausError
from taichi_sim.mpm import (
    CONTACT_GAP, GROUND_MODES, MODELS, WALL_REACH, Ground, MPMSimulator, check_material, ground_aligned_lo, wall_contact,
)

FORMAT = "sgaus-mpm/1"
# scene.json's "generator" field says which version of this generator wrote a dataset.
# 1 (no field): particles rested 0.5 to 0.7 grid cells above the declared ground plane.
# 2: ground contact at the declared plane (resting particles within a quarter cell of it).
# 3: the box follows a throw sideways, and a motion that reaches a wall of the box is refused
#    (version 2 let a thrown object hit a wall nobody sees and bounce back from it).
GENERATOR_VERSION = 3
# shading: colour * (SHADING_AMBIENT + (1 - SHADING_AMBIENT) * max(0, n . LIGHT_DIRECTION)), with n
# the particle's outward surface normal; the light is distant and fixed in the world, above the
# ground and to the +x side (and a little +z) of the object
SHADING_AMBIENT = 0.35
LIGHT_DIRECTION = tuple(float(c) for c in np.array([0.5, 1.0, 0.3]) / np.linalg.norm([0.5, 1.0, 0.3]))
BOX_SIZE = 1.0  # metres: the simulation box is a cube of this side above the ground
WALL_MARGIN = 2.0  # grid cells between the object at rest and the walls' reach when the box follows a throw
PALETTE = np.array([
    [0.90, 0.25, 0.20], [0.98, 0.78, 0.20], [0.20, 0.65, 0.35], [0.20, 0.45, 0.90], [0.85, 0.85, 0.85],
])


@dataclasses.dataclass
class GenerateConfig:
    """Everything that defines a generated dataset (defaults follow the paper's synthetic data).

    shape: a built-in shape name (pipeline.shapes), or None when ``mesh`` is given.
    mesh: a mesh file open3d reads (None: use ``shape``).
    size: the object's largest extent, metres (0.4).
    rotation_deg: Euler angles x, y, z applied to the object at rest (0, 0, 0).
    drop_height: height of the object's lowest point at frame 0, metres (0.25: contact near frame 7).
    youngs_modulus, poisson_ratio, density: the material, Pa, -, kg/m^3 (5e4, 0.3, 1000).
    model: "neohookean" or "corotated".
    heterogeneous: two halves along x, the +x half ``stiffness_factor`` times stiffer (off, 10).
    gravity, velocity: 3-vectors, m/s^2 and m/s ((0, -9.8, 0), (0, 0, 0)).
    ground_height: the ground plane y = ground_height, normal +y (0).
    ground: "sticky", "slip" or "friction"; friction: the Coulomb coefficient (friction, 0.5).
    views, frames, resolution: cameras, frames, image side in pixels (10, 30, 512).
    frame_dt: seconds between frames (0.03).
    grid: MPM grid nodes per side of the 1 m box (64; about 8 particles per cell).
    seed: jitter of the particle lattice (0).
    fit_frames: frames [0, fit_frames) are for fitting, the rest for future prediction
        (None: 20, or all the frames when there are fewer).
    shading: Lambert-shade the particles under the fixed light LIGHT_DIRECTION (ambient
        SHADING_AMBIENT) with their surface normals carried along by the deformation (False:
        flat colours).
    """

    shape: str | None = "torus"
    mesh: str | None = None
    size: float = 0.4
    rotation_deg: tuple = (0.0, 0.0, 0.0)
    drop_height: float = 0.25
    youngs_modulus: float = 5e4
    poisson_ratio: float = 0.3
    density: float = 1000.0
    model: str = "neohookean"
    heterogeneous: bool = False
    stiffness_factor: float = 10.0
    gravity: tuple = (0.0, -9.8, 0.0)
    velocity: tuple = (0.0, 0.0, 0.0)
    ground_height: float = 0.0
    ground: str = "friction"
    friction: float = 0.5
    views: int = 10
    frames: int = 30
    resolution: int = 512
    frame_dt: float = 0.03
    grid: int = 64
    seed: int = 0
    fit_frames: int | None = None
    shading: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before anything is computed or written)."""
        if self.mesh is not None:
            self.shape = None
        for f in dataclasses.fields(self):  # every number finite, named as the CLI option
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SgausError(f"--{f.name.replace('_', '-')}: {value} is not a finite number")
        if not isinstance(self.shading, (bool, np.bool_)):
            raise SgausError(f"--shading must be on or off (a bool), got {self.shading!r}")
        self.shading = bool(self.shading)
        if self.shape is None and self.mesh is None:
            raise SgausError("give a built-in --shape or a --mesh file")
        if self.mesh is not None and not Path(self.mesh).is_file():
            raise FileNotFoundError(f"mesh file not found: {self.mesh}")
        if self.mesh is None and self.shape not in SHAPES:
            raise SgausError(f"unknown shape {self.shape!r}: choose one of {', '.join(shape_names())}")
        if self.model not in MODELS:
            raise SgausError(f"unknown material model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.ground not in GROUND_MODES:
            raise SgausError(f"unknown ground mode {self.ground!r}: choose one of {', '.join(GROUND_MODES)}")
        check_material(self.youngs_modulus, self.poisson_ratio, self.density)
        if self.heterogeneous and not self.stiffness_factor > 0:
            raise SgausError(f"the stiffness factor must be positive, got {self.stiffness_factor}")
        if not self.friction >= 0:
            raise SgausError(f"the friction coefficient must be >= 0, got {self.friction}")
        if not 0 < self.size < 0.8 * BOX_SIZE:
            raise SgausError(f"the object size must lie in (0, {0.8 * BOX_SIZE:g}) metres, got {self.size}")
        if self.drop_height <= self.ground_height:
            raise SgausError(f"the ground (height {self.ground_height:g}) is not below the object "
                             f"(lowest point at {self.drop_height:g}): lower --ground-height")
        for name in ("views", "frames", "resolution", "grid"):
            if int(getattr(self, name)) <= 0:
                raise SgausError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.grid < 16:
            raise SgausError(f"--grid must be at least 16, got {self.grid}")
        if not self.frame_dt > 0:
            raise SgausError(f"the frame time step must be positive, got {self.frame_dt}")
        if self.fit_frames is None:
            self.fit_frames = min(20, int(self.frames))
        if not 1 <= self.fit_frames <= self.frames:
            raise SgausError(f"--fit-frames must lie in [1, {self.frames}], got {self.fit_frames}")
        for name in ("gravity", "velocity", "rotation_deg"):
            vec = tuple(float(c) for c in getattr(self, name))
            if len(vec) != 3 or not all(math.isfinite(c) for c in vec):
                raise SgausError(f"{name} must be three finite numbers, got {getattr(self, name)}")
            setattr(self, name, vec)

    @property
    def dx(self) -> float:
        return BOX_SIZE / self.grid

    @property
    def box_lo(self) -> tuple:
        """The box's lowest corner: about 0.1 box sizes below the ground, with the grid aligned so
        that resting particles sit on the plane (taichi_sim.mpm.CONTACT_GAP)."""
        return (-BOX_SIZE / 2, ground_aligned_lo(self.ground_height, self.dx, 0.1 * BOX_SIZE), -BOX_SIZE / 2)

    def simulation_box_lo(self, x: np.ndarray) -> tuple:
        """The box's lowest corner for the object at rest ``x`` [P,3]: :attr:`box_lo`, its centre
        moved in x and z (by whole grid cells) toward where a throw would carry the object half
        way through the clip if nothing slowed it, as far as the object at rest stays WALL_MARGIN
        cells clear of the walls' reach (taichi_sim.mpm.wall_contact). A drop (no sideways
        velocity or gravity) keeps :attr:`box_lo`."""
        lo = list(self.box_lo)
        t = self.frame_dt * (self.frames - 1)
        n = self.grid
        for a in (0, 2):
            travel = self.velocity[a] * t + 0.5 * self.gravity[a] * t * t
            if travel == 0.0:
                continue
            x_lo, x_hi = float(x[:, a].min()), float(x[:, a].max())
            want = 0.5 * (x_lo + x_hi) + 0.5 * travel - BOX_SIZE / 2
            lowest = x_hi - (n - WALL_REACH[1] - WALL_MARGIN) * self.dx  # the box as far forward ...
            highest = x_lo - (WALL_REACH[0] + WALL_MARGIN) * self.dx  # ... and back as allowed
            if lowest <= highest:
                lo[a] = min(max(self.dx * round(want / self.dx), lowest), highest)
        return tuple(lo)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SimResult:
    """The simulated motion: positions [T,P,3] (float32), the object, material and timing;
    normals [T,S,3] (float32) of the S surface particles (obj.surface), or None unless shading."""

    positions: np.ndarray
    obj: ParticleObject
    youngs_modulus: np.ndarray  # [P]
    box_lo: tuple
    substeps_per_frame: int
    contact_frame: int | None
    kinetic_energy: np.ndarray  # [T]
    mass: np.ndarray  # [P]
    seconds: float = 0.0
    normals: np.ndarray | None = None


def build_object(cfg: GenerateConfig) -> tuple[ParticleObject, np.ndarray]:
    """The particles at rest and Young's modulus per particle (parts split when heterogeneous)."""
    obj = fill_object(cfg.shape, cfg.mesh, size=cfg.size, spacing=cfg.dx / 2,
                      bottom=(0.0, cfg.drop_height, 0.0), rotation_deg=cfg.rotation_deg, seed=cfg.seed)
    E = np.full(obj.n_particles, float(cfg.youngs_modulus))
    if cfg.heterogeneous:
        obj.part = split_halves(obj, axis=0)
        E[obj.part == 1] *= cfg.stiffness_factor
    return obj, E


def make_simulator(cfg: GenerateConfig, obj: ParticleObject, E: np.ndarray) -> MPMSimulator:
    ground = Ground(point=(0.0, cfg.ground_height, 0.0), normal=(0.0, 1.0, 0.0), mode=cfg.ground,
                    friction=cfg.friction)
    sim = MPMSimulator(obj.x, E, cfg.poisson_ratio, cfg.density, grid=cfg.grid, box_lo=cfg.simulation_box_lo(obj.x),
                       box_size=BOX_SIZE, model=cfg.model, gravity=cfg.gravity, ground=ground)
    sim.set_velocity(cfg.velocity)
    return sim


def simulate_object(cfg: GenerateConfig, progress: bool = True) -> SimResult:
    """Run the MPM simulation of ``cfg`` and return positions at every frame (frame 0 = rest)."""
    import time

    cfg.validate()
    obj, E = build_object(cfg)
    sim = make_simulator(cfg, obj, E)
    positions = np.empty((cfg.frames, obj.n_particles, 3), dtype=np.float32)
    energy = np.zeros(cfg.frames)
    positions[0], energy[0] = sim.positions(), sim.kinetic_energy()
    normals = None
    if cfg.shading:
        shell = torch.as_tensor(np.flatnonzero(obj.surface), device=sim.device)
        normals = np.empty((cfg.frames, len(shell), 3), dtype=np.float32)
        normals[0] = obj.normal[obj.surface]
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.frames), desc="simulate", unit="frame", disable=not progress, leave=False)
    for f in bar:
        n_sub = sim.advance(cfg.frame_dt)
        positions[f], energy[f] = sim.positions(), sim.kinetic_energy()
        if normals is not None:
            # the stored F lags the positions by the last substep's velocity gradient C: apply it
            h = cfg.frame_dt / n_sub
            C, F = (a[shell].double().cpu().numpy() for a in (sim.C, sim.F))
            normals[f] = deformed_normals((np.eye(3) + h * C) @ F, normals[0])
        bar.set_postfix(substeps=n_sub)
    seconds = time.perf_counter() - t0
    hit = wall_contact(positions, sim.box_lo, BOX_SIZE, cfg.grid)
    if hit is not None:
        f, axis, side = hit
        where = float((positions[f, :, axis].max() if side > 0 else positions[f, :, axis].min()))
        if f == 0:
            raise SgausError(f"the object ({'xyz'[axis]} = {where:.3f} m) lies within reach of a wall of the "
                             f"{BOX_SIZE:g} m simulation box at --grid {cfg.grid}: make it smaller or the grid finer")
        raise SgausError(f"the object reached a wall of the {BOX_SIZE:g} m simulation box at frame {f} "
                         f"({'xyz'[axis]} = {where:.3f} m), which would bounce it back; lower --velocity or "
                         f"--frames (or --drop-height)")
    # the highest node row the ground holds lies CONTACT_GAP cells below the plane (box_lo), and
    # the B-spline stencil reaches 1.5 cells above it
    contact = first_contact_frame(positions, cfg.ground_height, cfg.gravity[1], cfg.frame_dt,
                                  (1.5 - CONTACT_GAP) * cfg.dx)
    return SimResult(positions, obj, E, tuple(float(c) for c in sim.box_lo), int(sim.substeps_per_frame or 0),
                     contact, energy, sim.particle_mass, seconds, normals)


def deformed_normals(F: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Unit normals [N,3] of surfaces with rest normals ``normals`` [N,3] after the deformation
    gradients ``F`` [N,3,3]: F^-T n, normalised (it stays perpendicular to every deformed tangent F t)."""
    Ft = np.swapaxes(np.asarray(F, dtype=np.float64), 1, 2)
    n = np.linalg.solve(Ft, np.asarray(normals, dtype=np.float64)[..., None])[..., 0]
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)


def shade(colors: np.ndarray, normals: np.ndarray, light=LIGHT_DIRECTION,
          ambient: float = SHADING_AMBIENT) -> np.ndarray:
    """Lambert shading: colors [N,3] * (ambient + (1 - ambient) * max(0, n . light)), n = normals [N,3]."""
    lit = np.maximum(0.0, np.asarray(normals, dtype=np.float64) @ np.asarray(light, dtype=np.float64))
    return np.asarray(colors, dtype=np.float64) * (ambient + (1.0 - ambient) * lit)[:, None]


def first_contact_frame(positions: np.ndarray, ground_height: float, gravity_y: float, frame_dt: float,
                        reach: float) -> int | None:
    """The first frame whose motion the ground affected, or None.

    A particle feels the ground once it is within ``reach`` of the plane (the B-spline stencil's
    1.5 cells, less the depth of the highest grid node row the ground holds). Contact can start
    between two frames, so frame f counts when its particles, or their free-flight prediction
    from frames f-2 and f-1, come within reach.
    """
    height = positions[..., 1].astype(np.float64) - ground_height
    low = height.min(axis=1)
    predicted = np.full_like(low, np.inf)
    if len(height) > 2:
        predicted[2:] = (2.0 * height[1:-1] - height[:-2] + gravity_y * frame_dt ** 2).min(axis=1)
    touch = np.minimum(low, predicted) < reach
    return int(np.argmax(touch)) if touch.any() else None


def particle_colors(obj: ParticleObject, rest: np.ndarray | None = None) -> np.ndarray:
    """Colours [P,3] from a checker of several colours fixed in the object's rest frame."""
    rest = obj.x if rest is None else rest
    cell = obj.size / 5.0
    idx = np.floor((rest - obj.center) / cell).astype(np.int64)
    k = (idx[:, 0] + 2 * idx[:, 1] + 3 * idx[:, 2]) % len(PALETTE)
    return PALETTE[k]


CAMERA_FOV = 40.0  # degrees, horizontal, of every generated camera
STATIC_ELEVATION = (10.0, 70.0)  # degrees: static photos from the upper hemisphere, a person walking around


def _framing_distance(lo: np.ndarray, hi: np.ndarray) -> float:
    """How far from the centre of the box [lo, hi] a camera of CAMERA_FOV stands for the box's
    bounding sphere to fill its view with an 8 % margin."""
    return 0.5 * float(np.linalg.norm(hi - lo)) * 1.08 / math.sin(math.radians(CAMERA_FOV / 2))


def scene_cameras(cfg: GenerateConfig, positions: np.ndarray | None = None) -> Cameras:
    """``views`` cameras around and above the motion, y up, every one seeing all of it.

    They look at the centre of the box bounding ``positions`` [T,P,3] (all frames), from a
    distance at which the box's bounding sphere fills the 40 degree field of view with a margin;
    without positions, the box of the drop (object size, drop height, ground) stands in.
    """
    if positions is None:
        lo = np.array([-cfg.size / 2, cfg.ground_height, -cfg.size / 2])
        hi = np.array([cfg.size / 2, cfg.drop_height + cfg.size, cfg.size / 2])
    else:
        lo, hi = positions.min(axis=(0, 1)).astype(np.float64), positions.max(axis=(0, 1)).astype(np.float64)
    return orbit_cameras(cfg.views, _framing_distance(lo, hi), target=tuple((lo + hi) / 2), elevation_deg=20.0,
                         fov_deg=CAMERA_FOV, width=cfg.resolution, height=cfg.resolution, elevation_jitter_deg=10.0,
                         azimuth0_deg=15.0)


def render_frame(means: np.ndarray, colors: np.ndarray, scale: float, cameras: Cameras):
    """RGB [C,H,W,3] and alpha [C,H,W,1] of particles as isotropic Gaussians on black."""
    from render import rasterization

    dtype = torch.float32
    means_t = torch.as_tensor(means, dtype=dtype)
    n = len(means_t)
    rgb, alpha, _ = rasterization(
        means_t, torch.full((n,), float(scale), dtype=dtype), torch.full((n,), 0.95, dtype=dtype),
        torch.as_tensor(colors, dtype=dtype), cameras.viewmats.to(dtype), cameras.Ks.to(dtype),
        cameras.width, cameras.height)
    return rgb, alpha


def _to_u8(a: torch.Tensor) -> np.ndarray:
    return (a.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def scene_json(cfg: GenerateConfig, sim: SimResult, variant_of: dict | None = None, static_views: int = 0,
               static_elevation=STATIC_ELEVATION) -> dict:
    """scene.json's document; ``options`` holds ``cfg`` itself (the mesh path made absolute), from
    which ``--variant-of`` rebuilds the same object; ``variant_of`` ({data, changed}) is recorded
    when given; ``cameras.static_views`` is the number of static photos and, where there are any,
    ``cameras.static_elevation_deg`` the range of their elevations."""
    parts = [{"id": 0, "youngs_modulus": float(cfg.youngs_modulus), "n_particles": int(np.sum(sim.obj.part == 0))}]
    if cfg.heterogeneous:
        parts[0]["region"] = "x <= median"
        parts.append({"id": 1, "youngs_modulus": float(cfg.youngs_modulus * cfg.stiffness_factor),
                      "n_particles": int(np.sum(sim.obj.part == 1)), "region": "x > median"})
    return {
        "format": FORMAT,
        "generator": {"name": "sgaus generate-mpm", "version": GENERATOR_VERSION},
        "object": {"shape": cfg.shape, "mesh": str(cfg.mesh) if cfg.mesh else None,
                   "n_particles": int(sim.obj.n_particles), "size": float(sim.obj.size),
                   "center": [float(c) for c in sim.obj.center], "rotation_deg": list(cfg.rotation_deg),
                   "spacing": float(sim.obj.spacing)},
        "material": {"model": cfg.model, "youngs_modulus": float(cfg.youngs_modulus),
                     "poisson_ratio": float(cfg.poisson_ratio), "density": float(cfg.density),
                     "heterogeneous": bool(cfg.heterogeneous), "parts": parts},
        "gravity": list(cfg.gravity),
        "velocity": list(cfg.velocity),
        "ground": {"point": [0.0, float(cfg.ground_height), 0.0], "normal": [0.0, 1.0, 0.0], "mode": cfg.ground,
                   "friction": float(cfg.friction)},
        "frame_dt": float(cfg.frame_dt),
        "n_frames": int(cfg.frames),
        "substeps_per_frame": int(sim.substeps_per_frame),
        "grid": int(cfg.grid),
        "box": {"lo": list(sim.box_lo), "size": BOX_SIZE},
        "seed": int(cfg.seed),
        "contact_frame": sim.contact_frame,
        "split": {"fit": [0, int(cfg.fit_frames)], "future": [int(cfg.fit_frames), int(cfg.frames)]},
        "cameras": {"n": int(cfg.views), "width": int(cfg.resolution), "height": int(cfg.resolution),
                    "static_views": int(static_views),
                    **({"static_elevation_deg": [float(v) for v in static_elevation]} if static_views else {})},
        "shading": ({"enabled": True, "model": "lambert", "ambient": SHADING_AMBIENT,
                     "light_direction": list(LIGHT_DIRECTION)} if cfg.shading else {"enabled": False}),
        "options": {**cfg.to_dict(), "mesh": str(Path(cfg.mesh).resolve()) if cfg.mesh else None},
        **({"variant_of": variant_of} if variant_of is not None else {}),
    }


# the conditions a variant (``generate-mpm --variant-of DATA``) may change; everything else,
# the object above all, is DATA's
VARIANT_CONDITIONS = ("velocity", "gravity", "drop_height", "ground_height", "friction")


def variant_config(data: str | Path, **changes) -> tuple[GenerateConfig, dict]:
    """The configuration of a recording of DATA's object under other conditions, and its
    ``variant_of`` record ({data, changed}).

    DATA must be a dataset of this generator version whose scene.json holds its ``options``; they
    give everything (shape or mesh, size, rotation, material, particle spacing, seed, cameras,
    frames), and ``changes`` (keys of VARIANT_CONDITIONS, None = DATA's value) replace the
    conditions. The same options give the same particles at rest, up to the drop offset
    (pipeline.shapes.fill_object). At least one condition must differ from DATA's.
    """
    from pipeline.data.scene import read_scene

    unknown = set(changes) - set(VARIANT_CONDITIONS)
    if unknown:
        raise ValueError(f"not a condition of a variant: {', '.join(sorted(unknown))}")
    root = Path(data)
    if not (root / "scene.json").is_file():
        raise SgausError(f"--variant-of {data}: not a dataset written by `sgaus generate-mpm` (no scene.json)")
    scene = read_scene(root)
    path = root / "scene.json"
    if scene.raw.get("format") != FORMAT:
        raise SgausError(f"--variant-of {data}: {path} is not of format {FORMAT!r} (got {scene.raw.get('format')!r}); "
                         "a variant needs a dataset written by `sgaus generate-mpm`")
    version = scene.generator_version or 1
    if version != GENERATOR_VERSION:
        raise SgausError(f"--variant-of {data}: it was written by generator version {version} and this sgaus writes "
                         f"version {GENERATOR_VERSION}, so their physics differ; generate DATA again first")
    options = scene.raw.get("options")
    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    if not isinstance(options, dict):
        raise SgausError(f"{path}: no 'options' (written before sgaus recorded its generator options); "
                         "generate DATA again to make variants of it")
    if set(options) != fields:
        odd = sorted(set(options) ^ fields)
        raise SgausError(f"{path}: 'options' must hold exactly the generator's options (differs in: {', '.join(odd)})")
    try:
        base = GenerateConfig(**options)
        base.validate()
    except (TypeError, ValueError) as err:
        raise SgausError(f"{path}: 'options' are not valid generator options ({str(err).splitlines()[0]})") from None
    cfg = dataclasses.replace(base)
    for name, value in changes.items():
        if value is not None:
            setattr(cfg, name, tuple(float(c) for c in value) if name in ("velocity", "gravity") else float(value))
    if changes.get("friction") is not None and cfg.ground != "friction":
        raise SgausError(f"--friction has no effect: DATA's ground is {cfg.ground!r}, not 'friction'")
    cfg.validate()
    changed = [name for name in VARIANT_CONDITIONS if getattr(cfg, name) != getattr(base, name)]
    if not changed:
        raise SgausError(f"--variant-of {data}: give at least one of --velocity, --gravity, --drop-height, "
                         "--ground-height, --friction that differs from DATA's")
    return cfg, {"data": str(root.resolve()), "changed": changed}


def static_cameras(cfg: GenerateConfig, n: int, positions0: np.ndarray, elevation=STATIC_ELEVATION) -> Cameras:
    """``n`` cameras around the object as it is at frame 0 (``positions0`` [P,3]), at elevations
    spread over ``elevation`` (degrees; by default 10 to 70, the upper hemisphere), at the videos'
    image size, the object's bounding sphere filling the 40 degree field of view with a margin,
    named static_000...: the photos a person takes walking around the object, which see its top (a
    torus's hole) as the videos' low ring of cameras does not. A negative low bound also looks at
    its underside, which no camera above it sees; a camera that would stand below the ground is
    an error naming the bound."""
    lo, hi = positions0.min(axis=0).astype(np.float64), positions0.max(axis=0).astype(np.float64)
    centre, distance = (lo + hi) / 2, _framing_distance(lo, hi)
    low, _high = check_elevation(elevation)
    lowest = centre[1] + distance * math.sin(math.radians(low))
    if lowest <= cfg.ground_height:
        raise SgausError(f"--static-elevation {low:g} puts a static camera {cfg.ground_height - lowest:.3f} below the "
                         f"ground (the object's centre is {centre[1] - cfg.ground_height:.3f} above it, the cameras "
                         f"{distance:.3f} away); raise the low bound or the drop height")
    return hemisphere_cameras(n, centre, distance, (0.0, 1.0, 0.0), CAMERA_FOV,
                              cfg.resolution, cfg.resolution, prefix="static_", digits=3, elevation=elevation)


def _write_rgba(folder: Path, name: str, rgb: torch.Tensor, alpha: torch.Tensor, mask_folder: Path) -> None:
    """``folder/name`` as an RGBA PNG and ``mask_folder/name`` its mask, from a render on black."""
    import imageio.v3 as iio

    # PNG colour is straight (not premultiplied): the renderer's colour on black is
    # rgb = colour * alpha, so divide it back out where anything was drawn
    straight = torch.where(alpha > 0, rgb / alpha.clamp_min(1e-6), torch.zeros_like(rgb))
    iio.imwrite(folder / name, _to_u8(torch.cat([straight.clamp(0, 1), alpha], dim=-1)))
    iio.imwrite(mask_folder / name, _to_u8((alpha[..., 0] > 0.5).float()))


def generate(cfg: GenerateConfig, out: str | Path, progress: bool = True, log=None,
             timings: dict | None = None, variant_of: dict | None = None, static_views: int = 0,
             static_elevation=STATIC_ELEVATION) -> Path:
    """Simulate and render ``cfg`` into the dataset directory ``out``; returns its path.
    ``variant_of`` ({data, changed}, from :func:`variant_config`) is recorded in scene.json.
    ``static_views`` > 0 adds that many photos of frame 0 from the elevations ``static_elevation``
    (degrees, by default the upper hemisphere; :func:`static_cameras`) in ``out/static/`` (a
    one-frame transforms.json, images/, masks/), which `sgaus fit` uses for the object's shape
    (static Gaussians and anchors) beside the videos' frame 0.

    ``timings``, when given, receives seconds spent: simulate_s, render_s (rasterisation only),
    write_s (PNG and npz encoding), total_s, and substeps (the substeps simulated).
    """
    import time

    from pipeline.data.datasets import write_transforms

    t_start = time.perf_counter()
    cfg.validate()
    if int(static_views) != static_views or static_views < 0:
        raise SgausError(f"--static-views must be a whole number of photos, 0 or more, got {static_views}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out exists and is not a directory: {out}")
    if static_views:  # the range before the simulation (a camera below the ground is known only after it)
        check_elevation(static_elevation)
    sim = simulate_object(cfg, progress=progress)
    render_s = 0.0
    if log:
        log(f"simulated {sim.obj.n_particles} particles, {cfg.frames} frames, {sim.substeps_per_frame} "
            f"substeps per frame in {sim.seconds:.1f} s; first ground contact at frame {sim.contact_frame}")
    cameras = scene_cameras(cfg, sim.positions)
    colors = particle_colors(sim.obj)
    shown = sim.obj.surface  # interior particles are hidden behind the surface shell
    scale = 0.7 * sim.obj.spacing
    with atomic_dir(out) as tmp:
        write_transforms(tmp, cameras, cfg.frames, cfg.frame_dt)
        for name in cameras.names:
            (tmp / "images" / name).mkdir(parents=True)
            (tmp / "masks" / name).mkdir(parents=True)
        (tmp / "particles").mkdir()
        for f in tqdm(range(cfg.frames), desc="render", unit="frame", disable=not progress, leave=False):
            np.savez_compressed(tmp / "particles" / f"{f:03d}.npz", x=sim.positions[f], surface=sim.obj.surface,
                                part=sim.obj.part.astype(np.int8))
            t0 = time.perf_counter()
            shown_colors = shade(colors[shown], sim.normals[f]) if cfg.shading else colors[shown]
            with torch.no_grad():
                rgb, alpha = render_frame(sim.positions[f][shown], shown_colors, scale, cameras)
            render_s += time.perf_counter() - t0
            for c, name in enumerate(cameras.names):
                _write_rgba(tmp / "images" / name, f"{f:03d}.png", rgb[c], alpha[c], tmp / "masks" / name)
        if static_views:
            scams = static_cameras(cfg, int(static_views), sim.positions[0], static_elevation)
            write_transforms(tmp / "static", scams, 1, cfg.frame_dt, image_pattern="images/{camera}.png",
                             mask_pattern="masks/{camera}.png")
            for sub in ("images", "masks"):
                (tmp / "static" / sub).mkdir()
            shown_colors = shade(colors[shown], sim.normals[0]) if cfg.shading else colors[shown]
            with torch.no_grad():
                rgb, alpha = render_frame(sim.positions[0][shown], shown_colors, scale, scams)
            for c, name in enumerate(scams.names):
                _write_rgba(tmp / "static" / "images", f"{name}.png", rgb[c], alpha[c], tmp / "static" / "masks")
        write_json(tmp / "scene.json", scene_json(cfg, sim, variant_of, int(static_views), static_elevation))
    if timings is not None:
        total = time.perf_counter() - t_start
        timings.update(simulate_s=sim.seconds, render_s=render_s, write_s=total - sim.seconds - render_s, total_s=total,
                       substeps=sim.substeps_per_frame * (cfg.frames - 1), n_particles=sim.obj.n_particles,
                       n_rendered=int(shown.sum()))
    return out


def load_scene(path: str | Path) -> dict:
    """scene.json of a generated dataset."""
    path = Path(path)
    file = path / "scene.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no scene.json in {path}")
    with open(file) as fh:
        return json.load(fh)
