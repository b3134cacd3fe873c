"""Stage 4: one global initial velocity v0, fitted on the frames before the first ground contact
with the physics at its starting values (before contact the springs stay near rest)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.fit.physics import PhysicsSettings
from render import l1_dssim_loss
from taichi_sim.binding import Binding, apply_binding
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_rollout import Integrator, SpringState, rollout


@dataclass(frozen=True)
class VelocitySettings:
    """frames: frames 0..frames-1 used (resolved: the frames before contact); iterations, lr: Adam;
    substeps: substeps per frame while fitting v0; seed: the camera choice; physics: the model's
    constants and starting values."""

    frames: int = 2
    iterations: int = 60
    lr: float = 0.05
    substeps: int = 20
    seed: int = 0
    physics: PhysicsSettings = field(default_factory=PhysicsSettings)


@dataclass
class Velocity:
    v0: torch.Tensor  # [3]
    frames: int
    losses: list


def run(g: Gaussians, model: SpringModel, binding: Binding, frames: FrameCache, frame_dt: float,
        settings: VelocitySettings, progress: bool) -> Velocity:
    n_vel = settings.frames
    v0 = torch.zeros(3, requires_grad=True)
    params = settings.physics.initial_params(model.n_anchors)
    integrator = Integrator(frame_dt=frame_dt, substeps=settings.substeps)
    opt = torch.optim.Adam([v0], lr=settings.lr)
    cams = frames.cameras
    ncam = min(len(cams), 2)
    gen = random.Random(settings.seed + 1)
    losses = []
    bar = tqdm(range(settings.iterations), desc="velocity", disable=not progress, leave=False)
    for _ in bar:
        positions = rollout(model, params, SpringState(model.rest_positions, v0), n_vel - 1, integrator).positions
        means = apply_binding(binding, positions)
        loss = 0.0
        for f in range(1, n_vel):
            cs = gen.sample(range(len(cams)), ncam)
            loss = loss + l1_dssim_loss(g.render(cams[cs], means[f]), frames.rgb(f, cs), 0.2)
        loss = loss / (n_vel - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", v0=",".join(f"{x:.2f}" for x in v0.tolist()))
    return Velocity(v0.detach(), n_vel, losses)
