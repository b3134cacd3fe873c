"""The Model of the spring-mass simulator (paper Sec. 4.2): what stays fixed during a rollout.

A :class:`SpringModel` holds the rest anchors, the k nearest neighbours of every anchor (sorted
nearest first; each spring acts on its owner alone or on both its ends, see ``springs``), the rest
lengths, and the physical constants that no optimiser changes: mass, gravity, ground plane,
force law and exponent, damping, the soft vector's rigid head n_c and the dead zone. It is
frozen: an edit (other gravity, no ground) makes a new model with :meth:`SpringModel.with_physics`,
which shares the spring topology and its kernel tables (so does :meth:`SpringModel.translated`);
a model made with other anchors or springs (``dataclasses.replace``) builds its own.

The kernel tables (the reverse adjacency of the springs used by the hand-written gradient kernels,
taichi_sim/spring_kernels.py) are built once, by :func:`build_spring_model` or on the first use of
a model made from arrays; copies in other devices and precisions are kept on the model itself.

Integration settings (frame time, substeps, retries) are not part of the model: they belong to
the :class:`~taichi_sim.spring_rollout.Integrator`. The learned quantities (stiffness, soft
vector, friction) are :class:`~taichi_sim.spring_params.SpringParams`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from taichi_sim.spring_kernels import REV_PAD
from taichi_sim.errors import SgausError

FORCE_LAWS = ("smooth", "paper")
# The friction factor is the fraction of tangential speed kept per FRICTION_REFERENCE_DT of contact
# (the substep of the authors' synthetic setting: 0.03 s frames of 100 substeps), so one fitted value
# means the same at any substep count. "per_substep" applies it once per substep, as the authors do.
FRICTION_MODES = ("per_time", "per_substep")
SPRING_STIFFNESS = ("anchor", "pair")
SPRINGS = ("directed", "mirrored")
CONTACTS = ("projection", "penalty")
# where each anchor meets the ground: "uniform", every anchor at the contact plane; "flat", the
# anchors in the lowest contact_offset of the rest shape all at the level of its top (see SpringModel)
CONTACT_FLOORS = ("uniform", "flat")
# the model's constants that take one of a few names (checked here, by the fit's settings and by
# an asset's loader)
CHOICES = {"force_law": FORCE_LAWS, "friction_mode": FRICTION_MODES, "spring_stiffness": SPRING_STIFFNESS,
           "springs": SPRINGS, "contact": CONTACTS, "contact_floor": CONTACT_FLOORS}
FRICTION_REFERENCE_DT = 3e-4


def vec3(value, name: str) -> tuple[float, float, float]:
    """Three finite numbers from a sequence (or 'x,y,z' text); SgausError naming ``name`` otherwise."""
    if isinstance(value, str):
        value = value.split(",")
    try:
        out = tuple(float(c) for c in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(c) for c in out):
        raise SgausError(f"{name} must be three finite numbers x,y,z, got {value!r}")
    return out


@dataclass(frozen=True)
class SpringModel:
    """The fixed part of a rollout. Made by :func:`build_spring_model` (or from saved arrays).

    rest_positions: [N,3] anchors at t = 0
    neighbors:      [N,K] int64, the K nearest other anchors of each anchor, nearest first
    rest_length:    [N,K] spring rest lengths L0 (distances at t = 0), all positive
    mass:           1.0   mass m0 of every anchor
    gravity:        (0, -9.8, 0)  acceleration of gravity; the full vector is applied
    ground_point:   (0, 0, 0)  a point of the ground plane; None = no ground
    ground_normal:  (0, 1, 0)  the ground's normal, pointing into the free space (normalised here)
    force_law:      "smooth"  "smooth": k_ij eta_j (l-L0) (1+|l/L0-1|)^p_k (the authors' code);
                              "paper": k_ij eta_j (l-L0) |l-L0|^p_k (Eq. 9; gradient unbounded at rest)
    p_k:            0.5   force-law exponent (Eq. 9)
    zeta0:          0.1   damping zeta_ij = zeta0 / L0_ij (Eq. 17)
    n_c:            16    the first n_c neighbours (nearest first) get soft-vector weight 1 (Eq. 8)
    dead_zone:      1e-6  no spring force while |l - L0| is below this
    friction_mode:  "per_substep"  the ground's tangential factor f (Eq. 14) every substep (the
                    authors' form); "per_time": f kept per FRICTION_REFERENCE_DT seconds of contact
                    (f^(dt/3e-4) per substep), the same slide at any substep count
    contact_offset: 0.0   how far (scene units, along the normal) the anchors may sink below the
                    ground plane: anchors volume-sampled from cameras above the object reach below
                    its unseen underside, and the fit identifies this depth from the dynamics
                    (pipeline/fit/global_search.py); the plane itself stays where it is declared
    contact_floor:  "uniform"  "uniform": every anchor meets the ground contact_offset below the plane;
                    "flat": the underside within contact_offset of the lowest anchor (heights along
                    the normal, in the rest shape) is cut flat at the top of that layer, where its
                    anchors all meet the ground together: an anchor at height h above the lowest
                    one meets it min(h, contact_offset) higher than with "uniform" (the lowest
                    anchor where it would). A stiff model landing on the reconstruction's uneven
                    underside (cm-scale bumps where the unseen bottom hangs low) otherwise pivots
                    on its lowest bumps and tips; with 0 offset both are the same
    spring_stiffness: "anchor"  "anchor": each anchor's springs pull it with its own k_i (Eq. 9, the
                    authors' form; where k varies, the two ends of a spring feel different forces, so a
                    stiffness field that is not uniform pushes the object by itself); "pair": a
                    spring's stiffness is sqrt(k_i k_j), the same seen from both ends (a mutual pair
                    then pulls both ends equally, whatever the field)
    springs: "directed"  "directed": each anchor's k-nearest springs act on it alone (the authors'
                    form: a spring that is not mirrored in its neighbour's list pulls one end only,
                    so the model conserves neither momentum nor energy, and a stiff one gains energy
                    of its own on the ground); "mirrored": every spring acts on both its ends with
                    half its force (Newton's third law; a mutual pair is one spring whose stiffness
                    is the mean of its two directions), a passive model at any stiffness
    contact: "projection"  how the ground stops an anchor. "projection" (Eq. 14, the authors' form):
                    an anchor past the plane is put back onto it and loses its normal velocity at
                    once, so a landing object is stopped anchor by anchor, the first to touch first,
                    and a stiff one pivots on them and tips over (measured: a torus at log10 k 5-6
                    tilted 60-75 degrees where the MPM truth stays within 2); "penalty": a damped
                    stiff spring pushes an anchor below the plane out along the normal, so the anchors
                    that touch share the impact over a few milliseconds (the same torus: 4 degrees)
    contact_time:   0.005  "penalty" only: the duration (s) of a lone anchor's contact, pi / omega for
                    the ground spring's acceleration omega^2 per unit of depth (so it means the same in
                    any length unit); a contact must span 6 substeps or more
                    (taichi_sim.spring_rollout.PENALTY_MIN_SUBSTEPS)
    restitution:    0.5    "penalty" only: the normal speed a lone anchor keeps when it leaves the
                    ground, as a fraction of its landing speed (in 0..1, 0 excluded; 1: no loss; the
                    ground's damping follows, :func:`damping_ratio`); the fit searches it
                    (pipeline/fit/global_search.py)
    """

    rest_positions: torch.Tensor
    neighbors: torch.Tensor
    rest_length: torch.Tensor
    mass: float = 1.0
    gravity: tuple = (0.0, -9.8, 0.0)
    ground_point: tuple | None = (0.0, 0.0, 0.0)
    ground_normal: tuple = (0.0, 1.0, 0.0)
    force_law: str = "smooth"
    p_k: float = 0.5
    zeta0: float = 0.1
    n_c: int = 16
    dead_zone: float = 1e-6
    friction_mode: str = "per_substep"
    contact_offset: float = 0.0
    spring_stiffness: str = "anchor"
    springs: str = "directed"
    contact: str = "projection"
    contact_time: float = 0.005
    restitution: float = 0.5
    contact_floor: str = "uniform"
    # the kernel tables built from these springs; not an argument, so a model made by
    # dataclasses.replace (other anchors or springs) starts with none instead of stale ones that
    # would index past its arrays: only with_physics and translated share them
    tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    PHYSICS = ("mass", "gravity", "ground_point", "ground_normal", "force_law", "p_k", "zeta0", "n_c",
               "dead_zone", "friction_mode", "contact_offset", "spring_stiffness", "springs", "contact", "contact_time",
               "restitution", "contact_floor")

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        r, nbr, rest = self.rest_positions, self.neighbors, self.rest_length
        if not isinstance(r, torch.Tensor) or r.dim() != 2 or r.shape[1] != 3:
            raise SgausError(f"rest_positions must be an [N,3] tensor, got {_shape(r)}")
        n = r.shape[0]
        if not isinstance(nbr, torch.Tensor) or nbr.dim() != 2 or nbr.shape[0] != n:
            raise SgausError(f"neighbors must be [N={n},K], got {_shape(nbr)}")
        if not isinstance(rest, torch.Tensor) or rest.shape != nbr.shape:
            raise SgausError(f"rest_length {_shape(rest)} must match neighbors {list(nbr.shape)}")
        if nbr.shape[1] < 1:
            raise SgausError("the model has no springs (K = 0)")
        check_choices(self)
        for name in ("p_k", "zeta0", "dead_zone", "contact_offset"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise SgausError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
            put(name, value)
        if not (math.isfinite(float(self.contact_time)) and float(self.contact_time) > 0):
            raise SgausError(f"contact_time must be a positive number of seconds, got {self.contact_time}")
        put("contact_time", float(self.contact_time))
        if not (math.isfinite(float(self.restitution)) and 0 < float(self.restitution) <= 1):
            raise SgausError(f"restitution must lie in 0..1 (0 excluded: no finite damping stops an anchor dead), "
                             f"got {self.restitution}")
        put("restitution", float(self.restitution))
        if not (math.isfinite(float(self.mass)) and float(self.mass) > 0):
            raise SgausError(f"mass must be positive, got {self.mass}")
        put("mass", float(self.mass))
        if isinstance(self.n_c, bool) or int(self.n_c) != self.n_c or self.n_c < 0:
            raise SgausError(f"n_c must be a non-negative integer, got {self.n_c}")
        put("n_c", int(self.n_c))
        put("gravity", vec3(self.gravity, "gravity"))
        normal = vec3(self.ground_normal, "ground_normal")
        if self.ground_point is not None:
            put("ground_point", vec3(self.ground_point, "ground_point"))
            if not np.linalg.norm(normal) > 0:
                raise SgausError("ground_normal must not be the zero vector")
        put("ground_normal", normal)

    @property
    def n_anchors(self) -> int:
        return int(self.rest_positions.shape[0])

    @property
    def n_springs(self) -> int:
        """Springs per anchor (K)."""
        return int(self.neighbors.shape[1])

    @property
    def extent(self) -> float:
        """Diagonal of the rest anchors' bounding box (scene units)."""
        r = self.rest_positions
        return float((r.max(0).values - r.min(0).values).norm()) if len(r) else 0.0

    def unit_normal(self) -> np.ndarray:
        n = np.asarray(self.ground_normal, dtype=np.float64)
        return n / np.linalg.norm(n)

    def contact_point(self) -> tuple | None:
        """The point of the plane the anchors collide with: the ground point moved down the
        normal by ``contact_offset`` (None without a ground)."""
        if self.ground_point is None:
            return None
        return tuple(float(v) for v in np.asarray(self.ground_point) - self.contact_offset * self.unit_normal())

    def contact_lift(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """How much higher than the contact plane (:meth:`contact_point`) each anchor meets the
        ground, [N] along the normal: zeros for the "uniform" floor; for "flat", min(h_i,
        contact_offset), h_i the anchor's rest height above the lowest anchor."""
        if self.contact_floor == "uniform" or self.ground_point is None or self.n_anchors == 0:
            return torch.zeros(self.n_anchors, device=device, dtype=dtype)
        r = self.rest_positions.to(device=device, dtype=torch.float64)
        h = r @ torch.as_tensor(self.unit_normal(), device=device, dtype=torch.float64)
        return torch.clamp(h - h.min(), max=self.contact_offset).to(dtype)

    @property
    def penalty_ground(self) -> bool:
        """Whether the ground is the penalty ground: contact "penalty" and a ground plane to push
        from (without a ground the contact has nothing to act on)."""
        return self.contact == "penalty" and self.ground_point is not None

    def penalty_constants(self) -> tuple[float, float]:
        """The penalty ground's acceleration per unit of depth omega^2 and its damping rate c (per
        second) from ``contact_time`` and ``restitution``: a lone anchor is a damped oscillator while
        the ground pushes it, x'' = -omega^2 x - c x' (pushing only: it leaves once that turns to a
        pull), whose undamped half-period is contact_time and whose exit speed over its landing speed
        is the restitution (:func:`penalty_restitution`, inverted here)."""
        omega = math.pi / self.contact_time
        return omega * omega, 2.0 * damping_ratio(self.restitution) * omega

    def physics(self) -> dict:
        """The physical constants as plain values (what an asset saves beside the arrays)."""
        return {name: (list(v) if isinstance(v, tuple) else v) for name in self.PHYSICS
                for v in [getattr(self, name)]}

    def with_physics(self, **changes) -> "SpringModel":
        """A model with edited constants (gravity, ground, ...), sharing springs and kernel tables."""
        unknown = set(changes) - set(self.PHYSICS)
        if unknown:
            raise SgausError(f"not a physical constant of the model: {', '.join(sorted(unknown))}")
        return self._sharing_tables(dataclasses.replace(self, **changes))

    def translated(self, shift: torch.Tensor) -> "SpringModel":
        """The model moved rigidly by ``shift`` [3]: the same springs, so the kernel tables are shared."""
        shift = torch.as_tensor(shift, dtype=self.rest_positions.dtype, device=self.rest_positions.device)
        return self._sharing_tables(dataclasses.replace(self, rest_positions=self.rest_positions + shift))

    def _sharing_tables(self, other: "SpringModel") -> "SpringModel":
        object.__setattr__(other, "tables", self.tables)  # frozen dataclass
        return other

    def kernel_topology(self, device) -> tuple:
        """Kernel-side topology on ``device`` (built once per model and device): int32 neighbours
        [N,K]; ``mutual`` [N,K], the slot q with neighbors[n, q] == a for the spring (a, jj) to n
        when n also holds a and both springs have the same rest length (else -1); and the reverse
        adjacency of the remaining springs (CSR ``ptr`` [N+1], each anchor's list padded to a
        multiple of REV_PAD: for anchor a, the source anchors ``rev_src`` of the springs of other
        anchors that end at a, and ``rev_flat``, their flat indices into [N,K] arrays, -1 for
        padding, whose source is a itself)."""
        key = ("topology", str(device))
        if key not in self.tables:
            self.tables[key] = _build_topology(self.neighbors, self.rest_length, device)
        return self.tables[key]

    def rest_tables(self, device, dtype) -> tuple:
        """Rest lengths and their inverses [N,K], and the same for the reverse adjacency in its order
        (padding: rest 1, inverse 0, so a padding spring adds nothing), built once per device and dtype."""
        key = ("rest", str(device), dtype)
        if key not in self.tables:
            rev_flat = self.kernel_topology(device)[4]
            rest = self.rest_length.to(device=device, dtype=dtype).contiguous()
            real = rev_flat >= 0
            one = torch.ones((), dtype=dtype, device=device)
            rev_rest = torch.where(real, rest.reshape(-1)[rev_flat.clamp_min(0)], one)
            rev_inv_rest = torch.where(real, 1.0 / rev_rest, torch.zeros((), dtype=dtype, device=device))
            self.tables[key] = (rest, (1.0 / rest).contiguous(), rev_rest.contiguous(), rev_inv_rest.contiguous())
        return self.tables[key]


def penalty_restitution(zeta: float) -> float:
    """The restitution of the penalty ground at damping ratio ``zeta`` = c / (2 omega): the exit speed
    over the landing speed of x'' = -omega^2 x - c x' from x = 0, x' = 1, released where the push
    omega^2 x + c x' reaches zero (not where x does: a damped spring that only pushes lets go
    earlier, so the restitution exp(-pi zeta / sqrt(1 - zeta^2)) of a contact that ends at x = 0 would
    be too low, and at zeta = 1 would be 0 where it is 0.135). Closed forms of the under- and
    overdamped motion, in units omega = 1."""
    zeta = float(zeta)
    if zeta <= 0:
        return 1.0
    if abs(zeta - 1.0) < 1e-6:
        zeta = 1.0 - 1e-6
    if zeta < 1.0:
        s = math.sqrt(1.0 - zeta * zeta)
        # the push is zero at the phase theta in (pi/2, pi) with tan theta = -2 zeta s / (1 - 2 zeta^2)
        theta = math.pi - math.atan2(2.0 * zeta * s, 1.0 - 2.0 * zeta * zeta)
        return math.exp(-zeta * theta / s) * abs(math.cos(theta) - zeta / s * math.sin(theta))
    q = math.sqrt(zeta * zeta - 1.0)
    a, b = zeta - q, zeta + q  # the slow and the fast decay rates, a b = 1
    t = 2.0 * math.log(b / a) / (b - a)  # the push is zero when exp((b - a) t) = (b / a)^2
    return abs(-a * math.exp(-a * t) + b * math.exp(-b * t)) / (b - a)


def damping_ratio(restitution: float) -> float:
    """The damping ratio zeta whose :func:`penalty_restitution` is ``restitution`` in (0, 1]
    (bisection in log zeta: the restitution falls steadily with zeta)."""
    e = float(restitution)
    if e >= 1.0:
        return 0.0
    lo, hi = -8.0, 4.0  # log10 zeta
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if penalty_restitution(10.0 ** mid) > e else (lo, mid)
    return 10.0 ** (0.5 * (lo + hi))


def _shape(t) -> object:
    return list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _build_topology(neighbors: torch.Tensor, rest_length: torch.Tensor, device) -> tuple:
    nbr = neighbors.to(device=device, dtype=torch.int64)
    n, k = nbr.shape
    owner = torch.arange(n, device=device).repeat_interleave(k)
    flat = nbr.reshape(-1)
    keys = owner * n + flat  # spring owner -> neighbour
    sorted_keys, perm = torch.sort(keys)
    back = flat * n + owner  # the reverse spring, if any
    pos = torch.searchsorted(sorted_keys, back).clamp_max(len(keys) - 1)
    found = sorted_keys[pos] == back
    rev_flat = perm[pos]
    rest = rest_length.to(device).reshape(-1)
    found &= rest[rev_flat] == rest
    mutual = torch.where(found, rev_flat % k, torch.full_like(rev_flat, -1)).reshape(n, k)
    rest_edges = torch.nonzero(~found).squeeze(1)  # springs whose reverse is not a mutual pair
    target = flat[rest_edges]
    order = rest_edges[torch.argsort(target, stable=True)]
    target = flat[order]
    counts = torch.bincount(target, minlength=n)
    # every anchor's list is padded to a multiple of REV_PAD with empty springs (from the anchor
    # itself, weight 0): the compiled loop runs REV_PAD springs at a time and leaves the rest to a
    # scalar tail several times slower per spring
    padded = (counts + REV_PAD - 1) // REV_PAD * REV_PAD
    ptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    ptr[1:] = torch.cumsum(padded, 0)
    start = torch.zeros(n, dtype=torch.int64, device=device)
    start[1:] = torch.cumsum(counts, 0)[:-1]
    pos = ptr[target] + torch.arange(len(order), device=device) - start[target]
    rev_src = torch.repeat_interleave(torch.arange(n, device=device), padded)
    rev_flat = torch.full_like(rev_src, -1)  # flat index into [N,K] arrays, -1 for padding
    rev_src[pos] = order // k
    rev_flat[pos] = order
    return (nbr.to(torch.int32).contiguous(), mutual.to(torch.int32).contiguous(), ptr.to(torch.int32).contiguous(),
            rev_src.to(torch.int32).contiguous(), rev_flat.to(torch.int32).contiguous())


def nearest_springs(anchors: torch.Tensor, k_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Springs from every anchor [N,3] to its ``k_neighbors`` nearest other anchors (Eq. 5),
    nearest first, with rest lengths measured now (k-d tree, never a dense N x N matrix):
    (neighbors [N,K] int64, rest_length [N,K] in the anchors' dtype)."""
    from scipy.spatial import cKDTree

    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2 or anchors.shape[1] != 3:
        raise SgausError(f"anchors must be a [N,3] tensor, got {_shape(anchors)}")
    if isinstance(k_neighbors, bool) or int(k_neighbors) != k_neighbors or k_neighbors < 1:
        raise SgausError(f"k_neighbors must be a positive integer, got {k_neighbors}")
    n, k = anchors.shape[0], int(k_neighbors)
    if k > n - 1:
        raise SgausError(f"k_neighbors={k} springs per anchor need more than {k} anchors, got {n}")
    pts = anchors.detach().cpu().double().numpy()
    if not np.isfinite(pts).all():
        raise SgausError("anchors contain NaN or Inf")
    dist, idx = cKDTree(pts).query(pts, k=k + 1)
    dist, idx = dist.reshape(n, k + 1), idx.reshape(n, k + 1)
    is_self = idx == np.arange(n)[:, None]
    bad = ~(is_self.sum(1) == 1) | ~np.all(dist[:, 1:] > 0, axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        j = int(next(c for c in idx[i] if c != i and np.linalg.norm(pts[c] - pts[i]) == 0))
        raise SgausError(f"anchors {i} and {j} coincide (springs need distinct anchors): deduplicate the anchors")
    keep = ~is_self
    return torch.from_numpy(idx[keep].reshape(n, k)).long(), torch.from_numpy(dist[keep].reshape(n, k)).to(anchors.dtype)


def check_choices(holder) -> None:
    """SgausError naming the first of ``CHOICES`` whose value on ``holder`` is not one allowed."""
    for name, allowed in CHOICES.items():
        value = getattr(holder, name)
        if value not in allowed:
            raise SgausError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def build_spring_model(anchors: torch.Tensor, k_neighbors: int, **physics) -> SpringModel:
    """A frozen :class:`SpringModel` of ``anchors`` [N,3], each with springs to its ``k_neighbors``
    nearest other anchors; ``physics`` sets the constants (gravity, ground_point, ...). The kernel
    tables are built here, once."""
    neighbors, rest_length = nearest_springs(anchors, k_neighbors)
    model = SpringModel(anchors.detach().clone(), neighbors, rest_length, **physics)
    model.kernel_topology(anchors.device)
    return model


__all__ = ["SpringModel", "build_spring_model", "check_choices", "nearest_springs", "vec3", "CHOICES", "FORCE_LAWS",
           "FRICTION_MODES", "SPRING_STIFFNESS", "SPRINGS", "CONTACTS", "CONTACT_FLOORS", "FRICTION_REFERENCE_DT",
           "damping_ratio", "penalty_restitution"]
