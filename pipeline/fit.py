"""`sgaus fit`: from a multi-view video to a simulatable asset (paper Sec. 4).

Stages, each saved under RUN/stages/<name>/ and keyed by a hash of its inputs and settings
(pipeline/stages.py), so ``resume=True`` continues an interrupted fit and never reuses stale work:

1. static    3D Gaussians fitted to frame 0 of every view (Sec. 4.1)
2. anchors   N_A anchors through the object's volume, k-nearest springs, binding weights (Eq. 4-6, 15)
3. refine    Gaussians at their bound positions; colour, opacity, per-Gaussian scale refined
4. velocity  the initial velocity v0, fitted on the frames before the first ground contact
5. dynamic   per-anchor stiffness, soft-vector kappa and ground friction, fitted through the
             differentiable spring-mass simulation by rendering and comparing with the video (Eq. 18)

The result is assembled into RUN/asset/ (pipeline/asset.py), with RUN/settings.yaml and RUN/loss.png.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.asset import Asset, save_asset
from pipeline.atomic import atomic_file, write_json
from pipeline.cameras import Cameras
from pipeline.datasets import VideoDataset, load_dataset
from pipeline.gaussians import Gaussians, load_ply, save_ply
from pipeline.settings import FitSettings, save_settings
from pipeline.stages import RunDir, hash_files, hash_key
from render import l1_dssim_loss, rasterization
from taichi_sim.binding import Binding, apply_binding, compute_binding
from taichi_sim.spring_mass import (
    SimConfig,
    SimulationUnstable,
    SpringModel,
    build_model,
    rollout,
)

STAGES = ("static", "anchors", "refine", "velocity", "dynamic")
SINGLE_K_STAGE = "dynamic_single_k"


# ----------------------------------------------------------------------------- scene facts
@dataclasses.dataclass
class SceneFacts:
    """What the fit takes as known: gravity, ground plane, frame timing, the fitted frames."""

    gravity: tuple
    ground_point: tuple | None
    ground_normal: tuple
    frame_dt: float
    fit_frames: int
    contact_frame: int | None
    n_frames: int


def _vec(v, name):
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, got {v!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must be three numbers, got {v!r}")
    return out


def scene_facts(ds: VideoDataset, settings: FitSettings, gravity=None, ground=None) -> SceneFacts:
    scene = ds.scene or {}
    if gravity is None:
        gravity = scene.get("gravity")
    if gravity is None:
        raise ValueError(f"{ds.root}: gravity is unknown (no scene.json): give --gravity x,y,z")
    gravity = _vec(gravity, "gravity")
    if ground is None and "ground" in scene:
        ground = (scene["ground"]["point"], scene["ground"]["normal"])
    if ground is None:
        raise ValueError(f"{ds.root}: the ground plane is unknown (no scene.json): give --ground x,y,z,nx,ny,nz")
    ground_point, ground_normal = _vec(ground[0], "ground point"), _vec(ground[1], "ground normal")
    n = np.linalg.norm(ground_normal)
    if n == 0:
        raise ValueError("the ground normal must not be zero")
    ground_normal = tuple(float(c) / n for c in ground_normal)
    frame_dt = ds.frame_dt or scene.get("frame_dt")
    if not frame_dt or frame_dt <= 0:
        raise ValueError(f"{ds.root}: the frame time step is unknown (no 'time' in the dataset)")
    fit_frames = settings.fit_frames or (scene.get("split", {}).get("fit", [0, 0])[1]) or min(20, ds.n_frames)
    if fit_frames < 2 or fit_frames > ds.n_frames:
        raise ValueError(f"cannot fit {fit_frames} frames of a video with {ds.n_frames} frames (need 2 or more)")
    return SceneFacts(gravity, ground_point, ground_normal, float(frame_dt), int(fit_frames),
                      scene.get("contact_frame"), ds.n_frames)


def sim_config(settings: FitSettings, facts: SceneFacts, substeps: int | None = None) -> SimConfig:
    return SimConfig(
        k_neighbors=settings.k_neighbors,
        n_c=settings.n_c,
        p_k=settings.p_k,
        force_law=settings.force_law,
        zeta0=settings.zeta0,
        mass=settings.mass,
        gravity=facts.gravity,
        ground_point=facts.ground_point,
        ground_normal=facts.ground_normal,
        frame_dt=facts.frame_dt,
        substeps=substeps or settings.substeps,
        max_substeps=settings.max_substeps,
    )


# ----------------------------------------------------------------------------- helpers
def image_scale(ds: VideoDataset, settings: FitSettings) -> float:
    side = max(ds.cameras.width, ds.cameras.height)
    return 1.0 if settings.image_size <= 0 or settings.image_size >= side else settings.image_size / side


def render_rgb(g: Gaussians, means: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """RGB renders [C,H,W,3] of Gaussians ``g`` placed at ``means`` (black background)."""
    rgb, _alpha, _depth = rasterization(
        means, g.scales(), g.opacities(), g.rgb(), cams.viewmats, cams.Ks, cams.width, cams.height
    )
    return rgb


class FrameCache:
    """Downscaled RGB frames of every camera, loaded on first use (never the whole video at once
    unless it is used)."""

    def __init__(self, ds: VideoDataset, scale: float):
        self.ds, self.scale, self._frames = ds, scale, {}
        self.cameras = ds.cameras_at(scale)

    def rgba(self, frame: int) -> torch.Tensor:  # [C,H,W,4]
        if frame not in self._frames:
            self._frames[frame] = self.ds.frame(frame, scale=self.scale)
        return self._frames[frame]

    def rgb(self, frame: int, cams: list[int] | None = None) -> torch.Tensor:
        img = self.rgba(frame)
        img = img if cams is None else img[cams]
        return img[..., :3] * img[..., 3:4] if img.shape[-1] == 4 else img  # composite on black


def _clip_grads(params, max_norm: float) -> None:
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_([p], max_norm)


# ----------------------------------------------------------------------------- anchors
def carve_visual_hull(points: torch.Tensor, frames: FrameCache, frame: int = 0, threshold: float = 0.5) -> torch.Tensor:
    """Boolean mask [P]: points that project inside the object's mask in every view."""
    from pipeline.static_recon import lookup_pixels

    alpha = frames.rgba(frame)[..., 3:4]  # [C,H,W,1]
    values, inside = lookup_pixels(alpha, frames.cameras, points)
    return ((values[..., 0] > threshold) & inside).all(0)


def farthest_point_sampling(points: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` points chosen by farthest-point sampling (even coverage of the volume)."""
    n = min(n, len(points))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.empty(n, dtype=torch.long)
    idx[0] = torch.randint(len(points), (1,), generator=gen)
    dist = torch.full((len(points),), float("inf"))
    for i in range(1, n):
        dist = torch.minimum(dist, ((points - points[idx[i - 1]]) ** 2).sum(-1))
        idx[i] = torch.argmax(dist)
    return idx


def sample_anchors(g: Gaussians, frames: FrameCache, n_anchors: int, seed: int = 0, resolution: int = 48) -> torch.Tensor:
    """N_A anchors through the object's volume (Eq. 4): the inside of the visual hull carved
    from frame 0's masks, restricted to the Gaussians' bounding box, plus the Gaussian centres,
    thinned by farthest-point sampling."""
    keep = g.opacities() > 0.05
    centres = g.means[keep].detach() if keep.sum() > 0 else g.means.detach()
    lo, hi = centres.min(0).values, centres.max(0).values
    pad = 0.02 * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    step = (hi - lo).max() / resolution
    axes = [torch.arange(float(lo[i]), float(hi[i]) + 1e-9, float(step)) for i in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    gen = torch.Generator().manual_seed(seed)
    grid = grid + (torch.rand(grid.shape, generator=gen) - 0.5) * step * 0.5
    interior = grid[carve_visual_hull(grid, frames)]
    candidates = torch.cat([interior, centres], 0)
    if len(candidates) < n_anchors:
        raise ValueError(
            f"only {len(candidates)} candidate anchor points were found inside the object; ask for fewer anchors"
        )
    return candidates[farthest_point_sampling(candidates, n_anchors, seed)].contiguous()


# ----------------------------------------------------------------------------- contact detection
def detect_contact_frame(frames: FrameCache, facts: SceneFacts, g: Gaussians, resolution: int = 32) -> int:
    """First frame whose visual hull reaches the ground plane (within two voxels)."""
    n = torch.tensor(facts.ground_normal)
    p0 = torch.tensor(facts.ground_point)
    centres = g.means.detach()
    lo, hi = centres.min(0).values, centres.max(0).values
    size = float((hi - lo).max())
    # the box spans from the object down to the ground and a little around it
    height = float(((centres - p0) @ n).max())
    lo2 = torch.minimum(lo, centres.mean(0) - n * height) - 0.5 * size
    hi2 = torch.maximum(hi, centres.mean(0)) + 0.5 * size
    step = float((hi2 - lo2).max()) / resolution
    axes = [torch.arange(float(lo2[i]), float(hi2[i]) + 1e-9, step) for i in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    for f in range(facts.n_frames):
        inside = carve_visual_hull(grid, frames, frame=f)
        if inside.any() and float(((grid[inside] - p0) @ n).min()) <= 2.0 * step:
            return f
    return facts.n_frames


# ----------------------------------------------------------------------------- stage bodies
def stage_static(ds: VideoDataset, settings: FitSettings, scale: float, progress: bool) -> Gaussians:
    from pipeline.static_recon import StaticSettings, reconstruct_static

    st = StaticSettings(
        iterations=settings.static_iterations,
        scale=settings.static_scale,
        image_scale=scale,
        seed=settings.seed,
        max_gaussians=settings.static_max_gaussians,
    )
    return reconstruct_static(ds, st, progress=progress)


def stage_refine(g: Gaussians, means0: torch.Tensor, frames: FrameCache, settings: FitSettings, progress: bool) -> tuple[Gaussians, list]:
    """Refine colour, opacity and a per-Gaussian scale with centres fixed at their bound positions."""
    g = g.detach_clone()
    g.means = means0.detach().clone()
    if g.log_scales.ndim == 1:
        g.log_scales = g.log_scales.clone()
    params = [g.log_scales, g.colors, g.opacity_logits]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=settings.refine_lr)
    target = frames.rgb(0)
    cams = frames.cameras
    gen = random.Random(settings.seed)
    losses = []
    bar = tqdm(range(settings.refine_iterations), desc="refine", disable=not progress, leave=False)
    for _ in bar:
        c = gen.randrange(len(cams))
        loss = l1_dssim_loss(render_rgb(g, g.means, cams[c]), target[c : c + 1], 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    for p in params:
        p.requires_grad_(False)
    return g, losses


def _physics_tensors(settings: FitSettings, n_anchors: int):
    """Initial (log10 stiffness [N], kappa, friction logit) of the simulation."""
    log_k = torch.full((n_anchors,), settings.init_log_stiffness, dtype=torch.float32)
    # without the soft vector every spring weighs 1: softplus(kappa) -> 0 (Eq. 8), kappa not learned
    kappa = torch.tensor(settings.init_kappa if settings.soft_vector else -40.0, dtype=torch.float32)
    phi = torch.tensor(settings.init_friction_logit, dtype=torch.float32)
    return log_k, kappa, phi


def stage_velocity(g: Gaussians, model: SpringModel, binding: Binding, frames: FrameCache, n_vel: int,
                   settings: FitSettings, progress: bool) -> tuple[torch.Tensor, list]:
    """Fit one global initial velocity on frames 0..n_vel-1 (before contact), stiffness fixed."""
    v0 = torch.zeros(3, requires_grad=True)
    log_k, kappa, phi = _physics_tensors(settings, len(model.rest_positions))
    opt = torch.optim.Adam([v0], lr=settings.velocity_lr)
    cams = frames.cameras
    ncam = min(len(cams), 2)
    gen = random.Random(settings.seed + 1)
    losses = []
    bar = tqdm(range(settings.velocity_iterations), desc="velocity", disable=not progress, leave=False)
    for _ in bar:
        positions, _ = rollout(model, model.rest_positions, v0, log_k, kappa, phi, n_vel - 1,
                               substeps=settings.velocity_substeps)
        means = apply_binding(binding, positions)
        loss = 0.0
        for f in range(1, n_vel):
            cs = gen.sample(range(len(cams)), ncam)
            loss = loss + l1_dssim_loss(render_rgb(g, means[f], cams[cs]), frames.rgb(f, cs), 0.2)
        loss = loss / (n_vel - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", v0=",".join(f"{x:.2f}" for x in v0.tolist()))
    return v0.detach(), losses


def stage_dynamic(g: Gaussians, model: SpringModel, binding: Binding, v0: torch.Tensor, frames: FrameCache,
                  n_fit: int, settings: FitSettings, progress: bool, desc: str = "dynamic") -> dict:
    """Fit per-anchor log10 stiffness, kappa and friction through the simulation (Eq. 18 loss)."""
    n = len(model.rest_positions)
    _init_k, kappa, phi = _physics_tensors(settings, n)
    # log10 k_i = base + delta_i: the shared base takes the summed gradient of every anchor and
    # moves the overall stiffness quickly; the per-anchor deltas (absent with single_k) then
    # capture heterogeneity. Same model as one free value per anchor, better conditioned.
    base = torch.tensor(settings.init_log_stiffness, dtype=torch.float32, requires_grad=True)
    delta = torch.zeros(n, dtype=torch.float32, requires_grad=not settings.single_k)
    learn = [base, phi] + ([delta] if not settings.single_k else []) + ([kappa] if settings.soft_vector else [])
    phi.requires_grad_(True)
    kappa.requires_grad_(settings.soft_vector)
    groups = [{"params": [base], "lr": settings.lr_stiffness}, {"params": [phi], "lr": settings.lr_friction}]
    if not settings.single_k:
        groups.append({"params": [delta], "lr": settings.lr_stiffness})
    if settings.soft_vector:
        groups.append({"params": [kappa], "lr": settings.lr_kappa})
    opt = torch.optim.Adam(groups)
    # exponential decay to lr_decay x the initial rates over the run, so Adam settles instead of
    # oscillating around the optimum by about one learning rate
    gamma = settings.lr_decay ** (1.0 / max(settings.iterations - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)

    def log_stiffness():
        return (base + delta).clamp(0.0, 7.0)

    cams = frames.cameras
    gen = random.Random(settings.seed + 2)
    substeps = settings.substeps
    losses: list[float] = []
    x_rest = model.rest_positions

    def frame_loss(f, means_f):
        cs = gen.sample(range(len(cams)), min(settings.cameras_per_frame, len(cams)))
        return l1_dssim_loss(render_rgb(g, means_f, cams[cs]), frames.rgb(f, cs), settings.lambda_dssim)

    def step():
        _clip_grads(learn, settings.grad_clip)
        opt.step()
        opt.zero_grad()

    bar = tqdm(range(settings.iterations), desc=desc, disable=not progress, leave=False)
    it = 0
    m = None
    while it < settings.iterations:
        if m is None or m.config.substeps != substeps:
            cfg = dataclasses.replace(model.config, substeps=substeps)
            m = SpringModel(model.rest_positions, model.neighbors, model.rest_length, cfg)
        try:
            total = 0.0
            if settings.truncate_per_frame:
                x, v = x_rest, v0
                for f in range(1, n_fit):
                    pos, v = rollout(m, x.detach(), v.detach(), log_stiffness(), kappa, phi, 1)
                    loss = frame_loss(f, apply_binding(binding, pos[1]))
                    loss.backward()
                    step()
                    x = pos[1]
                    total += float(loss.detach())
                total /= n_fit - 1
            else:
                pos, _ = rollout(m, x_rest, v0, log_stiffness(), kappa, phi, n_fit - 1)
                means = apply_binding(binding, pos)
                loss = sum(frame_loss(f, means[f]) for f in range(1, n_fit)) / (n_fit - 1)
                opt.zero_grad()
                loss.backward()
                step()
                total = float(loss.detach())
        except SimulationUnstable as err:
            opt.zero_grad()
            if substeps + 50 > settings.max_substeps:
                raise ValueError(
                    f"the fit became unstable at {substeps} substeps per frame ({err}); "
                    f"lower init_log_stiffness or raise max_substeps"
                ) from None
            substeps += 50
            bar.write(f"{desc}: simulation unstable, retrying with {substeps} substeps per frame")
            continue
        if not math.isfinite(total):
            raise ValueError(f"the {desc} loss became {total} at iteration {it}; the fit is unstable")
        losses.append(total)
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", log_k=f"{float(log_stiffness().detach().mean()):.2f}", substeps=substeps)
        it += 1
    bar.close()
    return {
        "log_stiffness": log_stiffness().detach().clone(),
        "kappa": kappa.detach().clone(),
        "friction_logit": phi.detach().clone(),
        "substeps": substeps,
        "losses": losses,
    }


# ----------------------------------------------------------------------------- orchestration
class Fitter:
    """Runs (or reuses) the stages of one fit. Each ``run_*`` method returns the stage's
    output, loading it from RUN/stages when its key matches and resume is on."""

    def __init__(self, data, out, settings: FitSettings, resume: bool = False, gravity=None, ground=None,
                 progress: bool = True, log=print):
        self.ds = load_dataset(data)
        self.settings = settings
        self.run = RunDir(out, resume=resume)
        self.facts = scene_facts(self.ds, settings, gravity, ground)
        self.scale = image_scale(self.ds, settings)
        self.frames = FrameCache(self.ds, self.scale)
        self.progress, self.log = progress, log
        self.ran: list[str] = []
        self.run.update_meta(data=str(Path(data).resolve()), facts=dataclasses.asdict(self.facts))
        self.data_key = hash_files(p for p in self.ds.root.rglob('*') if p.is_file() and not p.name.startswith('.'))

    # -- 1
    def run_static(self) -> tuple[Gaussians, str]:
        s = self.settings
        key = hash_key("static", self.data_key, self.scale, s.subset("static_iterations", "static_scale", "static_max_gaussians", "seed"))
        hit = self.run.cached("static", key)
        if hit:
            return load_ply(hit / "gaussians.ply"), key
        self.log("stage 1/5: static reconstruction of frame 0")
        g = stage_static(self.ds, s, self.scale, self.progress)
        with self.run.write_stage("static", key, {"gaussians": len(g)}) as d:
            save_ply(d / "gaussians.ply", g)
        self.ran.append("static")
        return g, key

    # -- 2
    def run_anchors(self, g: Gaussians, parent: str) -> tuple[SpringModel, Binding, str]:
        s = self.settings
        key = hash_key("anchors", parent, s.subset("n_anchors", "k_neighbors", "n_b", "p_b", "seed"))
        cfg = sim_config(s, self.facts)
        hit = self.run.cached("anchors", key)
        if hit:
            a = np.load(hit / "anchors.npz")
            model = SpringModel(torch.from_numpy(a["rest_positions"]), torch.from_numpy(a["neighbors"]).long(),
                                torch.from_numpy(a["rest_length"]), cfg)
            return model, Binding(torch.from_numpy(a["binding_index"]).long(), torch.from_numpy(a["binding_weight"])), key
        self.log(f"stage 2/5: {s.n_anchors} anchors through the volume, {s.k_neighbors} springs each")
        anchors = sample_anchors(g, self.frames, s.n_anchors, s.seed)
        model = build_model(anchors, cfg)
        binding = compute_binding(g.means.detach(), anchors, s.n_b, s.p_b)
        with self.run.write_stage("anchors", key, {"anchors": len(anchors)}) as d:
            with atomic_file(d / "anchors.npz", suffix=".npz") as f:
                np.savez(f, rest_positions=anchors.numpy(), neighbors=model.neighbors.numpy(),
                         rest_length=model.rest_length.numpy(), binding_index=binding.index.numpy(),
                         binding_weight=binding.weight.numpy())
        self.ran.append("anchors")
        return model, binding, key

    # -- 3
    def run_refine(self, g: Gaussians, model: SpringModel, binding: Binding, parent: str) -> tuple[Gaussians, str]:
        s = self.settings
        key = hash_key("refine", parent, s.subset("refine_iterations", "refine_lr", "seed"))
        hit = self.run.cached("refine", key)
        if hit:
            return load_ply(hit / "gaussians.ply"), key
        self.log("stage 3/5: refining the Gaussians at their bound positions")
        means0 = apply_binding(binding, model.rest_positions)
        g2, losses = stage_refine(g, means0, self.frames, s, self.progress)
        with self.run.write_stage("refine", key, {"losses": losses}) as d:
            save_ply(d / "gaussians.ply", g2)
        self.ran.append("refine")
        return g2, key

    def velocity_frames(self, g: Gaussians) -> int:
        s = self.settings
        if s.velocity_frames:
            n = s.velocity_frames
        else:
            contact = self.facts.contact_frame
            if contact is None:
                contact = detect_contact_frame(self.frames, self.facts, g)
                self.log(f"first ground contact detected at frame {contact}")
            n = contact
        return int(max(2, min(n, self.facts.fit_frames)))

    # -- 4
    def run_velocity(self, g, model, binding, parent) -> tuple[torch.Tensor, str]:
        s = self.settings
        n_vel = self.velocity_frames(g)
        key = hash_key("velocity", parent, n_vel, dataclasses.asdict(model.config),
                       s.subset("velocity_iterations", "velocity_lr", "velocity_substeps", "init_log_stiffness", "init_kappa",
                                "init_friction_logit", "soft_vector", "single_k", "seed"))
        hit = self.run.cached("velocity", key)
        if hit:
            return torch.tensor(json.loads((hit / "velocity.json").read_text())["v0"]), key
        self.log(f"stage 4/5: initial velocity from frames 0..{n_vel - 1}")
        v0, losses = stage_velocity(g, model, binding, self.frames, n_vel, s, self.progress)
        with self.run.write_stage("velocity", key) as d:
            write_json(d / "velocity.json", {"v0": v0.tolist(), "frames": n_vel, "losses": losses})
        self.ran.append("velocity")
        return v0, key

    # -- 5
    def run_dynamic(self, g, model, binding, v0, parent, single_k: bool | None = None) -> tuple[dict, str]:
        s = self.settings if single_k is None else dataclasses.replace(self.settings, single_k=single_k)
        name = SINGLE_K_STAGE if (single_k and not self.settings.single_k) else "dynamic"
        key = hash_key(name, parent, self.facts.fit_frames, s.subset(
            "iterations", "lr_stiffness", "lr_kappa", "lr_friction", "lr_decay", "grad_clip", "lambda_dssim",
            "init_log_stiffness", "init_kappa", "init_friction_logit", "truncate_per_frame",
            "cameras_per_frame", "soft_vector", "single_k", "seed", "max_substeps"))
        hit = self.run.cached(name, key)
        if hit:
            r = json.loads((hit / "physics.json").read_text())
            return {"log_stiffness": torch.tensor(r["log_stiffness"]), "kappa": torch.tensor(r["kappa"]),
                    "friction_logit": torch.tensor(r["friction_logit"]), "substeps": r["substeps"],
                    "losses": r["losses"]}, key
        label = "single k" if s.single_k else "per-anchor k"
        self.log(f"stage 5/5: stiffness ({label}), soft vector and friction on frames 0..{self.facts.fit_frames - 1}")
        r = stage_dynamic(g, model, binding, v0, self.frames, self.facts.fit_frames, s, self.progress,
                          desc="dynamic" if name == "dynamic" else "single-k")
        with self.run.write_stage(name, key) as d:
            write_json(d / "physics.json", {"log_stiffness": r["log_stiffness"].tolist(), "kappa": float(r["kappa"]),
                                            "friction_logit": float(r["friction_logit"]), "substeps": r["substeps"],
                                            "losses": r["losses"]})
        self.ran.append(name)
        return r, key

    def upstream(self):
        g, k1 = self.run_static()
        model, binding, k2 = self.run_anchors(g, k1)
        g2, k3 = self.run_refine(g, model, binding, k2)
        v0, k4 = self.run_velocity(g2, model, binding, k3)
        return g2, model, binding, v0, k4

    def make_asset(self, g2, model, binding, v0, r) -> Asset:
        cfg = dataclasses.replace(model.config, substeps=r["substeps"])
        return Asset(
            gaussians=g2,
            model=SpringModel(model.rest_positions, model.neighbors, model.rest_length, cfg),
            binding=binding,
            log_stiffness=r["log_stiffness"].float(),
            kappa=r["kappa"].float(),
            friction_logit=r["friction_logit"].float(),
            v0=v0.float(),
            info={"data": str(self.ds.root.resolve()), "fit_frames": self.facts.fit_frames,
                  "n_frames": self.facts.n_frames, "image_scale": self.scale,
                  "single_k": self.settings.single_k, "soft_vector": self.settings.soft_vector},
        )


def fit(data, out, settings: FitSettings, resume: bool = False, gravity=None, ground=None,
        progress: bool = True, log=print) -> Path:
    """Run every stage (reusing matching ones with ``resume``) and write RUN/asset."""
    f = Fitter(data, out, settings, resume, gravity, ground, progress, log)
    g2, model, binding, v0, k4 = f.upstream()
    r, _ = f.run_dynamic(g2, model, binding, v0, k4)
    save_asset(f.run.root / "asset", f.make_asset(g2, model, binding, v0, r))
    save_settings(f.run.root / "settings.yaml", settings, {"data": str(Path(data).resolve())})
    write_loss_plot(f.run)
    f.run.update_meta(stages_run=f.ran)
    return f.run.root


def write_loss_plot(run: RunDir) -> Path:
    """RUN/loss.png: the loss of every optimisation stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for name, fname in [("refine", "stage.json"), ("velocity", "velocity.json"), ("dynamic", "physics.json")]:
        p = run.stage_dir(name) / fname
        if p.exists():
            losses = json.loads(p.read_text()).get("losses") or []
            if losses:
                curves.append((name, losses))
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4 * max(1, len(curves)), 3), squeeze=False)
    for ax, (name, losses) in zip(axes[0], curves):
        ax.plot(np.arange(1, len(losses) + 1), losses)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run.root / "loss.png"
    with atomic_file(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
