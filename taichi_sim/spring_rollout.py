"""Differentiable rollouts of the spring-mass simulator (paper Sec. 4.2-4.3), as in Warp and Newton:

* Model: :class:`~taichi_sim.spring_model.SpringModel` (fixed: springs, mass, gravity, ground).
* State: :class:`SpringState`, positions ``x`` [N,3] and velocities ``v`` [N,3] (the initial
  velocity v0 is the control input of a rollout).
* Params: :class:`~taichi_sim.spring_params.SpringParams`, the learned physics.
* Integrator: :class:`Integrator`, the frame time, substeps, the instability retry rule and the
  backward pass's memory budget. It is stateless: :func:`rollout` takes all four.

Per substep (dt = frame_dt / substeps) every anchor i gathers, over its own springs j,

    spring   -k_ij eta_j (l - L0) h(l) u        k_ij = 10^k_i / L0 (Eq. 9, 16)
    damping  -(zeta0 / L0) ((v_i - v_j) . u) u                      (Eq. 10, 17)

with u the unit vector from j to i, h = (1 + |l/L0 - 1|)^p_k ("smooth", the authors' code) or
|l - L0|^p_k ("paper"), and no spring force within ``dead_zone`` of the rest length; then
semi-implicit Euler with gravity (Eq. 12-13) and the ground (Eq. 14): an anchor past the plane is
projected onto it, loses its normal velocity, and its tangential velocity is multiplied by the
friction factor (1 = smooth, 0 = sticky; per substep or per unit of contact time, see the model);
or, with the model's "penalty" contact, a damped stiff spring pushes an anchor below the plane
out of it over a few milliseconds, with the same friction.

:func:`rollout` runs the Taichi kernels (taichi_sim/spring_kernels.py) with a hand-written
backward; :func:`taichi_sim.spring_torch.rollout` is its plain-PyTorch twin with the same
signature. With ``Integrator.checkpoint`` (the default) the forward pass keeps what the backward
needs of every substep (x, v, the velocity before the ground, the contact flags: about 40 bytes
per anchor and substep in f32) for as many frames as fit in ``record_mb`` megabytes, and only the
frames past that budget are recomputed from their frame-boundary state during backward. The state
is checked once per frame (one host synchronisation per frame, none inside the substep loop) for
NaN, Inf, runaway speed and energy it cannot have: springs at rest, damping, the inelastic ground
and friction only take energy away, so the kinetic plus gravitational energy can exceed its start
only by the strain energy of a deformed start (and the lift of anchors starting below the ground),
and by what springs that pull one end only feed it (``Integrator.energy_tolerance``).
An explicit integrator past its stability limit gains energy geometrically while every speed is
still plausible (measured: a torus at log10 k 5 with 135 substeps per frame bounced normally, then
its energy grew 5x per frame from frame 15 and its anchors scattered, all below the speed limit).
A failure raises :class:`SimulationUnstable`, which :func:`rollout_with_retry` answers with more
substeps (:meth:`Integrator.more_substeps`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from taichi_sim import spring_kernels as K
from taichi_sim.runtime import require_taichi
from taichi_sim.spring_model import FORCE_LAWS, FRICTION_REFERENCE_DT, SPRING_STIFFNESS, SPRINGS, SpringModel
from taichi_sim.spring_params import SpringParams, friction_from_logit, soft_vector
from taichi_sim.errors import SgausError

RECORD_MB = 512.0  # default memory for substep states kept from the forward pass
# the penalty ground's contact must span at least this many substeps. The explicit step of its
# spring is stable above pi / 2 substeps per contact, but a lone anchor landing at restitution 0.5
# left at 0.58 of its landing speed with 4 substeps per contact, 0.54 with 7, 0.52 with 10 and 0.50
# with 20 or more (0.8: 0.89 / 0.83 / 0.81 / 0.80)
PENALTY_MIN_SUBSTEPS = 6.0


@dataclass
class SpringState:
    """x [N,3] positions; v [N,3] velocities, or [3] for one velocity of every anchor."""

    x: torch.Tensor
    v: torch.Tensor


@dataclass(frozen=True)
class Integrator:
    """How a rollout advances in time (semi-implicit Euler, Eq. 12-13).

    frame_dt:       0.03   seconds between frames
    substeps:       100    substeps per frame
    max_substeps:   500    :meth:`more_substeps` gives up above this many substeps per frame
    retry_substeps: 50     substeps added per frame after an unstable rollout
    max_speed:      None   speed (units/s) above which the state counts as unstable;
                           None = 100 * (extent of the rest anchors) / frame_dt
    energy_tolerance: 1.0  the state counts as unstable once its kinetic plus gravitational
                           energy exceeds what it may have (its start plus the start's strain
                           energy) by this fraction of the energy scale (the start's kinetic
                           energy plus the work of gravity over the anchors' extent); None = off.
                           Not 0: springs of the k-nearest graph that are not mirrored pull one
                           end only, which can feed a stable rollout some energy (a 64-anchor cube
                           rocking on the ground gained 17 % of that scale in 30 frames at 500
                           substeps); a blow-up gains it geometrically, a few frames from onset
    record_mb:      512    memory (MB) for substep states kept for the backward pass
    checkpoint:     True   bound the backward's memory by recomputing frames past record_mb
                           (False keeps every substep)
    """

    frame_dt: float = 0.03
    substeps: int = 100
    max_substeps: int = 500
    retry_substeps: int = 50
    max_speed: float | None = None
    energy_tolerance: float | None = 1.0
    record_mb: float = RECORD_MB
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(float(self.frame_dt)) and float(self.frame_dt) > 0):
            raise SgausError(f"frame_dt must be a positive number of seconds, got {self.frame_dt}")
        for name in ("substeps", "max_substeps", "retry_substeps"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise SgausError(f"{name} must be a positive integer, got {value}")
            object.__setattr__(self, name, int(value))
        if self.max_speed is not None and not (float(self.max_speed) > 0):
            raise SgausError(f"max_speed must be positive or None, got {self.max_speed}")
        if self.energy_tolerance is not None and not (float(self.energy_tolerance) > 0
                                                      and math.isfinite(float(self.energy_tolerance))):
            raise SgausError(f"energy_tolerance must be a positive number or None, got {self.energy_tolerance}")
        if not float(self.record_mb) >= 0:
            raise SgausError(f"record_mb must be a number >= 0, got {self.record_mb}")
        object.__setattr__(self, "frame_dt", float(self.frame_dt))

    @property
    def dt(self) -> float:
        return self.frame_dt / self.substeps

    def with_substeps(self, substeps: int) -> "Integrator":
        from dataclasses import replace

        return replace(self, substeps=substeps)

    def more_substeps(self) -> "Integrator | None":
        """The integrator to retry an unstable rollout with, or None past ``max_substeps``."""
        if self.substeps + self.retry_substeps > self.max_substeps:
            return None
        return self.with_substeps(self.substeps + self.retry_substeps)


@dataclass
class Trajectory:
    """positions [F+1,N,3] with positions[0] = x0; v_last [N,3]; substeps per frame used."""

    positions: torch.Tensor
    v_last: torch.Tensor
    substeps: int


class SimulationUnstable(SgausError):
    """The state became NaN/Inf or ran away; more substeps per frame usually cure it."""

    def __init__(self, frame: int, substeps: int, what: str):
        self.frame, self.substeps = frame, substeps
        super().__init__(f"the spring-mass simulation became unstable at frame {frame} with {substeps} "
                         f"substeps per frame ({what}); use more substeps per frame")


# ----------------------------------------------------------------------------- shared preparation
@dataclass
class RolloutInputs:
    """Validated, backend-neutral inputs of a rollout, all in the dtype of x0.

    x0, v0 [N,3]; stiffness [N] = 10^log_stiffness; kappa []; eta [K] = soft_vector(kappa);
    friction [] the factor applied per substep (all still attached to the caller's autograd
    graph); prm [18] the kernel scalars (spring_kernels.py); lift [N] how far above the contact
    plane each anchor meets the ground (SpringModel.contact_lift)."""

    x0: torch.Tensor
    v0: torch.Tensor
    stiffness: torch.Tensor
    kappa: torch.Tensor
    eta: torch.Tensor
    friction: torch.Tensor
    neighbors: torch.Tensor
    rest_length: torch.Tensor
    prm: torch.Tensor
    n_frames: int
    substeps: int
    max_speed: float
    law: int
    p_k: float
    lift: torch.Tensor  # [N] how far above the contact plane each anchor meets the ground
    pair: int = 0  # 1: a spring's stiffness is sqrt(k_i k_j) (SpringModel.spring_stiffness "pair")
    mirror: int = 0  # 1: every spring acts on both its ends, half each (SpringModel.springs "mirrored")
    penalty: int = 0  # 1: the penalty ground (SpringModel.contact "penalty"), 0: the projection
    energy_limit: float = math.inf  # the most kinetic + gravitational energy per unit mass (see energy())


def _scalar(t, name: str, dtype) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.numel() != 1:
        raise SgausError(f"{name} must be a scalar tensor, got shape {list(t.shape)}")
    return t.reshape(()).to(dtype)


def prepare_inputs(model: SpringModel, params: SpringParams, state0: SpringState, n_frames: int,
                   integrator: Integrator) -> RolloutInputs:
    """Check every input of a rollout (SgausError with one line naming the problem) and turn the
    learned parameters into physical ones with differentiable torch operations."""
    if not isinstance(model, SpringModel):
        raise SgausError(f"model must be a SpringModel, got {type(model).__name__}")
    if not isinstance(integrator, Integrator):
        raise SgausError(f"integrator must be an Integrator, got {type(integrator).__name__}")
    n, k = model.n_anchors, model.n_springs
    x0 = state0.x
    if not isinstance(x0, torch.Tensor) or x0.dtype not in (torch.float32, torch.float64):
        raise SgausError(f"x0 must be a float32 or float64 tensor, got {getattr(x0, 'dtype', type(x0).__name__)}")
    dtype, dev = x0.dtype, x0.device
    if tuple(x0.shape) != (n, 3):
        raise SgausError(f"x0 must be [N={n},3] like the model's anchors, got {list(x0.shape)}")
    v0 = torch.as_tensor(state0.v)
    if tuple(v0.shape) == (3,):
        v0 = v0.to(dtype).expand(n, 3)
    elif tuple(v0.shape) == (n, 3):
        v0 = v0.to(dtype)
    else:
        raise SgausError(f"v0 must be [3] or [N={n},3], got {list(v0.shape)}")
    log_stiffness = torch.as_tensor(params.log_stiffness)
    if tuple(log_stiffness.shape) != (n,):
        raise SgausError(f"log_stiffness must be [N={n}] (one log10 stiffness per anchor), got "
                         f"{list(log_stiffness.shape)}")
    kappa = _scalar(params.kappa, "kappa", dtype)
    phi = _scalar(params.friction_logit, "friction_logit", dtype)
    for name, t in (("x0", x0), ("v0", v0)):
        if not bool(torch.isfinite(t.detach()).all()):
            raise SgausError(f"the initial state {name} is not finite")
    params.check_finite()
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 0:
        raise SgausError(f"n_frames must be a non-negative integer, got {n_frames}")
    dt = integrator.dt
    if model.ground_point is not None:
        ground = [*model.contact_point(), *model.unit_normal(), 1.0]
    else:
        ground = [0.0] * 6 + [0.0]
    prm = torch.tensor([dt, 1.0 / model.mass, model.zeta0, model.p_k, model.dead_zone, *model.gravity, *ground],
                       dtype=dtype, device=dev)
    stiffness = torch.pow(10.0, log_stiffness.to(dtype))  # Eq. 16: k_ij = 10^k_i / L0_ij
    eta = soft_vector(kappa, k, model.n_c).to(device=dev)
    friction = friction_from_logit(phi)
    if model.friction_mode == "per_time":  # f per FRICTION_REFERENCE_DT of contact -> f^(dt/ref) per substep
        friction = torch.exp(torch.log(friction.clamp_min(1e-12)) * (dt / FRICTION_REFERENCE_DT))
    penalty = int(model.penalty_ground)
    contact_k, contact_c = model.penalty_constants() if penalty else (0.0, 0.0)  # read by the penalty alone
    if penalty and model.contact_time < PENALTY_MIN_SUBSTEPS * dt:
        raise SimulationUnstable(0, integrator.substeps, f"the penalty ground's contact time {model.contact_time:g} s "
                                 f"spans fewer than {PENALTY_MIN_SUBSTEPS:g} substeps of {dt:.3g} s")
    if penalty and contact_c * dt > 1.0:  # an explicit damping step past 1 reverses the speed it damps
        raise SimulationUnstable(0, integrator.substeps, f"the penalty ground's damping {contact_c:.4g} /s "
                                 f"(restitution {model.restitution:g}) takes more than all the speed in one substep "
                                 f"of {dt:.3g} s")
    prm = torch.cat([prm, friction.detach().reshape(1), torch.tensor([contact_k, contact_c], dtype=dtype, device=dev)])
    max_speed = integrator.max_speed
    if max_speed is None:
        max_speed = 100.0 * max(model.extent, 1e-6) / integrator.frame_dt
    inputs = RolloutInputs(
        x0=x0, v0=v0, stiffness=stiffness, kappa=kappa, eta=eta, friction=friction,
        neighbors=model.neighbors.to(dev), rest_length=model.rest_length.to(device=dev, dtype=dtype),
        prm=prm, n_frames=int(n_frames), substeps=integrator.substeps, max_speed=float(max_speed),
        law=FORCE_LAWS.index(model.force_law), p_k=float(model.p_k),
        pair=SPRING_STIFFNESS.index(model.spring_stiffness), mirror=SPRINGS.index(model.springs), penalty=penalty,
        lift=model.contact_lift(dev, dtype).contiguous(),
    )
    if integrator.energy_tolerance is not None and n_frames > 0:
        inputs.energy_limit = energy_limit(inputs, model, integrator)
    return inputs


def energy(x: torch.Tensor, v: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """Kinetic plus gravitational energy per unit mass, summed over the anchors (float64)."""
    g = prm[K.P_G:K.P_G + 3].double()
    return 0.5 * v.double().square().sum() - (x.double() @ g).sum()


def spring_force(ext, rest_length, stiffness, eta, neighbors, p, law: int, pair: int) -> torch.Tensor:
    """The magnitude k_ij eta_j (l - L0) h / L0 of every spring's force [N,K] (Eq. 9, 16) from its
    extension l - L0 [N,K] (nonzero where |l - L0| is taken to a power), without the dead zone."""
    h = torch.pow(1.0 + ext.abs() / rest_length, p) if law == 0 else torch.pow(ext.abs(), p)
    k = torch.sqrt(stiffness[:, None] * stiffness[neighbors]) if pair else stiffness[:, None]
    return k / rest_length * eta[None, :] * ext * h


def strain_energy_bound(x: torch.Tensor, inputs: RolloutInputs) -> torch.Tensor:
    """An upper bound of the springs' elastic energy at positions x (a spring's force grows with
    its extension, so its energy is at most extension x force), float64."""
    x = x.double()
    rest = inputs.rest_length.double()
    ext = (torch.linalg.vector_norm(x[:, None, :] - x[inputs.neighbors], dim=-1) - rest).abs()
    return (ext * spring_force(ext, rest, inputs.stiffness.detach().double(), inputs.eta.detach().double(),
                               inputs.neighbors, inputs.p_k, inputs.law, inputs.pair)).sum()


def energy_limit(inputs: RolloutInputs, model: SpringModel, integrator: Integrator) -> float:
    """The most kinetic + gravitational energy per unit mass a stable rollout can reach: the
    start's, plus the start's strain energy (after the ground lifts anchors that start below it)
    and that lift (both may turn into motion), plus ``energy_tolerance`` times the energy scale
    (the start's kinetic energy plus gravity's work over the anchors' extent, at least that of
    moving them 1 % of their extent per frame). One host synchronisation per rollout."""
    with torch.no_grad():
        x0, v0, prm = inputs.x0.detach(), inputs.v0.detach(), inputs.prm.detach()
        n = x0.shape[0]
        g = float(torch.linalg.vector_norm(prm[K.P_G:K.P_G + 3].double()))
        extent = max(model.extent, 1e-6)
        kinetic = 0.5 * v0.double().square().sum()
        scale = torch.clamp(kinetic + n * g * extent, min=n * (0.01 * extent / integrator.frame_dt) ** 2)
        start, lifted = x0.double(), 0.0
        if float(prm[K.P_HAS_GROUND]) > 0:  # the first substep lifts anchors below the ground onto it
            nrm = prm[K.P_GN:K.P_GN + 3].double()
            depth = torch.clamp(inputs.lift.double() - (start - prm[K.P_GP:K.P_GP + 3].double()) @ nrm, min=0.0)
            lifted = depth.sum() * abs(float(prm[K.P_G:K.P_G + 3].double() @ nrm))
            if inputs.penalty:  # the ground's spring, compressed by that depth, can launch them
                lifted = lifted + 0.5 * float(prm[K.P_CONTACT_K]) * depth.square().sum()
            start = start + depth[:, None] * nrm
        gain = torch.maximum(strain_energy_bound(x0, inputs), strain_energy_bound(start, inputs)) / model.mass + lifted
        limit = energy(x0, v0, prm) + gain + float(integrator.energy_tolerance) * scale
    return float(limit)


def check_state(x: torch.Tensor, v: torch.Tensor, frame: int, inputs: RolloutInputs) -> None:
    """One host synchronisation: raise SimulationUnstable on NaN/Inf, runaway speed or energy
    above ``inputs.energy_limit``."""
    speed = torch.linalg.vector_norm(v, dim=1).max() if len(v) else v.new_zeros(())
    ok = torch.isfinite(x).all() & (speed <= inputs.max_speed)
    if math.isfinite(inputs.energy_limit):
        e = energy(x, v, inputs.prm)
        ok = ok & (e <= inputs.energy_limit)
    if not bool(ok):
        if not bool(torch.isfinite(speed)) or not bool(torch.isfinite(x).all()):
            what = "NaN or Inf in the state"
        elif float(speed) > inputs.max_speed:
            what = f"speed {float(speed):.3g} above {inputs.max_speed:.3g}"
        else:
            what = (f"its energy rose above what its start can supply, {float(e):.4g} > {inputs.energy_limit:.4g} "
                    "per unit anchor mass")
        raise SimulationUnstable(frame, inputs.substeps, what)


# ----------------------------------------------------------------------------- Taichi backend
class FrameStepper:
    """Runs substeps with the Taichi kernels; buffers are allocated once per rollout."""

    def __init__(self, inputs: RolloutInputs, model: SpringModel):
        self.inputs, self.model = inputs, model
        dev, dtype = inputs.x0.device, inputs.x0.dtype
        self.nbr, self.mutual, self.rev_ptr, self.rev_src, self.rev_flat = model.kernel_topology(dev)
        self.rest, self.inv_rest, self.rev_rest, self.rev_inv_rest = model.rest_tables(dev, dtype)
        self.stiff = inputs.stiffness.detach().contiguous()
        kappa = inputs.kappa.detach()
        n_c, k = model.n_c, model.n_springs
        eta, deta = torch.func.jvp(lambda kap: soft_vector(kap, k, n_c), (kappa,), (torch.ones_like(kappa),))
        self.eta, self.deta = eta.to(dev).contiguous(), deta.to(dev).contiguous()
        self.prm = inputs.prm.contiguous()
        self.mutual_k = self.rev_k = None  # made by the first grad_step (here when mirrored: the forward reads them)
        if inputs.mirror:
            self._stiffness_tables()
        # the forward's tables of the mirrored halves; without mirrored springs the kernel reads none
        # of them, and any arrays of their kinds do
        self.forward_tables = (self.mutual_k, self.rev_ptr, self.rev_src, self.rev_rest, self.rev_inv_rest,
                               self.rev_k) if inputs.mirror else \
            (self.rest, self.rev_ptr, self.rev_src, self.rev_rest, self.rev_inv_rest, self.rev_rest)
        x = inputs.x0
        n = x.shape[0]
        self.tmp = [torch.empty(n, 3, dtype=x.dtype, device=x.device) for _ in range(5)]
        self.contact = torch.empty(n, dtype=torch.int32, device=x.device)

    def _stiffness_tables(self) -> None:
        """Per-rollout constants of the gradient kernels: stiff[n] * eta[q] of the reverse spring of
        a mutual pair (-1 where there is none) and stiff * eta of the springs of the reverse
        adjacency (0 for padding)."""
        self.mutual_k = torch.empty_like(self.rest)
        self.rev_k = torch.empty_like(self.rev_rest)
        K.stiffness_tables(self.nbr, self.mutual, self.rev_flat, self.stiff, self.eta, self.mutual_k, self.rev_k,
                           self.inputs.pair)

    def step(self, x, v, x_out, v_out, vh_out, contact_out) -> None:
        K.substep_forward(x, v, self.nbr, self.rest, self.inv_rest, self.stiff, self.eta, self.prm, self.inputs.lift,
                          x_out, v_out, vh_out, contact_out, *self.forward_tables, self.inputs.law, self.inputs.p_k,
                          self.inputs.pair, self.inputs.mirror, self.inputs.penalty)

    def grad_step(self, x, v, vh, contact, gx, gv, g_stiff, g_kappa, g_friction, scratch) -> None:
        """Adjoint of one substep from (x, v) (and its recorded vh, contact): (gx, gv), the gradient
        with respect to the substep's output, is replaced in place by the gradient with respect to
        its input; the parameters' gradients are added to g_stiff, g_kappa, g_friction [N].
        ``scratch``: three [N,3] buffers."""
        gxd, gvd, gforce = scratch
        if self.mutual_k is None:
            self._stiffness_tables()
        law, p_k, pair, mirror = self.inputs.law, self.inputs.p_k, self.inputs.pair, self.inputs.mirror
        K.spring_backward(x, v, vh, contact, self.nbr, self.rest, self.inv_rest, self.stiff, self.eta, self.prm,
                          self.mutual_k, gxd, gvd, gforce, g_friction, self.deta, gx, gv, g_stiff, g_kappa, law, p_k,
                          pair, mirror, self.inputs.penalty)
        K.spring_backward_reverse(x, v, gforce, self.prm, self.rev_ptr, self.rev_src, self.rev_rest,
                                  self.rev_inv_rest, self.rev_k, self.stiff, gx, gv, g_stiff, law, p_k,
                                  pair, mirror)

    def run(self, x, v, x_out, v_out) -> None:
        """Advance one frame from (x, v), writing the end state into (x_out, v_out)."""
        s_total = self.inputs.substeps
        a, b, c, d, vh = self.tmp
        cur = (x, v)
        for s in range(s_total):
            nxt = (x_out, v_out) if s == s_total - 1 else ((a, b) if s % 2 == 0 else (c, d))
            self.step(cur[0], cur[1], nxt[0], nxt[1], vh, self.contact)
            cur = nxt

    def record(self, x, v) -> tuple:
        """Advance one frame keeping every substep: X, V [S+1,N,3], VH [S,N,3], C [S,N]."""
        s_total, (n, _) = self.inputs.substeps, x.shape
        X = torch.empty(s_total + 1, n, 3, dtype=x.dtype, device=x.device)
        V = torch.empty_like(X)
        VH = torch.empty(s_total, n, 3, dtype=x.dtype, device=x.device)
        C = torch.empty(s_total, n, dtype=torch.int32, device=x.device)
        X[0].copy_(x)
        V[0].copy_(v)
        for s in range(s_total):
            self.step(X[s], V[s], X[s + 1], V[s + 1], VH[s], C[s])
        return X, V, VH, C


class _TaichiRollout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, v0, stiffness, kappa, friction, inputs, model, checkpoint, record_mb, progress):
        sim = FrameStepper(inputs, model)
        f_total = inputs.n_frames
        xs = torch.empty(f_total + 1, *x0.shape, dtype=x0.dtype, device=x0.device)
        vs = torch.empty_like(xs)
        xs[0].copy_(x0)
        vs[0].copy_(v0)
        records = []
        keep = 0  # frames whose substeps are kept for the backward pass
        if any(ctx.needs_input_grad[:5]):
            n, item = x0.shape[0], x0.element_size()
            frame_bytes = inputs.substeps * n * (9 * item + 4) + 6 * n * item
            keep = f_total if not checkpoint else min(f_total, int(record_mb * 2**20 // frame_bytes))
        for f in tqdm(range(f_total), desc="simulate", disable=not progress, leave=False):
            if f < keep:
                rec = sim.record(xs[f], vs[f])
                records.append(rec)
                xs[f + 1].copy_(rec[0][-1])
                vs[f + 1].copy_(rec[1][-1])
            else:
                sim.run(xs[f], vs[f], xs[f + 1], vs[f + 1])
            check_state(xs[f + 1], vs[f + 1], f + 1, inputs)
        ctx.sim, ctx.records, ctx.progress = sim, records, progress
        ctx.save_for_backward(xs, vs)
        return xs, vs[f_total].clone()

    @staticmethod
    def backward(ctx, g_positions, g_vlast):
        xs, vs = ctx.saved_tensors
        sim: FrameStepper = ctx.sim
        n = xs.shape[1]
        gx = g_positions[-1].contiguous().clone()
        gv = g_vlast.contiguous().clone()
        scratch = [torch.empty_like(gx) for _ in range(3)]
        g_stiff = torch.zeros(n, dtype=xs.dtype, device=xs.device)
        g_kappa = torch.zeros(n, dtype=xs.dtype, device=xs.device)
        g_fric = torch.zeros(n, dtype=xs.dtype, device=xs.device)
        f_total = xs.shape[0] - 1
        for f in tqdm(reversed(range(f_total)), total=f_total, desc="backward", disable=not ctx.progress,
                      leave=False):
            rec = ctx.records[f] if f < len(ctx.records) else None  # None: past the budget, or freed
            X, V, VH, C = rec if rec is not None else sim.record(xs[f], vs[f])
            for s in reversed(range(sim.inputs.substeps)):
                sim.grad_step(X[s], V[s], VH[s], C[s], gx, gv, g_stiff, g_kappa, g_fric, scratch)
            if f < len(ctx.records):
                ctx.records[f] = rec = None  # free each frame's record once it is used
            gx += g_positions[f]
        return gx, gv, g_stiff, g_kappa.sum(), g_fric.sum(), None, None, None, None, None


# ----------------------------------------------------------------------------- public entry points
def rollout(model: SpringModel, params: SpringParams, state0: SpringState, n_frames: int,
            integrator: Integrator, progress: bool = False) -> Trajectory:
    """Simulate ``n_frames`` frames of ``integrator.substeps`` substeps from ``state0`` with the
    Taichi kernels.

    Returns a :class:`Trajectory` (positions [n_frames+1, N, 3] with positions[0] = x0, v_last
    [N,3]) in x0's dtype, differentiable with respect to x0, v0, log_stiffness, kappa and
    friction_logit (hand-written gradient kernels). Raises SimulationUnstable (an SgausError) naming
    the frame when the state blows up. For gradients truncated at frame boundaries, call it with
    n_frames=1 from a detached state.
    """
    inputs = prepare_inputs(model, params, state0, n_frames, integrator)
    require_taichi()
    positions, v_last = _TaichiRollout.apply(
        inputs.x0.contiguous(), inputs.v0.contiguous(), inputs.stiffness, inputs.kappa, inputs.friction, inputs,
        model, integrator.checkpoint, float(integrator.record_mb), progress)
    return Trajectory(positions, v_last, integrator.substeps)


def rollout_with_retry(model: SpringModel, params: SpringParams, state0: SpringState, n_frames: int,
                       integrator: Integrator, progress: bool = False, simulate=rollout) -> Trajectory:
    """``simulate`` (:func:`rollout` or its twin), retried with :meth:`Integrator.more_substeps`
    after each SimulationUnstable until ``max_substeps`` (then the last SimulationUnstable is raised
    again). The returned trajectory says how many substeps per frame succeeded."""
    while True:
        try:
            return simulate(model, params, state0, n_frames, integrator, progress=progress)
        except SimulationUnstable:
            integrator = integrator.more_substeps()
            if integrator is None:
                raise


__all__ = ["SpringState", "Integrator", "Trajectory", "SimulationUnstable", "RolloutInputs", "prepare_inputs",
           "check_state", "spring_force", "rollout", "rollout_with_retry", "RECORD_MB"]
