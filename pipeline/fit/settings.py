"""Settings of `sgaus fit`: presets, YAML files and command-line overrides.

Every field is documented in :class:`FitSettings`. A preset gives the starting values, a YAML
file (``--config``) overrides some of them, and ``--set name=value`` / the named options of the
CLI override those. The settings used are saved with the run (settings.yaml).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.data.points import file_digest
from pipeline.data.schema import read_yaml
from pipeline.fit.anchors import AnchorSettings
from pipeline.fit.checkpoint import CheckpointPolicy
from pipeline.fit.dynamic import DynamicSettings
from pipeline.fit.global_search import GlobalSearchSettings
from pipeline.fit.physics import PhysicsSettings
from pipeline.fit.refine import RefineSettings
from pipeline.fit.static import StaticSettings
from pipeline.fit.velocity import VelocitySettings
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import check_choices

ANCHOR_LAYOUTS = ("fps", "lattice")


@dataclass
class FitSettings:
    """All settings of the fit pipeline (defaults = the ``fast`` preset, for a CPU).

    Data
      image_size: longest image side used for fitting, in pixels (0 = full resolution).
      fit_frames: number of frames fitted from frame 0 (0 = scene.json's split, else 20).
      seed: random seed of every stage.
    Static reconstruction (paper Sec. 4.1)
      static_iterations: optimisation steps on frame 0.
      static_scale: the constant scale s0 of every Gaussian during this stage (scene units).
      static_max_gaussians: cap on the number of Gaussians after densification.
      static_views: views rendered per iteration (the authors' 3DGS loop renders one).
      static_densify_every, static_densify_from, static_densify_until: densification period and
        window in iterations (0, -1, -1: every iterations/30 from 10 % to 60 % of the run).
      static_grad_threshold: clone Gaussians whose mean view-space (NDC) gradient exceeds this.
      static_prune_opacity: remove Gaussians less opaque than this at each densification.
      static_opacity_reset_every: 3DGS' opacity reset period (0: none). The paper preset uses the
        authors' 3DGS schedule: every 100 from 500 to 15000, 0.0002, 0.005 and a reset every 3000.
    Anchors and springs (Sec. 4.2)
      n_anchors: anchors N_A sampled through the object's volume.
      k_neighbors: springs per anchor (n_k).
      n_c: neighbours with soft-vector weight 1 (Eq. 8).
      n_b, p_b: anchors per Gaussian and the inverse-distance power of the binding (Eq. 15).
      anchor_splat_hull: carve the anchors' visual hull with the Gaussians' own silhouettes seen
        from all around, below included (cameras above never bound the underside; off by default:
        the global search's contact offset accounts for that depth).
      anchor_layout: "fps" (the default: points scattered through the hull and the Gaussian
        centres, thinned by farthest-point sampling) or "lattice" (a cubic lattice with layers
        parallel to the ground, its lowest layer at the object's bottom: a flat bottom meets a flat
        ground all at once instead of anchor by anchor; README: the fit, stage 2).
      anchor_points: a file of points (.npy, .npz, .ply; pipeline/data/points.py) that replaces
        the hull: the anchors are thinned from them by farthest-point sampling ("" = the hull).
        A known geometry (a scan, a CAD model sampled through its volume, or in the benchmark the
        truth's own particles: bench_identify --truth-anchors) in the anchors' coordinates (frame
        0's scene; a capture: the static photos' frame); the stage is keyed by the file's content.
      p_k: force-law exponent (Eq. 9); force_law: "smooth" (authors' code) or "paper" (Eq. 9 as printed).
      zeta0, mass: damping (Eq. 17) and mass per anchor.
      friction_mode: "per_time" (the ground's tangential factor per 0.3 ms of contact: the same
        slide at any substep count) or "per_substep" (every substep, the authors' form).
      spring_stiffness: "pair" (the default: a spring's stiffness is sqrt(k_i k_j), the same from
        both ends, so a field that is not uniform adds no push of its own) or "anchor"
        (a spring pulls its owner with the owner's k_i: the authors' form, the paper preset's; a
        non-uniform field then pushes the object, README "Spring stiffness").
      springs: "mirrored" (the default: each spring acts on both its ends with half its force, so
        momentum is kept and the model never gains energy of its own) or "directed" (the authors'
        k-nearest lists, the paper preset's: each spring acts on its owner alone, and a stiff
        model gains energy on the ground; README "Spring stiffness").
      contact: how the ground stops an anchor: "projection" (the default, the authors' Eq. 14: an
        anchor past the plane is put back on it at once) or "penalty" (a damped stiff spring pushes
        an anchor below the plane out of it, so the anchors that touch share the impact and a stiff
        model lands flat instead of pivoting on the first anchors down; the global search then
        fits its restitution. On the benchmark it orders the tori but predicts the thrown pawn and
        the 1e6 torus worse than hold: README "Ground contact").
      contact_time: "penalty" only: how long (s) a lone anchor's contact lasts (the ground spring's
        half-period); it must span 2 substeps or more.
      init_restitution: "penalty" only: the normal speed a lone anchor keeps leaving the ground, as
        a fraction of its landing speed, before the global search fits it.
      contact_floor: where the anchors meet the ground: "uniform" (the default: all at the contact
        offset's plane) or "flat" (the layer within the contact offset of the lowest anchor meets
        it together, as if the unseen underside were cut flat there, so a stiff model does not
        pivot on its lowest bumps; README "Ground contact").
      substeps: simulation substeps per frame (raised by 50 on instability, up to max_substeps).
      substeps_raise_every: the dynamic stage's substeps rise by 50 at every multiple of this
        iteration count below its iterations (the authors' N_STEP_ITER; paper preset 100: 100,
        150, then 200 substeps; 0: never).
    Refine (Gaussians at their bound positions, colour/opacity/scale refined)
      refine_iterations, refine_lr.
    Initial velocity
      velocity_cameras: cameras rendered per fitted frame and iteration (the authors: one).
      velocity_frames: frames used to fit v0 (0 = frames before the first ground contact).
      velocity_iterations, velocity_lr.
      velocity_substeps: substeps per frame while fitting v0 (before contact the springs stay at
        rest and the motion is a free fall, so few are needed).
    Global search (pipeline/fit/global_search.py: before the dynamic stage, forward rollouts only)
      global_search: search the global log10 k, friction and kappa first (false: start the
        dynamic stage from init_* as sgaus 0.1 did).
      global_log_k_min, global_log_k_max: the searched log10 stiffness interval.
      global_grid_points: points of the coarse bracket over that interval.
      global_cma_generations, global_cma_population: the CMA-ES budget after the bracket.
      global_cameras: cameras scored per frame (an even spread).
      global_contact_offset_max: the largest contact offset searched (how deep the anchors may
        sink below the ground: the unseen underside), as a fraction of the object's height; 0 = none.
      global_contact_offset_min: the smallest (0; negative raises the ground plane instead, for a
        ground that may lie too low: a capture's floor estimated at rest searches down to
        -global_contact_offset_max; positive where the underside's depth is known at least that
        deep; equal to global_contact_offset_max, the offset is that value, not searched).
      global_offset_points: points of the contact offset's 1-D bracket.
      global_search_zeta0: also search the springs' damping zeta0 (log10 over 0.01..10: a 1-D
        bracket of global_zeta0_points at the stiffness found, then CMA-ES with the rest); the
        dense stage and the asset keep the value found, in place of zeta0. False (default) keeps
        zeta0 (README: the fit, stage 5, says what it measured).
      global_zeta0_points: points of the damping's 1-D bracket.
      global_regions, global_region_generations: R > 1 ends the search with CMA-ES over R smooth
        region offsets of log10 k (coarse heterogeneity, before the dense field), for this many
        generations; 0 (default) = a uniform global value, the dense stage alone learning the
        field (with "pair" springs the regions overfitted homogeneous tori, future CD 0.44 -> 0.63
        at E = 1e5, and pushed the banana's halves the wrong way; the paper preset, with the
        authors' "anchor" springs, keeps 4).
      silhouette_weight: weight of the rendered-alpha-vs-mask L1 term of the search's score.
      global_fold_penalty, global_fold_tolerance: a candidate that folds (the share of the
        anchors' local tetrahedra inverted, averaged over the fitted frames,
        taichi_sim/folding.py) beyond the tolerance (0.01) gains this penalty times the excess on
        its loss; 0 (default) = off, 1 is what the benchmark used (README: the fit, stage 5).
    Dynamic stage (per-anchor stiffness, soft vector kappa, ground friction)
      iterations: optimisation iterations over the fitted frames.
      lr_stiffness, lr_kappa, lr_friction: Adam learning rates.
      lr_decay: the learning rates decay exponentially to this fraction by the last iteration.
      grad_clip: per-parameter gradient-norm clip.
      lambda_dssim: D-SSIM weight of the loss (Eq. 18).
      init_log_stiffness, init_kappa, init_friction_logit: starting values (log10 k, kappa, phi).
      truncate_per_frame: the authors' mode (gradients cut at each frame, an Adam step per frame)
        instead of gradients through the whole sequence.
      cameras_per_frame: cameras rendered per frame and iteration (random choice).
      soft_vector: use the soft vector eta (False = all springs weight 1, Table 3 ablation).
      single_k: one global stiffness instead of one per anchor (Table 3 ablation).
      stiffness_regions: R region values spread smoothly over the anchors, learned with the
        per-anchor deltas (0 = per-anchor deltas alone).
      patience: stop the dynamic stage once its loss has not improved by 0.5 % for this many
        iterations (0 = run every iteration).
      dense_start_offsets: comma-separated shifts, in decades, of the starting log10 k (the global
        search's, or init_log_stiffness): the dynamic stage runs from each, and the fit keeps the
        one whose loss over every camera of the fitted frames is lowest ("0": one start).
    Checkpoints (pipeline/fit/checkpoint.py; they never change a result, so they are in no stage key)
      checkpoint_s: the longest time, in seconds, between two checkpoints of a running stage
        (0 = after every iteration).
      checkpoint_every: also a checkpoint every this many iterations (0 = by time only; for tests).
    Real captures (pipeline/fit/capture_fit.py; ignored for other datasets)
      capture_image_size: longest side the capture's images are prepared at (0 = as they are).
      registration_iterations: Adam steps of the registration's final refinement.
      registration_hypotheses: random rotations tried by its automatic initial guess (besides 24).
      capture_lambda_dssim, capture_lambda_center, capture_lambda_percep: the weights of Eq. 19
        (D-SSIM, mask centre, VGG16 perceptual) of the velocity and dynamic stages on masks.
      vgg_weights: a torchvision vgg16 state dict for the perceptual term ("" = leave it out).
    """

    image_size: int = 128
    fit_frames: int = 0
    seed: int = 0
    static_iterations: int = 1500
    static_scale: float = 0.004
    static_max_gaussians: int = 20000
    static_views: int = 4
    static_densify_every: int = 0
    static_densify_from: int = -1
    static_densify_until: int = -1
    static_grad_threshold: float = 0.0005
    static_prune_opacity: float = 0.01
    static_opacity_reset_every: int = 0
    n_anchors: int = 512
    k_neighbors: int = 64
    n_c: int = 16
    n_b: int = 8
    p_b: float = 0.5
    anchor_splat_hull: bool = False
    anchor_layout: str = "fps"
    anchor_points: str = ""
    p_k: float = 0.5
    force_law: str = "smooth"
    zeta0: float = 0.1
    mass: float = 1.0
    friction_mode: str = "per_time"
    spring_stiffness: str = "pair"
    springs: str = "mirrored"
    contact: str = "projection"
    contact_time: float = 0.005
    init_restitution: float = 0.5
    contact_floor: str = "uniform"
    substeps: int = 60
    max_substeps: int = 500
    substeps_raise_every: int = 0
    refine_iterations: int = 200
    refine_lr: float = 0.01
    velocity_frames: int = 0
    velocity_iterations: int = 60
    velocity_lr: float = 0.05
    velocity_substeps: int = 20
    velocity_cameras: int = 2
    iterations: int = 40
    lr_stiffness: float = 0.03
    lr_kappa: float = 0.03
    lr_friction: float = 0.05
    lr_decay: float = 0.1
    grad_clip: float = 1.0
    lambda_dssim: float = 0.05
    init_log_stiffness: float = 3.0
    init_kappa: float = 0.0
    init_friction_logit: float = -1.0
    truncate_per_frame: bool = False
    cameras_per_frame: int = 1
    soft_vector: bool = True
    single_k: bool = False
    global_search: bool = True
    global_log_k_min: float = 0.0
    global_log_k_max: float = 7.0
    global_grid_points: int = 15
    global_cma_generations: int = 6
    global_cma_population: int = 8
    global_cameras: int = 4
    global_contact_offset_max: float = 0.25
    global_contact_offset_min: float = 0.0
    global_offset_points: int = 5
    global_search_zeta0: bool = False
    global_zeta0_points: int = 4
    global_regions: int = 0
    global_region_generations: int = 4
    silhouette_weight: float = 0.5
    global_fold_penalty: float = 0.0
    global_fold_tolerance: float = 0.01
    stiffness_regions: int = 16
    patience: int = 0
    dense_start_offsets: str = "0"
    checkpoint_s: float = 120.0
    checkpoint_every: int = 0
    capture_image_size: int = 640
    registration_iterations: int = 100
    registration_hypotheses: int = 48
    capture_lambda_dssim: float = 0.8
    capture_lambda_center: float = 1.0
    capture_lambda_percep: float = 0.1
    vgg_weights: str = ""

    def validate(self) -> "FitSettings":
        # a dynamic or velocity stage of 0 iterations would write the starting values as if fitted
        positive = ["static_iterations", "n_anchors", "k_neighbors", "n_b", "substeps", "max_substeps", "velocity_substeps",
                    "cameras_per_frame", "static_max_gaussians", "iterations", "velocity_iterations",
                    "static_views", "velocity_cameras"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise SgausError(f"setting {name} must be positive, got {getattr(self, name)}")
        for name in ["image_size", "fit_frames", "refine_iterations", "velocity_frames", "checkpoint_s",
                     "static_densify_every", "static_opacity_reset_every", "substeps_raise_every",
                     "checkpoint_every"]:
            if getattr(self, name) < 0:
                raise SgausError(f"setting {name} must not be negative, got {getattr(self, name)}")
        if self.k_neighbors >= self.n_anchors:
            raise SgausError(f"k_neighbors ({self.k_neighbors}) must be smaller than n_anchors ({self.n_anchors})")
        if not 0 <= self.n_c <= self.k_neighbors:
            raise SgausError(f"n_c must lie in [0, k_neighbors], got {self.n_c}")
        check_choices(self)
        if self.anchor_layout not in ANCHOR_LAYOUTS:
            raise SgausError(f"anchor_layout must be one of {', '.join(ANCHOR_LAYOUTS)}, got {self.anchor_layout!r}")
        if self.anchor_points and (self.anchor_layout != "fps" or self.anchor_splat_hull):
            raise SgausError("anchor_points replaces the hull the anchors are sampled in: it takes neither "
                             "anchor_layout=lattice nor anchor_splat_hull")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SgausError(f"setting {f.name} must be a finite number, got {value}")
        if self.substeps > self.max_substeps:
            raise SgausError(f"substeps ({self.substeps}) exceeds max_substeps ({self.max_substeps})")
        if not 0.0 < self.lr_decay <= 1.0:
            raise SgausError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if not 0.0 <= self.lambda_dssim <= 1.0:
            raise SgausError(f"lambda_dssim must lie in [0, 1], got {self.lambda_dssim}")
        self.dense_offsets()
        if self.static_scale <= 0 or self.mass <= 0 or self.zeta0 < 0:
            raise SgausError("static_scale and mass must be positive and zeta0 non-negative")
        if self.contact_time <= 0:
            raise SgausError(f"contact_time must be a positive number of seconds, got {self.contact_time}")
        if not 0.0 <= self.init_restitution <= 1.0:
            raise SgausError(f"init_restitution must lie in [0, 1], got {self.init_restitution}")
        if self.global_fold_penalty < 0 or not 0.0 <= self.global_fold_tolerance < 1.0:
            raise SgausError(f"global_fold_penalty must not be negative and global_fold_tolerance must lie in [0, 1), "
                             f"got {self.global_fold_penalty} and {self.global_fold_tolerance}")
        if self.global_search:  # a bad search range is named before any stage runs, not after the static one
            self.global_search_settings().check()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dense_offsets(self) -> tuple[float, ...]:
        """dense_start_offsets as numbers: finite, distinct, within 7 decades."""
        text = str(self.dense_start_offsets)
        try:
            offsets = tuple(float(part) for part in text.split(","))
        except ValueError:
            raise SgausError(f"dense_start_offsets must be comma-separated numbers of decades, got {text!r}") from None
        if not all(math.isfinite(o) and abs(o) <= 7.0 for o in offsets) or len(set(offsets)) != len(offsets):
            raise SgausError(f"dense_start_offsets must be distinct finite shifts of at most 7 decades, got {text!r}")
        return offsets

    def checkpoints(self) -> CheckpointPolicy:
        """When a running stage saves its state; not part of any stage's settings (or key):
        checkpoints change when work is saved, never what is computed."""
        return CheckpointPolicy(self.checkpoint_s, self.checkpoint_every)

    # -- each stage's own settings (the stage's cache key is the hash of the whole dataclass)
    def static(self, image_scale: float) -> StaticSettings:
        return StaticSettings(iterations=self.static_iterations, scale=self.static_scale, image_scale=image_scale,
                              seed=self.seed, max_gaussians=self.static_max_gaussians,
                              views_per_iteration=self.static_views,
                              densify_every=self.static_densify_every or None,
                              densify_from=None if self.static_densify_from < 0 else self.static_densify_from,
                              densify_until=None if self.static_densify_until < 0 else self.static_densify_until,
                              grad_threshold=self.static_grad_threshold, prune_opacity=self.static_prune_opacity,
                              opacity_reset_every=self.static_opacity_reset_every)

    def anchors(self) -> AnchorSettings:
        points = str(Path(self.anchor_points).resolve()) if self.anchor_points else ""
        return AnchorSettings(self.n_anchors, self.k_neighbors, self.n_b, self.p_b, self.seed, self.anchor_splat_hull,
                              self.anchor_layout, points, file_digest(points) if points else "")

    def refine(self) -> RefineSettings:
        return RefineSettings(self.refine_iterations, self.refine_lr, self.seed)

    def physics(self) -> PhysicsSettings:
        return PhysicsSettings(self.n_c, self.p_k, self.force_law, self.zeta0, self.mass, self.friction_mode,
                               self.spring_stiffness, self.init_log_stiffness, self.init_kappa,
                               self.init_friction_logit, self.soft_vector, springs=self.springs,
                               contact=self.contact, contact_time=self.contact_time,
                               init_restitution=self.init_restitution, contact_floor=self.contact_floor)

    def velocity(self, frames: int) -> VelocitySettings:
        """``frames``: the frames before contact, resolved by the caller (velocity_frames or detection)."""
        return VelocitySettings(frames, self.velocity_iterations, self.velocity_lr, self.velocity_substeps,
                                self.substeps, self.seed, self.physics(), self.velocity_cameras)

    def global_search_settings(self) -> GlobalSearchSettings:
        return GlobalSearchSettings(
            (self.global_log_k_min, self.global_log_k_max), self.global_grid_points, self.global_cma_generations,
            self.global_cma_population, search_friction=True, search_kappa=self.soft_vector,
            search_zeta0=self.global_search_zeta0, zeta0_points=self.global_zeta0_points,
            contact_offset_max=self.global_contact_offset_max, contact_offset_min=self.global_contact_offset_min,
            offset_points=self.global_offset_points,
            regions=self.global_regions, region_generations=self.global_region_generations,
            cameras=self.global_cameras, silhouette_weight=self.silhouette_weight, lambda_dssim=self.lambda_dssim,
            fold_penalty=self.global_fold_penalty, fold_tolerance=self.global_fold_tolerance,
            substeps=self.substeps, max_substeps=self.max_substeps, seed=self.seed, physics=self.physics())

    def dynamic(self, single_k: bool | None = None) -> DynamicSettings:
        return DynamicSettings(
            self.iterations, self.lr_stiffness, self.lr_kappa, self.lr_friction, self.lr_decay, self.grad_clip,
            self.lambda_dssim, self.truncate_per_frame, self.cameras_per_frame,
            self.single_k if single_k is None else single_k, self.substeps, self.max_substeps,
            self.stiffness_regions, self.patience, self.seed, self.physics(),
            substeps_raise_every=self.substeps_raise_every, start_offsets=self.dense_offsets())


PRESETS: dict[str, dict] = {
    # the default on a CPU: fewer anchors and iterations, downscaled images
    "fast": {},
    # the authors' settings (their public code, Colmar-zlicheng/Spring-Gaus, and paper Sec. 5)
    "paper": dict(
        image_size=0, static_iterations=30000, static_scale=0.003, static_max_gaussians=200000, static_views=1,
        static_densify_every=100, static_densify_from=500, static_densify_until=15000, static_grad_threshold=0.0002,
        static_prune_opacity=0.005, static_opacity_reset_every=3000,
        velocity_cameras=1, n_anchors=2048, k_neighbors=256, n_c=16, n_b=16, substeps=100, refine_iterations=3000,
        velocity_iterations=100, velocity_lr=1e-3, iterations=300, substeps_raise_every=100, lr_stiffness=1e-3,
        lr_kappa=1e-3, lr_friction=1e-3, truncate_per_frame=True, spring_stiffness="anchor", springs="directed",
        global_regions=4,
    ),
    # a tiny configuration for tests and smoke runs
    "tiny": dict(
        image_size=48, static_iterations=150, static_max_gaussians=3000, n_anchors=96, k_neighbors=16,
        n_c=4, n_b=4, substeps=40, refine_iterations=20, velocity_iterations=10, iterations=3,
        global_grid_points=8, global_cma_generations=1, global_cma_population=4, global_cameras=2,
        global_offset_points=3, global_regions=0,
        stiffness_regions=4,
    ),
}

_FIELDS = {f.name: f for f in dataclasses.fields(FitSettings)}
# settings that decide when work is saved, never what is computed: part of no stage's key (nor of a
# suite task's), so changing them never discards a stage or a checkpoint
NOT_IN_KEYS = ("checkpoint_s", "checkpoint_every")


def _coerce(name: str, value):
    if name not in _FIELDS:
        raise SgausError(f"unknown setting {name!r} (known: {', '.join(sorted(_FIELDS))})")
    default = getattr(FitSettings(), name)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SgausError(f"setting {name} must be true or false, got {value!r}")
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise SgausError(f"setting {name} must be a {type(default).__name__}, got {value!r}") from None


def make_settings(preset: str = "fast", config: str | Path | None = None, overrides: dict | None = None) -> FitSettings:
    """Preset, then YAML file, then explicit overrides; validated."""
    if preset not in PRESETS:
        raise SgausError(f"unknown preset {preset!r} (choose {', '.join(PRESETS)})")
    values = dict(PRESETS[preset])
    if config is not None:
        from_file = read_yaml(Path(config))
        for k, v in from_file.items():  # a malformed or non-finite value is named with its file
            try:
                value = _coerce(k, v)
            except SgausError as err:
                raise SgausError(f"{config}: {err}") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise SgausError(f"{config}: setting {k} must be a finite number, got {v}")
        values.update(from_file)
    values.update(overrides or {})
    return FitSettings(**{k: _coerce(k, v) for k, v in values.items()}).validate()


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict:
    """``["iterations=10", "single_k=true"]`` -> dict (values coerced later)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SgausError(f"--set expects name=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_settings(path: Path) -> FitSettings:
    """The settings saved by :func:`save_settings`, checked like any other (one line naming the file)."""
    path = Path(path)
    doc = read_yaml(path)
    if not isinstance(doc.get("settings"), dict):
        raise SgausError(f"{path}: expected a mapping with 'settings'")
    try:
        return make_settings("fast", overrides=doc["settings"])
    except SgausError as err:
        raise SgausError(f"{path}: {err}") from None


def save_settings(path: Path, settings: FitSettings, extra: dict | None = None) -> None:
    from pipeline.data.files import write_text

    data = {"settings": settings.to_dict(), **(extra or {})}
    write_text(path, yaml.safe_dump(data, sort_keys=False))
