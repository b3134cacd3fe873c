"""Stage 3: the Gaussians placed at their bound positions at frame 0; colour, opacity and a
per-Gaussian scale refined on frame 0 (centres fixed)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.fit.checkpoint import Checkpoint, rng_state, set_rng_state
from render import l1_dssim_loss


@dataclass(frozen=True)
class RefineSettings:
    """iterations: Adam steps on frame 0; lr: their learning rate; seed: the camera order."""

    iterations: int = 200
    lr: float = 0.01
    seed: int = 0


@dataclass
class Refined:
    gaussians: Gaussians
    losses: list


def run(g: Gaussians, means0: torch.Tensor, frames: FrameCache, settings: RefineSettings, progress: bool,
        checkpoint: Checkpoint | None = None) -> Refined:
    """Refine colour, opacity and a per-Gaussian scale with centres fixed at ``means0`` [G,3];
    ``checkpoint`` saves the loop's state and restores it on resume (pipeline/fit/checkpoint.py)."""
    checkpoint = checkpoint or Checkpoint.disabled("refine")
    g = g.detach_clone()
    g.means = means0.detach().clone()
    if g.log_scales.ndim == 1:
        g.log_scales = g.log_scales.clone()
    params = [g.log_scales, g.colors, g.opacity_logits]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=settings.lr)
    target = frames.rgb(0)
    cams = frames.cameras
    gen = random.Random(settings.seed)
    losses = []
    first = 0
    saved = checkpoint.restore()
    if saved is not None:
        first, losses = saved["iteration"], list(saved["losses"])
        with torch.no_grad():
            for p, value in zip(params, saved["params"]):
                p.copy_(value)
        opt.load_state_dict(saved["adam"])
        set_rng_state(gen, saved["rng"])

    def state() -> dict:
        return {"iteration": len(losses), "params": [p.detach().clone() for p in params], "adam": opt.state_dict(),
                "rng": rng_state(gen), "losses": list(losses)}

    bar = tqdm(range(first, settings.iterations), desc="refine", disable=not progress, leave=False, initial=first,
               total=settings.iterations)
    for it in bar:
        c = gen.randrange(len(cams))
        loss = l1_dssim_loss(g.render(cams[c]), target[c : c + 1], 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        checkpoint.step(it + 1, state)
    for p in params:
        p.requires_grad_(False)
    return Refined(g, losses)
