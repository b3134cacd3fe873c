"""Differentiable spring-mass simulator of the anchors (paper Sec. 4.2-4.3, REFERENCE.md section 1).

Model / State / Control, as in Warp and Newton:

* Model (:class:`SpringModel`, fixed during a rollout): rest anchors, the k nearest neighbours of
  every anchor sorted nearest first (directed springs: anchor i only feels the springs in its own
  list), rest lengths, and the settings (:class:`SimConfig`). :func:`build_model` makes it.
* State: positions ``x`` [N,3] and velocities ``v`` [N,3].
* Control: the initial velocity ``v0``.
* Learned physics: per-anchor ``log_stiffness`` (log10 k_i, Eq. 16), the soft-vector parameter
  ``kappa`` (Eq. 8) and the ground friction logit ``phi``.

Per substep (dt = frame_dt / substeps) every anchor i gathers, over its own springs j,

    spring   -k_ij eta_j (l - L0) h(l) u        k_ij = 10^k_i / L0 (Eq. 9, 16)
    damping  -(zeta0 / L0) ((v_i - v_j) . u) u                      (Eq. 10, 17)

with u the unit vector from j to i, h = (1 + |l/L0 - 1|)^p_k ("smooth", the authors' code) or
|l - L0|^p_k ("paper"), and no spring force within ``dead_zone`` of the rest length; then
semi-implicit Euler with gravity (Eq. 12-13) and the ground (Eq. 14): an anchor past the plane is
projected onto it, loses its normal velocity, and its tangential velocity is multiplied by
``friction_from_logit(phi)`` (1 = smooth, 0 = sticky).

:func:`rollout` runs frames of substeps with the Taichi kernels (``backend="taichi"``,
taichi_sim/spring_kernels.py) or the plain-PyTorch twin (``backend="torch"``,
taichi_sim/spring_mass_torch.py); both are differentiable with respect to x0, v0, log_stiffness,
kappa and phi. The Taichi backward is hand-written. With ``checkpoint=True`` (the default) the
forward pass keeps what the backward needs of every substep (x, v, the velocity before the
ground, the contact flags: about 40 bytes per anchor and substep in f32) for as many frames as fit
in ``record_mb`` megabytes, and only the frames past that budget are recomputed from their
frame-boundary state during backward, so memory stays bounded; ``checkpoint=False`` keeps every
frame. The state is checked for NaN, Inf and runaway speed once per frame (one
host synchronisation per frame, none inside the substep loop); a failure raises
:class:`SimulationUnstable`, which :func:`rollout_with_retry` answers with 50 more substeps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from taichi_sim import spring_kernels as K
from taichi_sim.runtime import require_taichi

FORCE_LAWS = ("smooth", "paper")
RECORD_MB = 512.0  # default memory for substep states kept from the forward pass (rollout's record_mb)
BACKENDS = ("taichi", "torch")


@dataclass
class SimConfig:
    """Settings of the spring-mass simulator (fixed during a rollout).

    k_neighbors:  256     springs per anchor (its k nearest anchors, self excluded, directed)
    n_c:          16      the first n_c neighbours (nearest first) get soft-vector weight 1 (Eq. 8)
    p_k:          0.5     force-law exponent (Eq. 9)
    force_law:    "smooth"  "smooth": k_ij eta_j (l-L0) (1+|l/L0-1|)^p_k (the authors' code);
                          "paper": k_ij eta_j (l-L0) |l-L0|^p_k (Eq. 9; gradient unbounded at rest)
    zeta0:        0.1     damping zeta_ij = zeta0 / L0_ij (Eq. 17)
    mass:         1.0     mass m0 of every anchor
    gravity:      (0, -9.8, 0)  acceleration of gravity, the full vector is applied
    ground_point: (0, 0, 0)  a point of the ground plane; None = no ground
    ground_normal: (0, 1, 0)  the ground's normal, pointing into the free space (normalised here)
    frame_dt:     0.03    seconds between frames
    substeps:     100     substeps per frame
    max_substeps: 500     rollout_with_retry gives up above this many substeps per frame
    dead_zone:    1e-6    no spring force while |l - L0| is below this
    max_speed:    None    speed (units/s) above which the state counts as unstable;
                          None = 100 * (extent of the rest anchors) / frame_dt
    """

    k_neighbors: int = 256
    n_c: int = 16
    p_k: float = 0.5
    force_law: str = "smooth"
    zeta0: float = 0.1
    mass: float = 1.0
    gravity: tuple = (0.0, -9.8, 0.0)
    ground_point: tuple | None = (0.0, 0.0, 0.0)
    ground_normal: tuple = (0.0, 1.0, 0.0)
    frame_dt: float = 0.03
    substeps: int = 100
    max_substeps: int = 500
    dead_zone: float = 1e-6
    max_speed: float | None = None

    def __post_init__(self) -> None:
        def vec3(name, value):
            try:
                out = tuple(float(c) for c in value)
            except TypeError:
                out = ()
            if len(out) != 3 or not all(math.isfinite(c) for c in out):
                raise ValueError(f"SimConfig.{name} must be three finite numbers, got {value!r}")
            return out

        if int(self.k_neighbors) != self.k_neighbors or self.k_neighbors < 1:
            raise ValueError(f"SimConfig.k_neighbors must be a positive integer, got {self.k_neighbors}")
        if int(self.n_c) != self.n_c or self.n_c < 0:
            raise ValueError(f"SimConfig.n_c must be a non-negative integer, got {self.n_c}")
        if self.force_law not in FORCE_LAWS:
            raise ValueError(f"SimConfig.force_law must be one of {', '.join(FORCE_LAWS)}, got {self.force_law!r}")
        for name in ("p_k", "zeta0", "dead_zone"):
            if not float(getattr(self, name)) >= 0 or not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"SimConfig.{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("mass", "frame_dt"):
            if not float(getattr(self, name)) > 0 or not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"SimConfig.{name} must be positive, got {getattr(self, name)}")
        if int(self.substeps) != self.substeps or self.substeps < 1:
            raise ValueError(f"SimConfig.substeps must be a positive integer, got {self.substeps}")
        if int(self.max_substeps) != self.max_substeps or self.max_substeps < 1:
            raise ValueError(f"SimConfig.max_substeps must be a positive integer, got {self.max_substeps}")
        if self.max_speed is not None and not float(self.max_speed) > 0:
            raise ValueError(f"SimConfig.max_speed must be positive or None, got {self.max_speed}")
        self.k_neighbors, self.n_c = int(self.k_neighbors), int(self.n_c)
        self.substeps, self.max_substeps = int(self.substeps), int(self.max_substeps)
        self.gravity = vec3("gravity", self.gravity)
        self.ground_normal = vec3("ground_normal", self.ground_normal)
        if self.ground_point is not None:
            self.ground_point = vec3("ground_point", self.ground_point)
            if not np.linalg.norm(self.ground_normal) > 0:
                raise ValueError("SimConfig.ground_normal must not be the zero vector")


@dataclass
class SpringModel:
    """The fixed part of a rollout (Model). Made by :func:`build_model`.

    rest_positions: [N,3] anchors at t = 0
    neighbors:      [N,K] int64, the K nearest other anchors of each anchor, nearest first
    rest_length:    [N,K] spring rest lengths L0 (distances at t = 0), all positive
    config:         the SimConfig
    """

    rest_positions: torch.Tensor
    neighbors: torch.Tensor
    rest_length: torch.Tensor
    config: SimConfig
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_anchors(self) -> int:
        return int(self.rest_positions.shape[0])

    @property
    def n_springs(self) -> int:
        """Springs per anchor (K)."""
        return int(self.neighbors.shape[1])

    def check(self) -> None:
        """Raise ValueError when the arrays do not fit together."""
        n = self.rest_positions.shape[0] if self.rest_positions.dim() == 2 else -1
        if self.rest_positions.dim() != 2 or self.rest_positions.shape[1] != 3:
            raise ValueError(f"rest_positions must be [N,3], got {list(self.rest_positions.shape)}")
        if self.neighbors.dim() != 2 or self.neighbors.shape[0] != n:
            raise ValueError(f"neighbors must be [N={n},K], got {list(self.neighbors.shape)}")
        if self.rest_length.shape != self.neighbors.shape:
            raise ValueError(f"rest_length {list(self.rest_length.shape)} must match neighbors "
                             f"{list(self.neighbors.shape)}")
        if self.neighbors.shape[1] < 1:
            raise ValueError("the model has no springs (K = 0)")


def build_model(anchors: torch.Tensor, config: SimConfig) -> SpringModel:
    """Springs from every anchor [N,3] to its ``config.k_neighbors`` nearest other anchors (Eq. 5),
    nearest first, with rest lengths measured now (k-d tree, never a dense N x N matrix)."""
    from scipy.spatial import cKDTree

    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2 or anchors.shape[1] != 3:
        shape = list(anchors.shape) if isinstance(anchors, torch.Tensor) else type(anchors).__name__
        raise ValueError(f"anchors must be a [N,3] tensor, got {shape}")
    n, k = anchors.shape[0], config.k_neighbors
    if k > n - 1:
        raise ValueError(f"k_neighbors={k} springs per anchor need more than {k} anchors, got {n}")
    pts = anchors.detach().cpu().double().numpy()
    if not np.isfinite(pts).all():
        raise ValueError("anchors contain NaN or Inf")
    tree = cKDTree(pts)
    dist, idx = tree.query(pts, k=k + 1)
    dist, idx = dist.reshape(n, k + 1), idx.reshape(n, k + 1)
    is_self = idx == np.arange(n)[:, None]
    if not np.all(is_self.sum(1) == 1) or not np.all(dist[:, 1:] > 0):
        i = int(np.argmin(dist[:, 1]))
        raise ValueError(f"anchors {i} and {int(idx[i, 1])} coincide (springs need distinct anchors): "
                         f"deduplicate the anchors")
    keep = ~is_self
    neighbors = idx[keep].reshape(n, k)
    rest = dist[keep].reshape(n, k)
    return SpringModel(
        rest_positions=anchors.detach().clone(),
        neighbors=torch.from_numpy(neighbors).long(),
        rest_length=torch.from_numpy(rest).to(anchors.dtype),
        config=config,
    )


def soft_vector(kappa: torch.Tensor, k_neighbors: int, n_c: int) -> torch.Tensor:
    """Soft vector eta [K] (Eq. 8): 1 for the first n_c neighbours, then
    clamp(2 - exp(softplus(kappa) * s), 0, 1) with s = j / (K - n_c), j = 0 .. K - n_c - 1."""
    kappa = torch.as_tensor(kappa)
    if kappa.numel() != 1:
        raise ValueError(f"kappa must be a scalar, got shape {list(kappa.shape)}")
    dtype = kappa.dtype if kappa.is_floating_point() else torch.get_default_dtype()
    kappa = kappa.reshape(()).to(dtype)
    n_soft = max(int(k_neighbors) - int(n_c), 0)
    head = torch.ones(int(k_neighbors) - n_soft, dtype=dtype, device=kappa.device)
    s = torch.arange(n_soft, dtype=dtype, device=kappa.device) / max(n_soft, 1)
    tail = torch.clamp(2.0 - torch.exp(torch.nn.functional.softplus(kappa) * s), 0.0, 1.0)
    return torch.cat([head, tail])


def friction_from_logit(phi: torch.Tensor) -> torch.Tensor:
    """Ground friction factor clamp(1.2 sigmoid(phi) - 0.1, 0, 1): 1 = smooth, 0 = sticky."""
    return torch.clamp(1.2 * torch.sigmoid(phi) - 0.1, 0.0, 1.0)


def friction_logit(value: float) -> float:
    """The logit phi whose :func:`friction_from_logit` is ``value`` in [0, 1]; the ends map to
    finite logits that saturate the clamp (0 -> sticky, 1 -> smooth)."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a friction factor must lie in [0, 1], got {value}")
    s = (value + 0.1) / 1.2  # in [1/12, 11/12]: always a finite logit
    if value == 0.0:
        s = 0.05 / 1.2  # strictly below the clamp, so gradients at exactly 0 do not matter
    elif value == 1.0:
        s = 1.15 / 1.2
    return math.log(s / (1.0 - s))


class SimulationUnstable(ValueError):
    """The state became NaN/Inf or ran away; more substeps per frame usually cure it."""

    def __init__(self, frame: int, substeps: int, what: str):
        self.frame, self.substeps = frame, substeps
        super().__init__(f"the spring-mass simulation became unstable at frame {frame} with {substeps} "
                         f"substeps per frame ({what}); use more substeps per frame")


# ----------------------------------------------------------------------------- shared preparation
@dataclass
class Prepared:
    """Validated, backend-neutral inputs of a rollout, all in the dtype of x0.

    x0, v0 [N,3]; stiffness [N] = 10^log_stiffness; kappa []; eta [K] = soft_vector(kappa);
    friction [] (all still attached to the caller's autograd graph); prm [16] the kernel scalars
    (spring_kernels.py)."""

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


def _scalar(t, name: str, dtype) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar tensor, got shape {list(t.shape)}")
    return t.reshape(()).to(dtype)


def prepare(model: SpringModel, x0, v0, log_stiffness, kappa, phi, n_frames, substeps=None) -> Prepared:
    """Check every input of :func:`rollout` (ValueError with one line naming the problem) and turn
    the learned parameters into physical ones with differentiable torch operations."""
    if not isinstance(model, SpringModel):
        raise ValueError(f"model must be a SpringModel, got {type(model).__name__}")
    model.check()
    cfg = model.config
    n, k = model.n_anchors, model.n_springs
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x0 must be a float32 or float64 tensor, got {getattr(x0, 'dtype', type(x0).__name__)}")
    dtype, dev = x0.dtype, x0.device
    if tuple(x0.shape) != (n, 3):
        raise ValueError(f"x0 must be [N={n},3] like the model's anchors, got {list(x0.shape)}")
    v0 = torch.as_tensor(v0)
    if tuple(v0.shape) == (3,):
        v0 = v0.to(dtype).expand(n, 3)
    elif tuple(v0.shape) == (n, 3):
        v0 = v0.to(dtype)
    else:
        raise ValueError(f"v0 must be [3] or [N={n},3], got {list(v0.shape)}")
    log_stiffness = torch.as_tensor(log_stiffness)
    if tuple(log_stiffness.shape) != (n,):
        raise ValueError(f"log_stiffness must be [N={n}] (one log10 stiffness per anchor), got "
                         f"{list(log_stiffness.shape)}")
    kappa = _scalar(kappa, "kappa", dtype)
    phi = _scalar(phi, "friction_logit", dtype)
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 0:
        raise ValueError(f"n_frames must be a non-negative integer, got {n_frames}")
    substeps = cfg.substeps if substeps is None else substeps
    if isinstance(substeps, bool) or int(substeps) != substeps or substeps < 1:
        raise ValueError(f"substeps must be a positive integer, got {substeps}")
    substeps = int(substeps)
    dt = cfg.frame_dt / substeps
    if cfg.ground_point is not None:
        nrm = np.asarray(cfg.ground_normal, dtype=np.float64)
        nrm = nrm / np.linalg.norm(nrm)
        ground = [*cfg.ground_point, *nrm, 1.0]
    else:
        ground = [0.0] * 6 + [0.0]
    prm = torch.tensor([dt, 1.0 / cfg.mass, cfg.zeta0, cfg.p_k, cfg.dead_zone, *cfg.gravity, *ground],
                       dtype=dtype, device=dev)
    stiffness = torch.pow(10.0, log_stiffness.to(dtype))  # Eq. 16: k_ij = 10^k_i / L0_ij
    eta = soft_vector(kappa, k, cfg.n_c).to(device=dev)
    friction = friction_from_logit(phi)
    prm = torch.cat([prm, friction.detach().reshape(1)])
    if cfg.max_speed is not None:
        max_speed = float(cfg.max_speed)
    else:
        cache = model._cache
        if "extent" not in cache:
            r = model.rest_positions
            cache["extent"] = float((r.max(0).values - r.min(0).values).norm()) if len(r) else 1.0
        max_speed = 100.0 * max(cache["extent"], 1e-6) / cfg.frame_dt
    return Prepared(
        x0=x0, v0=v0, stiffness=stiffness, kappa=kappa, eta=eta, friction=friction,
        neighbors=model.neighbors.to(dev), rest_length=model.rest_length.to(device=dev, dtype=dtype),
        prm=prm, n_frames=int(n_frames), substeps=substeps, max_speed=max_speed,
        law=FORCE_LAWS.index(cfg.force_law), p_k=float(cfg.p_k),
    )


def check_state(x: torch.Tensor, v: torch.Tensor, frame: int, prep: Prepared) -> None:
    """One host synchronisation: raise SimulationUnstable on NaN/Inf or runaway speed."""
    speed = torch.linalg.vector_norm(v, dim=1).max() if len(v) else v.new_zeros(())
    ok = torch.isfinite(x).all() & (speed <= prep.max_speed)
    if not bool(ok):
        what = "NaN or Inf in the state" if not bool(torch.isfinite(speed)) or not bool(torch.isfinite(x).all()) \
            else f"speed {float(speed):.3g} above {prep.max_speed:.3g}"
        raise SimulationUnstable(frame, prep.substeps, what)


# ----------------------------------------------------------------------------- Taichi backend
_TABLES: list = []  # [(neighbors, rest_length, versions, tables)], the most recent first


def _tables_cache(model: SpringModel) -> dict:
    """The kernel tables of a model's springs, shared by every SpringModel made from the same
    neighbors and rest_length tensors (callers make a new SpringModel per iteration to change the
    substeps, and the tables take about a second to build at N = 2048, K = 256). The last four
    springs' tables are kept; a tensor changed in place counts as new."""
    nbr, rest = model.neighbors, model.rest_length
    versions = (nbr._version, rest._version)
    for i, (n_, r_, ver, tables) in enumerate(_TABLES):
        if n_ is nbr and r_ is rest and ver == versions:
            _TABLES.insert(0, _TABLES.pop(i))
            return tables
    _TABLES.insert(0, (nbr, rest, versions, {}))
    del _TABLES[4:]
    return _TABLES[0][3]


def _kernel_topology(model: SpringModel, device) -> tuple:
    """Kernel-side topology, cached on the model: int32 neighbours [N,K]; ``mutual`` [N,K], the slot
    q with neighbors[n, q] == a for the spring (a, jj) to n when n also holds a and both springs
    have the same rest length (else -1); and the reverse adjacency of the remaining springs (CSR
    ``ptr`` [N+1], each anchor's list padded to a multiple of K.REV_PAD: for anchor a, the source
    anchors ``rev_src`` of the springs of other anchors that end at a, and ``rev_flat``, their flat
    indices into [N,K] arrays, -1 for padding, whose source is a itself)."""
    cache = _tables_cache(model)
    key = ("topology", str(device))
    if key not in cache:
        nbr = model.neighbors.to(device=device, dtype=torch.int64)
        n, k = nbr.shape
        owner = torch.arange(n, device=device).repeat_interleave(k)
        flat = nbr.reshape(-1)
        keys = owner * n + flat  # spring owner -> neighbour
        sorted_keys, perm = torch.sort(keys)
        back = flat * n + owner  # the reverse spring, if any
        pos = torch.searchsorted(sorted_keys, back).clamp_max(len(keys) - 1)
        found = sorted_keys[pos] == back
        rev_flat = perm[pos]
        rest = model.rest_length.to(device).reshape(-1)
        found &= rest[rev_flat] == rest
        mutual = torch.where(found, rev_flat % k, torch.full_like(rev_flat, -1)).reshape(n, k)
        rest_edges = torch.nonzero(~found).squeeze(1)  # springs whose reverse is not a mutual pair
        target = flat[rest_edges]
        order = rest_edges[torch.argsort(target, stable=True)]
        target = flat[order]
        counts = torch.bincount(target, minlength=n)
        # every anchor's list is padded to a multiple of K.REV_PAD with empty springs (from the anchor
        # itself, weight 0): the compiled loop runs REV_PAD springs at a time and leaves the rest to a
        # scalar tail several times slower per spring
        padded = (counts + K.REV_PAD - 1) // K.REV_PAD * K.REV_PAD
        ptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
        ptr[1:] = torch.cumsum(padded, 0)
        start = torch.zeros(n, dtype=torch.int64, device=device)
        start[1:] = torch.cumsum(counts, 0)[:-1]
        pos = ptr[target] + torch.arange(len(order), device=device) - start[target]
        rev_src = torch.repeat_interleave(torch.arange(n, device=device), padded)
        rev_flat = torch.full_like(rev_src, -1)  # flat index into [N,K] arrays, -1 for padding
        rev_src[pos] = order // k
        rev_flat[pos] = order
        cache[key] = (
            nbr.to(torch.int32).contiguous(), mutual.to(torch.int32).contiguous(), ptr.to(torch.int32).contiguous(),
            rev_src.to(torch.int32).contiguous(), rev_flat.to(torch.int32).contiguous(),
        )
    return cache[key]


def _rest_tables(model: SpringModel, device, dtype) -> tuple:
    """Rest lengths and their inverses [N,K], and the same for the reverse adjacency in its order
    (padding: rest 1, inverse 0, so a padding spring adds nothing), cached on the model."""
    cache = _tables_cache(model)
    key = ("rest", str(device), dtype)
    if key not in cache:
        rev_flat = _kernel_topology(model, device)[4]
        rest = model.rest_length.to(device=device, dtype=dtype).contiguous()
        real = rev_flat >= 0
        rev_rest = torch.where(real, rest.reshape(-1)[rev_flat.clamp_min(0)], torch.ones((), dtype=dtype, device=device))
        rev_inv_rest = torch.where(real, 1.0 / rev_rest, torch.zeros((), dtype=dtype, device=device))
        cache[key] = (rest, (1.0 / rest).contiguous(), rev_rest.contiguous(), rev_inv_rest.contiguous())
    return cache[key]


class _Frames:
    """Runs substeps with the Taichi kernels; buffers are allocated once per rollout."""

    def __init__(self, prep: Prepared, model: SpringModel):
        self.prep, self.model = prep, model
        dev, dtype = prep.x0.device, prep.x0.dtype
        self.nbr, self.mutual, self.rev_ptr, self.rev_src, _rev_flat = _kernel_topology(model, dev)
        self.rest, self.inv_rest, self.rev_rest, self.rev_inv_rest = _rest_tables(model, dev, dtype)
        self.stiff = prep.stiffness.detach().contiguous()
        kappa = prep.kappa.detach()
        n_c, k = model.config.n_c, model.n_springs
        eta, deta = torch.func.jvp(lambda kap: soft_vector(kap, k, n_c), (kappa,), (torch.ones_like(kappa),))
        self.eta, self.deta = eta.to(dev).contiguous(), deta.to(dev).contiguous()
        self.prm = prep.prm.contiguous()
        self.mutual_k = self.rev_k = None  # made by the first grad_step
        x = prep.x0
        n = x.shape[0]
        self.tmp = [torch.empty(n, 3, dtype=x.dtype, device=x.device) for _ in range(5)]
        self.contact = torch.empty(n, dtype=torch.int32, device=x.device)

    def _stiffness_tables(self) -> None:
        """Per-rollout constants of the gradient kernels: stiff[n] * eta[q] of the reverse spring of
        a mutual pair (-1 where there is none) and stiff * eta of the springs of the reverse
        adjacency (0 for padding)."""
        rev_flat = _kernel_topology(self.model, self.prep.x0.device)[4]
        self.mutual_k = torch.empty_like(self.rest)
        self.rev_k = torch.empty_like(self.rev_rest)
        K.stiffness_tables(self.nbr, self.mutual, rev_flat, self.stiff, self.eta, self.mutual_k, self.rev_k)

    def step(self, x, v, x_out, v_out, vh_out, contact_out) -> None:
        K.substep_forward(x, v, self.nbr, self.rest, self.inv_rest, self.stiff, self.eta, self.prm,
                          x_out, v_out, vh_out, contact_out, self.prep.law, self.prep.p_k)

    def grad_step(self, x, v, vh, contact, gx, gv, g_stiff, g_kappa, g_friction, scratch) -> None:
        """Adjoint of one substep from (x, v) (and its recorded vh, contact): (gx, gv), the gradient
        with respect to the substep's output, is replaced in place by the gradient with respect to
        its input; the parameters' gradients are added to g_stiff, g_kappa, g_friction [N].
        ``scratch``: three [N,3] buffers."""
        gxd, gvd, gforce = scratch
        if self.mutual_k is None:
            self._stiffness_tables()
        K.ground_backward(gx, gv, vh, contact, self.prm, gxd, gvd, gforce, g_friction)
        law, p_k = self.prep.law, self.prep.p_k
        K.spring_backward(x, v, self.nbr, self.rest, self.inv_rest, self.stiff, self.eta, self.prm, self.mutual_k,
                          gxd, gvd, gforce, self.deta, gx, gv, g_stiff, g_kappa, law, p_k)
        K.spring_backward_reverse(x, v, gforce, self.prm, self.rev_ptr, self.rev_src, self.rev_rest,
                                  self.rev_inv_rest, self.rev_k, gx, gv, law, p_k)

    def run(self, x, v, x_out, v_out) -> None:
        """Advance one frame from (x, v), writing the end state into (x_out, v_out)."""
        s_total = self.prep.substeps
        a, b, c, d, vh = self.tmp
        cur = (x, v)
        for s in range(s_total):
            nxt = (x_out, v_out) if s == s_total - 1 else ((a, b) if s % 2 == 0 else (c, d))
            self.step(cur[0], cur[1], nxt[0], nxt[1], vh, self.contact)
            cur = nxt

    def record(self, x, v) -> tuple:
        """Advance one frame keeping every substep: X, V [S+1,N,3], VH [S,N,3], C [S,N]."""
        s_total, (n, _) = self.prep.substeps, x.shape
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
    def forward(ctx, x0, v0, stiffness, kappa, friction, prep, model, checkpoint, record_mb, progress):
        sim = _Frames(prep, model)
        f_total = prep.n_frames
        xs = torch.empty(f_total + 1, *x0.shape, dtype=x0.dtype, device=x0.device)
        vs = torch.empty_like(xs)
        xs[0].copy_(x0)
        vs[0].copy_(v0)
        records = []
        keep = 0  # frames whose substeps are kept for the backward pass
        if any(ctx.needs_input_grad[:5]):
            n, item = x0.shape[0], x0.element_size()
            frame_bytes = prep.substeps * n * (9 * item + 4) + 6 * n * item
            keep = f_total if not checkpoint else min(f_total, int(record_mb * 2**20 // frame_bytes))
        for f in tqdm(range(f_total), desc="simulate", disable=not progress, leave=False):
            if f < keep:
                rec = sim.record(xs[f], vs[f])
                records.append(rec)
                xs[f + 1].copy_(rec[0][-1])
                vs[f + 1].copy_(rec[1][-1])
            else:
                sim.run(xs[f], vs[f], xs[f + 1], vs[f + 1])
            check_state(xs[f + 1], vs[f + 1], f + 1, prep)
        ctx.sim, ctx.records, ctx.progress = sim, records, progress
        ctx.save_for_backward(xs, vs)
        return xs, vs[f_total].clone()

    @staticmethod
    def backward(ctx, g_positions, g_vlast):
        xs, vs = ctx.saved_tensors
        sim: _Frames = ctx.sim
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
            for s in reversed(range(sim.prep.substeps)):
                sim.grad_step(X[s], V[s], VH[s], C[s], gx, gv, g_stiff, g_kappa, g_fric, scratch)
            if f < len(ctx.records):
                ctx.records[f] = rec = None  # free each frame's record once it is used
            gx += g_positions[f]
        return gx, gv, g_stiff, g_kappa.sum(), g_fric.sum(), None, None, None, None, None


def _rollout_taichi(model: SpringModel, prep: Prepared, checkpoint: bool, record_mb: float, progress: bool):
    require_taichi()
    return _TaichiRollout.apply(prep.x0.contiguous(), prep.v0.contiguous(), prep.stiffness, prep.kappa,
                                prep.friction, prep, model, checkpoint, record_mb, progress)


# ----------------------------------------------------------------------------- public entry points
def rollout(model: SpringModel, x0: torch.Tensor, v0: torch.Tensor, log_stiffness: torch.Tensor,
            kappa: torch.Tensor, friction_logit: torch.Tensor, n_frames: int, substeps: int | None = None,
            backend: str = "taichi", checkpoint: bool = True, progress: bool = False,
            record_mb: float = RECORD_MB) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate ``n_frames`` frames of ``substeps`` substeps (default ``model.config.substeps``).

    x0 [N,3] start positions; v0 [3] (one velocity for all) or [N,3]; log_stiffness [N] (log10 k_i);
    kappa [] soft-vector parameter (Eq. 8); friction_logit [] ground friction phi.
    Returns (positions [n_frames+1, N, 3] with positions[0] = x0, v_last [N,3]), in x0's dtype,
    differentiable with respect to all five tensors. ``backend`` "taichi" (hand-written kernels and
    gradients) or "torch" (the plain-PyTorch twin). ``checkpoint``: bound the backward's memory;
    Taichi keeps the substeps of the first frames that fit in ``record_mb`` MB and recomputes the
    others from frame checkpoints (record_mb=0: recompute every frame); the torch twin recomputes
    every frame. ``checkpoint=False`` keeps every substep.
    Raises SimulationUnstable (a ValueError) naming the frame when the state blows up.
    For gradients truncated at frame boundaries, call it with n_frames=1 from a detached state.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not float(record_mb) >= 0:
        raise ValueError(f"record_mb must be a number >= 0, got {record_mb}")
    prep = prepare(model, x0, v0, log_stiffness, kappa, friction_logit, n_frames, substeps)
    if backend == "torch":
        from taichi_sim.spring_mass_torch import simulate_prepared

        return simulate_prepared(prep, checkpoint=checkpoint, progress=progress)
    return _rollout_taichi(model, prep, checkpoint, float(record_mb), progress)


def rollout_with_retry(model: SpringModel, x0: torch.Tensor, v0: torch.Tensor, log_stiffness: torch.Tensor,
                       kappa: torch.Tensor, friction_logit: torch.Tensor, n_frames: int,
                       substeps: int | None = None, backend: str = "taichi", checkpoint: bool = True,
                       progress: bool = False, record_mb: float = RECORD_MB
                       ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`rollout`, retried with 50 more substeps per frame after each SimulationUnstable up to
    ``model.config.max_substeps`` (then the last SimulationUnstable is raised again).

    Returns (positions [n_frames+1, N, 3], v_last [N,3], substeps per frame that succeeded)."""
    substeps = model.config.substeps if substeps is None else substeps
    while True:
        try:
            pos, v = rollout(model, x0, v0, log_stiffness, kappa, friction_logit, n_frames, substeps,
                             backend=backend, checkpoint=checkpoint, progress=progress, record_mb=record_mb)
            return pos, v, int(substeps)
        except SimulationUnstable:
            if substeps + 50 > model.config.max_substeps:
                raise
            substeps += 50


__all__ = [
    "SimConfig", "SpringModel", "build_model", "soft_vector", "friction_from_logit", "friction_logit",
    "SimulationUnstable", "rollout", "rollout_with_retry",
]
