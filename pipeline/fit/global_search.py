"""Stage 5a: a global search of the few global physical parameters before the dense field.

The image loss of a spring-mass rollout is a rough function of the stiffness: it jumps where the
timing of the ground contact changes, and gradient steps from a starting value far from the truth
stall long before reaching it (40 Adam steps move log10 k by about half a decade). So, as PhysTwin
does, the fit first searches the global values with forward rollouts only, then refines the dense
per-anchor field by gradients from there (pipeline/fit/dynamic.py).

The search, scored by the image loss on the fitted frames (Eq. 18 on RGB, plus a silhouette term:
the rendered alpha against the masks, which is smooth where the colours are flat):

1. a coarse bracket: one uniform log10 k per point of an even grid over ``log_k_range`` (the
   friction and kappa at their starting values), which finds the right decade whatever the start;
2. CMA-ES (the ``cma`` package) over (log10 k, friction logit, kappa) from the best grid point,
   in coordinates scaled to the unit cube, which refines all three together and copes with the
   loss's jumps, where a gradient would not.

Each candidate is one forward rollout at the dynamic stage's substeps; a candidate whose simulation
blows up, or whose loss is not finite, is scored worse than every finite one and skipped (the
kernels have no batch dimension for kappa and friction, so candidates run one after another).
The cameras are a fixed, evenly spread subset, so a candidate's score does not depend on a draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data.files import write_json
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.data.schema import number, read_json
from pipeline.fit.checkpoint import Checkpoint
from pipeline.fit.physics import PhysicsSettings
from render import l1_dssim_loss
from taichi_sim.binding import Binding, apply_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import Integrator, SimulationUnstable, SpringState, rollout

PHI_RANGE = (-6.0, 6.0)  # friction logit: factor 0 (sticky) .. 1 (smooth) lies well inside
KAPPA_RANGE = (-4.0, 6.0)  # soft vector: all springs ~ 1 .. far springs cut off (Eq. 8)
LOG_K_LIMITS = (-3.0, 10.0)  # what a search range may span at all


@dataclass(frozen=True)
class GlobalSearchSettings:
    """log_k_range: the searched log10 stiffness interval; grid_points: points of the coarse
    bracket; cma_generations, cma_population: the CMA-ES budget (0 generations: bracket only);
    search_friction, search_kappa: whether CMA-ES also moves them; cameras: cameras scored per
    frame (evenly spread); silhouette_weight: weight of the alpha-vs-mask L1 term; lambda_dssim:
    D-SSIM weight of the image term; substeps, max_substeps: the dynamic stage's; seed; physics."""

    log_k_range: tuple = (0.0, 7.0)
    grid_points: int = 15
    cma_generations: int = 6
    cma_population: int = 8
    search_friction: bool = True
    search_kappa: bool = True
    cameras: int = 4
    silhouette_weight: float = 0.5
    lambda_dssim: float = 0.05
    substeps: int = 60
    max_substeps: int = 500
    seed: int = 0
    physics: PhysicsSettings = field(default_factory=PhysicsSettings)

    def check(self) -> None:
        lo, hi = (float(v) for v in self.log_k_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise SgausError(f"global search: log_k_range must be two finite numbers low < high, got {self.log_k_range}")
        if lo < LOG_K_LIMITS[0] or hi > LOG_K_LIMITS[1]:
            raise SgausError(f"global search: log_k_range {self.log_k_range} leaves the physical range "
                             f"{LOG_K_LIMITS[0]:g}..{LOG_K_LIMITS[1]:g} (log10 stiffness)")
        if self.grid_points < 2 or self.cma_generations < 0 or self.cma_population < 2 or self.cameras < 1:
            raise SgausError("global search: grid_points >= 2, cma_generations >= 0, cma_population >= 2 and "
                             "cameras >= 1 are needed")


@dataclass
class GlobalResult:
    """The best global parameters found, and every candidate tried (for the loss plot)."""

    params: SpringParams  # uniform log10 stiffness, kappa, friction logit
    loss: float
    evaluations: list  # [{"log_k", "friction_logit", "kappa", "loss"}], in the order tried
    best_per_round: list  # best loss after the bracket and after each CMA-ES generation


class _Scorer:
    """The image loss of one candidate (a uniform stiffness, a kappa and a friction logit)."""

    def __init__(self, g, model, binding, v0, frames: FrameCache, n_fit, frame_dt, settings: GlobalSearchSettings):
        self.g, self.model, self.binding, self.v0, self.frames = g, model, binding, v0, frames
        self.n_fit, self.settings = n_fit, settings
        self.integrator = Integrator(frame_dt=frame_dt, substeps=settings.substeps, max_substeps=settings.max_substeps)
        n_cams = len(frames.cameras)
        k = min(settings.cameras, n_cams)
        self.cams = sorted({int(round(i * n_cams / k)) % n_cams for i in range(k)})
        self.evaluations: list[dict] = []
        self.replay: list[dict] = []  # the evaluations of a checkpoint, answered without a rollout

    def __call__(self, log_k: float, phi: float, kappa: float) -> float:
        i = len(self.evaluations)
        if i < len(self.replay):
            done = self.replay[i]
            if (done["log_k"], done["friction_logit"], done["kappa"]) != (float(log_k), float(phi), float(kappa)):
                raise RuntimeError(f"global search: candidate {i} differs from the checkpoint's: the search is not "
                                   "deterministic")
            self.evaluations.append(dict(done))
            return done["loss"]
        n = self.model.n_anchors
        params = SpringParams(torch.full((n,), float(log_k)), torch.tensor(float(kappa)), torch.tensor(float(phi)))
        loss = math.inf
        try:
            with torch.no_grad():
                pos = rollout(self.model, params, SpringState(self.model.rest_positions, self.v0), self.n_fit - 1,
                              self.integrator).positions
                means = apply_binding(self.binding, pos)
                cams = self.frames.cameras[self.cams]
                total = 0.0
                for f in range(1, self.n_fit):
                    rgb, alpha = self.g.render_with_alpha(cams, means[f])
                    target = self.frames.rgba(f)[self.cams]
                    rgb_target = target[..., :3] * target[..., 3:4]
                    total += float(l1_dssim_loss(rgb, rgb_target, self.settings.lambda_dssim))
                    total += self.settings.silhouette_weight * float((alpha - target[..., 3:4]).abs().mean())
                loss = total / (self.n_fit - 1)
        except SimulationUnstable:
            loss = math.inf
        if not math.isfinite(loss):
            loss = math.inf
        self.evaluations.append({"log_k": float(log_k), "friction_logit": float(phi), "kappa": float(kappa),
                                 "loss": loss})
        return loss


def run(g: Gaussians, model: SpringModel, binding: Binding, v0: torch.Tensor, frames: FrameCache, n_fit: int,
        frame_dt: float, settings: GlobalSearchSettings, progress: bool,
        checkpoint: Checkpoint | None = None) -> GlobalResult:
    """Search the global log10 stiffness, friction logit and kappa (see the module docstring).
    ``checkpoint`` saves the candidates scored so far; on resume the search runs again from its
    seed and takes their scores from the checkpoint instead of simulating them (the bracket and
    CMA-ES are deterministic given the scores, so it continues exactly where it stopped)."""
    import cma

    settings.check()
    checkpoint = checkpoint or Checkpoint.disabled("global")
    score = _Scorer(g, model, binding, v0, frames, n_fit, frame_dt, settings)
    saved = checkpoint.restore()
    if saved is not None:
        score.replay = [{**e, "loss": math.inf if e["loss"] is None else e["loss"]} for e in saved["evaluations"]]
    lo, hi = (float(v) for v in settings.log_k_range)
    phi0 = float(settings.physics.init_friction_logit)
    soft = settings.physics.soft_vector
    kappa0 = float(settings.physics.init_kappa) if soft else -40.0
    total = settings.grid_points + settings.cma_generations * settings.cma_population
    bar = tqdm(total=total, desc="global", disable=not progress, leave=False)
    best = (math.inf, None)
    rounds = []

    def state() -> dict:
        return {"evaluations": [{**e, "loss": e["loss"] if math.isfinite(e["loss"]) else None}
                                for e in score.evaluations]}

    def consider(log_k, phi, kappa):
        nonlocal best
        value = score(log_k, phi, kappa)
        if len(score.evaluations) > len(score.replay):
            checkpoint.step(len(score.evaluations), state)
        if value < best[0]:
            best = (value, (log_k, phi, kappa))
        bar.update(1)
        if best[1] is not None:
            bar.set_postfix(loss=f"{best[0]:.4f}", log_k=f"{best[1][0]:.2f}",
                            friction=f"{float(torch.sigmoid(torch.tensor(best[1][1]))):.2f}", kappa=f"{best[1][2]:.2f}")
        return value

    for log_k in np.linspace(lo, hi, settings.grid_points):
        consider(float(log_k), phi0, kappa0)
    rounds.append(best[0])
    if best[1] is None:
        bar.close()
        raise SgausError(f"global search: the simulation blew up for every stiffness in {lo:g}..{hi:g} at "
                         f"{settings.substeps} substeps per frame; narrow log_k_range or raise substeps")
    moving = [True, settings.search_friction, settings.search_kappa and soft]
    ranges = [(lo, hi), PHI_RANGE, KAPPA_RANGE]
    if settings.cma_generations and any(moving):
        dims = [i for i in range(3) if moving[i]]

        def to_unit(values):
            return [float(np.clip((values[i] - ranges[i][0]) / (ranges[i][1] - ranges[i][0]), 0.0, 1.0))
                    for i in dims]

        def from_unit(u):
            values = list(best_start)
            for j, i in enumerate(dims):
                values[i] = ranges[i][0] + float(np.clip(u[j], 0.0, 1.0)) * (ranges[i][1] - ranges[i][0])
            return values

        best_start = best[1]
        es = cma.CMAEvolutionStrategy(to_unit(best_start), 0.1,
                                      {"bounds": [0.0, 1.0], "popsize": settings.cma_population,
                                       "seed": settings.seed + 1, "verbose": -9, "maxiter": settings.cma_generations})
        for _gen in range(settings.cma_generations):
            if es.stop():
                break
            candidates = es.ask()
            values = [consider(*from_unit(u)) for u in candidates]
            finite = [v for v in values if math.isfinite(v)]
            worst = max(finite) if finite else best[0]
            es.tell(candidates, [v if math.isfinite(v) else 2.0 * worst + 1.0 for v in values])
            rounds.append(best[0])
    bar.close()
    log_k, phi, kappa = best[1]
    n = model.n_anchors
    params = SpringParams(torch.full((n,), float(log_k)), torch.tensor(float(kappa)), torch.tensor(float(phi)))
    return GlobalResult(params, float(best[0]), score.evaluations, rounds)


def save(r: GlobalResult, directory: Path) -> None:
    """global.json: the chosen log10 k, friction logit, kappa and loss, and every candidate."""
    write_json(directory / "global.json", {
        "log_k": float(r.params.log_stiffness[0]), "friction_logit": float(r.params.friction_logit),
        "kappa": float(r.params.kappa), "n_anchors": int(r.params.log_stiffness.numel()), "loss": r.loss,
        "evaluations": [{**e, "loss": e["loss"] if math.isfinite(e["loss"]) else None} for e in r.evaluations],
        "best_per_round": r.best_per_round})


def load(directory: Path) -> GlobalResult:
    path = directory / "global.json"
    d = read_json(path, dict)
    try:
        n = int(d["n_anchors"])
        params = SpringParams(torch.full((n,), number(d, "log_k", path, "stiffness")),
                              torch.tensor(number(d, "kappa", path, "soft vector")),
                              torch.tensor(number(d, "friction_logit", path, "friction")))
        evaluations = [{**e, "loss": math.inf if e["loss"] is None else e["loss"]} for e in d["evaluations"]]
        return GlobalResult(params, float(d["loss"]), evaluations, list(d["best_per_round"]))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, SgausError):
            raise
        raise SgausError(f"{path}: not a global-search result ({err})") from None
