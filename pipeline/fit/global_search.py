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
2. a 1-D bracket of the contact offset at that stiffness: the depth the anchors may sink below the
   ground plane. Cameras above the object never see its underside, so the anchors sampled in the
   visual hull reach centimetres below the true bottom (measured: 3 cm on a torus, 4 cm on a pawn);
   the object would land early and bounce from the wrong height. The depth is not visible in any
   image, but it is in the motion (when the fall stops, how high the object rests): on a torus at
   E = 1e5, a 2 cm offset took the future CD from 1.81 to 0.66 with everything else fixed;
3. CMA-ES (the ``cma`` package) over (log10 k, friction logit, kappa, contact offset, and with the
   penalty ground its restitution) from the best point so far, in coordinates scaled to the unit
   cube, which refines them together and copes with the loss's jumps, where a gradient would not.
   The restitution sets how much of the landing speed the ground gives back, which the images show
   (how high the object bounces) and no gradient of the dense stage reaches. With ``search_zeta0``
   the springs' damping zeta0 (Eq. 17) is a dimension too, searched in log10 over ZETA0_LOG_RANGE
   after a 1-D bracket of its own at the stiffness found: it sets how fast a wobble dies out and how
   much of the landing the springs give back, which the MPM ground truth's own dissipation does not
   leave at the authors' 0.1 (measured: README, the fit, stage 5).

Each candidate is one forward rollout, at the dynamic stage's substeps or more: a stiff candidate
that blows up is retried with 1.5 times the substeps up to the max, the count that worked
carries over to stiffer candidates, and one that blows up even at the max makes every stiffer one
score infinity without a rollout (so the whole range 0..7 is searchable; the dynamic stage then
starts with the substeps of the best candidate). The candidate taken is the best-scored one that
also simulates the whole video, not only the fitted frames, without blowing up
(:func:`stable_choice`): a stiff model of directed springs can gain energy of its own after it
lands, whatever the substeps. A candidate that still blows up, or whose loss is
not finite, is scored worse than every finite one and skipped (the kernels have no batch dimension
for kappa and friction, so candidates run one after another). The cameras are a fixed, evenly
spread subset, so a candidate's score does not depend on a draw.

A candidate that folds can be penalised (``fold_penalty`` > 0; off by default, README: the fit,
stage 5, says why): springs only see distances, so a soft candidate squashed
hard can turn inside out and stay a flat pancake (taichi_sim/folding.py) while its first frames
after landing match the video well. The share of the anchors' local tetrahedra inverted,
averaged over the fitted frames, adds ``fold_penalty`` times its excess over ``fold_tolerance``
to the candidate's loss (the losses lie near 0.02 to 0.05: at a penalty of 1, a candidate with
5 % of its tetrahedra inverted on average gains 0.04). An average, not the worst frame: a model may invert a
few tetrahedra for a frame at the impact and recover (the fits that beat "hold" on the
benchmark's soft pawn did, up to 2 % in one frame).
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
from taichi_sim.folding import folded_fraction, local_tetrahedra
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import Integrator, SimulationUnstable, SpringState, rollout

PHI_RANGE = (-6.0, 6.0)  # friction logit: factor 0 (sticky) .. 1 (smooth) lies well inside
KAPPA_RANGE = (-4.0, 6.0)  # soft vector: all springs ~ 1 .. far springs cut off (Eq. 8)
RESTITUTION_RANGE = (0.1, 1.0)  # the penalty ground: overdamped (zeta 1.24) .. no loss
ZETA0_LOG_RANGE = (-2.0, 1.0)  # log10 of the springs' damping zeta0: 0.01 (10x under the authors') .. 10
LOG_K_LIMITS = (-3.0, 10.0)  # what a search range may span at all
REGION_SPAN = 1.5  # decades a region may lie above or below the global log10 k
SUBSTEP_GROWTH = 1.5  # a candidate that blows up is retried with this many times the substeps


@dataclass(frozen=True)
class GlobalSearchSettings:
    """log_k_range: the searched log10 stiffness interval; grid_points: points of the coarse
    bracket; cma_generations, cma_population: the CMA-ES budget (0 generations: bracket only);
    search_friction, search_kappa: whether CMA-ES also moves them; search_zeta0: whether the springs'
    damping zeta0 is searched too (log10 in ZETA0_LOG_RANGE, a 1-D bracket of zeta0_points, then
    CMA-ES; False: the physics' zeta0); contact_offset_max: the largest
    contact offset searched, as a fraction of the anchors' height above their lowest point (0: not
    searched; see taichi_sim.spring_model.SpringModel.contact_offset); contact_offset_min: the
    smallest, the same way (0 by default; negative where the declared ground may lie too low, as an
    estimated one: a negative offset raises the ground plane instead, see :func:`placed`; positive
    where the underside is known to reach at least that deep; equal to the largest, it is pinned);
    offset_points: points of its 1-D bracket; regions, region_generations: R > 1 adds a last CMA-ES over R smooth region offsets
    of log10 k around the global value (zero mean, within +-REGION_SPAN decades), for this many
    generations of cma_population; cameras: cameras scored per frame (evenly spread); silhouette_weight: weight of the
    alpha-vs-mask L1 term; lambda_dssim: D-SSIM weight of the image term; fold_penalty,
    fold_tolerance: what a candidate's loss gains per share of its local tetrahedra folded
    (averaged over the fitted frames) beyond the tolerated share (0: folding is not looked at); substeps, max_substeps:
    the dynamic stage's (a stiff candidate that blows up is retried with more, up to the max); seed;
    physics."""

    log_k_range: tuple = (0.0, 7.0)
    grid_points: int = 15
    cma_generations: int = 6
    cma_population: int = 8
    search_friction: bool = True
    search_kappa: bool = True
    search_zeta0: bool = False
    zeta0_points: int = 4
    contact_offset_max: float = 0.25
    contact_offset_min: float = 0.0
    offset_points: int = 5
    regions: int = 0
    region_generations: int = 4
    cameras: int = 4
    silhouette_weight: float = 0.5
    lambda_dssim: float = 0.05
    fold_penalty: float = 0.0
    fold_tolerance: float = 0.01
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
        if not (math.isfinite(self.contact_offset_max) and 0 <= self.contact_offset_max <= 1) or self.offset_points < 2:
            raise SgausError(f"global search: contact_offset_max must lie in 0..1 (a fraction of the object's "
                             f"height), got {self.contact_offset_max}, and offset_points must be >= 2")
        if self.search_zeta0 and self.zeta0_points < 2:
            raise SgausError(f"global search: zeta0_points must be >= 2, got {self.zeta0_points}")
        if not (math.isfinite(self.contact_offset_min) and -1 <= self.contact_offset_min <= self.contact_offset_max):
            raise SgausError(f"global search: contact_offset_min must lie in -1..contact_offset_max "
                             f"({self.contact_offset_max:g}; fractions of the object's height, equal ones pin the "
                             f"offset), got {self.contact_offset_min}")
        if not (math.isfinite(self.fold_penalty) and self.fold_penalty >= 0):
            raise SgausError(f"global search: fold_penalty must be a finite number >= 0, got {self.fold_penalty}")
        if not (math.isfinite(self.fold_tolerance) and 0 <= self.fold_tolerance < 1):
            raise SgausError(f"global search: fold_tolerance must lie in 0..1 (a share of the anchors' local "
                             f"tetrahedra), got {self.fold_tolerance}")

    def rounds(self, offsets: bool = True) -> list[tuple[str, int]]:
        """The rounds :func:`run` scores, as (what, candidates): the stiffness bracket, the contact
        offsets (where a range is searched and ``offsets``: the model stands on a ground), CMA-ES,
        and the region round (R > 1)."""
        out = [(f"{self.grid_points} stiffnesses", self.grid_points)]
        if offsets and self.contact_offset_max > self.contact_offset_min:
            out.append((f"{self.offset_points} contact offsets", self.offset_points))
        if self.search_zeta0:
            out.append((f"{self.zeta0_points} spring dampings", self.zeta0_points))
        out.append((f"{self.cma_generations} x {self.cma_population} CMA-ES",
                    self.cma_generations * self.cma_population))
        if self.regions > 1 and self.region_generations:
            out.append((f"{self.region_generations} x {self.cma_population} for {self.regions} regions",
                        self.region_generations * self.cma_population))
        return out


@dataclass
class GlobalResult:
    """The best global parameters found, and every candidate tried (for the loss plot)."""

    params: SpringParams  # per-anchor log10 stiffness (uniform without regions), kappa, friction logit
    loss: float
    evaluations: list  # [{"log_k", "friction_logit", "kappa", "contact_offset", "restitution", "loss", "substeps"
    #                      [, "regions"]}]
    best_per_round: list  # best loss after the bracket and after each CMA-ES generation
    contact_offset: float = 0.0  # scene units
    substeps: int = 0  # substeps per frame the best candidate needed
    regions: list = field(default_factory=list)  # the region offsets of log10 k (empty: uniform)
    passed_over: list = field(default_factory=list)  # better-scored candidates that blew up over the horizon
    restitution: float | None = None  # the penalty ground's restitution (None: the projection ground)
    zeta0: float | None = None  # the springs' damping found (None: not searched, the model's own)


class _Scorer:
    """The image loss of one candidate (a uniform stiffness, a kappa, a friction logit, a contact
    offset, a restitution and a spring damping zeta0). Stiff candidates need more substeps: one
    that blows up is retried with SUBSTEP_GROWTH times as many (up to the max), and the count that
    worked is remembered so a stiffer candidate starts from it."""

    def __init__(self, g, model, binding, v0, frames: FrameCache, n_fit, frame_dt, settings: GlobalSearchSettings):
        self.g, self.model, self.binding, self.v0, self.frames = g, model, binding, v0, frames
        self.n_fit, self.settings, self.frame_dt = n_fit, settings, frame_dt
        n_cams = len(frames.cameras)
        k = min(settings.cameras, n_cams)
        self.cams = sorted({int(round(i * n_cams / k)) % n_cams for i in range(k)})
        self.evaluations: list[dict] = []
        self.stable: list[tuple[float, int]] = []  # (log10 k, substeps that worked)
        self.hopeless = math.inf  # the lowest log10 k that blew up even at max_substeps
        self.replay: list[dict] = []  # the evaluations of a checkpoint, answered without a rollout
        self.tets = local_tetrahedra(model.rest_positions, model.neighbors) if settings.fold_penalty > 0 else None

    def _start_substeps(self, log_k: float) -> int:
        known = [s for lk, s in self.stable if lk <= log_k]
        return max([self.settings.substeps, *known])

    def _rollout(self, params: SpringParams, model: SpringModel, log_k: float):
        if log_k >= self.hopeless:  # stiffer than a candidate that blew up at the most substeps allowed
            raise SimulationUnstable(0, self.settings.max_substeps, f"log10 k {log_k:.2f} >= {self.hopeless:.2f}, "
                                     "which blew up at max_substeps")
        try:
            pos, substeps = _rollout_growing(model, params, self.v0, self.n_fit - 1, self.frame_dt,
                                             self._start_substeps(log_k), self.settings.max_substeps)
        except SimulationUnstable:
            self.hopeless = min(self.hopeless, log_k)
            raise
        self.stable.append((log_k, substeps))
        return pos, substeps

    def __call__(self, log_k: float, phi: float, kappa: float, offset: float, restitution: float,
                 zeta0: float | None = None, field=None, regions=None) -> float:
        """The score of a uniform log10 k (plus ``field`` [N], a per-anchor offset made of the
        region values ``regions``, when given); ``zeta0`` None: the model's own damping."""
        zeta0 = float(self.model.zeta0) if zeta0 is None else zeta0
        n = self.model.n_anchors
        log_stiffness = torch.full((n,), float(log_k)) + (0.0 if field is None else field)
        i = len(self.evaluations)
        if i < len(self.replay):
            done = self.replay[i]
            asked = (float(log_k), float(phi), float(kappa), float(offset), float(restitution), float(zeta0),
                     None if regions is None else [float(v) for v in regions])
            if (done["log_k"], done["friction_logit"], done["kappa"], done["contact_offset"],
                    done.get("restitution"), done.get("zeta0", float(self.model.zeta0)), done.get("regions")) != asked:
                raise RuntimeError(f"global search: candidate {i} differs from the checkpoint's: the search is not "
                                   "deterministic")
            self.evaluations.append(dict(done))
            if done["substeps"] is not None:  # what the rollout that scored it learnt about the substeps
                self.stable.append((float(log_stiffness.max()), int(done["substeps"])))
            elif done.get("hopeless"):
                self.hopeless = min(self.hopeless, float(log_stiffness.max()))
            return done["loss"]
        params = SpringParams(log_stiffness, torch.tensor(float(kappa)), torch.tensor(float(phi)))
        model = placed(self.model, float(offset), float(restitution), float(zeta0))
        loss, substeps, hopeless, folded = math.inf, None, False, None
        try:
            with torch.no_grad():
                pos, substeps = self._rollout(params, model, float(log_stiffness.max()))
                if self.tets is not None:
                    folded = float(folded_fraction(pos, self.model.rest_positions, self.tets).mean())
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
                if folded is not None:
                    loss += self.settings.fold_penalty * max(0.0, folded - self.settings.fold_tolerance)
        except SimulationUnstable:
            loss, hopeless = math.inf, True
        if not math.isfinite(loss):
            loss = math.inf
        self.evaluations.append({"log_k": float(log_k), "friction_logit": float(phi), "kappa": float(kappa),
                                 "contact_offset": float(offset), "restitution": float(restitution),
                                 "zeta0": float(zeta0), "loss": loss,
                                 "substeps": substeps,
                                 "hopeless": hopeless, "folded": folded,
                                 **({} if regions is None else {"regions": [float(v) for v in regions]})})
        return loss


def _rollout_growing(model: SpringModel, params: SpringParams, v0: torch.Tensor, n_frames: int, frame_dt: float,
                     substeps: int, max_substeps: int) -> tuple[torch.Tensor, int]:
    """A forward rollout's positions from rest, retried with SUBSTEP_GROWTH times the substeps
    after each blow-up, and the substeps that worked; the last SimulationUnstable is raised again
    once max_substeps has blown up too."""
    while True:
        integrator = Integrator(frame_dt=frame_dt, substeps=substeps, max_substeps=max_substeps)
        try:
            with torch.no_grad():
                return rollout(model, params, SpringState(model.rest_positions, v0), n_frames, integrator).positions, \
                    substeps
        except SimulationUnstable:
            if substeps >= max_substeps:
                raise
            substeps = min(max_substeps, int(math.ceil(substeps * SUBSTEP_GROWTH)))


def _candidate_params(e: dict, n: int, field_of=None) -> SpringParams:
    """The parameters of a scored candidate (an entry of the evaluations): its uniform log10 k plus
    the field of its region values, when it has some."""
    log_stiffness = torch.full((n,), float(e["log_k"]))
    if "regions" in e:
        log_stiffness = log_stiffness + field_of(np.asarray(e["regions"]))
    return SpringParams(log_stiffness, torch.tensor(float(e["kappa"])), torch.tensor(float(e["friction_logit"])))


def placed(model: SpringModel, offset: float, restitution: float | None = None,
           zeta0: float | None = None) -> SpringModel:
    """The model with the contact offset ``offset``, the restitution and the springs' damping
    ``zeta0`` found by the search (None: the model's own): a
    positive offset is how deep the anchors may sink below the declared ground
    (SpringModel.contact_offset); a negative one, searched only where the declared ground may lie
    too low, raises the ground plane itself by that much (the offset stays 0). The restitution
    (None: the model's own) matters to the penalty ground alone."""
    if restitution is not None and model.penalty_ground and restitution != model.restitution:
        model = model.with_physics(restitution=float(restitution))
    if zeta0 is not None and zeta0 != model.zeta0:  # SpringModel itself refuses a bad damping
        model = model.with_physics(zeta0=float(zeta0))
    if not offset:
        return model
    if offset > 0:
        return model.with_physics(contact_offset=float(offset))
    n = np.asarray(model.unit_normal(), np.float64)
    point = np.asarray(model.ground_point, np.float64) - float(offset) * n
    return model.with_physics(contact_offset=0.0, ground_point=tuple(float(c) for c in point))


def _tell(es, candidates, values, best: float) -> None:
    """Hand CMA-ES a generation's scores, a candidate that blew up (infinite) scored worse than
    every finite one of the generation (than ``best`` when none is finite)."""
    finite = [v for v in values if math.isfinite(v)]
    worst = max(finite) if finite else best
    es.tell(candidates, [v if math.isfinite(v) else 2.0 * worst + 1.0 for v in values])


def object_height(model: SpringModel) -> float:
    """The anchors' extent along the ground normal (their extent along gravity without a ground)."""
    n = torch.as_tensor(model.unit_normal(), dtype=torch.float64)
    h = model.rest_positions.double() @ n
    return float(h.max() - h.min())


def run(g: Gaussians, model: SpringModel, binding: Binding, v0: torch.Tensor, frames: FrameCache, n_fit: int,
        frame_dt: float, settings: GlobalSearchSettings, progress: bool,
        checkpoint: Checkpoint | None = None, horizon: int = 0) -> GlobalResult:
    """Search the global log10 stiffness, friction logit, kappa, contact offset, (penalty ground)
    restitution and (``search_zeta0``) the springs' damping, then the region offsets (see the
    module docstring). ``checkpoint`` saves the candidates scored so far; on resume the search
    runs again from its seed and takes their scores from the checkpoint instead of simulating them
    (the brackets and CMA-ES are deterministic given the scores, so it continues exactly where it
    stopped). ``horizon`` (frames, beyond ``n_fit``): the chosen
    candidate must also simulate that long without blowing up (:func:`stable_choice`)."""
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
    height = object_height(model) if model.ground_point is not None else 0.0
    offset_min, offset_max = settings.contact_offset_min * height, settings.contact_offset_max * height
    offset_points = settings.offset_points if offset_max > offset_min else 0
    bouncy = model.penalty_ground  # the restitution matters
    e0 = float(model.restitution)
    damped = settings.search_zeta0
    # zeta0 is searched in log10 (the candidates carry log10 zeta0; 0, no damping, starts at the
    # range's low end); None where it is no dimension: every candidate keeps the model's own
    z0 = float(np.clip(math.log10(model.zeta0) if model.zeta0 > 0 else ZETA0_LOG_RANGE[0], *ZETA0_LOG_RANGE)) \
        if damped else None
    n_regions = min(settings.regions, model.n_anchors) if settings.regions > 1 else 0
    total = sum(n for _, n in settings.rounds(offsets=offset_points > 0))
    bar = tqdm(total=total, desc="global", disable=not progress, leave=False)
    best = (math.inf, None)
    rounds = []

    def state() -> dict:
        return {"evaluations": [{**e, "loss": e["loss"] if math.isfinite(e["loss"]) else None}
                                for e in score.evaluations]}

    def scored(log_k, phi, kappa, offset, restitution, log_zeta0, **region):
        value = score(log_k, phi, kappa, offset, restitution,
                      None if log_zeta0 is None else 10.0 ** float(log_zeta0), **region)
        if len(score.evaluations) > len(score.replay):
            checkpoint.step(len(score.evaluations), state)
        return value

    def consider(log_k, phi, kappa, offset, restitution, log_zeta0):
        nonlocal best
        value = scored(log_k, phi, kappa, offset, restitution, log_zeta0)
        if value < best[0]:
            best = (value, (log_k, phi, kappa, offset, restitution, log_zeta0))
        bar.update(1)
        if best[1] is not None:
            bar.set_postfix(loss=f"{best[0]:.4f}", log_k=f"{best[1][0]:.2f}",
                            friction=f"{float(torch.sigmoid(torch.tensor(best[1][1]))):.2f}", kappa=f"{best[1][2]:.2f}",
                            offset=f"{best[1][3]:.3f}", **({"restitution": f"{best[1][4]:.2f}"} if bouncy else {}),
                            **({"zeta0": f"{10 ** best[1][5]:.3g}"} if damped else {}))
        return value

    # 1. the decade of the stiffness, at the middle of the contact offsets searched
    for log_k in np.linspace(lo, hi, settings.grid_points):
        consider(float(log_k), phi0, kappa0, 0.5 * (offset_min + offset_max), e0, z0)
    rounds.append(best[0])
    if best[1] is None:
        bar.close()
        raise SgausError(f"global search: the simulation blew up for every stiffness in {lo:g}..{hi:g} up to "
                         f"{settings.max_substeps} substeps per frame; narrow log_k_range or raise max_substeps")
    # 2. the contact offset at that stiffness (it sets when the object lands and how high it rests)
    if offset_points:
        for offset in np.linspace(offset_min, offset_max, offset_points):
            consider(best[1][0], phi0, kappa0, float(offset), e0, z0)
        rounds.append(best[0])
    # 2b. the springs' damping at that stiffness and offset (how fast the wobble dies, how high it bounces)
    if damped:
        for log_zeta0 in np.linspace(*ZETA0_LOG_RANGE, settings.zeta0_points):
            consider(best[1][0], phi0, kappa0, best[1][3], e0, float(log_zeta0))
        rounds.append(best[0])
    # 3. everything together
    moving = [True, settings.search_friction, settings.search_kappa and soft, offset_max > offset_min, bouncy, damped]
    ranges = [(lo, hi), PHI_RANGE, KAPPA_RANGE, (offset_min, max(offset_max, offset_min + 1e-12)), RESTITUTION_RANGE,
              ZETA0_LOG_RANGE]
    if settings.cma_generations and any(moving):
        dims = [i for i in range(len(moving)) if moving[i]]

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
            _tell(es, candidates, values, best[0])
            rounds.append(best[0])
    log_k, phi, kappa, offset, restitution, log_zeta0 = best[1]
    n = model.n_anchors
    # 4. coarse heterogeneity: a few smooth regions around the global value, still zero-order
    if n_regions and settings.region_generations:
        from pipeline.fit.dynamic import region_weights

        weights = region_weights(model.rest_positions, n_regions, settings.seed)

        def field_of(z):
            f = weights @ torch.as_tensor(np.clip(z, -REGION_SPAN, REGION_SPAN), dtype=torch.float32)
            return f - f.mean()

        uniform = best[0]
        best_z = (uniform, np.zeros(n_regions))
        es = cma.CMAEvolutionStrategy([0.0] * n_regions, 0.3 * REGION_SPAN,
                                      {"bounds": [-REGION_SPAN, REGION_SPAN], "popsize": settings.cma_population,
                                       "seed": settings.seed + 2, "verbose": -9, "maxiter": settings.region_generations})
        for _gen in range(settings.region_generations):
            if es.stop():
                break
            candidates = es.ask()
            values = []
            for z in candidates:
                value = scored(log_k, phi, kappa, offset, restitution, log_zeta0, field=field_of(z), regions=z)
                bar.update(1)
                values.append(value)
                if value < best_z[0]:
                    best_z = (value, np.asarray(z, dtype=np.float64))
                    bar.set_postfix(loss=f"{value:.4f}", regions=" ".join(f"{v:+.2f}" for v in best_z[1]))
            _tell(es, candidates, values, best_z[0])
            rounds.append(min(best[0], best_z[0]))
    bar.close()
    field_of_regions = field_of if n_regions and settings.region_generations else None
    chosen, substeps, passed_over = stable_choice(score, model, v0, max(horizon, n_fit), frame_dt, settings,
                                                  field_of_regions)
    return GlobalResult(_candidate_params(chosen, n, field_of_regions), float(chosen["loss"]), score.evaluations,
                        rounds, float(chosen["contact_offset"]), int(substeps),
                        [float(v) for v in chosen.get("regions", [])], passed_over,
                        float(chosen["restitution"]) if bouncy else None,
                        float(chosen["zeta0"]) if damped else None)


STABLE_TRIES = 8  # candidates, best first, tried over the horizon before giving up on stability


def stable_choice(score: _Scorer, model: SpringModel, v0: torch.Tensor, horizon: int, frame_dt: float,
                  settings: GlobalSearchSettings, field_of=None) -> tuple[dict, int, list]:
    """The best-scored candidate that also simulates ``horizon`` frames (the video's length, not
    only the fitted frames) without blowing up at up to max_substeps, with the substeps that needed,
    and the better-scored candidates passed over. With the authors' directed springs (a spring
    that is not mirrored pulls one end only) a stiff model can gain energy of its own once it
    touches the ground, whatever the substeps: on a nearly still scene, whose loss hardly depends
    on the stiffness, the search chose log10 k 5.8, which scored the fitted frames well and blew up
    two frames later even at 3000 substeps. Where none of the first STABLE_TRIES is stable over the
    horizon, the best one is kept (the fitted frames were fine; simulating further is what fails)."""
    ranked, seen = [], set()
    for e in sorted((e for e in score.evaluations if math.isfinite(e["loss"])), key=lambda e: e["loss"]):
        what = (e["log_k"], e["friction_logit"], e["kappa"], e["contact_offset"], e["restitution"],
                e.get("zeta0"), tuple(e.get("regions", ())))
        if what not in seen:  # CMA-ES may propose a point twice (its bounds clip to the same corner)
            seen.add(what)
            ranked.append(e)
    passed_over = []
    for e in ranked[:STABLE_TRIES]:
        if horizon <= score.n_fit:
            return e, int(e["substeps"]), passed_over
        placed_model = placed(model, float(e["contact_offset"]), float(e["restitution"]), e.get("zeta0"))
        try:
            _pos, substeps = _rollout_growing(placed_model, _candidate_params(e, model.n_anchors, field_of), v0,
                                              horizon - 1, frame_dt, int(e["substeps"]), settings.max_substeps)
            return e, substeps, passed_over
        except SimulationUnstable:
            pass
        passed_over.append({k: e[k] for k in ("log_k", "friction_logit", "kappa", "contact_offset", "restitution",
                                              "zeta0", "loss") if k in e})
    best = ranked[0]
    return best, int(best["substeps"]), passed_over


def save(r: GlobalResult, directory: Path) -> None:
    """global.json: the chosen global log10 k (the mean of the per-anchor values), friction logit,
    kappa, contact offset, restitution (null for the projection ground), the springs' damping zeta0
    (null where it was not searched), region offsets and
    per-anchor log10 k, the loss, and every candidate."""
    write_json(directory / "global.json", {
        "log_k": float(r.params.log_stiffness.double().mean()), "friction_logit": float(r.params.friction_logit),
        "kappa": float(r.params.kappa), "contact_offset": r.contact_offset, "restitution": r.restitution,
        "zeta0": r.zeta0,
        "substeps": r.substeps,
        "regions": r.regions, "log_stiffness": [float(v) for v in r.params.log_stiffness],
        "n_anchors": int(r.params.log_stiffness.numel()), "loss": r.loss, "passed_over": r.passed_over,
        "evaluations": [{**e, "loss": e["loss"] if math.isfinite(e["loss"]) else None} for e in r.evaluations],
        "best_per_round": r.best_per_round})


def load(directory: Path) -> GlobalResult:
    path = directory / "global.json"
    d = read_json(path, dict)
    try:
        n = int(d["n_anchors"])
        # a global.json written before regions and contact offsets existed holds a uniform log_k
        if "log_stiffness" in d:
            log_stiffness = torch.tensor([float(v) for v in d["log_stiffness"]], dtype=torch.float32)
            bad = (~torch.isfinite(log_stiffness)).nonzero().flatten().tolist()
            if bad:
                raise SgausError(f"{path}: 'log_stiffness' holds {float(log_stiffness[bad[0]])} at anchor {bad[0]}")
            if log_stiffness.shape != (n,):
                raise ValueError(f"log_stiffness must hold {n} values, one per anchor")
        else:
            log_stiffness = torch.full((n,), number(d, "log_k", path, "stiffness"))
        params = SpringParams(log_stiffness, torch.tensor(number(d, "kappa", path, "soft vector")),
                              torch.tensor(number(d, "friction_logit", path, "friction")))
        evaluations = [{**e, "loss": math.inf if e["loss"] is None else e["loss"]} for e in d["evaluations"]]
        return GlobalResult(params, float(d["loss"]), evaluations, list(d["best_per_round"]),
                            float(d.get("contact_offset", 0.0)), int(d.get("substeps", 0)),
                            [float(v) for v in d.get("regions", [])], list(d.get("passed_over", [])),
                            None if d.get("restitution") is None else number(d, "restitution", path, "ground"),
                            None if d.get("zeta0") is None else number(d, "zeta0", path, "spring damping", low=0))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, SgausError):
            raise
        raise SgausError(f"{path}: not a global-search result ({err})") from None
