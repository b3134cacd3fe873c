"""Stage 4: one global initial velocity v0, fitted on the frames before the first ground contact
with the physics at its starting values (before contact the springs stay near rest)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.data.schema import matrix, read_json
from pipeline.fit.checkpoint import Checkpoint, rng_state, set_rng_state
from pipeline.fit.physics import PhysicsSettings
from render import l1_dssim_loss
from taichi_sim.binding import Binding, apply_binding
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import Integrator, SpringState, rollout


@dataclass(frozen=True)
class VelocitySettings:
    """frames: frames 0..frames-1 used (resolved: the frames before contact); iterations, lr: Adam;
    substeps: substeps per frame while fitting v0; target_substeps: those of the dynamic stage,
    which v0 is corrected for; seed: the camera choice; physics: the model's constants and
    starting values; cameras: cameras rendered per frame and iteration (drawn at random)."""

    frames: int = 2
    iterations: int = 60
    lr: float = 0.05
    substeps: int = 20
    target_substeps: int = 60
    seed: int = 0
    physics: PhysicsSettings = field(default_factory=PhysicsSettings)
    cameras: int = 2


@dataclass
class Velocity:
    v0: torch.Tensor  # [3]
    frames: int
    losses: list


def run(g: Gaussians, model: SpringModel, binding: Binding, frames: FrameCache, frame_dt: float,
        settings: VelocitySettings, progress: bool, params: SpringParams | None = None,
        checkpoint: Checkpoint | None = None) -> Velocity:
    """v0 fitted on frames 0..settings.frames-1 with the physics ``params`` (default: the settings'
    starting values; a fitted asset's own when its v0 is refitted on another recording);
    ``checkpoint`` saves the loop's state and restores it on resume (pipeline/fit/checkpoint.py)."""
    checkpoint = checkpoint or Checkpoint.disabled("velocity")
    n_vel = settings.frames
    v0 = torch.zeros(3, requires_grad=True)
    params = settings.physics.initial_params(model.n_anchors) if params is None else params
    if model.penalty_ground:
        # the frames before the first contact are a free fall, fitted at few substeps: fewer than a
        # penalty ground's contact needs (taichi_sim.spring_rollout.PENALTY_MIN_SUBSTEPS), and the
        # projection ground stops an anchor that reaches it just as well
        model = model.with_physics(contact="projection")
    integrator = Integrator(frame_dt=frame_dt, substeps=settings.substeps)
    opt = torch.optim.Adam([v0], lr=settings.lr)
    cams = frames.cameras
    ncam = min(len(cams), settings.cameras)
    gen = random.Random(settings.seed + 1)
    losses = []
    first = 0
    saved = checkpoint.restore()
    if saved is not None:
        first, losses = saved["iteration"], list(saved["losses"])
        with torch.no_grad():
            v0.copy_(saved["v0"])
        opt.load_state_dict(saved["adam"])
        set_rng_state(gen, saved["rng"])

    def state() -> dict:
        return {"iteration": len(losses), "v0": v0.detach().clone(), "adam": opt.state_dict(), "rng": rng_state(gen),
                "losses": list(losses)}

    bar = tqdm(range(first, settings.iterations), desc="velocity", disable=not progress, leave=False, initial=first,
               total=settings.iterations)
    for it in bar:
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
        checkpoint.step(it + 1, state)
    return Velocity(for_substeps(v0.detach(), model.gravity, frame_dt, settings.substeps, settings.target_substeps),
                    n_vel, losses)


def load_v0(path: Path) -> torch.Tensor:
    """The initial velocity [3] saved in velocity.json, checked (three finite numbers)."""
    return torch.from_numpy(matrix(read_json(path, dict).get("v0"), ((3,),), "'v0'", path)).float()


def for_substeps(v0: torch.Tensor, gravity, frame_dt: float, fitted: int, target: int) -> torch.Tensor:
    """The initial velocity that gives, at ``target`` substeps per frame, the free flight fitted at
    ``fitted`` substeps: semi-implicit Euler puts a body at x0 + v0 t + g t^2 / 2 + g t dt / 2, so
    the same frames need v0 + g (dt_fitted - dt_target) / 2."""
    g = torch.tensor(gravity, dtype=v0.dtype)
    return v0 + 0.5 * g * (frame_dt / fitted - frame_dt / target)
