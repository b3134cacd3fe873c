"""Plain-PyTorch twin of the spring-mass simulator (taichi_sim/spring_rollout.py).

Same signature and semantics as :func:`taichi_sim.spring_rollout.rollout`; gradients come from
PyTorch autograd over a vectorised [N,K,3] substep. It is the reference that the Taichi kernels
and their hand-written gradients are tested against, and the baseline of benchmarks/bench_sim.py.
With ``Integrator.checkpoint`` each frame is recomputed during backward (torch.utils.checkpoint).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint
from tqdm.auto import tqdm

from taichi_sim.spring_kernels import (
    P_CONTACT_C, P_CONTACT_K, P_DEAD, P_DT, P_G, P_GN, P_GP, P_HAS_GROUND, P_INV_MASS, P_PK, P_ZETA0, TINY,
)
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import (
    Integrator, RolloutInputs, SpringState, Trajectory, check_state, prepare_inputs, spring_force,
)


def substep(x: torch.Tensor, v: torch.Tensor, neighbors: torch.Tensor, rest_length: torch.Tensor,
            stiffness: torch.Tensor, eta: torch.Tensor, friction: torch.Tensor, prm: torch.Tensor,
            law: int, pair: int = 0, mirror: int = 0, penalty: int = 0,
            lift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One substep: x, v [N,3] -> x', v' [N,3] (Eq. 9-14). ``prm`` as in spring_kernels.py;
    ``friction`` is taken from its own (differentiable) argument, not from prm; ``pair``: a
    spring's stiffness is sqrt(k_i k_j) instead of its owner's k_i; ``mirror``: every spring acts
    on both its ends with half its force; ``penalty``: the penalty ground instead of the projection;
    ``lift`` [N]: how far above the contact plane each anchor meets the ground (None: 0)."""
    lift = 0.0 if lift is None else lift
    dt, inv_m, zeta0, p, dead = (prm[i] for i in (P_DT, P_INV_MASS, P_ZETA0, P_PK, P_DEAD))
    d = x[:, None, :] - x[neighbors]  # [N,K,3] from neighbour to anchor
    length = torch.linalg.vector_norm(d, dim=-1)  # [N,K]
    live = length > TINY
    safe_len = torch.where(live, length, torch.ones_like(length))
    u = d / safe_len[..., None]
    ext = length - rest_length
    springy = live & (ext.abs() >= dead)
    safe_ext = torch.where(springy, ext, torch.ones_like(ext))  # no inf gradient of |ext|^p at 0
    magnitude = torch.where(springy, spring_force(safe_ext, rest_length, stiffness, eta, neighbors, p, law, pair),
                            torch.zeros_like(ext))
    w = v[:, None, :] - v[neighbors]
    damping = torch.where(live, zeta0 / rest_length * (w * u).sum(-1), torch.zeros_like(ext))
    per_spring = (magnitude + damping)[..., None] * u  # [N,K,3]: minus the force on the owner
    if mirror:
        force = (-0.5 * per_spring.sum(1)).index_add(0, neighbors.reshape(-1), 0.5 * per_spring.reshape(-1, 3))
    else:
        force = -per_spring.sum(1)
    vh = v + (force * inv_m + prm[P_G:P_G + 3]) * dt
    if penalty and float(prm[P_HAS_GROUND]) > 0:
        nrm = prm[P_GN:P_GN + 3]
        sd = (x - prm[P_GP:P_GP + 3]) @ nrm - lift
        touch = sd < 0
        push = torch.where(touch, -prm[P_CONTACT_K] * sd - prm[P_CONTACT_C] * (v @ nrm), torch.zeros_like(sd))
        vh = vh + (push.clamp_min(0) * dt)[:, None] * nrm
        vn = (vh @ nrm)[:, None] * nrm
        vh = torch.where(touch[:, None], (vh - vn) * friction + vn, vh)
        return x + vh * dt, vh
    xh = x + vh * dt
    if float(prm[P_HAS_GROUND]) > 0:
        nrm = prm[P_GN:P_GN + 3]
        sd = (xh - prm[P_GP:P_GP + 3]) @ nrm - lift
        touch = (sd < 0)[:, None]
        xh = torch.where(touch, xh - sd[:, None] * nrm, xh)
        vh = torch.where(touch, (vh - (vh @ nrm)[:, None] * nrm) * friction, vh)
    return xh, vh


def _frame(x, v, stiffness, eta, friction, prep: RolloutInputs):
    for _ in range(prep.substeps):
        x, v = substep(x, v, prep.neighbors, prep.rest_length, stiffness, eta, friction, prep.prm, prep.law,
                       prep.pair, prep.mirror, prep.penalty, prep.lift)
    return x, v


def _simulate(prep: RolloutInputs, checkpoint: bool, progress: bool):
    x, v = prep.x0, prep.v0
    positions = [x]
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (prep.x0, prep.v0, prep.stiffness, prep.eta, prep.friction))
    for f in tqdm(range(prep.n_frames), desc="simulate (torch)", disable=not progress, leave=False):
        if checkpoint and grad:
            x, v = torch_checkpoint(_frame, x, v, prep.stiffness, prep.eta, prep.friction, prep,
                                    use_reentrant=False)
        else:
            x, v = _frame(x, v, prep.stiffness, prep.eta, prep.friction, prep)
        check_state(x.detach(), v.detach(), f + 1, prep)
        positions.append(x)
    return torch.stack(positions), (v if prep.n_frames else v.clone())


def rollout(model: SpringModel, params: SpringParams, state0: SpringState, n_frames: int,
            integrator: Integrator, progress: bool = False) -> Trajectory:
    """The plain-PyTorch :func:`taichi_sim.spring_rollout.rollout` (same arguments and results)."""
    prep = prepare_inputs(model, params, state0, n_frames, integrator)
    positions, v_last = _simulate(prep, integrator.checkpoint, progress)
    return Trajectory(positions, v_last, integrator.substeps)
