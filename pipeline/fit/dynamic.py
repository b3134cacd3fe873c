"""Stage 5: per-anchor stiffness, the soft vector's kappa and the ground friction, fitted through
the differentiable spring-mass simulation by rendering and comparing with the video (Eq. 18)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.data.files import write_json
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.data.rundir import hash_key
from pipeline.data.schema import matrix, number, read_json
from pipeline.fit.checkpoint import Checkpoint, rng_state, set_rng_state
from pipeline.fit.physics import PhysicsSettings
from render import l1_dssim_loss
from taichi_sim.binding import Binding, apply_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import Integrator, SimulationUnstable, SpringState, rollout, rollout_with_retry


@dataclass(frozen=True)
class DynamicSettings:
    """iterations: optimisation iterations over the fitted frames; lr_stiffness, lr_kappa,
    lr_friction: Adam learning rates, decaying exponentially to lr_decay x themselves by the last
    iteration; grad_clip: per-parameter gradient-norm clip; lambda_dssim: D-SSIM weight (Eq. 18);
    truncate_per_frame: the authors' mode (gradients cut at each frame, a step per frame);
    cameras_per_frame: cameras rendered per frame and iteration; single_k: one global stiffness
    (Table 3); substeps, max_substeps: substeps per frame, raised on instability up to the max;
    stiffness_regions: R > 0 adds a spatially smooth field, R region values spread over the anchors
    by Gaussian weights, learned with the per-anchor deltas (0: per-anchor deltas alone);
    patience: stop once the loss has not improved by 0.5 % for this many iterations (0: never);
    seed; physics: the model's constants and starting values; substeps_raise_every: the authors'
    schedule of substeps (their N_STEP_ITER): 50 more substeps per frame from their (1-based)
    iteration k * substeps_raise_every on, for every such iteration below ``iterations`` (300 and
    100: raised at 100 and 200; 0: never), up to max_substeps; start_offsets: the shifts, in
    decades, of the starting log10 k the stage runs from, keeping the best (:func:`from_starts`)."""

    iterations: int = 40
    lr_stiffness: float = 0.03
    lr_kappa: float = 0.03
    lr_friction: float = 0.05
    lr_decay: float = 0.1
    grad_clip: float = 1.0
    lambda_dssim: float = 0.05
    truncate_per_frame: bool = False
    cameras_per_frame: int = 1
    single_k: bool = False
    substeps: int = 60
    max_substeps: int = 500
    stiffness_regions: int = 0
    patience: int = 0
    seed: int = 0
    physics: PhysicsSettings = field(default_factory=PhysicsSettings)
    substeps_raise_every: int = 0
    start_offsets: tuple = (0.0,)


SUBSTEPS_RAISE = 50  # the authors' STEP_ADD


def raises_substeps(settings: DynamicSettings, it: int) -> bool:
    """Whether the substeps rise by SUBSTEPS_RAISE before (0-based) iteration ``it``: the authors
    raise at the start of their (1-based) iterations every, 2 every, ... below the count."""
    every = settings.substeps_raise_every
    return bool(every) and (it + 1) % every == 0 and it + 1 < settings.iterations


@dataclass
class Dynamic:
    params: SpringParams
    substeps: int  # substeps per frame the fit ended with
    losses: list
    score: float | None = None  # the loss over every camera of the fitted frames (multi-start fits)
    starts: list = field(default_factory=list)  # every start of a multi-start fit, the chosen one marked


def _clip_grads(params, max_norm: float) -> None:
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_([p], max_norm)


def region_weights(points: torch.Tensor, n_regions: int, seed: int = 0) -> torch.Tensor:
    """[N,R] row-normalised Gaussian weights from every point to R region centres chosen by
    farthest-point sampling, with the width of the mean distance between neighbouring centres:
    a field z [R] spread as W @ z varies smoothly over the object."""
    from pipeline.fit.geometry import farthest_point_sampling

    pts = points.detach().float()
    centres = pts[farthest_point_sampling(pts, n_regions, seed)]
    d2 = torch.cdist(pts, centres) ** 2
    if len(centres) > 1:
        cc = torch.cdist(centres, centres) + torch.eye(len(centres)) * 1e9
        width = float(cc.min(1).values.mean())
    else:
        width = float((pts.max(0).values - pts.min(0).values).norm()) + 1e-6
    w = torch.exp(-0.5 * d2 / width**2)
    return w / w.sum(1, keepdim=True).clamp_min(1e-12)


def run(g: Gaussians, model: SpringModel, binding: Binding, v0: torch.Tensor, frames: FrameCache, n_fit: int,
        frame_dt: float, settings: DynamicSettings, progress: bool, desc: str = "dynamic",
        start: SpringParams | None = None, checkpoint: Checkpoint | None = None, min_substeps: int = 0,
        image_loss=None) -> Dynamic:
    """Fit per-anchor log10 stiffness, kappa and friction on frames 0..n_fit-1 (Eq. 18 loss),
    from ``start`` (the global search's result) or else the settings' starting values, with at
    least ``min_substeps`` substeps per frame (what the global search's best candidate needed);
    ``checkpoint`` saves the loop's state and restores it on resume (pipeline/fit/checkpoint.py).
    ``image_loss(render, target)``, when given, replaces Eq. 18 (a real capture's Eq. 19)."""
    checkpoint = checkpoint or Checkpoint.disabled(desc)
    n = model.n_anchors
    if start is None:
        start = settings.physics.initial_params(n)
    start = start.detach()
    kappa, phi = start.kappa.float(), start.friction_logit.float()
    # log10 k_i = base + (W z)_i + delta_i: the shared base takes the summed gradient of every
    # anchor and moves the overall stiffness quickly; the smooth region field W z and the per-anchor
    # deltas (both absent with single_k) then capture heterogeneity. Same model as one free value
    # per anchor, better conditioned.
    base = start.log_stiffness.float().mean().clone().requires_grad_(True)
    delta = start.log_stiffness.float() - base.detach()
    if settings.single_k:  # one stiffness: a start with regions (global search) is flattened to its mean
        delta = torch.zeros_like(delta)
    delta = delta.clone().requires_grad_(not settings.single_k)
    regions = settings.stiffness_regions if not settings.single_k else 0
    weights = region_weights(model.rest_positions, min(regions, n), settings.seed) if regions else None
    z = torch.zeros(weights.shape[1] if regions else 0, dtype=torch.float32, requires_grad=bool(regions))
    soft = settings.physics.soft_vector
    learn = [base, phi] + ([delta] if not settings.single_k else []) + ([kappa] if soft else []) + ([z] if regions else [])
    phi.requires_grad_(True)
    kappa.requires_grad_(soft)
    groups = [{"params": [base], "lr": settings.lr_stiffness}, {"params": [phi], "lr": settings.lr_friction}]
    if not settings.single_k:
        groups.append({"params": [delta], "lr": settings.lr_stiffness})
    if regions:
        groups.append({"params": [z], "lr": settings.lr_stiffness})
    if soft:
        groups.append({"params": [kappa], "lr": settings.lr_kappa})
    opt = torch.optim.Adam(groups)
    # exponential decay to lr_decay x the initial rates over the run, so Adam settles instead of
    # oscillating around the optimum by about one learning rate
    gamma = settings.lr_decay ** (1.0 / max(settings.iterations - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)

    def params() -> SpringParams:
        field_ = base + delta
        if regions:  # a zero-mean smooth field: the overall level stays the base's (one owner)
            smooth = weights @ z
            field_ = field_ + (smooth - smooth.mean())
        return SpringParams(field_.clamp(0.0, 7.0), kappa, phi)

    cams = frames.cameras
    gen = random.Random(settings.seed + 2)
    integrator = Integrator(frame_dt=frame_dt, substeps=min(max(settings.substeps, min_substeps), settings.max_substeps),
                            max_substeps=settings.max_substeps)
    losses: list[float] = []
    x_rest = model.rest_positions

    def frame_loss(f, means_f):
        cs = gen.sample(range(len(cams)), min(settings.cameras_per_frame, len(cams)))
        if image_loss is not None:
            return image_loss(g.render(cams[cs], means_f), frames.rgb(f, cs))
        return l1_dssim_loss(g.render(cams[cs], means_f), frames.rgb(f, cs), settings.lambda_dssim)

    skipped = []

    def step():
        # a stiff model in float32 can jitter at the springs' dead zone, where the gradient of a
        # rollout that is itself fine grows without bound (a still ball at log10 k 7: NaN at 458
        # substeps, 1e29 at 1000; exactly 0 in float64): such a step is skipped, not taken
        if any(p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in learn):
            skipped.append(it)
        else:
            _clip_grads(learn, settings.grad_clip)
            opt.step()
        opt.zero_grad()

    it = 0
    saved = checkpoint.restore()
    if saved is not None:  # the learned tensors, Adam, the schedule, the camera draws, the substeps
        it, losses = saved["iteration"], list(saved["losses"])
        with torch.no_grad():
            for t, value in zip((base, delta, z, kappa, phi), saved["tensors"]):
                t.copy_(value)
        opt.load_state_dict(saved["adam"])
        sched.load_state_dict(saved["schedule"])
        set_rng_state(gen, saved["rng"])
        integrator = integrator.with_substeps(saved["substeps"])

    def state() -> dict:
        return {"iteration": it, "losses": list(losses),
                "tensors": [t.detach().clone() for t in (base, delta, z, kappa, phi)], "adam": opt.state_dict(), "schedule": sched.state_dict(), "rng": rng_state(gen),
                "substeps": integrator.substeps}

    bar = tqdm(total=settings.iterations, initial=it, desc=desc, disable=not progress, leave=False)
    raised = it - 1  # the last iteration whose raise of substeps is done (not redone on a retry)
    while it < settings.iterations:
        if it > raised and raises_substeps(settings, it):
            integrator = integrator.with_substeps(min(integrator.substeps + SUBSTEPS_RAISE, settings.max_substeps))
        raised = it
        try:
            total = 0.0
            if settings.truncate_per_frame:
                x, v = x_rest, v0
                for f in range(1, n_fit):
                    traj = rollout(model, params(), SpringState(x.detach(), v.detach()), 1, integrator)
                    loss = frame_loss(f, apply_binding(binding, traj.positions[1]))
                    loss.backward()
                    step()
                    x, v = traj.positions[1], traj.v_last
                    total += float(loss.detach())
                total /= n_fit - 1
            else:
                pos = rollout(model, params(), SpringState(x_rest, v0), n_fit - 1, integrator).positions
                means = apply_binding(binding, pos)
                loss = sum(frame_loss(f, means[f]) for f in range(1, n_fit)) / (n_fit - 1)
                opt.zero_grad()
                loss.backward()
                step()
                total = float(loss.detach())
        except SimulationUnstable as err:
            opt.zero_grad()
            retry = integrator.more_substeps()
            if retry is None:
                raise SgausError(
                    f"the fit became unstable at {integrator.substeps} substeps per frame ({err}); "
                    f"lower init_log_stiffness or raise max_substeps"
                ) from None
            integrator = retry
            bar.write(f"{desc}: simulation unstable, retrying with {integrator.substeps} substeps per frame")
            continue
        if not math.isfinite(total):
            raise SgausError(f"the {desc} loss became {total} at iteration {it}; the fit is unstable")
        losses.append(total)
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", log_k=f"{float(params().log_stiffness.detach().mean()):.2f}",
                        friction=f"{float(torch.sigmoid(phi.detach())):.2f}", kappa=f"{float(kappa.detach()):.2f}",
                        substeps=integrator.substeps)
        it += 1
        if settings.patience and len(losses) > settings.patience:
            if min(losses[-settings.patience:]) > 0.995 * min(losses[:-settings.patience]):
                break  # flat: no 0.5 % improvement over the last `patience` iterations
        checkpoint.step(it, state)
    bar.close()
    if skipped:
        tqdm.write(f"{desc}: {len(skipped)} step(s) skipped, whose gradient was not finite (first at iteration "
                   f"{skipped[0]}); the parameters stay where the finite steps took them")
    final = params().detach()
    return Dynamic(final, integrator.substeps, losses)


def score(g: Gaussians, model: SpringModel, binding: Binding, v0: torch.Tensor, frames: FrameCache, n_fit: int,
          integrator: Integrator, params: SpringParams, lambda_dssim: float, image_loss=None) -> tuple[float, int]:
    """(The Eq. 18 loss, or ``image_loss``, of ``params`` over the fitted frames 1..n_fit-1 with
    every camera rendered, the substeps per frame its rollout needed): deterministic, where the
    training loss draws cameras at random. Parameters whose rollout blows up at the integrator's
    substeps are retried with more (the last step of a fit can leave what its last stable rollout
    did not see); past its max_substeps the loss is inf."""
    cams = list(range(len(frames.cameras)))
    cameras = frames.cameras[cams]
    with torch.no_grad():
        try:
            traj = rollout_with_retry(model, params, SpringState(model.rest_positions, v0), n_fit - 1, integrator)
        except SimulationUnstable:
            return math.inf, 0
        means = apply_binding(binding, traj.positions)
        total = 0.0
        for f in range(1, n_fit):
            render = g.render(cameras, means[f])
            target = frames.rgb(f, cams)
            loss = image_loss(render, target) if image_loss is not None else l1_dssim_loss(render, target, lambda_dssim)
            total += float(loss)
    return total / (n_fit - 1), traj.substeps


def shifted(start: SpringParams, offset: float) -> SpringParams:
    """``start`` with every anchor's log10 stiffness raised by ``offset`` decades."""
    return SpringParams(start.log_stiffness + offset, start.kappa, start.friction_logit)


def from_starts(stage, key: str, start_key: str, offsets, start: SpringParams, fit, score_of, log=print,
                header: str = "") -> Dynamic:
    """The dynamic stage run from ``start`` shifted by each of ``offsets`` (decades of log10 k),
    keeping the result whose ``score_of`` (the loss over every camera of the fitted frames and the
    substeps it needed, as :func:`score` computes them) is lowest; the kept result's substeps are
    those its score needed, so the asset simulates it as it was scored.

    The global search scores uniform fields, but a dense field can balance a landing a uniform one
    cannot (README, stage 5), so the stiffness a dense fit matches best at need not be the one the
    search found. ``fit(start, checkpoint, name)`` runs the stage; ``stage(name, key, compute, save,
    load)`` caches each start as its own stage (RUN/stages/dynamic_start<i>, keyed by ``start_key``,
    the key of a one-start stage, and its offset: a start is reused when the list of offsets
    changes), so a killed fit resumes at the start it was in; the chosen result becomes the stage
    "dynamic", under ``key``. One offset of 0 is the plain stage. ``header`` is logged when the
    stage runs (not when reused)."""
    offsets = tuple(float(o) for o in offsets)
    if offsets == (0.0,):
        def compute_one(c):
            log(header)
            return fit(start, c, "dynamic"), {}
        return stage("dynamic", key, compute_one, save, load)
    level = float(start.log_stiffness.float().mean())

    def compute_all(_checkpoint):
        log(f"{header}, from {len(offsets)} starts")
        tried = []
        for i, off in enumerate(offsets):
            name = f"dynamic_start{i}"

            def compute(c, i=i, off=off, name=name):
                log(f"  start {i + 1}/{len(offsets)}: mean log10 k {level + off:.2f} ({off:+g} decades)")
                r = fit(shifted(start, off), c, name)
                r.score, substeps = score_of(r)
                r.substeps = max(r.substeps, substeps)
                return r, {"offset": off}
            tried.append((stage(name, hash_key(name, start_key, off), compute, save, load), off))
        scores = [math.inf if r.score is None else r.score for r, _ in tried]  # None: saved as blown up
        best = min(range(len(tried)), key=scores.__getitem__)
        if not math.isfinite(scores[best]):
            raise SgausError(f"the dynamic stage's result blew up when re-simulated from every start (offsets "
                             f"{', '.join(f'{o:g}' for o in offsets)}); raise max_substeps")
        starts = [{"offset": off, "start_log_k": level + off, "mean_log_k": float(r.params.log_stiffness.mean()),
                   "score": r.score if math.isfinite(scores[j]) else None, "chosen": j == best}
                  for j, (r, off) in enumerate(tried)]
        log(f"  kept start {best + 1} (mean log10 k {starts[best]['mean_log_k']:.2f}); scores "
            + ", ".join(f"{x:.5f}" for x in scores))
        chosen = tried[best][0]
        return Dynamic(chosen.params, chosen.substeps, chosen.losses, chosen.score, starts), {}
    return stage("dynamic", key, compute_all, save, load)


def save(r: Dynamic, directory: Path) -> None:
    """fitted.json: the dynamic stage's parameters, final substeps and losses (and, from a
    multi-start fit, its score and every start)."""
    # a start whose result blew up when scored (score inf) is saved with a null score
    extra = ({} if r.score is None else {"score": r.score if math.isfinite(r.score) else None}) | (
        {"starts": r.starts} if r.starts else {})
    write_json(directory / "fitted.json", {
        "log_stiffness": r.params.log_stiffness.tolist(), "kappa": float(r.params.kappa),
        "friction_logit": float(r.params.friction_logit), "substeps": r.substeps, "losses": r.losses, **extra})


def load(directory: Path) -> Dynamic:
    """fitted.json, checked: every parameter a finite number (a NaN is named with its anchor)."""
    path = directory / "fitted.json"
    d = read_json(path, dict)
    try:
        stiffness = d["log_stiffness"]
        n = len(stiffness) if isinstance(stiffness, list) else -1
        params = SpringParams(torch.from_numpy(matrix(stiffness, ((n,),), "'log_stiffness'", path, "anchor")).float(),
                              torch.tensor(number(d, "kappa", path, "soft vector"), dtype=torch.float32),
                              torch.tensor(number(d, "friction_logit", path, "friction"), dtype=torch.float32))
        score = None if d.get("score") is None else number(d, "score", path, "score")
        return Dynamic(params, int(d["substeps"]), list(d["losses"]), score, list(d.get("starts", [])))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, SgausError):
            raise
        raise SgausError(f"{path}: not a dynamic-stage result ({err})") from None
